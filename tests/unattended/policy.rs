//! Unattended scenarios: policy. Each agent nobody watches is judged on its own attempt's
//! evidence, reaches a human when nobody else can help it, and what a human answers sticks.

use crate::common::*;

/// Fast retries, no breaker in the way unless a test sets one.
const FAST: &str = "[defaults]\nbackoff = { initial = \"100ms\", coefficient = 1.0 }\n[health]\nmax_concurrent = 50\nbreaker_failures = 0\n";

fn config(extra: &str) -> String {
    format!("{FAST}{extra}")
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

#[test]
fn each_attempt_is_judged_on_its_own_evidence() {
    let ws = Ws::with_config(Some(&config("")));
    // Attempt 1: a rate limit, said in a finding and in the output. Attempts 2 and 3:
    // a report, then a segfault with nothing said about it.
    let script = "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then \
        corral report --status failed --finding 'rate limit exceeded'; echo 'rate limit exceeded'; exit 1; fi; \
        corral report --status active --progress 0.5; exit 139";
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", script]);
    let v = ws.wait_state(&id, &["escalated", "complete", "failed"], SECS(20));
    let show = ws.show(&id);
    let attempts = show["attempts"].as_array().unwrap();
    let second = &attempts[1];
    let misjudged = usize::from(second["action"].as_str().unwrap_or("").starts_with("retry"));
    let quoted = usize::from(second["reason"].as_str().unwrap_or("").contains("rate limit"));
    println!(
        "UNATTENDED each_attempt_is_judged_on_its_own_evidence misjudged={misjudged} quoted_old_finding={quoted} attempts={}",
        attempts.len()
    );
    assert_eq!(v["status"], "escalated", "{show}");
    assert_eq!(attempts.len(), 2, "a segfault must not burn the retries: {show}");
    assert_eq!(attempts[0]["action"].as_str().map(|a| a.starts_with("retry")), Some(true), "{show}");
    assert_eq!(second["exitCode"], 139);
    assert_eq!((misjudged, quoted), (0, 0), "{second}");
}

/// Attempt 1 reports blocked on an external API and waits for the file `go`, then exits;
/// later attempts run `then`.
fn blocked_script(then: &str) -> String {
    format!(
        "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then corral report --status blocked --finding 'waiting on external API'; \
         i=0; while [ ! -e go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 0; fi; {then}"
    )
}

#[test]
fn blocked_with_nobody_left_reaches_a_human() {
    let ws = Ws::with_config(Some(&config("")));
    let told = ws.spawn("IMPLEMENTER", &["sh", "-c", &blocked_script("grep -q 'API is back' \"$CORRAL_INBOX_FILE\"")]);
    let retried = ws.spawn("IMPLEMENTER", &["sh", "-c", &blocked_script("exit 0")]);
    // While its process waits, it shows corral's `blocked`, not `running`.
    for id in [&told, &retried] {
        let v = ws.wait_state(id, &["blocked"], SECS(20));
        assert!(v["pid"].is_i64() && !v["needsHuman"].as_bool().unwrap(), "{v}");
    }
    std::fs::write(ws.path().join("go"), "").unwrap();
    // The process is gone: a human is needed at once, and `wait` counts it as finished.
    let wait = ws.run(&["wait", &told, &retried, "--timeout", "20s"]);
    let out = String::from_utf8_lossy(&wait.stdout).to_string();
    let views = ws.status();
    let needs_human = views.iter().filter(|v| v["needsHuman"] == true && v["status"] == "blocked").count();
    let escalations = ws.json(&["escalations", "--json"]);
    let open = escalations.as_array().unwrap().len();
    let filtered = ws.json(&["status", "--status", "needs-human", "--json"]).as_array().unwrap().len();
    println!(
        "UNATTENDED blocked_with_nobody_left wait_exit={:?} needs_human={needs_human} open_escalations={open} filtered={filtered}",
        wait.status.code()
    );
    assert_eq!(wait.status.code(), Some(1), "wait must return, counting them not complete: {out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!((needs_human, open, filtered), (2, 2, 2), "{views:?} {escalations}");
    for v in &views {
        assert!(v["escalation"].is_u64() && v["pid"].is_null(), "{v}");
        assert!(v["reason"].as_str().unwrap().contains("waiting on external API"), "{v}");
    }
    // The ways out: a message resumes the agent with it in its inbox, a retry runs it again.
    ws.ok(&["tell", &told, "the API is back"]);
    ws.ok(&["retry", &retried]);
    for id in [&told, &retried] {
        let v = ws.wait_state(id, &["complete", "failed", "escalated", "blocked"], SECS(20));
        assert_eq!(v["status"], "complete", "{}", ws.show(id));
    }
    let still_open = ws.json(&["escalations", "--json"]).as_array().unwrap().len();
    assert_eq!(still_open, 0, "answering the agent closes its escalation");
}

fn handoff_port(value: &str, claim: &str) -> String {
    format!(
        "corral handoff --finding '{{\"key\":\"port\",\"value\":{value},\"claim\":\"{claim}\",\"evidence\":[{{\"kind\":\"reasoning\",\"ref\":\"r\"}}]}}'"
    )
}

fn aggregate_json(ws: &Ws) -> serde_json::Value {
    let o = ws.run(&["aggregate", "--format", "json"]);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("aggregate: {e}: {}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn a_humans_answer_to_a_conflict_is_honoured() {
    for how in ["choose", "winner"] {
        let ws = Ws::with_config(Some(&config("")));
        let a = ws.spawn("AUDITOR", &["sh", "-c", &handoff_port("8080", "documented")]);
        let b = ws.spawn("AUDITOR", &["sh", "-c", &handoff_port("9090", "exposed")]);
        let c = ws.spawn("AUDITOR", &["sh", "-c", &handoff_port("7070", "free")]);
        for id in [&a, &b, &c] {
            ws.wait_state(id, &["complete"], SECS(20));
        }
        let first = aggregate_json(&ws);
        assert_eq!(first["conflicts"][0]["resolution"], "unresolved", "{first}");
        let open = ws.json(&["escalations", "--json"]);
        let list = open.as_array().unwrap();
        assert_eq!(list.len(), 1, "{open}");
        let named: Vec<&str> =
            list[0]["conflict"]["agents"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(named, [a.as_str(), b.as_str(), c.as_str()], "the escalation names every agent");
        for id in [&a, &b, &c] {
            assert!(list[0]["reason"].as_str().unwrap().contains(id.as_str()), "{open}");
        }
        let n = list[0]["n"].to_string();
        let mut args = vec!["escalations", "resolve", n.as_str(), "--note", "ops runs it on 9090"];
        args.extend(if how == "choose" { ["--choose", "9090"] } else { ["--winner", b.as_str()] });
        ws.ok(&args);
        // The next aggregate shows it settled by the human, and asks nobody again.
        let after = aggregate_json(&ws);
        let conflict = &after["conflicts"][0];
        let reopened = ws.json(&["escalations", "--json"]).as_array().unwrap().len();
        let again = aggregate_json(&ws);
        let reopened_later = ws.json(&["escalations", "--json"]).as_array().unwrap().len();
        println!(
            "UNATTENDED human_answer_honoured how={how} resolution={} reopened={}",
            conflict["resolution"],
            reopened + reopened_later
        );
        assert_eq!(conflict["resolution"], "human", "{after}");
        assert_eq!(conflict["note"], "ops runs it on 9090");
        assert_eq!(conflict["winner"]["value"], 9090);
        assert_eq!(conflict["winner"]["agents"][0], b.as_str());
        assert_eq!(after["complete"], true, "{after}");
        assert_eq!((reopened, reopened_later), (0, 0));
        assert_eq!(again["conflicts"][0]["resolution"], "human");
        let md = String::from_utf8(ws.run(&["aggregate"]).stdout).unwrap();
        assert!(md.contains("resolved by a human") && md.contains("ops runs it on 9090"), "{md}");
    }
}

#[test]
fn resolving_an_agents_escalation_says_what_becomes_of_it() {
    let ws = Ws::with_config(Some(&config("")));
    let script = "[ -e fixed ] && exit 0; corral report --status failed --finding 'schema migration conflicts'; exit 2";
    let kept = ws.spawn("AUDITOR", &["sh", "-c", script]);
    let retried = ws.spawn("AUDITOR", &["sh", "-c", script]);
    for id in [&kept, &retried] {
        ws.wait_state(id, &["escalated"], SECS(20));
    }
    let n_of = |id: &str| ws.agent(id)["escalation"].to_string();
    let kept_n = n_of(&kept);
    let o = ws.run(&["escalations", "resolve", &kept_n, "--note", "not needed any more"]);
    let said = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success() && said.contains("stays failed"), "{said}");
    let v = ws.agent(&kept);
    assert_eq!((v["status"].as_str(), v["needsHuman"].as_bool()), (Some("failed"), Some(false)), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("not needed any more"), "{v}");
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    let o = ws.run(&["escalations", "resolve", &n_of(&retried), "--note", "fixed by hand", "--retry"]);
    let said = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success() && said.contains("runs again"), "{said}");
    let v = ws.wait_state(&retried, &["complete", "escalated", "failed"], SECS(20));
    println!("UNATTENDED agent_escalation_resolved kept={} retried={}", ws.agent(&kept)["status"], v["status"]);
    assert_eq!(v["status"], "complete");
    // an answer that does not fit the escalation is refused, saying why
    let o = ws.run(&["escalations", "resolve", &kept_n, "--winner", &kept]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already resolved"));
}

#[test]
fn handoffs_of_one_attempt_accumulate() {
    let ws = Ws::with_config(Some(&config("")));
    let script = "touch a.rs b.rs; \
        corral handoff --deliverable a.rs --finding first --decision d1 --memory m1; \
        corral handoff --deliverable b.rs --finding second --decision d2 --memory m2; \
        test \"$(jq -r .status \"$CORRAL_STATUS_FILE\")\" = complete || exit 9; \
        corral handoff --finding third --keep-status --status partial; \
        test \"$(jq -r .status \"$CORRAL_STATUS_FILE\")\" = complete || exit 8";
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", script]);
    let v = ws.wait_state(&id, &["complete", "escalated", "failed"], SECS(20));
    let show = ws.show(&id);
    let file = show["files"]["expectedHandoff"].as_str().unwrap().to_string();
    let h: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let lost = ["first", "second", "third"]
        .iter()
        .filter(|f| !h["deliverables"]["findings"].as_array().unwrap().contains(&serde_json::json!(f)))
        .count();
    println!("UNATTENDED handoffs_accumulate lost_findings={lost} status={}", v["status"]);
    assert_eq!(v["status"], "complete", "{show}");
    assert_eq!(lost, 0, "{h}");
    assert_eq!(h["deliverables"]["files"], serde_json::json!(["a.rs", "b.rs"]));
    assert_eq!(h["deliverables"]["decisions"], serde_json::json!(["d1", "d2"]));
    assert_eq!(h["memoryCandidate"], serde_json::json!(["m1", "m2"]));
    assert_eq!(v["reportedStatus"], "complete", "a handoff marks the status file complete: {v}");
    let r = aggregate_json(&ws);
    assert_eq!(r["counts"]["findings"], 3, "{r}");
}

#[test]
fn a_roles_transient_failures_do_not_hold_another_roles_spawns() {
    let ws = Ws::with_config(Some(
        "[defaults]\nmax_retries = 0\n[health]\nmax_concurrent = 50\nbreaker_failures = 3\nbreaker_cooldown = \"1h\"\n",
    ));
    let flaky: Vec<String> =
        (0..4).map(|_| ws.spawn("NET", &["sh", "-c", "echo 'network unreachable'; exit 1"])).collect();
    for id in &flaky {
        ws.wait_state(id, &["escalated", "queued"], SECS(20));
    }
    let other = ws.spawn("BUILD", &["true"]);
    let v = ws.wait_state(&other, &["complete", "queued"], SECS(20));
    let held_net = ws.spawn("NET", &["true"]);
    let q = ws.agent(&held_net);
    let health = ws.json(&["health", "--json"]);
    println!("UNATTENDED role_breaker other_role={} same_role={}", v["status"], q["status"]);
    assert_eq!(v["status"], "complete", "role NET's breaker must not hold BUILD: {health}");
    assert_eq!(q["status"], "queued", "{q}");
    let reason = q["reason"].as_str().unwrap();
    assert!(reason.starts_with("NET: circuit breaker open after 3 recent failures; probe in"), "{reason}");
    assert_eq!(health["breaker"]["scope"], "role");
    assert_eq!(health["breakers"][0]["key"], "NET", "{health}");
    assert_eq!(health["breakers"][0]["state"], "open", "{health}");
    assert!(health["heldBecause"].is_null(), "the workspace as a whole is not held: {health}");
    // The queue reason is printed once, and says the same as health.
    let table = ws.ok(&["status"]);
    let line = table.lines().find(|l| l.starts_with(&held_net)).unwrap();
    assert_eq!(line.matches("QUEUED").count(), 1, "{line}");
    assert_eq!(health["queued"][0]["reason"], reason);
}

#[test]
fn what_is_shown_is_true_and_current() {
    let ws = Ws::with_config(Some(&config("")));
    // The breaker is off in this workspace: health says so.
    let text = ws.ok(&["health"]);
    assert!(text.contains("breaker:     off"), "{text}");
    assert_eq!(ws.json(&["health", "--json"])["breaker"]["state"], "off");
    // The attempt column after a human retry counts within the fresh budget.
    let id = ws.spawn("AUDITOR", &["sh", "-c", "[ -e ok ] && exit 0; exit 2"]);
    ws.wait_state(&id, &["escalated"], SECS(20));
    std::fs::write(ws.path().join("ok"), "").unwrap();
    ws.ok(&["retry", &id]);
    let v = ws.wait_state(&id, &["complete"], SECS(20));
    let table = ws.ok(&["status"]);
    let line = table.lines().find(|l| l.starts_with(&id)).unwrap().to_string();
    println!("UNATTENDED shown_true attempt={} budget_attempt={} line={line:?}", v["attempt"], v["budgetAttempt"]);
    assert_eq!((v["attempt"].as_u64(), v["budgetAttempt"].as_u64()), (Some(2), Some(1)), "{v}");
    assert!(line.contains("1/2 #2"), "{line}");
    assert!(!line.contains("2/2"), "{line}");
}
