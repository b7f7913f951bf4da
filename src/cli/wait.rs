//! `corral wait [ID...] [--role R] [--all] [--timeout D]`: prints each agent as it
//! finishes, in finishing order, following the event log (no polling tick).

use super::{Ctx, Fail, Result, usage};
use crate::ipc::{AgentView, Request};
use crate::store::EventRecord;
use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub ids: Vec<String>,
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

use crate::note;
use crate::policy::agent::AgentState;
const FINISHED_EVENTS: &[&str] = AgentState::FINISHED_EVENTS;

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let limit = match &a.timeout {
        Some(t) => Some(crate::config::parse_duration(t).map_err(|e| usage(format!("--timeout: {e}")))?),
        None => None,
    };
    let start = Instant::now();
    let mut client = ctx.client()?;
    // The event sequence first, then the snapshot: anything finishing in between shows
    // up in both, and the id set drops the repeat.
    let after: u64 = serde_json::from_value(super::into_result(client.call(&Request::LastSeq)?)?)?;
    let ids = if a.all || (a.ids.is_empty() && a.role.is_none()) { vec![] } else { a.ids.clone() };
    let status = Request::Status { ids, role: a.role.clone() };
    let views: Vec<AgentView> = serde_json::from_value(super::into_result(client.call(&status)?)?)?;
    if views.is_empty() {
        return Err(usage("no agents to wait for"));
    }
    let total = views.len();
    let wanted: BTreeSet<String> = views.iter().map(|v| v.agent_id.clone()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut all_complete = true;
    let tty = unsafe { libc::isatty(2) } == 1 && !a.json;
    let mut finished: Vec<&AgentView> = views.iter().filter(|v| v.is_finished()).collect();
    finished.sort_by(|x, y| x.ended_at.cmp(&y.ended_at));
    for v in finished {
        all_complete &= v.status == "complete";
        done.insert(v.agent_id.clone());
        print_one(v, a.json, tty, start)?;
    }
    let mut events = ctx.client()?;
    events.send(&Request::Events { after, agent: None, follow: true })?;
    let stream = events.stream().try_clone()?;
    while done.len() < total {
        progress(tty, done.len(), total, start);
        let wait = match limit {
            Some(l) => match l.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return timed_out(tty, done.len(), total),
            },
            // Wake once a second only to redraw the elapsed time on a terminal.
            None => tty.then_some(Duration::from_secs(1)),
        };
        let wait = match (wait, tty) {
            (Some(w), true) => Some(w.min(Duration::from_secs(1))),
            (w, _) => w,
        };
        stream.set_read_timeout(wait)?;
        let line = match events.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => return Err(Fail { code: 1, msg: "the supervisor closed the event stream".into() }),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(e) = serde_json::from_str::<EventRecord>(&line) else { continue };
        let Some(id) = e.agent_id.map(|i| i.to_string()) else { continue };
        if !FINISHED_EVENTS.contains(&e.kind.as_str()) || !wanted.contains(&id) || done.contains(&id) {
            continue;
        }
        let v: Vec<AgentView> = serde_json::from_value(super::into_result(
            client.call(&Request::Status { ids: vec![id.clone()], role: None })?,
        )?)?;
        // A finishing event can be overtaken by a new attempt (a human retry); only the
        // agent's state right now says whether it is finished.
        let Some(v) = v.first().filter(|v| v.is_finished()) else { continue };
        all_complete &= v.status == "complete";
        done.insert(id);
        print_one(v, a.json, tty, start)?;
    }
    if tty {
        crate::display::clear_progress();
    }
    Ok(if all_complete { 0 } else { 1 })
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    })
}

fn print_one(v: &AgentView, json: bool, tty: bool, start: Instant) -> Result<()> {
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

fn progress(tty: bool, done: usize, total: usize, start: Instant) {
    if tty {
        crate::display::progress_line(format_args!(
            "waiting: {done}/{total} finished, {:.0}s elapsed",
            start.elapsed().as_secs_f64()
        ));
    }
}

fn timed_out(tty: bool, done: usize, total: usize) -> Result {
    if tty {
        crate::display::clear_progress();
    }
    note!("timed out: {done} of {total} finished")?;
    Ok(124)
}
