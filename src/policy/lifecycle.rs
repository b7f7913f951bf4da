//! The agent lifecycle as a pure reducer: `(agent, input, now) -> actions`. No clock, file
//! or process in here; the supervisor feeds inputs and carries out the actions.

use super::agent::*;
use crate::protocol::AgentId;
use crate::protocol::files::ReportedStatus;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The time an input happened, on both clocks: wall for records, monotonic for deadlines.
#[derive(Debug, Clone)]
pub struct Now {
    pub wall: String,
    pub mono: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the process of the agent's current (just recorded) attempt.
    Spawn,
    /// Send a signal to the whole process group of the running attempt.
    SignalGroup { pgid: i32, signal: Signal },
    /// Append to the event log.
    Emit { kind: &'static str, data: Value },
}

fn emit(kind: &'static str, data: Value) -> Action {
    Action::Emit { kind, data }
}

/// Grace between TERM and KILL when an attempt times out.
pub const TIMEOUT_GRACE_MS: u64 = 5_000;

/// Whether a queued agent may start, given the states of the agents it waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Ready,
    Wait(String),
    Fail(String),
}

pub fn dependency_gate<'a>(
    spec: &AgentSpec,
    lookup: impl Fn(&AgentId) -> Option<&'a AgentState>,
) -> Gate {
    let mut waiting = Vec::new();
    for dep in &spec.after {
        match lookup(dep) {
            None => return Gate::Fail(format!("dependency {dep} does not exist")),
            Some(AgentState::Complete) => {}
            Some(s) if s.is_finished() => {
                return Gate::Fail(format!(
                    "dependency {dep} ended {} without completing",
                    s.name()
                ));
            }
            Some(s) => waiting.push(format!("{dep} ({})", s.name())),
        }
    }
    if waiting.is_empty() {
        Gate::Ready
    } else {
        Gate::Wait(format!("waiting for {}", waiting.join(", ")))
    }
}

/// A new agent, or a queued one being re-examined: start it, keep it queued, or fail it.
pub fn admit(agent: &mut Agent, gate: Gate, now: &Now, handoff_file: PathBuf) -> Vec<Action> {
    match gate {
        Gate::Ready => begin_attempt(agent, now, handoff_file),
        Gate::Wait(reason) => {
            if matches!(&agent.state, AgentState::Queued { reason: r } if *r == reason) {
                return vec![];
            }
            agent.state = AgentState::Queued {
                reason: reason.clone(),
            };
            agent.updated_at = now.wall.clone();
            vec![emit("queued", json!({ "reason": reason }))]
        }
        Gate::Fail(reason) => {
            agent.state = AgentState::Failed {
                reason: reason.clone(),
            };
            agent.updated_at = now.wall.clone();
            vec![emit("failed", json!({ "reason": reason }))]
        }
    }
}

fn begin_attempt(agent: &mut Agent, now: &Now, handoff_file: PathBuf) -> Vec<Action> {
    let n = agent.attempts.len() as u32 + 1;
    agent.attempts.push(Attempt {
        attempt: n,
        started_at: now.wall.clone(),
        started_mono: now.mono,
        timeout_ms: agent.spec.attempt_timeout_ms,
        handoff_file,
        run: AttemptRun::Starting,
    });
    agent.state = AgentState::Running;
    agent.updated_at = now.wall.clone();
    vec![Action::Spawn]
}

/// The shim reported the process running.
pub fn started(agent: &mut Agent, shim_pid: i32, pid: i32, now: &Now) -> Vec<Action> {
    let Some(a) = agent.current_mut() else {
        return vec![];
    };
    if a.run != AttemptRun::Starting {
        return vec![];
    }
    a.run = AttemptRun::Running { shim_pid, pid };
    let n = a.attempt;
    agent.updated_at = now.wall.clone();
    vec![emit("started", json!({ "attempt": n, "pid": pid }))]
}

/// The attempt's process is gone. Decides what the agent is now.
pub fn exited(
    agent: &mut Agent,
    attempt: u32,
    end: ProcessEnd,
    reported: Option<(ReportedStatus, Option<String>)>,
    now: &Now,
) -> Vec<Action> {
    let Some(a) = agent.attempts.iter_mut().find(|a| a.attempt == attempt) else {
        return vec![];
    };
    if a.ended().is_some() {
        return vec![]; // already recorded: a second report of the same exit changes nothing
    }
    let last_finding = reported.as_ref().and_then(|(_, f)| f.clone());
    let with_finding = |s: String| match &last_finding {
        Some(f) => format!("{s}; last finding: {f}"),
        None => s,
    };
    let (state, failure_type, reason) = match (&agent.state, &end) {
        (
            AgentState::Stopping {
                cause: KillCause::Requested,
                ..
            },
            _,
        ) => (
            AgentState::Killed,
            Some("killed"),
            format!("killed on request; {}", end.describe()),
        ),
        (
            AgentState::Stopping {
                cause: KillCause::Timeout,
                ..
            },
            _,
        ) => {
            let r = match a.timeout_ms {
                Some(t) => format!(
                    "ran past its {} attempt timeout; {}",
                    fmt_ms(t),
                    end.describe()
                ),
                None => format!("timed out; {}", end.describe()),
            };
            (
                AgentState::TimedOut { reason: r.clone() },
                Some("timeout"),
                r,
            )
        }
        (_, e) if e.success() => match &reported {
            Some((ReportedStatus::Failed, _)) => {
                let r = with_finding("exited 0 but reported status failed".into());
                (AgentState::Failed { reason: r.clone() }, Some("crash"), r)
            }
            _ => (AgentState::Complete, None, "exited with code 0".to_string()),
        },
        (_, e) => {
            let r = with_finding(e.describe());
            (AgentState::Failed { reason: r.clone() }, Some("crash"), r)
        }
    };
    a.run = AttemptRun::Ended {
        ended_at: now.wall.clone(),
        end: end.clone(),
        failure_type: failure_type.map(str::to_string),
        reason: Some(reason.clone()),
        action: Some("none".into()),
    };
    let mut actions = vec![emit(
        "exited",
        json!({ "attempt": attempt, "exitCode": end.exit_code(), "signal": end.signal(), "reason": reason }),
    )];
    actions.push(emit(
        state.name(),
        json!({ "attempt": attempt, "reason": state.reason() }),
    ));
    agent.state = state;
    agent.updated_at = now.wall.clone();
    actions
}

/// `corral kill`: TERM to the group now, KILL after the grace period.
pub fn kill_requested(agent: &mut Agent, grace_ms: u64, now: &Now) -> Result<Vec<Action>, String> {
    match &agent.state {
        AgentState::Queued { .. } => {
            agent.state = AgentState::Killed;
            agent.updated_at = now.wall.clone();
            Ok(vec![emit(
                "killed",
                json!({ "reason": "killed while queued" }),
            )])
        }
        AgentState::Running | AgentState::Stopping { .. } => {
            Ok(stop(agent, KillCause::Requested, grace_ms, now))
        }
        s => Err(format!(
            "{} is already {}; there is nothing to kill",
            agent.spec.id,
            s.name()
        )),
    }
}

fn stop(agent: &mut Agent, cause: KillCause, grace_ms: u64, now: &Now) -> Vec<Action> {
    let pgid = agent.current().and_then(Attempt::pid);
    agent.state = AgentState::Stopping {
        cause,
        hard_kill_mono: now.mono + grace_ms,
    };
    agent.updated_at = now.wall.clone();
    let mut out = vec![emit(
        match cause {
            KillCause::Requested => "kill_requested",
            KillCause::Timeout => "timeout",
        },
        json!({ "graceMs": grace_ms }),
    )];
    if let Some(pgid) = pgid {
        out.push(Action::SignalGroup {
            pgid,
            signal: Signal::Term,
        });
    }
    out
}

/// The next monotonic instant at which [`tick`] has something to do for this agent.
pub fn next_deadline(agent: &Agent) -> Option<u64> {
    match &agent.state {
        AgentState::Running => {
            let a = agent.current()?;
            a.timeout_ms.map(|t| a.started_mono + t)
        }
        AgentState::Stopping { hard_kill_mono, .. } => Some(*hard_kill_mono),
        _ => None,
    }
}

/// Deadlines that have passed: attempt timeout (TERM now), grace over (KILL).
pub fn tick(agent: &mut Agent, now: &Now) -> Vec<Action> {
    let Some(deadline) = next_deadline(agent) else {
        return vec![];
    };
    if now.mono < deadline {
        return vec![];
    }
    match agent.state {
        AgentState::Running => stop(agent, KillCause::Timeout, TIMEOUT_GRACE_MS, now),
        AgentState::Stopping { cause, .. } => {
            // Still here after the grace period: KILL, and look again a little later.
            agent.state = AgentState::Stopping {
                cause,
                hard_kill_mono: now.mono + 1_000,
            };
            match agent.current().and_then(Attempt::pid) {
                Some(pgid) => vec![Action::SignalGroup {
                    pgid,
                    signal: Signal::Kill,
                }],
                None => vec![],
            }
        }
        _ => vec![],
    }
}

pub fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}
