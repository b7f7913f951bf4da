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

use super::process;
use crate::policy::agent::ProcessEnd;
use crate::protocol::{files, time};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub end: ProcessEnd,
    pub ended_at: String,
}

/// One line of a run file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunLine {
    Shim { pid: i32 },
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
        files::read_bounded(path).map(|text| Self::parse(&text)).unwrap_or_default()
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
                Err(_) => {}
            }
        }
        info
    }

    /// Whether the shim that owns the run file still holds it (`None`: no file).
    pub fn held(path: &Path) -> Option<bool> {
        let f = File::open(path).ok()?;
        Some(process::try_lock(&f).map(|got| !got).unwrap_or(false))
    }
}

/// Appends records to a run file at known offsets, into space reserved up front.
pub struct RunFile {
    file: File,
    end: u64,
}

/// Room reserved for a run file's records (they take a few hundred bytes).
const RUN_FILE_RESERVE: i64 = 16 * 1024;

impl RunFile {
    /// Creates (or opens) and locks the run file; `Ok(None)` if another shim holds it.
    pub fn claim(path: &Path) -> std::io::Result<Option<Self>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if !process::try_lock(&file)? {
            return Ok(None);
        }
        process::reserve(&file, RUN_FILE_RESERVE);
        let end = file.metadata()?.len();
        Ok(Some(Self { file, end }))
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
    Started { pid: i32 },
    NotStarted { reason: String },
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
}

/// Grace given to processes an agent leaves behind in its group after it exits.
const LEFTOVER_GRACE: Duration = Duration::from_millis(1000);

/// How long a shim keeps trying to record an exit the disk will not take.
const EXIT_RECORD_PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// `corral __shim RUN LOG CWD HEADER -- ARGV...`, parsed without clap.
pub fn run_from_args(args: &[std::ffi::OsString]) -> i32 {
    let sep = args.iter().position(|a| a == "--");
    let (Some(sep), true) = (sep, args.len() >= 5) else {
        crate::elog!("corral shim: expected RUN LOG CWD HEADER -- ARGV...");
        return 2;
    };
    if sep != 4 {
        crate::elog!("corral shim: expected 4 arguments before --, got {sep}");
        return 2;
    }
    let p = |i: usize| PathBuf::from(&args[i]);
    run(ShimArgs {
        run: p(0),
        log: p(1),
        cwd: p(2),
        header: args[3].to_string_lossy().into_owned(),
        argv: args[sep + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        ..Default::default()
    })
}

pub fn run(a: ShimArgs) -> i32 {
    process::ignore_signal(libc::SIGHUP);
    process::ignore_signal(libc::SIGINT);
    // The supervisor ignores SIGIO (see its start); the agent gets the default back.
    process::default_signal(libc::SIGIO);
    // Orphans of the agent are reparented to us rather than to init, so we reap them and
    // can tell a live leftover from a zombie nobody has collected yet.
    process::become_subreaper();
    let mut run = match RunFile::claim(&a.run) {
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
    let end = match start_and_wait(&a, &mut run) {
        Ok(end) => end,
        Err(e) => {
            crate::elog!("corral shim: {e}");
            say(a.seq, Handshake::NotStarted { reason: e.clone() });
            ProcessEnd::NotStarted { reason: e }
        }
    };
    let code = i32::from(!matches!(end, ProcessEnd::Exited { .. } | ProcessEnd::Signaled { .. }));
    let exit = RunLine::Exit(ExitRecord { end, ended_at: time::rfc3339(time::now()) });
    if let Err(e) = run.append(&exit, EXIT_RECORD_PATIENCE) {
        crate::elog!("corral shim: cannot record the exit in {}: {e}", a.run.display());
        return 1;
    }
    code
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

/// Starts the command, says so, waits for it to end and clears its group.
fn start_and_wait(a: &ShimArgs, run: &mut RunFile) -> Result<ProcessEnd, String> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .map_err(|e| format!("cannot open log {}: {e}", a.log.display()))?;
    let _ = writeln!(log, "{}", a.header);
    let (prog, args) = a.argv.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(prog);
    if let Some(env) = &a.env {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    // The agent creates its files as the user asked, not as privately as corral does.
    crate::protocol::perms::restore_user_umask();
    let spawned = cmd
        .args(args)
        .current_dir(&a.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log.try_clone().map_err(|e| e.to_string())?)
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = if Path::new(&a.cwd).is_dir() {
                format!("cannot run {prog:?}: {e}")
            } else {
                format!("working directory {} does not exist", a.cwd.display())
            };
            let _ = writeln!(log, "corral: {why}");
            return Err(why);
        }
    };
    let pid = child.id() as i32;
    let start = StartRecord { shim_pid: std::process::id() as i32, pid, started_at: time::rfc3339(time::now()) };
    if let Err(e) = run.append(&RunLine::Start(start), Duration::ZERO) {
        // Without a start record a restarted supervisor could not find this attempt again.
        let _ = process::signal_group(pid, libc::SIGKILL);
        let _ = child.wait();
        return Err(format!("cannot record the start in {}: {e}", a.run.display()));
    }
    say(a.seq, Handshake::Started { pid });

    let end = loop {
        match child.wait() {
            Ok(st) => break process::decode_status(st),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break ProcessEnd::Lost { reason: format!("waiting for the process failed: {e}") };
            }
        }
    };
    clear_group(pid);
    let _ = writeln!(log, "corral: attempt ended: {}", end.describe());
    Ok(end)
}

/// The agent is gone; anything it left running in its group gets TERM, then KILL.
fn clear_group(pgid: i32) {
    process::reap_any();
    if !process::group_alive(pgid) {
        return;
    }
    let _ = process::signal_group(pgid, libc::SIGTERM);
    let until = Instant::now() + LEFTOVER_GRACE;
    while Instant::now() < until {
        process::reap_any();
        if !process::group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = process::signal_group(pgid, libc::SIGKILL);
    for _ in 0..100 {
        process::reap_any();
        if !process::group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
