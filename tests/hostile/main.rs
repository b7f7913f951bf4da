//! The hostile suite: agents that misbehave on purpose, planted files, another local user,
//! resource exhaustion. Every scenario runs the real `corral` binary against real processes
//! and files, prints one `HOSTILE <scenario> key=value ...` line of what it checked (bytes
//! written outside the data dir, hangs, lost exit codes, double runs, secrets readable by
//! the other user, forged lines), and insists that each of those figures is 0.

#[path = "../common/mod.rs"]
mod common;

mod config;
mod exhaustion;
mod files;
mod identity;
mod mcp;
mod shims;
mod stalls;
mod terminal;
mod users;
