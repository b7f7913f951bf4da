//! Unattended scenarios: shim.
