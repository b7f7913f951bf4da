//! Why a queued agent whose dependencies are met may still not start: every hold in one
//! place and in one order, the first that applies being the reason. The supervisor admits
//! by it and the views (`status`, `show`, `health`) show a queued agent's reason by it, so
//! what holds an agent and what is said to hold it can never differ.
//! Pure: the shell takes the snapshot (counts, readings, the time) and asks.

use super::agent::{Agent, AgentSpec};
use super::health::{self, Breakers, HealthPolicy, Resources};
use super::lifecycle::{self, ProviderHold};
use super::provider::{self, ProviderLimit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What `corral parallel`, `corral pause` and `corral resume` changed at run time, over
/// the configuration. The supervisor keeps it in the registry: a restarted one reads it back
/// and it stays in force over `corral.toml` until changed again or reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// `corral parallel N`: over `[health] max_concurrent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// `corral parallel N --group G`: over `[groups.G] max_concurrent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, usize>,
    /// `corral pause`: no queued agent starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// `corral pause --group G`: no queued agent of these groups starts.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub paused_groups: BTreeSet<String>,
}

impl Capacity {
    /// The workspace's limit in force, given the configured one.
    pub fn max_concurrent(&self, configured: usize) -> usize {
        self.max_concurrent.unwrap_or(configured)
    }

    /// Each group's limit in force, given the configured ones.
    pub fn group_limits(&self, mut configured: BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        configured.extend(self.groups.iter().map(|(g, n)| (g.clone(), *n)));
        configured
    }

    /// `corral parallel N [--group G]` (`max` is `None` for `--reset`): the limit over the
    /// configuration, or forgotten so the configured one holds again.
    pub fn set_limit(&mut self, group: Option<&str>, max: Option<usize>) {
        match (group, max) {
            (None, m) => self.max_concurrent = m,
            (Some(g), Some(n)) => {
                self.groups.insert(g.to_string(), n);
            }
            (Some(g), None) => {
                self.groups.remove(g);
            }
        }
    }

    /// The data of the `capacity_changed` event a `set_limit(group, max)` makes, when the
    /// limit in force moves from `from` (the configured one being `configured`).
    pub fn limit_event(
        group: Option<&str>,
        max: Option<usize>,
        from: Option<usize>,
        configured: Option<usize>,
    ) -> Option<serde_json::Value> {
        let to = max.or(configured);
        (to != from).then(|| {
            serde_json::json!({
                "group": group, "maxConcurrent": to, "from": from, "configured": configured, "reset": max.is_none(),
            })
        })
    }

    /// `corral pause [--group G]` (`paused`) or `corral resume [--group G | --all]`; returns
    /// what it changed (`None`: the workspace, else a group), each once, for its event.
    pub fn set_paused(&mut self, group: Option<&str>, paused: bool, all: bool) -> Vec<Option<String>> {
        let mut changed = Vec::new();
        match group {
            None if all && !paused => {
                if std::mem::take(&mut self.paused) {
                    changed.push(None);
                }
                changed.extend(std::mem::take(&mut self.paused_groups).into_iter().map(Some));
            }
            None => {
                if self.paused != paused {
                    self.paused = paused;
                    changed.push(None);
                }
            }
            Some(g) => {
                let did = if paused { self.paused_groups.insert(g.to_string()) } else { self.paused_groups.remove(g) };
                if did {
                    changed.push(Some(g.to_string()));
                }
            }
        }
        changed
    }

    /// Why no agent of `group` (or none at all) may start while paused.
    pub fn paused_reason(&self, group: Option<&str>) -> Option<String> {
        if self.paused {
            return Some("paused (corral resume to release)".into());
        }
        let g = group.filter(|g| self.paused_groups.contains(*g))?;
        Some(format!("group {g} paused (corral resume --group {g} to release)"))
    }
}

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
    /// Live agents per admission group.
    pub by_group: HashMap<String, usize>,
}

impl Counts {
    /// Counts the live agents among `agents`; per provider only when `by.providers` (a
    /// provider limit is in force) and per group only when `by.groups` (a group has a limit),
    /// as nothing else in admission reads those counts.
    pub fn of<'a>(agents: impl IntoIterator<Item = &'a Agent>, open_escalations: usize, by: Per) -> Self {
        let mut c = Counts { open_escalations, ..Default::default() };
        for a in agents.into_iter().filter(|a| a.state.has_live_process()) {
            c.running += 1;
            if by.providers
                && let Some(p) = a.spec.adapter.provider()
            {
                *c.by_provider.entry(p).or_insert(0) += 1;
            }
            if by.groups
                && let Some(g) = &a.spec.group
            {
                match c.by_group.get_mut(g) {
                    Some(n) => *n += 1,
                    None => {
                        c.by_group.insert(g.clone(), 1);
                    }
                }
            }
        }
        c
    }
}

/// Which counts [`Counts::of`] takes besides the total.
#[derive(Debug, Clone, Copy, Default)]
pub struct Per {
    pub providers: bool,
    pub groups: bool,
}

impl Per {
    pub const ALL: Per = Per { providers: true, groups: true };
}

/// The rules the holds apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub health: &'a HealthPolicy,
    pub breakers: &'a Breakers,
    /// Each limited group's `max_concurrent` (a group not here has no limit of its own).
    pub groups: &'a BTreeMap<String, usize>,
    /// What was paused at run time.
    pub capacity: &'a Capacity,
}

impl Limits<'_> {
    /// Which counts the holds need: per provider while a provider limit is in force, per
    /// group while a group has a limit.
    pub fn per(&self, pass: &Pass) -> Per {
        Per {
            providers: self.health.provider_max_concurrent.is_some() || !pass.lowered.is_empty(),
            groups: !self.groups.is_empty(),
        }
    }
}

/// Why `spec` may not start now, or `None` when it may: its own delay (until
/// `not_before_mono`, `--delay` from its spawn), the workspace's budget, a pause
/// (of the workspace or of its group), its provider's rate limit, its provider's concurrency, its group's capacity, then the health
/// gate (the workspace's capacity, circuit breaker, resources, open escalations).
pub fn hold(
    spec: &AgentSpec,
    not_before_mono: Option<u64>,
    limits: &Limits,
    pass: &Pass,
    counts: &Counts,
) -> Option<String> {
    if let Some(why) = delayed(spec, not_before_mono, pass.mono) {
        return Some(why);
    }
    if let Some(why) = &pass.budget {
        return Some(why.clone());
    }
    if let Some(why) = limits.capacity.paused_reason(spec.group.as_deref()) {
        return Some(why);
    }
    if let Some(why) = lifecycle::provider_gate(spec, &pass.holds, pass.mono) {
        return Some(why);
    }
    if let Some(why) = provider_limit(spec, limits, pass, counts) {
        return Some(why);
    }
    if let Some(why) = group_full(spec, limits, counts) {
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

/// What holds every start, whatever the agent's role, group or provider (a role's own
/// breaker and a provider's limits hold only their agents): what `health` says.
pub fn workspace_hold(limits: &Limits, pass: &Pass, counts: &Counts) -> Option<String> {
    if let Some(why) = &pass.budget {
        return Some(why.clone());
    }
    if let Some(why) = limits.capacity.paused_reason(None) {
        return Some(why);
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

/// Why an agent may not start while its group runs as many agents as it may.
fn group_full(spec: &AgentSpec, limits: &Limits, counts: &Counts) -> Option<String> {
    let g = spec.group.as_deref()?;
    let max = *limits.groups.get(g)?;
    let running = counts.by_group.get(g).copied().unwrap_or(0);
    (running >= max).then(|| format!("group {g} at capacity ({running} running, max {max})"))
}

/// Why an agent spawned with `--delay` may not start yet: "delayed until 14:05:00 UTC"
/// (with the date when that is a day or more away).
pub fn delayed(spec: &AgentSpec, not_before_mono: Option<u64>, mono: u64) -> Option<String> {
    let until = not_before_mono.filter(|t| *t > mono)?;
    let wall = spec.not_before.as_deref().unwrap_or("");
    // RFC 3339 as corral writes it, in UTC: `2026-11-24T06:04:21.123+00:00`.
    let (date, time) = (wall.get(..10).unwrap_or(""), wall.get(11..19).unwrap_or(""));
    Some(if until - mono >= 20 * 3_600_000 {
        format!("delayed until {date} {time} UTC")
    } else {
        format!("delayed until {time} UTC")
    })
}

/// The queue in the order admission looks at it: higher priority first, ties in spawn order.
pub fn by_priority<T>(queue: &mut [T], priority: impl Fn(&T) -> i32) {
    queue.sort_by_key(|x| std::cmp::Reverse(priority(x)));
}

/// The range `--priority` takes.
pub const PRIORITIES: std::ops::RangeInclusive<i64> = -1000..=1000;

/// A spawn's priority: [`PRIORITIES`]; the same rule for `--priority` and MCP.
pub fn check_priority(n: i64) -> Result<i32, String> {
    if !PRIORITIES.contains(&n) {
        return Err(format!(
            "{n} is out of range; use {} to {} (0 is the default; higher starts first)",
            PRIORITIES.start(),
            PRIORITIES.end()
        ));
    }
    Ok(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(group: Option<&str>) -> AgentSpec {
        serde_json::from_value(serde_json::json!({
            "id": "agent-001-W", "role": "W", "task": "t", "command": ["true"], "cwd": "/",
            "policy": crate::policy::role::RolePolicy::seed("W"), "spawnedAt": "2026-11-24T06:00:00.000+00:00",
            "group": group, "notBefore": "2026-11-24T06:04:21.123+00:00",
        }))
        .unwrap()
    }

    #[test]
    fn holds_come_in_one_order_and_the_first_is_the_reason() {
        let health = HealthPolicy { max_concurrent: 3, ..Default::default() };
        let breakers = Breakers::default();
        let groups = BTreeMap::from([("review".to_string(), 1)]);
        let mut capacity = Capacity::default();
        let pass = Pass { mono: 1_000, ..Default::default() };
        let mut counts = Counts { running: 1, ..Default::default() };
        counts.by_group.insert("review".into(), 1);
        let review = spec(Some("review"));
        let other = spec(Some("build"));
        let h = |s: &AgentSpec, nb: Option<u64>, c: &Capacity, counts: &Counts| {
            hold(s, nb, &Limits { health: &health, breakers: &breakers, groups: &groups, capacity: c }, &pass, counts)
        };
        let ws = |c: &Capacity, counts: &Counts| {
            workspace_hold(
                &Limits { health: &health, breakers: &breakers, groups: &groups, capacity: c },
                &pass,
                counts,
            )
        };
        assert_eq!(h(&review, None, &capacity, &counts).unwrap(), "group review at capacity (1 running, max 1)");
        // A group without a limit of its own is bounded by the workspace's alone.
        assert_eq!(h(&other, None, &capacity, &counts), None);
        assert_eq!(h(&review, Some(5_000), &capacity, &counts).unwrap(), "delayed until 06:04:21 UTC");
        assert_eq!(h(&review, Some(1_000), &capacity, &counts).unwrap(), "group review at capacity (1 running, max 1)");
        capacity.paused_groups.insert("build".into());
        assert_eq!(
            h(&other, None, &capacity, &counts).unwrap(),
            "group build paused (corral resume --group build to release)"
        );
        capacity.paused = true;
        assert_eq!(h(&review, None, &capacity, &counts).unwrap(), "paused (corral resume to release)");
        assert_eq!(ws(&capacity, &counts).unwrap(), "paused (corral resume to release)");
        let c = Capacity::default();
        counts.running = 3;
        assert!(h(&other, None, &c, &counts).unwrap().starts_with("capacity: 3 of 3"));
        assert!(ws(&c, &counts).unwrap().starts_with("capacity: 3 of 3"));
    }

    #[test]
    fn run_time_changes_win_over_the_configuration() {
        let mut c = Capacity::default();
        assert_eq!(c.max_concurrent(5), 5);
        c.max_concurrent = Some(2);
        assert_eq!(c.max_concurrent(5), 2);
        c.groups.insert("review".into(), 4);
        let limits = c.group_limits(BTreeMap::from([("review".to_string(), 1), ("build".to_string(), 2)]));
        assert_eq!(limits, BTreeMap::from([("review".to_string(), 4), ("build".to_string(), 2)]));
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Capacity>(&text).unwrap(), c);
        assert_eq!(serde_json::from_str::<Capacity>("{}").unwrap(), Capacity::default());
    }

    #[test]
    fn priority_orders_the_queue_and_keeps_spawn_order_for_ties() {
        let mut q = vec![("a", 0), ("b", 5), ("c", -1), ("d", 5), ("e", 0)];
        by_priority(&mut q, |x| x.1);
        assert_eq!(q.iter().map(|x| x.0).collect::<String>(), "bdaec");
        assert_eq!(check_priority(-1000), Ok(-1000));
        assert!(check_priority(1001).unwrap_err().contains("-1000 to 1000"));
    }
}
