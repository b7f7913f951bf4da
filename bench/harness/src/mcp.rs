//! `spawn_agent` over MCP: bench/mcp_spawn.py drives one `corral mcp` server on stdio with
//! the official MCP Python SDK and times each call; its summary is read back here.

use crate::clock;
use crate::target::Sizes;
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// bench/mcp_spawn.py (the official MCP Python SDK's stdio client against one
/// `corral mcp`), whose summary lines are read back.
pub fn mcp(args: &RunArgs, p: &Sizes) -> Result<Mcp> {
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

impl Mcp {
    pub fn to_json(&self) -> Value {
        json!({
            "calls": self.calls, "medianMs": self.median, "p90Ms": self.p90, "p99Ms": self.p99,
            "minMs": self.min, "maxMs": self.max,
        })
    }
}
