//! Hostile scenarios: files.
