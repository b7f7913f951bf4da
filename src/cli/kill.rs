//! `corral kill ID`: TERM to the group, KILL after the grace period; waits until the
//! group is gone so the next command sees it dead.

use super::events::wait_for_kinds;
use super::{Ctx, Result};
use crate::ipc::Request;
use crate::note;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    /// Time between TERM and KILL.
    #[arg(long, default_value = "5s", value_name = "D")]
    pub grace: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let grace = crate::config::parse_duration(&a.grace).map_err(|e| super::usage(format!("--grace: {e}")))?;
    let data = ctx.call(&Request::Kill { id: a.id.clone(), grace_ms: grace.as_millis() as u64 })?;
    let status = data.get("status").and_then(|s| s.as_str()).unwrap_or_default().to_string();
    if status != "killed" {
        // Wait for the exit, bounded by the grace period plus the KILL's own delivery.
        let limit = grace + std::time::Duration::from_secs(5);
        let done = wait_for_kinds(ctx, &a.id, crate::policy::agent::AgentState::FINISHED, limit)?;
        if done.is_none() {
            return Err(super::Fail { code: 1, msg: format!("{} did not exit within {:?}", a.id, limit) });
        }
    }
    if a.json {
        super::output::print_json(&serde_json::json!({ "agentId": a.id, "status": "killed" }))?;
    } else {
        note!("{}: killed", a.id)?;
    }
    Ok(0)
}
