//! `corral wait [ID...] [--role R] [--all] [--timeout D]`: prints each agent as it
//! finishes, in finishing order, following the event log (no polling tick) across
//! supervisor restarts (see `ops::wait`).

use super::{Ctx, Result};
use crate::ipc::AgentView;
use crate::note;
use crate::ops::{self, wait::Watch};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents to wait for, by id, unique prefix or number (default with none named: all).
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub ids: Vec<String>,
    /// Wait for every agent of this role.
    #[arg(long)]
    pub role: Option<String>,
    /// Every agent in the workspace (the default when no id or role is given).
    #[arg(long)]
    pub all: bool,
    /// Give up after this long (exit 124), printing what finished so far.
    #[arg(long, value_name = "D")]
    pub timeout: Option<String>,
    /// One JSON object per finished agent, one per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let limit = match &a.timeout {
        Some(t) => Some(crate::config::parse_duration(t).map_err(|e| super::usage(format!("--timeout: {e}")))?),
        None => None,
    };
    let ids = if a.all { vec![] } else { a.ids.clone() };
    let role = a.role.clone();
    let tty = unsafe { libc::isatty(2) } == 1 && !a.json;
    let mut face = Face { json: a.json, tty, start: Instant::now(), drawn: None };
    let w = ops::wait::wait(ctx.target(), ops::wait::WaitFor { ids, role, limit }, &mut face).map_err(super::fail)?;
    if tty {
        crate::display::clear_progress();
    }
    if w.timed_out {
        note!("timed out: {} of {} finished", w.finished.len(), w.finished.len() + w.pending.len())?;
        return Ok(124);
    }
    Ok(if w.all_complete { 0 } else { 1 })
}

/// How `corral wait` shows a wait: one line per finished agent on stdout, progress and
/// reconnect notes on stderr.
struct Face {
    json: bool,
    tty: bool,
    start: Instant,
    /// When the progress line was last drawn (it is redrawn once a second).
    drawn: Option<Instant>,
}

impl Watch for Face {
    fn finished(&mut self, v: &AgentView, _done: usize, _total: usize) -> std::result::Result<(), ops::Failure> {
        print_one(v, self.json, self.tty, self.start).map_err(|f| ops::Failure::new(f.code, f.msg))
    }

    fn waiting(&mut self, done: usize, total: usize) {
        if self.tty && self.drawn.is_none_or(|d| d.elapsed() >= Duration::from_secs(1)) {
            self.drawn = Some(Instant::now());
            crate::display::progress_line(format_args!(
                "waiting: {done}/{total} finished, {:.0}s elapsed",
                self.start.elapsed().as_secs_f64()
            ));
        }
    }

    fn note(&self, msg: &str) {
        if self.tty {
            crate::display::clear_progress();
        }
        let _ = note!("corral wait: {msg}");
    }
}

/// One finished agent, as `wait` prints it.
pub(super) fn print_one(v: &AgentView, json: bool, tty: bool, start: Instant) -> Result<()> {
    if tty {
        crate::display::clear_progress();
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, v)?;
        writeln!(out)?;
    } else {
        let detail = match (v.exit_code, v.signal, &v.reason) {
            (_, _, Some(r)) if v.status != "complete" => format!(": {r}"),
            (Some(c), _, _) => format!(" (exit {c})"),
            (_, Some(s), _) => format!(" (signal {s})"),
            _ => String::new(),
        };
        crate::display::line_to(
            &mut out,
            format_args!("{} {}{detail}  [{:.1}s]", v.agent_id, v.status, start.elapsed().as_secs_f64()),
        )?;
    }
    out.flush()?;
    Ok(())
}
