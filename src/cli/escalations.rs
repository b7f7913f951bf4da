//! `corral escalations [--all] [--json]` and `corral escalations resolve N [--note TEXT]
//! [--choose VALUE | --winner AGENT] [--retry]`.

use super::output::print_json;
use super::{Ctx, Result};
use crate::ipc::Request;
use crate::policy::agent::Escalation;
use crate::policy::escalation::Answer;
use crate::{note, say_to};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Include resolved escalations.
    #[arg(long)]
    pub all: bool,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Close escalation N, recording the human's answer.
    Resolve {
        /// The escalation's number (as `corral escalations` lists it).
        n: u64,
        /// The human's answer in words; kept with the escalation and shown by `aggregate`.
        #[arg(long)]
        note: Option<String>,
        /// For a conflict: the value that settles it (JSON, or else taken as text).
        #[arg(long, value_name = "VALUE", conflicts_with = "winner")]
        choose: Option<String>,
        /// For a conflict: the agent whose position settles it.
        #[arg(long, value_name = "AGENT")]
        winner: Option<String>,
        /// For an agent's escalation: run the agent again, with a fresh retry budget
        /// (without it the agent stays failed).
        #[arg(long)]
        retry: bool,
        /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `--choose 8080` is the number 8080 and `--choose '"8080"'` the text; anything that is
/// not JSON is text.
fn choice(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    match a.action {
        Some(Action::Resolve { n, note, choose, winner, retry, json }) => {
            let answer = Answer { choose: choose.as_deref().map(choice), winner, retry };
            let data = ctx.call(&Request::Resolve { n, note, answer })?;
            if json {
                print_json(&data)?;
            } else {
                let e: Escalation = serde_json::from_value(data)?;
                note!("escalation {n} resolved: {}", e.outcome.as_deref().unwrap_or("recorded"))?;
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
                note!("no open escalations")?;
            }
            lines(&list, &mut std::io::stdout().lock())?;
            Ok(0)
        }
    }
}

/// What `corral escalations` prints: per escalation its number, what it is about, when it
/// opened and its state, then its reason and outcome, each on its own line.
pub fn lines(list: &[Escalation], out: &mut impl std::io::Write) -> std::io::Result<()> {
    for e in list {
        let state = match &e.resolved_at {
            None => "OPEN".to_string(),
            Some(t) => format!("resolved {t}{}", e.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()),
        };
        let about = match &e.conflict {
            Some(c) => format!("conflict on {} between {}", c.key, c.agents.join(", ")),
            None => e.agent_id.to_string(),
        };
        say_to!(out, "#{:<4} {}  {}  {}", e.n, about, e.opened_at, state)?;
        say_to!(out, "      {}", e.reason)?;
        if let Some(o) = &e.outcome {
            say_to!(out, "      -> {o}")?;
        }
    }
    Ok(())
}
