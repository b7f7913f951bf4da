//! Codex's `exec --json` lines: `thread.started` (the session), `turn.started`,
//! `item.started`/`item.completed` (commands, MCP calls, messages), `turn.completed` (usage
//! of that turn), `error` (its reconnects) and `turn.failed`.

use super::{MAX_TEXT, Observation, ProgressKind, RunResult, Usage, bounded, limits, s, u};
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

static STATUS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)status:?\s*([1-5]\d\d)\b").expect("valid regex"));

/// What a Codex stream has said so far: its turns' usage adds up, its last message is the
/// run's answer, its last error may explain a failed turn.
#[derive(Debug, Default)]
pub struct State {
    usage: Usage,
    last_message: Option<String>,
    last_error: Option<String>,
}

fn status_in(text: &str) -> Option<u16> {
    STATUS.captures(text).and_then(|c| c[1].parse().ok())
}

impl State {
    /// The state a stream left that `before` summarises: its turns' usage so far, its
    /// last answer.
    pub fn resume(before: &super::Summary) -> Self {
        Self {
            usage: before.usage.unwrap_or_default(),
            last_message: before.result.as_ref().and_then(|r| r.text.clone()),
            last_error: None,
        }
    }

    pub fn line(&mut self, v: &Value, out: &mut Vec<Observation>) {
        match s(v, "type") {
            Some("thread.started") => {
                if let Some(id) = s(v, "thread_id").filter(|id| !id.is_empty() && id.len() <= 200) {
                    out.push(Observation::SessionId { id: id.to_string() });
                }
            }
            Some("turn.started") => out.push(Observation::Progress { what: ProgressKind::Turn }),
            Some("item.started" | "item.updated" | "item.completed") => {
                let item = v.get("item");
                let kind = item.and_then(|i| s(i, "type"));
                if kind == Some("agent_message") {
                    if let Some(t) = item.and_then(|i| s(i, "text")) {
                        self.last_message = Some(bounded(t, MAX_TEXT));
                    }
                    out.push(Observation::Progress { what: ProgressKind::Turn });
                } else if kind == Some("error") {
                    // A warning the CLI shows as an item: alive, not progress.
                } else {
                    out.push(Observation::Progress { what: ProgressKind::ToolCall });
                }
            }
            Some("turn.completed") => {
                let usage = v.get("usage");
                let tok = |k: &str| usage.and_then(|x| u(x, k)).unwrap_or(0);
                self.usage.input = self.usage.input.saturating_add(tok("input_tokens"));
                self.usage.output = self
                    .usage
                    .output
                    .saturating_add(tok("output_tokens"))
                    .saturating_add(tok("reasoning_output_tokens"));
                self.usage.turns = Some(self.usage.turns.unwrap_or(0).saturating_add(1));
                out.push(Observation::Usage(self.usage));
                out.push(Observation::Result(RunResult {
                    ok: true,
                    subtype: Some("turn.completed".into()),
                    text: self.last_message.clone(),
                    api_error_status: None,
                    terminal_reason: None,
                }));
            }
            Some("error") => {
                let msg = s(v, "message").unwrap_or_default();
                self.last_error = Some(bounded(msg, MAX_TEXT));
                out.push(Observation::ApiRetry { status: status_in(msg), delay_ms: None });
            }
            Some("turn.failed") => {
                let msg = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .or_else(|| s(v, "message"))
                    .map(|t| bounded(t, MAX_TEXT))
                    .or_else(|| self.last_error.clone());
                let said = msg.clone().unwrap_or_default();
                let status = status_in(&said).or_else(|| self.last_error.as_deref().and_then(status_in));
                let both = format!("{said}\n{}", self.last_error.as_deref().unwrap_or(""));
                if limits::is_limit(&both, status) {
                    out.push(Observation::RateLimited {
                        provider: "openai".into(),
                        reset: limits::reset_in(&both),
                        message: bounded(&said, 500),
                    });
                }
                out.push(Observation::Result(RunResult {
                    ok: false,
                    subtype: Some("turn.failed".into()),
                    text: msg,
                    api_error_status: status,
                    terminal_reason: None,
                }));
            }
            _ => {}
        }
    }
}
