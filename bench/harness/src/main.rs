//! corral-bench: measures corral and its peer (pueue) side by side for issue 2 and writes
//! BENCHMARKS.md. Normally started by `bench/run.sh`, which installs the peer and builds
//! both binaries first.
//!
//! It is also its own probe agent: `corral-bench stamp FILE` takes a realtime timestamp as
//! the first thing it does and writes it (nanoseconds) to FILE, so "spawn to agent running"
//! is measured on the clock rather than on a file's mtime (ext4 mtimes come from the
//! coarse clock: 4 ms steps with HZ=250, as coarse as the 5 ms target itself).

mod measure;
mod report;
mod stats;
mod tools;

use std::path::PathBuf;
use std::time::SystemTime;

pub type Result<T> = std::result::Result<T, String>;

fn main() {
    // First statement on purpose: this is the moment the probe agent is running.
    let started = SystemTime::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("stamp") => stamp(started, &args[1..]),
        Some("run") => match parse_run(&args[1..]).and_then(measure::run) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("corral-bench: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: corral-bench run --corral BIN --pueue BIN --pueued BIN --monitor SCRIPT --out FILE --results DIR [--quick]"
            );
            eprintln!("       corral-bench stamp FILE");
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

/// Everything a run needs; paths are absolute.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub corral: PathBuf,
    pub pueue: PathBuf,
    pub pueued: PathBuf,
    pub monitor: PathBuf,
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
        out: get("--out")?,
        results: get("--results")?,
        quick: args.iter().any(|a| a == "--quick"),
        command_line: opt("--command-line", "bench/run.sh"),
        corral_rev: opt("--corral-rev", "unknown"),
    })
}
