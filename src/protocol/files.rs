//! The two files agents write: the status file and the handoff. Parsing is total: any
//! input (torn, binary, huge, wrong shape) gives either a value or a reason that says what
//! is wrong and where, never a panic.

use super::fsio;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Larger files are refused unread: one agent cannot make the supervisor allocate 50 MB.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportedStatus {
    Spawned,
    Active,
    Blocked,
    Complete,
    Failed,
}

impl ReportedStatus {
    pub const ALL: &'static str = "spawned, active, blocked, complete, failed";
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "spawned" => Self::Spawned,
            "active" => Self::Active,
            "blocked" => Self::Blocked,
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawned => "spawned",
            Self::Active => "active",
            Self::Blocked => "blocked",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }
}

/// `agent-status/<agentId>.json`. Unknown fields are kept so a rewrite by `corral report`
/// never drops what an agent put there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusFile {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub status: ReportedStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    #[serde(default)]
    pub findings: Vec<Value>,
    /// How many of the oldest findings `corral report` dropped to keep the file within
    /// its size bound (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings_dropped: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `handoffs/handoff-<ts>-<agentId>-to-ORCHESTRATOR.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    pub from_agent: String,
    #[serde(default = "orchestrator")]
    pub to_agent: String,
    #[serde(default = "complete")]
    pub status: String,
    #[serde(default)]
    pub deliverables: Deliverables,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_candidate: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deliverables {
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub findings: Vec<Value>,
    #[serde(default)]
    pub decisions: Vec<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn orchestrator() -> String {
    "ORCHESTRATOR".into()
}
fn complete() -> String {
    "complete".into()
}

/// One version of a file, told apart without reading it: any write (in place, or a new
/// file renamed over it) changes it. The supervisor tells a write made during an attempt
/// from one left by an earlier attempt this way, never by comparing timestamps (file times
/// are coarse, and the wall clock can step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    /// The file's current version; `None` when there is no file. The name's own entry:
    /// a symlink planted in its place is a version of its own, never its target's.
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
        })
    }
}

/// Reads a file an agent can write, below the data dir `root` (through [`fsio`]: no
/// symlink, FIFO or device is ever opened), bounded by [`MAX_FILE_BYTES`], as UTF-8 text.
pub fn read_bounded(root: &Path, path: &Path) -> Result<String, String> {
    text(fsio::read(root, path, MAX_FILE_BYTES), path)
}

/// [`read_bounded`] for a file the caller named itself (its symlinks are followed).
pub fn read_named(path: &Path) -> Result<String, String> {
    text(fsio::read_named(path, MAX_FILE_BYTES), path)
}

fn text(read: std::io::Result<Vec<u8>>, path: &Path) -> Result<String, String> {
    let buf = read.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(buf)
        .map_err(|e| format!("{} is not text (invalid UTF-8 at byte {})", path.display(), e.utf8_error().valid_up_to()))
}

fn parse_json(text: &str, path: &Path) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Err(format!("{} is empty (torn or unfinished write?)", path.display()));
    }
    serde_json::from_str(text).map_err(|e| {
        let hint = if e.is_eof() { " (torn or unfinished write?)" } else { "" };
        format!("{} is not valid JSON: {e}{hint}", path.display())
    })
}

fn field_err(path: &Path, field: &str, want: &str, got: Option<&Value>) -> String {
    match got {
        None => format!("{}: field `{field}` is missing; it must be {want}", path.display()),
        Some(v) => format!("{}: field `{field}` is {}; it must be {want}", path.display(), describe(v)),
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 { format!("{}...", &s[..s.floor_char_boundary(40)]) } else { s }
}

fn check_findings(path: &Path, field: &str, v: Option<&Value>) -> Result<(), String> {
    match v {
        None => Ok(()),
        Some(Value::Array(items)) => {
            for (i, f) in items.iter().enumerate() {
                if !(f.is_string() || f.is_object()) {
                    return Err(field_err(path, &format!("{field}[{i}]"), "a string or an object", Some(f)));
                }
            }
            Ok(())
        }
        Some(other) => Err(field_err(path, field, "an array", Some(other))),
    }
}

fn opt_string(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<(), String> {
    match obj.get(field) {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(v) => Err(field_err(path, field, "a string", Some(v))),
    }
}

/// Validates a status file's shape field by field so the error names the field.
pub fn parse_status(text: &str, path: &Path) -> Result<StatusFile, String> {
    let v = parse_json(text, path)?;
    let Value::Object(obj) = &v else {
        return Err(format!("{}: expected a JSON object, found {}", path.display(), describe(&v)));
    };
    match obj.get("agentId") {
        Some(Value::String(_)) => {}
        other => return Err(field_err(path, "agentId", "a string", other)),
    }
    match obj.get("status") {
        Some(Value::String(s)) if ReportedStatus::parse(s).is_some() => {}
        other => {
            return Err(field_err(path, "status", &format!("one of {}", ReportedStatus::ALL), other));
        }
    }
    match obj.get("progress") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)) => {}
        other => {
            return Err(field_err(path, "progress", "a number from 0.0 to 1.0", other));
        }
    }
    for f in ["role", "phase", "milestone", "lastUpdate"] {
        opt_string(path, obj, f)?;
    }
    check_findings(path, "findings", obj.get("findings"))?;
    serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn read_status(root: &Path, path: &Path) -> Result<StatusFile, String> {
    parse_status(&read_bounded(root, path)?, path)
}

/// Validates a handoff's shape field by field so the error names the field.
pub fn parse_handoff(text: &str, path: &Path) -> Result<Handoff, String> {
    let v = parse_json(text, path)?;
    validate_handoff_value(&v).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
}

/// Shape check of a handoff given as JSON; the error names the offending field.
pub fn validate_handoff_value(v: &Value) -> Result<(), String> {
    let p = Path::new("");
    let strip = |e: String| e.trim_start_matches(": ").to_string();
    let Value::Object(obj) = v else {
        return Err(format!("expected a JSON object, found {}", describe(v)));
    };
    match obj.get("fromAgent") {
        Some(Value::String(s)) if !s.is_empty() => {}
        other => {
            return Err(strip(field_err(p, "fromAgent", "a non-empty string", other)));
        }
    }
    for f in ["toAgent", "status"] {
        opt_string(p, obj, f).map_err(strip)?;
    }
    match obj.get("deliverables") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            match d.get("files") {
                None => {}
                Some(Value::Array(files)) => {
                    for (i, f) in files.iter().enumerate() {
                        if !f.is_string() {
                            return Err(strip(field_err(
                                p,
                                &format!("deliverables.files[{i}]"),
                                "a path string",
                                Some(f),
                            )));
                        }
                    }
                }
                other => {
                    return Err(strip(field_err(p, "deliverables.files", "an array of paths", other)));
                }
            }
            check_findings(p, "deliverables.findings", d.get("findings")).map_err(strip)?;
            match d.get("decisions") {
                None | Some(Value::Array(_)) => {}
                other => {
                    return Err(strip(field_err(p, "deliverables.decisions", "an array", other)));
                }
            }
        }
        other => return Err(strip(field_err(p, "deliverables", "an object", other))),
    }
    match obj.get("memoryCandidate") {
        None | Some(Value::Null) | Some(Value::Object(_)) | Some(Value::Array(_)) => Ok(()),
        other => Err(strip(field_err(p, "memoryCandidate", "an object or an array", other))),
    }
}

pub fn read_handoff(root: &Path, path: &Path) -> Result<Handoff, String> {
    parse_handoff(&read_bounded(root, path)?, path)
}

/// Command-line text for a finding, decision or memory: a JSON object or array is taken as
/// structured data, anything else as plain text.
pub fn text_or_json(s: &str) -> Value {
    let t = s.trim_start();
    if (t.starts_with('{') || t.starts_with('['))
        && let Ok(v) = serde_json::from_str::<Value>(s)
    {
        return v;
    }
    Value::String(s.to_string())
}

/// A finding as one line of text: a string as it is, an object by its `claim`.
pub fn finding_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => {
            o.get("claim").and_then(serde_json::Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn p() -> &'static Path {
        Path::new("s.json")
    }

    #[test]
    fn accepts_seed_status() {
        let s = parse_status(
            r#"{"agentId":"agent-001-X","status":"active","progress":0.5,"phase":"impl","milestone":"m1","lastUpdate":"2026-01-01T00:00:00Z","findings":["a",{"key":"k","value":1}],"custom":true}"#,
            p(),
        )
        .unwrap();
        assert_eq!(s.status, ReportedStatus::Active);
        assert_eq!(s.extra.get("custom"), Some(&Value::Bool(true)));
    }

    #[test]
    fn reasons_name_the_problem() {
        let cases = [
            ("", "empty"),
            (r#"{"agentId":"a","sta"#, "torn"),
            ("not json", "not valid JSON"),
            ("[1,2]", "expected a JSON object"),
            (r#"{"status":"active"}"#, "`agentId` is missing"),
            (r#"{"agentId":"a","status":"running"}"#, "`status`"),
            (r#"{"agentId":"a","status":"active","progress":7}"#, "`progress`"),
            (r#"{"agentId":"a","status":"active","findings":[1]}"#, "findings[0]"),
            (r#"{"agentId":"a","status":"active","phase":3}"#, "`phase`"),
        ];
        for (text, want) in cases {
            let e = parse_status(text, p()).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn handoff_errors_name_field() {
        let e = validate_handoff_value(&serde_json::json!({"deliverables": {}})).unwrap_err();
        assert!(e.contains("fromAgent"), "{e}");
        let e =
            validate_handoff_value(&serde_json::json!({"fromAgent":"a","deliverables": {"files": [1]}})).unwrap_err();
        assert!(e.contains("deliverables.files[0]"), "{e}");
        let e = validate_handoff_value(&serde_json::json!({"fromAgent":"a","memoryCandidate": 3})).unwrap_err();
        assert!(e.contains("memoryCandidate"), "{e}");
        let h = parse_handoff(r#"{"fromAgent":"a","deliverables":{"findings":["x"]}}"#, p()).unwrap();
        assert_eq!(h.to_agent, "ORCHESTRATOR");
    }

    #[test]
    fn bounded_read_refuses_huge_and_binary() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_FILE_BYTES + 10) as usize]).unwrap();
        assert!(read_bounded(d.path(), &big).unwrap_err().contains("limit"));
        let bin = d.path().join("bin.json");
        std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x01]).unwrap();
        assert!(read_status(d.path(), &bin).unwrap_err().contains("not text"));
    }

    #[test]
    fn text_or_json_detects_objects() {
        assert!(text_or_json(r#"{"key":"port","value":8080}"#).is_object());
        assert_eq!(text_or_json("{not json"), Value::String("{not json".into()));
    }
}
