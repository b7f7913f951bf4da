//! Unattended scenarios: policy.
