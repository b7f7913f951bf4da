//! `corral report`: agent side. Merges the given fields into the caller's status file
//! (atomically) so partial updates keep what was reported before.

use super::{Ctx, Result, usage};
use crate::protocol::files::{self, ReportedStatus, StatusFile};
use crate::protocol::{AgentId, atomic, time};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// spawned, active, blocked, complete or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// 0.0 to 1.0.
    #[arg(long)]
    pub progress: Option<f64>,
    #[arg(long)]
    pub phase: Option<String>,
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

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let id = agent_id(a.agent)?;
    let status = match a.status.as_deref() {
        None => None,
        Some(s) => Some(
            ReportedStatus::parse(s)
                .ok_or_else(|| usage(format!("--status {s:?}: must be one of {}", ReportedStatus::ALL)))?,
        ),
    };
    if let Some(p) = a.progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(usage(format!("--progress {p}: must be between 0.0 and 1.0")));
    }
    let path = std::env::var_os("CORRAL_STATUS_FILE")
        .filter(|_| std::env::var("CORRAL_AGENT_ID").ok().as_deref() == Some(id.as_str()))
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.data.status_file(&id));
    // Start from what is there when it is readable; a broken file is replaced whole.
    let mut s = files::read_status(&path).ok().filter(|s| s.agent_id == id.as_str()).unwrap_or(StatusFile {
        agent_id: id.to_string(),
        role: std::env::var("CORRAL_ROLE").ok(),
        status: ReportedStatus::Active,
        progress: None,
        phase: None,
        milestone: None,
        last_update: None,
        findings: Vec::new(),
        extra: Default::default(),
    });
    if s.role.is_none() {
        s.role = std::env::var("CORRAL_ROLE").ok();
    }
    if let Some(st) = status {
        s.status = st;
    }
    if a.progress.is_some() {
        s.progress = a.progress;
    }
    if a.phase.is_some() {
        s.phase = a.phase;
    }
    if a.milestone.is_some() {
        s.milestone = a.milestone;
    }
    s.findings.extend(a.findings.iter().map(|f| files::text_or_json(f)));
    s.last_update = Some(time::rfc3339(time::now()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    atomic::write_json_atomic(&path, &s)?;
    Ok(0)
}
