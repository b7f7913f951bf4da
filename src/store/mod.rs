//! The registry: durable record of every agent, its attempts, and the append-only event
//! log. The supervisor is its only writer. `Registry` is the seam for other backends
//! (PostgreSQL for a cluster); `sqlite` is the embedded default.

pub mod evidence;
pub mod sqlite;

use crate::policy::agent::{Agent, Escalation};
use crate::protocol::AgentId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub seq: u64,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    pub kind: String,
    pub data: Value,
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("registry record for {id} is unreadable: {err}")]
    Corrupt { id: String, err: String },
}

/// A registry row that cannot be an agent record (bad JSON, wrong shape, bad id): that agent
/// is quarantined, shown as unreadable with the reason, and its row is never overwritten.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// The row's id, as stored (it may not be a valid id).
    pub id: String,
    pub role: String,
    pub reason: String,
}

/// What the registry holds: the agents, in spawn order, and the rows that could not be read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub agents: Vec<Agent>,
    pub unreadable: Vec<Unreadable>,
}

impl Loaded {
    /// Sorts one row (its id column, role column and JSON body) into agents or unreadable.
    pub fn row(&mut self, id: String, role: String, body: &str) {
        let reason = match serde_json::from_str::<Agent>(body) {
            Ok(a) => match AgentId::parse(a.spec.id.as_str()) {
                Err(e) => e.to_string(),
                Ok(_) if a.spec.id.as_str() != id => {
                    format!("the record names agent {:?}, not the row's {id:?}", a.spec.id.as_str())
                }
                Ok(_) => {
                    self.agents.push(a);
                    return;
                }
            },
            Err(e) => format!("its record is not an agent record: {e}"),
        };
        self.unreadable.push(Unreadable { id, role, reason });
    }
}

pub trait Registry {
    /// Every agent, in spawn order, and the rows that cannot be read (one bad row never
    /// hides the others).
    fn load(&mut self) -> Result<Loaded>;
    /// Hands out the next agent number; never the same one twice.
    fn next_number(&mut self) -> Result<u64>;
    /// Makes the next number handed out greater than `floor`.
    fn raise_number(&mut self, floor: u64) -> Result<()>;
    fn put(&mut self, agent: &Agent) -> Result<()>;
    fn append_event(&mut self, at: &str, agent: Option<&AgentId>, kind: &str, data: &Value) -> Result<EventRecord>;
    fn events(&mut self, after: u64, agent: Option<&AgentId>, limit: usize) -> Result<Vec<EventRecord>>;
    /// The newest `limit` events of one agent, oldest first.
    fn recent_events(&mut self, agent: &AgentId, limit: usize) -> Result<Vec<EventRecord>>;
    /// Numbers and stores a new escalation (its `n` is ignored and assigned).
    fn add_escalation(&mut self, e: &Escalation) -> Result<u64>;
    fn put_escalation(&mut self, e: &Escalation) -> Result<()>;
    fn escalations(&mut self) -> Result<Vec<Escalation>>;
    /// Stores a memory candidate unless one with the same `key` is stored; true when new.
    fn add_memory(&mut self, key: &str, m: &crate::memory::MemoryCandidate) -> Result<bool>;
    fn memories(&mut self) -> Result<Vec<crate::memory::MemoryCandidate>>;
    /// Small named records (e.g. the circuit breaker), as JSON text.
    fn get_meta(&mut self, key: &str) -> Result<Option<String>>;
    fn put_meta(&mut self, key: &str, value: &str) -> Result<()>;
    /// Groups the writes that follow into one durable unit.
    fn begin(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
}
