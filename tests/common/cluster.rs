//! The cluster harness: a real PostgreSQL on 127.0.0.1 and three real `corral worker`
//! processes, each with its own data dir standing in for a machine. The agents append start
//! and end records to a ledger the test owns, which is the ground truth: after every
//! scenario no two copies of one agent ran at once, never more than `max_concurrent` ran in
//! the whole cluster, fences only grew, and the event numbers are dense.

use super::pg::{PASSWORD, Pg};
use corral::cluster::{Database, PasswordSources, queue, worker};
use corral::ipc::SpawnRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Short lease timings: lease 2 s, renewed every 200 ms, agents stopped 700 ms before the
/// lease ends when it could not be renewed, taken over 500 ms after it ended.
pub const CONFIG: &str = r#"
[defaults]
backoff = { initial = "200ms", coefficient = 2.0 }
max_retries = 3
[health]
max_concurrent = 5
breaker_failures = 0
[cluster]
workspace = "t"
lease = "2s"
heartbeat = "200ms"
lease_margin = "700ms"
takeover_grace = "500ms"
[[classify]]
exit_codes = [1]
action = "retry"
"#;

pub const AGENT: &str = r#"
ledger=$1; secs=$2; first=$3; later=$4
rec() { echo "$1 $CORRAL_AGENT_ID $CORRAL_FENCE $CORRAL_ATTEMPT $(date +%s%N)" >> "$ledger"; }
rec start
trap 'rec end; exit 143' TERM
sleep "$secs" & wait $!
rec end
if [ "$CORRAL_ATTEMPT" -gt 1 ]; then exit "$later"; fi
exit "$first"
"#;

pub struct Cluster {
    pub pg: Pg,
    pub ws: tempfile::TempDir,
    pub ledger: PathBuf,
    pub workers: Vec<Option<Child>>,
    /// One cluster at a time per test binary: three workers and a server each, with leases of
    /// two seconds, would otherwise starve each other on a small machine. Dropped last.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    pub fn new(config: &str) -> Self {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let pg = Pg::start();
        let ws = tempfile::Builder::new().prefix("corral-cl").tempdir().unwrap();
        std::fs::write(ws.path().join("corral.toml"), config).unwrap();
        let ledger = ws.path().join("ledger");
        std::fs::write(&ledger, "").unwrap();
        Self { pg, ws, ledger, workers: vec![], _turn: turn }
    }

    pub fn url(&self) -> String {
        self.pg.url("corral")
    }

    pub fn worker_dir(&self, n: usize) -> PathBuf {
        self.ws.path().join(format!("w{n}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(super::bin());
        c.args(args).current_dir(self.ws.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("CORRAL_") {
                c.env_remove(k);
            }
        }
        c.env("PGPASSWORD", PASSWORD).env("CORRAL_DATABASE_URL", self.url());
        c
    }

    /// `corral ARGS` from the workspace with only the database's URL, no input.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// As [`Cluster::run`], which must succeed: its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "corral {args:?}: {}\n{}", text(&o), self.logs());
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// As [`Cluster::ok`], its stdout read as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("corral {args:?}: {e}: {out}"))
    }

    /// Starts worker `n` (again); its output goes to `w<n>.log`.
    pub fn start_worker(&mut self, n: usize) {
        self.start_worker_args(n, &[]);
    }

    /// Starts worker `n` (again) with the database at `url` (e.g. through a proxy).
    pub fn start_worker_with(&mut self, n: usize, url: &str) {
        self.start_worker_full(n, url, &[]);
    }

    /// As [`Cluster::start_worker`], with more arguments for `corral worker`.
    pub fn start_worker_args(&mut self, n: usize, extra: &[&str]) {
        let url = self.url();
        self.start_worker_full(n, &url, extra);
    }

    fn start_worker_full(&mut self, n: usize, url: &str, extra: &[&str]) {
        let url = url.to_string();
        self.start_worker_as(n, extra, move |c| {
            c.env("CORRAL_DATABASE_URL", url);
        });
    }

    /// Starts worker `n` (again) with `extra` arguments, its command changed by `adjust`
    /// (its environment, say) before it starts.
    pub fn start_worker_as(&mut self, n: usize, extra: &[&str], adjust: impl FnOnce(&mut Command)) {
        let dir = self.worker_dir(n);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ws.path().join(format!("w{n}.log")))
            .unwrap();
        let mut cmd = self.cmd(&[&["worker", "--data-dir", dir.to_str().unwrap()][..], extra].concat());
        adjust(&mut cmd);
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        while self.workers.len() <= n {
            self.workers.push(None);
        }
        self.workers[n] = Some(child);
    }

    pub fn pid(&self, n: usize) -> i32 {
        self.workers[n].as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, n: usize, sig: i32) {
        unsafe { libc::kill(self.pid(n), sig) };
    }

    pub fn kill9(&mut self, n: usize) {
        if let Some(mut c) = self.workers[n].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in 0..self.workers.len() {
            let log = std::fs::read_to_string(self.ws.path().join(format!("w{n}.log"))).unwrap_or_default();
            out += &format!("--- w{n}.log\n{log}\n");
        }
        out
    }

    /// A shell agent that writes `start` and `end` ledger lines (its id, fence, attempt and a
    /// nanosecond clock), sleeps `ms`, and exits `first` on its first attempt on a worker and
    /// `later` after that (143 when stopped).
    pub fn script(&self, ms: u64, first: i32, later: i32) -> Vec<String> {
        let file = self.ws.path().join("agent.sh");
        if !file.exists() {
            std::fs::write(&file, AGENT).unwrap();
        }
        let secs = format!("{:.3}", ms as f64 / 1000.0);
        let l = self.ledger.display().to_string();
        ["sh", file.to_str().unwrap(), &l, &secs, &first.to_string(), &later.to_string()].map(String::from).to_vec()
    }

    /// `corral spawn ARGS -- COMMAND` by SQL (from a machine with no worker); the agent's id.
    pub fn spawn_cli(&self, args: &[&str], command: &[String]) -> String {
        let mut all: Vec<&str> = vec!["spawn"];
        all.extend_from_slice(args);
        all.push("--");
        all.extend(command.iter().map(String::as_str));
        self.ok(&all)
    }

    /// `corral status --json` by SQL, by agent id.
    pub fn statuses(&self) -> BTreeMap<String, serde_json::Value> {
        let all = self.json(&["status", "--json"]);
        all.as_array().unwrap().iter().map(|v| (v["agentId"].as_str().unwrap().to_string(), v.clone())).collect()
    }

    /// How many times the ledger saw `id` start.
    pub fn started(&self, id: &str) -> usize {
        self.ledger().iter().filter(|r| r.start && r.id == id).count()
    }

    pub fn db(&self) -> Database {
        Database::parse(&self.url(), &PasswordSources { password: Some(PASSWORD.into()), passfile: None }).unwrap()
    }

    /// Queues agents straight into the database, as a spawn from a machine with no worker.
    pub fn spawn_all(&self, agents: &[(String, Vec<String>)]) {
        let all: Vec<(String, Vec<String>, &str, Vec<String>)> =
            agents.iter().map(|(id, cmd)| (id.clone(), cmd.clone(), "worker", vec![])).collect();
        self.spawn_full(&all);
    }

    /// Queues agents `(id, command, role, after)` straight into the database.
    pub fn spawn_full(&self, agents: &[(String, Vec<String>, &str, Vec<String>)]) {
        block_on(async {
            let mut c = self.db().connect().await.unwrap();
            corral::cluster::schema::migrate(&mut c).await.unwrap();
            for (id, command, role, after) in agents {
                let req = SpawnRequest {
                    role: role.to_string(),
                    task: format!("task of {id}"),
                    id: Some(id.clone()),
                    command: command.clone(),
                    after: after.clone(),
                    ..SpawnRequest::default()
                };
                let s = queue::Spawn {
                    id: Some(id.clone()),
                    role: role.to_string(),
                    key: None,
                    request: serde_json::json!({ "id": id }),
                    placement: serde_json::json!({}),
                    group: None,
                    provider: None,
                    body: worker::body(&req, None, None),
                    delay: Duration::ZERO,
                };
                queue::spawn(&mut c, "t", &s).await.unwrap();
            }
        });
    }

    pub fn states(&self) -> BTreeMap<String, String> {
        let out = self.pg.sql("corral", "SELECT id || '=' || state FROM agents WHERE workspace = 't' ORDER BY seq");
        out.lines().filter_map(|l| l.split_once('=')).map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    /// Waits until each of `ids` is in state `want`.
    pub fn wait_all_of(&self, ids: &[&str], want: &str, limit: Duration) {
        let ok = super::wait_until(limit, || {
            let s = self.states();
            ids.iter().all(|id| s.get(*id).map(String::as_str) == Some(want))
        });
        assert!(ok, "not all of {ids:?} {want} within {limit:?}: {:?}\n{}", self.states(), self.logs());
    }

    pub fn wait_all(&self, want: &str, n: usize, limit: Duration) {
        let ok = super::wait_until(limit, || {
            let s = self.states();
            s.len() == n && s.values().all(|v| v == want)
        });
        assert!(ok, "not all {n} agents {want} within {limit:?}: {:?}\n{}", self.states(), self.logs());
    }

    pub fn ledger(&self) -> Vec<Rec> {
        std::fs::read_to_string(&self.ledger)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5).then(|| Rec {
                    start: f[0] == "start",
                    id: f[1].into(),
                    fence: f[2].parse().unwrap_or(-1),
                    at: f[4].parse().unwrap(),
                })
            })
            .collect()
    }

    /// The invariants every scenario ends with; returns the number of runs in the ledger.
    pub fn check(&self, max_concurrent: usize) -> usize {
        let recs = self.ledger();
        // Per agent: its runs in order, each ended before the next started, fences growing.
        let mut open: BTreeMap<String, (i64, u128)> = BTreeMap::new();
        let mut last_fence: BTreeMap<String, i64> = BTreeMap::new();
        let mut running = 0usize;
        let mut most = 0usize;
        let mut runs = 0;
        let mut sorted = recs.clone();
        sorted.sort_by_key(|r| (r.at, r.start));
        for r in &sorted {
            if r.start {
                assert!(
                    !open.contains_key(&r.id),
                    "{} started again (fence {}) while a copy was running: {:?}\n{}",
                    r.id,
                    r.fence,
                    open.get(&r.id),
                    self.logs()
                );
                if let Some(f) = last_fence.get(&r.id) {
                    assert!(r.fence >= *f, "{}: fence went back from {f} to {}", r.id, r.fence);
                }
                last_fence.insert(r.id.clone(), r.fence);
                open.insert(r.id.clone(), (r.fence, r.at));
                running += 1;
                most = most.max(running);
                runs += 1;
            } else if open.remove(&r.id).is_some() {
                running -= 1;
            }
        }
        assert!(most <= max_concurrent, "{most} agents ran at once, over max_concurrent = {max_concurrent}");
        // Events numbered densely from 1.
        let ev =
            self.pg.sql("corral", "SELECT count(*) || ' ' || coalesce(max(seq), 0) FROM events WHERE workspace = 't'");
        let (n, max) = ev.split_once(' ').unwrap();
        assert_eq!(n, max, "event numbers are not dense: {n} events, the last numbered {max}");
        runs
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 0..self.workers.len() {
            if self.workers[n].is_some() {
                self.signal(n, libc::SIGCONT);
                self.kill9(n);
            }
        }
        // The workers' local supervisors and anything they left.
        for n in 0..self.workers.len() {
            let epochs = self.worker_dir(n).join("epochs");
            for e in std::fs::read_dir(&epochs).into_iter().flatten().flatten() {
                let _ = self.cmd(&["daemon", "stop", "--data-dir", e.path().to_str().unwrap()]).output();
                kill_lock_holder(&e.path().join("daemon.lock"));
            }
        }
    }
}

/// A command's exit code and output, for an assertion's message.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `cond` every 100 ms (each poll may run psql) until it holds or `limit` passes.
pub fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

pub fn kill_lock_holder(lock: &Path) {
    if let Ok(pid) = std::fs::read_to_string(lock)
        && let Ok(pid) = pid.trim().parse::<i32>()
        && pid > 1
    {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The most agents among those `which` picks that ran at once, by the ledger.
pub fn most_at_once(recs: &[Rec], which: impl Fn(&str) -> bool) -> usize {
    let mut sorted: Vec<&Rec> = recs.iter().filter(|r| which(&r.id)).collect();
    // An end before a start at the same instant: a slot given back is taken again.
    sorted.sort_by_key(|r| (r.at, r.start));
    let mut open = std::collections::BTreeSet::new();
    let mut most = 0;
    for r in sorted {
        if r.start {
            open.insert(r.id.as_str());
            most = most.max(open.len());
        } else {
            open.remove(r.id.as_str());
        }
    }
    most
}

#[derive(Debug, Clone)]
pub struct Rec {
    pub start: bool,
    pub id: String,
    pub fence: i64,
    pub at: u128,
}

pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}
