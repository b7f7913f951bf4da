//! The control protocol between the CLI and the supervisor: one JSON object per line over
//! a Unix socket that only the owner can open. Requests and the shapes of `--json` output
//! live here so the CLI, the supervisor (and later MCP) share one definition.

use crate::store::EventRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most events one `events` reply carries; a full page means: ask for the next.
pub const EVENTS_PAGE: usize = 10_000;

/// Largest request line the supervisor reads; anything longer is refused, not buffered.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Spawn(Box<SpawnRequest>),
    Status {
        ids: Vec<String>,
        role: Option<String>,
    },
    Show {
        id: String,
    },
    Kill {
        id: String,
        grace_ms: u64,
    },
    Retry {
        id: String,
        context: Option<String>,
        /// Variables set in the agent's environment from this attempt on (a cluster worker's
        /// `CORRAL_FENCE` for a new claim of an agent it ran before).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
    },
    Tell {
        id: String,
        text: String,
    },
    Escalations {
        all: bool,
    },
    Resolve {
        n: u64,
        note: Option<String>,
        /// What the human decided: a value or a winner for a conflict, a retry for an agent.
        #[serde(default)]
        answer: crate::policy::escalation::Answer,
    },
    Health,
    /// Opens an escalation for an agent (e.g. an unresolved conflict found by aggregation);
    /// an identical open one is not opened twice.
    Escalate {
        id: String,
        reason: String,
        /// The conflict it is about, when it is about one (then `id` is one of its agents).
        #[serde(default)]
        conflict: Option<crate::policy::escalation::ConflictRef>,
    },
    /// Learned memory: stored candidates and failure patterns per role.
    Memory,
    /// The sequence number of the newest event (0 when there is none).
    LastSeq,
    /// Events after `after`; with `follow`, the connection stays open and streams new ones.
    Events {
        after: u64,
        agent: Option<String>,
        follow: bool,
    },
    /// Takes finished agents out of the views (`corral clean`): those that ended at least
    /// `older_than_ms` ago; with `worktrees`, the reply also names agents cleaned before
    /// whose worktree may still be there.
    Clean {
        older_than_ms: Option<u64>,
        #[serde(default)]
        worktrees: bool,
    },
    /// `corral parallel`: how many agents (of `group`, else of the workspace) may run at
    /// once, changed at run time and kept; `max: None` goes back to the configuration's.
    Parallel {
        #[serde(default)]
        group: Option<String>,
        max: Option<usize>,
    },
    /// `corral pause` (`paused`) / `corral resume`: holds or releases the admission of queued
    /// agents (of `group`, else of the workspace; `all` releases every pause).
    Pause {
        #[serde(default)]
        group: Option<String>,
        paused: bool,
        #[serde(default)]
        all: bool,
    },
    DaemonStatus,
    /// Answers at once: proves the supervisor behind the socket is alive and serving.
    Ping,
    Stop,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpawnRequest {
    pub role: String,
    pub task: String,
    pub scope: Option<String>,
    pub constraints: Vec<String>,
    pub id: Option<String>,
    pub after: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    /// `--env K=V`, applied over the caller's environment.
    pub env: Vec<(String, String)>,
    /// The caller's environment: the agent starts with it, as a command run by hand would.
    pub caller_env: Vec<(String, String)>,
    pub cwd: String,
    /// Empty: use the role's `command` template.
    pub command: Vec<String>,
    /// A repeated request with the same key returns the agent the first one created.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// `--adapter`: how the command's output is read (default: the role's, else from the
    /// program name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// `--worktree` (true) / `--no-worktree` (false) over the role's `isolation`.
    #[serde(default)]
    pub worktree: Option<bool>,
    /// `--group`: the admission group (default: the role's `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `--priority` (default 0).
    #[serde(default)]
    pub priority: i32,
    /// `--delay`: not started before this long after the spawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `--on K=V`: in cluster mode, labels a worker must offer to run it, over the role's
    /// `placement` (a single machine runs it wherever it is).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub placement: std::collections::BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpawnReply {
    pub agent_id: String,
    pub status: String,
    pub pid: Option<i32>,
    pub reason: Option<String>,
    /// Something the caller should know although the spawn went through (an unknown role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One line of `corral status --json` (and the head of `show --json`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub role: String,
    pub task: String,
    /// corral's view: queued, running, stopping, complete, failed, killed, timed_out, ...
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Waiting on a human: escalated, or blocked with no process left (`corral retry` or
    /// `corral tell` resumes it).
    #[serde(default)]
    pub needs_human: bool,
    /// What the agent itself last reported in its status file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub attempt: u32,
    /// The attempt's number within the current retry budget (a human retry starts a new
    /// one), which is what `maxRetries` bounds.
    #[serde(default)]
    pub budget_attempt: u32,
    pub max_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    /// Seconds since the last sign of life (status write, or start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    pub anomalies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub spawned_at: String,
    /// The agent's working directory.
    pub cwd: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Seconds until the next attempt, while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<u64>,
    /// Why the status file could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// How the agent's output is read: claude-code, codex or none.
    #[serde(default = "none_adapter")]
    pub adapter: String,
    /// A worktree agent's own git worktree, branch, repository and the commit it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// `CORRAL_PORT`: the first of the ports reserved for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The role's `verify` command, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<String>>,
    /// The role's limit on that command, in milliseconds (with `verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_timeout_ms: Option<u64>,
    /// The agent CLI's session (the latest attempt's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Cost of all attempts together, in USD (`null`: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::policy::usage::Tokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    /// While `waiting` on a rate limit: when it ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<String>,
    /// The admission group it counts against (`--group`, or its role's `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `--priority`: among queued agents that may start, higher ones start first.
    #[serde(default)]
    pub priority: i32,
    /// `--delay`: not started before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
}

fn none_adapter() -> String {
    "none".into()
}

impl AgentView {
    /// Nothing more happens to it without a human: what `wait` waits for.
    pub fn is_finished(&self) -> bool {
        self.needs_human || crate::policy::agent::AgentState::FINISHED.contains(&self.status.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub failure_type: Option<String>,
    pub reason: Option<String>,
    pub action: Option<String>,
    pub rule: Option<String>,
    pub pid: Option<i32>,
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::policy::usage::Tokens>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    /// The agent CLI's final result, when it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultView>,
    /// This attempt continued the session of the one before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// Where this attempt's part of the log starts (its header line), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start: Option<u64>,
}

/// An agent CLI's final result as `show --json` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultView {
    pub ok: bool,
    pub subtype: Option<String>,
    pub text: Option<String>,
    pub api_error_status: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShowView {
    #[serde(flatten)]
    pub agent: AgentView,
    pub scope: Option<String>,
    pub constraints: Vec<String>,
    pub after: Vec<String>,
    pub command: Vec<String>,
    pub attempts: Vec<AttemptView>,
    pub findings: Vec<Value>,
    pub files: ShowFiles,
    pub handoffs: Vec<String>,
    pub events: Vec<EventRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShowFiles {
    pub status_file: String,
    pub log_file: String,
    pub context_file: String,
    pub expected_handoff: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonView {
    pub pid: u32,
    pub socket: String,
    pub data_dir: String,
    pub started_at: String,
    pub uptime_seconds: f64,
    pub agents_supervised: usize,
    pub agents_total: usize,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    pub ok: bool,
    /// Kept as raw JSON text: neither side builds a value tree it does not need, and a
    /// `--json` command can print it as it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The exit code the CLI should use for this error (2: bad input, 1: failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// What [`Reply::ok`] always writes before its data: `{"ok":true,"data":DATA}`.
const OK_PREFIX: &str = r#"{"ok":true,"data":"#;

/// The data of a successful reply line as the supervisor wrote it, without reading it as
/// JSON (a status of thousands of agents is hundreds of KiB: printing it as it came costs a
/// copy, parsing it first costs more than the rest of the command). `None` for any other
/// line: an error, or a shape this does not know, which the caller then parses.
pub fn ok_data(line: &str) -> Option<&str> {
    line.strip_suffix('\n').unwrap_or(line).strip_prefix(OK_PREFIX)?.strip_suffix('}')
}

impl Reply {
    pub fn ok(data: impl Serialize) -> Self {
        let raw =
            serde_json::value::to_raw_value(&data).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        Self { ok: true, data: Some(raw), error: None, exit: None }
    }
    /// The data as a value of type T.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_ref().map(|d| d.get()).unwrap_or("null"))
    }
    pub fn err(exit: i32, msg: impl Into<String>) -> Self {
        Self { ok: false, data: None, error: Some(msg.into()), exit: Some(exit) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    pub healthy: bool,
    /// Why spawning is held, when it is.
    pub held_because: Option<String>,
    pub running: usize,
    /// How many agents may run at once now (`corral parallel` over `[health] max_concurrent`).
    pub max_concurrent: usize,
    /// `[health] max_concurrent` as configured, when `corral parallel` changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_max_concurrent: Option<usize>,
    /// `corral pause` holds every queued agent.
    #[serde(default)]
    pub paused: bool,
    pub queued: Vec<QueuedView>,
    /// The breaker that says most: an open one, else half-open, else closed (or off).
    pub breaker: BreakerView,
    /// Every breaker with recent failures (one per role, or the workspace's one).
    #[serde(default)]
    pub breakers: Vec<BreakerView>,
    pub free_memory: Option<u64>,
    pub min_free_memory: Option<u64>,
    pub load: Option<f64>,
    pub max_load: Option<f64>,
    pub open_escalations: usize,
    pub max_open_escalations: Option<usize>,
    /// What all agents' attempts cost together, in USD, where known.
    #[serde(default)]
    pub cost_usd: f64,
    /// Providers whose rate or usage limit holds their agents' admission, or whose
    /// concurrency a burst of rate limits lowered.
    #[serde(default)]
    pub providers: Vec<ProviderView>,
    /// Admission groups: those configured or changed at run time, and those agents name.
    #[serde(default)]
    pub groups: Vec<GroupView>,
}

/// What `corral parallel`, `corral pause` and `corral resume` print with `--json`: the
/// capacity of the workspace (no `group`) or of one group, as it is now.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How many (of the group's) agents may run at once now (`null`: a group with no limit).
    pub max_concurrent: Option<usize>,
    /// What `corral.toml` says (`null`: nothing, for a group).
    pub configured: Option<usize>,
    /// `corral parallel` changed it: this holds over the configuration until `--reset`.
    pub changed: bool,
    /// Admission is held (`corral resume` releases it).
    pub paused: bool,
    pub running: usize,
    pub queued: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub name: String,
    /// Its agents with a live process.
    pub running: usize,
    /// Its agents waiting to start.
    pub queued: usize,
    /// How many of its agents may run at once (`null`: no limit of its own).
    pub max_concurrent: Option<usize>,
    /// `corral pause --group` holds its queued agents.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderView {
    pub name: String,
    /// When the hold of its rate limit ends (RFC 3339), while it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<String>,
    /// How many of its agents may run at once now, while a burst of rate limits has
    /// lowered that (`[health] provider_max_concurrent` otherwise, when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// How many of its agents run now.
    #[serde(default)]
    pub running: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedView {
    pub agent_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// The role this breaker is for, or `*` for the whole workspace.
    #[serde(default)]
    pub key: String,
    /// `role` or `global` (`[health] breaker_scope`).
    #[serde(default)]
    pub scope: String,
    /// closed, open, half_open, or off (`breaker_failures = 0`).
    pub state: String,
    pub recent_failures: usize,
    pub threshold: usize,
    pub window: String,
    pub cooldown: String,
    pub probe_in_seconds: Option<f64>,
    pub probe: Option<String>,
}

impl BreakerView {
    /// Breaker `key` (`None`: never tripped) as `health` shows it under `p`; `now` on the
    /// clock the breakers keep (the supervisor's monotonic one, or the database's).
    pub fn of(
        p: &crate::policy::health::HealthPolicy,
        key: &str,
        b: Option<&crate::policy::health::Breaker>,
        now: u64,
    ) -> Self {
        use crate::policy::health::Breaker;
        let (state, recent, probe_in, probe) = match b {
            _ if p.breaker_failures == 0 => ("off", 0, None, None),
            None => ("closed", 0, None, None),
            Some(Breaker::Closed { failures }) => (
                "closed",
                failures.iter().filter(|t| now.saturating_sub(**t) < p.breaker_window_ms).count(),
                None,
                None,
            ),
            Some(Breaker::Open { until_mono, failures }) => {
                ("open", *failures, Some(until_mono.saturating_sub(now) as f64 / 1000.0), None)
            }
            Some(Breaker::HalfOpen { probe }) => ("half_open", 0, None, probe.clone()),
        };
        Self {
            key: key.to_string(),
            scope: p.breaker_scope.as_str().to_string(),
            state: state.to_string(),
            recent_failures: recent,
            threshold: p.breaker_failures,
            window: crate::policy::lifecycle::fmt_ms(p.breaker_window_ms),
            cooldown: crate::policy::lifecycle::fmt_ms(p.breaker_cooldown_ms),
            probe_in_seconds: probe_in,
            probe,
        }
    }

    /// The worst of `breakers` (the summary `health` leads with) and each of them (none
    /// when breakers are off).
    pub fn all(
        p: &crate::policy::health::HealthPolicy,
        breakers: &crate::policy::health::Breakers,
        now: u64,
    ) -> (Self, Vec<Self>) {
        let summary = match breakers.worst() {
            Some((key, b)) => Self::of(p, key, Some(b), now),
            None => Self::of(p, crate::policy::health::GLOBAL, None, now),
        };
        let each = if p.breaker_failures == 0 {
            vec![]
        } else {
            breakers.by_key.iter().map(|(k, b)| Self::of(p, k, Some(b), now)).collect()
        };
        (summary, each)
    }
}

/// One agent `corral clean` took out of the views (or, with `worktrees`, one cleaned
/// before whose worktree is still recorded).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanedAgent {
    pub agent_id: String,
    pub status: String,
    /// Cleaned by this call (false: cleaned before, listed for its worktree).
    pub now: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

#[cfg(test)]
mod ok_data_tests {
    use super::*;

    #[test]
    fn a_successful_replys_data_is_found_as_written_and_nothing_else_passes() {
        for v in [
            serde_json::json!([{"agentId": "a", "task": "ends with } and \"quotes\"\n"}]),
            serde_json::json!(null),
            serde_json::json!({"x": "}"}),
        ] {
            let line = format!("{}\n", serde_json::to_string(&Reply::ok(&v)).unwrap());
            let data = ok_data(&line).expect("a successful reply");
            assert_eq!(serde_json::from_str::<serde_json::Value>(data).unwrap(), v);
        }
        let err = serde_json::to_string(&Reply::err(2, "no such agent")).unwrap();
        assert_eq!(ok_data(&err), None);
        assert_eq!(ok_data("garbage"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::health::{Breaker, HealthPolicy};

    fn policy(failures: usize) -> HealthPolicy {
        HealthPolicy { breaker_failures: failures, ..HealthPolicy::default() }
    }

    #[test]
    fn a_breaker_is_shown_on_the_clock_it_keeps() {
        let p = policy(3);
        let now = 1_000_000;
        let open = Breaker::Open { until_mono: now + 12_500, failures: 3 };
        let v = BreakerView::of(&p, "worker", Some(&open), now);
        assert_eq!((v.state.as_str(), v.recent_failures, v.threshold), ("open", 3, 3));
        assert_eq!(v.probe_in_seconds, Some(12.5));
        let closed = Breaker::Closed { failures: vec![now - 1000, now - p.breaker_window_ms - 1] };
        let v = BreakerView::of(&p, "worker", Some(&closed), now);
        assert_eq!((v.state.as_str(), v.recent_failures), ("closed", 1), "only failures within the window");
        let half = Breaker::HalfOpen { probe: Some("a1".into()) };
        assert_eq!(BreakerView::of(&p, "*", Some(&half), now).probe.as_deref(), Some("a1"));
        assert_eq!(BreakerView::of(&policy(0), "*", Some(&open), now).state, "off");
        assert_eq!(BreakerView::of(&p, "*", None, now).state, "closed");
    }
}
