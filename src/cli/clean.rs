//! `corral clean [--older-than D] [--worktrees] [--force] [--json]`: takes finished agents
//! out of the views (`status`, the monitor, the default set of `aggregate` and `merge`);
//! their history stays in the registry, and `show`, `events` and `status ID` still find
//! them. With `--worktrees` it also removes their worktrees and the branches already
//! merged elsewhere, keeping (and listing) a worktree with uncommitted changes and a
//! branch with commits no other branch has, unless `--force`.
//!
//! The git work happens here, in the command, never on the supervisor's loop.

use super::{Ctx, Result};
use crate::ipc::{CleanedAgent, Request};
use crate::worktree::{self, git};
use crate::{note, say};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only agents that finished at least this long ago (e.g. 1h, 2d).
    #[arg(long, value_name = "D")]
    pub older_than: Option<String>,
    /// Also remove the cleaned agents' worktrees and their merged branches.
    #[arg(long)]
    pub worktrees: bool,
    /// With --worktrees: remove dirty worktrees and unmerged branches too.
    #[arg(long)]
    pub force: bool,
    /// Print what was cleaned as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `corral clean --json` prints.
#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanReport {
    /// Agents taken out of the views by this call.
    pub cleaned: Vec<String>,
    /// Worktrees removed (with --worktrees).
    pub removed_worktrees: Vec<String>,
    /// Branches deleted (with --worktrees): merged into another branch, or --force.
    pub removed_branches: Vec<String>,
    /// What was kept, and why (with --worktrees, without --force).
    pub kept: Vec<Kept>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub agent: String,
    /// `worktree` or `branch`.
    pub what: String,
    /// The worktree's path or the branch's name.
    pub name: String,
    /// `uncommitted changes` or `unmerged commits`.
    pub why: String,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let older_than_ms = match &a.older_than {
        Some(d) => Some(
            u64::try_from(
                crate::config::parse_duration(d).map_err(|e| super::usage(format!("--older-than: {e}")))?.as_millis(),
            )
            .unwrap_or(u64::MAX),
        ),
        None => None,
    };
    if a.force && !a.worktrees {
        return Err(super::usage("--force only changes what --worktrees removes: add --worktrees"));
    }
    let listed: Vec<CleanedAgent> =
        serde_json::from_value(ctx.call(&Request::Clean { older_than_ms, worktrees: a.worktrees })?)?;
    let mut report = CleanReport {
        cleaned: listed.iter().filter(|c| c.now).map(|c| c.agent_id.clone()).collect(),
        ..Default::default()
    };
    if a.worktrees {
        for c in &listed {
            tidy(c, a.force, &mut report);
        }
    }
    if a.json {
        crate::display::raw_out((serde_json::to_string_pretty(&report)? + "\n").as_bytes())?;
        return Ok(0);
    }
    say!(
        "cleaned {} agent(s){}",
        report.cleaned.len(),
        if report.cleaned.is_empty() { String::new() } else { format!(": {}", report.cleaned.join(", ")) }
    )?;
    if a.worktrees {
        say!("removed {} worktree(s), {} branch(es)", report.removed_worktrees.len(), report.removed_branches.len())?;
    }
    for k in &report.kept {
        note!("kept the {} {} of {}: {} (--force removes it)", k.what, k.name, k.agent, k.why)?;
    }
    Ok(0)
}

/// Removes one agent's worktree and branch as far as they are safe to remove.
fn tidy(c: &CleanedAgent, force: bool, report: &mut CleanReport) {
    let (Some(path), Some(branch), Some(repo)) = (&c.worktree, &c.branch, &c.repo) else { return };
    let (path, repo) = (Path::new(path), Path::new(repo));
    let has_tree = path.is_dir();
    let has_branch = worktree::rev(repo, &format!("refs/heads/{branch}")).is_some();
    if !has_tree && !has_branch {
        return;
    }
    let dirty = has_tree && worktree::is_dirty(path);
    if dirty && !force {
        report.kept.push(Kept {
            agent: c.agent_id.clone(),
            what: "worktree".into(),
            name: path.display().to_string(),
            why: "uncommitted changes".into(),
        });
        return;
    }
    let unmerged = has_branch && unmerged_commits(repo, branch) > 0;
    if has_tree {
        worktree::discard(repo, path, None);
        report.removed_worktrees.push(path.display().to_string());
    }
    if !has_branch {
        return;
    }
    if unmerged && !force {
        report.kept.push(Kept {
            agent: c.agent_id.clone(),
            what: "branch".into(),
            name: branch.clone(),
            why: "unmerged commits".into(),
        });
    } else if git(repo, &["branch", "-D", branch]).is_ok() {
        report.removed_branches.push(branch.clone());
    }
}

/// Commits on `branch` that no other local branch has.
fn unmerged_commits(repo: &Path, branch: &str) -> usize {
    let own = format!("refs/heads/{branch}");
    let Ok(refs) = git(repo, &["for-each-ref", "--format=%(refname)", "refs/heads"]) else { return 1 };
    let mut args = vec!["rev-list", "--count", own.as_str(), "--not"];
    args.extend(refs.lines().filter(|r| !r.is_empty() && *r != own));
    git(repo, &args)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // Unknown: treated as unmerged, so nothing is lost.
        .unwrap_or(1)
}
