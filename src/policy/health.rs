//! Health-gated spawning: capacity, a circuit breaker over recent failures, resources and
//! open escalations. Pure: the shell supplies counts, resource readings and the time.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthPolicy {
    pub max_concurrent: usize,
    pub breaker_failures: usize,
    pub breaker_window_ms: u64,
    pub breaker_cooldown_ms: u64,
    pub min_free_memory: Option<u64>,
    pub max_load: Option<f64>,
    pub max_open_escalations: Option<usize>,
    /// One breaker per role (the default), or one for the whole workspace.
    #[serde(default)]
    pub breaker_scope: BreakerScope,
    /// Agents of one provider running at once (none: only `max_concurrent` bounds them).
    #[serde(default)]
    pub provider_max_concurrent: Option<usize>,
    /// After a burst of rate limits lowered a provider's limit, it goes up by one each time
    /// this long passes without another.
    #[serde(default = "default_recovery_ms")]
    pub provider_recovery_ms: u64,
}

fn default_recovery_ms() -> u64 {
    super::provider::DEFAULT_RECOVERY_MS
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerScope {
    /// Failures of one role hold only that role's spawns.
    #[default]
    Role,
    /// Failures of any role hold every spawn.
    Global,
}

impl BreakerScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Global => "global",
        }
    }
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            max_concurrent: 5,
            breaker_failures: 3,
            breaker_window_ms: 5 * 60_000,
            breaker_cooldown_ms: 60_000,
            min_free_memory: None,
            max_load: None,
            max_open_escalations: None,
            breaker_scope: BreakerScope::Role,
            provider_max_concurrent: None,
            provider_recovery_ms: default_recovery_ms(),
        }
    }
}

/// The breakers in force: one per role, or one (keyed `*`) for the whole workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breakers {
    pub by_key: std::collections::BTreeMap<String, Breaker>,
}

/// The key of the breaker for the whole workspace.
pub const GLOBAL: &str = "*";

/// What an agent's attempt ending in `state` tells a breaker: a success (complete), a
/// failure (failed, timed out, escalated), or nothing (killed by a human, lost with its
/// worker, still going).
pub fn breaker_outcome(state: &str) -> Option<bool> {
    match state {
        "complete" => Some(true),
        "failed" | "timed_out" | "escalated" => Some(false),
        _ => None,
    }
}

impl Breakers {
    /// Which breaker a role's attempts feed and its spawns obey.
    pub fn key<'a>(p: &HealthPolicy, role: &'a str) -> &'a str {
        match p.breaker_scope {
            BreakerScope::Role => role,
            BreakerScope::Global => GLOBAL,
        }
    }

    pub fn get(&self, p: &HealthPolicy, role: &str) -> Option<&Breaker> {
        self.by_key.get(Self::key(p, role))
    }

    /// An attempt of `role` ended. Returns the breaker's key and new state when it changed.
    pub fn outcome(
        &mut self,
        p: &HealthPolicy,
        role: &str,
        agent: &str,
        success: bool,
        now: u64,
    ) -> Option<(String, &Breaker)> {
        let key = Self::key(p, role).to_string();
        if success && !self.by_key.contains_key(&key) {
            return None; // a closed breaker with nothing to forget: nothing to record
        }
        let b = self.by_key.entry(key.clone()).or_default();
        let before = b.name();
        if success {
            b.success(agent);
        } else {
            b.failure(agent, now, p);
        }
        let changed = b.name() != before;
        if let Breaker::Closed { failures } = b
            && failures.is_empty()
        {
            self.by_key.remove(&key);
            return changed.then_some((key, &CLOSED));
        }
        changed.then(|| (key.clone(), &self.by_key[&key]))
    }

    /// Time passing: breakers whose cooldown is over let a probe through. Returns the keys
    /// that changed.
    pub fn advance(&mut self, now: u64) -> Vec<String> {
        let mut changed = Vec::new();
        for (key, b) in self.by_key.iter_mut() {
            let before = b.name();
            b.advance(now);
            if b.name() != before {
                changed.push(key.clone());
            }
        }
        changed
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.by_key.values().filter_map(Breaker::next_deadline).min()
    }

    /// A start of `role` went through; in half-open state it is the probe.
    pub fn started(&mut self, p: &HealthPolicy, role: &str, agent: &str) {
        if let Some(b) = self.by_key.get_mut(Self::key(p, role)) {
            b.started(agent);
        }
    }

    /// Why a start of `role` must wait on its breaker, if it must.
    pub fn blocks(&self, p: &HealthPolicy, role: &str, now: u64) -> Option<String> {
        let b = self.get(p, role)?;
        let why = b.blocks(now)?;
        Some(match p.breaker_scope {
            BreakerScope::Role => format!("{role}: {why}"),
            BreakerScope::Global => why,
        })
    }

    /// The breaker that says most about the workspace: an open one, else a half-open one,
    /// else closed.
    pub fn worst(&self) -> Option<(&str, &Breaker)> {
        let rank = |b: &Breaker| match b {
            Breaker::Open { .. } => 2,
            Breaker::HalfOpen { .. } => 1,
            Breaker::Closed { .. } => 0,
        };
        self.by_key.iter().max_by_key(|(_, b)| rank(b)).map(|(k, b)| (k.as_str(), b))
    }
}

static CLOSED: Breaker = Breaker::Closed { failures: Vec::new() };

/// systemd's StartLimitBurst/StartLimitIntervalSec as a three-state breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Monotonic times of recent failures, oldest first.
    Closed {
        failures: Vec<u64>,
    },
    Open {
        until_mono: u64,
        failures: usize,
    },
    /// Cooldown over: one probe may start; its outcome closes or reopens the breaker.
    HalfOpen {
        probe: Option<String>,
    },
}

impl Default for Breaker {
    fn default() -> Self {
        Self::Closed { failures: vec![] }
    }
}

impl Breaker {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }

    /// Time passing: an open breaker whose cooldown is over lets a probe through.
    pub fn advance(&mut self, now: u64) {
        if let Self::Open { until_mono, .. } = self
            && now >= *until_mono
        {
            *self = Self::HalfOpen { probe: None };
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        match self {
            Self::Open { until_mono, .. } => Some(*until_mono),
            _ => None,
        }
    }

    /// An attempt failed. Returns true when this opened the breaker. The cooldown is added
    /// saturating: an endless one keeps the breaker open rather than wrapping to the past.
    pub fn failure(&mut self, agent: &str, now: u64, p: &HealthPolicy) -> bool {
        self.advance(now);
        match self {
            Self::Closed { failures } => {
                failures.retain(|t| now.saturating_sub(*t) < p.breaker_window_ms);
                failures.push(now);
                if p.breaker_failures > 0 && failures.len() >= p.breaker_failures {
                    let n = failures.len();
                    *self = Self::Open { until_mono: now.saturating_add(p.breaker_cooldown_ms), failures: n };
                    return true;
                }
                false
            }
            Self::HalfOpen { probe } if probe.as_deref() == Some(agent) => {
                *self = Self::Open { until_mono: now.saturating_add(p.breaker_cooldown_ms), failures: 1 };
                true
            }
            _ => false,
        }
    }

    /// An attempt succeeded; the probe's success closes the breaker.
    pub fn success(&mut self, agent: &str) -> bool {
        if let Self::HalfOpen { probe } = self
            && (probe.as_deref() == Some(agent) || probe.is_none())
        {
            *self = Self::Closed { failures: vec![] };
            return true;
        }
        false
    }

    /// Why a start must wait, if it must.
    pub fn blocks(&self, now: u64) -> Option<String> {
        match self {
            Self::Closed { .. } => None,
            Self::Open { until_mono, failures } => Some(format!(
                "circuit breaker open after {}; probe in {}",
                super::plural(*failures, "recent failure", "recent failures"),
                crate::policy::lifecycle::fmt_ms(until_mono.saturating_sub(now).div_ceil(1000).saturating_mul(1000))
            )),
            Self::HalfOpen { probe: Some(p) } => Some(format!("circuit breaker half-open; waiting on probe {p}")),
            Self::HalfOpen { probe: None } => None,
        }
    }

    /// A start went through; in half-open state it is the probe.
    pub fn started(&mut self, agent: &str) {
        if let Self::HalfOpen { probe } = self
            && probe.is_none()
        {
            *probe = Some(agent.to_string());
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub free_memory: Option<u64>,
    pub load: Option<f64>,
}

/// Whether free memory or load is past its limit: readings change with no event to say
/// so, so the shell looks again on a timer while this holds.
pub fn resources_short(p: &HealthPolicy, r: &Resources) -> bool {
    p.min_free_memory.zip(r.free_memory).is_some_and(|(min, free)| free < min)
        || p.max_load.zip(r.load).is_some_and(|(max, load)| load > max)
}

/// Why no agent may start now, or `None` when one may. Checked in order, so the reason is
/// the first that applies.
pub fn hold_reason(
    p: &HealthPolicy,
    b: &Breakers,
    role: &str,
    running: usize,
    open_escalations: usize,
    r: &Resources,
    now: u64,
) -> Option<String> {
    if running >= p.max_concurrent {
        return Some(format!("capacity: {running} of {} running", super::plural(p.max_concurrent, "agent", "agents")));
    }
    if let Some(why) = b.blocks(p, role, now) {
        return Some(why);
    }
    if let (Some(min), Some(free)) = (p.min_free_memory, r.free_memory)
        && free < min
    {
        return Some(format!("free memory {} MiB below the {} MiB minimum", free >> 20, min >> 20));
    }
    if let (Some(max), Some(load)) = (p.max_load, r.load)
        && load > max
    {
        return Some(format!("load average {load:.2} above the {max:.2} maximum"));
    }
    if let Some(max) = p.max_open_escalations
        && open_escalations >= max
    {
        return Some(format!(
            "{} (at most {max} allowed)",
            super::plural(open_escalations, "open escalation", "open escalations")
        ));
    }
    None
}
