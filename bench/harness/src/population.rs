//! Populations of agents for a measurement: submitting many at a time (setup, not
//! measured) and reading them back from `corral status --json`.

use crate::tools::{Corral, output, wait_until};
use crate::{Result, RunArgs};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Parallel submissions (`corral spawn`, `pueue add`) used to set up a population of agents
/// (setup, not measured).
pub const SETUP_THREADS: usize = 4;

pub fn corral_bin_dir(args: &RunArgs, tmp: &Path) -> Result<PathBuf> {
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

pub fn with_path(c: &mut Corral, dir: &Path) {
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
pub fn spawn_many(c: &Corral, n: usize, role: &str, task: &str, argv: &[String]) -> Result<f64> {
    run_many(n, || {
        let mut cmd = c.cmd(&["spawn", "--role", role, "--task", task, "--"]);
        cmd.args(argv);
        cmd
    })
}

pub fn agents(c: &Corral, role: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(&output(c.cmd(&["status", "--json", "--role", role]))?)
        .map_err(|e| format!("corral status --json: {e}"))?;
    v.as_array().cloned().ok_or_else(|| "corral status --json: not an array".into())
}

pub fn count(c: &Corral, role: &str, status: &str) -> Result<usize> {
    Ok(agents(c, role)?.iter().filter(|a| a["status"] == status).count())
}

pub fn wait_running(c: &Corral, role: &str, n: usize, timeout: Duration) -> Result<()> {
    wait_until(&format!("{n} {role} agents running"), timeout, || {
        std::thread::sleep(Duration::from_millis(200));
        Ok(count(c, role, "running")? >= n)
    })
    .map(|_| ())
}
