//! Turns writes in `agent-status/` and `handoffs/` (and adapter agents' observation files
//! in `run/`) into supervisor messages (inotify): a status write is seen in milliseconds,
//! with no polling tick.
//!
//! Writes are coalesced: the files written since the supervisor last looked wait in one set,
//! and the supervisor is woken once for all of them. An agent rewriting its status file
//! thousands of times a second costs one read per look, and the supervisor's queue never
//! grows with it.
//!
//! The directories are the agents' to touch too: one may be deleted, moved away, or
//! replaced by a symlink. The watch notices (the directory's own delete or move, its watch
//! ending, or, when a file event comes, a different directory now under the name), makes
//! the directory again through [`fsio::ensure_dir`] (a symlink is moved aside, never
//! watched through), watches it again, and hands the supervisor the directory itself, which
//! it answers by looking at every file in it anew, so no agent's report is lost with it.

use super::daemon::Msg;
use crate::protocol::fsio;
use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Files written since the supervisor last looked, in the order first seen. A directory in
/// the list means: look at all of it again.
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

fn push(pending: &Pending, tx: &UnboundedSender<Msg>, p: PathBuf) {
    let mut w = pending.lock().unwrap_or_else(|e| e.into_inner());
    if w.seen.insert(p.clone()) {
        w.order.push(p);
        if w.order.len() == 1 {
            let _ = tx.send(Msg::Written);
        }
    }
}

/// Watches until dropped.
pub struct Watcher {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: one byte to a pipe we own; the thread wakes on it and returns.
        unsafe { libc::write(self.stop.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const FILE_EVENTS: u32 = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_ATTRIB;
const SELF_EVENTS: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED | libc::IN_UNMOUNT;
/// Never through a symlink, only a directory, and no events for names already unlinked.
const WATCH_FLAGS: u32 = libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW | libc::IN_EXCL_UNLINK;

struct Watched {
    path: PathBuf,
    wd: i32,
    /// The directory watched, to tell it from another one put under its name.
    id: (u64, u64),
}

struct Dirs {
    inotify: OwnedFd,
    root: PathBuf,
    /// The data dir as it was at start: once the name holds another (or none), nothing is
    /// made again in it, and the supervisor is told.
    root_id: super::identity::FileId,
    root_wd: i32,
    dirs: Vec<Watched>,
}

impl Dirs {
    fn root_intact(&self) -> bool {
        super::identity::file_id(&self.root, true) == Some(self.root_id)
    }

    /// Whether a directory gone from the data dir was the agents' doing (the data dir and
    /// its registry stay) rather than the data dir being deleted: looked at a few times over
    /// a moment, since `rm -rf` takes the directories one by one.
    fn settled(&self) -> bool {
        let db = crate::protocol::DataDir::new(self.root.clone()).db_file();
        for round in 0..3 {
            if round > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !self.root_intact() || fsio::lstat(&db).is_none() {
                return false;
            }
        }
        true
    }

    /// (Re)makes the directory and watches it; a few rounds against an agent swapping it
    /// while we do.
    fn arm(&mut self, i: usize) -> io::Result<()> {
        if !self.root_intact() {
            return Err(io::Error::other(format!("{} is no longer the data dir served", self.root.display())));
        }
        let fd = self.inotify.as_raw_fd();
        let w = &mut self.dirs[i];
        if w.wd >= 0 {
            // SAFETY: valid inotify descriptor; a stale wd only gives EINVAL.
            unsafe { libc::inotify_rm_watch(fd, w.wd) };
            w.wd = -1;
        }
        let c = CString::new(w.path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut last = io::Error::other("not watched");
        for _ in 0..8 {
            if let Err(e) = fsio::ensure_dir(&self.root, &w.path) {
                last = e;
                continue;
            }
            // SAFETY: valid descriptor and C string.
            let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), FILE_EVENTS | SELF_EVENTS | WATCH_FLAGS) };
            if wd < 0 {
                last = io::Error::last_os_error();
                continue;
            }
            match fsio::lstat(&w.path).filter(|m| m.is_dir()) {
                Some(m) => {
                    w.wd = wd;
                    w.id = (m.dev(), m.ino());
                    return Ok(());
                }
                None => {
                    // SAFETY: as above.
                    unsafe { libc::inotify_rm_watch(fd, wd) };
                }
            }
        }
        Err(io::Error::new(last.kind(), format!("cannot watch {}: {last}", w.path.display())))
    }

    /// Whether the name still holds the directory being watched.
    fn still_there(&self, i: usize) -> bool {
        let w = &self.dirs[i];
        fsio::lstat(&w.path).is_some_and(|m| m.is_dir() && (m.dev(), m.ino()) == w.id)
    }
}

/// Status files and handoffs (`.json`), and adapter agents' observation files (`.obs`).
fn visible(name: &OsStr) -> bool {
    let b = name.as_bytes();
    (b.ends_with(b".json") || b.ends_with(b".obs")) && !b.starts_with(b".")
}

/// Watches `dirs` (directories below the data dir `root`, whose identity is `root_id`), and
/// the data dir itself for its deletion or move (then `root` is handed over as written).
pub fn watch(
    root: &Path,
    root_id: super::identity::FileId,
    dirs: &[PathBuf],
    pending: Pending,
    tx: UnboundedSender<Msg>,
) -> io::Result<Watcher> {
    // SAFETY: plain syscalls creating descriptors we own.
    let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if inotify < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created.
    let inotify = unsafe { OwnedFd::from_raw_fd(inotify) };
    let mut pipe = [0; 2];
    // SAFETY: a valid array of two descriptors.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, each owned once.
    let (wake, stop) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let c = CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid descriptor and C string.
    let root_wd = unsafe {
        libc::inotify_add_watch(
            inotify.as_raw_fd(),
            c.as_ptr(),
            libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_ONLYDIR,
        )
    };
    let mut state = Dirs {
        inotify,
        root: root.to_path_buf(),
        root_id,
        root_wd,
        dirs: dirs.iter().map(|p| Watched { path: p.clone(), wd: -1, id: (0, 0) }).collect(),
    };
    for i in 0..state.dirs.len() {
        state.arm(i)?;
    }
    let thread =
        std::thread::Builder::new().name("corral-watch".into()).spawn(move || run(state, wake, pending, tx))?;
    Ok(Watcher { stop, thread: Some(thread) })
}

fn run(mut state: Dirs, wake: OwnedFd, pending: Pending, tx: UnboundedSender<Msg>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd { fd: state.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: a valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            crate::elog!("corral daemon: the file watch failed: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let mut rearm = BTreeSet::new();
        let mut touched = BTreeSet::new();
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(state.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event here; read_unaligned copes with
                // the byte buffer's alignment.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                let name_bytes = &buf[at + header..(at + header + ev.len as usize).min(n as usize)];
                at += header + ev.len as usize;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    // Events were lost: look at everything again.
                    rearm.extend(0..state.dirs.len());
                    continue;
                }
                if ev.wd == state.root_wd && ev.wd >= 0 {
                    if ev.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                        push(&pending, &tx, state.root.clone());
                    }
                    continue;
                }
                let Some(i) = state.dirs.iter().position(|w| w.wd == ev.wd) else { continue };
                if ev.mask & SELF_EVENTS != 0 {
                    rearm.insert(i);
                    continue;
                }
                touched.insert(i);
                let name = OsStr::from_bytes(name_bytes.split(|b| *b == 0).next().unwrap_or_default());
                if visible(name) {
                    push(&pending, &tx, state.dirs[i].path.join(name));
                }
            }
        }
        // A directory moved away still reports its events under the old name: make sure
        // the name still holds what is watched.
        for i in touched {
            if !state.still_there(i) {
                rearm.insert(i);
            }
        }
        if !rearm.is_empty() && !state.settled() {
            // The whole data dir is going (or went): the supervisor stops; nothing is made
            // again in it, which would leave `rm -rf` unable to finish.
            push(&pending, &tx, state.root.clone());
            continue;
        }
        for i in rearm {
            if let Err(e) = state.arm(i) {
                crate::elog!("corral daemon: {e}");
            }
            let path = state.dirs[i].path.clone();
            crate::elog!("corral daemon: {} was replaced; watching it again and rescanning", path.display());
            push(&pending, &tx, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(pending: &Pending, want: &Path) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if pending.lock().unwrap().seen.contains(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn replaced_directories_are_made_again_and_watched() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let status = root.join("agent-status");
        std::fs::create_dir_all(&status).unwrap();
        std::fs::write(root.join("corral.db"), "").unwrap();
        let pending: Pending = Default::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let root_id = crate::supervisor::identity::file_id(&root, true).unwrap();
        let _w = watch(&root, root_id, std::slice::from_ref(&status), pending.clone(), tx).unwrap();
        std::fs::write(status.join("a.json"), "{}").unwrap();
        assert!(wait_for(&pending, &status.join("a.json")));

        // rm -rf + mkdir: seen, watched again, later writes seen.
        std::fs::remove_dir_all(&status).unwrap();
        let _ = std::fs::create_dir(&status);
        assert!(wait_for(&pending, &status));
        take(&pending);
        std::fs::write(status.join("b.json"), "{}").unwrap();
        assert!(wait_for(&pending, &status.join("b.json")));

        // Moved away, a symlink in its place: the symlink is moved aside, a real
        // directory made, and nothing is written where the symlink pointed.
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::rename(&status, d.path().join("old")).unwrap();
        let _ = std::os::unix::fs::symlink(&elsewhere, &status);
        assert!(wait_for(&pending, &status));
        let until = Instant::now() + Duration::from_secs(5);
        while !fsio::lstat(&status).is_some_and(|m| m.is_dir()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        take(&pending);
        std::fs::write(status.join("c.json"), "{}").unwrap();
        assert!(wait_for(&pending, &status.join("c.json")));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod obs_tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    #[test]
    fn observation_files_rewritten_in_place_are_seen_and_other_run_files_are_not() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        let run = root.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(root.join("corral.db"), "").unwrap();
        let obs = run.join("agent-001-W.1.obs");
        std::fs::write(&obs, "{}\n").unwrap();
        let pending: Pending = Default::default();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let root_id = crate::supervisor::identity::file_id(&root, true).unwrap();
        let _w = watch(&root, root_id, std::slice::from_ref(&run), pending.clone(), tx).unwrap();
        std::fs::write(run.join("agent-001-W.1.run"), "x").unwrap();
        // Written in place, as the watcher of an attempt rewrites it: seen.
        let f = std::fs::OpenOptions::new().write(true).open(&obs).unwrap();
        f.write_all_at(b"[]", 0).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !pending.lock().unwrap().seen.contains(&obs) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = take(&pending);
        assert!(seen.contains(&obs), "{seen:?}");
        assert!(!seen.iter().any(|p| p.extension().is_some_and(|e| e == "run")), "{seen:?}");
    }
}
