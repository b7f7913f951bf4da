//! `corral logs` read as lines: the last N, one attempt's part, JSON lines, and every agent
//! of a role at once (each line prefixed with its agent id), followed as they are written.
//!
//! A line belongs to the attempt whose part of the log holds it: parts start where the
//! supervisor recorded each attempt's start (checked against the header line there); a
//! log that was set aside and begun again is split at its header lines instead.

use super::{Args, LOOK_EVERY, Place, read_new};
use crate::cli::{Ctx, Result};
use crate::ipc::{AgentView, Request, ShowView};
use crate::note;
use crate::ops::follow::Follower;
use crate::policy::agent::AgentState;
use crate::protocol::AgentId;
use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

/// How often the event thread hands control back while no event comes.
const TICK: Duration = Duration::from_millis(250);

/// One agent being read: where its log was read to, a line not yet ended, the attempt
/// the next line belongs to.
struct Reader {
    id: AgentId,
    place: Place,
    partial: Vec<u8>,
    attempt: u32,
    /// Where each attempt's part starts, as the supervisor recorded it; `None` once the
    /// log was begun again (the offsets are of the old file).
    starts: Option<Vec<(u32, u64)>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonLine<'a> {
    agent_id: &'a str,
    attempt: u32,
    stream: &'static str,
    line: &'a str,
}

/// How lines are printed: which attempt, as JSON or text, with the agent id in front.
struct Printer {
    attempt: Option<u32>,
    json: bool,
    prefix: bool,
}

impl Printer {
    fn wants(&self, attempt: u32) -> bool {
        self.attempt.is_none_or(|n| n == attempt)
    }

    fn print(&self, out: &mut impl Write, id: &AgentId, attempt: u32, line: &str) -> std::io::Result<()> {
        if self.json {
            let l = JsonLine { agent_id: id.as_str(), attempt, stream: stream_of(line), line };
            let mut b = serde_json::to_vec(&l).map_err(std::io::Error::other)?;
            b.push(b'\n');
            out.write_all(&b)
        } else if self.prefix {
            writeln!(out, "{id} | {line}")
        } else {
            writeln!(out, "{line}")
        }
    }
}

/// corral's own lines (the header, the footer, its notes) or the agent's output.
fn stream_of(line: &str) -> &'static str {
    if line.starts_with("=== corral: ") || line.starts_with("corral: ") { "corral" } else { "output" }
}

/// The attempt a header line opens, when it is one of this agent's.
fn opens(id: &AgentId, line: &str) -> Option<u32> {
    let rest = line.strip_prefix("=== corral: ")?.strip_prefix(id.as_str())?.strip_prefix(" attempt ")?;
    let (n, rest) = rest.split_once(' ')?;
    if !rest.starts_with("at ") {
        return None;
    }
    n.parse().ok()
}

impl Reader {
    fn new(ctx: &Ctx, id: AgentId) -> Result<Self> {
        let starts = Some(starts_of(ctx, &id)?);
        Ok(Self { id, place: Place::default(), partial: Vec::new(), attempt: 0, starts })
    }

    /// The complete lines written since the last read, each with its attempt.
    fn read(&mut self, ctx: &Ctx) -> Result<Vec<(u32, String)>> {
        let was = self.place.file;
        let buf = read_new(ctx, &self.id, &mut self.place)?;
        if was.is_some() && was != self.place.file {
            // Read again from the start of a new file: the old offsets say nothing of it.
            self.partial.clear();
            self.starts = None;
        }
        let mut offset = self.place.pos - buf.len() as u64 - self.partial.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(Vec::new()) };
        let rest = self.partial.split_off(end + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        let mut lines = Vec::new();
        for raw in whole.split_inclusive(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(raw)).into_owned();
            self.attempt = self.attempt_at(ctx, offset, &line)?;
            offset += raw.len() as u64;
            lines.push((self.attempt, line));
        }
        Ok(lines)
    }

    /// What is left of a last line the agent never ended, once it is finished.
    fn rest(&mut self) -> Option<(u32, String)> {
        if self.partial.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
        Some((self.attempt, line))
    }

    /// The attempt a line at `offset` belongs to. The next attempt's header opens it: where
    /// the supervisor recorded that attempt's start, there only (a line of output that
    /// merely looks like a header does not); in a log begun again, at its header.
    fn attempt_at(&mut self, ctx: &Ctx, offset: u64, line: &str) -> Result<u32> {
        let Some(n) = opens(&self.id, line).filter(|&n| n > self.attempt) else { return Ok(self.attempt) };
        let Some(starts) = &self.starts else { return Ok(n) };
        if !starts.iter().any(|&(k, _)| k == n) {
            // An attempt begun since the starts were asked for.
            self.starts = Some(starts_of(ctx, &self.id)?);
        }
        let known = self.starts.as_ref().is_some_and(|s| s.contains(&(n, offset)));
        Ok(if known { n } else { self.attempt })
    }
}

/// Where each of the agent's attempts starts in its log, as the supervisor recorded it.
fn starts_of(ctx: &Ctx, id: &AgentId) -> Result<Vec<(u32, u64)>> {
    let show: ShowView = serde_json::from_value(ctx.call(&Request::Show { id: id.to_string() })?)?;
    Ok(show.attempts.iter().filter_map(|a| Some((a.attempt, a.log_start?))).collect())
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let printer = Printer { attempt: a.attempt, json: a.json, prefix: a.role.is_some() && !a.json };
    let after: u64 = serde_json::from_value(ctx.call(&Request::LastSeq)?)?;
    let query = || -> Result<Vec<AgentView>> {
        let req = match &a.id {
            Some(id) => Request::Status { ids: vec![id.clone()], role: None },
            None => Request::Status { ids: Vec::new(), role: a.role.clone() },
        };
        Ok(serde_json::from_value(ctx.call(&req)?)?)
    };
    let views = query()?;
    if views.is_empty() {
        note!("no agents of role {}", a.role.as_deref().unwrap_or("?"))?;
        return Ok(0);
    }
    if let (Some(n), Some(v)) = (a.attempt, views.first().filter(|_| a.id.is_some()))
        && n > v.attempt
    {
        return Err(crate::cli::usage(format!(
            "--attempt {n}: {} has {} attempt{} so far",
            v.agent_id,
            v.attempt,
            if v.attempt == 1 { "" } else { "s" }
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut readers = Vec::new();
    for v in &views {
        let id = AgentId::parse(&v.agent_id).map_err(|e| crate::cli::usage(e.to_string()))?;
        let mut r = Reader::new(ctx, id)?;
        let mut lines: Vec<(u32, String)> = r.read(ctx)?;
        if v.is_finished() {
            lines.extend(r.rest());
        }
        lines.retain(|(n, _)| printer.wants(*n));
        let skip = a.lines.map_or(0, |n| lines.len().saturating_sub(n));
        for (n, line) in &lines[skip..] {
            printer.print(&mut out, &r.id, *n, line)?;
        }
        readers.push(r);
    }
    out.flush()?;
    if !a.follow || views.iter().all(AgentView::is_finished) {
        return Ok(0);
    }
    follow(ctx, &a, &printer, after, readers, query, &mut out)
}

/// Prints lines as they are written until every agent followed has finished (with
/// `--role`, agents of the role that appear meanwhile are followed from their start).
fn follow(
    ctx: &Ctx,
    a: &Args,
    printer: &Printer,
    after: u64,
    mut readers: Vec<Reader>,
    query: impl Fn() -> Result<Vec<AgentView>>,
    out: &mut impl Write,
) -> Result {
    // Woken by writes to the logs (inotify), by events (a finish, a spawn), and now and
    // then regardless.
    let (tx, rx) = mpsc::channel::<bool>();
    let _watcher = super::watch_logs(ctx, tx.clone())?;
    let target = ctx.target();
    let only = a.id.as_ref().map(|_| readers[0].id.to_string());
    std::thread::scope(|s| {
        s.spawn(move || {
            let say = |m: &str| {
                let _ = note!("corral logs: {m}");
            };
            let mut events = Follower::new(target, after, only, &say);
            let mut seen = 0;
            loop {
                // A short wait: a tick that finds the reader gone ends this thread.
                let Ok(next) = events.next(Some(TICK)) else { return };
                let look = match next {
                    Some(e) => e.kind == "spawned" || AgentState::FINISHED_EVENTS.contains(&e.kind.as_str()),
                    None => events.reconnects() != seen,
                };
                seen = events.reconnects();
                if tx.send(look).is_err() {
                    return;
                }
            }
        });
        let rx = rx;
        loop {
            let looked = match rx.recv_timeout(LOOK_EVERY) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            let mut done = false;
            if looked {
                let views = query()?;
                for v in &views {
                    if !readers.iter().any(|r| r.id.as_str() == v.agent_id)
                        && let Ok(id) = AgentId::parse(&v.agent_id)
                    {
                        readers.push(Reader::new(ctx, id)?);
                    }
                }
                done = views.iter().all(AgentView::is_finished);
            }
            for r in &mut readers {
                let mut lines = r.read(ctx)?;
                if done {
                    lines.extend(r.rest());
                }
                for (n, line) in lines.iter().filter(|(n, _)| printer.wants(*n)) {
                    printer.print(out, &r.id, *n, line)?;
                }
            }
            out.flush()?;
            if done {
                return Ok(0);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lines_open_their_attempt_and_streams_are_told_apart() {
        let id = AgentId::parse("agent-001-X").unwrap();
        assert_eq!(opens(&id, "=== corral: agent-001-X attempt 2 at 2026-12-03T10:00:00Z: [\"sh\"] ==="), Some(2));
        assert_eq!(opens(&id, "=== corral: agent-002-X attempt 2 at now ==="), None);
        assert_eq!(opens(&id, "=== corral: agent-001-X attempt two at now ==="), None);
        assert_eq!(stream_of("corral: attempt ended: exited with code 0"), "corral");
        assert_eq!(stream_of("building"), "output");
    }
}
