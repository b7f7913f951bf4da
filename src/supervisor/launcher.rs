//! The launcher: a small single-threaded process the supervisor starts once and asks to
//! fork a shim per attempt. Forking it is a fraction of a millisecond where executing the
//! corral binary again is several, and the shim is on the path from `corral spawn` to the
//! agent running. Shims it forks are on their own (own process group, reaped by it, the
//! kernel or their subreaper); if the launcher dies the supervisor starts shims directly.

use super::process;
use super::shim::{self, Handshake, HandshakeMsg, ShimArgs};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The launcher's main loop (`corral __launcher`): one JSON `ShimArgs` per line on stdin.
///
/// The next shim is forked before its request comes: a warm shim waits on a pipe of its
/// own, and a request is handed to it, so neither the fork nor the new process's first
/// scheduling is on the path from `corral spawn` to the agent running. A warm shim that
/// is gone (killed) is passed over and the request forked for as before.
pub fn run() -> i32 {
    process::ignore_signal(libc::SIGHUP);
    process::ignore_signal(libc::SIGINT);
    // Shims it forks are reaped by the kernel; the launcher never waits for them.
    process::ignore_signal(libc::SIGCHLD);
    let stdin = std::io::stdin();
    // Where the last request's files were: the next warm shim makes its spares there.
    let mut near: Option<(std::path::PathBuf, std::path::PathBuf)> = None;
    let mut warm = Warm::fork(&near);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let args: ShimArgs = match serde_json::from_str(&line) {
            Ok(a) => a,
            Err(e) => {
                crate::elog!("corral launcher: unreadable request: {e}");
                continue;
            }
        };
        let here = (args.run.clone(), args.log.clone());
        let handed = warm.take().is_some_and(|w| w.hand(&line));
        if !handed {
            fork_shim(args);
        }
        near = Some(here);
        warm = Warm::fork(&near);
    }
    // Closing a warm shim's pipe without a request ends it.
    drop(warm);
    0
}

/// What a freshly forked shim does before its own work: its own process group, no
/// terminal input, the default SIGCHLD back, and a name of its own.
///
/// # Safety
/// Only in the child of a fork from the launcher's single thread.
unsafe fn shim_child_setup(name: &std::ffi::CStr) {
    // SAFETY: plain syscalls in the fresh child.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::setpgid(0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

/// Forks a shim for `args` at once (no warm shim could take them).
fn fork_shim(args: ShimArgs) {
    // SAFETY: this process has one thread, so the child may run any code after fork.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: the fresh child of a single-threaded process.
            unsafe { shim_child_setup(c"corral-shim") };
            std::process::exit(shim::run(args));
        }
        -1 => {
            let err = std::io::Error::last_os_error();
            let msg = HandshakeMsg {
                seq: args.seq,
                shim_pid: 0,
                result: Handshake::NotStarted { reason: format!("cannot fork a shim: {err}") },
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string(&msg).unwrap_or_default());
            let _ = out.flush();
        }
        _ => {}
    }
}

/// A shim forked ahead of its request, waiting for it on a pipe.
struct Warm {
    pipe: std::fs::File,
}

impl Warm {
    /// `None` when no pipe or process can be had now: requests are then forked for.
    fn fork(near: &Option<(std::path::PathBuf, std::path::PathBuf)>) -> Option<Self> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        use std::os::fd::FromRawFd;
        // SAFETY: pipe2 just returned these descriptors, owned by nothing else.
        let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
        // SAFETY: this process has one thread, so the child may run any code after fork.
        match unsafe { libc::fork() } {
            0 => {
                drop(write);
                // SAFETY: the fresh child of a single-threaded process.
                unsafe { shim_child_setup(c"corral-warm") };
                // Its files made now, off the path of the request to come.
                let spares = match near {
                    Some((run, log)) => shim::Spares::make(run, log),
                    None => shim::Spares::default(),
                };
                std::process::exit(Self::wait(read, spares));
            }
            -1 => None,
            _ => Some(Self { pipe: write }),
        }
    }

    /// In the warm child: its request, then the shim's whole run; nothing (the launcher
    /// ended or replaced it) ends it at once.
    fn wait(read: std::fs::File, spares: shim::Spares) -> i32 {
        let mut line = String::new();
        let got = BufReader::new(read).read_line(&mut line);
        if !matches!(got, Ok(n) if n > 0) {
            return 0;
        }
        let Ok(args) = serde_json::from_str::<ShimArgs>(&line) else { return 0 };
        // SAFETY: prctl on this process only.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"corral-shim".as_ptr() as libc::c_ulong, 0, 0, 0) };
        shim::run_with(args, spares)
    }

    /// Hands a request to the warm shim; `false` if it is gone (nothing reached it).
    fn hand(mut self, line: &str) -> bool {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // A request that does not fit the pipe's buffer at once would hang the launcher on a
        // warm shim that was stopped: such a request is forked for instead.
        if buf.len() > PIPE_ROOM {
            return false;
        }
        // A warm shim killed meanwhile takes nothing (EPIPE; SIGPIPE is ignored). One killed
        // after reading goes unanswered, as a shim killed just after its fork always could:
        // the supervisor's handshake deadline ends that attempt as not started.
        self.pipe.write_all(&buf).is_ok()
    }
}

/// Well within the 64 KiB a new pipe holds: a write this size never waits for its reader.
const PIPE_ROOM: usize = 32 * 1024;

/// The supervisor's handle on its launcher. Requests go in on its stdin; the handshakes of
/// the shims it forks come out on its stdout (shared by every shim, one line each, matched
/// to requests by `seq`), read by whoever took [`Launcher::start`]'s second half.
pub struct Launcher {
    child: Child,
    stdin: ChildStdin,
}

impl Launcher {
    pub fn start() -> std::io::Result<(Self, BufReader<ChildStdout>)> {
        let mut cmd = Command::new(std::env::current_exe()?);
        // The supervisor's own environment: a shim that finds no supervisor running when
        // its attempt ends starts one with it.
        cmd.arg("__launcher")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own group: a signal meant for the supervisor's group never reaches it.
            .process_group(0);
        // SAFETY: umask and setrlimit are async-signal-safe. The launcher learns the user's
        // umask and descriptor limit from those it starts with, and passes them on to the
        // agents of the shims it forks.
        unsafe {
            cmd.pre_exec(|| {
                crate::protocol::perms::restore_user_umask();
                process::restore_fd_limit();
                Ok(())
            })
        };
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok((Self { child, stdin }, out))
    }

    /// Asks for a shim; its handshake arrives on the launcher's stdout. An `Err` means the
    /// launcher itself failed (it should be replaced).
    pub fn send(&mut self, args: &ShimArgs) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(args).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()
    }
}

/// Reads handshake lines until the launcher and every shim it forked have closed the pipe.
pub fn read_handshakes(mut out: BufReader<ChildStdout>, mut each: impl FnMut(HandshakeMsg)) {
    let mut line = String::new();
    loop {
        line.clear();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Ok(m) = serde_json::from_str::<HandshakeMsg>(&line) {
                    each(m);
                }
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
