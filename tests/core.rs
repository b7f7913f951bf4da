//! The core promises, shown by the real binary against real processes.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn spawn_returns_while_agent_runs_and_status_lists_pid() {
    let ws = Ws::new();
    let out = ws.run(&["spawn", "--role", "PLANNER", "--task", "sleep", "--", "sleep", "30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap();
    // stdout is exactly the id and a newline, so `id=$(corral spawn ...)` works
    assert_eq!(id.trim(), "agent-001-PLANNER");
    assert_eq!(id.lines().count(), 1);
    let a = ws.agent("agent-001-PLANNER");
    assert_eq!(a["status"], "running");
    let pid = a["pid"].as_i64().expect("pid") as i32;
    assert!(alive(pid), "agent pid {pid} not running");
    // its own process group
    assert_eq!(group_members(pid), vec![pid]);
    let env = std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap();
    for var in ["CORRAL_AGENT_ID=agent-001-PLANNER", "CORRAL_ROLE=PLANNER", "CORRAL_ATTEMPT=1", "CORRAL_TASK=sleep"] {
        assert!(env.split('\0').any(|e| e == var), "{var} missing from agent env");
    }
    for var in ["CORRAL_DATA_DIR=", "CORRAL_STATUS_FILE=", "CORRAL_HANDOFF_FILE=", "CORRAL_CONTEXT_FILE="] {
        assert!(env.split('\0').any(|e| e.starts_with(var)), "{var} missing from agent env");
    }
    // stdin is /dev/null
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap().to_str(), Some("/dev/null"));
    let ctx = std::fs::read_to_string(ws.data.join("context/agent-001-PLANNER.md")).unwrap();
    assert!(ctx.contains("## Task") && ctx.contains("sleep") && ctx.contains("corral report"), "{ctx}");
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

#[test]
fn report_and_handoff_work_with_the_seed_scripts() {
    let ws = Ws::with_config(Some("data_dir = \"data\"\n"));
    let mut ids = Vec::new();
    for (i, phase) in ["research", "implementation", "audit"].iter().enumerate() {
        let script = format!(
            "corral report --status active --progress 0.{} --phase {phase} --milestone m{i} && \
             corral report --finding 'saw thing {i}' && \
             corral handoff --finding 'result {i}' --finding '{{\"key\":\"port\",\"value\":808{i}}}' --decision 'use X' && \
             corral report --status complete --progress 0.9 --phase {phase} --milestone m{i} && sleep 30",
            i + 4
        );
        ids.push(ws.spawn("IMPLEMENTER", &sh(&script)));
    }
    for id in &ids {
        assert!(wait_until(SECS(10), || ws.agent(id)["reportedStatus"] == "complete"), "{id} never reported");
        let status: Value =
            serde_json::from_str(&std::fs::read_to_string(ws.data.join(format!("agent-status/{id}.json"))).unwrap())
                .unwrap();
        for f in ["agentId", "role", "status", "progress", "phase", "milestone", "lastUpdate", "findings"] {
            assert!(status.get(f).is_some(), "status file of {id} lacks {f}: {status}");
        }
        assert_eq!(status["findings"][0], format!("saw thing {}", &id[6..9].parse::<usize>().unwrap() - 1));
        assert!(
            wait_until(SECS(5), || !ws.show(id)["handoffs"].as_array().unwrap().is_empty()),
            "handoff of {id} not seen"
        );
    }
    // The seed's own monitor script, unchanged, from the workspace root.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed/monitor-agents.sh");
    let out = Command::new("bash").arg(&script).current_dir(ws.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for (i, (id, phase)) in ids.iter().zip(["research", "implementation", "audit"]).enumerate() {
        assert!(text.contains(&format!("Agent: {id}")), "{text}");
        assert!(text.contains(&format!("Progress: 0.9 ({phase} / m{i})")), "{text}");
    }
    assert_eq!(text.matches("Status: complete").count(), 3, "{text}");
    // The seed's aggregation loop: fromAgent and deliverables.findings[] of every handoff.
    let agg = r#"for handoff in $(ls -1 data/handoffs/*-IMPLEMENTER-to-ORCHESTRATOR.json); do
        echo "from $(jq -r '.fromAgent' "$handoff")"; jq -r '.deliverables.findings[]' "$handoff"; done"#;
    let out = Command::new("bash").args(["-c", agg]).current_dir(ws.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for (i, id) in ids.iter().enumerate() {
        assert!(text.contains(&format!("from {id}")), "{text}");
        assert!(text.contains(&format!("result {i}")), "{text}");
        assert!(text.contains(&format!("\"value\": 808{i}")) || text.contains(&format!("\"value\":808{i}")), "{text}");
    }
}

fn jq_ids(ws: &Ws) -> Vec<String> {
    let out = Command::new("jq")
        .args(["-r", ".[] | .agentId", "spawn-registry.json"])
        .current_dir(&ws.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "jq failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn registry_export_is_valid_json_after_every_change() {
    let ws = Ws::new();
    let a = ws.spawn("R", &["sleep", "30"]);
    assert_eq!(jq_ids(&ws), vec![a.clone()]);
    let b = ws.spawn("R", &["sh", "-c", "exit 3"]);
    assert_eq!(jq_ids(&ws), vec![a.clone(), b.clone()]);
    ws.wait_state(&b, &["escalated"], SECS(10));
    assert!(wait_until(SECS(5), || ws.registry()[1]["status"] == "escalated"));
    assert_eq!(ws.registry()[1]["exitCode"], 3);
    ws.ok(&["kill", &a]);
    assert_eq!(jq_ids(&ws), vec![a.clone(), b.clone()]);
    assert_eq!(ws.registry()[0]["status"], "killed");
    let c = ws.spawn("R", &["true"]);
    ws.wait_state(&c, &["complete"], SECS(10));
    assert_eq!(jq_ids(&ws), vec![a, b, c]);
    let r = &ws.registry()[2];
    for f in ["agentId", "spawnedAt", "role", "task", "expectedHandoff", "status", "attempt"] {
        assert!(r.get(f).is_some(), "registry record lacks {f}: {r}");
    }
}

#[test]
fn fifty_parallel_spawns_get_distinct_ids() {
    let ws = Ws::new();
    let children: Vec<_> = (0..50)
        .map(|i| {
            ws.cmd(&["spawn", "--role", "W", "--task", &format!("task {i}"), "--", "true"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50, "duplicate ids handed out");
    assert_eq!(ws.status().len(), 50);
    let mut reg = jq_ids(&ws);
    reg.sort();
    assert_eq!(reg, ids);
    // only one supervisor was started
    let log = std::fs::read_to_string(ws.data.join("daemon.log")).unwrap();
    assert_eq!(log.matches("started, pid").count(), 1, "{log}");
}

#[test]
fn supervisor_kill_9_loses_no_agent_and_no_exit_code() {
    let ws = Ws::new();
    let ids: Vec<String> = (0..20).map(|_| ws.spawn("R", &sh("sleep 3; exit 7"))).collect();
    let pids: Vec<i32> = ws.status().iter().map(|a| a["pid"].as_i64().unwrap() as i32).collect();
    assert_eq!(pids.len(), 20);
    let daemon = ws.daemon_pid();
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(daemon)), "supervisor survived kill -9");
    // every agent keeps running without its supervisor
    assert!(pids.iter().all(|p| alive(*p)), "an agent died with the supervisor");
    assert!(wait_until(SECS(15), || pids.iter().all(|p| !alive(*p))), "agents did not finish");
    // the next command starts a new supervisor, which knows every outcome
    for id in &ids {
        let s = ws.show(id);
        assert_eq!(s["status"], "escalated", "{s}");
        let attempts = s["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{id} was started twice: {s}");
        assert_eq!(attempts[0]["exitCode"], 7, "{s}");
        let log = std::fs::read_to_string(ws.data.join(format!("logs/{id}.log"))).unwrap();
        assert_eq!(log.matches("=== corral:").count(), 1, "{log}");
    }
    assert_ne!(ws.daemon_pid(), daemon);
}

#[test]
fn kill_reaches_children_and_grandchildren() {
    let ws = Ws::new();
    let id = ws.spawn("R", &sh("sleep 1000 & sh -c 'sleep 1000 & sleep 1000' & sleep 1000"));
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    assert!(wait_until(SECS(5), || group_members(pgid).len() >= 5), "group: {:?}", group_members(pgid));
    let members = group_members(pgid);
    ws.ok(&["kill", &id, "--grace", "2s"]);
    assert!(group_members(pgid).is_empty(), "survivors: {:?}", group_members(pgid));
    assert!(members.iter().all(|p| !alive(*p)));
    let s = ws.show(&id);
    assert_eq!(s["status"], "killed");
    assert_eq!(s["attempts"].as_array().unwrap().len(), 1, "a kill must not be retried");
}

#[test]
fn kill_escalates_to_sigkill_after_grace() {
    let ws = Ws::new();
    let id = ws.spawn("R", &sh("trap '' TERM; sleep 1000 & trap '' TERM; while :; do sleep 1; done"));
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    assert!(wait_until(SECS(5), || group_members(pgid).len() >= 2));
    ws.ok(&["kill", &id, "--grace", "300ms"]);
    assert!(wait_until(SECS(3), || group_members(pgid).is_empty()), "survivors: {:?}", group_members(pgid));
    let s = ws.show(&id);
    assert_eq!(s["attempts"][0]["signal"], 9, "{s}");
}

#[test]
fn bad_status_files_are_reported_for_that_agent_alone() {
    let ws = Ws::new();
    let writes: [(&str, &str); 6] = [
        (
            "good",
            r#"printf '{"agentId":"%s","status":"active","progress":0.3}' "$CORRAL_AGENT_ID" > "$CORRAL_STATUS_FILE""#,
        ),
        ("torn", r#"printf '{"agentId":"%s","status":"act' "$CORRAL_AGENT_ID" > "$CORRAL_STATUS_FILE""#),
        ("notjson", r#"echo 'hello there' > "$CORRAL_STATUS_FILE""#),
        (
            "shape",
            r#"printf '{"agentId":"%s","status":"active","progress":"half"}' "$CORRAL_AGENT_ID" > "$CORRAL_STATUS_FILE""#,
        ),
        ("binary", r#"head -c 4096 /dev/urandom > "$CORRAL_STATUS_FILE""#),
        ("huge", r#"head -c 52428800 /dev/zero | tr '\0' ' ' > "$CORRAL_STATUS_FILE""#),
    ];

    let mut ids = Vec::new();
    for (name, w) in writes {
        let script = format!("{w}; sleep 30");
        ids.push((
            name,
            ws.ok(&["spawn", "--role", "R", "--task", name, "--id", name, "--", "sh", "-c", &script])
                .trim()
                .to_string(),
        ));
    }
    let daemon_before = ws.daemon_pid();
    for (name, id) in &ids {
        let want_unreadable = *name != "good";
        assert!(
            wait_until(SECS(20), || {
                let a = ws.agent(id);
                let un = a["anomalies"].as_array().unwrap().iter().any(|x| x == "UNREADABLE");
                if want_unreadable { un } else { a["reportedStatus"] == "active" }
            }),
            "{name}: {}",
            ws.agent(id)
        );
    }
    let all = ws.status();
    assert_eq!(all.len(), 6);
    let reason = |id: &str| ws.show(id)["unreadable"].as_str().unwrap_or("").to_string();
    assert!(reason("torn").contains("not valid JSON"), "{}", reason("torn"));
    assert!(reason("notjson").contains("not valid JSON"), "{}", reason("notjson"));
    assert!(reason("shape").contains("`progress`"), "{}", reason("shape"));
    assert!(
        reason("binary").contains("not text") || reason("binary").contains("not valid JSON"),
        "{}",
        reason("binary")
    );
    assert!(reason("huge").contains("limit"), "{}", reason("huge"));
    assert_eq!(ws.agent("good")["progress"], 0.3);
    // the human view marks it too, and the supervisor is the same process
    let text = ws.ok(&["status"]);
    assert_eq!(text.matches("UNREADABLE").count(), 5, "{text}");
    let show = ws.ok(&["show", "torn"]);
    assert!(show.contains("UNREADABLE:") && show.contains("torn"), "{show}");
    assert_eq!(ws.daemon_pid(), daemon_before);
    // a later good write clears it
    std::fs::write(ws.data.join("agent-status/torn.json"), r#"{"agentId":"torn","status":"active","progress":0.9}"#)
        .unwrap();
    assert!(wait_until(SECS(5), || ws.agent("torn")["anomalies"].as_array().unwrap().is_empty()));
}

#[test]
fn bad_ids_roles_and_tasks_are_rejected_with_exit_2_and_nothing_written() {
    let ws = Ws::new();
    let cases: [(&[&str], &str); 5] = [
        (&["spawn", "--role", "R", "--task", "t", "--id", "../../etc/x", "--", "true"], "agent id"),
        (&["spawn", "--role", "A/B", "--task", "t", "--", "true"], "role"),
        (&["spawn", "--role", "R", "--task", "", "--", "true"], "task"),
        (&["spawn", "--role", "R", "--task", "   ", "--", "true"], "task"),
        (&["spawn", "--role", "R", "--task", "t", "--after", "../x", "--", "true"], "--after"),
    ];
    for (args, what) in cases {
        let o = ws.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: message does not say what is wrong: {err}");
        assert!(o.stdout.is_empty());
    }
    assert!(!ws.data.exists(), "something was written for rejected input");
    // once a supervisor runs, the same checks hold on its side too, and nothing is recorded
    ws.spawn("R", &["true"]);
    let o = ws.run(&["spawn", "--role", "R", "--task", "t", "--id", "agent-001-R", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "duplicate id accepted");
    let o = ws.run(&["spawn", "--role", "R", "--task", "t", "--after", "nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(ws.status().len(), 1);
    assert!(!std::path::Path::new("/etc/x").exists());
}

#[test]
fn control_socket_is_owner_only() {
    let ws = Ws::new();
    ws.spawn("R", &["true"]);
    let d = ws.json(&["daemon", "status", "--json"]);
    let socket = d["socket"].as_str().unwrap();
    let mode = std::fs::metadata(socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {:o}", mode & 0o777);
    assert!(d["pid"].as_i64().unwrap() > 1);
    let db = std::fs::metadata(ws.data.join("corral.db")).unwrap().permissions().mode();
    assert_eq!(db & 0o077, 0, "registry readable by others: {:o}", db);
}

#[test]
fn hostile_files_never_block_the_supervisor() {
    let ws = Ws::new();
    // A FIFO as the status file, a device as the handoff, a FIFO as the log and the inbox.
    let script = r#"mkfifo "$CORRAL_STATUS_FILE"; ln -s /dev/zero "$CORRAL_HANDOFF_FILE";
        rm -f "$CORRAL_DATA_DIR/inbox/$CORRAL_AGENT_ID.md"; mkfifo "$CORRAL_DATA_DIR/inbox/$CORRAL_AGENT_ID.md"; sleep 30"#;
    let id = ws.spawn("R", &["sh", "-c", script]);
    let other = ws.spawn("R", &["sh", "-c", "corral report --status active --progress 0.4; sleep 30"]);
    assert!(
        wait_until(SECS(10), || ws.agent(&id)["anomalies"].as_array().unwrap().iter().any(|a| a == "UNREADABLE")),
        "{}",
        ws.agent(&id)
    );
    assert!(ws.show(&id)["unreadable"].as_str().unwrap().contains("not a regular file"));
    // a message to a FIFO inbox goes to a fresh inbox, at once
    let o = ws.run(&["tell", &id, "hello"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let inbox = ws.data.join(format!("inbox/{id}.md"));
    assert!(std::fs::symlink_metadata(&inbox).unwrap().is_file());
    // the supervisor keeps serving everyone else
    assert!(wait_until(SECS(10), || ws.agent(&other)["progress"] == 0.4));
    ws.ok(&["kill", &id]);
    assert_eq!(ws.agent(&id)["status"], "killed");
}

#[test]
fn a_dropped_test_workspace_kills_its_own_leftover_agents_only() {
    // The harness's cleanup finds leftovers by the data dir in their environment, never by
    // a recorded pid alone (pids are reused quickly on small pid_max machines).
    let ws = Ws::new();
    let other = Ws::new();
    let id = ws.spawn("R", &sh("sleep 1000 & sleep 1000"));
    let mine = other.spawn("R", &sh("sleep 1000"));
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    let theirs = other.agent(&mine)["pid"].as_i64().unwrap() as i32;
    assert!(wait_until(SECS(5), || group_members(pgid).len() >= 2));
    assert_eq!(common::processes_of(other.path(), &[pgid]), Vec::<i32>::new());
    drop(ws);
    assert!(wait_until(SECS(5), || group_members(pgid).is_empty()), "left: {:?}", group_members(pgid));
    assert!(alive(theirs), "another workspace's agent was killed");
}
