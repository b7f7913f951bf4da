//! Admission groups and capacity at run time, through the real binary and real processes:
//! `[groups.G] max_concurrent` across roles, `corral parallel` live and across a kill -9 of
//! the supervisor, `corral pause` / `corral resume`, `--priority` and `--delay`.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A script that waits for `go` to exist, then appends `name` to `log` and exits 0.
fn gated(go: &Path, log: &Path, name: &str) -> String {
    format!("while [ ! -e {g} ]; do sleep 0.05; done; echo {name} >> {l}", g = go.display(), l = log.display())
}

fn events(ws: &Ws) -> Vec<Value> {
    ws.ok(&["events"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kinds(ws: &Ws) -> Vec<String> {
    events(ws).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

fn reason(ws: &Ws, id: &str) -> String {
    ws.agent(id)["reason"].as_str().unwrap_or("").to_string()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

fn spawn_with(ws: &Ws, role: &str, flags: &[&str], script: &str) -> String {
    let mut args = vec!["spawn", "--role", role, "--task", "test task"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    ws.ok(&args).trim().to_string()
}

fn kill_daemon(ws: &Ws) {
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)), "the supervisor survived kill -9");
}

fn go(ws: &Ws, name: &str) -> PathBuf {
    ws.path().join(format!("go-{name}"))
}

#[test]
fn a_group_capacity_holds_across_roles_and_other_groups_go_on() {
    let ws = Ws::with_config(Some(
        "[health]\nmax_concurrent = 10\nbreaker_failures = 0\n[groups.review]\nmax_concurrent = 2\n\
         [roles.AUDITOR]\ngroup = \"review\"\n",
    ));
    let log = ws.path().join("done.log");
    let g = go(&ws, "all");
    // Two roles in one group: the role's default group and --group count alike.
    let a = spawn_with(&ws, "AUDITOR", &[], &gated(&g, &log, "a"));
    let b = spawn_with(&ws, "W", &["--group", "review"], &gated(&g, &log, "b"));
    let c = spawn_with(&ws, "AUDITOR", &[], &gated(&g, &log, "c"));
    // A group with no [groups] entry has no limit of its own.
    let d = spawn_with(&ws, "W", &["--group", "build"], &gated(&g, &log, "d"));
    let e = spawn_with(&ws, "W", &["--group", "build"], &gated(&g, &log, "e"));
    for id in [&a, &b, &d, &e] {
        ws.wait_state(id, &["running"], SECS(10));
    }
    let q = ws.agent(&c);
    assert_eq!(q["status"], "queued", "{q}");
    assert_eq!(q["reason"], "group review at capacity (2 running, max 2)", "{q}");
    assert_eq!(q["group"], "review");
    assert_eq!(ws.agent(&a)["group"], "review", "the role's group");
    assert_eq!(ws.show(&d)["group"], "build");
    // status --group filters, in the table and as JSON.
    let review: Vec<String> = ws
        .json(&["status", "--group", "review", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["agentId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(review, [a.clone(), b.clone(), c.clone()]);
    let table = ws.ok(&["status", "--group", "build"]);
    assert!(table.contains(&d) && table.contains(&e) && !table.contains(&a), "{table}");
    // The table names each agent's group once some agent has one.
    let head = table.lines().next().unwrap();
    assert!(head.contains("GROUP"), "{table}");
    let row = table.lines().find(|l| l.starts_with(d.as_str())).unwrap();
    assert!(row.split_whitespace().any(|w| w == "build"), "{table}");
    // health lists the groups: running, queued, limit.
    let h = ws.json(&["health", "--json"]);
    let groups = h["groups"].as_array().unwrap();
    let of = |n: &str| groups.iter().find(|x| x["name"] == n).cloned().unwrap_or_else(|| panic!("{n}: {h}"));
    assert_eq!((of("review")["running"].as_u64(), of("review")["queued"].as_u64()), (Some(2), Some(1)), "{h}");
    assert_eq!(of("review")["maxConcurrent"], 2);
    assert_eq!(of("build")["running"], 2);
    assert!(of("build")["maxConcurrent"].is_null());
    assert!(h["queued"][0]["reason"].as_str().unwrap().contains("group review at capacity"), "{h}");
    assert!(ws.ok(&["health"]).contains("group:       review 2 running (at most 2), 1 queued"));
    // One of the group ends: the queued one starts.
    std::fs::write(&g, "").unwrap();
    for id in [&a, &b, &c, &d, &e] {
        ws.wait_state(id, &["complete"], SECS(15));
    }
}

#[test]
fn parallel_raises_and_lowers_capacity_live_and_survives_kill_9() {
    let ws = Ws::with_config(Some("[health]\nmax_concurrent = 1\nbreaker_failures = 0\n"));
    let log = ws.path().join("done.log");
    let ids: Vec<String> =
        (0..3).map(|i| spawn_with(&ws, "W", &[], &gated(&go(&ws, "x"), &log, &i.to_string()))).collect();
    ws.wait_state(&ids[0], &["running"], SECS(10));
    assert!(reason(&ws, &ids[1]).contains("capacity: 1 of 1"), "{}", reason(&ws, &ids[1]));
    // Raised: the queued ones start at once.
    let v = ws.json(&["parallel", "3", "--json"]);
    assert_eq!(
        (v["maxConcurrent"].as_u64(), v["configured"].as_u64(), v["changed"].as_bool()),
        (Some(3), Some(1), Some(true))
    );
    for id in &ids {
        ws.wait_state(id, &["running"], SECS(10));
    }
    let changed: Vec<Value> = events(&ws).into_iter().filter(|e| e["kind"] == "capacity_changed").collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!((changed[0]["data"]["from"].as_u64(), changed[0]["data"]["maxConcurrent"].as_u64()), (Some(1), Some(3)));
    // Lowered: the running go on, the next spawn waits.
    assert!(ws.ok(&["parallel", "2"]).contains("at most 2 at once (corral parallel; corral.toml says 1)"));
    let late = spawn_with(&ws, "W", &[], &gated(&go(&ws, "x"), &log, "late"));
    assert_eq!(ws.agent(&late)["status"], "queued");
    for id in &ids {
        assert_eq!(ws.agent(id)["status"], "running", "a lower capacity stops nothing");
    }
    // kill -9 of the supervisor: the next one reads the change back over corral.toml's.
    kill_daemon(&ws);
    let h = ws.json(&["health", "--json"]);
    assert_eq!((h["maxConcurrent"].as_u64(), h["configuredMaxConcurrent"].as_u64()), (Some(2), Some(1)), "{h}");
    assert!(reason(&ws, &late).contains("capacity: 3 of 2"), "{}", reason(&ws, &late));
    // The agents finish; with 2 allowed the late one runs, then --reset is corral.toml's 1 again.
    std::fs::write(go(&ws, "x"), "").unwrap();
    for id in ids.iter().chain([&late]) {
        ws.wait_state(id, &["complete"], SECS(15));
    }
    let v = ws.json(&["parallel", "--reset", "--json"]);
    assert_eq!((v["maxConcurrent"].as_u64(), v["changed"].as_bool()), (Some(1), Some(false)));
    assert_eq!(ws.json(&["health", "--json"])["maxConcurrent"], 1);
    assert_eq!(kinds(&ws).iter().filter(|k| *k == "capacity_changed").count(), 3);
    // A group's capacity too, for a group that corral.toml does not know.
    let v = ws.json(&["parallel", "1", "--group", "review", "--json"]);
    assert_eq!((v["group"].as_str(), v["maxConcurrent"].as_u64()), (Some("review"), Some(1)));
    kill_daemon(&ws);
    let h = ws.json(&["health", "--json"]);
    let g = h["groups"].as_array().unwrap().iter().find(|g| g["name"] == "review").cloned().unwrap();
    assert_eq!(g["maxConcurrent"], 1, "{h}");
}

#[test]
fn pause_holds_new_spawns_the_running_one_goes_on_and_resume_releases_in_order() {
    let ws = Ws::with_config(Some("[health]\nmax_concurrent = 1\nbreaker_failures = 0\n"));
    let log = ws.path().join("done.log");
    let first = spawn_with(&ws, "W", &[], &gated(&go(&ws, "first"), &log, "first"));
    ws.wait_state(&first, &["running"], SECS(10));
    assert!(ws.ok(&["pause"]).contains("paused (corral resume to release)"));
    let later: Vec<String> =
        ["b", "c", "d"].iter().map(|n| spawn_with(&ws, "W", &[], &format!("echo {n} >> {}", log.display()))).collect();
    // The running agent goes on to its end; nothing queued starts.
    std::fs::write(go(&ws, "first"), "").unwrap();
    ws.wait_state(&first, &["complete"], SECS(10));
    std::thread::sleep(Duration::from_millis(300));
    for id in &later {
        let a = ws.agent(id);
        assert_eq!(
            (a["status"].as_str(), a["reason"].as_str()),
            (Some("queued"), Some("paused (corral resume to release)"))
        );
    }
    let h = ws.json(&["health", "--json"]);
    assert_eq!(
        (h["paused"].as_bool(), h["heldBecause"].as_str()),
        (Some(true), Some("paused (corral resume to release)"))
    );
    // Kept across a kill -9 of the supervisor.
    kill_daemon(&ws);
    assert_eq!(ws.json(&["health", "--json"])["paused"], true);
    assert_eq!(ws.agent(&later[0])["status"], "queued");
    // Released: they start one at a time, in spawn order.
    ws.ok(&["resume"]);
    for id in &later {
        ws.wait_state(id, &["complete"], SECS(15));
    }
    assert_eq!(lines(&log), ["first", "b", "c", "d"]);
    let k = kinds(&ws);
    assert!(k.contains(&"paused".to_string()) && k.contains(&"resumed".to_string()), "{k:?}");
}

#[test]
fn pausing_a_group_holds_only_its_agents() {
    let ws = Ws::new();
    let log = ws.path().join("done.log");
    ws.ok(&["pause", "--group", "review"]);
    let held = spawn_with(&ws, "W", &["--group", "review"], &format!("echo held >> {}", log.display()));
    let free = spawn_with(&ws, "W", &["--group", "build"], &format!("echo free >> {}", log.display()));
    ws.wait_state(&free, &["complete"], SECS(10));
    let a = ws.agent(&held);
    assert_eq!(a["reason"], "group review paused (corral resume --group review to release)", "{a}");
    let h = ws.json(&["health", "--json"]);
    let g = h["groups"].as_array().unwrap().iter().find(|g| g["name"] == "review").cloned().unwrap();
    assert_eq!((g["paused"].as_bool(), g["queued"].as_u64()), (Some(true), Some(1)), "{h}");
    assert_eq!(h["paused"], false, "the workspace itself is not paused");
    // Resuming the workspace does not release a group; --group (or --all) does.
    ws.ok(&["resume"]);
    assert_eq!(ws.agent(&held)["status"], "queued");
    ws.ok(&["resume", "--group", "review"]);
    ws.wait_state(&held, &["complete"], SECS(10));
}

#[test]
fn higher_priority_starts_first_and_ties_keep_spawn_order() {
    let ws = Ws::with_config(Some("[health]\nmax_concurrent = 1\nbreaker_failures = 0\n"));
    let log = ws.path().join("done.log");
    ws.ok(&["pause"]);
    let mut ids = Vec::new();
    for (name, prio) in [("low", "-5"), ("plain", "0"), ("high", "10"), ("high2", "10"), ("mid", "3")] {
        let flags = ["--priority", prio];
        ids.push(spawn_with(&ws, "W", &flags, &format!("echo {name} >> {}", log.display())));
    }
    assert_eq!(ws.agent(&ids[2])["priority"], 10);
    ws.ok(&["resume"]);
    for id in &ids {
        ws.wait_state(id, &["complete"], SECS(15));
    }
    assert_eq!(lines(&log), ["high", "high2", "mid", "plain", "low"]);
}

#[test]
fn a_delayed_spawn_waits_its_time_even_across_a_restart_then_starts() {
    let ws = Ws::new();
    let id = ws.ok(&["spawn", "--role", "W", "--task", "t", "--delay", "3s", "--", "true"]).trim().to_string();
    let a = ws.agent(&id);
    assert_eq!(a["status"], "queued");
    assert!(
        a["reason"].as_str().unwrap().starts_with("delayed until ") && a["reason"].as_str().unwrap().ends_with(" UTC"),
        "{a}"
    );
    let not_before = a["notBefore"].as_str().unwrap().to_string();
    assert_eq!(&a["reason"].as_str().unwrap()[14..22], &not_before[11..19], "the time it names: {a}");
    kill_daemon(&ws);
    // The restarted supervisor keeps the time: still delayed, with the same reason.
    assert_eq!(ws.agent(&id)["reason"], a["reason"]);
    ws.wait_state(&id, &["complete"], SECS(15));
    let ev = events(&ws);
    let at = |kind: &str| {
        let e = ev.iter().find(|e| e["kind"] == kind && e["agentId"] == id.as_str()).unwrap();
        e["at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap()
    };
    let waited = at("started") - at("spawned");
    assert!(waited.as_secs_f64() >= 2.9, "started {waited:?} after the spawn");
}

#[test]
fn bad_values_exit_2_with_what_to_do() {
    let ws = Ws::new();
    let bad = |args: &[&str], says: &str| {
        let o = ws.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    let spawn = |flags: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec!["spawn", "--role", "W", "--task", "t"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&["--", "true"]);
        a
    };
    bad(&spawn(&["--priority", "1001"]), "-1000 to 1000");
    bad(&spawn(&["--priority", "-2000"]), "-1000 to 1000");
    bad(&spawn(&["--delay", "soon"]), "--delay");
    bad(&spawn(&["--group", "a/b"]), "--group");
    bad(&["parallel", "0"], "corral pause");
    bad(&["parallel", "2", "--group", "../x"], "--group");
    bad(&["parallel"], "<N>");
    bad(&["pause", "--group", ""], "--group");
    assert!(ws.status().is_empty(), "nothing was spawned");
    // The configuration: a group's limit of 0, an unknown key, a bad name; file, line and key named.
    let cfg = ws.path().join("corral.toml");
    for (text, says) in [
        ("[groups.review]\nmax_concurrent = 0\n", "corral.toml:2: key `groups.review.max_concurrent`"),
        ("[groups.review]\nmax = 2\n", "unknown field `max`"),
        ("[groups.\"a b\"]\nmax_concurrent = 2\n", "key `groups.a b`"),
        ("[roles.W]\ngroup = \"a/b\"\n", "key `roles.W.group`"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        bad(&spawn(&[]), says);
    }
}
