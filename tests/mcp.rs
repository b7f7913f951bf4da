//! `corral mcp` driven by the official MCP Python SDK client (scripts under tests/mcp/):
//! the orchestrator's tools end to end, bad input as tool errors on a server that keeps
//! serving, and an agent that reports and hands off over MCP from inside its command.

mod common;

use common::{SECS, Ws, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp").join(name)
}

/// Runs `python3 tests/mcp/<name> <out>` in the workspace (with `corral` on PATH, as the
/// harness sets it) and returns the JSON the script wrote to `<out>`.
fn run_py(ws: &Ws, name: &str) -> Value {
    let out = ws.path().join(format!("{name}.out.json"));
    let mut py = std::process::Command::new("python3");
    py.arg(script(name)).arg(&out).current_dir(ws.path()).stdin(Stdio::null());
    // The environment the harness gives `corral` itself (its PATH, no CORRAL_*).
    for (k, v) in ws.cmd(&[]).get_envs() {
        match v {
            Some(v) => py.env(k, v),
            None => py.env_remove(k),
        };
    }
    let o = py.output().expect("python3 runs");
    assert!(
        o.status.success(),
        "{name} failed ({:?}):\nstdout: {}\nstderr: {}\ndaemon log: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(ws.data.join("daemon.log")).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&out).expect("the script wrote its result");
    serde_json::from_str(&text).expect("the result is JSON")
}

const RELAXED: &str = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n";

#[test]
fn orchestrator_tools_end_to_end() {
    let config = format!(
        r#"{RELAXED}
[roles.WORKER]
command = ["sh", "-c", "corral report --status active --progress 0.5 --phase working; sleep 1; corral handoff --finding \"$1\" --decision 'use port 8080' --memory 'the port is 8080'", "sh", "{{task}}"]
max_retries = 0

[roles.BROKEN]
command = ["sh", "-c", "echo cannot continue >&2; exit 2"]

[roles.SLEEPER]
command = ["sleep", "30"]
"#
    );
    let ws = Ws::with_config(Some(&config));
    let seen = run_py(&ws, "orchestrate.py");

    // Every tool, each with input and output schemas.
    let tools = seen["tools"].as_object().unwrap();
    let names: Vec<&str> = tools.keys().map(String::as_str).collect();
    for t in [
        "spawn_agent",
        "list_agents",
        "agent_status",
        "wait_agents",
        "kill_agent",
        "retry_agent",
        "tell_agent",
        "list_escalations",
        "resolve_escalation",
        "aggregate",
        "health",
        "memory_search",
        "report_progress",
        "submit_handoff",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
        assert_eq!(tools[t]["input"]["type"], "object", "{t}");
        // Declared, so the client checked every result below against it.
        assert_eq!(tools[t]["output"]["type"], "object", "{t}");
    }
    // No schema carries a format clients warn about (`uint32`, `uint64`, `double`, ...):
    // only JSON Schema's own, and an unsigned integer keeps its lower bound.
    fn formats(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(f) = m.get("format").and_then(Value::as_str) {
                    out.push(format!("{at}: {f}"));
                }
                m.iter().for_each(|(k, v)| formats(v, &format!("{at}/{k}"), out));
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| formats(v, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    const STANDARD: &[&str] =
        &["date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"];
    let mut odd = Vec::new();
    for (name, t) in tools {
        formats(&t["input"], &format!("{name} input"), &mut odd);
        formats(&t["output"], &format!("{name} output"), &mut odd);
    }
    odd.retain(|f| !STANDARD.iter().any(|s| f.ends_with(&format!(": {s}"))));
    assert!(odd.is_empty(), "formats clients warn about: {odd:?}");
    let spawn = &tools["spawn_agent"]["input"];
    assert_eq!(spawn["properties"]["max_retries"]["minimum"], 0, "{spawn}");
    for arg in [
        "role",
        "task",
        "scope",
        "constraints",
        "after",
        "timeout",
        "max_retries",
        "idempotency_key",
        "command",
        "group",
        "priority",
        "delay",
    ] {
        assert!(spawn["properties"][arg].is_object(), "spawn_agent lacks {arg}: {spawn}");
    }
    assert_eq!(spawn["required"], serde_json::json!(["role", "task"]));
    assert!(tools["agent_status"]["output"]["properties"]["attempts"].is_object());

    // Spawned at once, both through the roles' templates.
    let good = seen["spawned"][0]["agentId"].as_str().unwrap().to_string();
    let bad = seen["spawned"][1]["agentId"].as_str().unwrap().to_string();
    assert!(good.ends_with("-WORKER") && bad.ends_with("-BROKEN"), "{}", seen["spawned"]);

    // Progress notifications while waiting: done/total, rising to 2 of 2.
    let progress = seen["progress"].as_array().unwrap();
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(progress.iter().all(|p| p["total"] == 2.0), "{progress:?}");
    assert_eq!(progress.last().unwrap()["progress"], 2.0, "{progress:?}");
    let steps: Vec<f64> = progress.iter().map(|p| p["progress"].as_f64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(progress.iter().any(|p| p["message"].as_str().unwrap().contains(&good)), "{progress:?}");

    let wait = &seen["wait"];
    assert_eq!(wait["timedOut"], false);
    assert_eq!(wait["allComplete"], false);
    assert_eq!(wait["pending"].as_array().unwrap().len(), 0);
    let states: Vec<(&str, &str)> = wait["finished"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["agentId"].as_str().unwrap(), v["status"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&(good.as_str(), "complete")), "{states:?}");
    assert!(states.contains(&(bad.as_str(), "escalated")), "{states:?}");

    // Status: what the agent reported, and the failed attempt with its exit code.
    let g = &seen["status"][&good];
    assert_eq!(g["status"], "complete");
    assert_eq!(g["phase"], "working");
    // the handoff marked the status file complete
    assert_eq!(g["progress"], 1.0);
    assert_eq!(g["handoffs"].as_array().unwrap().len(), 1, "{g}");
    let b = &seen["status"][&bad];
    assert_eq!(b["attempts"][0]["exitCode"], 2, "{b}");
    assert_eq!(seen["list"]["agents"].as_array().unwrap().len(), 1);

    // Aggregation of the finished handoff; the escalated agent is listed, not waited for.
    let agg = &seen["aggregate"];
    let text = agg.to_string();
    assert!(text.contains("use port 8080"), "{agg}");
    assert!(text.contains(&bad), "the failed agent is reported: {agg}");

    // The escalation, resolved with the human's note.
    assert!(seen["escalations"]["escalations"].as_array().unwrap().iter().any(|e| e["agentId"] == bad.as_str()));
    assert_eq!(seen["resolved"]["note"], "known breakage; ignore");
    assert!(seen["resolved"]["resolvedAt"].is_string());
    assert!(seen["escalations_after"]["escalations"].as_array().unwrap().iter().all(|e| e["agentId"] != bad.as_str()));
    assert_eq!(seen["health"]["openEscalations"], 0);
    let inbox = seen["tell"]["inbox"].as_str().unwrap();
    assert!(std::fs::read_to_string(inbox).unwrap().contains("thanks"));

    // The same state through the CLI.
    // Resolved without a retry: the agent stays failed, with the human's answer.
    assert_eq!(ws.agent(&bad)["status"], "failed");
    assert!(ws.json(&["escalations", "--json"]).as_array().unwrap().is_empty());

    // One agent for one idempotency key; a wait that runs out says what is pending.
    let sleeper = seen["idempotent"][0]["agentId"].as_str().unwrap();
    assert_eq!(seen["idempotent"][1]["agentId"], sleeper);
    let w = &seen["wait_timeout"];
    assert_eq!(w["timedOut"], true, "{w}");
    assert_eq!(w["pending"][0]["agentId"], sleeper, "{w}");
    assert!(w["finished"].as_array().unwrap().is_empty(), "{w}");
    assert_eq!(seen["kill"]["status"], "killed");
    assert_eq!(seen["retry"]["status"], "running", "{}", seen["retry"]);
    assert_eq!(seen["kill_again"]["status"], "killed");
    let show = ws.show(sleeper);
    assert_eq!(show["attempts"].as_array().unwrap().len(), 2, "{show}");
    assert!(std::fs::read_to_string(show["files"]["contextFile"].as_str().unwrap()).unwrap().contains("try once more"));
}

#[test]
fn bad_input_is_a_tool_error_and_the_server_keeps_serving() {
    let config = format!(
        r#"{RELAXED}
[roles.WORKER]
command = ["sh", "-c", "sleep 0.2"]
"#
    );
    let ws = Ws::with_config(Some(&config));
    let seen = run_py(&ws, "bad_inputs.py");
    let e = &seen["errors"];
    let says = |case: &str, words: &[&str]| {
        let msg = e[case].as_str().unwrap_or_else(|| panic!("{case} missing: {e}"));
        for w in words {
            assert!(msg.contains(w), "{case}: {msg:?} does not say {w:?}");
        }
    };
    says("unconfigured_role", &["`role`", "HACKER", "not configured", "WORKER"]);
    says("raw_command_off", &["`command`", "raw commands are off", "allow_raw_commands = true", "[mcp]"]);
    says("oversized_task", &["`task`", "64 KiB"]);
    says("too_many_constraints", &["`constraints`", "101", "100"]);
    says("wrong_type", &["`max_retries`", "three"]);
    says("unknown_argument", &["unknown field `retries`"]);
    says("missing_argument", &["missing field `role`"]);
    says("bad_after", &["`after[0]`"]);
    says("handoff_from_mismatch", &["`handoff`", "fromAgent", "agent-009-OTHER", "agent-001-WORKER"]);
    says("handoff_files_wrong_type", &["`handoff`", "deliverables.files[0]", "path string"]);
    says("handoff_not_object", &["`handoff`", "object"]);
    says("handoff_no_agent", &["agent_id", "CORRAL_AGENT_ID"]);
    says("report_progress_range", &["`progress`", "7", "0.0 and 1.0"]);
    says("report_bad_status", &["`status`", "running"]);
    says("report_bad_id", &["`agent_id`"]);
    says("wait_too_long", &["`timeout`", "10m"]);
    says("unknown_agent", &["agent-404-NONE"]);
    says("resolve_unknown", &["999"]);
    says("empty_tell", &["`text`", "empty"]);

    // Nothing the refused calls asked for happened; the good calls after them did.
    let agents = ws.status();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["agentId"], seen["spawn"]["agentId"]);
    assert_eq!(agents[0]["task"], "after the errors");
    assert_eq!(seen["report"]["status"]["phase"], "checked");
    assert!(Path::new(seen["handoff"]["handoffFile"].as_str().unwrap()).is_file());
    assert_eq!(seen["health"]["healthy"], true);
}

#[test]
fn raw_commands_run_only_when_the_workspace_allows_them() {
    let config = format!("{RELAXED}\n[mcp]\nallow_raw_commands = true\n");
    let ws = Ws::with_config(Some(&config));
    let seen = run_py(&ws, "raw_command.py");
    let id = seen["spawn"]["agentId"].as_str().unwrap();
    let v = ws.wait_state(id, &["complete"], SECS(10));
    assert_eq!(v["exitCode"], 0);
    let show = ws.show(id);
    assert_eq!(show["command"], serde_json::json!(["sh", "-c", "exit 0", "raw"]));
    // An unconfigured role still has no template to fall back on.
    assert!(seen["no_template"].as_str().unwrap().contains("not configured"), "{}", seen["no_template"]);
}

#[test]
fn an_agent_reports_and_hands_off_over_mcp() {
    let config = format!(
        "{RELAXED}\n[roles.MCPAGENT]\ncommand = [\"python3\", {:?}]\nmax_retries = 0\n",
        script("agent.py").display().to_string()
    );
    let ws = Ws::with_config(Some(&config));
    let id = ws.ok(&["spawn", "--role", "MCPAGENT", "--task", "report over MCP"]).trim().to_string();
    let mut last = Value::Null;
    let finished = wait_until(SECS(30), || {
        last = ws.agent(&id);
        ["complete", "failed", "escalated"].contains(&last["status"].as_str().unwrap_or(""))
    });
    let log = std::fs::read_to_string(ws.data.join(format!("logs/{id}.log"))).unwrap_or_default();
    assert!(finished && last["status"] == "complete", "{last}\nagent log:\n{log}");
    assert!(log.contains("reported and handed off over MCP"), "{log}");

    // `corral status --json` shows what the agent reported through report_progress.
    let v = ws.agent(&id);
    assert_eq!(v["progress"], 1.0, "the handoff marks the status file complete: {v}");
    assert_eq!(v["phase"], "mcp-analysis", "{v}");
    assert_eq!(v["milestone"], "schemas-read", "{v}");
    assert_eq!(v["reportedStatus"], "complete", "{v}");

    // The handoff submitted through submit_handoff is the agent's expected handoff.
    let show = ws.show(&id);
    assert_eq!(show["handoffs"].as_array().unwrap().len(), 1, "{show}");
    let handoff: Value =
        serde_json::from_str(&std::fs::read_to_string(show["files"]["expectedHandoff"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(handoff["fromAgent"], id.as_str());
    assert_eq!(handoff["deliverables"]["findings"][0]["value"], "stdio");
    assert_eq!(handoff["memoryCandidate"]["lesson"], "agents can report over MCP");
}

#[test]
fn tools_take_ids_by_number_and_unique_prefix() {
    let config = format!("{RELAXED}\n[roles.WORKER]\ncommand = [\"sleep\", \"30\"]\n");
    let ws = Ws::with_config(Some(&config));
    let seen = run_py(&ws, "ids.py");
    assert_eq!(seen["by_number"]["agentId"], seen["second"]["agentId"], "{seen}");
    assert_eq!(seen["by_prefix"]["agentId"], seen["first"]["agentId"], "{seen}");
    let msg = seen["ambiguous"].as_str().unwrap();
    assert!(msg.contains("ambiguous") && msg.contains("agent-001-WORKER") && msg.contains("agent-002-WORKER"), "{msg}");
    // A kill by number answers with the whole id.
    assert_eq!(seen["killed"]["agentId"], seen["first"]["agentId"], "{seen}");
}

#[test]
fn spawn_agent_takes_a_group_a_priority_and_a_delay() {
    let ws = Ws::with_config(Some(&format!("{RELAXED}\n[roles.WORKER]\ncommand = [\"true\"]\n")));
    let seen = run_py(&ws, "groups.py");
    let id = seen["spawn"]["agentId"].as_str().unwrap().to_string();
    assert_eq!(seen["spawn"]["status"], "queued", "{seen}");
    let a = ws.agent(&id);
    assert_eq!((a["group"].as_str(), a["priority"].as_i64()), (Some("review"), Some(7)), "{a}");
    assert!(a["reason"].as_str().unwrap().starts_with("delayed until "), "{a}");
    assert!(a["notBefore"].is_string(), "{a}");
    let groups = seen["health"]["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["name"] == "review" && g["queued"] == 1), "{groups:?}");
    let e = &seen["errors"];
    for (case, words) in [
        ("priority_range", ["`priority`", "-1000 to 1000"]),
        ("bad_group", ["`group`", "a/b"]),
        ("bad_delay", ["`delay`", "soon"]),
    ] {
        let msg = e[case].as_str().unwrap_or_else(|| panic!("{case} missing: {e}"));
        assert!(words.iter().all(|w| msg.contains(w)), "{case}: {msg:?} does not say {words:?}");
    }
    assert_eq!(ws.status().len(), 1, "the refused calls spawned nothing");
}
