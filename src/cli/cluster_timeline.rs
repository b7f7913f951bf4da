//! `corral timeline` from the database: the picture the single-machine command draws
//! (`cli::timeline`, laid out by `crate::timeline`), of the whole cluster's run, with the
//! same flags. The workers mirror their supervisors' events into the `events` table, so
//! each attempt is read from them (`started`, then `exited`, with how it was `classified`);
//! the cluster's own events add what no supervisor saw: the wait in the cluster's queue
//! from the spawn, an attempt lost with its worker, a retry or a kill from any machine. The
//! escalations come from the database, with its numbers. Every time is the database's (when
//! the event was recorded), so rows from different machines line up.

use super::cluster::{Reasons, Target, connect, db_fail, resolve_all, view_of};
use super::{Ctx, Result};
use crate::cluster::read::{self, AgentFilter, EventRow};
use crate::ipc::AgentView;
use crate::policy::agent::Escalation;
use crate::timeline::{AgentRun, Attempt, Event, Outcome};
use serde_json::Value;

/// The events the rows are made of: those the picture draws and those attempts are read
/// from.
const READ: &[&str] = &["spawned", "exited", "classified", "rate_limited", "lost", "retried"];

/// What an agent waits for between its spawn and a worker's claim.
const IN_THE_QUEUE: &str = "waiting for a worker to claim it";

pub async fn timeline(ctx: &Ctx, t: &Target, a: super::timeline::Args) -> Result {
    let format = super::timeline::check(&a)?;
    let c = connect(t).await?;
    let ids = resolve_all(&c, t, &a.ids).await?;
    let filter = AgentFilter { role: a.role.clone(), ids, ..AgentFilter::default() };
    let rows = read::agents(&c, &t.workspace, &filter).await.map_err(db_fail)?;
    let kinds: Vec<&str> = READ.iter().chain(crate::timeline::EVENT_KINDS).copied().collect();
    let mut events = read::events_by_agent(&c, &t.workspace, &kinds).await.map_err(db_fail)?;
    let escalations = super::cluster_reads::escalations(&c, &t.workspace, true).await.map_err(db_fail)?;
    let runs: Vec<AgentRun> = rows
        .iter()
        .map(|r| {
            let v = view_of(ctx, r, &Reasons::new());
            let theirs: Vec<&Escalation> = escalations.iter().filter(|e| e.agent_id.as_str() == r.id).collect();
            run_of(&v, &events.remove(&r.id).unwrap_or_default(), &theirs)
        })
        .collect();
    super::timeline::output(&runs, &a, format)
}

/// One attempt as its events tell it so far.
#[derive(Debug, Default)]
struct Draft {
    start: Option<jiff::Timestamp>,
    end: Option<jiff::Timestamp>,
    reason: Option<String>,
    failure: Option<String>,
    action: Option<String>,
    killed: bool,
    /// The state the agent entered after it ended was seen.
    settled: bool,
}

fn ts(t: std::time::SystemTime) -> Option<jiff::Timestamp> {
    jiff::Timestamp::try_from(t).ok()
}

/// Ends the attempt still open, if there is one, as lost at `at`: its worker went away
/// before it recorded an end.
fn lose_open(drafts: &mut [Draft], at: jiff::Timestamp, why: &str) -> bool {
    match drafts.last_mut().filter(|d| d.end.is_none()) {
        Some(d) => {
            d.end = Some(at);
            d.failure = Some("lost".into());
            d.reason = Some(why.to_string());
            d.settled = true;
            true
        }
        None => false,
    }
}

/// Why an attempt was lost, from the `lost` event a sweep (or the worker itself, when it
/// could not renew its lease in time) recorded.
fn lost_why(data: &Value) -> String {
    match (data.get("reason").and_then(Value::as_str), data.get("worker").and_then(Value::as_str)) {
        (Some(r), _) => format!("lost: {r}"),
        (None, Some(w)) => format!("lost: its worker {} stopped renewing its lease", w.get(..8).unwrap_or(w)),
        (None, None) => "lost: its worker stopped renewing its lease".to_string(),
    }
}

/// One agent's row: its view (`v`, for its role, task and state), its events in the order
/// they were recorded, and its escalations in the database.
fn run_of(v: &AgentView, events: &[EventRow], escalations: &[&Escalation]) -> AgentRun {
    let mut drafts: Vec<Draft> = Vec::new();
    let mut drawn: Vec<Event> = Vec::new();
    let mut spawned = None;
    let mut last_at = None;
    let note = |kind: &str, at, why: String| Event {
        at,
        kind: kind.to_string(),
        reason: Some(why),
        escalation: None,
        blocker: false,
    };
    for e in events {
        let Some(at) = ts(e.at) else { continue };
        last_at = Some(at);
        let text = |k: &str| e.data.get(k).and_then(Value::as_str).map(str::to_string);
        let ended = drafts.last_mut().filter(|d| d.end.is_some() && !d.settled);
        match e.kind.as_str() {
            "spawned" => {
                spawned.get_or_insert(at);
                drawn.push(note("queued", at, IN_THE_QUEUE.into()));
            }
            "started" => {
                lose_open(&mut drafts, at, "lost: its worker recorded no end");
                drafts.push(Draft { start: Some(at), ..Draft::default() });
                drawn.push(super::timeline::event_of(&e.kind, at, &e.data));
            }
            "exited" => match drafts.last_mut().filter(|d| d.end.is_none()) {
                Some(d) => {
                    d.end = Some(at);
                    d.reason = text("reason");
                }
                // Ended before its start was recorded: an attempt of no length.
                None => {
                    drafts.push(Draft { start: Some(at), end: Some(at), reason: text("reason"), ..Draft::default() })
                }
            },
            "classified" => {
                if let Some(d) = ended {
                    d.failure = text("failureType");
                    d.action = text("action");
                }
            }
            "rate_limited" => {
                if let Some(d) = ended {
                    d.failure = Some("rate_limited".into());
                }
            }
            "lost" => {
                let why = lost_why(&e.data);
                lose_open(&mut drafts, at, &why);
                drawn.push(note("queued", at, format!("{why}; back in the cluster's queue")));
            }
            "retried" => drawn.push(note("retry_requested", at, "retry requested".into())),
            // The mirrored escalation marks carry their worker's numbers: the database's
            // escalations are drawn instead.
            "escalation_opened" | "escalation_resolved" => {}
            kind => {
                // The state entered after an attempt ended says how it ended: killed, or
                // queued again without a failure (a retry of a running agent).
                if let Some(d) = ended {
                    d.settled = !(kind == "waiting" && e.data.get("blocker").is_some());
                    d.killed |= kind == "killed";
                    if kind == "queued" && d.failure.is_none() {
                        d.action = Some("retry".into());
                    }
                }
                // Escalated by a sweep after its worker was lost once too often.
                if kind == "escalated" {
                    lose_open(&mut drafts, at, &lost_why(&Value::Null));
                }
                if crate::timeline::EVENT_KINDS.contains(&kind) {
                    drawn.push(super::timeline::event_of(kind, at, &e.data));
                }
            }
        }
    }
    let open = !v.is_finished();
    // A finished agent whose last attempt has no recorded end: it ended by the last event.
    if !open && let (Some(d), Some(at)) = (drafts.last_mut().filter(|d| d.end.is_none()), last_at) {
        d.end = Some(at);
        d.failure = (v.status != "complete" && v.status != "killed").then(|| v.status.clone());
    }
    let last = drafts.len().saturating_sub(1);
    let killed = v.status == "killed";
    let attempts = drafts
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let outcome = Outcome::of(
                d.failure.as_deref(),
                d.end.is_some(),
                d.action.as_deref(),
                d.killed || (killed && i == last),
            );
            Some(Attempt { n: i as u32 + 1, start: d.start?, end: d.end, outcome, reason: d.reason })
        })
        .collect();
    for x in escalations {
        let parse = crate::protocol::time::parse;
        let n = Some(x.n);
        if let Some(at) = parse(&x.opened_at) {
            let e = Event {
                at,
                kind: "escalation_opened".into(),
                reason: Some(x.reason.clone()),
                escalation: n,
                blocker: false,
            };
            mark(&mut drawn, e);
        }
        if let Some(at) = x.resolved_at.as_deref().and_then(parse) {
            let e =
                Event { at, kind: "escalation_resolved".into(), reason: x.note.clone(), escalation: n, blocker: false };
            mark(&mut drawn, e);
        }
    }
    let spawned = spawned
        .or_else(|| crate::protocol::time::parse(&v.spawned_at))
        .or_else(|| drawn.first().map(|e| e.at))
        .unwrap_or_else(crate::protocol::time::now);
    AgentRun {
        id: v.agent_id.clone(),
        role: v.role.clone(),
        task: v.task.clone(),
        status: v.status.clone(),
        spawned,
        open,
        attempts,
        events: drawn,
    }
}

/// Puts `e` among `events` by its time, after those of the same time (the others keep
/// the order they were recorded in).
fn mark(events: &mut Vec<Event>, e: Event) {
    let i = events.iter().position(|x| x.at > e.at).unwrap_or(events.len());
    events.insert(i, e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, SystemTime};

    fn view(status: &str) -> AgentView {
        serde_json::from_value(json!({
            "agentId": "a1", "role": "r", "task": "t", "status": status, "attempt": 1, "maxRetries": 3,
            "anomalies": [], "spawnedAt": "2026-01-01T00:00:00.000+00:00", "cwd": "/",
        }))
        .unwrap()
    }

    /// Events of agent a1, `(second, kind, data)` each, numbered in order.
    fn evs(list: &[(u64, &str, Value)]) -> Vec<EventRow> {
        list.iter()
            .enumerate()
            .map(|(i, (s, kind, data))| EventRow {
                seq: i as i64 + 1,
                at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + s),
                agent: Some("a1".into()),
                kind: kind.to_string(),
                data: data.clone(),
                worker: None,
                fence: None,
            })
            .collect()
    }

    fn sec(t: jiff::Timestamp) -> i64 {
        t.as_second() - 1_000
    }

    #[test]
    fn attempts_are_read_from_the_mirrored_events_and_the_clusters_own() {
        let e = evs(&[
            (0, "spawned", json!({ "role": "r" })),
            (1, "claimed", json!({ "attempt": 1 })),
            (2, "started", json!({ "attempt": 1 })),
            (5, "exited", json!({ "attempt": 1, "reason": "exited with code 1" })),
            (5, "classified", json!({ "attempt": 1, "failureType": "crash", "action": "retry" })),
            (5, "retrying", json!({ "attempt": 1, "reason": "retry 1 of 3" })),
            (7, "started", json!({ "attempt": 2 })),
            // Its worker went away: a sweep gives it back.
            (20, "lost", json!({ "worker": "0123456789ab", "lost_in_a_row": 1 })),
            (21, "started", json!({ "attempt": 1 })),
            (22, "exited", json!({ "attempt": 1, "reason": "exited with code 0" })),
            (22, "complete", json!({ "attempt": 1 })),
        ]);
        let r = run_of(&view("complete"), &e, &[]);
        let got: Vec<(u32, i64, Option<i64>, Outcome)> =
            r.attempts.iter().map(|a| (a.n, sec(a.start), a.end.map(sec), a.outcome)).collect();
        assert_eq!(
            got,
            [(1, 2, Some(5), Outcome::Failed), (2, 7, Some(20), Outcome::Failed), (3, 21, Some(22), Outcome::Complete)]
        );
        assert_eq!(r.attempts[0].reason.as_deref(), Some("exited with code 1"));
        assert_eq!(r.attempts[1].reason.as_deref(), Some("lost: its worker 01234567 stopped renewing its lease"));
        assert_eq!(sec(r.spawned), 0);
        assert!(!r.open);
        let kinds: Vec<(&str, Option<&str>)> =
            r.events.iter().map(|e| (e.kind.as_str(), e.reason.as_deref())).collect();
        assert_eq!(kinds[0], ("queued", Some(IN_THE_QUEUE)));
        assert!(kinds.contains(&("retrying", Some("retry 1 of 3"))), "{kinds:?}");
        assert!(
            kinds.contains(&(
                "queued",
                Some("lost: its worker 01234567 stopped renewing its lease; back in the cluster's queue")
            )),
            "{kinds:?}"
        );
    }

    #[test]
    fn kills_retries_and_rate_limits_colour_their_bars_and_escalations_are_marked() {
        let e = evs(&[
            (0, "spawned", json!({})),
            (1, "started", json!({ "attempt": 1 })),
            (2, "exited", json!({ "attempt": 1 })),
            (2, "rate_limited", json!({ "attempt": 1, "provider": "openai" })),
            (2, "waiting", json!({ "attempt": 1, "reason": "usage limit" })),
            (3, "started", json!({ "attempt": 2 })),
            (4, "exited", json!({ "attempt": 2 })),
            (4, "queued", json!({ "attempt": 2, "reason": "retry requested" })),
            (5, "started", json!({ "attempt": 3 })),
            (6, "waiting", json!({ "blocker": "needs a key" })),
            (8, "exited", json!({ "attempt": 3 })),
            (8, "killed", json!({ "attempt": 3 })),
            (9, "retried", json!({ "from": "killed" })),
            (10, "started", json!({ "attempt": 1 })),
        ]);
        let esc: Escalation = serde_json::from_value(json!({
            "n": 4, "agentId": "a1", "reason": "stuck", "openedAt": "1970-01-01T00:16:47.000+00:00",
            "resolvedAt": "1970-01-01T00:16:49.000+00:00", "note": "go on",
        }))
        .unwrap();
        let r = run_of(&view("running"), &e, &[&esc]);
        let outcomes: Vec<Outcome> = r.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, [Outcome::RateLimited, Outcome::Killed, Outcome::Killed, Outcome::Running]);
        assert!(r.open);
        let marks: Vec<(i64, &str, Option<u64>)> = r
            .events
            .iter()
            .filter(|e| e.kind.starts_with("escalation"))
            .map(|e| (sec(e.at), e.kind.as_str(), e.escalation))
            .collect();
        assert_eq!(marks, [(7, "escalation_opened", Some(4)), (9, "escalation_resolved", Some(4))]);
        // In time order among the others.
        assert!(r.events.windows(2).all(|w| w[0].at <= w[1].at), "{:?}", r.events);
        assert!(r.events.iter().any(|e| e.kind == "retry_requested"));
    }
}
