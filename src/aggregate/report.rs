//! The aggregation report: what `corral aggregate --format json` prints and what the
//! Markdown is rendered from. Field names are camelCase like the protocol files; enum values
//! are snake_case like corral's states.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Nothing remains: every agent aggregated, every file present, every conflict resolved.
    pub complete: bool,
    /// Some agent's result is not in this report (not finished, failed, or no readable
    /// handoff). Both flags can be false: everyone is in, but something (an unresolved
    /// conflict, a missing file) is left to do.
    pub partial: bool,
    pub counts: Counts,
    /// Findings no one contradicts, each with every agent that gave it.
    pub findings: Vec<MergedFinding>,
    pub decisions: Vec<MergedDecision>,
    pub deliverables: Vec<AgentDeliverables>,
    pub deliverable_failures: Vec<DeliverableFailure>,
    pub conflicts: Vec<Conflict>,
    pub failed: Vec<FailedAgent>,
    pub missing: Vec<MissingHandoff>,
    pub todo: Vec<Todo>,
    /// Memory candidates from handoffs whose deliverables all validated.
    pub memory: Vec<MemoryCandidate>,
    /// Memory candidates from handoffs with deliverable failures: kept visible, not stored.
    pub memory_withheld: Vec<MemoryCandidate>,
    /// `fromAgent` values that name no known agent; their handoffs are aggregated anyway.
    pub unknown_agents: Vec<String>,
    /// Worktree agents' branches and the files each changed against its merge base.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<super::branches::BranchChanges>,
    /// Files two agents' branches both changed that merge cleanly (conflicting ones are in
    /// `conflicts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlaps: Vec<super::branches::Overlap>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub agents: usize,
    /// Handoffs merged into this report (one per agent, unknown agents included).
    pub aggregated: usize,
    /// Of those, handoffs whose `fromAgent` names no known agent.
    pub unknown_agents: usize,
    /// Older handoffs of retried agents, replaced by the agent's latest.
    pub superseded: usize,
    pub failed: usize,
    pub missing: usize,
    pub findings: usize,
    pub decisions: usize,
    pub files: usize,
    pub missing_files: usize,
    pub outside_workspace: usize,
    pub deliverable_failures: usize,
    pub conflicts: usize,
    pub resolved_by_evidence: usize,
    pub resolved_by_majority: usize,
    #[serde(default)]
    pub resolved_by_human: usize,
    pub unresolved: usize,
    pub memory: usize,
    pub todo: usize,
}

/// What one agent said in support of a finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Support {
    pub agent: String,
    pub claim: Option<String>,
    /// Evidence items as given; a repeated finding contributes all of its items.
    pub evidence: Vec<Value>,
    pub evidence_rank: u8,
    pub handoff: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MergedFinding {
    /// Set for structured findings; a plain finding (string, or object without `key` and
    /// `value`) is merged by equality of the whole finding, which is then its `value`.
    pub key: Option<String>,
    pub value: Value,
    pub agents: Vec<String>,
    pub evidence_rank: u8,
    pub support: Vec<Support>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MergedDecision {
    pub decision: Value,
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryCandidate {
    pub candidate: Value,
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    Exists,
    Missing,
    /// Never checked: the path escapes the workspace.
    OutsideWorkspace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileCheck {
    /// As the handoff wrote it.
    pub listed: String,
    /// Workspace-relative when inside; the normalized absolute path when outside.
    pub path: String,
    pub state: FileState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDeliverables {
    pub agent: String,
    /// False when `fromAgent` names no agent corral knows.
    pub known: bool,
    pub handoff: PathBuf,
    pub handoff_status: String,
    pub files: Vec<FileCheck>,
}

/// A handoff that claims success but whose files are not all there (a deliverable failure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverableFailure {
    pub agent: String,
    pub handoff: PathBuf,
    pub missing: Vec<String>,
    pub outside_workspace: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    Finding,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Evidence,
    Majority,
    /// No winner: the caller escalates it; every position stays in the report.
    Unresolved,
    /// A human answered the conflict's escalation: their choice (if any) and note stand.
    Human,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub agent: String,
    pub value: Value,
    pub claim: Option<String>,
    pub evidence: Vec<Value>,
    pub evidence_rank: u8,
    pub handoff: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Winner {
    /// The agent whose position decided it (first at the winning rank).
    pub agent: String,
    /// Every agent holding the winning value.
    pub agents: Vec<String>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// The finding's key, or the workspace-relative file path.
    pub key: String,
    pub kind: ConflictKind,
    pub positions: Vec<Position>,
    pub resolution: Resolution,
    pub winner: Option<Winner>,
    /// Why it was resolved this way, in words.
    pub reason: String,
    /// The escalation that asked a human about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<u64>,
    /// The human's answer in words, when a human resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedAgent {
    pub agent: String,
    pub role: String,
    pub task: String,
    pub status: String,
    pub reason: Option<String>,
    /// Waiting on a human: escalated, or blocked with no process left.
    #[serde(default)]
    pub needs_human: bool,
    /// A handoff the agent left that was not aggregated because the agent is not complete.
    pub handoff: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKind {
    /// The agent completed without a handoff.
    NoHandoff,
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissingHandoff {
    pub kind: MissingKind,
    /// For an unreadable file, the owner its name gives, when it follows the protocol.
    pub agent: Option<String>,
    pub path: Option<PathBuf>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TodoKind {
    /// Still queued, running, retrying, blocked...: aggregate again when it finishes.
    Unfinished,
    Failed,
    Escalated,
    MissingHandoff,
    UnreadableHandoff,
    Deliverable,
    Conflict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Todo {
    pub kind: TodoKind,
    pub agent: Option<String>,
    pub key: Option<String>,
    pub text: String,
}
