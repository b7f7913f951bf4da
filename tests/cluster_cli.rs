//! The client commands in cluster mode, from a machine with no worker: `spawn`, `status`,
//! `show`, `kill`, `retry`, `tell`, `wait` and `events` by SQL against a real PostgreSQL,
//! with real `corral worker` processes running the agents (see `common::cluster`).

mod common;

use common::cluster::{CONFIG, Cluster, text, until};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

fn state(c: &Cluster, id: &str) -> String {
    c.pg.sql("corral", &format!("SELECT state FROM agents WHERE workspace = 't' AND id = '{id}'"))
}

#[test]
fn fifty_spawns_at_once_from_machines_with_no_worker_get_distinct_dense_ids() {
    let mut c = Cluster::new(CONFIG);
    // Half from the workspace, half from a directory with no corral.toml at all.
    let bare = tempfile::tempdir().unwrap();
    // Followed from the start, through a restart of the database below.
    let events_out = c.ws.path().join("events.jsonl");
    let mut follow = c
        .cmd(&["events", "-f"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(std::fs::File::create(c.ws.path().join("follow.err")).unwrap())
        .spawn()
        .unwrap();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let mut cmd = c.cmd(&["spawn", "--role", "worker", "--task", &format!("task {i}"), "--", "true"]);
            if i % 2 == 1 {
                cmd.current_dir(bare.path()).env("CORRAL_WORKSPACE", "t");
            }
            std::thread::spawn(move || cmd.stdin(Stdio::null()).output().unwrap())
        })
        .collect();
    let mut ids = BTreeSet::new();
    for t in threads {
        let o = t.join().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(id.starts_with("agent-") && id.ends_with("-worker"), "only the id on stdout: {id:?}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 50, "50 distinct ids: {ids:?}");
    let seqs =
        c.pg.sql("corral", "SELECT count(*) || ' ' || min(seq) || ' ' || max(seq) FROM agents WHERE workspace = 't'");
    assert_eq!(seqs, "50 1 50", "dense numbers");
    for n in 1..=50 {
        assert!(ids.contains(&format!("agent-{n:03}-worker")), "agent-{n:03}-worker");
    }

    // The same idempotency key twice: the same agent, nothing new queued.
    let spawn_keyed =
        |task: &str| c.run(&["spawn", "--role", "worker", "--task", task, "--idempotency-key", "k1", "--", "true"]);
    let first = spawn_keyed("keyed");
    let again = spawn_keyed("keyed");
    assert!(first.status.success() && again.status.success(), "{}\n{}", text(&first), text(&again));
    assert_eq!(first.stdout, again.stdout, "same key, same id");
    assert!(String::from_utf8_lossy(&again.stderr).contains("spawned before"), "{}", text(&again));
    // The key for something else is refused, and so is an id already taken.
    let other = spawn_keyed("something else");
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    assert!(String::from_utf8_lossy(&other.stderr).contains("idempotency key"), "{}", text(&other));
    let dup = c.run(&["spawn", "--role", "worker", "--task", "x", "--id", "agent-001-worker", "--", "true"]);
    assert_eq!(dup.status.code(), Some(2), "{}", text(&dup));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"), "{}", text(&dup));
    assert_eq!(c.pg.sql("corral", "SELECT count(*) FROM agents WHERE workspace = 't'"), "51");

    // Status from the bare directory: every agent, queued, in the agent shape.
    let mut status = c.cmd(&["status", "--json"]);
    status.current_dir(bare.path()).env("CORRAL_WORKSPACE", "t");
    let o = status.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let views: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(views.len(), 51);
    let v = &views[0];
    assert_eq!(v["agentId"], "agent-001-worker");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["role"], "worker");
    assert_eq!(v["task"].as_str().map(|t| t.starts_with("task ")), Some(true), "{v}");
    assert_eq!(v["attempt"], 0);
    assert!(v["spawnedAt"].as_str().is_some_and(|s| s.starts_with("20")), "{v}");
    assert!(v["maxRetries"].is_u64() && v["anomalies"].is_array() && v["cwd"].is_string(), "{v}");
    // By number, and by role; the table too.
    assert_eq!(c.json(&["status", "--json", "7"])[0]["agentId"], "agent-007-worker");
    assert_eq!(c.json(&["status", "--json", "--role", "nobody"]), serde_json::json!([]));
    let table = c.ok(&["status"]);
    assert!(table.starts_with("AGENT") && table.contains("agent-050-worker"), "{table}");

    // A queued agent killed before any worker has it: killed in the database, an event.
    let k = c.run(&["kill", "agent-002-worker"]);
    assert!(k.status.success(), "{}", text(&k));
    assert!(String::from_utf8_lossy(&k.stderr).contains("killed"), "{}", text(&k));
    assert_eq!(state(&c, "agent-002-worker"), "killed");
    let ev =
        c.pg.sql("corral", "SELECT kind FROM events WHERE agent_id = 'agent-002-worker' ORDER BY seq DESC LIMIT 1");
    assert_eq!(ev, "killed");
    // Retrying a queued one is refused; a killed one goes back to the queue.
    let r = c.run(&["retry", "agent-003-worker"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(String::from_utf8_lossy(&r.stderr).contains("queued already"), "{}", text(&r));
    c.ok(&["retry", "agent-002-worker", "--context", "try harder"]);
    assert_eq!(state(&c, "agent-002-worker"), "queued");
    let shown = c.json(&["show", "--json", "agent-002-worker"]);
    let kinds: Vec<&str> = shown["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["spawned", "killed", "retried"], "{shown}");
    assert!(shown["task"].as_str().unwrap().contains("try harder"), "{shown}");
    // A tell for an agent nobody runs waits for whoever claims it.
    let t = c.run(&["tell", "agent-004-worker", "hello"]);
    assert!(t.status.success() && String::from_utf8_lossy(&t.stderr).contains("waits"), "{}", text(&t));
    assert_eq!(
        c.pg.sql("corral", "SELECT count(*) FROM commands WHERE agent_id = 'agent-004-worker' AND taken_at IS NULL"),
        "1"
    );
    // Unknown agents and commands that need a worker's files say so.
    let u = c.run(&["show", "nope"]);
    assert_eq!(u.status.code(), Some(2), "{}", text(&u));
    assert!(String::from_utf8_lossy(&u.stderr).contains("no agent \"nope\""), "{}", text(&u));
    let l = c.run(&["clean"]);
    assert_eq!(l.status.code(), Some(2), "{}", text(&l));
    assert!(
        String::from_utf8_lossy(&l.stderr).contains("`corral clean` does not work from the database yet"),
        "{}",
        text(&l)
    );
    let l = c.run(&["logs", "agent-001-worker"]);
    assert_eq!(l.status.code(), Some(2), "{}", text(&l));
    assert!(String::from_utf8_lossy(&l.stderr).contains("has not run on any worker yet"), "{}", text(&l));
    // Events: every one, once, in order.
    let lines = c.ok(&["events"]);
    let seqs: Vec<i64> =
        lines.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap()).collect();
    let n: i64 = c.pg.sql("corral", "SELECT count(*) FROM events WHERE workspace = 't'").parse().unwrap();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let after = c.ok(&["events", "--after", "50", "--agent", "agent-002-worker"]);
    assert_eq!(after.lines().count(), 2, "{after}");

    // The database restarts under `events -f`: it reconnects and prints each event once.
    c.pg.restart();
    for i in 0..3 {
        c.ok(&["spawn", "--role", "worker", "--task", &format!("after the restart {i}"), "--", "true"]);
    }
    let n: i64 = c.pg.sql("corral", "SELECT count(*) FROM events WHERE workspace = 't'").parse().unwrap();
    let seen = || -> Vec<i64> {
        std::fs::read_to_string(&events_out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap())
            .collect()
    };
    let err = || std::fs::read_to_string(c.ws.path().join("follow.err")).unwrap();
    assert!(
        until(Duration::from_secs(15), || seen().len() as i64 >= n),
        "{} of {n} events followed: {}",
        seen().len(),
        err()
    );
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen(), (1..=n).collect::<Vec<_>>(), "each event once, in order");
}

/// An agent that waits (at most 20 s) for a message in its inbox and copies the inbox next
/// to the ledger.
const TELLER: &str = r#"
out=$1
i=0
while ! grep -q "from afar" "$CORRAL_INBOX_FILE" 2>/dev/null; do
  i=$((i+1)); [ $i -gt 200 ] && exit 3
  sleep 0.1
done
cp "$CORRAL_INBOX_FILE" "$out"
"#;

#[test]
fn kill_retry_tell_wait_and_events_from_a_machine_with_no_worker() {
    let mut c = Cluster::new(CONFIG);
    let ws = c.ws.path().to_path_buf();
    std::fs::write(ws.join("teller.sh"), TELLER).unwrap();
    let events_out = ws.join("events.jsonl");
    let mut follow = c
        .cmd(&["events", "-f"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&events_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.start_worker(0);
    c.start_worker(1);
    let spawn = |id: &str, cmd: &[String]| {
        let mut args = vec!["spawn", "--role", "worker", "--task", "a task", "--id", id, "--"];
        args.extend(cmd.iter().map(String::as_str));
        assert_eq!(c.ok(&args), id);
    };
    spawn("short", &c.script(200, 0, 0));
    let inbox_copy = ws.join("inbox-copy");
    spawn("teller", &["sh".into(), ws.join("teller.sh").display().to_string(), inbox_copy.display().to_string()]);
    // Waits for both, in the background, while they are told and run.
    let waiter =
        c.cmd(&["wait", "--all", "--timeout", "40s"]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();

    // Tell a running agent: the text lands in its inbox on its worker.
    assert!(until(Duration::from_secs(20), || state(&c, "teller") == "running"), "{}", c.logs());
    let t = c.run(&["tell", "teller", "hello from afar"]);
    assert!(t.status.success(), "{}", text(&t));
    assert!(String::from_utf8_lossy(&t.stderr).contains("appended to"), "{}", text(&t));
    assert!(until(Duration::from_secs(20), || inbox_copy.exists()), "{}", c.logs());
    assert!(std::fs::read_to_string(&inbox_copy).unwrap().contains("hello from afar"));
    let w = waiter.wait_with_output().unwrap();
    assert_eq!(w.status.code(), Some(0), "wait --all: {}\n{}", text(&w), c.logs());
    let printed = String::from_utf8_lossy(&w.stdout);
    assert!(printed.contains("short complete") && printed.contains("teller complete"), "{printed}");

    // Kill a running agent: killed, its process gone (the ledger has its end).
    spawn("long", &c.script(30_000, 0, 0));
    assert!(until(Duration::from_secs(20), || c.ledger().iter().any(|r| r.id == "long" && r.start)), "{}", c.logs());
    let k = c.run(&["kill", "long", "--grace", "1s", "--json"]);
    assert!(k.status.success(), "{}\n{}", text(&k), c.logs());
    let kv: Value = serde_json::from_slice(&k.stdout).unwrap();
    assert_eq!((kv["agentId"].as_str(), kv["status"].as_str()), (Some("long"), Some("killed")), "{kv}");
    assert_eq!(state(&c, "long"), "killed");
    assert!(c.ledger().iter().any(|r| r.id == "long" && !r.start), "no end in the ledger: {:?}", c.ledger());

    // Retry a complete agent: it runs again, under a higher fence.
    let r = c.run(&["retry", "short"]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(until(Duration::from_secs(20), || c.ledger().iter().filter(|r| r.id == "short" && r.start).count() == 2));
    // The attempts' fences in the database, and the agent's own CORRAL_FENCE in each run
    // (also when the run again is on the worker that ran it before).
    let fences =
        c.pg.sql("corral", "SELECT string_agg(fence::text, ' ' ORDER BY n) FROM attempts WHERE agent_id = 'short'");
    let fences: Vec<i64> = fences.split(' ').map(|f| f.parse().unwrap()).collect();
    assert!(fences.len() == 2 && fences[1] > fences[0], "fences {fences:?}");
    let seen: Vec<i64> = c.ledger().iter().filter(|r| r.id == "short" && r.start).map(|r| r.fence).collect();
    assert_eq!(seen, fences, "the agent saw the fence of its claim each time");
    assert!(until(Duration::from_secs(20), || state(&c, "short") == "complete"), "{}", c.logs());

    // Waiting for everything now: one was killed, so not all complete.
    let w = c.run(&["wait", "--all", "--timeout", "20s"]);
    assert_eq!(w.status.code(), Some(1), "{}", text(&w));
    assert!(String::from_utf8_lossy(&w.stdout).contains("long killed"), "{}", text(&w));
    let w = c.run(&["wait", "short", "teller", "--json"]);
    assert_eq!(w.status.code(), Some(0), "{}", text(&w));
    assert_eq!(String::from_utf8_lossy(&w.stdout).lines().count(), 2);

    // status --json and show --json from the database.
    let views = c.json(&["status", "--json"]);
    let by_id = |id: &str| views.as_array().unwrap().iter().find(|v| v["agentId"] == id).cloned().unwrap();
    let s = by_id("short");
    assert_eq!((s["status"].as_str(), s["role"].as_str()), (Some("complete"), Some("worker")), "{s}");
    assert_eq!(s["exitCode"], 0, "{s}");
    assert_eq!(by_id("long")["status"], "killed");
    let show = c.json(&["show", "short", "--json"]);
    assert_eq!(show["agentId"], "short");
    assert_eq!(show["status"], "complete");
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{show}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["n"], i as i64 + 1);
        assert_eq!(a["outcome"], "complete", "{a}");
        assert_eq!(a["exitCode"], 0, "{a}");
        assert!(
            a["worker"].is_string() && a["host"].is_string() && a["startedAt"].is_string() && a["endedAt"].is_string(),
            "{a}"
        );
    }
    assert!(attempts[1]["fence"].as_i64() > attempts[0]["fence"].as_i64());
    let kinds: Vec<&str> = show["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "claimed").count(), 2, "{kinds:?}");
    assert!(kinds.contains(&"spawned") && kinds.contains(&"retried"), "{kinds:?}");
    assert!(show["worker"]["host"].is_string() && show["owner"].is_null(), "{show}");
    let human = c.ok(&["show", "short"]);
    assert!(human.contains("attempts (2)") && human.contains("retried"), "{human}");

    // events -f saw every event once, in order.
    let n: usize = c.pg.sql("corral", "SELECT count(*) FROM events WHERE workspace = 't'").parse().unwrap();
    let seen = || -> Vec<i64> {
        std::fs::read_to_string(&events_out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap())
            .collect()
    };
    assert!(until(Duration::from_secs(10), || seen().len() >= n), "{} of {n} events followed", seen().len());
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen(), (1..=n as i64).collect::<Vec<_>>(), "each event once, in order");
    c.check(5);
}
