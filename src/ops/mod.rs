//! Client operations that more than one face carries out (the CLI and the MCP server):
//! waiting for agents, killing one and waiting for its group, collecting what aggregation
//! reads, and following the event stream across supervisor restarts. Each is written once
//! here; the faces check their arguments, show progress their way and shape the result.

pub mod collect;
pub mod follow;
pub mod ids;
pub mod kill;
pub mod wait;

use crate::client::Client;
use crate::ipc::{Reply, Request};
use crate::protocol::DataDir;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The workspace an operation works on: its data dir and its root.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub data: &'a DataDir,
    pub root: &'a Path,
}

/// An operation that failed, with the exit code the CLI gives it (2: bad input, 1: the
/// operation failed).
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub msg: String,
}

impl Failure {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl Target<'_> {
    /// One request to the supervisor (started on demand); an error reply keeps its code.
    pub fn request(&self, req: &Request) -> Result<Reply, Failure> {
        Client::request(self.data, self.root, req).map_err(|e| Failure::new(1, format!("{e:#}")))
    }

    pub fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, Failure> {
        let reply = self.request(req)?;
        if !reply.ok {
            return Err(Failure::new(
                reply.exit.unwrap_or(1),
                reply.error.unwrap_or_else(|| "the supervisor refused the request without a reason".into()),
            ));
        }
        reply.parse().map_err(|e| Failure::new(1, format!("unexpected reply from the supervisor: {e}")))
    }
}
