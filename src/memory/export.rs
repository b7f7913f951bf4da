//! `corral memory export --format mcp-memory`: the JSONL knowledge graph that the MCP memory
//! server (`@modelcontextprotocol/server-memory`) loads: one entity or relation per line.

use super::{MemorySnapshot, RolePattern};
use crate::policy::lifecycle::fmt_ms;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A stable, readable entity name for a candidate: its own name/key/title when it has one.
fn candidate_name(v: &Value, agent: &str, n: usize) -> String {
    for k in ["name", "key", "title", "id"] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            return format!("memory:{s}");
        }
    }
    format!("memory:{agent}:{n}")
}

fn candidate_observations(v: &Value) -> Vec<String> {
    match v {
        Value::Object(m) => {
            let mut obs = Vec::new();
            for k in ["observations", "observation", "content", "claim", "value", "lesson", "text"] {
                match m.get(k) {
                    Some(Value::Array(items)) => obs.extend(items.iter().map(text)),
                    Some(x) => obs.push(text(x)),
                    None => {}
                }
            }
            if obs.is_empty() {
                obs.push(v.to_string());
            }
            obs
        }
        other => vec![text(other)],
    }
}

fn pattern_observations(p: &RolePattern) -> Vec<String> {
    let mut o = vec![format!(
        "{} agents, {} attempts, {} failed attempts, {} escalated",
        p.agents, p.attempts, p.failed_attempts, p.escalated
    )];
    if !p.failure_types.is_empty() {
        let types: Vec<String> = p.failure_types.iter().map(|(k, v)| format!("{k} {v}")).collect();
        o.push(format!("failure types: {}", types.join(", ")));
    }
    for (r, n) in &p.top_reasons {
        o.push(format!("failure seen {n}x: {r}"));
    }
    if p.retried_completed + p.retried_escalated + p.retried_other > 0 {
        o.push(format!(
            "retried agents: {} completed, {} escalated, {} other",
            p.retried_completed, p.retried_escalated, p.retried_other
        ));
    }
    if let (Some(p50), Some(p95)) = (p.duration_p50_ms, p.duration_p95_ms) {
        o.push(format!(
            "attempt duration p50 {}, p95 {}, timeout {}",
            fmt_ms(p50),
            fmt_ms(p95),
            fmt_ms(p.attempt_timeout_ms)
        ));
    }
    if let Some(c) = p.cost_usd {
        let per = p.cost_per_agent_usd.map(|x| format!(", ${x:.4} per agent")).unwrap_or_default();
        let failed = p.failed_cost_usd.map(|x| format!(", ${x:.4} of it on failed attempts")).unwrap_or_default();
        o.push(format!("cost ${c:.4}{per}{failed}"));
    }
    if let (Some(t), Some(per)) = (p.tokens, p.tokens_per_agent) {
        o.push(format!("tokens {} in, {} out; {} in, {} out per agent", t.input, t.output, per.input, per.output));
    }
    o.extend(p.advice.clone());
    o
}

pub fn to_mcp_memory_jsonl(s: &MemorySnapshot) -> String {
    let mut lines: Vec<Value> = Vec::new();
    for p in &s.patterns {
        lines.push(json!({
            "type": "entity", "name": format!("role:{}", p.role), "entityType": "corral_role",
            "observations": pattern_observations(p),
        }));
    }
    // Entity names must be unique in the graph: candidates sharing a name merge their
    // observations into one entity.
    let mut memories: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut agent_roles: BTreeMap<String, String> = BTreeMap::new();
    for (i, c) in s.candidates.iter().enumerate() {
        let name = candidate_name(&c.value, &c.agent_id, i + 1);
        let entry = memories.entry(name).or_default();
        for o in candidate_observations(&c.value) {
            if !entry.0.contains(&o) {
                entry.0.push(o);
            }
        }
        if !entry.1.contains(&c.agent_id) {
            entry.1.push(c.agent_id.clone());
        }
        agent_roles.insert(c.agent_id.clone(), c.role.clone());
    }
    for (name, (obs, _)) in &memories {
        lines.push(json!({ "type": "entity", "name": name, "entityType": "corral_memory", "observations": obs }));
    }
    for (agent, role) in &agent_roles {
        lines.push(json!({
            "type": "entity", "name": format!("agent:{agent}"), "entityType": "corral_agent",
            "observations": [format!("role {role}")],
        }));
    }
    for (name, (_, agents)) in &memories {
        for a in agents {
            lines.push(
                json!({ "type": "relation", "from": format!("agent:{a}"), "to": name, "relationType": "learned" }),
            );
        }
    }
    for (agent, role) in &agent_roles {
        if s.patterns.iter().any(|p| &p.role == role) {
            lines.push(json!({
                "type": "relation", "from": format!("agent:{agent}"), "to": format!("role:{role}"), "relationType": "has_role",
            }));
        }
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::MemoryCandidate;
    use super::*;

    #[test]
    fn every_line_is_an_entity_or_relation_the_server_reads() {
        let s = MemorySnapshot {
            candidates: vec![
                MemoryCandidate {
                    agent_id: "agent-001-A".into(),
                    role: "A".into(),
                    value: json!({"name": "flaky-ci", "observation": "CI fails on Mondays"}),
                    first_seen: "t".into(),
                },
                MemoryCandidate {
                    agent_id: "agent-002-A".into(),
                    role: "A".into(),
                    value: json!("plain lesson"),
                    first_seen: "t".into(),
                },
            ],
            patterns: vec![],
        };
        let out = to_mcp_memory_jsonl(&s);
        let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().all(|l| l["type"] == "entity" || l["type"] == "relation"));
        let names: Vec<&str> =
            lines.iter().filter(|l| l["type"] == "entity").map(|l| l["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"memory:flaky-ci") && names.contains(&"agent:agent-001-A"), "{names:?}");
        let e = lines.iter().find(|l| l["name"] == "memory:flaky-ci").unwrap();
        assert_eq!(e["observations"][0], "CI fails on Mondays");
        assert!(lines.iter().any(|l| l["type"] == "relation" && l["to"] == "memory:flaky-ci"));
    }
}
