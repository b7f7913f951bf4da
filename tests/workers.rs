//! Cluster mode end to end: a real PostgreSQL on 127.0.0.1 and three real `corral worker`
//! processes, each with its own data dir standing in for a machine (see `common::cluster`).

mod common;

use common::cluster::{CONFIG, Cluster};
use std::time::{Duration, Instant};

#[test]
fn three_workers_run_200_agents_each_once_at_a_time_never_over_max_concurrent() {
    let mut c = Cluster::new(CONFIG);
    // Every tenth fails its first attempt and is retried by the worker that runs it.
    let agents: Vec<(String, Vec<String>)> = (0..200)
        .map(|i| (format!("a{i:03}"), c.script(50 + (i * 37 % 250) as u64, i32::from(i % 10 == 3), 0)))
        .collect();
    c.spawn_all(&agents);
    for n in 0..3 {
        c.start_worker(n);
    }
    let start = Instant::now();
    c.wait_all("complete", 200, Duration::from_secs(120));
    let runs = c.check(5);
    // 200 agents, 20 of them twice; more only for attempts given back as lost (a worker that
    // could not renew in time on a loaded machine stops its agents, and they run again).
    let lost: usize = c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE outcome = 'lost'").parse().unwrap();
    assert!(
        runs >= 220 && runs <= 220 + lost,
        "{runs} runs in the ledger, {lost} lost attempts; attempts not complete: {}\n{}",
        c.pg.sql(
            "corral",
            "SELECT string_agg(agent_id || ' ' || n || ' ' || coalesce(outcome, '-'), ', ') FROM attempts \
             WHERE outcome IS DISTINCT FROM 'complete'"
        ),
        c.logs()
    );
    // Work went to more than one worker.
    let owners = c.pg.sql("corral", "SELECT count(DISTINCT worker) FROM attempts WHERE workspace = 't'");
    assert!(owners.parse::<i32>().unwrap() >= 2, "only {owners} worker(s) ran agents");
    eprintln!("200 agents on 3 workers in {:?}", start.elapsed());
    // Each worker keeps the seed's spawn-registry.json for the whole workspace.
    for n in 0..3 {
        let file = c.worker_dir(n).join("spawn-registry.json");
        let ok = common::wait_until(Duration::from_secs(5), || {
            let Ok(text) = std::fs::read_to_string(&file) else { return false };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
            let all = v.as_array().cloned().unwrap_or_default();
            all.len() == 200 && all.iter().all(|e| e["status"] == "complete" && e["exitCode"] == 0)
        });
        assert!(ok, "worker {n}'s spawn-registry.json: {:?}", std::fs::read_to_string(&file));
    }
}

/// The worker ids in the database, by the pid each registered with.
fn worker_of_pid(c: &Cluster, pid: i32) -> Vec<String> {
    c.pg.sql("corral", &format!("SELECT id FROM workers WHERE pid = {pid} ORDER BY started_at"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Agents with an open attempt on worker `w`.
fn running_on(c: &Cluster, w: &str) -> Vec<String> {
    c.pg.sql(
        "corral",
        &format!("SELECT agent_id FROM attempts WHERE workspace = 't' AND worker = '{w}' AND ended_at IS NULL"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn started_in_ledger(c: &Cluster, id: &str) -> usize {
    c.ledger().iter().filter(|r| r.start && r.id == id).count()
}

#[test]
fn a_worker_stopped_past_its_lease_has_its_agents_stopped_before_they_run_elsewhere() {
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> = (0..4).map(|i| (format!("s{i}"), c.script(5000, 0, 0))).collect();
    // Worker 0 alone first, so it takes agents.
    c.start_worker(0);
    c.spawn_all(&agents);
    let mut w0 = vec![];
    assert!(common::wait_until(Duration::from_secs(20), || {
        w0 = worker_of_pid(&c, c.pid(0));
        w0.len() == 1 && !running_on(&c, &w0[0]).is_empty()
    }));
    let mine = running_on(&c, &w0[0]);
    assert!(common::wait_until(Duration::from_secs(10), || mine.iter().all(|id| started_in_ledger(&c, id) == 1)));
    c.start_worker(1);
    c.start_worker(2);
    c.signal(0, libc::SIGSTOP);
    let stopped_at = Instant::now();
    // Its agents are re-queued and run elsewhere; the check below proves each copy ended
    // before the next began.
    assert!(
        common::wait_until(Duration::from_secs(30), || mine.iter().all(|id| started_in_ledger(&c, id) >= 2)),
        "the stopped worker's agents did not start elsewhere: {:?}\n{}",
        c.ledger(),
        c.logs()
    );
    // Stopped for three leases in all, then continued: its late writes change nothing.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(stopped_at.elapsed()));
    c.signal(0, libc::SIGCONT);
    c.wait_all("complete", 4, Duration::from_secs(40));
    c.check(5);
    for id in &mine {
        let lost = c.pg.sql(
            "corral",
            &format!(
                "SELECT count(*) FROM attempts WHERE agent_id = '{id}' AND outcome = 'lost' AND worker = '{}'",
                w0[0]
            ),
        );
        assert_eq!(lost, "1", "{id}: the stopped worker's attempt is recorded as lost");
        let won = c.pg.sql(
            "corral",
            &format!(
                "SELECT count(*) FROM attempts WHERE agent_id = '{id}' AND outcome = 'complete' AND worker <> '{}'",
                w0[0]
            ),
        );
        assert_eq!(won, "1", "{id}: completed once, on another worker");
    }
    // The continued worker registered again under a new id.
    assert!(common::wait_until(Duration::from_secs(10), || worker_of_pid(&c, c.pid(0)).len() == 2), "{}", c.logs());
}

#[test]
fn a_worker_killed_and_restarted_within_its_lease_keeps_its_agents_without_a_new_attempt() {
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("k{i}"), c.script(4000, 0, 0))).collect();
    c.start_worker(0);
    c.spawn_all(&agents);
    assert!(common::wait_until(Duration::from_secs(20), || {
        agents.iter().all(|(id, _)| started_in_ledger(&c, id) == 1)
    }));
    c.kill9(0);
    std::thread::sleep(Duration::from_millis(300));
    c.start_worker(0);
    c.wait_all("complete", 3, Duration::from_secs(30));
    c.check(5);
    for (id, _) in &agents {
        assert_eq!(started_in_ledger(&c, id), 1, "{id} ran once:\n{:?}\n{}", c.ledger(), c.logs());
    }
    let attempts = c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE workspace = 't'");
    assert_eq!(attempts, "3", "no new attempt after the restart");
}

#[test]
fn a_worker_killed_and_not_restarted_has_its_agents_run_elsewhere_after_its_lease() {
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("d{i}"), c.script(3000, 0, 0))).collect();
    c.start_worker(0);
    c.spawn_all(&agents);
    assert!(common::wait_until(Duration::from_secs(20), || {
        agents.iter().all(|(id, _)| started_in_ledger(&c, id) == 1)
    }));
    c.kill9(0);
    let died = Instant::now();
    c.start_worker(1);
    assert!(
        common::wait_until(Duration::from_secs(30), || agents.iter().all(|(id, _)| started_in_ledger(&c, id) == 2)),
        "{:?}\n{}",
        c.ledger(),
        c.logs()
    );
    let took = died.elapsed();
    c.wait_all("complete", 3, Duration::from_secs(30));
    c.check(5);
    let lost = c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE workspace = 't' AND outcome = 'lost'");
    assert_eq!(lost, "3");
    eprintln!("the dead worker's agents ran elsewhere {took:?} after its death (lease 2 s, grace 0.5 s)");
}

/// (start, end) of each run of `id` in the ledger, in nanoseconds.
fn runs_of(c: &Cluster, id: &str) -> Vec<(u128, u128)> {
    let mut out = vec![];
    let mut open = None;
    let mut recs = c.ledger();
    recs.sort_by_key(|r| r.at);
    for r in recs.iter().filter(|r| r.id == id) {
        if r.start {
            open = Some(r.at);
        } else if let Some(s) = open.take() {
            out.push((s, r.at));
        }
    }
    out
}

#[test]
fn a_dependency_on_another_worker_holds_its_dependent_and_a_failed_one_fails_it() {
    let mut c = Cluster::new(CONFIG.replace("max_retries = 3", "max_retries = 0").as_str());
    let s = |ms, code| c.script(ms, code, code);
    let agents = vec![
        ("a".to_string(), s(800, 0), "worker", vec![]),
        ("b".to_string(), s(100, 0), "worker", vec!["a".to_string()]),
        ("f".to_string(), s(300, 2), "worker", vec![]),
        ("g".to_string(), s(100, 0), "worker", vec!["f".to_string()]),
    ];
    // One agent per worker at a time, so a and b can only meet on different workers.
    for n in 0..3 {
        c.start_worker_args(n, &["--slots", "1"]);
    }
    c.spawn_full(&agents);
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            let st = c.states();
            st.get("b").map(String::as_str) == Some("complete") && st.get("g").map(String::as_str) == Some("failed")
        }),
        "{:?}\n{}",
        c.states(),
        c.logs()
    );
    let (a, b) = (runs_of(&c, "a"), runs_of(&c, "b"));
    assert_eq!((a.len(), b.len()), (1, 1), "{:?}", c.ledger());
    assert!(b[0].0 > a[0].1, "b started before a ended: {a:?} {b:?}");
    assert!(runs_of(&c, "g").is_empty(), "g never ran: its dependency failed");
    let why = c.pg.sql("corral", "SELECT data->>'reason' FROM events WHERE agent_id = 'g' AND kind = 'failed'");
    assert!(why.contains("dependency f"), "{why}");
    c.check(5);
}

#[test]
fn failures_on_different_workers_open_one_breaker_for_the_cluster_and_one_probe_goes_first() {
    let config = CONFIG
        .replace(
            "breaker_failures = 0",
            "breaker_failures = 3\nbreaker_window = \"1m\"\nbreaker_cooldown = \"2s\"\nbreaker_scope = \"global\"",
        )
        .replace("max_retries = 3", "max_retries = 0");
    let mut c = Cluster::new(&config);
    for n in 0..3 {
        c.start_worker_args(n, &["--slots", "1"]);
    }
    c.spawn_all(&[]); // the schema, so the workers can be counted
    assert!(common::wait_until(Duration::from_secs(20), || c.pg.sql("corral", "SELECT count(*) FROM workers") == "3"));
    let bad: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("bad{i}"), c.script(1500, 2, 2))).collect();
    c.spawn_all(&bad);
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            let st = c.states();
            // Out of retries: escalated to a human.
            (0..3).all(|i| st.get(&format!("bad{i}")).map(String::as_str) == Some("escalated"))
        }),
        "{:?}\n{}",
        c.states(),
        c.logs()
    );
    // Every worker's escalations.txt lists all three, wherever they ran.
    for n in 0..3 {
        let file = c.worker_dir(n).join("escalations.txt");
        assert!(
            common::wait_until(Duration::from_secs(5), || {
                let t = std::fs::read_to_string(&file).unwrap_or_default();
                (0..3).all(|i| t.lines().any(|l| l.starts_with(&format!("bad{i}: "))))
            }),
            "{:?}",
            std::fs::read_to_string(&file)
        );
    }
    let workers = c.pg.sql("corral", "SELECT count(DISTINCT worker) FROM attempts WHERE agent_id LIKE 'bad%'");
    assert_eq!(workers, "3", "the three failures happened on three workers");
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            c.pg.sql("corral", "SELECT count(*) FROM events WHERE kind = 'breaker' AND data->>'state' = 'open'") == "1"
        }),
        "breaker events: {}\nattempts: {}\n{}",
        c.pg.sql("corral", "SELECT string_agg(seq || ' ' || at || ' ' || coalesce(worker::text, '-') || ' ' || data::text, E'\n' ORDER BY seq) FROM events WHERE kind = 'breaker'"),
        c.pg.sql("corral", "SELECT string_agg(agent_id || ' ' || n || ' ' || worker || ' ' || coalesce(outcome, '-') || ' ' || started_at || ' ' || coalesce(ended_at::text, '-'), E'\n' ORDER BY started_at) FROM attempts"),
        c.logs()
    );
    let good: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("good{i}"), c.script(300, 0, 0))).collect();
    c.spawn_all(&good);
    c.wait_all_of(&["good0", "good1", "good2"], "complete", Duration::from_secs(30));
    let mut runs: Vec<(u128, u128)> = (0..3).flat_map(|i| runs_of(&c, &format!("good{i}"))).collect();
    runs.sort();
    assert_eq!(runs.len(), 3);
    // The probe ran alone, the rest after it (and nothing during the cooldown: below).
    assert!(runs[1].0 > runs[0].1 && runs[2].0 > runs[0].1, "one probe first, then the others: {runs:?}");
    let first_start = c.pg.sql(
        "corral",
        "SELECT (extract(epoch from min(a.started_at) - (SELECT min(at) FROM events WHERE kind = 'breaker')) * 1000)::int \
         FROM attempts a WHERE agent_id LIKE 'good%'",
    );
    assert!(first_start.parse::<i64>().unwrap() >= 1900, "the probe started {first_start} ms after the breaker opened");
    c.check(5);
}

#[test]
fn handoffs_written_on_workers_are_aggregated_and_shown_from_a_machine_with_no_worker() {
    let mut c = Cluster::new(CONFIG);
    let corral = common::bin().display().to_string();
    let agent = |finding: &str| {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            format!(
                "echo made > out-$CORRAL_AGENT_ID.txt && {corral} handoff --finding '{finding}' --deliverable out-$CORRAL_AGENT_ID.txt"
            ),
        ]
    };
    c.start_worker(0);
    c.start_worker(1);
    let agents: Vec<(String, Vec<String>)> =
        (0..4).map(|i| (format!("h{i}"), agent(&format!("finding number {i}")))).collect();
    c.spawn_all(&agents);
    c.wait_all("complete", 4, Duration::from_secs(30));
    let stored = c.pg.sql("corral", "SELECT count(*) FROM handoffs WHERE workspace = 't'");
    assert_eq!(stored, "4", "{}", c.logs());
    // From the workspace with no worker of its own: the report has every agent's finding.
    let o = c.cmd(&["aggregate", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}\n{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["counts"]["aggregated"], 4, "{report:#}");
    for i in 0..4 {
        assert!(text.contains(&format!("finding number {i}")), "{text}");
    }
    let o = c.cmd(&["show", "h2", "--json"]).output().unwrap();
    let show: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show["handoff"]["body"]["deliverables"]["findings"][0], "finding number 2", "{show:#}");
}
