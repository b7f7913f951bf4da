//! `corral retry ID [--context TEXT]` and `corral tell ID TEXT`: the human's levers.

use super::{Ctx, Result};
use crate::ipc::Request;
use crate::note;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// Added to the next attempt's delegation context.
    #[arg(long)]
    pub context: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let data = ctx.call(&Request::Retry { id: a.id.clone(), context: a.context })?;
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

#[derive(Debug, clap::Args)]
pub struct TellArgs {
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
