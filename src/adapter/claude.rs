//! Claude Code's `-p --output-format stream-json --verbose` lines: `system/init` (the
//! session), `assistant` and `user` (turns, tool calls and their results), `system/api_retry`
//! (its own retries of the API), and last `result` (outcome, cost, usage, turns).

use super::{MAX_TEXT, Observation, ProgressKind, RunResult, Usage, bounded, limits, s, u};
use serde_json::Value;

pub fn line(v: &Value, out: &mut Vec<Observation>) {
    match s(v, "type") {
        Some("system") => match s(v, "subtype") {
            Some("init") => session(v, out),
            Some("api_retry") => out.push(Observation::ApiRetry {
                status: u(v, "error_status").and_then(|n| u16::try_from(n).ok()),
                delay_ms: u(v, "retry_delay_ms"),
            }),
            _ => {}
        },
        Some("assistant") => {
            out.push(Observation::Progress { what: ProgressKind::Turn });
            let content = v.pointer("/message/content").and_then(Value::as_array);
            if content.is_some_and(|c| c.iter().any(|b| s(b, "type") == Some("tool_use"))) {
                out.push(Observation::Progress { what: ProgressKind::ToolCall });
            }
        }
        Some("user") => out.push(Observation::Progress { what: ProgressKind::ToolCall }),
        Some("result") => result(v, out),
        _ => {}
    }
}

fn session(v: &Value, out: &mut Vec<Observation>) {
    if let Some(id) = s(v, "session_id").filter(|id| !id.is_empty() && id.len() <= 200) {
        out.push(Observation::SessionId { id: id.to_string() });
    }
}

fn result(v: &Value, out: &mut Vec<Observation>) {
    session(v, out);
    let usage = v.get("usage");
    let tok = |k: &str| usage.and_then(|x| u(x, k)).unwrap_or(0);
    let input = tok("input_tokens")
        .saturating_add(tok("cache_creation_input_tokens"))
        .saturating_add(tok("cache_read_input_tokens"));
    let cost = v.get("total_cost_usd").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0);
    let turns = u(v, "num_turns").and_then(|n| u32::try_from(n).ok());
    if usage.is_some() || cost.is_some() || turns.is_some() {
        out.push(Observation::Usage(Usage {
            input,
            output: tok("output_tokens"),
            cost_usd: cost,
            turns,
            session_totals: true,
        }));
    }
    let subtype = s(v, "subtype").map(str::to_string);
    let terminal = s(v, "terminal_reason").map(str::to_string);
    let status = u(v, "api_error_status").and_then(|n| u16::try_from(n).ok());
    let text = s(v, "result").or_else(|| s(v, "error")).map(|t| bounded(t, MAX_TEXT));
    let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
    // The subtype stays "success" even on API errors: is_error and the terminal reason say.
    let ok = !is_error
        && terminal.as_deref() != Some("api_error")
        && subtype.as_deref().is_none_or(|t| t.starts_with("success"))
        && status.is_none_or(|st| st < 400);
    if !ok {
        let said = text.as_deref().unwrap_or("");
        if limits::is_limit(said, status) {
            out.push(Observation::RateLimited {
                provider: "anthropic".into(),
                reset: limits::reset_in(said),
                message: bounded(said, 500),
            });
        }
    }
    out.push(Observation::Result(RunResult { ok, subtype, text, api_error_status: status, terminal_reason: terminal }));
}
