//! Waiting in finishing order, aggregation, learned memory and its export, through the real binary.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

#[test]
fn wait_reports_agents_in_finishing_order_as_each_finishes() {
    let ws = Ws::new();
    let go = |n: u32| ws.path().join(format!("go{n}"));
    let script = |n: u32| format!("while [ ! -e {} ]; do sleep 0.02; done", go(n).display());
    let ids: Vec<String> = (1..=3).map(|n| ws.spawn("W", &["sh", "-c", &script(n)])).collect();
    let mut wait = ws.cmd(&["wait", "--all"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(wait.stdout.take().unwrap()).lines();
    // release 3, then 1, then 2; each line must arrive before the next agent is released
    for (n, idx) in [(3, 2), (1, 0), (2, 1)] {
        std::fs::write(go(n), "").unwrap();
        let t = Instant::now();
        let line = lines.next().expect("a line per agent").unwrap();
        assert!(line.starts_with(&format!("{} complete", ids[idx])), "expected {} next, got {line}", ids[idx]);
        assert!(t.elapsed().as_secs() < 5);
    }
    let st = wait.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

#[test]
fn wait_exit_codes_json_and_timeout() {
    let ws = Ws::with_config(Some("[defaults]\nmax_retries = 0\n[health]\nbreaker_failures = 0\n"));
    let ok = ws.spawn("W", &["true"]);
    let bad = ws.spawn("W", &["sh", "-c", "exit 3"]);
    let o = ws.run(&["wait", &ok, &bad, "--json"]);
    assert_eq!(o.status.code(), Some(1), "one agent escalated: exit 1");
    let out = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|r| r["agentId"] == bad.as_str() && r["status"] == "escalated"));
    let slow = ws.spawn("W", &["sleep", "30"]);
    let t = Instant::now();
    let o = ws.run(&["wait", &ok, &slow, "--timeout", "500ms"]);
    assert_eq!(o.status.code(), Some(124));
    assert!(t.elapsed().as_secs() < 5);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&ok) && !out.contains(&slow), "prints what finished so far: {out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 2 finished"));
    ws.ok(&["kill", &slow]);
    let o = ws.run(&["wait", "nobody"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn memory_learns_candidates_and_failure_patterns() {
    let ws = Ws::with_config(Some(
        "[defaults]\nmax_retries = 0\n[roles.SLOW]\nattempt_timeout = \"1s\"\n[health]\nbreaker_failures = 0\n",
    ));
    let mem = r#"corral handoff --finding ok --memory '{"name":"ci-flaky","observation":"CI fails on the first run"}' --memory 'prefer small commits'"#;
    let a = ws.spawn("W", &["sh", "-c", mem]);
    let b = ws.spawn("W", &["sh", "-c", mem]); // the same lessons again: deduplicated
    let c = ws.spawn("W", &["sh", "-c", "corral report --status failed --finding 'disk full'; exit 1"]);
    let slow: Vec<String> = (0..3).map(|_| ws.spawn("SLOW", &["sleep", "0.9"])).collect();
    for id in [&a, &b, &c].into_iter().chain(slow.iter()) {
        ws.wait_state(id, &["complete", "escalated"], SECS(10));
    }
    let m = ws.json(&["memory", "--json"]);
    let cands = m["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2, "deduplicated: {m}");
    let w = m["patterns"].as_array().unwrap().iter().find(|p| p["role"] == "W").unwrap();
    assert_eq!(w["failureTypes"]["crash"], 1);
    assert!(w["topReasons"][0][0].as_str().unwrap().contains("exited with code N"), "{w}");
    let s = m["patterns"].as_array().unwrap().iter().find(|p| p["role"] == "SLOW").unwrap();
    assert!(s["advice"].as_str().unwrap().contains("near its 1s timeout"), "{s}");
    let text = ws.ok(&["memory"]);
    assert!(text.contains("ADVICE: SLOW") && text.contains("prefer small commits"), "{text}");
    let found = ws.json(&["memory", "search", "CI FAILS", "--json"]);
    assert_eq!(found["candidates"].as_array().unwrap().len(), 1);
}

#[test]
fn memory_export_is_read_by_the_real_mcp_memory_server() {
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-deps/node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    assert!(server.exists(), "{} is missing: run ./scripts/test.sh, which installs it", server.display());
    let ws = Ws::new();
    let id = ws.spawn(
        "W",
        &[
            "sh",
            "-c",
            r#"corral handoff --memory '{"name":"retry-policy","observation":"rate limits clear within a minute"}'"#,
        ],
    );
    ws.wait_state(&id, &["complete"], SECS(10));
    let file = ws.path().join("graph.jsonl");
    ws.ok(&["memory", "export", "--format", "mcp-memory", "--out", file.to_str().unwrap()]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/read_graph.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(&server)
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "MCP client failed: {}", String::from_utf8_lossy(&o.stderr));
    let graph: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entities = graph["entities"].as_array().unwrap();
    let mem = entities.iter().find(|e| e["name"] == "memory:retry-policy").expect("exported entity read back");
    assert_eq!(mem["observations"][0], "rate limits clear within a minute");
    assert!(entities.iter().any(|e| e["name"] == "role:W"), "{graph}");
    assert!(graph["relations"].as_array().unwrap().iter().any(|r| r["to"] == "memory:retry-policy"));
    let o = ws.run(&["memory", "export", "--format", "csv"]);
    assert_eq!(o.status.code(), Some(2));
}

fn handoff_script(finding: &str) -> String {
    format!("corral handoff --finding '{finding}' && corral report --status complete --progress 1")
}

#[test]
fn partial_aggregation_merges_the_finished_and_lists_the_rest() {
    let ws = Ws::with_config(Some("[defaults]\nmax_retries = 0\n[health]\nbreaker_failures = 0\n"));
    let done: Vec<String> =
        (0..3).map(|i| ws.spawn("W", &["sh", "-c", &handoff_script(&format!("result {i}"))])).collect();
    let escalated = ws.spawn("W", &["sh", "-c", "corral report --status failed --finding 'schema is wrong'; exit 2"]);
    let running = ws.spawn("W", &["sleep", "300"]);
    for id in &done {
        ws.wait_state(id, &["complete"], SECS(10));
    }
    ws.wait_state(&escalated, &["escalated"], SECS(10));
    let o = ws.run(&["aggregate", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "partial aggregation exits 1");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["partial"], true);
    assert_eq!(r["counts"]["aggregated"], 3, "{r}");
    let texts: Vec<String> = r["findings"].as_array().unwrap().iter().map(|f| f["value"].to_string()).collect();
    for i in 0..3 {
        assert!(texts.iter().any(|t| t.contains(&format!("result {i}"))), "{texts:?}");
    }
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{r}");
    let f_esc = failed.iter().find(|f| f["agent"] == escalated.as_str()).unwrap();
    assert_eq!(f_esc["status"], "escalated");
    assert!(f_esc["reason"].as_str().unwrap().contains("schema is wrong"));
    assert!(failed.iter().any(|f| f["agent"] == running.as_str() && f["status"] == "running"));
    let todo = r["todo"].as_array().unwrap();
    for id in [&escalated, &running] {
        assert_eq!(todo.iter().filter(|t| t["agent"] == id.as_str()).count(), 1, "one TODO for {id}: {todo:?}");
    }
    // the Markdown for people says the same
    let out = ws.path().join("report.md");
    let o = ws.run(&["aggregate", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(md.contains("result 1") && md.contains(&running) && md.contains(&escalated), "{md}");
    ws.ok(&["kill", &running]);
}

#[test]
fn unresolved_conflicts_are_escalated_and_numbers_never_averaged() {
    let ws = Ws::new();
    let port = |v: u32| {
        format!(
            r#"{{"key":"port","value":{v},"claim":"serve on {v}","evidence":[{{"kind":"reasoning","ref":"notes"}}]}}"#
        )
    };
    let a = ws.spawn("W", &["sh", "-c", &handoff_script(&port(8080))]);
    let b = ws.spawn("W", &["sh", "-c", &handoff_script(&port(9090))]);
    ws.wait_state(&a, &["complete"], SECS(10));
    ws.wait_state(&b, &["complete"], SECS(10));
    let o = ws.run(&["aggregate", "--json"]);
    assert_eq!(o.status.code(), Some(1), "an unresolved conflict leaves work to do");
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.contains("8585"), "numbers must never be averaged");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &r["conflicts"][0];
    assert_eq!(c["key"], "port");
    assert_eq!(c["resolution"], "unresolved");
    assert_eq!(c["positions"].as_array().unwrap().len(), 2);
    let esc = ws.json(&["escalations", "--json"]);
    assert_eq!(esc.as_array().unwrap().len(), 1, "{esc}");
    assert!(esc[0]["reason"].as_str().unwrap().contains("unresolved conflict on port"));
    // aggregating again does not escalate the same conflict twice
    ws.run(&["aggregate", "--json"]);
    assert_eq!(ws.json(&["escalations", "--json"]).as_array().unwrap().len(), 1);
    // a third agent with test evidence settles it
    let strong = r#"{"key":"port","value":9090,"claim":"tests pass on 9090","evidence":[{"kind":"test","ref":"tests/port.rs","passed":true}]}"#;
    let c3 = ws.spawn("W", &["sh", "-c", &handoff_script(strong)]);
    ws.wait_state(&c3, &["complete"], SECS(10));
    let r = ws.json(&["aggregate", "--json"]);
    assert_eq!(r["conflicts"][0]["resolution"], "evidence", "{r}");
    assert_eq!(r["conflicts"][0]["winner"]["value"], 9090);
}
