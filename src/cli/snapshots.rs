//! Snapshots of the human faces with hostile agent text: what `status`, `show`,
//! `escalations` and `aggregate` print when an agent wrote terminal controls, bidi
//! overrides and line breaks into its phase, findings, reasons and handoffs. A change to
//! any of these outputs shows up as a snapshot diff (`cargo insta review`).

use crate::ipc::{AgentView, ShowView};
use crate::policy::agent::Escalation;
use serde_json::{Value, json};

const TITLE: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
const BIDI: &str = "ok\u{202e}txt.exe\u{2028}x";
const FORGED: &str = "sandbox down\nFORGED line\r\u{1b}[1A\u{85}";

fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn agent() -> Value {
    json!({
        "agentId": "agent-001-WORKER", "role": "WORKER", "task": format!("fix it{TITLE}\nFORGED task"),
        "status": "blocked", "reason": FORGED, "needsHuman": true, "reportedStatus": "blocked",
        "attempt": 2, "budgetAttempt": 2, "maxRetries": 2, "progress": 0.5, "phase": TITLE,
        "milestone": BIDI, "lastUpdate": "2026-01-01T00:00:00.000+00:00", "ageSeconds": 75.0,
        "anomalies": ["BLOCKED", "NEEDS-HUMAN #1"], "spawnedAt": "2026-01-01T00:00:00.000+00:00",
        "cwd": "/ws/\u{1b}[31mred", "escalation": 1
    })
}

#[test]
fn status_with_hostile_text() {
    let mut quiet = agent();
    quiet["agentId"] = "agent-002-AUDITOR".into();
    quiet["role"] = "AUDITOR".into();
    quiet["status"] = "running".into();
    quiet["phase"] = Value::Null;
    quiet["milestone"] = "m1".into();
    quiet["anomalies"] = json!([]);
    let views: Vec<AgentView> = serde_json::from_value(json!([agent(), quiet])).unwrap();
    insta::assert_snapshot!(render(|o| super::status::table(&views, Some(80), o)));
}

#[test]
fn status_at_80_columns_shortens_the_task_not_the_id() {
    let mut long = agent();
    long["agentId"] = "agent-017-IMPLEMENTER-frontend".into();
    long["role"] = "IMPLEMENTER".into();
    long["task"] = "Rewrite the settings page so that every form field validates on blur and says why".into();
    long["anomalies"] = json!([]);
    let views: Vec<AgentView> = serde_json::from_value(json!([long])).unwrap();
    let text = render(|o| super::status::table(&views, Some(80), o));
    assert!(text.contains("agent-017-IMPLEMENTER-frontend "), "{text}");
    assert!(text.contains("Rewrite the~") && !text.contains("says why"), "{text}");
    let whole = render(|o| super::status::table(&views, None, o));
    assert!(whole.contains("validates on blur and says why"), "{whole}");
}

#[test]
fn show_with_hostile_text() {
    let mut v = agent();
    let extra = json!({
        "scope": "src/\u{1b}]8;;http://evil\u{7}x", "constraints": [FORGED], "after": [],
        "command": ["sh", "-c", TITLE],
        "attempts": [{"attempt": 1, "startedAt": "2026-01-01T00:00:00.000+00:00",
            "endedAt": "2026-01-01T00:01:00.000+00:00", "exitCode": 1, "signal": null,
            "failureType": "crash", "reason": FORGED, "action": "retry", "rule": "default",
            "pid": null, "timeout": "20m"},
            {"attempt": 2, "startedAt": "2026-01-01T00:02:00.000+00:00", "endedAt": null,
            "exitCode": null, "signal": null, "failureType": null, "reason": null, "action": null,
            "rule": null, "pid": 4242, "timeout": null}],
        "findings": [format!("found {TITLE}"), {"key": "k", "value": 1, "claim": BIDI}],
        "files": {"statusFile": "/ws/.corral/agent-status/agent-001-WORKER.json",
            "logFile": "/ws/.corral/logs/agent-001-WORKER.log",
            "contextFile": "/ws/.corral/context/agent-001-WORKER.md",
            "expectedHandoff": "/ws/.corral/handoffs/h.json"},
        "handoffs": [format!("/ws/.corral/handoffs/{BIDI}.json")],
        "events": [{"seq": 1, "at": "2026-01-01T00:00:00.000+00:00", "agentId": "agent-001-WORKER",
            "kind": "status", "data": {"phase": TITLE, "finding": FORGED}}]
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    let s: ShowView = serde_json::from_value(v).unwrap();
    insta::assert_snapshot!(render(|o| super::show::render(&s, o)));
}

#[test]
fn escalations_with_hostile_text() {
    let list: Vec<Escalation> = serde_json::from_value(json!([
        {"n": 1, "agentId": "agent-001-WORKER", "reason": FORGED, "openedAt": "2026-01-01T00:00:00.000+00:00"},
        {"n": 2, "agentId": "agent-002-AUDITOR", "reason": format!("conflict {BIDI}"),
         "openedAt": "2026-01-01T00:00:00.000+00:00", "resolvedAt": "2026-01-01T01:00:00.000+00:00",
         "note": TITLE, "outcome": format!("chose {TITLE}")}
    ]))
    .unwrap();
    insta::assert_snapshot!(render(|o| super::escalations::lines(&list, o)));
}

#[test]
fn aggregate_markdown_with_hostile_text() {
    use crate::aggregate::{AgentOutcome, HandoffInput, Input, aggregate, render_markdown, workspace};
    use std::path::{Path, PathBuf};
    let handoff = |from: &str, findings: Value| {
        let text = json!({"fromAgent": from, "toAgent": "ORCHESTRATOR", "status": "complete",
            "deliverables": {"files": [format!("out/{BIDI}.md")], "findings": findings,
                "decisions": [format!("use {TITLE}")]},
            "memoryCandidate": [FORGED]})
        .to_string();
        let path = PathBuf::from(format!("/ws/.corral/handoffs/handoff-{from}.json"));
        HandoffInput::Parsed {
            handoff: crate::protocol::files::parse_handoff(&text, &path).unwrap(),
            path,
            modified: "2026-01-01T00:00:00Z".into(),
        }
    };
    let outcome = |id: &str, status: &str, reason: Option<&str>| AgentOutcome {
        agent_id: id.into(),
        role: "WORKER".into(),
        task: format!("task{TITLE}\nFORGED task"),
        status: status.into(),
        reason: reason.map(str::to_string),
        needs_human: status != "complete",
        cwd: "/ws".into(),
    };
    let input_agents = vec![
        outcome("agent-001-WORKER", "complete", None),
        outcome("agent-002-WORKER", "complete", None),
        outcome("agent-003-WORKER", "escalated", Some(FORGED)),
    ];
    let handoffs = vec![
        handoff("agent-001-WORKER", json!([FORGED, {"key": "db", "value": TITLE, "claim": BIDI}])),
        handoff(
            "agent-002-WORKER",
            json!([{"key": "db", "value": "postgres", "claim": FORGED,
            "evidence": [{"kind": "test", "ref": TITLE, "passed": true}]}]),
        ),
    ];
    let locate = |_: &Path| workspace::Found::Missing;
    let report = aggregate(&Input {
        agents: input_agents,
        handoffs,
        workspace: Path::new("/ws"),
        locate: &locate,
        human: vec![],
        branches: vec![],
        merges: vec![],
        trees: Default::default(),
    });
    insta::assert_snapshot!(render_markdown(&report));
}
