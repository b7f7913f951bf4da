//! The measurements of issues 3 to 7:
//!   3: crash to retry scheduled, with 1,000 agents supervised;
//!   4: aggregating 1,000 handoffs of 10 findings each (and the seed's jq loop over them);
//!   5: `corral monitor` with 1,000 agents reporting every second;
//!   6: `spawn_agent` round trip through `corral mcp` (bench/mcp_spawn.py);
//!   7: supervisor memory, idle and with 1,000 running agents (and pueued's); its growth
//!      from 100 to 10,000 agents is in `growth.rs`.

use crate::clock;
use crate::measure::SEED_CAP;
use crate::procfs::{self, clk_tck, cpu_seconds, rss_kb};
use crate::stats::summarize;
use crate::tools::{Corral, Pueue, Tool, output, run_capped, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sizes of issues 3-7 in one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Issue 3: long-running agents supervised while the crashes happen, and the crashers.
    pub crash_long: usize,
    pub crashers: usize,
    /// Issue 4: handoffs aggregated, timed runs, and how many handoffs the seed loop reads.
    pub handoffs: usize,
    pub aggregate_runs: usize,
    pub seed_handoffs: usize,
    /// Issue 5: reporting agents and the monitor's run time; whether to run it a second time
    /// with the workspace on the temp dir's filesystem (the first run uses tmpfs).
    pub live_agents: usize,
    pub live_seconds: u64,
    pub live_on_disk: bool,
    /// Issue 6: spawn_agent calls.
    pub mcp_calls: usize,
    /// Issue 7: pueue tasks kept running for pueued's memory (0: skipped).
    pub pueue_running: usize,
    /// Issue 7's growth: the sizes measured (agents), `status --json` runs and spawn probes
    /// at each, and how many of the smallest sizes the seed's monitor script also runs at.
    pub growth: [usize; 3],
    pub growth_status_runs: usize,
    pub growth_probes: usize,
    pub growth_seed: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Plan {
                crash_long: 200,
                crashers: 50,
                handoffs: 1000,
                aggregate_runs: 5,
                seed_handoffs: 30,
                live_agents: 200,
                live_seconds: 8,
                live_on_disk: false,
                mcp_calls: 30,
                pueue_running: 100,
                growth: [50, 200, 1000],
                growth_status_runs: 10,
                growth_probes: 10,
                growth_seed: 2,
            }
        } else {
            Plan {
                crash_long: 1000,
                crashers: 200,
                handoffs: 1000,
                aggregate_runs: 5,
                seed_handoffs: 1000,
                live_agents: 1000,
                live_seconds: 20,
                live_on_disk: true,
                mcp_calls: 100,
                // pueue adds one task per process start, slowly on a loaded machine: 500
                // running tasks are enough to see its growth per task.
                pueue_running: 500,
                growth: [100, 1000, 10_000],
                growth_status_runs: 10,
                growth_probes: 10,
                growth_seed: 2,
            }
        }
    }
}

/// Parallel submissions (`corral spawn`, `pueue add`) used to set up a population of agents
/// (setup, not measured).
pub const SETUP_THREADS: usize = 4;

// ---------------------------------------------------------------------------------------
// Issue 3 (and corral's side of issue 7)

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

/// corral's memory and its peer's (issue 7).
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
    /// Supervisor RSS with the 1,000 finished agents of issue 2's (b) in its registry.
    pub finished: usize,
    pub finished_kb: Option<u64>,
    /// pueued: fresh, with `finished` finished tasks (issue 2's (b)), with running tasks.
    pub pueued_idle_kb: Option<u64>,
    pub pueued_finished_kb: Option<u64>,
    pub pueued_running: usize,
    pub pueued_running_kb: Option<u64>,
    pub pueued_before_running_kb: Option<u64>,
}

fn corral_bin_dir(args: &RunArgs, tmp: &Path) -> Result<PathBuf> {
    // The agents call `corral`: a directory with the binary under test by that name goes
    // first on their PATH.
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let link = dir.join("corral");
    if !link.exists() {
        std::os::unix::fs::symlink(&args.corral, &link).map_err(|e| format!("{}: {e}", link.display()))?;
    }
    Ok(dir)
}

fn with_path(c: &mut Corral, dir: &Path) {
    let path = std::env::var("PATH").unwrap_or_default();
    c.env.push(("PATH".into(), format!("{}:{path}", dir.display())));
}

/// `n` runs of the command `make` builds, SETUP_THREADS at a time; seconds taken.
pub fn run_many(n: usize, make: impl Fn() -> Command + Sync) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..SETUP_THREADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::SeqCst) < n {
                        output(make())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a submitting thread panicked".to_string())??;
        }
        Ok(())
    })?;
    Ok(t.elapsed().as_secs_f64())
}

/// `n` agents of `role` running `argv`, spawned SETUP_THREADS at a time; seconds taken.
fn spawn_many(c: &Corral, n: usize, role: &str, task: &str, argv: &[String]) -> Result<f64> {
    run_many(n, || {
        let mut cmd = c.cmd(&["spawn", "--role", role, "--task", task, "--"]);
        cmd.args(argv);
        cmd
    })
}

fn agents(c: &Corral, role: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(&output(c.cmd(&["status", "--json", "--role", role]))?)
        .map_err(|e| format!("corral status --json: {e}"))?;
    v.as_array().cloned().ok_or_else(|| "corral status --json: not an array".into())
}

fn count(c: &Corral, role: &str, status: &str) -> Result<usize> {
    Ok(agents(c, role)?.iter().filter(|a| a["status"] == status).count())
}

fn wait_running(c: &Corral, role: &str, n: usize, timeout: Duration) -> Result<()> {
    wait_until(&format!("{n} {role} agents running"), timeout, || {
        std::thread::sleep(Duration::from_millis(200));
        Ok(count(c, role, "running")? >= n)
    })
    .map(|_| ())
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

/// Issue 3: `long` agents running `sleep 600`, then `crashers` agents spawned one after the
/// other, each failing at once with a transient finding. Memory (issue 7) is read before and
/// after the long-running agents start.
pub fn crash(args: &RunArgs, tmp: &Path, p: &Plan, mem: &mut Memory) -> Result<Crash> {
    let bin = corral_bin_dir(args, tmp)?;
    let mut c = Corral::with_config(&args.corral, tmp.join("3-corral"), CRASH_CONFIG)?;
    with_path(&mut c, &bin);
    let pid = c.supervisor_pid()?;
    std::thread::sleep(Duration::from_millis(500));
    mem.idle_kb = rss_kb(pid);
    let mut r = Crash { long_agents: p.crash_long, crashers: p.crashers, ..Default::default() };

    eprintln!("(3) {} long-running agents (`sleep 600`)", p.crash_long);
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

    eprintln!("(3) {} crashing agents, one after the other", p.crashers);
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
    eprintln!("(3) stopping the supervisor and killing {} agents", p.crash_long);
    c.stop();
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Issue 4

#[derive(Debug, Default)]
pub struct Aggregation {
    pub handoffs: usize,
    pub findings_each: usize,
    pub handoff_bytes: u64,
    pub runs: Vec<f64>,
    pub exit_code: Option<i32>,
    /// The report's `counts` object.
    pub counts: Value,
    pub report_bytes: usize,
    /// The seed's loop: handoffs given, handoffs it got through (fewer when stopped at
    /// SEED_CAP), run time in ms.
    pub seed: Option<(usize, usize, f64)>,
}

/// xorshift64*, seeded: the same handoffs on every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const FINDINGS_EACH: usize = 10;
const KEYS: usize = 150;
const ASPECTS: [&str; 5] = ["latency_ms", "owner", "status", "max_connections", "version"];
const KINDS: [&str; 4] = ["test", "measurement", "citation", "reasoning"];

/// One handoff: 5 strings (two from a pool of 40 shared notes, so many repeat across agents)
/// and 5 structured findings on 750 keys (150 components x 5 aspects), each key claimed by
/// 6 or 7 agents; about 70% of the claims agree on a key's value, the rest do not, with
/// evidence of every kind (or none), so the report has conflicts resolved by evidence, by
/// majority, and unresolved ones.
fn handoff(i: usize, rng: &mut Rng) -> Value {
    let id = format!("agent-{i:03}-IMPLEMENTER");
    let mut findings = Vec::new();
    for k in 0..2 {
        findings.push(json!(format!("shared note {}", rng.below(20) + k as u64 * 20)));
    }
    for k in 0..3 {
        findings.push(json!(format!("{id}: observation {k} on module {}", rng.below(300))));
    }
    for (k, aspect) in ASPECTS.iter().enumerate() {
        let key = format!("component{}.{aspect}", (i * 7 + k * 13) % KEYS);
        let agree = rng.below(10) < 7;
        let value = match (*aspect, agree) {
            ("latency_ms", true) => json!(40 + (i * 7 + k * 13) % KEYS),
            ("latency_ms", false) => json!(rng.below(500)),
            ("owner", true) => json!(format!("team-{}", (i * 7 + k * 13) % 7)),
            ("owner", false) => json!(format!("team-{}", rng.below(7))),
            ("status", true) => json!("stable"),
            ("status", false) => json!(["deprecated", "experimental"][rng.below(2) as usize]),
            ("max_connections", true) => json!(100),
            ("max_connections", false) => json!(50 * (1 + rng.below(4))),
            (_, true) => json!("2.1.0"),
            (_, false) => json!(format!("2.{}.0", rng.below(3))),
        };
        let n_ev = rng.below(3) as usize;
        let evidence: Vec<Value> = (0..n_ev)
            .map(|e| {
                let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
                let mut ev = json!({ "kind": kind, "ref": format!("{kind}-{i}-{k}-{e}") });
                if kind == "test" {
                    ev["passed"] = json!(rng.below(10) < 8);
                }
                ev
            })
            .collect();
        let mut f = json!({ "key": key, "value": value, "claim": format!("{key} is {value}") });
        if !evidence.is_empty() {
            f["evidence"] = json!(evidence);
        }
        findings.push(f);
    }
    json!({
        "fromAgent": id,
        "toAgent": "ORCHESTRATOR",
        "status": "complete",
        "deliverables": {
            "files": [],
            "findings": findings,
            "decisions": [format!("kept module {} as it is", rng.below(40)), "no schema change".to_string()],
        },
        "memoryCandidate": {
            "pattern": format!("retry pattern {}", rng.below(25)),
            "lesson": "rate limits clear after a backoff",
        },
    })
}

fn write_handoffs(dir: &Path, n: usize) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let base = clock::now_ms() - 3_600_000;
    let mut bytes = 0;
    for i in 1..=n {
        let h = handoff(i, &mut rng);
        let text = serde_json::to_string_pretty(&h).map_err(|e| e.to_string())? + "\n";
        bytes += text.len() as u64;
        let ts = clock::compact_ms(base + i as i64 * 1234);
        let name = format!("handoff-{ts}-{}-to-ORCHESTRATOR.json", h["fromAgent"].as_str().unwrap_or(""));
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(bytes)
}

/// Issue 4: `corral aggregate --json --out FILE` over `handoffs` handoff files written
/// straight into the data dir (agents corral never ran, which it aggregates all the same),
/// then the seed's loop over the same files.
pub fn aggregation(args: &RunArgs, tmp: &Path, p: &Plan) -> Result<Aggregation> {
    let c = Corral::with_config(&args.corral, tmp.join("4-corral"), "data_dir = \"data\"\n")?;
    let mut r = Aggregation { handoffs: p.handoffs, findings_each: FINDINGS_EACH, ..Default::default() };
    r.handoff_bytes = write_handoffs(&c.data_dir().join("handoffs"), p.handoffs)?;
    output(c.status_json())?; // starts the supervisor
    let out = c.ws.join("aggregate.json");
    let run = || -> Result<(f64, Option<i32>)> {
        let mut cmd = c.cmd(&["aggregate", "--json", "--out"]);
        cmd.arg(&out).stdout(Stdio::null());
        let t = Instant::now();
        let o = cmd.output().map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match o.status.code() {
            Some(0 | 1) => Ok((ms, o.status.code())),
            _ => Err(format!("corral aggregate: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        }
    };
    eprintln!("(4) corral aggregate over {} handoffs, 1 warm-up + {} runs", p.handoffs, p.aggregate_runs);
    run()?;
    for _ in 0..p.aggregate_runs {
        let (ms, code) = run()?;
        r.runs.push(ms);
        r.exit_code = code;
    }
    let text = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    r.report_bytes = text.len();
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", out.display()))?;
    r.counts = v["counts"].clone();
    if r.counts["aggregated"].as_u64() != Some(p.handoffs as u64) {
        return Err(format!("corral aggregate aggregated {} of {} handoffs", r.counts["aggregated"], p.handoffs));
    }
    // The seed's loop, in a workspace holding the first `seed_handoffs` of the same files.
    let seed_ws = if p.seed_handoffs >= p.handoffs {
        c.ws.clone()
    } else {
        let ws = tmp.join("4-seed");
        let dir = ws.join("data/handoffs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(c.data_dir().join("handoffs"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files.iter().take(p.seed_handoffs) {
            std::fs::copy(f, dir.join(f.file_name().expect("file"))).map_err(|e| e.to_string())?;
        }
        ws
    };
    eprintln!("(4) the seed's aggregation loop over {} handoffs", p.seed_handoffs);
    let mut cmd = Command::new("bash");
    cmd.arg(&args.aggregate_script).current_dir(&seed_ws);
    let (text, ran, finished) = run_capped(cmd, SEED_CAP)?;
    let seen =
        String::from_utf8_lossy(&text).lines().filter(|l| l.starts_with("Processing handoff from: agent-")).count();
    if finished && seen != p.seed_handoffs {
        return Err(format!("the seed's loop processed {seen} handoffs, expected {}", p.seed_handoffs));
    }
    if !finished {
        eprintln!("(4) stopped after {:.0} s, {seen} of {} handoffs done", ran.as_secs_f64(), p.seed_handoffs);
    }
    r.seed = Some((p.seed_handoffs, seen, ran.as_secs_f64() * 1e3));
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Issue 5

#[derive(Debug, Default)]
pub struct Live {
    /// Where the workspace was, e.g. "/dev/shm (tmpfs)".
    pub fs: String,
    /// One create + write + rename of a small file in its status directory, uncontended, ms.
    pub fs_write_ms: Option<f64>,
    pub agents: usize,
    pub setup_s: f64,
    pub seconds: u64,
    /// From `--stats`: frames drawn and the monitor's CPU seconds over its whole run.
    pub frames: u64,
    pub monitor_cpu_s: f64,
    /// The steady window (from 2 s after the monitor started to 1 s before it quits):
    /// its length, and CPU seconds of the monitor and the supervisor in it, from /proc.
    pub window_s: f64,
    pub monitor_window_cpu_s: Option<f64>,
    pub supervisor_window_cpu_s: Option<f64>,
    /// Whole machine over the window: busy share of all CPUs (0-1) and their count.
    pub machine_busy: f64,
    pub cpus: usize,
    pub load: (String, String),
    /// Status events the supervisor recorded per agent per second in the window (sampled).
    pub status_rate: Option<f64>,
    pub sampled: usize,
    /// What one status write costs as the seed's shell loops would do it: (wall ms, CPU ms)
    /// per `corral report` call and per printf + mv iteration.
    pub report_call: Option<(f64, f64)>,
    pub printf_mv: Option<(f64, f64)>,
}

/// The cost of one status write done by a shell loop, both ways the seed's agents could:
/// (wall ms, CPU ms) per `corral report` call and per printf + mv iteration.
pub fn write_costs(args: &RunArgs, tmp: &Path) -> Result<((f64, f64), (f64, f64))> {
    const N: usize = 40;
    let scratch = tmp.join("5-write-cost");
    let status = scratch.join("agent-status");
    std::fs::create_dir_all(&status).map_err(|e| e.to_string())?;
    let file = status.join("agent-001-PROBE.json");
    let tck = clk_tck();
    let envs = [
        ("CORRAL_AGENT_ID", "agent-001-PROBE".to_string()),
        ("CORRAL_ROLE", "PROBE".into()),
        ("CORRAL_STATUS_FILE", file.to_string_lossy().into_owned()),
        ("CORRAL_DATA_DIR", scratch.to_string_lossy().into_owned()),
    ];
    let cpu0 = procfs::children_cpu_seconds(tck);
    let t = Instant::now();
    for i in 0..N {
        let mut c = Command::new(&args.corral);
        c.current_dir(&scratch).envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        c.args(["report", "--progress", "0.5", "--phase", "p", "--milestone", &format!("m{i}")]);
        output(c)?;
    }
    let report =
        (t.elapsed().as_secs_f64() * 1e3 / N as f64, (procfs::children_cpu_seconds(tck) - cpu0) * 1e3 / N as f64);
    let script = format!(
        "i=0; while [ $i -lt {N} ]; do printf '{{\"agentId\":\"agent-001-PROBE\",\"progress\":0.%d,\"milestone\":\"m%d\"}}\\n' $((i % 10)) $i > \"$F.tmp\"; mv \"$F.tmp\" \"$F\"; i=$((i+1)); done"
    );
    let cpu0 = procfs::children_cpu_seconds(tck);
    let t = Instant::now();
    let mut c = Command::new("sh");
    c.args(["-c", &script]).env("F", &file);
    output(c)?;
    let printf =
        (t.elapsed().as_secs_f64() * 1e3 / N as f64, (procfs::children_cpu_seconds(tck) - cpu0) * 1e3 / N as f64);
    // `corral report` may have started a supervisor for the scratch directory; stop it.
    let _ = Command::new(&args.corral)
        .current_dir(&scratch)
        .args(["daemon", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok((report, printf))
}

const LIVE_CONFIG: &str = r#"[health]
max_concurrent = 5000
breaker_failures = 0

[defaults]
max_retries = 0
"#;

/// One create + write + rename in `dir`, the status write, timed alone (median of 200).
fn fs_write_ms(dir: &Path) -> Option<f64> {
    std::fs::create_dir_all(dir).ok()?;
    let (tmp, file) = (dir.join(".probe.tmp"), dir.join("probe.json"));
    let mut v = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        std::fs::write(&tmp, format!("{{\"i\": {i}}}\n")).ok()?;
        std::fs::rename(&tmp, &file).ok()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_file(&file);
    summarize(&v).map(|s| s.median)
}

/// The filesystem type of `dir`, as `df` names it.
fn fs_type(dir: &Path) -> String {
    let mut c = Command::new("df");
    c.arg("--output=fstype").arg(dir);
    output(c).map(|o| String::from_utf8_lossy(&o).lines().nth(1).unwrap_or("").trim().to_string()).unwrap_or_default()
}

/// Issue 5 in a workspace under `base`: `agents` reporters (the harness itself, rewriting
/// its status file once a second) and `corral monitor` in a detached tmux session for
/// `seconds`.
pub fn live(args: &RunArgs, base: &Path, me: &Path, p: &Plan) -> Result<Live> {
    let ws = base.join("5-corral");
    let mut r = Live { agents: p.live_agents, seconds: p.live_seconds, ..Default::default() };
    r.fs_write_ms = fs_write_ms(&ws.join(".corral/agent-status"));
    r.fs = format!("{} ({})", base.parent().unwrap_or(base).display(), fs_type(base));
    let mut c = Corral::with_config(&args.corral, ws, LIVE_CONFIG)?;
    let sup = c.supervisor_pid()?;
    eprintln!("(5) {} agents reporting every second, workspace on {}", p.live_agents, r.fs);
    // They outlive the measurement on purpose and are killed at the end.
    let argv = [me.to_string_lossy().into_owned(), "reporter".into(), "900".into()];
    r.setup_s = spawn_many(&c, p.live_agents, "REPORTER", "report progress every second", &argv)?;
    wait_running(&c, "REPORTER", p.live_agents, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(3));

    let stats = base.join("5-monitor-stats.json");
    let sock = format!("corral-bench-{}", std::process::id());
    let tmux = |a: &[&str]| {
        let mut t = Command::new("tmux");
        t.args(["-L", &sock, "-f", "/dev/null"]).args(a).current_dir(&c.ws);
        t.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CORRAL_") {
                t.env_remove(k);
            }
        }
        t
    };
    let shell =
        format!("exec '{}' monitor --stats '{}' --seconds {}", args.corral.display(), stats.display(), p.live_seconds);
    eprintln!("(5) corral monitor in tmux (120x40) for {} s", p.live_seconds);
    let ws = c.ws.to_string_lossy().into_owned();
    let result = (|| -> Result<()> {
        let launched = Instant::now();
        output(tmux(&["new-session", "-d", "-x", "120", "-y", "40", "-c", &ws, &shell]))?;
        let pane: u32 = String::from_utf8_lossy(&output(tmux(&["list-panes", "-F", "#{pane_pid}"]))?)
            .trim()
            .parse()
            .map_err(|e| format!("tmux pane pid: {e}"))?;
        std::thread::sleep(Duration::from_secs(2).saturating_sub(launched.elapsed()));
        let tck = clk_tck();
        let snap = || (Instant::now(), cpu_seconds(pane, tck), cpu_seconds(sup, tck), procfs::machine_ticks());
        let (t0, m0, s0, k0) = snap();
        let w0 = clock::now_ms();
        r.load.0 = procfs::loadavg();
        let end = Duration::from_secs(p.live_seconds.saturating_sub(1).max(3));
        std::thread::sleep(end.saturating_sub(launched.elapsed()));
        let (t1, m1, s1, k1) = snap();
        let w1 = clock::now_ms();
        r.load.1 = procfs::loadavg();
        r.window_s = (t1 - t0).as_secs_f64();
        r.monitor_window_cpu_s = m0.zip(m1).map(|(a, b)| b - a);
        r.supervisor_window_cpu_s = s0.zip(s1).map(|(a, b)| b - a);
        r.cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        r.machine_busy = (k1.0 - k0.0) as f64 / (k1.1 - k0.1).max(1) as f64;
        wait_until("the monitor's --stats file", Duration::from_secs(p.live_seconds + 60), || Ok(stats.exists()))?;
        let v: Value = serde_json::from_slice(&std::fs::read(&stats).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", stats.display()))?;
        r.frames = v["frames"].as_u64().ok_or("no frames in the monitor's stats")?;
        r.monitor_cpu_s = v["cpuSeconds"].as_f64().ok_or("no cpuSeconds in the monitor's stats")?;
        // Did the supervisor keep up? Status events recorded in the window, for a sample.
        let ids: Vec<String> =
            agents(&c, "REPORTER")?.iter().filter_map(|a| a["agentId"].as_str().map(str::to_string)).collect();
        let sample: Vec<&String> = ids.iter().step_by((ids.len() / 5).max(1)).take(5).collect();
        let mut n = 0usize;
        for id in &sample {
            let text = output(c.cmd(&["events", "--agent", id]))?;
            n += String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["kind"] == "status")
                .filter_map(|e| e["at"].as_str().and_then(clock::parse_ms))
                .filter(|at| *at >= w0 as f64 && *at < w1 as f64)
                .count();
        }
        r.sampled = sample.len();
        if !sample.is_empty() {
            r.status_rate = Some(n as f64 / sample.len() as f64 / ((w1 - w0) as f64 / 1e3));
        }
        Ok(())
    })();
    let _ = tmux(&["kill-server"]).status();
    // The server is gone once the monitor quits; its socket file may stay behind.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| st.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1).map(str::to_string));
    if let Some(uid) = uid {
        let dir = std::env::var("TMUX_TMPDIR").unwrap_or_else(|_| "/tmp".into());
        let _ = std::fs::remove_file(Path::new(&dir).join(format!("tmux-{uid}")).join(&sock));
    }
    eprintln!("(5) stopping the supervisor and killing {} agents", p.live_agents);
    c.stop();
    result.map(|()| r)
}

// ---------------------------------------------------------------------------------------
// Issue 6

#[derive(Debug, Default)]
pub struct Mcp {
    pub calls: usize,
    /// median, p90, p99, min, max (ms) as the script prints them.
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// Runs a command to completion within `timeout`, killing it after; its stdout.
fn output_within(mut c: Command, timeout: Duration) -> Result<Vec<u8>> {
    let what = format!("{c:?}");
    let out = std::env::temp_dir().join(format!("corral-bench-{}-out-{}", std::process::id(), clock::now_ms()));
    let err = out.with_extension("err");
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?);
    let mut child = c.spawn().map_err(|e| format!("{what}: {e}"))?;
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read(&out).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default()).trim().to_string();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    match status {
        None => Err(format!("{what}: still running after {timeout:?}; killed. {stderr}")),
        Some(st) if !st.success() => Err(format!("{what}: {st}: {stderr}")),
        Some(_) => Ok(stdout),
    }
}

/// Issue 6: bench/mcp_spawn.py (the official MCP Python SDK's stdio client against one
/// `corral mcp`), whose summary lines are read back.
pub fn mcp(args: &RunArgs, p: &Plan) -> Result<Mcp> {
    let mut c = Command::new(&args.python);
    c.arg(&args.mcp_script).arg("--corral").arg(&args.corral).args(["-n", &p.mcp_calls.to_string()]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CORRAL_") {
            c.env_remove(k);
        }
    }
    let text = String::from_utf8_lossy(&output_within(c, Duration::from_secs(180))?).into_owned();
    // "median 1.23 ms", "p90    1.23 ms", "p99 ...", "min    1.23 ms, max 4.56 ms"
    let grab = |label: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(label)?.trim_start();
            rest.split_whitespace().next()?.trim_end_matches(',').parse().ok()
        })
    };
    let max = text.lines().find_map(|l| l.split("max ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok());
    let calls = text
        .lines()
        .find_map(|l| l.split(", ").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(p.mcp_calls);
    match (grab("median"), grab("p90"), grab("p99"), grab("min"), max) {
        (Some(median), Some(p90), Some(p99), Some(min), Some(max)) => Ok(Mcp { calls, median, p90, p99, min, max }),
        _ => Err(format!("could not read the figures in bench/mcp_spawn.py's output:\n{text}")),
    }
}

// ---------------------------------------------------------------------------------------
// Issue 7, pueue's side

/// pueued with `n` tasks running `sleep 600` (each marked, so they are killed at the end).
pub fn pueue_running(args: &RunArgs, tmp: &Path, n: usize, mem: &mut Memory) -> Result<()> {
    let dir = tmp.join("7-pueue");
    let mut p = Pueue::start(&args.pueue, &args.pueued, dir.clone())?;
    std::thread::sleep(Duration::from_millis(300));
    mem.pueued_before_running_kb = rss_kb(p.daemon_pid);
    eprintln!("(7) pueue: {n} tasks running `sleep 600`");
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

fn live_json(l: &Live) -> Value {
    json!({
        "fs": l.fs, "fsWriteMs": l.fs_write_ms,
        "agents": l.agents, "setupSeconds": l.setup_s, "seconds": l.seconds, "frames": l.frames,
        "monitorCpuSeconds": l.monitor_cpu_s, "windowSeconds": l.window_s,
        "monitorWindowCpuSeconds": l.monitor_window_cpu_s, "supervisorWindowCpuSeconds": l.supervisor_window_cpu_s,
        "machineBusy": l.machine_busy, "cpus": l.cpus, "loadavg": [l.load.0, l.load.1],
        "statusEventsPerAgentPerSecond": l.status_rate, "sampledAgents": l.sampled,
        "corralReportCall": l.report_call.map(|(w, c)| json!({ "wallMs": w, "cpuMs": c })),
        "printfMvIteration": l.printf_mv.map(|(w, c)| json!({ "wallMs": w, "cpuMs": c })),
    })
}

pub fn raw_json(
    crash: &Option<Crash>,
    agg: &Option<Aggregation>,
    live: &Option<Live>,
    live_disk: &Option<Live>,
    mcp: &Option<Mcp>,
    mem: &Memory,
) -> Value {
    let sum = |v: &[f64]| summarize(v).map(|s| s.to_json());
    json!({
        "issue3": crash.as_ref().map(|c| json!({
            "longAgents": c.long_agents, "crashers": c.crashers, "setupSeconds": c.setup_s,
            "latencyMs": sum(&c.latency), "spawnMs": sum(&c.spawn_ms), "unmatched": c.unmatched,
            "notRetried": c.not_retried.iter().map(|(id, st, why)| json!({ "agentId": id, "status": st, "reason": why })).collect::<Vec<_>>(),
            "samples": c.latency,
        })),
        "issue4": agg.as_ref().map(|a| json!({
            "handoffs": a.handoffs, "findingsEach": a.findings_each, "handoffBytes": a.handoff_bytes,
            "runsMs": sum(&a.runs), "samples": a.runs, "exitCode": a.exit_code, "counts": a.counts,
            "reportBytes": a.report_bytes,
            "seed": a.seed.map(|(n, done, ms)| json!({ "handoffs": n, "done": done, "ms": ms })),
        })),
        "issue5": live.as_ref().map(live_json),
        "issue5OnDisk": live_disk.as_ref().map(live_json),
        "issue6": mcp.as_ref().map(|m| json!({
            "calls": m.calls, "medianMs": m.median, "p90Ms": m.p90, "p99Ms": m.p99, "minMs": m.min, "maxMs": m.max,
        })),
        "issue7": json!({
            "idleKb": mem.idle_kb, "running": mem.running, "runningKb": mem.running_kb, "runningPssKb": mem.running_pss_kb,
            "helpers": mem.helpers, "helpersRssKb": mem.helpers_rss_kb, "helpersPssKb": mem.helpers_pss_kb,
            "finished": mem.finished, "finishedKb": mem.finished_kb,
            "pueuedIdleKb": mem.pueued_idle_kb, "pueuedFinishedKb": mem.pueued_finished_kb,
            "pueuedRunning": mem.pueued_running, "pueuedRunningKb": mem.pueued_running_kb,
            "pueuedBeforeRunningKb": mem.pueued_before_running_kb,
        }),
    })
}
