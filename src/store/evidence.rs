//! What the data dir proves about agents, apart from the registry: the names of the files
//! corral writes per agent (run files, logs, status files, contexts, inboxes, handoffs) and
//! the records of the last `spawn-registry.json` export.
//!
//! Two uses. The id counter never goes below the highest agent number any of them names,
//! so an id is never handed out twice, even after the registry was deleted or emptied. And
//! a registry that lacks agents the run files, logs or export name was deleted, emptied or
//! truncated: the supervisor refuses it rather than start afresh and overwrite the last
//! good export with nothing, unless told to rebuild the missing agents from that evidence.

use crate::config::Workspace;
use crate::policy::agent::{Agent, AgentSpec, AgentState, Attempt, AttemptRun, ProcessEnd};
use crate::protocol::{AgentId, DataDir, fsio, time};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Largest export read back (megabytes at 10,000 agents).
const EXPORT_LIMIT: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Evidence {
    /// Agents named by run files, logs or the export (the files that exist only for an agent
    /// the registry held), with where each was found.
    pub strong: BTreeMap<String, BTreeSet<&'static str>>,
    /// The highest agent number anything in the data dir names.
    pub floor: u64,
    /// The export's records, by agent id.
    pub export: BTreeMap<String, Value>,
    /// Attempt numbers of each agent's run files.
    pub runs: BTreeMap<String, BTreeSet<u32>>,
}

/// The number in a generated id, `agent-<number>-<role>`.
pub fn id_number(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("agent-")?;
    let (n, role) = rest.split_once('-')?;
    if role.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The names of the regular files in `dir` (a symlink or FIFO planted there is no record).
fn files(data: &DataDir, dir: &Path) -> Vec<String> {
    let mut out = names(data, dir);
    out.retain(|n| fsio::lstat(&dir.join(n)).is_some_and(|m| m.is_file()));
    out
}

fn names(data: &DataDir, dir: &Path) -> Vec<String> {
    fsio::Dir::open(data.root(), dir)
        .and_then(|d| d.names())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .collect()
}

impl Evidence {
    pub fn gather(data: &DataDir) -> Self {
        let mut ev = Self::default();
        let mut weak = BTreeSet::new();
        for name in files(data, &data.run_dir()) {
            // `<id>.<attempt>.<kind>`, or `<id>.report.lock`; ids may hold dots.
            let mut parts = name.rsplitn(3, '.');
            let (Some(kind), Some(mid), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if AgentId::parse(id).is_err() {
                continue;
            }
            match mid.parse::<u32>() {
                Ok(n) if kind == "run" => {
                    ev.note(id, "run files");
                    ev.runs.entry(id.to_string()).or_default().insert(n);
                }
                Ok(_) => {
                    ev.note(id, "run files");
                }
                Err(_) => {
                    weak.insert(id.to_string());
                }
            }
        }
        for name in files(data, &data.log_dir()) {
            if let Some(id) = name.strip_suffix(".log").filter(|id| AgentId::parse(id).is_ok()) {
                ev.note(id, "logs");
            }
        }
        for (dir, suffix) in [(data.status_dir(), ".json"), (data.context_dir(), ".md"), (data.inbox_dir(), ".md")] {
            for name in names(data, &dir) {
                if let Some(id) = name.strip_suffix(suffix) {
                    weak.insert(id.to_string());
                }
            }
        }
        for name in names(data, &data.handoff_dir()) {
            if let Some(id) = DataDir::handoff_owner(&name) {
                weak.insert(id.to_string());
            }
        }
        if let Ok(bytes) = fsio::read(data.root(), &data.registry_file(), EXPORT_LIMIT)
            && let Ok(Value::Array(records)) = serde_json::from_slice::<Value>(&bytes)
        {
            for r in records {
                if let Some(id) = r.get("agentId").and_then(Value::as_str).filter(|id| AgentId::parse(id).is_ok()) {
                    let id = id.to_string();
                    ev.note(&id, "spawn-registry.json");
                    ev.export.insert(id, r);
                }
            }
        }
        for id in weak.iter().chain(ev.strong.keys()) {
            ev.floor = ev.floor.max(id_number(id).unwrap_or(0));
        }
        ev
    }

    fn note(&mut self, id: &str, place: &'static str) {
        self.strong.entry(id.to_string()).or_default().insert(place);
    }

    /// The agents the evidence names that `known` does not hold, with where they were seen.
    pub fn missing<'a>(&'a self, known: &BTreeSet<String>) -> Vec<(&'a str, &'a BTreeSet<&'static str>)> {
        self.strong.iter().filter(|(id, _)| !known.contains(*id)).map(|(id, w)| (id.as_str(), w)).collect()
    }
}

/// The error for a registry that lacks agents the data dir names: what was found, where,
/// and what to do.
pub fn refusal(data: &DataDir, held: usize, missing: &[(&str, &BTreeSet<&'static str>)]) -> String {
    let shown: Vec<String> = missing
        .iter()
        .take(5)
        .map(|(id, w)| format!("{id} ({})", w.iter().copied().collect::<Vec<_>>().join(", ")))
        .collect();
    let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
    let what = if held == 0 {
        "holds no agents".to_string()
    } else {
        format!("holds {held} agent{} but not these", if held == 1 { "" } else { "s" })
    };
    format!(
        "the registry {db} {what}, while {root} names {n} agent{s}: {list}{more}. The registry was deleted, \
         emptied or truncated; starting afresh would hand out their ids again and overwrite spawn-registry.json. \
         Nothing was changed. To rebuild the missing agents from what the run files and spawn-registry.json \
         prove, run `corral daemon start --rebuild`; to start afresh instead, move {root} away.",
        db = data.db_file().display(),
        root = data.root().display(),
        n = missing.len(),
        s = if missing.len() == 1 { "" } else { "s" },
        list = shown.join(", "),
    )
}

/// An agent record rebuilt from the evidence: its spec from the export's record (else from its
/// id and the role's configuration), one attempt per run file. The last attempt is left
/// starting, so the ordinary start-up reconciliation judges it by its run file (found
/// running, ended with its exit code, or lost) like any other; an agent with no run file
/// keeps the export's final state, or fails with a reason that says it was rebuilt.
pub fn rebuild(ws: &Workspace, data: &DataDir, ev: &Evidence, id: &str) -> Option<Agent> {
    let agent_id = AgentId::parse(id).ok()?;
    let rec = ev.export.get(id);
    let text = |k: &str| rec.and_then(|r| r.get(k)).and_then(Value::as_str).map(str::to_string);
    let role = text("role").or_else(|| id.split_once('-')?.1.split_once('-').map(|(_, r)| r.to_string()));
    let role = role.unwrap_or_else(|| "UNKNOWN".into());
    let (template, policy) = ws.config.role(&role);
    let policy_adapter = policy.adapter.unwrap_or_else(|| {
        template.as_ref().and_then(|t| t.first()).map(|p| crate::adapter::Adapter::from_program(p)).unwrap_or_default()
    });
    let now = time::rfc3339(time::now());
    let spawned_at = text("spawnedAt").unwrap_or_else(|| now.clone());
    let after = rec
        .and_then(|r| r.get("after"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| AgentId::parse(x.as_str()?).ok()).collect())
        .unwrap_or_default();
    let spec = AgentSpec {
        id: agent_id.clone(),
        role: role.clone(),
        task: text("task").unwrap_or_else(|| "(rebuilt from the data dir: the task was not recorded there)".into()),
        scope: text("scope"),
        constraints: Vec::new(),
        after,
        template: template.is_some(),
        command: template.unwrap_or_default(),
        cwd: ws.root.clone(),
        env: Vec::new(),
        policy,
        spawned_at: spawned_at.clone(),
        idempotency_key: None,
        adapter: policy_adapter,
        worktree: None,
        ports: None,
        group: None,
        priority: 0,
        not_before: None,
    };
    let handoff = data.handoff_file(&agent_id, &time::compact(time::now()));
    let runs: Vec<u32> = ev.runs.get(id).map(|r| r.iter().copied().collect()).unwrap_or_default();
    let attempts: Vec<Attempt> = runs
        .iter()
        .enumerate()
        .map(|(i, n)| Attempt {
            run: if i + 1 == runs.len() {
                AttemptRun::Starting
            } else {
                AttemptRun::Ended {
                    ended_at: now.clone(),
                    end: ProcessEnd::Lost { reason: "rebuilt from the data dir".into() },
                    failure_type: None,
                    reason: Some("rebuilt from the data dir".into()),
                    action: None,
                    rule: None,
                }
            },
            ..Attempt::starting(*n, spawned_at.clone(), 0, handoff.clone())
        })
        .collect();
    let status = text("status").unwrap_or_default();
    let state = if !attempts.is_empty() {
        AgentState::Running
    } else if status == "complete" {
        AgentState::Complete
    } else if status == "killed" {
        AgentState::Killed
    } else {
        AgentState::Failed {
            reason: format!(
                "rebuilt from the data dir (the export said {}); `corral retry` runs it again",
                if status.is_empty() { "nothing" } else { status.as_str() }
            ),
        }
    };
    Some(Agent {
        spec,
        state,
        attempts,
        updated_at: now,
        budget_start: 0,
        next_context: None,
        base_commit: None,
        cleaned_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_and_the_missing_come_from_every_kind_of_file() {
        let d = tempfile::tempdir().unwrap();
        let data = DataDir::new(d.path().join("data"));
        data.create_all().unwrap();
        std::fs::write(data.run_dir().join("agent-007-IMPL.2.run"), "").unwrap();
        std::fs::write(data.run_dir().join("agent-009-A.report.lock"), "").unwrap();
        std::fs::write(data.log_dir().join("agent-003-B.log"), "").unwrap();
        std::fs::write(data.context_dir().join("agent-012-C.md"), "").unwrap();
        std::fs::write(data.registry_file(), r#"[{"agentId":"agent-004-D","role":"D","task":"t"}]"#).unwrap();
        let ev = Evidence::gather(&data);
        assert_eq!(ev.floor, 12);
        let known: BTreeSet<String> = ["agent-003-B".to_string()].into();
        let missing: Vec<&str> = ev.missing(&known).into_iter().map(|(id, _)| id).collect();
        assert_eq!(missing, vec!["agent-004-D", "agent-007-IMPL"]);
        assert_eq!(ev.runs["agent-007-IMPL"], [2].into());
        assert_eq!(id_number("agent-0100-X"), Some(100));
        assert_eq!(id_number("custom"), None);
    }
}
