//! The agent and attempt records, with their states as types: a queued agent has no
//! attempt running, an ended attempt always carries how it ended.

use crate::protocol::AgentId;
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
    #[serde(default)]
    pub attempt_timeout_ms: Option<u64>,
    pub max_retries: u32,
    pub spawned_at: String,
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
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: String,
    /// Monotonic (boot-time) milliseconds: deadlines do not move when the wall clock steps.
    pub started_mono: u64,
    pub timeout_ms: Option<u64>,
    pub handoff_file: PathBuf,
    pub run: AttemptRun,
}

impl Attempt {
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

/// Why an agent stopped being live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillCause {
    /// `corral kill`: no retry follows.
    Requested,
    /// The attempt ran past its timeout.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting to start; `reason` says on what.
    Queued {
        reason: String,
    },
    /// The latest attempt is starting or running.
    Running,
    /// TERM has been sent to the group; KILL follows at `hard_kill_mono` if it is still there.
    Stopping {
        cause: KillCause,
        hard_kill_mono: u64,
    },
    Complete,
    Failed {
        reason: String,
    },
    Killed,
    TimedOut {
        reason: String,
    },
}

impl AgentState {
    /// corral's one-word view (SPEC section 2).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Running => "running",
            Self::Stopping { .. } => "stopping",
            Self::Complete => "complete",
            Self::Failed { .. } => "failed",
            Self::Killed => "killed",
            Self::TimedOut { .. } => "timed_out",
        }
    }
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Self::Complete | Self::Failed { .. } | Self::Killed | Self::TimedOut { .. }
        )
    }
    pub fn has_live_process(&self) -> bool {
        matches!(self, Self::Running | Self::Stopping { .. })
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Queued { reason } | Self::Failed { reason } | Self::TimedOut { reason } => {
                Some(reason)
            }
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
}

impl Agent {
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
    pub fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut()
    }
    pub fn id(&self) -> &AgentId {
        &self.spec.id
    }
}
