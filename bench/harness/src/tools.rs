//! The two systems under test behind one interface: start, submit a command, read the
//! status as JSON, count finished work, stop. Each works in its own temporary directory
//! and is stopped on drop, so a failed measurement leaves no supervisor behind.

use crate::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub trait Tool {
    fn name(&self) -> &'static str;
    /// The command that hands `argv` to the system to run (not yet started).
    fn submit(&self, argv: &[String]) -> Command;
    /// The command that prints the whole status as JSON.
    fn status_json(&self) -> Command;
    /// The cheapest request to the running supervisor: a round trip through the CLI.
    fn ping(&self) -> Command;
    /// (finished, total) units of work, from the status JSON.
    fn progress(&self) -> Result<(usize, usize)>;
    fn stop(&mut self);
}

/// A command with no inherited `CORRAL_*` variables (the harness may itself run as an
/// agent) and quiet output.
fn command(bin: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CORRAL_") {
            c.env_remove(k);
        }
    }
    c
}

/// Runs a command to completion; its stdout on success, a readable error otherwise.
pub fn output(mut c: Command) -> Result<Vec<u8>> {
    c.stdout(Stdio::piped());
    let what = format!("{:?}", c);
    let o = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{what}: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(o.stdout)
}

/// Runs a command for at most `cap`, stopping it (its whole process group) there: its stdout
/// so far, the time it ran, and whether it finished on its own (with success).
pub fn run_capped(mut c: Command, cap: Duration) -> Result<(Vec<u8>, Duration, bool)> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let what = format!("{c:?}");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let t = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("{what}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let mut err = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if t.elapsed() >= cap {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = t.elapsed();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(st) if !st.success() => Err(format!("{what}: {st}: {}", String::from_utf8_lossy(&stderr).trim())),
        Some(_) => Ok((stdout, ran, true)),
        None => Ok((stdout, ran, false)),
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if done()? {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Corral {
    pub bin: PathBuf,
    pub ws: PathBuf,
    /// Set on every corral command, and so inherited by the agents it spawns.
    pub env: Vec<(String, String)>,
    /// Whether this corral accepted `[health] max_concurrent` (raised so its admission
    /// gate, where it has one, does not queue the benchmark's agents; pueue gets the same
    /// with `parallel 1000`).
    pub health_raised: bool,
}

impl Corral {
    /// A fresh workspace with the seed's paths (`data_dir = "data"`), so the seed's own
    /// scripts read the same status files. The supervisor is started by the first command.
    pub fn new(bin: &Path, ws: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
        let base = "data_dir = \"data\"\n";
        let write = |text: &str| std::fs::write(ws.join("corral.toml"), text).map_err(|e| e.to_string());
        write(&format!("{base}\n[health]\nmax_concurrent = 2000\n"))?;
        // `daemon status` reads the config but starts nothing: exit 2 means it was refused.
        let mut probe = command(bin, &ws);
        probe.args(["daemon", "status", "--json"]);
        let code = probe.status().map_err(|e| e.to_string())?.code();
        let health_raised = code != Some(2);
        if !health_raised {
            write(base)?;
        }
        Ok(Self { bin: bin.to_path_buf(), ws, env: Vec::new(), health_raised })
    }

    /// A fresh workspace with the given `corral.toml` (data dir `.corral` unless it says
    /// otherwise), which corral must accept.
    pub fn with_config(bin: &Path, ws: PathBuf, toml: &str) -> Result<Self> {
        std::fs::create_dir_all(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
        std::fs::write(ws.join("corral.toml"), toml).map_err(|e| e.to_string())?;
        let c = Self { bin: bin.to_path_buf(), ws, env: Vec::new(), health_raised: true };
        let mut probe = c.cmd(&["daemon", "status", "--json"]);
        if probe.status().map_err(|e| e.to_string())?.code() == Some(2) {
            let mut probe = c.cmd(&["daemon", "status", "--json"]);
            let err = probe.output().map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
            return Err(format!("corral refused the benchmark's corral.toml: {err}"));
        }
        Ok(c)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.ws.join("data")
    }

    /// A corral command in this workspace (not yet started).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(&self.bin, &self.ws);
        c.envs(self.env.iter().map(|(k, v)| (k, v))).args(args);
        c
    }

    /// The supervisor's pid, starting it if needed.
    pub fn supervisor_pid(&self) -> Result<u32> {
        output(self.status_json())?;
        let v: Value =
            serde_json::from_slice(&output(self.cmd(&["daemon", "status", "--json"]))?).map_err(|e| e.to_string())?;
        v["pid"].as_u64().map(|p| p as u32).ok_or_else(|| format!("corral daemon status --json: no pid in {v}"))
    }
}

const FINISHED: [&str; 5] = ["complete", "failed", "escalated", "killed", "timed_out"];

impl Tool for Corral {
    fn name(&self) -> &'static str {
        "corral"
    }

    fn submit(&self, argv: &[String]) -> Command {
        let mut c = self.cmd(&["spawn", "--role", "BENCH", "--task", "benchmark probe", "--"]);
        c.args(argv);
        c
    }

    fn status_json(&self) -> Command {
        self.cmd(&["status", "--json"])
    }

    fn ping(&self) -> Command {
        self.cmd(&["daemon", "status", "--json"])
    }

    fn progress(&self) -> Result<(usize, usize)> {
        let v: Value = serde_json::from_slice(&output(self.status_json())?).map_err(|e| e.to_string())?;
        let agents = v.as_array().ok_or("corral status --json: not an array")?;
        let done = agents.iter().filter(|a| a["status"].as_str().is_some_and(|s| FINISHED.contains(&s))).count();
        Ok((done, agents.len()))
    }

    /// Stops the supervisor, then kills every agent of the workspace still running (agents
    /// outlive their supervisor by design).
    fn stop(&mut self) {
        let mut c = self.cmd(&["daemon", "stop"]);
        c.stderr(Stdio::null());
        let _ = c.status();
        crate::procfs::reap_agents(&self.ws);
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Pueue {
    bin: PathBuf,
    pub daemon_pid: u32,
    dir: PathBuf,
    config: PathBuf,
    daemon: Option<Child>,
}

impl Pueue {
    /// Starts `pueued` with everything (state, logs, socket) inside `dir` and lets the
    /// default group run 1000 tasks at once.
    pub fn start(bin: &Path, daemon_bin: &Path, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("run")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = dir.join("pueue.yml");
        let yaml = format!(
            "shared:\n  pueue_directory: {d}/state\n  runtime_directory: {d}/run\n  use_unix_socket: true\n  unix_socket_path: {d}/run/pueue.socket\n",
            d = dir.display()
        );
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("pueued.log")).map_err(|e| e.to_string())?;
        let daemon = command(daemon_bin, &dir)
            .arg("-c")
            .arg(&config)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", daemon_bin.display()))?;
        // Built before the first wait, so any failure from here on shuts pueued down.
        let p = Self { bin: bin.to_path_buf(), daemon_pid: daemon.id(), dir, config, daemon: Some(daemon) };
        wait_until("pueued to accept connections", Duration::from_secs(15), || Ok(output(p.status_json()).is_ok()))?;
        output(p.client(&["parallel", "1000"]))?;
        Ok(p)
    }

    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = command(&self.bin, &self.dir);
        c.arg("-c").arg(&self.config).args(args);
        c
    }
}

impl Tool for Pueue {
    fn name(&self) -> &'static str {
        "pueue"
    }

    fn submit(&self, argv: &[String]) -> Command {
        let mut c = self.client(&["add", "--"]);
        c.args(argv);
        c
    }

    fn status_json(&self) -> Command {
        self.client(&["status", "--json"])
    }

    fn ping(&self) -> Command {
        self.client(&["group", "--json"])
    }

    fn progress(&self) -> Result<(usize, usize)> {
        let v: Value = serde_json::from_slice(&output(self.status_json())?).map_err(|e| e.to_string())?;
        let tasks = v["tasks"].as_object().ok_or("pueue status --json: no tasks object")?;
        let done = tasks.values().filter(|t| t["status"].get("Done").is_some()).count();
        Ok((done, tasks.len()))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else { return };
        let _ = self.client(&["shutdown"]).stderr(Stdio::null()).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Pueue {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_capped_stops_at_the_cap_and_keeps_the_output() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo a; sleep 5 & wait; echo b"]);
        let (out, ran, finished) = run_capped(c, Duration::from_millis(500)).unwrap();
        assert_eq!((out.as_slice(), finished), (&b"a\n"[..], false));
        assert!(ran < Duration::from_secs(3));
        let mut c = Command::new("sh");
        c.args(["-c", "echo done"]);
        assert!(run_capped(c, Duration::from_secs(5)).unwrap().2);
    }
}
