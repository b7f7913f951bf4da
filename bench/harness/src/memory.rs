//! Supervisor memory: corral's supervisor and its helper processes, and pueued, fresh, with
//! finished agents in the registry and with running agents. corral's running figures come
//! from the retry measurement's workspace, the finished ones from the spawn measurement's.

use crate::procfs::{self, rss_kb};
use crate::tools::{Pueue, Tool, output, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// corral's memory and its peer's.
#[derive(Debug, Default)]
pub struct Memory {
    /// Supervisor RSS (KiB) with no agent, with `running` agents running (and PSS).
    pub idle_kb: Option<u64>,
    pub running: usize,
    pub running_kb: Option<u64>,
    pub running_pss_kb: Option<u64>,
    /// corral's helper processes with the agents running (launcher and per-attempt shims).
    pub helpers: usize,
    pub helpers_rss_kb: u64,
    pub helpers_pss_kb: u64,
    /// Supervisor RSS with the 1,000 finished agents of the sequential spawns in its registry.
    pub finished: usize,
    pub finished_kb: Option<u64>,
    /// pueued: fresh, with `finished` finished tasks (the sequential adds), with running tasks.
    pub pueued_idle_kb: Option<u64>,
    pub pueued_finished_kb: Option<u64>,
    pub pueued_running: usize,
    pub pueued_running_kb: Option<u64>,
    pub pueued_before_running_kb: Option<u64>,
}

/// pueued with `n` tasks running `sleep 600` (each marked, so they are killed at the end).
pub fn pueue_running(args: &RunArgs, tmp: &Path, n: usize, mem: &mut Memory) -> Result<()> {
    let dir = tmp.join("memory-pueue");
    let mut p = Pueue::start(&args.pueue, &args.pueued, dir.clone())?;
    std::thread::sleep(Duration::from_millis(300));
    mem.pueued_before_running_kb = rss_kb(p.daemon_pid);
    eprintln!("(memory) pueue: {n} tasks running `sleep 600`");
    let mark = format!("{}/task", dir.display());
    for _ in 0..n {
        let mut c = p.submit(&["sleep".to_string(), "600".to_string()]);
        c.env(procfs::MARK, &mark);
        output(c)?;
    }
    let res = wait_until("every pueue task to run", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        let v: Value = serde_json::from_slice(&output(p.status_json())?).map_err(|e| e.to_string())?;
        let tasks = v["tasks"].as_object().ok_or("pueue status --json: no tasks")?;
        Ok(tasks.values().filter(|t| t["status"].get("Running").is_some()).count() >= n)
    });
    if res.is_ok() {
        std::thread::sleep(Duration::from_millis(500));
        mem.pueued_running = n;
        mem.pueued_running_kb = rss_kb(p.daemon_pid);
    }
    let _ = output(p.client(&["kill", "--all"]));
    p.stop();
    procfs::reap_agents(tmp);
    res.map(|_| ())
}

impl Memory {
    pub fn to_json(&self) -> Value {
        json!({
            "idleKb": self.idle_kb, "running": self.running, "runningKb": self.running_kb,
            "runningPssKb": self.running_pss_kb, "helpers": self.helpers, "helpersRssKb": self.helpers_rss_kb,
            "helpersPssKb": self.helpers_pss_kb, "finished": self.finished, "finishedKb": self.finished_kb,
            "pueuedIdleKb": self.pueued_idle_kb, "pueuedFinishedKb": self.pueued_finished_kb,
            "pueuedRunning": self.pueued_running, "pueuedRunningKb": self.pueued_running_kb,
            "pueuedBeforeRunningKb": self.pueued_before_running_kb,
        })
    }
}
