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
        }
    }
}

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
                "circuit breaker open after {failures} recent failures; probe in {}",
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
    b: &Breaker,
    running: usize,
    open_escalations: usize,
    r: &Resources,
    now: u64,
) -> Option<String> {
    if running >= p.max_concurrent {
        return Some(format!("capacity: {running} of {} agents running", p.max_concurrent));
    }
    if let Some(why) = b.blocks(now) {
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
        return Some(format!("{open_escalations} open escalations (at most {max} allowed)"));
    }
    None
}
