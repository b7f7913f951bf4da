//! Cluster-wide admission end to end: a real PostgreSQL on 127.0.0.1 and real `corral worker`
//! processes (see `common::cluster`). Placement, group limits and the workspace's budget are
//! decided in the claim's transaction on the whole cluster's snapshot; the ledger the agents
//! write is the ground truth.

mod common;

use common::cluster::{CONFIG, Cluster, most_at_once};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn show(c: &Cluster, id: &str) -> Value {
    c.json(&["show", id, "--json"])
}

/// The workers' ids that registered with `pid`.
fn worker_ids(c: &Cluster, pid: i32) -> Vec<String> {
    c.pg.sql("corral", &format!("SELECT id FROM workers WHERE pid = {pid}")).lines().map(str::to_string).collect()
}

/// The workers each agent's attempts ran on, by agent.
fn ran_on(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in
        c.pg.sql("corral", "SELECT agent_id || ' ' || worker FROM attempts WHERE workspace = 't' ORDER BY n").lines()
    {
        if let Some((a, w)) = l.split_once(' ') {
            out.entry(a.to_string()).or_default().push(w.to_string());
        }
    }
    out
}

#[test]
fn a_group_limit_holds_across_three_workers() {
    let config = format!(
        "{CONFIG}\n[roles.BUILD]\ngroup = \"build\"\n[roles.LINT]\n[groups.build]\nmax_concurrent = 2\n\
         [groups.other]\nmax_concurrent = 1\n"
    );
    let mut c = Cluster::new(&config);
    // The role's group, resolved at spawn: 8 builds (2 at a time), 3 lints (no group) and
    // 2 builds moved to another group with --group (1 at a time).
    let mut builds = Vec::new();
    for i in 0..8 {
        builds.push(c.spawn_cli(&["--role", "BUILD", "--task", "b", "--id", &format!("b{i}")], &c.script(1200, 0, 0)));
    }
    let lints: Vec<String> = (0..3)
        .map(|i| c.spawn_cli(&["--role", "LINT", "--task", "l", "--id", &format!("l{i}")], &c.script(1200, 0, 0)))
        .collect();
    let others: Vec<String> = (0..2)
        .map(|i| {
            let id = format!("o{i}");
            c.spawn_cli(&["--role", "BUILD", "--task", "o", "--id", &id, "--group", "other"], &c.script(1200, 0, 0))
        })
        .collect();
    let groups = c.pg.sql("corral", "SELECT id || '=' || coalesce(admission_group, '-') FROM agents ORDER BY seq");
    assert!(groups.contains("b0=build") && groups.contains("l0=-") && groups.contains("o1=other"), "{groups}");
    for n in 0..3 {
        c.start_worker(n);
    }
    // While builds wait, they say why, in the single-machine supervisor's words.
    let mut said = std::collections::BTreeSet::new();
    let ok = common::wait_until(Duration::from_secs(30), || {
        let s = c.statuses();
        said.extend(
            s.values()
                .filter(|v| v["status"] == "queued" && v["group"] == "build")
                .filter_map(|v| v["reason"].as_str().map(str::to_string)),
        );
        s.len() == 13 && s.values().all(|v| v["status"] == "complete")
    });
    assert!(ok, "not all complete: {:?}\n{}", c.states(), c.logs());
    assert!(said.contains("group build at capacity (2 running, max 2)"), "{said:?}");
    c.check(5);
    let recs = c.ledger();
    let build_most = most_at_once(&recs, |id| builds.iter().any(|b| b == id));
    assert_eq!(build_most, 2, "builds at once across the cluster (limit 2)");
    assert_eq!(most_at_once(&recs, |id| others.iter().any(|o| o == id)), 1, "group other (limit 1)");
    // An agent with no group is held by the workspace's limit alone: the lints ran beside
    // the builds.
    assert!(lints.iter().all(|l| c.started(l) == 1));
    assert!(most_at_once(&recs, |_| true) >= 4, "the ungrouped agents were held back with the builds");
    // The builds ran on more than one worker: the limit is the cluster's, not a worker's.
    let on = ran_on(&c);
    let workers: std::collections::BTreeSet<&String> = builds.iter().flat_map(|b| &on[b]).collect();
    assert!(workers.len() >= 2, "builds ran on {workers:?} only");
}

#[test]
fn an_agent_with_a_placement_runs_only_on_a_worker_whose_labels_contain_it() {
    let config = format!("{CONFIG}\n[roles.TRAIN]\nplacement = {{ gpu = true }}\n[roles.PLAIN]\n");
    let mut c = Cluster::new(&config);
    // Two workers without a GPU first.
    c.start_worker(0);
    c.start_worker(1);
    let trains: Vec<String> = (0..3)
        .map(|i| c.spawn_cli(&["--role", "TRAIN", "--task", "t", "--id", &format!("t{i}")], &c.script(300, 0, 0)))
        .collect();
    // --on adds to the role's placement; on a role with none it is the whole of it.
    let eu = c.spawn_cli(&["--role", "TRAIN", "--task", "t", "--id", "t-eu", "--on", "zone=eu"], &c.script(300, 0, 0));
    let plains: Vec<String> = (0..3)
        .map(|i| c.spawn_cli(&["--role", "PLAIN", "--task", "p", "--id", &format!("p{i}")], &c.script(300, 0, 0)))
        .collect();
    let big =
        c.spawn_cli(&["--role", "PLAIN", "--task", "p", "--id", "p-big", "--on", "cores=64"], &c.script(300, 0, 0));
    // A placement that is not KEY=VALUE is bad input, and nothing is queued.
    let bad = c.cmd(&["spawn", "--role", "PLAIN", "--task", "p", "--on", "gpu", "--", "true"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--on \"gpu\": expected KEY=VALUE"), "{bad:?}");
    c.wait_all_of(&plains.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(30));
    assert_eq!(c.states().len(), 8, "{:?}", c.states());
    // Nobody took the GPU agents, and they say why.
    let s = c.statuses();
    for t in &trains {
        assert_eq!(s[t]["status"], "queued", "{t}: {}", s[t]);
        assert_eq!(s[t]["reason"], "no worker offers gpu=true", "{t}");
        assert_eq!(s[t]["anomalies"][0], "QUEUED: no worker offers gpu=true", "{t}");
        assert_eq!(c.started(t), 0);
    }
    assert_eq!(s[&eu]["reason"], "no worker offers gpu=true, zone=eu");
    assert_eq!(s[&big]["reason"], "no worker offers cores=64");
    let shown = show(&c, &eu);
    assert_eq!(shown["placement"], serde_json::json!({ "gpu": true, "zone": "eu" }));
    assert_eq!(shown["status"], "queued");
    // A worker with a GPU takes them, and only it.
    c.start_worker_args(2, &["--label", "gpu=true", "--label", "cores=64"]);
    let mut all: Vec<&str> = trains.iter().map(String::as_str).collect();
    all.push(&big);
    c.wait_all_of(&all, "complete", Duration::from_secs(30));
    let gpu = worker_ids(&c, c.pid(2));
    let on = ran_on(&c);
    for t in all {
        assert!(on[t].iter().all(|w| gpu.contains(w)), "{t} ran on {:?}, not only on the GPU worker {gpu:?}", on[t]);
    }
    for p in &plains {
        assert!(on[p].iter().all(|w| !gpu.contains(w)), "{p} ran before the GPU worker started");
    }
    // Still no worker in zone eu.
    assert_eq!(c.states()[&eu], "queued");
    assert_eq!(c.started(&eu), 0);
    assert_eq!(c.statuses()[&eu]["reason"], "no worker offers gpu=true, zone=eu");
    c.check(5);
}

/// An agent whose output is an agent CLI's (claude-code): it costs $0.0123 and completes.
fn costly(c: &Cluster) -> Vec<String> {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters/claude-success.jsonl");
    let l = c.ledger.display().to_string();
    let script = format!(
        "echo \"start $CORRAL_AGENT_ID $CORRAL_FENCE $CORRAL_ATTEMPT $(date +%s%N)\" >> '{l}'; cat '{}'; sleep 0.2; \
         echo \"end $CORRAL_AGENT_ID $CORRAL_FENCE $CORRAL_ATTEMPT $(date +%s%N)\" >> '{l}'",
        fixture.display()
    );
    vec!["sh".into(), "-c".into(), script]
}

#[test]
fn a_spent_workspace_budget_stops_every_worker_from_claiming() {
    let config = format!("{CONFIG}\n[budget]\nmax_cost_usd = 0.02\n");
    let mut c = Cluster::new(&config);
    c.start_worker(0);
    // One agent at $0.0123 a run, run twice on two workers: $0.0246, over the $0.02.
    let a = c.spawn_cli(&["--role", "W", "--task", "a", "--id", "c0", "--adapter", "claude-code"], &costly(&c));
    c.wait_all_of(&[&a], "complete", Duration::from_secs(30));
    c.kill9(0);
    c.start_worker(1);
    let out = c.cmd(&["retry", &a]).output().unwrap();
    assert!(out.status.success(), "retry: {}", String::from_utf8_lossy(&out.stderr));
    let again = common::wait_until(Duration::from_secs(30), || {
        c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE agent_id = 'c0' AND outcome = 'complete'") == "2"
    });
    assert!(again, "c0 did not run again: {:?}\n{}", c.states(), c.logs());
    let on = ran_on(&c);
    assert_ne!(on[&a][0], on[&a][1], "both runs on one worker");
    let s = c.statuses();
    assert_eq!(s[&a]["costUsd"].as_f64().map(|x| (x * 10_000.0).round()), Some(246.0), "{}", s[&a]);
    // Three workers whose own supervisors each spent less than the budget (two fresh, one
    // that ran c0 once, $0.0123): none of them claims anything more.
    c.start_worker(0);
    c.start_worker(2);
    let rest: Vec<String> = (1..4)
        .map(|i| c.spawn_cli(&["--role", "W", "--task", "r", "--id", &format!("c{i}")], &c.script(100, 0, 0)))
        .collect();
    let live = common::wait_until(Duration::from_secs(15), || {
        c.pg.sql("corral", "SELECT count(*) FROM workers WHERE state = 'active' AND lease_until > now()") == "3"
    });
    assert!(live, "three workers: {}", c.logs());
    std::thread::sleep(Duration::from_secs(2));
    let s = c.statuses();
    let why = "the workspace's budget is spent: $0.0246 of [budget] max_cost_usd $0.0200";
    for r in &rest {
        assert_eq!(s[r]["status"], "queued", "{r}: {}", s[r]);
        assert_eq!(s[r]["reason"], why, "{r}");
        assert_eq!(c.started(r), 0, "{r} started over the budget");
    }
    let claims = c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE workspace = 't'");
    assert_eq!(claims, "2", "claims after the budget was spent");
    // A workspace given more money (the last worker to start sets it) goes on; the workers
    // that ran the costly agent stop, as their own supervisors count it too.
    std::fs::write(c.ws.path().join("corral.toml"), format!("{CONFIG}\n[budget]\nmax_cost_usd = 1.0\n")).unwrap();
    for n in 0..3 {
        c.kill9(n);
    }
    c.start_worker(2);
    c.wait_all_of(&rest.iter().map(String::as_str).collect::<Vec<_>>(), "complete", Duration::from_secs(30));
    c.check(5);
}

/// A codex-shaped agent CLI: its first run on a worker hits a usage limit that resets in
/// ten minutes; after that it succeeds.
fn codex(c: &Cluster, name: &str, limited: bool) -> Vec<String> {
    let dir = c.ws.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let out = if limited {
        concat!(
            r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a60"}"#,
            "\n",
            r#"{"type":"turn.started"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"You've hit your usage limit. Try again in 10 minutes."}}"#,
            "\n"
        )
        .to_string()
    } else {
        let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters/codex-success.jsonl");
        std::fs::read_to_string(f).unwrap()
    };
    let text = dir.join(format!("{name}.out"));
    std::fs::write(&text, out).unwrap();
    let l = c.ledger.display().to_string();
    let script = format!(
        "echo \"start $CORRAL_AGENT_ID $CORRAL_FENCE $CORRAL_ATTEMPT $(date +%s%N)\" >> '{l}'; cat '{}'; \
         echo \"end $CORRAL_AGENT_ID $CORRAL_FENCE $CORRAL_ATTEMPT $(date +%s%N)\" >> '{l}'; exit {}",
        text.display(),
        if limited { 1 } else { 0 }
    );
    vec!["sh".into(), "-c".into(), script]
}

#[test]
fn a_providers_rate_limit_on_one_worker_holds_its_agents_on_every_worker() {
    let mut c = Cluster::new(CONFIG);
    c.start_worker(0);
    let limited =
        c.spawn_cli(&["--role", "W", "--task", "x", "--id", "x0", "--adapter", "codex"], &codex(&c, "x0", true));
    c.wait_all_of(&[&limited], "waiting", Duration::from_secs(30));
    // The hold is the workspace's, on the database's clock: about ten minutes from now.
    let left = c.pg.sql(
        "corral",
        "SELECT round(extract(epoch from ((provider_holds->'openai'->>'until')::timestamptz - now())) / 60)
         FROM workspaces WHERE id = 't'",
    );
    assert!(left == "10" || left == "9", "the hold ends in {left:?} minutes\n{}", c.logs());
    // Fresh workers, whose own supervisors saw no limit, hold the provider's agents too; an
    // agent of another provider or of none runs.
    c.start_worker(1);
    c.start_worker(2);
    let held =
        c.spawn_cli(&["--role", "W", "--task", "y", "--id", "x1", "--adapter", "codex"], &codex(&c, "x1", false));
    let plain = c.spawn_cli(&["--role", "W", "--task", "p", "--id", "p0"], &c.script(100, 0, 0));
    let costly = c.spawn_cli(&["--role", "W", "--task", "c", "--id", "c0", "--adapter", "claude-code"], &costly(&c));
    c.wait_all_of(&[&plain, &costly], "complete", Duration::from_secs(30));
    let live = common::wait_until(Duration::from_secs(15), || {
        c.pg.sql("corral", "SELECT count(*) FROM workers WHERE state = 'active' AND lease_until > now()") == "3"
    });
    assert!(live, "three workers: {}", c.logs());
    std::thread::sleep(Duration::from_secs(1));
    let s = c.statuses();
    assert_eq!(s[&held]["status"], "queued", "{}", s[&held]);
    let why = s[&held]["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("provider openai is rate-limited for ") && why.ends_with(" more (another agent hit its limit)"),
        "{why}"
    );
    assert_eq!(c.started(&held), 0);
    // health from any machine names the hold, until when, on the database's clock.
    let h = c.json(&["health", "--json"]);
    let p = h["providers"].as_array().cloned().unwrap_or_default();
    assert_eq!(p.len(), 1, "{h}");
    assert_eq!(p[0]["name"], "openai", "{h}");
    let until: jiff::Timestamp = p[0]["heldUntil"].as_str().unwrap().parse().unwrap();
    assert!(until > jiff::Timestamp::now(), "{h}");
    assert_eq!(c.pg.sql("corral", "SELECT count(*) FROM attempts WHERE agent_id = 'x1'"), "0");
    // Once the hold is over (here: ended by hand), another worker takes it (the first one's
    // own supervisor still holds the provider, so it stops).
    c.pg.sql("corral", "UPDATE workspaces SET provider_holds = '{}' WHERE id = 't'");
    c.kill9(0);
    c.wait_all_of(&[&held], "complete", Duration::from_secs(30));
    c.check(5);
}

/// Claims straight through the queue's API, two workers on one database: each group gets no
/// more than its room counted on every worker, a held provider's agents and an unplaceable
/// one wait, a spent budget stops all claims, and each waiting agent says why.
#[test]
fn claims_hold_groups_placement_providers_and_the_budget_over_every_worker() {
    use common::cluster::block_on;
    use corral::cluster::{Database, PasswordSources, queue, read, schema};
    use serde_json::json;
    let pg = common::pg::Pg::start();
    let ws = "q";
    block_on(async {
        let db = Database::parse(
            &pg.url("corral"),
            &PasswordSources { password: Some(common::pg::PASSWORD.into()), passfile: None },
        )
        .unwrap();
        let mut c = db.connect().await.unwrap();
        schema::migrate(&mut c).await.unwrap();
        let limits = queue::WorkspaceLimits {
            max_concurrent: Some(20),
            groups: [("g".to_string(), 2)].into(),
            max_cost_usd: None,
        };
        queue::configure_limits(&c, ws, &limits).await.unwrap();
        let agent = |id: &str, group: Option<&str>, provider: Option<&str>, placement: Value| queue::NewAgent {
            id: id.into(),
            role: "worker".into(),
            placement,
            group: group.map(str::to_string),
            provider: provider.map(str::to_string),
            body: json!({ "request": { "role": "worker", "task": id } }),
            delay: Duration::ZERO,
        };
        let mut all: Vec<queue::NewAgent> =
            (0..5).map(|i| agent(&format!("g-{i}"), Some("g"), None, json!({}))).collect();
        all.push(agent("n-0", None, None, json!({})));
        all.push(agent("n-1", None, None, json!({})));
        all.push(agent("a-0", None, Some("anthropic"), json!({})));
        all.push(agent("p-0", None, None, json!({ "gpu": true })));
        all.push(agent("p-1", None, None, json!({ "zone": "eu" })));
        all.push(agent("h-0", Some("h"), None, json!({})));
        queue::enqueue(&mut c, ws, &all).await.unwrap();
        let spec = |labels: Value| queue::WorkerSpec {
            workspace: ws.into(),
            id: queue::new_worker_id(),
            host: "localhost".into(),
            pid: std::process::id() as i32,
            labels,
            slots: 10,
            ttl: Duration::from_secs(60),
        };
        let w1 = queue::register(&c, &spec(json!({}))).await.unwrap();
        let w2 = queue::register(&c, &spec(json!({ "gpu": true }))).await.unwrap();
        let ids = |cs: &[queue::Claim]| cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        // Group g has room for 2: the third of it is passed over for the agents after it.
        let first = queue::claim(&mut c, &w1, 3).await.unwrap();
        assert_eq!(ids(&first), ["g-0", "g-1", "n-0"]);
        // Another worker: none of g (2 of it owned on w1), nor anthropic's while it is held.
        queue::hold_provider(&c, ws, "anthropic", 60.0, "a-9 hit its usage limit").await.unwrap();
        // A shorter hold does not shorten it.
        queue::hold_provider(&c, ws, "anthropic", 1.0, "later, shorter").await.unwrap();
        assert_eq!(ids(&queue::claim(&mut c, &w2, 10).await.unwrap()), ["n-1", "p-0", "h-0"]);
        assert!(queue::claim(&mut c, &w1, 10).await.unwrap().is_empty());
        let why = read::queued_reasons(&c, ws, None).await.unwrap();
        assert_eq!(why["g-2"], "group g at capacity (2 running, max 2)");
        assert_eq!(why["g-4"], "group g at capacity (2 running, max 2)");
        assert_eq!(why["p-1"], "no worker offers zone=eu");
        let held = &why["a-0"];
        assert!(held.starts_with("provider anthropic is rate-limited for ") && held.contains("more"), "{held}");
        // g-0 finishes on w1: its slot in the group is free for any worker.
        let done = queue::Change {
            state: Some("complete".into()),
            end_attempt: Some(queue::AttemptEnd { outcome: "complete".into(), exit_code: Some(0), detail: json!({}) }),
            release: true,
            ..queue::Change::default()
        };
        queue::write(&mut c, &w1, "g-0", first[0].fence, &done).await.unwrap();
        assert_eq!(ids(&queue::claim(&mut c, &w2, 10).await.unwrap()), ["g-2"]);
        // The hold ends: its agent is claimed.
        pg.sql("corral", "UPDATE workspaces SET provider_holds = '{}' WHERE id = 'q'");
        assert_eq!(ids(&queue::claim(&mut c, &w1, 10).await.unwrap()), ["a-0"]);
        // The budget: an agent's recorded cost (here and on earlier workers) reaches it.
        queue::configure_limits(&c, ws, &queue::WorkspaceLimits { max_cost_usd: Some(1.0), ..limits.clone() })
            .await
            .unwrap();
        pg.sql(
            "corral",
            "UPDATE agents SET body = body || '{\"view\": {\"costUsd\": 0.5}, \"costBefore\": 0.5}' WHERE id = 'g-0'",
        );
        queue::write(&mut c, &w1, "g-1", first[1].fence, &done).await.unwrap();
        assert!(queue::claim(&mut c, &w2, 10).await.unwrap().is_empty(), "claimed over the budget");
        let why = read::queued_reasons(&c, ws, None).await.unwrap();
        let spent = "the workspace's budget is spent: $1.0000 of [budget] max_cost_usd $1.0000";
        assert_eq!(why["g-3"], spent);
        assert_eq!(why["p-1"], spent);
        // More money: g-3 takes the freed slot of g-1.
        queue::configure_limits(&c, ws, &limits).await.unwrap();
        assert_eq!(ids(&queue::claim(&mut c, &w2, 10).await.unwrap()), ["g-3"]);
        // The cluster's breaker, opened by a failure on any worker, is a reason too.
        queue::enqueue(&mut c, ws, &[agent("b-0", None, None, json!({}))]).await.unwrap();
        let health = corral::policy::health::HealthPolicy { breaker_failures: 1, ..Default::default() };
        let failed = [("worker".to_string(), "n-0".to_string(), false)];
        queue::record_outcomes(&mut c, ws, &health, &failed).await.unwrap();
        let why = read::queued_reasons(&c, ws, Some(&health)).await.unwrap();
        let open = &why["b-0"];
        assert!(open.starts_with("worker: circuit breaker open after 1 recent failure; probe in "), "{open}");
        assert!(!read::queued_reasons(&c, ws, None).await.unwrap().contains_key("b-0"));
    });
}
