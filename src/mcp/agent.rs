//! The agent's tools: report progress and hand off, writing the same files, the same way,
//! as `corral report` and `corral handoff` (no supervisor involved: it sees the writes).

use super::args::{self, HandoffArgs, ReportArgs};
use crate::cli::Ctx;
use crate::cli::report::env_path;
use crate::protocol::AgentId;
use crate::protocol::agent_side::{self, ReportUpdate};
use crate::protocol::files::{self, Handoff, StatusFile};
use schemars::JsonSchema;
use serde::Serialize;

/// The agent a call speaks for: the one named, else the one this server runs inside.
fn caller(given: Option<String>) -> Result<AgentId, String> {
    let id = given.or_else(|| std::env::var("CORRAL_AGENT_ID").ok()).ok_or(
        "no agent id: pass `agent_id`, or run `corral mcp` inside an agent (its environment has CORRAL_AGENT_ID)",
    )?;
    AgentId::parse(&id).map_err(|e| format!("argument `agent_id`: {e}"))
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportReply {
    pub agent_id: String,
    pub status_file: String,
    /// The status file as written.
    pub status: StatusFile,
    /// What the report lost, if anything: the oldest findings dropped to keep the file
    /// within its bound, or an unreadable file started afresh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

pub fn report(ctx: &Ctx, a: ReportArgs) -> Result<ReportReply, String> {
    let id = caller(a.agent_id)?;
    args::opt_text("phase", &a.phase)?;
    args::opt_text("milestone", &a.milestone)?;
    if let Some(p) = a.progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(format!("argument `progress` is {p}; it must be between 0.0 and 1.0"));
    }
    args::count("findings", a.findings.len())?;
    for (i, f) in a.findings.iter().enumerate() {
        if !(f.is_string() || f.is_object()) {
            return Err(format!("argument `findings[{i}]` is {f}; it must be a string or an object"));
        }
        args::json_size(&format!("findings[{i}]"), f, args::MAX_TEXT)?;
    }
    let update = ReportUpdate {
        status: a.status,
        progress: a.progress,
        phase: a.phase,
        milestone: a.milestone,
        findings: a.findings,
    };
    agent_side::validate(&update).map_err(|e| format!("argument {e}"))?;
    let own = std::env::var("CORRAL_AGENT_ID").ok().as_deref() == Some(id.as_str());
    let role = own.then(|| std::env::var("CORRAL_ROLE").ok()).flatten();
    let done = agent_side::report(&ctx.data, &id, role, env_path("CORRAL_STATUS_FILE", &id), update)?;
    let warnings = done.warnings();
    let path = done.path;
    let status = files::read_status(ctx.data.root(), &path)?;
    Ok(ReportReply { agent_id: id.to_string(), status_file: path.display().to_string(), status, warnings })
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffReply {
    pub agent_id: String,
    pub handoff_file: String,
    /// The handoff as written (defaults filled in).
    pub handoff: Handoff,
}

pub fn handoff(ctx: &Ctx, a: HandoffArgs) -> Result<HandoffReply, String> {
    let id = caller(a.agent_id)?;
    args::json_size("handoff", &a.handoff, args::MAX_HANDOFF)?;
    let h = agent_side::handoff_from_json(a.handoff, &id).map_err(|e| format!("argument `handoff`: {e}"))?;
    let (path, h) = agent_side::write_handoff(&ctx.data, &id, env_path("CORRAL_HANDOFF_FILE", &id), &h)?;
    // As `corral handoff` does: the handoff marks the status file with its status.
    if let Some(update) = agent_side::status_of_handoff(&h) {
        let role = std::env::var("CORRAL_ROLE").ok();
        agent_side::report(&ctx.data, &id, role, env_path("CORRAL_STATUS_FILE", &id), update)?;
    }
    Ok(HandoffReply { agent_id: id.to_string(), handoff_file: path.display().to_string(), handoff: h })
}
