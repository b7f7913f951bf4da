//! Worktrees: on one git repository of 10,000 files (quick: 2,000),
//! (a) spawn to running of an agent with `isolation = "worktree"` against `git worktree add`
//!     by hand, one at a time, the two alternated;
//! (b) spawn to running of a plain agent while ten worktree agents' worktrees are being
//!     prepared, against the same with nothing being prepared;
//! (c) `corral merge` of 20 agents' branches (with the role's verify after each) against a
//!     shell loop of `git merge` + the same verify, in a worktree of its own as corral's.

use crate::measure::{Rng, now_ns};
use crate::stats::summarize;
use crate::tools::{Corral, output, wait_until};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The verify command of the merge measurement, for corral's role and the shell loop alike.
pub const VERIFY: &str = "test -f README && ls >/dev/null";

#[derive(Debug, Default)]
pub struct Worktrees {
    pub files: usize,
    /// (a): spawn to the agent's first instruction, ms, and `git worktree add` alone, ms.
    pub corral_add: Vec<f64>,
    pub git_add: Vec<f64>,
    /// (b): plain spawn to running, ms, idle and while worktrees were being prepared.
    pub idle: Vec<f64>,
    pub busy: Vec<f64>,
    /// (c): branches merged per run, and each run's wall time, ms.
    pub branches: usize,
    pub corral_merge: Vec<f64>,
    pub shell_merge: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub files: usize,
    pub adds: usize,
    pub probes: usize,
    pub preparing: usize,
    pub branches: usize,
    pub merge_runs: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes { files: 2000, adds: 5, probes: 10, preparing: 10, branches: 10, merge_runs: 2 }
        } else {
            Sizes { files: 10_000, adds: 15, probes: 20, preparing: 10, branches: 20, merge_runs: 3 }
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args(args).envs(GIT_ID);
    Ok(String::from_utf8_lossy(&output(c)?).into_owned())
}

const GIT_ID: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "bench"),
    ("GIT_AUTHOR_EMAIL", "bench@localhost"),
    ("GIT_COMMITTER_NAME", "bench"),
    ("GIT_COMMITTER_EMAIL", "bench@localhost"),
];

/// A repository of `files` files of a few lines each, in 100 directories, one commit.
fn make_repo(ws: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(ws).map_err(|e| e.to_string())?;
    git(ws, &["init", "-q", "-b", "main"])?;
    for i in 0..files {
        let d = ws.join(format!("src/d{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        }
        std::fs::write(d.join(format!("f{i:05}.txt")), format!("file {i}\nline two\nline three\n"))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(ws.join("README"), "bench repository\n").map_err(|e| e.to_string())?;
    std::fs::write(ws.join(".gitignore"), "data/\ncorral.toml\nhand/\n").map_err(|e| e.to_string())?;
    git(ws, &["add", "-A"])?;
    git(ws, &["commit", "-qm", "base"])?;
    Ok(())
}

/// Spawns `argv` with `role` and waits for the probe's stamp: ms from before the spawn.
fn probe(c: &Corral, role: &str, me: &Path, marker: &Path) -> Result<f64> {
    let mut cmd = c.cmd(&["spawn", "--role", role, "--task", "bench", "--"]);
    cmd.arg(me).arg("stamp").arg(marker);
    let t0 = now_ns();
    output(cmd)?;
    wait_until("the probe agent's stamp", Duration::from_secs(60), || Ok(marker.exists()))?;
    let stamp: i128 = std::fs::read_to_string(marker)
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok((stamp - t0) as f64 / 1e6)
}

/// Lets the disk catch up: written back, and a moment without other work of ours.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

fn views(c: &Corral) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(&output(c.cmd(&["status", "--json"]))?).map_err(|e| e.to_string())?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

pub fn worktrees(args: &RunArgs, tmp: &Path, me: &Path, rng: &mut Rng, quick: bool) -> Result<Worktrees> {
    let s = Sizes::new(quick);
    let ws = tmp.join("worktree-corral");
    eprintln!("(worktree) a repository of {} files", s.files);
    make_repo(&ws, s.files)?;
    let toml = format!(
        "data_dir = \"data\"\n[health]\nmax_concurrent = 500\nbreaker_failures = 0\n[defaults]\nmax_retries = 0\n\
         [roles.WT]\nisolation = \"worktree\"\n[roles.PLAIN]\n[roles.MERGE]\nisolation = \"worktree\"\n\
         verify = [\"sh\", \"-c\", {VERIFY:?}]\n"
    );
    let c = Corral::with_config(&args.corral, ws.clone(), &toml)?;
    output(c.cmd(&["status"]))?;
    let marks = tmp.join("worktree-marks");
    std::fs::create_dir_all(&marks).map_err(|e| e.to_string())?;
    let mut w = Worktrees { files: s.files, branches: s.branches, ..Default::default() };

    // (a) One at a time, alternated (which goes first too), each after the disk has
    // settled: the 10,000 files one worktree writes are still being written back for a
    // while. Nothing is removed until all are made: deleting 10,000 files slows whatever
    // git writes next by seconds on this kind of disk.
    eprintln!("(worktree) worktree creation, corral against git worktree add, {} each", s.adds);
    for i in 0..=s.adds {
        let dir = ws.join(format!("hand/t{i}"));
        let by_hand = || -> Result<f64> {
            settle();
            let t = Instant::now();
            git(&ws, &["worktree", "add", "-q", "-b", &format!("hand-{i}"), &dir.to_string_lossy(), "HEAD"])?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let by_corral = || -> Result<f64> {
            settle();
            probe(&c, "WT", me, &marks.join(format!("a-{i}")))
        };
        let (hand, ms) = if i % 2 == 0 {
            let h = by_hand()?;
            (h, by_corral()?)
        } else {
            let m = by_corral()?;
            (by_hand()?, m)
        };
        if i > 0 {
            w.git_add.push(hand);
            w.corral_add.push(ms);
        }
    }
    output(c.cmd(&["clean", "--worktrees", "--force"]))?;
    for i in 0..=s.adds {
        git(&ws, &["worktree", "remove", "--force", &ws.join(format!("hand/t{i}")).to_string_lossy()])?;
    }

    // (b) Plain spawns, idle, then while worktrees are being made.
    eprintln!("(worktree) plain spawn to running, idle and while {} worktrees are prepared", s.preparing);
    for i in 0..s.probes {
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        w.idle.push(probe(&c, "PLAIN", me, &marks.join(format!("idle-{i}")))?);
    }
    let mut batch = 0;
    while w.busy.len() < s.probes && batch < 5 {
        let mut ids = Vec::new();
        for _ in 0..s.preparing {
            let mut cmd = c.cmd(&["spawn", "--role", "WT", "--task", "bench", "--", "true"]);
            cmd.stderr(std::process::Stdio::null());
            ids.push(String::from_utf8_lossy(&output(cmd)?).trim().to_string());
        }
        let mut k = 0;
        loop {
            std::thread::sleep(Duration::from_millis(rng.below(100)));
            let ms = probe(&c, "PLAIN", me, &marks.join(format!("busy-{batch}-{k}")))?;
            k += 1;
            // It counts if, once it ran, some worktree was still to be made.
            let made = views(&c)?
                .iter()
                .filter(|v| ids.iter().any(|id| v["agentId"] == id.as_str()) && v["baseCommit"].is_string())
                .count();
            if made == ids.len() {
                break;
            }
            w.busy.push(ms);
        }
        wait_until("the worktree agents to finish", Duration::from_secs(300), || {
            Ok(views(&c)?
                .iter()
                .filter(|v| ids.iter().any(|id| v["agentId"] == id.as_str()))
                .all(|v| v["status"] == "complete"))
        })?;
        output(c.cmd(&["clean", "--worktrees", "--force"]))?;
        batch += 1;
    }

    // (c) Branches of agents that each commit a file of their own.
    eprintln!("(worktree) corral merge of {} branches against a shell loop of git merge + verify", s.branches);
    let ids: String = GIT_ID.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let script = format!(
        "echo \"$CORRAL_AGENT_ID\" > \"own-$CORRAL_AGENT_ID.txt\" && git add -A && {ids} git commit -qm \"$CORRAL_AGENT_ID\""
    );
    let mut merged = Vec::new();
    for _ in 0..s.branches {
        let mut cmd = c.cmd(&["spawn", "--role", "MERGE", "--task", "bench", "--", "sh", "-c", &script]);
        cmd.stderr(std::process::Stdio::null());
        merged.push(String::from_utf8_lossy(&output(cmd)?).trim().to_string());
    }
    wait_until("the merge agents to complete", Duration::from_secs(600), || {
        let v = views(&c)?;
        let mine: Vec<&Value> = v.iter().filter(|v| merged.iter().any(|id| v["agentId"] == id.as_str())).collect();
        if let Some(bad) = mine.iter().find(|v| ["failed", "escalated"].contains(&v["status"].as_str().unwrap_or(""))) {
            return Err(format!("agent {} of the merge measurement ended {}", bad["agentId"], bad["status"]));
        }
        Ok(mine.iter().all(|v| v["status"] == "complete"))
    })?;
    // $1: the worktree to merge in, $2: the branch, then the branches to merge.
    let loop_sh = format!(
        "set -e; d=\"$1\"; git worktree add -q \"$d\" \"$2\"; shift 2; for b in \"$@\"; do \
         git -C \"$d\" merge -q --no-ff --no-edit \"$b\"; (cd \"$d\" && sh -c {VERIFY:?}); done; \
         git worktree remove --force \"$d\""
    );
    for run in 0..s.merge_runs {
        let into = format!("bench-merge-{run}");
        let mut cmd = c.cmd(&["merge", "--into", &into, "--json"]);
        cmd.args(&merged);
        let t = Instant::now();
        let out = output(cmd)?;
        w.corral_merge.push(t.elapsed().as_secs_f64() * 1e3);
        let r: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
        if r["merged"].as_array().map_or(0, Vec::len) != s.branches {
            return Err(format!("corral merge did not merge every branch: {r}"));
        }
        let shell_into = format!("bench-shell-{run}");
        git(&ws, &["branch", &shell_into, "main"])?;
        let dir: PathBuf = tmp.join(format!("worktree-shell-{run}"));
        let mut sh = Command::new("sh");
        sh.current_dir(&ws).envs(GIT_ID).arg("-c").arg(&loop_sh).arg("sh").arg(&dir).arg(&shell_into);
        sh.args(merged.iter().map(|id| format!("corral/{id}")));
        let t = Instant::now();
        output(sh)?;
        w.shell_merge.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(w)
}

impl Worktrees {
    pub fn to_json(&self) -> Value {
        let sum = |v: &[f64]| summarize(v).map(|s| s.to_json());
        json!({
            "files": self.files,
            "corralWorktreeSpawnMs": sum(&self.corral_add), "gitWorktreeAddMs": sum(&self.git_add),
            "plainSpawnIdleMs": sum(&self.idle), "plainSpawnWhilePreparingMs": sum(&self.busy),
            "branches": self.branches, "corralMergeMs": sum(&self.corral_merge), "shellMergeMs": sum(&self.shell_merge),
            "samples": {
                "corralWorktreeSpawn": self.corral_add, "gitWorktreeAdd": self.git_add,
                "plainIdle": self.idle, "plainWhilePreparing": self.busy,
                "corralMerge": self.corral_merge, "shellMerge": self.shell_merge,
            },
        })
    }

    /// (a) corral's median over git's, minus one.
    pub fn overhead(&self) -> Option<f64> {
        Some(summarize(&self.corral_add)?.median / summarize(&self.git_add)?.median - 1.0)
    }

    /// (b) busy median over idle median.
    pub fn busy_ratio(&self) -> Option<f64> {
        Some(summarize(&self.busy)?.median / summarize(&self.idle)?.median)
    }
}
