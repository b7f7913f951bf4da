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
                attempts: read::attempts(
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
        let got = read::attempts(evs.iter().map(|e| (e.kind.as_str(), super::super::cluster::rfc(e.at), &e.data)));
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
