//! Aggregation: owns turning agents' outcomes and handoffs into one report:
//! merged findings, decisions, validated deliverables, conflicts and how each was resolved,
//! failed and missing agents, a TODO list and memory candidates, as JSON and Markdown.
//!
//! Pure: it never reads a file, a clock or a process. The caller reads the handoffs (an
//! unreadable one arrives as [`HandoffInput::Unreadable`]), passes every agent's state, and
//! answers "does this path exist" through a closure that is only ever asked about paths
//! inside the workspace. It never waits for anyone, escalates, retries or stores memory:
//! it says what remains, and the caller acts.
//!
//! It never fabricates: numbers are not averaged, no consensus value is invented, and every
//! position in a conflict, winning, losing or unresolved, stays in the report with its agent
//! and evidence.

pub mod branches;
mod findings;
mod markdown;
mod report;
pub mod workspace;

#[cfg(test)]
mod tests;

use crate::protocol::DataDir;
use crate::protocol::files::Handoff;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use markdown::render_markdown;
pub use report::*;

/// One agent as the supervisor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOutcome {
    pub agent_id: String,
    pub role: String,
    pub task: String,
    /// corral's state: queued, running, stopping, stale, retrying, blocked, complete,
    /// failed, killed, timed_out, escalated.
    pub status: String,
    pub reason: Option<String>,
    /// Waiting on a human (escalated, or blocked with no process left).
    pub needs_human: bool,
    /// Relative deliverable paths resolve against this.
    pub cwd: PathBuf,
}

/// A human's answer to a conflict's escalation.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanAnswer {
    pub key: String,
    pub kind: ConflictKind,
    pub escalation: u64,
    pub note: Option<String>,
    pub choose: Option<Value>,
    pub winner: Option<String>,
}

/// The answered conflict escalations, newest answer last.
pub fn human_answers(escalations: &[crate::policy::agent::Escalation]) -> Vec<HumanAnswer> {
    escalations
        .iter()
        .filter(|e| !e.is_open())
        .filter_map(|e| {
            let c = e.conflict.as_ref()?;
            let kind = match c.kind.as_str() {
                "file" => ConflictKind::File,
                _ => ConflictKind::Finding,
            };
            let answer = e.answer.clone().unwrap_or_default();
            Some(HumanAnswer {
                key: c.key.clone(),
                kind,
                escalation: e.n,
                note: e.note.clone(),
                choose: answer.choose,
                winner: answer.winner,
            })
        })
        .collect()
}

/// The escalation for an unresolved conflict: attached to its first agent corral can know
/// (the queue is per agent), naming every agent and position in its reason.
pub fn conflict_escalation(c: &Conflict) -> Option<(String, String, crate::policy::escalation::ConflictRef)> {
    let mut agents: Vec<String> = Vec::new();
    for p in &c.positions {
        if !agents.contains(&p.agent) {
            agents.push(p.agent.clone());
        }
    }
    let owner = agents.iter().find(|a| crate::protocol::AgentId::parse(a).is_ok())?.clone();
    let positions: Vec<String> = c.positions.iter().map(|p| format!("{} says {}", p.agent, p.value)).collect();
    let kind = match c.kind {
        ConflictKind::Finding => "finding",
        ConflictKind::File => "file",
    };
    let reason = format!(
        "unresolved conflict on {} ({kind}) between {}: {}; settle it with `corral escalations resolve N --choose VALUE` or `--winner AGENT`",
        c.key,
        agents.join(", "),
        positions.join("; ")
    );
    Some((owner, reason, crate::policy::escalation::ConflictRef { key: c.key.clone(), kind: kind.into(), agents }))
}

/// Whether `choice` is the value `v` as a human typed it: the same JSON, or the same text.
fn same_value(choice: &Value, v: &Value) -> bool {
    findings::canonical(choice) == findings::canonical(v)
        || match (choice, v) {
            (Value::String(s), Value::String(t)) => s == t,
            (Value::String(s), other) => s.as_str() == other.to_string().as_str(),
            _ => false,
        }
}

/// Applies a human's answer to a conflict: their word stands over evidence and majority.
fn apply_human(c: &mut Conflict, h: &HumanAnswer) {
    let holders = |pick: &dyn Fn(&Position) -> bool| -> Vec<String> {
        let mut agents = Vec::new();
        for p in c.positions.iter().filter(|p| pick(p)) {
            if !agents.contains(&p.agent) {
                agents.push(p.agent.clone());
            }
        }
        agents
    };
    let winner = match (&h.winner, &h.choose) {
        (Some(agent), _) => c.positions.iter().find(|p| p.agent == *agent).map(|p| {
            let value = p.value.clone();
            Winner { agent: agent.clone(), agents: holders(&|q| q.value == value), value }
        }),
        (None, Some(choice)) => {
            let agents = holders(&|q| same_value(choice, &q.value));
            let value =
                c.positions.iter().find(|q| same_value(choice, &q.value)).map_or(choice.clone(), |q| q.value.clone());
            // A value no agent gave is the human's own: it is theirs, not an agent's.
            let agent = agents.first().cloned().unwrap_or_else(|| "human".into());
            Some(Winner { agent, agents, value })
        }
        (None, None) => None,
    };
    let chose = match &winner {
        Some(w) => format!("chose {}", w.value),
        None => "settled it without choosing a value".into(),
    };
    let note = h.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default();
    c.reason = format!("resolved by a human (escalation {}), who {chose}{note}; before: {}", h.escalation, c.reason);
    c.resolution = Resolution::Human;
    c.winner = winner;
    c.escalation = Some(h.escalation);
    c.note = h.note.clone();
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per handoff file; boxing buys nothing
pub enum HandoffInput {
    /// `modified` is RFC 3339; it picks an agent's latest handoff when retries left several.
    Parsed { path: PathBuf, handoff: Handoff, modified: String },
    /// Torn, not JSON, wrong shape, unreadable: reported, and everything else aggregated.
    Unreadable { path: PathBuf, error: String },
}

pub struct Input<'a> {
    pub agents: Vec<AgentOutcome>,
    /// Answers humans gave to conflicts' escalations.
    pub human: Vec<HumanAnswer>,
    pub handoffs: Vec<HandoffInput>,
    pub workspace: &'a Path,
    /// Asked only about normalized paths inside the workspace by their text; on the real
    /// filesystem, [`workspace::OnDisk::locate`].
    pub locate: &'a dyn Fn(&Path) -> workspace::Found,
    /// Worktree agents' branches and what each changed, from git.
    pub branches: Vec<branches::BranchChanges>,
    /// Three-way merges of every two branches that changed one file.
    pub merges: Vec<branches::PairMerge>,
    /// Worktree agents' branches, by agent: their deliverables are judged against these
    /// ([`workspace::BranchTree`]) instead of the workspace.
    pub trees: HashMap<String, workspace::BranchTree>,
}

/// The handoff chosen for one agent, with what the rest of aggregation needs about it.
struct Chosen<'h> {
    agent: &'h str,
    known: bool,
    cwd: PathBuf,
    path: &'h Path,
    handoff: &'h Handoff,
}

/// Orders an agent's handoffs: a readable timestamp beats an unreadable one; the file name
/// (which carries a UTC timestamp in the protocol) breaks ties so the choice never depends
/// on the order the caller listed them in.
fn newer(a: (&str, &Path), b: (&str, &Path)) -> bool {
    let ta = crate::protocol::time::parse(a.0);
    let tb = crate::protocol::time::parse(b.0);
    (ta, a.0, a.1) > (tb, b.0, b.1)
}

pub fn aggregate(input: &Input) -> Report {
    let mut known: HashMap<&str, &AgentOutcome> = HashMap::new();
    for a in &input.agents {
        known.entry(a.agent_id.as_str()).or_insert(a);
    }

    // Latest parsed handoff per `fromAgent`.
    let mut latest: HashMap<&str, (&Path, &Handoff, &str)> = HashMap::new();
    let mut parsed = 0;
    let mut unreadable: Vec<(&Path, &str)> = Vec::new();
    for h in &input.handoffs {
        match h {
            HandoffInput::Parsed { path, handoff, modified } => {
                parsed += 1;
                let slot = latest.entry(handoff.from_agent.as_str()).or_insert((path, handoff, modified));
                if newer((modified, path), (slot.2, slot.0)) {
                    *slot = (path, handoff, modified);
                }
            }
            HandoffInput::Unreadable { path, error } => unreadable.push((path, error)),
        }
    }
    unreadable.sort();

    let mut failed = Vec::new();
    let mut missing = Vec::new();
    let mut chosen: Vec<Chosen> = Vec::new();
    let unreadable_owners: HashSet<&str> = unreadable
        .iter()
        .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).and_then(DataDir::handoff_owner))
        .collect();
    let mut seen: HashSet<&str> = HashSet::new();
    for a in &input.agents {
        if !seen.insert(&a.agent_id) {
            continue;
        }
        let handoff = latest.get(a.agent_id.as_str());
        if a.status != "complete" {
            failed.push(FailedAgent {
                agent: a.agent_id.clone(),
                role: a.role.clone(),
                task: a.task.clone(),
                status: a.status.clone(),
                reason: a.reason.clone(),
                needs_human: a.needs_human,
                handoff: handoff.map(|h| h.0.to_path_buf()),
            });
        } else if let Some(&(path, handoff, _)) = handoff {
            chosen.push(Chosen { agent: &a.agent_id, known: true, cwd: a.cwd.clone(), path, handoff });
        } else if input.branches.iter().any(|b| b.agent == a.agent_id && !b.files.is_empty()) {
            // Its branch is its result.
        } else if !unreadable_owners.contains(a.agent_id.as_str()) {
            // An agent whose only handoff is unreadable is reported once, with the error, below.
            missing.push(MissingHandoff {
                kind: MissingKind::NoHandoff,
                agent: Some(a.agent_id.clone()),
                path: None,
                reason: "complete, but wrote no handoff".into(),
            });
        }
    }
    let mut unknown: Vec<&str> = latest.keys().copied().filter(|id| !known.contains_key(id)).collect();
    unknown.sort_unstable();
    for id in &unknown {
        let (path, handoff, _) = latest[id];
        chosen.push(Chosen { agent: id, known: false, cwd: input.workspace.to_path_buf(), path, handoff });
    }
    for (path, error) in &unreadable {
        let owner = path.file_name().and_then(|n| n.to_str()).and_then(DataDir::handoff_owner);
        missing.push(MissingHandoff {
            kind: MissingKind::Unreadable,
            agent: owner.map(str::to_string),
            path: Some(path.to_path_buf()),
            reason: error.to_string(),
        });
    }

    let files = check_files(&chosen, input);
    let mut merge = findings::Merger::default();
    let mut memory = findings::Dedup::default();
    let mut withheld = findings::Dedup::default();
    for (c, checks) in chosen.iter().zip(&files.per_agent) {
        for f in &c.handoff.deliverables.findings {
            merge.add_finding(c.agent, c.path, f);
        }
        for d in &c.handoff.deliverables.decisions {
            merge.add_decision(c.agent, d);
        }
        let valid = checks.files.iter().all(|f| f.state == FileState::Exists);
        let into = if valid { &mut memory } else { &mut withheld };
        match &c.handoff.memory_candidate {
            Some(Value::Array(items)) => items.iter().filter(|v| !v.is_null()).for_each(|v| into.add(c.agent, v)),
            Some(Value::Null) | None => {}
            Some(v) => into.add(c.agent, v),
        }
    }
    let (merged, mut conflicts, decisions) = merge.finish();
    let decisions = decisions.finish(|decision, agents| MergedDecision { decision, agents });
    let memory = memory.finish(|candidate, agents| MemoryCandidate { candidate, agents });
    let memory_withheld = withheld.finish(|candidate, agents| MemoryCandidate { candidate, agents });
    conflicts.extend(files.conflicts);
    let (overlaps, git_conflicts) = branches::judge(&input.merges);
    conflicts.extend(git_conflicts);
    for c in conflicts.iter_mut() {
        if let Some(h) = input.human.iter().rev().find(|h| h.key == c.key && h.kind == c.kind) {
            apply_human(c, h);
        }
    }

    let todo = todo_list(&failed, &missing, &files.failures, &conflicts);
    let count_res = |r: Resolution| conflicts.iter().filter(|c| c.resolution == r).count();
    let all_files = files.per_agent.iter().flat_map(|d| &d.files);
    let counts = Counts {
        agents: seen.len(),
        aggregated: chosen.len(),
        unknown_agents: unknown.len(),
        superseded: parsed - latest.len(),
        failed: failed.len(),
        missing: missing.len(),
        findings: merged.len(),
        decisions: decisions.len(),
        files: all_files.clone().count(),
        missing_files: all_files.clone().filter(|f| f.state == FileState::Missing).count(),
        outside_workspace: all_files.filter(|f| f.state == FileState::OutsideWorkspace).count(),
        deliverable_failures: files.failures.len(),
        conflicts: conflicts.len(),
        resolved_by_evidence: count_res(Resolution::Evidence),
        resolved_by_majority: count_res(Resolution::Majority),
        resolved_by_human: count_res(Resolution::Human),
        unresolved: count_res(Resolution::Unresolved),
        memory: memory.len(),
        todo: todo.len(),
    };
    // A stray unreadable file from an agent whose readable handoff was merged leaves a TODO
    // but takes nothing out of the report.
    let merged_agents: HashSet<&str> = chosen.iter().map(|c| c.agent).collect();
    let left_out = missing.iter().any(|m| m.agent.as_deref().is_none_or(|a| !merged_agents.contains(a)));
    Report {
        complete: todo.is_empty(),
        partial: !failed.is_empty() || left_out,
        counts,
        findings: merged,
        decisions,
        deliverables: files.per_agent,
        deliverable_failures: files.failures,
        conflicts,
        failed,
        missing,
        todo,
        memory,
        memory_withheld,
        unknown_agents: unknown.iter().map(|s| s.to_string()).collect(),
        branches: input.branches.clone(),
        overlaps,
    }
}

struct Files {
    per_agent: Vec<AgentDeliverables>,
    failures: Vec<DeliverableFailure>,
    conflicts: Vec<Conflict>,
}

fn check_files(chosen: &[Chosen], input: &Input) -> Files {
    let cache: std::cell::RefCell<HashMap<PathBuf, workspace::Found>> = Default::default();
    // Each workspace-relative path with the agents (index into `chosen`, listed form) that
    // list it, in first-listed order; the map finds a path's entry without any pairwise scan.
    let mut by_path: HashMap<String, usize> = HashMap::new();
    let mut listers: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    let mut per_agent = Vec::new();
    let mut failures = Vec::new();
    for (i, c) in chosen.iter().enumerate() {
        let mut files = Vec::new();
        let mut mine: HashSet<String> = HashSet::new();
        let tree = input.trees.get(c.agent).filter(|_| c.known);
        if let Some(t) = tree {
            t.preload(&c.cwd, &c.handoff.deliverables.files);
        }
        for listed in &c.handoff.deliverables.files {
            let cached =
                |p: &Path| cache.borrow_mut().entry(p.to_path_buf()).or_insert_with(|| (input.locate)(p)).clone();
            let verdict = match tree {
                Some(t) => t.judge(&c.cwd, listed),
                None => workspace::judge(input.workspace, &c.cwd, listed, &cached),
            };
            let (path, state) = match verdict {
                workspace::Verdict::Outside { full, .. } => {
                    (full.to_string_lossy().into_owned(), FileState::OutsideWorkspace)
                }
                workspace::Verdict::Exists { relative } => (relative, FileState::Exists),
                workspace::Verdict::Missing { relative } => (relative, FileState::Missing),
            };
            // Every listed form is reported, but an agent naming one file twice (`a.rs` and
            // `./a.rs`) is not in conflict with itself.
            if state != FileState::OutsideWorkspace && mine.insert(path.clone()) {
                let slot = *by_path.entry(path.clone()).or_insert_with(|| {
                    listers.push((path.clone(), Vec::new()));
                    listers.len() - 1
                });
                listers[slot].1.push((i, listed.clone()));
            }
            files.push(FileCheck { listed: listed.clone(), path, state });
        }
        let pick = |s: FileState| {
            let mut seen = HashSet::new();
            files.iter().filter(|f| f.state == s && seen.insert(&f.path)).map(|f| f.path.clone()).collect::<Vec<_>>()
        };
        let (gone, outside) = (pick(FileState::Missing), pick(FileState::OutsideWorkspace));
        if c.handoff.status == "complete" && (!gone.is_empty() || !outside.is_empty()) {
            failures.push(DeliverableFailure {
                agent: c.agent.to_string(),
                handoff: c.path.to_path_buf(),
                missing: gone,
                outside_workspace: outside,
            });
        }
        per_agent.push(AgentDeliverables {
            agent: c.agent.to_string(),
            known: c.known,
            handoff: c.path.to_path_buf(),
            handoff_status: c.handoff.status.clone(),
            files,
        });
    }
    let conflicts = listers
        .into_iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(path, who)| {
            let who: Vec<_> =
                who.iter().map(|(i, l)| (chosen[*i].agent, chosen[*i].path, chosen[*i].handoff, l.as_str())).collect();
            findings::file_conflict(path, &who)
        })
        .collect();
    Files { per_agent, failures, conflicts }
}

fn todo_list(
    failed: &[FailedAgent],
    missing: &[MissingHandoff],
    deliverable: &[DeliverableFailure],
    conflicts: &[Conflict],
) -> Vec<Todo> {
    let mut todo = Vec::new();
    for f in failed {
        let why = f.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let (kind, what) = match f.status.as_str() {
            "blocked" if f.needs_human => (
                TodoKind::Escalated,
                format!("needs a human{why}: answer it with `corral tell {0}` or `corral retry {0}`", f.agent),
            ),
            "queued" | "running" | "stopping" | "stale" | "retrying" | "blocked" => {
                (TodoKind::Unfinished, format!("is still {}{why}: aggregate again when it finishes", f.status))
            }
            "escalated" => {
                (TodoKind::Escalated, format!("is escalated{why}: resolve it with `corral escalations`, then retry"))
            }
            other => (TodoKind::Failed, format!("is {other}{why}: retry it with `corral retry {}`", f.agent)),
        };
        todo.push(Todo {
            kind,
            agent: Some(f.agent.clone()),
            key: None,
            text: format!("{} ({}) {what}. Remaining task: {}", f.agent, f.role, f.task),
        });
    }
    for m in missing {
        let (kind, text) = match m.kind {
            MissingKind::NoHandoff => (
                TodoKind::MissingHandoff,
                format!(
                    "{} completed without a handoff: its results are not in this report",
                    m.agent.as_deref().unwrap_or("?")
                ),
            ),
            MissingKind::Unreadable => (
                TodoKind::UnreadableHandoff,
                format!(
                    "handoff {} {}is unreadable ({}): rewrite it, then aggregate again",
                    m.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                    m.agent.as_deref().map(|a| format!("from {a} ")).unwrap_or_default(),
                    m.reason
                ),
            ),
        };
        todo.push(Todo { kind, agent: m.agent.clone(), key: None, text });
    }
    for d in deliverable {
        let mut parts = Vec::new();
        if !d.missing.is_empty() {
            parts.push(format!("missing {}", d.missing.join(", ")));
        }
        if !d.outside_workspace.is_empty() {
            parts.push(format!("outside the workspace {}", d.outside_workspace.join(", ")));
        }
        todo.push(Todo {
            kind: TodoKind::Deliverable,
            agent: Some(d.agent.clone()),
            key: None,
            text: format!("{} claims complete but its deliverables fail: {}", d.agent, parts.join("; ")),
        });
    }
    for c in conflicts.iter().filter(|c| c.resolution == Resolution::Unresolved) {
        let kind = match c.kind {
            ConflictKind::Finding => "finding",
            ConflictKind::File => "file",
        };
        let mut agents: Vec<&str> = Vec::new();
        for p in &c.positions {
            if !agents.contains(&p.agent.as_str()) {
                agents.push(&p.agent);
            }
        }
        todo.push(Todo {
            kind: TodoKind::Conflict,
            agent: None,
            key: Some(c.key.clone()),
            text: format!(
                "decide the conflicting {kind} `{}` between {}: escalate to a human",
                c.key,
                agents.join(", ")
            ),
        });
    }
    todo
}
