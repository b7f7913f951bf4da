//! Unattended scenarios: faces. A typo in `corral.toml` locks nobody out of a running
//! fleet: every read command (and kill, resolve, wait, daemon stop) works on the running
//! supervisor's last good configuration and says why once; only what needs the new file
//! refuses. A role nobody configured is warned about with the nearest known one (refused
//! under `strict_roles`); an idempotency key reused for another request is refused. The
//! same through MCP.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Output, Stdio};

const GOOD: &str = "[health]\nbreaker_failures = 0\nmax_concurrent = 50\n";
/// Line 3 holds the typo.
const BROKEN: &str = "[health]\nbreaker_failures = 0\nmax_concurrent = 0\n";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed (exit `code`) and warn exactly once about the file.
fn warned(ws: &Ws, args: &[&str], code: i32, at: &str) -> Output {
    let o = ws.run(args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "corral {args:?}: {e}");
    assert_eq!(e.matches("warning: ").count(), 1, "corral {args:?} must warn once: {e}");
    assert!(e.contains(at), "corral {args:?} must name {at}: {e}");
    o
}

#[test]
fn a_broken_config_locks_no_read_command_out() {
    let ws = Ws::with_config(Some(GOOD));
    let done = ws.spawn("W", &["sh", "-c", "echo hello from done"]);
    ws.wait_state(&done, &["complete"], SECS(10));
    let failed = ws.ok(&["spawn", "--role", "W", "--task", "t", "--max-retries", "0", "--", "sh", "-c", "exit 3"]);
    let failed = failed.trim().to_string();
    ws.wait_state(&failed, &["escalated"], SECS(10));
    // An agent that keeps reporting: its reports must go on while the file is broken.
    let ticker =
        "i=0; while :; do i=$((i+1)); corral report --phase tick$i 2>&1 || echo REPORT-FAILED; sleep 0.1; done";
    let runner = ws.spawn("W", &["sh", "-c", ticker]);
    assert!(wait_until(SECS(10), || ws.agent(&runner)["phase"].as_str().is_some_and(|p| p.starts_with("tick"))));
    let pid = ws.daemon_pid();

    let file = ws.path().join("corral.toml");
    std::fs::write(&file, BROKEN).unwrap();
    let at = format!("{}:3: key `health.max_concurrent`", file.display());
    let running = format!(
        "{at}: 0 can never work: nothing would ever start; use 1 or more; using the running supervisor's last good configuration"
    );

    let status = warned(&ws, &["status", "--json"], 0, &running);
    assert_eq!(serde_json::from_slice::<Value>(&status.stdout).unwrap().as_array().unwrap().len(), 3);
    let show = warned(&ws, &["show", &done, "--json"], 0, &at);
    assert_eq!(serde_json::from_slice::<Value>(&show.stdout).unwrap()["status"], "complete");
    let logs = warned(&ws, &["logs", &done], 0, &at);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("hello from done"));
    let wait = warned(&ws, &["wait", &done, "--timeout", "10s"], 0, &at);
    assert!(String::from_utf8_lossy(&wait.stdout).contains(&done));
    let events = warned(&ws, &["events", "--agent", &done], 0, &at);
    assert!(String::from_utf8_lossy(&events.stdout).contains("spawned"));
    let health = warned(&ws, &["health", "--json"], 0, &at);
    let health: Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["maxConcurrent"], 50, "the last good configuration is in force: {health}");
    let list = warned(&ws, &["escalations", "--json"], 0, &at);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let n = list[0]["n"].as_u64().unwrap_or_else(|| panic!("an open escalation: {list}")).to_string();
    warned(&ws, &["escalations", "resolve", &n, "--note", "seen"], 0, &at);
    let phase = |o: &Output| {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["phase"].as_str().unwrap_or_default().trim_start_matches("tick").parse::<u64>().unwrap_or(0)
    };
    let first = phase(&warned(&ws, &["status", &runner, "--json"], 0, &at));
    let mut later = first;
    assert!(wait_until(SECS(10), || {
        later = phase(&ws.run(&["status", &runner, "--json"]));
        later > first + 3
    }));
    let log = String::from_utf8(warned(&ws, &["logs", &runner], 0, &at).stdout).unwrap();
    let output: Vec<&str> = log.lines().filter(|l| !l.starts_with("=== corral:")).collect();
    assert!(output.iter().all(|l| l.trim().is_empty()), "the agent's reports went on silently: {log}");
    warned(&ws, &["kill", &runner, "--grace", "1s"], 0, &at);
    assert_eq!(ws.agent(&runner)["status"], "killed");
    warned(&ws, &["daemon", "status"], 0, &at);

    // What needs the file as it is now refuses, and writes nothing.
    let before = ws.registry().as_array().unwrap().len();
    let spawn = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    assert_eq!(spawn.status.code(), Some(2), "{}", stderr(&spawn));
    assert!(stderr(&spawn).contains(&at) && !stderr(&spawn).contains("warning"), "{}", stderr(&spawn));
    assert_eq!(ws.registry().as_array().unwrap().len(), before);
    assert_eq!(ws.daemon_pid(), pid, "the supervisor kept serving");

    // Stopped: reads still see what is on disk, through a supervisor started on the last
    // good copy, which refuses spawns while the file stays broken.
    warned(&ws, &["daemon", "stop"], 0, &running);
    let status = warned(&ws, &["status", "--json"], 0, &format!("{at}: 0 can never work"));
    assert_eq!(serde_json::from_slice::<Value>(&status.stdout).unwrap().as_array().unwrap().len(), 3);
    let health: Value = serde_json::from_slice(&warned(&ws, &["health", "--json"], 0, &at).stdout).unwrap();
    assert_eq!(health["maxConcurrent"], 50, "{health}");
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("corral.toml"), GOOD).unwrap();
    let data = ws.data.display().to_string();
    let o = ws
        .cmd(&["--data-dir", &data, "spawn", "--role", "W", "--task", "t", "--", "true"])
        .current_dir(other.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a supervisor on the last good copy refuses spawns: {}", stderr(&o));
    // Starting a supervisor by hand needs the file as it is now.
    warned(&ws, &["daemon", "stop"], 0, &at);
    let start = ws.run(&["daemon"]);
    assert_eq!(start.status.code(), Some(2), "{}", stderr(&start));
    assert!(stderr(&start).contains(&at), "{}", stderr(&start));
    assert_eq!(ws.run(&["daemon", "status"]).status.code(), Some(3), "no supervisor was started");

    // Fixed: everything as before, without a word.
    std::fs::write(&file, GOOD).unwrap();
    let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    assert!(o.status.success() && !stderr(&o).contains(&file.display().to_string()), "{}", stderr(&o));
    println!(
        "UNATTENDED faces-broken-config reads_ok=14 agent_reports_failed=0 spawn_refused=1 start_refused=1 \
         supervisor_restarts_while_broken=0"
    );
}

#[test]
fn unknown_roles_are_warned_and_strict_roles_refuses_them() {
    let ws = Ws::with_config(Some(&format!("{GOOD}[roles.REVIEWER]\nmax_retries = 0\n")));
    let spawn = |role: &str| ws.run(&["spawn", "--role", role, "--task", "t", "--", "true"]);
    let typo = spawn("IMPLEMNTER");
    assert!(typo.status.success(), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("warning: role IMPLEMNTER is neither configured"), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("did you mean IMPLEMENTER?"), "{}", stderr(&typo));
    let near = spawn("REVIEWR");
    assert!(near.status.success() && stderr(&near).contains("did you mean REVIEWER?"), "{}", stderr(&near));
    let far = spawn("ZEBRA");
    assert!(far.status.success() && stderr(&far).contains("warning: role ZEBRA"), "{}", stderr(&far));
    assert!(!stderr(&far).contains("did you mean"), "{}", stderr(&far));
    for known in ["IMPLEMENTER", "REVIEWER"] {
        let o = spawn(known);
        assert!(o.status.success() && !stderr(&o).contains("warning"), "{known}: {}", stderr(&o));
    }
    let before = ws.registry().as_array().unwrap().len();
    assert_eq!(before, 5);

    std::fs::write(ws.path().join("corral.toml"), format!("strict_roles = true\n{GOOD}[roles.REVIEWER]\n")).unwrap();
    let strict = spawn("IMPLEMNTER");
    assert_eq!(strict.status.code(), Some(2), "{}", stderr(&strict));
    assert!(stderr(&strict).contains("did you mean IMPLEMENTER?") && stderr(&strict).contains("strict_roles"));
    assert_eq!(ws.registry().as_array().unwrap().len(), before, "nothing written");
    assert!(spawn("CLEANER").status.success(), "the seed's roles stay allowed");
    println!("UNATTENDED faces-unknown-role warned=3 suggested=2 strict_refused=1 written_when_refused=0");
}

#[test]
fn an_idempotency_key_reused_for_another_request_is_refused() {
    let ws = Ws::with_config(Some(GOOD));
    let spawn = |role: &str, task: &str, cmd: &[&str]| {
        let mut args = vec!["spawn", "--role", role, "--task", task, "--idempotency-key", "k1", "--"];
        args.extend_from_slice(cmd);
        ws.run(&args)
    };
    let first = spawn("W", "t1", &["true"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let id = String::from_utf8_lossy(&first.stdout).trim().to_string();
    let again = spawn("W", "t1", &["true"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id, "the same request gets the same agent");
    let cases = [
        ("W", "t2", &["true"][..], "task"),
        ("W", "t1", &["false"][..], "command"),
        ("V", "t1", &["true"][..], "role"),
    ];
    for (role, task, cmd, what) in cases {
        let o = spawn(role, task, cmd);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {e}");
        assert!(e.contains(&format!("already belongs to {id}")) && e.contains(what), "{what}: {e}");
        assert!(o.stdout.is_empty(), "{what}: no id printed");
    }
    assert_eq!(ws.registry().as_array().unwrap().len(), 1, "nothing else was spawned");
    println!("UNATTENDED faces-idempotency same_request_same_agent=1 mismatches_refused=3 spawned_extra=0");
}

/// `python3 tests/mcp/<name> <out>` in the workspace; the JSON it wrote.
fn run_py(ws: &Ws, name: &str) -> Value {
    let out = ws.path().join("py.out.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp").join(name);
    let mut py = std::process::Command::new("python3");
    py.arg(script).arg(&out).current_dir(ws.path()).stdin(Stdio::null());
    for (k, v) in ws.cmd(&[]).get_envs() {
        match v {
            Some(v) => py.env(k, v),
            None => py.env_remove(k),
        };
    }
    let o = py.output().expect("python3 runs");
    assert!(o.status.success(), "{name}: {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

#[test]
fn over_mcp_unknown_roles_warn_strict_roles_refuses_and_keys_are_checked() {
    let config = format!("{GOOD}[mcp]\nallow_raw_commands = true\n[roles.REVIEWER]\ncommand = [\"true\"]\n");
    let ws = Ws::with_config(Some(&config));
    let seen = run_py(&ws, "roles_and_keys.py");
    let warning = seen["typo"]["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("did you mean IMPLEMENTER?"), "{seen}");
    assert!(seen["known"].get("warning").is_none(), "{seen}");
    assert_eq!(seen["first"]["agentId"], seen["again"]["agentId"]);
    let id = seen["first"]["agentId"].as_str().unwrap();
    let other = seen["other_task"].as_str().unwrap();
    assert!(other.contains(&format!("already belongs to {id}")) && other.contains("task"), "{other}");
    let strict = seen["strict"].as_str().unwrap();
    assert!(strict.contains("strict_roles") && strict.contains("did you mean IMPLEMENTER?"), "{strict}");
    assert_eq!(seen["broken_list"]["agents"].as_array().map(Vec::len), Some(3), "{seen}");
    let broken = seen["broken_spawn"].as_str().unwrap();
    assert!(broken.contains("corral.toml:4:") && broken.contains("health.max_concurrent"), "{broken}");
    assert_eq!(ws.registry().as_array().unwrap().len(), 3, "the refused spawns wrote nothing");
    println!(
        "UNATTENDED faces-mcp warned=1 key_mismatch_refused=1 strict_refused=1 broken_reads_ok=1 written_when_refused=0"
    );
}
