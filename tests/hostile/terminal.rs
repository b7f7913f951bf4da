//! Hostile scenarios: terminal.
