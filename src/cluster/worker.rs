//! `corral worker`: one machine's part of a cluster. The worker holds a lease in the
//! database, claims queued agents cluster-wide and runs each with this machine's own
//! supervisor (the same shims, policy core and file protocol as on one machine), then writes
//! what the supervisor saw back to the database, every write fenced.
//!
//! The local supervisor serves one *epoch* of this worker: a data dir of its own under the
//! worker's (`epochs/<worker id>-<n>`). A worker restarted within its lease keeps its id and
//! its epoch and re-attaches to the running agents as the single-machine supervisor does.
//! When the lease is lost (or the worker had to stop its agents because it could not renew
//! in time), the epoch ends: its agents are stopped, its supervisor is stopped, and the next
//! epoch starts with nothing in it, so an agent claimed again later starts afresh here.
//!
//! After each renewal the worker writes its local deadline (`watchdog`): the renewal's
//! send time plus the lease the database granted, minus `lease_margin`. Every shim of the
//! epoch stops its agent at that deadline by itself, which is what keeps an agent from ever
//! running on two machines at once when this worker is stopped, hung or cut off.

use super::Database;
use super::queue::{self, AttemptEnd, Change, ClusterError, Lease, NewEvent, SweepRules, WorkerSpec};
use crate::client::Client;
use crate::config::LeaseTimings;
use crate::ipc::{AgentView, Request, SpawnRequest};
use crate::protocol::{DataDir, atomic, fsio, time};
use crate::store::EventRecord;
use crate::supervisor::watchdog;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `corral worker` was told.
#[derive(Debug, Clone)]
pub struct Options {
    pub db: Database,
    pub workspace: String,
    pub timings: LeaseTimings,
    pub labels: Value,
    pub slots: usize,
    /// The workspace's cluster-wide limit, set in the database at start as the configured
    /// one (a `corral parallel` change is kept apart from it and holds over it).
    pub max_concurrent: Option<usize>,
    /// `[groups.NAME] max_concurrent`, cluster-wide, set in the database at start (as
    /// `max_concurrent` is).
    pub groups: BTreeMap<String, usize>,
    /// `[budget] max_cost_usd`, cluster-wide, set in the database at start.
    pub max_cost_usd: Option<f64>,
    /// The breaker's settings, applied across the cluster.
    pub health: crate::policy::health::HealthPolicy,
    /// The workspace root on this machine (its `corral.toml`, the agents' working dirs).
    pub root: PathBuf,
    /// The worker's own data dir (its id, its epochs).
    pub data: DataDir,
}

/// An agent's record in the database (`agents.body`): what the spawn asked for and, once a
/// worker runs it, that worker's view of it.
pub fn body(request: &SpawnRequest, view: Option<&AgentView>, worker: Option<(&str, &str)>) -> Value {
    let mut b = json!({ "request": request });
    if let Some(v) = view {
        b["view"] = serde_json::to_value(v).unwrap_or(Value::Null);
    }
    if let Some((id, host)) = worker {
        b["worker"] = json!({ "id": id, "host": host });
    }
    b
}

/// The spawn request in an agent's record.
pub fn request_of(body: &Value) -> Result<SpawnRequest, String> {
    let r = body.get("request").ok_or("the record has no spawn request")?;
    serde_json::from_value(r.clone()).map_err(|e| format!("the record's spawn request is unreadable: {e}"))
}

/// The seed's exports for the whole workspace, from the database's records: the text of
/// `spawn-registry.json` (one entry per agent, in spawn order, as the single-machine
/// supervisor writes it) and of `escalations.txt` (one line per agent waiting on a human).
pub fn exports(rows: &[super::read::AgentRow]) -> (String, String) {
    let mut registry = String::from("[");
    let mut escalations = String::new();
    for (i, r) in rows.iter().enumerate() {
        let req = request_of(&r.body).unwrap_or_default();
        let view = r.body.get("view").and_then(|v| serde_json::from_value::<AgentView>(v.clone()).ok());
        let v = view.as_ref();
        let rec = crate::protocol::registry::SpawnRecord {
            agent_id: r.id.clone(),
            spawned_at: v
                .map(|v| v.spawned_at.clone())
                .or_else(|| r.body["spawnedAt"].as_str().map(String::from))
                .unwrap_or_default(),
            role: r.role.clone(),
            task: req.task.clone(),
            scope: req.scope.clone(),
            expected_handoff: format!("handoffs/handoff-*-{}-to-ORCHESTRATOR.json", r.id),
            status: r.state.clone(),
            timeout_at: None,
            attempt: v.map(|v| v.attempt).unwrap_or(r.attempt.max(0) as u32),
            max_retries: v.map(|v| v.max_retries).or(req.max_retries).unwrap_or(0),
            pid: v.and_then(|v| v.pid).filter(|_| r.owner.is_some()),
            exit_code: v.and_then(|v| v.exit_code),
            signal: v.and_then(|v| v.signal),
            ended_at: v.and_then(|v| v.ended_at.clone()),
            after: req.after.clone(),
            session_id: v.and_then(|v| v.session_id.clone()),
            cost_usd: match (v.and_then(|v| v.cost_usd), r.body["costBefore"].as_f64()) {
                (Some(c), Some(b)) => Some(c + b),
                (c, b) => c.or(b),
            },
            tokens: v.and_then(|v| v.tokens),
        };
        registry.push_str(if i == 0 { "\n" } else { ",\n" });
        registry.push_str(&serde_json::to_string(&rec).unwrap_or_else(|_| "null".into()));
        let waits = r.state == "escalated" || (r.state == "blocked" && r.owner.is_none());
        if waits {
            let why = v.and_then(|v| v.reason.clone()).unwrap_or_else(|| r.state.clone());
            escalations.push_str(&format!("{}: {}\n", r.id, crate::display::escape(&why)));
        }
    }
    registry.push_str("\n]\n");
    (registry, escalations)
}

/// This worker's identity, kept in its data dir across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Identity {
    id: String,
    epoch: u32,
}

const IDENTITY_FILE: &str = "worker.json";

impl Identity {
    fn load(data: &DataDir) -> Option<Self> {
        let bytes = fsio::read(data.root(), &data.root().join(IDENTITY_FILE), 4096).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
    fn save(&self, data: &DataDir) -> anyhow::Result<()> {
        atomic::write_json_atomic(data.root(), &data.root().join(IDENTITY_FILE), self)?;
        Ok(())
    }
    fn epoch_dir(&self, data: &DataDir) -> DataDir {
        DataDir::new(data.root().join("epochs").join(format!("{}-{}", self.id, self.epoch)))
    }
}

/// One agent this worker runs.
#[derive(Debug, Clone)]
struct Owned {
    fence: i64,
    request: SpawnRequest,
    /// What was last written about it (the view without its ever-changing ages).
    written: Option<Value>,
    /// What its attempts in other local stores (other workers, earlier epochs) cost, in USD:
    /// this store's view counts only its own.
    cost_before: f64,
}

/// What an agent's attempts cost before the local store `source` ran it, from its record
/// and the store that last wrote it (`agents.mirrored`): the record's `costBefore`, plus the
/// cost its view shows when that view came from another store.
pub fn cost_before(body: &Value, mirrored: &Value, source: &str) -> f64 {
    let before = body["costBefore"].as_f64().unwrap_or(0.0);
    let theirs = mirrored["source"].as_str() != Some(source);
    if theirs { before + body["view"]["costUsd"].as_f64().unwrap_or(0.0) } else { before }
}

/// Why an epoch ended.
enum EpochEnd {
    /// The lease is gone: a new id.
    LeaseLost,
    /// The agents were stopped at the local deadline but the lease held: same id, new epoch.
    Fenced,
    /// SIGTERM / SIGINT: the agents keep running for the next start within the lease.
    Stop,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// A database call with a bound: a connection that stopped answering (a partition keeps
/// sockets open) must not hold the worker past its deadline.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(ClusterError::Bad(format!("the database did not answer within {limit:?}"))),
    }
}

/// Runs the worker until SIGTERM or SIGINT.
pub fn run(o: Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(Worker::new(o).run())
}

struct Worker {
    o: Options,
    host: String,
    client: Option<tokio_postgres::Client>,
    rules: SweepRules,
    /// The provider holds this worker recorded in the workspace: the end each was sent with.
    held: BTreeMap<String, String>,
}

impl Worker {
    fn new(o: Options) -> Self {
        let mut rules = SweepRules::for_lease(o.timings.lease, o.timings.heartbeat);
        rules.grace = o.timings.grace;
        rules.settle = o.timings.lease + o.timings.grace;
        Self { host: host(), client: None, rules, held: BTreeMap::new(), o }
    }

    fn say(&self, msg: &str) {
        let _ = crate::note!("corral worker: {msg}");
    }

    /// A connection, made now if there is none (bounded by a heartbeat).
    async fn db(&mut self) -> Result<&mut tokio_postgres::Client, ClusterError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let limit = self.o.timings.heartbeat.max(Duration::from_millis(500));
            let c = match tokio::time::timeout(limit, self.o.db.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(ClusterError::Bad(e)),
                Err(_) => {
                    return Err(ClusterError::Bad(format!("cannot reach {} within {limit:?}", self.o.db.describe())));
                }
            };
            // A worker stopped (or hung) inside a transaction must not keep its agents' rows
            // locked: the server ends such a transaction, so a sweep can take them over.
            let idle = self.o.timings.grace.max(Duration::from_millis(250)).as_millis() as u64;
            let set = format!("SET idle_in_transaction_session_timeout = {idle}");
            bounded(limit, async { Ok(c.batch_execute(&set).await?) }).await?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("just made"))
    }

    /// After an error that is not about fences or leases, the connection is suspect: the next
    /// call makes a new one.
    fn failed(&mut self, e: &ClusterError) {
        if matches!(e, ClusterError::Db(_) | ClusterError::Bad(_)) {
            self.client = None;
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.o.data.root())?;
        // One worker per data dir: the id in it is this worker's alone.
        let lock_path = self.o.data.root().join("worker.lock");
        let (lock, _) = fsio::open_write_replacing(self.o.data.root(), &lock_path, fsio::Mode::Update)?;
        if !crate::sys::try_lock(&lock)? {
            anyhow::bail!(
                "a worker already runs with the data dir {}; give this one its own (--data-dir)",
                self.o.data.root().display()
            );
        }
        let mut stop = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        // The schema, and the workspace's cluster-wide limit.
        let mut waited = false;
        loop {
            let r = async {
                let db = self.db().await?;
                super::schema::migrate(db).await.map_err(ClusterError::Bad)?;
                let n = |m: usize| m.min(i32::MAX as usize) as i32;
                let limits = queue::WorkspaceLimits {
                    max_concurrent: self.o.max_concurrent.map(n),
                    groups: self.o.groups.iter().map(|(g, m)| (g.clone(), n(*m))).collect(),
                    max_cost_usd: self.o.max_cost_usd,
                };
                queue::configure_limits(self.client.as_ref().expect("connected"), &self.o.workspace, &limits).await
            }
            .await;
            match r {
                Ok(()) => break,
                Err(e) => {
                    self.failed(&e);
                    if !waited {
                        self.say(&format!("{e}; trying again every second"));
                        waited = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.recv() => return Ok(()),
                        _ = int.recv() => return Ok(()),
                    }
                }
            }
        }
        let mut me = Identity::load(&self.o.data).unwrap_or_else(|| Identity { id: queue::new_worker_id(), epoch: 1 });
        me.save(&self.o.data)?;
        loop {
            // The epoch's agents speak to the whole cluster: what they spawn is claimed
            // cluster-wide, what they wait on may run on another machine.
            let epoch = me.epoch_dir(&self.o.data);
            epoch
                .create_all()
                .map_err(|e| anyhow::anyhow!("cannot make the epoch dir {}: {e}", epoch.root().display()))?;
            let mut env = self.o.db.agent_env();
            env.push(("CORRAL_WORKSPACE".into(), self.o.workspace.clone()));
            watchdog::write_env(&epoch, &env).map_err(|e| {
                anyhow::anyhow!("cannot write {}: {e}", epoch.root().join(watchdog::ENV_FILE).display())
            })?;
            // The epoch's supervisor is started before the lease, so the time it takes to
            // start never eats into the first lease.
            let _ = Local { data: epoch, root: self.o.root.clone() }.call(&Request::Ping);
            let lease = match self.register(&mut me, &mut stop, &mut int).await? {
                Some(l) => l,
                None => return Ok(()),
            };
            let end = self.epoch(&me, lease, &mut stop, &mut int).await?;
            match end {
                EpochEnd::Stop => return Ok(()),
                EpochEnd::LeaseLost => {
                    self.end_epoch(&me);
                    me = Identity { id: queue::new_worker_id(), epoch: 1 };
                    me.save(&self.o.data)?;
                }
                EpochEnd::Fenced => {
                    self.end_epoch(&me);
                    me.epoch += 1;
                    me.save(&self.o.data)?;
                }
            }
        }
    }

    /// Registers (re-attaching under the same id while its lease is live, else under a new
    /// one); `None` when told to stop meanwhile.
    async fn register(
        &mut self,
        me: &mut Identity,
        stop: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<Option<(Lease, u64)>> {
        let mut said = false;
        loop {
            let spec = WorkerSpec {
                workspace: self.o.workspace.clone(),
                id: me.id.clone(),
                host: self.host.clone(),
                pid: std::process::id() as i32,
                labels: self.o.labels.clone(),
                slots: self.o.slots.min(i32::MAX as usize) as i32,
                ttl: self.o.timings.lease,
            };
            let sent = time::mono_ms();
            let limit = self.o.timings.heartbeat.max(Duration::from_millis(500));
            let r = match self.db().await {
                Ok(db) => bounded(limit, queue::register(db, &spec)).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(lease) => return Ok(Some((lease, sent))),
                Err(ClusterError::LeaseLost { .. }) => {
                    // The old id's lease ran out while nobody ran it: its epoch's agents
                    // were stopped by their shims and given to others; start clean.
                    self.end_epoch(me);
                    *me = Identity { id: queue::new_worker_id(), epoch: 1 };
                    me.save(&self.o.data)?;
                }
                Err(e @ ClusterError::Bad(_)) if e.to_string().contains("not a UUID") => {
                    anyhow::bail!(
                        "{e}: remove {} to start under a new id",
                        self.o.data.root().join(IDENTITY_FILE).display()
                    )
                }
                Err(e) => {
                    self.failed(&e);
                    if !said {
                        self.say(&format!("cannot register: {e}; trying again every second"));
                        said = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.recv() => return Ok(None),
                        _ = int.recv() => return Ok(None),
                    }
                }
            }
        }
    }

    /// The local deadline of a renewal sent at `sent` (monotonic ms) that got `lease`.
    fn deadline(&self, lease: &Lease, sent: u64) -> watchdog::Deadline {
        let run = lease.remaining().saturating_sub(self.o.timings.margin);
        let kill_after = (self.o.timings.margin / 2).as_millis().clamp(100, 5000) as u64;
        watchdog::Deadline {
            worker: lease.worker.clone(),
            term_at_mono: sent + run.as_millis() as u64,
            kill_after_ms: kill_after,
        }
    }

    /// Stops what is left of an epoch: its agents (with a short grace) and its supervisor.
    fn end_epoch(&self, me: &Identity) {
        let epoch = me.epoch_dir(&self.o.data);
        if Client::try_connect(&epoch).is_err() {
            return;
        }
        let local = Local { data: epoch, root: self.o.root.clone() };
        if let Ok(views) = local.status() {
            for v in views.iter().filter(|v| !v.is_finished()) {
                let _ = local.call(&Request::Kill { id: v.agent_id.clone(), grace_ms: 500 });
            }
        }
        let _ = local.call(&Request::Stop);
    }

    async fn epoch(
        &mut self,
        me: &Identity,
        (lease, sent): (Lease, u64),
        stop: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<EpochEnd> {
        let local = Local { data: me.epoch_dir(&self.o.data), root: self.o.root.clone() };
        std::fs::create_dir_all(local.data.root())?;
        let deadline = self.deadline(&lease, sent);
        watchdog::write(&local.data, &deadline)?;
        self.say(&format!(
            "{} on {} in workspace {:?}: up to {}, lease {:?} renewed every {:?}",
            lease.worker,
            self.host,
            self.o.workspace,
            crate::policy::plural(self.o.slots, "agent", "agents"),
            self.o.timings.lease,
            self.o.timings.heartbeat
        ));
        // Renewals on a thread of their own, with their own connection: a slow claim, a
        // slow local supervisor or a stalled write never delays one.
        let shared = Arc::new(Mutex::new(Shared {
            lease: lease.clone(),
            deadline,
            fenced: false,
            lost: false,
            renewed_after_fence: false,
            stop: false,
        }));
        let beat = Heartbeat {
            db: self.o.db.clone(),
            timings: self.o.timings,
            data: local.data.clone(),
            shared: shared.clone(),
        };
        let beating = std::thread::Builder::new().name("lease".into()).spawn(move || beat.run())?;
        let end = self.epoch_loop(&local, &shared, stop, int).await;
        shared.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        let _ = beating.join();
        end
    }

    async fn epoch_loop(
        &mut self,
        local: &Local,
        shared: &Arc<Mutex<Shared>>,
        stop: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<EpochEnd> {
        // A restart within the lease keeps the agents the database says are ours; they are
        // read again every heartbeat (`load_owned`), below.
        let mut owned: BTreeMap<String, Owned> = BTreeMap::new();
        let mut local_seq = local.last_seq().unwrap_or(0);
        let tick = Duration::from_millis(100);
        let mut next_sweep = 0u64;
        let mut next_claim = 0u64;
        let mut next_export = 0u64;
        let mut exported_head = -1i64;
        let mut next_load = 0u64;
        let mut fenced = false;
        // Woken by the workspace's notifications (a spawn, a command, an agent given back),
        // so a queued agent is claimed at once rather than at the next poll.
        let opts = super::listen::ListenOptions {
            application_name: "corral-worker".into(),
            ..super::listen::ListenOptions::default()
        };
        let mut listener = super::listen::Listener::start(&self.o.db, &self.o.workspace, opts);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = listener.changed() => next_claim = 0,
                _ = stop.recv() => return Ok(EpochEnd::Stop),
                _ = int.recv() => return Ok(EpochEnd::Stop),
            }
            let now = time::mono_ms();
            let (lease, lost, fence_now, renewed_after_fence, kill_after) = {
                let s = shared.lock().unwrap_or_else(|e| e.into_inner());
                (
                    s.lease.clone(),
                    s.lost,
                    s.fenced || now >= s.deadline.term_at_mono,
                    s.renewed_after_fence,
                    s.deadline.kill_after_ms,
                )
            };
            if lost {
                self.say("the lease was lost: stopping this worker's agents and registering again");
                return Ok(EpochEnd::LeaseLost);
            }
            // The local deadline passed without a renewal: stop everything here now (the
            // shims do too) and take nothing more until the lease is settled.
            if fence_now && !fenced {
                fenced = true;
                shared.lock().unwrap_or_else(|e| e.into_inner()).fenced = true;
                self.say("could not renew the lease in time: stopping this worker's agents");
                for id in owned.keys() {
                    let _ = local.call(&Request::Kill { id: id.clone(), grace_ms: kill_after });
                }
            }
            if fenced {
                if renewed_after_fence {
                    self.give_back(&lease, &owned, "its worker could not renew its lease in time").await;
                    return Ok(EpochEnd::Fenced);
                }
                continue;
            }
            if now >= next_export {
                next_export = now + 1000;
                if let Err(e) = self.export(&mut exported_head).await {
                    self.failed(&e);
                }
            }
            // What the local supervisor saw, into the database.
            if !owned.is_empty() {
                match self.sync(&lease, local, &mut owned, &mut local_seq).await {
                    Ok(()) => {}
                    Err(ClusterError::LeaseLost { .. }) => return Ok(EpochEnd::LeaseLost),
                    Err(e) => self.failed(&e),
                }
                match self.commands(&lease, local, &owned).await {
                    Ok(()) | Err(ClusterError::Stale { .. }) => {}
                    Err(ClusterError::LeaseLost { .. }) => return Ok(EpochEnd::LeaseLost),
                    Err(e) => self.failed(&e),
                }
            }
            if now >= next_sweep {
                next_sweep = now + self.o.timings.heartbeat.as_millis() as u64;
                let limit = self.o.timings.heartbeat;
                let rules = self.rules.clone();
                if let Ok(db) = self.db().await {
                    match bounded(limit, queue::sweep(db, &lease, &rules)).await {
                        Ok(s) => {
                            for (id, _) in &s.requeued {
                                self.say(&format!("{id}: its worker's lease ran out; back in the queue"));
                            }
                        }
                        Err(ClusterError::LeaseLost { .. }) => return Ok(EpochEnd::LeaseLost),
                        Err(e) => self.failed(&e),
                    }
                }
            }
            if now >= next_load {
                next_load = now + self.o.timings.heartbeat.as_millis() as u64;
                match self.load_owned(&lease, &local.source(), &mut owned).await {
                    Ok(()) => {}
                    Err(ClusterError::LeaseLost { .. }) => return Ok(EpochEnd::LeaseLost),
                    Err(e) => self.failed(&e),
                }
            }
            if owned.len() < self.o.slots && now >= next_claim {
                next_claim = now + 200;
                match self.claim(&lease, local, &mut owned).await {
                    Ok(()) => {}
                    Err(ClusterError::LeaseLost { .. }) => return Ok(EpochEnd::LeaseLost),
                    Err(e) => self.failed(&e),
                }
            }
        }
    }

    /// Rewrites `spawn-registry.json` and `escalations.txt` in the worker's data dir for the
    /// whole workspace when events were appended since the last time.
    async fn export(&mut self, exported: &mut i64) -> Result<(), ClusterError> {
        let ws = self.o.workspace.clone();
        let limit = self.o.timings.heartbeat.max(Duration::from_secs(1));
        let db = self.db().await?;
        let head: i64 = bounded(limit, async {
            Ok(db.query_one("SELECT event_seq FROM workspaces WHERE id = $1", &[&ws]).await?.get(0))
        })
        .await?;
        if head == *exported {
            return Ok(());
        }
        let db = self.db().await?;
        let rows = bounded(limit, super::read::agents(db, &ws, &super::read::AgentFilter::default())).await?;
        let (registry, escalations) = exports(&rows);
        let root = self.o.data.root();
        let written = atomic::write_beneath(root, &root.join("spawn-registry.json"), registry.as_bytes())
            .and_then(|_| atomic::write_beneath(root, &root.join("escalations.txt"), escalations.as_bytes()));
        match written {
            Ok(()) => *exported = head,
            Err(e) => self.say(&format!("cannot write the workspace's exports in {}: {e}", root.display())),
        }
        Ok(())
    }

    /// After the agents were stopped at the local deadline while the lease held: each goes
    /// back to the queue as a lost attempt, so another worker (or this one's next epoch)
    /// starts it again.
    async fn give_back(&mut self, lease: &Lease, owned: &BTreeMap<String, Owned>, why: &str) {
        for (id, a) in owned {
            let change = Change {
                state: Some("queued".into()),
                end_attempt: Some(AttemptEnd {
                    outcome: "lost".into(),
                    exit_code: None,
                    detail: json!({ "reason": why }),
                }),
                release: true,
                events: vec![NewEvent::new("lost", json!({ "reason": why }))],
                ..Change::default()
            };
            let limit = self.o.timings.heartbeat;
            if let Ok(db) = self.db().await {
                let _ = bounded(limit, queue::write(db, lease, id, a.fence, &change)).await;
            }
        }
    }

    async fn claim(
        &mut self,
        lease: &Lease,
        local: &Local,
        owned: &mut BTreeMap<String, Owned>,
    ) -> Result<(), ClusterError> {
        let want = (self.o.slots - owned.len()) as i64;
        let limit = self.o.timings.heartbeat;
        let rules = queue::Admission { health: (self.o.health.breaker_failures > 0).then(|| self.o.health.clone()) };
        let db = self.db().await?;
        let claims = bounded(limit, queue::claim_with(db, lease, want, &rules)).await?;
        for c in claims {
            let ws = self.o.workspace.clone();
            let db = self.db().await?;
            let row = bounded(limit, async {
                Ok(db
                    .query_one("SELECT body, mirrored FROM agents WHERE workspace = $1 AND id = $2", &[&ws, &c.id])
                    .await?)
            })
            .await?;
            let body: Value = row.get(0);
            match request_of(&body) {
                Ok(request) => {
                    self.start_here(
                        lease,
                        local,
                        owned,
                        &c.id,
                        c.fence,
                        request,
                        body["retryContext"].as_str().map(String::from),
                    )
                    .await?;
                    if let Some(a) = owned.get_mut(&c.id) {
                        a.cost_before = cost_before(&body, &row.get(1), &local.source());
                    }
                }
                Err(e) => self.fail_claim(lease, &c.id, c.fence, &e).await?,
            }
        }
        Ok(())
    }

    /// Adds to `owned` the agents the database says are this worker's that it does not know
    /// of: at the start of an epoch (a restart within the lease keeps its agents), and every
    /// heartbeat after, for a claim whose answer never came (it committed after the worker
    /// stopped waiting, or the connection was lost before the answer). One that does not run
    /// here is started by the next `sync`.
    async fn load_owned(
        &mut self,
        lease: &Lease,
        source: &str,
        owned: &mut BTreeMap<String, Owned>,
    ) -> Result<(), ClusterError> {
        let limit = self.o.timings.heartbeat;
        let ws = self.o.workspace.clone();
        let known: Vec<&str> = owned.keys().map(String::as_str).collect();
        let db = self.db().await?;
        let rows = bounded(limit, async {
            Ok(db
                .query(
                    "SELECT id, fence, body, mirrored FROM agents
                     WHERE workspace = $1 AND owner = $2::text::uuid AND NOT id = ANY($3)",
                    &[&ws, &lease.worker, &known],
                )
                .await?)
        })
        .await?;
        for r in rows {
            let id: String = r.get(0);
            let body: Value = r.get(2);
            if !owned.contains_key(&id)
                && let Ok(request) = request_of(&body)
            {
                let cost_before = cost_before(&body, &r.get(3), source);
                owned.insert(id, Owned { fence: r.get(1), request, written: None, cost_before });
            }
        }
        Ok(())
    }

    /// Starts agent `id`, claimed by this worker under `fence`, with the local supervisor.
    #[allow(clippy::too_many_arguments)]
    async fn start_here(
        &mut self,
        lease: &Lease,
        local: &Local,
        owned: &mut BTreeMap<String, Owned>,
        id: &str,
        fence: i64,
        request: SpawnRequest,
        retry_context: Option<String>,
    ) -> Result<(), ClusterError> {
        let mut req = request.clone();
        req.id = Some(id.to_string());
        req.after.clear();
        req.idempotency_key = None;
        req.delay_ms = None;
        req.caller_env = std::env::vars().filter(|(k, _)| !k.starts_with("CORRAL_")).collect();
        let env =
            vec![("CORRAL_FENCE".to_string(), fence.to_string()), ("CORRAL_WORKER".to_string(), lease.worker.clone())];
        req.env.extend(env.iter().cloned());
        req.cwd = self.cwd_here(&request.cwd);
        let started = match local.call(&Request::Spawn(Box::new(req))) {
            Ok(v) => Ok(v),
            // Claimed here before in this epoch: the local record is finished; a new
            // attempt of it.
            Err(e) if e.contains("already") => {
                local.call(&Request::Retry { id: id.to_string(), context: retry_context, env })
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(_) => {
                owned.insert(id.to_string(), Owned { fence, request, written: None, cost_before: 0.0 });
                Ok(())
            }
            Err(e) => self.fail_claim(lease, id, fence, &e).await,
        }
    }

    /// The spawn's working directory as it is on this machine: a relative one is under this
    /// worker's workspace root; one that does not exist here is the root itself.
    fn cwd_here(&self, cwd: &str) -> String {
        let p = std::path::Path::new(cwd);
        let here = if cwd.is_empty() {
            self.o.root.clone()
        } else if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.o.root.join(p)
        };
        if here.is_dir() { here } else { self.o.root.clone() }.display().to_string()
    }

    async fn fail_claim(&mut self, lease: &Lease, id: &str, fence: i64, why: &str) -> Result<(), ClusterError> {
        self.say(&format!("{id}: cannot start it here: {why}"));
        let change = Change {
            state: Some("failed".into()),
            end_attempt: Some(AttemptEnd {
                outcome: "failed".into(),
                exit_code: None,
                detail: json!({ "reason": why }),
            }),
            release: true,
            events: vec![NewEvent::new("failed", json!({ "reason": why, "worker": lease.worker }))],
            ..Change::default()
        };
        let limit = self.o.timings.heartbeat;
        let db = self.db().await?;
        match bounded(limit, queue::write(db, lease, id, fence, &change)).await {
            Ok(_) | Err(ClusterError::Stale { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes each owned agent whose view changed (or that has new events), fenced; a
    /// finished one ends its attempt and is given up.
    async fn sync(
        &mut self,
        lease: &Lease,
        local: &Local,
        owned: &mut BTreeMap<String, Owned>,
        local_seq: &mut u64,
    ) -> Result<(), ClusterError> {
        let views = local.status().map_err(ClusterError::Bad)?;
        let events = local.events(*local_seq).map_err(ClusterError::Bad)?;
        let mut by_agent: BTreeMap<String, Vec<NewEvent>> = BTreeMap::new();
        let mut last = *local_seq;
        for e in events {
            last = last.max(e.seq);
            let Some(id) = e.agent_id.as_ref().map(|i| i.to_string()) else { continue };
            if !owned.contains_key(&id) || e.kind == "spawned" {
                continue;
            }
            by_agent.entry(id).or_default().push(NewEvent::mirrored(&e.kind, e.data, e.seq as i64));
        }
        let views: BTreeMap<&str, &AgentView> = views.iter().map(|v| (v.agent_id.as_str(), v)).collect();
        self.hold_providers(owned, &views).await?;
        let ids: Vec<String> = owned.keys().cloned().collect();
        for id in ids {
            let Some(view) = views.get(id.as_str()) else {
                // This worker's in the database but never started here (its claim's answer
                // was lost, or the worker stopped before it started it): start it now.
                let a = owned.remove(&id).expect("listed");
                self.say(&format!("{id}: this worker's but not running here; starting it"));
                self.start_here(lease, local, owned, &id, a.fence, a.request, None).await?;
                continue;
            };
            let a = owned.get(&id).expect("listed");
            let mut shown = serde_json::to_value(view).unwrap_or(Value::Null);
            if let Some(o) = shown.as_object_mut() {
                o.remove("ageSeconds");
                o.remove("nextAttemptInSeconds");
            }
            let evs = by_agent.remove(&id).unwrap_or_default();
            if a.written.as_ref() == Some(&shown) && evs.is_empty() {
                continue;
            }
            let finished = view.is_finished();
            let handoff = if finished || evs.iter().any(|e| e.kind == "handoff") { local.handoff(&id) } else { None };
            let state = match view.status.as_str() {
                // Held by the local supervisor's own admission: still this worker's.
                "queued" => "starting".to_string(),
                s => s.to_string(),
            };
            let mut record = body(&a.request, Some(view), Some((&lease.worker, &self.host)));
            if a.cost_before > 0.0 {
                record["costBefore"] = json!(a.cost_before);
            }
            let change = Change {
                state: Some(state),
                body: Some(record),
                end_attempt: finished.then(|| AttemptEnd {
                    outcome: view.status.clone(),
                    exit_code: view.exit_code,
                    detail: json!({ "reason": view.reason, "localAttempts": view.attempt }),
                }),
                release: finished,
                events: evs,
                handoff,
                source: Some(local.source()),
                // The outcomes it records feed the cluster's breaker in the same write.
                breaker: (self.o.health.breaker_failures > 0).then(|| self.o.health.clone()),
                ..Change::default()
            };
            let limit = self.o.timings.heartbeat;
            let fence = a.fence;
            let db = self.db().await?;
            match bounded(limit, queue::write(db, lease, &id, fence, &change)).await {
                Ok(_) => {
                    if finished {
                        owned.remove(&id);
                    } else if let Some(a) = owned.get_mut(&id) {
                        a.written = Some(shown);
                    }
                }
                Err(ClusterError::Stale { .. }) => {
                    // Someone else's now (or gone): this copy must not go on.
                    self.say(&format!("{id} is no longer this worker's: stopping it here"));
                    let _ = local.call(&Request::Kill { id: id.clone(), grace_ms: 1000 });
                    owned.remove(&id);
                }
                Err(e) => return Err(e),
            }
        }
        *local_seq = last;
        Ok(())
    }

    /// Records in the workspace the rate or usage limit an agent of this worker waits on, so
    /// that no worker starts another agent of that provider before it resets.
    async fn hold_providers(
        &mut self,
        owned: &BTreeMap<String, Owned>,
        views: &BTreeMap<&str, &AgentView>,
    ) -> Result<(), ClusterError> {
        let mut due: Vec<(String, String, f64, String)> = Vec::new();
        for (id, v) in views {
            if !owned.contains_key(*id) || v.status != "waiting" {
                continue;
            }
            let Some(provider) = crate::adapter::Adapter::parse(&v.adapter).and_then(|a| a.provider()) else {
                continue;
            };
            let Some(until) = v.waiting_until.as_deref() else { continue };
            if self.held.get(provider).is_some_and(|u| u.as_str() >= until) {
                continue;
            }
            let Some(end) = time::parse(until) else { continue };
            // How long from now, so the hold is kept on the database's clock.
            let left = (end.as_millisecond() - time::now().as_millisecond()).max(0) as f64 / 1000.0;
            let why = v.reason.clone().unwrap_or_else(|| format!("{id} hit {provider}'s limit"));
            due.push((provider.to_string(), until.to_string(), left, why));
        }
        for (provider, until, left, why) in due {
            let (ws, limit) = (self.o.workspace.clone(), self.o.timings.heartbeat);
            let db = self.db().await?;
            bounded(limit, queue::hold_provider(db, &ws, &provider, left, &why)).await?;
            self.say(&format!("provider {provider} held across the cluster until {until}: {why}"));
            self.held.insert(provider, until);
        }
        Ok(())
    }

    /// Applies the kill, retry and tell commands of this worker's agents, each once.
    async fn commands(
        &mut self,
        lease: &Lease,
        local: &Local,
        owned: &BTreeMap<String, Owned>,
    ) -> Result<(), ClusterError> {
        let limit = self.o.timings.heartbeat;
        let db = self.db().await?;
        let cmds = bounded(limit, super::commands::take_commands(db, lease)).await?;
        for c in cmds {
            let arg = |k: &str| c.args.get(k).and_then(Value::as_str).map(str::to_string);
            let req = match c.kind.as_str() {
                "kill" => Some(Request::Kill {
                    id: c.agent.clone(),
                    grace_ms: c
                        .args
                        .get("graceMs")
                        .and_then(Value::as_u64)
                        .unwrap_or(crate::policy::lifecycle::STOP_GRACE_MS),
                }),
                "retry" => Some(Request::Retry { id: c.agent.clone(), context: arg("context"), env: vec![] }),
                "tell" => Some(Request::Tell { id: c.agent.clone(), text: arg("text").unwrap_or_default() }),
                _ => None,
            };
            let result = match (req, owned.contains_key(&c.agent)) {
                (None, _) => json!({ "ok": false, "error": format!("unknown command {:?}", c.kind) }),
                (Some(r), _) => match local.call(&r) {
                    Ok(v) => json!({ "ok": true, "data": v }),
                    Err(e) => json!({ "ok": false, "error": e }),
                },
            };
            let db = self.db().await?;
            bounded(limit, super::commands::finish_command(db, lease, c.id, result)).await?;
        }
        Ok(())
    }
}

/// What the lease thread and the worker's loop share about the lease.
struct Shared {
    lease: Lease,
    /// The deadline last written for the shims.
    deadline: watchdog::Deadline,
    /// The deadline passed without a renewal: it is never extended again in this epoch.
    fenced: bool,
    /// The database said the lease is gone.
    lost: bool,
    /// A renewal went through after the deadline had passed: the lease held although this
    /// worker's agents were stopped.
    renewed_after_fence: bool,
    /// The epoch is over: the thread ends.
    stop: bool,
}

/// The lease's own thread: renews every heartbeat (each round trip bounded by it) and, while
/// the deadline has not passed, moves the shims' deadline on.
struct Heartbeat {
    db: Database,
    timings: LeaseTimings,
    data: DataDir,
    shared: Arc<Mutex<Shared>>,
}

impl Heartbeat {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            self.lock().lost = true;
            return;
        };
        rt.block_on(self.beat());
    }

    async fn beat(&self) {
        let every = self.timings.heartbeat;
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            let sent = time::mono_ms();
            let mut lease = {
                let mut s = self.lock();
                if s.stop || s.lost {
                    return;
                }
                if sent >= s.deadline.term_at_mono {
                    s.fenced = true;
                }
                s.lease.clone()
            };
            if client.as_ref().is_some_and(|c| c.is_closed()) {
                client = None;
            }
            if client.is_none() {
                client = tokio::time::timeout(every, self.db.connect()).await.ok().and_then(Result::ok);
            }
            if let Some(c) = &client {
                match bounded(every, queue::renew(c, &mut lease)).await {
                    Ok(_) => {
                        let run = lease.remaining().saturating_sub(self.timings.margin);
                        let next = watchdog::Deadline {
                            term_at_mono: sent + run.as_millis() as u64,
                            ..self.lock().deadline.clone()
                        };
                        let mut s = self.lock();
                        s.lease = lease;
                        // Never moved on once passed: the shims may be stopping agents.
                        if s.fenced || time::mono_ms() >= s.deadline.term_at_mono {
                            s.fenced = true;
                            s.renewed_after_fence = true;
                        } else {
                            if let Err(e) = watchdog::write(&self.data, &next) {
                                crate::elog!("corral worker: cannot write the local deadline: {e}");
                            }
                            s.deadline = next;
                        }
                    }
                    Err(ClusterError::LeaseLost { .. }) => {
                        self.lock().lost = true;
                        return;
                    }
                    Err(_) => client = None,
                }
            }
            let due = sent + every.as_millis() as u64;
            let wait = due.saturating_sub(time::mono_ms()).max(20);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// This epoch's supervisor, reached over its socket (started on first use).
struct Local {
    data: DataDir,
    root: PathBuf,
}

impl Local {
    /// This local store's name in the database: its epoch dir's.
    fn source(&self) -> String {
        self.data.root().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    fn call(&self, req: &Request) -> Result<Value, String> {
        let reply = Client::request(&self.data, &self.root, req).map_err(|e| e.to_string())?;
        if reply.ok {
            reply.parse().map_err(|e| e.to_string())
        } else {
            Err(reply.error.unwrap_or_else(|| "the supervisor refused".into()))
        }
    }

    fn status(&self) -> Result<Vec<AgentView>, String> {
        let v = self.call(&Request::Status { ids: vec![], role: None })?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn events(&self, after: u64) -> Result<Vec<EventRecord>, String> {
        let v = self.call(&Request::Events { after, agent: None, follow: false })?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// The newest handoff of `id` in this epoch (its file name and JSON; a file that is not
    /// JSON is kept as its text, to be reported as unreadable), if it wrote one.
    fn handoff(&self, id: &str) -> Option<(String, Value)> {
        let dir = self.data.handoff_dir();
        let names = fsio::Dir::open(self.data.root(), &dir).and_then(|d| d.names()).ok()?;
        let newest = names
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| DataDir::handoff_owner(n) == Some(id))
            .max()?;
        let path = dir.join(&newest);
        let bytes = fsio::read(self.data.root(), &path, 1 << 20).ok()?;
        let body = serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|e| json!({ "unreadable": e.to_string(), "text": String::from_utf8_lossy(&bytes) }));
        Some((newest, body))
    }

    fn last_seq(&self) -> Result<u64, String> {
        serde_json::from_value(self.call(&Request::LastSeq)?).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_in_other_local_stores_are_carried_as_cost_before() {
        let body = json!({ "costBefore": 0.5, "view": { "costUsd": 0.25 } });
        // Its view came from another store: that store's cost is carried.
        assert_eq!(cost_before(&body, &json!({ "source": "w1-1", "through": 9 }), "w2-1"), 0.75);
        // From this store (claimed here again): its view goes on counting it.
        assert_eq!(cost_before(&body, &json!({ "source": "w2-1", "through": 9 }), "w2-1"), 0.5);
        assert_eq!(cost_before(&json!({ "request": {} }), &json!({}), "w2-1"), 0.0);
    }
}
