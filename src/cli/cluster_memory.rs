//! `corral memory` from the database (and the MCP server's `memory_search` in cluster mode):
//! what the whole cluster learned, built by the same code as on one machine
//! (`memory::patterns_of`). The workers mirror their supervisors' events into the `events`
//! table: each memory candidate a supervisor stored is a `memory_stored` event, and each
//! attempt is read from `started`, `exited` and how it was `classified` (an attempt whose
//! worker was lost ends with the cluster's `lost`). Candidates are deduplicated across
//! workers as one supervisor deduplicates them.

use super::cluster::{PAGE, Reasons, Target, connect, db_fail, view_of};
use super::{Ctx, Result};
use crate::cluster::read::{self, AgentFilter, EventRow};
use crate::memory::{Learned, LearnedAttempt, MemoryCandidate, MemorySnapshot};
use std::collections::{BTreeSet, HashMap};

/// The events learning reads.
const READ: &[&str] = &["started", "exited", "classified", "rate_limited", "usage", "lost", "memory_stored"];

/// The cluster's memory: every worker's candidates and the failure patterns of every agent.
pub async fn snapshot(ctx: &Ctx, t: &Target) -> Result<MemorySnapshot> {
    let c = connect(t).await?;
    let rows = read::agents(&c, &t.workspace, &AgentFilter::default()).await.map_err(db_fail)?;
    let roles: HashMap<&str, &str> = rows.iter().map(|r| (r.id.as_str(), r.role.as_str())).collect();
    let mut events: HashMap<String, Vec<EventRow>> = HashMap::new();
    let mut candidates = Vec::new();
    let mut seen = BTreeSet::new();
    // Page by page: the log can hold millions of events; only the kinds read are kept.
    let mut after = 0;
    loop {
        let page = read::events(&c, &t.workspace, after, PAGE).await.map_err(db_fail)?;
        let full = page.len() as i64 == PAGE;
        for e in page {
            after = e.seq;
            let Some(id) = e.agent.clone().filter(|id| roles.contains_key(id.as_str())) else { continue };
            if e.kind == "memory_stored" {
                let value = e.data.get("memory").cloned().unwrap_or_default();
                if !value.is_null() && seen.insert(crate::memory::canonical(&value)) {
                    let role = roles[id.as_str()].to_string();
                    let first_seen = super::cluster::rfc(e.at);
                    candidates.push(MemoryCandidate { agent_id: id, role, value, first_seen });
                }
            } else if READ.contains(&e.kind.as_str()) {
                events.entry(id).or_default().push(e);
            }
        }
        if !full {
            break;
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
                attempts: attempts(events.get(&r.id).map(Vec::as_slice).unwrap_or_default()),
                cost_usd: v.cost_usd,
                tokens: v.tokens,
            }
        })
        .collect();
    Ok(MemorySnapshot { candidates, patterns: crate::memory::patterns_of(&learned) })
}

/// An agent's ended attempts, from its events in commit order: each `started` opens one,
/// its `exited` ends it, and what follows before the next start says how it failed and what
/// it cost. A `lost` ends the attempt its worker was running.
fn attempts(events: &[EventRow]) -> Vec<LearnedAttempt> {
    let mut out: Vec<LearnedAttempt> = Vec::new();
    let mut open: Option<String> = None;
    let text = |e: &EventRow, k: &str| e.data.get(k).and_then(|v| v.as_str()).map(str::to_string);
    for e in events {
        let at = super::cluster::rfc(e.at);
        match e.kind.as_str() {
            "started" => open = Some(at),
            "exited" | "lost" => {
                // A lost claim with no attempt started in it ended nothing.
                let Some(started_at) = open.take() else { continue };
                let lost = e.kind == "lost";
                out.push(LearnedAttempt {
                    started_at,
                    ended_at: at,
                    failure_type: lost.then(|| "lost".to_string()),
                    reason: text(e, "reason"),
                    cost_usd: None,
                });
            }
            "classified" => {
                if let (Some(last), Some(ft)) = (out.last_mut(), text(e, "failureType")) {
                    last.failure_type = Some(ft);
                }
            }
            "rate_limited" => {
                if let Some(last) = out.last_mut() {
                    last.failure_type = Some("rate_limited".into());
                }
            }
            "usage" => {
                if let Some(last) = out.last_mut() {
                    last.cost_usd = e.data.get("costUsd").and_then(|c| c.as_f64());
                }
            }
            _ => {}
        }
    }
    out
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
        let got = attempts(&[
            ev(1, "started", json!({ "attempt": 1 })),
            ev(5, "exited", json!({ "attempt": 1, "reason": "exited with code 1" })),
            ev(5, "usage", json!({ "attempt": 1, "costUsd": 0.25 })),
            ev(5, "classified", json!({ "attempt": 1, "failureType": "crash" })),
            ev(6, "started", json!({ "attempt": 2 })),
            ev(9, "lost", json!({ "reason": "worker w1 lost its lease" })),
            // A lost claim that had not started anything ends nothing.
            ev(10, "lost", json!({ "reason": "again" })),
            ev(11, "started", json!({ "attempt": 1 })),
            ev(12, "exited", json!({ "attempt": 1, "reason": "exited with code 0" })),
        ]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!((got[0].failure_type.as_deref(), got[0].cost_usd), (Some("crash"), Some(0.25)));
        assert_eq!(got[1].failure_type.as_deref(), Some("lost"));
        assert_eq!(got[1].reason.as_deref(), Some("worker w1 lost its lease"));
        assert_eq!((got[2].failure_type.as_deref(), got[2].reason.as_deref()), (None, Some("exited with code 0")));
        assert!(got[0].started_at < got[0].ended_at);
    }
}
