//! The read commands in cluster mode, from a machine with no worker: `health`,
//! `escalations`, `monitor` and `logs` by SQL against a real PostgreSQL, with real
//! `corral worker` processes running the agents (see `common::cluster`).

mod common;

use common::cluster::{CONFIG, Cluster, text, until};
use common::tmux::Tmux;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// The harness's policy, and an exit code that escalates at once.
fn config() -> String {
    format!("{CONFIG}\n[[classify]]\nexit_codes = [3]\naction = \"escalate\"\n")
}

fn spawn(c: &Cluster, id: &str, cmd: &[String]) {
    let mut args = vec!["spawn", "--role", "worker", "--task", "a task", "--id", id, "--"];
    args.extend(cmd.iter().map(String::as_str));
    assert_eq!(c.ok(&args), id);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn health_escalations_and_logs_by_sql_match_what_the_workers_did() {
    let mut c = Cluster::new(&config());
    // Before any worker: two queued, held because nobody can take them.
    spawn(&c, "ok1", &c.script(100, 0, 0));
    spawn(&c, "ok2", &c.script(100, 0, 0));
    let h = c.json(&["health", "--json"]);
    assert_eq!(h["healthy"], false, "{h}");
    assert!(h["heldBecause"].as_str().unwrap().contains("no worker"), "{h}");
    assert_eq!(h["running"], 0, "{h}");
    assert_eq!(h["maxConcurrent"], 5, "{h}");
    let queued: Vec<&str> = h["queued"].as_array().unwrap().iter().map(|q| q["agentId"].as_str().unwrap()).collect();
    assert_eq!(queued, ["ok1", "ok2"], "{h}");
    assert_eq!(h["cluster"]["liveWorkers"], 0, "{h}");
    // What only a worker's supervisor knows is not made up: left out, and named.
    for k in ["freeMemory", "load"] {
        assert!(h.get(k).is_none(), "{k} in {h}");
        assert!(h["localOnly"].as_array().unwrap().iter().any(|x| x == k), "{k} not named in {h}");
    }
    // Rate-limit holds are the cluster's: none yet.
    assert_eq!(h["providers"], serde_json::json!([]), "{h}");
    // The pause and the groups are the cluster's, in the database.
    assert_eq!((h["paused"].as_bool(), h["groups"].as_array().map(Vec::len)), (Some(false), Some(0)), "{h}");

    c.start_worker(0);
    c.start_worker(1);
    spawn(&c, "ok3", &c.script(100, 0, 0));
    spawn(&c, "esc", &c.script(100, 3, 3));
    c.wait_all_of(&["ok1", "ok2", "ok3"], "complete", Duration::from_secs(30));
    c.wait_all_of(&["esc"], "escalated", Duration::from_secs(30));
    spawn(&c, "long", &c.script(60_000, 0, 0));
    assert!(until(Duration::from_secs(20), || c.ledger().iter().any(|r| r.id == "long" && r.start)), "{}", c.logs());

    // health: one running (the long one), nothing queued, the one escalation, both workers.
    let h = c.json(&["health", "--json"]);
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["running"], 1, "{h}");
    assert_eq!(h["queued"], serde_json::json!([]), "{h}");
    assert_eq!(h["openEscalations"], 1, "{h}");
    assert_eq!(h["breaker"]["state"], "off", "{h}");
    let cl = &h["cluster"];
    assert_eq!((cl["workspace"].as_str(), cl["liveWorkers"].as_u64()), (Some("t"), Some(2)), "{h}");
    let workers = cl["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{h}");
    let busy: i64 = workers.iter().map(|w| w["agents"].as_i64().unwrap()).sum();
    assert_eq!(busy, 1, "the long agent holds one worker's slot: {h}");
    for w in workers {
        assert_eq!(w["host"], hostname(), "{w}");
        assert_eq!((w["live"].as_bool(), w["state"].as_str()), (Some(true), Some("active")), "{w}");
        assert!(w["leaseLeftSeconds"].as_f64().unwrap() > 0.0, "{w}");
        assert!(w["heartbeatAgeSeconds"].as_f64().unwrap() < 2.0, "{w}");
        assert!(w["pid"].as_i64().unwrap() > 0 && w["slots"].as_i64().unwrap() > 0, "{w}");
    }
    let human = c.ok(&["health"]);
    for want in [
        "healthy: new agents start at once",
        "capacity:    1 of 5 running",
        "escalations: 1 open",
        "workers:     2 live",
    ] {
        assert!(human.contains(want), "{want:?} not in:\n{human}");
    }
    assert!(human.contains(&format!("on {} (pid", hostname())), "{human}");

    // escalations: the agent that failed with `escalate`, as one machine lists it.
    let list = c.json(&["escalations", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let e = &list[0];
    assert_eq!((e["n"].as_u64(), e["agentId"].as_str()), (Some(1), Some("esc")), "{e}");
    assert!(!e["reason"].as_str().unwrap().is_empty(), "{e}");
    assert!(e["openedAt"].as_str().unwrap().starts_with("20") && e.get("resolvedAt").is_none(), "{e}");
    let human = c.ok(&["escalations"]);
    assert!(human.starts_with("#1") && human.contains("esc") && human.contains("OPEN"), "{human}");

    // Resolved with a note: no longer open, kept with --all; the agent stays escalated.
    c.ok(&["escalations", "resolve", "1", "--note", "seen it"]);
    assert_eq!(c.json(&["escalations", "--json"]), serde_json::json!([]));
    let all = c.json(&["escalations", "--json", "--all"]);
    assert_eq!(all[0]["note"], "seen it", "{all}");
    assert!(all[0]["resolvedAt"].is_string() && all[0]["outcome"].as_str().unwrap().contains("escalated"), "{all}");
    assert_eq!(c.json(&["health", "--json"])["openEscalations"], 0);
    let again = c.run(&["escalations", "resolve", "1"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let none = c.run(&["escalations", "resolve", "9"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));

    // A second escalation; `corral retry` of its agent resolves it and runs it again.
    spawn(&c, "esc2", &c.script(100, 3, 0));
    c.wait_all_of(&["esc2"], "escalated", Duration::from_secs(30));
    let list = c.json(&["escalations", "--json"]);
    assert_eq!((list[0]["n"].as_u64(), list[0]["agentId"].as_str()), (Some(2), Some("esc2")), "{list}");
    // `status` and `show` give it the database's number too, whatever its worker's was.
    let views = c.json(&["status", "--json", "esc2"]);
    assert_eq!(views[0]["escalation"], 2, "{views}");
    assert!(views[0]["anomalies"].as_array().unwrap().iter().any(|a| a == "NEEDS-HUMAN #2"), "{views}");
    assert_eq!(c.json(&["show", "--json", "esc2"])["escalation"], 2);
    assert_eq!(c.json(&["status", "--json", "esc"])[0]["escalation"], Value::Null, "resolved: no number");
    c.ok(&["retry", "esc2"]);
    assert_eq!(c.json(&["escalations", "--json"]), serde_json::json!([]));
    let all = c.json(&["escalations", "--all", "--json"]);
    assert!(all[1]["outcome"].as_str().unwrap().contains("retry"), "{all}");

    // logs: not in the database; the error names the host and the epoch dir that have it.
    let l = c.run(&["logs", "ok1"]);
    assert_eq!(l.status.code(), Some(2), "{}", text(&l));
    let err = String::from_utf8_lossy(&l.stderr);
    assert!(err.contains("stay on the disk of the worker"), "{err}");
    assert!(err.contains(&format!("host {}", hostname())), "{err}");
    let owner = c.pg.sql("corral", "SELECT worker::text FROM attempts WHERE agent_id = 'ok1' ORDER BY n DESC LIMIT 1");
    assert!(err.contains(&format!("epochs/{owner}-1")), "{owner}: {err}");
    assert!(l.stdout.is_empty(), "{}", text(&l));
    let l = c.run(&["logs", "long"]);
    assert!(String::from_utf8_lossy(&l.stderr).contains("runs on host"), "{}", text(&l));

    c.ok(&["kill", "long", "--grace", "1s"]);
    c.check(5);
}

#[test]
fn monitor_without_a_terminal_follows_spawns_and_rides_out_the_database_going_away() {
    let mut c = Cluster::new(&config());
    c.start_worker(0);
    spawn(&c, "first", &c.script(100, 0, 0));
    c.wait_all_of(&["first"], "complete", Duration::from_secs(30));

    // --once: one snapshot, the same table `status` prints, the health line, the worker.
    let once = c.ok(&["monitor", "--once"]);
    assert!(once.starts_with("1 agent (1 complete); 0 of 5 running; breaker off; 0 open escalations"), "{once}");
    assert!(once.contains("AGENT") && once.lines().any(|l| l.starts_with("first") && l.contains("complete")), "{once}");
    assert!(once.contains("workers:     1 live"), "{once}");

    // Followed with its output in a file: a snapshot at once, another after each change.
    let out = c.ws.path().join("monitor.out");
    let err = c.ws.path().join("monitor.err");
    let mut mon = c
        .cmd(&["monitor"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(until(Duration::from_secs(10), || read(&out).contains("first")), "{}\n{}", read(&out), read(&err));
    spawn(&c, "second", &c.script(100, 3, 3));
    // The spawn is seen (woken by the notification), then its end and its escalation.
    assert!(
        until(Duration::from_secs(30), || {
            let o = read(&out);
            o.lines().any(|l| l.starts_with("second") && l.contains("escalated")) && o.contains("escalations:")
        }),
        "{}\n{}\n{}",
        read(&out),
        read(&err),
        c.logs()
    );
    let frames = read(&out).matches("; breaker off; ").count();
    assert!(frames >= 2, "a new snapshot per change: {}", read(&out));

    // The database goes away for a while: it says so, keeps running, and says when it is back.
    c.pg.stop();
    assert!(until(Duration::from_secs(15), || read(&err).contains("reconnecting")), "{}", read(&err));
    std::thread::sleep(Duration::from_secs(2));
    assert!(mon.try_wait().unwrap().is_none(), "the monitor ended: {}", read(&err));
    c.pg.start_again();
    assert!(until(Duration::from_secs(20), || read(&err).contains("the database is back")), "{}", read(&err));
    spawn(&c, "third", &c.script(100, 0, 0));
    assert!(
        until(Duration::from_secs(20), || read(&out).lines().any(|l| l.starts_with("third"))),
        "{}\n{}",
        read(&out),
        read(&err)
    );
    assert!(mon.try_wait().unwrap().is_none(), "the monitor ended: {}", read(&err));
    let _ = mon.kill();
    let _ = mon.wait();
}

/// `corral monitor` in a real terminal (tmux), from the workspace with only the database's URL, in a `w` x `h` terminal.
fn monitor(c: &Cluster, w: u16, h: u16) -> Tmux {
    let socket = format!("corral-cl-{}", c.ws.path().file_name().unwrap().to_string_lossy());
    let cmd = format!(
        "cd {} && env PGPASSWORD={} CORRAL_DATABASE_URL={} {} monitor",
        c.ws.path().display(),
        common::pg::PASSWORD,
        c.url(),
        common::bin().display()
    );
    Tmux::start(socket, &cmd, w, h)
}

#[test]
fn monitor_in_a_terminal_shows_the_cluster_kills_by_key_and_says_when_the_database_is_away() {
    let mut c = Cluster::new(&config());
    c.start_worker(0);
    spawn(&c, "victim", &c.script(60_000, 0, 0));
    spawn(&c, "short", &c.script(100, 0, 0));
    c.wait_all_of(&["short"], "complete", Duration::from_secs(30));
    assert!(until(Duration::from_secs(20), || c.ledger().iter().any(|r| r.id == "victim" && r.start)), "{}", c.logs());
    let t = monitor(&c, 120, 30);
    let row = |id: &str| t.screen().lines().find(|l| l.contains(id)).map(str::to_string);
    assert!(
        until(Duration::from_secs(10), || row("victim").is_some_and(|r| r.contains("running"))
            && row("short").is_some_and(|r| r.contains("complete"))),
        "{}",
        t.screen()
    );
    assert!(t.screen().contains("capacity"), "{}", t.screen());
    // A new spawn appears without a key press.
    spawn(&c, "later", &c.script(100, 0, 0));
    assert!(until(Duration::from_secs(10), || row("later").is_some()), "{}", t.screen());
    // The detail pane of the second row: its attempt on its worker's host, from the database.
    t.keys(&["Home", "Down", "d"]);
    let attempt = format!("#1 exit 0 -> complete on {}", hostname());
    assert!(until(Duration::from_secs(10), || t.screen().contains(&attempt)), "{attempt:?} not in:\n{}", t.screen());
    assert!(t.screen().contains("detail short"), "{}", t.screen());
    t.keys(&["d"]);
    // The kill key on the first row (the victim): asks, then kills it through its worker.
    t.keys(&["Home", "k"]);
    assert!(until(Duration::from_secs(5), || t.screen().contains("kill victim ? y/N")), "{}", t.screen());
    t.keys(&["y"]);
    assert!(
        until(Duration::from_secs(20), || row("victim").is_some_and(|r| r.contains("killed"))),
        "{}\n{}",
        t.screen(),
        c.logs()
    );
    assert_eq!(c.states()["victim"], "killed");
    assert_eq!(c.states()["short"], "complete");
    // The database goes away and comes back: said on the message line, the dashboard stays.
    c.pg.stop();
    assert!(until(Duration::from_secs(15), || t.screen().contains("reconnecting")), "{}", t.screen());
    assert!(t.alive(), "the monitor ended");
    c.pg.start_again();
    assert!(until(Duration::from_secs(20), || t.screen().contains("the database is back")), "{}", t.screen());
    t.keys(&["q"]);
    assert!(until(Duration::from_secs(5), || !t.alive()), "q did not quit: {}", t.screen());
}

#[test]
fn health_shows_the_cluster_breaker_open_and_why_a_queued_agent_waits() {
    let config = config().replace("breaker_failures = 0", "breaker_failures = 2\nbreaker_cooldown = \"10m\"");
    let mut c = Cluster::new(&config);
    c.start_worker(0);
    // Two agents of role `worker` escalate at once: two failures open its breaker.
    spawn(&c, "bad1", &c.script(100, 3, 3));
    spawn(&c, "bad2", &c.script(100, 3, 3));
    c.wait_all_of(&["bad1", "bad2"], "escalated", Duration::from_secs(30));
    let open = || c.json(&["health", "--json"])["breaker"]["state"] == "open";
    assert!(until(Duration::from_secs(10), open), "{}\n{}", c.json(&["health", "--json"]), c.logs());
    spawn(&c, "held", &c.script(100, 0, 0));
    let h = c.json(&["health", "--json"]);
    let b = &h["breaker"];
    assert_eq!((b["key"].as_str(), b["scope"].as_str()), (Some("worker"), Some("role")), "{h}");
    assert_eq!((b["recentFailures"].as_u64(), b["threshold"].as_u64()), (Some(2), Some(2)), "{h}");
    let probe = b["probeInSeconds"].as_f64().unwrap();
    assert!(probe > 500.0 && probe <= 600.0, "{h}");
    assert_eq!(h["breakers"].as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h["openEscalations"], 2, "{h}");
    let q = &h["queued"][0];
    assert_eq!(q["agentId"], "held", "{h}");
    assert!(q["reason"].as_str().unwrap().contains("circuit breaker open after 2 recent failures"), "{h}");
    // Held for real: the worker does not start it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.states()["held"], "queued");
    let human = c.ok(&["health"]);
    assert!(human.contains("breakers:    one per role") && human.contains("open (2 of 2 failures"), "{human}");
    assert!(human.contains("held  worker: circuit breaker open"), "{human}");
}
