//! A provider's admission limit: `[health] provider_max_concurrent` agents of one provider
//! at once (if set), lowered for a while when a burst of rate limits says the provider is
//! overloaded, then raised one agent per quiet period until it is back where it was.
//! Pure: the shell reports the rate limits and asks with the time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// This many rate limits of one provider within [`BURST_WINDOW_MS`] are a burst.
pub const BURST_HITS: usize = 2;
pub const BURST_WINDOW_MS: u64 = 60_000;
/// The default quiet period after which a lowered limit goes up by one.
pub const DEFAULT_RECOVERY_MS: u64 = 60_000;

/// A provider's concurrency lowered by a burst of rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lowered {
    /// The limit set at the lowering (or the last rate limit since).
    pub limit: usize,
    /// When the limit was last set: recovery steps count from here.
    pub since_mono: u64,
    /// The limit recovery goes back to, where the lowering ends.
    pub ceiling: usize,
    /// How many rate limits made the burst.
    pub hits: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Load {
    /// Recent rate limits, oldest first, within the burst window.
    hits: Vec<u64>,
    lowered: Option<Lowered>,
}

/// What the admission of a provider's agents is bounded by now.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimit {
    pub name: String,
    pub max: usize,
    pub reason: String,
    /// When a lowered limit goes up next (monotonic), while it is lowered.
    pub next_step_mono: Option<u64>,
}

/// Every provider's rate-limit history and lowered limit. It is kept across restarts of
/// the supervisor (its times are on the machine's monotonic clock, good until a reboot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderLoads {
    by_name: BTreeMap<String, Load>,
    /// When [`advance`](ProviderLoads::advance) last looked (not kept: a step that passed
    /// while no supervisor ran is due at once).
    #[serde(skip)]
    advanced_mono: u64,
}

/// How a rate limit changed a provider's limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Lowering {
    pub limit: usize,
    pub ceiling: usize,
    pub hits: usize,
}

impl ProviderLoads {
    /// An agent of `provider` hit its rate limit at `mono`; `running` of its agents still
    /// run. A burst (or any rate limit while already lowered) lowers the limit to what still
    /// runs, at least 1; returns the new limit when it was lowered.
    pub fn rate_limited(
        &mut self,
        provider: &str,
        mono: u64,
        running: usize,
        base: Option<usize>,
        recovery_ms: u64,
    ) -> Option<Lowering> {
        let now_limit = self.effective(provider, mono, recovery_ms);
        let load = self.by_name.entry(provider.to_string()).or_default();
        load.hits.retain(|&t| t.saturating_add(BURST_WINDOW_MS) > mono && t <= mono);
        load.hits.push(mono);
        if load.hits.len() < BURST_HITS && now_limit.is_none() {
            return None;
        }
        let hits = load.hits.len();
        // What ran before the limits hit: those still running and those just limited.
        let before = running + hits;
        let ceiling = match &load.lowered {
            Some(l) if now_limit.is_some() => l.ceiling,
            _ => base.unwrap_or(before).max(1),
        };
        let limit = running.max(1).min(now_limit.unwrap_or(usize::MAX)).min(ceiling);
        // Already as low as it goes: nothing is lowered (and nothing will be restored).
        load.lowered = (limit < ceiling).then_some(Lowered { limit, since_mono: mono, ceiling, hits });
        Some(Lowering { limit, ceiling, hits })
    }

    /// The lowered limit of `provider` at `mono`, after the recovery steps since, while
    /// it is below its ceiling.
    fn effective(&self, provider: &str, mono: u64, recovery_ms: u64) -> Option<usize> {
        let l = self.by_name.get(provider)?.lowered.as_ref()?;
        let steps = mono.saturating_sub(l.since_mono) / recovery_ms.max(1);
        let now = l.limit.saturating_add(usize::try_from(steps).unwrap_or(usize::MAX));
        (now < l.ceiling).then_some(now)
    }

    /// Forgets lowerings that have recovered by `mono`; returns the providers restored.
    pub fn advance(&mut self, mono: u64, recovery_ms: u64) -> Vec<(String, usize)> {
        self.advanced_mono = self.advanced_mono.max(mono);
        let done: Vec<(String, usize)> = self
            .by_name
            .iter()
            .filter_map(|(name, load)| {
                let l = load.lowered.as_ref()?;
                self.effective(name, mono, recovery_ms).is_none().then(|| (name.clone(), l.ceiling))
            })
            .collect();
        for (name, _) in &done {
            if let Some(load) = self.by_name.get_mut(name) {
                load.lowered = None;
            }
        }
        self.by_name
            .retain(|_, l| l.lowered.is_some() || l.hits.iter().any(|&t| t.saturating_add(BURST_WINDOW_MS) > mono));
        done
    }

    /// The next moment a lowered limit goes up (so held spawns are looked at again): the
    /// first step after the last [`advance`](Self::advance), so a step that passed while
    /// nothing advanced is still due.
    pub fn next_step(&self, recovery_ms: u64) -> Option<u64> {
        let recovery = recovery_ms.max(1);
        self.by_name
            .values()
            .filter_map(|load| {
                let l = load.lowered.as_ref()?;
                let steps = self.advanced_mono.saturating_sub(l.since_mono) / recovery;
                Some(l.since_mono.saturating_add(steps.saturating_add(1).saturating_mul(recovery)))
            })
            .min()
    }

    /// The providers whose limit is lowered at `mono`, and to what.
    pub fn lowered(&self, mono: u64, recovery_ms: u64) -> Vec<ProviderLimit> {
        let recovery = recovery_ms.max(1);
        self.by_name
            .iter()
            .filter_map(|(name, load)| {
                let l = load.lowered.as_ref()?;
                let max = self.effective(name, mono, recovery)?;
                let steps = mono.saturating_sub(l.since_mono) / recovery;
                let next = l.since_mono.saturating_add((steps + 1).saturating_mul(recovery));
                let reason = format!(
                    "lowered from {} after {} rate limits within {}; up by one every {} without one",
                    l.ceiling,
                    l.hits,
                    super::lifecycle::fmt_ms(BURST_WINDOW_MS),
                    super::lifecycle::fmt_ms(recovery),
                );
                Some(ProviderLimit { name: name.clone(), max, reason, next_step_mono: Some(next) })
            })
            .collect()
    }
}

/// Why an agent of `provider` may not start while `running` of its agents run: its
/// lowered limit, else the configured `base`.
pub fn concurrency_gate(
    provider: &str,
    running: usize,
    base: Option<usize>,
    lowered: &[ProviderLimit],
) -> Option<String> {
    let (max, why) = match lowered.iter().find(|l| l.name == provider) {
        Some(l) => (l.max, l.reason.as_str()),
        None => (base?, "[health] provider_max_concurrent"),
    };
    (running >= max).then(|| {
        format!(
            "provider {provider} runs at most {} at once and {running} run ({why})",
            super::plural(max, "agent", "agents"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;
    const REC: u64 = 30 * S;

    #[test]
    fn one_rate_limit_is_not_a_burst_two_within_the_window_are() {
        let mut p = ProviderLoads::default();
        assert_eq!(p.rate_limited("anthropic", 10 * S, 3, None, REC), None);
        assert!(p.lowered(10 * S, REC).is_empty());
        // The next one comes after the window: still no burst.
        assert_eq!(p.rate_limited("anthropic", 71 * S, 3, None, REC), None);
        // Another provider's limit does not count towards this one's.
        assert_eq!(p.rate_limited("openai", 72 * S, 3, None, REC), None);
        let l = p.rate_limited("anthropic", 80 * S, 2, None, REC).expect("a burst");
        // Lowered to what still runs; back up to what ran before (2 running + 2 limited).
        assert_eq!(l, Lowering { limit: 2, ceiling: 4, hits: 2 });
        let now = p.lowered(80 * S, REC);
        assert_eq!(now.len(), 1);
        assert_eq!((now[0].name.as_str(), now[0].max), ("anthropic", 2));
        assert!(now[0].reason.contains("after 2 rate limits within 1m"), "{}", now[0].reason);
        assert_eq!(now[0].next_step_mono, Some(110 * S));
    }

    #[test]
    fn the_limit_is_at_least_one_and_recovers_one_step_per_quiet_period() {
        let mut p = ProviderLoads::default();
        p.rate_limited("openai", 0, 0, None, REC);
        let l = p.rate_limited("openai", S, 0, None, REC).unwrap();
        assert_eq!((l.limit, l.ceiling), (1, 2), "nothing runs: still one may start");
        let gate = |p: &ProviderLoads, running, mono| concurrency_gate("openai", running, None, &p.lowered(mono, REC));
        assert!(gate(&p, 1, 2 * S).unwrap().contains("at most 1 agent at once and 1 run"));
        assert_eq!(gate(&p, 0, 2 * S), None);
        assert_eq!(p.next_step(REC), Some(31 * S));
        // A quiet period later it is back at its ceiling: the lowering ends.
        assert_eq!(gate(&p, 1, 31 * S), None);
        assert_eq!(p.next_step(REC), Some(31 * S), "due until advanced, even once past");
        assert_eq!(p.advance(30 * S, REC), vec![]);
        assert_eq!(p.next_step(REC), Some(31 * S));
        assert_eq!(p.advance(40 * S, REC), vec![("openai".to_string(), 2)]);
        assert!(p.lowered(40 * S, REC).is_empty());
        assert_eq!(p.next_step(REC), None);
    }

    #[test]
    fn recovery_goes_step_by_step_and_a_new_limit_lowers_it_again() {
        let mut p = ProviderLoads::default();
        p.rate_limited("anthropic", 0, 5, None, REC);
        p.rate_limited("anthropic", S, 5, None, REC);
        p.rate_limited("anthropic", 2 * S, 1, None, REC);
        let max = |p: &ProviderLoads, mono| p.lowered(mono, REC).first().map(|l| l.max);
        assert_eq!(max(&p, 2 * S), Some(1));
        assert_eq!(max(&p, 32 * S), Some(2));
        assert_eq!(max(&p, 62 * S), Some(3));
        // Each step is due once: after an advance past one, the next one.
        assert_eq!(p.next_step(REC), Some(32 * S));
        p.advance(45 * S, REC);
        assert_eq!(p.next_step(REC), Some(62 * S));
        // One more rate limit while lowered: down to what runs, the quiet period restarts,
        // the ceiling stays where it was.
        let l = p.rate_limited("anthropic", 70 * S, 2, None, REC).unwrap();
        assert_eq!((l.limit, l.ceiling), (2, 7));
        assert_eq!(max(&p, 99 * S), Some(2));
        assert_eq!(max(&p, 100 * S), Some(3));
        assert_eq!(max(&p, 250 * S), None, "back at 7");
    }

    #[test]
    fn a_configured_base_limits_admission_and_is_where_recovery_ends() {
        assert!(
            concurrency_gate("anthropic", 2, Some(2), &[])
                .unwrap()
                .contains("at most 2 agents at once and 2 run ([health] provider_max_concurrent)")
        );
        assert_eq!(concurrency_gate("anthropic", 1, Some(2), &[]), None);
        assert_eq!(concurrency_gate("anthropic", 9, None, &[]), None);
        let mut p = ProviderLoads::default();
        p.rate_limited("anthropic", 0, 4, Some(3), REC);
        let l = p.rate_limited("anthropic", S, 4, Some(3), REC).unwrap();
        assert_eq!((l.limit, l.ceiling), (3, 3), "never above the base");
        assert!(p.lowered(S, REC).is_empty(), "a limit at its ceiling is not lowered");
        let l = p.rate_limited("anthropic", 2 * S, 1, Some(3), REC).unwrap();
        assert_eq!((l.limit, l.ceiling), (1, 3));
        assert!(concurrency_gate("anthropic", 1, Some(3), &p.lowered(3 * S, REC)).unwrap().contains("at most 1 agent"));
    }
}
