//! `corral handoff`: agent side. Writes the caller's handoff file (atomically), either
//! from flags or from a JSON file that is validated first.

use super::report::{agent_id, env_path};
use super::{Ctx, Result, usage};
use crate::note;
use crate::protocol::agent_side;
use crate::protocol::files::{self, Deliverables, Handoff};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A complete handoff JSON to validate and write (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A file this agent produced (repeatable).
    #[arg(long = "deliverable", value_name = "PATH")]
    pub deliverables: Vec<String>,
    /// A finding (repeatable; a JSON object is kept as a structured finding).
    #[arg(long = "finding", value_name = "X")]
    pub findings: Vec<String>,
    /// A decision made (repeatable).
    #[arg(long = "decision", value_name = "X")]
    pub decisions: Vec<String>,
    /// A lesson worth remembering for later agents (repeatable).
    #[arg(long = "memory", value_name = "X")]
    pub memory: Vec<String>,
    /// The handoff's status (default: complete).
    #[arg(long, default_value = "complete")]
    pub status: String,
    /// Leave the status file as it is (by default a handoff marks it with the handoff's
    /// status: complete, with progress 1.0).
    #[arg(long)]
    pub keep_status: bool,
    /// The agent id (default: $CORRAL_AGENT_ID).
    #[arg(long, env = "CORRAL_AGENT_ID")]
    pub agent: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let id = agent_id(a.agent)?;
    let handoff: Handoff = match &a.file {
        Some(f) => {
            let text = if f.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                files::read_named(f).map_err(usage)?
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| usage(format!("{}: not valid JSON: {e}", f.display())))?;
            agent_side::handoff_from_json(v, &id).map_err(|e| usage(format!("{}: {e}", f.display())))?
        }
        None => Handoff {
            from_agent: id.to_string(),
            to_agent: "ORCHESTRATOR".into(),
            status: a.status.clone(),
            deliverables: Deliverables {
                files: a.deliverables.clone(),
                findings: a.findings.iter().map(|x| files::text_or_json(x)).collect(),
                decisions: a.decisions.iter().map(|x| files::text_or_json(x)).collect(),
                extra: Default::default(),
            },
            memory_candidate: match a.memory.len() {
                0 => None,
                _ => Some(serde_json::Value::Array(a.memory.iter().map(|x| files::text_or_json(x)).collect())),
            },
            extra: Default::default(),
        },
    };
    let fail = |e| super::Fail { code: 1, msg: e };
    let (path, written) =
        agent_side::write_handoff(&ctx.data, &id, env_path("CORRAL_HANDOFF_FILE", &id), &handoff).map_err(fail)?;
    note!("wrote {}", path.display())?;
    if !a.keep_status
        && let Some(update) = agent_side::status_of_handoff(&written)
    {
        let role = std::env::var("CORRAL_ROLE").ok();
        agent_side::report(&ctx.data, &id, role, env_path("CORRAL_STATUS_FILE", &id), update).map_err(fail)?;
    }
    Ok(0)
}
