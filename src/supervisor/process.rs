//! Thin, safe wrappers over the few process and file-lock system calls corral needs.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Sends `sig` to every process of the group. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: libc::c_int) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal process group <= 1"));
    }
    // SAFETY: plain syscall on integer arguments.
    match check(unsafe { libc::killpg(pgid, sig) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Whether any process of the group still exists (zombies included).
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pgid > 1 && unsafe { libc::killpg(pgid, 0) } == 0
}

/// A file descriptor that becomes readable when process `pid` ends; works for processes
/// that are not our children (after a supervisor restart).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps `pid` if it is our child and has ended; a no-op for anything else.
pub fn reap(pid: i32) {
    if pid <= 0 {
        return; // 0 and -1 would mean "any child"
    }
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Reaps every ended child without blocking.
pub fn reap_any() {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Makes this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reserves `len` bytes of disk for the file without changing its size, so later writes
/// within them need no new space (best effort: not every file system can).
pub fn reserve(f: &File, len: i64) {
    // SAFETY: fallocate on a valid descriptor; KEEP_SIZE leaves the visible content alone.
    unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
}

/// Takes an exclusive lock without waiting; `Ok(false)` when someone else holds it.
pub fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: valid open descriptor.
    match check(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an exclusive lock, waiting for it.
pub fn lock(f: &File) -> io::Result<()> {
    loop {
        // SAFETY: valid open descriptor.
        match check(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes; `Ok(false)` on timeout.
pub fn wait_readable(fd: &impl AsRawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd.
        match check(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) => return Ok(n > 0),
        }
    }
}

pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: installing SIG_IGN is always sound.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

pub fn default_signal(sig: libc::c_int) {
    // SAFETY: installing SIG_DFL is always sound.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Exit code and signal of a wait status from std.
pub fn decode_status(st: std::process::ExitStatus) -> crate::policy::agent::ProcessEnd {
    use crate::policy::agent::ProcessEnd;
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(code), _) => ProcessEnd::Exited { code },
        (None, Some(signal)) => ProcessEnd::Signaled { signal },
        _ => ProcessEnd::Lost { reason: format!("unrecognised wait status {st:?}") },
    }
}

/// The soft descriptor limit this process started with, before [`raise_fd_limit`].
static ORIGINAL_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises the soft limit on open descriptors to the hard one: the supervisor holds one per
/// client connection and one per running attempt. Returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    ORIGINAL_NOFILE.store(lim.rlim_cur, std::sync::atomic::Ordering::Relaxed);
    let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: a valid rlimit that only raises the soft limit up to the hard one.
    if lim.rlim_cur < lim.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return lim.rlim_max;
    }
    lim.rlim_cur
}

/// Gives a child about to execute (the launcher, a shim, and through them the agents) the
/// soft descriptor limit the supervisor started with: programs written for the usual 1,024
/// (select() users among them) must not be handed more. Async-signal-safe.
pub fn restore_fd_limit() {
    let original = ORIGINAL_NOFILE.load(std::sync::atomic::Ordering::Relaxed);
    if original == 0 {
        return;
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers; getrlimit and setrlimit are async-signal-safe.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur > original {
            lim.rlim_cur = original;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
