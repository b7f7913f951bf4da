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
    assert_eq!(runs, 220, "200 agents, 20 of them twice: {runs} runs in the ledger");
    // Work went to more than one worker.
    let owners = c.pg.sql("corral", "SELECT count(DISTINCT worker) FROM attempts WHERE workspace = 't'");
    assert!(owners.parse::<i32>().unwrap() >= 2, "only {owners} worker(s) ran agents");
    eprintln!("200 agents on 3 workers in {:?}", start.elapsed());
}
