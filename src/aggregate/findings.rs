//! Merging findings, decisions and memory candidates, and deciding conflicts: evidence
//! first, then a strict majority of distinct agents, otherwise unresolved. Values are
//! compared as JSON (object key order ignored) through a canonical text, so grouping costs
//! one map lookup per finding and no pair of agents is ever compared directly.

use super::{Conflict, ConflictKind, MergedFinding, Position, Resolution, Support, Winner};
use crate::protocol::files::Handoff;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// JSON text with object keys sorted: equal exactly when the values are equal as JSON.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Evidence weights: test or measurement 3, citation 2, reasoning 1, none 0. A test or
/// measurement that says it did not pass is no support at all.
pub fn evidence_rank(evidence: &[Value]) -> u8 {
    evidence.iter().map(item_rank).max().unwrap_or(0)
}

fn item_rank(item: &Value) -> u8 {
    let Some(kind) = item.get("kind").and_then(Value::as_str) else { return 0 };
    match kind.to_ascii_lowercase().as_str() {
        "test" | "measurement" if item.get("passed") != Some(&Value::Bool(false)) => 3,
        "citation" => 2,
        "reasoning" => 1,
        _ => 0,
    }
}

pub fn rank_name(rank: u8) -> &'static str {
    match rank {
        3 => "test or measurement",
        2 => "citation",
        1 => "reasoning",
        _ => "no evidence",
    }
}

fn evidence_items(finding: &Value) -> Vec<Value> {
    match finding.get("evidence") {
        Some(Value::Array(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(one) => vec![one.clone()],
    }
}

/// One value and the agents that gave it, one entry per agent.
struct Group {
    value: Value,
    support: Vec<Support>,
}

impl Group {
    fn new(value: Value) -> Self {
        Self { value, support: Vec::new() }
    }

    fn add(&mut self, agent: &str, handoff: &Path, finding: &Value) {
        let claim = finding.get("claim").and_then(Value::as_str).map(str::to_string);
        let evidence = evidence_items(finding);
        // Handoffs are merged one at a time, so an agent repeating itself always meets its
        // own entry last; it stays one agent (one vote) with all the evidence it gave.
        if let Some(last) = self.support.last_mut().filter(|s| s.agent == agent) {
            last.evidence.extend(evidence);
            last.evidence_rank = evidence_rank(&last.evidence);
            if last.claim.is_none() {
                last.claim = claim;
            }
            return;
        }
        self.support.push(Support {
            agent: agent.to_string(),
            claim,
            evidence_rank: evidence_rank(&evidence),
            evidence,
            handoff: handoff.to_path_buf(),
        });
    }

    fn into_merged(self, key: Option<String>) -> MergedFinding {
        MergedFinding {
            key,
            agents: self.support.iter().map(|s| s.agent.clone()).collect(),
            evidence_rank: self.support.iter().map(|s| s.evidence_rank).max().unwrap_or(0),
            value: self.value,
            support: self.support,
        }
    }
}

enum Slot {
    Keyed { key: String, groups: Vec<Group>, by_value: HashMap<String, usize> },
    Plain(Group),
}

/// Findings and decisions in first-seen order.
#[derive(Default)]
pub struct Merger {
    slots: Vec<Slot>,
    keyed: HashMap<String, usize>,
    plain: HashMap<String, usize>,
    decisions: Dedup,
}

impl Merger {
    pub fn add_finding(&mut self, agent: &str, handoff: &Path, finding: &Value) {
        let structured = match finding {
            Value::Object(m) => match (m.get("key"), m.get("value")) {
                (Some(Value::String(k)), Some(v)) => Some((k, v)),
                _ => None,
            },
            _ => None,
        };
        let group = match structured {
            Some((key, value)) => {
                let slot = *self.keyed.entry(key.clone()).or_insert_with(|| {
                    self.slots.push(Slot::Keyed { key: key.clone(), groups: Vec::new(), by_value: HashMap::new() });
                    self.slots.len() - 1
                });
                let Slot::Keyed { groups, by_value, .. } = &mut self.slots[slot] else { unreachable!() };
                let g = *by_value.entry(canonical(value)).or_insert_with(|| {
                    groups.push(Group::new(value.clone()));
                    groups.len() - 1
                });
                &mut groups[g]
            }
            None => {
                let slot = *self.plain.entry(canonical(finding)).or_insert_with(|| {
                    self.slots.push(Slot::Plain(Group::new(finding.clone())));
                    self.slots.len() - 1
                });
                let Slot::Plain(g) = &mut self.slots[slot] else { unreachable!() };
                g
            }
        };
        group.add(agent, handoff, finding);
    }

    pub fn add_decision(&mut self, agent: &str, decision: &Value) {
        self.decisions.add(agent, decision);
    }

    /// Merged findings (one value per key) and finding conflicts (several values per key:
    /// from different agents, or one agent contradicting itself, which cannot be merged as
    /// agreed fact either).
    pub fn finish(self) -> (Vec<MergedFinding>, Vec<Conflict>, Dedup) {
        let mut merged = Vec::new();
        let mut conflicts = Vec::new();
        for slot in self.slots {
            match slot {
                Slot::Plain(g) => merged.push(g.into_merged(None)),
                Slot::Keyed { key, mut groups, .. } if groups.len() == 1 => {
                    merged.push(groups.pop().expect("one group").into_merged(Some(key)))
                }
                Slot::Keyed { key, groups, .. } => conflicts.push(resolve(key, groups)),
            }
        }
        (merged, conflicts, self.decisions)
    }
}

fn resolve(key: String, groups: Vec<Group>) -> Conflict {
    let top = groups.iter().flat_map(|g| &g.support).map(|s| s.evidence_rank).max().unwrap_or(0);
    // Per group: how many of its agents reach the top rank.
    let at_top: Vec<usize> =
        groups.iter().map(|g| g.support.iter().filter(|s| s.evidence_rank == top).count()).collect();
    let contenders: Vec<usize> = (0..groups.len()).filter(|&i| at_top[i] > 0).collect();
    let voters: HashSet<&str> = contenders
        .iter()
        .flat_map(|&i| &groups[i].support)
        .filter(|s| s.evidence_rank == top)
        .map(|s| s.agent.as_str())
        .collect();
    let total = voters.len();
    let majority: Vec<usize> = contenders.iter().copied().filter(|&i| at_top[i] * 2 > total).collect();

    let (resolution, won, reason) = if contenders.len() == 1 {
        let w = contenders[0];
        let beaten = groups.iter().flat_map(|g| &g.support).map(|s| s.evidence_rank).filter(|&r| r < top).max();
        let reason = format!(
            "only {} has the strongest evidence ({}); the other positions have at best {}",
            groups[w].value,
            rank_name(top),
            rank_name(beaten.unwrap_or(0)),
        );
        (Resolution::Evidence, Some(w), reason)
    } else if let [w] = majority[..] {
        let reason = format!(
            "{} of {total} distinct agents at equal evidence ({}) hold {}",
            at_top[w],
            rank_name(top),
            groups[w].value
        );
        (Resolution::Majority, Some(w), reason)
    } else {
        let split: Vec<String> =
            contenders.iter().map(|&i| format!("{} ({} of {total})", groups[i].value, at_top[i])).collect();
        let reason = format!(
            "no strict majority among agents at equal evidence ({}): {}; escalate",
            rank_name(top),
            split.join(" vs ")
        );
        (Resolution::Unresolved, None, reason)
    };

    let winner = won.map(|w| {
        let g = &groups[w];
        Winner {
            agent: g.support.iter().find(|s| s.evidence_rank == top).map(|s| s.agent.clone()).unwrap_or_default(),
            agents: g.support.iter().map(|s| s.agent.clone()).collect(),
            value: g.value.clone(),
        }
    });
    let positions = groups
        .into_iter()
        .flat_map(|g| {
            let value = g.value;
            g.support.into_iter().map(move |s| Position {
                agent: s.agent,
                value: value.clone(),
                claim: s.claim,
                evidence: s.evidence,
                evidence_rank: s.evidence_rank,
                handoff: s.handoff,
            })
        })
        .collect();
    Conflict { key, kind: ConflictKind::Finding, positions, resolution, winner, reason, escalation: None, note: None }
}

/// One file listed by several agents. Only a handoff that claims completion can stand
/// behind its change; when exactly one does, its change is the one to keep.
pub fn file_conflict(path: String, listers: &[(&str, &Path, &Handoff, &str)]) -> Conflict {
    let positions: Vec<Position> = listers
        .iter()
        .map(|&(agent, handoff, h, listed)| Position {
            agent: agent.to_string(),
            value: Value::String(path.clone()),
            claim: Some(format!("lists {listed} (handoff status {})", h.status)),
            evidence: Vec::new(),
            evidence_rank: 0,
            handoff: handoff.to_path_buf(),
        })
        .collect();
    let complete: Vec<&str> = listers.iter().filter(|l| l.2.status == "complete").map(|l| l.0).collect();
    let (resolution, winner, reason) = if let [only] = complete[..] {
        let winner =
            Winner { agent: only.to_string(), agents: vec![only.to_string()], value: Value::String(path.clone()) };
        (Resolution::Evidence, Some(winner), format!("only {only}'s handoff claims complete"))
    } else {
        let reason = format!(
            "{} agents changed {path} and {} of their handoffs claim complete; escalate",
            listers.len(),
            complete.len()
        );
        (Resolution::Unresolved, None, reason)
    };
    Conflict {
        key: path,
        kind: ConflictKind::File,
        positions,
        resolution,
        winner,
        reason,
        escalation: None,
        note: None,
    }
}

/// Distinct JSON values in first-seen order, each with the distinct agents that gave it.
#[derive(Default)]
pub struct Dedup {
    items: Vec<(Value, Vec<String>)>,
    index: HashMap<String, usize>,
}

impl Dedup {
    pub fn add(&mut self, agent: &str, v: &Value) {
        let i = *self.index.entry(canonical(v)).or_insert_with(|| {
            self.items.push((v.clone(), Vec::new()));
            self.items.len() - 1
        });
        let agents = &mut self.items[i].1;
        // Handoffs are merged one at a time: a repeat by the same agent is always the last.
        if agents.last().map(String::as_str) != Some(agent) {
            agents.push(agent.to_string());
        }
    }

    pub fn finish<T>(self, make: impl Fn(Value, Vec<String>) -> T) -> Vec<T> {
        self.items.into_iter().map(|(v, a)| make(v, a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_ignores_key_order_only() {
        assert_eq!(
            canonical(&json!({"a": 1, "b": [1, {"y": 2, "x": 1}]})),
            canonical(&json!({"b": [1, {"x": 1, "y": 2}], "a": 1}))
        );
        assert_ne!(canonical(&json!([1, 2])), canonical(&json!([2, 1])));
        assert_ne!(canonical(&json!("8080")), canonical(&json!(8080)));
    }

    #[test]
    fn ranks_follow_the_spec() {
        assert_eq!(evidence_rank(&[json!({"kind": "test", "ref": "t", "passed": true})]), 3);
        assert_eq!(evidence_rank(&[json!({"kind": "Measurement"})]), 3);
        assert_eq!(evidence_rank(&[json!({"kind": "test", "passed": false})]), 0);
        assert_eq!(evidence_rank(&[json!({"kind": "test", "passed": false}), json!({"kind": "reasoning"})]), 1);
        assert_eq!(evidence_rank(&[json!({"kind": "citation"}), json!({"kind": "reasoning"})]), 2);
        assert_eq!(evidence_rank(&[json!("trust me"), json!({"kind": "vibes"})]), 0);
        assert_eq!(evidence_rank(&[]), 0);
    }
}
