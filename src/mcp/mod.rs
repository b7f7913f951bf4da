//! The Model Context Protocol server behind `corral mcp`: the tool set (names, input and
//! output schemas, descriptions) and how each tool is run. Orchestrator tools are thin
//! layers over the supervisor requests the CLI sends; agent tools write the agent's status
//! file and handoff as `corral report`/`corral handoff` do. stdout carries only MCP
//! messages; anything else goes to stderr.

mod agent;
mod args;
mod cluster;
pub mod framing;
mod orchestrator;
pub mod shell;
mod wait;

use crate::aggregate::Report;
use crate::cli::Ctx;
use crate::ipc::{AgentView, HealthView, ShowView, SpawnReply};
use crate::memory::MemorySnapshot;
use crate::policy::agent::Escalation;
use args::*;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::{Json, RoleServer, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use std::sync::Arc;

pub struct Server {
    ctx: Arc<Ctx>,
    /// In cluster mode, the database the orchestrator's tools work on (the agent side still
    /// writes its own files).
    cluster: Option<Arc<crate::cli::cluster::Target>>,
    tool_router: ToolRouter<Self>,
}

/// Runs blocking work (socket calls, file writes) off the event loop, so a long call
/// never holds up the others.
///
/// Each tool returns structured content, or a tool error (an `isError` result) whose text
/// says what is wrong; its signature spells out `Result<Json<T>, String>` because the tool
/// macro reads the output schema from those very tokens.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<Json<T>, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// The output schema of `T`, declared as the object it is. The generator leaves `type` out
/// of a root that flattens another struct, and clients drop an output schema whose root is
/// not declared an object.
fn object_schema<T: schemars::JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    let mut s = (*rmcp::handler::server::tool::schema_for_output::<T>()).clone();
    s.entry("type").or_insert_with(|| "object".into());
    Arc::new(s)
}

/// The `format`s JSON Schema itself defines; clients validate these and warn about (or
/// reject) others.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// A schema without the generator's own formats (`uint32`, `int64`, `double`, `uint`, ...),
/// which MCP clients warn about: integer ranges are already said by `minimum`/`maximum`.
fn portable(schema: &rmcp::model::JsonObject) -> rmcp::model::JsonObject {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("format").and_then(|f| f.as_str()).is_some_and(|f| !STANDARD_FORMATS.contains(&f)) {
                    m.remove("format");
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::Value::Object(schema.clone());
    strip(&mut v);
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("an object stays an object"),
    }
}

#[tool_router]
impl Server {
    pub fn new(ctx: Ctx, cluster: Option<crate::cli::cluster::Target>) -> Self {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            let t = &mut route.attr;
            t.input_schema = Arc::new(portable(&t.input_schema));
            t.output_schema = t.output_schema.as_ref().map(|s| Arc::new(portable(s)));
        }
        Self { ctx: Arc::new(ctx), cluster: cluster.map(Arc::new), tool_router }
    }

    /// Record an agent and start it (or queue it, saying why); returns its id at once.
    /// Runs the command template of a role configured in corral.toml.
    #[tool(annotations(destructive_hint = false, open_world_hint = true))]
    async fn spawn_agent(&self, p: Parameters<SpawnArgs>) -> Result<Json<SpawnReply>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::spawn(&ctx, t, a),
            None => orchestrator::spawn(&ctx, a),
        })
        .await
    }

    /// Every agent (or those of one role): status, progress, phase/milestone, attempt,
    /// anomalies.
    #[tool(annotations(read_only_hint = true))]
    async fn list_agents(&self, p: Parameters<ListArgs>) -> Result<Json<orchestrator::AgentList>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::list(&ctx, t, a),
            None => orchestrator::list(&ctx, a),
        })
        .await
    }

    /// Everything about one agent: record, attempts with outcomes and reasons, last
    /// findings, handoffs, recent events.
    #[tool(annotations(read_only_hint = true), output_schema = object_schema::<ShowView>())]
    async fn agent_status(&self, p: Parameters<IdArgs>) -> Result<Json<ShowView>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::show(&ctx, t, a),
            None => orchestrator::show(&ctx, a),
        })
        .await
    }

    /// Wait until agents finish (complete, failed for good, killed, timed out or
    /// escalated), at most `timeout`. Sends progress notifications (finished/total) when
    /// the call carries a progress token. Returns what finished, in finishing order, and
    /// what is still pending.
    #[tool(annotations(read_only_hint = true))]
    async fn wait_agents(
        &self,
        p: Parameters<WaitArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<wait::WaitReply>, String> {
        let a = p.0?;
        let limit = wait::limit(&a)?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        let ct = rc.ct.clone();
        let token = rc.meta.get_progress_token();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressNotificationParam>();
        let peer = rc.peer.clone();
        // One sender, in order, drained before the result goes out: every notification
        // reaches the client while the request is still open.
        let notifier = tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                if peer.notify_progress(n).await.is_err() {
                    break;
                }
            }
        });
        let out = blocking(move || {
            let progress = |done: usize, total: usize, v: Option<&AgentView>| {
                let Some(token) = &token else { return };
                let msg = match v {
                    Some(v) => format!("{} {} ({done}/{total} finished)", v.agent_id, v.status),
                    None => format!("{done}/{total} finished"),
                };
                let n = ProgressNotificationParam::new(token.clone(), done as f64)
                    .with_total(total as f64)
                    .with_message(msg);
                let _ = tx.send(n);
            };
            match cl.as_deref() {
                Some(t) => cluster::wait(&ctx, t, a, limit, || ct.is_cancelled(), progress),
                None => wait::wait(&ctx, a, limit, || ct.is_cancelled(), progress),
            }
        })
        .await;
        let _ = notifier.await;
        out
    }

    /// TERM to the agent's whole process group, KILL after `grace`; answers once the
    /// group is gone. No retry follows.
    #[tool(annotations(destructive_hint = true))]
    async fn kill_agent(&self, p: Parameters<KillArgs>) -> Result<Json<orchestrator::KillReply>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::kill(t, a),
            None => orchestrator::kill(&ctx, a),
        })
        .await
    }

    /// A new attempt now, optionally with added context; answers the agent's open
    /// escalations.
    #[tool(annotations(destructive_hint = false))]
    async fn retry_agent(&self, p: Parameters<RetryArgs>) -> Result<Json<orchestrator::RetryReply>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::retry(t, a),
            None => orchestrator::retry(&ctx, a),
        })
        .await
    }

    /// Append a message to the agent's inbox (its CORRAL_INBOX_FILE).
    #[tool(annotations(destructive_hint = false))]
    async fn tell_agent(&self, p: Parameters<TellArgs>) -> Result<Json<orchestrator::TellReply>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::tell(t, a),
            None => orchestrator::tell(&ctx, a),
        })
        .await
    }

    /// Open escalations: failures that need a human (with `all`, resolved ones too).
    #[tool(annotations(read_only_hint = true))]
    async fn list_escalations(
        &self,
        p: Parameters<EscalationsArgs>,
    ) -> Result<Json<orchestrator::EscalationList>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::escalations(t, a),
            None => orchestrator::escalations(&ctx, a),
        })
        .await
    }

    /// Close escalation `n`, recording the answer in `note`.
    #[tool(annotations(destructive_hint = false, idempotent_hint = false))]
    async fn resolve_escalation(&self, p: Parameters<ResolveArgs>) -> Result<Json<Escalation>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::resolve(t, a),
            None => orchestrator::resolve(&ctx, a),
        })
        .await
    }

    /// Collect the finished agents' handoffs into one report: merged findings and
    /// decisions, validated deliverables, conflicts and how each was resolved, failed or
    /// missing agents, what remains to do, memory candidates.
    #[tool]
    async fn aggregate(&self, p: Parameters<AggregateArgs>) -> Result<Json<Report>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::aggregate(&ctx, t, a),
            None => orchestrator::aggregate(&ctx, a),
        })
        .await
    }

    /// Capacity in use, queue, circuit breaker, resources, open escalations, and why new
    /// agents are held when they are.
    #[tool(annotations(read_only_hint = true))]
    async fn health(&self, p: Parameters<NoArgs>) -> Result<Json<HealthView>, String> {
        p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::health(&ctx, t),
            None => orchestrator::health(&ctx),
        })
        .await
    }

    /// Learned memory (candidates from completed agents' handoffs) and per-role failure
    /// patterns that mention `query`.
    #[tool(annotations(read_only_hint = true))]
    async fn memory_search(&self, p: Parameters<MemoryArgs>) -> Result<Json<MemorySnapshot>, String> {
        let a = p.0?;
        let (ctx, cl) = (self.ctx.clone(), self.cluster.clone());
        blocking(move || match cl.as_deref() {
            Some(t) => cluster::memory_search(&ctx, t, a),
            None => orchestrator::memory_search(&ctx, a),
        })
        .await
    }

    /// Agent side: merge status, progress, phase, milestone and findings into the agent's
    /// status file (as `corral report` does).
    #[tool(annotations(destructive_hint = false, idempotent_hint = false))]
    async fn report_progress(&self, p: Parameters<ReportArgs>) -> Result<Json<agent::ReportReply>, String> {
        let a = p.0?;
        let ctx = self.ctx.clone();
        blocking(move || agent::report(&ctx, a)).await
    }

    /// Agent side: validate and write the agent's handoff (as `corral handoff` does); the
    /// error names the field that is wrong.
    #[tool(annotations(destructive_hint = false))]
    async fn submit_handoff(&self, p: Parameters<HandoffArgs>) -> Result<Json<agent::HandoffReply>, String> {
        let a = p.0?;
        let ctx = self.ctx.clone();
        blocking(move || agent::handoff(&ctx, a)).await
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "corral",
    instructions = "corral supervises asynchronous agents. Orchestrators: spawn_agent (roles from corral.toml), \
        wait_agents, agent_status, aggregate; list_escalations and resolve_escalation for what needs a human. \
        Agents (inside a spawned agent): report_progress while working, submit_handoff when done."
)]
impl ServerHandler for Server {}

/// Serves MCP on stdin/stdout until the client closes the connection.
pub async fn serve(ctx: Ctx, cluster: Option<crate::cli::cluster::Target>) -> anyhow::Result<()> {
    match &cluster {
        Some(t) => {
            crate::elog!("corral mcp: serving workspace {} of the cluster at {} on stdio", t.workspace, t.db.describe())
        }
        None => {
            crate::elog!("corral mcp: serving {} (data {}) on stdio", ctx.ws.root.display(), ctx.data.root().display())
        }
    }
    // Every line is judged before the service sees it, so a malformed one is answered.
    let (read, write) = rmcp::transport::io::stdio_pipes();
    let service = Server::new(ctx, cluster).serve(framing::framed(read, write)).await?;
    service.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_tool_declares_its_input_and_output() {
        let ws = crate::config::Workspace::discover(std::path::Path::new("/")).unwrap();
        let data = crate::protocol::DataDir::new(std::env::temp_dir());
        let server = super::Server::new(crate::cli::Ctx { ws, data }, None);
        let tools = server.tool_router.list_all();
        assert_eq!(tools.len(), 14);
        for t in tools {
            let props = t.input_schema.get("properties").and_then(|p| p.as_object());
            assert!(props.is_some() || t.name == "health", "{} has no input properties", t.name);
            assert_eq!(t.input_schema.get("additionalProperties"), Some(&serde_json::json!(false)), "{}", t.name);
            assert!(t.description.as_deref().is_some_and(|d| !d.is_empty()), "{}", t.name);
            let output = t.output_schema.as_ref().unwrap_or_else(|| panic!("{} has no output schema", t.name));
            assert_eq!(output.get("type"), Some(&serde_json::json!("object")), "{}", t.name);
        }
    }

    /// No tool schema carries a format outside JSON Schema's own (clients warn about
    /// `uint32` and the like); unsigned integers keep their lower bound.
    #[test]
    fn tool_schemas_use_only_standard_formats() {
        fn formats(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(f) = m.get("format").and_then(|f| f.as_str()) {
                        out.push(f.to_string());
                    }
                    m.values().for_each(|v| formats(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let ws = crate::config::Workspace::discover(std::path::Path::new("/")).unwrap();
        let data = crate::protocol::DataDir::new(std::env::temp_dir());
        let server = super::Server::new(crate::cli::Ctx { ws, data }, None);
        for t in server.tool_router.list_all() {
            let mut found = Vec::new();
            formats(&serde_json::Value::Object((*t.input_schema).clone()), &mut found);
            if let Some(o) = &t.output_schema {
                formats(&serde_json::Value::Object((**o).clone()), &mut found);
            }
            found.retain(|f| !super::STANDARD_FORMATS.contains(&f.as_str()));
            assert!(found.is_empty(), "{} has formats {found:?}", t.name);
        }
        let spawn = server.tool_router.map.get("spawn_agent").unwrap();
        let retries = &spawn.attr.input_schema["properties"]["max_retries"];
        assert_eq!(retries["minimum"], serde_json::json!(0), "{retries}");
    }
}
