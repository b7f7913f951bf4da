//! Unattended scenarios: policy. Each agent nobody watches is judged on its own attempt's
//! evidence, reaches a human when nobody else can help it, and what a human answers sticks.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

/// Fast retries, no breaker in the way unless a test sets one.
const FAST: &str = "[defaults]\nbackoff = { initial = \"100ms\", coefficient = 1.0 }\n[health]\nmax_concurrent = 50\nbreaker_failures = 0\n";

fn config(extra: &str) -> String {
    format!("{FAST}{extra}")
}

fn events(ws: &Ws, id: &str) -> Vec<Value> {
    let out = ws.ok(&["events", "--agent", id]);
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn templates_expand_once() {
    let ws = Ws::with_config(Some(&config(
        "[roles.T]\ncommand = [\"sh\", \"-c\", \"printf '%s|%s' \\\"$0\\\" \\\"$1\\\" > out.txt\", \"{task}\", \"{role}\"]\n",
    )));
    let id = ws.ok(&["spawn", "--role", "T", "--task", "literal {role} and {agent_id} {context}"]).trim().to_string();
    ws.wait_state(&id, &["complete"], SECS(20));
    let out = std::fs::read_to_string(ws.path().join("out.txt")).unwrap();
    let substituted = usize::from(out != "literal {role} and {agent_id} {context}|T");
    println!("UNATTENDED templates_expand_once substituted_again={substituted}");
    assert_eq!(out, "literal {role} and {agent_id} {context}|T");
}

#[test]
fn overloaded_api_is_retried() {
    let ws = Ws::with_config(Some(&config("")));
    let script = "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then echo 'API Error: 529 {\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}'; exit 1; fi; exit 0";
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", script]);
    let v = ws.wait_state(&id, &["complete", "escalated", "failed"], SECS(20));
    let show = ws.show(&id);
    let first = &show["attempts"][0];
    let misjudged = usize::from(v["status"] != "complete");
    println!(
        "UNATTENDED overloaded_api_is_retried misjudged={misjudged} attempts={}",
        show["attempts"].as_array().unwrap().len()
    );
    assert_eq!(v["status"], "complete", "{show}");
    assert_eq!(first["failureType"], "crash");
    assert!(first["action"].as_str().unwrap().starts_with("retry"), "{first}");
}
