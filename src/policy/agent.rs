//! The agent and attempt records, with their states as types: a queued agent has no
//! attempt running, an ended attempt always carries how it ended.

use super::classify::RuleAction;
use super::role::RolePolicy;
use crate::protocol::AgentId;
use crate::protocol::files::FileStamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What was asked for at spawn time; never changes afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    pub id: AgentId,
    pub role: String,
    pub task: String,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub after: Vec<AgentId>,
    /// argv of the command, already expanded from the role template.
    pub command: Vec<String>,
    /// The command came from the role's template: placeholders are expanded per attempt.
    #[serde(default)]
    pub template: bool,
    pub cwd: PathBuf,
    /// The whole environment the agent starts with (caller's, plus `--env`), without the
    /// `CORRAL_*` variables, which are set per attempt.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The role's policy as resolved at spawn time (with `--timeout`/`--max-retries`).
    pub policy: RolePolicy,
    pub spawned_at: String,
    /// The caller's key for this spawn; a retried request with it gets this agent back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// How the command's output is read (`none`: plain output).
    #[serde(default, skip_serializing_if = "crate::adapter::Adapter::is_none_ref")]
    pub adapter: crate::adapter::Adapter,
    /// The agent's own git worktree (`cwd` is inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<WorktreeSpec>,
    /// The first of the ports reserved for the agent (`CORRAL_PORT`), and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
    /// The admission group it counts against (`--group`, else its role's `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Among the queued agents that may start, higher priorities start first (`--priority`).
    #[serde(default, skip_serializing_if = "no_priority")]
    pub priority: i32,
    /// Not started before this wall time (RFC 3339; `--delay` from the spawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
}

fn no_priority(n: &i32) -> bool {
    *n == 0
}

/// Where an agent's worktree is and what it is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorktreeSpec {
    /// The top of the repository's main working tree.
    pub repo: PathBuf,
    pub path: PathBuf,
    pub branch: String,
    /// What the worktree is made from, as given (`HEAD` by default).
    pub base: String,
}

/// How an attempt's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProcessEnd {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The command could not be started at all (not found, not executable, bad cwd).
    NotStarted {
        reason: String,
    },
    /// The supervisor lost track of the process (its shim vanished without a record).
    Lost {
        reason: String,
    },
}

impl ProcessEnd {
    pub fn success(&self) -> bool {
        matches!(self, Self::Exited { code: 0 })
    }
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::Exited { code } => Some(*code),
            _ => None,
        }
    }
    pub fn signal(&self) -> Option<i32> {
        match self {
            Self::Signaled { signal } => Some(*signal),
            _ => None,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Self::Exited { code } => format!("exited with code {code}"),
            Self::Signaled { signal } => {
                format!("killed by signal {} ({signal})", signal_name(*signal))
            }
            Self::NotStarted { reason } => format!("could not start: {reason}"),
            Self::Lost { reason } => format!("lost: {reason}"),
        }
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum AttemptRun {
    /// Recorded; the supervisor is starting its process.
    Starting,
    /// Running in its own process group (pgid == pid), watched by a shim.
    Running { shim_pid: i32, pid: i32 },
    Ended {
        ended_at: String,
        end: ProcessEnd,
        #[serde(default)]
        failure_type: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        action: Option<String>,
        /// The classification rule that chose the action.
        #[serde(default)]
        rule: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: String,
    /// Monotonic milliseconds: deadlines do not move when the wall clock steps.
    pub started_mono: u64,
    pub timeout_ms: Option<u64>,
    pub handoff_file: PathBuf,
    pub run: AttemptRun,
    /// Extra context this attempt was started with (retry guidance, the blocker, a human note).
    #[serde(default)]
    pub context_note: Option<String>,
    /// False for attempts whose failure was classified `ignore`: they use no retry budget.
    #[serde(default = "yes")]
    pub counted: bool,
    #[serde(default)]
    pub liveness: Liveness,
    /// The status file as it was just before this attempt started (`None`: there was
    /// none): a status file that differs from it was written by this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_baseline: Option<FileStamp>,
    /// Handoff files (names) of this agent that existed before this attempt started: they
    /// are not this attempt's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handoffs_before: Vec<String>,
    /// Findings the status file had seen (kept and dropped) when this attempt started: the
    /// ones after them are its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings_before: Option<usize>,
    /// The log's length when this attempt started: its output is what follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start: Option<u64>,
    /// What the agent CLI's stream said about this attempt (adapter agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<AttemptStream>,
}

impl AttemptStream {
    /// Keeps the session a resumed attempt was started with when the CLI reported none.
    pub fn or_resumed(mut self, started: Option<&AttemptStream>) -> Self {
        if self.session_id.is_none() {
            self.session_id = started.and_then(|s| s.session_id.clone());
        }
        self
    }
}

/// An attempt as its agent CLI reported it: its session, its own share of the tokens, cost
/// and turns, and the CLI's final result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<super::usage::Tokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::adapter::RunResult>,
    /// The session's totals as the CLI reported them at the end (a resumed session's
    /// next attempt subtracts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<crate::adapter::Usage>,
    /// This attempt continued the session of an earlier one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The session it was started to continue: kept apart from `session_id`, which the
    /// CLI's own output may change while the attempt runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
}

impl AttemptStream {
    /// The session this attempt was started to continue, if it was.
    pub fn resumed_session(&self) -> Option<&str> {
        if !self.resumed {
            return None;
        }
        self.resumed_from.as_deref().or(self.session_id.as_deref())
    }
}

fn yes() -> bool {
    true
}

/// Signs of life of one attempt, on the monotonic clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    /// First status write or output.
    pub first_sign: Option<u64>,
    /// Last status write of this attempt: set once the agent reports, which turns on the
    /// heartbeat and stall checks.
    pub last_report: Option<u64>,
    /// Last time the reported content (status, progress, phase, milestone, findings) changed.
    pub last_change: Option<u64>,
    pub last_output: Option<u64>,
    /// Set while the agent reports `blocked` on something classified `wait`.
    pub waiting_on: Option<String>,
    /// When the current wait on a blocker began: `blocked_timeout` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<u64>,
    /// Time spent waiting on blockers in earlier waits of this attempt: the attempt timeout
    /// does not count it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocked_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Liveness {
    pub fn last_heartbeat(&self) -> Option<u64> {
        match (self.last_report, self.last_output) {
            (Some(r), Some(o)) => Some(r.max(o)),
            (Some(r), None) => Some(r),
            _ => None,
        }
    }
}

impl Attempt {
    /// Attempt `attempt`, about to start: nothing seen of it yet. Fields added to the
    /// attempt get their empty value here, in one place.
    pub fn starting(attempt: u32, started_at: String, started_mono: u64, handoff_file: PathBuf) -> Self {
        Attempt {
            attempt,
            started_at,
            started_mono,
            timeout_ms: None,
            handoff_file,
            run: AttemptRun::Starting,
            context_note: None,
            counted: true,
            liveness: Liveness::default(),
            status_baseline: None,
            handoffs_before: Vec::new(),
            findings_before: None,
            log_start: None,
            stream: None,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match self.run {
            AttemptRun::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
    pub fn ended(&self) -> Option<(&str, &ProcessEnd)> {
        match &self.run {
            AttemptRun::Ended { ended_at, end, .. } => Some((ended_at, end)),
            _ => None,
        }
    }
}

/// Why the supervisor is stopping a running attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum StopCause {
    /// `corral kill`: no retry follows.
    Requested,
    /// `corral retry` of a running agent: the next attempt starts once this one is gone.
    Restart,
    AttemptTimeout,
    StartTimeout,
    /// No status write and no output for `heartbeat_timeout`.
    Heartbeat,
    /// All attempts together ran past the role's `deadline`.
    Deadline,
    /// Reported content unchanged for `stall_timeout`.
    Silent,
    /// Reported `blocked` on `blocker`; the classification chose `action`.
    Blocked {
        action: RuleAction,
        rule: String,
        blocker: String,
    },
    /// Waited on an external blocker for longer than `blocked_timeout`.
    BlockedTimeout {
        blocker: String,
    },
}

impl StopCause {
    pub fn event(&self) -> &'static str {
        match self {
            Self::Requested => "kill_requested",
            Self::Restart => "restart_requested",
            Self::AttemptTimeout | Self::StartTimeout | Self::Deadline => "timeout",
            Self::Heartbeat => "stale",
            Self::Silent => "stalled",
            Self::Blocked { .. } => "blocked",
            Self::BlockedTimeout { .. } => "blocked_timeout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting to start; `reason` says on what (dependencies, capacity, breaker, ...).
    Queued {
        reason: String,
    },
    /// The latest attempt is starting or running.
    Running,
    /// TERM has been sent to the group; KILL follows at `hard_kill_mono` if it is still there.
    Stopping {
        cause: StopCause,
        hard_kill_mono: u64,
    },
    /// Waiting out the backoff before the next attempt.
    Retrying {
        next_mono: u64,
        reason: String,
    },
    /// Hit a rate or usage limit of `provider`: waits until the reset (or a backoff),
    /// spending no retry, and holds the admission of that provider's other agents.
    Waiting {
        next_mono: u64,
        provider: String,
        reason: String,
    },
    /// Ended while blocked on something outside the agent: nobody is left to unblock it, so
    /// it needs a human (`escalation` is its number). `corral retry` or `corral tell`
    /// resumes it.
    Blocked {
        reason: String,
        #[serde(default)]
        escalation: u64,
    },
    Complete,
    Failed {
        reason: String,
    },
    Killed,
    TimedOut {
        reason: String,
    },
    /// Needs a human; `escalation` is its number in the escalation queue.
    Escalated {
        reason: String,
        escalation: u64,
    },
}

impl AgentState {
    /// corral's one-word view of the agent.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Running => "running",
            Self::Stopping { cause: StopCause::Heartbeat, .. } => "stale",
            Self::Stopping { .. } => "stopping",
            Self::Retrying { .. } => "retrying",
            Self::Waiting { .. } => "waiting",
            Self::Blocked { .. } => "blocked",
            Self::Complete => "complete",
            Self::Failed { .. } => "failed",
            Self::Killed => "killed",
            Self::TimedOut { .. } => "timed_out",
            Self::Escalated { .. } => "escalated",
        }
    }
    /// The names of the states that are finished by their name alone (a `blocked` agent is
    /// finished only when it needs a human: see [`AgentState::needs_human`]).
    pub const FINISHED: &'static [&'static str] = &["complete", "failed", "killed", "timed_out", "escalated"];

    /// The kinds of the events that enter a finished state.
    pub const FINISHED_EVENTS: &'static [&'static str] =
        &["complete", "failed", "killed", "timed_out", "escalated", "needs_human"];

    /// Nothing more happens without a human: complete, failed for good, killed, escalated,
    /// blocked with nobody left to unblock it.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Self::Complete
                | Self::Failed { .. }
                | Self::Killed
                | Self::TimedOut { .. }
                | Self::Escalated { .. }
                | Self::Blocked { .. }
        )
    }

    /// Waiting on a human: escalated, or blocked with no process left.
    pub fn needs_human(&self) -> bool {
        matches!(self, Self::Escalated { .. } | Self::Blocked { .. })
    }

    /// The escalation this state waits on, once the shell has numbered it.
    pub fn escalation(&self) -> Option<u64> {
        match self {
            Self::Escalated { escalation, .. } | Self::Blocked { escalation, .. } if *escalation > 0 => {
                Some(*escalation)
            }
            _ => None,
        }
    }

    /// Links the escalation the shell opened (and numbered) for this state.
    pub fn link_escalation(&mut self, n: u64) {
        if let Self::Escalated { escalation, .. } | Self::Blocked { escalation, .. } = self {
            *escalation = n;
        }
    }

    /// The kind of the event that enters this state.
    pub fn entry_event(&self) -> &'static str {
        match self {
            Self::Blocked { .. } => "needs_human",
            other => other.name(),
        }
    }
    pub fn has_live_process(&self) -> bool {
        matches!(self, Self::Running | Self::Stopping { .. })
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Queued { reason }
            | Self::Failed { reason }
            | Self::TimedOut { reason }
            | Self::Retrying { reason, .. }
            | Self::Waiting { reason, .. }
            | Self::Blocked { reason, .. }
            | Self::Escalated { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub spec: AgentSpec,
    pub state: AgentState,
    pub attempts: Vec<Attempt>,
    pub updated_at: String,
    /// Index into `attempts` where the current retry budget began (a human retry resets it).
    #[serde(default)]
    pub budget_start: usize,
    /// Context for the next attempt, set when a retry is scheduled or requested.
    #[serde(default)]
    pub next_context: Option<String>,
    /// The commit the agent's worktree was made from, once it is fully made (set up
    /// included): until then no attempt of the agent runs in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// When `corral clean` took the finished agent out of the views (it stays in the
    /// registry: `show` and `events` still find it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaned_at: Option<String>,
}

impl Agent {
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
    pub fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut()
    }
    /// corral's one-word view, with a live agent that waits on a blocker shown `blocked`.
    pub fn view_name(&self) -> &'static str {
        match (&self.state, self.current()) {
            (AgentState::Running, Some(a)) if a.liveness.waiting_on.is_some() => "blocked",
            (state, _) => state.name(),
        }
    }

    /// Attempts that count against the retry budget.
    pub fn counted_attempts(&self) -> usize {
        self.attempts[self.budget_start.min(self.attempts.len())..].iter().filter(|a| a.counted).count()
    }
}

/// A failure that needs a human, kept until resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    pub n: u64,
    pub agent_id: AgentId,
    pub reason: String,
    pub opened_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set when it was opened for an unresolved conflict between agents' results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<super::escalation::ConflictRef>,
    /// What the human decided, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<super::escalation::Answer>,
    /// What became of the agent when it was resolved (stays failed, runs again, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Escalation {
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}
