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

/// Whether process `pid` is gone for certain (no such process; not merely one of another
/// user's).
pub fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pid > 0 && unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether process `pid` can do nothing more: gone, or a zombie waiting to be reaped.
pub fn process_ended(pid: i32) -> bool {
    if process_gone(pid) {
        return true;
    }
    // The state is the first field after the command's closing parenthesis.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(false)
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

/// A pipe whose both ends are close-on-exec; the read end does not block.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just gave us both descriptors.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    Ok((r, w))
}

/// A copy of `fd` at descriptor number `at`, without close-on-exec, so processes started
/// while it is open inherit it there. A descriptor already at `at` is replaced.
pub fn dup_inheritable(fd: &impl AsRawFd, at: i32) -> io::Result<OwnedFd> {
    // SAFETY: dup2 on a descriptor we own; `at` becomes ours (dup2 never sets close-on-exec).
    let got = check(unsafe { libc::dup2(fd.as_raw_fd(), at) })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(got) })
}

/// A copy of descriptor `fd` of the process behind `pidfd` (same user, our descendant).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// The signal a supervisor sends a shim to ask it to stop its attempt; the value carries
/// the grace in milliseconds.
pub fn stop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

/// Queues `sig` with `value` to the process behind `pidfd` (never to a reused pid).
pub fn pidfd_queue(pidfd: &OwnedFd, sig: libc::c_int, value: u64) -> io::Result<()> {
    // SAFETY: an all-zero siginfo is valid; we fill the fields of a sigqueue(3) signal.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = libc::SI_QUEUE;
    // Layout of the SI_QUEUE member on Linux: pid, uid, then the sigval.
    #[repr(C)]
    struct Queued {
        signo: i32,
        errno: i32,
        code: i32,
        pad: i32,
        pid: i32,
        uid: u32,
        value: u64,
    }
    // SAFETY: Queued is a prefix of siginfo_t's layout on 64-bit Linux.
    let q = unsafe { &mut *(&mut info as *mut libc::siginfo_t as *mut Queued) };
    q.pid = std::process::id() as i32;
    // SAFETY: getuid never fails.
    q.uid = unsafe { libc::getuid() };
    q.value = value;
    // SAFETY: pidfd_send_signal with a valid pidfd and siginfo.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, &info, 0) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Blocks `sigs` in this thread and returns a non-blocking signalfd for them.
pub fn signalfd(sigs: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        check(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()))?;
        let fd = check(libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The next pending signal of a signalfd: its number and sigqueue value.
pub fn read_signal(fd: &OwnedFd) -> Option<(i32, u64)> {
    // SAFETY: a zeroed signalfd_siginfo is valid; read fills at most its size.
    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            &mut si as *mut _ as *mut libc::c_void,
            std::mem::size_of::<libc::signalfd_siginfo>(),
        )
    };
    (n as usize == std::mem::size_of::<libc::signalfd_siginfo>()).then_some((si.ssi_signo as i32, si.ssi_ptr))
}

/// Reaps `pid` if it is our child and has ended: its end, `Ok(None)` while it runs.
pub fn try_wait(pid: i32) -> io::Result<Option<crate::policy::agent::ProcessEnd>> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
    let r = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((r == pid || (pid < 0 && r > 0)).then(|| decode_raw(status)))
}

/// Reaps every ended child in process group `pgid` (those reparented to us included).
pub fn reap_group(pgid: i32) {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
    while pgid > 1 && unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) } > 0 {}
}

pub fn decode_raw(status: libc::c_int) -> crate::policy::agent::ProcessEnd {
    use crate::policy::agent::ProcessEnd;
    if libc::WIFEXITED(status) {
        ProcessEnd::Exited { code: libc::WEXITSTATUS(status) }
    } else if libc::WIFSIGNALED(status) {
        ProcessEnd::Signaled { signal: libc::WTERMSIG(status) }
    } else {
        ProcessEnd::Lost { reason: format!("unrecognised wait status {status}") }
    }
}

/// When process `pid` started (clock ticks since boot, from /proc): with the pid, it names
/// one process for good, so a reused pid is never mistaken for it.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Waits until one of `fds` is readable, or `timeout_ms` (-1: forever) passes; which were.
pub fn poll_readable(fds: &[i32], timeout_ms: i32) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: p is a valid array of pollfds; negative fds are ignored by poll.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    p.iter().map(|x| n > 0 && x.revents != 0).collect()
}

/// Reaps one ended child, any: its pid and end; `Ok(None)` when none has ended.
pub fn try_wait_any() -> io::Result<Option<(i32, crate::policy::agent::ProcessEnd)>> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
    let r = check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) })?;
    Ok((r > 0).then(|| (r, decode_raw(status))))
}

/// Whether a process of group `pgid` is alive, zombies not counted (an orphan's zombie
/// waits for a reaper that may be slow): a scan of /proc, for the rare groups that are not
/// our descendants' to reap.
pub fn group_has_live(pgid: i32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    match live_members(pgid, true) {
        Some(m) => !m.is_empty(),
        None => true, // /proc unreadable: the group signal said it lives
    }
}

/// The live (not zombie) processes of group `pgid`, its leader first when it lives.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut m = live_members(pgid, false).unwrap_or_default();
    m.sort_by_key(|&p| (p != pgid, p));
    m
}

/// Scans /proc for the live members of a group (stopping at the first when `first`).
fn live_members(pgid: i32, first: bool) -> Option<Vec<i32>> {
    let rd = std::fs::read_dir("/proc").ok()?;
    let mut found = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().take(3).collect();
        if f.len() == 3 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X" {
            found.push(pid);
            if first {
                break;
            }
        }
    }
    Some(found)
}

/// Whether a descriptor is a pipe (what an agent holds at the agreed number may be
/// anything once it has closed and reused it).
pub fn is_pipe(fd: &OwnedFd) -> bool {
    // SAFETY: fstat writes into the zeroed stat buffer it is given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0) && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}
