//! What aggregation reads, collected once for every face: the agents' states from the
//! supervisor, their handoffs from disk, the humans' answers; then the pure aggregation
//! core builds the report, and the conflicts it could not settle go to the human queue.

use super::{Failure, Target};
use crate::aggregate::branches::{BranchChanges, PairMerge};
use crate::aggregate::{self, AgentOutcome, HandoffInput, Input, Report, Resolution};
use crate::ipc::{AgentView, Request};
use crate::policy::agent::Escalation;
use crate::protocol::{DataDir, files, fsio, time};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The report for `ids` (or `role`, or every agent), with unresolved conflicts escalated.
pub fn aggregate(t: Target, ids: &[String], role: Option<&str>) -> Result<Report, Failure> {
    let report = build(t, ids, role)?;
    escalate_unresolved(t, &report)?;
    Ok(report)
}

/// Everything aggregation needs, read once: agents from the supervisor, handoffs from disk.
pub fn build(t: Target, ids: &[String], role: Option<&str>) -> Result<Report, Failure> {
    let views: Vec<AgentView> = t.call(&Request::Status { ids: ids.to_vec(), role: role.map(str::to_string) })?;
    let selected = !ids.is_empty() || role.is_some();
    let wanted: HashSet<&str> = views.iter().map(|v| v.agent_id.as_str()).collect();
    let handoffs = read_handoffs(t.data, |owner| !selected || wanted.contains(owner));
    let agents = views
        .iter()
        .map(|v| AgentOutcome {
            agent_id: v.agent_id.clone(),
            role: v.role.clone(),
            task: v.task.clone(),
            status: v.status.clone(),
            reason: v.reason.clone(),
            needs_human: v.needs_human,
            cwd: PathBuf::from(&v.cwd),
        })
        .collect();
    let escalations: Vec<Escalation> = t.call(&Request::Escalations { all: true })?;
    let human = aggregate::human_answers(&escalations);
    let disk = aggregate::workspace::OnDisk::new(t.root);
    let locate = |p: &Path| disk.locate(p);
    let (branches, merges) = collect_branches(&views);
    let trees = views
        .iter()
        .filter(|v| v.base_commit.is_some())
        .filter_map(|v| {
            let (tree, branch, repo) = (v.worktree.as_ref()?, v.branch.as_ref()?, v.repo.as_ref()?);
            let t = aggregate::workspace::BranchTree::new(Path::new(repo), branch, Path::new(tree));
            Some((v.agent_id.clone(), t))
        })
        .collect();
    let input = Input { agents, handoffs, workspace: t.root, locate: &locate, human, branches, merges, trees };
    Ok(aggregate::aggregate(&input))
}

/// Every handoff file under the data dir whose owner (from its name) passes `keep`.
fn read_handoffs(data: &DataDir, keep: impl Fn(&str) -> bool) -> Vec<HandoffInput> {
    let dir = data.handoff_dir();
    // Listed through fsio: a handoffs directory an agent replaced by a symlink is not read.
    let Ok(names) = fsio::Dir::open(data.root(), &dir).and_then(|d| d.names()) else { return vec![] };
    let mut out = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let Some(owner) = DataDir::handoff_owner(&name) else { continue };
        if !keep(owner) {
            continue;
        }
        let path = dir.join(&name);
        let modified = fsio::lstat(&path)
            .and_then(|m| m.modified().ok())
            .and_then(|m| jiff::Timestamp::try_from(m).ok())
            .map(time::rfc3339)
            .unwrap_or_default();
        out.push(match files::read_handoff(data.root(), &path) {
            Ok(handoff) => HandoffInput::Parsed { path, handoff, modified },
            Err(error) => HandoffInput::Unreadable { path, error },
        });
    }
    out
}

/// Conflicts aggregation could not settle go to the human queue, once each: a conflict a
/// human has answered is never asked about again.
pub fn escalate_unresolved(t: Target, r: &Report) -> Result<(), Failure> {
    for c in r.conflicts.iter().filter(|c| c.resolution == Resolution::Unresolved) {
        let Some((agent, reason, conflict)) = aggregate::conflict_escalation(c) else { continue };
        match t.call::<serde_json::Value>(&Request::Escalate { id: agent, reason, conflict: Some(conflict) }) {
            Ok(_) => {}
            // An agent the supervisor does not know (a handoff from outside corral) cannot
            // carry an escalation; the conflict stays in the report either way.
            Err(Failure { code: 2, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What complete worktree agents' branches changed against their merge base, and a real
/// three-way merge (`git merge-tree`) of every two branches of one repository that change
/// one file. A branch git cannot read is left out (its agent is still in the report).
pub fn collect_branches(views: &[AgentView]) -> (Vec<BranchChanges>, Vec<PairMerge>) {
    let mut found: Vec<(BranchChanges, String)> = Vec::new();
    for v in views.iter().filter(|v| v.status == "complete") {
        let (Some(branch), Some(repo), Some(base)) = (&v.branch, &v.repo, &v.base_commit) else { continue };
        match crate::worktree::changed_files(Path::new(repo), base, branch) {
            Ok(files) => {
                found.push((BranchChanges { agent: v.agent_id.clone(), branch: branch.clone(), files }, repo.clone()))
            }
            Err(e) => crate::elog!("corral: {}: branch {branch} not read: {e}", v.agent_id),
        }
    }
    let mut merges = Vec::new();
    for (i, (a, repo)) in found.iter().enumerate() {
        for (b, other) in &found[i + 1..] {
            let shared: Vec<String> = a.files.iter().filter(|f| b.files.contains(f)).cloned().collect();
            if shared.is_empty() || repo != other {
                continue;
            }
            match crate::worktree::merge_tree(Path::new(repo), &a.branch, &b.branch) {
                Ok(m) => merges.push(PairMerge {
                    agents: [a.agent.clone(), b.agent.clone()],
                    branches: [a.branch.clone(), b.branch.clone()],
                    shared,
                    conflicts: m.conflicts,
                }),
                Err(e) => crate::elog!("corral: {} and {} not merged for comparison: {e}", a.branch, b.branch),
            }
        }
    }
    (found.into_iter().map(|(b, _)| b).collect(), merges)
}
