//! The exports for the seed's scripts, `spawn-registry.json` and `escalations.txt`, written
//! off the event loop. Rewriting the registry is proportional to the number of agents
//! (megabytes at 10,000); on its own thread it no longer holds up spawns and exits, and
//! changes that arrive while it writes are written together, once.
//!
//! Replies go through here too, in order: a reply is sent only once every change made
//! before it is in the files, so a script that runs `jq` on the registry after any corral
//! command sees what that command saw.
//!
//! An export that cannot be written (a read-only or full disk) is written again, with a
//! backoff, until it can be: a failed export is never left stale. Nothing is written once the
//! data dir is no longer the one the supervisor serves.

use super::identity::Identity;
use crate::ipc::Reply;
use crate::protocol::{AgentId, atomic};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;
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
    pub fn start(registry: PathBuf, escalations: PathBuf, identity: Option<Identity>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new().name("corral-export".into()).spawn(move || {
            Writer {
                registry,
                escalations,
                identity,
                order: Vec::new(),
                lines: HashMap::new(),
                registry_due: false,
                escalations_due: None,
                delay: RETRY_FIRST,
            }
            .run(rx)
        })?;
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

/// The first wait before an export that failed is written again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

struct Writer {
    registry: PathBuf,
    escalations: PathBuf,
    identity: Option<Identity>,
    order: Vec<AgentId>,
    lines: HashMap<AgentId, String>,
    /// The registry export is not yet written as it stands.
    registry_due: bool,
    /// The escalations export not yet written.
    escalations_due: Option<String>,
    /// The wait before the next try of a failed export.
    delay: Duration,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Batch>) {
        loop {
            let due = self.registry_due || self.escalations_due.is_some();
            let first = if due {
                match rx.recv_timeout(self.delay) {
                    Ok(b) => Some(b),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.write_due();
                        return;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(b) => Some(b),
                    Err(_) => return,
                }
            };
            // Everything queued meanwhile is written at once.
            let mut replies = Vec::new();
            for b in first.into_iter().chain(rx.try_iter()) {
                self.registry_due |= b.rewrite || !b.added.is_empty() || !b.lines.is_empty();
                self.order.extend(b.added);
                self.lines.extend(b.lines);
                if b.escalations.is_some() {
                    self.escalations_due = b.escalations;
                }
                replies.extend(b.replies);
            }
            let failed_before = due;
            self.write_due();
            if self.registry_due || self.escalations_due.is_some() {
                self.delay = if failed_before { (self.delay * 2).min(RETRY_MAX) } else { RETRY_FIRST };
            } else if failed_before {
                self.delay = RETRY_FIRST;
                crate::elog!("corral daemon: the exports are written again");
            }
            // A reply does not wait for a disk that cannot take the export: the registry
            // has what it says, and the export follows as soon as it can.
            for (tx, reply) in replies {
                let _ = tx.send(reply);
            }
        }
    }

    /// Writes what is due; what fails stays due.
    fn write_due(&mut self) {
        if let Some(why) = self.identity.as_ref().and_then(Identity::lost) {
            if self.registry_due || self.escalations_due.is_some() {
                crate::elog!("corral daemon: exports not written: {why}");
            }
            self.registry_due = false;
            self.escalations_due = None;
            return;
        }
        if self.registry_due {
            self.registry_due = !self.write_registry();
        }
        if let Some(text) = self.escalations_due.take()
            && let Err(e) = atomic::replace_in_place(&self.escalations, text.as_bytes())
        {
            if self.delay == RETRY_FIRST {
                crate::elog!("corral daemon: cannot write {} (will try again): {e}", self.escalations.display());
            }
            self.escalations_due = Some(text);
        }
    }

    /// One record per line, a valid JSON array. Whether it was written.
    fn write_registry(&self) -> bool {
        let mut text = String::with_capacity(self.lines.values().map(|l| l.len() + 2).sum::<usize>() + 4);
        text.push('[');
        for (i, id) in self.order.iter().enumerate() {
            text.push_str(if i == 0 { "\n" } else { ",\n" });
            text.push_str(self.lines.get(id).map_or("null", String::as_str));
        }
        text.push_str("\n]\n");
        match atomic::replace_in_place(&self.registry, text.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                if self.delay == RETRY_FIRST {
                    crate::elog!("corral daemon: cannot write {} (will try again): {e}", self.registry.display());
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_that_cannot_be_written_is_written_once_it_can() {
        let d = tempfile::tempdir().unwrap();
        // The directory is not there yet: every write fails until it is.
        let dir = d.path().join("later");
        let registry = dir.join("spawn-registry.json");
        let x = Exporter::start(registry.clone(), dir.join("escalations.txt"), None).unwrap();
        let (tx, rx) = oneshot::channel();
        let id = AgentId::parse("a").unwrap();
        x.send(Batch {
            added: vec![id.clone()],
            lines: vec![(id, "{\"agentId\":\"a\"}".into())],
            rewrite: true,
            escalations: Some("a: why\n".into()),
            replies: vec![(tx, Reply::ok(1))],
        });
        // The reply does not wait for a disk that cannot take the export.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut rx = rx;
        while rx.try_recv().is_err() {
            assert!(std::time::Instant::now() < until, "the reply never came");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!registry.exists());
        std::fs::create_dir(&dir).unwrap();
        while !(registry.exists() && dir.join("escalations.txt").exists()) {
            assert!(std::time::Instant::now() < until, "the export was never written again");
            std::thread::sleep(Duration::from_millis(10));
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&registry).unwrap()).unwrap();
        assert_eq!(v[0]["agentId"], "a");
        assert_eq!(std::fs::read_to_string(dir.join("escalations.txt")).unwrap(), "a: why\n");
    }
}
