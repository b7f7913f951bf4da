//! The command line: argument definitions and one module per command. Commands parse and
//! print; they send requests to the supervisor and never touch the registry themselves.

pub mod aggregate;
pub mod capacity;
pub mod clean;
pub mod cluster;
pub mod cluster_memory;
pub mod cluster_reads;
pub mod cluster_timeline;
pub mod completions;
pub mod daemon;
pub mod demo;
pub mod escalations;
pub mod events;
pub mod handoff;
pub mod health;
pub mod init;
pub mod kill;
pub mod logs;
pub mod mcp;
pub mod memory;
pub mod merge;
pub mod monitor;
pub mod output;
pub mod report;
pub mod retry;
pub mod show;
#[cfg(test)]
mod snapshots;
pub mod spawn;
pub mod status;
pub mod timeline;
pub mod wait;
pub mod worker;

use crate::client::Client;
use crate::config::Workspace;
use crate::ipc::{Reply, Request};
use crate::protocol::DataDir;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "corral", version, about = "Spawn, supervise, retry and aggregate many asynchronous agents")]
pub struct Cli {
    /// Data directory (default: `data_dir` from corral.toml, else .corral in the workspace).
    #[arg(long, global = true, env = "CORRAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

/// `spawn` and `report` run by the thousand (scripts starting swarms, agents reporting), and
/// clap builds its definition of every command before parsing any, a third of a millisecond.
/// These two are parsed with a definition that holds only them; anything other than a plain
/// use of them (help, a mistake) is parsed again with the whole one, so every message is the
/// same.
#[derive(Debug, Parser)]
#[command(name = "corral")]
struct Frequent {
    /// As `Cli::data_dir`.
    #[arg(long, global = true, env = "CORRAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: FrequentCmd,
}

#[derive(Debug, Subcommand)]
// Made once per process, and moved straight into `Cmd`: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum FrequentCmd {
    Spawn(spawn::Args),
    Report(report::Args),
}

impl Cli {
    /// The command line of this process.
    pub fn from_env() -> Self {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if matches!(args.get(1).and_then(|a| a.to_str()), Some("spawn" | "report"))
            && let Ok(f) = Frequent::try_parse_from(&args)
        {
            let command = match f.command {
                FrequentCmd::Spawn(a) => Cmd::Spawn(a),
                FrequentCmd::Report(a) => Cmd::Report(a),
            };
            return Self { data_dir: f.data_dir, command };
        }
        Self::parse_from(args)
    }
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per invocation; boxing buys nothing
pub enum Cmd {
    /// A self-contained run of scripted agents in a temp workspace: see it work.
    Demo(demo::Args),
    /// Write corral.toml with the seed's role table and create the data dir.
    Init(init::Args),
    /// Record an agent and start it (or queue it); prints only its id on stdout.
    Spawn(spawn::Args),
    /// One line per agent: status, progress, phase/milestone, age, attempt, anomalies.
    Status(status::Args),
    /// Everything about one agent: record, attempts, findings, events.
    Show(show::Args),
    /// An agent's output; -f follows it until the agent finishes.
    Logs(logs::Args),
    /// TERM to the agent's whole process group, KILL after the grace period.
    Kill(kill::Args),
    /// A new attempt now, optionally with added context (the human's lever).
    Retry(retry::Args),
    /// Append a message to the agent's inbox (CORRAL_INBOX_FILE).
    Tell(retry::TellArgs),
    /// List open escalations; `resolve N --note TEXT` closes one.
    Escalations(escalations::Args),
    /// Capacity, queue, circuit breaker, resources: why spawning is held.
    Health(health::Args),
    /// How many agents (of a group) may run at once, changed now and kept over corral.toml.
    Parallel(capacity::ParallelArgs),
    /// Hold the admission of queued agents (of a group); running agents go on.
    Pause(capacity::PauseArgs),
    /// Release what `corral pause` held: queued agents start again, by priority.
    Resume(capacity::ResumeArgs),
    /// Block until agents finish, printing each as it finishes (exit 0 all complete, 1 not, 124 timeout).
    Wait(wait::Args),
    /// Collect handoffs into one deliverable: merged findings, conflicts resolved by evidence.
    Aggregate(aggregate::Args),
    /// Integrate complete worktree agents' branches one at a time, verifying after each.
    Merge(merge::Args),
    /// Take finished agents out of the views (history stays); --worktrees removes their worktrees.
    Clean(clean::Args),
    /// Learned memory and failure patterns; export for the MCP memory server.
    Memory(memory::Args),
    /// Model Context Protocol server on stdio: the orchestrator's and the agent's tools.
    Mcp(mcp::Args),
    /// Live terminal dashboard: agents, progress, anomalies, health, escalations.
    Monitor(monitor::Args),
    /// Agent side: update the caller's status file.
    Report(report::Args),
    /// Agent side: write the caller's handoff.
    Handoff(handoff::Args),
    /// The event log as JSON lines; -f follows it.
    Events(events::Args),
    /// A picture of the run (SVG, or HTML with --out FILE.html): one row per agent, attempts coloured by outcome.
    Timeline(timeline::Args),
    /// The supervisor: start it, stop it, or ask how it is.
    Daemon(daemon::Args),
    /// This machine's worker in a cluster: claims queued agents from PostgreSQL and runs them.
    Worker(worker::Args),
    /// Shell completions for bash, zsh, fish, elvish or powershell.
    Completions(completions::Args),
    /// A manual page: corral(1), or with SUB the subcommand's corral-SUB(1); formatted
    /// when stdout is a terminal, roff otherwise (`corral man spawn | man -l -`).
    Man(completions::ManArgs),
}

impl Cmd {
    /// Commands that only look: in a directory with no workspace they create nothing and
    /// start nothing.
    fn only_reads(&self) -> bool {
        match self {
            Cmd::Status(_) | Cmd::Show(_) | Cmd::Logs(_) | Cmd::Events(_) | Cmd::Wait(_) | Cmd::Health(_) => true,
            Cmd::Monitor(_) | Cmd::Timeline(_) => true,
            Cmd::Escalations(a) => a.action.is_none(),
            _ => false,
        }
    }
}

/// A failure with the exit code it deserves (2: bad input, 1: the operation failed).
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub msg: String,
}

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail { code: 1, msg: format!("{e:#}") }
    }
}

/// A client operation's failure, with its exit code.
pub fn fail(f: crate::ops::Failure) -> Fail {
    Fail { code: f.code, msg: f.msg }
}

pub fn usage(msg: impl Into<String>) -> Fail {
    Fail { code: 2, msg: msg.into() }
}

pub type Result<T = i32> = std::result::Result<T, Fail>;

/// Where this invocation works: the workspace and its data dir.
pub struct Ctx {
    pub ws: Workspace,
    pub data: DataDir,
}

impl Ctx {
    pub fn resolve(data_dir: Option<PathBuf>) -> Result<Self> {
        let cwd = std::env::current_dir().map_err(|e| Fail { code: 1, msg: format!("no working directory: {e}") })?;
        let flag = data_dir.map(|d| if d.is_absolute() { d } else { cwd.join(d) });
        let ws = Workspace::discover_tolerant(&cwd, flag.as_deref());
        let data = flag.unwrap_or_else(|| ws.data_dir());
        Ok(Self { ws, data: DataDir::new(data) })
    }

    /// Fails (exit 1, creating nothing) when there is no workspace here: no corral.toml in
    /// this directory or above, and no data dir. There is nothing to read then, and no
    /// supervisor to start.
    pub fn require_workspace(&self) -> Result<()> {
        if self.ws.config_file.is_some() || crate::protocol::fsio::lstat(self.data.root()).is_some() {
            return Ok(());
        }
        Err(Fail {
            code: 1,
            msg: format!(
                "no corral workspace here (looked for {} in {} and above, and for the data dir {}); nothing to \
                 show. `corral init` makes one; `corral spawn` starts one",
                crate::config::CONFIG_FILE,
                self.ws.root.display(),
                self.data.root().display()
            ),
        })
    }

    /// For what needs the configuration as it is now (a spawn, a first start): a broken
    /// `corral.toml` is an error.
    pub fn need_config(&self) -> Result<()> {
        match &self.ws.config_error {
            Some(e) => Err(usage(e.clone())),
            None => Ok(()),
        }
    }

    /// For everything else: a broken `corral.toml` is said once on stderr, and the command
    /// goes on with the running supervisor's last good configuration.
    pub fn warn_config(&self) {
        if let Some(e) = &self.ws.config_error {
            let on = if Client::try_connect(&self.data).is_ok() {
                "the running supervisor's last good configuration"
            } else {
                "the last good configuration"
            };
            // The file is the workspace's, which agents can write: shown escaped, on one line.
            crate::elog!("warning: {}; using {on}", crate::display::escape(e));
        }
    }

    /// This workspace, for the client operations (`crate::ops`).
    pub fn target(&self) -> crate::ops::Target<'_> {
        crate::ops::Target { data: &self.data, root: &self.ws.root }
    }

    pub fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.data, &self.ws.root)?)
    }

    /// Sends one request; the reply as it came.
    pub fn request(&self, req: &Request) -> Result<Reply> {
        Ok(Client::request(&self.data, &self.ws.root, req)?)
    }

    /// Sends one request and returns the reply's data as the JSON text it came as.
    pub fn call_raw(&self, req: &Request) -> Result<String> {
        let mut line = Client::request_line(&self.data, &self.ws.root, req)?;
        if let Some(data) = crate::ipc::ok_data(&line) {
            // The data as written, in place: no parse, no second copy.
            let (start, len) = (data.as_ptr() as usize - line.as_ptr() as usize, data.len());
            line.truncate(start + len);
            line.drain(..start);
            return Ok(line);
        }
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("unreadable reply from the supervisor: {e}"))?;
        if !reply.ok {
            return Err(Fail {
                code: reply.exit.unwrap_or(1),
                msg: reply.error.unwrap_or_else(|| "unknown error".into()),
            });
        }
        Ok(reply.data.map(|d| d.get().to_string()).unwrap_or_else(|| "null".into()))
    }

    /// Sends one request and turns an error reply into a `Fail`.
    pub fn call(&self, req: &Request) -> Result<serde_json::Value> {
        let reply: Reply = Client::request(&self.data, &self.ws.root, req)?;
        into_result(reply)
    }
}

pub fn into_result(reply: Reply) -> Result<serde_json::Value> {
    if reply.ok {
        Ok(reply.parse()?)
    } else {
        Err(Fail { code: reply.exit.unwrap_or(1), msg: reply.error.unwrap_or_else(|| "unknown error".into()) })
    }
}

pub fn run(cli: Cli) -> Result {
    // Commands that print die quietly when their reader goes away (`| head`), like any Unix
    // tool. The supervisor and the shim (not parsed here) keep ignoring SIGPIPE: a closed
    // pipe must never kill them; nor the MCP server, which ends its session cleanly when
    // its client leaves.
    if !matches!(cli.command, Cmd::Daemon(_) | Cmd::Mcp(_) | Cmd::Worker(_)) {
        // SAFETY: restoring the default disposition of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Cmd::Completions(a) => return completions::completions(a),
        Cmd::Man(a) => return completions::man(a),
        _ => {}
    }
    let ctx = Ctx::resolve(cli.data_dir.clone())?;
    // Cluster mode: with a database and no data dir named, the client commands work by SQL
    // from any machine, in a directory with or without a workspace. So do an agent's on a
    // worker (its data dir is its epoch's, given by its supervisor).
    if (cli.data_dir.is_none() || cluster::agent_of_worker(cli.data_dir.as_deref()))
        && !cluster::local_only(&cli.command)
        && let Some((db, workspace)) = crate::cluster::target(&ctx.ws, None, None).map_err(usage)?
    {
        if matches!(cli.command, Cmd::Spawn(_)) {
            ctx.need_config()?;
        } else if let Some(e) = &ctx.ws.config_error {
            crate::elog!("warning: {}; going on without it", crate::display::escape(e));
        }
        return cluster::run(&ctx, cluster::Target { db, workspace }, cli.command);
    }
    if cli.command.only_reads() {
        ctx.require_workspace()?;
    }
    match &cli.command {
        // What needs the file as it is now refuses while it is broken.
        Cmd::Spawn(_) => ctx.need_config()?,
        // `init` writes a new file and the demo makes its own workspace; the agent side says
        // nothing into an agent's output, where a classify rule could match it; `daemon`
        // decides for itself.
        Cmd::Init(_) | Cmd::Demo(_) | Cmd::Report(_) | Cmd::Handoff(_) | Cmd::Daemon(_) | Cmd::Worker(_) => {}
        _ => ctx.warn_config(),
    }
    match cli.command {
        Cmd::Demo(a) => demo::run(&ctx, a),
        Cmd::Init(a) => init::run(&ctx, cli.data_dir, a),
        Cmd::Spawn(a) => spawn::run(&ctx, a),
        Cmd::Status(a) => status::run(&ctx, a),
        Cmd::Show(a) => show::run(&ctx, a),
        Cmd::Logs(a) => logs::run(&ctx, a),
        Cmd::Kill(a) => kill::run(&ctx, a),
        Cmd::Retry(a) => retry::run(&ctx, a),
        Cmd::Tell(a) => retry::tell(&ctx, a),
        Cmd::Escalations(a) => escalations::run(&ctx, a),
        Cmd::Health(a) => health::run(&ctx, a),
        Cmd::Parallel(a) => capacity::parallel(&ctx, a),
        Cmd::Pause(a) => capacity::pause(&ctx, a),
        Cmd::Resume(a) => capacity::resume(&ctx, a),
        Cmd::Wait(a) => wait::run(&ctx, a),
        Cmd::Monitor(a) => monitor::run(&ctx, a),
        Cmd::Mcp(a) => mcp::run(&ctx, a),
        Cmd::Memory(a) => memory::run(&ctx, a),
        Cmd::Aggregate(a) => aggregate::run(&ctx, a),
        Cmd::Merge(a) => merge::run(&ctx, a),
        Cmd::Clean(a) => clean::run(&ctx, a),
        Cmd::Report(a) => report::run(&ctx, a),
        Cmd::Handoff(a) => handoff::run(&ctx, a),
        Cmd::Events(a) => events::run(&ctx, a),
        Cmd::Timeline(a) => timeline::run(&ctx, a),
        Cmd::Daemon(a) => daemon::run(&ctx, a),
        Cmd::Worker(a) => worker::run(&ctx, a),
        Cmd::Completions(_) | Cmd::Man(_) => unreachable!("handled above"),
    }
}
