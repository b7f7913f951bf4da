//! The per-attempt shim (`corral __shim`). It is what makes "kill -9 of the supervisor loses
//! no outcome" true: the shim, not the supervisor, is the agent's parent. It starts the
//! command in its own process group with output going straight to the log, holds a lock
//! for as long as the attempt lives, waits for the exit, clears the group of leftovers and
//! records the exit. The supervisor may die and come back at any point in between.
//!
//! Everything about one attempt's process lives in one file, `run/<id>.<n>.run`, which the
//! shim locks for the attempt's whole life: one line saying which shim it is, one when the
//! command started, one when it ended. Space for them is reserved when the file is made, so
//! the exit is recorded even on a disk that filled up meanwhile. Its lines are read only
//! when its lock is free (the shim is gone) or for what the shim wrote before it answered.

use super::{process, relay};
use crate::policy::agent::ProcessEnd;
use crate::protocol::{files, fsio, time};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRecord {
    pub shim_pid: i32,
    pub pid: i32,
    pub started_at: String,
    /// When the process started, from /proc (clock ticks since boot): with the pid, it
    /// names the process for good, so a reused pid is never taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// The shim's descriptor of the output pipe's read end (a supervisor copies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_fd: Option<i32>,
    /// The descriptor at which the agent's own processes keep a copy of that read end, so
    /// the pipe never loses its last reader when every corral process is killed, and a
    /// supervisor started afterwards can take it from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_out_fd: Option<i32>,
}

/// Where an agent's processes hold their copy of the output pipe's read end. High enough to
/// stay clear of descriptors programs pick themselves, below the default soft limit.
pub const AGENT_OUT_FD: i32 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub end: ProcessEnd,
    pub ended_at: String,
    /// Why the watcher stopped the attempt, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<StopReason>,
}

/// Why the attempt's watcher (shim or adopter) stopped its process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The attempt's deadline passed (enforced with no supervisor needed).
    Timeout,
    /// The supervisor asked (a kill, a retry, a limit it judged).
    Requested,
    /// The shim itself was sent SIGTERM.
    Terminated,
    /// It lingered for `result_grace` after its CLI printed the final result.
    ResultGrace,
    /// Its CLI reported usage over the role's budget.
    Budget,
    /// Its cluster worker's lease was not renewed in time (the local deadline passed).
    LeaseLost,
}

impl StopReason {
    /// Why corral stopped the attempt, for the log's footer.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Timeout => "stopped at its attempt timeout",
            Self::Requested => "stopped by the supervisor",
            Self::Terminated => "stopped: its shim was sent SIGTERM",
            Self::ResultGrace => "stopped after lingering past result_grace after its final result",
            Self::Budget => "stopped over its budget",
            Self::LeaseLost => "stopped: its worker's lease was not renewed in time",
        }
    }
}

/// One line of a run file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunLine {
    /// The fixed-width first line: when output last came (monotonic ms, zero-padded so it
    /// is rewritten in place).
    Output(String),
    Shim {
        pid: i32,
    },
    Start(StartRecord),
    Exit(ExitRecord),
}

/// What a run file says.
#[derive(Debug, Default)]
pub struct RunInfo {
    pub shim_pid: Option<i32>,
    pub start: Option<StartRecord>,
    pub exit: Option<ExitRecord>,
}

impl RunInfo {
    /// Reads a run file (bounded; a torn last line, as from a shim killed while writing it,
    /// is not a record).
    pub fn read(path: &Path) -> Self {
        files::read_bounded(data_root(path), path).map(|text| Self::parse(&text)).unwrap_or_default()
    }

    /// What the complete lines of a run file's text say.
    pub fn parse(text: &str) -> Self {
        let mut info = Self::default();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            match serde_json::from_str::<RunLine>(line) {
                Ok(RunLine::Shim { pid }) => info.shim_pid = Some(pid),
                Ok(RunLine::Start(s)) => {
                    info.shim_pid = Some(s.shim_pid);
                    info.start = Some(s);
                }
                Ok(RunLine::Exit(e)) => info.exit = Some(e),
                Ok(RunLine::Output(_)) | Err(_) => {}
            }
        }
        info
    }

    /// When the attempt's output last came, on the monotonic clock (`None`: no output yet,
    /// or no slot). A bounded read of the first line only.
    pub fn output_stamp(path: &Path) -> Option<u64> {
        let f = fsio::open_read(data_root(path), path).ok()?;
        let mut b = [0u8; SLOT_LINE.len()];
        f.read_exact_at(&mut b, 0).ok()?;
        let digits = b.strip_prefix(SLOT_PREFIX.as_bytes())?.get(..SLOT_DIGITS)?;
        let v: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        (v > 0).then_some(v)
    }

    /// Whether the shim that owns the run file still holds it (`None`: no file).
    pub fn held(path: &Path) -> Option<bool> {
        let f = fsio::open_read(data_root(path), path).ok()?;
        Some(process::try_lock(&f).map(|got| !got).unwrap_or(false))
    }
}

/// The data dir of a run file or log: both live one directory below it. Nothing below it
/// is followed when they are opened.
pub(crate) fn data_root(file: &Path) -> &Path {
    file.parent().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Appends records to a run file at known offsets, into space reserved up front.
pub struct RunFile {
    file: File,
    end: u64,
    /// Whether the file starts with the output slot.
    slot: bool,
}

const SLOT_PREFIX: &str = "{\"output\":\"";
const SLOT_DIGITS: usize = 20;
const SLOT_LINE: &str = "{\"output\":\"00000000000000000000\"}\n";

/// Room reserved for a run file's records (they take a few hundred bytes).
const RUN_FILE_RESERVE: i64 = 16 * 1024;

impl RunFile {
    /// Creates (or opens) and locks the run file; `Ok(None)` if another shim holds it.
    pub fn claim(path: &Path) -> std::io::Result<Option<Self>> {
        Self::claim_with(path, None)
    }

    /// As [`RunFile::claim`], made from `spare` when nothing is at `path` yet.
    pub fn claim_with(path: &Path, spare: Option<fsio::Spare>) -> std::io::Result<Option<Self>> {
        let file = match spare.and_then(|s| s.place_new(path)) {
            Some(f) => f,
            // A name planted for a later attempt (a symlink, a FIFO) is moved aside.
            None => fsio::open_write_replacing(data_root(path), path, fsio::Mode::Update)?.0,
        };
        if !process::try_lock(&file)? {
            return Ok(None);
        }
        process::reserve(&file, RUN_FILE_RESERVE);
        let mut end = file.metadata()?.len();
        if end == 0 && file.write_all_at(SLOT_LINE.as_bytes(), 0).is_ok() {
            end = SLOT_LINE.len() as u64;
        }
        let mut first = [0u8; 11];
        let slot = file.read_exact_at(&mut first, 0).is_ok() && first == SLOT_PREFIX.as_bytes()[..11];
        Ok(Some(Self { file, end, slot }))
    }

    /// Rewrites the output slot in place (one small positioned write).
    pub fn stamp_output(&mut self, mono: u64) {
        if self.slot {
            let digits = format!("{mono:020}");
            let _ = self.file.write_all_at(digits.as_bytes(), SLOT_PREFIX.len() as u64);
        }
    }

    /// Appends one record; on failure (a full disk without the reserve), tries again for
    /// as long as `patience` allows, still holding the lock.
    pub fn append(&mut self, line: &RunLine, patience: Duration) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let until = Instant::now() + patience;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.file.write_all_at(&bytes, self.end) {
                Ok(()) => {
                    self.end += bytes.len() as u64;
                    return Ok(());
                }
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Whether the command started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Handshake {
    /// `out_fd`: the shim's descriptor of the output pipe's read end, which the supervisor
    /// copies so that the agent's output still has a reader if the shim dies.
    Started {
        pid: i32,
        #[serde(default)]
        out_fd: Option<i32>,
    },
    NotStarted {
        reason: String,
    },
}

/// The one line the shim prints on stdout: the supervisor waits for it before answering.
/// `seq` matches it to its request when shims share one pipe (the launcher's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeMsg {
    pub seq: u64,
    pub shim_pid: i32,
    pub result: Handshake,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShimArgs {
    /// Matches the handshake to its request.
    pub seq: u64,
    /// The attempt's run file.
    pub run: PathBuf,
    pub log: PathBuf,
    pub cwd: PathBuf,
    pub header: String,
    pub argv: Vec<String>,
    /// The agent's whole environment; `None`: the shim's own, inherited.
    pub env: Option<Vec<(String, String)>>,
    /// When the attempt must be over (monotonic ms): the shim stops it then by itself, so
    /// the limit holds with no supervisor running.
    #[serde(default)]
    pub deadline_mono: Option<u64>,
    /// Grace between TERM and KILL when the shim stops the attempt at its deadline.
    #[serde(default)]
    pub stop_grace_ms: u64,
    /// Cap on one attempt's output in the log (0: none).
    #[serde(default)]
    pub max_log_size: u64,
    /// The data dir and workspace: when the attempt ends and no supervisor runs, the shim
    /// starts one, so retries and other agents' limits do not wait for a command.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    /// The agent CLI's stream is read by this adapter (`None`: plain output).
    #[serde(default)]
    pub stream: Option<super::stream::StreamArgs>,
    /// A cluster worker's local deadline (see `watchdog`): not started past it, stopped at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<PathBuf>,
}

/// How often a shim with a cluster worker's deadline looks at it.
const LEASE_CHECK_MS: i32 = 100;

/// Grace given to processes an agent leaves behind in its group after it exits by itself.
const LEFTOVER_GRACE_MS: u64 = 1000;

/// How long a shim keeps trying to record an exit the disk will not take.
const EXIT_RECORD_PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// `corral __shim`: one JSON `ShimArgs` line on stdin.
pub fn run_from_stdin() -> i32 {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        crate::elog!("corral shim: cannot read its arguments from stdin");
        return 2;
    }
    match serde_json::from_str::<ShimArgs>(&line) {
        Ok(a) => run(a),
        Err(e) => {
            crate::elog!("corral shim: unreadable arguments: {e}");
            2
        }
    }
}

/// Files a shim made before its request came (see the launcher's warm shims).
#[derive(Default)]
pub struct Spares {
    pub run: Option<fsio::Spare>,
    pub log: Option<fsio::Spare>,
}

impl Spares {
    /// Spares in the directories of `run` and `log` (those of an earlier request: the next
    /// attempt's files are most likely made beside them). What cannot be made is `None`.
    pub fn make(run: &Path, log: &Path) -> Self {
        let spare = |p: &Path| fsio::Spare::make(data_root(p), p.parent()?).ok();
        Self { run: spare(run), log: spare(log) }
    }
}

pub fn run(a: ShimArgs) -> i32 {
    run_with(a, Spares::default())
}

pub fn run_with(a: ShimArgs, spares: Spares) -> i32 {
    process::ignore_signal(libc::SIGHUP);
    process::ignore_signal(libc::SIGINT);
    // The supervisor ignores SIGIO (see its start); the agent gets the default back.
    process::default_signal(libc::SIGIO);
    // Orphans of the agent are reparented to us rather than to init, so we reap them and
    // can tell a live leftover from a zombie nobody has collected yet.
    process::become_subreaper();
    let mut run = match RunFile::claim_with(&a.run, spares.run) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let why = format!("another shim already holds {}; not starting twice", a.run.display());
            say(a.seq, Handshake::NotStarted { reason: why });
            return 1;
        }
        Err(e) => {
            let why = format!("cannot open {}: {e}", a.run.display());
            say(a.seq, Handshake::NotStarted { reason: why });
            return 1;
        }
    };
    let _ = run.append(&RunLine::Shim { pid: std::process::id() as i32 }, Duration::ZERO);
    let (end, stopped) = match start_and_watch(&a, &mut run, spares.log) {
        Ok(x) => x,
        Err(e) => {
            crate::elog!("corral shim: {e}");
            say(a.seq, Handshake::NotStarted { reason: e.clone() });
            (ProcessEnd::NotStarted { reason: e }, None)
        }
    };
    let code = i32::from(!matches!(end, ProcessEnd::Exited { .. } | ProcessEnd::Signaled { .. }));
    let exit = RunLine::Exit(ExitRecord { end, ended_at: time::rfc3339(time::now()), stopped });
    if let Err(e) = run.append(&exit, EXIT_RECORD_PATIENCE) {
        crate::elog!("corral shim: cannot record the exit in {}: {e}", a.run.display());
        return 1;
    }
    drop(run);
    ensure_supervisor(&a);
    code
}

/// With no supervisor running (its lock is free), starts one: it finds this exit, starts
/// the retry when its backoff ends and keeps every other limit.
fn ensure_supervisor(a: &ShimArgs) {
    let (Some(data), Some(ws)) = (&a.data_dir, &a.workspace) else { return };
    let data = crate::protocol::DataDir::new(data.clone());
    let Ok(lock) = fsio::open_read(data.root(), &data.daemon_lock()) else { return };
    if !process::try_lock(&lock).unwrap_or(false) {
        return; // a supervisor holds it
    }
    drop(lock);
    if let Err(e) = crate::client::Client::connect(&data, ws) {
        crate::elog!("corral shim: no supervisor runs and none could be started: {e}");
    }
}

fn say(seq: u64, result: Handshake) {
    let msg = HandshakeMsg { seq, shim_pid: std::process::id() as i32, result };
    // One write of one line: shims forked by the launcher share its stdout, and writes under
    // PIPE_BUF bytes are never interleaved.
    let mut line = serde_json::to_vec(&msg).unwrap_or_default();
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line);
    let _ = out.flush();
}

/// Starts the command, says so, relays its output and watches it until its group is gone.
fn start_and_watch(
    a: &ShimArgs,
    run: &mut RunFile,
    spare: Option<fsio::Spare>,
) -> Result<(ProcessEnd, Option<StopReason>), String> {
    // A log the agent replaced (a symlink to one of the user's files, a hard link, a FIFO)
    // is moved aside, and this attempt's output goes to a fresh one.
    let (log, replaced) = match spare.and_then(|s| s.place_new(&a.log)) {
        Some(f) => (f, None),
        None => fsio::open_write_replacing(data_root(&a.log), &a.log, fsio::Mode::Update)
            .map_err(|e| format!("cannot open log {}: {e}", a.log.display()))?,
    };
    let mut sink = relay::LogSink::new(log, a.max_log_size).map_err(|e| format!("log {}: {e}", a.log.display()))?;
    if let Some(why) = replaced {
        sink.note(&format!("corral: the log was set aside and started again ({why})"));
    }
    sink.note(&a.header);
    let (prog, args) = a.argv.split_first().ok_or("empty command")?;
    if let Some(lease) = &a.lease
        && super::watchdog::due(lease).0 <= time::mono_ms()
    {
        let why = "not started: this worker's lease was not renewed in time (its local deadline passed)".to_string();
        sink.note(&format!("corral: {why}"));
        return Err(why);
    }
    let (out_r, out_w) = process::pipe().map_err(|e| format!("cannot make the output pipe: {e}"))?;
    let mut cmd = Command::new(prog);
    if let Some(env) = &a.env {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    // The agent creates its files as the user asked, not as privately as corral does.
    crate::protocol::perms::restore_user_umask();
    let err_w = out_w.try_clone().map_err(|e| e.to_string())?;
    // The agent (and what it starts) holds a reader of its own output at AGENT_OUT_FD: with
    // every corral process killed, its writes block in a full pipe until a supervisor takes
    // the pipe again, instead of killing it with SIGPIPE. Made here without close-on-exec
    // and inherited, rather than by a hook between fork and exec, so std starts the agent
    // with posix_spawn (no fork of the shim).
    let keep =
        process::dup_inheritable(&out_r, AGENT_OUT_FD).map_err(|e| format!("cannot keep the output pipe: {e}"))?;
    let spawned = cmd
        .args(args)
        .current_dir(&a.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0)
        .spawn();
    // The write ends are closed in the shim (moved into the Command, dropped with it), and
    // the inherited reader too: the shim reads through `out_r`.
    drop(cmd);
    drop(keep);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = if Path::new(&a.cwd).is_dir() {
                format!("cannot run {prog:?}: {e}")
            } else {
                format!("working directory {} does not exist", a.cwd.display())
            };
            sink.note(&format!("corral: {why}"));
            return Err(why);
        }
    };
    let pid = child.id() as i32;
    // Signals come in through a descriptor, so output, exits, requests and deadlines are
    // one poll loop. Blocked only now: the child would inherit the mask (std's spawn does
    // not reset it). A SIGCHLD missed meanwhile is made up by the first reap of the loop;
    // the supervisor asks for a stop only after the handshake below.
    let sigs = match process::signalfd(&[libc::SIGCHLD, libc::SIGTERM, process::stop_signal()]) {
        Ok(s) => s,
        Err(e) => {
            let _ = process::signal_group(pid, libc::SIGKILL);
            let _ = process::try_wait(pid);
            return Err(format!("signalfd: {e}"));
        }
    };
    let start = StartRecord {
        shim_pid: std::process::id() as i32,
        pid,
        started_at: time::rfc3339(time::now()),
        start_time: process::start_time(pid),
        out_fd: Some(out_r.as_raw_fd()),
        agent_out_fd: Some(AGENT_OUT_FD),
    };
    if let Err(e) = run.append(&RunLine::Start(start), Duration::ZERO) {
        // Without a start record a restarted supervisor could not find this attempt again.
        let _ = process::signal_group(pid, libc::SIGKILL);
        let _ = process::try_wait(pid);
        return Err(format!("cannot record the start in {}: {e}", a.run.display()));
    }
    let out_fd = Some(out_r.as_raw_fd());
    say(a.seq, Handshake::Started { pid, out_fd });
    let mut w = Watch::new(pid, Some(&sigs), a.deadline_mono, a.stop_grace_ms);
    w.lease = a.lease.clone();
    let mut relay = relay::Relay::new(Some(out_r), sink);
    relay.observer = a.stream.clone().and_then(|s| super::stream::Observer::open(&a.run, s));
    let (end, stopped) = w.watch(&mut relay, run, |w| {
        // Our own children (the leader, and orphans of the group reparented to us).
        while let Ok(Some((p, end))) = process::try_wait_any() {
            if p == pid {
                w.leader_end = Some(end);
            }
        }
    });
    let why = stopped.map(StopReason::describe).map(|w| format!(", {w}")).unwrap_or_default();
    relay.sink.note(&format!("corral: attempt ended: {}{why}", end.describe()));
    Ok((end, stopped))
}

/// Watching one attempt's process group until it is gone: its output, its leader's end,
/// stop requests, its deadline, and what it leaves behind. Used by the shim, and by the
/// supervisor for an attempt whose shim died.
pub struct Watch<'a> {
    pub pgid: i32,
    sigs: Option<&'a std::os::fd::OwnedFd>,
    deadline: Option<u64>,
    deadline_grace: u64,
    /// A cluster worker's deadline file, looked at every [`LEASE_CHECK_MS`].
    pub lease: Option<PathBuf>,
    pub leader_end: Option<ProcessEnd>,
    /// The stop in progress: when the group is KILLed, why, and whether it is only the
    /// clearing of leftovers after the leader ended by itself.
    stop: Option<(u64, Option<StopReason>, bool)>,
    killed: bool,
}

impl<'a> Watch<'a> {
    pub fn new(pgid: i32, sigs: Option<&'a std::os::fd::OwnedFd>, deadline: Option<u64>, grace: u64) -> Self {
        Self { pgid, sigs, deadline, deadline_grace: grace, lease: None, leader_end: None, stop: None, killed: false }
    }

    /// TERM to the group now, KILL after `grace_ms`. A later request may shorten the grace;
    /// a requested stop replaces the short clearing of leftovers.
    pub fn stop(&mut self, grace_ms: u64, why: Option<StopReason>) {
        let at = time::mono_ms().saturating_add(grace_ms);
        match &mut self.stop {
            None => {
                let _ = process::signal_group(self.pgid, libc::SIGTERM);
                self.stop = Some((at, why, why.is_none()));
            }
            Some((kill_at, reason, leftover)) => {
                if *leftover && why.is_some() {
                    *kill_at = at;
                    *reason = why;
                    *leftover = false;
                } else {
                    *kill_at = (*kill_at).min(at);
                }
            }
        }
    }

    /// Runs until the leader has ended and the group is gone. `reap` collects ended
    /// children (setting `leader_end`); `ctl` is polled for stop requests from elsewhere.
    pub fn watch(
        &mut self,
        relay: &mut relay::Relay,
        run: &mut RunFile,
        mut reap: impl FnMut(&mut Self),
    ) -> (ProcessEnd, Option<StopReason>) {
        self.watch_with(relay, run, &mut reap, &mut |_| None, -1)
    }

    pub fn watch_with(
        &mut self,
        relay: &mut relay::Relay,
        run: &mut RunFile,
        reap: &mut dyn FnMut(&mut Self),
        ctl: &mut dyn FnMut(&mut Self) -> Option<u64>,
        extra_fd: i32,
    ) -> (ProcessEnd, Option<StopReason>) {
        loop {
            reap(self);
            while let Some(grace) = ctl(self) {
                self.stop(grace, Some(StopReason::Requested));
            }
            let now = time::mono_ms();
            if let Some(d) = self.deadline
                && now >= d
                && self.stop.is_none_or(|s| s.2)
            {
                self.stop(self.deadline_grace, Some(StopReason::Timeout));
            }
            if self.stop.is_none()
                && let Some(lease) = &self.lease
            {
                let (term_at, kill_after) = super::watchdog::due(lease);
                if now >= term_at {
                    self.stop(kill_after, Some(StopReason::LeaseLost));
                }
            }
            // The stream's own limits: lingering after the final result, a budget overrun.
            if self.leader_end.is_none()
                && self.stop.is_none()
                && let Some(o) = relay.observer.as_ref()
            {
                if o.over_budget.is_some() {
                    self.stop(self.deadline_grace, Some(StopReason::Budget));
                } else if o.linger_deadline().is_some_and(|d| now >= d) {
                    self.stop(self.deadline_grace, Some(StopReason::ResultGrace));
                }
            }
            if let Some((kill_at, _, _)) = self.stop
                && now >= kill_at
                && !self.killed
            {
                let _ = process::signal_group(self.pgid, libc::SIGKILL);
                self.killed = true;
            }
            if self.leader_end.is_some() {
                // Without a signalfd the group is not ours to reap (adopted): zombies of
                // it wait for someone else and do not count.
                let alive = if self.sigs.is_some() {
                    process::group_alive(self.pgid)
                } else {
                    process::group_has_live(self.pgid)
                };
                if !alive {
                    break;
                }
                if self.stop.is_none() {
                    self.stop(LEFTOVER_GRACE_MS, None);
                }
            }
            // Sleep until something happens or the next moment something is due; while
            // leftovers linger, look again often (their ends reach us as SIGCHLD only when
            // they are our children).
            let mut due: Vec<u64> = self.deadline.into_iter().collect();
            if self.stop.is_none()
                && self.leader_end.is_none()
                && let Some(d) = relay.observer.as_ref().and_then(|o| o.linger_deadline())
            {
                due.push(d);
            }
            if let Some((k, _, _)) = self.stop
                && !self.killed
            {
                due.push(k);
            }
            let mut timeout = due.iter().min().map(|d| d.saturating_sub(now).min(60_000) as i32).unwrap_or(-1);
            if self.lease.is_some() && self.stop.is_none() {
                timeout = if timeout < 0 { LEASE_CHECK_MS } else { timeout.min(LEASE_CHECK_MS) };
            }
            if self.leader_end.is_some() || self.killed || self.sigs.is_none() {
                let every = if self.sigs.is_none() { 50 } else { 20 };
                timeout = if timeout < 0 { every } else { timeout.min(every) };
            }
            let sfd = self.sigs.map_or(-1, |s| s.as_raw_fd());
            // The leader's pidfd stays readable once it ended: look at it only until then.
            let extra = if self.leader_end.is_none() { extra_fd } else { -1 };
            let ready = process::poll_readable(&[relay.fd(), sfd, extra], timeout);
            if ready[0] {
                relay.pump(run);
            }
            if ready[1]
                && let Some(s) = self.sigs
            {
                while let Some((sig, value)) = process::read_signal(s) {
                    if sig == libc::SIGTERM {
                        self.stop(self.deadline_grace.max(1), Some(StopReason::Terminated));
                    } else if sig == process::stop_signal() {
                        self.stop(value, Some(StopReason::Requested));
                    }
                }
            }
        }
        // What is still in the pipe (writers that left the group may keep it open: take
        // what is there, do not wait for them).
        relay.pump(run);
        let reason = self.stop.and_then(|s| s.1);
        let end = self.leader_end.clone().unwrap_or_else(|| ProcessEnd::Lost {
            reason: "the process ended where its exit could not be seen".into(),
        });
        (end, reason)
    }
}
