//! The supervisor's reach into the machine beyond its registry: the clock, signals to
//! process groups, starting shims, and what an attempt's run file and shim say. `RealIo` is
//! the machine; the supervisor's own tests put a fake in its place, so reconcile, admission
//! and restarts run deterministically without processes.
//!
//! Nothing here may wait on an agent: starting a shim returns at once and its handshake
//! comes back to the loop as a message.

use super::daemon::Msg;
use super::launcher::{self, Launcher};
use super::process;
use super::shim::{Handshake, RunInfo, ShimArgs};
use crate::policy::lifecycle::{Now, Signal};
use crate::protocol::{AgentId, time};
use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio::sync::mpsc::UnboundedSender;

/// How long a shim has to say whether it started the command.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a run file says, and whether its shim still holds it (`None`: there is no file).
pub struct RunProbe {
    pub held: Option<bool>,
    pub info: RunInfo,
}

pub trait Io {
    /// The time on both clocks, with a jitter sample.
    fn now(&mut self) -> Now;
    /// Milliseconds on the monotonic clock deadlines are set on.
    fn mono_ms(&self) -> u64;
    fn signal_group(&mut self, pgid: i32, signal: Signal) -> std::io::Result<()>;
    /// Starts a shim with `args` (whose `seq` names the request). Returns at once; the
    /// outcome comes back as [`Msg::Launched`] with that `seq`, unless the shim never
    /// answers (the loop's own deadline covers that).
    fn start_shim(&mut self, args: ShimArgs);
    fn probe_run(&self, run: &Path) -> RunProbe;
    /// A pidfd of shim `shim_pid` of the attempt whose run file is `run`, unless the shim is
    /// gone (its exit recorded: the pid may be someone else's by now) or cannot be opened.
    fn open_shim(&self, shim_pid: i32, run: &Path) -> Option<OwnedFd>;
    /// Reads a run file; an error only for a failure that may pass, so that an exit record
    /// that is there is never taken for a missing one.
    fn read_run(&self, run: &Path) -> std::io::Result<RunInfo>;
    /// Watches shim `shim_pid` of an attempt and sends [`Msg::Exited`] when it ends (at once
    /// when it cannot be watched: then the run file says what became of it). `pidfd`, when
    /// given, was opened while the shim could not have been replaced by another process.
    fn watch_exit(&mut self, id: &AgentId, attempt: u32, shim_pid: i32, run: &Path, pidfd: Option<OwnedFd>);
}

/// The machine.
pub struct RealIo {
    tx: UnboundedSender<Msg>,
    starter: Option<std::sync::mpsc::Sender<ShimArgs>>,
}

impl RealIo {
    pub fn new(tx: UnboundedSender<Msg>) -> Self {
        Self { tx, starter: None }
    }
}

pub fn clock_now() -> Now {
    // Full jitter needs a uniform sample; the low bits of the clock are plenty for that.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mixed = (nanos as u64 ^ std::process::id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    Now { wall: time::rfc3339(time::now()), mono: time::mono_ms(), jitter: mixed as f64 / (1u64 << 53) as f64 }
}

impl Io for RealIo {
    fn now(&mut self) -> Now {
        clock_now()
    }

    fn mono_ms(&self) -> u64 {
        time::mono_ms()
    }

    fn signal_group(&mut self, pgid: i32, signal: Signal) -> std::io::Result<()> {
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        process::signal_group(pgid, sig)
    }

    fn start_shim(&mut self, args: ShimArgs) {
        let args = match &self.starter {
            Some(s) => match s.send(args) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(args)) => args,
            },
            None => args,
        };
        let (stx, srx) = std::sync::mpsc::channel();
        let tx = self.tx.clone();
        let started = std::thread::Builder::new().name("corral-start".into()).spawn(move || starter(srx, tx));
        match started {
            Ok(_) => {
                let _ = stx.send(args);
                self.starter = Some(stx);
            }
            Err(e) => {
                crate::elog!("corral daemon: cannot start the starter thread ({e}); starting the shim directly");
                exec_shim(args, self.tx.clone());
            }
        }
    }

    fn probe_run(&self, run: &Path) -> RunProbe {
        // Whether its shim lives, then what it wrote: once the lock is free, the file is final.
        let held = RunInfo::held(run);
        RunProbe { held, info: RunInfo::read(run) }
    }

    fn read_run(&self, run: &Path) -> std::io::Result<RunInfo> {
        read_run(run)
    }

    fn open_shim(&self, shim_pid: i32, run: &Path) -> Option<OwnedFd> {
        process::pidfd_open(shim_pid).ok().filter(|_| RunInfo::read(run).exit.is_none())
    }

    /// Watches the pidfd; without one (none could be opened, as when descriptors ran out),
    /// waits until the shim no longer holds the lock on its run file.
    fn watch_exit(&mut self, id: &AgentId, attempt: u32, shim_pid: i32, run: &Path, pidfd: Option<OwnedFd>) {
        let watch = match pidfd {
            Some(fd) => Some(Ok(fd)),
            // Not our child: the shim may already be gone (a command that ended at once).
            // Opened after it may have ended: with its exit record there, the pid could
            // already be someone else's, so it is not watched.
            None => match process::pidfd_open(shim_pid) {
                Ok(fd) => RunInfo::read(run).exit.is_none().then_some(Ok(fd)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
                Err(_) => Some(Err(run.to_path_buf())),
            },
        };
        let (tx, id) = (self.tx.clone(), id.clone());
        tokio::spawn(async move {
            match watch {
                // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until dropped.
                Some(Ok(fd)) => match unsafe { tokio::io::unix::AsyncFd::register(fd) } {
                    Ok(afd) => {
                        let _ = afd.readable().await;
                    }
                    Err(e) => crate::elog!("corral daemon: cannot watch the shim of {id}: {e}"),
                },
                Some(Err(run)) => {
                    while !shim_gone(&run) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                None => {}
            }
            let _ = tx.send(Msg::Exited { id, attempt, shim_pid });
        });
    }
}

/// Whether no shim holds the run file any more; `false` while that cannot be told (the
/// file cannot be opened for a passing reason).
fn shim_gone(run: &Path) -> bool {
    match crate::protocol::fsio::open_read(super::shim::data_root(run), run) {
        Ok(f) => process::try_lock(&f).unwrap_or(false),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// A failure that may pass: no descriptor free, interrupted, try again.
fn transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::EINTR | libc::EAGAIN | libc::ENOMEM))
}

fn read_run(path: &Path) -> std::io::Result<RunInfo> {
    use std::io::Read;
    let file = match crate::protocol::fsio::open_read(super::shim::data_root(path), path) {
        Ok(f) => f,
        Err(e) if transient(&e) => return Err(e),
        _ => return Ok(RunInfo::default()),
    };
    let mut bytes = Vec::new();
    loop {
        match (&file).take(crate::protocol::files::MAX_FILE_BYTES).read_to_end(&mut bytes) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if transient(&e) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(RunInfo::parse(&String::from_utf8_lossy(&bytes)))
}

/// The starter thread: hands each request to the launcher (a fork per shim), replacing the
/// launcher when it fails and starting shims directly when there is none. Handshakes are
/// read by a thread per launcher, so a shim that never answers holds up nobody.
fn starter(rx: std::sync::mpsc::Receiver<ShimArgs>, tx: UnboundedSender<Msg>) {
    let mut current: Option<Launcher> = None;
    for args in rx {
        if current.is_none() {
            match Launcher::start() {
                Ok((l, out)) => {
                    let tx = tx.clone();
                    let reader = std::thread::Builder::new().name("corral-handshakes".into()).spawn(move || {
                        launcher::read_handshakes(out, |m| {
                            let _ = tx.send(Msg::Launched {
                                seq: m.seq,
                                shim_pid: m.shim_pid,
                                result: m.result,
                                pidfd: None,
                            });
                        })
                    });
                    match reader {
                        Ok(_) => current = Some(l),
                        Err(e) => crate::elog!("corral daemon: cannot read the launcher ({e})"),
                    }
                }
                Err(e) => crate::elog!("corral daemon: cannot start the launcher ({e}); starting shims directly"),
            }
        }
        match current.as_mut().map(|l| l.send(&args)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                crate::elog!("corral daemon: the launcher failed ({e}); replacing it");
                current = None;
                exec_shim(args, tx.clone());
            }
            None => exec_shim(args, tx.clone()),
        }
    }
}

/// The fallback: execute `corral __shim` as our own child, on a thread of its own that
/// waits for the handshake.
fn exec_shim(args: ShimArgs, tx: UnboundedSender<Msg>) {
    let seq = args.seq;
    let fail_tx = tx.clone();
    let spawned = std::thread::Builder::new().name("corral-exec-shim".into()).spawn(move || {
        let (shim_pid, result, pidfd) = exec_and_wait(&args);
        let _ = tx.send(Msg::Launched { seq: args.seq, shim_pid, result, pidfd });
    });
    if let Err(e) = spawned {
        let reason = format!("cannot start a thread for the attempt's shim: {e}");
        let _ = fail_tx.send(Msg::Launched { seq, shim_pid: 0, result: Handshake::NotStarted { reason }, pidfd: None });
    }
}

fn exec_and_wait(args: &ShimArgs) -> (i32, Handshake, Option<OwnedFd>) {
    let not_started = |reason: String| (0, Handshake::NotStarted { reason }, None);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return not_started(format!("cannot find the corral executable: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("__shim")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own group: a signal meant for the supervisor's group never reaches the shim.
        .process_group(0);
    // SAFETY: umask and setrlimit are async-signal-safe; the shim passes the user's umask
    // and descriptor limit on to the agent.
    unsafe {
        cmd.pre_exec(|| {
            crate::protocol::perms::restore_user_umask();
            process::restore_fd_limit();
            Ok(())
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(format!("cannot start the attempt's shim: {e}")),
    };
    let shim_pid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = serde_json::to_vec(&args).unwrap_or_default();
        line.push(b'\n');
        let _ = std::io::Write::write_all(&mut stdin, &line);
    }
    // Opened while the shim is our unreaped child, so the pid cannot have been reused.
    let pidfd = match process::pidfd_open(shim_pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return not_started(format!("pidfd_open({shim_pid}): {e}"));
        }
    };
    let out = child.stdout.take().expect("piped");
    let handshake = match process::wait_readable(&out, HANDSHAKE_TIMEOUT_MS as i32) {
        Ok(true) => {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            serde_json::from_str::<super::shim::HandshakeMsg>(&line).ok()
        }
        _ => None,
    };
    match handshake.map(|m| m.result) {
        Some(started @ Handshake::Started { .. }) => (shim_pid, started, Some(pidfd)),
        Some(Handshake::NotStarted { reason }) => {
            let _ = child.wait();
            (shim_pid, Handshake::NotStarted { reason }, None)
        }
        None => match RunInfo::read(&args.run).start {
            // It recorded a start: it owns the attempt, and its exit record will say how it ended.
            Some(s) => (s.shim_pid, Handshake::Started { pid: s.pid, out_fd: s.out_fd }, Some(pidfd)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                not_started(no_word_reason())
            }
        },
    }
}

pub fn no_word_reason() -> String {
    format!("the attempt's shim did not report within {}s", HANDSHAKE_TIMEOUT_MS / 1000)
}
