//! Unattended scenarios: faces.
