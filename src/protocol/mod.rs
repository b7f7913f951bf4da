//! The agent file protocol: ids, paths under the data dir, the status and
//! handoff files, the registry export, the delegation context and the agent environment.
//! Owns formats only; it never decides policy and never talks to the supervisor.

pub mod agent_side;
pub mod atomic;
pub mod context;
pub mod files;
pub mod fsio;
pub mod ids;
pub mod paths;
pub mod perms;
pub mod registry;
pub mod time;

pub use ids::AgentId;
pub use paths::DataDir;
