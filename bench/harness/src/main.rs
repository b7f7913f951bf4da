//! corral-bench: measures corral beside its peers (pueue, the seed's scripts) on each target
//! of `target::Target` and writes BENCHMARKS.md. Normally started by `bench/run.sh`, which
//! installs the peer and builds both binaries first.
//!
//! It is also its own probe agent: `corral-bench stamp FILE` takes a realtime timestamp as
//! the first thing it does and writes it (nanoseconds) to FILE, so "spawn to agent running"
//! is measured on the clock rather than on a file's mtime (ext4 mtimes come from the
//! coarse clock: 4 ms steps with HZ=250, as coarse as the 5 ms target itself).
//!
//! `corral-bench reporter SECONDS` is the reporting agent of the monitor measurement: once
//! a second it rewrites its status file (temp file + rename), with a new progress, phase and
//! milestone. `corral-bench reap DIR` kills every agent of the workspaces under DIR (for
//! `bench/run.sh` when a run is interrupted).

mod aggregate;
mod clock;
mod growth;
mod mcp;
mod measure;
mod memory;
mod monitor;
mod population;
mod procfs;
mod report;
mod report_targets;
mod retry;
mod stats;
mod target;
mod tools;
mod worktree;

use std::path::PathBuf;
use std::time::SystemTime;
use target::Target;

pub type Result<T> = std::result::Result<T, String>;

fn main() {
    // First statement on purpose: this is the moment the probe agent is running.
    let started = SystemTime::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("stamp") => stamp(started, &args[1..]),
        Some("reporter") => reporter(&args[1..]),
        Some("emit") => emit(&args[1..]),
        Some("stamp-exec") => stamp_exec(started, &args[1..]),
        Some("reap") => match args.get(1) {
            Some(dir) => {
                let n = procfs::reap_agents(std::path::Path::new(dir));
                if n > 0 {
                    eprintln!("corral-bench reap: killed {n} leftover agent process group(s) under {dir}");
                }
                0
            }
            None => 2,
        },
        Some("run") => match parse_run(&args[1..]).and_then(measure::run) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("corral-bench: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: corral-bench run --corral BIN --pueue BIN --pueued BIN --monitor SCRIPT --aggregate-script SCRIPT \
                 --mcp-script SCRIPT --out FILE --results DIR [--python BIN] [--only TARGET,...] [--quick]"
            );
            eprintln!("       (targets: {})", Target::names());
            eprintln!("       corral-bench stamp FILE");
            eprintln!("       corral-bench reporter SECONDS");
            eprintln!("       corral-bench reap DIR");
            2
        }
    };
    std::process::exit(code);
}

fn stamp(t: SystemTime, args: &[String]) -> i32 {
    let Some(path) = args.first() else {
        eprintln!("corral-bench stamp: missing FILE");
        return 2;
    };
    let ns = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // Written under a temporary name and renamed, so the poller never reads a torn file.
    let tmp = format!("{path}.tmp");
    match std::fs::write(&tmp, format!("{ns}\n")).and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("corral-bench stamp {path}: {e}");
            1
        }
    }
}

/// The reporting agent: the seed's status file, rewritten atomically once a second (on a
/// fixed schedule, so a slow write does not drift the rate) for SECONDS seconds.
fn stamp_exec(started: SystemTime, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let [file, prog, rest @ ..] = args else {
        eprintln!("corral-bench stamp-exec: usage: stamp-exec FILE CMD [ARGS...]");
        return 2;
    };
    if stamp(started, std::slice::from_ref(file)) != 0 {
        return 1;
    }
    let e = std::process::Command::new(prog).args(rest).exec();
    eprintln!("corral-bench stamp-exec: cannot run {prog}: {e}");
    127
}

fn emit(args: &[String]) -> i32 {
    use std::io::Write;
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    let (Some(rate), Some(secs)) = (num(0), num(1)) else {
        eprintln!("corral-bench emit: usage: emit RATE SECONDS");
        return 2;
    };
    let session = "7d2b1c3e-1111-4d53-9a55-0f2d7b1c9e70";
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, r#"{{"type":"system","subtype":"init","session_id":"{session}","tools":["Bash"]}}"#);
    let start = std::time::Instant::now();
    let total = rate * secs;
    for i in 0..total {
        let line = format!(
            r#"{{"type":"assistant","message":{{"id":"msg_{i}","content":[{{"type":"text","text":"step {i} of the work"}}],"usage":{{"input_tokens":10,"output_tokens":2}}}},"session_id":"{session}"}}"#
        );
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return 1;
        }
        let next = start + std::time::Duration::from_micros((i + 1) * 1_000_000 / rate.max(1));
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    let _ = writeln!(
        out,
        r#"{{"type":"result","subtype":"success","is_error":false,"num_turns":{total},"result":"done","session_id":"{session}","total_cost_usd":0.01,"usage":{{"input_tokens":10,"output_tokens":2}}}}"#
    );
    0
}

fn reporter(args: &[String]) -> i32 {
    let Some(secs) = args.first().and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("corral-bench reporter: missing SECONDS");
        return 2;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (file, id, role) = (var("CORRAL_STATUS_FILE"), var("CORRAL_AGENT_ID"), var("CORRAL_ROLE"));
    if file.is_empty() {
        eprintln!("corral-bench reporter: CORRAL_STATUS_FILE is not set");
        return 2;
    }
    let path = std::path::Path::new(&file);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("status.json");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let start = std::time::Instant::now();
    for i in 0..secs {
        let body = serde_json::json!({
            "agentId": id, "role": role, "status": "active",
            "progress": (i % 10) as f64 / 10.0, "phase": "p", "milestone": format!("m{i}"),
            "lastUpdate": clock::format_ms(clock::now_ms()), "findings": [],
        });
        if let Err(e) = std::fs::write(&tmp, format!("{body}\n")).and_then(|()| std::fs::rename(&tmp, path)) {
            eprintln!("corral-bench reporter {file}: {e}");
            return 1;
        }
        let next = start + std::time::Duration::from_secs(i + 1);
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    0
}

/// Everything a run needs; paths are absolute.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub corral: PathBuf,
    pub pueue: PathBuf,
    pub pueued: PathBuf,
    pub monitor: PathBuf,
    pub aggregate_script: PathBuf,
    pub mcp_script: PathBuf,
    pub python: String,
    /// Which targets to measure; all when not given.
    pub only: Option<Vec<Target>>,
    pub out: PathBuf,
    pub results: PathBuf,
    pub quick: bool,
    pub command_line: String,
    pub corral_rev: String,
}

fn parse_run(args: &[String]) -> Result<RunArgs> {
    let get = |flag: &str| -> Result<PathBuf> {
        let i = args.iter().position(|a| a == flag).ok_or(format!("missing {flag}"))?;
        let v = args.get(i + 1).ok_or(format!("{flag} needs a value"))?;
        std::path::absolute(v).map_err(|e| format!("{flag} {v}: {e}"))
    };
    let opt = |flag: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    Ok(RunArgs {
        corral: get("--corral")?,
        pueue: get("--pueue")?,
        pueued: get("--pueued")?,
        monitor: get("--monitor")?,
        aggregate_script: get("--aggregate-script")?,
        mcp_script: get("--mcp-script")?,
        python: opt("--python", "python3"),
        only: match args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)) {
            None => None,
            Some(list) => Some(Target::parse_list(list)?),
        },
        out: get("--out")?,
        results: get("--results")?,
        quick: args.iter().any(|a| a == "--quick"),
        command_line: opt("--command-line", "bench/run.sh"),
        corral_rev: opt("--corral-rev", "unknown"),
    })
}
