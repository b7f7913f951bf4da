//! Hostile scenarios: identity.
