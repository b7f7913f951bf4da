//! Unattended scenarios: supervisor.
