//! Turns writes in `agent-status/` and `handoffs/` into supervisor messages (inotify, via
//! `notify`): a status write is seen in milliseconds, with no polling tick.
//!
//! Writes are coalesced: the files written since the supervisor last looked wait in one set,
//! and the supervisor is woken once for all of them. An agent rewriting its status file
//! thousands of times a second costs one read per look, and the supervisor's queue never
//! grows with it.

use super::daemon::Msg;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Files written since the supervisor last looked, in the order first seen.
#[derive(Default)]
pub struct Written {
    order: Vec<PathBuf>,
    seen: HashSet<PathBuf>,
}

pub type Pending = Arc<Mutex<Written>>;

/// Takes the files written so far.
pub fn take(pending: &Pending) -> Vec<PathBuf> {
    let mut w = pending.lock().unwrap_or_else(|e| e.into_inner());
    w.seen.clear();
    std::mem::take(&mut w.order)
}

pub fn watch(dirs: &[&Path], pending: Pending, tx: UnboundedSender<Msg>) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let relevant = matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if !relevant {
            return;
        }
        for p in ev.paths {
            let visible =
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'));
            if visible {
                let mut w = pending.lock().unwrap_or_else(|e| e.into_inner());
                if w.seen.insert(p.clone()) {
                    w.order.push(p);
                    if w.order.len() == 1 {
                        let _ = tx.send(Msg::Written);
                    }
                }
            }
        }
    })?;
    for d in dirs {
        w.watch(d, RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}
