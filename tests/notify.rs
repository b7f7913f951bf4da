//! `[[notify]]` hooks through the real binary: hooks run `curl` posting to an HTTP receiver
//! on 127.0.0.1 that records what it got; a hook that hangs is killed at its timeout while
//! the supervisor keeps answering; a hook that cannot start is recorded.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got: its path, its body, and when it came.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    body: String,
    at: Instant,
}

/// A tiny HTTP server on 127.0.0.1 recording every request.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let g = g.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut first = String::new();
                    if r.read_line(&mut first).is_err() {
                        return;
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    let at = Instant::now();
                    g.lock().unwrap().push(Got { path, body: String::from_utf8_lossy(&body).into_owned(), at });
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                });
            }
        });
        Self { port, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The requests to `path` so far.
    fn on(&self, path: &str) -> Vec<Posted> {
        self.got().into_iter().filter(|g| g.path == path).map(Posted::parse).collect()
    }
}

/// What a test hook posts: its environment's three values, one a line, then the event JSON
/// it read on stdin.
#[derive(Debug)]
struct Posted {
    event: String,
    agent: String,
    reason: String,
    json: Value,
    at: Instant,
}

impl Posted {
    fn parse(g: Got) -> Self {
        let mut lines = g.body.splitn(4, '\n');
        let mut next = || lines.next().unwrap_or("").to_string();
        let (event, agent, reason, rest) = (next(), next(), next(), next());
        let json = serde_json::from_str(&rest).unwrap_or_else(|e| panic!("hook stdin is not JSON ({e}): {}", g.body));
        Self { event, agent, reason, json, at: g.at }
    }
}

/// A hook posting its env and stdin to `path` on the receiver, with curl (python3 where
/// curl is missing).
fn poster(port: u16, path: &str) -> String {
    let have_curl = std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    let send = if have_curl {
        format!("curl -sS -f -H 'Expect:' --data-binary @- http://127.0.0.1:{port}{path}")
    } else {
        format!(
            "python3 -c 'import sys,urllib.request; urllib.request.urlopen(\"http://127.0.0.1:{port}{path}\", \
             sys.stdin.buffer.read())'"
        )
    };
    let script = format!(
        "{{ printf '%s\\n' \"$CORRAL_EVENT\" \"$CORRAL_AGENT_ID\"; printf '%s' \"$CORRAL_REASON\" | tr '\\n' ' '; \
         printf '\\n'; cat; }} | {send}"
    );
    toml_str(&["sh", "-c", &script])
}

/// An argv as a TOML array.
fn toml_str(argv: &[&str]) -> String {
    serde_json::to_string(argv).unwrap()
}

const FAST: &str = r#"
[defaults]
backoff = { initial = "200ms", coefficient = 2.0 }
[health]
max_concurrent = 50
breaker_failures = 0
[[classify]]
exit_codes = [3]
action = "fail"
name = "exit 3 fails"
"#;

fn events_of(ws: &Ws, id: &str) -> Vec<Value> {
    ws.ok(&["events", "--agent", id]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn all_events(ws: &Ws) -> Vec<Value> {
    ws.ok(&["events"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn hooks_get_complete_failed_needs_human_and_all_finished_once_per_run() {
    let rx = Receiver::start();
    let config = format!(
        "{FAST}\n[[notify]]\non = [\"complete\", \"failed\", \"needs-human\", \"all-finished\"]\ncommand = {}\n\
         [[notify]]\non = [\"escalated\"]\ncommand = {}\n",
        poster(rx.port, "/one"),
        poster(rx.port, "/two")
    );
    let ws = Ws::with_config(Some(&config));
    // All four run together (each waits for `go`), so they make one run.
    let gated = |then: &str| format!("while [ ! -e go ]; do sleep 0.05; done; {then}");
    let done = ws.spawn("IMPLEMENTER", &["sh", "-c", &gated("corral report --status complete --progress 1.0")]);
    let failed = ws
        .spawn("IMPLEMENTER", &["sh", "-c", &gated("corral report --status failed --finding 'disk on fire'; exit 3")]);
    let escalated = ws.spawn(
        "IMPLEMENTER",
        &["sh", "-c", &gated("corral report --status failed --finding 'null pointer in parser'; exit 2")],
    );
    let blocked = ws.spawn(
        "IMPLEMENTER",
        &["sh", "-c", &gated("corral report --status blocked --finding 'waiting on external API'; sleep 0.3; exit 0")],
    );
    for id in [&done, &failed, &escalated, &blocked] {
        ws.wait_state(id, &["running"], SECS(10));
    }
    assert!(rx.got().is_empty(), "{:?}", rx.got());
    std::fs::write(ws.path().join("go"), "").unwrap();
    let ids = [&done, &failed, &escalated, &blocked];
    for id in ids {
        ws.wait_state(id, &["complete", "failed", "escalated", "blocked"], SECS(20));
    }
    assert!(
        wait_until(SECS(15), || rx.on("/one").iter().any(|p| p.event == "all-finished")),
        "no all-finished: {:?}\n{}",
        rx.got(),
        std::fs::read_to_string(ws.data.join("notify.log")).unwrap_or_default()
    );
    // Every notification of the run is in before all-finished, which comes once.
    let one = rx.on("/one");
    let find = |id: &str, event: &str| {
        one.iter().find(|p| p.agent == id && p.event == event).unwrap_or_else(|| panic!("no {event} for {id}: {one:?}"))
    };
    let c = find(&done, "complete");
    assert_eq!((c.json["event"].as_str(), c.json["kind"].as_str()), (Some("complete"), Some("complete")));
    assert_eq!(c.json["agentId"], done.as_str());
    assert_eq!(c.json["role"], "IMPLEMENTER");
    assert_eq!(c.json["task"], "test task");
    assert_eq!(c.reason, "complete");
    let f = find(&failed, "failed");
    assert_eq!(f.json["status"], "failed");
    assert!(f.reason.contains("disk on fire") || f.reason.contains("exit"), "{f:?}");
    assert_eq!(f.reason, f.json["reason"].as_str().unwrap().replace('\n', " "));
    // Escalated and blocked-with-nobody-left both need a human; each opened an escalation.
    for id in [&escalated, &blocked] {
        let n = find(id, "needs-human");
        assert_eq!(n.json["kind"], "escalation_opened", "{n:?}");
        assert!(n.json["data"]["escalation"].as_u64().unwrap() > 0, "{n:?}");
        assert!(!n.reason.is_empty());
        let opened = events_of(&ws, id).into_iter().find(|e| e["kind"] == "escalation_opened").unwrap();
        assert_eq!(n.json["seq"], opened["seq"]);
    }
    assert!(find(&blocked, "needs-human").reason.contains("waiting on external API"), "{one:?}");
    assert!(find(&escalated, "needs-human").reason.contains("null pointer"), "{one:?}");
    // The hook that asked only for `escalated` got the escalated agent, not the blocked one.
    let two = rx.on("/two");
    assert_eq!(two.len(), 1, "{two:?}");
    assert_eq!((two[0].event.as_str(), two[0].agent.as_str()), ("escalated", escalated.as_str()));
    let all: Vec<&Posted> = one.iter().filter(|p| p.event == "all-finished").collect();
    assert_eq!(all.len(), 1, "{one:?}");
    assert_eq!(all[0].agent, "");
    assert_eq!(all[0].json["data"]["agents"], 4, "{:?}", all[0]);
    assert!(all[0].reason.starts_with("4 agents finished:"), "{:?}", all[0]);
    let last_other = one.iter().filter(|p| p.event != "all-finished").map(|p| p.at).max().unwrap();
    assert!(all[0].at >= last_other, "all-finished came before the run's other notifications: {one:?}");
    // The run is over: nothing more arrives for it.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rx.on("/one").iter().filter(|p| p.event == "all-finished").count(), 1);
    let recorded: Vec<Value> = all_events(&ws).into_iter().filter(|e| e["kind"] == "all_finished").collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(all_events(&ws).iter().all(|e| e["kind"] != "notify_failed"), "{:?}", all_events(&ws));

    // A new agent starts and finishes: a new run, and all-finished once more.
    let again = ws.spawn("IMPLEMENTER", &["true"]);
    ws.wait_state(&again, &["complete"], SECS(10));
    assert!(wait_until(SECS(15), || rx.on("/one").iter().filter(|p| p.event == "all-finished").count() == 2));
    let second = rx.on("/one").into_iter().rfind(|p| p.event == "all-finished").unwrap();
    assert_eq!(second.json["data"]["agents"], 1, "{second:?}");
    assert!(rx.on("/one").iter().any(|p| p.agent == again && p.event == "complete"));
}

#[test]
fn needs_human_reaches_the_hook_within_a_second_of_the_escalation() {
    let rx = Receiver::start();
    let config = format!("{FAST}\n[[notify]]\non = [\"needs-human\"]\ncommand = {}\n", poster(rx.port, "/h"));
    let ws = Ws::with_config(Some(&config));
    let id = ws.spawn("IMPLEMENTER", &["sh", "-c", "sleep 0.5; corral report --status failed --finding 'bad'; exit 2"]);
    assert!(wait_until(SECS(15), || !rx.on("/h").is_empty()));
    let escalated_at = {
        let line = ws.ok(&["status", &id, "--json"]);
        assert!(line.contains("escalated"), "{line}");
        let opened = events_of(&ws, &id).into_iter().find(|e| e["kind"] == "escalation_opened").unwrap();
        humantime::parse_rfc3339(opened["at"].as_str().unwrap()).unwrap()
    };
    let got = rx.on("/h").remove(0);
    // When it came, on the wall clock, against when the escalation was recorded.
    let came = std::time::SystemTime::now() - Instant::now().duration_since(got.at);
    let lag = came.duration_since(escalated_at).unwrap_or_default();
    println!("NOTIFY needs_human lag={}ms", lag.as_millis());
    assert!(lag < Duration::from_secs(1), "needs-human came {lag:?} after the escalation");
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout_while_the_supervisor_keeps_answering() {
    let pidfile_dir = tempfile::tempdir().unwrap();
    let pids = pidfile_dir.path().join("pids");
    let script = format!("echo $$ >> {}; sleep 1000", pids.display());
    let config = format!(
        "{FAST}\n[[notify]]\non = [\"complete\"]\ncommand = {}\ntimeout = \"3s\"\n",
        toml_str(&["sh", "-c", &script])
    );
    let ws = Ws::with_config(Some(&config));
    let first = ws.spawn("IMPLEMENTER", &["true"]);
    assert!(wait_until(SECS(15), || std::fs::read_to_string(&pids).is_ok_and(|t| !t.trim().is_empty())));
    let pid: i32 = std::fs::read_to_string(&pids).unwrap().lines().next().unwrap().trim().parse().unwrap();
    assert!(alive(pid));
    // While the hook hangs: status answers, spawns start and run to the end.
    let more: Vec<String> = (0..3).map(|_| ws.spawn("IMPLEMENTER", &["true"])).collect();
    for id in &more {
        ws.wait_state(id, &["complete"], SECS(10));
    }
    assert_eq!(ws.status().len(), 4);
    assert!(alive(pid), "the hook is still within its timeout");
    // At its timeout the hook's group is killed and the failure recorded.
    let mut failed = None;
    assert!(wait_until(SECS(15), || {
        failed = events_of(&ws, &first).into_iter().find(|e| e["kind"] == "notify_failed");
        failed.is_some()
    }));
    let failed = failed.unwrap();
    assert_eq!(failed["data"]["hook"], 1, "{failed}");
    assert_eq!(failed["data"]["event"], "complete", "{failed}");
    assert!(failed["data"]["reason"].as_str().unwrap().contains("3s timeout"), "{failed}");
    assert!(wait_until(SECS(5), || !alive(pid)), "the hanging hook {pid} was not killed");
    // The others queued behind it, one at a time: the next one runs now.
    assert!(wait_until(SECS(10), || std::fs::read_to_string(&pids).unwrap().lines().count() >= 2));
    let running: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| alive(*p))
        .collect();
    assert!(running.len() <= 1, "more than one run of the hook at once: {running:?}");
    assert!(ws.ok(&["status"]).contains(&first));
    // A supervisor that stops kills the hook running now; the waiting ones never start.
    ws.ok(&["daemon", "stop"]);
    let all = || -> Vec<i32> {
        std::fs::read_to_string(&pids).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect()
    };
    assert!(wait_until(SECS(5), || all().iter().all(|p| !alive(*p))), "hooks left running: {:?}", all());
    let started = all().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(all().len(), started, "a hook started after the supervisor stopped");
}

#[test]
fn a_busy_hook_queues_a_bounded_number_and_records_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {}; sleep 5", pids.display());
    let config = format!("{FAST}\n[[notify]]\non = [\"complete\"]\ncommand = {}\n", toml_str(&["sh", "-c", &script]));
    let ws = Ws::with_config(Some(&config));
    // 19 agents complete at once: one runs the hook, 16 wait, the rest are dropped.
    let ids: Vec<String> =
        (0..19).map(|_| ws.spawn("IMPLEMENTER", &["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done"])).collect();
    for id in &ids {
        ws.wait_state(id, &["running"], SECS(10));
    }
    std::fs::write(ws.path().join("go"), "").unwrap();
    for id in &ids {
        ws.wait_state(id, &["complete"], SECS(10));
    }
    let dropped = || -> Vec<Value> {
        all_events(&ws)
            .into_iter()
            .filter(|e| e["kind"] == "notify_failed" && e["data"]["reason"].as_str().unwrap_or("").contains("dropped"))
            .collect()
    };
    assert!(wait_until(SECS(5), || dropped().len() >= 2), "{:?}", all_events(&ws));
    let d = dropped();
    assert!(d.len() <= 3, "more dropped than the queue explains: {d:?}");
    assert!(d.iter().all(|e| e["data"]["hook"] == 1 && e["data"]["event"] == "complete" && e["agentId"].is_string()));
    // One at a time: only one run of the hook has started so far.
    assert_eq!(std::fs::read_to_string(&pids).unwrap_or_default().lines().count(), 1);
    ws.ok(&["daemon", "stop"]);
    let all: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(wait_until(SECS(5), || all.iter().all(|p| !alive(*p))), "hooks left running: {all:?}");
}

#[test]
fn a_hook_that_cannot_start_is_recorded_and_the_supervisor_goes_on() {
    let rx = Receiver::start();
    let config = format!(
        "{FAST}\n[[notify]]\non = [\"complete\"]\ncommand = [\"/nonexistent/corral-hook\", \"x\"]\n\
         [[notify]]\non = [\"complete\"]\ncommand = [\"sh\", \"-c\", \"echo broken pipe dream >&2; exit 7\"]\n\
         [[notify]]\non = [\"complete\"]\ncommand = {}\n\
         [[notify]]\non = [\"complete\"]\ncommand = [\"sh\", \"-c\", \"env > hook-env.txt\"]\n",
        poster(rx.port, "/ok")
    );
    let ws = Ws::with_config(Some(&config));
    let id = ws.spawn("IMPLEMENTER", &["true"]);
    // A hook's environment: corral's three variables and none of its others.
    let env_file = ws.path().join("hook-env.txt");
    assert!(wait_until(SECS(15), || std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("CORRAL_REASON"))));
    let env = std::fs::read_to_string(&env_file).unwrap();
    let mut ours: Vec<&str> =
        env.lines().filter(|l| l.starts_with("CORRAL_")).map(|l| l.split('=').next().unwrap()).collect();
    ours.sort();
    assert_eq!(ours, ["CORRAL_AGENT_ID", "CORRAL_EVENT", "CORRAL_REASON"], "{env}");
    assert!(env.lines().any(|l| l == format!("CORRAL_AGENT_ID={id}")), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    let mut failures = Vec::new();
    assert!(wait_until(SECS(15), || {
        failures = events_of(&ws, &id).into_iter().filter(|e| e["kind"] == "notify_failed").collect();
        failures.len() == 2
    }));
    failures.sort_by_key(|e| e["data"]["hook"].as_u64());
    assert_eq!(failures[0]["data"]["hook"], 1);
    let why = failures[0]["data"]["reason"].as_str().unwrap();
    assert!(why.contains("cannot start") && why.contains("/nonexistent/corral-hook"), "{why}");
    assert_eq!(failures[1]["data"]["hook"], 2);
    let why = failures[1]["data"]["reason"].as_str().unwrap();
    assert!(why.contains("exited with code 7") && why.contains("broken pipe dream"), "{why}");
    // The working hook is not held up by the broken ones, and the supervisor is fine.
    assert!(wait_until(SECS(10), || rx.on("/ok").iter().any(|p| p.agent == id)));
    let next = ws.spawn("IMPLEMENTER", &["true"]);
    ws.wait_state(&next, &["complete"], SECS(10));
    assert!(wait_until(SECS(10), || rx.on("/ok").iter().any(|p| p.agent == next)));
}

#[test]
fn a_bad_notify_table_is_refused_with_its_line() {
    let ws = Ws::with_config(Some("[[notify]]\non = [\"finished\"]\ncommand = [\"true\"]\n"));
    let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("corral.toml:2:") && err.contains("notify.on") && err.contains("all-finished"), "{err}");
}
