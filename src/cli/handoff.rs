//! `corral handoff`: agent side. Writes the caller's handoff file (atomically), either
//! from flags or from a JSON file that is validated first.

use super::report::agent_id;
use super::{Ctx, Result, usage};
use crate::protocol::files::{self, Deliverables, Handoff};
use crate::protocol::{atomic, time};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A complete handoff JSON to validate and write (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A file this agent produced (repeatable).
    #[arg(long = "deliverable", value_name = "PATH")]
    pub deliverables: Vec<String>,
    #[arg(long = "finding", value_name = "X")]
    pub findings: Vec<String>,
    #[arg(long = "decision", value_name = "X")]
    pub decisions: Vec<String>,
    #[arg(long = "memory", value_name = "X")]
    pub memory: Vec<String>,
    /// The handoff's status (default: complete).
    #[arg(long, default_value = "complete")]
    pub status: String,
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
                files::read_bounded(f).map_err(usage)?
            };
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| usage(format!("{}: not valid JSON: {e}", f.display())))?;
            if let Some(o) = v.as_object_mut() {
                o.entry("fromAgent").or_insert_with(|| id.to_string().into());
            }
            files::validate_handoff_value(&v).map_err(|e| usage(format!("{}: {e}", f.display())))?;
            serde_json::from_value(v).map_err(|e| usage(format!("{}: {e}", f.display())))?
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
    if handoff.from_agent != id.as_str() {
        return Err(usage(format!("fromAgent {:?} is not the caller {id}", handoff.from_agent)));
    }
    let path = std::env::var_os("CORRAL_HANDOFF_FILE")
        .filter(|_| std::env::var("CORRAL_AGENT_ID").ok().as_deref() == Some(id.as_str()))
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.data.handoff_file(&id, &time::compact(time::now())));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    atomic::write_json_atomic(&path, &handoff)?;
    eprintln!("wrote {}", path.display());
    Ok(0)
}
