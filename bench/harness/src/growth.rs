//! Growth: the same figures at 100, 1,000 and 10,000 agents (quick: 50, 200 and
//! 1,000), each size in a fresh corral workspace and a fresh pueued filled with that many
//! finished agents (tasks): `status --json`, spawn to agent running, the supervisor's
//! memory, and the seed's monitor-agents.sh over the status files at the two smaller sizes.

use crate::measure::{self, MonitorRun, Results, Rng, Status, note, remove_workspaces};
use crate::population::{SETUP_THREADS, run_many};
use crate::procfs::rss_kb;
use crate::stats::summarize;
use crate::target::Sizes;
use crate::tools::{Corral, Pueue, Tool, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// One system at one size.
#[derive(Debug)]
pub struct At {
    /// From the first submission (SETUP_THREADS at a time) to every agent finished, seconds.
    pub fill_s: f64,
    pub status: Status,
    /// Spawn (add) to agent (task) running, ms, one probe at a time.
    pub running: Vec<f64>,
    /// The supervisor's (pueued's) RSS, KiB, after the `status --json` runs.
    pub rss_kb: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Size {
    pub agents: usize,
    pub corral: Option<At>,
    pub pueue: Option<At>,
    /// The seed's monitor-agents.sh over `agents` status files, and whether that is the
    /// spawn target's run over as many files (then not run again here).
    pub seed: Option<MonitorRun>,
    pub seed_reused: bool,
}

/// The longest the agents of one size may take to finish after the last submission.
const SETTLE: Duration = Duration::from_secs(600);

/// Every size of `r.sizes.growth` in turn, corral then pueue, each removed before the next.
pub fn growth(args: &RunArgs, tmp: &Path, me: &Path, rng: &mut Rng, r: &mut Results) {
    let p = r.sizes;
    for (i, &n) in p.growth.iter().enumerate() {
        let mut s = Size { agents: n, ..Default::default() };
        if i < p.growth_seed
            && let Some(m) = r.monitor.iter().find(|m| m.files == n)
        {
            s.seed = Some(m.clone());
            s.seed_reused = true;
        }
        // corral's agents each write their status file, which the seed's script reads.
        let ws = tmp.join(format!("growth-{n}-corral"));
        match Corral::new(&args.corral, ws.clone()) {
            Err(e) => note(r, &format!("(growth) corral, {n} agents"), e),
            Ok(mut c) => {
                match c
                    .supervisor_pid()
                    .and_then(|pid| at(&mut c, pid, n, &measure::reporting_agent(&args.corral), &p, me, rng))
                {
                    Ok(a) => s.corral = Some(a),
                    Err(e) => note(r, &format!("(growth) corral, {n} agents"), e),
                }
                if i < p.growth_seed && s.seed.is_none() && s.corral.is_some() {
                    match measure::seed_monitor(&args.monitor, &c.ws, n, "(growth)") {
                        Ok(m) => s.seed = Some(m),
                        Err(e) => note(r, &format!("(growth) seed monitor, {n} status files"), e),
                    }
                }
                c.stop();
            }
        }
        remove_workspaces(&ws);
        let dir = tmp.join(format!("growth-{n}-pueue"));
        match Pueue::start(&args.pueue, &args.pueued, dir.clone()).and_then(|mut q| {
            let pid = q.daemon_pid;
            at(&mut q, pid, n, &["true".to_string()], &p, me, rng)
        }) {
            Ok(a) => s.pueue = Some(a),
            Err(e) => note(r, &format!("(growth) pueue, {n} tasks"), e),
        }
        remove_workspaces(&dir);
        r.growth.push(s);
    }
}

/// Fills `tool` (its supervisor is `pid`) with `n` finished agents running `argv`, then
/// measures it at that size.
fn at<T: Tool + Sync>(
    tool: &mut T,
    pid: u32,
    n: usize,
    argv: &[String],
    p: &Sizes,
    me: &Path,
    rng: &mut Rng,
) -> Result<At> {
    let name = tool.name();
    eprintln!("(growth) {name}: {n} agents, {SETUP_THREADS} submissions at a time");
    let t = Instant::now();
    run_many(n, || tool.submit(argv))?;
    wait_until(&format!("{n} {name} agents to finish"), SETTLE, || {
        std::thread::sleep(Duration::from_millis(100));
        let (done, total) = tool.progress()?;
        Ok(done == n && total == n)
    })?;
    let fill_s = t.elapsed().as_secs_f64();
    eprintln!("(growth) {name} status --json x{} with {n} agents", p.growth_status_runs);
    let status = measure::status(tool, n, p.growth_status_runs)?;
    let rss_kb = rss_kb(pid);
    eprintln!("(growth) {name}: {} probes, spawn to agent running, with {n} agents", p.growth_probes);
    let running = measure::latency(tool, me, p.growth_probes, false, rng)?.running;
    Ok(At { fill_s, status, running, rss_kb })
}

pub fn raw_json(sizes: &[Size]) -> Value {
    let sum = |v: &[f64]| summarize(v).map(|s| s.to_json());
    let at = |a: &Option<At>| {
        a.as_ref().map(|a| {
            json!({
                "fillSeconds": a.fill_s, "rssKb": a.rss_kb,
                "status": { "entries": a.status.entries, "bytes": a.status.bytes, "runsMs": sum(&a.status.runs), "samples": a.status.runs },
                "runningMs": sum(&a.running), "runningSamples": a.running,
            })
        })
    };
    Value::Array(
        sizes
            .iter()
            .map(|s| {
                json!({
                    "agents": s.agents, "corral": at(&s.corral), "pueue": at(&s.pueue),
                    "seedMonitor": s.seed.as_ref().map(|m| json!({ "files": m.files, "done": m.done, "ms": m.ms, "fromSpawnTarget": s.seed_reused })),
                })
            })
            .collect(),
    )
}
