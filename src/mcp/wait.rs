//! `wait_agents`: follows the supervisor's event stream (no polling tick) until the agents
//! are finished, the time runs out, or the client cancels; reports each finish as it happens.

use super::args::{self, WaitArgs};
use crate::cli::Ctx;
use crate::ipc::AgentView;
use crate::ops;
use schemars::JsonSchema;
use serde::Serialize;
use std::time::Duration;

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

/// Waits as `corral wait` does (the same operation, `ops::wait`). `progress(done, total,
/// just_finished)` is called once while waiting begins and after each finish; `cancelled`
/// is asked between events.
pub fn wait(
    ctx: &Ctx,
    a: WaitArgs,
    limit: Duration,
    cancelled: impl Fn() -> bool,
    progress: impl Fn(usize, usize, Option<&AgentView>),
) -> Result<WaitReply, String> {
    args::texts("ids", &a.ids)?;
    args::opt_text("role", &a.role)?;
    let ids = if a.all { Vec::new() } else { a.ids };
    let mut face = Face::new(cancelled, progress);
    let w = ops::wait::wait(ctx.target(), ops::wait::WaitFor { ids, role: a.role, limit: Some(limit) }, &mut face)
        .map_err(|f| f.msg)?;
    Ok(reply(w))
}

pub fn reply(w: ops::wait::Waited) -> WaitReply {
    WaitReply {
        all_complete: w.all_complete,
        finished: w.finished,
        pending: w.pending,
        timed_out: w.timed_out,
        elapsed_seconds: w.elapsed.as_secs_f64(),
    }
}

/// How the MCP server shows a wait: progress notifications.
pub struct Face<C, P> {
    cancelled: C,
    progress: P,
    began: bool,
}

impl<C, P> Face<C, P> {
    pub fn new(cancelled: C, progress: P) -> Self {
        Self { cancelled, progress, began: false }
    }
}

impl<C: Fn() -> bool, P: Fn(usize, usize, Option<&AgentView>)> ops::wait::Watch for Face<C, P> {
    fn finished(&mut self, v: &AgentView, done: usize, total: usize) -> Result<(), ops::Failure> {
        (self.progress)(done, total, Some(v));
        Ok(())
    }

    fn waiting(&mut self, done: usize, total: usize) {
        if !std::mem::replace(&mut self.began, true) {
            (self.progress)(done, total, None);
        }
    }

    fn cancelled(&self) -> bool {
        (self.cancelled)()
    }
}
