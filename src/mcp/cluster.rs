//! The orchestrator's tools in cluster mode: the same arguments, checks and replies as on
//! one machine, carried out by SQL against the cluster's database (the operations of
//! `cli::cluster`, which the CLI runs too). An orchestrator agent on a worker, or anyone
//! with the database's URL, spawns and waits cluster-wide.

use super::args::*;
use super::orchestrator::{self, AgentList, EscalationList, KillReply, RetryReply, TellReply};
use super::wait::WaitReply;
use crate::aggregate::Report;
use crate::cli::Ctx;
use crate::cli::cluster::{self as ops, Target};
use crate::ipc::{AgentView, HealthView, ShowFiles, ShowView, SpawnReply};
use crate::memory::MemorySnapshot;
use crate::policy::agent::Escalation;
use crate::store::EventRecord;
use std::time::Duration;

/// Runs one operation on a runtime of its own (the tools run on blocking threads).
fn run<T>(f: impl std::future::Future<Output = crate::cli::Result<T>>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the database: {e}"))?;
    rt.block_on(f).map_err(|f| f.msg)
}

pub fn spawn(ctx: &Ctx, t: &Target, a: SpawnArgs) -> Result<SpawnReply, String> {
    let (req, warning) = orchestrator::spawn_request(ctx, a)?;
    let got = run(ops::enqueue(ctx, t, req))?;
    Ok(SpawnReply {
        agent_id: got.id,
        status: "queued".into(),
        pid: None,
        reason: Some(if got.created {
            "waiting for a worker to claim it".into()
        } else {
            "spawned before with this idempotency key; nothing new was queued".into()
        }),
        warning,
    })
}

pub fn list(ctx: &Ctx, t: &Target, a: ListArgs) -> Result<AgentList, String> {
    opt_text("role", &a.role)?;
    Ok(AgentList { agents: run(ops::views(ctx, t, &[], a.role))? })
}

/// The agent in the single-machine shape: its attempts on every worker (read from its
/// events), its events, its newest handoff's name. Its files are on its worker's disk, so
/// their paths are left empty.
pub fn show(ctx: &Ctx, t: &Target, a: IdArgs) -> Result<ShowView, String> {
    text("id", &a.id)?;
    let (agent, all) = run(ops::shown(ctx, t, &a.id))?;
    let strings = |k: &str| -> Vec<String> {
        all[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    // The attempts as each supervisor saw them, from the events its worker mirrored.
    let attempts = crate::cluster::read::attempts(all["events"].as_array().into_iter().flatten().map(|e| {
        (e["kind"].as_str().unwrap_or_default(), e["at"].as_str().unwrap_or_default().to_string(), &e["data"])
    }));
    let events = all["events"]
        .as_array()
        .map(|xs| xs.iter().filter_map(|e| serde_json::from_value::<EventRecord>(e.clone()).ok()).collect())
        .unwrap_or_default();
    let handoffs = all["handoff"]["file"].as_str().map(|f| vec![f.to_string()]).unwrap_or_default();
    let empty = String::new;
    Ok(ShowView {
        agent,
        scope: all["scope"].as_str().map(str::to_string),
        constraints: strings("constraints"),
        after: strings("after"),
        command: strings("command"),
        attempts,
        findings: Vec::new(),
        files: ShowFiles { status_file: empty(), log_file: empty(), context_file: empty(), expected_handoff: empty() },
        handoffs,
        events,
    })
}

pub fn kill(t: &Target, a: KillArgs) -> Result<KillReply, String> {
    text("id", &a.id)?;
    let grace = match &a.grace {
        None => Duration::from_secs(5),
        Some(g) => crate::config::parse_duration(g).map_err(|e| format!("argument `grace`: {e}"))?,
    };
    let (agent_id, status) = run(ops::kill_agent(t, &a.id, grace))?;
    Ok(KillReply { agent_id, status })
}

pub fn retry(t: &Target, a: RetryArgs) -> Result<RetryReply, String> {
    text("id", &a.id)?;
    opt_text("context", &a.context)?;
    let data = run(ops::retry_agent(t, &a.id, a.context.as_deref()))?;
    serde_json::from_value(data).map_err(|e| format!("unexpected answer from the worker: {e}"))
}

pub fn tell(t: &Target, a: TellArgs) -> Result<TellReply, String> {
    text("id", &a.id)?;
    text("text", &a.text)?;
    let told = run(ops::tell_agent(t, &a.id, &a.text))?;
    // Not yet on any worker's disk: the reply says where it waits.
    let waiting = told.inbox.is_none().then(|| told.said.join("; "));
    Ok(TellReply { agent_id: told.id, inbox: told.inbox.unwrap_or_default(), waiting })
}

pub fn escalations(t: &Target, a: EscalationsArgs) -> Result<EscalationList, String> {
    let list = run(async {
        let c = crate::cli::cluster::connect(t).await?;
        crate::cli::cluster_reads::escalations(&c, &t.workspace, a.all).await.map_err(crate::cli::cluster::db_fail)
    })?;
    Ok(EscalationList { escalations: list })
}

pub fn resolve(t: &Target, a: ResolveArgs) -> Result<Escalation, String> {
    opt_text("note", &a.note)?;
    run(async {
        let mut c = crate::cli::cluster::connect(t).await?;
        crate::cli::cluster_reads::resolve(&mut c, t, a.n, a.note, false).await
    })
}

pub fn health(ctx: &Ctx, t: &Target) -> Result<HealthView, String> {
    run(async {
        let c = crate::cli::cluster::connect(t).await?;
        let s = crate::cli::cluster_reads::snapshot(ctx, t, &c).await.map_err(crate::cli::cluster::db_fail)?;
        Ok(s.health)
    })
}

pub fn memory_search(ctx: &Ctx, t: &Target, a: MemoryArgs) -> Result<MemorySnapshot, String> {
    text("query", &a.query)?;
    let all = run(crate::cli::cluster_memory::snapshot(ctx, t))?;
    Ok(crate::memory::search(&all, &a.query))
}

pub fn aggregate(ctx: &Ctx, t: &Target, a: AggregateArgs) -> Result<Report, String> {
    texts("ids", &a.ids)?;
    opt_text("role", &a.role)?;
    run(ops::report(ctx, t, &a.ids, a.role))
}

/// As `wait::wait`, on the cluster's notifications.
pub fn wait(
    ctx: &Ctx,
    t: &Target,
    a: WaitArgs,
    limit: Duration,
    cancelled: impl Fn() -> bool,
    progress: impl Fn(usize, usize, Option<&AgentView>),
) -> Result<WaitReply, String> {
    texts("ids", &a.ids)?;
    opt_text("role", &a.role)?;
    let ids = if a.all { Vec::new() } else { a.ids };
    let mut face = super::wait::Face::new(cancelled, progress);
    let w = run(ops::wait_agents(ctx, t, &ids, a.role, Some(limit), &mut face))?;
    Ok(super::wait::reply(w))
}
