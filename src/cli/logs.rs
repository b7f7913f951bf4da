//! `corral logs ID [-f]`: the agent's output (every attempt, each with a header line).
//! `-f` follows it until the agent finishes, across supervisor restarts (the finish is
//! learnt from the event stream, `ops::follow`), and across a log that was replaced (read
//! from its start) or cut short in place (read on from its new end), saying so on stderr.

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

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// Keep printing new output until the agent finishes.
    #[arg(short, long)]
    pub follow: bool,
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
    // The event number before the state: a finish after the look is in the stream.
    let after: u64 = serde_json::from_value(ctx.call(&Request::LastSeq)?)?;
    // Ask the supervisor first: an unknown id is an error, not an empty log; a prefix or a
    // number comes back as the whole id.
    let views: Vec<AgentView> =
        serde_json::from_value(ctx.call(&Request::Status { ids: vec![a.id.clone()], role: None })?)?;
    let whole = views.first().map_or(a.id.clone(), |v| v.agent_id.clone());
    let id = AgentId::parse(&whole).map_err(|e| super::usage(e.to_string()))?;
    let a = Args { id: whole, ..a };
    let mut out = std::io::stdout().lock();
    let mut place = Place::default();
    copy(ctx, &id, &mut place, &mut out)?;
    if !a.follow || views.first().is_none_or(|v| v.is_finished()) {
        return Ok(0);
    }
    // Wake on writes to the log (inotify), on the agent finishing (event stream), and now
    // and then regardless.
    let (tx, rx) = mpsc::channel::<bool>();
    let wtx = tx.clone();
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wtx.send(false);
    })?;
    let _ = watcher.watch(&ctx.data.log_dir(), notify::RecursiveMode::NonRecursive);
    let target = ctx.target();
    std::thread::scope(|s| {
        s.spawn(move || {
            finish_of(target, &a.id, after);
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

/// Prints what the log holds past `place`.
fn copy(ctx: &Ctx, id: &AgentId, place: &mut Place, out: &mut impl Write) -> Result<()> {
    // Through fsio: a log replaced by a FIFO or a symlink is not followed.
    let Ok(mut f) = fsio::open_read(ctx.data.root(), &ctx.data.log_file(id)) else { return Ok(()) };
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
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}
