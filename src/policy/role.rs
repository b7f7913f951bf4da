//! A role's resolved policy: plain numbers, no parsing. `config` builds it from
//! `corral.toml`; each agent keeps its own copy from spawn time, so a restart or a config
//! edit never changes the rules under a running agent.

use serde::{Deserialize, Serialize};

const MIN: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    #[default]
    None,
    /// A uniformly random delay between 0 and the computed one (AWS "full jitter").
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    pub initial_ms: u64,
    pub coefficient: f64,
    pub max_ms: Option<u64>,
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial_ms: 30_000, coefficient: 2.0, max_ms: None, jitter: Jitter::None }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1 for the first retry): initial x coefficient^(retry-1),
    /// capped by `max`; with full jitter, `sample` in [0, 1) scales it.
    pub fn delay_ms(&self, retry: u32, sample: f64) -> u64 {
        let exp = self.coefficient.powi(retry.saturating_sub(1).min(64) as i32);
        let raw = (self.initial_ms as f64 * exp).min(u64::MAX as f64 / 2.0) as u64;
        let capped = self.max_ms.map_or(raw, |m| raw.min(m));
        match self.jitter {
            Jitter::None => capped,
            Jitter::Full => (capped as f64 * sample.clamp(0.0, 1.0)) as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolePolicy {
    pub attempt_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub stall_timeout_ms: u64,
    pub start_timeout_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub progressive_timeout: bool,
    pub max_attempt_timeout_ms: Option<u64>,
    pub retry_guidance: Option<String>,
    pub require_handoff: bool,
    /// How long a live agent may wait on an external blocker before it is stopped and
    /// handed to a human.
    #[serde(default = "default_blocked_timeout")]
    pub blocked_timeout_ms: u64,
    /// Plain output resets the stall check (it always counts as a heartbeat).
    #[serde(default)]
    pub output_is_progress: bool,
    /// Cap on one attempt's output in its log, in bytes (0: none); head and newest tail
    /// are kept.
    #[serde(default = "default_max_log_size")]
    pub max_log_size: u64,
    /// The adapter the role names (`None`: chosen from the command's program name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<crate::adapter::Adapter>,
    /// How long a process may linger after its CLI printed the final result.
    #[serde(default = "default_result_grace")]
    pub result_grace_ms: u64,
    /// A retry after a transient failure, a limit or a lost attempt continues the CLI's
    /// session (`None`: yes when the agent has an adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_session: Option<bool>,
    /// Budgets of one attempt (an adapter agent over one is stopped and escalated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// USD per million tokens, for CLIs that report tokens but no cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_prices: Option<TokenPrices>,
    /// Each agent runs in its own git worktree on branch `corral/<agentId>`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub worktree: bool,
    /// The commit worktrees are made from (`None`: the repository's `HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worktree_copy: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_setup: Option<Vec<String>>,
    /// Ports reserved for each agent (`None`: one for worktree agents, none otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_per_agent: Option<u16>,
    /// The lowest port handed out (`None`: [`FIRST_PORT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_base: Option<u16>,
    /// A command corral runs in the agent's working tree before it believes "complete".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<String>>,
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout_ms: u64,
}

/// USD per million input and output tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenPrices {
    pub input: f64,
    pub output: f64,
}

impl TokenPrices {
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input + output as f64 * self.output) / 1_000_000.0
    }
}

pub const DEFAULT_RESULT_GRACE_MS: u64 = 10_000;

fn default_result_grace() -> u64 {
    DEFAULT_RESULT_GRACE_MS
}

/// The first port handed to agents (`CORRAL_PORT`) unless `port_base` says otherwise.
pub const FIRST_PORT: u16 = 20_000;

pub const DEFAULT_VERIFY_TIMEOUT_MS: u64 = 10 * MIN;

fn default_verify_timeout() -> u64 {
    DEFAULT_VERIFY_TIMEOUT_MS
}

pub const DEFAULT_BLOCKED_TIMEOUT_MS: u64 = 60 * MIN;

fn default_blocked_timeout() -> u64 {
    DEFAULT_BLOCKED_TIMEOUT_MS
}

pub const DEFAULT_MAX_LOG_SIZE: u64 = 100 * 1024 * 1024;

fn default_max_log_size() -> u64 {
    DEFAULT_MAX_LOG_SIZE
}

impl RolePolicy {
    /// The seed's role table with the seed's other defaults.
    pub fn seed(role: &str) -> Self {
        let (timeout, retries) = match role {
            "PLANNER" => (15 * MIN, 1),
            "IMPLEMENTER" => (30 * MIN, 2),
            "AUDITOR" => (20 * MIN, 1),
            "CLEANER" => (10 * MIN, 1),
            _ => (20 * MIN, 1),
        };
        Self {
            attempt_timeout_ms: timeout,
            heartbeat_timeout_ms: 5 * MIN,
            stall_timeout_ms: 10 * MIN,
            start_timeout_ms: None,
            deadline_ms: None,
            max_retries: retries,
            backoff: Backoff::default(),
            progressive_timeout: true,
            max_attempt_timeout_ms: None,
            retry_guidance: None,
            require_handoff: false,
            blocked_timeout_ms: DEFAULT_BLOCKED_TIMEOUT_MS,
            output_is_progress: false,
            max_log_size: DEFAULT_MAX_LOG_SIZE,
            adapter: None,
            result_grace_ms: DEFAULT_RESULT_GRACE_MS,
            resume_session: None,
            max_cost_usd: None,
            max_tokens: None,
            max_turns: None,
            token_prices: None,
            worktree: false,
            base: None,
            worktree_copy: Vec::new(),
            worktree_setup: None,
            ports_per_agent: None,
            port_base: None,
            verify: None,
            verify_timeout_ms: DEFAULT_VERIFY_TIMEOUT_MS,
        }
    }

    /// How many ports the agent gets.
    pub fn ports(&self) -> u16 {
        self.ports_per_agent.unwrap_or(if self.worktree { 1 } else { 0 })
    }

    /// Attempt `n` (1-based) gets base x n with progressive timeouts (the seed's
    /// 15m -> 30m -> 45m), capped by `max_attempt_timeout`.
    pub fn attempt_timeout(&self, n: u32) -> u64 {
        let t = if self.progressive_timeout {
            self.attempt_timeout_ms.saturating_mul(n.max(1) as u64)
        } else {
            self.attempt_timeout_ms
        };
        self.max_attempt_timeout_ms.map_or(t, |m| t.min(m))
    }
}

/// The built-in wording for a second retry when the role sets no `retry_guidance`.
pub const DEFAULT_RETRY_GUIDANCE: &str = "Earlier attempts failed. Work in small, verifiable steps; report \
progress after each step with `corral report`; if something you need is missing or unclear, report \
`--status blocked` with a finding that names exactly what, instead of guessing; write the handoff \
before you exit.";
