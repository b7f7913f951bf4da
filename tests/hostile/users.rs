//! Hostile scenarios: users.
