//! `corral escalations [--all] [--json]` and `corral escalations resolve N [--note TEXT]`.

use super::output::print_json;
use super::{Ctx, Result};
use crate::ipc::Request;
use crate::policy::agent::Escalation;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Include resolved escalations.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Close escalation N, recording the human's answer.
    Resolve {
        n: u64,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    match a.action {
        Some(Action::Resolve { n, note, json }) => {
            let data = ctx.call(&Request::Resolve { n, note })?;
            if json {
                print_json(&data)?;
            } else {
                eprintln!("escalation {n} resolved");
            }
            Ok(0)
        }
        None => {
            let data = ctx.call(&Request::Escalations { all: a.all })?;
            if a.json {
                print_json(&data)?;
                return Ok(0);
            }
            let list: Vec<Escalation> = serde_json::from_value(data)?;
            if list.is_empty() {
                eprintln!("no open escalations");
            }
            for e in list {
                let state = match &e.resolved_at {
                    None => "OPEN".to_string(),
                    Some(t) => format!("resolved {t}{}", e.note.map(|n| format!(": {n}")).unwrap_or_default()),
                };
                println!("#{:<4} {}  {}  {}\n      {}", e.n, e.agent_id, e.opened_at, state, e.reason);
            }
            Ok(0)
        }
    }
}
