//! The exports for the seed's scripts, `spawn-registry.json` and `escalations.txt`, written
//! off the event loop. Rewriting the registry is proportional to the number of agents
//! (megabytes at 10,000); on its own thread it no longer holds up spawns and exits, and
//! changes that arrive while it writes are written together, once.
//!
//! Replies go through here too, in order: a reply is sent only once every change made
//! before it is in the files, so a script that runs `jq` on the registry after any corral
//! command sees what that command saw.

use crate::ipc::Reply;
use crate::protocol::{AgentId, atomic};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What changed in one batch of the event loop, and the replies that wait for it.
#[derive(Default)]
pub struct Batch {
    /// Agents new since the last batch, in spawn order.
    pub added: Vec<AgentId>,
    /// New registry lines of changed agents.
    pub lines: Vec<(AgentId, String)>,
    /// Write the registry even if nothing changed (the first batch).
    pub rewrite: bool,
    /// The whole new `escalations.txt`, when it changed.
    pub escalations: Option<String>,
    pub replies: Vec<(oneshot::Sender<Reply>, Reply)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        !self.rewrite
            && self.added.is_empty()
            && self.lines.is_empty()
            && self.escalations.is_none()
            && self.replies.is_empty()
    }
}

pub struct Exporter {
    tx: Option<mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    pub fn start(registry: PathBuf, escalations: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("corral-export".into())
            .spawn(move || Writer { registry, escalations, order: Vec::new(), lines: HashMap::new() }.run(rx))?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    pub fn send(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(b)) = tx.send(batch)
        {
            // The writer is gone (it cannot be, short of a panic): answer anyway.
            crate::elog!("corral daemon: the export writer stopped; {} exports skipped", b.lines.len());
            for (reply_tx, reply) in b.replies {
                let _ = reply_tx.send(reply);
            }
        }
    }
}

impl Drop for Exporter {
    /// Writes what is pending and sends the last replies before the supervisor exits.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    registry: PathBuf,
    escalations: PathBuf,
    order: Vec<AgentId>,
    lines: HashMap<AgentId, String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Batch>) {
        while let Ok(first) = rx.recv() {
            // Everything queued meanwhile is written at once.
            let mut batches = vec![first];
            batches.extend(rx.try_iter());
            let mut registry_changed = false;
            let mut escalations = None;
            let mut replies = Vec::new();
            for b in batches {
                registry_changed |= b.rewrite || !b.added.is_empty() || !b.lines.is_empty();
                self.order.extend(b.added);
                self.lines.extend(b.lines);
                escalations = b.escalations.or(escalations);
                replies.extend(b.replies);
            }
            if registry_changed {
                self.write_registry();
            }
            if let Some(text) = escalations
                && let Err(e) = atomic::replace_in_place(&self.escalations, text.as_bytes())
            {
                crate::elog!("corral daemon: cannot write {}: {e}", self.escalations.display());
            }
            for (tx, reply) in replies {
                let _ = tx.send(reply);
            }
        }
    }

    /// One record per line, a valid JSON array.
    fn write_registry(&self) {
        let mut text = String::with_capacity(self.lines.values().map(|l| l.len() + 2).sum::<usize>() + 4);
        text.push('[');
        for (i, id) in self.order.iter().enumerate() {
            text.push_str(if i == 0 { "\n" } else { ",\n" });
            text.push_str(self.lines.get(id).map_or("null", String::as_str));
        }
        text.push_str("\n]\n");
        if let Err(e) = atomic::replace_in_place(&self.registry, text.as_bytes()) {
            crate::elog!("corral daemon: cannot write {}: {e}", self.registry.display());
        }
    }
}
