//! `wait_agents`: follows the supervisor's event stream (no polling tick) until the agents
//! are finished, the time runs out, or the client cancels; reports each finish as it happens.

use super::args::{self, WaitArgs};
use super::orchestrator::call;
use crate::cli::Ctx;
use crate::policy::agent::AgentState;
const FINISHED_EVENTS: &[&str] = AgentState::FINISHED_EVENTS;
use crate::client::Client;
use crate::ipc::{AgentView, Request};
use crate::store::EventRecord;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

/// How often a quiet stream is interrupted to notice a cancelled call.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitReply {
    /// Finished agents (complete, failed, killed, timed_out, escalated), in finishing order.
    pub finished: Vec<AgentView>,
    /// Agents still running, queued or retrying when the call returned.
    pub pending: Vec<AgentView>,
    /// Every agent waited for finished, and each one completed.
    pub all_complete: bool,
    /// The timeout ran out with agents still pending.
    pub timed_out: bool,
    pub elapsed_seconds: f64,
}

/// The limit a call asked for, within [`args::MAX_WAIT`].
pub fn limit(a: &WaitArgs) -> Result<Duration, String> {
    let Some(t) = &a.timeout else { return Ok(args::DEFAULT_WAIT) };
    let d = crate::config::parse_duration(t).map_err(|e| format!("argument `timeout`: {e}"))?;
    if d > args::MAX_WAIT {
        return Err(format!(
            "argument `timeout` {t} is longer than the {} limit; wait again for longer waits",
            humantime::format_duration(args::MAX_WAIT)
        ));
    }
    Ok(d)
}

/// Waits as `corral wait` does. `progress(done, total, just_finished)` is called once at the
/// start and after each finish; `cancelled` is asked between events.
pub fn wait(
    ctx: &Ctx,
    a: WaitArgs,
    limit: Duration,
    cancelled: impl Fn() -> bool,
    progress: impl Fn(usize, usize, Option<&AgentView>),
) -> Result<WaitReply, String> {
    let start = Instant::now();
    args::texts("ids", &a.ids)?;
    args::opt_text("role", &a.role)?;
    // The event sequence first, then the snapshot: anything finishing in between shows up
    // in both, and the id set drops the repeat.
    let after: u64 = call(ctx, &Request::LastSeq)?;
    let ids = if a.all { Vec::new() } else { a.ids };
    let views: Vec<AgentView> = call(ctx, &Request::Status { ids, role: a.role })?;
    if views.is_empty() {
        return Err("no agents to wait for".into());
    }
    let total = views.len();
    let wanted: BTreeSet<String> = views.iter().map(|v| v.agent_id.clone()).collect();
    let mut finished: Vec<AgentView> = views.into_iter().filter(|v| v.is_finished()).collect();
    finished.sort_by(|x, y| x.ended_at.cmp(&y.ended_at));
    let mut done: BTreeSet<String> = finished.iter().map(|v| v.agent_id.clone()).collect();
    progress(done.len(), total, None);

    let mut timed_out = false;
    if done.len() < total {
        let mut events =
            Client::connect(&ctx.data, &ctx.ws.root).map_err(|e| format!("cannot reach the supervisor: {e:#}"))?;
        events.send(&Request::Events { after, agent: None, follow: true }).map_err(|e| format!("{e:#}"))?;
        // Read straight from the socket into our own buffer: a read timeout that strikes
        // mid-line must not lose the part already read.
        let mut stream = events.stream().try_clone().map_err(|e| e.to_string())?;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 8192];
        'follow: while done.len() < total {
            if cancelled() {
                return Err("cancelled".into());
            }
            let Some(left) = limit.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) else {
                timed_out = true;
                break;
            };
            stream.set_read_timeout(Some(left.min(CANCEL_CHECK))).map_err(|e| e.to_string())?;
            match stream.read(&mut chunk) {
                Ok(0) => return Err("the supervisor closed the event stream".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    continue;
                }
                Err(e) => return Err(format!("reading the event stream: {e}")),
            }
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(e) = serde_json::from_slice::<EventRecord>(&line) else { continue };
                let Some(id) = e.agent_id.map(|i| i.to_string()) else { continue };
                if !FINISHED_EVENTS.contains(&e.kind.as_str()) || !wanted.contains(&id) || done.contains(&id) {
                    continue;
                }
                let now: Vec<AgentView> = call(ctx, &Request::Status { ids: vec![id.clone()], role: None })?;
                // A finishing event can be overtaken by a new attempt (a human retry); only
                // the agent's state right now says whether it is finished.
                let Some(v) = now.into_iter().next().filter(|v| v.is_finished()) else {
                    continue;
                };
                done.insert(id);
                progress(done.len(), total, Some(&v));
                finished.push(v);
                if done.len() == total {
                    break 'follow;
                }
            }
        }
    }
    let pending_ids: Vec<String> = wanted.difference(&done).cloned().collect();
    let pending: Vec<AgentView> =
        if pending_ids.is_empty() { Vec::new() } else { call(ctx, &Request::Status { ids: pending_ids, role: None })? };
    Ok(WaitReply {
        all_complete: pending.is_empty() && finished.iter().all(|v| v.status == "complete"),
        finished,
        pending,
        timed_out,
        elapsed_seconds: start.elapsed().as_secs_f64(),
    })
}
