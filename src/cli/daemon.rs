//! `corral daemon [--foreground] | stop | status`.

use super::output::print_json;
use super::{Ctx, Fail, Result};
use crate::client::Client;
use crate::ipc::{DaemonView, Request};
use crate::{note, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run in this process instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// Started by a command that needed a supervisor: a broken corral.toml does not stop
    /// it, it runs on the last good configuration (and refuses spawns until the file is
    /// fixed).
    #[arg(long, hide = true, requires = "foreground")]
    pub on_demand: bool,
    /// Rebuild agents the registry lacks (deleted, emptied or truncated) from the run files
    /// and spawn-registry.json, instead of refusing to start.
    #[arg(long)]
    pub rebuild: bool,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Start the supervisor in the background (commands also start it on demand).
    Start {
        /// Rebuild agents the registry lacks (deleted, emptied or truncated) from the run
        /// files and spawn-registry.json, instead of refusing to start.
        #[arg(long)]
        rebuild: bool,
        /// Run in this process instead of in the background.
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the supervisor; running agents keep running and are picked up on next start.
    Stop,
    /// Pid, socket, uptime and agents supervised.
    Status {
        /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    match a.action {
        None if a.foreground => {
            match &ctx.ws.config_error {
                Some(e) if a.on_demand => crate::elog!(
                    "corral daemon: {}; running on the last good configuration, spawns are refused until the \
                     file is fixed",
                    crate::display::escape(e)
                ),
                _ => ctx.need_config()?,
            }
            crate::supervisor::run(ctx.ws.clone(), ctx.data.clone(), a.rebuild)
                .map_err(|e| Fail { code: 1, msg: format!("{e:#}") })?;
            Ok(0)
        }
        Some(Action::Start { rebuild, foreground: true }) => {
            crate::supervisor::run(ctx.ws.clone(), ctx.data.clone(), rebuild)
                .map_err(|e| Fail { code: 1, msg: format!("{e:#}") })?;
            Ok(0)
        }
        Some(Action::Start { rebuild, foreground: false }) => {
            if Client::try_connect(&ctx.data).is_ok() {
                note!("a supervisor is already running for {}", ctx.data.root().display())?;
                return Ok(0);
            }
            Client::start(&ctx.data, &ctx.ws.root, rebuild)?;
            let v: DaemonView = serde_json::from_value(ctx.call(&Request::DaemonStatus)?)?;
            note!("supervisor running: pid {}, socket {}", v.pid, v.socket)?;
            Ok(0)
        }
        None => {
            // A start needs the configuration as it is now; a supervisor already running
            // keeps its last good one.
            if ctx.ws.config_error.is_some() && Client::try_connect(&ctx.data).is_err() {
                ctx.need_config()?;
            }
            ctx.warn_config();
            let v: DaemonView = serde_json::from_value(ctx.call(&Request::DaemonStatus)?)?;
            note!("supervisor running: pid {}, socket {}", v.pid, v.socket)?;
            Ok(0)
        }
        Some(Action::Stop) => {
            ctx.warn_config();
            let Ok(mut c) = Client::try_connect(&ctx.data) else {
                note!("no supervisor is running for {}", ctx.data.root().display())?;
                return Ok(0);
            };
            let v: DaemonView = serde_json::from_value(super::into_result(c.call(&Request::DaemonStatus)?)?)?;
            super::into_result(c.call(&Request::Stop)?)?;
            // Wait for the process to be gone so a following start cannot race it.
            if let Ok(fd) = crate::sys::pidfd_open(v.pid as i32) {
                let _ = crate::sys::wait_readable(&fd, 10_000);
            }
            note!("supervisor {} stopped; running agents keep running", v.pid)?;
            Ok(0)
        }
        Some(Action::Status { json }) => {
            ctx.warn_config();
            let Ok(mut c) = Client::try_connect(&ctx.data) else {
                if json {
                    print_json(&serde_json::json!({ "running": false, "dataDir": ctx.data.root() }))?;
                } else {
                    note!("no supervisor is running for {}", ctx.data.root().display())?;
                }
                return Ok(3);
            };
            let data = super::into_result(c.call(&Request::DaemonStatus)?)?;
            if json {
                let mut data = data;
                data["running"] = true.into();
                print_json(&data)?;
            } else {
                let v: DaemonView = serde_json::from_value(data)?;
                say!(
                    "supervisor pid {}  socket {}  up {:.0}s  supervising {} of {} agents",
                    v.pid,
                    v.socket,
                    v.uptime_seconds,
                    v.agents_supervised,
                    v.agents_total
                )?;
            }
            Ok(0)
        }
    }
}
