//! Cluster faults end to end: a worker cut off from PostgreSQL by a TCP proxy that stops
//! forwarding (a partition: sockets stay open, nothing answers), PostgreSQL restarted within
//! a lease, PostgreSQL down for longer than a lease, and an event follower across a restart.
//! Each ends with the harness's invariants (`Cluster::check`). The scenarios run one at a
//! time: they measure leases of two seconds on a machine that may be busy.

mod common;

use common::cluster::{CONFIG, Cluster, block_on};
use common::proxy::Proxy;
use corral::cluster::listen::{ListenOptions, Listener};
use corral::cluster::read;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 100 ms (each poll may run psql) until it holds or `limit` passes.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(s: String) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

/// The worker ids in the database, by the pid each registered with.
fn worker_of_pid(c: &Cluster, pid: i32) -> Vec<String> {
    lines(c.pg.sql("corral", &format!("SELECT id FROM workers WHERE pid = {pid} ORDER BY started_at")))
}

/// Agents with an open attempt on worker `w`.
fn running_on(c: &Cluster, w: &str) -> Vec<String> {
    lines(c.pg.sql(
        "corral",
        &format!("SELECT agent_id FROM attempts WHERE workspace = 't' AND worker = '{w}' AND ended_at IS NULL"),
    ))
}

fn started_in_ledger(c: &Cluster, id: &str) -> usize {
    c.ledger().iter().filter(|r| r.start && r.id == id).count()
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Every run in the ledger of an attempt on worker `w` (all of them when `None`) that
/// started before `before` (ns) ended before that worker's lease ran out, as the database
/// last had it: its shim stopped it in time. Returns how many runs it looked at.
fn ended_within_lease(c: &Cluster, w: Option<&str>, before: u128) -> usize {
    let recs = c.ledger();
    let leases = c.pg.sql(
        "corral",
        "SELECT a.agent_id || ' ' || a.fence || ' ' || a.worker || ' '
                || (extract(epoch FROM w.lease_until) * 1000000)::int8
         FROM attempts a JOIN workers w ON w.id = a.worker WHERE a.workspace = 't'",
    );
    let mut n = 0;
    for l in leases.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let (id, fence, worker, until_us) = (f[0], f[1].parse::<i64>().unwrap(), f[2], f[3].parse::<u128>().unwrap());
        if w.is_some_and(|w| w != worker) {
            continue;
        }
        let Some(s) = recs.iter().find(|r| r.start && r.id == id && r.fence == fence && r.at < before) else {
            continue;
        };
        let end = recs.iter().find(|r| !r.start && r.id == id && r.fence == fence && r.at >= s.at);
        let end = end.unwrap_or_else(|| panic!("{id}: no end of its run under fence {fence}: {recs:?}"));
        assert!(
            end.at < until_us * 1000,
            "{id} (fence {fence}) ended {} ms after its worker's lease ran out\n{}",
            (end.at as i128 - until_us as i128 * 1000) / 1_000_000,
            c.logs()
        );
        n += 1;
    }
    n
}

fn count(c: &Cluster, sql: &str) -> i64 {
    c.pg.sql("corral", sql).parse().unwrap_or_else(|e| panic!("{sql}: not a count: {e}"))
}

#[test]
fn a_worker_cut_off_from_the_database_stops_its_agents_before_they_run_elsewhere() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    let proxy = Proxy::start(c.pg.port);
    let agents: Vec<(String, Vec<String>)> = (0..4).map(|i| (format!("p{i}"), c.script(5000, 0, 0))).collect();
    // Worker 0, behind the proxy, alone first so it takes agents.
    c.start_worker_with(0, &proxy.url("corral"));
    c.spawn_all(&agents);
    let mut w0 = vec![];
    assert!(
        wait(Duration::from_secs(20), || {
            w0 = worker_of_pid(&c, c.pid(0));
            w0.len() == 1 && !running_on(&c, &w0[0]).is_empty()
        }),
        "{}",
        c.logs()
    );
    let w0 = w0.remove(0);
    let mine = running_on(&c, &w0);
    assert!(wait(Duration::from_secs(10), || mine.iter().all(|id| started_in_ledger(&c, id) == 1)));
    c.start_worker(1);
    c.start_worker(2);
    proxy.blackhole(true);
    let cut = Instant::now();
    assert!(proxy.connections() >= 1, "worker 0 reaches the database only through the proxy");
    // Its agents are stopped there, re-queued by the others and run again; check() below
    // proves each copy ended before the next began.
    assert!(
        wait(Duration::from_secs(30), || mine.iter().all(|id| started_in_ledger(&c, id) >= 2)),
        "the cut-off worker's agents did not start elsewhere: {:?}\n{}",
        c.ledger(),
        c.logs()
    );
    // Cut off for three leases in all, then healed: its late writes change nothing.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(cut.elapsed()));
    let healed = now_ns();
    proxy.blackhole(false);
    c.wait_all("complete", 4, Duration::from_secs(40));
    c.check(5);
    for id in &mine {
        let lost = count(
            &c,
            &format!("SELECT count(*) FROM attempts WHERE agent_id = '{id}' AND outcome = 'lost' AND worker = '{w0}'"),
        );
        assert_eq!(lost, 1, "{id}: the cut-off worker's attempt is recorded as lost");
        let won = count(
            &c,
            &format!(
                "SELECT count(*) FROM attempts WHERE agent_id = '{id}' AND outcome = 'complete' AND worker <> '{w0}'"
            ),
        );
        assert_eq!(won, 1, "{id}: completed once, on another worker");
    }
    let other = c.pg.sql(
        "corral",
        &format!(
            "SELECT agent_id || ' ' || coalesce(outcome, 'open') FROM attempts WHERE worker = '{w0}' AND outcome IS DISTINCT FROM 'lost'"
        ),
    );
    assert_eq!(other, "", "the cut-off worker's id has nothing but lost attempts");
    assert_eq!(ended_within_lease(&c, Some(&w0), healed), mine.len(), "each of its runs stopped within its lease");
    // Healed, it registered again under a new id.
    assert!(wait(Duration::from_secs(10), || worker_of_pid(&c, c.pid(0)).len() == 2), "{}", c.logs());
    let dead = c.pg.sql("corral", &format!("SELECT state FROM workers WHERE id = '{w0}'"));
    assert_eq!(dead, "dead");
}

#[test]
fn a_database_restart_shorter_than_the_lease_loses_no_agent() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> =
        (0..12).map(|i| (format!("r{i:02}"), c.script(1500 + i * 150, 0, 0))).collect();
    c.spawn_all(&agents);
    for n in 0..3 {
        c.start_worker(n);
    }
    assert!(wait(Duration::from_secs(20), || c.ledger().iter().filter(|r| r.start).count() >= 5), "{}", c.logs());
    let t = Instant::now();
    c.pg.restart();
    let took = t.elapsed();
    c.wait_all("complete", 12, Duration::from_secs(60));
    let runs = c.check(5);
    let lost = c.pg.sql("corral", "SELECT agent_id FROM attempts WHERE workspace = 't' AND outcome = 'lost'");
    assert_eq!(lost, "", "agents lost over a restart of {took:?}\n{}", c.logs());
    assert_eq!(runs, 12, "each agent ran once: {:?}", c.ledger());
    let attempts = count(&c, "SELECT count(*) FROM attempts WHERE workspace = 't'");
    assert_eq!(attempts, 12, "one attempt each");
    eprintln!("PostgreSQL restarted in {took:?}");
}

#[test]
fn a_database_down_longer_than_the_lease_stops_agents_everywhere_without_a_stampede_after() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> = (0..8).map(|i| (format!("o{i}"), c.script(3000, 0, 0))).collect();
    c.spawn_all(&agents);
    for n in 0..3 {
        c.start_worker(n);
    }
    assert!(wait(Duration::from_secs(20), || c.ledger().iter().filter(|r| r.start).count() >= 5), "{}", c.logs());
    let lease = Duration::from_secs(2);
    c.pg.stop();
    let down = now_ns();
    std::thread::sleep(lease * 2);
    let back = now_ns();
    c.pg.start_again();
    c.wait_all("complete", 8, Duration::from_secs(60));
    c.check(5);
    // Every copy that ran when the database went away ended at its worker's local deadline:
    // within the lease, well before the database came back.
    assert!(ended_within_lease(&c, None, down) >= 5);
    let recs = c.ledger();
    let started_before: Vec<_> = recs.iter().filter(|r| r.start && r.at < down).collect();
    assert!(started_before.len() >= 5, "{started_before:?}");
    for s in &started_before {
        let end = recs.iter().find(|r| !r.start && r.id == s.id && r.fence == s.fence && r.at >= s.at);
        let end = end.unwrap_or_else(|| panic!("{}: no end of its run under fence {}: {recs:?}", s.id, s.fence));
        assert!(end.at < back, "{} ran on after the database was back, with no lease: {recs:?}\n{}", s.id, c.logs());
    }
    // Each ran at most once more.
    for (id, _) in &agents {
        let n = started_in_ledger(&c, id);
        assert!((1..=2).contains(&n), "{id} started {n} times: {recs:?}");
    }
    // No stampede: nothing was judged lost before the sweepers and the database had been up
    // for a lease and a grace.
    let early = c.pg.sql(
        "corral",
        "SELECT agent_id || ' ' || (ended_at - pg_postmaster_start_time())::text FROM attempts
         WHERE workspace = 't' AND outcome = 'lost' AND ended_at < pg_postmaster_start_time() + interval '2.5 s'",
    );
    assert_eq!(early, "", "agents re-queued before the settle time");
    let lost = count(&c, "SELECT count(*) FROM attempts WHERE workspace = 't' AND outcome = 'lost'");
    assert!(lost >= 1, "the agents stopped by the outage were re-queued as lost");
}

/// Follows the workspace's events from 0 as `corral events -f` would on a machine with no
/// worker: wake on the listener (or a slow poll), read on from the last number seen. Runs
/// until `stop`, then returns every number seen; `connects` is kept at how often its
/// listener connected.
fn follow(c: &Cluster, stop: Arc<AtomicBool>, connects: Arc<AtomicU64>) -> std::thread::JoinHandle<Vec<i64>> {
    let db = c.db();
    std::thread::spawn(move || {
        block_on(async move {
            let opts = ListenOptions {
                poll: Duration::from_millis(300),
                ping: Duration::from_secs(1),
                reconnect: Duration::from_millis(200),
                application_name: "corral-test-follower".into(),
            };
            let mut listener = Listener::start(&db, "t", opts);
            let mut client: Option<tokio_postgres::Client> = None;
            let mut seen = vec![];
            let mut last = 0i64;
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                connects.store(listener.head().connects, Ordering::SeqCst);
                if client.as_ref().is_some_and(|c| c.is_closed()) {
                    client = None;
                }
                if client.is_none() {
                    client = tokio::time::timeout(Duration::from_secs(1), db.connect()).await.ok().and_then(Result::ok);
                }
                if let Some(cl) = &client {
                    match tokio::time::timeout(Duration::from_secs(1), read::events(cl, "t", last, 1000)).await {
                        Ok(Ok(evs)) => {
                            for e in &evs {
                                seen.push(e.seq);
                                last = last.max(e.seq);
                            }
                            if !evs.is_empty() {
                                continue;
                            }
                        }
                        _ => client = None,
                    }
                }
                if stopping {
                    return seen;
                }
                tokio::select! {
                    _ = listener.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    })
}

#[test]
fn an_event_follower_across_database_restarts_misses_no_event() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    // Short agents, every third failing once: a steady stream of events while the
    // database goes away and back.
    let agents: Vec<(String, Vec<String>)> =
        (0..15).map(|i| (format!("e{i:02}"), c.script(300 + i * 60, i32::from(i % 3 == 0), 0))).collect();
    c.spawn_all(&agents);
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let follower = follow(&c, stop.clone(), connects.clone());
    for n in 0..2 {
        c.start_worker(n);
    }
    let listening = |n: u64| wait(Duration::from_secs(10), || connects.load(Ordering::SeqCst) >= n);
    for k in 1..=2 {
        // Listening (again) before each restart, so each one cuts a live LISTEN connection.
        assert!(listening(k), "the follower's listener did not connect {k} time(s)");
        let before = count(&c, "SELECT count(*) FROM events WHERE workspace = 't'");
        assert!(
            wait(Duration::from_secs(20), || count(&c, "SELECT count(*) FROM events WHERE workspace = 't'")
                > before + 5),
            "{}",
            c.logs()
        );
        c.pg.restart();
    }
    c.wait_all("complete", 15, Duration::from_secs(60));
    c.check(5);
    assert!(listening(3), "the follower's listener did not connect again after the second restart");
    // The follower catches up with what is there; then it stops.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let seen = follower.join().unwrap();
    let total = count(&c, "SELECT count(*) FROM events WHERE workspace = 't'");
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "an event was read twice");
    assert_eq!(distinct.len() as i64, total, "the follower saw {} of {total} events", distinct.len());
    assert_eq!(distinct, (1..=total).collect(), "the follower saw other numbers than 1..={total}");
}

#[test]
fn connections_dropped_again_and_again_lose_no_agent_and_duplicate_no_event() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    let proxies = [Proxy::start(c.pg.port), Proxy::start(c.pg.port)];
    let agents: Vec<(String, Vec<String>)> =
        (0..10).map(|i| (format!("x{i}"), c.script(800 + i * 100, i32::from(i % 4 == 1), 0))).collect();
    c.spawn_all(&agents);
    for (n, p) in proxies.iter().enumerate() {
        c.start_worker_with(n, &p.url("corral"));
    }
    assert!(wait(Duration::from_secs(20), || c.ledger().iter().filter(|r| r.start).count() >= 3), "{}", c.logs());
    // Each time with room for a new connection (a connect with its password exchange takes
    // up to ~250 ms here) and a renewal before the next drop.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(600));
        proxies.iter().for_each(Proxy::reset);
    }
    let done = wait(Duration::from_secs(30), || c.states().values().all(|v| v == "complete"));
    if !done {
        eprintln!("{}", c.pg.sql("corral", "SELECT seq || ' ' || agent_id || ' ' || kind || ' ' || fence || ' ' || coalesce(worker::text,'') || ' ' || data::text FROM events WHERE workspace='t' ORDER BY seq"));
        eprintln!("{}", c.pg.sql("corral", "SELECT agent_id || ' ' || n || ' ' || fence || ' ' || worker || ' ' || coalesce(outcome,'-') || ' ' || coalesce(detail::text,'') FROM attempts WHERE workspace='t' ORDER BY agent_id, n"));
        panic!("{:?}\n{}", c.states(), c.logs());
    }
    c.check(5);
    let lost = c.pg.sql("corral", "SELECT agent_id FROM attempts WHERE workspace = 't' AND outcome = 'lost'");
    assert_eq!(lost, "", "agents lost to dropped connections\n{}", c.logs());
    let dup = c.pg.sql(
        "corral",
        "SELECT agent_id || ' ' || kind || ' x' || count(*) FROM events WHERE workspace = 't'
         GROUP BY agent_id, kind, data HAVING count(*) > 1",
    );
    eprintln!(
        "{}",
        c.pg.sql(
            "corral",
            "SELECT agent_id || ' ' || kind || ' ' || data::text FROM events WHERE workspace='t' ORDER BY seq"
        )
    );
    assert_eq!(dup, "", "events written twice");
}

#[test]
fn a_claim_that_commits_after_the_worker_stopped_waiting_is_not_stranded() {
    let _one = one_at_a_time();
    let mut c = Cluster::new(CONFIG);
    let agents: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("c{i}"), c.script(500, 0, 0))).collect();
    c.spawn_all(&agents);
    // A slow commit: each attempt a claim opens holds its COMMIT 400 ms, longer than the
    // worker waits for any call (a heartbeat, 200 ms). The claim commits after the worker
    // gave up on it, as under a stalled disk or a synchronous standby that went away.
    c.pg.sql(
        "corral",
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON attempts
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    );
    c.start_worker(0);
    assert!(
        wait(Duration::from_secs(20), || count(&c, "SELECT count(*) FROM attempts WHERE workspace = 't'") >= 1),
        "{}",
        c.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    c.pg.sql("corral", "DROP TRIGGER slow_commit ON attempts");
    // The worker learns it holds them, and runs them; nothing is stuck claimed.
    c.wait_all("complete", 3, Duration::from_secs(20));
    c.check(5);
    for (id, _) in &agents {
        assert_eq!(started_in_ledger(&c, id), 1, "{id} ran once: {:?}", c.ledger());
    }
}
