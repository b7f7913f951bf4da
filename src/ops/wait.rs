//! Waiting for agents to finish: the snapshot, then the event stream (no polling tick),
//! each finish confirmed by the agent's state at that moment (a finishing event can be
//! overtaken by a human's retry). The stream is followed across supervisor restarts, and
//! after each reconnect the agents still waited for are looked at again, so the result is
//! what really became of them.

use super::follow::Follower;
use super::{Failure, Target};
use crate::ipc::{AgentView, Request};
use crate::policy::agent::AgentState;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What to wait for.
pub struct WaitFor {
    /// These agents (none: every agent, or every agent of `role`).
    pub ids: Vec<String>,
    pub role: Option<String>,
    /// Give up after this long.
    pub limit: Option<Duration>,
}

/// What the face shows while it waits.
pub trait Watch {
    /// An agent finished (`done` of `total` now).
    fn finished(&mut self, v: &AgentView, done: usize, total: usize) -> Result<(), Failure>;
    /// Nothing happened for a while (at most `Watch::PULSE` apart): redraw progress.
    fn waiting(&mut self, _done: usize, _total: usize) {}
    /// Asked between events: stop waiting (the MCP client cancelled the call).
    fn cancelled(&self) -> bool {
        false
    }
    /// What happens to the connection (a supervisor restart).
    fn note(&self, _msg: &str) {}
}

/// How often `Watch::waiting` and `Watch::cancelled` are asked when nothing happens.
pub const PULSE: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Waited {
    /// Finished agents, in finishing order.
    pub finished: Vec<AgentView>,
    /// Agents not finished when the wait ended.
    pub pending: Vec<AgentView>,
    /// Every agent waited for finished, and each one completed.
    pub all_complete: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

pub fn wait(t: Target, w: WaitFor, watch: &mut dyn Watch) -> Result<Waited, Failure> {
    let start = Instant::now();
    // The event number first, then the snapshot: anything finishing in between shows up
    // in both, and the id set drops the repeat.
    let after: u64 = t.call(&Request::LastSeq)?;
    let views: Vec<AgentView> = t.call(&Request::Status { ids: w.ids.clone(), role: w.role.clone() })?;
    if views.is_empty() {
        return Err(Failure::new(2, "no agents to wait for"));
    }
    let total = views.len();
    let wanted: BTreeSet<String> = views.iter().map(|v| v.agent_id.clone()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut finished: Vec<AgentView> = Vec::new();
    watch.waiting(0, total);
    let mut first: Vec<AgentView> = views.into_iter().filter(|v| v.is_finished()).collect();
    first.sort_by(|x, y| x.ended_at.cmp(&y.ended_at));
    for v in first {
        done.insert(v.agent_id.clone());
        watch.finished(&v, done.len(), total)?;
        finished.push(v);
    }
    let mut timed_out = false;
    if done.len() < total {
        let notes: std::cell::RefCell<Vec<String>> = Default::default();
        let record = |m: &str| notes.borrow_mut().push(m.to_string());
        let mut events = Follower::new(t, after, None, &record);
        let mut seen_reconnects = 0;
        while done.len() < total {
            for m in notes.borrow_mut().drain(..) {
                watch.note(&m);
            }
            if watch.cancelled() {
                return Err(Failure::new(1, "cancelled"));
            }
            let slice = match w.limit {
                Some(l) => match l.checked_sub(start.elapsed()).filter(|x| !x.is_zero()) {
                    Some(left) => left.min(PULSE),
                    None => {
                        timed_out = true;
                        break;
                    }
                },
                None => PULSE,
            };
            let next = events.next(Some(slice))?;
            // Back after a restart: what finished meanwhile is looked at directly.
            let mut check: Vec<String> = Vec::new();
            if events.reconnects() != seen_reconnects {
                seen_reconnects = events.reconnects();
                check.extend(wanted.difference(&done).cloned());
            }
            match next {
                Some(e) => {
                    if let Some(id) = e.agent_id.map(|i| i.to_string())
                        && AgentState::FINISHED_EVENTS.contains(&e.kind.as_str())
                        && wanted.contains(&id)
                        && !done.contains(&id)
                    {
                        check.push(id);
                    }
                }
                None => watch.waiting(done.len(), total),
            }
            if check.is_empty() {
                continue;
            }
            let now: Vec<AgentView> = t.call(&Request::Status { ids: check, role: None })?;
            let mut now: Vec<AgentView> = now.into_iter().filter(|v| v.is_finished()).collect();
            now.sort_by(|x, y| x.ended_at.cmp(&y.ended_at));
            for v in now {
                if done.insert(v.agent_id.clone()) {
                    watch.finished(&v, done.len(), total)?;
                    finished.push(v);
                }
            }
        }
        for m in notes.borrow_mut().drain(..) {
            watch.note(&m);
        }
    }
    let pending_ids: Vec<String> = wanted.difference(&done).cloned().collect();
    let pending: Vec<AgentView> =
        if pending_ids.is_empty() { Vec::new() } else { t.call(&Request::Status { ids: pending_ids, role: None })? };
    Ok(Waited {
        all_complete: pending.is_empty() && finished.iter().all(|v| v.status == "complete"),
        finished,
        pending,
        timed_out,
        elapsed: start.elapsed(),
    })
}
