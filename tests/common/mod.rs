//! Test harness: a temp workspace with its own supervisor, the real `corral` binary, and
//! wait-until-condition helpers instead of fixed sleeps.
#![allow(dead_code)]

pub mod cluster;
pub mod pg;
pub mod proxy;
pub mod tmux;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const RELAXED: &str = "[health]\nmax_concurrent = 500\nbreaker_failures = 0\n";

/// Second-scale policy for tests: a short backoff, room for many agents, no breaker.
pub const FAST: &str = r#"
[defaults]
backoff = { initial = "200ms", coefficient = 2.0 }
[health]
max_concurrent = 50
breaker_failures = 0
"#;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corral"))
}

pub struct Ws {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
}

impl Ws {
    /// A workspace whose health gate never holds a spawn (tests of other things spawn
    /// more than the default 5 at once, and fail agents on purpose).
    pub fn new() -> Self {
        Self::with_config(Some(RELAXED))
    }

    /// A workspace with no corral.toml at all: the built-in defaults.
    pub fn bare() -> Self {
        Self::with_config(None)
    }

    /// A workspace with `corral.toml` holding `config` (data dir from it, else .corral).
    pub fn with_config(config: Option<&str>) -> Self {
        let dir = tempfile::Builder::new().prefix("corral-t").tempdir().expect("tempdir");
        let mut data = dir.path().join(".corral");
        if let Some(c) = config {
            std::fs::write(dir.path().join("corral.toml"), c).unwrap();
            if let Some(line) = c.lines().find(|l| l.trim_start().starts_with("data_dir")) {
                let v = line.split('=').nth(1).unwrap().trim().trim_matches('"');
                data = dir.path().join(v);
            }
        }
        Self { dir, data }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `corral ARGS` in the workspace, with the binary's directory on PATH so agents can
    /// call `corral report` and `corral handoff`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).current_dir(self.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("CORRAL_") {
                c.env_remove(k);
            }
        }
        let path = format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        c.env("PATH", path);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run corral")
    }

    /// Runs and insists on exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "corral {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\ndaemon log: {}\ndaemon: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(self.data.join("daemon.log")).unwrap_or_default(),
            self.daemon_state()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("corral {args:?}: not JSON ({e}): {out}"))
    }

    /// Spawns `-- cmd...` with role R and returns the id.
    pub fn spawn(&self, role: &str, cmd: &[&str]) -> String {
        let mut args = vec!["spawn", "--role", role, "--task", "test task", "--"];
        args.extend_from_slice(cmd);
        self.ok(&args).trim().to_string()
    }

    pub fn status(&self) -> Vec<Value> {
        self.json(&["status", "--json"]).as_array().unwrap().clone()
    }

    pub fn agent(&self, id: &str) -> Value {
        self.json(&["status", id, "--json"])[0].clone()
    }

    pub fn show(&self, id: &str) -> Value {
        self.json(&["show", id, "--json"])
    }

    /// The supervisor's pid and process state, read without talking to it (for failures).
    pub fn daemon_state(&self) -> String {
        let pid = std::fs::read_to_string(self.data.join("daemon.lock")).unwrap_or_default();
        let pid = pid.trim();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|_| "gone".into());
        let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or("gone");
        format!("pid {pid} {state}")
    }

    pub fn daemon_pid(&self) -> i32 {
        self.json(&["daemon", "status", "--json"])["pid"].as_i64().unwrap() as i32
    }

    /// Waits until `id` is in one of `states`.
    pub fn wait_state(&self, id: &str, states: &[&str], limit: Duration) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(limit, || {
            last = self.agent(id);
            states.contains(&last["status"].as_str().unwrap_or(""))
        });
        assert!(ok, "{id} never reached {states:?}; last: {last}");
        last
    }

    pub fn registry(&self) -> Value {
        let text = std::fs::read_to_string(self.data.join("spawn-registry.json")).expect("registry exists");
        serde_json::from_str(&text).expect("registry is valid JSON")
    }
}

impl Drop for Ws {
    fn drop(&mut self) {
        // Stop the supervisor and kill whatever agents a failed test left behind.
        let _ = self.cmd(&["daemon", "stop"]).output();
        if let Ok(text) = std::fs::read_to_string(self.data.join("spawn-registry.json"))
            && let Ok(Value::Array(recs)) = serde_json::from_str::<Value>(&text)
        {
            let groups: Vec<i32> = recs.iter().filter_map(|r| r["pid"].as_i64()).map(|p| p as i32).collect();
            for pid in processes_of(self.path(), &groups) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The live processes in any of `groups` that belong to the workspace in `dir` (their
/// environment names a data dir inside it). A recorded pid may long since have been reused
/// by another test's agent (pid_max is small on test machines): a group is never killed by
/// number alone.
pub fn processes_of(dir: &Path, groups: &[i32]) -> Vec<i32> {
    let marks: Vec<Vec<u8>> = [Some(dir.to_path_buf()), dir.canonicalize().ok()]
        .into_iter()
        .flatten()
        .map(|d| format!("CORRAL_DATA_DIR={}/", d.display()).into_bytes())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the command's closing parenthesis: state, ppid, pgrp.
            let pgrp = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(2)?.parse::<i32>().ok());
            pgrp.is_some_and(|g| groups.contains(&g))
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| marks.iter().any(|m| v.starts_with(m))))
        })
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is not alive for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Live (non-zombie) members of a process group.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        // rest[0] = state, rest[1] = ppid, rest[2] = pgrp
        if rest.len() > 2 && rest[2] == pgid.to_string() && rest[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
