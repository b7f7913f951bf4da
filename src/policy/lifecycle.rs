//! The agent lifecycle as a pure reducer: `(agent, input, now) -> actions`. No clock, file
//! or process in here; the supervisor feeds inputs and carries out the actions.
//!
//! Every deadline is a monotonic instant plus a duration someone chose (a kill grace, a
//! timeout, a backoff), so each such sum saturates: an endless duration means "never", not
//! an instant that wrapped around into the past and fires at once.

use super::agent::*;
use super::classify::{self, Facts, FailureType, Rule, RuleAction};
use super::role::DEFAULT_RETRY_GUIDANCE;
use crate::protocol::AgentId;
use crate::protocol::files::ReportedStatus;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The time an input happened, on both clocks, and a random sample for backoff jitter.
#[derive(Debug, Clone)]
pub struct Now {
    pub wall: String,
    pub mono: u64,
    /// Uniform in [0, 1); only used with `jitter = "full"`.
    pub jitter: f64,
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
    /// Open an escalation for this agent; the shell numbers it and links it to the state.
    Escalate { reason: String },
    /// An attempt ended: feeds the circuit breaker (kills on request are not reported).
    Outcome { success: bool },
    /// An agent of this provider hit its rate limit: feeds the provider's load (a burst
    /// lowers its concurrency).
    RateLimited { provider: String },
}

fn emit(kind: &'static str, data: Value) -> Action {
    Action::Emit { kind, data }
}

/// Grace between TERM and KILL when the supervisor itself stops an attempt.
pub const STOP_GRACE_MS: u64 = 5_000;

/// The classification rules in force: the user's, then the defaults.
pub struct Rules<'a> {
    pub user: &'a [Rule],
    pub defaults: &'a [Rule],
}

/// Whether a queued agent may start, given the states of the agents it waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Ready,
    Wait(String),
    Fail(String),
}

pub fn dependency_gate<'a>(spec: &AgentSpec, lookup: impl Fn(&AgentId) -> Option<&'a AgentState>) -> Gate {
    let mut waiting = Vec::new();
    for dep in &spec.after {
        match lookup(dep) {
            None => return Gate::Fail(format!("dependency {dep} does not exist")),
            Some(AgentState::Complete) => {}
            Some(s) if s.is_finished() => {
                return Gate::Fail(format!("dependency {dep} ended {} without completing", s.name()));
            }
            Some(s) => waiting.push(format!("{dep} ({})", s.name())),
        }
    }
    if waiting.is_empty() { Gate::Ready } else { Gate::Wait(format!("waiting for {}", waiting.join(", "))) }
}

/// Whether a queued agent may start now: its dependencies first, then the health gate
/// (`hold` says why its role may not start now, if it may not). The supervisor admits by
/// this rule and `status`/`health` show a queued agent's reason by it, computed when shown.
pub fn admission<'a>(
    spec: &AgentSpec,
    lookup: impl Fn(&AgentId) -> Option<&'a AgentState>,
    hold: impl FnOnce(&str) -> Option<String>,
) -> Gate {
    match dependency_gate(spec, lookup) {
        Gate::Ready => hold(&spec.role).map_or(Gate::Ready, Gate::Wait),
        other => other,
    }
}

/// A provider whose rate or usage limit holds the admission of its agents.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHold {
    pub name: String,
    pub until_mono: u64,
    pub reason: String,
}

/// The providers held now: one per provider with an agent waiting on its limit, until the
/// latest of their resets.
pub fn provider_holds<'a>(agents: impl IntoIterator<Item = &'a Agent>, mono: u64) -> Vec<ProviderHold> {
    let mut out: Vec<ProviderHold> = Vec::new();
    for a in agents {
        if let AgentState::Waiting { next_mono, provider, reason } = &a.state
            && *next_mono > mono
            && !provider.is_empty()
        {
            match out.iter_mut().find(|h| h.name == *provider) {
                Some(h) if h.until_mono >= *next_mono => {}
                Some(h) => {
                    h.until_mono = *next_mono;
                    h.reason = reason.clone();
                }
                None => {
                    out.push(ProviderHold { name: provider.clone(), until_mono: *next_mono, reason: reason.clone() })
                }
            }
        }
    }
    out
}

/// Why no agent may start once the workspace spent its `[budget] max_cost_usd`.
pub fn workspace_budget_gate(max_cost_usd: Option<f64>, spent_usd: f64) -> Option<String> {
    let max = max_cost_usd?;
    (spent_usd >= max)
        .then(|| format!("the workspace's budget is spent: ${spent_usd:.4} of [budget] max_cost_usd ${max:.4}"))
}

/// Why a queued agent may not start while its provider is held.
pub fn provider_gate(spec: &AgentSpec, holds: &[ProviderHold], mono: u64) -> Option<String> {
    let p = spec.adapter.provider()?;
    let h = holds.iter().find(|h| h.name == p)?;
    Some(format!(
        "provider {p} is rate-limited for {} more (another agent hit its limit)",
        fmt_ms(h.until_mono.saturating_sub(mono).div_ceil(1000) * 1000)
    ))
}

/// A new agent, or a queued one being re-examined: start it, keep it queued, or fail it.
pub fn admit(agent: &mut Agent, gate: Gate, now: &Now, handoff_file: PathBuf) -> Vec<Action> {
    match gate {
        Gate::Ready => begin_attempt(agent, now, handoff_file),
        Gate::Wait(reason) => {
            if matches!(&agent.state, AgentState::Queued { reason: r } if *r == reason) {
                return vec![];
            }
            agent.state = AgentState::Queued { reason: reason.clone() };
            agent.updated_at = now.wall.clone();
            vec![emit("queued", json!({ "reason": reason }))]
        }
        Gate::Fail(reason) => {
            agent.state = AgentState::Failed { reason: reason.clone() };
            agent.updated_at = now.wall.clone();
            vec![emit("failed", json!({ "reason": reason }))]
        }
    }
}

/// The session the next attempt continues, if it should: the agent has an adapter, the
/// role does not turn `resume_session` off, the attempt before it had a session, and it
/// ended by a transient failure (retried as it was), a limit, a timeout or a lost process.
/// A retry for any other reason (with context, a corrective attempt, a human retry) starts
/// fresh.
pub fn session_to_resume(agent: &Agent) -> Option<String> {
    if agent.spec.adapter.is_none() || agent.spec.policy.resume_session == Some(false) {
        return None;
    }
    let prev = agent.attempts.last()?;
    let session = prev.stream.as_ref()?.session_id.clone()?;
    let AttemptRun::Ended { end, failure_type, action, .. } = &prev.run else { return None };
    let resumable = matches!(end, ProcessEnd::Lost { .. })
        || match failure_type.as_deref() {
            Some("rate_limited" | "timeout" | "silent") => true,
            Some("crash") => action.as_deref().is_some_and(|a| a.starts_with("retry in")),
            _ => false,
        };
    // A human retry resets the budget and starts over.
    let human = agent.budget_start == agent.attempts.len() && agent.budget_start > 0;
    (resumable && !human).then_some(session)
}

fn begin_attempt(agent: &mut Agent, now: &Now, handoff_file: PathBuf) -> Vec<Action> {
    let resume = session_to_resume(agent);
    let n = agent.attempts.len() as u32 + 1;
    let budget_n = (agent.attempts.len() - agent.budget_start.min(agent.attempts.len())) as u32 + 1;
    agent.attempts.push(Attempt {
        timeout_ms: Some(agent.spec.policy.attempt_timeout(budget_n)),
        context_note: agent.next_context.take(),
        stream: resume.map(|id| AttemptStream {
            session_id: Some(id.clone()),
            resumed: true,
            resumed_from: Some(id),
            ..Default::default()
        }),
        ..Attempt::starting(n, now.wall.clone(), now.mono, handoff_file)
    });
    agent.state = AgentState::Running;
    agent.updated_at = now.wall.clone();
    vec![Action::Spawn]
}

/// The shim reported the process running.
pub fn started(agent: &mut Agent, shim_pid: i32, pid: i32, now: &Now) -> Vec<Action> {
    let Some(a) = agent.current_mut() else { return vec![] };
    if a.run != AttemptRun::Starting {
        return vec![];
    }
    a.run = AttemptRun::Running { shim_pid, pid };
    let (n, timeout) = (a.attempt, a.timeout_ms);
    let resumed = a.stream.as_ref().and_then(|s| s.resumed_session()).map(str::to_string);
    agent.updated_at = now.wall.clone();
    let mut data = json!({ "attempt": n, "pid": pid, "timeoutMs": timeout });
    if let Some(s) = resumed {
        data["resumedSession"] = s.into();
    }
    let mut out = vec![emit("started", data)];
    // Told to stop while its shim was still starting it: the TERM it could not get then.
    if matches!(agent.state, AgentState::Stopping { .. }) {
        out.push(Action::SignalGroup { pgid: pid, signal: Signal::Term });
    }
    out
}

/// What the agent's status file says now.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: ReportedStatus,
    pub last_finding: Option<String>,
    /// The content (not just `lastUpdate`) differs from the previous report.
    pub changed: bool,
}

/// A status write of the current attempt: a heartbeat, maybe progress, maybe a blocker.
pub fn status_reported(agent: &mut Agent, r: &Report, rules: &Rules, now: &Now) -> Vec<Action> {
    if !agent.state.has_live_process() {
        return vec![];
    }
    let Some(a) = agent.current_mut() else { return vec![] };
    let l = &mut a.liveness;
    l.first_sign.get_or_insert(now.mono);
    l.last_report = Some(now.mono);
    if r.changed || l.last_change.is_none() {
        l.last_change = Some(now.mono);
    }
    if r.status != ReportedStatus::Blocked {
        if l.waiting_on.take().is_some() {
            let since = l.waiting_since.take().unwrap_or(now.mono);
            l.blocked_ms = l.blocked_ms.saturating_add(now.mono.saturating_sub(since));
            return vec![emit("unblocked", json!({ "status": r.status }))];
        }
        return vec![];
    }
    if l.waiting_on.is_some() || agent.state != AgentState::Running {
        return vec![];
    }
    let facts = Facts {
        failure: FailureType::Blocked,
        exit_code: None,
        signal: None,
        last_finding: r.last_finding.as_deref(),
        output_tail: "",
        api_error_status: None,
        result_text: None,
    };
    let (action, rule) = classify::classify(rules.user, rules.defaults, &facts);
    let blocker = r.last_finding.clone().unwrap_or_else(|| "no finding given".into());
    match action {
        RuleAction::Ignore => vec![],
        RuleAction::Wait => {
            let l = &mut agent.current_mut().expect("current").liveness;
            l.waiting_on = Some(blocker.clone());
            l.waiting_since = Some(now.mono);
            let timeout = agent.spec.policy.blocked_timeout_ms;
            vec![emit("waiting", json!({ "blocker": blocker, "rule": rule, "blockedTimeoutMs": timeout }))]
        }
        _ => {
            let cause = StopCause::Blocked { action, rule: rule.to_string(), blocker: blocker.clone() };
            let mut out = vec![emit(
                "classified",
                json!({ "failureType": "blocked", "action": action, "rule": rule, "blocker": blocker }),
            )];
            out.extend(stop(agent, cause, STOP_GRACE_MS, now));
            out
        }
    }
}

/// Output was written at `mono`: a heartbeat and a first sign of life, and progress (it
/// resets the stall check) only where the role says output is progress.
pub fn output_seen(agent: &mut Agent, mono: u64) {
    // An adapter agent's progress is what its parser calls progress (not an API retry).
    let progress = agent.spec.policy.output_is_progress && agent.spec.adapter.is_none();
    if let Some(a) = agent.current_mut()
        && a.ended().is_none()
        && mono >= a.started_mono
    {
        let l = &mut a.liveness;
        l.first_sign.get_or_insert(mono);
        l.last_output = Some(l.last_output.map_or(mono, |o| o.max(mono)));
        if progress && let Some(c) = l.last_change {
            l.last_change = Some(c.max(mono));
        }
    }
}

/// The adapter saw progress (a model turn, a tool call) at `mono`: it resets the stall
/// check of an agent that reports.
pub fn progress_seen(agent: &mut Agent, mono: u64) {
    if let Some(a) = agent.current_mut()
        && a.ended().is_none()
        && mono >= a.started_mono
        && let Some(c) = a.liveness.last_change
    {
        a.liveness.last_change = Some(c.max(mono));
    }
}

/// What the supervisor found about the handoff when the attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HandoffFacts {
    Absent,
    Valid,
    /// The handoff lists deliverables that do not exist.
    MissingFiles(Vec<String>),
    Unreadable(String),
}

/// Everything known about an attempt's end.
#[derive(Debug, Clone)]
pub struct ExitFacts {
    pub end: ProcessEnd,
    /// The agent's last reported status, when it reported during this attempt.
    pub reported: Option<ReportedStatus>,
    pub last_finding: Option<String>,
    pub handoff: HandoffFacts,
    pub output_tail: String,
    /// When the process ended, as its shim recorded it.
    pub ended_at: Option<String>,
    /// The shim stopped it at its deadline (with no supervisor to judge it then).
    pub timed_out: bool,
    /// The role's `verify`, when it ran for this attempt: `Err` holds what failed.
    pub verify: Option<Result<(), String>>,
    /// It could not start for a reason no retry changes (its worktree setup failed).
    pub permanent: bool,
    /// What the agent CLI's stream said (adapter agents).
    pub stream: Option<crate::adapter::Summary>,
    /// Milliseconds from now until the rate limit the stream reported resets, when it said.
    pub limit_wait_ms: Option<u64>,
    /// The shim stopped it because it lingered for `result_grace` after its final result.
    pub after_result: bool,
}

/// What an adapter agent's stream says of its end, before the exit code is looked at: a
/// budget overrun, a rate limit, an error result, or exit 0 with no result at all.
fn stream_failure(agent: &Agent, idx: usize, f: &ExitFacts, end_text: &str) -> Option<(FailureType, String)> {
    if agent.spec.adapter.is_none() {
        return None;
    }
    if let Some(rec) = &agent.attempts[idx].stream {
        let spent = super::usage::Spent {
            tokens: rec.tokens.unwrap_or_default(),
            cost_usd: rec.cost_usd,
            turns: rec.turns.unwrap_or(0),
        };
        if let Some(why) = super::usage::over_budget(&agent.spec.policy, &spent) {
            return Some((FailureType::Budget, format!("over budget: {why}; {end_text}")));
        }
    }
    let s = f.stream.as_ref();
    let result = s.and_then(|s| s.result.as_ref());
    if result.is_some_and(|r| r.ok) {
        return None;
    }
    if let Some(l) = s.and_then(|s| s.rate_limited.as_ref()) {
        return Some((FailureType::RateLimited, format!("rate limited by {}: {}", l.provider, l.message)));
    }
    match result {
        Some(r) => {
            let status = r.api_error_status.map(|s| format!(" (API status {s})")).unwrap_or_default();
            let text = r.text.as_deref().unwrap_or("no text");
            Some((FailureType::Crash, format!("the CLI reported an error{status}: {text}; {end_text}")))
        }
        None if f.end.success() => Some((FailureType::Crash, "ended without a result (exit 0)".into())),
        None => None,
    }
}

/// What the session the current attempt continues had reported by the end of the attempt
/// before it, when the current attempt resumes one.
pub fn session_usage_before(agent: &Agent) -> Option<crate::adapter::Usage> {
    let cur = agent.current()?;
    if !cur.stream.as_ref().is_some_and(|s| s.resumed) {
        return None;
    }
    let n = agent.attempts.len().checked_sub(2)?;
    agent.attempts[n].stream.as_ref()?.reported
}

/// The attempt's record of its stream: session, own share of usage, result.
fn attempt_stream(agent: &Agent, idx: usize, s: &crate::adapter::Summary) -> AttemptStream {
    let before = agent.attempts[..idx]
        .iter()
        .rev()
        .find_map(|a| a.stream.as_ref().filter(|x| x.session_id.is_some() && x.session_id == s.session_id))
        .and_then(|x| x.reported);
    let spent = s.usage.map(|u| super::usage::attempt_share(&u, before.as_ref(), agent.spec.policy.token_prices));
    AttemptStream {
        session_id: s.session_id.clone(),
        tokens: spent.map(|x| x.tokens),
        cost_usd: spent.and_then(|x| x.cost_usd),
        turns: spent.map(|x| x.turns).filter(|_| s.usage.is_some_and(|u| u.turns.is_some())),
        result: s.result.clone(),
        reported: s.usage,
        resumed: agent.attempts[idx].stream.as_ref().is_some_and(|x| x.resumed),
        resumed_from: agent.attempts[idx].stream.as_ref().and_then(|x| x.resumed_from.clone()),
    }
    .or_resumed(agent.attempts[idx].stream.as_ref())
}

/// What the running attempt's stream says so far (its session, usage, cost and turns),
/// recorded as it comes so the views show it live. Returns whether the record changed.
/// The attempt's end records it again, whole; a budget overrun is stopped by the watcher.
pub fn stream_seen(agent: &mut Agent, attempt: u32, s: &crate::adapter::Summary) -> bool {
    let Some(idx) = agent.attempts.iter().position(|a| a.attempt == attempt) else { return false };
    if agent.spec.adapter.is_none() || agent.attempts[idx].ended().is_some() {
        return false;
    }
    let rec = attempt_stream(agent, idx, s);
    if agent.attempts[idx].stream.as_ref() == Some(&rec) {
        return false;
    }
    agent.attempts[idx].stream = Some(rec);
    true
}

/// The attempt's process is gone. Decides what the agent is now.
pub fn exited(agent: &mut Agent, attempt: u32, f: ExitFacts, rules: &Rules, now: &Now) -> Vec<Action> {
    let Some(idx) = agent.attempts.iter().position(|a| a.attempt == attempt) else { return vec![] };
    if agent.attempts[idx].ended().is_some() {
        return vec![]; // already recorded: a second report of the same exit changes nothing
    }
    let with_finding = |s: String| match &f.last_finding {
        Some(x) => format!("{s}; last finding: {x}"),
        None => s,
    };
    let end_text = f.end.describe();
    let timeout_text = |a: &Attempt, what: &str| match a.timeout_ms {
        Some(t) if what == "attempt" => format!("ran past its {} attempt timeout; {end_text}", fmt_ms(t)),
        _ => format!("{what}; {end_text}"),
    };
    // The shim keeps the attempt's deadline when no supervisor runs: an attempt it stopped
    // then ended by its timeout (or the role's deadline, when that came first).
    let shim_cause = (f.timed_out && agent.state == AgentState::Running).then(|| {
        let a = &agent.attempts[idx];
        let attempt_end = a.timeout_ms.map(|t| a.started_mono.saturating_add(t));
        let role_end =
            agent.spec.policy.deadline_ms.zip(agent.attempts.first()).map(|(d, x)| x.started_mono.saturating_add(d));
        match (attempt_end, role_end) {
            (Some(t), Some(d)) if d < t => StopCause::Deadline,
            (None, Some(_)) => StopCause::Deadline,
            _ => StopCause::AttemptTimeout,
        }
    });
    // The stop is recorded as if the supervisor had made it: the log says TIMEOUT either way.
    let shim_stop = shim_cause.map(|cause| {
        let e = emit(cause.event(), json!({ "graceMs": STOP_GRACE_MS, "cause": cause, "by": "shim" }));
        agent.state = AgentState::Stopping { cause, hard_kill_mono: now.mono };
        e
    });
    if let Some(s) = &f.stream {
        let rec = attempt_stream(agent, idx, s);
        agent.attempts[idx].stream = Some(rec);
    }
    // What kind of ending this was, and whether the classification is already decided.
    let (failure, reason, fixed): (Option<FailureType>, String, Option<(RuleAction, String)>) = match &agent.state {
        AgentState::Stopping { cause, .. } => {
            let a = &agent.attempts[idx];
            match cause {
                StopCause::Requested => (None, format!("killed on request; {end_text}"), None),
                StopCause::Restart => (None, format!("stopped for a requested retry; {end_text}"), None),
                StopCause::AttemptTimeout => (Some(FailureType::Timeout), timeout_text(a, "attempt"), None),
                StopCause::StartTimeout => {
                    (Some(FailureType::Timeout), timeout_text(a, "no sign of life before start_timeout"), None)
                }
                StopCause::Heartbeat => (
                    Some(FailureType::Timeout),
                    timeout_text(a, "stale: no status update or output within heartbeat_timeout"),
                    None,
                ),
                StopCause::Deadline => {
                    (Some(FailureType::Timeout), timeout_text(a, "the role's deadline passed"), None)
                }
                StopCause::Silent => {
                    (Some(FailureType::Silent), timeout_text(a, "silent: status unchanged for stall_timeout"), None)
                }
                StopCause::Blocked { action, rule, blocker } => (
                    Some(FailureType::Blocked),
                    format!("blocked: {blocker}; stopped, {end_text}"),
                    Some((*action, rule.clone())),
                ),
                StopCause::BlockedTimeout { blocker } => (
                    Some(FailureType::Blocked),
                    format!(
                        "blocked on {blocker} for longer than blocked_timeout ({}); stopped, {end_text}",
                        fmt_ms(agent.spec.policy.blocked_timeout_ms)
                    ),
                    Some((RuleAction::Wait, "blocked_timeout".to_string())),
                ),
            }
        }
        _ if f.permanent => (
            Some(FailureType::Crash),
            end_text.clone(),
            Some((RuleAction::Escalate, "permanent: worktree_setup failed".to_string())),
        ),
        _ => {
            let reported = f.reported;
            // Lingering after an ok result and stopped for it: complete, whatever the signal.
            // So is an exit nobody could see (its watchers were killed) after the CLI said
            // its run succeeded.
            let cli_ok = !agent.spec.adapter.is_none()
                && f.stream.as_ref().and_then(|s| s.result.as_ref()).is_some_and(|r| r.ok);
            let clean_end = f.end.success() || f.after_result || (cli_ok && matches!(f.end, ProcessEnd::Lost { .. }));
            if let Some((ft, why)) = stream_failure(agent, idx, &f, &end_text) {
                (Some(ft), with_finding(why), None)
            } else if clean_end && !matches!(reported, Some(ReportedStatus::Failed | ReportedStatus::Blocked)) {
                match (&f.handoff, agent.spec.policy.require_handoff) {
                    // With a verify, an attempt is complete only once it passed.
                    _ if matches!(f.verify, Some(Err(_)))
                        || (agent.spec.policy.verify.is_some() && f.verify.is_none()) =>
                    {
                        (
                            Some(FailureType::Deliverable),
                            match &f.verify {
                                Some(Err(e)) => e.clone(),
                                _ => "verify did not run".to_string(),
                            },
                            None,
                        )
                    }
                    (HandoffFacts::MissingFiles(files), _) => (
                        Some(FailureType::Deliverable),
                        format!("handoff names files that do not exist: {}", files.join(", ")),
                        None,
                    ),
                    (HandoffFacts::Absent, true) => {
                        (Some(FailureType::Deliverable), "exited 0 without a handoff (require_handoff)".into(), None)
                    }
                    (HandoffFacts::Unreadable(e), true) => {
                        (Some(FailureType::Deliverable), format!("handoff unreadable: {e}"), None)
                    }
                    _ => (None, "exited with code 0".into(), None),
                }
            } else if reported == Some(ReportedStatus::Blocked) {
                (Some(FailureType::Blocked), with_finding(format!("reported blocked and {end_text}")), None)
            } else if clean_end {
                (Some(FailureType::Crash), with_finding("exited 0 but reported status failed".into()), None)
            } else {
                (Some(FailureType::Crash), with_finding(end_text.clone()), None)
            }
        }
    };
    let mut out: Vec<Action> = shim_stop.into_iter().collect();
    out.push(emit(
        "exited",
        json!({
            "attempt": attempt, "exitCode": f.end.exit_code(), "signal": f.end.signal(),
            "reason": reason, "endedAt": f.ended_at,
        }),
    ));
    let requested = matches!(agent.state, AgentState::Stopping { cause: StopCause::Requested, .. });
    let restart = matches!(agent.state, AgentState::Stopping { cause: StopCause::Restart, .. });
    if let Some(rec) = &agent.attempts[idx].stream {
        if let Some(r) = &rec.result {
            out.push(emit("result", json!({ "attempt": attempt, "result": r })));
        }
        if rec.tokens.is_some() || rec.cost_usd.is_some() {
            out.push(emit(
                "usage",
                json!({ "attempt": attempt, "tokens": rec.tokens, "costUsd": rec.cost_usd, "turns": rec.turns }),
            ));
        }
    }
    if failure == Some(FailureType::Budget) {
        out.push(emit("budget_exceeded", json!({ "attempt": attempt, "reason": reason })));
    }
    let (state, action_text, rule) = match failure {
        Some(FailureType::RateLimited) => {
            // No retry spent, no breaker fed: the provider said when to come back.
            agent.attempts[idx].counted = false;
            let provider = f
                .stream
                .as_ref()
                .and_then(|s| s.rate_limited.as_ref())
                .map(|l| l.provider.clone())
                .filter(|p| !p.is_empty())
                .or_else(|| agent.spec.adapter.provider().map(str::to_string))
                .unwrap_or_default();
            let in_a_row = agent.attempts[..idx]
                .iter()
                .rev()
                .take_while(
                    |a| matches!(&a.run, AttemptRun::Ended { failure_type: Some(t), .. } if t == "rate_limited"),
                )
                .count() as u32
                + 1;
            let delay = f.limit_wait_ms.unwrap_or_else(|| agent.spec.policy.backoff.delay_ms(in_a_row, now.jitter));
            let why = match f.limit_wait_ms {
                Some(_) => format!("{reason}; waiting {} for the reset", fmt_ms(delay)),
                None => format!("{reason}; no reset given, waiting {} (backoff)", fmt_ms(delay)),
            };
            out.push(emit(
                "rate_limited",
                json!({ "attempt": attempt, "provider": provider, "waitMs": delay, "reason": reason }),
            ));
            // A limit of no known provider holds no provider and feeds no provider's load.
            if !provider.is_empty() {
                out.push(Action::RateLimited { provider: provider.clone() });
            }
            let next_mono = now.mono.saturating_add(delay);
            (
                AgentState::Waiting { next_mono, provider, reason: why },
                format!("wait {}", fmt_ms(delay)),
                Some("rate limit".to_string()),
            )
        }
        None if requested => (AgentState::Killed, "none".to_string(), None),
        None if restart => (AgentState::Queued { reason: "retry requested".into() }, "retry".to_string(), None),
        None => {
            out.push(Action::Outcome { success: true });
            (AgentState::Complete, "none".to_string(), None)
        }
        Some(ft) => {
            out.push(Action::Outcome { success: false });
            let (action, rule) = fixed.unwrap_or_else(|| {
                let facts = Facts {
                    failure: ft,
                    exit_code: f.end.exit_code(),
                    signal: f.end.signal(),
                    last_finding: f.last_finding.as_deref(),
                    output_tail: &f.output_tail,
                    api_error_status: f
                        .stream
                        .as_ref()
                        .and_then(|s| s.result.as_ref())
                        .and_then(|r| r.api_error_status),
                    result_text: f.stream.as_ref().and_then(|s| s.result.as_ref()).and_then(|r| r.text.as_deref()),
                };
                let (a, r) = classify::classify(rules.user, rules.defaults, &facts);
                (a, r.to_string())
            });
            out.push(emit(
                "classified",
                json!({ "attempt": attempt, "failureType": ft, "action": action, "rule": rule }),
            ));
            if action == RuleAction::Ignore {
                agent.attempts[idx].counted = false;
            }
            let (state, text, more) = after_failure(agent, ft, action, &reason, f.last_finding.as_deref(), now);
            out.extend(more);
            (state, text, Some(rule))
        }
    };
    agent.attempts[idx].run = AttemptRun::Ended {
        ended_at: now.wall.clone(),
        end: f.end.clone(),
        failure_type: failure.map(|t| t.as_str().to_string()),
        reason: Some(reason),
        action: Some(action_text),
        rule,
    };
    out.push(emit(state.entry_event(), json!({ "attempt": attempt, "reason": state.reason() })));
    agent.state = state;
    agent.updated_at = now.wall.clone();
    out
}

/// Every attempt's reason, for escalations and retry contexts.
pub fn attempt_history(agent: &Agent) -> Vec<String> {
    agent
        .attempts
        .iter()
        .filter_map(|a| match &a.run {
            AttemptRun::Ended { reason, end, failure_type, .. } => Some(format!(
                "attempt {} ({}): {}",
                a.attempt,
                failure_type.as_deref().unwrap_or("ok"),
                reason.clone().unwrap_or_else(|| end.describe())
            )),
            _ => None,
        })
        .collect()
}

fn escalate(agent: &Agent, why: String, current: &str) -> (AgentState, String, Vec<Action>) {
    let mut history = attempt_history(agent);
    history.push(format!("attempt {}: {current}", agent.attempts.len()));
    let reason = format!("{why}. {}", history.join(". "));
    (
        AgentState::Escalated { reason: reason.clone(), escalation: 0 },
        "escalate".into(),
        vec![Action::Escalate { reason }],
    )
}

/// The retry budget, deadline and corrective-attempt rules, applied to a classified failure.
fn after_failure(
    agent: &mut Agent,
    ft: FailureType,
    action: RuleAction,
    reason: &str,
    last_finding: Option<&str>,
    now: &Now,
) -> (AgentState, String, Vec<Action>) {
    let p = agent.spec.policy.clone();
    match action {
        RuleAction::Fail => {
            let st = if ft == FailureType::Timeout {
                AgentState::TimedOut { reason: reason.to_string() }
            } else {
                AgentState::Failed { reason: reason.to_string() }
            };
            return (st, "fail".into(), vec![]);
        }
        RuleAction::Escalate => return escalate(agent, format!("{} failure needs a human", ft.as_str()), reason),
        RuleAction::Wait => {
            // Nobody is left to unblock it: a human is asked at once.
            let reason = format!("blocked on an external dependency with no process left: {reason}");
            let st = AgentState::Blocked { reason: reason.clone(), escalation: 0 };
            return (st, "needs_human".into(), vec![Action::Escalate { reason }]);
        }
        RuleAction::Retry | RuleAction::RetryWithContext | RuleAction::Ignore => {}
    }
    let budget = &agent.attempts[agent.budget_start.min(agent.attempts.len())..];
    let earlier = &budget[..budget.len().saturating_sub(1)];
    if ft == FailureType::Deliverable
        && earlier
            .iter()
            .any(|a| matches!(&a.run, AttemptRun::Ended { failure_type: Some(t), .. } if t == "deliverable"))
    {
        return escalate(agent, "deliverable failure after a corrective attempt".into(), reason);
    }
    let used = agent.counted_attempts() as u32; // includes this attempt unless ignored
    let retry_no = used.max(1); // the retry about to be scheduled: 1 for the first
    if action != RuleAction::Ignore && used > p.max_retries {
        return escalate(agent, format!("gave up after {used} attempts (max_retries = {})", p.max_retries), reason);
    }
    if let (Some(d), Some(first)) = (p.deadline_ms, agent.attempts.first())
        && now.mono >= first.started_mono.saturating_add(d)
    {
        return escalate(agent, format!("the role's {} deadline passed", fmt_ms(d)), reason);
    }
    let delay = p.backoff.delay_ms(retry_no, now.jitter);
    let mut notes = Vec::new();
    if action == RuleAction::RetryWithContext || ft == FailureType::Deliverable {
        let mut n = format!("The previous attempt failed ({}): {reason}.", ft.as_str());
        if let Some(f) = last_finding {
            n.push_str(&format!(" Its last finding: {f}."));
        }
        if ft == FailureType::Deliverable {
            n.push_str(" This is a corrective attempt: produce every file your handoff lists, or correct the handoff.");
        }
        notes.push(n);
    }
    if retry_no >= 2 {
        notes.push(p.retry_guidance.clone().unwrap_or_else(|| DEFAULT_RETRY_GUIDANCE.to_string()));
    }
    if let Some(h) = agent.next_context.take() {
        notes.insert(0, h);
    }
    agent.next_context = if notes.is_empty() { None } else { Some(notes.join("\n\n")) };
    let next_mono = now.mono.saturating_add(delay);
    let why = format!("retry {retry_no} of {} after {}: {reason}", p.max_retries, ft.as_str());
    let ev = emit(
        "retry_scheduled",
        json!({ "nextAttempt": agent.attempts.len() + 1, "delayMs": delay, "action": action, "retry": retry_no }),
    );
    (AgentState::Retrying { next_mono, reason: why }, format!("{} in {}", action.as_str(), fmt_ms(delay)), vec![ev])
}

/// `corral kill`: TERM to the group now, KILL after the grace period.
pub fn kill_requested(agent: &mut Agent, grace_ms: u64, now: &Now) -> Result<Vec<Action>, String> {
    match &agent.state {
        AgentState::Queued { .. }
        | AgentState::Retrying { .. }
        | AgentState::Waiting { .. }
        | AgentState::Blocked { .. } => {
            agent.state = AgentState::Killed;
            agent.updated_at = now.wall.clone();
            Ok(vec![emit("killed", json!({ "reason": "killed while not running" }))])
        }
        AgentState::Running | AgentState::Stopping { .. } => Ok(stop(agent, StopCause::Requested, grace_ms, now)),
        s => Err(format!("{} is already {}; there is nothing to kill", agent.spec.id, s.name())),
    }
}

/// `corral retry`: a new attempt now (after the current one is gone), with a fresh budget.
pub fn retry_requested(agent: &mut Agent, context: Option<String>, now: &Now) -> Result<Vec<Action>, String> {
    if let Some(c) = context {
        agent.next_context = Some(match agent.next_context.take() {
            Some(prev) => format!("{prev}\n\n{c}"),
            None => c,
        });
    }
    agent.budget_start = agent.attempts.len();
    let out = vec![emit("retry_requested", json!({ "context": agent.next_context }))];
    match &agent.state {
        AgentState::Running | AgentState::Stopping { .. } => {
            let mut out = out;
            out.extend(stop(agent, StopCause::Restart, STOP_GRACE_MS, now));
            Ok(out)
        }
        AgentState::Queued { .. } => Err(format!("{} has not started yet; it is queued", agent.spec.id)),
        _ => {
            agent.state = AgentState::Queued { reason: "retry requested".into() };
            agent.updated_at = now.wall.clone();
            Ok(out)
        }
    }
}

/// `corral tell`: a message for the agent. A live agent reads it from its inbox; an agent
/// blocked with nobody left is resumed by it (a new attempt, with a fresh budget, whose
/// context carries the inbox).
pub fn told(agent: &mut Agent, now: &Now) -> Vec<Action> {
    if !matches!(agent.state, AgentState::Blocked { .. }) {
        return vec![];
    }
    agent.budget_start = agent.attempts.len();
    agent.state = AgentState::Queued { reason: "resumed by a message".into() };
    agent.updated_at = now.wall.clone();
    vec![emit("resumed", json!({ "by": "tell" }))]
}

fn stop(agent: &mut Agent, cause: StopCause, grace_ms: u64, now: &Now) -> Vec<Action> {
    let pgid = agent.current().and_then(Attempt::pid);
    let mut out = vec![emit(cause.event(), json!({ "graceMs": grace_ms, "cause": cause }))];
    // A second request while already stopping keeps the first cause (a kill stays a kill).
    let cause = match &agent.state {
        AgentState::Stopping { cause: StopCause::Requested, .. } => StopCause::Requested,
        _ => cause,
    };
    agent.state = AgentState::Stopping { cause, hard_kill_mono: now.mono.saturating_add(grace_ms) };
    agent.updated_at = now.wall.clone();
    if let Some(pgid) = pgid {
        out.push(Action::SignalGroup { pgid, signal: Signal::Term });
    }
    out
}

/// Which running-attempt limit comes first, and when.
fn running_deadlines(agent: &Agent) -> Vec<(u64, StopCause)> {
    let Some(a) = agent.current() else { return vec![] };
    let p = &agent.spec.policy;
    let l = &a.liveness;
    let mut v = Vec::new();
    if let (Some(d), Some(first)) = (p.deadline_ms, agent.attempts.first()) {
        v.push((first.started_mono.saturating_add(d), StopCause::Deadline));
    }
    // While it waits on a blocker, the blocked timeout bounds it instead of the attempt
    // timeout, which does not count the time spent waiting.
    if let (Some(blocker), Some(since)) = (&l.waiting_on, l.waiting_since) {
        let cause = StopCause::BlockedTimeout { blocker: blocker.clone() };
        v.push((since.saturating_add(p.blocked_timeout_ms), cause));
    } else if let Some(t) = a.timeout_ms {
        v.push((a.started_mono.saturating_add(t).saturating_add(l.blocked_ms), StopCause::AttemptTimeout));
    }
    if let (Some(s), None) = (p.start_timeout_ms, l.first_sign) {
        v.push((a.started_mono.saturating_add(s), StopCause::StartTimeout));
    }
    // Every event of an adapter agent's stream is a heartbeat: its heartbeat check runs from
    // the start, reporting or not.
    let stream_hb = (!agent.spec.adapter.is_none()).then(|| l.last_output.unwrap_or(0).max(a.started_mono));
    if l.waiting_on.is_none() {
        if let Some(hb) = l.last_heartbeat().max(stream_hb) {
            v.push((hb.saturating_add(p.heartbeat_timeout_ms), StopCause::Heartbeat));
        }
        if let Some(c) = l.last_change {
            v.push((c.saturating_add(p.stall_timeout_ms), StopCause::Silent));
        }
    }
    v
}

/// The next monotonic instant at which [`tick`] has something to do for this agent.
pub fn next_deadline(agent: &Agent) -> Option<u64> {
    match &agent.state {
        AgentState::Running => running_deadlines(agent).into_iter().map(|(t, _)| t).min(),
        AgentState::Stopping { hard_kill_mono, .. } => Some(*hard_kill_mono),
        AgentState::Retrying { next_mono, .. } | AgentState::Waiting { next_mono, .. } => Some(*next_mono),
        _ => None,
    }
}

/// Deadlines that have passed: stop a running attempt, KILL after grace, end a backoff.
pub fn tick(agent: &mut Agent, now: &Now) -> Vec<Action> {
    match agent.state.clone() {
        AgentState::Running => {
            let due = running_deadlines(agent).into_iter().filter(|(t, _)| *t <= now.mono).min_by_key(|(t, _)| *t);
            match due {
                Some((_, cause)) => stop(agent, cause, STOP_GRACE_MS, now),
                None => vec![],
            }
        }
        AgentState::Stopping { cause, hard_kill_mono } if hard_kill_mono <= now.mono => {
            // Still here after the grace period: KILL, and look again a little later.
            agent.state = AgentState::Stopping { cause, hard_kill_mono: now.mono.saturating_add(1_000) };
            match agent.current().and_then(Attempt::pid) {
                Some(pgid) => vec![Action::SignalGroup { pgid, signal: Signal::Kill }],
                None => vec![],
            }
        }
        AgentState::Retrying { next_mono, .. } if next_mono <= now.mono => {
            agent.state = AgentState::Queued { reason: "retry due".into() };
            agent.updated_at = now.wall.clone();
            vec![emit("retry_due", json!({ "nextAttempt": agent.attempts.len() + 1 }))]
        }
        AgentState::Waiting { next_mono, provider, .. } if next_mono <= now.mono => {
            agent.state = AgentState::Queued { reason: format!("{provider}'s limit reset") };
            agent.updated_at = now.wall.clone();
            vec![emit("retry_due", json!({ "nextAttempt": agent.attempts.len() + 1, "after": "rate_limited" }))]
        }
        _ => vec![],
    }
}

pub fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}
