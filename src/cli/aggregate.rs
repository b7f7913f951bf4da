//! `corral aggregate [ID...] [--role R] [--out FILE] [--format md|json]`: reads the
//! handoffs, asks the supervisor for every agent's state, and builds the unified
//! deliverable with the pure aggregation core. Unresolved conflicts are escalated.

use super::{Ctx, Fail, Result, usage};
use crate::aggregate::{self, AgentOutcome, HandoffInput, Input, Report, Resolution};
use crate::ipc::{AgentView, Request};
use crate::note;
use crate::policy::agent::Escalation;
use crate::protocol::{DataDir, files, fsio, time};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub ids: Vec<String>,
    #[arg(long)]
    pub role: Option<String>,
    /// Write the report here (atomically) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// md for people, json for tools.
    #[arg(long, default_value = "md")]
    pub format: String,
    /// Same as --format json.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let json = a.json || a.format == "json";
    if !json && a.format != "md" {
        return Err(usage(format!("--format {:?}: use md or json", a.format)));
    }
    let report = build(ctx, &a.ids, a.role.as_deref())?;
    escalate_unresolved(ctx, &report)?;
    let text = if json { serde_json::to_string_pretty(&report)? + "\n" } else { aggregate::render_markdown(&report) };
    match &a.out {
        Some(path) => {
            crate::protocol::atomic::write_atomic(path, text.as_bytes())?;
            crate::protocol::perms::user_file(path)?;
            note!("wrote {}", path.display())?;
        }
        // The Markdown is escaped where it is rendered; JSON escapes on its own.
        None => crate::display::raw_out(text.as_bytes())?,
    }
    let c = &report.counts;
    note!(
        "{} of {} agents aggregated; {} conflicts ({} unresolved); {} to do",
        c.aggregated,
        c.agents,
        c.conflicts,
        c.unresolved,
        c.todo
    )?;
    Ok(if report.complete { 0 } else { 1 })
}

/// Everything aggregation needs, read once: agents from the supervisor, handoffs from disk.
pub fn build(ctx: &Ctx, ids: &[String], role: Option<&str>) -> Result<Report> {
    let views: Vec<AgentView> =
        serde_json::from_value(ctx.call(&Request::Status { ids: ids.to_vec(), role: role.map(str::to_string) })?)?;
    let selected = !ids.is_empty() || role.is_some();
    let wanted: HashSet<&str> = views.iter().map(|v| v.agent_id.as_str()).collect();
    let handoffs = read_handoffs(&ctx.data, |owner| !selected || wanted.contains(owner));
    let agents = views
        .iter()
        .map(|v| AgentOutcome {
            agent_id: v.agent_id.clone(),
            role: v.role.clone(),
            task: v.task.clone(),
            status: v.status.clone(),
            reason: v.reason.clone(),
            needs_human: v.needs_human,
            cwd: PathBuf::from(&v.cwd),
        })
        .collect();
    let escalations: Vec<Escalation> = serde_json::from_value(ctx.call(&Request::Escalations { all: true })?)?;
    let human = aggregate::human_answers(&escalations);
    let disk = aggregate::workspace::OnDisk::new(&ctx.ws.root);
    let locate = |p: &Path| disk.locate(p);
    let input = Input { agents, handoffs, workspace: &ctx.ws.root, locate: &locate, human };
    Ok(aggregate::aggregate(&input))
}

/// Every handoff file under the data dir whose owner (from its name) passes `keep`.
fn read_handoffs(data: &DataDir, keep: impl Fn(&str) -> bool) -> Vec<HandoffInput> {
    let dir = data.handoff_dir();
    // Listed through fsio: a handoffs directory an agent replaced by a symlink is not read.
    let Ok(names) = fsio::Dir::open(data.root(), &dir).and_then(|d| d.names()) else { return vec![] };
    let mut out = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let Some(owner) = DataDir::handoff_owner(&name) else { continue };
        if !keep(owner) {
            continue;
        }
        let path = dir.join(&name);
        let modified = fsio::lstat(&path)
            .and_then(|m| m.modified().ok())
            .and_then(|m| jiff::Timestamp::try_from(m).ok())
            .map(time::rfc3339)
            .unwrap_or_default();
        out.push(match files::read_handoff(data.root(), &path) {
            Ok(handoff) => HandoffInput::Parsed { path, handoff, modified },
            Err(error) => HandoffInput::Unreadable { path, error },
        });
    }
    out
}

/// Conflicts aggregation could not settle go to the human queue, once each: a conflict a
/// human has answered is never asked about again.
pub fn escalate_unresolved(ctx: &Ctx, r: &Report) -> Result<()> {
    for c in r.conflicts.iter().filter(|c| c.resolution == Resolution::Unresolved) {
        let Some((agent, reason, conflict)) = aggregate::conflict_escalation(c) else { continue };
        match ctx.call(&Request::Escalate { id: agent, reason, conflict: Some(conflict) }) {
            Ok(_) => {}
            // An agent the supervisor does not know (a handoff from outside corral) cannot
            // carry an escalation; the conflict stays in the report either way.
            Err(Fail { code: 2, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
