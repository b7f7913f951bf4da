//! Kill, retry and tell from any machine: a command is a row, and only the worker that owns
//! the agent applies it (only it can signal the agent's process group or write its inbox).
//!
//! - [`submit`] inserts the command and notifies the workspace's channel in one transaction.
//! - [`take_commands`] hands a worker the untaken commands of the agents it owns, oldest
//!   first, each to one worker once (`FOR UPDATE SKIP LOCKED`), marked with the worker and
//!   the agent's fence they were taken under. The agent's row is share-locked while they are
//!   taken, so ownership cannot move in between: a command is taken by the owner of the
//!   moment, never by a worker that has just lost the agent.
//! - A command for an agent nobody owns (queued, or given back after a lost lease) waits
//!   untaken; whoever claims the agent next takes it with its first [`take_commands`].
//! - [`finish_command`] records the result; only the worker that took it, while its lease is
//!   live.

use super::queue::{ClusterError, Lease, live};
use serde_json::Value;
use tokio_postgres::Client;

type Result<T> = std::result::Result<T, ClusterError>;

/// The commands a worker applies for another machine.
pub const KINDS: &[&str] = &["kill", "retry", "tell"];

/// A command handed to the worker that owns its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: i64,
    pub agent: String,
    pub kind: String,
    pub args: Value,
    /// The agent's fence when this worker took the command.
    pub fence: i64,
}

fn check(agent: &str, kind: &str, args: &Value) -> Result<()> {
    if !KINDS.contains(&kind) {
        return Err(ClusterError::Bad(format!(
            "command {kind:?} for agent {agent} is not one a worker applies: use one of {}",
            KINDS.join(", ")
        )));
    }
    if !args.is_object() {
        return Err(ClusterError::Bad(format!("command {kind} for agent {agent}: arguments must be a JSON object")));
    }
    if kind == "tell" && args.get("text").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ClusterError::Bad(format!("tell for agent {agent}: needs a non-empty \"text\"")));
    }
    Ok(())
}

/// Queues `kind` (`kill`, `retry` or `tell`) for `agent` and wakes the workspace's listeners;
/// returns the command's id. The agent must exist.
pub async fn submit(client: &mut Client, workspace: &str, agent: &str, kind: &str, args: Value) -> Result<i64> {
    check(agent, kind, &args)?;
    let tx = client.transaction().await?;
    let found = tx.query_opt("SELECT 1 FROM agents WHERE workspace = $1 AND id = $2", &[&workspace, &agent]).await?;
    if found.is_none() {
        return Err(ClusterError::Bad(format!(
            "no agent {agent} in workspace {workspace}: see `corral status` for the agents there"
        )));
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO commands (workspace, agent_id, kind, args) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&workspace, &agent, &kind, &args],
        )
        .await?
        .get(0);
    tx.execute("SELECT pg_notify($1, $2)", &[&super::channel(workspace), &format!("command {id}")]).await?;
    tx.commit().await?;
    Ok(id)
}

/// The untaken commands of the agents this worker owns now, in the order they were
/// submitted; each is marked taken by this worker under the agent's current fence, so no
/// other call anywhere gets it again. Refused with [`ClusterError::LeaseLost`] when the lease
/// is not live.
pub async fn take_commands(client: &mut Client, lease: &Lease) -> Result<Vec<Command>> {
    let tx = client.transaction().await?;
    live(&tx, lease).await?;
    let rows = tx
        .query(
            "WITH t AS (
                 SELECT c.id, a.fence FROM commands c
                 JOIN agents a ON a.workspace = c.workspace AND a.id = c.agent_id
                 WHERE c.workspace = $1 AND c.taken_at IS NULL AND a.owner = $2::text::uuid
                 ORDER BY c.id
                 FOR UPDATE OF c SKIP LOCKED FOR SHARE OF a)
             UPDATE commands c SET taken_at = now(), taken_by = $2::text::uuid, taken_fence = t.fence
             FROM t WHERE c.id = t.id
             RETURNING c.id, c.agent_id, c.kind, c.args, c.taken_fence",
            &[&lease.workspace, &lease.worker],
        )
        .await?;
    tx.commit().await?;
    let mut out: Vec<Command> = rows
        .iter()
        .map(|r| Command { id: r.get(0), agent: r.get(1), kind: r.get(2), args: r.get(3), fence: r.get(4) })
        .collect();
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Records what applying command `id` did, and wakes the workspace's listeners (a client
/// waiting for the answer). Only the worker that took it, while its lease is live, and once.
pub async fn finish_command(client: &mut Client, lease: &Lease, id: i64, result: Value) -> Result<()> {
    let tx = client.transaction().await?;
    live(&tx, lease).await?;
    let n = tx
        .execute(
            "UPDATE commands SET done_at = now(), result = $4
             WHERE id = $1 AND workspace = $2 AND taken_by = $3::text::uuid AND done_at IS NULL",
            &[&id, &lease.workspace, &lease.worker, &result],
        )
        .await?;
    if n == 0 {
        return Err(ClusterError::Bad(format!(
            "command {id} is not this worker's to finish: it was taken by another worker, not taken, or finished already"
        )));
    }
    tx.execute("SELECT pg_notify($1, $2)", &[&super::channel(&lease.workspace), &format!("done {id}")]).await?;
    tx.commit().await?;
    Ok(())
}

/// A command as any machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub id: i64,
    pub agent: String,
    pub kind: String,
    pub args: Value,
    pub taken_by: Option<String>,
    pub taken_fence: Option<i64>,
    pub done: bool,
    pub result: Option<Value>,
}

/// The commands of `workspace` (of `agent` only, if given), oldest first.
pub async fn list(client: &Client, workspace: &str, agent: Option<&str>) -> Result<Vec<CommandRow>> {
    let rows = client
        .query(
            "SELECT id, agent_id, kind, args, taken_by::text, taken_fence, done_at IS NOT NULL, result
             FROM commands WHERE workspace = $1 AND ($2::text IS NULL OR agent_id = $2) ORDER BY id",
            &[&workspace, &agent],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| CommandRow {
            id: r.get(0),
            agent: r.get(1),
            kind: r.get(2),
            args: r.get(3),
            taken_by: r.get(4),
            taken_fence: r.get(5),
            done: r.get(6),
            result: r.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_known_commands_with_their_arguments_are_accepted() {
        assert!(check("a", "kill", &json!({})).is_ok());
        assert!(check("a", "tell", &json!({ "text": "hi" })).is_ok());
        let e = check("a", "stop", &json!({})).unwrap_err().to_string();
        assert!(e.contains("\"stop\"") && e.contains("kill, retry, tell"), "{e}");
        assert!(check("a", "tell", &json!({ "text": "" })).is_err());
        assert!(check("a", "retry", &json!([1])).is_err());
    }
}
