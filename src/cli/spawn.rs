//! `corral spawn`: validates everything it can before contacting the supervisor, so bad
//! input writes nothing; prints only the agent id on stdout.

use super::{Ctx, Result, into_result, usage};
use crate::ipc::{Request, SpawnReply, SpawnRequest};
use crate::protocol::ids::{validate_id, validate_role};
use crate::{note, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Role (policy name), e.g. PLANNER, IMPLEMENTER.
    #[arg(long)]
    pub role: String,
    /// What the agent should do.
    #[arg(long)]
    pub task: String,
    /// What the agent may touch (files, modules); goes into its delegation context.
    #[arg(long)]
    pub scope: Option<String>,
    /// A constraint the agent must keep (repeatable); goes into its delegation context.
    #[arg(long = "constraint", value_name = "C")]
    pub constraints: Vec<String>,
    /// Use this id instead of agent-<NNN>-<ROLE>.
    #[arg(long)]
    pub id: Option<String>,
    /// Start only after this agent completes (repeatable).
    #[arg(long = "after", value_name = "ID")]
    pub after: Vec<String>,
    /// Attempt timeout, e.g. 90s, 15m (default: the role's).
    #[arg(long, value_name = "D")]
    pub timeout: Option<String>,
    /// Retries after the first attempt (overrides the role's max_retries).
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Extra environment for the agent (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of the agent (default: the current directory).
    #[arg(long)]
    pub cwd: Option<std::path::PathBuf>,
    /// A repeated spawn with the same key prints the first one's id instead of spawning
    /// again (for scripts that retry).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How the command's output is read: claude-code, codex or none (default: the
    /// role's `adapter`, else from the program name).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(crate::adapter::Adapter::NAMES))]
    pub adapter: Option<String>,
    /// Run the agent in its own git worktree on branch corral/<id> (over the role's `isolation`).
    #[arg(long, conflicts_with = "no_worktree")]
    pub worktree: bool,
    /// Run the agent in its cwd even where the role says `isolation = "worktree"`.
    #[arg(long)]
    pub no_worktree: bool,
    /// Admission group: at most `[groups.G] max_concurrent` (or `corral parallel N --group G`)
    /// of its agents run at once (default: the role's `group`; an unconfigured group has no
    /// limit of its own).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Among queued agents that may start, higher priorities start first (ties in spawn
    /// order): -1000 to 1000, default 0.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Do not start before this long after the spawn, e.g. 10m, 2h (the agent waits queued;
    /// the time is kept, so a supervisor restart does not shorten or restart it).
    #[arg(long, value_name = "D")]
    pub delay: Option<String>,
    /// In cluster mode: run only on a worker whose labels include KEY=VALUE (repeatable;
    /// over the role's `placement`). `true`/`false` and whole numbers compare as such.
    #[arg(long = "on", value_name = "KEY=VALUE")]
    pub on: Vec<String>,
    /// The command and its arguments (default: the role's `command` template).
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    if !a.on.is_empty() {
        crate::elog!(
            "warning: --on chooses among cluster workers; with no database (CORRAL_DATABASE_URL or [cluster] \
             database) the agent runs on this machine"
        );
    }
    let req = request(ctx, a)?;
    let reply = into_result(ctx.request(&Request::Spawn(Box::new(req)))?)?;
    let r: SpawnReply = serde_json::from_value(reply)?;
    say!("{}", r.agent_id)?;
    match r.status.as_str() {
        "running" | "complete" | "retrying" | "stopping" => Ok(0),
        "queued" => {
            note!("{}: queued ({})", r.agent_id, r.reason.unwrap_or_default())?;
            Ok(0)
        }
        other => {
            note!("{}: {other}: {}", r.agent_id, r.reason.unwrap_or_default())?;
            Ok(1)
        }
    }
}

/// The request the command line asks for, every part of it checked (nothing is written).
pub fn request(ctx: &Ctx, a: Args) -> Result<SpawnRequest> {
    validate_role(&a.role).map_err(|e| usage(format!("--role: {e}")))?;
    if a.task.trim().is_empty() {
        return Err(usage("--task is empty; say what the agent should do"));
    }
    if let Some(id) = &a.id {
        validate_id(id).map_err(|e| usage(format!("--id: {e}")))?;
    }
    for x in &a.after {
        validate_id(x).map_err(|e| usage(format!("--after: {e}")))?;
    }
    if let Some(n) = a.max_retries {
        crate::config::check_retries(n.into()).map_err(|e| usage(format!("--max-retries: {e}")))?;
    }
    if let Some(g) = &a.group {
        crate::protocol::ids::validate_group(g).map_err(|e| usage(format!("--group: {e}")))?;
    }
    let priority = match a.priority {
        Some(n) => crate::policy::admission::check_priority(n).map_err(|e| usage(format!("--priority: {e}")))?,
        None => 0,
    };
    let delay_ms = match &a.delay {
        Some(d) => {
            Some(crate::config::parse_duration(d).map_err(|e| usage(format!("--delay: {e}")))?.as_millis() as u64)
        }
        None => None,
    };
    // A role neither configured nor in the seed's table is most likely a typo.
    if let Some(why) = ctx.ws.config.unknown_role(&a.role) {
        if ctx.ws.config.strict_roles {
            return Err(usage(format!("--role: {why} (strict_roles = true refuses it)")));
        }
        crate::elog!("warning: {why}");
    }
    let timeout_ms = match &a.timeout {
        Some(t) => {
            let d = crate::config::parse_duration(t).map_err(|e| usage(format!("--timeout: {e}")))?;
            if d.is_zero() {
                return Err(usage("--timeout must be longer than 0s"));
            }
            Some(d.as_millis() as u64)
        }
        None => None,
    };
    let mut env = Vec::new();
    for kv in &a.env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
                env.push((k.to_string(), v.to_string()))
            }
            _ => return Err(usage(format!("--env {kv:?}: expected KEY=VALUE"))),
        }
    }
    let mut placement = std::collections::BTreeMap::new();
    for kv in &a.on {
        let (k, v) = crate::config::parse_label(kv).map_err(|e| usage(format!("--on {e}")))?;
        placement.insert(k, v);
    }
    let cwd = std::env::current_dir()?;
    let cwd = match a.cwd {
        Some(c) => {
            let c = if c.is_absolute() { c } else { cwd.join(c) };
            if !c.is_dir() {
                return Err(usage(format!("--cwd {}: no such directory", c.display())));
            }
            c
        }
        None => cwd,
    };
    let req = SpawnRequest {
        role: a.role,
        task: a.task,
        scope: a.scope,
        constraints: a.constraints,
        id: a.id,
        after: a.after,
        timeout_ms,
        max_retries: a.max_retries,
        env,
        caller_env: std::env::vars().collect(),
        cwd: cwd.display().to_string(),
        command: a.command,
        idempotency_key: a.idempotency_key,
        adapter: a.adapter,
        worktree: if a.worktree {
            Some(true)
        } else if a.no_worktree {
            Some(false)
        } else {
            None
        },
        group: a.group,
        priority,
        delay_ms,
        placement,
    };
    Ok(req)
}
