//! Hostile scenarios: config.
