//! The per-attempt shim (`corral __shim`). It is what makes "kill -9 of the supervisor loses
//! no outcome" true: the shim, not the supervisor, is the agent's parent. It starts the
//! command in its own process group with output going straight to the log, holds a lock
//! for as long as the attempt lives, waits for the exit, clears the group of leftovers and
//! writes the exit record. The supervisor may die and come back at any point in between.

use super::process;
use crate::policy::agent::ProcessEnd;
use crate::protocol::{atomic, time};
use serde::{Deserialize, Serialize};
use std::io::Write;
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
    /// The agent's whole environment; `None`: the shim's own, inherited.
    pub lock: PathBuf,
    pub start: PathBuf,
    pub exit: PathBuf,
    pub log: PathBuf,
    pub cwd: PathBuf,
    pub header: String,
    pub argv: Vec<String>,
    pub env: Option<Vec<(String, String)>>,
}

/// Grace given to processes an agent leaves behind in its group after it exits.
const LEFTOVER_GRACE: Duration = Duration::from_millis(1000);

/// `corral __shim LOCK START EXIT LOG CWD HEADER -- ARGV...`, parsed without clap.
pub fn run_from_args(args: &[std::ffi::OsString]) -> i32 {
    let sep = args.iter().position(|a| a == "--");
    let (Some(sep), true) = (sep, args.len() >= 7) else {
        eprintln!("corral shim: expected LOCK START EXIT LOG CWD HEADER -- ARGV...");
        return 2;
    };
    if sep != 6 {
        eprintln!("corral shim: expected 6 arguments before --, got {sep}");
        return 2;
    }
    let p = |i: usize| PathBuf::from(&args[i]);
    run(ShimArgs {
        lock: p(0),
        start: p(1),
        exit: p(2),
        log: p(3),
        cwd: p(4),
        header: args[5].to_string_lossy().into_owned(),
        argv: args[sep + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        ..Default::default()
    })
}

pub fn run(a: ShimArgs) -> i32 {
    process::ignore_signal(libc::SIGHUP);
    process::ignore_signal(libc::SIGINT);
    // Orphans of the agent are reparented to us rather than to init, so we reap them and
    // can tell a live leftover from a zombie nobody has collected yet.
    process::become_subreaper();
    match run_inner(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("corral shim: {e}");
            say(a.seq, Handshake::NotStarted { reason: e.clone() });
            let _ = atomic::write_json_atomic(
                &a.exit,
                &ExitRecord { end: ProcessEnd::NotStarted { reason: e }, ended_at: time::rfc3339(time::now()) },
            );
            1
        }
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

fn run_inner(a: &ShimArgs) -> Result<(), String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&a.lock)
        .map_err(|e| format!("cannot open {}: {e}", a.lock.display()))?;
    if !process::try_lock(&lock).map_err(|e| e.to_string())? {
        return Err(format!("another shim already holds {}; not starting twice", a.lock.display()));
    }
    let _ = lock.set_len(0);
    let _ = writeln!(&lock, "{}", std::process::id());

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
    let started_at = time::rfc3339(time::now());
    atomic::write_json_atomic(&a.start, &StartRecord { shim_pid: std::process::id() as i32, pid, started_at })
        .map_err(|e| format!("cannot write {}: {e}", a.start.display()))?;
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
    atomic::write_json_atomic(&a.exit, &ExitRecord { end, ended_at: time::rfc3339(time::now()) })
        .map_err(|e| format!("cannot write {}: {e}", a.exit.display()))?;
    drop(lock);
    Ok(())
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
