//! Agent CLI adapters end to end: scripted fake agents named `claude` and `codex` print the
//! CLIs' own line shapes (tests/fixtures/adapters), and corral reads them as it would the
//! real CLIs' output.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters").join(format!("{name}.jsonl"))
}

/// A fake CLI at `<ws>/bin/<program>`: prints the fixture `fixture` line by line, then runs
/// `then` (shell) and exits with its status.
fn fake_cli(ws: &Ws, program: &str, fixture_name: &str, then: &str) -> String {
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(program);
    let script = format!(
        "#!/bin/sh\nwhile IFS= read -r l; do printf '%s\\n' \"$l\"; done < '{}'\n{then}\n",
        fixture(fixture_name).display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn the_program_name_chooses_the_adapter_and_the_flag_overrides_it() {
    let ws = Ws::with_config(Some(FAST));
    let claude = fake_cli(&ws, "claude", "claude-success", "exit 0");
    let codex = fake_cli(&ws, "codex", "codex-success", "exit 0");
    let a = ws.spawn("W", &[&claude, "-p", "x"]);
    let b = ws.spawn("W", &[&codex, "exec", "--json"]);
    let c = ws.spawn("W", &["sh", "-c", "true"]);
    let d = ws.ok(&["spawn", "--role", "W", "--task", "t", "--adapter", "none", "--", &claude]).trim().to_string();
    let e = ws
        .ok(&["spawn", "--role", "W", "--task", "t", "--adapter", "codex", "--", "sh", "-c", "true"])
        .trim()
        .to_string();
    for (id, want) in [(&a, "claude-code"), (&b, "codex"), (&c, "none"), (&d, "none"), (&e, "codex")] {
        assert_eq!(ws.agent(id)["adapter"], want, "{id}");
    }
    let bad = ws.run(&["spawn", "--role", "W", "--task", "t", "--adapter", "gemini", "--", "true"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown adapter is bad input");
}

#[test]
fn a_role_names_its_adapter_and_a_bad_name_is_a_config_error() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nadapter = \"claude-code\"\n")));
    let id = ws.spawn("W", &["sh", "-c", "true"]);
    assert_eq!(ws.agent(&id)["adapter"], "claude-code");
    let ws = Ws::with_config(Some("[roles.W]\nadapter = \"gemini\"\n"));
    let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corral.toml") && err.contains("claude-code, codex, none"), "{err}");
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

fn events(ws: &Ws, id: &str) -> Vec<serde_json::Value> {
    ws.ok(&["events", "--agent", id]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kinds(ws: &Ws, id: &str) -> Vec<String> {
    events(ws, id).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_claude_run_records_session_tokens_cost_turns_and_its_result() {
    let ws = Ws::with_config(Some(FAST));
    let claude = fake_cli(&ws, "claude", "claude-success", "exit 0");
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated", "retrying"], secs(15));
    assert_eq!(s["status"], "complete", "{s}");
    assert_eq!(s["sessionId"], "5f1c2a9e-7b7e-4d53-9a55-0f2d7b1c9e01");
    assert_eq!(s["costUsd"], 0.0123);
    assert_eq!(s["tokens"]["input"], 2500);
    assert_eq!(s["tokens"]["output"], 52);
    assert_eq!(s["turns"], 2);
    let show = ws.show(&id);
    let a = &show["attempts"][0];
    assert_eq!(a["sessionId"], "5f1c2a9e-7b7e-4d53-9a55-0f2d7b1c9e01");
    assert_eq!(a["result"]["ok"], true);
    assert_eq!(a["result"]["subtype"], "success");
    assert_eq!(a["result"]["text"], "Done: the report and the handoff are written.");
    assert_eq!(a["costUsd"], 0.0123);
    let k = kinds(&ws, &id);
    assert!(k.contains(&"result".to_string()) && k.contains(&"usage".to_string()), "{k:?}");
    let reg = ws.registry();
    let rec = reg.as_array().unwrap().iter().find(|r| r["agentId"] == id.as_str()).unwrap().clone();
    assert_eq!(rec["costUsd"], 0.0123, "{rec}");
    assert_eq!(rec["sessionId"], "5f1c2a9e-7b7e-4d53-9a55-0f2d7b1c9e01");
    assert!((ws.json(&["health", "--json"])["costUsd"].as_f64().unwrap() - 0.0123).abs() < 1e-9);
    let table = ws.ok(&["status"]);
    assert!(table.contains("COST") && table.contains("$0.0123"), "{table}");
    // Plain agents carry none of it.
    let plain = ws.spawn("W", &["sh", "-c", &format!("cat '{}'", fixture("claude-success").display())]);
    let p = ws.wait_state(&plain, &["complete"], secs(15));
    assert!(p.get("sessionId").is_none() && p.get("costUsd").is_none(), "{p}");
}

#[test]
fn an_error_result_after_exit_0_is_a_failure_and_so_is_no_result_at_all() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nmax_retries = 0\n")));
    let over = fake_cli(&ws, "claude", "claude-overloaded", "exit 0");
    let id = ws.spawn("W", &[&over, "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(15));
    assert_eq!(s["status"], "escalated", "{s}");
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["exitCode"], 0);
    assert_eq!(a["failureType"], "crash");
    assert_eq!(a["result"]["ok"], false);
    assert_eq!(a["result"]["apiErrorStatus"], 529);
    assert!(a["reason"].as_str().unwrap().contains("the CLI reported an error (API status 529)"), "{a}");

    let cut = fake_cli(&ws, "claude", "claude-no-result", "exit 0");
    let id = ws.spawn("W", &[&cut, "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(15));
    assert_ne!(s["status"], "complete", "{s}");
    let a = &ws.show(&id)["attempts"][0];
    assert!(a["reason"].as_str().unwrap().contains("ended without a result"), "{a}");
}

#[test]
fn overload_is_transient_and_retried() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nmax_retries = 1\n")));
    let marker = ws.path().join("tried");
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("claude");
    let script = format!(
        "#!/bin/sh\nif [ -e '{m}' ]; then cat '{ok}'; exit 0; fi\ntouch '{m}'\ncat '{bad}'\nexit 0\n",
        m = marker.display(),
        ok = fixture("claude-success").display(),
        bad = fixture("claude-overloaded").display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = ws.spawn("W", &[path.to_str().unwrap(), "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(15));
    assert_eq!(s["status"], "complete", "{s}");
    let show = ws.show(&id);
    assert_eq!(show["attempts"][0]["failureType"], "crash");
    assert!(show["attempts"][0]["action"].as_str().unwrap().starts_with("retry"), "{show}");
}

#[test]
fn a_process_lingering_after_its_result_is_stopped_after_result_grace_and_complete() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nresult_grace = \"300ms\"\n")));
    let claude = fake_cli(&ws, "claude", "claude-success", "sleep 60");
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated", "retrying"], secs(20));
    assert_eq!(s["status"], "complete", "{s}");
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["signal"], 15, "stopped with TERM: {a}");
    assert_eq!(a["result"]["ok"], true);
}

#[test]
fn a_cost_over_max_cost_usd_stops_and_escalates() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nmax_cost_usd = 0.01\nmax_retries = 3\n")));
    let claude = fake_cli(&ws, "claude", "claude-success", "sleep 60");
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(20));
    assert_eq!(s["status"], "escalated", "{s}");
    assert_eq!(s["attempt"], 1, "no retry: {s}");
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["failureType"], "budget");
    assert!(a["reason"].as_str().unwrap().contains("max_cost_usd"), "{a}");
    assert!(kinds(&ws, &id).contains(&"budget_exceeded".to_string()));
    assert!(ws.json(&["escalations", "--json"]).to_string().contains("max_cost_usd"));
}

#[test]
fn a_silent_stream_is_stale_at_heartbeat_timeout_and_retried() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nheartbeat_timeout = \"1s\"\nmax_retries = 1\n")));
    let claude = fake_cli(&ws, "claude", "claude-no-result", "sleep 60");
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    assert!(wait_until(secs(20), || ws.agent(&id)["attempt"] == 2), "{}", ws.agent(&id));
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["failureType"], "timeout", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("stale"), "{a}");
}

#[test]
fn a_rate_limit_waits_for_the_reset_holds_the_provider_and_spends_no_retry() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nmax_retries = 0\n")));
    let limited = ws.path().join("limited.jsonl");
    std::fs::write(
        &limited,
        concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a60"}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"You've hit your usage limit. Try again in 3 seconds."}}"#,
            "\n"
        ),
    )
    .unwrap();
    let marker = ws.path().join("limited-once");
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("codex");
    let script = format!(
        "#!/bin/sh\nif [ -e '{m}' ]; then cat '{ok}'; exit 0; fi\ntouch '{m}'\ncat '{bad}'\nexit 1\n",
        m = marker.display(),
        ok = fixture("codex-success").display(),
        bad = limited.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let codex = path.to_str().unwrap();
    let first = ws.spawn("W", &[codex, "exec", "--json"]);
    let s = ws.wait_state(&first, &["waiting", "complete", "failed", "escalated"], secs(15));
    assert_eq!(s["status"], "waiting", "{s}");
    assert!(s["reason"].as_str().unwrap().contains("rate limited by openai"), "{s}");
    let until = s["waitingUntil"].as_str().expect("waitingUntil");
    assert!(until.contains('T'), "{until}");
    // Another agent of the same provider queues, saying why; a plain one is not held.
    let second = ws.spawn("W", &[codex, "exec", "--json"]);
    let q = ws.agent(&second);
    assert_eq!(q["status"], "queued", "{q}");
    assert!(q["reason"].as_str().unwrap().contains("provider openai is rate-limited"), "{q}");
    let plain = ws.spawn("W", &["true"]);
    ws.wait_state(&plain, &["complete"], secs(10));
    let health = ws.json(&["health", "--json"]);
    assert_eq!(health["providers"][0]["name"], "openai", "{health}");
    assert!(health["providers"][0]["heldUntil"].is_string(), "{health}");
    // After the reset both complete, the first with no retry spent.
    let a = ws.wait_state(&first, &["complete", "failed", "escalated"], secs(20));
    assert_eq!(a["status"], "complete", "{a}");
    assert_eq!(a["budgetAttempt"], 1, "the limited attempt was not counted: {a}");
    let b = ws.wait_state(&second, &["complete", "failed", "escalated"], secs(20));
    assert_eq!(b["status"], "complete", "{b}");
    let show = ws.show(&first);
    assert_eq!(show["attempts"][0]["failureType"], "rate_limited");
    assert!(show["attempts"][0]["action"].as_str().unwrap().starts_with("wait"), "{show}");
    assert!(kinds(&ws, &first).contains(&"rate_limited".to_string()));
}

#[test]
fn a_transient_retry_continues_the_cli_session_and_records_it() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[roles.W]\nmax_retries = 2\n")));
    let marker = ws.path().join("tried");
    let args = ws.path().join("args");
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("claude");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{a}'\nif [ -e '{m}' ]; then cat '{ok}'; exit 0; fi\ntouch '{m}'\ncat '{bad}'\nexit 1\n",
        a = args.display(),
        m = marker.display(),
        ok = fixture("claude-success").display(),
        bad = fixture("claude-overloaded").display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = ws.spawn("W", &[path.to_str().unwrap(), "-p", "do it"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(15));
    assert_eq!(s["status"], "complete", "{s}");
    let lines: Vec<String> = std::fs::read_to_string(&args).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines[0], "-p do it");
    assert_eq!(lines[1], "-p do it --resume b1d5f3a2-2222-4d53-9a55-0f2d7b1c9e03", "{lines:?}");
    let show = ws.show(&id);
    assert_eq!(show["attempts"][1]["resumed"], true, "{show}");
    assert!(show["attempts"][0].get("resumed").is_none());
    let started: Vec<serde_json::Value> = events(&ws, &id).into_iter().filter(|e| e["kind"] == "started").collect();
    assert_eq!(started[1]["data"]["resumedSession"], "b1d5f3a2-2222-4d53-9a55-0f2d7b1c9e03", "{started:?}");
}

#[test]
fn a_spent_workspace_budget_queues_new_spawns_with_the_reason() {
    let ws = Ws::with_config(Some(&format!("{FAST}\n[budget]\nmax_cost_usd = 0.01\n")));
    let claude = fake_cli(&ws, "claude", "claude-success", "exit 0");
    let first = ws.spawn("W", &[&claude, "-p", "x"]);
    ws.wait_state(&first, &["complete"], secs(15));
    let next = ws.spawn("W", &["true"]);
    let q = ws.agent(&next);
    assert_eq!(q["status"], "queued", "{q}");
    assert!(q["reason"].as_str().unwrap().contains("[budget] max_cost_usd"), "{q}");
    let h = ws.json(&["health", "--json"]);
    assert!(h["heldBecause"].as_str().unwrap().contains("budget"), "{h}");
}

#[test]
fn a_burst_of_rate_limits_lowers_the_providers_concurrency_then_it_recovers() {
    let ws = Ws::with_config(Some(
        "[defaults]\nbackoff = { initial = \"200ms\", coefficient = 2.0 }\n\
         [health]\nmax_concurrent = 50\nbreaker_failures = 0\nprovider_recovery = \"6s\"\n\
         [roles.W]\nmax_retries = 0\n",
    ));
    let limited = ws.path().join("limited.jsonl");
    std::fs::write(
        &limited,
        concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a61"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"Rate limit reached. Try again in 2 seconds."}}"#,
            "\n"
        ),
    )
    .unwrap();
    // Each agent's first run hits the limit; its next one works for a while and completes.
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("codex");
    let script = format!(
        "#!/bin/sh\nm='{d}'/\"limited-$CORRAL_AGENT_ID\"\nif [ -e \"$m\" ]; then sleep 3; cat '{ok}'; exit 0; fi\n\
         touch \"$m\"\ncat '{bad}'\nexit 1\n",
        d = ws.path().display(),
        ok = fixture("codex-success").display(),
        bad = limited.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let codex = path.to_str().unwrap();
    let a = ws.spawn("W", &[codex, "exec", "--json"]);
    let b = ws.spawn("W", &[codex, "exec", "--json"]);
    for id in [&a, &b] {
        let s = ws.wait_state(id, &["waiting", "running", "complete", "failed", "escalated"], secs(15));
        assert!(s["status"] == "waiting" || s["status"] == "running", "{s}");
    }
    // Two limits within the window are a burst: the provider's concurrency is lowered to
    // what still runs (nothing), at least one.
    let mut health = serde_json::Value::Null;
    assert!(
        wait_until(secs(15), || {
            health = ws.json(&["health", "--json"]);
            health["providers"].as_array().is_some_and(|p| p.iter().any(|p| p["maxConcurrent"] == 1))
        }),
        "{health}"
    );
    let p = &health["providers"][0];
    assert_eq!(p["name"], "openai", "{health}");
    assert!(p["reason"].as_str().unwrap().contains("2 rate limits within 1m"), "{health}");
    // After the reset one agent runs again; the other queues, its reason naming the limit.
    let mut queued = serde_json::Value::Null;
    assert!(
        wait_until(secs(15), || {
            let (x, y) = (ws.agent(&a), ws.agent(&b));
            let running = [&x, &y].iter().filter(|s| s["status"] == "running").count();
            queued = if x["status"] == "queued" { x.clone() } else { y.clone() };
            running == 1 && queued["status"] == "queued"
        }),
        "{queued}"
    );
    let why = queued["reason"].as_str().unwrap();
    assert!(why.contains("provider openai runs at most 1 agent at once and 1 run"), "{why}");
    let h = ws.json(&["health", "--json"]);
    assert!(h["queued"].to_string().contains("runs at most 1 agent"), "{h}");
    // Both complete, without a retry spent, and the limit recovers.
    for id in [&a, &b] {
        let s = ws.wait_state(id, &["complete", "failed", "escalated"], secs(30));
        assert_eq!(s["status"], "complete", "{s}");
        assert_eq!(s["budgetAttempt"], 1, "{s}");
    }
    assert!(
        wait_until(secs(20), || ws.json(&["health", "--json"])["providers"].as_array().is_some_and(|p| p.is_empty())),
        "the lowered limit recovers after quiet periods"
    );
    let mut all = String::new();
    assert!(
        wait_until(secs(10), || {
            all = ws.ok(&["events"]);
            all.contains("\"provider_restored\"")
        }),
        "{all}"
    );
    assert!(all.contains("\"provider_lowered\""), "{all}");
}

/// A fake `codex` that reports one turn's usage, then works on (sleeps) for a long while.
fn codex_then_sleep(ws: &Ws, input: u64, output: u64) -> String {
    let lines = ws.path().join("turn.jsonl");
    std::fs::write(
        &lines,
        format!(
            "{}\n{}\n{}\n",
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a62"}"#,
            r#"{"type":"turn.started"}"#,
            format_args!(r#"{{"type":"turn.completed","usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#),
        ),
    )
    .unwrap();
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("codex");
    std::fs::write(&path, format!("#!/bin/sh\ncat '{}'\nexec sleep 60\n", lines.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn usage_shows_while_the_agent_runs() {
    let ws = Ws::with_config(Some(&format!(
        "{FAST}\n[roles.W]\nresult_grace = \"5m\"\ntoken_prices = {{ input = 1.0, output = 2.0 }}\n"
    )));
    let codex = codex_then_sleep(&ws, 1000, 500);
    let id = ws.spawn("W", &[&codex, "exec", "--json"]);
    let mut s = serde_json::Value::Null;
    assert!(
        wait_until(secs(15), || {
            s = ws.agent(&id);
            s["turns"] == 1
        }),
        "the turn is shown before the agent ends: {s}"
    );
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["tokens"]["input"], 1000, "{s}");
    assert_eq!(s["tokens"]["output"], 500, "{s}");
    let cost = s["costUsd"].as_f64().expect("costUsd");
    assert!((cost - 0.002).abs() < 1e-9, "{s}");
    assert_eq!(ws.show(&id)["attempts"][0]["turns"], 1);
    ws.ok(&["kill", &id]);
}

#[test]
fn a_budget_stops_the_agent_while_it_works_not_at_its_end() {
    let ws = Ws::with_config(Some(&format!(
        "{FAST}\n[roles.W]\nresult_grace = \"5m\"\nmax_tokens = 1000\nmax_retries = 3\n"
    )));
    let codex = codex_then_sleep(&ws, 1000, 500);
    let started = std::time::Instant::now();
    let id = ws.spawn("W", &[&codex, "exec", "--json"]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated"], secs(40));
    assert_eq!(s["status"], "escalated", "{s}");
    assert!(started.elapsed() < secs(30), "stopped while it slept, not at its end: {:?}", started.elapsed());
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["failureType"], "budget", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("max_tokens"), "{a}");
    assert_eq!(s["tokens"]["output"], 500, "{s}");
}

/// A fake CLI at `<ws>/bin/<program>`: prints `before` (which may end in the middle of a
/// line), waits until `<ws>/go` exists, prints `after` and exits 0.
fn paused_cli(ws: &Ws, program: &str, before: &str, after: &str) -> String {
    let (b, a) = (ws.path().join(format!("{program}.before")), ws.path().join(format!("{program}.after")));
    std::fs::write(&b, before).unwrap();
    std::fs::write(&a, after).unwrap();
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(program);
    let go = ws.path().join("go");
    let script = format!(
        "#!/bin/sh\ncat '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\ncat '{}'\nexit 0\n",
        b.display(),
        go.display(),
        a.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// The pid of the shim of `id`'s attempt `n`, from its run file.
fn shim_of(ws: &Ws, id: &str, n: u32) -> i32 {
    let text = std::fs::read_to_string(ws.data.join(format!("run/{id}.{n}.run"))).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["start"]["shimPid"].as_i64())
        .expect("a start record") as i32
}

/// kill -9 of `id`'s shim; returns once the supervisor adopted the attempt.
fn kill_shim(ws: &Ws, id: &str) {
    let shim = shim_of(ws, id, 1);
    unsafe { libc::kill(shim, libc::SIGKILL) };
    assert!(wait_until(secs(10), || kinds(ws, id).contains(&"adopted".to_string())), "{:?}", kinds(ws, id));
}

const PAUSED: &str = r#"
[defaults]
backoff = { initial = "200ms", coefficient = 2.0 }
[health]
max_concurrent = 50
breaker_failures = 0
[roles.W]
max_retries = 0
result_grace = "5m"
"#;

#[test]
fn after_its_shim_is_killed_an_error_result_still_fails_the_attempt_and_its_usage_counts() {
    let ws = Ws::with_config(Some(PAUSED));
    let codex = paused_cli(
        &ws,
        "codex",
        concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a70"}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":1000,"output_tokens":500}}"#,
            "\n",
        ),
        concat!(
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.completed","usage":{"input_tokens":200,"output_tokens":100}}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"the request was refused: invalid tool schema"}}"#,
            "\n",
        ),
    );
    let id = ws.spawn("W", &[&codex, "exec", "--json"]);
    let mut s = serde_json::Value::Null;
    assert!(
        wait_until(secs(15), || {
            s = ws.agent(&id);
            s["turns"] == 1
        }),
        "{s}"
    );
    kill_shim(&ws, &id);
    std::fs::write(ws.path().join("go"), "").unwrap();
    let s = ws.wait_state(&id, &["complete", "failed", "escalated", "retrying"], secs(20));
    assert_eq!(s["status"], "escalated", "an error result after exit 0 is no success: {s}");
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["exitCode"], 0, "{a}");
    assert_eq!(a["failureType"], "crash", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("the CLI reported an error"), "{a}");
    assert_eq!(a["result"]["ok"], false, "{a}");
    assert_eq!(a["result"]["text"], "the request was refused: invalid tool schema", "{a}");
    // Both turns' usage: the one the shim read and the one read after it was gone.
    assert_eq!(a["tokens"]["input"], 1200, "{a}");
    assert_eq!(a["tokens"]["output"], 600, "{a}");
    assert_eq!(a["turns"], 2, "{a}");
    assert_eq!(s["tokens"]["input"], 1200, "{s}");
    assert_eq!(a["sessionId"], "0199a213-81c0-7800-8aa1-bbab2a035a70", "{a}");
}

const CLAUDE_INIT: &str = concat!(
    r#"{"type":"system","subtype":"init","session_id":"7d2b1c3e-1111-4d53-9a55-0f2d7b1c9e70","tools":["Bash"]}"#,
    "\n",
    r#"{"type":"assistant","message":{"content":[{"type":"text","text":"working"}],"usage":{"input_tokens":10,"output_tokens":2}},"session_id":"7d2b1c3e-1111-4d53-9a55-0f2d7b1c9e70"}"#,
    "\n",
);

const CLAUDE_RESULT: &str = concat!(
    r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"all done","#,
    r#""session_id":"7d2b1c3e-1111-4d53-9a55-0f2d7b1c9e70","total_cost_usd":0.25,"#,
    r#""usage":{"input_tokens":300,"output_tokens":40}}"#,
    "\n",
);

fn assert_claude_completed(ws: &Ws, id: &str) {
    let s = ws.wait_state(id, &["complete", "failed", "escalated", "retrying"], secs(20));
    assert_eq!(s["status"], "complete", "{s}\n{}", ws.ok(&["events", "--agent", id]));
    assert_eq!(s["costUsd"], 0.25, "{s}");
    assert_eq!(s["sessionId"], "7d2b1c3e-1111-4d53-9a55-0f2d7b1c9e70", "{s}");
    let show = ws.show(id);
    let a = &show["attempts"][0];
    assert_eq!(show["attempts"].as_array().unwrap().len(), 1, "{show}");
    assert_eq!(a["result"]["ok"], true, "{a}");
    assert_eq!(a["result"]["text"], "all done", "{a}");
    assert_eq!(a["costUsd"], 0.25, "{a}");
    assert_eq!(a["turns"], 3, "{a}");
    assert_eq!(a["tokens"]["input"], 300, "{a}");
    assert!((ws.json(&["health", "--json"])["costUsd"].as_f64().unwrap() - 0.25).abs() < 1e-9);
}

#[test]
fn after_its_shim_and_then_the_supervisor_are_killed_a_good_result_completes_with_its_cost() {
    let ws = Ws::with_config(Some(PAUSED));
    // The shim dies in the middle of the result line: its first half was read before.
    let (head, tail) = CLAUDE_RESULT.split_at(40);
    let claude = paused_cli(&ws, "claude", &format!("{CLAUDE_INIT}{head}"), tail);
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    let log = ws.data.join(format!("logs/{id}.log"));
    assert!(
        wait_until(secs(15), || {
            ws.agent(&id)["sessionId"].is_string() && std::fs::read_to_string(&log).unwrap_or_default().contains(head)
        }),
        "{}",
        ws.agent(&id)
    );
    kill_shim(&ws, &id);
    // Adopted, its stream read on; then the supervisor dies too and a new one adopts it.
    let daemon = ws.daemon_pid();
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_until(secs(5), || !alive(daemon)));
    assert!(
        wait_until(secs(10), || kinds(&ws, &id).iter().filter(|k| *k == "adopted").count() == 2),
        "{:?}",
        kinds(&ws, &id)
    );
    assert_eq!(ws.agent(&id)["status"], "running");
    std::fs::write(ws.path().join("go"), "").unwrap();
    assert_claude_completed(&ws, &id);
    // The agent's line reached its log whole.
    assert!(std::fs::read_to_string(&log).unwrap().contains(CLAUDE_RESULT.trim_end()));
}

#[test]
fn after_a_supervisor_restart_the_result_printed_meanwhile_completes_the_agent() {
    let ws = Ws::with_config(Some(PAUSED));
    let claude = paused_cli(&ws, "claude", CLAUDE_INIT, CLAUDE_RESULT);
    let id = ws.spawn("W", &[&claude, "-p", "x"]);
    assert!(wait_until(secs(15), || ws.agent(&id)["sessionId"].is_string()), "{}", ws.agent(&id));
    let daemon = ws.daemon_pid();
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_until(secs(5), || !alive(daemon)));
    std::fs::write(ws.path().join("go"), "").unwrap();
    assert_claude_completed(&ws, &id);
    assert_ne!(ws.daemon_pid(), daemon);
}

#[test]
fn a_lowered_provider_limit_survives_a_supervisor_restart_until_it_recovers() {
    let ws = Ws::with_config(Some(
        "[defaults]\nbackoff = { initial = \"200ms\", coefficient = 2.0 }\n\
         [health]\nmax_concurrent = 50\nbreaker_failures = 0\nprovider_recovery = \"10s\"\n\
         [roles.W]\nmax_retries = 0\n",
    ));
    let limited = ws.path().join("limited.jsonl");
    std::fs::write(
        &limited,
        concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a71"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"Rate limit reached. Try again in 1 seconds."}}"#,
            "\n"
        ),
    )
    .unwrap();
    // Each agent's first run hits the limit; its next one completes.
    let dir = ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("codex");
    let script = format!(
        "#!/bin/sh\nm='{d}'/\"limited-$CORRAL_AGENT_ID\"\nif [ -e \"$m\" ]; then cat '{ok}'; exit 0; fi\n\
         touch \"$m\"\ncat '{bad}'\nexit 1\n",
        d = ws.path().display(),
        ok = fixture("codex-success").display(),
        bad = limited.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let codex = path.to_str().unwrap();
    let a = ws.spawn("W", &[codex, "exec", "--json"]);
    let b = ws.spawn("W", &[codex, "exec", "--json"]);
    let lowered = |h: &serde_json::Value| {
        h["providers"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "openai" && p["maxConcurrent"] == 1))
    };
    let mut health = serde_json::Value::Null;
    assert!(
        wait_until(secs(15), || {
            health = ws.json(&["health", "--json"]);
            lowered(&health)
        }),
        "{health}"
    );
    let lowered_at = std::time::Instant::now();
    let daemon = ws.daemon_pid();
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_until(secs(5), || !alive(daemon)));
    // The next command starts a new supervisor: the provider is still lowered.
    let h = ws.json(&["health", "--json"]);
    assert_ne!(ws.daemon_pid(), daemon);
    assert!(lowered(&h), "{h}");
    assert!(h["providers"][0]["reason"].as_str().unwrap().contains("2 rate limits within 1m"), "{h}");
    for id in [&a, &b] {
        let s = ws.wait_state(id, &["complete", "failed", "escalated"], secs(30));
        assert_eq!(s["status"], "complete", "{s}");
    }
    // Lowered until its quiet period has passed, then restored.
    if lowered_at.elapsed() < secs(8) {
        assert!(lowered(&ws.json(&["health", "--json"])), "recovered before provider_recovery passed");
    }
    assert!(
        wait_until(secs(20), || ws.json(&["health", "--json"])["providers"].as_array().is_some_and(|p| p.is_empty())),
        "the lowered limit recovers after provider_recovery"
    );
    assert!(lowered_at.elapsed() >= secs(9), "recovered early: {:?}", lowered_at.elapsed());
    assert!(ws.ok(&["events"]).contains("\"provider_restored\""));
}

#[test]
fn memory_patterns_give_each_roles_cost_and_tokens_in_all_per_agent_and_on_failures() {
    let ws = Ws::with_config(Some(&format!(
        "{FAST}\n[roles.W]\nmax_retries = 0\n[roles.BAD]\nmax_retries = 1\nresume_session = false\n\
         [[classify]]\nfailure_type = [\"crash\"]\naction = \"retry\"\n"
    )));
    // Two good runs of W at $0.0123 each (2,500 in, 52 out); a plain agent of W reports none.
    let good = fake_cli(&ws, "claude", "claude-success", "exit 0");
    let a = ws.spawn("W", &[&good, "-p", "x"]);
    let b = ws.spawn("W", &[&good, "-p", "x"]);
    let plain = ws.spawn("W", &["true"]);
    // BAD: an error result costing $0.5, twice (the retry, a session of its own, fails the
    // same way).
    let bad_lines = ws.path().join("bad.jsonl");
    std::fs::write(
        &bad_lines,
        concat!(
            r#"{"type":"system","subtype":"init","session_id":"9a9a9a9a-1111-4d53-9a55-0f2d7b1c9e7N"}"#,
            "\n",
            r#"{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":1,"result":"broke","session_id":"9a9a9a9a-1111-4d53-9a55-0f2d7b1c9e7N","total_cost_usd":0.5,"usage":{"input_tokens":100,"output_tokens":10}}"#,
            "\n"
        ),
    )
    .unwrap();
    let bad_bin = ws.path().join("badbin");
    std::fs::create_dir_all(&bad_bin).unwrap();
    let bad_cli = bad_bin.join("claude");
    let script = format!("#!/bin/sh\nsed \"s/7N/7$CORRAL_ATTEMPT/g\" '{}'\nexit 0\n", bad_lines.display());
    std::fs::write(&bad_cli, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad_cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = ws.spawn("BAD", &[bad_cli.to_str().unwrap(), "-p", "x"]);
    for id in [&a, &b, &plain] {
        assert_eq!(ws.wait_state(id, &["complete", "failed", "escalated"], secs(15))["status"], "complete");
    }
    let s = ws.wait_state(&c, &["complete", "failed", "escalated"], secs(15));
    assert_ne!(s["status"], "complete", "{s}");
    assert_eq!(ws.show(&c)["attempts"].as_array().unwrap().len(), 2);

    let m = ws.json(&["memory", "list", "--json"]);
    let role = |name: &str| m["patterns"].as_array().unwrap().iter().find(|p| p["role"] == name).unwrap().clone();
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap_or(f64::NAN) - want).abs() < 1e-9;
    let w = role("W");
    assert!(close(&w["costUsd"], 0.0246), "{w}");
    assert!(close(&w["costPerAgentUsd"], 0.0123), "the mean over the agents that reported one: {w}");
    assert_eq!(w["tokens"], serde_json::json!({ "input": 5000, "output": 104 }), "{w}");
    assert_eq!(w["tokensPerAgent"], serde_json::json!({ "input": 2500, "output": 52 }), "{w}");
    assert!(w.get("failedCostUsd").is_none(), "nothing failed: {w}");
    let bad = role("BAD");
    assert!(close(&bad["costUsd"], 1.0), "{bad}");
    assert!(close(&bad["costPerAgentUsd"], 1.0), "{bad}");
    assert!(close(&bad["failedCostUsd"], 1.0), "{bad}");
    assert_eq!(bad["tokens"], serde_json::json!({ "input": 200, "output": 20 }), "{bad}");
    let text = ws.ok(&["memory"]);
    assert!(text.contains("cost $0.0246 ($0.0123 per agent)"), "{text}");
    assert!(text.contains("cost $1.0000 ($1.0000 per agent); $1.0000 on failed attempts"), "{text}");
    let export = ws.ok(&["memory", "export"]);
    assert!(export.contains("cost $1.0000, $1.0000 per agent, $1.0000 of it on failed attempts"), "{export}");
}
