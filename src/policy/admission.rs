//! Why a queued agent whose dependencies are met may still not start: every hold in one
//! place and in one order, the first that applies being the reason. The supervisor admits
//! by it and the views (`status`, `show`, `health`) show a queued agent's reason by it, so
//! what holds an agent and what is said to hold it can never differ.
//! Pure: the shell takes the snapshot (counts, readings, the time) and asks.

use super::agent::{Agent, AgentSpec};
use super::health::{self, Breakers, HealthPolicy, Resources};
use super::lifecycle::{self, ProviderHold};
use super::provider::{self, ProviderLimit};
use std::collections::HashMap;

/// What the holds read that changes with time and outcomes, not with a start: taken once
/// per admission pass (or per read command).
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// Now, on the monotonic clock.
    pub mono: u64,
    pub resources: Resources,
    /// Why nothing starts while the workspace's budget is spent.
    pub budget: Option<String>,
    /// Providers whose rate or usage limit holds their agents.
    pub holds: Vec<ProviderHold>,
    /// Providers whose concurrency a burst of rate limits lowered.
    pub lowered: Vec<ProviderLimit>,
}

/// What a start changes: counted again after each one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Agents with a live process.
    pub running: usize,
    pub open_escalations: usize,
    /// Live agents per provider (counted only when a provider limit is in force).
    pub by_provider: HashMap<&'static str, usize>,
}

impl Counts {
    /// Counts the live agents among `agents`; per provider only when `providers` (a
    /// provider limit is in force), as nothing else reads those counts.
    pub fn of<'a>(agents: impl IntoIterator<Item = &'a Agent>, open_escalations: usize, providers: bool) -> Self {
        let mut c = Counts { open_escalations, ..Default::default() };
        for a in agents.into_iter().filter(|a| a.state.has_live_process()) {
            c.running += 1;
            if providers && let Some(p) = a.spec.adapter.provider() {
                *c.by_provider.entry(p).or_insert(0) += 1;
            }
        }
        c
    }
}

/// The rules the holds apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub health: &'a HealthPolicy,
    pub breakers: &'a Breakers,
}

impl Limits<'_> {
    /// Whether some provider limit is in force (then live agents are counted per provider).
    pub fn per_provider(&self, pass: &Pass) -> bool {
        self.health.provider_max_concurrent.is_some() || !pass.lowered.is_empty()
    }
}

/// Why `spec` may not start now, or `None` when it may: the workspace's budget, its
/// provider's rate limit, its provider's concurrency, then the health gate (capacity,
/// circuit breaker, resources, open escalations).
pub fn hold(spec: &AgentSpec, limits: &Limits, pass: &Pass, counts: &Counts) -> Option<String> {
    if let Some(why) = &pass.budget {
        return Some(why.clone());
    }
    if let Some(why) = lifecycle::provider_gate(spec, &pass.holds, pass.mono) {
        return Some(why);
    }
    if let Some(why) = provider_limit(spec, limits, pass, counts) {
        return Some(why);
    }
    health::hold_reason(
        limits.health,
        limits.breakers,
        &spec.role,
        counts.running,
        counts.open_escalations,
        &pass.resources,
        pass.mono,
    )
}

/// What holds every start, whatever the agent's role or provider (a role's own breaker and
/// a provider's limits hold only their agents): what `health` says.
pub fn workspace_hold(limits: &Limits, pass: &Pass, counts: &Counts) -> Option<String> {
    if let Some(why) = &pass.budget {
        return Some(why.clone());
    }
    health::hold_reason(
        limits.health,
        limits.breakers,
        health::GLOBAL,
        counts.running,
        counts.open_escalations,
        &pass.resources,
        pass.mono,
    )
}

/// Why an agent may not start while its provider runs as many agents as it may.
fn provider_limit(spec: &AgentSpec, limits: &Limits, pass: &Pass, counts: &Counts) -> Option<String> {
    let p = spec.adapter.provider()?;
    let base = limits.health.provider_max_concurrent;
    if base.is_none() && !pass.lowered.iter().any(|l| l.name == p) {
        return None;
    }
    provider::concurrency_gate(p, counts.by_provider.get(p).copied().unwrap_or(0), base, &pass.lowered)
}
