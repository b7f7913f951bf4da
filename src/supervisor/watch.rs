//! Turns writes in `agent-status/` and `handoffs/` into supervisor messages (inotify, via
//! `notify`): a status write is seen in milliseconds, with no polling tick.

use super::daemon::Msg;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use tokio::sync::mpsc::UnboundedSender;

pub fn watch(dirs: &[&Path], tx: UnboundedSender<Msg>) -> notify::Result<notify::RecommendedWatcher> {
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
                let _ = tx.send(Msg::Fs(p));
            }
        }
    })?;
    for d in dirs {
        w.watch(d, RecursiveMode::NonRecursive)?;
    }
    Ok(w)
}
