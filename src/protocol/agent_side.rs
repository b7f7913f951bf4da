//! What an agent does to report: merge an update into its status file, write its handoff.
//! Shared by `corral report`/`corral handoff` and the MCP tools, so both write the same
//! files the same way (atomically, and one report of an agent at a time).

use super::files::{self, Handoff, ReportedStatus, StatusFile};
use super::{AgentId, DataDir, atomic, time};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct ReportUpdate {
    pub status: Option<ReportedStatus>,
    pub progress: Option<f64>,
    pub phase: Option<String>,
    pub milestone: Option<String>,
    /// Appended to `findings`.
    pub findings: Vec<Value>,
}

/// Checks an update before anything is written; the error names the field.
pub fn validate(u: &ReportUpdate) -> Result<(), String> {
    if let Some(p) = u.progress
        && (!(0.0..=1.0).contains(&p) || p.is_nan())
    {
        return Err(format!("progress {p}: must be between 0.0 and 1.0"));
    }
    for (i, f) in u.findings.iter().enumerate() {
        if !(f.is_string() || f.is_object()) {
            return Err(format!("findings[{i}]: must be a string or an object"));
        }
    }
    Ok(())
}

/// Merges `u` into the status file at `path` (or the agent's default path) and stamps
/// `lastUpdate`. A missing or unreadable file is replaced by a fresh one.
pub fn report(
    data: &DataDir,
    id: &AgentId,
    role: Option<String>,
    path: Option<PathBuf>,
    u: ReportUpdate,
) -> Result<PathBuf, String> {
    validate(&u)?;
    let path = path.unwrap_or_else(|| data.status_file(id));
    let _lock = lock_reports(data, id)?;
    let mut s = files::read_status(&path).ok().filter(|s| s.agent_id == id.as_str()).unwrap_or(StatusFile {
        agent_id: id.to_string(),
        role: role.clone(),
        status: ReportedStatus::Active,
        progress: None,
        phase: None,
        milestone: None,
        last_update: None,
        findings: Vec::new(),
        extra: Default::default(),
    });
    if s.role.is_none() {
        s.role = role;
    }
    if let Some(st) = u.status {
        s.status = st;
    }
    if u.progress.is_some() {
        s.progress = u.progress;
    }
    if u.phase.is_some() {
        s.phase = u.phase;
    }
    if u.milestone.is_some() {
        s.milestone = u.milestone;
    }
    s.findings.extend(u.findings);
    s.last_update = Some(time::rfc3339(time::now()));
    write(&path, &s)?;
    Ok(path)
}

/// Takes the agent's report lock, waiting for it; dropping the file releases it, on every
/// return. Without it, two reports at once both read the old file and the later rename drops
/// the other's findings. std opens files close-on-exec, so no process started later holds it.
fn lock_reports(data: &DataDir, id: &AgentId) -> Result<File, String> {
    let path = data.report_lock(id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let fail = |e: std::io::Error| format!("cannot lock {}: {e}", path.display());
    let f = OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(fail)?;
    crate::supervisor::process::lock(&f).map_err(fail)?;
    Ok(f)
}

/// Validates a handoff given as JSON (filling `fromAgent` with the caller when absent) and
/// writes it. The error names the field that is wrong.
pub fn handoff_from_json(mut v: Value, id: &AgentId) -> Result<Handoff, String> {
    if let Some(o) = v.as_object_mut() {
        o.entry("fromAgent").or_insert_with(|| id.to_string().into());
    }
    files::validate_handoff_value(&v)?;
    let h: Handoff = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if h.from_agent != id.as_str() {
        return Err(format!("fromAgent {:?} is not the caller {id}", h.from_agent));
    }
    Ok(h)
}

/// Writes the handoff to `path`, or to a new timestamped file under `handoffs/`.
pub fn write_handoff(data: &DataDir, id: &AgentId, path: Option<PathBuf>, h: &Handoff) -> Result<PathBuf, String> {
    let path = path.unwrap_or_else(|| data.handoff_file(id, &time::compact(time::now())));
    write(&path, h)?;
    Ok(path)
}

fn write<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    atomic::write_json_atomic(path, v).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
