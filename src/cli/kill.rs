//! `corral kill ID`: TERM to the group, KILL after the grace period; waits until the
//! group is gone so the next command sees it dead.

use super::{Ctx, Result};
use crate::note;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent: its id, a unique prefix of it, or its number.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// Time between TERM and KILL.
    #[arg(long, default_value = "5s", value_name = "D")]
    pub grace: String,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let grace = crate::config::parse_duration(&a.grace).map_err(|e| super::usage(format!("--grace: {e}")))?;
    let say = |m: &str| {
        let _ = note!("corral kill: {m}");
    };
    let k = crate::ops::kill::kill(ctx.target(), &a.id, grace, &say).map_err(super::fail)?;
    if a.json {
        super::output::print_json(&serde_json::json!({ "agentId": k.agent_id, "status": k.status }))?;
    } else {
        note!("{}: {}", k.agent_id, k.status)?;
    }
    Ok(0)
}
