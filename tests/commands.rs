//! The other core commands: logs, events, --after, timeouts, init, daemon lifecycle,
//! agent-side errors.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

#[test]
fn logs_capture_output_and_follow_until_the_agent_ends() {
    let ws = Ws::new();
    let id = ws.spawn("R", &["sh", "-c", "echo out-line; echo err-line >&2"]);
    ws.wait_state(&id, &["complete"], SECS(10));
    let out = ws.ok(&["logs", &id]);
    assert!(out.contains("out-line") && out.contains("err-line") && out.contains("attempt 1"), "{out}");

    let id = ws.spawn("R", &["sh", "-c", "echo first; sleep 0.5; echo second; sleep 0.5; echo third"]);
    let o = ws.cmd(&["logs", "-f", &id]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    // -f returned on its own, after the agent ended, with everything it wrote
    for l in ["first", "second", "third", "exited with code 0"] {
        assert!(text.contains(l), "{text}");
    }
    assert_eq!(ws.run(&["logs", "nobody"]).status.code(), Some(2));
}

#[test]
fn events_stream_as_json_lines_and_follow() {
    let ws = Ws::new();
    let a = ws.spawn("R", &["true"]);
    ws.wait_state(&a, &["complete"], SECS(10));
    let out = ws.ok(&["events"]);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["spawned", "started", "exited", "complete"], "{out}");

    let mut follow = ws.cmd(&["events", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    for _ in 0..4 {
        lines.next().unwrap().unwrap(); // the backlog
    }
    let b = ws.spawn("R", &["sh", "-c", "corral report --progress 0.5 --phase p --milestone m"]);
    let mut seen = Vec::new();
    while !seen.iter().any(|k| k == "complete") {
        let l = lines.next().expect("stream open").unwrap();
        let e: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(e["agentId"], b.as_str());
        seen.push(e["kind"].as_str().unwrap().to_string());
    }
    assert!(seen.contains(&"status".to_string()), "status write not seen as an event: {seen:?}");
    follow.kill().unwrap();
    let _ = follow.wait();
}

#[test]
fn after_queues_until_dependencies_complete() {
    let ws = Ws::new();
    let marker = ws.path().join("go");
    let first = ws.spawn("R", &["sh", "-c", &format!("while [ ! -e {} ]; do sleep 0.05; done", marker.display())]);
    let o = ws.run(&["spawn", "--role", "R", "--task", "second", "--after", &first, "--", "true"]);
    assert!(o.status.success());
    let second = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(String::from_utf8_lossy(&o.stderr).contains("queued"), "queued spawn does not say why");
    let q = ws.agent(&second);
    assert_eq!(q["status"], "queued");
    assert!(q["reason"].as_str().unwrap().contains(&first));
    assert!(ws.ok(&["status"]).contains("QUEUED: waiting for"));
    std::fs::write(&marker, "").unwrap();
    ws.wait_state(&second, &["complete"], SECS(10));

    // a failed dependency fails its dependents instead of leaving them queued forever
    let bad = ws.spawn("R", &["sh", "-c", "sleep 0.3; exit 1"]);
    let dep = ws.ok(&["spawn", "--role", "R", "--task", "t", "--after", &bad, "--", "true"]).trim().to_string();
    let s = ws.wait_state(&dep, &["failed"], SECS(10));
    assert!(s["reason"].as_str().unwrap().contains(&bad), "{s}");
    assert_eq!(ws.show(&dep)["attempts"].as_array().unwrap().len(), 0);
}

#[test]
fn attempt_timeout_kills_the_group() {
    let ws = Ws::new();
    let id = ws
        .ok(&[
            "spawn",
            "--role",
            "R",
            "--task",
            "t",
            "--timeout",
            "500ms",
            "--max-retries",
            "0",
            "--",
            "sh",
            "-c",
            "sleep 1000 & sleep 1000",
        ])
        .trim()
        .to_string();
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    let s = ws.wait_state(&id, &["escalated"], SECS(10));
    assert!(s["reason"].as_str().unwrap().contains("500ms"), "{s}");
    assert!(group_members(pgid).is_empty());
    let r = ws.registry();
    assert_eq!(r[0]["status"], "escalated");
    assert_eq!(ws.show(&id)["attempts"][0]["failureType"], "timeout");
}

#[test]
fn a_command_that_cannot_start_is_reported() {
    let ws = Ws::new();
    let o = ws.run(&["spawn", "--role", "R", "--task", "t", "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(1));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/program"), "{err}");
    // an exec failure is permanent: escalated to a human at once, never retried
    let s = ws.show(&id);
    assert_eq!(s["status"], "escalated");
    assert_eq!(s["attempts"].as_array().unwrap().len(), 1);
    assert!(s["attempts"][0]["reason"].as_str().unwrap().contains("could not start"), "{s}");
}

#[test]
fn daemon_stops_and_a_new_one_carries_on() {
    let ws = Ws::new();
    let id = ws.spawn("R", &["sleep", "1"]);
    let pid = ws.daemon_pid();
    let o = ws.run(&["daemon", "stop"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!alive(pid));
    let st = ws.run(&["daemon", "status", "--json"]);
    assert_eq!(st.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["running"], false);
    // the agent ran on without a supervisor; the next command finds its outcome
    let s = ws.wait_state(&id, &["complete", "running"], SECS(5));
    assert_ne!(ws.daemon_pid(), pid);
    if s["status"] == "running" {
        ws.wait_state(&id, &["complete"], SECS(10));
    }
    let events = ws.ok(&["events", "--agent", &id]);
    assert!(events.contains("reattached") || events.contains("\"complete\""), "{events}");
    // `corral daemon` on its own reports the running supervisor
    let o = ws.run(&["daemon"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("supervisor running"));
}

#[test]
fn init_writes_the_seed_role_table_and_roles_apply() {
    let ws = Ws::bare();
    let o = ws.run(&["init"]);
    assert!(o.status.success());
    let toml = std::fs::read_to_string(ws.path().join("corral.toml")).unwrap();
    for r in ["PLANNER", "IMPLEMENTER", "AUDITOR", "CLEANER"] {
        assert!(toml.contains(&format!("[roles.{r}]")), "{toml}");
    }
    assert!(ws.data.is_dir());
    assert_eq!(ws.run(&["init"]).status.code(), Some(1), "init overwrote an existing corral.toml");
    let id = ws.spawn("IMPLEMENTER", &["sleep", "5"]);
    let s = ws.show(&id);
    assert_eq!(s["attempts"][0]["timeout"], "30m");
    assert_eq!(s["maxRetries"], 2);
    ws.ok(&["kill", &id]);
    // no command and no template: exit 2 saying what to do
    let o = ws.run(&["spawn", "--role", "PLANNER", "--task", "t"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no command for role PLANNER"));
}

#[test]
fn role_command_templates_expand_per_attempt() {
    let ws = Ws::with_config(Some(
        "[roles.ECHO]\ncommand = [\"sh\", \"-c\", \"echo id={agent_id} role={role} task=$0; head -1 {context_file}\", \"{task}\"]\n",
    ));
    let o = ws.run(&["spawn", "--role", "ECHO", "--task", "say $HOME; rm -rf /"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    ws.wait_state(&id, &["complete"], SECS(10));
    let log = ws.ok(&["logs", &id]);
    // the task reaches the agent as one argument, never through the shell's parser
    assert!(log.contains(&format!("id={id} role=ECHO task=say $HOME; rm -rf /")), "{log}");
    assert!(log.contains("# Delegation:"), "{log}");
}

#[test]
fn agent_side_commands_explain_bad_input() {
    let ws = Ws::new();
    let o = ws.run(&["report", "--progress", "0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("CORRAL_AGENT_ID"));
    let o = ws.run(&["report", "--agent", "a1", "--progress", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ws.run(&["report", "--agent", "a1", "--status", "running"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("spawned, active, blocked, complete, failed"));
    let f = ws.path().join("h.json");
    std::fs::write(&f, r#"{"fromAgent":"a1","deliverables":{"files":[3]}}"#).unwrap();
    let o = ws.run(&["handoff", "--agent", "a1", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("deliverables.files[0]"));
    std::fs::write(&f, r#"{"deliverables":{"files":["x"]}}"#).unwrap();
    ws.ok(&["handoff", "--agent", "a1", "--file", f.to_str().unwrap()]);
    let names: Vec<_> = std::fs::read_dir(ws.data.join("handoffs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with("handoff-") && names[0].ends_with("-a1-to-ORCHESTRATOR.json"), "{names:?}");
}

#[test]
fn concurrent_reports_keep_every_finding() {
    let ws = Ws::new();
    let id = "agent-001-R";
    // 20 reporters at once, 5 reports each: every read-merge-write overlaps others.
    let reporters: Vec<_> = (0..20)
        .map(|i| {
            let cmds: Vec<_> = (0..5)
                .map(|j| {
                    let mut c = ws.cmd(&["report", "--agent", id, "--finding", &format!("f{i}-{j}")]);
                    c.stdout(Stdio::null()).stderr(Stdio::piped());
                    c
                })
                .collect();
            std::thread::spawn(move || {
                for mut c in cmds {
                    let o = c.output().unwrap();
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            })
        })
        .collect();
    for r in reporters {
        r.join().unwrap();
    }
    let text = std::fs::read_to_string(ws.data.join("agent-status").join(format!("{id}.json"))).unwrap();
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut got: Vec<&str> = s["findings"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..20).flat_map(|i| (0..5).map(move |j| format!("f{i}-{j}"))).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn reported_progress_survives_later_reports_exactly() {
    let ws = Ws::new();
    let file = ws.data.join("agent-status").join("agent-001-R.json");
    // Shortest round-trip decimals that a fast, inexact float parser reads one bit off.
    for p in ["0.1", "0.9856906946328695", "0.21291890726713458"] {
        ws.ok(&["report", "--agent", "agent-001-R", "--progress", p]);
        ws.ok(&["report", "--agent", "agent-001-R", "--finding", "rewrites the file"]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(&format!("\"progress\": {p},")), "{text}");
    }
}

#[test]
fn a_directory_replaced_by_a_file_is_made_again_for_a_report() {
    let ws = Ws::new();
    std::fs::create_dir_all(&ws.data).unwrap();
    // The lock lives under run/; a plain file in its place is moved aside, never written.
    std::fs::write(ws.data.join("run"), "planted").unwrap();
    let o = ws.run(&["report", "--agent", "agent-001-R", "--finding", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(ws.data.join("run").is_dir());
    assert_eq!(std::fs::read_to_string(ws.data.join(".run.refused")).unwrap(), "planted");
}

#[test]
fn demo_runs_every_pattern_and_exits_0() {
    let ws = Ws::bare();
    let o = ws.cmd(&["demo"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for pattern in [
        "without waiting",
        "QUEUED: waiting for agent-001-PLANNER",
        "QUEUED: capacity",
        "reports active",
        "classified as crash -> retry",
        "RETRY 1 scheduled",
        "TIMEOUT",
        "classified as timeout -> retry",
        "timeout 3s",
        "ESCALATED to a human",
        "handed off",
        "aggregating the handoffs",
        "resolved by evidence: `8080`",
        "**UNRESOLVED**",
        "unresolved conflict on database",
        "BLOCKED: waiting on external API",
        "NEEDS A HUMAN",
        "the human answers agent-006-INTEGRATOR",
        "agent-006-INTEGRATOR is complete",
        "conflict on database: resolved by human: resolved by a human (escalation",
    ] {
        assert!(out.contains(pattern), "demo output lacks {pattern:?}:\n{out}");
    }
    // It ends with the unified report and beside it the run's timeline, and says where.
    let place = |start: &str| {
        let line = out.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start} in {out}"));
        std::path::PathBuf::from(line.rsplit(": ").next().unwrap())
    };
    let (report, path) = (place("the unified report"), place("timeline of the run"));
    assert_eq!(report.parent(), path.parent(), "the timeline is beside the report");
    let md = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{}: {e}", report.display()));
    assert!(md.contains("resolved by a human"), "{md}");
    let page = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    assert_eq!(page.matches("class=\"row\"").count(), 7, "one row per agent");
    for id in ["agent-001-PLANNER", "agent-005-REVIEWER", "agent-007-DOCS"] {
        assert!(page.contains(&format!("data-agent=\"{id}\"")), "{id}");
    }
    assert!(page.contains("class=\"mark escalation\"") && page.contains("class=\"gap backoff\""));
}
