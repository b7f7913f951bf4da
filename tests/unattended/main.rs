//! Unattended runs: agents nobody watches are never stuck, never misjudged and never
//! finished early. One scenario (or more) per behaviour, each through the real binary.

#[path = "../common/mod.rs"]
mod common;

mod faces;
mod followers;
mod policy;
mod shim;
mod supervisor;
