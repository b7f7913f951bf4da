//! The monitor under load: `corral monitor` in tmux with 1,000 agents rewriting their
//! status files every second, its redraw rate and CPU, and whether the supervisor keeps up.

use crate::clock;
use crate::population::{agents, spawn_many, wait_running};
use crate::procfs::{self, clk_tck, cpu_seconds};
use crate::stats::summarize;
use crate::target::Sizes;
use crate::tools::{Corral, Tool, output, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let scratch = tmp.join("monitor-write-cost");
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

/// The monitor under load in a workspace under `base`: `agents` reporters (the harness itself, rewriting
/// its status file once a second) and `corral monitor` in a detached tmux session for
/// `seconds`.
pub fn live(args: &RunArgs, base: &Path, me: &Path, p: &Sizes) -> Result<Live> {
    let ws = base.join("monitor-corral");
    let mut r = Live { agents: p.live_agents, seconds: p.live_seconds, ..Default::default() };
    r.fs_write_ms = fs_write_ms(&ws.join(".corral/agent-status"));
    r.fs = format!("{} ({})", base.parent().unwrap_or(base).display(), fs_type(base));
    let mut c = Corral::with_config(&args.corral, ws, LIVE_CONFIG)?;
    let sup = c.supervisor_pid()?;
    eprintln!("(monitor) {} agents reporting every second, workspace on {}", p.live_agents, r.fs);
    // They outlive the measurement on purpose and are killed at the end.
    let argv = [me.to_string_lossy().into_owned(), "reporter".into(), "900".into()];
    r.setup_s = spawn_many(&c, p.live_agents, "REPORTER", "report progress every second", &argv)?;
    wait_running(&c, "REPORTER", p.live_agents, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(3));

    let stats = base.join("monitor-stats.json");
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
    eprintln!("(monitor) corral monitor in tmux (120x40) for {} s", p.live_seconds);
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
    eprintln!("(monitor) stopping the supervisor and killing {} agents", p.live_agents);
    c.stop();
    result.map(|()| r)
}

impl Live {
    pub fn to_json(&self) -> Value {
        let l = self;
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
}
