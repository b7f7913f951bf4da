//! `corral memory` from the database (and the MCP server's `memory_search` in cluster mode):
//! what the whole cluster learned, built by the same code as on one machine
//! (`memory::patterns_of`). The workers mirror their supervisors' events into the `events`
//! table: each memory candidate a supervisor stored is a `memory_stored` event, and each
//! attempt is read from `started`, `exited` and how it was `classified` (an attempt whose
//! worker was lost ends with the cluster's `lost`). Candidates are deduplicated across
//! workers as one supervisor deduplicates them.

use super::cluster::{Reasons, Target, connect, db_fail, view_of};
use super::{Ctx, Result};
use crate::cluster::read::{self, AgentFilter, EventRow};
use crate::ipc::AttemptView;
use crate::memory::{Learned, LearnedAttempt, MemoryCandidate, MemorySnapshot};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// The events attempts are read from (see [`attempts`]).
const READ: &[&str] = &["started", "exited", "classified", "rate_limited", "usage", "lost"];

/// The cluster's memory: every worker's candidates and the failure patterns of every agent.
pub async fn snapshot(ctx: &Ctx, t: &Target) -> Result<MemorySnapshot> {
    let c = connect(t).await?;
    let rows = read::agents(&c, &t.workspace, &AgentFilter::default()).await.map_err(db_fail)?;
    let roles: HashMap<&str, &str> = rows.iter().map(|r| (r.id.as_str(), r.role.as_str())).collect();
    let mut kinds = READ.to_vec();
    kinds.push("memory_stored");
    let mut events = read::events_by_agent(&c, &t.workspace, &kinds).await.map_err(db_fail)?;
    events.retain(|id, _| roles.contains_key(id.as_str()));
    // The candidates, in the order they were stored, each once whichever worker stored it.
    let mut stored: Vec<&EventRow> = events.values().flatten().filter(|e| e.kind == "memory_stored").collect();
    stored.sort_by_key(|e| e.seq);
    let mut seen = BTreeSet::new();
    let mut candidates = Vec::new();
    for e in stored {
        let value = e.data.get("memory").cloned().unwrap_or_default();
        let Some(id) = e.agent.clone() else { continue };
        if !value.is_null() && seen.insert(crate::memory::canonical(&value)) {
            let role = roles[id.as_str()].to_string();
            candidates.push(MemoryCandidate { agent_id: id, role, value, first_seen: super::cluster::rfc(e.at) });
        }
    }
    let learned: Vec<Learned> = rows
        .iter()
        .map(|r| {
            let v = view_of(ctx, r, &Reasons::new());
            Learned {
                role: r.role.clone(),
                complete: r.state == "complete",
                escalated: r.state == "escalated",
                attempt_timeout_ms: ctx.ws.config.role(&r.role).1.attempt_timeout_ms,
                attempts: attempts(
                    events
                        .get(&r.id)
                        .into_iter()
                        .flatten()
                        .map(|e| (e.kind.as_str(), super::cluster::rfc(e.at), &e.data)),
                )
                .into_iter()
                .map(learned)
                .collect(),
                cost_usd: v.cost_usd,
                tokens: v.tokens,
            }
        })
        .collect();
    Ok(MemorySnapshot { candidates, patterns: crate::memory::patterns_of(&learned) })
}

/// An agent's ended attempts, from its events in commit order: each `started` opens one,
/// its `exited` ends it, and what follows before the next start says how it failed and what
/// it cost. A `lost` ends the attempt its worker was running. Numbered 1, 2, ... across
/// workers and epochs (each supervisor numbers its own from 1).
pub fn attempts<'a>(events: impl IntoIterator<Item = (&'a str, String, &'a Value)>) -> Vec<AttemptView> {
    let mut out: Vec<AttemptView> = Vec::new();
    let mut open: Option<(String, Option<i32>)> = None;
    let text = |d: &Value, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    for (kind, at, d) in events {
        match kind {
            "started" => open = Some((at, d.get("pid").and_then(Value::as_i64).map(|p| p as i32))),
            "exited" | "lost" => {
                // A lost claim with no attempt started in it ended nothing.
                let Some((started_at, pid)) = open.take() else { continue };
                let lost = kind == "lost";
                out.push(AttemptView {
                    attempt: out.len() as u32 + 1,
                    started_at,
                    ended_at: Some(at),
                    exit_code: d.get("exitCode").and_then(Value::as_i64).map(|c| c as i32),
                    signal: d.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                    failure_type: lost.then(|| "lost".to_string()),
                    reason: text(d, "reason"),
                    action: None,
                    rule: None,
                    pid,
                    timeout: None,
                    session_id: None,
                    cost_usd: None,
                    tokens: None,
                    turns: None,
                    result: None,
                    resumed: false,
                    log_start: None,
                });
            }
            "classified" => {
                if let Some(last) = out.last_mut().filter(|_| text(d, "failureType").is_some()) {
                    last.failure_type = text(d, "failureType");
                    last.action = text(d, "action");
                    last.rule = text(d, "rule");
                }
            }
            "rate_limited" => {
                if let Some(last) = out.last_mut() {
                    last.failure_type = Some("rate_limited".into());
                }
            }
            "usage" => {
                if let Some(last) = out.last_mut() {
                    last.cost_usd = d.get("costUsd").and_then(Value::as_f64);
                    last.tokens = d.get("tokens").and_then(|t| serde_json::from_value(t.clone()).ok());
                    last.turns = d.get("turns").and_then(Value::as_u64).map(|n| n as u32);
                }
            }
            _ => {}
        }
    }
    out
}

/// What learning takes of an attempt.
fn learned(a: AttemptView) -> LearnedAttempt {
    LearnedAttempt {
        started_at: a.started_at,
        ended_at: a.ended_at.unwrap_or_default(),
        failure_type: a.failure_type,
        reason: a.reason,
        cost_usd: a.cost_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, SystemTime};

    fn ev(secs: u64, kind: &str, data: serde_json::Value) -> EventRow {
        EventRow {
            seq: secs as i64,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
            agent: Some("a".into()),
            kind: kind.into(),
            data,
            worker: None,
            fence: None,
        }
    }

    #[test]
    fn attempts_are_read_from_the_mirrored_events_and_a_lost_one_ends_its_attempt() {
        let evs = [
            ev(1, "started", json!({ "attempt": 1 })),
            ev(5, "exited", json!({ "attempt": 1, "reason": "exited with code 1" })),
            ev(5, "usage", json!({ "attempt": 1, "costUsd": 0.25 })),
            ev(5, "classified", json!({ "attempt": 1, "failureType": "crash" })),
            ev(6, "started", json!({ "attempt": 2 })),
            ev(9, "lost", json!({ "reason": "worker w1 lost its lease" })),
            // A lost claim that had not started anything ends nothing.
            ev(10, "lost", json!({ "reason": "again" })),
            ev(11, "started", json!({ "attempt": 1 })),
            ev(12, "exited", json!({ "attempt": 1, "reason": "exited with code 0", "exitCode": 0 })),
        ];
        let got = attempts(evs.iter().map(|e| (e.kind.as_str(), super::super::cluster::rfc(e.at), &e.data)));
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!((got[0].failure_type.as_deref(), got[0].cost_usd), (Some("crash"), Some(0.25)));
        assert_eq!(got.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3], "numbered across workers");
        assert_eq!(got[2].exit_code, Some(0));
        assert_eq!(got[1].failure_type.as_deref(), Some("lost"));
        assert_eq!(got[1].reason.as_deref(), Some("worker w1 lost its lease"));
        assert_eq!((got[2].failure_type.as_deref(), got[2].reason.as_deref()), (None, Some("exited with code 0")));
        assert!(Some(&got[0].started_at) < got[0].ended_at.as_ref());
    }
}
