//! Where every file of the protocol lives under the data dir.

use super::ids::AgentId;
use super::perms;
use std::path::{Path, PathBuf};

pub const HANDOFF_PREFIX: &str = "handoff-";
pub const HANDOFF_SUFFIX: &str = "-to-ORCHESTRATOR.json";

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn status_dir(&self) -> PathBuf {
        self.root.join("agent-status")
    }
    pub fn handoff_dir(&self) -> PathBuf {
        self.root.join("handoffs")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn context_dir(&self) -> PathBuf {
        self.root.join("context")
    }
    pub fn inbox_dir(&self) -> PathBuf {
        self.root.join("inbox")
    }
    /// Supervisor-private: attempt start/exit records written by the shims, lock files.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn status_file(&self, id: &AgentId) -> PathBuf {
        self.status_dir().join(format!("{id}.json"))
    }
    pub fn log_file(&self, id: &AgentId) -> PathBuf {
        self.log_dir().join(format!("{id}.log"))
    }
    pub fn context_file(&self, id: &AgentId) -> PathBuf {
        self.context_dir().join(format!("{id}.md"))
    }
    pub fn inbox_file(&self, id: &AgentId) -> PathBuf {
        self.inbox_dir().join(format!("{id}.md"))
    }
    pub fn handoff_file(&self, id: &AgentId, compact_ts: &str) -> PathBuf {
        self.handoff_dir().join(format!("{HANDOFF_PREFIX}{compact_ts}-{id}{HANDOFF_SUFFIX}"))
    }
    pub fn registry_file(&self) -> PathBuf {
        self.root.join("spawn-registry.json")
    }
    pub fn escalations_file(&self) -> PathBuf {
        self.root.join("escalations.txt")
    }
    pub fn db_file(&self) -> PathBuf {
        self.root.join("corral.db")
    }
    pub fn daemon_lock(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    pub fn daemon_start_lock(&self) -> PathBuf {
        self.run_dir().join("daemon-start.lock")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    pub fn daemon_info(&self) -> PathBuf {
        self.root.join("daemon.json")
    }
    /// Serializes the read-merge-write of one agent's status file by its reporters. Under
    /// `run/`, where no watcher looks for status files; never removed, because a lock file
    /// deleted while a reporter waits on it would no longer exclude the next one.
    pub fn report_lock(&self, id: &AgentId) -> PathBuf {
        self.run_dir().join(format!("{id}.report.lock"))
    }
    pub fn attempt_file(&self, id: &AgentId, attempt: u32, kind: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.{attempt}.{kind}"))
    }
    /// The control socket. Unix socket paths are limited to 107 bytes; a deep workspace
    /// puts its socket in a per-user directory, keyed by the data dir: the user's runtime
    /// directory (`$XDG_RUNTIME_DIR`) when it is set and the user's alone, else
    /// `corral-<uid>` in the temp directory. Either is used only after
    /// [`DataDir::socket_dir_ready`] found it private.
    pub fn socket(&self) -> PathBuf {
        let p = self.root.join("corral.sock");
        if p.as_os_str().len() < 100 {
            return p;
        }
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.root.as_os_str().as_encoded_bytes() {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
        let name = format!("{h:016x}.sock");
        if let Some(run) = runtime_dir() {
            let p = run.join("corral").join(&name);
            if p.as_os_str().len() < 100 {
                return p;
            }
        }
        std::env::temp_dir().join(format!("corral-{}", perms::my_uid())).join(name)
    }

    /// Checks (with `create`, makes) the directory the socket lives in when it is not the
    /// data dir: it must be the user's alone, or anyone could listen in the supervisor's
    /// place. The error names the directory, why it is refused and what to do.
    pub fn socket_dir_ready(&self, create: bool) -> Result<PathBuf, String> {
        let socket = self.socket();
        if let Some(dir) = socket.parent()
            && dir != self.root
        {
            perms::private_dir(dir, create)?;
        }
        Ok(socket)
    }

    /// Makes the data dir and its directories, private to the user (0700); one an agent
    /// replaced (by a symlink, a file) is moved aside and made again
    /// (see [`super::fsio::ensure_dir`]).
    pub fn create_all(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root)?;
        for d in [
            self.status_dir(),
            self.handoff_dir(),
            self.log_dir(),
            self.context_dir(),
            self.inbox_dir(),
            self.run_dir(),
        ] {
            super::fsio::ensure_dir(&self.root, &d)?;
        }
        Ok(())
    }

    /// The agent id a handoff file name belongs to, if the name follows the protocol.
    pub fn handoff_owner(file_name: &str) -> Option<&str> {
        let rest = file_name.strip_prefix(HANDOFF_PREFIX)?.strip_suffix(HANDOFF_SUFFIX)?;
        // `<ts>-<id>`: the compact timestamp has no '-', so the id starts after the first one.
        let (_, id) = rest.split_once('-')?;
        Some(id)
    }
}

/// `$XDG_RUNTIME_DIR`, when it is set to an absolute path of a directory that is ours and
/// that no one else may write in (as the XDG base directory specification promises).
fn runtime_dir() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (dir.is_absolute() && meta.is_dir() && meta.uid() == perms::my_uid() && meta.mode() & 0o022 == 0).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn handoff_owner_parses_seed_names() {
        assert_eq!(
            DataDir::handoff_owner("handoff-20261124T060421.123Z-agent-001-IMPL-to-ORCHESTRATOR.json"),
            Some("agent-001-IMPL")
        );
        assert_eq!(DataDir::handoff_owner("handoff-x.json"), None);
        let d = DataDir::new("/tmp/x".into());
        let id = AgentId::parse("agent-001-A").unwrap();
        let f = d.handoff_file(&id, "20261124T060421.123Z");
        assert_eq!(DataDir::handoff_owner(f.file_name().unwrap().to_str().unwrap()), Some("agent-001-A"));
    }
    #[test]
    fn long_socket_path_falls_back() {
        let d = DataDir::new(PathBuf::from("/tmp").join("x".repeat(120)));
        assert!(d.socket().as_os_str().len() < 100);
    }
}
