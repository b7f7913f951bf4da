//! The workspace (the directory holding `corral.toml`, found upward from the cwd like git
//! finds `.git`) and its configuration. A config error names the file, line, key and what
//! is allowed.

use crate::policy::classify::{FailureType, Rule, RuleAction};
use crate::policy::health::{BreakerScope, HealthPolicy};
use crate::policy::role::{Backoff, Jitter, RolePolicy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_FILE: &str = "corral.toml";
pub const DEFAULT_DATA_DIR: &str = ".corral";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, deserialize_with = "de_dir")]
    pub data_dir: Option<PathBuf>,
    /// A spawn whose role is neither configured nor one of the seed's is refused instead of
    /// warned about.
    #[serde(default)]
    pub strict_roles: bool,
    #[serde(default)]
    pub defaults: RoleConfig,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    #[serde(default)]
    pub classify: Vec<ClassifyConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub mcp: McpConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Where worktree agents' worktrees go (default `<data dir>/worktrees`).
    #[serde(default, deserialize_with = "de_dir")]
    pub worktree_dir: Option<PathBuf>,
    /// `[[notify]]` hooks: commands run when events happen.
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    /// `[groups.NAME]`: admission groups with a limit of their own.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupConfig>,
    /// `[cluster]`: the PostgreSQL registry that workers on several machines share.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: cluster mode's database, workspace name, lease timings and this worker's
/// labels and slots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The PostgreSQL URL (`CORRAL_DATABASE_URL` and `--database` win over it).
    #[serde(default)]
    pub database: Option<String>,
    /// The workspace's name in the database (default: the workspace directory's name).
    #[serde(default)]
    pub workspace: Option<String>,
    /// How long a worker's lease lasts (default 30s).
    #[serde(default, deserialize_with = "de_limit")]
    pub lease: Option<Duration>,
    /// How often a worker renews it (default 5s).
    #[serde(default, deserialize_with = "de_limit")]
    pub heartbeat: Option<Duration>,
    /// How long before its lease would end a worker that could not renew stops its agents
    /// (default a third of the lease).
    #[serde(default, deserialize_with = "de_limit")]
    pub lease_margin: Option<Duration>,
    /// How long past a lease's end the others wait before they take its agents (default 5s).
    #[serde(default, deserialize_with = "de_duration")]
    pub takeover_grace: Option<Duration>,
    /// What this worker offers (`gpu = true`, `host = "a"`); a role's `placement` must be
    /// contained in them.
    #[serde(default)]
    pub labels: BTreeMap<String, toml::Value>,
    /// At most this many agents on this worker at once (default `[health] max_concurrent`).
    #[serde(default, deserialize_with = "de_at_least_one")]
    pub slots: Option<usize>,
}

/// Cluster timings with their defaults filled in and checked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    pub lease: Duration,
    pub heartbeat: Duration,
    pub margin: Duration,
    pub grace: Duration,
}

impl ClusterConfig {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

    /// The timings, or what is wrong with them: the heartbeat must leave room for at least
    /// two renewals before the margin, and the margin must be shorter than the lease.
    pub fn timings(&self) -> Result<LeaseTimings, String> {
        let lease = self.lease.unwrap_or(Self::DEFAULT_LEASE);
        let heartbeat = self.heartbeat.unwrap_or(Self::DEFAULT_HEARTBEAT.min(lease / 6));
        let margin = self.lease_margin.unwrap_or(lease / 3);
        let grace = self.takeover_grace.unwrap_or(Self::DEFAULT_GRACE.min(lease / 4));
        let f = |d: Duration| humantime::format_duration(d).to_string();
        if margin >= lease {
            return Err(format!(
                "cluster.lease_margin ({}) must be shorter than cluster.lease ({}): the worker would stop its agents \
                 before it ever renewed",
                f(margin),
                f(lease)
            ));
        }
        if heartbeat * 2 > lease - margin {
            return Err(format!(
                "cluster.heartbeat ({}) leaves no room for a second renewal before the worker must stop its agents \
                 (lease {} minus lease_margin {}); make the heartbeat at most half of that",
                f(heartbeat),
                f(lease),
                f(margin)
            ));
        }
        Ok(LeaseTimings { lease, heartbeat, margin, grace })
    }

    /// The labels as a JSON object.
    pub fn labels_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.labels).unwrap_or_else(|_| serde_json::json!({}))
    }
}

/// The default of a `[[notify]]` hook's `timeout`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `[[notify]]` hook can be run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyOn {
    /// Escalated, or blocked with nobody left to unblock it: any escalation opened.
    NeedsHuman,
    /// An escalation opened for an agent that is not merely blocked.
    Escalated,
    Complete,
    /// Failed for good (failed or timed out, not escalated).
    Failed,
    RateLimited,
    Budget,
    /// The last agent of a run finished.
    AllFinished,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 7] = [
        Self::NeedsHuman,
        Self::Escalated,
        Self::Complete,
        Self::Failed,
        Self::RateLimited,
        Self::Budget,
        Self::AllFinished,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NeedsHuman => "needs-human",
            Self::Escalated => "escalated",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::RateLimited => "rate-limited",
            Self::Budget => "budget",
            Self::AllFinished => "all-finished",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// One `[[notify]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(deserialize_with = "de_notify_on")]
    pub on: Vec<NotifyOn>,
    /// argv; the event as JSON on stdin, `CORRAL_EVENT`, `CORRAL_AGENT_ID`, `CORRAL_REASON`.
    #[serde(deserialize_with = "de_hook_command")]
    pub command: Vec<String>,
    /// How long it may run before its process group is killed (default 10s).
    #[serde(default, deserialize_with = "de_limit")]
    pub timeout: Option<Duration>,
}

impl NotifyConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_NOTIFY_TIMEOUT)
    }
}

fn de_notify_on<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NotifyOn>, D::Error> {
    let v = match OneOrMany::<String>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    let names = || NotifyOn::ALL.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ");
    if v.is_empty() {
        return Err(serde::de::Error::custom(format!(
            "`on` is empty, so the hook would never run; name at least one of {}",
            names()
        )));
    }
    let mut out = Vec::new();
    for s in &v {
        let o = NotifyOn::parse(s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not an event a hook can be run on; use one of {}", names()))
        })?;
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

fn de_hook_command<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(de_command(d)?.unwrap_or_default())
}

/// The default of `[supervisor] idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// With no agent live, queued, waiting or backing off and no client connected for this
    /// long, the supervisor exits (default 10m; "0s": never).
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// How often every run file, status file and handoff is looked at again, behind the
    /// file watch: a missed event delays a decision by at most this (default 30s).
    #[serde(default, deserialize_with = "de_duration")]
    pub reconcile_interval: Option<Duration>,
}

impl SupervisorConfig {
    pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(30);

    /// How long an idle supervisor lives; `None`: for ever.
    pub fn idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)).filter(|d| !d.is_zero())
    }

    /// The reconcile period in milliseconds (at least 100, so it never spins).
    pub fn reconcile_ms(&self) -> u64 {
        ms(self.reconcile_interval.unwrap_or(Self::DEFAULT_RECONCILE)).max(100)
    }
}

/// `[budget]`: limits of the whole workspace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Once all agents' attempts together cost this much (USD), new starts queue.
    #[serde(default, deserialize_with = "de_cost")]
    pub max_cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Lets `spawn_agent` run a caller-given argv; off: only roles' command templates run.
    #[serde(default)]
    pub allow_raw_commands: bool,
    /// Lets `spawn_agent` run a role whose template puts a placeholder inside a shell's
    /// script (`["sh", "-c", "... {task} ..."]`); off: such roles are refused over MCP.
    #[serde(default)]
    pub allow_shell_templates: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// argv template: `{context}`, `{context_file}`, `{task}`, `{agent_id}`, `{role}`,
    /// `{handoff_file}`, `{status_file}`.
    #[serde(default, deserialize_with = "de_command")]
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_limit")]
    pub attempt_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_limit")]
    pub heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_limit")]
    pub stall_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_limit")]
    pub start_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_limit")]
    pub deadline: Option<Duration>,
    #[serde(default, deserialize_with = "de_retries")]
    pub max_retries: Option<u32>,
    pub backoff: Option<BackoffConfig>,
    pub progressive_timeout: Option<bool>,
    #[serde(default, deserialize_with = "de_limit")]
    pub max_attempt_timeout: Option<Duration>,
    pub retry_guidance: Option<String>,
    pub require_handoff: Option<bool>,
    #[serde(default, deserialize_with = "de_limit")]
    pub blocked_timeout: Option<Duration>,
    /// Plain output counts as progress (resets the stall check), not only as a heartbeat.
    pub output_is_progress: Option<bool>,
    /// Cap on one attempt's output in the log (`"100MiB"`; `0`: none).
    #[serde(default, deserialize_with = "de_log_size")]
    pub max_log_size: Option<u64>,
    /// `claude-code`, `codex` or `none` (default: from the command's program name).
    #[serde(default, deserialize_with = "de_adapter")]
    pub adapter: Option<crate::adapter::Adapter>,
    #[serde(default, deserialize_with = "de_duration")]
    pub result_grace: Option<Duration>,
    pub resume_session: Option<bool>,
    #[serde(default, deserialize_with = "de_cost")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, deserialize_with = "de_budget")]
    pub max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "de_budget")]
    pub max_turns: Option<u32>,
    pub token_prices: Option<TokenPricesConfig>,
    /// `"worktree"`: each agent in its own git worktree; `"none"` (default): in its cwd.
    #[serde(default, deserialize_with = "de_isolation")]
    pub isolation: Option<bool>,
    /// The commit worktrees are made from (default `HEAD`).
    #[serde(default, deserialize_with = "de_base")]
    pub base: Option<String>,
    /// Files copied from the repository into each new worktree (e.g. `.env`).
    #[serde(default, deserialize_with = "de_repo_paths")]
    pub worktree_copy: Option<Vec<String>>,
    /// argv run in a new worktree before the agent starts; failing is permanent.
    #[serde(default, deserialize_with = "de_optional_argv")]
    pub worktree_setup: Option<Vec<String>>,
    /// Ports reserved per agent; the first is `CORRAL_PORT`.
    pub ports_per_agent: Option<u16>,
    /// The lowest port handed to agents (default 20000).
    #[serde(default, deserialize_with = "de_port_base")]
    pub port_base: Option<u16>,
    /// argv run in the agent's working tree when it completes; it must pass.
    #[serde(default, deserialize_with = "de_optional_argv")]
    pub verify: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_limit")]
    pub verify_timeout: Option<Duration>,
    /// The admission group its agents count against (`--group` overrides it).
    #[serde(default, deserialize_with = "de_group")]
    pub group: Option<String>,
    /// In cluster mode, the labels a worker must offer to run its agents (`gpu = true`);
    /// `--on K=V` adds to it or overrides a key.
    #[serde(default, deserialize_with = "de_placement")]
    pub placement: Option<BTreeMap<String, serde_json::Value>>,
}

/// A placement: keys of letters, digits, `_`, `-`, `.` and `/`; values a string, an integer
/// or a boolean (what `--label` and `--on` can say).
fn de_placement<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, serde_json::Value>>, D::Error> {
    let t = BTreeMap::<String, toml::Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in t {
        check_label_key(&k).map_err(serde::de::Error::custom)?;
        let v = match v {
            toml::Value::String(s) => serde_json::Value::String(s),
            toml::Value::Integer(n) => serde_json::Value::from(n),
            toml::Value::Boolean(b) => serde_json::Value::Bool(b),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "placement {k} = {other}: a value must be a string, an integer or true/false (as a worker's \
                     labels are)"
                )));
            }
        };
        out.insert(k, v);
    }
    Ok(Some(out))
}

/// A label's or placement's key: 1 to 64 of letters, digits, `_`, `-`, `.` and `/`.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.len() <= 64
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!("label key {k:?} is not usable: give 1 to 64 letters, digits, `_`, `-`, `.` or `/`"))
    }
}

/// One `KEY=VALUE` of `--label` or `--on`: `true`/`false` are booleans, whole numbers are
/// integers, anything else a string, so the two always compare alike.
pub fn parse_label(kv: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv:?}: expected KEY=VALUE, e.g. gpu=true"))?;
    check_label_key(k).map_err(|e| format!("{kv:?}: {e}"))?;
    let v = match v {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        v => v.parse::<i64>().map(serde_json::Value::from).unwrap_or_else(|_| serde_json::Value::String(v.into())),
    };
    Ok((k.to_string(), v))
}

/// One `[groups.NAME]` table: a limit of its own for the agents of an admission group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// At most this many of the group's agents run at once (within `[health]
    /// max_concurrent`); none: no limit of its own.
    #[serde(default, deserialize_with = "de_at_least_one")]
    pub max_concurrent: Option<usize>,
}

fn de_group<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    crate::protocol::ids::validate_group(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPricesConfig {
    #[serde(deserialize_with = "de_price")]
    pub input: f64,
    #[serde(deserialize_with = "de_price")]
    pub output: f64,
}

fn de_adapter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<crate::adapter::Adapter>, D::Error> {
    let s = String::deserialize(d)?;
    crate::adapter::Adapter::parse(&s).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "adapter {s:?} is not known; use one of {}",
            crate::adapter::Adapter::NAMES.join(", ")
        ))
    })
}

fn de_cost<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let c = f64::deserialize(d)?;
    if !c.is_finite() || c <= 0.0 {
        return Err(serde::de::Error::custom(format!("max_cost_usd {c} must be a positive number of dollars")));
    }
    Ok(Some(c))
}

fn de_price<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let c = f64::deserialize(d)?;
    if !c.is_finite() || c < 0.0 {
        return Err(serde::de::Error::custom(format!("token price {c} must be zero or more (USD per million tokens)")));
    }
    Ok(c)
}

fn de_isolation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "worktree" => Ok(Some(true)),
        "none" => Ok(Some(false)),
        other => Err(serde::de::Error::custom(format!("isolation {other:?}: use \"worktree\" or \"none\""))),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default, deserialize_with = "de_duration")]
    pub initial: Option<Duration>,
    #[serde(default, deserialize_with = "de_coefficient")]
    pub coefficient: Option<f64>,
    #[serde(default, deserialize_with = "de_duration")]
    pub max: Option<Duration>,
    #[serde(default, deserialize_with = "de_jitter")]
    pub jitter: Option<Jitter>,
}

/// One `[[classify]]` rule; validated while parsing so errors carry the line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    #[serde(default, deserialize_with = "de_exit_codes")]
    pub exit_codes: Vec<i32>,
    #[serde(default, deserialize_with = "de_signals")]
    pub signals: Vec<i32>,
    #[serde(default, deserialize_with = "de_failure_types")]
    pub failure_type: Vec<FailureType>,
    #[serde(default, deserialize_with = "de_regex")]
    pub finding: Option<regex::Regex>,
    #[serde(default, deserialize_with = "de_regex")]
    pub output: Option<regex::Regex>,
    /// The API error status an agent CLI's result reported (e.g. 529).
    #[serde(default, deserialize_with = "de_http_statuses")]
    pub api_error_status: Vec<u16>,
    /// Regex on the text of an agent CLI's result.
    #[serde(default, deserialize_with = "de_regex")]
    pub result: Option<regex::Regex>,
    #[serde(deserialize_with = "de_action")]
    pub action: RuleAction,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default, deserialize_with = "de_at_least_one")]
    pub max_concurrent: Option<usize>,
    #[serde(default, deserialize_with = "de_count")]
    pub breaker_failures: Option<usize>,
    #[serde(default, deserialize_with = "de_limit")]
    pub breaker_window: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub breaker_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "de_size")]
    pub min_free_memory: Option<u64>,
    #[serde(default, deserialize_with = "de_max_load")]
    pub max_load: Option<f64>,
    #[serde(default, deserialize_with = "de_at_least_one")]
    pub max_open_escalations: Option<usize>,
    /// `role` (default): one breaker per role; `global`: one for the whole workspace.
    #[serde(default, deserialize_with = "de_breaker_scope")]
    pub breaker_scope: Option<BreakerScope>,
    /// Agents of one provider (an adapter's API) running at once.
    #[serde(default, deserialize_with = "de_at_least_one")]
    pub provider_max_concurrent: Option<usize>,
    /// The quiet period after which a provider's lowered limit goes up by one.
    #[serde(default, deserialize_with = "de_limit")]
    pub provider_recovery: Option<Duration>,
}

fn de_breaker_scope<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BreakerScope>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "role" => Ok(Some(BreakerScope::Role)),
        "global" => Ok(Some(BreakerScope::Global)),
        other => Err(serde::de::Error::custom(format!("breaker_scope {other:?}: use \"role\" or \"global\""))),
    }
}

/// Milliseconds, saturating: `as u64` would silently keep only the low bits of a huge one.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// `[roles.X]` over `[defaults]` over the seed's table.
    pub fn role(&self, role: &str) -> (Option<Vec<String>>, RolePolicy) {
        let r = self.roles.get(role).cloned().unwrap_or_default();
        let d = &self.defaults;
        let mut p = RolePolicy::seed(role);
        if let Some(t) = r.attempt_timeout.or(d.attempt_timeout) {
            p.attempt_timeout_ms = ms(t);
        }
        if let Some(n) = r.max_retries.or(d.max_retries) {
            p.max_retries = n;
        }
        let both = |own: Option<Duration>, def: Option<Duration>| own.or(def).map(ms);
        if let Some(t) = both(r.heartbeat_timeout, d.heartbeat_timeout) {
            p.heartbeat_timeout_ms = t;
        }
        if let Some(t) = both(r.stall_timeout, d.stall_timeout) {
            p.stall_timeout_ms = t;
        }
        p.start_timeout_ms = both(r.start_timeout, d.start_timeout);
        p.deadline_ms = both(r.deadline, d.deadline);
        p.max_attempt_timeout_ms = both(r.max_attempt_timeout, d.max_attempt_timeout);
        let (rb, db) = (r.backoff.clone().unwrap_or_default(), d.backoff.clone().unwrap_or_default());
        let def = Backoff::default();
        p.backoff = Backoff {
            initial_ms: rb.initial.or(db.initial).map(ms).unwrap_or(def.initial_ms),
            coefficient: rb.coefficient.or(db.coefficient).unwrap_or(def.coefficient),
            max_ms: rb.max.or(db.max).map(ms),
            jitter: rb.jitter.or(db.jitter).unwrap_or_default(),
        };
        p.progressive_timeout = r.progressive_timeout.or(d.progressive_timeout).unwrap_or(true);
        p.retry_guidance = r.retry_guidance.clone().or_else(|| d.retry_guidance.clone());
        p.require_handoff = r.require_handoff.or(d.require_handoff).unwrap_or(false);
        if let Some(t) = both(r.blocked_timeout, d.blocked_timeout) {
            p.blocked_timeout_ms = t;
        }
        p.output_is_progress = r.output_is_progress.or(d.output_is_progress).unwrap_or(false);
        if let Some(m) = r.max_log_size.or(d.max_log_size) {
            p.max_log_size = m;
        }
        p.adapter = r.adapter.or(d.adapter);
        if let Some(t) = both(r.result_grace, d.result_grace) {
            p.result_grace_ms = t;
        }
        p.resume_session = r.resume_session.or(d.resume_session);
        p.max_cost_usd = r.max_cost_usd.or(d.max_cost_usd);
        p.max_tokens = r.max_tokens.or(d.max_tokens);
        p.max_turns = r.max_turns.or(d.max_turns);
        p.token_prices = r
            .token_prices
            .or(d.token_prices)
            .map(|t| crate::policy::role::TokenPrices { input: t.input, output: t.output });
        p.worktree = r.isolation.or(d.isolation).unwrap_or(false);
        p.base = r.base.clone().or_else(|| d.base.clone());
        p.worktree_copy = r.worktree_copy.clone().or_else(|| d.worktree_copy.clone()).unwrap_or_default();
        p.worktree_setup = r.worktree_setup.clone().or_else(|| d.worktree_setup.clone()).filter(|c| !c.is_empty());
        p.ports_per_agent = r.ports_per_agent.or(d.ports_per_agent);
        p.port_base = r.port_base.or(d.port_base);
        p.verify = r.verify.clone().or_else(|| d.verify.clone()).filter(|c| !c.is_empty());
        if let Some(t) = both(r.verify_timeout, d.verify_timeout) {
            p.verify_timeout_ms = t;
        }
        (r.command.clone().or_else(|| d.command.clone()), p)
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.classify
            .iter()
            .enumerate()
            .map(|(i, c)| Rule {
                name: c.name.clone().unwrap_or_else(|| format!("classify rule {}", i + 1)),
                exit_codes: c.exit_codes.clone(),
                signals: c.signals.clone(),
                failure_types: c.failure_type.clone(),
                finding: c.finding.clone(),
                output: c.output.clone(),
                api_error_status: c.api_error_status.clone(),
                result: c.result.clone(),
                action: c.action,
            })
            .collect()
    }

    /// The admission group of a role's agents: `[roles.X] group`, else `[defaults] group`.
    pub fn role_group(&self, role: &str) -> Option<String> {
        self.roles.get(role).and_then(|r| r.group.clone()).or_else(|| self.defaults.group.clone())
    }

    /// Where a role's agents may run in cluster mode: `[defaults] placement` with the role's
    /// own keys over it.
    pub fn role_placement(&self, role: &str) -> BTreeMap<String, serde_json::Value> {
        let mut p = self.defaults.placement.clone().unwrap_or_default();
        if let Some(own) = self.roles.get(role).and_then(|r| r.placement.as_ref()) {
            p.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        p
    }

    /// Each configured group's `max_concurrent`.
    pub fn group_limits(&self) -> BTreeMap<String, usize> {
        self.groups.iter().filter_map(|(g, c)| Some((g.clone(), c.max_concurrent?))).collect()
    }

    pub fn health(&self) -> HealthPolicy {
        let h = &self.health;
        let d = HealthPolicy::default();
        HealthPolicy {
            max_concurrent: h.max_concurrent.unwrap_or(d.max_concurrent),
            breaker_failures: h.breaker_failures.unwrap_or(d.breaker_failures),
            breaker_window_ms: h.breaker_window.map(ms).unwrap_or(d.breaker_window_ms),
            breaker_cooldown_ms: h.breaker_cooldown.map(ms).unwrap_or(d.breaker_cooldown_ms),
            min_free_memory: h.min_free_memory,
            max_load: h.max_load,
            max_open_escalations: h.max_open_escalations,
            breaker_scope: h.breaker_scope.unwrap_or_default(),
            provider_max_concurrent: h.provider_max_concurrent,
            provider_recovery_ms: h.provider_recovery.map(ms).unwrap_or(d.provider_recovery_ms),
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

/// A limit (a timeout, a deadline, a window): 0 would end every wait the moment it began.
fn de_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let t = parse_duration(&s).map_err(serde::de::Error::custom)?;
    if t.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "{s:?} can never work: a limit of 0 is over the moment it starts; give a duration above 0, e.g. 30s"
        )));
    }
    Ok(Some(t))
}

/// The most retries a role may have: far more than any agent is worth retrying, and the
/// attempt counter (retries + 1, counted again after every human retry) stays far inside
/// its range.
pub const MAX_RETRIES: u32 = 1000;

/// A retry budget: 0 to [`MAX_RETRIES`]. The same rule for `--max-retries` and MCP.
pub fn check_retries(n: i64) -> Result<u32, String> {
    if n < 0 {
        return Err(format!("{n} is negative; use 0 (no retries) to {MAX_RETRIES}"));
    }
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_RETRIES)
        .ok_or_else(|| format!("{n} is more retries than corral counts; use 0 to {MAX_RETRIES}"))
}

fn de_retries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    check_retries(i64::deserialize(d)?).map(Some).map_err(serde::de::Error::custom)
}

fn de_port_base<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = i64::deserialize(d)?;
    match u16::try_from(n) {
        Ok(p) if p >= 1024 => Ok(Some(p)),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a port agents can listen on without privileges; use 1024 to 65535 (e.g. 20000)"
        ))),
    }
}

fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = i64::deserialize(d)?;
    usize::try_from(n).map(Some).map_err(|_| serde::de::Error::custom(format!("{n} is negative; use 0 or more")))
}

fn de_at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    match de_count(d)? {
        Some(0) => Err(serde::de::Error::custom("0 can never work: nothing would ever start; use 1 or more")),
        n => Ok(n),
    }
}

fn de_max_load<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        I(i64),
        F(f64),
    }
    let v = match N::deserialize(d)? {
        N::I(i) => i as f64,
        N::F(f) => f,
    };
    if !v.is_finite() || v <= 0.0 {
        return Err(serde::de::Error::custom(format!(
            "{v} can never work: the load average is never below it, so nothing would start; use a positive \
             number such as 4.0 (the number of cores is a good start)"
        )));
    }
    Ok(Some(v))
}

/// Below this a log cap cannot keep a head, the line saying what was dropped, and a tail.
pub const MIN_LOG_SIZE: u64 = 4096;

/// A budget (tokens, turns): 0 would stop every agent before its first step.
fn de_budget<'de, D: serde::Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
    let n = i64::deserialize(d)?;
    if n <= 0 {
        return Err(serde::de::Error::custom(format!(
            "{n} can never work: the agent would be over budget before it starts; use 1 or more"
        )));
    }
    T::try_from(n).map(Some).map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
}

fn de_log_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match de_size(d)? {
        Some(n) if n > 0 && n < MIN_LOG_SIZE => Err(serde::de::Error::custom(format!(
            "{n} bytes is too small to keep the head and the newest tail of an attempt's output; use 0 (no cap) \
             or at least 4KiB"
        ))),
        n => Ok(n),
    }
}

fn de_command<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    match argv.first() {
        None => Err(serde::de::Error::custom("the command is empty; give the program and its arguments")),
        Some(p) if p.trim().is_empty() => {
            Err(serde::de::Error::custom("the command's program (its first element) is empty"))
        }
        _ if argv.iter().any(|a| a.contains('\0')) => {
            Err(serde::de::Error::custom("an argument holds a NUL character, which no program can receive"))
        }
        _ => Ok(Some(argv)),
    }
}

fn de_exit_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    let v = match OneOrMany::<i64>::deserialize(d)? {
        OneOrMany::One(n) => vec![n],
        OneOrMany::Many(v) => v,
    };
    v.into_iter()
        .map(|n| {
            u8::try_from(n).map(i32::from).map_err(|_| {
                serde::de::Error::custom(format!(
                    "exit code {n} can never match: a process exits with 0 to 255 (a signal is matched by `signals`)"
                ))
            })
        })
        .collect()
}

/// An argv where `[]` means none: a present program must be one.
fn de_optional_argv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    if argv.first().is_some_and(|p| p.trim().is_empty()) {
        return Err(serde::de::Error::custom("the program (the first element) is empty; give one, or [] for none"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(serde::de::Error::custom("an argument holds a NUL character, which no program can receive"));
    }
    Ok(Some(argv))
}

/// Paths inside the repository: relative, never through `..`.
fn de_repo_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for f in &v {
        let p = Path::new(f);
        if f.trim().is_empty() || p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(serde::de::Error::custom(format!(
                "{f:?} is not a path inside the repository; give one relative to it, without \"..\""
            )));
        }
    }
    Ok(Some(v))
}

fn de_base<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() || s.starts_with('-') || s.contains('\0') {
        return Err(serde::de::Error::custom(format!(
            "base {s:?} can never name a commit; give a branch, tag or commit (default HEAD)"
        )));
    }
    Ok(Some(s))
}

fn de_http_statuses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let v = match OneOrMany::<i64>::deserialize(d)? {
        OneOrMany::One(n) => vec![n],
        OneOrMany::Many(v) => v,
    };
    v.into_iter()
        .map(|n| {
            u16::try_from(n).ok().filter(|n| (100..=599).contains(n)).ok_or_else(|| {
                serde::de::Error::custom(format!("status {n} can never match: an HTTP status is 100 to 599"))
            })
        })
        .collect()
}

fn de_dir<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "the directory is empty, which would make the workspace itself that directory; leave it out or name one",
        ));
    }
    if s.contains('\0') {
        return Err(serde::de::Error::custom("the directory holds a NUL character"));
    }
    Ok(Some(PathBuf::from(s)))
}

fn de_coefficient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let c = f64::deserialize(d)?;
    if !(1.0..=100.0).contains(&c) {
        return Err(serde::de::Error::custom(format!("coefficient {c} must be between 1.0 and 100.0")));
    }
    Ok(Some(c))
}

fn de_jitter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Jitter>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "none" => Ok(Some(Jitter::None)),
        "full" => Ok(Some(Jitter::Full)),
        other => Err(serde::de::Error::custom(format!("jitter {other:?} is not allowed; use \"none\" or \"full\""))),
    }
}

fn de_regex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<regex::Regex>, D::Error> {
    let s = String::deserialize(d)?;
    regex::Regex::new(&s).map(Some).map_err(|e| serde::de::Error::custom(format!("invalid regex {s:?}: {e}")))
}

fn de_action<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RuleAction, D::Error> {
    let s = String::deserialize(d)?;
    RuleAction::parse(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("action {s:?} is not allowed; use one of {}", RuleAction::ALL)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

fn de_failure_types<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FailureType>, D::Error> {
    let v = match OneOrMany::<String>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    v.iter()
        .map(|s| {
            FailureType::parse(s).ok_or_else(|| {
                serde::de::Error::custom(format!("failure_type {s:?} is not allowed; use one of {}", FailureType::ALL))
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SigSpec {
    Num(i32),
    Name(String),
}

fn de_signals<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    let v = match OneOrMany::<SigSpec>::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    v.into_iter()
        .map(|s| match s {
            SigSpec::Num(n) if (1..=64).contains(&n) => Ok(n),
            SigSpec::Num(n) => Err(serde::de::Error::custom(format!("signal {n} is not between 1 and 64"))),
            SigSpec::Name(name) => signal_number(&name).ok_or_else(|| {
                serde::de::Error::custom(format!("signal {name:?} is unknown; use e.g. \"SIGKILL\" or 9"))
            }),
        })
        .collect()
}

fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "USR1" => 10,
        "USR2" => 12,
        _ => return None,
    })
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        T(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(Some(n)),
        S::T(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; use forms like 512MiB or 2GiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// The longest duration corral accepts, in `corral.toml` and on the command line alike: far
/// past any sensible timeout, so a typo like `99999999999h` is an error naming the key
/// rather than a timeout that silently never comes, and its milliseconds fit with room to spare.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// humantime forms (`90s`, `15m`, `1h30m`), up to [`MAX_DURATION`]; a bare number is
/// refused because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use forms like 90s, 15m or 1h30m"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the maximum, {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(d)
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub config_file: Option<PathBuf>,
    pub config: Config,
    /// Why `corral.toml` could not be used, when it could not: `config` is then the last
    /// good one a supervisor saved (else the built-in defaults).
    pub config_error: Option<String>,
}

/// The copy of the last `corral.toml` a supervisor loaded without error, in the data dir.
pub const LAST_GOOD_FILE: &str = "config.last-good.toml";

impl Workspace {
    /// Finds the workspace from `start` upward; without a `corral.toml` it is `start`.
    pub fn discover(start: &Path) -> Result<Self, String> {
        match find(start) {
            Some((root, f)) => {
                let config = load(&f)?;
                Ok(Self { root, config_file: Some(f), config, config_error: None })
            }
            None => {
                Ok(Self { root: start.to_path_buf(), config_file: None, config: Config::default(), config_error: None })
            }
        }
    }

    /// As [`discover`](Self::discover), but a broken `corral.toml` does not stop the caller:
    /// the error is kept in `config_error`, the data dir is taken from the file as far as it
    /// can be read (else `data_dir`, when the caller names one), and the configuration is
    /// the last good one saved there.
    pub fn discover_tolerant(start: &Path, data_dir: Option<&Path>) -> Self {
        let (root, f) = match find(start) {
            Some(x) => x,
            None => return Self::discover(start).expect("no file, no error"),
        };
        let err = match load(&f) {
            Ok(config) => return Self { root, config_file: Some(f), config, config_error: None },
            Err(e) => e,
        };
        let text = crate::protocol::files::read_named(&f).unwrap_or_default();
        let salvaged = salvage_data_dir(&text);
        let mut ws = Self {
            root,
            config_file: Some(f),
            config: Config { data_dir: salvaged.clone(), ..Config::default() },
            config_error: Some(err),
        };
        let data = data_dir.map(Path::to_path_buf).unwrap_or_else(|| ws.data_dir());
        let good = crate::protocol::files::read_bounded(&data, &data.join(LAST_GOOD_FILE))
            .ok()
            .and_then(|t| parse(&t, Path::new(LAST_GOOD_FILE)).ok());
        if let Some(mut c) = good {
            c.data_dir = salvaged.or(c.data_dir);
            ws.config = c;
        }
        ws
    }

    pub fn data_dir(&self) -> PathBuf {
        let d = self.config.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if d.is_absolute() { d } else { self.root.join(d) }
    }
}

/// The directory holding `corral.toml`, from `start` upward, and the file.
fn find(start: &Path) -> Option<(PathBuf, PathBuf)> {
    start.ancestors().map(|d| (d.to_path_buf(), d.join(CONFIG_FILE))).find(|(_, f)| f.is_file())
}

/// `data_dir` from a file that does not parse as a whole: from the TOML when only a value
/// is wrong, else from its own top-level line.
fn salvage_data_dir(text: &str) -> Option<PathBuf> {
    if let Ok(t) = text.parse::<toml::Table>() {
        return t.get("data_dir")?.as_str().filter(|s| !s.trim().is_empty()).map(PathBuf::from);
    }
    let line = text.lines().take_while(|l| !l.trim_start().starts_with('[')).find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "data_dir").then(|| v.trim())
    })?;
    let v = line.strip_prefix('"')?.split('"').next()?;
    (!v.trim().is_empty()).then(|| PathBuf::from(v))
}

/// Keeps a copy of `file` as the last good configuration in the data dir, if it is one.
pub fn save_last_good(file: &Path, data: &Path) -> Result<(), String> {
    let text = crate::protocol::files::read_named(file)?;
    parse(&text, file)?;
    crate::protocol::atomic::write_beneath(data, &data.join(LAST_GOOD_FILE), text.as_bytes())
        .map_err(|e| format!("cannot save {}: {e}", data.join(LAST_GOOD_FILE).display()))
}

pub fn load(path: &Path) -> Result<Config, String> {
    // Bounded and never blocking: a corral.toml replaced by a FIFO or a device is an error.
    let text = crate::protocol::files::read_named(path)?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
    let c: Config = toml::from_str(text).map_err(|e| {
        let span = e.span();
        let line = span.as_ref().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let key = span.as_ref().and_then(|s| key_at(text, s.start));
        let msg = e.message().trim_end().to_string();
        let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
        match line {
            Some(l) => format!("{}:{l}:{key} {msg}", path.display()),
            None => format!("{}: {msg}", path.display()),
        }
    })?;
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let ports_fit = |r: &RoleConfig| -> Result<(), String> {
        let base = r.port_base.or(c.defaults.port_base).unwrap_or(crate::policy::role::FIRST_PORT);
        let n = r.ports_per_agent.or(c.defaults.ports_per_agent).unwrap_or(1).max(1);
        if u32::from(base) + u32::from(n) - 1 > 65535 {
            return Err(format!(
                "port_base {base} with ports_per_agent {n} runs past port 65535; lower port_base or ports_per_agent"
            ));
        }
        Ok(())
    };
    ports_fit(&c.defaults).map_err(|e| format!("{}: key `defaults`: {e}", path.display()))?;
    for name in c.roles.keys() {
        let at = |what: String| match line_of_role(text, name) {
            Some(l) => format!("{}:{l}: key `roles.{name}`: {what}", path.display()),
            None => format!("{}: key `roles.{name}`: {what}", path.display()),
        };
        crate::protocol::ids::validate_role(name).map_err(|e| at(e.to_string()))?;
        ports_fit(&c.roles[name]).map_err(at)?;
        if let Some(other) = seen.insert(name.to_ascii_uppercase(), name) {
            return Err(at(format!(
                "roles {other} and {name} differ only in case; roles are matched exactly, so one of them is never \
                 the one meant: keep one"
            )));
        }
    }
    for name in c.groups.keys() {
        if let Err(e) = crate::protocol::ids::validate_group(name) {
            return Err(match line_of_table(text, "groups", name) {
                Some(l) => format!("{}:{l}: key `groups.{name}`: {e}", path.display()),
                None => format!("{}: key `groups.{name}`: {e}", path.display()),
            });
        }
    }
    Ok(c)
}

/// The line of the table (or dotted key) that defines role `name`.
fn line_of_role(text: &str, name: &str) -> Option<usize> {
    line_of_table(text, "roles", name)
}

/// The line of the table (or dotted key) that defines `[table.name]`.
fn line_of_table(text: &str, table: &str, name: &str) -> Option<usize> {
    let header = |l: &str| {
        let t: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        t.starts_with(&format!("[{table}.{name}]"))
            || t.starts_with(&format!("[{table}.\"{name}\"]"))
            || t.starts_with(&format!("{table}.{name}."))
    };
    text.lines().position(header).map(|i| i + 1)
}

/// The roles of the seed's table; any other role gets the seed's "any other" row.
pub const SEED_ROLES: [&str; 4] = ["PLANNER", "IMPLEMENTER", "AUDITOR", "CLEANER"];

impl Config {
    /// What to say about a spawn's role that is neither configured nor one of the seed's
    /// (`None` for a known one): the nearest known role when one is close, as a typo of
    /// it is the likely cause.
    pub fn unknown_role(&self, role: &str) -> Option<String> {
        if self.roles.contains_key(role) || SEED_ROLES.contains(&role) {
            return None;
        }
        let known: Vec<&str> = self.roles.keys().map(String::as_str).chain(SEED_ROLES).collect();
        let near = known
            .iter()
            .map(|k| (edit_distance(&role.to_ascii_uppercase(), &k.to_ascii_uppercase()), *k))
            .filter(|(d, k)| *d <= (k.len() / 3).max(1))
            .min();
        let p = self.role(role).1;
        let mut msg = format!(
            "role {role} is neither configured in {CONFIG_FILE} nor one of the built-in roles; it gets the \
             defaults ({} attempt timeout, {})",
            humantime::format_duration(Duration::from_millis(p.attempt_timeout_ms)),
            crate::policy::plural(p.max_retries as usize, "retry", "retries")
        );
        if let Some((_, k)) = near {
            msg.push_str(&format!("; did you mean {k}?"));
        }
        Some(msg)
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The dotted key of the line holding byte `pos`: the table header above it plus the key.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let upto = &text[..pos.min(text.len())];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = upto[..line_start]
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| l.trim().trim_matches(|c| c == '[' || c == ']').to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_table_and_overrides() {
        let c = parse(
            "[defaults]\nmax_retries = 3\nheartbeat_timeout = \"1m\"\n[roles.PLANNER]\nattempt_timeout = \"1m\"\ncommand = [\"echo\", \"{task}\"]\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        let (cmd, p) = c.role("PLANNER");
        assert_eq!(cmd.unwrap()[0], "echo");
        assert_eq!(p.attempt_timeout_ms, 60_000);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.heartbeat_timeout_ms, 60_000);
        assert_eq!(c.role("OTHER").1.max_retries, 3);
        assert_eq!(c.role("IMPLEMENTER").1.attempt_timeout_ms, 1_800_000);
        assert_eq!(Config::default().role("CLEANER").1.max_retries, 1);
        assert_eq!(Config::default().health().max_concurrent, 5);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("data_dir = \"d\"\n\n[defaults]\nbogus = 1\n", "corral.toml:4:", "bogus"),
            ("[defaults]\nattempt_timeout = \"-5m\"\n", "corral.toml:2:", "defaults.attempt_timeout"),
            ("[[classify]]\nfinding = \"(\"\naction = \"retry\"\n", "corral.toml:2:", "invalid regex"),
            ("[[classify]]\naction = \"explode\"\n", "corral.toml:2:", "retry, retry_with_context"),
            ("[roles.X]\nbackoff = { jitter = \"some\" }\n", "corral.toml:2:", "\"none\" or \"full\""),
            ("[health]\nmin_free_memory = \"12 parsecs\"\n", "corral.toml:2:", "unknown unit"),
            ("[[classify]]\nfailure_type = \"oops\"\naction = \"retry\"\n", "corral.toml:2:", "crash, timeout"),
        ];
        for (text, at, what) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            assert!(e.starts_with(at) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn notify_hooks_parse_and_bad_ones_are_named() {
        let c = parse(
            "[[notify]]\non = [\"needs-human\", \"all-finished\"]\ncommand = [\"notify-send\", \"corral\"]\n\
             [[notify]]\non = \"complete\"\ncommand = [\"true\"]\ntimeout = \"2s\"\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        assert_eq!(c.notify.len(), 2);
        assert_eq!(c.notify[0].on, vec![NotifyOn::NeedsHuman, NotifyOn::AllFinished]);
        assert_eq!(c.notify[0].timeout(), DEFAULT_NOTIFY_TIMEOUT);
        assert_eq!(c.notify[1].on, vec![NotifyOn::Complete]);
        assert_eq!(c.notify[1].timeout(), Duration::from_secs(2));
        let cases = [
            ("[[notify]]\non = [\"done\"]\ncommand = [\"true\"]\n", "notify.on", "needs-human, escalated"),
            ("[[notify]]\non = []\ncommand = [\"true\"]\n", "notify.on", "never run"),
            ("[[notify]]\non = [\"complete\"]\ncommand = []\n", "notify.command", "empty"),
            ("[[notify]]\non = [\"complete\"]\ncommand = [\"x\"]\ntimeout = \"0s\"\n", "notify.timeout", "above 0"),
            ("[[notify]]\non = [\"complete\"]\ncommand = [\"x\"]\nwhen = 1\n", "when", "unknown field"),
        ];
        for (text, key, what) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            assert!(e.starts_with("corral.toml:") && e.contains(key) && e.contains(what), "{text:?}: {e}");
        }
        let e = parse("[[notify]]\non = [\"complete\"]\n", Path::new("corral.toml")).unwrap_err();
        assert!(e.contains("command"), "{e}");
    }

    #[test]
    fn durations_past_the_maximum_are_refused_with_the_key() {
        let cases = [
            ("[defaults]\nattempt_timeout = \"99999999999h\"\n", "defaults.attempt_timeout"),
            ("[roles.X]\nbackoff = { initial = \"600000000000000000s\" }\n", "roles.X.backoff"),
            ("[health]\nbreaker_cooldown = \"876601h\"\n", "health.breaker_cooldown"),
        ];
        for (text, key) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            assert!(
                e.starts_with("corral.toml:2:") && e.contains(key) && e.contains("maximum, 100years"),
                "{text:?}: {e}"
            );
        }
        let c = parse("[health]\nbreaker_window = \"100y\"\n", Path::new("corral.toml")).unwrap();
        assert_eq!(c.health().breaker_window_ms, 100 * 31_557_600_000);
        assert!(parse_duration("1000000000000000000s").unwrap_err().contains("maximum"));
    }

    /// Every value that can never work is refused with the file, the line and the key.
    #[test]
    fn impossible_values_are_refused_with_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[health]\nmax_concurrent = 0\n", "health.max_concurrent", "nothing would ever start"),
            ("[health]\nmax_concurrent = -3\n", "health.max_concurrent", "negative"),
            ("[health]\nbreaker_failures = -1\n", "health.breaker_failures", "negative"),
            ("[health]\nmax_load = -1.5\n", "health.max_load", "can never work"),
            ("[health]\nmax_load = 0\n", "health.max_load", "can never work"),
            ("[health]\nmax_load = nan\n", "health.max_load", "can never work"),
            ("[health]\nmax_open_escalations = 0\n", "health.max_open_escalations", "use 1 or more"),
            ("[health]\nbreaker_window = \"0s\"\n", "health.breaker_window", "above 0"),
            ("[health]\nprovider_max_concurrent = 0\n", "health.provider_max_concurrent", "nothing would ever start"),
            ("[health]\nprovider_recovery = \"0s\"\n", "health.provider_recovery", "above 0"),
            ("[defaults]\nmax_retries = 4294967295\n", "defaults.max_retries", "0 to 1000"),
            ("[defaults]\nmax_retries = 1001\n", "defaults.max_retries", "0 to 1000"),
            ("[defaults]\nmax_retries = -1\n", "defaults.max_retries", "negative"),
            ("[defaults]\nattempt_timeout = \"0s\"\n", "defaults.attempt_timeout", "above 0"),
            ("[roles.A]\nheartbeat_timeout = \"0ms\"\n", "roles.A.heartbeat_timeout", "above 0"),
            ("[roles.A]\nstall_timeout = \"0s\"\n", "roles.A.stall_timeout", "above 0"),
            ("[roles.A]\nstart_timeout = \"0s\"\n", "roles.A.start_timeout", "above 0"),
            ("[roles.A]\ndeadline = \"0s\"\n", "roles.A.deadline", "above 0"),
            ("[roles.A]\nmax_attempt_timeout = \"0s\"\n", "roles.A.max_attempt_timeout", "above 0"),
            ("[roles.A]\nblocked_timeout = \"0s\"\n", "roles.A.blocked_timeout", "above 0"),
            ("[defaults]\nmax_log_size = 100\n", "defaults.max_log_size", "at least 4KiB"),
            ("[defaults]\ncommand = []\n", "defaults.command", "empty"),
            ("[roles.A]\ncommand = [\"\", \"x\"]\n", "roles.A.command", "program"),
            ("[roles.A]\ncommand = [\"sh\", \"a\\u0000b\"]\n", "roles.A.command", "NUL"),
            ("[roles.A]\nbackoff = { coefficient = 0.5 }\n", "roles.A.backoff", "between 1.0 and 100.0"),
            ("[roles.A]\nbackoff = { jitter = \"half\" }\n", "roles.A.backoff", "\"none\" or \"full\""),
            ("[[classify]]\nexit_codes = [256]\naction = \"retry\"\n", "classify.exit_codes", "0 to 255"),
            ("[[classify]]\nexit_codes = [-1]\naction = \"retry\"\n", "classify.exit_codes", "0 to 255"),
            ("[[classify]]\noutput = \"[a\"\naction = \"retry\"\n", "classify.output", "invalid regex"),
            ("[[classify]]\nfailure_type = \"hang\"\naction = \"retry\"\n", "classify.failure_type", "crash"),
            ("[[classify]]\nsignals = [99]\naction = \"retry\"\n", "classify.signals", "between 1 and 64"),
            ("[roles.A]\nmax_tokens = 0\n", "roles.A.max_tokens", "over budget"),
            ("[roles.A]\nmax_turns = -2\n", "roles.A.max_turns", "over budget"),
            ("[roles.A]\nmax_turns = 99999999999\n", "roles.A.max_turns", "too large"),
            ("[roles.A]\nmax_cost_usd = 0\n", "roles.A.max_cost_usd", "positive"),
            ("[roles.A]\nplacement = { gpu = 1.5 }\n", "roles.A.placement", "string, an integer or true/false"),
            ("[roles.A]\nplacement = { \"a b\" = true }\n", "roles.A.placement", "label key \"a b\""),
            ("[defaults]\nplacement = \"gpu\"\n", "defaults.placement", "invalid type"),
            ("\nworktree_dir = \"\"\n", "worktree_dir", "empty"),
            ("[roles.A]\nbase = \"--orphan\"\n", "roles.A.base", "never name a commit"),
            ("[roles.A]\nworktree_copy = [\"../secret\"]\n", "roles.A.worktree_copy", "inside the repository"),
            ("[roles.A]\nworktree_copy = [\"/etc/passwd\"]\n", "roles.A.worktree_copy", "inside the repository"),
            ("[roles.A]\nverify = [\"\"]\n", "roles.A.verify", "program"),
            ("[roles.A]\nworktree_setup = [\" \", \"x\"]\n", "roles.A.worktree_setup", "program"),
            ("[roles.A]\nverify_timeout = \"0s\"\n", "roles.A.verify_timeout", "above 0"),
            ("[roles.A]\nport_base = 80\n", "roles.A.port_base", "1024 to 65535"),
            ("[defaults]\nport_base = 70000\n", "defaults.port_base", "1024 to 65535"),
            (
                "[[classify]]\napi_error_status = [5290]\naction = \"retry\"\n",
                "classify.api_error_status",
                "100 to 599",
            ),
            ("[health]\nbreaker_scope = \"host\"\n", "health.breaker_scope", "\"role\" or \"global\""),
            ("\ndata_dir = \"\"\n", "data_dir", "empty"),
            ("\nstrict_roles = \"yes\"\n", "strict_roles", "bool"),
            ("[roles.PLANNER]\nmax_retries = 1\n[roles.planner]\nmax_retries = 2\n", "roles.planner", "only in case"),
            ("\n[roles.\"\"]\nmax_retries = 1\n", "roles.", "empty"),
        ];
        for (text, key, what) in cases {
            let e = parse(text, Path::new("corral.toml")).unwrap_err();
            let line = if key.starts_with("roles.planner") { 3 } else { 2 };
            assert!(
                e.starts_with(&format!("corral.toml:{line}:")) && e.contains(&format!("`{key}")) && e.contains(what),
                "{text:?}: {e}"
            );
        }
    }

    /// The edges of each rule are accepted: they can work.
    #[test]
    fn values_at_the_edges_are_accepted() {
        let c = parse(
            "strict_roles = true\n[defaults]\nmax_retries = 1000\nmax_log_size = 0\nattempt_timeout = \"1ms\"\n\
             backoff = { initial = \"0s\", coefficient = 1.0 }\n[roles.B]\nmax_log_size = \"4KiB\"\n\
             [health]\nmax_concurrent = 1\nbreaker_failures = 0\nbreaker_cooldown = \"0s\"\nmax_load = 2\n\
             [[classify]]\nexit_codes = [0, 255]\napi_error_status = 529\naction = \"ignore\"\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        assert!(c.strict_roles);
        assert_eq!(c.role("X").1.max_retries, 1000);
        assert_eq!(c.role("X").1.max_log_size, 0);
        assert_eq!(c.role("B").1.max_log_size, 4096);
        assert_eq!(c.health().max_load, Some(2.0));
        assert_eq!(c.health().max_concurrent, 1);
        assert_eq!(c.rules()[0].exit_codes, vec![0, 255]);
        assert_eq!(c.rules()[0].api_error_status, vec![529]);
    }

    #[test]
    fn unknown_roles_are_named_with_the_nearest_known_one() {
        let c = parse("[roles.REVIEWER]\nmax_retries = 4\n", Path::new("corral.toml")).unwrap();
        assert_eq!(c.unknown_role("IMPLEMENTER"), None);
        assert_eq!(c.unknown_role("REVIEWER"), None);
        let typo = c.unknown_role("IMPLEMNTER").unwrap();
        assert!(typo.contains("did you mean IMPLEMENTER?"), "{typo}");
        assert!(c.unknown_role("reviewr").unwrap().contains("did you mean REVIEWER?"));
        let far = c.unknown_role("W").unwrap();
        assert!(!far.contains("did you mean") && far.contains("20m attempt timeout, 1 retry)"), "{far}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_broken_file_leaves_the_data_dir_and_the_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, "data_dir = \"d\"\n[health]\nmax_concurrent = 7\n").unwrap();
        save_last_good(&file, &data).unwrap();
        std::fs::write(&file, "data_dir = \"d\"\n[health]\nmax_concurrent = 0\n").unwrap();
        assert!(save_last_good(&file, &data).is_err(), "a broken file is never saved as good");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let ws = Workspace::discover_tolerant(&sub, None);
        assert!(ws.config_error.as_deref().unwrap().contains("max_concurrent"));
        assert_eq!(ws.root, dir.path());
        assert_eq!(ws.data_dir(), data);
        assert_eq!(ws.config.health().max_concurrent, 7);
        // Not even TOML: the data dir still comes from its own line.
        std::fs::write(&file, "data_dir = \"d\"\n[health\nmax_concurrent = = 3\n").unwrap();
        let ws = Workspace::discover_tolerant(&sub, None);
        assert!(ws.config_error.is_some());
        assert_eq!((ws.data_dir(), ws.config.health().max_concurrent), (data, 7));
    }

    #[test]
    fn classify_rules_parse_in_order() {
        let c = parse(
            "[[classify]]\nexit_codes = [75]\naction = \"retry\"\n[[classify]]\nsignals = [\"SIGKILL\"]\nfailure_type = [\"crash\"]\noutput = \"OOM\"\naction = \"fail\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let r = c.rules();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].exit_codes, vec![75]);
        assert_eq!(r[1].signals, vec![9]);
        assert_eq!(r[1].action, RuleAction::Fail);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
    }

    #[test]
    fn a_roles_placement_is_the_defaults_with_its_own_keys_over_them() {
        let c = parse(
            "[defaults]\nplacement = { zone = \"eu\", gpu = false }\n[roles.TRAIN]\nplacement = { gpu = true, cores = 16 }\n",
            Path::new("corral.toml"),
        )
        .unwrap();
        let p = serde_json::to_value(c.role_placement("TRAIN")).unwrap();
        assert_eq!(p, serde_json::json!({ "zone": "eu", "gpu": true, "cores": 16 }));
        let p = serde_json::to_value(c.role_placement("OTHER")).unwrap();
        assert_eq!(p, serde_json::json!({ "zone": "eu", "gpu": false }));
        assert!(Config::default().role_placement("X").is_empty());
        // --on and --label read alike: true/false and whole numbers as such.
        assert_eq!(parse_label("gpu=true").unwrap(), ("gpu".into(), serde_json::json!(true)));
        assert_eq!(parse_label("cores=16").unwrap(), ("cores".into(), serde_json::json!(16)));
        assert_eq!(parse_label("zone=eu-1").unwrap(), ("zone".into(), serde_json::json!("eu-1")));
        assert_eq!(parse_label("x=").unwrap(), ("x".into(), serde_json::json!("")));
        assert!(parse_label("gpu").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_label("=1").unwrap_err().contains("label key"));
    }
}
