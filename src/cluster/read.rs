//! Reads by SQL, for a machine with no worker: the agents' stored records and the events in
//! commit order, what `status` and `events` show there.

use super::queue::ClusterError;
use crate::ipc::AttemptView;
use serde_json::Value;
use std::time::SystemTime;
use tokio_postgres::Client;

type Result<T> = std::result::Result<T, ClusterError>;

/// Which agents [`agents`] returns; every field left `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Any of these states.
    pub states: Option<Vec<String>>,
    pub role: Option<String>,
    /// Owned by this worker.
    pub owner: Option<String>,
    /// Only these ids.
    pub ids: Option<Vec<String>>,
    /// Not those `corral clean` took out of the views.
    pub hide_cleaned: bool,
}

/// An agent as the database holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    /// Its number in the workspace, in spawn order.
    pub seq: i64,
    pub role: String,
    pub state: String,
    pub owner: Option<String>,
    pub fence: i64,
    pub attempt: i32,
    pub idempotency_key: Option<String>,
    /// The stored record.
    pub body: Value,
    pub updated_at: SystemTime,
    /// The labels a worker must offer to run it.
    pub placement: Value,
    /// The admission group it counts against.
    pub group: Option<String>,
}

/// The agents of `workspace` that `filter` matches, in spawn order.
pub async fn agents(client: &Client, workspace: &str, filter: &AgentFilter) -> Result<Vec<AgentRow>> {
    let rows = client
        .query(
            "SELECT id, seq, role, state, owner::text, fence, attempt, idempotency_key, body, updated_at,
                    placement, admission_group
             FROM agents
             WHERE workspace = $1 AND ($2::text[] IS NULL OR state = ANY($2)) AND ($3::text IS NULL OR role = $3)
               AND ($4::text IS NULL OR owner::text = $4) AND ($5::text[] IS NULL OR id = ANY($5))
               AND (NOT $6 OR NOT body ? 'cleanedAt')
             ORDER BY seq",
            &[&workspace, &filter.states, &filter.role, &filter.owner, &filter.ids, &filter.hide_cleaned],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AgentRow {
            id: r.get(0),
            seq: r.get(1),
            role: r.get(2),
            state: r.get(3),
            owner: r.get(4),
            fence: r.get(5),
            attempt: r.get(6),
            idempotency_key: r.get(7),
            body: r.get(8),
            updated_at: r.get(9),
            placement: r.get(10),
            group: r.get(11),
        })
        .collect())
}

/// A provider whose rate or usage limit holds its agents on every worker: its name, when the
/// hold ends and why, and how many of its agents hold a slot now.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHold {
    pub name: String,
    pub until: SystemTime,
    pub reason: String,
    pub running: i64,
}

/// The provider holds of `workspace` still in force, on the database's clock, by name.
pub async fn provider_holds(client: &Client, workspace: &str) -> Result<Vec<ProviderHold>> {
    let rows = client
        .query(
            "SELECT h.name, (h.hold->>'until')::timestamptz, COALESCE(h.hold->>'reason', ''),
                    (SELECT count(*) FROM agents a
                     WHERE a.workspace = w.id AND a.owner IS NOT NULL AND a.provider = h.name)
             FROM workspaces w, jsonb_each(w.provider_holds) AS h(name, hold)
             WHERE w.id = $1 AND (h.hold->>'until')::timestamptz > now()
             ORDER BY h.name",
            &[&workspace],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ProviderHold { name: r.get(0), until: r.get(1), reason: r.get(2), running: r.get(3) })
        .collect())
}

/// One event, as numbered at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub at: SystemTime,
    pub agent: Option<String>,
    pub kind: String,
    pub data: Value,
    /// The worker that wrote it (none for a spawn from a client).
    pub worker: Option<String>,
    /// The agent's fence the event was written under.
    pub fence: Option<i64>,
}

/// Up to `limit` events of `workspace` numbered after `after`, in commit order. Numbers are
/// dense and given at commit, so reading on from the last one seen never skips an event.
pub async fn events(client: &Client, workspace: &str, after: i64, limit: i64) -> Result<Vec<EventRow>> {
    let rows = client
        .query(
            "SELECT seq, at, agent_id, kind, data, worker::text, fence FROM events
             WHERE workspace = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&workspace, &after, &limit.max(0)],
        )
        .await?;
    Ok(event_rows(&rows))
}

/// The events of `workspace` of one of `kinds` that name an agent, in commit order, by
/// agent: what is read of the whole log to learn from it or draw it. Filtered by the
/// database and read a page at a time (the log can hold millions of events).
pub async fn events_by_agent(
    client: &Client,
    workspace: &str,
    kinds: &[&str],
) -> Result<std::collections::HashMap<String, Vec<EventRow>>> {
    const PAGE: i64 = 5000;
    let mut out: std::collections::HashMap<String, Vec<EventRow>> = Default::default();
    let mut after = 0i64;
    loop {
        let rows = client
            .query(
                "SELECT seq, at, agent_id, kind, data, worker::text, fence FROM events
                 WHERE workspace = $1 AND seq > $2 AND kind = ANY($3) AND agent_id IS NOT NULL
                 ORDER BY seq LIMIT $4",
                &[&workspace, &after, &kinds, &PAGE],
            )
            .await?;
        let full = rows.len() as i64 == PAGE;
        for e in event_rows(&rows) {
            after = e.seq;
            if let Some(id) = e.agent.clone() {
                out.entry(id).or_default().push(e);
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

fn event_rows(rows: &[tokio_postgres::Row]) -> Vec<EventRow> {
    rows.iter()
        .map(|r| EventRow {
            seq: r.get(0),
            at: r.get(1),
            agent: r.get(2),
            kind: r.get(3),
            data: r.get(4),
            worker: r.get(5),
            fence: r.get(6),
        })
        .collect()
}

/// Why each queued agent of `workspace` that nobody owns waits, as far as the database can
/// tell, by id: the first of its dependencies not complete ("waiting for ..."), its delay,
/// the workspace's budget spent, a pause (of the workspace or its group), no live worker
/// offering its placement, its provider held by a rate limit, its group at its limit (as
/// `corral parallel` may have changed it), the workspace at `max_concurrent`, its breaker
/// open under `health` (in the single-machine supervisor's words where it has them). An
/// agent with none of these waits only for a free slot on a worker that fits it.
pub async fn queued_reasons(
    client: &Client,
    workspace: &str,
    health: Option<&crate::policy::health::HealthPolicy>,
) -> Result<std::collections::BTreeMap<String, String>> {
    use std::collections::BTreeMap;
    let mut out = BTreeMap::new();
    let rows = client
        .query(
            "SELECT a.id, a.placement, a.admission_group, a.run_after > now(),
                    to_char(a.run_after AT TIME ZONE 'UTC', 'HH24:MI:SS'),
                    to_char(a.run_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                    a.run_after > now() + interval '20 hours',
                    ARRAY(SELECT need.id FROM jsonb_array_elements_text(
                              CASE WHEN jsonb_typeof(a.body->'request'->'after') = 'array'
                                   THEN a.body->'request'->'after' ELSE '[]'::jsonb END) AS need(id)
                          LEFT JOIN agents d ON d.workspace = a.workspace AND d.id = need.id
                          WHERE d.state IS DISTINCT FROM 'complete'),
                    a.provider, a.role
             FROM agents a WHERE a.workspace = $1 AND a.state = 'queued' AND a.owner IS NULL ORDER BY a.seq",
            &[&workspace],
        )
        .await?;
    if rows.is_empty() {
        return Ok(out);
    }
    let ws = client
        .query_opt(
            "SELECT max_concurrent, group_limits, max_cost_usd, breaker,
                    (extract(epoch from clock_timestamp()) * 1000)::float8, capacity
             FROM workspaces WHERE id = $1",
            &[&workspace],
        )
        .await?;
    let (limits, max_cost, breaker, now_ms): (super::capacity::Limits, Option<f64>, Value, f64) = match &ws {
        Some(r) => (super::capacity::Limits::of(r.get(0), &r.get(1), &r.get(5)), r.get(2), r.get(3), r.get(4)),
        None => (super::capacity::Limits::default(), None, Value::Null, 0.0),
    };
    // As the claim reads them: `corral parallel`'s over the workers' `corral.toml`.
    let (max, groups) = (limits.max_concurrent(), limits.groups());
    // The cluster's breakers, on the database's clock (as the claim reads them).
    let now_ms = now_ms.max(0.0) as u64;
    let mut breakers: crate::policy::health::Breakers = serde_json::from_value(breaker).unwrap_or_default();
    breakers.advance(now_ms);
    let budget = match max_cost {
        Some(max) => {
            let spent: f64 = client.query_one(super::queue::SPENT_SQL, &[&workspace]).await?.get(0);
            crate::policy::lifecycle::workspace_budget_gate(Some(max), spent)
        }
        None => None,
    };
    // Providers held now, with the milliseconds left, on the database's clock.
    let holds: BTreeMap<String, u64> = client
        .query(
            "SELECT h.name, (extract(epoch from ((h.hold->>'until')::timestamptz - now())) * 1000)::float8
             FROM workspaces w, jsonb_each(w.provider_holds) AS h(name, hold)
             WHERE w.id = $1 AND (h.hold->>'until')::timestamptz > now()",
            &[&workspace],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1).max(0.0) as u64))
        .collect();
    let labels: Vec<Value> = client
        .query(
            "SELECT labels FROM workers WHERE workspace = $1 AND state = 'active' AND lease_until > now()",
            &[&workspace],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let held = client
        .query(
            "SELECT admission_group, count(*) FROM agents WHERE workspace = $1 AND owner IS NOT NULL
             GROUP BY admission_group",
            &[&workspace],
        )
        .await?;
    let mut by_group: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for r in &held {
        by_group.insert(r.get(0), r.get(1));
    }
    let busy: i64 = by_group.values().sum();
    for r in &rows {
        let (id, placement, group): (String, Value, Option<String>) = (r.get(0), r.get(1), r.get(2));
        let (later, time, date_time, far): (bool, String, String, bool) = (r.get(3), r.get(4), r.get(5), r.get(6));
        let waiting: Vec<String> = r.get(7);
        let provider: Option<String> = r.get(8);
        let held = provider.as_ref().and_then(|p| Some((p, *holds.get(p)?)));
        let role: String = r.get(9);
        let tripped = health.filter(|h| h.breaker_failures > 0).and_then(|h| breakers.blocks(h, &role, now_ms));
        let limit = group.as_deref().and_then(|g| groups.get(g)).copied();
        let why = if !waiting.is_empty() {
            format!("waiting for {}", waiting.join(", "))
        } else if later {
            format!("delayed until {} UTC", if far { date_time } else { time })
        } else if let Some(b) = &budget {
            b.clone()
        } else if let Some(p) = limits.capacity.paused_reason(group.as_deref()) {
            p
        } else if labels.is_empty() {
            "no worker is running in this workspace (start one: corral worker)".to_string()
        } else if !labels.iter().any(|l| fits(&placement, l)) {
            format!("no worker offers {}", shown_placement(&placement))
        } else if let Some((p, left)) = held {
            // As the single-machine supervisor says it.
            let left = crate::policy::lifecycle::fmt_ms(left.div_ceil(1000) * 1000);
            format!("provider {p} is rate-limited for {left} more (another agent hit its limit)")
        } else if let (Some(g), Some(max)) = (&group, limit)
            && by_group.get(&Some(g.clone())).copied().unwrap_or(0) >= max
        {
            let running = by_group.get(&Some(g.clone())).copied().unwrap_or(0);
            format!("group {g} at capacity ({running} running, max {max})")
        } else if let Some(max) = max.filter(|m| busy >= *m) {
            format!("capacity: {busy} of {} running", crate::policy::plural(max as usize, "agent", "agents"))
        } else if let Some(why) = tripped {
            why
        } else {
            continue;
        };
        out.insert(id, why);
    }
    Ok(out)
}

/// Whether a worker with `labels` may run an agent with `placement` (the claim's
/// `placement <@ labels`, for the flat objects both are).
pub fn fits(placement: &Value, labels: &Value) -> bool {
    match placement.as_object() {
        Some(p) => p.iter().all(|(k, v)| labels.get(k) == Some(v)),
        None => false,
    }
}

/// A placement as `--on` takes it: `gpu=true, zone=eu`.
pub fn shown_placement(placement: &Value) -> String {
    let Some(p) = placement.as_object() else { return placement.to_string() };
    let one = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    p.iter().map(|(k, v)| format!("{k}={}", one(v))).collect::<Vec<_>>().join(", ")
}

/// An agent's ended attempts, from its events in commit order: each `started` opens one,
/// its `exited` ends it, and what follows before the next start says how it failed and what
/// it cost. A `lost` ends the attempt its worker was running. Numbered 1, 2, ... across
/// workers and epochs (each supervisor numbers its own from 1).
pub fn attempts<'a>(events: impl IntoIterator<Item = (&'a str, String, &'a Value)>) -> Vec<AttemptView> {
    let mut out: Vec<AttemptView> = Vec::new();
    let mut open: Option<(String, Option<i32>)> = None;
    let text = |d: &Value, k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    for (kind, at, d) in events {
        match kind {
            "started" => open = Some((at, d.get("pid").and_then(Value::as_i64).map(|p| p as i32))),
            "exited" | "lost" => {
                // A lost claim with no attempt started in it ended nothing.
                let Some((started_at, pid)) = open.take() else { continue };
                let lost = kind == "lost";
                out.push(AttemptView {
                    attempt: out.len() as u32 + 1,
                    started_at,
                    ended_at: Some(at),
                    exit_code: d.get("exitCode").and_then(Value::as_i64).map(|c| c as i32),
                    signal: d.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                    failure_type: lost.then(|| "lost".to_string()),
                    reason: text(d, "reason"),
                    action: None,
                    rule: None,
                    pid,
                    timeout: None,
                    session_id: None,
                    cost_usd: None,
                    tokens: None,
                    turns: None,
                    result: None,
                    resumed: false,
                    log_start: None,
                });
            }
            "classified" => {
                if let Some(last) = out.last_mut().filter(|_| text(d, "failureType").is_some()) {
                    last.failure_type = text(d, "failureType");
                    last.action = text(d, "action");
                    last.rule = text(d, "rule");
                }
            }
            "rate_limited" => {
                if let Some(last) = out.last_mut() {
                    last.failure_type = Some("rate_limited".into());
                }
            }
            "usage" => {
                if let Some(last) = out.last_mut() {
                    last.cost_usd = d.get("costUsd").and_then(Value::as_f64);
                    last.tokens = d.get("tokens").and_then(|t| serde_json::from_value(t.clone()).ok());
                    last.turns = d.get("turns").and_then(Value::as_u64).map(|n| n as u32);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_placement_fits_the_labels_that_contain_it() {
        let labels = json!({ "gpu": true, "zone": "eu", "cores": 16 });
        assert!(fits(&json!({}), &labels));
        assert!(fits(&json!({ "gpu": true }), &labels));
        assert!(fits(&json!({ "gpu": true, "cores": 16 }), &labels));
        assert!(!fits(&json!({ "gpu": "true" }), &labels));
        assert!(!fits(&json!({ "gpu": false }), &labels));
        assert!(!fits(&json!({ "arch": "arm" }), &labels));
        assert_eq!(shown_placement(&json!({ "gpu": true, "zone": "eu" })), "gpu=true, zone=eu");
    }
}
