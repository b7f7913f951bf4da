//! `corral parallel`, `pause`, `resume` and `timeline` in cluster mode, from a machine with
//! no worker, against a real PostgreSQL with real `corral worker` processes (see
//! `common::cluster`). A change is the workspace's: every worker's claim holds to it, a
//! worker starting keeps it, and the ledger the agents write is the ground truth.

mod common;

use common::cluster::{CONFIG, Cluster, most_at_once, text, until};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const PAUSED: &str = "paused (corral resume to release)";

/// A plain agent of role W with id `id` that runs `ms` and completes.
fn agent(c: &Cluster, id: &str, ms: u64) -> String {
    c.spawn_cli(&["--role", "W", "--task", "t", "--id", id], &c.script(ms, 0, 0))
}

/// Waits until the workers `ns` hold a live lease under their current processes (each has
/// written the workspace's configured limits before it registered).
fn live(c: &Cluster, ns: &[usize]) {
    let pids: Vec<String> = ns.iter().map(|n| c.pid(*n).to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM workers WHERE state = 'active' AND lease_until > now() AND pid IN ({})",
        pids.join(", ")
    );
    let ok = until(Duration::from_secs(20), || {
        // (The first worker to connect makes the tables.)
        c.pg.sql("corral", "SELECT to_regclass('workers') IS NOT NULL") == "t"
            && c.pg.sql("corral", &sql) == ns.len().to_string()
    });
    assert!(ok, "workers {ns:?} did not register: {}", c.logs());
}

/// The ids the workers `ns` registered under.
fn worker_ids(c: &Cluster, ns: &[usize]) -> BTreeSet<String> {
    let pids: Vec<String> = ns.iter().map(|n| c.pid(*n).to_string()).collect();
    let sql = format!("SELECT id FROM workers WHERE pid IN ({})", pids.join(", "));
    c.pg.sql("corral", &sql).lines().map(str::to_string).collect()
}

/// Proof that each of the workers `ns` ran a claim transaction from now on: an agent whose
/// dependency was killed fails in the first claim that sees it, whatever holds the others
/// (a pause too), and its `failed` event names the worker whose claim it was. Spawns such
/// probes, one after another, until every one of the workers has failed one.
fn claims_ran_on(c: &Cluster, ns: &[usize], dead: &str) {
    let want = worker_ids(c, ns);
    let mut seen = BTreeSet::new();
    for i in 0..200 {
        let id = format!("probe-{dead}-{i}");
        c.spawn_cli(&["--role", "PROBE", "--task", "p", "--id", &id, "--after", dead], &["true".to_string()]);
        let sql = format!("SELECT worker FROM events WHERE agent_id = '{id}' AND kind = 'failed'");
        let ok = until(Duration::from_secs(10), || !c.pg.sql("corral", &sql).is_empty());
        assert!(ok, "{id} did not fail: {:?}\n{}", c.states(), c.logs());
        seen.insert(c.pg.sql("corral", &sql));
        if want.is_subset(&seen) {
            return;
        }
    }
    panic!("claims seen from {seen:?}, not from all of {want:?}");
}

#[test]
fn a_pause_from_a_machine_with_no_worker_holds_the_queue_on_every_worker_until_resume() {
    let mut c = Cluster::new(CONFIG);
    c.start_worker(0);
    c.start_worker(1);
    live(&c, &[0, 1]);
    let v = c.json(&["pause", "--json"]);
    assert_eq!(
        v,
        json!({ "maxConcurrent": 5, "configured": 5, "changed": false, "paused": true, "running": 0, "queued": 0 })
    );
    // Paused again: nothing changes, no second event.
    let again = c.ok(&["pause"]);
    assert_eq!(
        again,
        "workspace: at most 5 at once (corral.toml); paused (corral resume to release); 0 running, 0 queued"
    );
    let held: Vec<String> = (0..4).map(|i| agent(&c, &format!("h{i}"), 200)).collect();
    // Both workers claim after the agents were queued, and take none of them.
    let dead = agent(&c, "dead", 100);
    c.ok(&["kill", &dead]);
    claims_ran_on(&c, &[0, 1], &dead);
    let s = c.statuses();
    for h in &held {
        assert_eq!(s[h]["status"], "queued", "{h}: {}", s[h]);
        assert_eq!(s[h]["reason"], PAUSED, "{h}");
        assert_eq!(s[h]["anomalies"][0], format!("QUEUED: {PAUSED}"), "{h}");
        assert_eq!(c.started(h), 0, "{h} started while paused");
    }
    assert_eq!(c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE workspace = 't'"), "0");
    let h = c.json(&["health", "--json"]);
    assert_eq!((h["paused"].as_bool(), h["heldBecause"].as_str()), (Some(true), Some(PAUSED)), "{h}");
    assert!(c.ok(&["health"]).contains("paused:      no queued agent starts (corral resume to release)"));
    // Resumed from here: every worker may take them again, and they run.
    let v = c.json(&["resume", "--json"]);
    assert_eq!(v["paused"], false, "{v}");
    c.wait_all_of(&held.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(30));
    let kinds = c.pg.sql(
        "corral",
        "SELECT string_agg(kind, ',' ORDER BY seq) FROM events WHERE agent_id IS NULL AND workspace = 't'",
    );
    assert_eq!(kinds, "paused,resumed", "one event per change, the single-machine supervisor's");
    assert_eq!(c.json(&["health", "--json"])["paused"], false);
    c.check(5);
}

#[test]
fn parallel_one_holds_the_whole_cluster_to_one_and_a_reset_admits_at_once() {
    let mut c = Cluster::new(CONFIG);
    c.start_worker(0);
    c.start_worker(1);
    live(&c, &[0, 1]);
    let v = c.json(&["parallel", "1", "--json"]);
    assert_eq!(
        v,
        json!({ "maxConcurrent": 1, "configured": 5, "changed": true, "paused": false, "running": 0, "queued": 0 })
    );
    assert_eq!(
        c.ok(&["parallel", "1"]),
        "workspace: at most 1 at once (corral parallel; corral.toml says 5); 0 running, 0 queued"
    );
    let zero = c.run(&["parallel", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero));
    let first: Vec<String> = (0..4).map(|i| agent(&c, &format!("a{i}"), 400)).collect();
    let mut said = BTreeSet::new();
    let ok = until(Duration::from_secs(40), || {
        let s = c.statuses();
        said.extend(first.iter().filter_map(|a| s[a]["reason"].as_str().map(str::to_string)));
        first.iter().all(|a| s[a]["status"] == "complete")
    });
    assert!(ok, "not all complete: {:?}\n{}", c.states(), c.logs());
    assert!(said.contains("capacity: 1 of 1 agent running"), "{said:?}");
    assert_eq!(most_at_once(&c.ledger(), |_| true), 1, "agents at once across the cluster under parallel 1");
    let h = c.json(&["health", "--json"]);
    assert_eq!((h["maxConcurrent"].as_u64(), h["configuredMaxConcurrent"].as_u64()), (Some(1), Some(5)), "{h}");

    // Three long ones: one runs, two wait for its slot.
    let long: Vec<String> = (0..3).map(|i| agent(&c, &format!("l{i}"), 4000)).collect();
    let one = until(Duration::from_secs(20), || long.iter().map(|l| c.started(l)).sum::<usize>() == 1);
    assert!(one, "{:?}\n{}", c.states(), c.logs());
    let waiting = until(Duration::from_secs(10), || {
        let s = c.statuses();
        long.iter().filter(|l| s[*l]["reason"] == "capacity: 1 of 1 agent running").count() == 2
    });
    assert!(waiting, "{:?}", c.statuses());
    // Back to corral.toml's 5: the two waiting start while the first still runs.
    let v = c.json(&["parallel", "--reset", "--json"]);
    assert_eq!(
        (v["maxConcurrent"].as_u64(), v["configured"].as_u64(), v["changed"].as_bool()),
        (Some(5), Some(5), Some(false))
    );
    let all = until(Duration::from_secs(3), || long.iter().all(|l| c.started(l) == 1));
    assert!(all, "the reset did not admit the waiting agents at once: {:?}\n{}", c.states(), c.logs());
    assert!(c.ledger().iter().all(|r| r.start || !long.contains(&r.id)), "the first long agent ended before");
    c.wait_all_of(&long.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(30));
    assert_eq!(most_at_once(&c.ledger(), |id| long.iter().any(|l| l == id)), 3);
    assert!(c.json(&["health", "--json"]).get("configuredMaxConcurrent").is_none());
    c.check(5);
}

#[test]
fn a_worker_starting_keeps_the_change_over_its_corral_toml_and_a_reset_finds_that_again() {
    let mut c = Cluster::new(CONFIG);
    c.start_worker(0);
    live(&c, &[0]);
    c.ok(&["parallel", "1"]);
    // corral.toml now says 3; one worker restarted (within its lease), one new.
    std::fs::write(c.ws.path().join("corral.toml"), CONFIG.replace("max_concurrent = 5", "max_concurrent = 3"))
        .unwrap();
    c.kill9(0);
    c.start_worker(0);
    c.start_worker(1);
    live(&c, &[0, 1]);
    // Each wrote its corral.toml's limit; the change is kept apart from it.
    let row = c.pg.sql("corral", "SELECT max_concurrent || ' ' || capacity::text FROM workspaces WHERE id = 't'");
    assert_eq!(row, r#"3 {"maxConcurrent": 1}"#);
    let h = c.json(&["health", "--json"]);
    assert_eq!((h["maxConcurrent"].as_u64(), h["configuredMaxConcurrent"].as_u64()), (Some(1), Some(3)), "{h}");
    let ids: Vec<String> = (0..4).map(|i| agent(&c, &format!("r{i}"), 300)).collect();
    c.wait_all_of(&ids.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(40));
    assert_eq!(c.check(1), 4, "four runs, never two at once");
    let v = c.json(&["parallel", "--reset", "--json"]);
    assert_eq!(
        (v["maxConcurrent"].as_u64(), v["configured"].as_u64(), v["changed"].as_bool()),
        (Some(3), Some(3), Some(false))
    );
    let kinds = c
        .pg
        .sql("corral", "SELECT string_agg(data::text, ';' ORDER BY seq) FROM events WHERE kind = 'capacity_changed'");
    assert!(kinds.contains(r#""maxConcurrent": 1"#) && kinds.contains(r#""reset": true"#), "{kinds}");
}

#[test]
fn a_groups_pause_and_limit_hold_only_its_agents_across_the_cluster() {
    let config = format!("{CONFIG}\n[roles.BUILD]\ngroup = \"build\"\n[groups.build]\nmax_concurrent = 2\n");
    let mut c = Cluster::new(&config);
    c.start_worker(0);
    c.start_worker(1);
    live(&c, &[0, 1]);
    let v = c.json(&["pause", "--group", "build", "--json"]);
    assert_eq!(
        v,
        json!({ "group": "build", "maxConcurrent": 2, "configured": 2, "changed": false, "paused": true,
                "running": 0, "queued": 0 })
    );
    let bad = c.run(&["pause", "--group", "no good"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let builds: Vec<String> = (0..3)
        .map(|i| c.spawn_cli(&["--role", "BUILD", "--task", "b", "--id", &format!("b{i}")], &c.script(400, 0, 0)))
        .collect();
    // Spawned after the builds, the agents of no group run: claims went on past the builds.
    let lints: Vec<String> = (0..2).map(|i| agent(&c, &format!("l{i}"), 100)).collect();
    c.wait_all_of(&lints.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(30));
    let why = "group build paused (corral resume --group build to release)";
    let s = c.statuses();
    for b in &builds {
        assert_eq!((s[b]["status"].as_str(), s[b]["reason"].as_str()), (Some("queued"), Some(why)), "{b}");
        assert_eq!(c.started(b), 0);
    }
    let h = c.json(&["health", "--json"]);
    assert_eq!(h["paused"], false, "{h}");
    assert_eq!(
        h["groups"],
        json!([{ "name": "build", "running": 0, "queued": 3, "maxConcurrent": 2, "paused": true }]),
        "{h}"
    );
    assert!(c.ok(&["health"]).contains("group:       build 0 running (at most 2, paused), 3 queued"));
    // Down to one at a time, then released: the builds run one by one.
    let v = c.json(&["parallel", "1", "--group", "build", "--json"]);
    assert_eq!(
        (v["maxConcurrent"].as_u64(), v["configured"].as_u64(), v["changed"].as_bool()),
        (Some(1), Some(2), Some(true))
    );
    assert_eq!(v["paused"], true);
    // (How many run right after is the workers' race with this read: not asserted.)
    let said = c.ok(&["resume", "--group", "build"]);
    assert!(said.starts_with("group build: at most 1 at once (corral parallel; corral.toml says 2); "), "{said}");
    assert!(!said.contains("paused"), "{said}");
    c.wait_all_of(&builds.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(40));
    assert_eq!(most_at_once(&c.ledger(), |id| builds.iter().any(|b| b == id)), 1);
    let v = c.json(&["parallel", "--reset", "--group", "build", "--json"]);
    assert_eq!((v["maxConcurrent"].as_u64(), v["changed"].as_bool()), (Some(2), Some(false)));
    // `resume --all` releases the workspace and every group at once.
    c.ok(&["pause"]);
    c.ok(&["pause", "--group", "build"]);
    let v = c.json(&["resume", "--all", "--json"]);
    assert_eq!(v["paused"], false);
    let h = c.json(&["health", "--json"]);
    assert_eq!((h["paused"].as_bool(), h["groups"][0]["paused"].as_bool()), (Some(false), Some(false)), "{h}");
    c.check(5);
}

#[test]
fn the_timeline_from_the_database_has_one_row_per_agent_with_its_attempts_on_every_worker() {
    let config = format!("{CONFIG}\n[roles.FLAKY]\n");
    let mut c = Cluster::new(&config);
    c.start_worker(0);
    c.start_worker(1);
    live(&c, &[0, 1]);
    let ok: Vec<String> = (0..2).map(|i| agent(&c, &format!("ok{i}"), 300)).collect();
    // Fails its first attempt (exit 1 retries), then completes.
    let flaky = c.spawn_cli(&["--role", "FLAKY", "--task", "f", "--id", "flaky"], &c.script(300, 1, 0));
    // Killed while it waits: a row with no attempt.
    let later =
        c.spawn_cli(&["--role", "W", "--task", "later", "--id", "later", "--delay", "1h"], &c.script(100, 0, 0));
    c.ok(&["kill", &later]);
    let mut done: Vec<&str> = ok.iter().map(String::as_str).collect();
    done.push(&flaky);
    c.wait_all_of(&done, "complete", Duration::from_secs(40));

    let j = c.json(&["timeline", "--json"]);
    let rows = j.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["agentId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ok0", "ok1", "flaky", "later"], "{j}");
    let row = |id: &str| rows.iter().find(|r| r["agentId"] == id).unwrap();
    let outcomes = |id: &str| -> Vec<String> {
        row(id)["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap().to_string()).collect()
    };
    for o in &ok {
        assert_eq!(outcomes(o), ["complete"], "{}", row(o));
        assert_eq!(row(o)["status"], "complete");
        let first = &row(o)["events"][0];
        assert_eq!(
            (first["kind"].as_str(), first["reason"].as_str()),
            (Some("queued"), Some("waiting for a worker to claim it"))
        );
    }
    assert_eq!(outcomes(&flaky), ["failed", "complete"], "{}", row(&flaky));
    let f = row(&flaky);
    assert!(f["attempts"][0]["reason"].is_string() && f["attempts"][0]["endedAt"].is_string(), "{f}");
    assert!(f["events"].as_array().unwrap().iter().any(|e| e["kind"] == "retrying"), "{f}");
    assert_eq!((row(&later)["status"].as_str(), outcomes(&later).len()), (Some("killed"), 0));
    // Each attempt in the picture is one the ledger saw.
    let runs = c.ledger().iter().filter(|r| r.start).count();
    let bars: usize = rows.iter().map(|r| r["attempts"].as_array().unwrap().len()).sum();
    assert_eq!(bars, runs, "{j}");

    // The SVG on stdout and the HTML page: one row per agent.
    let svg = c.ok(&["timeline"]);
    let agents: Vec<&str> =
        svg.split("<g class=\"row\" data-agent=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(agents, ids, "{svg}");
    assert!(svg.contains("corral timeline: 4 agents"), "{svg}");
    let html = c.ws.path().join("run.html");
    c.ok(&["timeline", "--out", html.to_str().unwrap()]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"), "{page}");
    // Its filters, and a width it cannot draw.
    let one = c.json(&["timeline", "flaky", "--json"]);
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    let role = c.json(&["timeline", "--role", "FLAKY", "--json"]);
    assert_eq!(role[0]["agentId"], "flaky");
    let narrow = c.run(&["timeline", "--width", "10"]);
    assert_eq!(narrow.status.code(), Some(2), "{}", text(&narrow));
    c.check(5);
}
