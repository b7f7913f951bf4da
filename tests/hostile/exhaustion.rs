//! Hostile scenarios: exhaustion.
