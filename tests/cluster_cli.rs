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
    let l = c.run(&["merge"]);
    assert_eq!(l.status.code(), Some(2), "{}", text(&l));
    assert!(
        String::from_utf8_lossy(&l.stderr).contains("`corral merge` does not work from the database yet"),
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

/// An orchestrator agent on a worker spawns and waits through its own `corral`: its
/// sub-agents go into the cluster's queue (any worker may run them, the cluster-wide limit
/// holds them), not into the worker's local store. The worker was given its password in the
/// URL alone; its agents reach the database all the same.
#[test]
fn an_agent_on_a_worker_spawns_and_waits_cluster_wide() {
    let config = CONFIG.replace("max_concurrent = 5", "max_concurrent = 2");
    let mut c = Cluster::new(&config);
    let with_password = c.url().replacen("corral@", &format!("corral:{}@", common::pg::PASSWORD), 1);
    c.start_worker_as(0, &["--database", &with_password, "--label", "m=zero"], |cmd| {
        cmd.env_remove("PGPASSWORD").env_remove("CORRAL_DATABASE_URL");
    });
    c.start_worker(1);
    let orch = c.ws.path().join("orch.sh");
    std::fs::write(
        &orch,
        r#"set -e
C=$1; out=$2; shift 2
a=$("$C" spawn --role worker --task sub-a -- "$@")
b=$("$C" spawn --role worker --task sub-b -- "$@")
d=$("$C" spawn --role worker --task sub-c -- "$@")
"$C" wait "$a" "$b" "$d" > "$out.wait" 2>&1
"$C" status --json > "$out"
"#,
    )
    .unwrap();
    let out = c.ws.path().join("orch-status.json");
    let mut argv = vec!["sh".to_string(), orch.display().to_string(), common::bin().display().to_string()];
    argv.push(out.display().to_string());
    argv.extend(c.script(300, 0, 0));
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let id =
        c.ok(&[&["spawn", "--role", "worker", "--task", "orchestrate", "--on", "m=zero", "--"][..], &args].concat());
    c.wait_all_of(&[&id], "complete", Duration::from_secs(60));

    // All four are the cluster's: in its table, finished, each run by a worker.
    let s = c.states();
    assert_eq!(s.len(), 4, "{s:?}");
    assert!(s.values().all(|v| v == "complete"), "{s:?}\n{}", c.logs());
    let ran_by =
        c.pg.sql("corral", "SELECT count(*) FROM agents WHERE workspace = 't' AND body->'worker'->>'id' IS NOT NULL");
    assert_eq!(ran_by, "4");
    // What the orchestrator saw is the cluster's status, its sub-agents finished in it.
    let seen: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let subs: Vec<&Value> = seen.iter().filter(|v| v["task"].as_str().is_some_and(|t| t.starts_with("sub-"))).collect();
    assert_eq!(subs.len(), 3, "{seen:?}");
    assert!(subs.iter().all(|v| v["status"] == "complete"), "{subs:?}");
    // The orchestrator held one of the two places: its sub-agents ran one at a time.
    assert_eq!(c.check(1), 3);
}

/// Claude Code or Codex as the orchestrator on a worker reach corral through `corral mcp`:
/// run there by an agent, the server's orchestrator tools work on the cluster, so what it
/// spawns may run on any worker, and waits, reads, aggregates and kills work across them.
#[test]
fn an_orchestrator_agent_on_a_worker_drives_the_cluster_through_mcp() {
    let corral = common::bin().display().to_string();
    let config = format!(
        r#"{CONFIG}
[roles.WORKER]
command = ["sh", "-c", "sleep 0.3; {corral} handoff --finding \"$1\" --decision 'use port 8080' --memory 'the port is 8080'", "sh", "{{task}}"]
max_retries = 0

[roles.BROKEN]
command = ["sh", "-c", "echo cannot continue >&2; exit 2"]

[roles.SLEEPER]
command = ["sleep", "30"]
"#
    );
    let mut c = Cluster::new(&config);
    c.start_worker_args(0, &["--label", "m=zero"]);
    c.start_worker(1);
    let out = c.ws.path().join("mcp-seen.json");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/cluster_orchestrate.py");
    let (script, out_s) = (script.display().to_string(), out.display().to_string());
    let id = c.ok(&[
        "spawn",
        "--role",
        "ORCH",
        "--task",
        "orchestrate",
        "--on",
        "m=zero",
        "--",
        "python3",
        &script,
        &corral,
        &out_s,
    ]);
    c.wait_all_of(&[&id], "complete", Duration::from_secs(90));
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    let good = seen["spawned"][0]["agentId"].as_str().unwrap().to_string();
    let bad = seen["spawned"][1]["agentId"].as_str().unwrap().to_string();
    assert_eq!(seen["spawned"][0]["status"], "queued", "{seen}");
    // Both in the cluster's table, run by workers, not in the orchestrator's epoch.
    let s = c.states();
    assert_eq!(s.get(&good).map(String::as_str), Some("complete"), "{s:?}\n{}", c.logs());
    assert_eq!(s.get(&bad).map(String::as_str), Some("escalated"), "{s:?}");
    let wait = &seen["wait"];
    assert_eq!(wait["finished"].as_array().unwrap().len(), 2, "{wait}");
    assert_eq!(wait["allComplete"], false);
    assert_eq!(wait["timedOut"], false);
    let last = seen["progress"].as_array().unwrap().last().cloned().unwrap_or_default();
    assert_eq!((last["progress"].as_f64(), last["total"].as_f64()), (Some(2.0), Some(2.0)), "{}", seen["progress"]);
    assert_eq!(seen["status"]["agentId"], good.as_str());
    assert_eq!(seen["status"]["status"], "complete");
    // Its attempt as its worker's supervisor saw it: numbered, ended, exit code 0.
    let at = &seen["status"]["attempts"][0];
    assert_eq!((at["attempt"].as_u64(), at["exitCode"].as_i64()), (Some(1), Some(0)), "{}", seen["status"]);
    assert!(at["endedAt"].is_string() && at["failureType"].is_null(), "{at}");
    assert!(seen["status"]["handoffs"][0].as_str().is_some_and(|h| h.contains(&good)), "{}", seen["status"]);
    let listed: Vec<&str> =
        seen["list"]["agents"].as_array().unwrap().iter().filter_map(|v| v["agentId"].as_str()).collect();
    assert!(listed.contains(&id.as_str()) && listed.contains(&good.as_str()) && listed.contains(&bad.as_str()));
    let agg = seen["aggregate"].to_string();
    assert!(agg.contains("use port 8080") && agg.contains("find the port"), "{agg}");
    assert!(agg.contains(&bad), "the failed agent is reported: {agg}");
    assert!(seen["health"]["openEscalations"].as_u64() >= Some(1), "{}", seen["health"]);
    assert!(seen["escalations"]["escalations"].as_array().unwrap().iter().any(|e| e["agentId"] == bad.as_str()));
    // What the cluster learned: the worker's memory candidate, found by the search.
    let found = seen["memory"]["candidates"].to_string();
    assert!(found.contains("the port is 8080") && found.contains(&good), "{}", seen["memory"]);
    // The sleeper: still pending after the short wait, told, then killed wherever it ran.
    assert_eq!(seen["wait_timeout"]["timedOut"], true, "{}", seen["wait_timeout"]);
    let sleeper = seen["kill"]["agentId"].as_str().unwrap();
    assert_eq!(seen["tell"]["agentId"], sleeper);
    // Appended on its worker, or (not running yet) waiting, and saying so: never a made-up path.
    let tell = &seen["tell"];
    let inbox = tell["inbox"].as_str().unwrap();
    assert!(inbox.ends_with(".md") != tell["waiting"].is_string(), "{tell}");
    assert_eq!(seen["kill"]["status"], "killed", "{}", seen["kill"]);
    assert_eq!(c.states().get(sleeper).map(String::as_str), Some("killed"));

    // `corral memory` from a machine with no worker: the candidate once, and each role's
    // failure patterns from the attempts on every worker.
    let m = c.json(&["memory", "--json"]);
    let cands = m["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 1, "{m}");
    assert_eq!((cands[0]["role"].as_str(), cands[0]["agentId"].as_str()), (Some("WORKER"), Some(good.as_str())));
    let role = |r: &str| m["patterns"].as_array().unwrap().iter().find(|p| p["role"] == r).cloned().unwrap();
    let broken = role("BROKEN");
    assert_eq!((broken["attempts"].as_u64(), broken["failedAttempts"].as_u64()), (Some(1), Some(1)), "{broken}");
    assert_eq!(broken["failureTypes"]["crash"], 1, "{broken}");
    assert_eq!(broken["escalated"], 1, "{broken}");
    let worker = role("WORKER");
    assert_eq!((worker["attempts"].as_u64(), worker["failedAttempts"].as_u64()), (Some(1), Some(0)), "{worker}");
    let search = c.ok(&["memory", "search", "8080"]);
    assert!(search.contains("the port is 8080"), "{search}");
}

/// `corral clean` from a machine with no worker: finished agents leave the views (status,
/// wait --all, aggregate) on every machine, `status ID` and `show` still find them, a retry
/// brings one back; worktrees are the workers' to remove, and the command says so.
#[test]
fn clean_from_any_machine_takes_finished_agents_out_of_the_views() {
    let mut c = Cluster::new(CONFIG);
    c.start_worker(0);
    let quick: Vec<String> =
        (0..2).map(|i| c.ok(&["spawn", "--role", "worker", "--task", &format!("q{i}"), "--", "true"])).collect();
    let slow = c.ok(&["spawn", "--role", "worker", "--task", "slow", "--", "sleep", "30"]);
    c.wait_all_of(&[&quick[0], &quick[1]], "complete", Duration::from_secs(30));
    c.wait_all_of(&[&slow], "running", Duration::from_secs(30));

    let none = c.json(&["clean", "--older-than", "1h", "--json"]);
    assert_eq!(none["cleaned"], serde_json::json!([]), "nothing ended an hour ago");
    let done = c.json(&["clean", "--json"]);
    assert_eq!(done["cleaned"], serde_json::json!(quick), "{done}");
    let again = c.json(&["clean", "--json"]);
    assert_eq!(again["cleaned"], serde_json::json!([]), "cleaned once");

    let ids = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|a| a["agentId"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&c.json(&["status", "--json"])), vec![slow.clone()]);
    assert_eq!(ids(&c.json(&["status", "--json", &quick[0]])), vec![quick[0].clone()], "found by its id");
    assert_eq!(c.json(&["show", "--json", &quick[1]])["status"], "complete");
    let events = c.ok(&["events"]);
    assert_eq!(events.lines().filter(|l| l.contains("\"kind\":\"cleaned\"")).count(), 2, "{events}");
    // Partial (exit 1: the slow one runs), and about the shown agent alone.
    let agg: Value = serde_json::from_slice(&c.run(&["aggregate", "--json"]).stdout).unwrap();
    assert_eq!(agg["counts"]["agents"], 1, "only the shown agent: {agg}");

    let screen = c.ok(&["monitor", "--once"]);
    assert!(screen.contains(&slow) && !screen.contains(&quick[0]), "{screen}");
    let o = c.run(&["clean", "--worktrees"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("workers' disks"), "{}", text(&o));

    // Run again, it is shown again.
    c.ok(&["retry", &quick[0]]);
    c.wait_all_of(&[&quick[0]], "complete", Duration::from_secs(30));
    assert_eq!(ids(&c.json(&["status", "--json"])), vec![quick[0].clone(), slow.clone()]);
    c.ok(&["kill", &slow]);
}
