//! The cluster's correctness core: worker leases, claims, fenced writes and the re-queue of
//! agents whose worker's lease ran out. Every time here is the database's clock (`now()`):
//! no worker's wall clock is ever compared with another's.
//!
//! - A worker [`register`]s and keeps a lease by [`renew`]ing it before it runs out; a lease
//!   that has run out cannot be renewed (the worker learns it lost it, stops its agents and
//!   registers again under a new id).
//! - [`claim`] admits queued agents in one transaction under the workspace row's lock, so
//!   `max_concurrent`, each group's limit, a pause, the workspace's budget and the
//!   providers' rate limit holds apply across every worker; candidates are taken with
//!   `FOR UPDATE SKIP LOCKED`, and each claim bumps the agent's fence.
//! - [`write`] is the one way a worker changes anything about an agent it runs: it checks
//!   `owner = me AND fence = $fence` under the agent's row lock, and a stale writer changes
//!   nothing and gets [`ClusterError::Stale`].
//! - [`sweep`] gives the agents of workers whose lease expired back to the queue as a `lost`
//!   attempt, bumping their fence; the third lost attempt in a row escalates instead.
//!
//! Lock order, everywhere: an agent's row, then the workspace row (events are numbered last,
//! just before commit). [`claim`] takes the workspace row first but never waits on an agent
//! row (SKIP LOCKED), so no two of these transactions wait on each other in a cycle.

use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tokio_postgres::{Client, Transaction};

/// How long a lease lasts when nothing says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How often a worker renews its lease when nothing says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long past a lease's end a sweep waits before it takes the agents.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Lost attempts in a row that escalate an agent instead of re-queueing it.
pub const DEFAULT_MAX_LOST: i32 = 3;
/// At most this many agents re-queued by one sweep.
pub const DEFAULT_MAX_REQUEUE: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The write's fence or owner is not the agent's any more: nothing was written.
    #[error(
        "agent {agent}: fence {fence} is stale ({now}); nothing was written: the agent is no longer this worker's to change"
    )]
    Stale { agent: String, fence: i64, now: String },
    /// This worker's lease ran out (or was never there): it must stop its agents and register
    /// again under a new id.
    #[error("worker {worker} has lost its lease: stop its agents and register again under a new id")]
    LeaseLost { worker: String },
    #[error("{0}")]
    Bad(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

type Result<T> = std::result::Result<T, ClusterError>;

/// What a worker says about itself when it registers.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub workspace: String,
    /// A UUID, kept by the worker across restarts (a restart within the lease re-attaches).
    pub id: String,
    pub host: String,
    pub pid: i32,
    /// What this worker offers; an agent runs here only if its `placement` is contained in
    /// these (`placement <@ labels`, JSON containment).
    pub labels: Value,
    pub slots: i32,
    pub ttl: Duration,
}

/// A worker's hold on the agents it claimed, as the database last confirmed it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub workspace: String,
    pub worker: String,
    pub ttl: Duration,
    /// The lease's end on the database's clock.
    pub until: SystemTime,
    /// The database's clock when it granted `until`: `until - granted` is how long the lease
    /// runs from the moment the renewal was sent, whatever this machine's clock says.
    pub granted: SystemTime,
}

impl Lease {
    /// How long the lease had left when the database granted it.
    pub fn remaining(&self) -> Duration {
        self.until.duration_since(self.granted).unwrap_or_default()
    }
}

/// One agent a worker now runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: String,
    pub seq: i64,
    /// The token every write about this agent must carry.
    pub fence: i64,
    /// The attempt's number, from 1.
    pub attempt: i32,
}

/// An event to append: numbered densely, in commit order, with the others of its
/// transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub data: Value,
    /// Its number in the worker's local store, for an event mirrored from there (see
    /// [`Change::source`]).
    pub origin: Option<i64>,
}

impl NewEvent {
    pub fn new(kind: &str, data: Value) -> Self {
        Self { kind: kind.into(), data, origin: None }
    }

    /// An event mirrored from the local store where it has number `origin`.
    pub fn mirrored(kind: &str, data: Value, origin: i64) -> Self {
        Self { kind: kind.into(), data, origin: Some(origin) }
    }
}

/// How an attempt ended, recorded on its attempt row.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub detail: Value,
}

/// What one [`write`] changes about an agent, all in one transaction or not at all.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub state: Option<String>,
    /// Replaces the agent's body (its full record).
    pub body: Option<Value>,
    pub end_attempt: Option<AttemptEnd>,
    /// Gives the agent up: no owner any more (a later write with this fence is stale).
    pub release: bool,
    /// With `release` into `queued`: the earliest time another claim may take it, from now.
    pub run_after: Option<Duration>,
    pub events: Vec<NewEvent>,
    /// The agent's handoff for this attempt (its file name on the worker, its JSON), kept so
    /// `show` and `aggregate` work from any machine.
    pub handoff: Option<(String, Value)>,
    /// The local store the events with an `origin` come from. The agent's row remembers the
    /// last origin written from it, so a write sent again (its answer was lost, or a later
    /// write of the same sync failed) appends none of them twice.
    pub source: Option<String>,
    /// The cluster's breaker, when it is on: the outcomes this write records (each newly
    /// mirrored `retry_scheduled` a failure, the attempt's end a success or a failure) feed
    /// it in the same transaction, so an outcome counts once, and only with its record.
    pub breaker: Option<crate::policy::health::HealthPolicy>,
}

/// An agent to queue.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub role: String,
    pub placement: Value,
    /// The admission group it counts against (none: only the workspace's limit).
    pub group: Option<String>,
    /// The provider whose rate limits hold it (its adapter's API; none for plain output).
    pub provider: Option<String>,
    pub body: Value,
    /// Not claimable before now + delay.
    pub delay: Duration,
}

/// The rules of [`sweep`]: when a lease counts as dead, and the guards against re-queueing
/// everything at once after the database itself was away.
#[derive(Debug, Clone)]
pub struct SweepRules {
    /// A lease is dead this long after its end.
    pub grace: Duration,
    /// The sweeper must have held its own lease, without a break, this long, and the
    /// database must have been up this long: after an outage every worker gets a full lease
    /// to come back before anyone judges anyone.
    pub settle: Duration,
    /// The sweeper must have renewed within this long.
    pub fresh: Duration,
    /// At most this many agents re-queued per sweep; the rest wait for the next.
    pub max_requeue: i64,
    /// The lost attempt in a row that escalates instead of re-queueing.
    pub max_lost: i32,
}

impl SweepRules {
    /// The defaults for a lease of `ttl` renewed every `heartbeat`.
    pub fn for_lease(ttl: Duration, heartbeat: Duration) -> Self {
        Self {
            grace: DEFAULT_GRACE,
            settle: ttl + DEFAULT_GRACE,
            fresh: heartbeat * 2,
            max_requeue: DEFAULT_MAX_REQUEUE,
            max_lost: DEFAULT_MAX_LOST,
        }
    }
}

/// What a [`sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Why this sweep judged nobody (a guard held), if it did not.
    pub held: Option<String>,
    /// Agents back in the queue, with their new fence.
    pub requeued: Vec<(String, i64)>,
    /// Agents escalated for being lost too often in a row, with their new fence.
    pub escalated: Vec<(String, i64)>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A fresh random worker id (a version 4 UUID).
pub fn new_worker_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Never on Linux with a 16-byte request; still distinct per process and instant.
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b.copy_from_slice(&(t ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The limits admission holds across the whole cluster, from a worker's `corral.toml`: the
/// last worker to start sets them. What `corral parallel` and `corral pause` change at run
/// time is kept apart and holds over these (see `capacity`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkspaceLimits {
    /// `[health] max_concurrent` (`None`: no limit).
    pub max_concurrent: Option<i32>,
    /// `[groups.NAME] max_concurrent`, by group (a group not here has no limit of its own).
    pub groups: std::collections::BTreeMap<String, i32>,
    /// `[budget] max_cost_usd`: once the agents' recorded costs add up to it, nothing more
    /// is claimed.
    pub max_cost_usd: Option<f64>,
}

/// Creates the workspace if it is not there, and sets its cluster-wide `max_concurrent`
/// (`None`: no limit), with no group limits and no budget.
pub async fn configure_workspace(client: &Client, workspace: &str, max_concurrent: Option<i32>) -> Result<()> {
    configure_limits(client, workspace, &WorkspaceLimits { max_concurrent, ..WorkspaceLimits::default() }).await
}

/// Creates the workspace if it is not there, and sets the limits every claim holds to.
pub async fn configure_limits(client: &Client, workspace: &str, limits: &WorkspaceLimits) -> Result<()> {
    if let Some((g, n)) = limits.groups.iter().find(|(_, n)| **n < 1) {
        return Err(ClusterError::Bad(format!("group {g}: max_concurrent must be at least 1, not {n}")));
    }
    let groups = serde_json::to_value(&limits.groups).unwrap_or_else(|_| json!({}));
    client
        .execute(
            "INSERT INTO workspaces (id, max_concurrent, group_limits, max_cost_usd) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET max_concurrent = EXCLUDED.max_concurrent,
                 group_limits = EXCLUDED.group_limits, max_cost_usd = EXCLUDED.max_cost_usd",
            &[&workspace, &limits.max_concurrent, &groups, &limits.max_cost_usd],
        )
        .await?;
    Ok(())
}

/// Holds `provider`'s admission across the cluster for `for_secs` from now on the database's
/// clock (a worker's agent hit its rate or usage limit): no worker claims an agent of that
/// provider until then. A hold already longer is kept.
pub async fn hold_provider(
    client: &Client,
    workspace: &str,
    provider: &str,
    for_secs: f64,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            "UPDATE workspaces SET provider_holds = provider_holds || jsonb_build_object($2::text,
                 jsonb_build_object('until', now() + make_interval(secs => $3), 'reason', $4::text))
             WHERE id = $1 AND (NOT provider_holds ? $2
                 OR (provider_holds->$2->>'until')::timestamptz < now() + make_interval(secs => $3))",
            &[&workspace, &provider, &for_secs.max(0.0), &reason],
        )
        .await?;
    Ok(())
}

/// What the agents of `workspace` cost together, as their workers last recorded it: each
/// agent's `costUsd` (its attempts in the local store that runs it, where known) and
/// `costBefore` (its attempts in other stores).
pub(crate) const SPENT_SQL: &str = "SELECT COALESCE(sum(
         CASE WHEN jsonb_typeof(body->'view'->'costUsd') = 'number' THEN (body->'view'->>'costUsd')::float8 ELSE 0 END
       + CASE WHEN jsonb_typeof(body->'costBefore') = 'number' THEN (body->>'costBefore')::float8 ELSE 0 END), 0)::float8
     FROM agents WHERE workspace = $1";

/// A queued agent's dependencies as SQL over the agents row `t`: the ids of `request.after`.
fn needs(t: &str) -> String {
    format!(
        "jsonb_array_elements_text(CASE WHEN jsonb_typeof({t}.body->'request'->'after') = 'array'
                                        THEN {t}.body->'request'->'after' ELSE '[]'::jsonb END)"
    )
}

/// The agents row `t` may be claimed by a worker with labels `$2`, with the workspace's
/// provider holds `$5` and paused groups `$6`: queued, nobody's, due, placeable there, its
/// group not paused, its provider not held, every dependency complete.
fn claimable(t: &str) -> String {
    format!(
        "{t}.workspace = $1 AND {t}.state = 'queued' AND {t}.owner IS NULL AND {t}.run_after <= now()
         AND {t}.placement <@ $2
         AND ({t}.admission_group IS NULL OR NOT {t}.admission_group = ANY($6::text[]))
         AND ({t}.provider IS NULL OR NOT EXISTS (
             SELECT 1 FROM jsonb_each($5::jsonb) AS h(name, hold)
             WHERE h.name = {t}.provider AND (h.hold->>'until')::timestamptz > now()))
         AND NOT EXISTS (
             SELECT 1 FROM {} AS need(id)
             LEFT JOIN agents d ON d.workspace = {t}.workspace AND d.id = need.id
             WHERE d.state IS DISTINCT FROM 'complete')",
        needs(t)
    )
}

/// Registers a worker with a lease of `spec.ttl`. The same id again while its lease is live
/// re-attaches (a restarted worker keeps its agents and their fences); an id whose lease ran
/// out is refused with [`ClusterError::LeaseLost`].
pub async fn register(client: &Client, spec: &WorkerSpec) -> Result<Lease> {
    if spec.slots < 1 {
        return Err(ClusterError::Bad(format!("worker {}: slots must be at least 1, not {}", spec.id, spec.slots)));
    }
    if !spec.labels.is_object() {
        return Err(ClusterError::Bad(format!("worker {}: labels must be a JSON object", spec.id)));
    }
    client.execute("INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", &[&spec.workspace]).await?;
    let row = client
        .query_opt(
            "INSERT INTO workers AS w (id, workspace, host, pid, labels, slots, state, lease_until)
             VALUES ($1::text::uuid, $2, $3, $4, $5, $6, 'active', now() + make_interval(secs => $7))
             ON CONFLICT (id) DO UPDATE
                SET host = EXCLUDED.host, pid = EXCLUDED.pid, labels = EXCLUDED.labels,
                    slots = EXCLUDED.slots, heartbeat_at = now(), lease_until = EXCLUDED.lease_until
                WHERE w.state = 'active' AND w.lease_until > now() AND w.workspace = EXCLUDED.workspace
             RETURNING lease_until, now()",
            &[&spec.id, &spec.workspace, &spec.host, &spec.pid, &spec.labels, &spec.slots, &secs(spec.ttl)],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::INVALID_TEXT_REPRESENTATION => {
                ClusterError::Bad(format!("worker id {:?} is not a UUID", spec.id))
            }
            _ => e.into(),
        })?;
    let row = row.ok_or_else(|| ClusterError::LeaseLost { worker: spec.id.clone() })?;
    Ok(Lease {
        workspace: spec.workspace.clone(),
        worker: spec.id.clone(),
        ttl: spec.ttl,
        until: row.get(0),
        granted: row.get(1),
    })
}

/// Extends the lease to `now() + ttl`, only while it is still live; returns its new end as
/// the database sees it. A lease that ran out, or a worker declared dead, gets
/// [`ClusterError::LeaseLost`] and the worker row is marked dead.
pub async fn renew(client: &Client, lease: &mut Lease) -> Result<SystemTime> {
    let row = client
        .query_opt(
            "UPDATE workers SET heartbeat_at = now(), lease_until = now() + make_interval(secs => $2)
             WHERE id = $1::text::uuid AND state = 'active' AND lease_until > now()
             RETURNING lease_until, now()",
            &[&lease.worker, &secs(lease.ttl)],
        )
        .await?;
    match row {
        Some(row) => {
            lease.until = row.get(0);
            lease.granted = row.get(1);
            Ok(lease.until)
        }
        None => {
            client.execute("UPDATE workers SET state = 'dead' WHERE id = $1::text::uuid", &[&lease.worker]).await?;
            Err(ClusterError::LeaseLost { worker: lease.worker.clone() })
        }
    }
}

/// Refuses with [`ClusterError::LeaseLost`] unless `lease` is live now; returns the worker's
/// labels and slots.
pub(crate) async fn live(tx: &Transaction<'_>, lease: &Lease) -> Result<(Value, i32)> {
    let row = tx
        .query_opt(
            "SELECT labels, slots FROM workers
             WHERE id = $1::text::uuid AND workspace = $2 AND state = 'active' AND lease_until > now()",
            &[&lease.worker, &lease.workspace],
        )
        .await?;
    let row = row.ok_or_else(|| ClusterError::LeaseLost { worker: lease.worker.clone() })?;
    Ok((row.get(0), row.get(1)))
}

/// One event for [`append_events`].
pub(crate) struct Ev<'a> {
    pub(crate) agent: Option<&'a str>,
    pub(crate) fence: Option<i64>,
    pub(crate) kind: &'a str,
    pub(crate) data: Value,
}

/// Numbers `events` densely after the workspace's last, inserts them and notifies the
/// workspace's channel with the last number; call it last in a transaction, so the workspace row is held only until commit and numbers follow commit
/// order (a reader of `seq > last` can never miss one that commits late).
pub(crate) async fn append_events(
    tx: &Transaction<'_>,
    workspace: &str,
    worker: Option<&str>,
    events: &[Ev<'_>],
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let n = events.len() as i64;
    let last: i64 = tx
        .query_one(
            "UPDATE workspaces SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq",
            &[&workspace, &n],
        )
        .await?
        .get(0);
    let first = last - n + 1;
    let agents: Vec<Option<&str>> = events.iter().map(|e| e.agent).collect();
    let fences: Vec<Option<i64>> = events.iter().map(|e| e.fence).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    tx.execute(
        "INSERT INTO events (workspace, seq, agent_id, kind, data, worker, fence)
         SELECT $1, $2::int8 + u.i - 1, u.agent_id, u.kind, u.data, $7::text::uuid, u.fence
         FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::int8[]) WITH ORDINALITY
              AS u(agent_id, kind, data, fence, i)",
        &[&workspace, &first, &agents, &kinds, &data, &fences, &worker],
    )
    .await?;
    // A wake-up for listeners, delivered at commit and only if it commits: the last number.
    tx.execute("SELECT pg_notify($1, $2)", &[&super::channel(workspace), &last.to_string()]).await?;
    Ok((first..=last).collect())
}

/// Queues `agents` in `workspace` (numbered in order, a `spawned` event each).
pub async fn enqueue(client: &mut Client, workspace: &str, agents: &[NewAgent]) -> Result<Vec<i64>> {
    let tx = client.transaction().await?;
    let n = agents.len() as i64;
    let next: i64 = tx
        .query_one(
            "UPDATE workspaces SET next_number = next_number + $2 WHERE id = $1 RETURNING next_number",
            &[&workspace, &n],
        )
        .await?
        .get(0);
    let mut seqs = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let seq = next - n + i as i64;
        tx.execute(
            "INSERT INTO agents (workspace, id, seq, role, state, placement, body, run_after, admission_group, provider)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, now() + make_interval(secs => $7), $8, $9)",
            &[&workspace, &a.id, &seq, &a.role, &a.placement, &a.body, &secs(a.delay), &a.group, &a.provider],
        )
        .await?;
        seqs.push(seq);
    }
    let evs: Vec<Ev> = agents
        .iter()
        .map(|a| Ev { agent: Some(&a.id), fence: Some(0), kind: "spawned", data: json!({ "role": a.role }) })
        .collect();
    append_events(&tx, workspace, None, &evs).await?;
    tx.commit().await?;
    Ok(seqs)
}

/// One spawn from any machine: an agent to queue, under an optional idempotency key.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The agent's id; `None`: `agent-<number>-<role>` from the workspace's counter.
    pub id: Option<String>,
    pub role: String,
    /// Unique per workspace: the same key again returns the first agent.
    pub key: Option<String>,
    /// What the spawn asked for (role, task, command): a second spawn with the same key must
    /// ask for the same, or it is refused.
    pub request: Value,
    pub placement: Value,
    /// The admission group it counts against (none: only the workspace's limit).
    pub group: Option<String>,
    /// The provider whose rate limits hold it (its adapter's API; none for plain output).
    pub provider: Option<String>,
    pub body: Value,
    pub delay: Duration,
}

/// What a [`spawn`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    pub id: String,
    /// The agent's number in its workspace (dense: 1, 2, 3 ...).
    pub seq: i64,
    /// False when the key had been used already and this is the first spawn's agent.
    pub created: bool,
}

/// Queues one agent, in one transaction under the workspace row: a key already used returns
/// its agent (and queues nothing, spends no number) if the request is the same, and is
/// refused if it is not; otherwise the agent gets the workspace's next number, and its id
/// from it unless one is given, so ids never collide across machines.
pub async fn spawn(client: &mut Client, workspace: &str, s: &Spawn) -> Result<Spawned> {
    if s.key.as_deref() == Some("") {
        return Err(ClusterError::Bad("an idempotency key must not be empty".into()));
    }
    if !s.placement.is_object() {
        return Err(ClusterError::Bad(format!("placement {} must be a JSON object", s.placement)));
    }
    client.execute("INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", &[&workspace]).await?;
    let tx = client.transaction().await?;
    // Every spawn takes this row first: keys and numbers are decided one spawn at a time.
    let number: i64 =
        tx.query_one("SELECT next_number FROM workspaces WHERE id = $1 FOR UPDATE", &[&workspace]).await?.get(0);
    if let Some(key) = &s.key {
        let row = tx
            .query_opt(
                "SELECT id, seq, spawn_request FROM agents WHERE workspace = $1 AND idempotency_key = $2",
                &[&workspace, key],
            )
            .await?;
        if let Some(row) = row {
            let (id, seq, first): (String, i64, Option<Value>) = (row.get(0), row.get(1), row.get(2));
            if first.as_ref() != Some(&s.request) {
                return Err(ClusterError::Bad(format!(
                    "idempotency key {key:?} was used by agent {id} for a different spawn ({}; this one asks for {}): \
                     use a new key, or repeat the first spawn exactly",
                    first.unwrap_or(Value::Null),
                    s.request
                )));
            }
            tx.commit().await?;
            return Ok(Spawned { id, seq, created: false });
        }
    }
    let id = match &s.id {
        Some(id) => id.clone(),
        None => crate::protocol::ids::AgentId::generated(number as u64, &s.role).as_str().to_string(),
    };
    let inserted = tx
        .execute(
            "INSERT INTO agents (workspace, id, seq, role, state, placement, body, run_after, idempotency_key,
                                 spawn_request, admission_group, provider)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, now() + make_interval(secs => $7), $8, $9, $10, $11)
             ON CONFLICT (workspace, id) DO NOTHING",
            &[
                &workspace,
                &id,
                &number,
                &s.role,
                &s.placement,
                &s.body,
                &secs(s.delay),
                &s.key,
                &s.request,
                &s.group,
                &s.provider,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(ClusterError::Bad(format!(
            "agent {id} already exists in workspace {workspace}: choose another id"
        )));
    }
    tx.execute("UPDATE workspaces SET next_number = next_number + 1 WHERE id = $1", &[&workspace]).await?;
    let ev = Ev { agent: Some(&id), fence: Some(0), kind: "spawned", data: json!({ "role": s.role }) };
    append_events(&tx, workspace, None, &[ev]).await?;
    tx.commit().await?;
    Ok(Spawned { id, seq: number, created: true })
}

/// What admission holds across the whole cluster besides `max_concurrent`: the circuit
/// breaker over recent failures, fed by every worker (`None`: no breaker).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub health: Option<crate::policy::health::HealthPolicy>,
}

/// The finished states: a dependency in one of them other than `complete` fails its
/// dependents.
const FINISHED: &str = "('complete', 'failed', 'killed', 'timed_out', 'escalated', 'blocked')";

/// The database's clock in milliseconds, the clock of the cluster's breaker.
async fn db_ms(tx: &Transaction<'_>) -> Result<u64> {
    let ms: f64 = tx.query_one("SELECT (extract(epoch from clock_timestamp()) * 1000)::float8", &[]).await?.get(0);
    Ok(ms.max(0.0) as u64)
}

/// Claims up to `want` queued agents for this worker (see [`claim_with`]), with no breaker.
pub async fn claim(client: &mut Client, lease: &Lease, want: i64) -> Result<Vec<Claim>> {
    claim_with(client, lease, want, &Admission::default()).await
}

/// Claims up to `want` queued agents for this worker: those whose `run_after` has passed,
/// whose placement its labels satisfy, whose provider is not held, whose dependencies
/// (`request.after`) completed, whose group has room and is not paused and whose breaker
/// lets them start, in spawn order, never more than the workspace's `max_concurrent` (nor a
/// group's limit) holding a slot across all workers, those limits being `corral parallel`'s
/// where it changed them (see `capacity`), and none while the workspace is paused or its
/// budget is spent. Each claim bumps the agent's fence, opens its attempt and appends a
/// `claimed` event. Agents whose dependency finished without completing fail here, with the
/// reason.
pub async fn claim_with(client: &mut Client, lease: &Lease, want: i64, rules: &Admission) -> Result<Vec<Claim>> {
    let tx = client.transaction().await?;
    let (labels, slots) = live(&tx, lease).await?;
    // Serializes admission across the cluster: every claim takes this row first.
    let row = tx
        .query_one(
            "SELECT max_concurrent, breaker, group_limits, max_cost_usd, provider_holds, capacity
             FROM workspaces WHERE id = $1 FOR UPDATE",
            &[&lease.workspace],
        )
        .await?;
    let (max, breaker, groups, max_cost, holds): (Option<i32>, Value, Value, Option<f64>, Value) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let limits = super::capacity::Limits::of(max, &groups, &row.get(5));
    let (groups, paused_groups) = (limits.groups_json(), limits.paused_groups());
    // Dependents of a dependency that will never complete fail with it.
    // (Never waiting on a row another transaction holds: SKIP LOCKED, as for candidates.)
    let rows = tx
        .query(
            &format!(
                "SELECT q.id, d.id, d.state
                 FROM agents q
                 CROSS JOIN LATERAL {} AS need(id)
                 JOIN agents d ON d.workspace = q.workspace AND d.id = need.id
                 WHERE q.workspace = $1 AND q.state = 'queued' AND q.owner IS NULL
                   AND d.state IN {FINISHED} AND d.state <> 'complete'
                 ORDER BY q.seq
                 FOR UPDATE OF q SKIP LOCKED",
                needs("q")
            ),
            &[&lease.workspace],
        )
        .await?;
    let mut doomed: Vec<(String, String, String)> = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        if !doomed.iter().any(|d| d.0 == id) {
            doomed.push((id, r.get(1), r.get(2)));
        }
    }
    if !doomed.is_empty() {
        let ids: Vec<&str> = doomed.iter().map(|d| d.0.as_str()).collect();
        tx.execute(
            "UPDATE agents SET state = 'failed', updated_at = now() WHERE workspace = $1 AND id = ANY($2)",
            &[&lease.workspace, &ids],
        )
        .await?;
    }
    let counts = tx
        .query_one(
            // An owned agent holds a slot whatever its state: its worker starts its next
            // attempt (after a retry's backoff, say) without claiming it again.
            "SELECT count(*), count(*) FILTER (WHERE owner = $2::text::uuid)
             FROM agents WHERE workspace = $1 AND owner IS NOT NULL",
            &[&lease.workspace, &lease.worker],
        )
        .await?;
    let (busy, mine): (i64, i64) = (counts.get(0), counts.get(1));
    let mut free = want.min(slots as i64 - mine);
    if let Some(max) = limits.max_concurrent() {
        free = free.min(max - busy);
    }
    // `corral pause`: nothing starts anywhere until `corral resume`.
    if limits.capacity.paused {
        free = 0;
    }
    // The workspace's budget spent: nothing more starts anywhere.
    if let Some(max) = max_cost
        && free > 0
    {
        let spent: f64 = tx.query_one(SPENT_SQL, &[&lease.workspace]).await?.get(0);
        if spent >= max {
            free = 0;
        }
    }
    let mut claims: Vec<Claim> = Vec::new();
    let mut breakers: Option<crate::policy::health::Breakers> = None;
    if free > 0 {
        // Candidates: queued, due, placeable here, their provider not held, every dependency
        // complete. More than `free` of them when a breaker may hold some back.
        let extra = if rules.health.is_some() { 50 } else { 0 };
        // A group with a limit gives at most its free room: its claimable agents are ranked
        // in spawn order, and those past the room (its limit less the agents of the group that
        // hold a slot on any worker) are not candidates.
        let sql = format!(
            "WITH held AS (
                 SELECT admission_group AS g, count(*) AS n FROM agents
                 WHERE workspace = $1 AND owner IS NOT NULL AND admission_group IS NOT NULL
                 GROUP BY admission_group),
             ranked AS (
                 SELECT q.id, q.admission_group AS g,
                        row_number() OVER (PARTITION BY q.admission_group ORDER BY q.seq) AS rn
                 FROM agents q
                 WHERE {} AND q.admission_group IS NOT NULL AND $4::jsonb ? q.admission_group)
             SELECT a.id, a.role FROM agents a
             WHERE {}
               AND (a.admission_group IS NULL OR NOT ($4::jsonb ? a.admission_group) OR a.id IN (
                    SELECT r.id FROM ranked r LEFT JOIN held h ON h.g = r.g
                    WHERE r.rn <= ($4::jsonb ->> r.g)::int8 - COALESCE(h.n, 0)))
             ORDER BY a.seq LIMIT $3
             FOR UPDATE OF a SKIP LOCKED",
            claimable("q"),
            claimable("a")
        );
        let rows =
            tx.query(&sql, &[&lease.workspace, &labels, &(free + extra), &groups, &holds, &paused_groups]).await?;
        let mut chosen: Vec<String> = Vec::new();
        match &rules.health {
            None => chosen.extend(rows.iter().take(free as usize).map(|r| r.get::<_, String>(0))),
            Some(p) => {
                let now = db_ms(&tx).await?;
                let mut b: crate::policy::health::Breakers = serde_json::from_value(breaker).unwrap_or_default();
                b.advance(now);
                for r in &rows {
                    if chosen.len() as i64 >= free {
                        break;
                    }
                    let (id, role): (String, String) = (r.get(0), r.get(1));
                    if b.blocks(p, &role, now).is_some() {
                        continue;
                    }
                    // A half-open breaker lets one probe through, cluster-wide.
                    if let Some(crate::policy::health::Breaker::HalfOpen { probe: Some(_) }) = b.get(p, &role) {
                        continue;
                    }
                    b.started(p, &role, &id);
                    chosen.push(id);
                }
                breakers = Some(b);
            }
        }
        if !chosen.is_empty() {
            let rows = tx
                .query(
                    "UPDATE agents a SET owner = $2::text::uuid, fence = a.fence + 1, state = 'starting',
                                         attempt = a.attempt + 1, updated_at = now()
                     WHERE a.workspace = $1 AND a.id = ANY($3)
                     RETURNING a.id, a.seq, a.fence, a.attempt",
                    &[&lease.workspace, &lease.worker, &chosen],
                )
                .await?;
            claims = rows
                .iter()
                .map(|r| Claim { id: r.get(0), seq: r.get(1), fence: r.get(2), attempt: r.get(3) })
                .collect();
            claims.sort_by_key(|c| c.seq);
        }
    }
    if let Some(b) = &breakers {
        let v = serde_json::to_value(b).unwrap_or_else(|_| json!({}));
        tx.execute("UPDATE workspaces SET breaker = $2 WHERE id = $1", &[&lease.workspace, &v]).await?;
    }
    if !claims.is_empty() {
        let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
        let ns: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
        let fences: Vec<i64> = claims.iter().map(|c| c.fence).collect();
        tx.execute(
            "INSERT INTO attempts (workspace, agent_id, n, fence, worker)
             SELECT $1, u.id, u.n, u.fence, $2::text::uuid FROM unnest($3::text[], $4::int4[], $5::int8[]) AS u(id, n, fence)",
            &[&lease.workspace, &lease.worker, &ids, &ns, &fences],
        )
        .await?;
    }
    let mut evs: Vec<Ev> = doomed
        .iter()
        .map(|(id, dep, state)| Ev {
            agent: Some(id),
            fence: None,
            kind: "failed",
            data: json!({ "reason": format!("its dependency {dep} ended {state}, so it can never start") }),
        })
        .collect();
    evs.extend(claims.iter().map(|c| Ev {
        agent: Some(&c.id),
        fence: Some(c.fence),
        kind: "claimed",
        data: json!({ "attempt": c.attempt }),
    }));
    append_events(&tx, &lease.workspace, Some(&lease.worker), &evs).await?;
    tx.commit().await?;
    Ok(claims)
}

/// Feeds attempt outcomes into the cluster's breaker (`(role, agent, success)` each), on the
/// database's clock, under the workspace's row; returns the `breaker` events of those that
/// changed state, to append in the same transaction.
async fn feed_breaker(
    tx: &tokio_postgres::Transaction<'_>,
    workspace: &str,
    health: &crate::policy::health::HealthPolicy,
    outcomes: &[(String, String, bool)],
) -> Result<Vec<Value>> {
    if outcomes.is_empty() {
        return Ok(vec![]);
    }
    let v: Value = tx.query_one("SELECT breaker FROM workspaces WHERE id = $1 FOR UPDATE", &[&workspace]).await?.get(0);
    let mut b: crate::policy::health::Breakers = serde_json::from_value(v).unwrap_or_default();
    let now = db_ms(tx).await?;
    let mut changed = Vec::new();
    for (role, agent, ok) in outcomes {
        if let Some((key, state)) = b.outcome(health, role, agent, *ok, now) {
            changed.push(json!({ "key": key, "state": state.name() }));
        }
    }
    let v = serde_json::to_value(&b).unwrap_or_else(|_| json!({}));
    tx.execute("UPDATE workspaces SET breaker = $2 WHERE id = $1", &[&workspace, &v]).await?;
    Ok(changed)
}

/// Feeds attempt outcomes into the cluster's breaker on their own (see [`feed_breaker`]);
/// returns the breakers that changed state, by key and new state name.
pub async fn record_outcomes(
    client: &mut Client,
    workspace: &str,
    health: &crate::policy::health::HealthPolicy,
    outcomes: &[(String, String, bool)],
) -> Result<Vec<(String, String)>> {
    let tx = client.transaction().await?;
    let changed = feed_breaker(&tx, workspace, health, outcomes).await?;
    let evs: Vec<Ev> =
        changed.iter().map(|d| Ev { agent: None, fence: None, kind: "breaker", data: d.clone() }).collect();
    append_events(&tx, workspace, None, &evs).await?;
    tx.commit().await?;
    Ok(changed
        .iter()
        .map(|d| (d["key"].as_str().unwrap_or("").into(), d["state"].as_str().unwrap_or("").into()))
        .collect())
}

/// Refuses a change that would leave an agent nobody can run or claim: a queued agent with
/// an owner, a released one still holding a slot, a delay on an agent not going back to
/// the queue.
fn check_change(agent: &str, change: &Change) -> Result<()> {
    let state = change.state.as_deref();
    let bad = |why: &str| Err(ClusterError::Bad(format!("agent {agent}: {why}")));
    if change.release && state.is_none() {
        return bad("giving an agent up needs the state it is left in");
    }
    if change.release && matches!(state, Some("starting" | "running" | "stopping")) {
        return bad("an agent given up cannot be left starting, running or stopping");
    }
    if state == Some("queued") && !change.release {
        return bad("an agent goes back to the queue only by giving it up (release)");
    }
    if change.run_after.is_some() && state != Some("queued") {
        return bad("run_after is only for giving the agent back to the queue");
    }
    Ok(())
}

/// Applies `change` to `agent` if, under its row lock, it is still this worker's with this
/// `fence` and the worker's lease is live; returns the numbers of the events appended. A
/// stale fence or owner changes nothing ([`ClusterError::Stale`]); a lease that ran out,
/// nothing either ([`ClusterError::LeaseLost`]).
pub async fn write(client: &mut Client, lease: &Lease, agent: &str, fence: i64, change: &Change) -> Result<Vec<i64>> {
    check_change(agent, change)?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT owner::text, fence, attempt, mirrored, role FROM agents WHERE workspace = $1 AND id = $2 FOR UPDATE",
            &[&lease.workspace, &agent],
        )
        .await?;
    let Some(row) = row else {
        return Err(ClusterError::Stale { agent: agent.into(), fence, now: "no such agent".into() });
    };
    let (owner, now_fence, attempt): (Option<String>, i64, i32) = (row.get(0), row.get(1), row.get(2));
    let mirrored: Value = row.get(3);
    let role: String = row.get(4);
    if owner.as_deref() != Some(lease.worker.as_str()) || now_fence != fence {
        let now = match owner {
            Some(o) => format!("it has fence {now_fence}, owned by worker {o}"),
            None => format!("it has fence {now_fence}, owned by no worker"),
        };
        return Err(ClusterError::Stale { agent: agent.into(), fence, now });
    }
    live(&tx, lease).await?;
    let lost = change.end_attempt.as_ref().map(|e| e.outcome == "lost");
    tx.execute(
        "UPDATE agents SET state = COALESCE($3, state), body = COALESCE($4, body),
                owner = CASE WHEN $5 THEN NULL ELSE owner END,
                run_after = CASE WHEN $6::float8 IS NULL THEN run_after ELSE now() + make_interval(secs => $6) END,
                lost_streak = CASE WHEN $7::bool IS NULL THEN lost_streak WHEN $7 THEN lost_streak + 1 ELSE 0 END,
                updated_at = now()
         WHERE workspace = $1 AND id = $2",
        &[&lease.workspace, &agent, &change.state, &change.body, &change.release, &change.run_after.map(secs), &lost],
    )
    .await?;
    if let Some(end) = &change.end_attempt {
        tx.execute(
            "UPDATE attempts SET ended_at = clock_timestamp(), outcome = $5, exit_code = $6, detail = $7
             WHERE workspace = $1 AND agent_id = $2 AND n = $3 AND fence = $4",
            &[&lease.workspace, &agent, &attempt, &fence, &end.outcome, &end.exit_code, &end.detail],
        )
        .await?;
    }
    if let Some((file, body)) = &change.handoff {
        tx.execute(
            "INSERT INTO handoffs (workspace, agent_id, attempt, fence, file, body) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (workspace, agent_id, attempt)
             DO UPDATE SET fence = EXCLUDED.fence, file = EXCLUDED.file, body = EXCLUDED.body",
            &[&lease.workspace, &agent, &attempt, &fence, file, body],
        )
        .await?;
    }
    // Mirrored events this agent's row already has from the same local store are not
    // appended again.
    let written = match &change.source {
        Some(src) if mirrored["source"].as_str() == Some(src.as_str()) => mirrored["through"].as_i64(),
        _ => None,
    };
    let fresh = |e: &&NewEvent| match (e.origin, written) {
        (Some(o), Some(w)) => o > w,
        _ => true,
    };
    let evs: Vec<Ev> = change
        .events
        .iter()
        .filter(fresh)
        .map(|e| Ev { agent: Some(agent), fence: Some(fence), kind: &e.kind, data: e.data.clone() })
        .collect();
    if let Some(src) = &change.source
        && let Some(through) = change.events.iter().filter_map(|e| e.origin).max()
        && written.is_none_or(|w| through > w)
    {
        tx.execute(
            "UPDATE agents SET mirrored = $3 WHERE workspace = $1 AND id = $2",
            &[&lease.workspace, &agent, &json!({ "source": src, "through": through })],
        )
        .await?;
    }
    // An escalation the worker's supervisor opened is recorded for the whole workspace, so
    // `corral escalations` and `health` see it from any machine. Numbered under the
    // workspace's row, taken after the agent's, as the sweep does.
    let opened: Vec<&Ev> = evs.iter().filter(|e| e.kind == "escalation_opened").collect();
    if !opened.is_empty() {
        tx.execute("SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", &[&lease.workspace]).await?;
        for e in opened {
            let body = json!({
                "kind": "agent",
                "reason": e.data["reason"],
                "local": e.data["escalation"],
                "worker": lease.worker,
            });
            tx.execute(
                "INSERT INTO escalations (workspace, id, agent_id, body)
                 SELECT $1, COALESCE(max(id), 0) + 1, $2, $3 FROM escalations WHERE workspace = $1",
                &[&lease.workspace, &agent, &body],
            )
            .await?;
        }
    }
    // The outcomes this write records, into the cluster's breaker: a resent write appends
    // no event twice and ends no attempt twice, so it feeds nothing twice.
    let mut evs = evs;
    if let Some(health) = &change.breaker {
        let mut outcomes: Vec<(String, String, bool)> = evs
            .iter()
            .filter(|e| e.kind == "retry_scheduled")
            .map(|_| (role.clone(), agent.to_string(), false))
            .collect();
        if let Some(ok) = change.end_attempt.as_ref().and_then(|e| crate::policy::health::breaker_outcome(&e.outcome)) {
            outcomes.push((role.clone(), agent.to_string(), ok));
        }
        for d in feed_breaker(&tx, &lease.workspace, health, &outcomes).await? {
            evs.push(Ev { agent: None, fence: None, kind: "breaker", data: d });
        }
    }
    let seqs = append_events(&tx, &lease.workspace, Some(&lease.worker), &evs).await?;
    tx.commit().await?;
    Ok(seqs)
}

/// Gives the agents of workers whose lease ended more than `rules.grace` ago back to the
/// queue: their attempt ends `lost`, their fence is bumped (so the old worker's late writes
/// are refused), they do not spend a retry; the `rules.max_lost`-th lost attempt in a row
/// escalates the agent (state `blocked`, an escalation row) instead. Guards: nothing is
/// judged unless this worker's own lease is live and was renewed within `rules.fresh`, it has
/// held it for `rules.settle`, and the database has been up for `rules.settle`; at most
/// `rules.max_requeue` agents per sweep, oldest first.
pub async fn sweep(client: &mut Client, lease: &Lease, rules: &SweepRules) -> Result<Swept> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT heartbeat_at > now() - make_interval(secs => $3),
                    started_at <= now() - make_interval(secs => $4),
                    pg_postmaster_start_time() <= now() - make_interval(secs => $4)
             FROM workers
             WHERE id = $1::text::uuid AND workspace = $2 AND state = 'active' AND lease_until > now()",
            &[&lease.worker, &lease.workspace, &secs(rules.fresh), &secs(rules.settle)],
        )
        .await?;
    let row = row.ok_or_else(|| ClusterError::LeaseLost { worker: lease.worker.clone() })?;
    let (fresh, settled, db_up): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let held = if !fresh {
        Some(format!("this worker has not renewed its lease within {:?}", rules.fresh))
    } else if !settled {
        Some(format!("this worker has held its lease for less than {:?}", rules.settle))
    } else if !db_up {
        Some(format!("the database has been up for less than {:?}", rules.settle))
    } else {
        None
    };
    if held.is_some() {
        tx.commit().await?;
        return Ok(Swept { held, ..Swept::default() });
    }
    tx.execute(
        "UPDATE workers SET state = 'dead'
         WHERE workspace = $1 AND state <> 'dead' AND lease_until < now() - make_interval(secs => $2)",
        &[&lease.workspace, &secs(rules.grace)],
    )
    .await?;
    // Rows an owner is writing right now are skipped: the next sweep takes them.
    let rows = tx
        .query(
            "SELECT a.id, a.fence, a.attempt, a.lost_streak, a.owner::text, w.lease_until::text
             FROM agents a JOIN workers w ON w.id = a.owner
             WHERE a.workspace = $1 AND w.lease_until < now() - make_interval(secs => $2)
             ORDER BY a.seq LIMIT $3
             FOR UPDATE OF a SKIP LOCKED",
            &[&lease.workspace, &secs(rules.grace), &rules.max_requeue],
        )
        .await?;
    let mut out = Swept::default();
    let mut evs = Vec::new();
    let mut escalations = Vec::new();
    for r in &rows {
        let (id, fence, attempt, streak, owner, until): (String, i64, i32, i32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let streak = streak + 1;
        let escalate = streak >= rules.max_lost;
        let detail = json!({ "worker": owner, "lease_until": until, "lost_in_a_row": streak });
        tx.execute(
            "UPDATE attempts SET ended_at = clock_timestamp(), outcome = 'lost', detail = $5
             WHERE workspace = $1 AND agent_id = $2 AND n = $3 AND fence = $4 AND ended_at IS NULL",
            &[&lease.workspace, &id, &attempt, &fence, &detail],
        )
        .await?;
        let state = if escalate { "blocked" } else { "queued" };
        let new_fence: i64 = tx
            .query_one(
                "UPDATE agents SET owner = NULL, fence = fence + 1, state = $3, lost_streak = $4,
                        run_after = now(), updated_at = now()
                 WHERE workspace = $1 AND id = $2 RETURNING fence",
                &[&lease.workspace, &id, &state, &streak],
            )
            .await?
            .get(0);
        if escalate {
            let reason = format!(
                "lost {streak} times in a row: the workers running it stopped renewing their lease (last {owner})"
            );
            escalations.push((id.clone(), json!({ "kind": "lost", "reason": reason })));
            out.escalated.push((id.clone(), new_fence));
            evs.push((id, new_fence, "escalated", json!({ "reason": reason, "attempt": attempt })));
        } else {
            out.requeued.push((id.clone(), new_fence));
            evs.push((id, new_fence, "lost", detail.clone()));
        }
    }
    if !escalations.is_empty() {
        // Escalations are numbered per workspace: under its row, taken after the agents'.
        tx.execute("SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", &[&lease.workspace]).await?;
        for (id, body) in &escalations {
            tx.execute(
                "INSERT INTO escalations (workspace, id, agent_id, body)
                 SELECT $1, COALESCE(max(id), 0) + 1, $2, $3 FROM escalations WHERE workspace = $1",
                &[&lease.workspace, id, body],
            )
            .await?;
        }
    }
    let evs: Vec<Ev> = evs
        .iter()
        .map(|(id, fence, kind, data)| Ev { agent: Some(id), fence: Some(*fence), kind, data: data.clone() })
        .collect();
    append_events(&tx, &lease.workspace, Some(&lease.worker), &evs).await?;
    tx.commit().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_distinct_version_4_uuids() {
        let (a, b) = (new_worker_id(), new_worker_id());
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{a}");
    }

    #[test]
    fn changes_that_would_strand_an_agent_are_refused() {
        let ok = |c: Change| check_change("a", &c).is_ok();
        let queued = || Change { state: Some("queued".into()), release: true, ..Change::default() };
        assert!(ok(queued()));
        assert!(ok(Change { run_after: Some(Duration::from_secs(1)), ..queued() }));
        assert!(ok(Change { state: Some("complete".into()), release: true, ..Change::default() }));
        assert!(ok(Change { state: Some("running".into()), ..Change::default() }));
        assert!(ok(Change::default()));
        assert!(!ok(Change { state: None, ..queued() }));
        assert!(!ok(Change { state: Some("running".into()), ..queued() }));
        assert!(!ok(Change { release: false, ..queued() }));
        let e = check_change("a", &Change { run_after: Some(Duration::ZERO), ..Change::default() }).unwrap_err();
        assert!(e.to_string().starts_with("agent a: run_after"), "{e}");
    }

    #[test]
    fn default_sweep_rules_wait_a_full_lease_and_grace() {
        let r = SweepRules::for_lease(DEFAULT_LEASE, DEFAULT_HEARTBEAT);
        assert_eq!(r.settle, Duration::from_secs(35));
        assert_eq!(r.fresh, Duration::from_secs(10));
        assert_eq!((r.max_lost, r.max_requeue), (3, 20));
    }
}
