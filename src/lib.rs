//! corral: spawn, supervise, retry and aggregate many asynchronous agents.
//!
//! The parts: `protocol` (the files agents read and write), `policy` (the pure decision
//! core), `supervisor` (processes, the event loop), `store` (registry and events),
//! `aggregate` and `memory` (results), and the faces: `cli`, `mcp`, `monitor`.

pub mod aggregate;
pub mod cli;
pub mod client;
pub mod config;
pub mod ipc;
pub mod mcp;
pub mod memory;
pub mod monitor;
pub mod policy;
pub mod protocol;
pub mod schemas;
pub mod store;
pub mod supervisor;
