//! `corral logs ID [-f]`: the agent's output (every attempt, each with a header line).
//! `-f` follows it until the agent finishes, across supervisor restarts (the finish is
//! learnt from the event stream, `ops::follow`), and across a log that was replaced (read
//! from its start) or cut short in place (read on from its new end), saying so on stderr.
//! `-n`, `--attempt`, `--json` and `--role` read the log as lines (`lines`).

use super::{Ctx, Result};
use crate::ipc::{AgentView, Request};
use crate::note;
use crate::ops::{Target, follow::Follower};
use crate::policy::agent::AgentState;
use crate::protocol::{AgentId, fsio};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::time::Duration;

mod lines;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The agent: its id, a unique prefix of it, or its number (not with --role).
    #[arg(
        required_unless_present = "role",
        add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids)
    )]
    pub id: Option<String>,
    /// Keep printing new output until the agent finishes (with --role: until every agent
    /// of the role has finished, taking in the role's agents spawned meanwhile).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (of the attempt chosen, else of the whole log; per agent with
    /// --role); with -f, then everything that follows.
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<usize>,
    /// Only attempt N's part of the log (its header, its output, its footer).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
    /// One JSON object per line: agentId, attempt, stream ("output" for what the agent
    /// printed on stdout or stderr, "corral" for corral's header, footer and notes), line.
    #[arg(long)]
    pub json: bool,
    /// Every agent of role R, each line prefixed with its agent id; with -f interleaved as
    /// written.
    #[arg(long, value_name = "R", conflicts_with = "id")]
    pub role: Option<String>,
}

impl Args {
    /// Read as lines rather than copied as bytes.
    fn by_line(&self) -> bool {
        self.lines.is_some() || self.attempt.is_some() || self.json || self.role.is_some()
    }
}

/// How often the log is looked at even with no write seen (a log directory replaced
/// under the watch).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Where a follower is in the log: the file (device, inode) and the offset.
#[derive(Default)]
struct Place {
    file: Option<(u64, u64)>,
    pos: u64,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    if a.by_line() {
        return lines::run(ctx, a);
    }
    let typed = a.id.clone().unwrap_or_default();
    // The event number before the state: a finish after the look is in the stream.
    let after: u64 = serde_json::from_value(ctx.call(&Request::LastSeq)?)?;
    // Ask the supervisor first: an unknown id is an error, not an empty log; a prefix or a
    // number comes back as the whole id.
    let views: Vec<AgentView> =
        serde_json::from_value(ctx.call(&Request::Status { ids: vec![typed.clone()], role: None })?)?;
    let whole = views.first().map_or(typed, |v| v.agent_id.clone());
    let id = AgentId::parse(&whole).map_err(|e| super::usage(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    let mut place = Place::default();
    copy(ctx, &id, &mut place, &mut out)?;
    if !a.follow || views.first().is_none_or(|v| v.is_finished()) {
        return Ok(0);
    }
    // Wake on writes to the log (inotify), on the agent finishing (event stream), and now
    // and then regardless.
    let (tx, rx) = mpsc::channel::<bool>();
    let _watcher = watch_logs(ctx, tx.clone())?;
    let target = ctx.target();
    std::thread::scope(|s| {
        let fid = id.to_string();
        s.spawn(move || {
            finish_of(target, &fid, after);
            let _ = tx.send(true);
        });
        loop {
            let done = match rx.recv_timeout(LOOK_EVERY) {
                Ok(d) => d,
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            copy(ctx, &id, &mut place, &mut out)?;
            if done {
                return Ok(0);
            }
        }
    })
}

/// Returns once agent `id` is finished, following its events after `after` across
/// supervisor restarts (and looking at its state after each reconnect).
fn finish_of(t: Target, id: &str, after: u64) {
    let say = |m: &str| {
        let _ = note!("corral logs: {m}");
    };
    let mut events = Follower::new(t, after, Some(id.to_string()), &say);
    let mut seen = 0;
    loop {
        let next = match events.next(Some(LOOK_EVERY)) {
            Ok(n) => n,
            Err(_) => return,
        };
        let look = match next {
            Some(e) => AgentState::FINISHED_EVENTS.contains(&e.kind.as_str()),
            None => events.reconnects() != seen,
        };
        seen = events.reconnects();
        if look
            && let Ok(v) = t.call::<Vec<AgentView>>(&Request::Status { ids: vec![id.to_string()], role: None })
            && v.first().is_none_or(|v| v.is_finished())
        {
            return;
        }
    }
}

/// Sends `false` on `tx` whenever something in the log directory is written; watching
/// stops when the returned watcher is dropped.
fn watch_logs(ctx: &Ctx, tx: mpsc::Sender<bool>) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(false);
    })?;
    let _ = watcher.watch(&ctx.data.log_dir(), notify::RecursiveMode::NonRecursive);
    Ok(watcher)
}

/// Prints what the log holds past `place`.
fn copy(ctx: &Ctx, id: &AgentId, place: &mut Place, out: &mut impl Write) -> Result<()> {
    let buf = read_new(ctx, id, place)?;
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// What the log holds past `place` (all of it when the log was replaced), moving `place`
/// on; nothing when there is no log (yet).
fn read_new(ctx: &Ctx, id: &AgentId, place: &mut Place) -> Result<Vec<u8>> {
    // Through fsio: a log replaced by a FIFO or a symlink is not followed.
    let Ok(mut f) = fsio::open_read(ctx.data.root(), &ctx.data.log_file(id)) else { return Ok(Vec::new()) };
    let meta = f.metadata()?;
    let file = (meta.dev(), meta.ino());
    if place.file.is_some_and(|was| was != file) {
        note!("corral logs: {id}'s log was replaced; following the new one from its start")?;
        place.pos = 0;
    } else if meta.len() < place.pos {
        note!(
            "corral logs: {id}'s log was cut short (max_log_size keeps its head and newest tail); reading on from its end"
        )?;
        place.pos = meta.len();
    }
    place.file = Some(file);
    f.seek(SeekFrom::Start(place.pos))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    place.pos += buf.len() as u64;
    Ok(buf)
}
