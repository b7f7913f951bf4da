//! The committed JSON Schemas validate real files and real `--json` output written by a
//! run of the real binary.

mod common;
use common::*;
use serde_json::Value;

fn schema(name: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(name: &str, v: &Value) {
    let val = schema(name);
    let errors: Vec<String> = val.iter_errors(v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{name} schema rejects {v}:\n{}", errors.join("\n"));
}

fn read(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn schemas_validate_files_and_json_output_of_a_real_run() {
    let ws = Ws::with_config(Some("[defaults]\nmax_retries = 0\n[health]\nbreaker_failures = 0\n"));
    let good = ws.spawn(
        "W",
        &["sh", "-c", "corral report --status active --progress 0.5 --phase p --milestone m --finding '{\"key\":\"k\",\"value\":1}' && \
          corral handoff --finding done --decision 'keep it' --memory '{\"name\":\"lesson\"}' && corral report --status complete --progress 1"],
    );
    let bad = ws.spawn("W", &["sh", "-c", "corral report --status failed --finding boom; exit 4"]);
    ws.wait_state(&good, &["complete"], SECS(10));
    ws.wait_state(&bad, &["escalated"], SECS(10));
    for e in std::fs::read_dir(ws.data.join("agent-status")).unwrap().flatten() {
        check("status-file", &read(&e.path()));
    }
    let handoffs: Vec<_> = std::fs::read_dir(ws.data.join("handoffs")).unwrap().flatten().collect();
    assert!(!handoffs.is_empty());
    for e in handoffs {
        check("handoff", &read(&e.path()));
    }
    check("spawn-registry", &read(&ws.data.join("spawn-registry.json")));
    check("status", &ws.json(&["status", "--json"]));
    check("show", &ws.json(&["show", &good, "--json"]));
    check("show", &ws.json(&["show", &bad, "--json"]));
    check("daemon-status", &ws.json(&["daemon", "status", "--json"]));
    check("health", &ws.json(&["health", "--json"]));
    check("escalations", &ws.json(&["escalations", "--all", "--json"]));
    check("memory", &ws.json(&["memory", "--json"]));
    let o = ws.run(&["aggregate", "--json"]);
    check("aggregate", &serde_json::from_slice(&o.stdout).unwrap());
    for line in ws.ok(&["events"]).lines() {
        check("event", &serde_json::from_str(line).unwrap());
    }
    let o = ws.run(&["wait", "--all", "--json"]);
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        check("agent", &serde_json::from_str(line).unwrap());
    }
    // and the schemas are not vacuous: a wrong status file fails
    let v = schema("status-file");
    assert!(!v.is_valid(&serde_json::json!({"agentId": "a", "status": "running"})));
    assert!(!v.is_valid(&serde_json::json!({"agentId": "a", "status": "active", "progress": 2.0})));
}

#[test]
fn completions_and_man_page_generate() {
    let ws = Ws::bare();
    // The scripts ask the binary itself (COMPLETE=<shell>), which knows every command.
    for shell in ["bash", "zsh", "fish"] {
        let out = ws.ok(&["completions", shell]);
        assert!(
            out.contains(&format!("COMPLETE=\"{shell}\"")) || out.contains(&format!("COMPLETE={shell}")),
            "{shell}: {out}"
        );
    }
    let o = ws.cmd(&["--", "corral", ""]).env("COMPLETE", "fish").output().unwrap();
    let offered = String::from_utf8_lossy(&o.stdout);
    assert!(offered.contains("spawn") && offered.contains("escalations"), "{offered}");
    let man = ws.ok(&["man"]);
    assert!(man.contains(".TH corral 1") && man.contains("spawn"), "{man}");
    assert!(!ws.data.exists(), "generating docs must not create a data dir");
}
