//! A cluster worker's local deadline: the moment its agents must be stopped unless the
//! worker renewed its lease. The worker writes it into its data dir after every renewal
//! (`worker-lease`); every shim of that data dir reads it before it starts its agent and
//! while it runs, and stops the agent's group (TERM, then KILL after `kill_after_ms`) once
//! the deadline passed. The shim is a process of its own, so this holds when the worker is
//! stopped, hung or cut off from the database: an agent never runs past the time another
//! worker may take it over.
//!
//! The deadline is on this machine's monotonic clock, which every process here shares; a
//! file that is gone or cannot be read counts as a deadline passed (the safe side).

use crate::protocol::{DataDir, atomic, fsio};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name in the data dir.
pub const FILE: &str = "worker-lease";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deadline {
    /// The worker whose lease this is.
    pub worker: String,
    /// When the agents get TERM (`time::mono_ms`).
    pub term_at_mono: u64,
    /// Then KILL this long after.
    pub kill_after_ms: u64,
}

/// Where a data dir's deadline is.
pub fn path(data: &DataDir) -> PathBuf {
    data.root().join(FILE)
}

/// The data dir's deadline file, if it has one (the supervisor of a cluster worker).
pub fn configured(data: &DataDir) -> Option<PathBuf> {
    let p = path(data);
    fsio::lstat(&p).is_some().then_some(p)
}

/// Writes the deadline, replacing the old one at once (readers see one or the other).
pub fn write(data: &DataDir, d: &Deadline) -> std::io::Result<()> {
    let text = serde_json::to_vec(d).map_err(std::io::Error::other)?;
    atomic::write_beneath(data.root(), &path(data), &text)
}

/// The deadline in `file`; `None` when it is gone or unreadable.
pub fn read(file: &Path) -> Option<Deadline> {
    let root = file.parent()?;
    let bytes = fsio::read(root, file, 4096).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// When the agents of `file`'s data dir must get TERM, and how long after that KILL: a
/// missing or unreadable file says "now", with a short grace.
pub fn due(file: &Path) -> (u64, u64) {
    match read(file) {
        Some(d) => (d.term_at_mono, d.kill_after_ms),
        None => (0, 500),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_reads_back_and_a_missing_or_torn_one_is_due_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().to_path_buf());
        assert_eq!(configured(&data), None);
        let d = Deadline { worker: "w".into(), term_at_mono: 12_345, kill_after_ms: 300 };
        write(&data, &d).unwrap();
        let p = configured(&data).unwrap();
        assert_eq!(read(&p), Some(d));
        assert_eq!(due(&p), (12_345, 300));
        std::fs::write(&p, b"{\"worker\":").unwrap();
        assert_eq!(due(&p), (0, 500));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(due(&p), (0, 500));
    }
}
