//! `corral report`: agent side. Merges the given fields into the caller's status file
//! (atomically) so partial updates keep what was reported before.

use super::{Ctx, Result, usage};
use crate::protocol::AgentId;
use crate::protocol::agent_side::{self, ReportUpdate};
use crate::protocol::files::{self, ReportedStatus};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// spawned, active, blocked, complete or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// 0.0 to 1.0.
    #[arg(long)]
    pub progress: Option<f64>,
    /// The phase the agent is in (free text, e.g. implementing).
    #[arg(long)]
    pub phase: Option<String>,
    /// The milestone it reached (free text).
    #[arg(long)]
    pub milestone: Option<String>,
    /// Appended to findings (a JSON object is kept as a structured finding).
    #[arg(long = "finding", value_name = "TEXT")]
    pub findings: Vec<String>,
    /// The agent id (default: $CORRAL_AGENT_ID).
    #[arg(long, env = "CORRAL_AGENT_ID")]
    pub agent: Option<String>,
}

pub fn agent_id(given: Option<String>) -> Result<AgentId> {
    let id =
        given.ok_or_else(|| usage("no agent id: run this inside an agent (CORRAL_AGENT_ID) or pass --agent ID"))?;
    AgentId::parse(&id).map_err(|e| usage(e.to_string()))
}

/// The file the environment names for this agent, when the caller is that agent.
pub fn env_path(var: &str, id: &AgentId) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|_| std::env::var("CORRAL_AGENT_ID").ok().as_deref() == Some(id.as_str()))
        .map(PathBuf::from)
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let id = agent_id(a.agent)?;
    let status = match a.status.as_deref() {
        None => None,
        Some(s) => Some(
            ReportedStatus::parse(s)
                .ok_or_else(|| usage(format!("--status {s:?}: must be one of {}", ReportedStatus::ALL)))?,
        ),
    };
    let update = ReportUpdate {
        status,
        progress: a.progress,
        phase: a.phase,
        milestone: a.milestone,
        findings: a.findings.iter().map(|f| files::text_or_json(f)).collect(),
    };
    agent_side::validate(&update).map_err(|e| usage(format!("--{e}")))?;
    let role = std::env::var("CORRAL_ROLE").ok();
    let done = agent_side::report(&ctx.data, &id, role, env_path("CORRAL_STATUS_FILE", &id), update)
        .map_err(|e| super::Fail { code: 1, msg: e })?;
    // What was lost is said, never kept quiet; what was reported is written.
    for w in done.warnings() {
        crate::elog!("corral report: {w}");
    }
    Ok(0)
}
