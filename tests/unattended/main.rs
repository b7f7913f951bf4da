//! Unattended runs: agents nobody watches are never stuck, never misjudged and never
//! finished early. One scenario (or more) per behaviour, each through the real binary.

#[path = "../common/mod.rs"]
mod common;

mod policy;
mod supervisor;
mod shim;
mod faces;
