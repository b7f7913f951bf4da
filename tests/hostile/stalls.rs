//! Hostile scenarios: stalls.
