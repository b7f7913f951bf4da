//! The tools' inputs: their types (from which the input JSON Schemas are generated), the
//! extractor that turns a malformed call into a tool error naming the argument, and the size
//! limits every argument is held to.

use crate::protocol::files::{Deliverables, ReportedStatus};
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Largest text argument (a task, a message, a note): 64 KiB.
pub const MAX_TEXT: usize = 64 * 1024;
/// Most items in one list argument (constraints, findings, argv, ...).
pub const MAX_ITEMS: usize = 100;
/// Largest handoff: well under the size the supervisor still reads back.
pub const MAX_HANDOFF: usize = 1024 * 1024;
/// Longest `wait_agents` timeout: a call that long should be repeated, not lengthened.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
pub const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A tool's arguments, or why they could not be read.
///
/// Named `Parameters` because the tool macros derive a tool's input schema from the
/// argument of that name. Unlike the SDK's own extractor it never fails the call: a bad
/// argument must come back as a tool error (the client's model can read and fix it), and
/// the message names the argument by its path (`constraints[3]`, `handoff`).
pub struct Parameters<T>(pub Result<T, String>);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(cx: &mut ToolCallContext<'_, S>) -> Result<Self, rmcp::ErrorData> {
        let v = Value::Object(cx.arguments.take().unwrap_or_default());
        Ok(Self(parse(v)))
    }
}

pub fn parse<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { format!("arguments: {}", e.inner()) } else { format!("argument `{path}`: {}", e.inner()) }
    })
}

/// Refuses text longer than [`MAX_TEXT`], naming the argument. A NUL is refused too: it
/// cannot be part of a command-line argument or an environment value.
pub fn text(name: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!("argument `{name}` is {} bytes; the limit is {} KiB", s.len(), MAX_TEXT / 1024));
    }
    if s.contains('\0') {
        return Err(format!("argument `{name}` contains a NUL character"));
    }
    Ok(())
}

pub fn opt_text(name: &str, s: &Option<String>) -> Result<(), String> {
    s.as_deref().map_or(Ok(()), |s| text(name, s))
}

/// Refuses lists longer than [`MAX_ITEMS`] or with an item longer than [`MAX_TEXT`].
pub fn texts(name: &str, items: &[String]) -> Result<(), String> {
    count(name, items.len())?;
    items.iter().enumerate().try_for_each(|(i, s)| text(&format!("{name}[{i}]"), s))
}

pub fn count(name: &str, n: usize) -> Result<(), String> {
    if n > MAX_ITEMS {
        return Err(format!("argument `{name}` has {n} items; the limit is {MAX_ITEMS}"));
    }
    Ok(())
}

/// A JSON value measured as the bytes it would take in a file.
pub fn json_size(name: &str, v: &Value, limit: usize) -> Result<(), String> {
    let n = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if n > limit {
        return Err(format!("argument `{name}` is {n} bytes as JSON; the limit is {} KiB", limit / 1024));
    }
    Ok(())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnArgs {
    /// Role (policy name) configured under [roles.NAME] in corral.toml, e.g. IMPLEMENTER.
    /// Its `command` template is what runs.
    pub role: String,
    /// What the agent should do. Reaches the agent as data (its context file, a template
    /// argument), never through a shell.
    pub task: String,
    /// What the agent may touch.
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Start only after these agents complete.
    #[serde(default)]
    pub after: Vec<String>,
    /// Attempt timeout in humantime form (90s, 15m, 1h30m); default: the role's.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries after the first attempt; default: the role's.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// A repeated spawn with the same key returns the first one's agent instead of
    /// spawning again: safe to retry a call whose answer was lost.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// An argv to run instead of the role's template; refused unless corral.toml sets
    /// `allow_raw_commands = true` under [mcp].
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// How the agent's output is read: "claude-code", "codex" or "none"; default: the
    /// role's `adapter`, else from the command's program name.
    #[serde(default)]
    pub adapter: Option<String>,
    /// The admission group it counts against: at most `[groups.NAME] max_concurrent` of a
    /// group's agents run at once (default: the role's `group`; a group not configured has
    /// no limit of its own).
    #[serde(default)]
    pub group: Option<String>,
    /// Among queued agents that may start, higher priorities start first (ties in spawn
    /// order): -1000 to 1000, default 0.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Do not start before this long after the spawn, humantime form (10m, 2h).
    #[serde(default)]
    pub delay: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only agents of this role.
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdArgs {
    /// The agent id, e.g. agent-001-PLANNER.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// Agents to wait for.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Wait for the agents of this role.
    #[serde(default)]
    pub role: Option<String>,
    /// Wait for every agent (the default when neither ids nor role is given).
    #[serde(default)]
    pub all: bool,
    /// How long to wait, humantime form (30s, 5m); default 60s, at most 10m. Running out
    /// is not an error: the result lists what is still pending.
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillArgs {
    pub id: String,
    /// Time between TERM and KILL, humantime form; default 5s.
    #[serde(default)]
    pub grace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryArgs {
    pub id: String,
    /// Added to the next attempt's delegation context.
    #[serde(default)]
    pub context: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TellArgs {
    pub id: String,
    /// Appended to the agent's inbox file (CORRAL_INBOX_FILE).
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscalationsArgs {
    /// Include resolved escalations.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveArgs {
    /// The escalation's number, as list_escalations gives it.
    pub n: u64,
    /// The human's answer, kept with the escalation.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateArgs {
    /// Agents to aggregate (default: all, or those of `role`).
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryArgs {
    /// Case-insensitive text to look for in memory candidates and failure patterns; empty
    /// lists everything.
    pub query: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportArgs {
    /// The reporting agent (default: CORRAL_AGENT_ID of the server's environment).
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub status: Option<ReportedStatus>,
    /// 0.0 to 1.0.
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub milestone: Option<String>,
    /// Appended to the status file's findings: strings, or objects
    /// {key, value, claim, evidence: [{kind, ref, passed}]}.
    #[serde(default)]
    pub findings: Vec<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffArgs {
    /// The handing-off agent (default: CORRAL_AGENT_ID of the server's environment).
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The handoff: {fromAgent, toAgent, status, deliverables: {files, findings, decisions},
    /// memoryCandidate}; fromAgent defaults to the agent and must name it when given.
    #[schemars(with = "HandoffShape")]
    pub handoff: Value,
}

// The handoff as a caller may give it. Only its schema is used: the value itself is
// checked field by field (as handoff files are), so the error can name the field.
/// A handoff.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct HandoffShape {
    from_agent: Option<String>,
    /// Default ORCHESTRATOR.
    to_agent: Option<String>,
    /// Default complete.
    status: Option<String>,
    deliverables: Option<Deliverables>,
    /// An object or an array of them.
    memory_candidate: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_argument() {
        let e = parse::<SpawnArgs>(json!({"role": "X", "task": "t", "constraints": ["a", 1]})).unwrap_err();
        assert!(e.contains("`constraints[1]`"), "{e}");
        let e = parse::<SpawnArgs>(json!({"task": "t"})).unwrap_err();
        assert!(e.contains("missing field `role`"), "{e}");
        let e = parse::<SpawnArgs>(json!({"role": "X", "task": "t", "max_retry": 1})).unwrap_err();
        assert!(e.contains("unknown field `max_retry`"), "{e}");
        let e = parse::<ReportArgs>(json!({"status": "running"})).unwrap_err();
        assert!(e.contains("`status`") && e.contains("complete"), "{e}");
    }

    #[test]
    fn limits_name_the_argument() {
        assert!(text("task", &"x".repeat(MAX_TEXT)).is_ok());
        let e = text("task", &"x".repeat(MAX_TEXT + 1)).unwrap_err();
        assert!(e.contains("`task`") && e.contains("64 KiB"), "{e}");
        let e = texts("constraints", &vec![String::new(); MAX_ITEMS + 1]).unwrap_err();
        assert!(e.contains("`constraints`") && e.contains("101"), "{e}");
        let e = texts("constraints", &["a".into(), "x".repeat(MAX_TEXT + 1)]).unwrap_err();
        assert!(e.contains("`constraints[1]`"), "{e}");
    }
}
