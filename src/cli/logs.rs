//! `corral logs ID [-f]`: the agent's output (every attempt, each with a header line).

use super::{Ctx, Result};
use crate::ipc::{AgentView, Request};
use crate::protocol::{AgentId, fsio};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
    /// Keep printing new output until the agent finishes.
    #[arg(short, long)]
    pub follow: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let id = AgentId::parse(&a.id).map_err(|e| super::usage(e.to_string()))?;
    // Ask the supervisor first: an unknown id is an error, not an empty log.
    let views: Vec<AgentView> =
        serde_json::from_value(ctx.call(&Request::Status { ids: vec![a.id.clone()], role: None })?)?;
    let path = ctx.data.log_file(&id);
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    let mut copy = |pos: &mut u64| -> Result<()> {
        // Through fsio: a log replaced by a FIFO or a symlink is not followed.
        if let Ok(mut f) = fsio::open_read(ctx.data.root(), &path) {
            f.seek(SeekFrom::Start(*pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            *pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
        Ok(())
    };
    copy(&mut pos)?;
    let finished = views.first().is_some_and(|v| !matches!(v.status.as_str(), "queued" | "running" | "stopping"));
    if !a.follow || finished {
        return Ok(0);
    }
    // Wake on writes to the log (inotify) and on the agent finishing (event stream).
    let (tx, rx) = mpsc::channel::<bool>();
    let wtx = tx.clone();
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wtx.send(false);
    })?;
    watcher.watch(&ctx.data.log_dir(), notify::RecursiveMode::NonRecursive)?;
    let mut client = ctx.client()?;
    client.send(&Request::Events { after: 0, agent: Some(a.id.clone()), follow: true })?;
    std::thread::spawn(move || {
        while let Ok(Some(line)) = client.read_line() {
            if let Ok(e) = serde_json::from_str::<crate::store::EventRecord>(&line)
                && crate::policy::agent::AgentState::FINISHED_EVENTS.contains(&e.kind.as_str())
            {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(true);
    });
    while let Ok(done) = rx.recv() {
        copy(&mut pos)?;
        if done {
            break;
        }
    }
    copy(&mut pos)?;
    Ok(0)
}
