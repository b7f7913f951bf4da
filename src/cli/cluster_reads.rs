//! `health`, `escalations`, `monitor` and `logs` in cluster mode, from any machine, by SQL:
//! what the database holds about the workspace (the agents' records, its limits and pauses,
//! the breaker, the workers and their leases, the escalations), shown as the single-machine
//! commands show it. What only a worker's own supervisor knows (its machine's memory and
//! load, provider holds) is left out and named; an agent's log stays on its worker's disk,
//! so `logs` says where it is.

use super::cluster::{Target, connect, db_fail, rfc, view_of};
use super::{Ctx, Fail, Result, usage};
use crate::cluster::capacity::Limits;
use crate::cluster::queue::ClusterError;
use crate::cluster::read::{self, AgentFilter, AgentRow};
use crate::cluster::{direct, listen};
use crate::ipc::{AgentView, BreakerView, GroupView, HealthView, QueuedView, ShowView};
use crate::monitor::{Command, Model};
use crate::policy::agent::Escalation;
use crate::policy::health::Breakers;
use crate::{note, say_to};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// What `health --json` leaves out from the database: each worker's supervisor has it for
/// its own machine (`corral health --data-dir <its epoch dir>` there).
/// (`maxOpenEscalations` too: each worker's supervisor holds its own starts on it.)
pub const LOCAL_ONLY: &[&str] = &["freeMemory", "minFreeMemory", "load", "maxLoad", "maxOpenEscalations"];

/// How often the monitor reads everything again with no notification (ages, leases).
const MONITOR_POLL: Duration = Duration::from_secs(2);

/// One worker as the database has it.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub labels: Value,
    pub slots: i32,
    pub state: String,
    pub started_at: SystemTime,
    pub heartbeat_at: SystemTime,
    pub lease_until: SystemTime,
    /// Its lease has not ended.
    pub live: bool,
    /// Seconds since its last renewal, and until its lease ends (negative: ended), on the
    /// database's clock.
    pub heartbeat_age: f64,
    pub lease_left: f64,
    /// Agents it owns now.
    pub agents: i64,
}

impl WorkerRow {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "labels": self.labels,
            "slots": self.slots,
            "state": self.state,
            "live": self.live,
            "agents": self.agents,
            "startedAt": rfc(self.started_at),
            "heartbeatAt": rfc(self.heartbeat_at),
            "leaseUntil": rfc(self.lease_until),
            "heartbeatAgeSeconds": round(self.heartbeat_age),
            "leaseLeftSeconds": round(self.lease_left),
        })
    }

    /// One line about it, for `health` and `monitor`.
    fn line(&self) -> String {
        let short = self.id.get(..8).unwrap_or(&self.id);
        if self.live {
            format!(
                "{short} on {} (pid {}): {} of {} slots; renewed {:.1}s ago, lease {:.1}s left",
                self.host, self.pid, self.agents, self.slots, self.heartbeat_age, self.lease_left
            )
        } else {
            format!(
                "{short} on {} (pid {}): lease ended {:.1}s ago; {} not yet taken over",
                self.host,
                self.pid,
                -self.lease_left,
                crate::policy::plural(self.agents as usize, "agent", "agents")
            )
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The workspace's workers worth showing (a live lease, or agents still theirs), in the
/// order they started, and how many others there were (stopped, their agents taken over).
pub async fn workers(
    c: &tokio_postgres::Client,
    workspace: &str,
) -> std::result::Result<(Vec<WorkerRow>, usize), ClusterError> {
    let rows = c
        .query(
            "SELECT w.id::text, w.host, w.pid, w.labels, w.slots, w.state, w.started_at, w.heartbeat_at,
                    w.lease_until, w.lease_until > now(),
                    extract(epoch from now() - w.heartbeat_at)::float8,
                    extract(epoch from w.lease_until - now())::float8,
                    (SELECT count(*) FROM agents a WHERE a.workspace = w.workspace AND a.owner = w.id)
             FROM workers w WHERE w.workspace = $1 ORDER BY w.started_at, w.id",
            &[&workspace],
        )
        .await?;
    let mut shown = Vec::new();
    let mut gone = 0;
    for r in &rows {
        let w = WorkerRow {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            labels: r.get(3),
            slots: r.get(4),
            state: r.get(5),
            started_at: r.get(6),
            heartbeat_at: r.get(7),
            lease_until: r.get(8),
            live: r.get(9),
            heartbeat_age: r.get(10),
            lease_left: r.get(11),
            agents: r.get(12),
        };
        if (w.live && w.state != "dead") || w.agents > 0 {
            shown.push(w);
        } else {
            gone += 1;
        }
    }
    Ok((shown, gone))
}

/// The escalations of `workspace` (open ones only unless `all`), oldest first, in the
/// single-machine shape.
pub async fn escalations(
    c: &tokio_postgres::Client,
    workspace: &str,
    all: bool,
) -> std::result::Result<Vec<Escalation>, ClusterError> {
    let rows = c
        .query(
            "SELECT id, agent_id, body, opened_at, resolved_at FROM escalations
             WHERE workspace = $1 AND ($2 OR resolved_at IS NULL) ORDER BY id",
            &[&workspace, &all],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let (n, agent, body): (i64, Option<String>, Value) = (r.get(0), r.get(1), r.get(2));
        let (opened, resolved): (SystemTime, Option<SystemTime>) = (r.get(3), r.get(4));
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let v = json!({
            "n": n,
            "agentId": agent.unwrap_or_default(),
            "reason": text("reason").unwrap_or_default(),
            "openedAt": rfc(opened),
            "resolvedAt": resolved.map(rfc),
            "note": text("note"),
            "outcome": text("outcome"),
        });
        if let Ok(e) = serde_json::from_value::<Escalation>(v) {
            out.push(e);
        }
    }
    Ok(out)
}

/// The number of each agent's newest open escalation, as the database numbers them.
pub async fn open_numbers(
    c: &tokio_postgres::Client,
    workspace: &str,
) -> std::result::Result<BTreeMap<String, u64>, ClusterError> {
    let rows = c
        .query(
            "SELECT DISTINCT ON (agent_id) agent_id, id FROM escalations
             WHERE workspace = $1 AND resolved_at IS NULL AND agent_id IS NOT NULL ORDER BY agent_id, id DESC",
            &[&workspace],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64)).collect())
}

/// Gives a view the database's number of its open escalation (`n`), in its `escalation`
/// and its NEEDS-HUMAN anomaly: the number its worker's supervisor gave is that epoch's
/// own, and means nothing to `corral escalations resolve` from here.
pub fn renumber(v: &mut AgentView, n: Option<u64>) {
    v.escalation = n;
    for a in v.anomalies.iter_mut() {
        if a.starts_with("NEEDS-HUMAN") {
            *a = match n {
                Some(n) => format!("NEEDS-HUMAN #{n}"),
                None => "NEEDS-HUMAN".to_string(),
            };
        }
    }
}

/// Everything `health` and `monitor` show, read in one go.
pub struct Snapshot {
    pub views: Vec<AgentView>,
    pub health: HealthView,
    pub escalations: Vec<Escalation>,
    pub workers: Vec<WorkerRow>,
    /// Workers that stopped and whose agents were taken over.
    pub gone: usize,
}

impl Snapshot {
    /// `health --json`: the single-machine shape without what only a worker has, with the
    /// cluster's workers.
    pub fn health_json(&self, t: &Target) -> Value {
        let mut v = serde_json::to_value(&self.health).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in LOCAL_ONLY {
                o.remove(*k);
            }
        }
        v["localOnly"] = json!(LOCAL_ONLY);
        let slots: i64 = self.workers.iter().filter(|w| w.live).map(|w| w.slots as i64).sum();
        v["cluster"] = json!({
            "workspace": t.workspace,
            "database": t.db.describe(),
            "liveWorkers": self.workers.iter().filter(|w| w.live).count(),
            "slots": slots,
            "workers": self.workers.iter().map(WorkerRow::json).collect::<Vec<_>>(),
            "goneWorkers": self.gone,
        });
        v
    }

    /// The lines about the workers, for `health` and `monitor`.
    pub fn worker_lines(&self) -> Vec<String> {
        let live: Vec<&WorkerRow> = self.workers.iter().filter(|w| w.live).collect();
        let slots: i64 = live.iter().map(|w| w.slots as i64).sum();
        let mut head = format!("workers:     {} live ({} slots)", live.len(), slots);
        if self.workers.len() > live.len() {
            head.push_str(&format!(", {} with an ended lease", self.workers.len() - live.len()));
        }
        if self.gone > 0 {
            head.push_str(&format!(", {} stopped before", self.gone));
        }
        let mut out = vec![head];
        out.extend(self.workers.iter().map(|w| format!("  {}", w.line())));
        out
    }
}

/// Reads the agents, the workspace's limits (with `corral parallel`'s and a pause over
/// them) and breaker, the queue, the workers and the escalations, and makes of them what
/// the single-machine supervisor would show.
pub async fn snapshot(
    ctx: &Ctx,
    t: &Target,
    c: &tokio_postgres::Client,
) -> std::result::Result<Snapshot, ClusterError> {
    let rows: Vec<AgentRow> = read::agents(c, &t.workspace, &AgentFilter::default()).await?;
    let ws = c
        .query_opt(
            "SELECT max_concurrent, breaker, (extract(epoch from clock_timestamp()) * 1000)::float8,
                    group_limits, capacity
             FROM workspaces WHERE id = $1",
            &[&t.workspace],
        )
        .await?;
    let (limits, breaker, now): (Limits, Value, f64) = match &ws {
        Some(r) => (Limits::of(r.get(0), &r.get(3), &r.get(4)), r.get(1), r.get(2)),
        None => (Limits::default(), json!({}), 0.0),
    };
    let limits = limits.or_local(&super::cluster::local_limits(ctx));
    let now = now.max(0.0) as u64;
    let (workers, gone) = workers(c, &t.workspace).await?;
    let escalations = escalations(c, &t.workspace, false).await?;

    let policy = ctx.ws.config.health();
    let mut breakers: Breakers = serde_json::from_value(breaker).unwrap_or_default();
    breakers.advance(now);
    // On the database's clock, the clock of the cluster's breakers.
    let (summary, all_breakers) = BreakerView::all(&policy, &breakers, now);
    // An owned agent holds its slot whatever its state, as admission counts it.
    let running = rows.iter().filter(|r| r.owner.is_some()).count();
    let max_concurrent = limits.max_concurrent().map_or(policy.max_concurrent, |m| m.max(0) as usize);
    let changed = limits.capacity.max_concurrent.is_some();
    let live: Vec<&WorkerRow> = workers.iter().filter(|w| w.live && w.state == "active").collect();
    let live_slots: i64 = live.iter().map(|w| w.slots as i64).sum();
    let live_busy: i64 = live.iter().map(|w| w.agents).sum();
    let held = if let Some(why) = limits.capacity.paused_reason(None) {
        Some(why)
    } else if live.is_empty() {
        Some("no worker holds a live lease: run `corral worker` on a machine with the workspace".to_string())
    } else if running >= max_concurrent {
        let whose = if changed { "corral parallel" } else { "[health] max_concurrent" };
        Some(format!("at capacity: {running} of {max_concurrent} running across the cluster ({whose})"))
    } else if live_busy >= live_slots {
        Some(format!("every live worker's slots are in use ({live_busy} of {live_slots})"))
    } else if policy.breaker_failures > 0 && policy.breaker_scope.as_str() == "global" {
        breakers.blocks(&policy, "", now)
    } else {
        None
    };
    // Why each queued agent waits: admission's own account (read::queued_reasons), else what
    // holds the whole cluster back, else a worker has yet to take it.
    let reasons = crate::cluster::read::queued_reasons(c, &t.workspace, Some(&policy)).await?;
    let queue = rows
        .iter()
        .filter(|r| r.state == "queued" && r.owner.is_none())
        .map(|r| {
            let reason = reasons
                .get(&r.id)
                .or(held.as_ref())
                .cloned()
                .unwrap_or_else(|| "waiting for a worker to claim it".to_string());
            QueuedView { agent_id: r.id.clone(), reason }
        })
        .collect();
    let numbers = open_numbers(c, &t.workspace).await?;
    let views: Vec<AgentView> = rows
        .iter()
        .map(|r| {
            let mut v = view_of(ctx, r, &reasons);
            renumber(&mut v, numbers.get(&r.id).copied());
            v
        })
        .collect();
    let cost_usd = views.iter().filter_map(|v| v.cost_usd).fold(0.0, |a, b| a + b);
    // What `corral clean` took out of the views counts in the cost, not on the screen.
    let cleaned: std::collections::BTreeSet<&str> =
        rows.iter().filter(|r| r.body.get("cleanedAt").is_some()).map(|r| r.id.as_str()).collect();
    let views: Vec<AgentView> = views.into_iter().filter(|v| !cleaned.contains(v.agent_id.as_str())).collect();
    let groups = group_views(&rows, &limits);
    // Rate-limit holds are the cluster's (every worker honours them); a concurrency lowered
    // after a burst is each worker's own.
    let providers = crate::cluster::read::provider_holds(c, &t.workspace)
        .await?
        .into_iter()
        .map(|h| crate::ipc::ProviderView {
            name: h.name,
            held_until: Some(rfc(h.until)),
            max_concurrent: None,
            running: h.running.max(0) as usize,
            reason: h.reason,
        })
        .collect();
    let health = HealthView {
        healthy: held.is_none(),
        held_because: held,
        running,
        max_concurrent,
        configured_max_concurrent: if changed { limits.configured.map(|m| m.max(0) as usize) } else { None },
        paused: limits.capacity.paused,
        queued: queue,
        breaker: summary,
        breakers: all_breakers,
        free_memory: None,
        min_free_memory: None,
        load: None,
        max_load: None,
        open_escalations: escalations.len(),
        max_open_escalations: None,
        cost_usd,
        providers,
        groups,
    };
    Ok(Snapshot { views, health, escalations, workers, gone })
}

/// Every admission group with a limit in force, paused, or named by an agent holding a
/// slot or queued, as the single-machine `health` lists them; an agent holds its group's
/// slot while a worker owns it, as the claim counts it.
fn group_views(rows: &[AgentRow], limits: &Limits) -> Vec<GroupView> {
    let limited = limits.groups();
    let mut all: BTreeMap<String, GroupView> = BTreeMap::new();
    let names = limited.keys().chain(limits.capacity.paused_groups.iter());
    let live = |r: &&AgentRow| r.owner.is_some() || r.state == "queued";
    let named = rows.iter().filter(live).filter_map(|r| r.group.as_ref());
    for name in names.chain(named) {
        all.entry(name.clone()).or_insert_with(|| GroupView {
            name: name.clone(),
            running: 0,
            queued: 0,
            max_concurrent: limited.get(name).map(|m| (*m).max(0) as usize),
            paused: limits.capacity.paused_groups.contains(name),
        });
    }
    for r in rows {
        let Some(g) = r.group.as_ref().and_then(|g| all.get_mut(g)) else { continue };
        if r.owner.is_some() {
            g.running += 1;
        } else if r.state == "queued" {
            g.queued += 1;
        }
    }
    all.into_values().collect()
}

// ---- health --------------------------------------------------------------------------

pub async fn health(ctx: &Ctx, t: &Target, a: super::health::Args) -> Result {
    let c = connect(t).await?;
    let s = snapshot(ctx, t, &c).await.map_err(db_fail)?;
    if a.json {
        super::output::print_json(&s.health_json(t))?;
        return Ok(0);
    }
    let out = &mut std::io::stdout().lock();
    say_to!(out, "cluster:     workspace {} in {}", t.workspace, t.db.describe())?;
    super::health::print(&s.health, out)?;
    for l in s.worker_lines() {
        say_to!(out, "{l}")?;
    }
    say_to!(
        out,
        "each worker's own: memory, load, a provider's concurrency lowered after a burst of rate limits (`corral \
         health --data-dir <its epoch dir>` on its machine)"
    )?;
    Ok(0)
}

// ---- escalations ---------------------------------------------------------------------

pub async fn escalations_cmd(t: &Target, a: super::escalations::Args) -> Result {
    use super::escalations::Action;
    let mut c = connect(t).await?;
    match a.action {
        None => {
            let list = escalations(&c, &t.workspace, a.all).await.map_err(db_fail)?;
            if a.json {
                super::output::print_json(&list)?;
                return Ok(0);
            }
            if list.is_empty() {
                note!("no open escalations")?;
            }
            super::escalations::lines(&list, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Some(Action::Resolve { n, note, choose, winner, retry, json }) => {
            if choose.is_some() || winner.is_some() {
                return Err(usage(
                    "--choose and --winner settle a conflict found by an aggregate on one machine; \
                     escalations in the database are about agents: resolve with --note, or --retry",
                ));
            }
            let e = resolve(&mut c, t, n, note, retry).await?;
            if json {
                super::output::print_json(&e)?;
            } else {
                note!("escalation {n} resolved: {}", e.outcome.as_deref().unwrap_or("recorded"))?;
            }
            Ok(0)
        }
    }
}

/// Closes escalation `n` in the database with the human's note; with `retry` the agent goes
/// back to the queue (which resolves its open escalations), as `corral retry` does.
pub(crate) async fn resolve(
    c: &mut tokio_postgres::Client,
    t: &Target,
    n: u64,
    note: Option<String>,
    retry: bool,
) -> Result<Escalation> {
    let n = i64::try_from(n).map_err(|_| usage(format!("no escalation {n}")))?;
    let row = c
        .query_opt(
            "SELECT e.agent_id, e.resolved_at IS NOT NULL, a.state FROM escalations e
             LEFT JOIN agents a ON a.workspace = e.workspace AND a.id = e.agent_id
             WHERE e.workspace = $1 AND e.id = $2",
            &[&t.workspace, &n],
        )
        .await
        .map_err(|e| db_fail(e.into()))?;
    let Some(row) = row else {
        return Err(usage(format!("no escalation {n}; `corral escalations` lists the open ones")));
    };
    let (agent, closed, state): (Option<String>, bool, Option<String>) = (row.get(0), row.get(1), row.get(2));
    if closed {
        return Err(Fail { code: 1, msg: format!("escalation {n} is resolved already (`corral escalations --all`)") });
    }
    let note_v = json!({ "note": note });
    c.execute(
        "UPDATE escalations SET body = body || $3 WHERE workspace = $1 AND id = $2",
        &[&t.workspace, &n, &note_v],
    )
    .await
    .map_err(|e| db_fail(e.into()))?;
    match (retry, agent) {
        (true, Some(id)) => match direct::retry_unowned(c, &t.workspace, &id, None).await.map_err(db_fail)? {
            direct::Direct::Done { .. } => {}
            direct::Direct::Owned { worker } => {
                return Err(Fail {
                    code: 1,
                    msg: format!("{id} runs on worker {worker} again: nothing to retry; the escalation stays open"),
                });
            }
            direct::Direct::Refused { why } => {
                return Err(Fail { code: 1, msg: format!("{id}: not retried: {why}; the escalation stays open") });
            }
        },
        (true, None) => return Err(usage(format!("escalation {n} names no agent: nothing to retry"))),
        (false, _) => {
            let outcome = match state {
                Some(s) => format!("recorded; the agent stays {s} (`corral retry` runs it again)"),
                None => "recorded".to_string(),
            };
            c.execute(
                "UPDATE escalations SET resolved_at = now(), body = body || jsonb_build_object('outcome', $3::text)
                 WHERE workspace = $1 AND id = $2 AND resolved_at IS NULL",
                &[&t.workspace, &n, &outcome],
            )
            .await
            .map_err(|e| db_fail(e.into()))?;
        }
    }
    let all = escalations(c, &t.workspace, true).await.map_err(db_fail)?;
    all.into_iter().find(|e| e.n == n as u64).ok_or_else(|| Fail { code: 1, msg: format!("escalation {n} went away") })
}

// ---- logs ----------------------------------------------------------------------------

/// `corral logs` from the database: the log is not there. Says which worker, host and
/// epoch dir have it.
pub async fn logs(t: &Target, a: super::logs::Args) -> Result {
    let Some(given) = a.id.as_deref() else {
        return Err(usage(
            "`corral logs --role` needs the agents' logs, which stay on the disks of the workers that ran them: \
             run it on each worker's machine with --data-dir <its epoch dir>",
        ));
    };
    let c = connect(t).await?;
    let id = direct::resolve(&c, &t.workspace, given).await.map_err(db_fail)?;
    let row = c
        .query_one(
            "SELECT a.owner::text, a.mirrored->>'source',
                    (SELECT w.host FROM attempts x JOIN workers w ON w.id = x.worker
                     WHERE x.workspace = a.workspace AND x.agent_id = a.id ORDER BY x.n DESC LIMIT 1),
                    (SELECT x.worker::text FROM attempts x
                     WHERE x.workspace = a.workspace AND x.agent_id = a.id ORDER BY x.n DESC LIMIT 1),
                    (SELECT count(DISTINCT x.worker) FROM attempts x WHERE x.workspace = a.workspace AND x.agent_id = a.id)
             FROM agents a WHERE a.workspace = $1 AND a.id = $2",
            &[&t.workspace, &id],
        )
        .await
        .map_err(|e| db_fail(e.into()))?;
    let (owner, source, host, worker, workers): (Option<String>, Option<String>, Option<String>, Option<String>, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let msg = match (host, worker) {
        (Some(h), Some(w)) => {
            let dir = source.map_or_else(|| format!("epochs/{w}-<n>"), |s| format!("epochs/{s}"));
            let now = if owner.as_deref() == Some(w.as_str()) { "runs on" } else { "last ran on" };
            let others = if workers > 1 {
                format!(" (its earlier attempts ran on {} other workers)", workers - 1)
            } else {
                String::new()
            };
            format!(
                "{id}'s log is not in the database: logs stay on the disk of the worker that ran the agent. \
                 It {now} host {h} (worker {w}){others}: there, run `corral logs {id} --data-dir <the worker's data dir>/{dir}`"
            )
        }
        _ => format!("{id} has not run on any worker yet: there is no log (logs stay on the worker that runs it)"),
    };
    Err(Fail { code: 2, msg })
}

// ---- monitor -------------------------------------------------------------------------

/// The single-machine `show` of an agent, made from the database: its record, its attempts
/// on whichever workers ran them (the outcome and host as the attempt's action), its events.
async fn show_view(
    c: &tokio_postgres::Client,
    t: &Target,
    v: AgentView,
) -> std::result::Result<ShowView, ClusterError> {
    let id = v.agent_id.clone();
    let row = c.query_opt("SELECT body FROM agents WHERE workspace = $1 AND id = $2", &[&t.workspace, &id]).await?;
    let body: Value = row.map(|r| r.get(0)).unwrap_or_default();
    let req = crate::cluster::worker::request_of(&body).unwrap_or_default();
    let attempts = direct::attempts(c, &t.workspace, &id).await?;
    let events = direct::agent_events(c, &t.workspace, &id, 200).await?;
    let on = |x: &direct::AttemptRow| x.host.clone().unwrap_or_else(|| x.worker.clone());
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|x| {
            json!({
                "attempt": x.n.max(0),
                "startedAt": rfc(x.started_at),
                "endedAt": x.ended_at.map(rfc),
                "exitCode": x.exit_code,
                "reason": x.detail.get("reason").and_then(Value::as_str),
                "action": match &x.outcome {
                    Some(o) => format!("{o} on {}", on(x)),
                    None => format!("on {}", on(x)),
                },
            })
        })
        .collect();
    let events: Vec<Value> = events
        .iter()
        .map(|e| json!({ "seq": e.seq.max(0), "at": rfc(e.at), "agentId": e.agent, "kind": e.kind, "data": e.data }))
        .collect();
    let elsewhere = |what: &str| format!("{what} on its worker's disk");
    let mut out = serde_json::to_value(&v).unwrap_or_default();
    out["scope"] = json!(req.scope);
    out["constraints"] = json!(req.constraints);
    out["after"] = json!(req.after);
    out["command"] = json!(req.command);
    out["attempts"] = json!(attempts);
    out["findings"] = json!([]);
    out["files"] = json!({
        "statusFile": elsewhere("the status file"),
        "logFile": elsewhere("the log"),
        "contextFile": elsewhere("the context file"),
        "expectedHandoff": elsewhere("the handoff"),
    });
    out["handoffs"] = json!([]);
    out["events"] = json!(events);
    serde_json::from_value(out).map_err(|e| ClusterError::Bad(format!("{id}: {e}")))
}

/// What the screen asks of the database side.
enum Ask {
    /// A key's command.
    Run(Command),
    /// The agent whose detail is shown (none: the detail pane is hidden).
    Focus(Option<String>),
}

/// What the database side of the monitor tells its screen.
enum Msg {
    Snap(Box<Snapshot>),
    /// The selected agent's detail: its record, attempts and events.
    Detail(String, Box<std::result::Result<ShowView, String>>),
    /// About the connection, for the message line.
    Note(String),
}

/// `corral monitor` from the database: the same dashboard (or, for output that is not a
/// terminal, the same plain-text snapshots), refreshed when the workspace's notifications
/// say something changed and every two seconds behind them; a lost connection is said and
/// made again.
pub fn monitor(ctx: &Ctx, t: &Target, rt: &tokio::runtime::Runtime, a: super::monitor::Args) -> Result {
    if a.once {
        let s = rt.block_on(async {
            let c = connect(t).await?;
            snapshot(ctx, t, &c).await.map_err(db_fail)
        })?;
        let m = model(&s, None);
        crate::display::raw_out(super::monitor::text_frame(&m, &s.worker_lines()).as_bytes())?;
        return Ok(0);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Ask>();
    let text = a.text();
    let screen = std::thread::spawn(move || if text { text_screen(rx, cmd_tx, &a) } else { tui(rx, cmd_tx, &a) });
    rt.block_on(feed(ctx, t, tx, cmd_rx));
    match screen.join() {
        Ok(r) => r,
        Err(_) => Err(Fail { code: 1, msg: "the monitor's screen thread failed".into() }),
    }
}

/// Reads snapshots for the screen until it quits (drops its command sender).
async fn feed(
    ctx: &Ctx,
    t: &Target,
    tx: std::sync::mpsc::Sender<Msg>,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<Ask>,
) {
    let mut focus: Option<String> = None;
    let opts = listen::ListenOptions { application_name: "corral-monitor".into(), ..listen::ListenOptions::default() };
    let mut listener = listen::Listener::start(&t.db, &t.workspace, opts);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut down = false;
    loop {
        if client.as_ref().is_some_and(|c| c.is_closed()) {
            client = None;
            if !down {
                down = true;
                if tx.send(Msg::Note("the database connection was lost; reconnecting".into())).is_err() {
                    return;
                }
            }
        }
        if client.is_none() {
            match connect(t).await {
                Ok(c) => {
                    if down && tx.send(Msg::Note("the database is back".into())).is_err() {
                        return;
                    }
                    down = false;
                    client = Some(c);
                }
                Err(f) => {
                    if !down {
                        down = true;
                        let m = format!("the database is unreachable ({}); reconnecting", f.msg);
                        if tx.send(Msg::Note(m)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Some(c) = &client {
            match tokio::time::timeout(Duration::from_secs(10), snapshot(ctx, t, c)).await {
                Ok(Ok(s)) => {
                    let detail = match &focus {
                        Some(id) => s.views.iter().find(|v| v.agent_id == *id).cloned().map(|v| (id.clone(), v)),
                        None => None,
                    };
                    if tx.send(Msg::Snap(Box::new(s))).is_err() {
                        return;
                    }
                    if let Some((id, v)) = detail {
                        let d = show_view(c, t, v).await.map_err(|e| e.to_string());
                        if tx.send(Msg::Detail(id, Box::new(d))).is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    client = None;
                    down = true;
                    if tx.send(Msg::Note(format!("the database connection failed ({e}); reconnecting"))).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    client = None;
                    down = true;
                    if tx.send(Msg::Note("the database did not answer within 10s; reconnecting".into())).is_err() {
                        return;
                    }
                }
            }
        }
        let wait = if client.is_some() { MONITOR_POLL } else { Duration::from_secs(1) };
        tokio::select! {
            _ = listener.changed() => {
                // A burst of changes is read once: at most four snapshots a second.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ = tokio::time::sleep(wait) => {}
            c = cmds.recv() => match c {
                None => return,
                Some(Ask::Run(c)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(Msg::Note(execute(c).await));
                    });
                }
                // Read at once (the loop goes round).
                Some(Ask::Focus(f)) => focus = f,
            },
        }
    }
}

/// A key's command, by running this corral's own client command (same database and
/// workspace, from the environment and the directory), its last message kept.
async fn execute(cmd: Command) -> String {
    let (args, what) = match cmd {
        Command::Kill(id) => (vec!["kill".to_string(), id.clone()], format!("kill {id}")),
        Command::Retry(id) => (vec!["retry".to_string(), id.clone()], format!("retry {id}")),
        Command::Tell(id, text) => (vec!["tell".to_string(), id.clone(), text], format!("told {id}")),
        Command::Resolve(n, note) => {
            let mut a = vec!["escalations".to_string(), "resolve".to_string(), n.to_string()];
            if !note.is_empty() {
                a.extend(["--note".to_string(), note]);
            }
            (a, format!("resolved #{n}"))
        }
        Command::Quit => return String::new(),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return format!("{what}: {e}"),
    };
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe).args(&args).stdin(std::process::Stdio::null()).output()
    })
    .await;
    match out {
        Err(e) => format!("{what}: {e}"),
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            match (o.status.success(), last.is_empty()) {
                (true, true) => what,
                (true, false) => last,
                (false, _) => format!("{what}: {last}"),
            }
        }
        Ok(Err(e)) => format!("{what}: {e}"),
    }
}

/// The dashboard's model of a snapshot (keeping what the user chose in `old`).
fn model(s: &Snapshot, old: Option<Model>) -> Model {
    let mut m = old.unwrap_or_default();
    m.replace_all(s.views.clone());
    m.health = Some(s.health.clone());
    m.escalations = s.escalations.clone();
    m
}

/// Output that is not a terminal: a snapshot when the monitor starts and one each time
/// something changed; connection notes on stderr.
fn text_screen(
    rx: std::sync::mpsc::Receiver<Msg>,
    _quit: tokio::sync::mpsc::UnboundedSender<Ask>,
    a: &super::monitor::Args,
) -> Result {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let left = a.seconds.map(|s| Duration::from_secs_f64(s).saturating_sub(start.elapsed()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(0);
        }
        let msg = match rx.recv_timeout(left.unwrap_or(Duration::from_secs(3600))) {
            Ok(m) => m,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
        };
        match msg {
            Msg::Note(n) => note!("corral monitor: {n}")?,
            Msg::Detail(..) => {}
            Msg::Snap(s) => {
                let m = model(&s, None);
                // Worker lines carry ages: only their identity and load decide a new snapshot.
                let who: Vec<String> =
                    s.workers.iter().map(|w| format!("{} {} {} {}", w.id, w.live, w.agents, w.slots)).collect();
                let f = super::monitor::fingerprint(&m, &who);
                if f != last {
                    last = f;
                    let frame = format!("{}\n", super::monitor::text_frame(&m, &s.worker_lines()));
                    if crate::display::raw_out(frame.as_bytes()).is_err() {
                        return Ok(0); // the reader went away
                    }
                }
            }
        }
    }
}

/// The dashboard in a terminal, drawn as on one machine; keys act through this corral's
/// client commands.
fn tui(
    rx: std::sync::mpsc::Receiver<Msg>,
    cmds: tokio::sync::mpsc::UnboundedSender<Ask>,
    a: &super::monitor::Args,
) -> Result {
    let mut asked: Option<String> = None;
    // The first snapshot before the screen is taken, so a database that cannot be reached
    // is said plainly.
    let first = loop {
        match rx.recv() {
            Ok(Msg::Snap(s)) => break s,
            Ok(Msg::Note(n)) => note!("corral monitor: {n}")?,
            Ok(Msg::Detail(..)) => {}
            Err(_) => return Ok(1),
        }
    };
    let mut m = model(&first, None);
    let mut workers = first.worker_lines();
    m.select_attention();
    let mut terminal = ratatui::try_init()?;
    // Tall enough: the detail pane is there from the start, as on one machine.
    m.detail_pane = terminal.size().is_ok_and(|s| s.height >= super::monitor::DETAIL_ROWS);
    let frame = Duration::from_millis(1000 / a.fps.clamp(1, 60) as u64);
    let start = Instant::now();
    let mut table = ratatui::widgets::TableState::default();
    let result = (|| -> Result {
        loop {
            let deadline = Instant::now() + frame;
            while let Some(key) = super::monitor::next_key(deadline)? {
                match m.key(key) {
                    Some(Command::Quit) => return Ok(0),
                    Some(c) => {
                        m.message = "sent; waiting for the answer...".into();
                        let _ = cmds.send(Ask::Run(c));
                    }
                    None => {}
                }
                panes(&mut m, &workers, &cmds, &mut asked);
                terminal.draw(|f| crate::monitor::ui::draw(f, &m, &mut table))?;
            }
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    Msg::Snap(s) => {
                        m = model(&s, Some(std::mem::take(&mut m)));
                        workers = s.worker_lines();
                    }
                    Msg::Note(n) => m.message = n,
                    Msg::Detail(id, d) => {
                        if m.selected_id().as_deref() == Some(id.as_str()) {
                            m.detail = Some(*d);
                        }
                    }
                }
            }
            m.clamp_selection();
            panes(&mut m, &workers, &cmds, &mut asked);
            terminal.draw(|f| crate::monitor::ui::draw(f, &m, &mut table))?;
            m.redraws += 1;
            if a.seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
                return Ok(0);
            }
        }
    })();
    ratatui::restore();
    result
}

/// The detail and log panes from the database: the detail is asked for the selected agent
/// (and read again with every snapshot); the log is not there, which is said.
fn panes(
    m: &mut Model,
    workers: &[String],
    cmds: &tokio::sync::mpsc::UnboundedSender<Ask>,
    asked: &mut Option<String>,
) {
    let want = if m.detail_pane { m.selected_id() } else { None };
    if want != *asked {
        if want.is_some() {
            m.detail = None; // "asking..." until it comes
        }
        let _ = cmds.send(Ask::Focus(want.clone()));
        *asked = want;
    }
    let Some(v) = m.selected_agent().cloned() else { return };
    if m.log_pane {
        let mut lines = vec![format!(
            "the log of {} stays on the disk of its worker: `corral logs {}` says which",
            v.agent_id, v.agent_id
        )];
        lines.extend(workers.iter().cloned());
        m.log = Some((v.agent_id.clone(), lines.iter().map(|l| crate::display::escape(l).into_owned()).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_line_says_its_load_or_that_its_lease_ended() {
        let at = SystemTime::UNIX_EPOCH;
        let mut w = WorkerRow {
            id: "0123456789abcdef".into(),
            host: "h1".into(),
            pid: 42,
            labels: json!({}),
            slots: 8,
            state: "active".into(),
            started_at: at,
            heartbeat_at: at,
            lease_until: at,
            live: true,
            heartbeat_age: 0.25,
            lease_left: 1.75,
            agents: 3,
        };
        assert_eq!(w.line(), "01234567 on h1 (pid 42): 3 of 8 slots; renewed 0.2s ago, lease 1.8s left");
        w.live = false;
        w.lease_left = -4.0;
        w.agents = 1;
        assert_eq!(w.line(), "01234567 on h1 (pid 42): lease ended 4.0s ago; 1 agent not yet taken over");
        assert_eq!(w.json()["leaseLeftSeconds"], -4.0);
    }

    #[test]
    fn a_view_gets_the_databases_escalation_number() {
        let mut v: AgentView = serde_json::from_value(json!({
            "agentId": "a1", "role": "r", "task": "t", "status": "escalated", "attempt": 1, "maxRetries": 1,
            "anomalies": ["FAILED", "NEEDS-HUMAN #1"], "spawnedAt": "t", "cwd": "/", "escalation": 1,
        }))
        .unwrap();
        renumber(&mut v, Some(7));
        assert_eq!((v.escalation, v.anomalies.clone()), (Some(7), vec!["FAILED".into(), "NEEDS-HUMAN #7".into()]));
        renumber(&mut v, None);
        assert_eq!((v.escalation, v.anomalies[1].as_str()), (None, "NEEDS-HUMAN"));
    }
}
