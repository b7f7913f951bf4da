//! corral: spawn, supervise, retry and aggregate many asynchronous agents.
//!
//! The parts: `protocol` (the files agents read and write), `policy` (the pure decision
//! core), `supervisor` (processes, the event loop), `store` (registry and events),
//! `aggregate` and `memory` (results), and the faces: `cli`, `mcp`, `monitor`.

// Human output goes through `display` (`say!`, `note!`), which escapes agent text.
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// `eprintln!` that never panics. The supervisor's stderr is its log file, which may sit on
/// a full disk; the shim's and the MCP server's may be a closed pipe. A line that cannot be
/// written is dropped, the process carries on.
#[macro_export]
macro_rules! elog {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        // Log lines quote agent text (reasons, paths): escaped as any human output is.
        let _ = writeln!(std::io::stderr(), "{}", $crate::display::block(&format!($($t)*)));
    }};
}

pub mod adapter;
pub mod aggregate;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod display;
pub mod ipc;
pub mod mcp;
pub mod memory;
pub mod monitor;
pub mod ops;
pub mod policy;
pub mod protocol;
pub mod schemas;
pub mod store;
pub mod supervisor;
pub mod sys;
pub mod timeline;
pub mod worktree;
