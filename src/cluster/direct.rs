//! What a machine with no worker does to agents nobody owns, straight in the database: a
//! queued agent killed before any worker claims it, a finished one sent back to the queue
//! for another run. Each change takes the agent's row lock and re-checks that nobody owns
//! it, and bumps its fence, so a claim racing with it either waits and sees the new state
//! or had claimed the agent already (then the change is refused and the caller sends a
//! command to the owner instead). Also the reads `show` and `kill`/`retry`/`tell` need:
//! an agent named by id, number or prefix; its attempts and events; one command's answer.

use super::queue::{ClusterError, Ev, append_events};
use crate::policy::agent::AgentState;
use serde_json::{Value, json};
use std::time::SystemTime;
use tokio_postgres::{Client, Transaction};

type Result<T> = std::result::Result<T, ClusterError>;

/// What a direct change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// A worker owns the agent: only it can change it (send it a command).
    Owned { worker: String },
    /// Changed: the state it is in now.
    Done { state: String },
    /// Nothing to do or not possible, and why.
    Refused { why: String },
}

/// The states that end an agent for good (a retry starts it again).
pub fn terminal(state: &str) -> bool {
    matches!(state, "complete" | "failed" | "killed" | "timed_out")
}

/// Finished as `wait` counts it: a finished state, or waiting on a human (escalated,
/// blocked with no worker holding it, or its worker's view says so).
pub fn finished(state: &str, owner: Option<&str>, body: &Value) -> bool {
    if AgentState::FINISHED.contains(&state) || state == "escalated" {
        return true;
    }
    if state == "blocked" && owner.is_none() {
        return true;
    }
    let view = &body["view"];
    view["status"].as_str() == Some(state) && view["needsHuman"] == true
}

/// The id of the agent `given` names in `workspace`: its id, its number, or a prefix of
/// exactly one id.
pub async fn resolve(client: &Client, workspace: &str, given: &str) -> Result<String> {
    let exact =
        client.query_opt("SELECT id FROM agents WHERE workspace = $1 AND id = $2", &[&workspace, &given]).await?;
    if let Some(r) = exact {
        return Ok(r.get(0));
    }
    if let Ok(n) = given.parse::<i64>() {
        let by_number =
            client.query_opt("SELECT id FROM agents WHERE workspace = $1 AND seq = $2", &[&workspace, &n]).await?;
        if let Some(r) = by_number {
            return Ok(r.get(0));
        }
    }
    let pattern = format!("{}%", given.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let rows = client
        .query(
            "SELECT id FROM agents WHERE workspace = $1 AND id LIKE $2 ORDER BY seq LIMIT 6",
            &[&workspace, &pattern],
        )
        .await?;
    match rows.len() {
        1 => Ok(rows[0].get(0)),
        0 => Err(ClusterError::Bad(format!(
            "no agent {given:?} in workspace {workspace}: see `corral status` for the agents there"
        ))),
        _ => {
            let ids: Vec<String> = rows.iter().take(5).map(|r| r.get(0)).collect();
            Err(ClusterError::Bad(format!(
                "{given:?} is the start of several agents' ids ({}{}): give more of it",
                ids.join(", "),
                if rows.len() > 5 { ", ..." } else { "" }
            )))
        }
    }
}

/// The agent's owner, state and fence under its row lock.
async fn lock(
    tx: &tokio_postgres::Transaction<'_>,
    workspace: &str,
    id: &str,
) -> Result<(Option<String>, String, i64, Value)> {
    let row = tx
        .query_opt(
            "SELECT owner::text, state, fence, body FROM agents WHERE workspace = $1 AND id = $2 FOR UPDATE",
            &[&workspace, &id],
        )
        .await?
        .ok_or_else(|| ClusterError::Bad(format!("no agent {id} in workspace {workspace}")))?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

/// Kills `id` if nobody owns it: a queued (or blocked, or escalated) agent is `killed`
/// before any worker starts it, with a `killed` event.
pub async fn kill_unowned(client: &mut Client, workspace: &str, id: &str) -> Result<Direct> {
    let tx = client.transaction().await?;
    let (owner, state, _, _) = lock(&tx, workspace, id).await?;
    if let Some(worker) = owner {
        return Ok(Direct::Owned { worker });
    }
    if terminal(&state) {
        return Ok(Direct::Refused { why: format!("it is {state} already") });
    }
    let fence: i64 = tx
        .query_one(
            "UPDATE agents SET state = 'killed', fence = fence + 1, updated_at = now()
             WHERE workspace = $1 AND id = $2 RETURNING fence",
            &[&workspace, &id],
        )
        .await?
        .get(0);
    // A human acted on the agent itself: that answers its own open escalations.
    resolve_escalations(&tx, workspace, id, "killed by corral kill").await?;
    let reason = format!("killed while {state}, before any worker ran it");
    let ev = Ev { agent: Some(id), fence: Some(fence), kind: "killed", data: json!({ "reason": reason }) };
    append_events(&tx, workspace, None, &[ev]).await?;
    tx.commit().await?;
    Ok(Direct::Done { state: "killed".into() })
}

/// Sends `id` back to the queue if nobody owns it and it has finished (or waits on a
/// human): claimable now, its lost streak forgotten, its open escalations resolved, a
/// `retried` event. `context` is added to the task a worker starting it afresh is given,
/// and kept as the record's `retryContext` for a worker that ran it before.
pub async fn retry_unowned(client: &mut Client, workspace: &str, id: &str, context: Option<&str>) -> Result<Direct> {
    let tx = client.transaction().await?;
    let (owner, state, _, mut body) = lock(&tx, workspace, id).await?;
    if let Some(worker) = owner {
        return Ok(Direct::Owned { worker });
    }
    if state == "queued" {
        return Ok(Direct::Refused { why: "it is queued already: it starts when a worker has room".into() });
    }
    // Running again, it is in the views again.
    if let Some(o) = body.as_object_mut() {
        o.remove("cleanedAt");
    }
    if let Some(c) = context.filter(|c| !c.trim().is_empty()) {
        if let Some(task) = body["request"]["task"].as_str() {
            body["request"]["task"] = Value::String(format!("{task}\n\nAdded at a retry: {c}"));
        }
        body["retryContext"] = Value::String(c.to_string());
    }
    let fence: i64 = tx
        .query_one(
            "UPDATE agents SET state = 'queued', fence = fence + 1, run_after = now(), lost_streak = 0,
                    body = $3, updated_at = now()
             WHERE workspace = $1 AND id = $2 RETURNING fence",
            &[&workspace, &id, &body],
        )
        .await?
        .get(0);
    resolve_escalations(&tx, workspace, id, "run again by corral retry").await?;
    let ev =
        Ev { agent: Some(id), fence: Some(fence), kind: "retried", data: json!({ "from": state, "context": context }) };
    append_events(&tx, workspace, None, &[ev]).await?;
    tx.commit().await?;
    Ok(Direct::Done { state: "queued".into() })
}

/// Takes the finished agents of `workspace` nobody owns (complete, failed, killed, timed
/// out: not those waiting on a human) that ended at least `older_than` ago out of the
/// views, as the single-machine `corral clean` does: `cleanedAt` in the record and a
/// `cleaned` event each. Their history stays; `status ID` and `show` still find them. The
/// ids cleaned, in spawn order.
pub async fn clean(
    client: &mut Client,
    workspace: &str,
    older_than: Option<std::time::Duration>,
) -> Result<Vec<String>> {
    let tx = client.transaction().await?;
    let secs = older_than.map(|d| d.as_secs_f64());
    let rows = tx
        .query(
            r#"UPDATE agents SET body = body || jsonb_build_object('cleanedAt', to_char(now() AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"'))
             WHERE workspace = $1 AND owner IS NULL AND state IN ('complete', 'failed', 'killed', 'timed_out')
               AND NOT body ? 'cleanedAt'
               AND ($2::float8 IS NULL OR updated_at <= now() - make_interval(secs => $2))
             RETURNING seq, id, fence"#,
            &[&workspace, &secs],
        )
        .await?;
    let mut done: Vec<(i64, String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    done.sort();
    let evs: Vec<Ev> = done
        .iter()
        .map(|(_, id, fence)| Ev { agent: Some(id), fence: Some(*fence), kind: "cleaned", data: json!({}) })
        .collect();
    append_events(&tx, workspace, None, &evs).await?;
    tx.commit().await?;
    Ok(done.into_iter().map(|(_, id, _)| id).collect())
}

/// Resolves the open escalations of `id`, recording what became of it.
async fn resolve_escalations(tx: &Transaction<'_>, workspace: &str, id: &str, outcome: &str) -> Result<()> {
    tx.execute(
        "UPDATE escalations SET resolved_at = now(), body = body || jsonb_build_object('outcome', $3::text)
         WHERE workspace = $1 AND agent_id = $2 AND resolved_at IS NULL",
        &[&workspace, &id, &outcome],
    )
    .await?;
    Ok(())
}

/// Withdraws command `id` if no worker has taken it yet; true when it was withdrawn.
pub async fn withdraw(client: &Client, workspace: &str, id: i64) -> Result<bool> {
    let n = client
        .execute("DELETE FROM commands WHERE id = $1 AND workspace = $2 AND taken_at IS NULL", &[&id, &workspace])
        .await?;
    Ok(n == 1)
}

/// Where command `id` is: taken (by a worker), and its result once done.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandState {
    pub taken: bool,
    pub result: Option<Value>,
}

pub async fn command(client: &Client, workspace: &str, id: i64) -> Result<Option<CommandState>> {
    let row = client
        .query_opt(
            "SELECT taken_at IS NOT NULL, done_at IS NOT NULL, result FROM commands WHERE id = $1 AND workspace = $2",
            &[&id, &workspace],
        )
        .await?;
    Ok(row.map(|r| {
        let done: bool = r.get(1);
        CommandState {
            taken: r.get(0),
            result: if done { Some(r.get::<_, Option<Value>>(2).unwrap_or(Value::Null)) } else { None },
        }
    }))
}

/// One attempt of an agent, on whichever worker ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub n: i32,
    pub fence: i64,
    pub worker: String,
    /// The worker's host, when it is known.
    pub host: Option<String>,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub detail: Value,
}

/// The attempts of `id`, in order.
pub async fn attempts(client: &Client, workspace: &str, id: &str) -> Result<Vec<AttemptRow>> {
    let rows = client
        .query(
            "SELECT a.n, a.fence, a.worker::text, w.host, a.started_at, a.ended_at, a.outcome, a.exit_code, a.detail
             FROM attempts a LEFT JOIN workers w ON w.id = a.worker
             WHERE a.workspace = $1 AND a.agent_id = $2 ORDER BY a.n",
            &[&workspace, &id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AttemptRow {
            n: r.get(0),
            fence: r.get(1),
            worker: r.get(2),
            host: r.get(3),
            started_at: r.get(4),
            ended_at: r.get(5),
            outcome: r.get(6),
            exit_code: r.get(7),
            detail: r.get(8),
        })
        .collect())
}

/// The events of `id`, in order (at most the last `limit`).
pub async fn agent_events(
    client: &Client,
    workspace: &str,
    id: &str,
    limit: i64,
) -> Result<Vec<super::read::EventRow>> {
    let rows = client
        .query(
            "SELECT * FROM (
                 SELECT seq, at, agent_id, kind, data, worker::text, fence FROM events
                 WHERE workspace = $1 AND agent_id = $2 ORDER BY seq DESC LIMIT $3) e
             ORDER BY seq",
            &[&workspace, &id, &limit.max(0)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| super::read::EventRow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_is_a_final_state_or_waiting_on_a_human() {
        let none = json!({});
        assert!(finished("complete", None, &none));
        assert!(finished("escalated", None, &none));
        assert!(finished("blocked", None, &none));
        assert!(!finished("blocked", Some("w"), &none));
        assert!(finished("blocked", Some("w"), &json!({ "view": { "status": "blocked", "needsHuman": true } })));
        assert!(!finished("running", Some("w"), &json!({ "view": { "status": "blocked", "needsHuman": true } })));
        assert!(!finished("queued", None, &none));
        assert!(terminal("killed") && !terminal("blocked"));
    }
}
