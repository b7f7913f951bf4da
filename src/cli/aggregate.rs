//! `corral aggregate [ID...] [--role R] [--out FILE] [--format md|json]`: the unified
//! deliverable, collected and built by `ops::collect` (as the MCP tool does), printed or
//! written. Unresolved conflicts are escalated.

use super::{Ctx, Result, usage};
use crate::aggregate;
use crate::note;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents whose handoffs to aggregate, by id, unique prefix or number (default: all).
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub ids: Vec<String>,
    /// Only agents of this role.
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
    let json = json_format(&a)?;
    let report = crate::ops::collect::aggregate(ctx.target(), &a.ids, a.role.as_deref()).map_err(super::fail)?;
    present(&report, json, &a)
}

/// Whether `a` asks for JSON; a format other than md or json is refused.
pub fn json_format(a: &Args) -> Result<bool> {
    let json = a.json || a.format == "json";
    if !json && a.format != "md" {
        return Err(usage(format!("--format {:?}: use md or json", a.format)));
    }
    Ok(json)
}

/// Prints or writes `report` as `a` asks (this workspace's, or the cluster's); exit 0 when
/// it is complete, else 1.
pub fn present(report: &aggregate::Report, json: bool, a: &Args) -> Result {
    let text = if json { serde_json::to_string_pretty(report)? + "\n" } else { aggregate::render_markdown(report) };
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
