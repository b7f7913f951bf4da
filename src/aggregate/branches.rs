//! What worktree agents really changed, as git says (collected by the caller: each
//! branch's files against its merge base, and a real three-way merge of every two branches
//! that touch one file). Pure: a clean overlap becomes a note, a textual conflict becomes a
//! conflict naming the files and hunks, left unresolved for a human.

use super::report::{Conflict, ConflictKind, Position, Resolution};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// One worktree agent's branch and the files it changed since it left its base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchChanges {
    pub agent: String,
    pub branch: String,
    pub files: Vec<String>,
}

/// The three-way merge of two agents' branches.
#[derive(Debug, Clone, PartialEq)]
pub struct PairMerge {
    pub agents: [String; 2],
    pub branches: [String; 2],
    /// Files both branches changed.
    pub shared: Vec<String>,
    /// Files that conflict, each with its conflict blocks.
    pub conflicts: Vec<(String, Vec<String>)>,
}

/// A file two agents changed whose changes merge cleanly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overlap {
    pub file: String,
    pub agents: Vec<String>,
    pub merges_cleanly: bool,
}

/// Clean overlaps, and a conflict per file that does not merge.
pub fn judge(merges: &[PairMerge]) -> (Vec<Overlap>, Vec<Conflict>) {
    let mut overlaps = Vec::new();
    let mut conflicts: Vec<Conflict> = Vec::new();
    for m in merges {
        for f in &m.shared {
            let Some((_, hunks)) = m.conflicts.iter().find(|(c, _)| c == f) else {
                overlaps.push(Overlap { file: f.clone(), agents: m.agents.to_vec(), merges_cleanly: true });
                continue;
            };
            let position = |i: usize| Position {
                agent: m.agents[i].clone(),
                value: Value::String(m.branches[i].clone()),
                claim: Some(format!("{} changes {f}", m.branches[i])),
                evidence: Vec::new(),
                evidence_rank: 0,
                handoff: PathBuf::new(),
            };
            let reason = format!(
                "textual conflict in {f} between {} and {} ({} hunk{}): {}; escalate",
                m.branches[0],
                m.branches[1],
                hunks.len(),
                if hunks.len() == 1 { "" } else { "s" },
                hunks.join("\n")
            );
            // A third agent in the same file joins the conflict already open on it.
            match conflicts.iter_mut().find(|c| c.key == *f) {
                Some(c) => {
                    for i in 0..2 {
                        if !c.positions.iter().any(|p| p.agent == m.agents[i]) {
                            c.positions.push(position(i));
                        }
                    }
                    c.reason.push_str(&format!("\n{reason}"));
                }
                None => conflicts.push(Conflict {
                    key: f.clone(),
                    kind: ConflictKind::File,
                    positions: vec![position(0), position(1)],
                    resolution: Resolution::Unresolved,
                    winner: None,
                    reason,
                    escalation: None,
                    note: None,
                }),
            }
        }
    }
    (overlaps, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str, shared: &[&str], conflicts: &[&str]) -> PairMerge {
        PairMerge {
            agents: [a.into(), b.into()],
            branches: [format!("corral/{a}"), format!("corral/{b}")],
            shared: shared.iter().map(|s| s.to_string()).collect(),
            conflicts: conflicts
                .iter()
                .map(|f| (f.to_string(), vec![format!("<<<<<<< {a}\n=======\n>>>>>>> {b}")]))
                .collect(),
        }
    }

    #[test]
    fn clean_overlaps_are_notes_and_a_conflicting_file_is_one_conflict_for_all_its_agents() {
        let (overlaps, conflicts) =
            judge(&[pair("x", "y", &["a.rs", "b.rs"], &["a.rs"]), pair("x", "z", &["a.rs"], &["a.rs"])]);
        assert_eq!(
            overlaps,
            vec![Overlap { file: "b.rs".into(), agents: vec!["x".into(), "y".into()], merges_cleanly: true }]
        );
        assert_eq!(conflicts.len(), 1);
        let c = &conflicts[0];
        assert_eq!((c.key.as_str(), c.kind, c.resolution), ("a.rs", ConflictKind::File, Resolution::Unresolved));
        let agents: Vec<&str> = c.positions.iter().map(|p| p.agent.as_str()).collect();
        assert_eq!(agents, ["x", "y", "z"]);
        assert!(c.reason.contains("corral/x and corral/z") && c.reason.contains("1 hunk"), "{}", c.reason);
    }
}
