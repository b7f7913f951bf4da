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

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (e.g. `spawn`, `daemon stop`); none: corral(1).
    #[arg(value_name = "SUB", num_args = 0..)]
    pub sub: Vec<String>,
}

/// The page of `path` (subcommand names, outermost first) as roff: corral-spawn(1) for
/// `["spawn"]`, corral-daemon-stop(1) for `["daemon", "stop"]`.
pub fn page(path: &[String]) -> std::result::Result<Vec<u8>, String> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut name = "corral".to_string();
    for p in path {
        let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
        let Some(sub) = cmd.find_subcommand(p).cloned() else {
            return Err(format!(
                "no subcommand {p:?} of `{}`; there are: {}",
                name.replace('-', " "),
                names.join(", ")
            ));
        };
        name = format!("{name}-{}", sub.get_name());
        cmd = sub;
    }
    // Printed once by a process that then exits: leaking the names is what clap's
    // `&'static str` names ask for without its `string` feature.
    let bin: &'static str = name.replace('-', " ").leak();
    let cmd = cmd.name(&*name.leak()).bin_name(bin);
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn man(a: ManArgs) -> Result {
    let roff = page(&a.sub).map_err(super::usage)?;
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        // Formatted by man(1) when it is there; the roff itself otherwise.
        let shown =
            std::process::Command::new("man").args(["-l", "-"]).stdin(std::process::Stdio::piped()).spawn().and_then(
                |mut c| {
                    if let Some(mut i) = c.stdin.take() {
                        std::io::Write::write_all(&mut i, &roff)?;
                    }
                    c.wait()
                },
            );
        if shown.is_ok_and(|s| s.success()) {
            return Ok(0);
        }
    }
    crate::display::raw_out(&roff)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, as its path of names, with the command itself.
    fn all(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            all(sub, p, out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_says_what_it_is_and_has_its_page() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut cmds = Vec::new();
        all(&cmd, Vec::new(), &mut cmds);
        let mut missing = Vec::new();
        for (path, c) in &cmds {
            let name = format!("corral {}", path.join(" "));
            if !path.is_empty() && c.get_about().is_none() {
                missing.push(format!("{name}: no description"));
            }
            for a in c.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{name}: {} has no description", a.get_id()));
                }
            }
            let page = String::from_utf8(page(path).unwrap()).unwrap();
            let title = std::iter::once("corral").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-");
            assert!(page.contains(&format!(".TH {title} 1")), "{name}: {}", &page[..200.min(page.len())]);
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        assert!(cmds.len() > 25, "{} commands", cmds.len());
        assert!(page(&["nope".to_string()]).unwrap_err().contains("there are: "));
    }
}
