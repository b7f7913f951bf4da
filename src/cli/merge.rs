//! `corral merge [ID...] [--into BRANCH] [--dry-run] [--json]`: integrates complete worktree
//! agents' branches one at a time (finishing order, or the order given) into BRANCH,
//! running each agent's role `verify` after its merge. It stops at the first conflict or
//! failing verify, leaves BRANCH at the last good merge and escalates that agent.
//!
//! The merges happen in a worktree of corral's own (under the worktree directory), removed
//! afterwards: the user's working tree is never touched, and a branch corral did not
//! create is changed only when `--into` names it.

use super::{Ctx, Fail, Result, usage};
use crate::ipc::{AgentView, Request};
use crate::worktree::{self, git};
use crate::{note, say};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents to merge, in this order (default: every complete worktree agent, in finishing order).
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub ids: Vec<String>,
    /// The branch to merge into (default: a new corral/integration-<timestamp> from the base).
    #[arg(long, value_name = "BRANCH")]
    pub into: Option<String>,
    /// Check each merge with git merge-tree and change nothing (no verify is run).
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `corral merge --json` prints.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MergeReport {
    pub into: String,
    /// corral made the branch for this merge.
    pub created: bool,
    pub dry_run: bool,
    /// Agents merged (or, in a dry run, that would merge), in order.
    pub merged: Vec<String>,
    /// The agent the merge stopped at, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    /// Agents after the stop, not attempted.
    pub not_attempted: Vec<String>,
    /// Where the branch is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    pub agent: String,
    /// `conflict` or `verify`.
    pub why: String,
    /// The conflicting files.
    pub files: Vec<String>,
    /// The end of the failing verify's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<u64>,
}

struct Candidate {
    id: String,
    branch: String,
    base: String,
    verify: Option<Vec<String>>,
    /// The role's verify timeout.
    verify_timeout: std::time::Duration,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let views: Vec<AgentView> = serde_json::from_value(ctx.call(&Request::Status { ids: a.ids.clone(), role: None })?)?;
    let mut picked: Vec<&AgentView> = if a.ids.is_empty() {
        let mut v: Vec<&AgentView> = views.iter().filter(|v| v.status == "complete" && v.branch.is_some()).collect();
        v.sort_by(|x, y| x.ended_at.cmp(&y.ended_at));
        v
    } else {
        // In the order given.
        a.ids.iter().filter_map(|id| views.iter().find(|v| &v.agent_id == id)).collect()
    };
    for v in &picked {
        if v.branch.is_none() || v.base_commit.is_none() {
            return Err(usage(format!(
                "{} has no worktree branch (it did not run with isolation = \"worktree\")",
                v.agent_id
            )));
        }
        if v.status != "complete" {
            return Err(usage(format!(
                "{} is {}, not complete: only complete agents are merged",
                v.agent_id, v.status
            )));
        }
    }
    let Some(first) = picked.first() else {
        return Err(Fail { code: 1, msg: "no complete worktree agent to merge".into() });
    };
    let repo = PathBuf::from(first.repo.clone().unwrap_or_default());
    if let Some(v) = picked.iter().find(|v| v.repo.as_deref() != first.repo.as_deref()) {
        return Err(usage(format!(
            "{} works in another repository ({}); merge one repository at a time",
            v.agent_id,
            v.repo.as_deref().unwrap_or("?")
        )));
    }
    let cands: Vec<Candidate> = picked
        .drain(..)
        .map(|v| Candidate {
            id: v.agent_id.clone(),
            branch: v.branch.clone().unwrap_or_default(),
            base: v.base_commit.clone().unwrap_or_default(),
            verify: v.verify.clone(),
            verify_timeout: std::time::Duration::from_millis(
                v.verify_timeout_ms.unwrap_or(crate::policy::role::DEFAULT_VERIFY_TIMEOUT_MS),
            ),
        })
        .collect();
    let (into, created) = match &a.into {
        Some(b) => (b.clone(), worktree::rev(&repo, &format!("refs/heads/{b}")).is_none()),
        None => (format!("corral/integration-{}", jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")), true),
    };
    let start = match worktree::rev(&repo, &format!("refs/heads/{into}")) {
        Some(c) => c,
        None => cands[0].base.clone(),
    };
    let report = if a.dry_run {
        dry_run(&repo, &into, created, &start, &cands)?
    } else {
        integrate(ctx, &repo, &into, created, &start, &cands)?
    };
    if a.json {
        // JSON escapes on its own.
        crate::display::raw_out((serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
    } else {
        let verb = if a.dry_run { "would merge" } else { "merged" };
        say!("{verb} {} into {}: {}", report.merged.len(), report.into, report.merged.join(", "))?;
        if let Some(s) = &report.stopped {
            say!("stopped at {} ({}): {}", s.agent, s.why, s.files.join(", "))?;
            if let Some(o) = &s.output {
                say!("{o}")?;
            }
            if !report.not_attempted.is_empty() {
                say!("not attempted: {}", report.not_attempted.join(", "))?;
            }
        }
    }
    Ok(if report.stopped.is_some() { 1 } else { 0 })
}

/// Each merge checked in memory (`git merge-tree`, then `git commit-tree` for the next
/// step): objects may be written, no ref, index or working tree changes.
fn dry_run(repo: &Path, into: &str, created: bool, start: &str, cands: &[Candidate]) -> Result<MergeReport> {
    let mut head = start.to_string();
    let mut report = report(into, created, true);
    for (i, c) in cands.iter().enumerate() {
        let m = worktree::merge_tree(repo, &head, &c.branch).map_err(|e| Fail { code: 1, msg: e })?;
        if !m.conflicts.is_empty() {
            report.stopped = Some(Stopped {
                agent: c.id.clone(),
                why: "conflict".into(),
                files: m.conflicts.iter().map(|(f, _)| f.clone()).collect(),
                output: None,
                escalation: None,
            });
            report.not_attempted = cands[i + 1..].iter().map(|c| c.id.clone()).collect();
            break;
        }
        let tree = m.tree.unwrap_or_default();
        let msg = format!("corral merge (dry run): {}", c.branch);
        head = git(repo, &["commit-tree", &tree, "-p", &head, "-p", &c.branch, "-m", &msg])
            .map_err(|e| Fail { code: 1, msg: e })?
            .trim()
            .to_string();
        report.merged.push(c.id.clone());
    }
    report.head = worktree::rev(repo, &format!("refs/heads/{into}"));
    Ok(report)
}

fn report(into: &str, created: bool, dry_run: bool) -> MergeReport {
    MergeReport {
        into: into.to_string(),
        created,
        dry_run,
        merged: vec![],
        stopped: None,
        not_attempted: vec![],
        head: None,
    }
}

fn integrate(
    ctx: &Ctx,
    repo: &Path,
    into: &str,
    created: bool,
    start: &str,
    cands: &[Candidate],
) -> Result<MergeReport> {
    let bad = |e: String| Fail { code: 1, msg: e };
    if created {
        git(repo, &["branch", into, start]).map_err(bad)?;
    }
    let root = worktree::worktree_root(&ctx.ws, ctx.data.root());
    if let Err(e) = std::fs::create_dir_all(&root) {
        return Err(bad(format!("cannot create the worktree directory {}: {e} (see worktree_dir)", root.display())));
    }
    let dir = root.join(format!("merge-{}", std::process::id()));
    if let Err(e) = crate::worktree::git_locked(repo, &["worktree", "add", "--quiet", &dir.to_string_lossy(), into]) {
        return Err(bad(format!(
            "{e}\n(corral merges in a worktree of its own and never in yours: a branch checked out elsewhere cannot be \
             merged into; pass another --into)"
        )));
    }
    let result = merge_each(ctx, &dir, into, created, cands);
    worktree::discard(repo, &dir, None);
    let mut r = result?;
    r.head = worktree::rev(repo, &format!("refs/heads/{into}"));
    Ok(r)
}

fn merge_each(ctx: &Ctx, dir: &Path, into: &str, created: bool, cands: &[Candidate]) -> Result<MergeReport> {
    let mut report = report(into, created, false);
    let log = ctx.data.root().join("logs").join("merge.log");
    for (i, c) in cands.iter().enumerate() {
        let before = worktree::rev(dir, "HEAD").unwrap_or_default();
        let msg = format!("corral merge: {} ({})", c.branch, c.id);
        let merged = git(
            dir,
            &[
                "-c",
                "user.name=corral",
                "-c",
                "user.email=corral@localhost",
                "merge",
                "--no-ff",
                "--no-edit",
                "-m",
                &msg,
                &c.branch,
            ],
        );
        let stop = match merged {
            Ok(_) => match &c.verify {
                Some(argv) => {
                    let what = format!("verify after merging {}", c.id);
                    let ran = worktree::run_logged(argv, dir, &[], &log, &what, Some(c.verify_timeout));
                    if ran.ok {
                        None
                    } else {
                        let _ = git(dir, &["reset", "--hard", "--quiet", &before]);
                        let mut output = worktree::tail(&ran.output, 2000);
                        if ran.timed_out {
                            output = format!(
                                "verify timed out after {}\n{output}",
                                humantime::format_duration(c.verify_timeout)
                            );
                        }
                        Some(Stopped {
                            agent: c.id.clone(),
                            why: "verify".into(),
                            files: vec![],
                            output: Some(output),
                            escalation: None,
                        })
                    }
                }
                None => None,
            },
            Err(_) => {
                let files: Vec<String> = git(dir, &["diff", "--name-only", "--diff-filter=U"])
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
                let _ = git(dir, &["merge", "--abort"]);
                let _ = git(dir, &["reset", "--hard", "--quiet", &before]);
                Some(Stopped { agent: c.id.clone(), why: "conflict".into(), files, output: None, escalation: None })
            }
        };
        match stop {
            None => report.merged.push(c.id.clone()),
            Some(mut s) => {
                let reason = match s.why.as_str() {
                    "conflict" => format!("corral merge into {into}: {} conflicts in {}", c.branch, s.files.join(", ")),
                    _ => format!(
                        "corral merge into {into}: verify failed after merging {}: {}",
                        c.branch,
                        s.output.as_deref().unwrap_or_default().replace('\n', " ")
                    ),
                };
                match ctx.call(&Request::Escalate { id: c.id.clone(), reason, conflict: None }) {
                    Ok(v) => s.escalation = v.get("escalation").and_then(|n| n.as_u64()).or_else(|| v.as_u64()),
                    Err(e) => {
                        let _ = note!("{}: not escalated: {}", c.id, e.msg);
                    }
                }
                report.stopped = Some(s);
                report.not_attempted = cands[i + 1..].iter().map(|c| c.id.clone()).collect();
                break;
            }
        }
    }
    Ok(report)
}
