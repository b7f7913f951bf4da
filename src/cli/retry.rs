//! `corral retry ID [--context TEXT]` and `corral tell ID TEXT`: the human's levers.

use super::{Ctx, Result};
use crate::ipc::Request;
use crate::note;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent: its id, a unique prefix of it, or its number.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// Added to the next attempt's delegation context.
    #[arg(long)]
    pub context: Option<String>,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    refuse_lost_work(ctx, &a.id)?;
    let data = ctx.call(&Request::Retry { id: a.id.clone(), context: a.context, env: vec![] })?;
    if a.json {
        super::output::print_json(&data)?;
    } else {
        let status = data["status"].as_str().unwrap_or_default();
        match data["reason"].as_str() {
            Some(r) if status == "queued" => note!("{}: new attempt queued ({r})", a.id)?,
            _ => note!("{}: new attempt {status}", a.id)?,
        }
    }
    Ok(0)
}

/// A worktree agent whose worktree was removed is continued in a worktree made again on
/// its branch; with the branch gone too there is nothing to continue, and the retry is
/// refused here (the git check runs in the command, not on the supervisor's loop).
fn refuse_lost_work(ctx: &Ctx, id: &str) -> Result<()> {
    // An id the supervisor does not know gets the retry's own answer.
    let Ok(found) = ctx.call(&Request::Status { ids: vec![id.to_string()], role: None }) else { return Ok(()) };
    let Ok(views) = serde_json::from_value::<Vec<crate::ipc::AgentView>>(found) else { return Ok(()) };
    let Some(v) = views.first() else { return Ok(()) };
    let (Some(tree), Some(branch), Some(repo)) = (&v.worktree, &v.branch, &v.repo) else { return Ok(()) };
    if v.base_commit.is_none() || std::path::Path::new(tree).is_dir() {
        return Ok(());
    }
    if crate::worktree::rev(std::path::Path::new(repo), &format!("refs/heads/{branch}")).is_some() {
        return Ok(());
    }
    Err(super::Fail {
        code: 1,
        msg: format!(
            "{}: its worktree {tree} was removed and its branch {branch} is gone from {repo}, so its work cannot be \
             continued; spawn a new agent for the task instead",
            v.agent_id
        ),
    })
}

#[derive(Debug, clap::Args)]
pub struct TellArgs {
    /// The agent: its id, a unique prefix of it, or its number.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// The message; it is appended to the agent's inbox (CORRAL_INBOX_FILE).
    pub text: String,
}

pub fn tell(ctx: &Ctx, a: TellArgs) -> Result {
    if a.text.trim().is_empty() {
        return Err(super::usage("the message is empty"));
    }
    let data = ctx.call(&Request::Tell { id: a.id.clone(), text: a.text })?;
    note!("{}: appended to {}", a.id, data["inbox"].as_str().unwrap_or_default())?;
    if data["resumed"] == true {
        note!("{}: resumed with the message (it was blocked with nobody left to unblock it)", a.id)?;
    }
    Ok(0)
}
