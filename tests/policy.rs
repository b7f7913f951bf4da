//! Failure policy end to end: real processes, second-scale policy settings.

mod common;
use common::*;
use serde_json::Value;

fn events_of(ws: &Ws, id: &str) -> Vec<Value> {
    ws.ok(&["events", "--agent", id]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kinds(ws: &Ws, id: &str) -> Vec<String> {
    events_of(ws, id).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn rate_limited_crash_is_retried_then_succeeds() {
    let ws = Ws::with_config(Some(FAST));
    let marker = ws.path().join("tried");
    let script = format!(
        "if [ -e {m} ]; then corral report --status complete --progress 1.0; exit 0; fi; touch {m}; \
         corral report --status failed --finding 'API rate limit exceeded'; exit 1",
        m = marker.display()
    );
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", &script]);
    let s = ws.wait_state(&id, &["complete"], SECS(15));
    assert_eq!(s["attempt"], 2);
    let show = ws.show(&id);
    let a = show["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["failureType"], "crash");
    assert!(a[0]["action"].as_str().unwrap().starts_with("retry in 200ms"), "{show}");
    assert!(a[0]["rule"].as_str().unwrap().contains("transient"), "{show}");
    assert_eq!(a[1]["exitCode"], 0);
    let k = kinds(&ws, &id);
    assert!(k.contains(&"retry_scheduled".to_string()) && k.contains(&"retry_due".to_string()), "{k:?}");
    // the retry's context carries the previous failure and its last finding
    let ctx = std::fs::read_to_string(ws.data.join(format!("context/{id}.md"))).unwrap();
    assert!(ctx.contains("earlier attempts failed") && ctx.contains("API rate limit exceeded"), "{ctx}");
}

#[test]
fn permanent_crash_is_escalated_without_retry_and_resolved_by_a_human() {
    let ws = Ws::with_config(Some(FAST));
    let id = ws.spawn(
        "IMPLEMENTER",
        &["sh", "-c", "corral report --status failed --finding 'null pointer in parser'; exit 2"],
    );
    let s = ws.wait_state(&id, &["escalated"], SECS(10));
    assert_eq!(ws.show(&id)["attempts"].as_array().unwrap().len(), 1, "a permanent failure must not be retried");
    assert!(s["reason"].as_str().unwrap().contains("null pointer in parser"));
    let txt = std::fs::read_to_string(ws.data.join("escalations.txt")).unwrap();
    assert!(txt.starts_with(&format!("{id}: ")) && txt.contains("null pointer"), "{txt}");
    let list = ws.json(&["escalations", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let n = list[0]["n"].as_u64().unwrap();
    assert!(ws.ok(&["escalations"]).contains(&id));
    ws.ok(&["escalations", "resolve", &n.to_string(), "--note", "fixed the parser"]);
    assert!(ws.json(&["escalations", "--json"]).as_array().unwrap().is_empty());
    let all = ws.json(&["escalations", "--all", "--json"]);
    assert_eq!(all[0]["note"], "fixed the parser");
    assert_eq!(std::fs::read_to_string(ws.data.join("escalations.txt")).unwrap(), "");
    let o = ws.run(&["escalations", "resolve", "99"]);
    assert_eq!(o.status.code(), Some(2));
    // the human's lever: retry with added context, a fresh budget
    ws.ok(&["retry", &id, "--context", "the parser was fixed upstream"]);
    ws.wait_state(&id, &["escalated"], SECS(10));
    let ctx = std::fs::read_to_string(ws.data.join(format!("context/{id}.md"))).unwrap();
    assert!(ctx.contains("the parser was fixed upstream"), "{ctx}");
    assert_eq!(ws.show(&id)["attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn hung_agent_is_killed_at_its_timeout_and_retried_with_a_longer_one() {
    let ws = Ws::with_config(Some(FAST));
    let id = ws
        .ok(&[
            "spawn",
            "--role",
            "PLANNER",
            "--task",
            "t",
            "--timeout",
            "700ms",
            "--",
            "sh",
            "-c",
            "sleep 1000 & sleep 1000",
        ])
        .trim()
        .to_string();
    let first = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    assert!(wait_until(SECS(10), || ws.agent(&id)["attempt"] == 2 && ws.agent(&id)["status"] == "running"));
    assert!(group_members(first).is_empty(), "the hung attempt's group survived: {:?}", group_members(first));
    let show = ws.show(&id);
    assert_eq!(show["attempts"][0]["failureType"], "timeout");
    assert_eq!(show["attempts"][0]["timeout"], "700ms");
    assert_eq!(show["attempts"][1]["timeout"], "1s 400ms", "progressive timeout: base x 2");
    // PLANNER has 1 retry: the second timeout escalates
    let s = ws.wait_state(&id, &["escalated"], SECS(10));
    assert!(s["reason"].as_str().unwrap().contains("attempt 1"), "{s}");
}

#[test]
fn an_agent_that_stops_reporting_is_stale_and_replaced() {
    let cfg = format!("{FAST}\n[roles.W]\nheartbeat_timeout = \"800ms\"\nmax_retries = 1\n");
    let ws = Ws::with_config(Some(&cfg));
    let marker = ws.path().join("once");
    let script = format!(
        "corral report --status active --progress 0.1; if [ -e {m} ]; then corral report --status complete; exit 0; fi; \
         touch {m}; sleep 1000",
        m = marker.display()
    );
    let id = ws.spawn("W", &["sh", "-c", &script]);
    ws.wait_state(&id, &["complete"], SECS(15));
    let k = kinds(&ws, &id);
    assert!(k.contains(&"stale".to_string()), "{k:?}");
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["failureType"], "timeout");
    assert!(a["reason"].as_str().unwrap().contains("stale"), "{a}");
    // a plain command that never reports is never stale
    let quiet = ws.spawn("W", &["sleep", "2"]);
    ws.wait_state(&quiet, &["complete"], SECS(10));
    assert_eq!(ws.show(&quiet)["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn missing_deliverable_gets_one_corrective_attempt_then_escalation() {
    let ws = Ws::with_config(Some(FAST));
    let id = ws.spawn(
        "IMPLEMENTER",
        &[
            "sh",
            "-c",
            "corral handoff --deliverable src/never-written.rs --finding done; corral report --status complete",
        ],
    );
    let s = ws.wait_state(&id, &["escalated"], SECS(15));
    let show = ws.show(&id);
    let a = show["attempts"].as_array().unwrap();
    assert_eq!(a.len(), 2, "exactly one corrective attempt: {show}");
    assert!(a.iter().all(|x| x["failureType"] == "deliverable"), "{show}");
    assert!(s["reason"].as_str().unwrap().contains("src/never-written.rs"));
    let ctx = std::fs::read_to_string(ws.data.join(format!("context/{id}.md"))).unwrap();
    assert!(ctx.contains("corrective attempt"), "{ctx}");
}

#[test]
fn require_handoff_turns_a_silent_exit_into_a_deliverable_failure() {
    let cfg = format!("{FAST}\n[roles.DOC]\nrequire_handoff = true\nmax_retries = 0\n");
    let ws = Ws::with_config(Some(&cfg));
    let id = ws.spawn("DOC", &["true"]);
    ws.wait_state(&id, &["escalated"], SECS(10));
    assert_eq!(ws.show(&id)["attempts"][0]["failureType"], "deliverable");
    let ok = ws.spawn("DOC", &["sh", "-c", "corral handoff --finding written"]);
    ws.wait_state(&ok, &["complete"], SECS(10));
}

#[test]
fn blocked_on_missing_context_is_retried_with_that_context() {
    let ws = Ws::with_config(Some(FAST));
    let script = "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then corral report --status blocked --finding 'missing context: which database?'; sleep 1000; fi; \
                  grep -q 'which database' \"$CORRAL_CONTEXT_FILE\" && corral report --status complete";
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", script]);
    let s = ws.wait_state(&id, &["complete"], SECS(15));
    assert_eq!(s["attempt"], 2);
    let a = &ws.show(&id)["attempts"][0];
    assert_eq!(a["failureType"], "blocked");
    assert!(a["action"].as_str().unwrap().starts_with("retry_with_context"), "{a}");
}

#[test]
fn blocked_on_an_external_dependency_waits_and_tell_reaches_the_inbox() {
    let ws = Ws::with_config(Some(FAST));
    let script = "corral report --status blocked --finding 'waiting for the staging database'; \
                  while ! grep -q go \"$CORRAL_INBOX_FILE\" 2>/dev/null; do sleep 0.05; done; corral report --status complete";
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", script]);
    assert!(wait_until(SECS(10), || kinds(&ws, &id).contains(&"waiting".to_string())));
    let a = ws.agent(&id);
    assert_eq!(a["status"], "blocked", "a live agent waiting on a dependency is shown blocked, and not killed");
    assert!(a["pid"].is_i64(), "{a}");
    assert!(a["anomalies"].as_array().unwrap().iter().any(|x| x == "BLOCKED"));
    ws.ok(&["tell", &id, "the database is up: go"]);
    ws.wait_state(&id, &["complete"], SECS(10));
    assert_eq!(ws.show(&id)["attempts"].as_array().unwrap().len(), 1);
}

#[test]
fn max_concurrent_2_runs_5_spawns_two_at_a_time_in_order() {
    let ws = Ws::with_config(Some("[health]\nmax_concurrent = 2\nbreaker_failures = 0\n"));
    let log = ws.path().join("order.log");
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let script = format!("echo start {i} >> {l}; sleep 0.4; echo end {i} >> {l}", l = log.display());
            ws.spawn("W", &["sh", "-c", &script])
        })
        .collect();
    let q = ws.agent(&ids[2]);
    assert_eq!(q["status"], "queued");
    assert!(q["reason"].as_str().unwrap().contains("capacity: 2 of 2"), "{q}");
    assert!(ws.ok(&["status"]).contains("QUEUED: capacity"));
    let h = ws.json(&["health", "--json"]);
    assert_eq!(h["queued"].as_array().unwrap().len(), 3);
    assert!(h["heldBecause"].as_str().unwrap().contains("capacity"));
    for id in &ids {
        ws.wait_state(id, &["complete"], SECS(15));
    }
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    let mut running = 0i32;
    let mut starts = Vec::new();
    for l in &lines {
        if let Some(i) = l.strip_prefix("start ") {
            running += 1;
            starts.push(i.to_string());
        } else {
            running -= 1;
        }
        assert!(running <= 2, "more than 2 ran at once: {lines:?}");
    }
    assert_eq!(starts[2..], ["2", "3", "4"], "queued spawns start in order: {lines:?}");
}

#[test]
fn three_quick_failures_open_the_breaker_and_spawns_queue_until_it_closes() {
    let ws = Ws::with_config(Some(
        "[defaults]\nmax_retries = 0\n[health]\nmax_concurrent = 50\nbreaker_failures = 3\nbreaker_window = \"1m\"\nbreaker_cooldown = \"1500ms\"\n",
    ));
    for _ in 0..3 {
        let id = ws.spawn("W", &["sh", "-c", "exit 1"]);
        ws.wait_state(&id, &["escalated"], SECS(10));
    }
    let h = ws.json(&["health", "--json"]);
    assert_eq!(h["breaker"]["state"], "open", "{h}");
    let probe = ws.spawn("W", &["true"]);
    let later = ws.spawn("W", &["true"]);
    let q = ws.agent(&probe);
    assert_eq!(q["status"], "queued");
    assert!(q["reason"].as_str().unwrap().contains("circuit breaker open"), "{q}");
    assert!(ws.ok(&["health"]).contains("circuit breaker open"));
    // after the cooldown one probe goes; its success closes the breaker and the rest follow
    ws.wait_state(&probe, &["complete"], SECS(10));
    ws.wait_state(&later, &["complete"], SECS(10));
    assert_eq!(ws.json(&["health", "--json"])["breaker"]["state"], "closed");
    let ev = ws.ok(&["events"]);
    assert!(ev.contains("breaker_open") && ev.contains("breaker_half_open") && ev.contains("breaker_closed"), "{ev}");
}

#[test]
fn supervisor_kill_9_during_backoff_keeps_the_schedule() {
    let ws = Ws::with_config(Some(
        "[defaults]\nbackoff = { initial = \"2s\" }\nmax_retries = 1\n[health]\nbreaker_failures = 0\n",
    ));
    let counter = ws.path().join("runs");
    let script = format!(
        "echo run >> {c}; [ $(wc -l < {c}) -ge 2 ] && exit 0; corral report --status failed --finding 'network down'; exit 1",
        c = counter.display()
    );
    let id = ws.spawn("W", &["sh", "-c", &script]);
    let s = ws.wait_state(&id, &["retrying"], SECS(10));
    assert!(s["anomalies"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().starts_with("RETRYING in")), "{s}");
    let left = s["nextAttemptInSeconds"].as_f64().unwrap();
    assert!(left > 0.5, "{s}");
    let daemon = ws.daemon_pid();
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(daemon)));
    // restart at once: the retry is not early...
    let s = ws.agent(&id);
    assert_eq!(s["status"], "retrying", "{s}");
    assert!(s["nextAttemptInSeconds"].as_f64().unwrap() > 0.0);
    // ...and happens once
    ws.wait_state(&id, &["complete"], SECS(10));
    let runs = std::fs::read_to_string(&counter).unwrap().lines().count();
    assert_eq!(runs, 2, "the retry ran {} times", runs - 1);
    let retried = events_of(&ws, &id).iter().filter(|e| e["kind"] == "started").count();
    assert_eq!(retried, 2);
}

#[test]
fn bad_config_is_rejected_with_file_line_and_key_and_the_old_one_stays() {
    let ws = Ws::with_config(Some("[defaults]\nmax_retries = 0\n[health]\nbreaker_failures = 0\n"));
    ws.spawn("W", &["true"]); // supervisor running with a good config
    let cfg = ws.path().join("corral.toml");
    let cases = [
        ("[defaults]\nbogus_key = 1\n", "bogus_key"),
        ("[defaults]\nattempt_timeout = \"-5m\"\n", "defaults.attempt_timeout"),
        ("[[classify]]\noutput = \"([\"\naction = \"retry\"\n", "classify.output"),
        ("[[classify]]\naction = \"explode\"\n", "classify.action"),
    ];
    for (text, key) in cases {
        std::fs::write(&cfg, text).unwrap();
        let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains("corral.toml:2:") && err.contains(key), "{text}: {err}");
    }
    // the running supervisor kept its last good config: fix the file, spawns work again
    std::fs::write(&cfg, "[defaults]\nmax_retries = 0\n[health]\nbreaker_failures = 0\n").unwrap();
    let id = ws.spawn("W", &["true"]);
    ws.wait_state(&id, &["complete"], SECS(10));
    assert_eq!(ws.status().len(), 2);
}

#[test]
fn a_report_counts_for_its_attempt_whatever_its_file_time_says() {
    // Status writes are told apart by file version, not by file times: a report whose file
    // time says otherwise (coarse file times, a wall clock stepped back; here the agent
    // sets it to the year 2000) still belongs to the attempt, so each of these transient
    // crashes is retried, never escalated.
    let ws = Ws::with_config(Some(FAST));
    let script = r#"if [ "$CORRAL_ATTEMPT" = 1 ]; then
        printf '{"agentId":"%s","status":"failed","findings":["API rate limit exceeded"]}' "$CORRAL_AGENT_ID" > "$CORRAL_STATUS_FILE"
        touch -d '2000-01-01 00:00:00' "$CORRAL_STATUS_FILE"
        exit 1
      fi
      exit 0"#;
    let ids: Vec<String> = (0..20).map(|_| ws.spawn("IMPLEMENTER", &["sh", "-c", script])).collect();
    for id in &ids {
        let s = ws.wait_state(id, &["complete", "escalated", "failed"], SECS(20));
        assert_eq!(s["status"], "complete", "{id}: {s}");
        let show = ws.show(id);
        assert!(show["attempts"][0]["rule"].as_str().unwrap_or_default().contains("transient"), "{show}");
    }
}

#[test]
fn output_counts_as_a_heartbeat() {
    // Reports once, then only prints, for four heartbeat periods: never stale.
    let cfg = format!("{FAST}\n[roles.W]\nheartbeat_timeout = \"800ms\"\nmax_retries = 0\n");
    let ws = Ws::with_config(Some(&cfg));
    let script = "corral report --status active --progress 0.1; i=0; while [ $i -lt 16 ]; do echo working $i; \
                  sleep 0.2; i=$((i+1)); done; corral report --status complete --progress 1.0";
    let id = ws.spawn("W", &["sh", "-c", script]);
    let s = ws.wait_state(&id, &["complete", "failed", "escalated", "timed_out"], SECS(20));
    assert_eq!(s["status"], "complete", "{s}");
    assert!(!kinds(&ws, &id).contains(&"stale".to_string()));
}
