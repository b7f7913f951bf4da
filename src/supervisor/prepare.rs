//! Slow work done for an agent off the loop: making its worktree before its first attempt
//! starts, running its role's `verify` when an attempt ends well, and checking a worktree
//! agent's deliverables against its branch. Each is asked for here, done on a worker
//! thread, and comes back as a message (`Msg::Prepared`, `Msg::Verified`, `Msg::Checked`);
//! the loop never waits on git or on a test suite. Until the answer is back the agent stays
//! as it was; a supervisor restarted meanwhile asks again when it reconciles the attempt.
//!
//! A worktree counts as made only once its message is back and recorded (`base_commit`):
//! one that a killed supervisor left half-made is removed and made again before any
//! attempt runs in it, and worktrees no agent owns are pruned when a supervisor starts.

use super::daemon::{Msg, Supervisor};
use crate::policy::agent::{AttemptRun, WorktreeSpec};
use crate::protocol::AgentId;
use crate::worktree::{self, Prepare, PrepareError};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Default)]
pub struct Preparer {
    /// Agents whose worktree is being made.
    pub preparing: HashSet<AgentId>,
    /// Attempts whose verify is running.
    verifying: HashSet<(AgentId, u32)>,
    /// Verify outcomes not yet taken by the attempt's end: `Err` holds the failure text.
    verified: HashMap<(AgentId, u32), Result<(), String>>,
    /// Attempts whose deliverables are being looked up in their branch.
    checking: HashSet<(AgentId, u32)>,
    /// Those answers, not yet taken by the attempt's end: the deliverables that fail.
    checked: HashMap<(AgentId, u32), Vec<String>>,
    /// One worker makes worktrees, one at a time (git locks a repository's worktree list).
    jobs: Option<mpsc::Sender<(AgentId, u32, Prepare)>>,
}

pub type Prepared = Result<String, PrepareError>;

/// Where the agent's worktree goes.
pub fn worktree_dir(sup: &Supervisor) -> PathBuf {
    worktree::worktree_root(&sup.ws, sup.data.root())
}

/// The worktree of a new agent whose cwd is `cwd`, and the agent's cwd inside it. An error
/// (for the spawn to refuse) when `cwd` is in no git repository.
pub fn plan(sup: &Supervisor, id: &AgentId, cwd: &Path, base: Option<&str>) -> Result<(WorktreeSpec, PathBuf), String> {
    let Some(repo) = worktree::find_repo(cwd) else {
        return Err(format!(
            "{} is not inside a git repository, and isolation = \"worktree\" gives each agent a git worktree: \
             run `git init` (and commit) there, spawn with --no-worktree, or set isolation = \"none\" for the role",
            cwd.display()
        ));
    };
    let path = worktree_dir(sup).join(id.as_str());
    let inner = cwd.strip_prefix(&repo).map(|r| path.join(r)).unwrap_or_else(|_| path.clone());
    let spec = WorktreeSpec { repo, path, branch: format!("corral/{id}"), base: base.unwrap_or("HEAD").to_string() };
    Ok((spec, inner))
}

/// `n` ports starting at the lowest free port from `from` (the role's `port_base`) that no
/// live agent holds, whatever its role's base (an agent restored by a restarted supervisor
/// included: its ports are in its record), and that nothing on this machine is listening on.
pub fn reserve_ports(sup: &Supervisor, from: u16, n: u16) -> Option<(u16, u16)> {
    if n == 0 {
        return None;
    }
    let held: Vec<(u16, u16)> =
        sup.active().filter(|l| !l.agent.state.is_finished()).filter_map(|l| l.agent.spec.ports).collect();
    let mut p = from;
    while let Some(end) = p.checked_add(n) {
        let overlap = held.iter().find(|(s, c)| p < s.saturating_add(*c) && *s < end);
        match overlap {
            Some((s, c)) => p = s.saturating_add(*c),
            None if (p..end).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()) => return Some((p, n)),
            None => p += 1,
        }
    }
    None
}

/// The agent's worktree is to be made before its current attempt can start: never made
/// yet, or made and since removed (its directory is gone: it is made again on its branch).
pub fn needed(sup: &Supervisor, id: &AgentId) -> bool {
    sup.agents.get(id).is_some_and(|l| match &l.agent.spec.worktree {
        Some(w) => l.agent.base_commit.is_none() || !w.path.is_dir() || worktree::making(&w.path).exists(),
        None => false,
    })
}

/// Asks the worker to make the agent's worktree for attempt `n`; its answer comes back as
/// `Msg::Prepared`.
pub fn begin(sup: &mut Supervisor, id: &AgentId, n: u32) {
    if !sup.prepare.preparing.insert(id.clone()) {
        return;
    }
    let made = sup.agents[id].agent.base_commit.clone();
    let spec = &sup.agents[id].agent.spec;
    let w = spec.worktree.clone().expect("a worktree agent");
    let mut env = spec.env.clone();
    env.extend(worktree_env(&w, made.as_deref(), spec.ports));
    let job = Prepare {
        repo: w.repo.clone(),
        path: w.path.clone(),
        branch: w.branch.clone(),
        // Made again: from the commit it was first made from (kept as its base).
        base: made.clone().unwrap_or_else(|| w.base.clone()),
        copy: spec.policy.worktree_copy.clone(),
        setup: spec.policy.worktree_setup.clone(),
        env,
        log: sup.data.log_file(id),
        restore: made.is_some(),
        // Unknown: nothing counts as a killed predecessor's.
        stale_before: std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(
                sup.started_at.parse::<jiff::Timestamp>().map_or(0, |t| u64::try_from(t.as_millisecond()).unwrap_or(0)),
            ),
    };
    sup.emit(
        Some(id),
        "worktree_preparing",
        serde_json::json!({ "path": w.path, "branch": w.branch, "base": job.base, "again": job.restore }),
    );
    let tx = sup.tx.clone();
    let jobs = sup.prepare.jobs.get_or_insert_with(|| {
        let (jtx, jrx) = mpsc::channel::<(AgentId, u32, Prepare)>();
        let spawned = std::thread::Builder::new().name("corral-worktrees".into()).spawn(move || {
            for (id, attempt, job) in jrx {
                // A failure leaves nothing, and a branch with work on it (one being made
                // again) is never deleted.
                let result = worktree::prepare(&job);
                let _ = tx.send(Msg::Prepared { id, attempt, result });
            }
        });
        if let Err(e) = spawned {
            crate::elog!("corral daemon: cannot start the worktree worker: {e}");
        }
        jtx
    });
    if jobs.send((id.clone(), n, job)).is_err() {
        sup.prepare.jobs = None;
        sup.prepare.preparing.remove(id);
        sup.attempt_not_started(id, n, "the worktree worker is gone".into());
    }
}

/// The worker answered: the attempt starts in its new worktree, or ends without starting.
pub fn prepared(sup: &mut Supervisor, id: AgentId, attempt: u32, result: Prepared) {
    sup.prepare.preparing.remove(&id);
    let starting = sup
        .agents
        .get(&id)
        .and_then(|l| l.agent.current())
        .is_some_and(|a| a.attempt == attempt && a.run == AttemptRun::Starting);
    if !starting {
        return;
    }
    match result {
        Ok(base) => {
            sup.emit(Some(&id), "worktree_ready", serde_json::json!({ "attempt": attempt, "base": base }));
            sup.agents.get_mut(&id).expect("present").agent.base_commit = Some(base);
            sup.mark_dirty(&id);
            super::launch::start_current(sup, &id);
        }
        Err(e) => {
            sup.emit(Some(&id), "worktree_failed", serde_json::json!({ "attempt": attempt, "reason": e.message }));
            if e.permanent {
                sup.setup_failed(&id, attempt, e.message);
            } else {
                sup.attempt_not_started(&id, attempt, e.message);
            }
        }
    }
}

/// `CORRAL_WORKTREE`, `CORRAL_BRANCH`, `CORRAL_BASE` and `CORRAL_PORT` for the agent.
pub fn worktree_env(w: &WorktreeSpec, base: Option<&str>, ports: Option<(u16, u16)>) -> Vec<(String, String)> {
    let mut env = vec![
        ("CORRAL_WORKTREE".to_string(), w.path.display().to_string()),
        ("CORRAL_BRANCH".to_string(), w.branch.clone()),
    ];
    if let Some(b) = base {
        env.push(("CORRAL_BASE".into(), b.to_string()));
    }
    if let Some((p, _)) = ports {
        env.push(("CORRAL_PORT".into(), p.to_string()));
    }
    env
}

/// How the attempt's verify went, once it ran: `None` while it has not (it is started
/// now, and the attempt's end is decided when it answers).
pub fn verify_outcome(sup: &mut Supervisor, id: &AgentId, attempt: u32) -> Option<Result<(), String>> {
    let key = (id.clone(), attempt);
    // Kept until the attempt's end is decided: a branch check after it asks again.
    if let Some(r) = sup.prepare.verified.get(&key) {
        return Some(r.clone());
    }
    if !sup.prepare.verifying.insert(key) {
        return None;
    }
    let spec = &sup.agents[id].agent.spec;
    let argv = spec.policy.verify.clone().unwrap_or_default();
    let timeout = std::time::Duration::from_millis(spec.policy.verify_timeout_ms);
    let dir = spec.cwd.clone();
    let mut env = spec.env.clone();
    if let Some(w) = &spec.worktree {
        env.extend(worktree_env(w, sup.agents[id].agent.base_commit.as_deref(), spec.ports));
    }
    env.push(("CORRAL_AGENT_ID".into(), id.to_string()));
    let log = sup.data.log_file(id);
    sup.emit(Some(id), "verify_started", serde_json::json!({ "attempt": attempt, "command": argv }));
    let (tx, id) = (sup.tx.clone(), id.clone());
    let spawned = std::thread::Builder::new().name("corral-verify".into()).spawn(move || {
        let ran = worktree::run_logged(&argv, &dir, &env, &log, "verify", Some(timeout));
        let result = if ran.ok {
            Ok(())
        } else if ran.timed_out {
            Err(format!(
                "verify {argv:?} timed out after {}; the end of its output:\n{}",
                humantime::format_duration(timeout),
                worktree::tail(&ran.output, 2000)
            ))
        } else {
            Err(format!("verify {argv:?} failed; the end of its output:\n{}", worktree::tail(&ran.output, 2000)))
        };
        let _ = tx.send(Msg::Verified { id, attempt, result });
    });
    if let Err(e) = spawned {
        return Some(Err(format!("verify could not be started: {e}")));
    }
    None
}

/// A verify answered: the attempt's end is decided now.
pub fn verified(sup: &mut Supervisor, id: AgentId, attempt: u32, result: Result<(), String>) {
    let key = (id.clone(), attempt);
    sup.prepare.verifying.remove(&key);
    sup.emit(
        Some(&id),
        "verified",
        serde_json::json!({ "attempt": attempt, "passed": result.is_ok(), "reason": result.as_ref().err() }),
    );
    sup.prepare.verified.insert(key, result);
    sup.attempt_ended(&id, attempt);
}

/// The listed deliverables of a worktree agent's attempt that its branch does not hold,
/// once git has answered: `None` while it has not (it is asked now, on a thread, and the
/// attempt's end is decided when `Msg::Checked` comes back).
pub fn branch_check(
    sup: &mut Supervisor,
    id: &AgentId,
    attempt: u32,
    cwd: &Path,
    listed: &[String],
) -> Option<Vec<String>> {
    let key = (id.clone(), attempt);
    if let Some(r) = sup.prepare.checked.get(&key) {
        return Some(r.clone());
    }
    if !sup.prepare.checking.insert(key.clone()) {
        return None;
    }
    let w = sup.agents[id].agent.spec.worktree.clone().expect("a worktree agent");
    let (tx, dir, names, who) = (sup.tx.clone(), cwd.to_path_buf(), listed.to_vec(), id.clone());
    let spawned = std::thread::Builder::new().name("corral-check".into()).spawn(move || {
        let tree = crate::aggregate::workspace::BranchTree::new(&w.repo, &w.branch, &w.path);
        tree.preload(&dir, &names);
        let failing = names.iter().filter_map(|f| tree.failure(&dir, f)).collect();
        let _ = tx.send(Msg::Checked { id: who, attempt, failing });
    });
    if let Err(e) = spawned {
        sup.prepare.checking.remove(&key);
        return Some(listed.iter().map(|f| format!("{f} (its branch could not be checked: {e})")).collect());
    }
    None
}

/// A branch check answered: the attempt's end is decided now.
pub fn checked(sup: &mut Supervisor, id: AgentId, attempt: u32, failing: Vec<String>) {
    let key = (id.clone(), attempt);
    if !sup.prepare.checking.remove(&key) {
        return;
    }
    sup.prepare.checked.insert(key, failing);
    sup.attempt_ended(&id, attempt);
}

/// The attempt's end is decided (or it had ended before): what its verify and branch
/// check answered is no longer needed.
pub fn forget(sup: &mut Supervisor, id: &AgentId, attempt: u32) {
    let key = (id.clone(), attempt);
    sup.prepare.verified.remove(&key);
    sup.prepare.checked.remove(&key);
}

/// What reconcile does with a directory under the worktree directory.
enum Orphan {
    /// Half-made (its agent never started in it): removed, with its branch.
    HalfMade { repo: PathBuf, path: PathBuf, branch: String },
    /// No live agent owns it (unknown, or cleaned): removed unless it has uncommitted
    /// changes, which are reported instead; a branch is never deleted here.
    Unowned { repo: PathBuf, path: PathBuf },
    /// Half-made again on its existing branch: removed, the branch kept.
    Remade { repo: PathBuf, path: PathBuf },
}

/// At start: worktrees in the worktree directory that no agent owns with a finished
/// preparation, and that no agent will prepare again, are leftovers (of a supervisor killed
/// while making them, of an agent cleaned or forgotten, of a `corral merge` that died):
/// removed on a worker thread, with git's record of them, and git's records of worktrees
/// whose directory is gone are pruned. One with uncommitted changes is never removed: it
/// is reported (`worktree_kept`) instead. What happened comes back as `Msg::Pruned`.
pub fn prune_orphans(sup: &Supervisor) {
    let dir = worktree_dir(sup);
    let owned: HashMap<PathBuf, &crate::policy::agent::Agent> =
        sup.agents.values().filter_map(|l| Some((l.agent.spec.worktree.as_ref()?.path.clone(), &l.agent))).collect();
    let home = worktree::find_repo(&sup.ws.root);
    let mut repos: Vec<PathBuf> = home.iter().cloned().collect();
    for a in owned.values() {
        let r = &a.spec.worktree.as_ref().expect("owned").repo;
        if !repos.contains(r) {
            repos.push(r.clone());
        }
    }
    let mut orphans: Vec<Orphan> = Vec::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            // A `making` mark whose worktree is gone and that no agent will make again.
            if let Some(tree) = name.strip_suffix(".making").map(|n| dir.join(n))
                && !tree.exists()
                && owned.get(&tree).is_none_or(|a| a.state.is_finished())
            {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        // Only what corral names: a directory of someone else's is never touched.
        if let Some(pid) = name.strip_prefix("merge-").and_then(|p| p.parse::<i32>().ok()) {
            // `corral merge`'s own worktree, left by a merge that died.
            if let (true, Some(r)) = (crate::sys::process_gone(pid), &home) {
                orphans.push(Orphan::Unowned { repo: r.clone(), path });
            }
            continue;
        }
        if AgentId::parse(&name).is_err() {
            continue;
        }
        match owned.get(&path) {
            Some(a) => {
                let w = a.spec.worktree.as_ref().expect("owned");
                match (a.base_commit.is_some(), a.state.is_finished(), a.cleaned_at.is_some()) {
                    // Cleaned, yet still here (kept for its changes, or its removal failed).
                    (true, _, true) => orphans.push(Orphan::Unowned { repo: w.repo.clone(), path }),
                    // Caught being made again on its branch, and nobody will finish it.
                    (true, true, false) if worktree::making(&path).exists() => {
                        orphans.push(Orphan::Remade { repo: w.repo.clone(), path })
                    }
                    (true, _, false) => {}
                    // To be made again before the agent's next attempt, which removes it first.
                    (false, false, _) => {}
                    (false, true, _) => {
                        orphans.push(Orphan::HalfMade { repo: w.repo.clone(), path, branch: w.branch.clone() })
                    }
                }
            }
            None => {
                if let Some(r) = &home {
                    orphans.push(Orphan::Unowned { repo: r.clone(), path });
                }
            }
        }
    }
    let tx = sup.tx.clone();
    let _ = std::thread::Builder::new().name("corral-prune".into()).spawn(move || {
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for o in orphans {
            match o {
                Orphan::HalfMade { repo, path, branch } => {
                    worktree::discard(&repo, &path, Some(&branch));
                    removed.push(path);
                }
                Orphan::Remade { repo, path } => {
                    worktree::discard(&repo, &path, None);
                    let _ = std::fs::remove_file(worktree::making(&path));
                    removed.push(path);
                }
                Orphan::Unowned { repo, path } => {
                    // Only a worktree of its own is asked: git in a bare directory would
                    // answer for the repository above it.
                    if path.join(".git").exists() && worktree::is_dirty(&path) {
                        kept.push(path);
                    } else {
                        worktree::discard(&repo, &path, None);
                        removed.push(path);
                    }
                }
            }
        }
        for r in &repos {
            let _ = worktree::git_locked(r, &["worktree", "prune"]);
        }
        let _ = tx.send(Msg::Pruned { removed, kept });
    });
}

/// Reconcile's pruning is done: what it removed and what it kept, as events.
pub fn pruned(sup: &mut Supervisor, removed: Vec<PathBuf>, kept: Vec<PathBuf>) {
    for p in removed {
        sup.emit(None, "worktree_pruned", serde_json::json!({ "path": p }));
    }
    for p in kept {
        crate::elog!(
            "corral daemon: kept the orphaned worktree {}: it has uncommitted changes (no agent owns it; look at \
             it, then `git worktree remove --force` it)",
            p.display()
        );
        sup.emit(None, "worktree_kept", serde_json::json!({ "path": p, "why": "uncommitted changes" }));
    }
}
