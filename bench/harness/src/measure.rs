//! One run of the harness: the targets chosen, in turn, then the report. The spawn target's
//! measurements are here, each run for corral and for pueue in the same process: spawn to
//! agent running, 1,000 sequential submissions, status with 1,000 agents, plus the seed's
//! monitor script over the same status files. The other targets have a module each
//! (`retry.rs`, `aggregate.rs`, `monitor.rs`, `mcp.rs`, `memory.rs`, `growth.rs`).

use crate::aggregate::{self, Aggregation};
use crate::growth;
use crate::mcp::{self, Mcp};
use crate::memory::{self, Memory};
use crate::monitor::{self, Live};
use crate::procfs::rss_kb;
use crate::report;
use crate::retry::{self, Crash};
use crate::stats::{Summary, summarize};
use crate::target::{Sizes, Target};
use crate::tools::{Corral, Pueue, Tool, output, run_capped, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

/// Sizes of one run; quick mode is for iterating on the harness, not for the record.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub latency_spawns: usize,
    pub bulk_spawns: usize,
    pub status_runs: usize,
    pub monitor_small: usize,
    pub monitor_small_runs: usize,
    pub monitor_full: bool,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                latency_spawns: 20,
                bulk_spawns: 200,
                status_runs: 5,
                monitor_small: 30,
                monitor_small_runs: 1,
                monitor_full: false,
            }
        } else {
            Plan {
                latency_spawns: 100,
                bulk_spawns: 1000,
                status_runs: 20,
                monitor_small: 100,
                monitor_small_runs: 1,
                monitor_full: true,
            }
        }
    }
}

/// Largest random pause before each latency probe. pueue starts queued tasks on a 300 ms
/// tick; a probe sent right after the previous one started would always wait almost a
/// whole tick, so probes land at random phases of it (for both systems alike).
const JITTER_MAX_MS: u64 = 300;

#[derive(Debug, Default)]
pub struct Latency {
    /// First spawn into a workspace with no supervisor running (it is started on demand).
    pub cold_ms: Option<f64>,
    /// Spawn start to the probe agent's first instruction (realtime clock), warm.
    pub running: Vec<f64>,
    /// The same, read from the probe file's mtime (coarse clock) as a cross-check.
    pub mtime: Vec<f64>,
    /// Spawn start to the submitting command's exit.
    pub returned: Vec<f64>,
    /// Context: the cheapest CLI round trip to the same supervisor, and starting and
    /// reaping `/bin/true`, the floor of any process start on this machine.
    pub ping: Vec<f64>,
    pub exec_true: Vec<f64>,
}

/// How many times each context command of the spawn-to-running measurement runs.
pub const CONTEXT_RUNS: usize = 30;

fn time_runs(mut make: impl FnMut() -> std::process::Command, runs: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut c = make();
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let t = Instant::now();
        let st = c.status().map_err(|e| format!("{c:?}: {e}"))?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            return Err(format!("{c:?} exited with {st}"));
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
pub struct Bulk {
    pub agent_command: String,
    pub total_ms: f64,
    pub per_call: Vec<f64>,
    /// From the last submission returning to every unit of work finished.
    pub settle_ms: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Status {
    pub entries: usize,
    pub bytes: usize,
    pub runs: Vec<f64>,
}

#[derive(Debug, Default)]
pub struct Side {
    pub latency: Option<Latency>,
    pub bulk: Option<Bulk>,
    /// corral only: the same submissions with `true` as the agent, as pueue's tasks run.
    pub bulk_true: Option<Bulk>,
    pub status: Option<Status>,
}

#[derive(Debug, Clone)]
pub struct MonitorRun {
    pub files: usize,
    pub ms: f64,
    /// Files it got through: all of them, unless it was stopped at its time cap.
    pub done: usize,
}

impl MonitorRun {
    pub fn per_file_ms(&self) -> f64 {
        self.ms / self.done.max(1) as f64
    }

    pub fn complete(&self) -> bool {
        self.done == self.files
    }
}

/// The longest a run of one of the seed's scripts may take; past it the script is stopped
/// and its rate so far reported, so a loaded machine cannot stretch the run without bound.
pub const SEED_CAP: Duration = Duration::from_secs(180);

pub struct Results {
    pub args: RunArgs,
    pub plan: Plan,
    pub date: String,
    pub machine: Vec<(String, String)>,
    pub pueue_version: String,
    pub corral: Side,
    pub pueue: Side,
    pub corral_health_raised: bool,
    /// Sizes of the targets beyond spawn, and which targets ran.
    pub sizes: Sizes,
    pub ran: Vec<Target>,
    pub crash: Option<Crash>,
    pub aggregation: Option<Aggregation>,
    /// The monitor with the workspace on tmpfs, and again on the temp dir's filesystem.
    pub live: Option<Live>,
    pub live_disk: Option<Live>,
    pub mcp: Option<Mcp>,
    pub worktrees: Option<crate::worktree::Worktrees>,
    pub memory: Memory,
    /// The figures at each size of `sizes.growth`.
    pub growth: Vec<growth::Size>,
    pub monitor: Vec<MonitorRun>,
    /// One `jq -r .agentId FILE`, the seed monitor's unit of work.
    pub jq_runs: Vec<f64>,
    pub errors: Vec<String>,
    pub wall_s: f64,
    /// /proc/loadavg at the start and the end: other work on the machine skews timings.
    pub load: (String, String),
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub fn now_ns() -> i128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// xorshift64*: enough randomness for probe jitter without a dependency.
pub struct Rng(u64);
impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let t = Instant::now();
    let plan = Plan::new(args.quick);
    let tmp = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // The harness is its own probe and reporter agent: a private copy, so a rebuild of the
    // harness during the run cannot pull the binary from under the agents.
    let me = tmp.join("bin/corral-bench");
    std::fs::create_dir_all(tmp.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy(std::env::current_exe().map_err(|e| e.to_string())?, &me)
        .map_err(|e| format!("{}: {e}", me.display()))?;
    let mut rng = Rng(now_ns() as u64 | 1);
    let mut r = Results {
        date: String::from_utf8_lossy(
            &output({
                let mut c = std::process::Command::new("date");
                c.args(["-u", "+%Y-%m-%d %H:%M UTC"]);
                c
            })
            .unwrap_or_default(),
        )
        .trim()
        .to_string(),
        machine: machine(),
        pueue_version: version(&args.pueue),
        args: args.clone(),
        plan,
        corral: Side::default(),
        pueue: Side::default(),
        corral_health_raised: false,
        sizes: Sizes::new(args.quick),
        ran: Target::ALL.into_iter().filter(|t| args.only.as_ref().is_none_or(|o| o.contains(t))).collect(),
        crash: None,
        aggregation: None,
        live: None,
        live_disk: None,
        mcp: None,
        worktrees: None,
        memory: Memory::default(),
        growth: Vec::new(),
        monitor: Vec::new(),
        jq_runs: Vec::new(),
        errors: Vec::new(),
        wall_s: 0.0,
        load: (loadavg(), String::new()),
    };

    if r.ran.contains(&Target::Spawn) {
        spawn_and_status(&args, &tmp, &me, &mut rng, &mut r);
    }
    let sizes = r.sizes;
    // The supervisor's memory with running agents is read in the retry workspace.
    if r.ran.contains(&Target::Retry) || r.ran.contains(&Target::Memory) {
        eprintln!("(retry) crash to retry scheduled, {} agents supervised", sizes.crash_long);
        match retry::crash(&args, &tmp, &sizes, &mut r.memory) {
            Ok(c) => r.crash = Some(c),
            Err(e) => note(&mut r, "(retry) crash to retry scheduled", e),
        }
    }
    if r.ran.contains(&Target::Aggregate) {
        match aggregate::aggregation(&args, &tmp, &sizes) {
            Ok(a) => r.aggregation = Some(a),
            Err(e) => note(&mut r, "(aggregate) aggregation", e),
        }
    }
    if r.ran.contains(&Target::Mcp) {
        eprintln!("(mcp) spawn_agent over `corral mcp`, {} calls ({})", sizes.mcp_calls, args.mcp_script.display());
        match mcp::mcp(&args, &sizes) {
            Ok(m) => r.mcp = Some(m),
            Err(e) => note(&mut r, "(mcp) MCP spawn_agent", e),
        }
    }
    if r.ran.contains(&Target::Memory)
        && sizes.pueue_running > 0
        && let Err(e) = memory::pueue_running(&args, &tmp, sizes.pueue_running, &mut r.memory)
    {
        note(&mut r, "(memory) pueued with running tasks", e);
    }
    if r.ran.contains(&Target::Growth) {
        growth::growth(&args, &tmp, &me, &mut rng, &mut r);
    }
    if r.ran.contains(&Target::Worktree) {
        match crate::worktree::worktrees(&args, &tmp, &me, &mut rng, args.quick) {
            Ok(w) => r.worktrees = Some(w),
            Err(e) => note(&mut r, "(worktree) worktrees", e),
        }
    }

    // The monitor last: its run on disk leaves the load average high for a while.
    // It runs its workspace on tmpfs, where the filesystem is not the bottleneck (on a
    // disk, 1,000 create + rename a second in one directory can be all it can do), then, in a
    // full run, on the temp dir's filesystem too.
    let shm = Path::new("/dev/shm").join(format!("corral-bench-{}", std::process::id()));
    if r.ran.contains(&Target::Monitor) {
        let costs =
            monitor::write_costs(&args, &tmp).map_err(|e| eprintln!("(monitor) measuring one status write: {e}")).ok();
        let base = if std::fs::create_dir_all(&shm).is_ok() { shm.clone() } else { tmp.clone() };
        let mut runs = vec![(base.clone(), "")];
        if sizes.live_on_disk && base != tmp {
            runs.push((tmp.clone(), ", on the temp dir's filesystem"));
        }
        for (dir, what) in runs {
            match monitor::live(&args, &dir, &me, &sizes) {
                Ok(mut l) => {
                    if let Some((a, b)) = costs {
                        l.report_call = Some(a);
                        l.printf_mv = Some(b);
                    }
                    if dir == base {
                        r.live = Some(l);
                    } else {
                        r.live_disk = Some(l);
                    }
                }
                Err(e) => note(&mut r, &format!("(monitor) monitor with reporting agents{what}"), e),
            }
        }
    }
    r.wall_s = t.elapsed().as_secs_f64();
    r.load.1 = loadavg();
    std::fs::create_dir_all(&args.results).map_err(|e| e.to_string())?;
    let raw = args.results.join("latest.json");
    std::fs::write(&raw, serde_json::to_string_pretty(&raw_json(&r)).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", raw.display()))?;
    std::fs::write(&args.out, report::markdown(&r)).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for dir in [&tmp, &shm] {
        remove_workspaces(dir);
    }
    eprintln!("wrote {} and {} in {:.0}s", args.out.display(), raw.display(), r.wall_s);
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} measurement(s) failed; see {}", r.errors.len(), args.out.display()))
    }
}

/// Kills what is left of the agents under `dir` and removes it. The shims of agents just
/// killed may still be writing their exit records, so removal is retried for a while.
pub fn remove_workspaces(dir: &Path) {
    crate::procfs::reap_agents(dir);
    for _ in 0..50 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("corral-bench: could not remove {}", dir.display());
}

pub fn note(r: &mut Results, what: &str, e: String) {
    eprintln!("corral-bench: {what}: {e}");
    r.errors.push(format!("{what}: {e}"));
}

/// The spawn target: spawn to agent running, sequential spawns, and status with that many
/// agents, for corral and pueue, and the seed's monitor script.
fn spawn_and_status(args: &RunArgs, tmp: &Path, me: &Path, rng: &mut Rng, r: &mut Results) {
    let plan = r.plan;
    let note = |r: &mut Results, what: &str, e: String| note(r, what, e);
    // Spawn to agent running.
    eprintln!("(spawn) spawn to agent running, corral, {} spawns", plan.latency_spawns);
    match Corral::new(&args.corral, tmp.join("latency-corral")).and_then(|mut c| {
        r.corral_health_raised = c.health_raised;
        latency(&mut c, me, plan.latency_spawns, true, rng)
    }) {
        Ok(l) => r.corral.latency = Some(l),
        Err(e) => note(r, "(spawn) spawn to agent running, corral", e),
    }
    eprintln!("(spawn) spawn to agent running, pueue, {} adds", plan.latency_spawns);
    match Pueue::start(&args.pueue, &args.pueued, tmp.join("latency-pueue"))
        .and_then(|mut p| latency(&mut p, me, plan.latency_spawns, false, rng))
    {
        Ok(l) => r.pueue.latency = Some(l),
        Err(e) => note(r, "(spawn) add to task running, pueue", e),
    }

    // Sequential spawns and status, corral: the agents report a status file each, which the
    // status measurement then reads.
    eprintln!("(spawn) {} sequential spawns, corral", plan.bulk_spawns);
    match Corral::new(&args.corral, tmp.join("bulk-corral")) {
        Err(e) => note(r, "(spawn) sequential spawns, corral", e),
        Ok(mut c) => {
            match bulk(&mut c, &reporting_agent(&args.corral), REPORTING_AGENT, plan.bulk_spawns) {
                Ok(b) => r.corral.bulk = Some(b),
                Err(e) => note(r, "(spawn) sequential spawns, corral", e),
            }
            eprintln!("(spawn) corral status --json x{}", plan.status_runs);
            match status(&c, plan.bulk_spawns, plan.status_runs) {
                Ok(s) => r.corral.status = Some(s),
                Err(e) => note(r, "(spawn) status, corral", e),
            }
            // For the memory target: the supervisor's memory with the finished agents in its registry.
            if let Ok(pid) = c.supervisor_pid() {
                r.memory.finished = plan.bulk_spawns;
                r.memory.finished_kb = rss_kb(pid);
            }
            match seed_monitor_runs(&args.monitor, &c.data_dir(), tmp, &plan) {
                Ok(m) => r.monitor = m,
                Err(e) => note(r, "(spawn) seed monitor", e),
            }
            let one = std::fs::read_dir(c.data_dir().join("agent-status"))
                .ok()
                .and_then(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == "json"))
                })
                .unwrap_or_default();
            match time_runs(
                || {
                    let mut j = std::process::Command::new("jq");
                    j.args(["-r", ".agentId"]).arg(&one);
                    j
                },
                CONTEXT_RUNS,
            ) {
                Ok(v) => r.jq_runs = v,
                Err(e) => note(r, "(spawn) jq", e),
            }
            c.stop();
        }
    }

    eprintln!("(spawn) {} sequential spawns, corral, agents `true`", plan.bulk_spawns);
    match Corral::new(&args.corral, tmp.join("bulk-true-corral"))
        .and_then(|mut c| bulk(&mut c, &["true".to_string()], "true", plan.bulk_spawns))
    {
        Ok(b) => r.corral.bulk_true = Some(b),
        Err(e) => note(r, "(spawn) sequential spawns, corral, agents `true`", e),
    }

    // Sequential adds and status, pueue.
    eprintln!("(spawn) {} sequential adds, pueue", plan.bulk_spawns);
    match Pueue::start(&args.pueue, &args.pueued, tmp.join("bulk-pueue")) {
        Err(e) => note(r, "(spawn) sequential adds, pueue", e),
        Ok(mut p) => {
            r.memory.pueued_idle_kb = rss_kb(p.daemon_pid);
            match bulk(&mut p, &["true".to_string()], "true", plan.bulk_spawns) {
                Ok(b) => r.pueue.bulk = Some(b),
                Err(e) => note(r, "(spawn) sequential adds, pueue", e),
            }
            eprintln!("(spawn) pueue status --json x{}", plan.status_runs);
            match status(&p, plan.bulk_spawns, plan.status_runs) {
                Ok(s) => r.pueue.status = Some(s),
                Err(e) => note(r, "(spawn) status, pueue", e),
            }
            r.memory.pueued_finished_kb = rss_kb(p.daemon_pid);
            p.stop();
        }
    }
}

/// The agent command of the sequential spawns as shown in the report: it writes its status file and exits.
pub const REPORTING_AGENT: &str = "corral report --progress 0.5 --phase impl --milestone m1";

/// REPORTING_AGENT's argv, with the binary under test.
pub fn reporting_agent(corral: &Path) -> Vec<String> {
    let mut argv = vec![corral.to_string_lossy().into_owned()];
    argv.extend(REPORTING_AGENT.split(' ').skip(1).map(str::to_string));
    argv
}

/// Spawn to agent running: one probe agent at a time; each writes the realtime clock as its first act.
pub fn latency(tool: &mut dyn Tool, me: &Path, n: usize, cold_first: bool, rng: &mut Rng) -> Result<Latency> {
    let dir = std::env::temp_dir().join(format!("corral-bench-{}-markers-{}", std::process::id(), tool.name()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut l = Latency::default();
    // Probe 0 warms up (and, for corral, starts the supervisor on demand).
    for i in 0..=n {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(rng.below(JITTER_MAX_MS)));
        }
        let marker = dir.join(format!("m-{i}"));
        let argv = [me.to_string_lossy().to_string(), "stamp".into(), marker.to_string_lossy().to_string()];
        let mut cmd = tool.submit(&argv);
        let t0 = now_ns();
        let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        let t_ret = now_ns();
        if !st.success() {
            return Err(format!("{cmd:?} exited with {st}"));
        }
        let (stamp, mtime) = wait_marker(&marker, Duration::from_secs(10))?;
        if i == 0 {
            if cold_first {
                l.cold_ms = Some(ms(stamp - t0));
            }
            continue;
        }
        l.running.push(ms(stamp - t0));
        l.mtime.push(ms(mtime - t0));
        l.returned.push(ms(t_ret - t0));
    }
    let _ = std::fs::remove_dir_all(&dir);
    l.ping = time_runs(|| tool.ping(), CONTEXT_RUNS)?;
    l.exec_true = time_runs(|| std::process::Command::new("/bin/true"), CONTEXT_RUNS)?;
    Ok(l)
}

/// The probe's timestamp and its file's mtime, both in ns since the epoch.
fn wait_marker(path: &Path, timeout: Duration) -> Result<(i128, i128)> {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let stamp: i128 = text.trim().parse().map_err(|e| format!("{}: {e}", path.display()))?;
            let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
            return Ok((stamp, m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128));
        }
        if t.elapsed() > timeout {
            return Err(format!("the probe agent never wrote {} (waited {timeout:?})", path.display()));
        }
        std::thread::sleep(Duration::from_micros(250));
    }
}

/// Sequential spawns: n submissions one after the other, then wait for all of them to finish.
fn bulk(tool: &mut dyn Tool, argv: &[String], label: &str, n: usize) -> Result<Bulk> {
    // A first status call starts corral's supervisor on demand, so the loop measures
    // submissions only (pueued is already running).
    output(tool.status_json())?;
    let mut b = Bulk { agent_command: label.into(), ..Default::default() };
    let start = Instant::now();
    for _ in 0..n {
        let mut cmd = tool.submit(argv);
        let t = Instant::now();
        let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        b.per_call.push(t.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            return Err(format!("{cmd:?} exited with {st}"));
        }
    }
    b.total_ms = start.elapsed().as_secs_f64() * 1e3;
    let settle = wait_until("every agent to finish", Duration::from_secs(180), || {
        let (done, total) = tool.progress()?;
        Ok(done == n && total == n)
    })?;
    b.settle_ms = Some(settle.as_secs_f64() * 1e3);
    Ok(b)
}

/// Status: the status command as JSON, timed end to end, with n entries present.
pub fn status(tool: &dyn Tool, n: usize, runs: usize) -> Result<Status> {
    let out = output(tool.status_json())?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    let entries = v.as_array().map(Vec::len).or_else(|| v["tasks"].as_object().map(|t| t.len())).unwrap_or(0);
    if entries != n {
        return Err(format!("expected {n} entries in {} status, found {entries}", tool.name()));
    }
    let mut s = Status { entries, bytes: out.len(), runs: Vec::new() };
    for _ in 0..runs {
        let mut cmd = tool.status_json();
        cmd.stdout(Stdio::null());
        let t = Instant::now();
        let st = cmd.status().map_err(|e| e.to_string())?;
        s.runs.push(t.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            return Err(format!("{cmd:?} exited with {st}"));
        }
    }
    Ok(s)
}

/// The seed's monitor script, unchanged, over corral's status files (`data/agent-status`):
/// on a copy of the first `monitor_small` files, then over all of them.
fn seed_monitor_runs(script: &Path, data: &Path, tmp: &Path, plan: &Plan) -> Result<Vec<MonitorRun>> {
    let src = data.join("agent-status");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let small = tmp.join("monitor-small");
    let small_dir = small.join("data/agent-status");
    std::fs::create_dir_all(&small_dir).map_err(|e| e.to_string())?;
    for f in files.iter().take(plan.monitor_small) {
        std::fs::copy(f, small_dir.join(f.file_name().expect("file"))).map_err(|e| e.to_string())?;
    }
    let mut runs = Vec::new();
    let n_small = files.len().min(plan.monitor_small);
    for _ in 0..plan.monitor_small_runs {
        runs.push(seed_monitor(script, &small, n_small, "(spawn)")?);
    }
    if plan.monitor_full {
        runs.push(seed_monitor(script, data.parent().expect("workspace"), files.len(), "(spawn)")?);
    }
    Ok(runs)
}

/// One run of the seed's monitor script in workspace `ws`, whose `data/agent-status` holds
/// `expect` status files, stopped at SEED_CAP; `label` prefixes its progress lines.
pub fn seed_monitor(script: &Path, ws: &Path, expect: usize, label: &str) -> Result<MonitorRun> {
    eprintln!("{label} seed monitor-agents.sh over {expect} status files");
    let mut c = std::process::Command::new("bash");
    c.arg(script).current_dir(ws);
    let (out, ran, finished) = run_capped(c, SEED_CAP)?;
    let ms = ran.as_secs_f64() * 1e3;
    let seen = String::from_utf8_lossy(&out).lines().filter(|l| l.starts_with("Agent: agent-")).count();
    if finished && seen != expect {
        return Err(format!("the seed monitor listed {seen} agents, expected {expect}"));
    }
    if !finished {
        eprintln!("{label} stopped after {:.0} s, {seen} of {expect} files done", ran.as_secs_f64());
    }
    Ok(MonitorRun { files: expect, ms, done: seen })
}

fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let fs = output({
        let mut c = std::process::Command::new("df");
        c.args(["--output=fstype", &std::env::temp_dir().to_string_lossy()]);
        c
    })
    .map(|o| String::from_utf8_lossy(&o).lines().nth(1).unwrap_or("").trim().to_string())
    .unwrap_or_default();
    vec![
        ("CPU".into(), model),
        ("nproc".into(), nproc),
        ("memory".into(), mem),
        ("kernel".into(), format!("Linux {kernel}")),
        ("temp dir filesystem".into(), format!("{} ({fs})", std::env::temp_dir().display())),
    ]
}

fn version(bin: &Path) -> String {
    let mut c = std::process::Command::new(bin);
    c.arg("--version");
    output(c).map(|o| String::from_utf8_lossy(&o).trim().to_string()).unwrap_or_else(|e| e)
}

fn raw_json(r: &Results) -> Value {
    let sum = |v: &[f64]| summarize(v).map(|s: Summary| s.to_json());
    let side = |s: &Side| {
        json!({
            "latency": s.latency.as_ref().map(|l| json!({
                "coldMs": l.cold_ms, "runningMs": sum(&l.running), "mtimeMs": sum(&l.mtime),
                "returnedMs": sum(&l.returned), "pingMs": sum(&l.ping), "execTrueMs": sum(&l.exec_true), "samples": { "running": l.running, "mtime": l.mtime, "returned": l.returned },
            })),
            "bulk": s.bulk.as_ref().map(|b| json!({
                "agentCommand": b.agent_command, "totalMs": b.total_ms, "settleMs": b.settle_ms,
                "perCallMs": sum(&b.per_call), "samples": b.per_call,
            })),
            "bulkTrue": s.bulk_true.as_ref().map(|b| json!({
                "agentCommand": b.agent_command, "totalMs": b.total_ms, "settleMs": b.settle_ms,
                "perCallMs": sum(&b.per_call), "samples": b.per_call,
            })),
            "status": s.status.as_ref().map(|st| json!({
                "entries": st.entries, "bytes": st.bytes, "runsMs": sum(&st.runs), "samples": st.runs,
            })),
        })
    };
    json!({
        "date": r.date, "quick": r.args.quick, "corralRev": r.args.corral_rev, "pueue": r.pueue_version,
        "machine": r.machine.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect::<Vec<_>>(),
        "corral": side(&r.corral), "pueueResults": side(&r.pueue),
        "jqMs": sum(&r.jq_runs), "seedMonitor": r.monitor.iter().map(|m| json!({ "files": m.files, "done": m.done, "ms": m.ms })).collect::<Vec<_>>(),
        "errors": r.errors, "wallSeconds": r.wall_s, "loadavg": [r.load.0, r.load.1], "targetsRun": r.ran.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "retry": r.crash.as_ref().map(Crash::to_json),
        "aggregate": r.aggregation.as_ref().map(Aggregation::to_json),
        "worktree": r.worktrees.as_ref().map(crate::worktree::Worktrees::to_json),
        "monitor": r.live.as_ref().map(Live::to_json),
        "monitorOnDisk": r.live_disk.as_ref().map(Live::to_json),
        "mcp": r.mcp.as_ref().map(Mcp::to_json),
        "memory": r.memory.to_json(),
        "growth": growth::raw_json(&r.growth),
    })
}
