//! Crash to retry scheduled: how long after an agent's crash the supervisor records its
//! retry decision, with 1,000 long-running agents supervised. The supervisor's memory is
//! read in the same workspace (`memory.rs` holds the figures).

use crate::clock;
use crate::memory::Memory;
use crate::population::{agents, corral_bin_dir, spawn_many, wait_running, with_path};
use crate::procfs::{self, rss_kb};
use crate::stats::summarize;
use crate::target::Sizes;
use crate::tools::{Corral, Tool, output, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Crash {
    pub long_agents: usize,
    pub crashers: usize,
    /// Wall time to spawn the long-running agents (SETUP_THREADS at a time).
    pub setup_s: f64,
    /// Per crasher: retry_scheduled.at - exited.data.endedAt, ms.
    pub latency: Vec<f64>,
    /// Crashers whose two events were not both found.
    pub unmatched: Vec<String>,
    /// Crashers that ended in another state than `retrying`: (id, status, reason).
    pub not_retried: Vec<(String, String, String)>,
    /// `corral spawn` of each crasher, ms.
    pub spawn_ms: Vec<f64>,
}

const CRASH_CONFIG: &str = r#"[health]
max_concurrent = 5000
breaker_failures = 0

[defaults]
max_retries = 1
backoff = { initial = "10m" }
"#;

/// The crashing agent's command (it reports a transient failure, then exits 1).
pub const CRASHER: &str = "corral report --status failed --finding 'API rate limit exceeded'; exit 1";

/// `long` agents running `sleep 600`, then `crashers` agents spawned one after the other,
/// each failing at once with a transient finding. The supervisor's memory is read before and
/// after the long-running agents start.
pub fn crash(args: &RunArgs, tmp: &Path, p: &Sizes, mem: &mut Memory) -> Result<Crash> {
    let bin = corral_bin_dir(args, tmp)?;
    let mut c = Corral::with_config(&args.corral, tmp.join("retry-corral"), CRASH_CONFIG)?;
    with_path(&mut c, &bin);
    let pid = c.supervisor_pid()?;
    std::thread::sleep(Duration::from_millis(500));
    mem.idle_kb = rss_kb(pid);
    let mut r = Crash { long_agents: p.crash_long, crashers: p.crashers, ..Default::default() };

    eprintln!("(retry) {} long-running agents (`sleep 600`)", p.crash_long);
    let sleep = ["sleep".to_string(), "600".to_string()];
    r.setup_s = spawn_many(&c, p.crash_long, "LONG", "long-running agent", &sleep)?;
    wait_running(&c, "LONG", p.crash_long, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(500));
    mem.running = p.crash_long;
    mem.running_kb = rss_kb(pid);
    mem.running_pss_kb = procfs::pss_kb(pid);
    let helpers = procfs::same_exe_descendants(pid);
    mem.helpers = helpers.len();
    mem.helpers_rss_kb = helpers.iter().filter_map(|h| rss_kb(*h)).sum();
    mem.helpers_pss_kb = helpers.iter().filter_map(|h| procfs::pss_kb(*h)).sum();

    eprintln!("(retry) {} crashing agents, one after the other", p.crashers);
    let argv = ["sh".to_string(), "-c".to_string(), CRASHER.to_string()];
    for _ in 0..p.crashers {
        let mut cmd = c.cmd(&["spawn", "--role", "CRASH", "--task", "crashing agent", "--"]);
        cmd.args(&argv);
        let t = Instant::now();
        output(cmd)?;
        r.spawn_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Every crasher decided: retrying as expected, or anything else but still running.
    const UNDECIDED: [&str; 4] = ["queued", "running", "stale", "stopping"];
    wait_until("every crasher to be decided", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        Ok(agents(&c, "CRASH")?.iter().all(|a| a["status"].as_str().is_some_and(|s| !UNDECIDED.contains(&s))))
    })?;
    for a in agents(&c, "CRASH")? {
        if a["status"] != "retrying" {
            let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
            r.not_retried.push((s("agentId"), s("status"), s("reason")));
        }
    }

    let events = output(c.cmd(&["events"]))?;
    let mut ended: HashMap<String, f64> = HashMap::new();
    let mut scheduled: HashMap<String, f64> = HashMap::new();
    for line in String::from_utf8_lossy(&events).lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else { continue };
        let Some(id) = e["agentId"].as_str().filter(|id| id.ends_with("-CRASH")) else { continue };
        match e["kind"].as_str() {
            Some("exited") if e["data"]["attempt"] == 1 => {
                if let Some(t) = e["data"]["endedAt"].as_str().and_then(clock::parse_ms) {
                    ended.insert(id.to_string(), t);
                }
            }
            Some("retry_scheduled") => {
                if let Some(t) = e["at"].as_str().and_then(clock::parse_ms) {
                    scheduled.entry(id.to_string()).or_insert(t);
                }
            }
            _ => {}
        }
    }
    let mut ids: Vec<&String> = ended.keys().chain(scheduled.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        match (ended.get(id), scheduled.get(id)) {
            (Some(e), Some(s)) => r.latency.push(s - e),
            _ if r.not_retried.iter().any(|(x, _, _)| x == id) => {}
            _ => r.unmatched.push(id.clone()),
        }
    }
    if r.latency.len() + r.not_retried.len() < p.crashers {
        return Err(format!(
            "found both events for {} of {} crashers ({} not retried)",
            r.latency.len(),
            p.crashers,
            r.not_retried.len()
        ));
    }
    eprintln!("(retry) stopping the supervisor and killing {} agents", p.crash_long);
    c.stop();
    Ok(r)
}

impl Crash {
    pub fn to_json(&self) -> Value {
        let sum = |v: &[f64]| summarize(v).map(|s| s.to_json());
        json!({
            "longAgents": self.long_agents, "crashers": self.crashers, "setupSeconds": self.setup_s,
            "latencyMs": sum(&self.latency), "spawnMs": sum(&self.spawn_ms), "unmatched": self.unmatched,
            "notRetried": self.not_retried.iter().map(|(id, st, why)| json!({ "agentId": id, "status": st, "reason": why })).collect::<Vec<_>>(),
            "samples": self.latency,
        })
    }
}
