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

/// The file in which a worker gives its epoch's supervisor what the agents need to speak to
/// the whole cluster (`CORRAL_DATABASE_URL`, `PGPASSWORD`, `CORRAL_WORKSPACE`; each claim
/// adds `CORRAL_WORKER` and `CORRAL_FENCE`): an agent that spawns, waits or aggregates then
/// does it cluster-wide, under the cluster's limits, not in this machine's store alone. Kept
/// in a file of the data dir (private to its owner) rather than in each spawn, so the
/// password is in no registry; read at each start of an attempt.
pub const ENV_FILE: &str = "worker-env";

/// Writes the agents' cluster environment (private to the data dir's owner, as every file there).
pub fn write_env(data: &DataDir, env: &[(String, String)]) -> std::io::Result<()> {
    let text = serde_json::to_vec(env).map_err(std::io::Error::other)?;
    atomic::write_beneath(data.root(), &data.root().join(ENV_FILE), &text)
}

/// The agents' cluster environment of this data dir: empty outside a worker, and for a file
/// that is torn or not a list of names and values.
pub fn read_env(data: &DataDir) -> Vec<(String, String)> {
    let Ok(bytes) = fsio::read(data.root(), &data.root().join(ENV_FILE), 64 * 1024) else { return vec![] };
    let env: Vec<(String, String)> = serde_json::from_slice(&bytes).unwrap_or_default();
    env.into_iter().filter(|(k, v)| !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0')).collect()
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

    #[test]
    fn the_agents_cluster_environment_reads_back_and_bad_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().to_path_buf());
        assert!(read_env(&data).is_empty());
        let env = vec![("CORRAL_WORKER".to_string(), "w1".to_string()), ("PGPASSWORD".into(), "p w".into())];
        write_env(&data, &env).unwrap();
        assert_eq!(read_env(&data), env);
        std::fs::write(dir.path().join(ENV_FILE), br#"[["A=B","x"],["","y"],["OK","v"]]"#).unwrap();
        assert_eq!(read_env(&data), vec![("OK".to_string(), "v".to_string())]);
        std::fs::write(dir.path().join(ENV_FILE), b"[[").unwrap();
        assert!(read_env(&data).is_empty());
        // Planted by an agent: a FIFO (never blocks the supervisor), a symlink out of the dir.
        std::fs::remove_file(dir.path().join(ENV_FILE)).unwrap();
        let c = std::ffi::CString::new(dir.path().join(ENV_FILE).to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_env(&data).is_empty());
        std::fs::remove_file(dir.path().join(ENV_FILE)).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), br#"[["LD_PRELOAD","/x.so"]]"#).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(ENV_FILE)).unwrap();
        assert!(read_env(&data).is_empty());
    }
}
