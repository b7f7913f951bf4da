//! The orchestrator's tools: each one checks its arguments, sends the same request the CLI
//! command sends, and shapes the reply. Blocking (the control socket is synchronous); the
//! server runs them off its event loop.

use super::args::{self, *};
use crate::aggregate::Report;
use crate::cli::Ctx;
use crate::client::Client;
use crate::config::Workspace;
use crate::ipc::{AgentView, HealthView, Request, ShowView, SpawnReply, SpawnRequest};
use crate::memory::MemorySnapshot;
use crate::policy::agent::Escalation;
use crate::protocol::ids::{validate_id, validate_role};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Longest idempotency key: a key, not a payload.
const MAX_KEY: usize = 1024;

/// One request to the workspace's supervisor (started on demand, as the CLI does).
pub fn call<T: DeserializeOwned>(ctx: &Ctx, req: &Request) -> Result<T, String> {
    let reply =
        Client::request(&ctx.data, &ctx.ws.root, req).map_err(|e| format!("cannot reach the supervisor: {e:#}"))?;
    if !reply.ok {
        return Err(reply.error.unwrap_or_else(|| "the supervisor refused the request without a reason".into()));
    }
    reply.parse().map_err(|e| format!("unexpected reply from the supervisor: {e}"))
}

pub fn spawn(ctx: &Ctx, a: SpawnArgs) -> Result<SpawnReply, String> {
    let (req, warning) = spawn_request(ctx, a)?;
    let reply: SpawnReply = call(ctx, &Request::Spawn(Box::new(req)))?;
    Ok(SpawnReply { warning, ..reply })
}

/// The spawn `a` asks for, checked (a raw command only where the workspace allows them, a
/// role only as configured), and a warning for the caller, if any.
pub fn spawn_request(ctx: &Ctx, a: SpawnArgs) -> Result<(SpawnRequest, Option<String>), String> {
    validate_role(&a.role).map_err(|e| format!("argument `role`: {e}"))?;
    if a.task.trim().is_empty() {
        return Err("argument `task` is empty; say what the agent should do".into());
    }
    args::text("task", &a.task)?;
    args::opt_text("scope", &a.scope)?;
    args::texts("constraints", &a.constraints)?;
    args::texts("after", &a.after)?;
    for (i, x) in a.after.iter().enumerate() {
        validate_id(x).map_err(|e| format!("argument `after[{i}]`: {e}"))?;
    }
    if let Some(k) = &a.idempotency_key {
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(format!("argument `idempotency_key` must be 1 to {MAX_KEY} bytes long"));
        }
        args::text("idempotency_key", k)?;
    }
    if let Some(n) = a.max_retries {
        crate::config::check_retries(n.into()).map_err(|e| format!("argument `max_retries`: {e}"))?;
    }
    if let Some(g) = &a.group {
        crate::protocol::ids::validate_group(g).map_err(|e| format!("argument `group`: {e}"))?;
    }
    let priority = match a.priority {
        Some(n) => crate::policy::admission::check_priority(n).map_err(|e| format!("argument `priority`: {e}"))?,
        None => 0,
    };
    let delay_ms = match &a.delay {
        Some(d) => {
            Some(crate::config::parse_duration(d).map_err(|e| format!("argument `delay`: {e}"))?.as_millis() as u64)
        }
        None => None,
    };
    let timeout_ms = match &a.timeout {
        None => None,
        Some(t) => {
            let d = crate::config::parse_duration(t).map_err(|e| format!("argument `timeout`: {e}"))?;
            if d.is_zero() {
                return Err("argument `timeout` must be longer than 0s".into());
            }
            Some(d.as_millis() as u64)
        }
    };
    // The file as it is now, not as it was when the server started: the supervisor reads
    // it per request too, so both judge the role by the same configuration.
    let ws = Workspace::discover(&ctx.ws.root).map_err(|e| format!("corral.toml: {e}"))?;
    let command = match a.command {
        Some(argv) => {
            if !ws.config.mcp.allow_raw_commands {
                return Err(format!(
                    "argument `command`: raw commands are off in this workspace; spawn a role configured in \
                     corral.toml instead, or allow them with `allow_raw_commands = true` under [mcp] in {}",
                    config_path(&ws)
                ));
            }
            if argv.is_empty() {
                return Err("argument `command` is an empty argv; leave it out to run the role's template".into());
            }
            args::texts("command", &argv)?;
            argv
        }
        None => {
            check_role(&ws, &a.role)?;
            Vec::new()
        }
    };
    // A role neither configured nor in the seed's table is most likely a typo.
    let warning = ws.config.unknown_role(&a.role);
    if let Some(why) = warning.as_ref().filter(|_| ws.config.strict_roles) {
        return Err(format!("argument `role`: {why} (strict_roles = true refuses it)"));
    }
    let cwd = std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?;
    let req = SpawnRequest {
        role: a.role,
        task: a.task,
        scope: a.scope,
        constraints: a.constraints,
        id: None,
        after: a.after,
        timeout_ms,
        max_retries: a.max_retries,
        env: Vec::new(),
        caller_env: std::env::vars().collect(),
        cwd: cwd.display().to_string(),
        command,
        idempotency_key: a.idempotency_key,
        adapter: a.adapter,
        worktree: None,
        group: a.group,
        priority,
        delay_ms,
        placement: Default::default(),
    };
    Ok((req, warning))
}

fn config_path(ws: &Workspace) -> String {
    ws.config_file.as_ref().unwrap_or(&ws.root.join(crate::config::CONFIG_FILE)).display().to_string()
}

/// Only roles the workspace configures, with a command template, may be spawned: an MCP
/// client chooses what to do, never what program runs.
fn check_role(ws: &Workspace, role: &str) -> Result<(), String> {
    if !ws.config.roles.contains_key(role) {
        let known: Vec<&str> = ws.config.roles.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            format!("{} configures no roles; add [roles.{role}] with a `command`", config_path(ws))
        } else {
            format!("configured roles: {}", known.join(", "))
        };
        return Err(format!("argument `role`: role {role:?} is not configured; {hint}"));
    }
    match ws.config.role(role).0 {
        Some(c) if !c.is_empty() => match super::shell::refuse(role, &c, &config_path(ws)) {
            Some(why) if !ws.config.mcp.allow_shell_templates => Err(why),
            _ => Ok(()),
        },
        _ => Err(format!(
            "argument `role`: role {role} has no command; set `command` under [roles.{role}] or [defaults] in {}",
            config_path(ws)
        )),
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

pub fn list(ctx: &Ctx, a: ListArgs) -> Result<AgentList, String> {
    args::opt_text("role", &a.role)?;
    Ok(AgentList { agents: call(ctx, &Request::Status { ids: Vec::new(), role: a.role })? })
}

pub fn show(ctx: &Ctx, a: IdArgs) -> Result<ShowView, String> {
    args::text("id", &a.id)?;
    call(ctx, &Request::Show { id: a.id })
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KillReply {
    pub agent_id: String,
    /// The agent's state once its process group is gone.
    pub status: String,
}

pub fn kill(ctx: &Ctx, a: KillArgs) -> Result<KillReply, String> {
    args::text("id", &a.id)?;
    let grace = match &a.grace {
        None => Duration::from_secs(5),
        Some(g) => crate::config::parse_duration(g).map_err(|e| format!("argument `grace`: {e}"))?,
    };
    let k = crate::ops::kill::kill(ctx.target(), &a.id, grace, &|_| {}).map_err(|f| f.msg)?;
    Ok(KillReply { agent_id: k.agent_id, status: k.status })
}

#[derive(Debug, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryReply {
    pub agent_id: String,
    /// running, queued (with the reason), or retrying.
    pub status: String,
    pub reason: Option<String>,
}

pub fn retry(ctx: &Ctx, a: RetryArgs) -> Result<RetryReply, String> {
    args::text("id", &a.id)?;
    args::opt_text("context", &a.context)?;
    call(ctx, &Request::Retry { id: a.id, context: a.context, env: vec![] })
}

#[derive(Debug, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TellReply {
    pub agent_id: String,
    /// The inbox file the message was appended to (on the agent's worker in cluster mode);
    /// empty while it waits for one (see `waiting`).
    pub inbox: String,
    /// In cluster mode, when no worker runs the agent now: where the message waits and when
    /// it is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

pub fn tell(ctx: &Ctx, a: TellArgs) -> Result<TellReply, String> {
    args::text("id", &a.id)?;
    if a.text.trim().is_empty() {
        return Err("argument `text` is empty".into());
    }
    args::text("text", &a.text)?;
    call(ctx, &Request::Tell { id: a.id, text: a.text })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EscalationList {
    pub escalations: Vec<Escalation>,
}

pub fn escalations(ctx: &Ctx, a: EscalationsArgs) -> Result<EscalationList, String> {
    Ok(EscalationList { escalations: call(ctx, &Request::Escalations { all: a.all })? })
}

pub fn resolve(ctx: &Ctx, a: ResolveArgs) -> Result<Escalation, String> {
    args::opt_text("note", &a.note)?;
    call(ctx, &Request::Resolve { n: a.n, note: a.note, answer: Default::default() })
}

pub fn health(ctx: &Ctx) -> Result<HealthView, String> {
    call(ctx, &Request::Health)
}

pub fn memory_search(ctx: &Ctx, a: MemoryArgs) -> Result<MemorySnapshot, String> {
    args::text("query", &a.query)?;
    let all: MemorySnapshot = call(ctx, &Request::Memory)?;
    Ok(crate::memory::search(&all, &a.query))
}

/// The report `corral aggregate --format json` prints, built by the same code; unresolved
/// conflicts go to the escalation queue, as with the CLI.
pub fn aggregate(ctx: &Ctx, a: AggregateArgs) -> Result<Report, String> {
    args::texts("ids", &a.ids)?;
    args::opt_text("role", &a.role)?;
    let report = crate::ops::collect::aggregate(ctx.target(), &a.ids, a.role.as_deref()).map_err(|f| f.msg)?;
    Ok(report)
}
