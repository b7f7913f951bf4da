//! Cluster mode's store against a real PostgreSQL: a throw-away server per test (initdb as
//! the `postgres` user when run as root, TCP on 127.0.0.1 only, stopped at the end). The
//! test command installs PostgreSQL when it is missing.

mod common;

use corral::cluster::{Database, PasswordSources, schema};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::pg::{PASSWORD, Pg};

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn with_password() -> PasswordSources {
    PasswordSources { password: Some(PASSWORD.into()), passfile: None }
}

#[test]
fn several_workers_migrating_at_once_apply_each_step_once() {
    let pg = Pg::start();
    let url = pg.url("corral");
    let results: Vec<schema::Migrated> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    block_on(async {
                        let db = Database::parse(&url, &with_password()).unwrap();
                        let mut c = db.connect().await.unwrap();
                        schema::migrate(&mut c).await.unwrap()
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let appliers: Vec<_> = results.iter().filter(|m| !m.applied.is_empty()).collect();
    println!("CLUSTER migrate concurrent=6 appliers={} latest={}", appliers.len(), schema::latest());
    assert_eq!(appliers.len(), 1, "{results:?}");
    assert_eq!(appliers[0].from, 0);
    assert_eq!(appliers[0].applied, (1..=schema::latest()).collect::<Vec<_>>());
    assert!(results.iter().all(|m| m.to == schema::latest()), "{results:?}");
    assert_eq!(pg.sql("corral", "SELECT count(*) FROM corral_schema"), schema::latest().to_string());
    let tables = pg.sql(
        "corral",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(
        tables,
        "agents,attempts,commands,corral_schema,escalations,events,handoffs,kv,reports,workers,workspaces"
    );
    // Again: nothing to do.
    let again = block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap()
    });
    assert_eq!(again, schema::Migrated { from: schema::latest(), to: schema::latest(), applied: vec![] });
}

#[test]
fn a_schema_newer_than_this_corral_is_refused_and_left_alone() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap();
    });
    pg.sql("corral", "INSERT INTO corral_schema (version, name) VALUES (999, 'from the future')");
    let err = block_on(async {
        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap_err()
    });
    assert!(err.contains("version 999") && err.contains("upgrade corral"), "{err}");
    assert_eq!(pg.sql("corral", "SELECT max(version) FROM corral_schema"), "999");
}

#[test]
fn the_password_comes_from_a_password_file_and_errors_never_show_it() {
    let pg = Pg::start();
    let url = pg.url("corral");
    // No password at all: a clear refusal naming the server, not the password.
    let err = block_on(async {
        Database::parse(&url, &PasswordSources::default()).unwrap().connect().await.map(|_| ()).unwrap_err()
    });
    assert!(err.contains("cannot connect") && err.contains(&format!("127.0.0.1:{}/corral", pg.port)), "{err}");
    // A password file (mode 0600) as libpq reads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(&file, format!("# corral's tests\n127.0.0.1:{}:*:corral:{PASSWORD}\n", pg.port)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = PasswordSources { password: None, passfile: Some(file.clone()) };
    let m = block_on(async {
        let mut c = Database::parse(&url, &from_file).unwrap().connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap()
    });
    assert_eq!(m.to, schema::latest());
    // A wrong password: refused, and the message does not carry it.
    let wrong = PasswordSources { password: Some("not-it-42".into()), passfile: None };
    let err = block_on(async { Database::parse(&url, &wrong).unwrap().connect().await.map(|_| ()).unwrap_err() });
    assert!(err.contains("cannot connect") && !err.contains("not-it-42"), "{err}");
}

// ---- leases, claims, fenced writes, re-queue of lost agents ----

use corral::cluster::queue::{
    self, AttemptEnd, Change, ClusterError, Lease, NewAgent, NewEvent, SweepRules, WorkerSpec,
};
use serde_json::json;

const WS: &str = "team";

async fn client(url: &str) -> tokio_postgres::Client {
    let mut c = Database::parse(url, &with_password()).unwrap().connect().await.unwrap();
    schema::migrate(&mut c).await.unwrap();
    c
}

fn spec(labels: serde_json::Value, slots: i32, ttl: Duration) -> WorkerSpec {
    WorkerSpec {
        workspace: WS.into(),
        id: queue::new_worker_id(),
        host: "localhost".into(),
        pid: std::process::id() as i32,
        labels,
        slots,
        ttl,
    }
}

fn new_agents(prefix: &str, n: usize, placement: serde_json::Value) -> Vec<NewAgent> {
    (0..n)
        .map(|i| NewAgent {
            id: format!("{prefix}-{i}"),
            role: "worker".into(),
            placement: placement.clone(),
            group: None,
            provider: None,
            body: json!({ "task": i }),
            delay: Duration::ZERO,
        })
        .collect()
}

/// The attempt ends with exit 0 and the agent leaves its worker, complete.
fn finished() -> Change {
    Change {
        state: Some("complete".into()),
        end_attempt: Some(AttemptEnd { outcome: "exited".into(), exit_code: Some(0), detail: json!({}) }),
        release: true,
        events: vec![NewEvent::new("exited", json!({ "code": 0 }))],
        ..Change::default()
    }
}

fn running() -> Change {
    Change { state: Some("running".into()), events: vec![NewEvent::new("started", json!({}))], ..Change::default() }
}

/// Sweeps right away: no settle time (the tests' server and workers are seconds old).
fn quick_rules(max_requeue: i64) -> SweepRules {
    SweepRules {
        grace: Duration::from_millis(100),
        settle: Duration::ZERO,
        fresh: Duration::from_secs(30),
        max_requeue,
        max_lost: 3,
    }
}

fn wait_past(lease: &Lease, extra: Duration) {
    std::thread::sleep(lease.remaining() + extra);
}

/// Event numbers are 1..=N with no gap.
fn assert_events_dense(pg: &Pg) -> usize {
    let got =
        pg.sql("corral", "SELECT count(*) || ',' || COALESCE(min(seq), 0) || ',' || COALESCE(max(seq), 0) FROM events");
    let n: Vec<usize> = got.split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!((n[1], n[2]), (1.min(n[0]), n[0]), "event numbers are not dense: count,min,max = {got}");
    n[0]
}

#[test]
fn eight_claimers_on_200_agents_claim_each_once_and_never_exceed_max_concurrent() {
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, Some(5)).await.unwrap();
        // 20 agents may run only where there is a GPU (workers 0 and 1).
        let mut all = new_agents("a", 180, json!({}));
        all.extend(new_agents("gpu", 20, json!({ "gpu": true })));
        assert_eq!(queue::enqueue(&mut c, WS, &all).await.unwrap(), (1..=200).collect::<Vec<i64>>());
    });
    let finished_n = AtomicUsize::new(0);
    let inflight = AtomicI64::new(0);
    let peak = AtomicI64::new(0);
    let per_worker: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                let (url, finished_n, inflight, peak) = (&url, &finished_n, &inflight, &peak);
                s.spawn(move || {
                    block_on(async move {
                        let mut c = client(url).await;
                        let labels = if w < 2 { json!({ "gpu": true, "host": w }) } else { json!({ "host": w }) };
                        let lease = queue::register(&c, &spec(labels, 3, Duration::from_secs(60))).await.unwrap();
                        let end = Instant::now() + Duration::from_secs(30);
                        let mut mine = 0;
                        while finished_n.load(SeqCst) < 200 {
                            assert!(Instant::now() < end, "the 200 agents did not all finish in 30 s");
                            let claims = queue::claim(&mut c, &lease, 3).await.unwrap();
                            if claims.is_empty() {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                continue;
                            }
                            // Every claim is seen by the database before it returns, and the
                            // agent keeps its slot until the write below: a count of what
                            // the claimers hold never exceeds what the database counts.
                            let now = inflight.fetch_add(claims.len() as i64, SeqCst) + claims.len() as i64;
                            peak.fetch_max(now, SeqCst);
                            tokio::time::sleep(Duration::from_millis(4)).await;
                            for cl in &claims {
                                assert_eq!((cl.fence, cl.attempt), (1, 1), "{cl:?}");
                                inflight.fetch_sub(1, SeqCst);
                                queue::write(&mut c, &lease, &cl.id, cl.fence, &finished()).await.unwrap();
                                finished_n.fetch_add(1, SeqCst);
                                mine += 1;
                            }
                        }
                        mine
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peak = peak.load(SeqCst);
    println!("CLUSTER claim claimers=8 agents=200 per_worker={per_worker:?} peak_held={peak}");
    assert_eq!(per_worker.iter().sum::<usize>(), 200);
    assert!(per_worker.iter().filter(|&&n| n > 0).count() > 1, "{per_worker:?}");
    assert!(peak <= 5, "claimers held {peak} agents at once, over max_concurrent 5");
    // Each agent claimed exactly once: one attempt each, fence 1, complete and released.
    assert_eq!(
        pg.sql(
            "corral",
            "SELECT count(*) || ',' || count(DISTINCT agent_id) || ',' || max(n) || ',' || max(fence) FROM attempts"
        ),
        "200,200,1,1"
    );
    assert_eq!(
        pg.sql(
            "corral",
            "SELECT state || ',' || (owner IS NULL) || ',' || count(*) FROM agents GROUP BY state, owner IS NULL"
        ),
        "complete,true,200"
    );
    // Never more than 5 attempts open at once, by the database's own clock: an attempt opens
    // (clock_timestamp in the claim, after the count) only once the end that freed its slot
    // has committed.
    let overlap: i64 = pg
        .sql(
            "corral",
            "SELECT max((SELECT count(*) FROM attempts b
                         WHERE b.started_at <= a.started_at AND b.ended_at > a.started_at)) FROM attempts a",
        )
        .parse()
        .unwrap();
    println!("CLUSTER claim max_open_attempts_in_db={overlap}");
    assert!((2..=5).contains(&overlap), "at most 5 (and, with 8 claimers, more than 1) at once: {overlap}");
    // Placement: the GPU agents ran only on workers labelled with a GPU.
    assert_eq!(
        pg.sql(
            "corral",
            "SELECT count(*) FROM attempts t JOIN agents a ON a.workspace = t.workspace AND a.id = t.agent_id
             JOIN workers w ON w.id = t.worker WHERE a.placement ? 'gpu' AND NOT w.labels @> '{\"gpu\": true}'"
        ),
        "0"
    );
    // Events: dense, and each agent's spawned < claimed < exited.
    assert_eq!(assert_events_dense(&pg), 600);
    assert_eq!(
        pg.sql(
            "corral",
            "SELECT count(*) FROM (SELECT agent_id FROM events GROUP BY agent_id
               HAVING array_agg(kind ORDER BY seq) = ARRAY['spawned', 'claimed', 'exited']) x"
        ),
        "200"
    );
}

#[test]
fn a_write_with_a_stale_fence_or_from_another_worker_changes_nothing() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 1, json!({}))).await.unwrap();
        let a = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let b = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let claims = queue::claim(&mut c, &a, 5).await.unwrap();
        assert_eq!(claims.len(), 1);
        let fence = claims[0].fence;
        let before = pg.sql("corral", "SELECT state || ',' || fence || ',' || updated_at FROM agents");
        let events = assert_events_dense(&pg);
        // The right owner with an old fence.
        match queue::write(&mut c, &a, "x-0", fence - 1, &finished()).await {
            Err(ClusterError::Stale { agent, fence: f, now }) => {
                assert_eq!((agent.as_str(), f), ("x-0", fence - 1));
                assert!(now.contains(&format!("fence {fence}")) && now.contains(&a.worker), "{now}");
            }
            other => panic!("a stale fence must be refused: {other:?}"),
        }
        // The right fence from another worker.
        let err = queue::write(&mut c, &b, "x-0", fence, &finished()).await.unwrap_err();
        assert!(matches!(err, ClusterError::Stale { .. }), "{err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        // An agent that does not exist.
        assert!(matches!(queue::write(&mut c, &a, "nope", 1, &running()).await, Err(ClusterError::Stale { .. })));
        assert_eq!(pg.sql("corral", "SELECT state || ',' || fence || ',' || updated_at FROM agents"), before);
        assert_eq!(assert_events_dense(&pg), events);
        assert_eq!(pg.sql("corral", "SELECT count(*) FROM attempts WHERE ended_at IS NOT NULL"), "0");
        // The owner with its fence: written, with its event numbered next.
        let seqs = queue::write(&mut c, &a, "x-0", fence, &running()).await.unwrap();
        assert_eq!(seqs, vec![events as i64 + 1]);
        assert_eq!(pg.sql("corral", "SELECT state FROM agents"), "running");
        assert_eq!(
            pg.sql("corral", &format!("SELECT kind || ',' || fence FROM events WHERE seq = {}", seqs[0])),
            "started,1"
        );
    });
}

#[test]
fn mirrored_events_written_again_are_appended_once() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 1, json!({}))).await.unwrap();
        let a = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let fence = queue::claim(&mut c, &a, 5).await.unwrap()[0].fence;
        let mirrored = |from: u64, to: u64, source: &str| Change {
            state: Some("running".into()),
            events: (from..=to).map(|n| NewEvent::mirrored("progress", json!({ "n": n }), n as i64)).collect(),
            source: Some(source.into()),
            ..Change::default()
        };
        let kinds =
            || pg.sql("corral", "SELECT string_agg(data->>'n', ',' ORDER BY seq) FROM events WHERE kind = 'progress'");
        assert_eq!(queue::write(&mut c, &a, "x-0", fence, &mirrored(1, 3, "e-1")).await.unwrap().len(), 3);
        // The same write again (its answer was lost): nothing appended.
        assert!(queue::write(&mut c, &a, "x-0", fence, &mirrored(1, 3, "e-1")).await.unwrap().is_empty());
        // Sent again with what came since: only the new ones.
        assert_eq!(queue::write(&mut c, &a, "x-0", fence, &mirrored(2, 5, "e-1")).await.unwrap().len(), 2);
        assert_eq!(kinds(), "1,2,3,4,5");
        // Another local store numbers from 1 again: its events are its own.
        assert_eq!(queue::write(&mut c, &a, "x-0", fence, &mirrored(1, 1, "e-2")).await.unwrap().len(), 1);
        assert_eq!(kinds(), "1,2,3,4,5,1");
        assert_events_dense(&pg);
    });
}

#[test]
fn a_lease_that_ran_out_cannot_be_renewed_nor_used() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 2, json!({}))).await.unwrap();
        let s = spec(json!({}), 1, Duration::from_millis(600));
        let mut lease = queue::register(&c, &s).await.unwrap();
        assert!(lease.remaining() > Duration::from_millis(500) && lease.remaining() <= Duration::from_millis(600));
        // Renewed while live: the end moves on, on the database's clock.
        let first = lease.until;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let until = queue::renew(&c, &mut lease).await.unwrap();
        assert!(until > first && lease.until == until);
        let claims = queue::claim(&mut c, &lease, 5).await.unwrap();
        assert_eq!(claims.len(), 1, "one slot");
        // A restart within the lease re-attaches under the same id.
        let again = queue::register(&c, &s).await.unwrap();
        assert!(again.until >= lease.until);
        tokio::time::sleep(lease.remaining() + Duration::from_millis(100)).await;
        // Run out: nothing more, not even before anyone swept.
        let err = queue::renew(&c, &mut lease).await.unwrap_err();
        assert!(matches!(err, ClusterError::LeaseLost { .. }) && err.to_string().contains("register again"), "{err}");
        assert_eq!(pg.sql("corral", &format!("SELECT state FROM workers WHERE id = '{}'", lease.worker)), "dead");
        assert!(matches!(queue::claim(&mut c, &lease, 1).await, Err(ClusterError::LeaseLost { .. })));
        let late = queue::write(&mut c, &lease, &claims[0].id, claims[0].fence, &finished()).await;
        assert!(matches!(late, Err(ClusterError::LeaseLost { .. })), "{late:?}");
        assert!(matches!(queue::register(&c, &s).await, Err(ClusterError::LeaseLost { .. })));
        assert_eq!(pg.sql("corral", "SELECT string_agg(state, ',' ORDER BY id) FROM agents"), "starting,queued");
    });
}

#[test]
fn a_worker_whose_lease_expired_loses_its_agents_to_another_with_a_higher_fence() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, Some(2)).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 2, json!({}))).await.unwrap();
        let mut old = queue::register(&c, &spec(json!({}), 4, Duration::from_millis(800))).await.unwrap();
        let new = queue::register(&c, &spec(json!({}), 4, Duration::from_secs(30))).await.unwrap();
        let took = queue::claim(&mut c, &old, 4).await.unwrap();
        assert_eq!(took.iter().map(|t| t.fence).collect::<Vec<_>>(), vec![1, 1]);
        queue::write(&mut c, &old, "x-0", 1, &running()).await.unwrap();
        // While the old lease is live, nothing is taken and max_concurrent is full.
        let swept = queue::sweep(&mut c, &new, &quick_rules(20)).await.unwrap();
        assert_eq!(swept, queue::Swept::default());
        assert!(queue::claim(&mut c, &new, 4).await.unwrap().is_empty());
        wait_past(&old, Duration::from_millis(250));
        let swept = queue::sweep(&mut c, &new, &quick_rules(20)).await.unwrap();
        assert_eq!(swept.requeued, vec![("x-0".to_string(), 2), ("x-1".to_string(), 2)]);
        assert!(swept.held.is_none() && swept.escalated.is_empty(), "{swept:?}");
        assert_eq!(
            pg.sql(
                "corral",
                "SELECT string_agg(n || ':' || outcome || ':' || fence, ',' ORDER BY agent_id) FROM attempts"
            ),
            "1:lost:1,1:lost:1"
        );
        // The new worker claims them with a higher fence, as attempt 2.
        let again = queue::claim(&mut c, &new, 4).await.unwrap();
        assert_eq!(again.iter().map(|t| (t.fence, t.attempt)).collect::<Vec<_>>(), vec![(3, 2), (3, 2)]);
        // The old worker comes back: its renewal and its late writes are refused.
        assert!(matches!(queue::renew(&c, &mut old).await, Err(ClusterError::LeaseLost { .. })));
        let before = pg.sql("corral", "SELECT string_agg(state || fence || owner, ',' ORDER BY id) FROM agents");
        let events = assert_events_dense(&pg);
        for t in &took {
            let late = queue::write(&mut c, &old, &t.id, t.fence, &finished()).await;
            assert!(matches!(late, Err(ClusterError::Stale { .. })), "{late:?}");
        }
        assert_eq!(pg.sql("corral", "SELECT string_agg(state || fence || owner, ',' ORDER BY id) FROM agents"), before);
        assert_eq!(assert_events_dense(&pg), events);
        // The new owner finishes them; lost attempts did not count as failures.
        for t in &again {
            queue::write(&mut c, &new, &t.id, t.fence, &finished()).await.unwrap();
        }
        assert_eq!(
            pg.sql("corral", "SELECT string_agg(state || ':' || lost_streak, ',' ORDER BY id) FROM agents"),
            "complete:0,complete:0"
        );
        assert_eq!(
            pg.sql("corral", "SELECT string_agg(kind, ',' ORDER BY seq) FROM events WHERE agent_id = 'x-0'"),
            "spawned,claimed,started,lost,claimed,exited"
        );
        assert_eq!(pg.sql("corral", "SELECT count(*) FROM events WHERE kind = 'lost' AND fence = 2"), "2");
    });
}

#[test]
fn the_third_lost_attempt_in_a_row_escalates_instead_of_requeueing() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 1, json!({}))).await.unwrap();
        let sweeper = queue::register(&c, &spec(json!({ "sweeper": true }), 1, Duration::from_secs(30))).await.unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            // Only short-lived workers can run it.
            let w = queue::register(&c, &spec(json!({}), 1, Duration::from_millis(300))).await.unwrap();
            let claims = queue::claim(&mut c, &w, 1).await.unwrap();
            assert_eq!(claims.len(), 1, "the agent is claimable again after each lost attempt");
            wait_past(&w, Duration::from_millis(200));
            let s = queue::sweep(&mut c, &sweeper, &quick_rules(20)).await.unwrap();
            outcomes.push((s.requeued.len(), s.escalated.len()));
        }
        assert_eq!(outcomes, vec![(1, 0), (1, 0), (0, 1)]);
        assert_eq!(
            pg.sql("corral", "SELECT state || ',' || lost_streak || ',' || (owner IS NULL) FROM agents"),
            "blocked,3,true"
        );
        let esc = pg.sql("corral", "SELECT agent_id || ' ' || (body->>'reason') FROM escalations");
        assert!(esc.starts_with("x-0 lost 3 times in a row"), "{esc}");
        assert_eq!(pg.sql("corral", "SELECT string_agg(outcome, ',' ORDER BY n) FROM attempts"), "lost,lost,lost");
        let w = queue::register(&c, &spec(json!({}), 1, Duration::from_secs(30))).await.unwrap();
        assert!(queue::claim(&mut c, &w, 1).await.unwrap().is_empty(), "an escalated agent is not claimed");
        assert_events_dense(&pg);
    });
}

#[test]
fn a_sweep_judges_nobody_until_its_own_lease_is_settled_and_takes_at_most_n() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 3, json!({}))).await.unwrap();
        let dead = queue::register(&c, &spec(json!({}), 3, Duration::from_millis(300))).await.unwrap();
        assert_eq!(queue::claim(&mut c, &dead, 3).await.unwrap().len(), 3);
        let sweeper = queue::register(&c, &spec(json!({}), 1, Duration::from_secs(30))).await.unwrap();
        wait_past(&dead, Duration::from_millis(200));
        // Just registered (as after a database outage, when every worker registers anew).
        let settle = SweepRules { settle: Duration::from_secs(3600), ..quick_rules(20) };
        let s = queue::sweep(&mut c, &sweeper, &settle).await.unwrap();
        assert!(s.requeued.is_empty() && s.held.as_deref().unwrap_or("").contains("held its lease"), "{s:?}");
        // Not renewed lately.
        let stale = SweepRules { fresh: Duration::ZERO, ..quick_rules(20) };
        let s = queue::sweep(&mut c, &sweeper, &stale).await.unwrap();
        assert!(s.requeued.is_empty() && s.held.as_deref().unwrap_or("").contains("not renewed"), "{s:?}");
        assert_eq!(pg.sql("corral", "SELECT count(*) FROM agents WHERE state = 'queued'"), "0");
        // At most two per sweep, oldest first.
        let s = queue::sweep(&mut c, &sweeper, &quick_rules(2)).await.unwrap();
        assert_eq!(s.requeued.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["x-0", "x-1"]);
        let s = queue::sweep(&mut c, &sweeper, &quick_rules(2)).await.unwrap();
        assert_eq!(s.requeued.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["x-2"]);
        assert_eq!(queue::sweep(&mut c, &sweeper, &quick_rules(2)).await.unwrap(), queue::Swept::default());
        // An expired sweeper judges nobody.
        let mut short = queue::register(&c, &spec(json!({}), 1, Duration::from_millis(200))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(queue::sweep(&mut c, &short, &quick_rules(2)).await, Err(ClusterError::LeaseLost { .. })));
        assert!(queue::renew(&c, &mut short).await.is_err());
    });
}

#[test]
fn a_database_at_version_1_migrates_to_the_latest_once_keeping_its_rows() {
    let pg = Pg::start();
    let url = pg.url("corral");
    // A database as the first cluster release left it, with an agent in it.
    block_on(async {
        let c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
        c.batch_execute(
            "CREATE TABLE corral_schema (version integer PRIMARY KEY, name text NOT NULL,
                                         applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
        c.batch_execute(schema::MIGRATIONS[0].sql).await.unwrap();
        c.batch_execute(
            "INSERT INTO corral_schema (version, name) VALUES (1, 'v1');
             INSERT INTO workspaces (id) VALUES ('team');
             INSERT INTO agents (workspace, id, seq, role, state, body) VALUES ('team', 'old', 1, 'r', 'queued', '{}')",
        )
        .await
        .unwrap();
    });
    let results: Vec<schema::Migrated> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    block_on(async {
                        let mut c = Database::parse(&url, &with_password()).unwrap().connect().await.unwrap();
                        schema::migrate(&mut c).await.unwrap()
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let appliers: Vec<_> = results.iter().filter(|m| !m.applied.is_empty()).collect();
    assert_eq!(appliers.len(), 1, "{results:?}");
    assert_eq!(appliers[0].from, 1);
    assert_eq!(appliers[0].applied, (2..=schema::latest()).collect::<Vec<_>>());
    assert_eq!(pg.sql("corral", "SELECT id || ',' || attempt || ',' || lost_streak FROM agents"), "old,0,0");
    // The old agent is claimable under the new schema.
    block_on(async {
        let mut c = client(&url).await;
        let w = queue::register(&c, &spec(json!({}), 1, Duration::from_secs(30))).await.unwrap();
        let got = queue::claim(&mut c, &w, 1).await.unwrap();
        assert_eq!(got, vec![queue::Claim { id: "old".into(), seq: 1, fence: 1, attempt: 1 }]);
    });
}

#[test]
fn after_the_database_restarts_a_sweep_waits_a_full_settle_time_before_judging_anyone() {
    let mut pg = Pg::start();
    let url = pg.url("corral");
    let settle = Duration::from_millis(1500);
    let rules = SweepRules { settle, ..quick_rules(20) };
    let (sweeper, dead) = block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 1, json!({}))).await.unwrap();
        let sweeper = queue::register(&c, &spec(json!({}), 1, Duration::from_secs(60))).await.unwrap();
        let dead = queue::register(&c, &spec(json!({}), 1, Duration::from_millis(300))).await.unwrap();
        assert_eq!(queue::claim(&mut c, &dead, 1).await.unwrap().len(), 1);
        (sweeper, dead)
    });
    std::thread::sleep(settle + Duration::from_millis(100));
    pg.restart();
    let waited = block_on(async {
        let mut c = client(&url).await;
        let mut sweeper = sweeper.clone();
        queue::renew(&c, &mut sweeper).await.expect("a lease longer than the outage survives it");
        // The dead worker's lease ran out during the outage, and this sweeper has held its
        // own for longer than the settle time; the database's fresh start still holds it.
        let expired = format!("SELECT lease_until < now() FROM workers WHERE id = '{}'", dead.worker);
        assert_eq!(pg.sql("corral", &expired), "t");
        let s = queue::sweep(&mut c, &sweeper, &rules).await.unwrap();
        assert!(s.requeued.is_empty() && s.held.as_deref().unwrap_or("").contains("database has been up"), "{s:?}");
        assert_eq!(pg.sql("corral", "SELECT state FROM agents"), "starting");
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            queue::renew(&c, &mut sweeper).await.unwrap();
            let s = queue::sweep(&mut c, &sweeper, &rules).await.unwrap();
            if s.held.is_none() {
                assert_eq!(s.requeued, vec![("x-0".to_string(), 2)]);
                break start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the sweep is still held: {s:?}");
        }
    });
    assert!(waited < settle + Duration::from_secs(1), "held for about the settle time after the restart: {waited:?}");
    assert_eq!(pg.sql("corral", "SELECT state || ',' || fence FROM agents"), "queued,2");
}

#[test]
fn sweepers_racing_each_other_requeue_each_lost_agent_once() {
    let pg = Pg::start();
    let url = pg.url("corral");
    let dead = block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 40, json!({}))).await.unwrap();
        let dead = queue::register(&c, &spec(json!({}), 40, Duration::from_millis(300))).await.unwrap();
        assert_eq!(queue::claim(&mut c, &dead, 40).await.unwrap().len(), 40);
        dead
    });
    wait_past(&dead, Duration::from_millis(200));
    let taken: Vec<Vec<(String, i64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    block_on(async {
                        let mut c = client(&url).await;
                        let me = queue::register(&c, &spec(json!({}), 1, Duration::from_secs(30))).await.unwrap();
                        let mut mine = Vec::new();
                        for _ in 0..10 {
                            let s = queue::sweep(&mut c, &me, &quick_rules(3)).await.unwrap();
                            mine.extend(s.requeued);
                        }
                        mine
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<(String, i64)> = taken.concat();
    all.sort();
    println!("CLUSTER sweep racers=4 per_sweeper={:?}", taken.iter().map(Vec::len).collect::<Vec<_>>());
    assert_eq!(all.len(), 40, "each lost agent re-queued exactly once: {taken:?}");
    all.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|(_, f)| *f == 2), "{all:?}");
    assert_eq!(pg.sql("corral", "SELECT count(*) FROM events WHERE kind = 'lost'"), "40");
    assert_eq!(
        pg.sql("corral", "SELECT string_agg(DISTINCT state || ':' || lost_streak, ',') FROM agents"),
        "queued:1"
    );
    assert_events_dense(&pg);
}

#[test]
fn an_agent_given_back_with_a_delay_is_claimed_again_only_after_it() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        let mut later = new_agents("later", 1, json!({}));
        later[0].delay = Duration::from_secs(3600);
        queue::enqueue(&mut c, WS, &new_agents("x", 1, json!({}))).await.unwrap();
        queue::enqueue(&mut c, WS, &later).await.unwrap();
        let w = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let first = queue::claim(&mut c, &w, 2).await.unwrap();
        assert_eq!(first.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["x-0"], "a delayed agent waits");
        // The attempt failed: back to the queue for a backoff of 400 ms (a retry).
        let back = Change {
            state: Some("queued".into()),
            end_attempt: Some(AttemptEnd { outcome: "failed".into(), exit_code: Some(1), detail: json!({}) }),
            release: true,
            run_after: Some(Duration::from_millis(400)),
            events: vec![NewEvent::new("retrying", json!({ "in_ms": 400 }))],
            ..Change::default()
        };
        queue::write(&mut c, &w, "x-0", first[0].fence, &back).await.unwrap();
        assert!(queue::claim(&mut c, &w, 2).await.unwrap().is_empty(), "claimed before its run_after");
        // Released: the old fence is stale now.
        assert!(matches!(
            queue::write(&mut c, &w, "x-0", first[0].fence, &running()).await,
            Err(ClusterError::Stale { .. })
        ));
        let start = Instant::now();
        let again = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = queue::claim(&mut c, &w, 2).await.unwrap();
            if !got.is_empty() {
                break got;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never claimable again");
        };
        assert_eq!(again, vec![queue::Claim { id: "x-0".into(), seq: 1, fence: 2, attempt: 2 }]);
        // Claimed only once its run_after had passed, set after the first attempt ended.
        assert_eq!(
            pg.sql(
                "corral",
                "SELECT t2.started_at >= a.run_after AND a.run_after > t1.ended_at FROM agents a
                 JOIN attempts t1 ON t1.agent_id = a.id AND t1.n = 1 JOIN attempts t2 ON t2.agent_id = a.id AND t2.n = 2"
            ),
            "t"
        );
        assert_eq!(
            pg.sql(
                "corral",
                "SELECT string_agg(outcome || ':' || exit_code, ',' ORDER BY n) FROM attempts WHERE agent_id = 'x-0'"
            ),
            "failed:1"
        );
        // A run_after without giving the agent back to the queue is a mistake, not a write.
        let bad =
            Change { state: Some("running".into()), run_after: Some(Duration::from_secs(1)), ..Change::default() };
        let err = queue::write(&mut c, &w, "x-0", 2, &bad).await.unwrap_err();
        assert!(matches!(err, ClusterError::Bad(_)) && err.to_string().contains("run_after"), "{err}");
    });
}

// ---- spawns from any machine, commands, wake-ups, reads ----

use corral::cluster::listen::{ListenOptions, Listener};
use corral::cluster::{commands, read};

fn spawn_req(role: &str, key: Option<String>, task: &str) -> queue::Spawn {
    queue::Spawn {
        id: None,
        role: role.into(),
        key,
        request: json!({ "role": role, "task": task, "command": "true" }),
        placement: json!({}),
        group: None,
        provider: None,
        body: json!({ "task": task }),
        delay: Duration::ZERO,
    }
}

#[test]
fn eight_spawners_reusing_keys_get_one_agent_per_key_distinct_ids_and_dense_numbers() {
    use std::collections::{BTreeMap, BTreeSet};
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
    });
    // Each spawner: 50 spawns, half with keys all spawners share, half with its own.
    let got: Vec<Vec<(String, queue::Spawned)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let url = &url;
                s.spawn(move || {
                    block_on(async move {
                        let mut c = client(url).await;
                        let mut out = Vec::new();
                        for i in 0..50 {
                            let key = if i % 2 == 0 { format!("shared-{}", i / 2) } else { format!("own-{t}-{i}") };
                            let sp =
                                queue::spawn(&mut c, WS, &spawn_req("worker", Some(key.clone()), &key)).await.unwrap();
                            out.push((key, sp));
                        }
                        out
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(String, queue::Spawned)> = got.concat();
    let mut by_key: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut created: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, sp) in &all {
        by_key.entry(k).or_default().insert(&sp.id);
        *created.entry(k).or_default() += sp.created as usize;
    }
    assert_eq!(by_key.len(), 25 + 8 * 25);
    assert!(by_key.values().all(|ids| ids.len() == 1), "a key got more than one agent");
    assert!(created.values().all(|n| *n == 1), "each key created exactly once: {created:?}");
    let ids: BTreeSet<&str> = by_key.values().flatten().copied().collect();
    assert_eq!(ids.len(), 225, "no two keys share an id");
    assert_eq!(pg.sql("corral", "SELECT count(*) || ',' || min(seq) || ',' || max(seq) FROM agents"), "225,1,225");
    assert_eq!(pg.sql("corral", "SELECT next_number FROM workspaces"), "226");
    assert_eq!(
        pg.sql("corral", "SELECT count(*) FROM agents WHERE id <> 'agent-' || lpad(seq::text, 3, '0') || '-worker'"),
        "0",
        "ids come from the numbers"
    );
    println!("CLUSTER spawn spawners=8 spawns=400 agents=225");
    assert_eq!(assert_events_dense(&pg), 225);
    block_on(async {
        let mut c = client(&url).await;
        // The same key for a different spawn is refused, naming the key and the first agent.
        let first = &by_key["shared-0"];
        let err = queue::spawn(&mut c, WS, &spawn_req("worker", Some("shared-0".into()), "something else"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"shared-0\"") && err.contains(first.iter().next().unwrap()) && err.contains("different"),
            "{err}"
        );
        // A given id that exists already is refused; no number is spent on either.
        let mut dup = spawn_req("worker", None, "x");
        dup.id = Some("agent-001-worker".into());
        let err = queue::spawn(&mut c, WS, &dup).await.unwrap_err().to_string();
        assert!(err.contains("agent-001-worker already exists"), "{err}");
        let next = queue::spawn(&mut c, WS, &spawn_req("reviewer", None, "y")).await.unwrap();
        assert_eq!(next, queue::Spawned { id: "agent-226-reviewer".into(), seq: 226, created: true });
    });
}

#[test]
fn commands_reach_the_owning_worker_once_also_while_ownership_moves() {
    use std::collections::BTreeSet;
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("a", 4, json!({}))).await.unwrap();
        let w1 = queue::register(&c, &spec(json!({}), 2, Duration::from_millis(1500))).await.unwrap();
        let w2 = queue::register(&c, &spec(json!({}), 4, Duration::from_secs(60))).await.unwrap();
        assert_eq!(queue::claim(&mut c, &w1, 2).await.unwrap().len(), 2); // a-0, a-1
        assert_eq!(queue::claim(&mut c, &w2, 1).await.unwrap().len(), 1); // a-2; a-3 stays queued
        // From a machine with no worker.
        let mut cli = client(&url).await;
        let k0 = commands::submit(&mut cli, WS, "a-0", "kill", json!({})).await.unwrap();
        let t1 = commands::submit(&mut cli, WS, "a-1", "tell", json!({ "text": "one" })).await.unwrap();
        let r2 = commands::submit(&mut cli, WS, "a-2", "retry", json!({})).await.unwrap();
        let t3 = commands::submit(&mut cli, WS, "a-3", "tell", json!({ "text": "queued" })).await.unwrap();
        let k0b = commands::submit(&mut cli, WS, "a-0", "kill", json!({ "again": true })).await.unwrap();
        let err = commands::submit(&mut cli, WS, "nope", "kill", json!({})).await.unwrap_err().to_string();
        assert!(err.contains("no agent nope"), "{err}");
        let err = commands::submit(&mut cli, WS, "a-0", "pause", json!({})).await.unwrap_err().to_string();
        assert!(err.contains("kill, retry, tell"), "{err}");

        let mut c1 = client(&url).await;
        let mut c2 = client(&url).await;
        let mut taken: Vec<(i64, String)> = Vec::new();
        let got2 = commands::take_commands(&mut c2, &w2).await.unwrap();
        assert_eq!(got2.iter().map(|c| (c.id, c.agent.as_str(), c.fence)).collect::<Vec<_>>(), vec![(r2, "a-2", 1)]);
        let got1 = commands::take_commands(&mut c1, &w1).await.unwrap();
        assert_eq!(
            got1.iter().map(|c| (c.id, c.kind.as_str(), c.fence)).collect::<Vec<_>>(),
            vec![(k0, "kill", 1), (t1, "tell", 1), (k0b, "kill", 1)],
            "the owner's commands, in order"
        );
        assert_eq!(got1[1].args, json!({ "text": "one" }));
        taken.extend(got1.iter().map(|c| (c.id, w1.worker.clone())));
        taken.extend(got2.iter().map(|c| (c.id, w2.worker.clone())));
        assert!(commands::take_commands(&mut c1, &w1).await.unwrap().is_empty(), "taken once");
        assert!(commands::take_commands(&mut c2, &w2).await.unwrap().is_empty());
        // Only the taker finishes a command, once.
        let err = commands::finish_command(&mut c2, &w2, k0, json!({})).await.unwrap_err().to_string();
        assert!(err.contains("not this worker's"), "{err}");
        commands::finish_command(&mut c1, &w1, k0, json!({ "killed": true })).await.unwrap();
        assert!(commands::finish_command(&mut c1, &w1, k0, json!({})).await.is_err());

        // Many commands, two connections of the owner taking at once: each exactly once.
        let mut many = Vec::new();
        for i in 0..40 {
            many.push(commands::submit(&mut cli, WS, "a-1", "tell", json!({ "text": format!("m{i}") })).await.unwrap());
        }
        let (x, y) = tokio::join!(commands::take_commands(&mut c1, &w1), commands::take_commands(&mut c2, &w1));
        let (x, y) = (x.unwrap(), y.unwrap());
        let both: Vec<i64> = x.iter().chain(&y).map(|c| c.id).collect();
        assert_eq!(both.iter().copied().collect::<BTreeSet<_>>(), many.iter().copied().collect(), "{x:?} {y:?}");
        assert_eq!(both.len(), 40, "no command taken twice");
        taken.extend(both.iter().map(|id| (*id, w1.worker.clone())));

        // Ownership moves: w1 stops renewing; commands submitted meanwhile wait for the new owner.
        let late = commands::submit(&mut cli, WS, "a-1", "tell", json!({ "text": "late" })).await.unwrap();
        wait_past(&w1, Duration::from_millis(300));
        let later = commands::submit(&mut cli, WS, "a-1", "kill", json!({})).await.unwrap();
        assert!(matches!(commands::take_commands(&mut c1, &w1).await, Err(ClusterError::LeaseLost { .. })));
        assert!(matches!(
            commands::finish_command(&mut c1, &w1, t1, json!({})).await,
            Err(ClusterError::LeaseLost { .. })
        ));
        let s = queue::sweep(&mut c2, &w2, &quick_rules(20)).await.unwrap();
        assert_eq!(s.requeued.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["a-0", "a-1"]);
        // Nobody owns a-1 now: its commands wait untaken.
        assert!(commands::take_commands(&mut c2, &w2).await.unwrap().is_empty());
        let claimed = queue::claim(&mut c2, &w2, 3).await.unwrap();
        assert_eq!(
            claimed.iter().map(|c| (c.id.as_str(), c.fence)).collect::<Vec<_>>(),
            vec![("a-0", 3), ("a-1", 3), ("a-3", 1)]
        );
        let moved = commands::take_commands(&mut c2, &w2).await.unwrap();
        assert_eq!(
            moved.iter().map(|c| (c.id, c.agent.as_str(), c.fence)).collect::<Vec<_>>(),
            vec![(t3, "a-3", 1), (late, "a-1", 3), (later, "a-1", 3)],
            "the new owner gets the untaken ones, under its fence"
        );
        taken.extend(moved.iter().map(|c| (c.id, w2.worker.clone())));
        assert!(commands::take_commands(&mut c2, &w2).await.unwrap().is_empty());

        // Every command taken exactly once, by the worker that owned its agent then.
        let rows = commands::list(&cli, WS, None).await.unwrap();
        assert_eq!(rows.len(), 5 + 40 + 2);
        taken.sort();
        assert_eq!(taken.len(), rows.len());
        for (row, (id, by)) in rows.iter().zip(&taken) {
            assert_eq!((row.id, row.taken_by.as_deref()), (*id, Some(by.as_str())), "{row:?}");
        }
        let done: Vec<_> = rows.iter().filter(|r| r.done).map(|r| (r.id, r.result.clone())).collect();
        assert_eq!(done, vec![(k0, Some(json!({ "killed": true })))]);
    });
}

/// Reads on from `last` until `target`, asserting every number comes once and in order.
async fn follow(l: &mut Listener, c: &tokio_postgres::Client, last: &mut i64, target: i64, what: &str) {
    let end = Instant::now() + Duration::from_secs(8);
    loop {
        if l.head().events > *last {
            for e in read::events(c, WS, *last, 1000).await.unwrap() {
                assert_eq!(e.seq, *last + 1, "{what}: a gap or a repeat after {last}");
                *last = e.seq;
            }
        }
        if *last >= target {
            assert_eq!(*last, target, "{what}");
            return;
        }
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: at {last}, head {:?}, never reached {target}", l.head());
        let _ = tokio::time::timeout(left, l.changed()).await;
    }
}

#[test]
fn a_listener_sees_every_event_in_order_by_notify_by_poll_and_across_a_dropped_connection() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        let db = Database::parse(&url, &with_password()).unwrap();
        let opts = |name: &str, poll: Duration| ListenOptions {
            poll,
            ping: Duration::from_millis(500),
            reconnect: Duration::from_millis(100),
            application_name: format!("corral-listener-{name}"),
        };
        // `a` never polls after connecting: it moves only by notifications. `b` polls.
        let mut a = Listener::start(&db, WS, opts("a", Duration::from_secs(3600)));
        let mut b = Listener::start(&db, WS, opts("b", Duration::from_millis(300)));
        let start = Instant::now();
        while a.head().connects == 0 || b.head().connects == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "listeners did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reader = client(&url).await;
        let (mut la, mut lb) = (0, 0);
        for i in 1..=10 {
            queue::spawn(&mut c, WS, &spawn_req("worker", None, &format!("t{i}"))).await.unwrap();
            follow(&mut a, &reader, &mut la, i, "by notify").await;
        }
        follow(&mut b, &reader, &mut lb, 10, "b").await;
        // An event whose notification is lost (written without one): the poll finds it.
        pg.sql(
            "corral",
            "WITH n AS (UPDATE workspaces SET event_seq = event_seq + 1 WHERE id = 'team' RETURNING event_seq)
             INSERT INTO events (workspace, seq, kind) SELECT 'team', event_seq, 'silent' FROM n",
        );
        follow(&mut b, &reader, &mut lb, 11, "by poll").await;
        assert_eq!(a.head().events, 10, "no notification reached the listener that does not poll");
        // Both LISTEN connections dropped by the server; events keep coming meanwhile.
        let killed = pg.sql(
            "corral",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'corral-listener-%'",
        );
        assert_eq!(killed, "2");
        for i in 12..=16 {
            queue::spawn(&mut c, WS, &spawn_req("worker", None, &format!("t{i}"))).await.unwrap();
        }
        follow(&mut a, &reader, &mut la, 16, "a after reconnecting").await;
        follow(&mut b, &reader, &mut lb, 16, "b after reconnecting").await;
        assert!(a.head().connects >= 2 && b.head().connects >= 2, "{:?} {:?}", a.head(), b.head());
        // A command wakes listeners too.
        let before = a.head().commands;
        let id = commands::submit(&mut c, WS, "agent-001-worker", "kill", json!({})).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while a.head().commands < id {
                a.changed().await;
            }
        })
        .await;
        assert!(before < id && a.head().commands == id, "{:?}", a.head());
    });
}

#[test]
fn reads_by_sql_return_the_stored_bodies_and_the_events_in_commit_order() {
    let pg = Pg::start();
    let url = pg.url("corral");
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        for t in ["x", "y", "z"] {
            queue::spawn(&mut c, WS, &spawn_req("worker", Some(format!("k-{t}")), t)).await.unwrap();
        }
        let w = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let got = queue::claim(&mut c, &w, 2).await.unwrap();
        let (one, two) = (&got[0], &got[1]);
        let body = json!({ "task": "x", "pid": 4242 });
        let run = Change { body: Some(body.clone()), ..running() };
        queue::write(&mut c, &w, &one.id, one.fence, &run).await.unwrap();
        queue::write(&mut c, &w, &two.id, two.fence, &finished()).await.unwrap();

        let other = client(&url).await;
        let all = read::agents(&other, WS, &read::AgentFilter::default()).await.unwrap();
        let view: Vec<_> = all.iter().map(|a| (a.id.as_str(), a.seq, a.state.as_str(), a.fence)).collect();
        assert_eq!(
            view,
            vec![
                ("agent-001-worker", 1, "running", 1),
                ("agent-002-worker", 2, "complete", 1),
                ("agent-003-worker", 3, "queued", 0)
            ]
        );
        assert_eq!(all[0].body, body);
        assert_eq!(all[0].owner.as_deref(), Some(w.worker.as_str()));
        assert_eq!((all[1].owner.as_deref(), all[2].idempotency_key.as_deref()), (None, Some("k-z")));
        let running_only = read::AgentFilter { states: Some(vec!["running".into()]), ..Default::default() };
        assert_eq!(read::agents(&other, WS, &running_only).await.unwrap().len(), 1);
        let mine = read::AgentFilter { owner: Some(w.worker.clone()), ..Default::default() };
        assert_eq!(read::agents(&other, WS, &mine).await.unwrap()[0].id, "agent-001-worker");
        let some = read::AgentFilter {
            ids: Some(vec!["agent-003-worker".into()]),
            role: Some("worker".into()),
            ..Default::default()
        };
        assert_eq!(read::agents(&other, WS, &some).await.unwrap()[0].state, "queued");

        let evs = read::events(&other, WS, 0, 100).await.unwrap();
        let kinds: Vec<_> = evs.iter().map(|e| (e.seq, e.kind.as_str(), e.agent.as_deref().unwrap_or(""))).collect();
        assert_eq!(
            kinds,
            vec![
                (1, "spawned", "agent-001-worker"),
                (2, "spawned", "agent-002-worker"),
                (3, "spawned", "agent-003-worker"),
                (4, "claimed", "agent-001-worker"),
                (5, "claimed", "agent-002-worker"),
                (6, "started", "agent-001-worker"),
                (7, "exited", "agent-002-worker"),
            ]
        );
        assert_eq!((evs[0].worker.as_deref(), evs[5].worker.as_deref()), (None, Some(w.worker.as_str())));
        assert_eq!(evs[6].data, json!({ "code": 0 }));
        let page: Vec<i64> = read::events(&other, WS, 3, 2).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(page, vec![4, 5]);
        assert!(read::events(&other, WS, 7, 10).await.unwrap().is_empty());
    });
}

/// The cluster's breaker is fed by the fenced write that records an outcome, in the same
/// transaction: each newly mirrored `retry_scheduled` a failure, the attempt's end its
/// outcome. A write sent again (its answer lost) or refused as stale feeds nothing.
#[test]
fn outcomes_feed_the_breaker_once_and_only_with_their_record() {
    let pg = Pg::start();
    let url = pg.url("corral");
    let health = corral::policy::health::HealthPolicy {
        breaker_failures: 3,
        breaker_scope: corral::policy::health::BreakerScope::Global,
        ..Default::default()
    };
    block_on(async {
        let mut c = client(&url).await;
        queue::configure_workspace(&c, WS, None).await.unwrap();
        queue::enqueue(&mut c, WS, &new_agents("x", 2, json!({}))).await.unwrap();
        let w = queue::register(&c, &spec(json!({}), 2, Duration::from_secs(30))).await.unwrap();
        let claims = queue::claim(&mut c, &w, 2).await.unwrap();
        let fence = |id: &str| claims.iter().find(|k| k.id == id).unwrap().fence;
        let failures =
            || pg.sql("corral", "SELECT jsonb_array_length(breaker->'byKey'->'*'->'failures') FROM workspaces");
        // Two retries mirrored from local store "s1"; the same write again appends and feeds nothing.
        let retries = Change {
            state: Some("running".into()),
            events: vec![
                NewEvent::mirrored("retry_scheduled", json!({ "retry": 1 }), 7),
                NewEvent::mirrored("retry_scheduled", json!({ "retry": 2 }), 9),
            ],
            source: Some("s1".into()),
            breaker: Some(health.clone()),
            ..Change::default()
        };
        queue::write(&mut c, &w, "x-0", fence("x-0"), &retries).await.unwrap();
        assert_eq!(failures(), "2");
        queue::write(&mut c, &w, "x-0", fence("x-0"), &retries).await.unwrap();
        assert_eq!(failures(), "2", "a write sent again feeds nothing twice");
        // The third failure, the attempt's end: the breaker opens, its event in the same write.
        let failed = Change {
            state: Some("failed".into()),
            end_attempt: Some(AttemptEnd { outcome: "failed".into(), exit_code: Some(1), detail: json!({}) }),
            release: true,
            breaker: Some(health.clone()),
            ..Change::default()
        };
        queue::write(&mut c, &w, "x-0", fence("x-0"), &failed).await.unwrap();
        assert_eq!(pg.sql("corral", "SELECT breaker->'byKey'->'*'->>'state' FROM workspaces"), "open");
        assert_eq!(
            pg.sql("corral", "SELECT count(*) FROM events WHERE kind = 'breaker' AND data->>'state' = 'open'"),
            "1"
        );
        // Sent again after the release: stale, and the breaker is as it was.
        let before = pg.sql("corral", "SELECT breaker::text FROM workspaces");
        assert!(matches!(
            queue::write(&mut c, &w, "x-0", fence("x-0"), &failed).await,
            Err(ClusterError::Stale { .. })
        ));
        assert_eq!(pg.sql("corral", "SELECT breaker::text FROM workspaces"), before);
        // Without a breaker in the change, nothing is fed.
        let done = Change { breaker: None, ..finished() };
        queue::write(&mut c, &w, "x-1", fence("x-1"), &done).await.unwrap();
        assert_eq!(pg.sql("corral", "SELECT breaker::text FROM workspaces"), before);
    });
    assert_events_dense(&pg);
}
