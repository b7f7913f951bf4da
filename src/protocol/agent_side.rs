//! What an agent does to report: merge an update into its status file, write its handoff.
//! Shared by `corral report`/`corral handoff` and the MCP tools, so both write the same
//! files the same way (atomically, and one report of an agent at a time).

use super::files::{self, Handoff, ReportedStatus, StatusFile};
use super::{AgentId, DataDir, atomic, fsio, time};
use serde_json::Value;
use std::fs::File;
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

/// What a report did.
#[derive(Debug, Clone)]
pub struct Reported {
    pub path: PathBuf,
    /// Oldest findings this report dropped to keep the file within its bound.
    pub dropped: u64,
    /// All findings ever dropped from this file (its `findingsDropped`).
    pub dropped_total: u64,
    /// The file that was there could not be read and was started afresh: why.
    pub replaced: Option<String>,
}

impl Reported {
    /// What the reporter must be told, when anything was lost (one line each).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.replaced {
            out.push(format!("{} could not be read ({why}); it was started afresh", self.path.display()));
        }
        if self.dropped > 0 {
            out.push(format!(
                "{} would have grown past its {} MiB bound: dropped its {} oldest findings ({} in all, counted in \
                 `findingsDropped`); keep findings short, or put long ones in a file and report its path",
                self.path.display(),
                files::MAX_FILE_BYTES / (1024 * 1024),
                self.dropped,
                self.dropped_total
            ));
        }
        out
    }
}

/// Merges `u` into the status file at `path` (or the agent's default path) and stamps
/// `lastUpdate`. A missing file is started afresh; an unreadable one too, and the result
/// says so.
pub fn report(
    data: &DataDir,
    id: &AgentId,
    role: Option<String>,
    path: Option<PathBuf>,
    u: ReportUpdate,
) -> Result<Reported, String> {
    let path = path.unwrap_or_else(|| data.status_file(id));
    let _lock = lock_reports(data, id)?;
    let (old, replaced) = match files::read_status(data.root(), &path) {
        Ok(s) if s.agent_id == id.as_str() => (Some(s), None),
        Ok(s) => (None, Some(format!("it belongs to {}", s.agent_id))),
        Err(_) if std::fs::symlink_metadata(&path).is_err() => (None, None),
        Err(e) => (None, Some(e)),
    };
    let merged = merge(old, id.as_str(), role, u, time::rfc3339(time::now()), files::MAX_FILE_BYTES as usize)?;
    write(data.root(), &path, &merged.status)?;
    let dropped_total = merged.status.findings_dropped.unwrap_or(0);
    Ok(Reported { path, dropped: merged.dropped, dropped_total, replaced })
}

/// A status file after a report, and how many of its oldest findings gave way.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub status: StatusFile,
    pub dropped: u64,
}

/// The status file `old` (none: a fresh one for agent `id`) with the update applied and
/// `lastUpdate` = `now`, no larger than `bound` bytes as written (pretty JSON and a
/// newline). Past the bound the oldest findings are dropped, the newest kept, and the
/// count added to `findingsDropped`. Refused (nothing dropped) when the update could never
/// fit (a finding, or the other fields, larger than the bound) or is not a valid report
/// (see [`validate`]): what it writes always reads back.
pub fn merge(
    old: Option<StatusFile>,
    id: &str,
    role: Option<String>,
    u: ReportUpdate,
    now: String,
    bound: usize,
) -> Result<Merged, String> {
    // Here, not only in the commands: whatever a merge writes must be a status file that
    // reads back.
    validate(&u)?;
    let mut s = old.unwrap_or_else(|| StatusFile {
        agent_id: id.to_string(),
        role: role.clone(),
        status: ReportedStatus::Active,
        progress: None,
        phase: None,
        milestone: None,
        last_update: None,
        findings: Vec::new(),
        findings_dropped: None,
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
    for (i, f) in u.findings.iter().enumerate() {
        let n = element_size(f);
        if n >= bound {
            return Err(format!(
                "findings[{i}] is {n} bytes, more than a status file may hold ({bound} bytes): put it in a file and \
                 report the file's path"
            ));
        }
    }
    s.findings.extend(u.findings);
    s.last_update = Some(now);
    let mut size = written_size(&s);
    if size <= bound {
        return Ok(Merged { status: s, dropped: 0 });
    }
    // Without any finding (and with the largest count it could need), would it fit?
    let findings = std::mem::take(&mut s.findings);
    let before = s.findings_dropped.unwrap_or(0);
    s.findings_dropped = Some(before.saturating_add(findings.len() as u64));
    if written_size(&s) > bound {
        return Err(format!(
            "the status file would be {size} bytes even without its findings, more than the {bound} allowed: \
             shorten phase, milestone or the other fields"
        ));
    }
    // Drop the oldest until what is left fits: first by each finding's share of the
    // written size, then one at a time for what that estimate missed.
    let mut keep_from = 0;
    let mut over = size - bound;
    while over > 0 && keep_from < findings.len() {
        over = over.saturating_sub(element_size(&findings[keep_from]));
        keep_from += 1;
    }
    loop {
        s.findings = findings[keep_from..].to_vec();
        s.findings_dropped = Some(before.saturating_add(keep_from as u64));
        size = written_size(&s);
        if size <= bound || keep_from == findings.len() {
            break;
        }
        keep_from += 1;
    }
    Ok(Merged { status: s, dropped: keep_from as u64 })
}

/// Bytes the status file takes as `write` writes it.
fn written_size(s: &StatusFile) -> usize {
    serde_json::to_vec_pretty(s).map(|v| v.len() + 1).unwrap_or(usize::MAX)
}

/// Bytes one finding takes in the written `findings` array: its pretty form, indented one
/// level deeper on every line, and the separator before it.
fn element_size(f: &Value) -> usize {
    let text = serde_json::to_vec_pretty(f).unwrap_or_default();
    let lines = text.iter().filter(|b| **b == b'\n').count();
    text.len() + 4 * lines + 6
}

/// Takes the agent's report lock, waiting for it; dropping the file releases it, on every
/// return. Without it, two reports at once both read the old file and the later rename drops
/// the other's findings. std opens files close-on-exec, so no process started later holds it.
fn lock_reports(data: &DataDir, id: &AgentId) -> Result<File, String> {
    let path = data.report_lock(id);
    let fail = |e: std::io::Error| format!("cannot lock {}: {e}", path.display());
    // A lock file planted as a FIFO or a symlink is moved aside: it is no lock of ours.
    let (f, _) = fsio::open_write_replacing(data.root(), &path, fsio::Mode::Update).map_err(fail)?;
    crate::sys::lock(&f).map_err(fail)?;
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

/// Writes the handoff to `path`, or to a new timestamped file under `handoffs/`. A handoff
/// already at `path` (an earlier `corral handoff` of the same attempt) is merged with, never
/// replaced: a second call adds to what the first said. Returns the path and the handoff as
/// written.
pub fn write_handoff(
    data: &DataDir,
    id: &AgentId,
    path: Option<PathBuf>,
    h: &Handoff,
) -> Result<(PathBuf, Handoff), String> {
    let path = path.unwrap_or_else(|| data.handoff_file(id, &time::compact(time::now())));
    let _lock = lock_reports(data, id)?;
    let merged = match files::read_handoff(data.root(), &path) {
        Ok(old) if old.from_agent == h.from_agent => merge_handoff(old, h.clone()),
        _ => h.clone(),
    };
    write(data.root(), &path, &merged)?;
    Ok((path, merged))
}

/// A later handoff of one attempt added to an earlier one: deliverables, findings and
/// decisions appended (a value given again is kept once), memory candidates gathered into
/// one list; the later status and other fields win.
pub fn merge_handoff(old: Handoff, new: Handoff) -> Handoff {
    fn append<T: PartialEq>(into: &mut Vec<T>, more: Vec<T>) {
        for x in more {
            if !into.contains(&x) {
                into.push(x);
            }
        }
    }
    let mut out = old;
    append(&mut out.deliverables.files, new.deliverables.files);
    append(&mut out.deliverables.findings, new.deliverables.findings);
    append(&mut out.deliverables.decisions, new.deliverables.decisions);
    out.deliverables.extra.extend(new.deliverables.extra);
    let list = |m: Option<Value>| match m {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items,
        Some(one) => vec![one],
    };
    let (had, more) = (out.memory_candidate.take(), new.memory_candidate);
    out.memory_candidate = match (had, more) {
        (None, None) => None,
        (Some(only), None) | (None, Some(only)) => Some(only),
        (had, more) => {
            let mut all = list(had);
            append(&mut all, list(more));
            Some(Value::Array(all))
        }
    };
    out.status = new.status;
    out.to_agent = new.to_agent;
    out.extra.extend(new.extra);
    out
}

/// What a handoff says of the agent's status: a handoff marks the status file with its
/// status (`complete`, with progress 1.0, unless it says `failed` or `blocked`).
pub fn status_of_handoff(h: &Handoff) -> Option<ReportUpdate> {
    let status = ReportedStatus::parse(&h.status)?;
    let progress = (status == ReportedStatus::Complete).then_some(1.0);
    Some(ReportUpdate { status: Some(status), progress, ..Default::default() })
}

/// Through [`fsio`]: never through a symlink or hard link planted at the name, and a
/// directory an agent replaced is made again first.
fn write<T: serde::Serialize>(root: &Path, path: &Path, v: &T) -> Result<(), String> {
    atomic::write_json_atomic(root, path, v).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(v: Value) -> Handoff {
        handoff_from_json(v, &AgentId::parse("agent-001-X").unwrap()).unwrap()
    }

    #[test]
    fn a_second_handoff_adds_to_the_first() {
        let first = handoff(serde_json::json!({
            "status": "partial",
            "deliverables": {"files": ["a.rs"], "findings": ["one"], "decisions": ["d1"]},
            "memoryCandidate": {"k": 1}
        }));
        let second = handoff(serde_json::json!({
            "deliverables": {"files": ["b.rs", "a.rs"], "findings": ["two", "one"], "decisions": ["d2"]},
            "memoryCandidate": [{"k": 2}]
        }));
        let m = merge_handoff(first, second);
        assert_eq!(m.deliverables.files, ["a.rs", "b.rs"]);
        assert_eq!(m.deliverables.findings, [serde_json::json!("one"), serde_json::json!("two")]);
        assert_eq!(m.deliverables.decisions, [serde_json::json!("d1"), serde_json::json!("d2")]);
        assert_eq!(m.memory_candidate, Some(serde_json::json!([{"k": 1}, {"k": 2}])));
        assert_eq!(m.status, "complete", "the later status wins");
        let done = status_of_handoff(&m).unwrap();
        assert_eq!((done.status, done.progress), (Some(ReportedStatus::Complete), Some(1.0)));
        assert!(status_of_handoff(&handoff(serde_json::json!({"status": "partial"}))).is_none());
    }

    fn update(findings: std::ops::Range<usize>) -> ReportUpdate {
        ReportUpdate {
            findings: findings.map(|i| Value::from(format!("finding {i:06}"))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_merge_refuses_what_would_not_read_back() {
        // Found by fuzzing: a finding that is JSON but neither text nor an object.
        let u = ReportUpdate { findings: vec![serde_json::json!([])], ..Default::default() };
        let e = merge(None, "agent-001-X", None, u, "2026-01-01T00:00:00.000Z".into(), 4096).unwrap_err();
        assert!(e.contains("findings[0]"), "{e}");
        let u = ReportUpdate { progress: Some(f64::NAN), ..Default::default() };
        assert!(merge(None, "agent-001-X", None, u, "2026-01-01T00:00:00.000Z".into(), 4096).is_err());
    }

    #[test]
    fn past_the_bound_the_newest_findings_stay_and_the_drop_is_counted() {
        let bound = 2_000;
        let mut s = None;
        let mut dropped = 0;
        for call in 0..20 {
            let m = merge(s, "agent-001-A", None, update(call * 10..call * 10 + 10), "t".into(), bound).unwrap();
            assert!(written_size(&m.status) <= bound);
            dropped += m.dropped;
            assert_eq!(m.status.findings_dropped.unwrap_or(0), dropped);
            s = Some(m.status);
        }
        let s = s.unwrap();
        assert!(dropped > 0);
        // Every finding is either kept or counted, and the kept ones are the newest, in order.
        assert_eq!(s.findings.len() as u64 + dropped, 200);
        let first = 200 - s.findings.len();
        for (k, f) in s.findings.iter().enumerate() {
            assert_eq!(f.as_str().unwrap(), format!("finding {:06}", first + k));
        }
    }

    #[test]
    fn what_can_never_fit_is_refused() {
        let huge = ReportUpdate { findings: vec![Value::from("x".repeat(5_000))], ..Default::default() };
        assert!(merge(None, "agent-001-A", None, huge, "t".into(), 2_000).unwrap_err().contains("findings[0]"));
        let phase = ReportUpdate { phase: Some("p".repeat(5_000)), ..Default::default() };
        assert!(merge(None, "agent-001-A", None, phase, "t".into(), 2_000).unwrap_err().contains("phase"));
    }
}
