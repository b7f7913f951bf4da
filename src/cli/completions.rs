//! `corral completions bash|zsh|fish|elvish|powershell` and `corral man`: generated from the
//! CLI definition, so they never drift from it. The completion script is a small
//! registration that asks `corral` itself for every completion (`COMPLETE=<shell>`), so it
//! offers the commands and flags of the binary on PATH and the live agent ids of the
//! workspace the shell is in.

use super::{Cli, Result};
use crate::ipc::{AgentView, Request};
use clap::CommandFactory;
use clap_complete::CompletionCandidate;
use clap_complete::env::{EnvCompleter, Shells};

/// The variable the registration sets when it asks for completions.
pub const VAR: &str = "COMPLETE";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to write the completion script for.
    pub shell: clap_complete::Shell,
}

pub fn completions(a: Args) -> Result {
    let name = a.shell.to_string();
    let shells = Shells::builtins();
    let shell: &dyn EnvCompleter =
        shells.completer(&name).ok_or_else(|| super::usage(format!("no completion support for {name}")))?;
    let mut out = std::io::stdout().lock();
    shell.write_registration(VAR, "corral", "corral", "corral", &mut out)?;
    Ok(0)
}

/// Answers a completion request from the shell (the registration sets `COMPLETE`) and
/// exits; returns at once otherwise.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command).var(VAR).complete();
}

/// The agent ids of the workspace here, each with its task as the help: asked of the
/// supervisor (started on demand, as for `corral status`); none where there is no
/// workspace or the supervisor cannot answer.
pub fn agent_ids() -> Vec<CompletionCandidate> {
    let Ok(ctx) = super::Ctx::resolve(std::env::var_os("CORRAL_DATA_DIR").map(Into::into)) else {
        return Vec::new();
    };
    if ctx.require_workspace().is_err() {
        return Vec::new();
    }
    let Ok(raw) = ctx.call_raw(&Request::Status { ids: Vec::new(), role: None }) else {
        return Vec::new();
    };
    let views: Vec<AgentView> = serde_json::from_str(&raw).unwrap_or_default();
    views
        .into_iter()
        .map(|v| {
            let task = crate::display::clip(v.task.lines().next().unwrap_or(""), 60);
            CompletionCandidate::new(v.agent_id).help(Some(task.into()))
        })
        .collect()
}

pub fn man() -> Result {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(0)
}
