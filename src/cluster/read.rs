//! Reads by SQL, for a machine with no worker: the agents' stored records and the events in
//! commit order, what `status` and `events` show there.

use super::queue::ClusterError;
use serde_json::Value;
use std::time::SystemTime;
use tokio_postgres::Client;

type Result<T> = std::result::Result<T, ClusterError>;

/// Which agents [`agents`] returns; every field left `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Any of these states.
    pub states: Option<Vec<String>>,
    pub role: Option<String>,
    /// Owned by this worker.
    pub owner: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<String>>,
}

/// An agent as the database holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    /// Its number in the workspace, in spawn order.
    pub seq: i64,
    pub role: String,
    pub state: String,
    pub owner: Option<String>,
    pub fence: i64,
    pub attempt: i32,
    pub idempotency_key: Option<String>,
    /// The stored record.
    pub body: Value,
    pub updated_at: SystemTime,
}

/// The agents of `workspace` that `filter` matches, in spawn order.
pub async fn agents(client: &Client, workspace: &str, filter: &AgentFilter) -> Result<Vec<AgentRow>> {
    let rows = client
        .query(
            "SELECT id, seq, role, state, owner::text, fence, attempt, idempotency_key, body, updated_at
             FROM agents
             WHERE workspace = $1 AND ($2::text[] IS NULL OR state = ANY($2)) AND ($3::text IS NULL OR role = $3)
               AND ($4::text IS NULL OR owner::text = $4) AND ($5::text[] IS NULL OR id = ANY($5))
             ORDER BY seq",
            &[&workspace, &filter.states, &filter.role, &filter.owner, &filter.ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AgentRow {
            id: r.get(0),
            seq: r.get(1),
            role: r.get(2),
            state: r.get(3),
            owner: r.get(4),
            fence: r.get(5),
            attempt: r.get(6),
            idempotency_key: r.get(7),
            body: r.get(8),
            updated_at: r.get(9),
        })
        .collect())
}

/// One event, as numbered at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub at: SystemTime,
    pub agent: Option<String>,
    pub kind: String,
    pub data: Value,
    /// The worker that wrote it (none for a spawn from a client).
    pub worker: Option<String>,
    /// The agent's fence the event was written under.
    pub fence: Option<i64>,
}

/// Up to `limit` events of `workspace` numbered after `after`, in commit order. Numbers are
/// dense and given at commit, so reading on from the last one seen never skips an event.
pub async fn events(client: &Client, workspace: &str, after: i64, limit: i64) -> Result<Vec<EventRow>> {
    let rows = client
        .query(
            "SELECT seq, at, agent_id, kind, data, worker::text, fence FROM events
             WHERE workspace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&workspace, &after, &limit.max(0)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventRow {
            seq: r.get(0),
            at: r.get(1),
            agent: r.get(2),
            kind: r.get(3),
            data: r.get(4),
            worker: r.get(5),
            fence: r.get(6),
        })
        .collect())
}
