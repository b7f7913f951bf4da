//! The client commands in cluster mode, from any machine: `spawn`, `status`, `show`, `kill`,
//! `retry`, `tell`, `wait`, `events`, `clean`, `parallel`, `pause` and `resume` work by SQL
//! against the cluster's database, with no local supervisor (one short connection per
//! command, on a current-thread runtime). Kill, retry and tell of an agent a worker runs go
//! to that worker as a command, and the answer is awaited; of an agent nobody runs, they
//! are done in the database directly (`cluster::direct`). A capacity change is the
//! workspace's, for every worker (`cluster::capacity`). `health`, `escalations`, `monitor`
//! and `logs` are in `cluster_reads`, `timeline` in `cluster_timeline`; `mcp` serves the
//! same operations as tools (`mcp::cluster`). The other commands need the files of a
//! worker's machine and say so.

use super::{Cmd, Ctx, Fail, Result, usage};
use crate::cluster::queue::ClusterError;
use crate::cluster::read::{AgentFilter, AgentRow, EventRow};
use crate::cluster::{Database, capacity, commands, direct, listen, queue, read, schema, worker};
use crate::ipc::{AgentView, Request};
use crate::protocol::time;
use crate::{note, say};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

/// How long `kill`, `retry` and `tell` wait for the worker's answer (at least).
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// When a wait for a worker's answer says so on stderr.
const ANSWER_NOTE: Duration = Duration::from_secs(2);
/// Events read per query.
const PAGE: i64 = 1000;

/// The database and workspace the commands work with.
pub struct Target {
    pub db: Database,
    pub workspace: String,
}

/// Commands that never go to the database: they make a workspace, run one of their own,
/// run inside an agent on a worker's machine, or are the worker.
pub fn local_only(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Init(_)
            | Cmd::Demo(_)
            | Cmd::Report(_)
            | Cmd::Handoff(_)
            | Cmd::Worker(_)
            | Cmd::Completions(_)
            | Cmd::Man(_)
    )
}

/// Whether `dir` is the data dir a cluster worker's supervisor gave this process, an agent
/// it runs (`CORRAL_WORKER` beside `CORRAL_DATA_DIR`): that agent's commands, other than the
/// agent side of the protocol, are the cluster's.
pub fn agent_of_worker(dir: Option<&std::path::Path>) -> bool {
    std::env::var_os("CORRAL_WORKER").is_some_and(|w| !w.is_empty())
        && dir.is_some_and(|d| std::env::var_os("CORRAL_DATA_DIR").is_some_and(|e| std::path::Path::new(&e) == d))
}

/// The command's name as typed.
fn name(cmd: &Cmd) -> String {
    let d = format!("{cmd:?}");
    d.split(['(', ' ', '{']).next().unwrap_or("").to_lowercase()
}

/// Runs `cmd` against the database.
pub fn run(ctx: &Ctx, t: Target, cmd: Cmd) -> Result {
    // The MCP server runs a runtime of its own.
    if let Cmd::Mcp(a) = cmd {
        return super::mcp::serve(ctx, a, Some(t));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cmd {
        Cmd::Spawn(a) => rt.block_on(spawn(ctx, &t, a)),
        Cmd::Status(a) => rt.block_on(status(ctx, &t, a)),
        Cmd::Show(a) => rt.block_on(show(ctx, &t, a)),
        Cmd::Kill(a) => rt.block_on(kill(&t, a)),
        Cmd::Retry(a) => rt.block_on(retry(&t, a)),
        Cmd::Tell(a) => rt.block_on(tell(&t, a)),
        Cmd::Wait(a) => rt.block_on(wait(ctx, &t, a)),
        Cmd::Events(a) => rt.block_on(events(&t, a)),
        Cmd::Aggregate(a) => rt.block_on(aggregate(ctx, &t, a)),
        Cmd::Clean(a) => rt.block_on(clean(&t, a)),
        Cmd::Memory(a) => super::memory::present(rt.block_on(super::cluster_memory::snapshot(ctx, &t))?, a),
        Cmd::Health(a) => rt.block_on(super::cluster_reads::health(ctx, &t, a)),
        Cmd::Escalations(a) => rt.block_on(super::cluster_reads::escalations_cmd(&t, a)),
        Cmd::Logs(a) => rt.block_on(super::cluster_reads::logs(&t, a)),
        Cmd::Monitor(a) => super::cluster_reads::monitor(ctx, &t, &rt, a),
        Cmd::Timeline(a) => rt.block_on(super::cluster_timeline::timeline(ctx, &t, a)),
        Cmd::Parallel(a) => rt.block_on(capacity(ctx, &t, super::capacity::parallel_request(&a)?, a.json)),
        Cmd::Pause(a) => rt.block_on(capacity(ctx, &t, super::capacity::pause_request(&a)?, a.json)),
        Cmd::Resume(a) => rt.block_on(capacity(ctx, &t, super::capacity::resume_request(&a)?, a.json)),
        other => Err(usage(format!(
            "`corral {}` does not work from the database yet: run it on the worker's machine with --data-dir <its epoch \
             dir> (under the worker's data dir, epochs/<worker id>-<n>)",
            name(&other)
        ))),
    }
}

pub(crate) fn db_fail(e: ClusterError) -> Fail {
    match e {
        ClusterError::Bad(m) => usage(m),
        other => Fail { code: 1, msg: other.to_string() },
    }
}

/// One connection, the schema migrated.
pub(crate) async fn connect(t: &Target) -> Result<tokio_postgres::Client> {
    let limit = Duration::from_secs(10);
    let mut c = match tokio::time::timeout(limit, t.db.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Fail { code: 1, msg: e }),
        Err(_) => {
            return Err(Fail {
                code: 1,
                msg: format!("cannot reach the database at {} within {limit:?}", t.db.describe()),
            });
        }
    };
    schema::migrate(&mut c).await.map_err(|m| Fail { code: 1, msg: m })?;
    Ok(c)
}

pub(crate) fn rfc(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map(time::rfc3339).unwrap_or_default()
}

/// An event as `events` prints it: the single-machine shape, plus the worker and fence it
/// was written under.
fn event_json(e: &EventRow) -> Value {
    let mut v = json!({ "seq": e.seq, "at": rfc(e.at), "kind": e.kind, "data": e.data });
    if let Some(a) = &e.agent {
        v["agentId"] = json!(a);
    }
    if let Some(w) = &e.worker {
        v["worker"] = json!(w);
    }
    if let Some(f) = e.fence {
        v["fence"] = json!(f);
    }
    v
}

// ---- spawn ---------------------------------------------------------------------------

async fn spawn(ctx: &Ctx, t: &Target, a: super::spawn::Args) -> Result {
    let got = enqueue(ctx, t, super::spawn::request(ctx, a)?).await?;
    say!("{}", got.id)?;
    if !got.created {
        note!("{}: spawned before with this idempotency key; nothing new was queued", got.id)?;
    }
    Ok(0)
}

/// Queues the agent `req` asks for in the cluster (the spawn of the CLI and of the MCP
/// server alike).
pub(crate) async fn enqueue(ctx: &Ctx, t: &Target, mut req: crate::ipc::SpawnRequest) -> Result<queue::Spawned> {
    // The worker starts the agent with its own environment.
    req.caller_env.clear();
    req.cwd = relative_cwd(&ctx.ws.root, &req.cwd);
    // Where it may run and the group it counts against, decided now and kept with it.
    let mut placement = ctx.ws.config.role_placement(&req.role);
    placement.extend(std::mem::take(&mut req.placement));
    req.placement = placement;
    req.group = req.group.take().or_else(|| ctx.ws.config.role_group(&req.role));
    let provider = provider_of(ctx, &req);
    let mut body = worker::body(&req, None, None);
    body["spawnedAt"] = json!(time::rfc3339(time::now()));
    let s = queue::Spawn {
        id: req.id.clone(),
        role: req.role.clone(),
        key: req.idempotency_key.clone(),
        request: json!({ "role": req.role, "task": req.task, "command": req.command, "id": req.id }),
        placement: json!(req.placement),
        group: req.group.clone(),
        provider,
        body,
        delay: Duration::from_millis(req.delay_ms.unwrap_or(0)),
    };
    let mut c = connect(t).await?;
    queue::spawn(&mut c, &t.workspace, &s).await.map_err(db_fail)
}

/// The provider whose rate limits hold the agent: its adapter's (`--adapter`, else the
/// role's, else the command's program name, as the supervisor that runs it decides).
fn provider_of(ctx: &Ctx, req: &crate::ipc::SpawnRequest) -> Option<String> {
    use crate::adapter::Adapter;
    let (template, policy) = ctx.ws.config.role(&req.role);
    let adapter = match req.adapter.as_deref() {
        Some(name) => Adapter::parse(name)?,
        None => policy.adapter.unwrap_or_else(|| {
            let argv0 = req.command.first().or_else(|| template.as_ref().and_then(|t| t.first()));
            argv0.map_or(Adapter::None, |p| Adapter::from_program(p))
        }),
    };
    adapter.provider().map(str::to_string)
}

/// `cwd` relative to the workspace root when it is inside it (a worker's root differs from
/// this machine's), else as it is.
fn relative_cwd(root: &std::path::Path, cwd: &str) -> String {
    let p = std::path::Path::new(cwd);
    let canon = |q: &std::path::Path| q.canonicalize().unwrap_or_else(|_| q.to_path_buf());
    for (r, c) in [(root.to_path_buf(), p.to_path_buf()), (canon(root), canon(p))] {
        if let Ok(rel) = c.strip_prefix(&r) {
            return rel.display().to_string();
        }
    }
    cwd.to_string()
}

// ---- parallel, pause, resume ---------------------------------------------------------

/// This machine's `corral.toml` limits: what `health` and the capacity commands show for
/// what no worker has set in the database yet.
pub(super) fn local_limits(ctx: &Ctx) -> capacity::Local {
    capacity::Local { max_concurrent: ctx.ws.config.health().max_concurrent, groups: ctx.ws.config.group_limits() }
}

/// `corral parallel`, `pause` or `resume` (`req`, checked as on one machine) for the whole
/// cluster: kept in the database over the workers' `corral.toml`, every worker woken.
async fn capacity(ctx: &Ctx, t: &Target, req: Request, json: bool) -> Result {
    let change = match req {
        Request::Parallel { group, max } => capacity::Change::Parallel { group, max },
        Request::Pause { group, paused, all } => capacity::Change::Pause { group, paused, all },
        other => unreachable!("not a capacity change: {other:?}"),
    };
    let mut c = connect(t).await?;
    let view = capacity::change(&mut c, &t.workspace, &change, &local_limits(ctx)).await.map_err(db_fail)?;
    super::capacity::print(serde_json::to_value(view)?, json)
}

// ---- views ---------------------------------------------------------------------------

/// Why each queued agent waits, by id (see `read::queued_reasons`).
pub(super) type Reasons = std::collections::BTreeMap<String, String>;

/// The agent as `status --json` shows it: its worker's last view with the database's state,
/// or, before any worker ran it, one made from the spawn request.
pub(super) fn view_of(ctx: &Ctx, r: &AgentRow, reasons: &Reasons) -> AgentView {
    let stored = r.body.get("view").and_then(|v| serde_json::from_value::<AgentView>(v.clone()).ok());
    let mut v = stored.unwrap_or_else(|| made(ctx, r));
    v.status = r.state.clone();
    v.group = r.group.clone().or(v.group);
    // Its attempts on other workers (or earlier epochs) count too.
    if let Some(before) = r.body["costBefore"].as_f64().filter(|c| *c > 0.0) {
        v.cost_usd = Some(v.cost_usd.unwrap_or(0.0) + before);
    }
    // Waiting in the cluster's queue: why, as of now (a view from an earlier worker says
    // nothing about that).
    if r.state == "queued" && r.owner.is_none() {
        v.reason = reasons.get(&r.id).cloned();
        v.anomalies = v.reason.iter().map(|why| format!("QUEUED: {why}")).collect();
        v.pid = None;
    }
    v.needs_human =
        r.state == "escalated" || (r.state == "blocked" && (r.owner.is_none() || r.body["view"]["needsHuman"] == true));
    v.next_attempt_in_seconds = None;
    // Ages as of now, not of the worker's last write.
    let since = v.last_update.as_deref().or(Some(v.spawned_at.as_str())).and_then(time::parse);
    v.age_seconds = since.map(|s| (time::now().as_millisecond() - s.as_millisecond()).max(0) as f64 / 1000.0);
    v
}

fn made(ctx: &Ctx, r: &AgentRow) -> AgentView {
    let (req, unreadable) = match worker::request_of(&r.body) {
        Ok(q) => (q, None),
        Err(e) => (crate::ipc::SpawnRequest::default(), Some(e)),
    };
    let max_retries = req.max_retries.unwrap_or_else(|| ctx.ws.config.role(&r.role).1.max_retries);
    let v = json!({
        "agentId": r.id,
        "role": r.role,
        "task": req.task,
        "status": r.state,
        "attempt": r.attempt,
        "budgetAttempt": r.attempt,
        "maxRetries": max_retries,
        "anomalies": [],
        "spawnedAt": r.body["spawnedAt"].as_str().unwrap_or(""),
        "cwd": req.cwd,
        "adapter": req.adapter.as_deref().unwrap_or("none"),
        "group": req.group,
        "priority": req.priority,
        "unreadable": unreadable,
    });
    serde_json::from_value(v).expect("every field an AgentView needs is given")
}

pub(super) async fn resolve_all(
    c: &tokio_postgres::Client,
    t: &Target,
    given: &[String],
) -> Result<Option<Vec<String>>> {
    if given.is_empty() {
        return Ok(None);
    }
    let mut ids = Vec::new();
    for g in given {
        ids.push(direct::resolve(c, &t.workspace, g).await.map_err(db_fail)?);
    }
    Ok(Some(ids))
}

async fn status(ctx: &Ctx, t: &Target, a: super::status::Args) -> Result {
    let keep = super::status::Keep::new(&a)?;
    let views: Vec<AgentView> =
        views(ctx, t, &a.ids, a.role.clone()).await?.into_iter().filter(|v| keep.keeps(v)).collect();
    if a.json {
        crate::display::raw_out(format!("{}\n", serde_json::to_string(&views)?).as_bytes())?;
        return Ok(0);
    }
    if views.is_empty() {
        note!("no agents in workspace {} of {}", t.workspace, t.db.describe())?;
        return Ok(0);
    }
    super::status::table(&views, super::status::columns(), &mut std::io::stdout().lock())?;
    Ok(0)
}

/// The agents (`given` ids or prefixes, else all; of `role`, if given) as `status --json`
/// shows them, in spawn order.
pub(crate) async fn views(ctx: &Ctx, t: &Target, given: &[String], role: Option<String>) -> Result<Vec<AgentView>> {
    let c = connect(t).await?;
    let ids = resolve_all(&c, t, given).await?;
    let filter = AgentFilter { role, hide_cleaned: ids.is_none(), ids, ..AgentFilter::default() };
    let rows = read::agents(&c, &t.workspace, &filter).await.map_err(db_fail)?;
    let numbers = super::cluster_reads::open_numbers(&c, &t.workspace).await.map_err(db_fail)?;
    let reasons = if rows.iter().any(|r| r.state == "queued") {
        read::queued_reasons(&c, &t.workspace, Some(&ctx.ws.config.health())).await.map_err(db_fail)?
    } else {
        Reasons::new()
    };
    Ok(rows
        .iter()
        .map(|r| {
            let mut v = view_of(ctx, r, &reasons);
            super::cluster_reads::renumber(&mut v, numbers.get(&r.id).copied());
            v
        })
        .collect())
}

async fn show(ctx: &Ctx, t: &Target, a: super::show::Args) -> Result {
    let (view, out) = shown(ctx, t, &a.id).await?;
    if a.json {
        super::output::print_json(&out)?;
        return Ok(0);
    }
    render(&view, &out, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// One agent (`given`: an id or a prefix) as `show --json` prints it: its view, what it was
/// asked, its attempts on every worker, its events and its newest handoff.
pub(crate) async fn shown(ctx: &Ctx, t: &Target, given: &str) -> Result<(AgentView, Value)> {
    let c = connect(t).await?;
    let id = direct::resolve(&c, &t.workspace, given).await.map_err(db_fail)?;
    let filter = AgentFilter { ids: Some(vec![id.clone()]), ..AgentFilter::default() };
    let rows = read::agents(&c, &t.workspace, &filter).await.map_err(db_fail)?;
    let row = rows.first().ok_or_else(|| usage(format!("no agent {id} in workspace {}", t.workspace)))?;
    let reasons = if row.state == "queued" {
        read::queued_reasons(&c, &t.workspace, Some(&ctx.ws.config.health())).await.map_err(db_fail)?
    } else {
        Reasons::new()
    };
    let mut view = view_of(ctx, row, &reasons);
    let numbers = super::cluster_reads::open_numbers(&c, &t.workspace).await.map_err(db_fail)?;
    super::cluster_reads::renumber(&mut view, numbers.get(&id).copied());
    let attempts = direct::attempts(&c, &t.workspace, &id).await.map_err(db_fail)?;
    let events = direct::agent_events(&c, &t.workspace, &id, 500).await.map_err(db_fail)?;
    let req = worker::request_of(&row.body).unwrap_or_default();
    let mut out = serde_json::to_value(&view)?;
    out["scope"] = json!(req.scope);
    out["constraints"] = json!(req.constraints);
    out["after"] = json!(req.after);
    out["command"] = json!(req.command);
    out["seq"] = json!(row.seq);
    out["fence"] = json!(row.fence);
    out["owner"] = json!(row.owner);
    out["worker"] = row.body.get("worker").cloned().unwrap_or(Value::Null);
    out["placement"] = row.placement.clone();
    out["attempts"] = attempts
        .iter()
        .map(|x| {
            json!({
                "n": x.n,
                "fence": x.fence,
                "worker": x.worker,
                "host": x.host,
                "startedAt": rfc(x.started_at),
                "endedAt": x.ended_at.map(rfc),
                "outcome": x.outcome,
                "exitCode": x.exit_code,
                "detail": x.detail,
            })
        })
        .collect();
    out["events"] = events.iter().map(event_json).collect();
    // The newest handoff a worker recorded, with the attempt it came from.
    let handoff = c
        .query_opt(
            "SELECT attempt, file, body FROM handoffs WHERE workspace = $1 AND agent_id = $2 ORDER BY attempt DESC LIMIT 1",
            &[&t.workspace, &id],
        )
        .await
        .map_err(|e| db_fail(e.into()))?;
    out["handoff"] = handoff.map_or(
        Value::Null,
        |r| json!({ "attempt": r.get::<_, i32>(0), "file": r.get::<_, String>(1), "body": r.get::<_, Value>(2) }),
    );
    Ok((view, out))
}

/// What `corral show` prints about one agent from the database.
fn render(v: &AgentView, all: &Value, out: &mut impl Write) -> std::io::Result<()> {
    use crate::display::shown;
    use crate::say_to;
    say_to!(out, "{}  ({})", shown(&v.agent_id), shown(&v.role))?;
    say_to!(out, "  task:       {}", shown(&v.task))?;
    if let Some(sc) = all["scope"].as_str() {
        say_to!(out, "  scope:      {}", shown(sc))?;
    }
    say_to!(out, "  command:    {}  (in {})", shown(&all["command"].to_string()), shown(&v.cwd))?;
    if all["placement"].as_object().is_some_and(|p| !p.is_empty()) {
        say_to!(out, "  placement:  {}", shown(&read::shown_placement(&all["placement"])))?;
    }
    if let Some(g) = &v.group {
        say_to!(out, "  group:      {}", shown(g))?;
    }
    match &v.reason {
        Some(r) => say_to!(out, "  status:     {} ({})", shown(&v.status), shown(r))?,
        None => say_to!(out, "  status:     {}", shown(&v.status))?,
    }
    match (all["worker"]["host"].as_str(), all["owner"].as_str()) {
        (Some(h), Some(_)) => say_to!(out, "  worker:     {} on {}", shown(&all["owner"].to_string()), shown(h))?,
        (Some(h), None) => say_to!(out, "  worker:     none now (last on {})", shown(h))?,
        (None, _) => say_to!(out, "  worker:     none yet")?,
    }
    say_to!(out, "  fence:      {}", all["fence"])?;
    let attempts = all["attempts"].as_array().map(Vec::as_slice).unwrap_or_default();
    say_to!(out, "  attempts ({}):", attempts.len())?;
    for at in attempts {
        let how = match (at["endedAt"].as_str(), at["outcome"].as_str()) {
            (Some(e), Some(o)) => format!("ended {e}: {o}"),
            (Some(e), None) => format!("ended {e}"),
            (None, _) => "running".into(),
        };
        let exit = at["exitCode"].as_i64().map(|c| format!(" (exit {c})")).unwrap_or_default();
        say_to!(
            out,
            "    #{} fence {} on {} started {}: {}{exit}",
            at["n"],
            at["fence"],
            shown(at["host"].as_str().or(at["worker"].as_str()).unwrap_or("?")),
            shown(at["startedAt"].as_str().unwrap_or("")),
            shown(&how)
        )?;
    }
    say_to!(out, "  events:")?;
    for e in all["events"].as_array().map(Vec::as_slice).unwrap_or_default() {
        say_to!(
            out,
            "    {} {:18} {}",
            shown(e["at"].as_str().unwrap_or("")),
            shown(e["kind"].as_str().unwrap_or("")),
            shown(&e["data"].to_string())
        )?;
    }
    Ok(())
}

// ---- kill, retry, tell ---------------------------------------------------------------

/// What became of a command sent to a worker.
enum Answer {
    /// The worker applied it: its result.
    Done(Value),
    /// Nobody owns the agent any more and no worker took the command: it was withdrawn.
    Withdrawn,
    /// Nobody owns the agent any more and no worker took the command: it waits for the
    /// worker that claims the agent next.
    Left,
}

/// The agent's owner and state now.
async fn owner_state(c: &tokio_postgres::Client, t: &Target, id: &str) -> Result<(Option<String>, String)> {
    let r = c
        .query_one("SELECT owner::text, state FROM agents WHERE workspace = $1 AND id = $2", &[&t.workspace, &id])
        .await
        .map_err(|e| db_fail(e.into()))?;
    Ok((r.get(0), r.get(1)))
}

/// Sends `kind` to the worker that owns `id` and waits (bounded by `limit`) for its answer.
/// A command no worker took while the agent lost its owner is withdrawn when `withdraw`,
/// else left for the next worker that claims the agent.
async fn send(
    c: &mut tokio_postgres::Client,
    t: &Target,
    id: &str,
    kind: &str,
    args: Value,
    limit: Duration,
    withdraw: bool,
) -> Result<Answer> {
    let cmd = commands::submit(c, &t.workspace, id, kind, args).await.map_err(db_fail)?;
    let start = Instant::now();
    let mut said = false;
    loop {
        let st = direct::command(c, &t.workspace, cmd).await.map_err(db_fail)?;
        match st {
            Some(direct::CommandState { result: Some(r), .. }) => return Ok(Answer::Done(r)),
            Some(direct::CommandState { taken: false, .. }) => {
                let (owner, _) = owner_state(c, t, id).await?;
                if owner.is_none() {
                    if !withdraw {
                        return Ok(Answer::Left);
                    }
                    if direct::withdraw(c, &t.workspace, cmd).await.map_err(db_fail)? {
                        return Ok(Answer::Withdrawn);
                    }
                }
            }
            None => return Ok(Answer::Withdrawn),
            _ => {}
        }
        if !said && start.elapsed() >= ANSWER_NOTE {
            said = true;
            note!("corral {kind}: waiting for the worker running {id} to apply it (command {cmd})...")?;
        }
        if start.elapsed() >= limit {
            return Err(Fail {
                code: 1,
                msg: format!(
                    "the worker running {id} has not applied the {kind} within {limit:?}; it stays queued as command \
                     {cmd} and is applied when the worker gets to it (see `corral show {id}`)"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data of a worker's answer, or its error.
fn answered(id: &str, kind: &str, r: Value) -> Result<Value> {
    if r["ok"] == true {
        Ok(r.get("data").cloned().unwrap_or(Value::Null))
    } else {
        Err(Fail {
            code: 1,
            msg: format!("{id}: the worker refused the {kind}: {}", r["error"].as_str().unwrap_or("no reason given")),
        })
    }
}

async fn kill(t: &Target, a: super::kill::Args) -> Result {
    let grace = crate::config::parse_duration(&a.grace).map_err(|e| usage(format!("--grace: {e}")))?;
    let (id, status) = kill_agent(t, &a.id, grace).await?;
    if a.json {
        super::output::print_json(&json!({ "agentId": id, "status": status }))?;
    } else {
        note!("{id}: {status}")?;
    }
    Ok(0)
}

/// Kills the agent `given` wherever it runs and waits until the database says it is dead:
/// its id and its state then.
pub(crate) async fn kill_agent(t: &Target, given: &str, grace: Duration) -> Result<(String, String)> {
    let mut c = connect(t).await?;
    let id = direct::resolve(&c, &t.workspace, given).await.map_err(db_fail)?;
    let limit = ANSWER_WAIT.max(grace + Duration::from_secs(5));
    let start = Instant::now();
    let status = loop {
        match direct::kill_unowned(&mut c, &t.workspace, &id).await.map_err(db_fail)? {
            direct::Direct::Done { state } => break state,
            direct::Direct::Refused { why } => {
                note!("{id}: nothing to kill: {why}")?;
                break owner_state(&c, t, &id).await?.1;
            }
            direct::Direct::Owned { .. } => {
                let args = json!({ "graceMs": grace.as_millis() as u64 });
                match send(&mut c, t, &id, "kill", args, limit, true).await? {
                    Answer::Withdrawn | Answer::Left => continue,
                    Answer::Done(r) => {
                        answered(&id, "kill", r)?;
                        // Until the database says so too, so the next command sees it dead.
                        while start.elapsed() < limit {
                            let (owner, state) = owner_state(&c, t, &id).await?;
                            if owner.is_none() || direct::terminal(&state) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        break owner_state(&c, t, &id).await?.1;
                    }
                }
            }
        }
    };
    Ok((id, status))
}

async fn retry(t: &Target, a: super::retry::Args) -> Result {
    let data = retry_agent(t, &a.id, a.context.as_deref()).await?;
    let id = data["agentId"].as_str().unwrap_or_default();
    if a.json {
        super::output::print_json(&data)?;
    } else {
        let status = data["status"].as_str().unwrap_or_default();
        match data["reason"].as_str() {
            Some(r) if status == "queued" => note!("{id}: new attempt queued ({r})")?,
            _ => note!("{id}: new attempt {status}")?,
        }
    }
    Ok(0)
}

/// Starts a new attempt of the agent `given` (with `context` added to its delegation),
/// wherever it is: `{agentId, status, reason}`.
pub(crate) async fn retry_agent(t: &Target, given: &str, context: Option<&str>) -> Result<Value> {
    let mut c = connect(t).await?;
    let id = direct::resolve(&c, &t.workspace, given).await.map_err(db_fail)?;
    let data = loop {
        match direct::retry_unowned(&mut c, &t.workspace, &id, context).await.map_err(db_fail)? {
            direct::Direct::Done { state } => {
                break json!({ "agentId": id, "status": state, "reason": "waiting for a worker to claim it" });
            }
            direct::Direct::Refused { why } => return Err(Fail { code: 1, msg: format!("{id}: not retried: {why}") }),
            direct::Direct::Owned { .. } => {
                let args = match context {
                    Some(ctx) => json!({ "context": ctx }),
                    None => json!({}),
                };
                match send(&mut c, t, &id, "retry", args, ANSWER_WAIT, true).await? {
                    Answer::Withdrawn | Answer::Left => continue,
                    Answer::Done(r) => break answered(&id, "retry", r)?,
                }
            }
        }
    };
    let mut data = data;
    data["agentId"] = json!(id);
    Ok(data)
}

async fn tell(t: &Target, a: super::retry::TellArgs) -> Result {
    let told = tell_agent(t, &a.id, &a.text).await?;
    for line in &told.said {
        note!("{}: {line}", told.id)?;
    }
    Ok(0)
}

/// What became of a message for an agent.
pub(crate) struct Told {
    pub id: String,
    /// The inbox on the agent's worker it was appended to; `None` while it waits for one.
    pub inbox: Option<String>,
    /// What to tell the sender, line by line.
    pub said: Vec<String>,
}

/// Appends `text` to the inbox of the agent `given` on its worker, or leaves it for the
/// worker that runs it next.
pub(crate) async fn tell_agent(t: &Target, given: &str, text: &str) -> Result<Told> {
    if text.trim().is_empty() {
        return Err(usage("the message is empty"));
    }
    let mut c = connect(t).await?;
    let id = direct::resolve(&c, &t.workspace, given).await.map_err(db_fail)?;
    let (owner, state) = owner_state(&c, t, &id).await?;
    let args = json!({ "text": text });
    let waits = |said: String| Told { id: id.clone(), inbox: None, said: vec![said] };
    if owner.is_none() {
        commands::submit(&mut c, &t.workspace, &id, "tell", args).await.map_err(db_fail)?;
        let when = if direct::terminal(&state) || state == "blocked" || state == "escalated" {
            format!("when a worker next starts it (it is {state}: `corral retry {id}` starts it again)")
        } else {
            format!("when a worker starts it (it is {state})")
        };
        return Ok(waits(format!("no worker runs it now; the message waits and is delivered {when}")));
    }
    match send(&mut c, t, &id, "tell", args, ANSWER_WAIT, false).await? {
        Answer::Withdrawn | Answer::Left => Ok(waits("the message waits for the worker that runs it next".into())),
        Answer::Done(r) => {
            let data = answered(&id, "tell", r)?;
            let inbox = data["inbox"].as_str().unwrap_or_default().to_string();
            let mut said = vec![format!("appended to {inbox} on its worker")];
            if data["resumed"] == true {
                said.push("resumed with the message (it was blocked with nobody left to unblock it)".into());
            }
            Ok(Told { id, inbox: Some(inbox), said })
        }
    }
}

// ---- wait, events --------------------------------------------------------------------

/// A connection that is made again after it failed, saying so once per outage.
struct Conn<'a> {
    t: &'a Target,
    client: Option<tokio_postgres::Client>,
    what: &'static str,
    down: bool,
}

impl<'a> Conn<'a> {
    fn new(t: &'a Target, client: tokio_postgres::Client, what: &'static str) -> Self {
        Self { t, client: Some(client), what, down: false }
    }

    async fn get(&mut self) -> Option<&tokio_postgres::Client> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            match connect(self.t).await {
                Ok(c) => {
                    if self.down {
                        let _ = note!("corral {}: the database is back", self.what);
                    }
                    self.down = false;
                    self.client = Some(c);
                }
                Err(f) => {
                    self.lost(&f.msg);
                    return None;
                }
            }
        }
        self.client.as_ref()
    }

    fn lost(&mut self, why: &str) {
        self.client = None;
        if !self.down {
            self.down = true;
            let _ = note!("corral {}: {why}; trying again every second", self.what);
        }
    }
}

async fn wait(ctx: &Ctx, t: &Target, a: super::wait::Args) -> Result {
    let limit = match &a.timeout {
        Some(d) => Some(crate::config::parse_duration(d).map_err(|e| usage(format!("--timeout: {e}")))?),
        None => None,
    };
    struct Print {
        json: bool,
        start: Instant,
    }
    impl crate::ops::wait::Watch for Print {
        fn finished(&mut self, v: &AgentView, _: usize, _: usize) -> std::result::Result<(), crate::ops::Failure> {
            super::wait::print_one(v, self.json, false, self.start).map_err(|f| crate::ops::Failure::new(f.code, f.msg))
        }
        fn note(&self, msg: &str) {
            let _ = note!("{msg}");
        }
    }
    let given = if a.all { Vec::new() } else { a.ids };
    let mut face = Print { json: a.json, start: Instant::now() };
    let w = wait_agents(ctx, t, &given, a.role, limit, &mut face).await?;
    if w.timed_out {
        note!("timed out: {} of {} finished", w.finished.len(), w.finished.len() + w.pending.len())?;
        return Ok(124);
    }
    Ok(if w.all_complete { 0 } else { 1 })
}

/// Waits until the agents (`given`, else all; of `role`) are finished, or `limit` passed, or
/// `watch` cancels: on the workspace's notifications with a slow poll behind them, across
/// database outages. Each finish goes to `watch` as it is seen.
pub(crate) async fn wait_agents(
    ctx: &Ctx,
    t: &Target,
    given: &[String],
    role: Option<String>,
    limit: Option<Duration>,
    watch: &mut dyn crate::ops::wait::Watch,
) -> Result<crate::ops::wait::Waited> {
    let start = Instant::now();
    let c = connect(t).await?;
    let ids = resolve_all(&c, t, given).await?;
    let filter = AgentFilter { role, hide_cleaned: ids.is_none(), ids, ..AgentFilter::default() };
    let mut listener = listen::Listener::start(&t.db, &t.workspace, listen::ListenOptions::default());
    let mut conn = Conn::new(t, c, "wait");
    let mut finished: Vec<AgentView> = Vec::new();
    let mut pending: Vec<AgentView> = Vec::new();
    let mut seen = false;
    // Read again on a notification, else once a second; asked to stop more often than that.
    let mut due = true;
    let mut read_at = Instant::now();
    let waited = |finished: Vec<AgentView>, pending: Vec<AgentView>, timed_out: bool| crate::ops::wait::Waited {
        all_complete: !timed_out && pending.is_empty() && finished.iter().all(|v| v.status == "complete"),
        finished,
        pending,
        timed_out,
        elapsed: start.elapsed(),
    };
    loop {
        due |= read_at.elapsed() >= Duration::from_secs(1);
        if due && let Some(c) = conn.get().await {
            due = false;
            read_at = Instant::now();
            match read::agents(c, &t.workspace, &filter).await {
                Ok(rows) => {
                    if rows.is_empty() && !seen {
                        return Err(usage("no agents to wait for"));
                    }
                    seen = true;
                    let total = rows.len();
                    pending.clear();
                    for r in &rows {
                        if finished.iter().any(|v| v.agent_id == r.id) {
                            continue;
                        }
                        let v = view_of(ctx, r, &Reasons::new());
                        if !direct::finished(&r.state, r.owner.as_deref(), &r.body) {
                            pending.push(v);
                            continue;
                        }
                        finished.push(v);
                        let done = finished.len();
                        watch
                            .finished(&finished[done - 1], done, total)
                            .map_err(|f| Fail { code: f.code, msg: f.msg })?;
                    }
                    if pending.is_empty() {
                        return Ok(waited(finished, pending, false));
                    }
                    watch.waiting(finished.len(), total);
                    if limit.is_some_and(|l| start.elapsed() >= l) {
                        return Ok(waited(finished, pending, true));
                    }
                }
                Err(e) => conn.lost(&e.to_string()),
            }
        }
        if watch.cancelled() {
            return Ok(waited(finished, pending, false));
        }
        let left = limit.map_or(Duration::from_secs(1), |l| l.saturating_sub(start.elapsed()));
        tokio::select! {
            _ = listener.changed() => due = true,
            _ = tokio::time::sleep(left.min(crate::ops::wait::PULSE)) => {}
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            due = true;
        }
        if limit.is_some_and(|l| start.elapsed() >= l) && conn.client.is_none() {
            watch.note("the database did not answer");
            return Ok(waited(finished, pending, true));
        }
    }
}

async fn events(t: &Target, a: super::events::Args) -> Result {
    let c = connect(t).await?;
    let agent = match &a.agent {
        Some(g) => Some(direct::resolve(&c, &t.workspace, g).await.map_err(db_fail)?),
        None => None,
    };
    let mut after = i64::try_from(a.after).unwrap_or(i64::MAX);
    let mut out = std::io::stdout().lock();
    let mut conn = Conn::new(t, c, "events");
    let mut listener = a.follow.then(|| listen::Listener::start(&t.db, &t.workspace, listen::ListenOptions::default()));
    loop {
        let mut full = false;
        if let Some(c) = conn.get().await {
            match read::events(c, &t.workspace, after, PAGE).await {
                Ok(page) => {
                    full = page.len() as i64 == PAGE;
                    for e in &page {
                        after = e.seq;
                        if agent.as_ref().is_some_and(|a| e.agent.as_ref() != Some(a)) {
                            continue;
                        }
                        let line = format!("{}\n", event_json(e));
                        if out.write_all(line.as_bytes()).is_err() {
                            return Ok(0); // the reader went away (`| head`)
                        }
                    }
                    if out.flush().is_err() {
                        return Ok(0);
                    }
                }
                Err(e) => conn.lost(&e.to_string()),
            }
        }
        let Some(l) = listener.as_mut() else {
            if conn.client.is_none() {
                return Err(Fail { code: 1, msg: "the database went away while the events were read".into() });
            }
            if full {
                continue;
            }
            return Ok(0);
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = l.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

// ---- clean ---------------------------------------------------------------------------

/// `corral clean` from the database: the finished agents leave the views everywhere. Their
/// worktrees are on their workers' disks, where `--worktrees` must run.
async fn clean(t: &Target, a: super::clean::Args) -> Result {
    if a.worktrees || a.force {
        return Err(usage(
            "--worktrees and --force remove worktrees and branches, which are on the workers' disks: run `corral \
             clean --worktrees --data-dir <the worker's epoch dir>` on the worker's machine (`corral show ID` names \
             the worker)",
        ));
    }
    let older_than = match &a.older_than {
        Some(d) => Some(crate::config::parse_duration(d).map_err(|e| usage(format!("--older-than: {e}")))?),
        None => None,
    };
    let mut c = connect(t).await?;
    let cleaned = direct::clean(&mut c, &t.workspace, older_than).await.map_err(db_fail)?;
    if a.json {
        let report = super::clean::CleanReport { cleaned, ..Default::default() };
        crate::display::raw_out((serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
        return Ok(0);
    }
    let list = if cleaned.is_empty() { String::new() } else { format!(": {}", cleaned.join(", ")) };
    say!("cleaned {} agent(s){list}", cleaned.len())?;
    Ok(0)
}

// ---- aggregate -----------------------------------------------------------------------

/// `corral aggregate` from the handoffs the workers recorded (each agent's newest), the
/// agents' records and the deliverables as this machine's checkout of the workspace has
/// them. Unresolved conflicts are reported (exit 1), not escalated: escalations live with
/// the workers.
async fn aggregate(ctx: &Ctx, t: &Target, a: super::aggregate::Args) -> Result {
    let json = super::aggregate::json_format(&a)?;
    let report = report(ctx, t, &a.ids, a.role.clone()).await?;
    super::aggregate::present(&report, json, &a)
}

/// The aggregation report of the agents (`given`, else all; of `role`) from the handoffs
/// the workers recorded.
pub(crate) async fn report(
    ctx: &Ctx,
    t: &Target,
    given: &[String],
    role: Option<String>,
) -> Result<crate::aggregate::Report> {
    use crate::aggregate::{self, AgentOutcome, HandoffInput, Input};
    let c = connect(t).await?;
    let ids = resolve_all(&c, t, given).await?;
    let rows = read::agents(
        &c,
        &t.workspace,
        &AgentFilter { role, hide_cleaned: ids.is_none(), ids, ..AgentFilter::default() },
    )
    .await
    .map_err(db_fail)?;
    let wanted: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let found = c
        .query(
            "SELECT DISTINCT ON (agent_id) agent_id, file, body FROM handoffs
             WHERE workspace = $1 AND agent_id = ANY($2) ORDER BY agent_id, attempt DESC",
            &[&t.workspace, &wanted],
        )
        .await
        .map_err(|e| db_fail(e.into()))?;
    let handoffs = found
        .iter()
        .map(|r| {
            let (file, body): (String, Value) = (r.get(1), r.get(2));
            let path = ctx.ws.root.join("handoffs").join(&file);
            match crate::protocol::files::parse_handoff(&body.to_string(), &path) {
                Ok(handoff) => HandoffInput::Parsed { path, handoff, modified: String::new() },
                Err(error) => HandoffInput::Unreadable { path, error },
            }
        })
        .collect();
    let agents = rows
        .iter()
        .map(|r| {
            let v = view_of(ctx, r, &Reasons::new());
            let cwd = ctx.ws.root.join(relative_cwd(&ctx.ws.root, &v.cwd));
            AgentOutcome {
                agent_id: v.agent_id,
                role: v.role,
                task: v.task,
                status: v.status,
                reason: v.reason,
                needs_human: v.needs_human,
                cwd,
            }
        })
        .collect();
    let disk = aggregate::workspace::OnDisk::new(&ctx.ws.root);
    let locate = |p: &std::path::Path| disk.locate(p);
    let input = Input {
        agents,
        handoffs,
        workspace: &ctx.ws.root,
        locate: &locate,
        human: vec![],
        branches: vec![],
        merges: vec![],
        trees: Default::default(),
    };
    Ok(aggregate::aggregate(&input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cwd_inside_the_workspace_is_kept_relative_to_it() {
        let root = std::path::Path::new("/srv/ws");
        assert_eq!(relative_cwd(root, "/srv/ws/sub/dir"), "sub/dir");
        assert_eq!(relative_cwd(root, "/srv/ws"), "");
        assert_eq!(relative_cwd(root, "/elsewhere"), "/elsewhere");
    }

    #[test]
    fn events_print_in_the_single_machine_shape_with_worker_and_fence() {
        let e = EventRow {
            seq: 3,
            at: SystemTime::UNIX_EPOCH,
            agent: Some("a1".into()),
            kind: "claimed".into(),
            data: json!({ "attempt": 1 }),
            worker: Some("w".into()),
            fence: Some(2),
        };
        let v = event_json(&e);
        assert_eq!(v["seq"], 3);
        assert_eq!(v["agentId"], "a1");
        assert_eq!(v["at"], "1970-01-01T00:00:00.000+00:00");
        assert_eq!((v["worker"].as_str(), v["fence"].as_i64()), (Some("w"), Some(2)));
        let spawned = EventRow { agent: None, worker: None, fence: None, ..e };
        let v = event_json(&spawned);
        assert!(v.get("agentId").is_none() && v.get("worker").is_none() && v.get("fence").is_none());
    }
}
