//! Hostile scenarios: shims.
