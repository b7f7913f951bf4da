//! Learned memory: the memory candidates of completed agents' handoffs (deduplicated), and
//! failure patterns learned from the registry per role (failure types and reasons, retry
//! outcomes, attempt durations against the timeout). Pure: built from records passed in.

pub mod export;

use crate::policy::agent::{Agent, AgentState, AttemptRun};
use crate::policy::lifecycle::fmt_ms;
use crate::policy::usage::{Tokens, agent_totals};
use crate::protocol::time;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryCandidate {
    pub agent_id: String,
    pub role: String,
    pub value: Value,
    pub first_seen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolePattern {
    pub role: String,
    pub agents: usize,
    pub attempts: usize,
    pub failed_attempts: usize,
    /// Failure type -> count.
    pub failure_types: BTreeMap<String, usize>,
    /// Most frequent failure reasons, most frequent first, with counts.
    pub top_reasons: Vec<(String, usize)>,
    /// Agents that needed more than one attempt, by how they ended.
    pub retried_completed: usize,
    pub retried_escalated: usize,
    pub retried_other: usize,
    pub escalated: usize,
    pub duration_p50_ms: Option<u64>,
    pub duration_p95_ms: Option<u64>,
    pub duration_max_ms: Option<u64>,
    pub attempt_timeout_ms: u64,
    /// Set when the role's attempts run near or past its timeout.
    pub advice: Option<String>,
    /// What the role's agent CLIs reported (absent for plain agents): the cost of all its
    /// agents whose cost is known, and the tokens of all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
    /// The same per agent: the mean over the agents that reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_agent_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_agent: Option<Tokens>,
    /// What its failed attempts cost: spent on work that had to be done again or escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySnapshot {
    pub candidates: Vec<MemoryCandidate>,
    pub patterns: Vec<RolePattern>,
}

/// The key two candidates are the same under: their JSON with object keys sorted.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// A handoff's `memoryCandidate` (an object, or an array of them) as separate candidates.
pub fn split_candidates(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().filter(|x| !x.is_null()).cloned().collect(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Numbers, ids and paths vary between otherwise identical failures; grouping ignores them.
fn reason_shape(r: &str) -> String {
    let r = r.split("; last finding").next().unwrap_or(r);
    let mut out = String::new();
    let mut last_digit = false;
    for c in r.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// What failure patterns are learned from about one agent, wherever its record is kept (the
/// single-machine registry, or the cluster's database).
#[derive(Debug, Clone, Default)]
pub struct Learned {
    pub role: String,
    pub complete: bool,
    pub escalated: bool,
    /// The role's attempt timeout.
    pub attempt_timeout_ms: u64,
    /// Its ended attempts, in order.
    pub attempts: Vec<LearnedAttempt>,
    /// What its CLI reported in all, where known.
    pub cost_usd: Option<f64>,
    pub tokens: Option<Tokens>,
}

#[derive(Debug, Clone, Default)]
pub struct LearnedAttempt {
    pub started_at: String,
    pub ended_at: String,
    pub failure_type: Option<String>,
    pub reason: Option<String>,
    pub cost_usd: Option<f64>,
}

impl Learned {
    pub fn of(a: &Agent) -> Self {
        let t = agent_totals(a);
        let attempts = a
            .attempts
            .iter()
            .filter_map(|at| match &at.run {
                AttemptRun::Ended { ended_at, failure_type, reason, .. } => Some(LearnedAttempt {
                    started_at: at.started_at.clone(),
                    ended_at: ended_at.clone(),
                    failure_type: failure_type.clone(),
                    reason: reason.clone(),
                    cost_usd: at.stream.as_ref().and_then(|s| s.cost_usd),
                }),
                _ => None,
            })
            .collect();
        Self {
            role: a.spec.role.clone(),
            complete: matches!(a.state, AgentState::Complete),
            escalated: matches!(a.state, AgentState::Escalated { .. }),
            attempt_timeout_ms: a.spec.policy.attempt_timeout_ms,
            attempts,
            cost_usd: t.cost_usd,
            tokens: t.tokens,
        }
    }
}

/// Failure patterns per role, from every agent the registry holds.
pub fn patterns(agents: &[&Agent]) -> Vec<RolePattern> {
    let learned: Vec<Learned> = agents.iter().map(|a| Learned::of(a)).collect();
    patterns_of(&learned)
}

/// Failure patterns per role, from what was learned about each agent.
pub fn patterns_of(agents: &[Learned]) -> Vec<RolePattern> {
    let mut by_role: BTreeMap<&str, Vec<&Learned>> = BTreeMap::new();
    for a in agents {
        by_role.entry(a.role.as_str()).or_default().push(a);
    }
    by_role
        .into_iter()
        .map(|(role, list)| {
            let mut p = RolePattern {
                role: role.to_string(),
                agents: list.len(),
                attempts: 0,
                failed_attempts: 0,
                failure_types: BTreeMap::new(),
                top_reasons: vec![],
                retried_completed: 0,
                retried_escalated: 0,
                retried_other: 0,
                escalated: 0,
                duration_p50_ms: None,
                duration_p95_ms: None,
                duration_max_ms: None,
                attempt_timeout_ms: list.last().map(|a| a.attempt_timeout_ms).unwrap_or(0),
                advice: None,
                cost_usd: None,
                tokens: None,
                cost_per_agent_usd: None,
                tokens_per_agent: None,
                failed_cost_usd: None,
            };
            spending(&mut p, &list);
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            let mut durations = Vec::new();
            for a in &list {
                for at in &a.attempts {
                    let (ended_at, failure_type, reason) = (&at.ended_at, &at.failure_type, &at.reason);
                    p.attempts += 1;
                    // An attempt stopped by a timeout ran as long as it was allowed, not as
                    // long as its work took: its duration would only echo the limit back.
                    let by_timeout = failure_type.as_deref() == Some("timeout");
                    if !by_timeout && let (Some(s), Some(e)) = (time::parse(&at.started_at), time::parse(ended_at)) {
                        durations.push((e - s).as_millis().max(0) as u64);
                    }
                    if let Some(ft) = failure_type {
                        p.failed_attempts += 1;
                        *p.failure_types.entry(ft.clone()).or_default() += 1;
                        if let Some(r) = reason {
                            *reasons.entry(format!("{ft}: {}", reason_shape(r))).or_default() += 1;
                        }
                    }
                }
                p.escalated += a.escalated as usize;
                if a.attempts.len() > 1 {
                    match () {
                        _ if a.complete => p.retried_completed += 1,
                        _ if a.escalated => p.retried_escalated += 1,
                        _ => p.retried_other += 1,
                    }
                }
            }
            let mut top: Vec<(String, usize)> = reasons.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(5);
            p.top_reasons = top;
            durations.sort_unstable();
            p.duration_p50_ms = percentile(&durations, 0.5);
            p.duration_p95_ms = percentile(&durations, 0.95);
            p.duration_max_ms = durations.last().copied();
            p.advice = timeout_advice(&p);
            p
        })
        .collect()
}

/// The role's cost and tokens, in all and per agent, and what its failed attempts cost.
fn spending(p: &mut RolePattern, list: &[&Learned]) {
    let (mut cost, mut costed, mut tokens, mut tokened) = (0.0, 0usize, Tokens::default(), 0u64);
    for a in list {
        if let Some(c) = a.cost_usd {
            cost += c;
            costed += 1;
        }
        if let Some(k) = a.tokens {
            tokens.input = tokens.input.saturating_add(k.input);
            tokens.output = tokens.output.saturating_add(k.output);
            tokened += 1;
        }
        for at in &a.attempts {
            if let (Some(_), Some(c)) = (&at.failure_type, at.cost_usd) {
                *p.failed_cost_usd.get_or_insert(0.0) += c;
            }
        }
    }
    if costed > 0 {
        p.cost_usd = Some(cost);
        p.cost_per_agent_usd = Some(cost / costed as f64);
    }
    if let (Some(i), Some(o)) = (tokens.input.checked_div(tokened), tokens.output.checked_div(tokened)) {
        p.tokens = Some(tokens);
        p.tokens_per_agent = Some(Tokens { input: i, output: o });
    }
}

/// Advice when the 95th-percentile attempt comes within 80% of the role's timeout.
fn timeout_advice(p: &RolePattern) -> Option<String> {
    let (p95, t) = (p.duration_p95_ms?, p.attempt_timeout_ms);
    if t == 0 || (p95 as f64) < 0.8 * t as f64 {
        return None;
    }
    // Suggest half again the 95th percentile, in whole minutes.
    let suggest = ((p95 as f64 * 1.5) / 60_000.0).ceil().max(1.0) as u64 * 60_000;
    let verb = if p95 >= t { "is over" } else { "is near" };
    Some(format!(
        "{}: the 95th-percentile attempt ({}) {verb} its {} timeout; consider attempt_timeout = \"{}\" under [roles.{}]",
        p.role,
        fmt_ms(p95),
        fmt_ms(t),
        fmt_ms(suggest),
        p.role
    ))
}

/// Case-insensitive search over candidates and patterns.
pub fn search(s: &MemorySnapshot, q: &str) -> MemorySnapshot {
    let q = q.to_lowercase();
    MemorySnapshot {
        candidates: s
            .candidates
            .iter()
            .filter(|c| {
                c.value.to_string().to_lowercase().contains(&q)
                    || c.agent_id.to_lowercase().contains(&q)
                    || c.role.to_lowercase().contains(&q)
            })
            .cloned()
            .collect(),
        patterns: s
            .patterns
            .iter()
            .filter(|p| serde_json::to_string(p).unwrap_or_default().to_lowercase().contains(&q))
            .cloned()
            .collect(),
    }
}
