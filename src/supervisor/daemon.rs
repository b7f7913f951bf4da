//! The supervisor loop. It owns the registry and the in-memory view of every agent, turns
//! the world (requests, process exits, file writes, deadlines) into inputs for the policy
//! core, and carries out the actions the core returns. One task owns all state, so there
//! are no locks; each batch of inputs is committed once, then replies go out.

use super::io::Io;
use super::shim::Handshake;
use super::{launch, process, views};
use crate::config::Workspace;
use crate::ipc::Reply;
use crate::policy::admission;
use crate::policy::agent::{Agent, AgentState, Escalation};
use crate::policy::classify::{self, Rule};
use crate::policy::health::{self, Breakers, HealthPolicy, Resources};
use crate::policy::lifecycle::{self, Action, Now, Signal};
use crate::policy::provider::ProviderLoads;
use crate::protocol::files::{FileStamp, StatusFile};
use crate::protocol::{AgentId, DataDir, time};
use crate::store::{EventRecord, Registry};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use crate::ipc::EVENTS_PAGE;
pub use crate::protocol::files::finding_text;
/// How often held spawns look at memory and load again while those are what holds them.
const RESOURCE_RECHECK_MS: u64 = 2_000;
const BREAKER_KEY: &str = "breaker";
const CAPACITY_KEY: &str = "capacity";
const BOOT_KEY: &str = "boot_id";
/// The providers' rate-limit history and lowered concurrency.
const PROVIDERS_KEY: &str = "provider_loads";
/// A loop turn that starts this much later than its timer asked for, or a wall clock that
/// moved this much more than the monotonic one, means the supervisor did not run meanwhile.
const GAP_MS: u64 = 500;
/// How long the loop lets the rest of the runtime deliver what queued during a pause.
const CATCH_UP_MS: u64 = 20;

/// When a loop turn ended, on both clocks: the next turn tells from it whether the
/// supervisor was stopped or the machine suspended in between.
struct Turn {
    mono: u64,
    wall: std::time::SystemTime,
}

impl Turn {
    fn now(mono: u64) -> Self {
        Self { mono, wall: std::time::SystemTime::now() }
    }

    /// Whether more time passed before `next` than the loop's timer (`sleep`, none: no
    /// deadline) can explain, on the monotonic clock (stopped) or the wall clock
    /// (suspended: the monotonic clock does not count a suspend).
    fn gap_before(&self, next: &Turn, sleep: Option<u64>) -> bool {
        let mono = next.mono.saturating_sub(self.mono);
        let wall = next.wall.duration_since(self.wall).map(|d| d.as_millis() as u64).unwrap_or(0);
        sleep.is_some_and(|s| mono > s.saturating_add(GAP_MS)) || wall > mono.saturating_add(GAP_MS)
    }
}

pub enum Msg {
    Request(crate::ipc::Request, oneshot::Sender<Reply>),
    /// The shim of this attempt has ended (its pidfd became readable).
    Exited {
        id: AgentId,
        attempt: u32,
        shim_pid: i32,
    },
    /// Files in `agent-status/` or `handoffs/` were written (see `watch`).
    Written,
    /// The shim asked for with this `seq` said whether it started the command.
    Launched {
        seq: u64,
        shim_pid: i32,
        result: Handshake,
        /// Its pidfd, when opened while it could not have been replaced (our own child).
        pidfd: Option<OwnedFd>,
    },
    /// The last client connected to the control socket has left (the idle period may begin).
    ClientsGone,
    /// The worktree worker made (or could not make) this agent's worktree.
    Prepared {
        id: AgentId,
        attempt: u32,
        result: super::prepare::Prepared,
    },
    /// Reconcile's pruning of orphaned worktrees is done.
    Pruned {
        removed: Vec<std::path::PathBuf>,
        kept: Vec<std::path::PathBuf>,
    },
    /// The role's verify ran for this attempt.
    Verified {
        id: AgentId,
        attempt: u32,
        result: Result<(), String>,
    },
    /// A worktree agent's listed deliverables were looked up in its branch: those that fail.
    Checked {
        id: AgentId,
        attempt: u32,
        failing: Vec<String>,
    },
    /// A `[[notify]]` hook ran (or could not run, or was dropped) for this event.
    Notified {
        hook: usize,
        event: &'static str,
        agent: Option<String>,
        result: super::notify::Outcome,
    },
}

/// A reply that waits for something to happen (a spawn for its handshake): asked again after
/// every batch until it gives its reply, without holding up anything else.
pub type Hold = Box<dyn FnMut(&mut Supervisor) -> Option<Reply>>;

/// What a request gets: its reply now, or later.
pub enum Answer {
    Now(Reply),
    Hold(Hold),
}

/// A shim asked for and not yet heard from.
pub struct PendingLaunch {
    pub id: AgentId,
    pub attempt: u32,
    /// When to stop waiting for its handshake (monotonic ms).
    pub deadline: u64,
}

/// An agent as the supervisor holds it: the durable record plus what its files say.
pub struct Live {
    pub agent: Agent,
    pub report: Option<StatusFile>,
    pub report_error: Option<String>,
    pub handoffs: Vec<PathBuf>,
    /// The status file version last read: an event that finds the same version is not a
    /// new report.
    pub status_seen: Option<FileStamp>,
    /// The log's length when last looked at, and when (monotonic ms) it was last seen to
    /// grow: output counts as a heartbeat without trusting file times.
    pub log_seen: Option<(u64, Option<u64>)>,
    /// Until when (monotonic ms) a `--delay` holds it, while that is ahead: taken from the
    /// wall time its spec keeps, so it holds across restarts and reboots.
    pub not_before_mono: Option<u64>,
}

impl Live {
    pub fn new(agent: Agent) -> Self {
        Self {
            agent,
            report: None,
            report_error: None,
            handoffs: Vec::new(),
            status_seen: None,
            log_seen: None,
            not_before_mono: None,
        }
    }
}

pub struct Supervisor {
    pub ws: Workspace,
    pub config_mtime: Option<std::time::SystemTime>,
    pub rules: Rc<Vec<Rule>>,
    pub default_rules: Rc<Vec<Rule>>,
    pub health: HealthPolicy,
    pub breaker: Breakers,
    pub escalations: Vec<Escalation>,
    pub data: DataDir,
    pub store: Box<dyn Registry>,
    pub agents: HashMap<AgentId, Live>,
    pub order: Vec<AgentId>,
    /// `order` without the agents `corral clean` took out of the views: what `status`,
    /// the monitor and the default aggregation walk, so cleaned agents cost them nothing.
    pub shown: Vec<AgentId>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub events: broadcast::Sender<EventRecord>,
    pub socket: PathBuf,
    pub started_at: String,
    pub started_mono: u64,
    resource_recheck: Option<u64>,
    /// Rate limits per provider, and the providers whose concurrency a burst lowered.
    pub provider_loads: ProviderLoads,
    dirty: Vec<AgentId>,
    /// Agents whose registry-export line may have changed since the last export.
    registry_pending: Vec<AgentId>,
    /// A hash of each agent's line of `spawn-registry.json` (the writer holds the lines):
    /// only changed lines go to the writer.
    registry_lines: HashMap<AgentId, u64>,
    /// How many agents of `order` the writer has been told of.
    exported: usize,
    escalations_dirty: bool,
    /// Writes the exports and sends the replies (started by `load`).
    exporter: Option<super::export::Exporter>,
    cleanup: Vec<PathBuf>,
    pub stopping: bool,
    /// Sequence number of the newest event.
    pub last_seq: u64,
    /// Forks shims; started on first use, replaced when it fails.
    /// The clock, signals and shims.
    pub io: Box<dyn Io>,
    /// Actions decided and not yet carried out, in order: carried out by the loop, never
    /// from inside the code that decided them.
    work: VecDeque<(AgentId, Action)>,
    /// Queued agents should be looked at again once the work is done.
    admit_wanted: bool,
    /// Shims asked for, by request number, until their handshake arrives.
    pub launches: HashMap<u64, PendingLaunch>,
    pub launch_seq: u64,
    /// A context file made ahead of the next start (see `fsio::Spare`), by the real loop
    /// only.
    pub context_spare: std::sync::Mutex<Option<crate::protocol::fsio::Spare>>,
    /// The start count when a spare was last made (or tried): one try per start, so a
    /// directory that refuses spares is not asked again on every wake.
    spare_made_at: Option<u64>,
    held: Vec<(oneshot::Sender<Reply>, Hold)>,
    /// Files written, gathered by the watcher.
    pub written: super::watch::Pending,
    /// Running attempts' shims and adopted attempts (see `orphans`).
    pub orphans: super::orphans::Orphans,
    /// `corral kill` replies held until the attempt's end is recorded.
    pub held_kills: Vec<super::requests::HeldKill>,
    /// Replies that became ready outside a request (held ones, now answered).
    pub ready_replies: Vec<(oneshot::Sender<Reply>, Reply)>,
    /// Clients connected to the control socket (followers included), counted by the server.
    pub clients: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Since when (monotonic ms) the supervisor has had nothing to do and nobody to serve.
    idle_since: Option<u64>,
    /// Worktrees being made and verifies running, off the loop.
    pub prepare: super::prepare::Preparer,
    /// Events recorded and not yet committed: followers get them after the commit.
    unsent: Vec<EventRecord>,
    /// The data dir and registry this supervisor serves (none on the fake machine).
    pub identity: Option<super::identity::Identity>,
    /// Why it stopped serving: its data dir or registry is no longer the one it started with.
    pub lost: Option<String>,
    /// Registry rows that could not be read: those agents are quarantined (shown, never
    /// touched, their ids never reused).
    pub unreadable: Vec<crate::store::Unreadable>,
    /// Rebuild agents the registry lacks from the data dir's evidence instead of refusing.
    pub rebuild: bool,
    /// When (monotonic ms) every agent's files are looked at again, behind the watch.
    next_reconcile: u64,
    /// `[[notify]]` hooks: what is to be handed to them, and the run `all-finished` ends.
    pub notify: super::notify::Notifier,
    /// Each admission group's limit in force.
    pub group_max: std::collections::BTreeMap<String, usize>,
    /// What `corral parallel`, `pause` and `resume` changed over the configuration.
    pub capacity: admission::Capacity,
}

/// The machine's clock, for code that runs off the loop (the loop itself uses `Supervisor::now`).
pub fn now() -> Now {
    super::io::clock_now()
}

impl Supervisor {
    pub fn new(
        ws: Workspace,
        data: DataDir,
        store: Box<dyn Registry>,
        io: Box<dyn Io>,
        tx: mpsc::UnboundedSender<Msg>,
        socket: PathBuf,
    ) -> Self {
        let started_mono = io.mono_ms();
        let reconcile_ms = ws.config.supervisor.reconcile_ms();
        // Started on a broken corral.toml (on the last good copy): no mtime, so every spawn
        // reads the file again and is refused while it stays broken.
        let config_mtime = match (&ws.config_file, &ws.config_error) {
            (Some(f), None) => {
                if let Err(e) = crate::config::save_last_good(f, data.root()) {
                    crate::elog!("corral daemon: {e}");
                }
                std::fs::metadata(f).and_then(|m| m.modified()).ok()
            }
            _ => None,
        };
        let rules = Rc::new(ws.config.rules());
        let health = ws.config.health();
        let group_max = ws.config.group_limits();
        Self {
            ws,
            config_mtime,
            rules,
            default_rules: Rc::new(classify::default_rules()),
            health,
            breaker: Breakers::default(),
            escalations: Vec::new(),
            data,
            store,
            agents: HashMap::new(),
            order: Vec::new(),
            shown: Vec::new(),
            tx,
            events: broadcast::channel(4096).0,
            socket,
            started_at: time::rfc3339(time::now()),
            started_mono,
            resource_recheck: None,
            provider_loads: ProviderLoads::default(),
            dirty: Vec::new(),
            registry_pending: Vec::new(),
            registry_lines: HashMap::new(),
            exported: 0,
            escalations_dirty: true,
            exporter: None,
            cleanup: Vec::new(),
            written: Default::default(),
            stopping: false,
            last_seq: 0,
            io,
            work: VecDeque::new(),
            admit_wanted: false,
            launches: HashMap::new(),
            launch_seq: 0,
            context_spare: std::sync::Mutex::new(None),
            spare_made_at: None,
            held: Vec::new(),
            orphans: Default::default(),
            held_kills: Vec::new(),
            ready_replies: Vec::new(),
            clients: Default::default(),
            idle_since: None,
            prepare: Default::default(),
            unsent: Vec::new(),
            identity: None,
            lost: None,
            unreadable: Vec::new(),
            rebuild: false,
            next_reconcile: started_mono + reconcile_ms,
            notify: Default::default(),
            group_max,
            capacity: Default::default(),
        }
    }

    pub fn now(&mut self) -> Now {
        self.io.now()
    }

    /// Loads the registry and reconciles it with what is on disk and in the process table.
    /// This is the same path every start takes; there is no separate recovery mode.
    pub fn load(&mut self) -> anyhow::Result<()> {
        self.escalations = self.store.escalations()?;
        if let Some(b) = self.store.get_meta(BREAKER_KEY)?.and_then(|s| serde_json::from_str(&s).ok()) {
            self.breaker = b;
        }
        if let Some(p) = self.store.get_meta(PROVIDERS_KEY)?.and_then(|s| serde_json::from_str(&s).ok()) {
            self.provider_loads = p;
        }
        if let Some(text) = self.store.get_meta(CAPACITY_KEY)? {
            match serde_json::from_str(&text) {
                Ok(c) => self.capacity = c,
                Err(e) => {
                    crate::elog!("corral daemon: the kept capacity changes cannot be read ({e}); using corral.toml's")
                }
            }
            self.apply_capacity();
        }
        self.store.begin()?;
        let loaded = self.store.load()?;
        for u in &loaded.unreadable {
            crate::elog!("corral daemon: registry row {:?} is unreadable and quarantined: {}", u.id, u.reason);
        }
        let mut agents = loaded.agents;
        self.unreadable = loaded.unreadable;
        let known: std::collections::BTreeSet<String> =
            agents.iter().map(|a| a.spec.id.to_string()).chain(self.unreadable.iter().map(|u| u.id.clone())).collect();
        // The data dir's own account of its agents: a registry that lacks some was deleted,
        // emptied or truncated, and is never taken for a fresh start.
        let ev = crate::store::evidence::Evidence::gather(&self.data);
        let missing = ev.missing(&known);
        if !missing.is_empty() {
            if !self.rebuild {
                anyhow::bail!(crate::store::evidence::refusal(&self.data, known.len(), &missing));
            }
            for (id, _) in missing {
                if let Some(a) = crate::store::evidence::rebuild(&self.ws, &self.data, &ev, id) {
                    crate::elog!("corral daemon: rebuilt {id} from the data dir");
                    self.store.put(&a)?;
                    agents.push(a);
                }
            }
        }
        let floor = known.iter().filter_map(|id| crate::store::evidence::id_number(id)).chain([ev.floor]).max();
        self.store.raise_number(floor.unwrap_or(0))?;
        for agent in agents {
            let id = agent.spec.id.clone();
            self.order.push(id.clone());
            if agent.cleaned_at.is_none() {
                self.shown.push(id.clone());
            }
            let mut live = Live::new(agent);
            live.not_before_mono = self.delay_mono(&live.agent);
            self.agents.insert(id.clone(), live);
            self.refresh_status(&id);
        }
        self.notify.resume_run(&self.agents);
        // Files made ahead of need by processes killed before they used them.
        for dir in [self.data.run_dir(), self.data.log_dir(), self.data.context_dir()] {
            crate::protocol::fsio::Spare::sweep(self.data.root(), &dir);
        }
        self.scan_handoffs();
        self.after_reboot()?;
        super::prepare::prune_orphans(self);
        for id in self.order.clone() {
            if self.agents[&id].agent.state.has_live_process() {
                launch::reconcile(self, &id);
            }
        }
        self.tick();
        self.persist()?;
        self.exporter = Some(super::export::Exporter::start(
            self.data.registry_file(),
            self.data.escalations_file(),
            self.identity.clone(),
        )?);
        let mut first = self.export_batch(Vec::new());
        first.rewrite = true;
        // A quarantined agent keeps its line of the last export (marked unreadable): the
        // export never loses an agent because its row cannot be read.
        for u in &self.unreadable {
            let Ok(id) = AgentId::parse(&u.id) else { continue };
            let mut line = ev.export.get(&u.id).cloned().unwrap_or_else(|| {
                serde_json::json!({ "agentId": u.id, "spawnedAt": "", "role": u.role, "task": "",
                                    "expectedHandoff": "", "attempt": 0, "maxRetries": 0 })
            });
            line["status"] = "unreadable".into();
            first.added.push(id.clone());
            first.lines.push((id, line.to_string()));
        }
        self.send_export(first);
        Ok(())
    }

    /// The monotonic clock starts again at each boot: after a reboot the deadlines the
    /// registry holds are from the old clock, so a backoff or a KILL that was pending is
    /// due now rather than after the old machine's uptime.
    fn after_reboot(&mut self) -> anyhow::Result<()> {
        let Some(boot) = time::boot_id() else { return Ok(()) };
        let stored = self.store.get_meta(BOOT_KEY)?;
        if stored.as_deref() == Some(boot.as_str()) {
            return Ok(());
        }
        if stored.is_some() {
            // Rate limits and lowerings timed on the old clock: the provider starts afresh.
            if self.provider_loads != ProviderLoads::default() {
                self.provider_loads = ProviderLoads::default();
                self.save_provider_loads();
            }
            let now = self.io.mono_ms();
            let mut moved = 0;
            for id in self.order.clone() {
                let live = self.agents.get_mut(&id).expect("present");
                match &mut live.agent.state {
                    AgentState::Retrying { next_mono: t, .. } | AgentState::Stopping { hard_kill_mono: t, .. }
                        if *t > now =>
                    {
                        *t = now;
                        moved += 1;
                    }
                    _ => continue,
                }
                self.mark_dirty(&id);
            }
            crate::elog!(
                "corral daemon: the machine restarted since the registry was last written; {moved} pending \
                 deadlines from before are due now"
            );
        }
        self.store.put_meta(BOOT_KEY, &boot)?;
        Ok(())
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) -> anyhow::Result<()> {
        let mut replies = Vec::new();
        let mut last = Turn::now(self.io.mono_ms());
        // The data dir is looked at on every wake, and at least this often.
        let mut look = tokio::time::interval(std::time::Duration::from_secs(1));
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping {
            let sleep = self.next_deadline().map(|d| d.saturating_sub(self.io.mono_ms()));
            let mut due = false;
            tokio::select! {
                // Inputs before deadlines: a deadline is judged only on what has arrived.
                biased;
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m, &mut replies),
                    None => break,
                },
                _ = async { tokio::time::sleep(std::time::Duration::from_millis(sleep.unwrap_or(0))).await },
                    if sleep.is_some() => due = true,
                _ = look.tick() => {}
            }
            if let Some(why) = self.lost.clone().or_else(|| self.identity.as_ref().and_then(|i| i.lost())) {
                // Nothing more is written: the names now lead to another dir (or nowhere).
                crate::elog!("corral daemon: {why}; this supervisor no longer serves it and exits");
                self.lost = Some(why);
                self.stopping = true;
                for (tx, _) in replies.drain(..) {
                    let _ = tx.send(Reply::err(
                        1,
                        "the supervisor's data dir was deleted or replaced; run the command again",
                    ));
                }
                break;
            }
            // Stopped (SIGSTOP, a debugger) or suspended: what queued meanwhile (requests,
            // exits, status and handoff writes) is taken in before any deadline is judged.
            let turn = Turn::now(self.io.mono_ms());
            if last.gap_before(&turn, sleep) {
                self.catch_up(&mut rx, &mut replies).await;
            }
            // Take whatever else is already waiting, so one commit covers the whole batch.
            for _ in 0..1000 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m, &mut replies),
                    Err(_) => break,
                }
            }
            if due {
                self.tick();
                self.stop_if_idle_long();
            }
            self.release_held(&mut replies);

            // A commit that fails (a full disk) is done again with the next one; what the
            // replies say is already true in memory, and reads must keep working meanwhile.
            if let Err(e) = self.persist() {
                crate::elog!("corral daemon: cannot commit to the registry (will retry): {e}");
            }
            // The replies go out once the exports show what they say.
            let batch = self.export_batch(std::mem::take(&mut replies));
            self.send_export(batch);
            // After the replies: the next start finds its context file made.
            self.make_spares();
            last = Turn::now(self.io.mono_ms());
            self.note_idle(last.mono);
        }
        for (tx, _) in std::mem::take(&mut self.held) {
            let _ = tx.send(Reply::err(1, "the supervisor stopped before this could be answered"));
        }
        self.notify.stop();
        Ok(())
    }

    /// Makes the spare context file the next start writes into, when there is none.
    fn make_spares(&mut self) {
        if self.spare_made_at == Some(self.launch_seq) || self.identity.is_none() || self.lost.is_some() {
            return;
        }
        self.spare_made_at = Some(self.launch_seq);
        let Ok(spare) = self.context_spare.get_mut() else { return };
        if spare.is_none() {
            *spare = crate::protocol::fsio::Spare::make(self.data.root(), &self.data.context_dir()).ok();
        }
    }

    /// Nothing to look after: no agent live, queued, waiting or backing off, no shim being
    /// started, no reply held, and no client connected.
    fn idle(&self) -> bool {
        self.clients.load(std::sync::atomic::Ordering::Relaxed) == 0
            && self.launches.is_empty()
            && self.held.is_empty()
            && self.held_kills.is_empty()
            && self.work.is_empty()
            && self.nothing_left()
    }

    /// Nothing of a run is left: no agent queued, starting, running, waiting or backing off.
    /// By the agents' states alone (an agent whose shim or worktree is on its way is not
    /// finished): a late handshake of an attempt that already ended never holds a run open.
    pub(crate) fn nothing_left(&self) -> bool {
        self.active().all(|l| l.agent.state.is_finished())
    }

    /// The agents not cleaned from the views (`shown`), in no particular order: every
    /// unfinished agent is among them (only finished agents are cleaned, and a cleaned agent
    /// retried is shown again), so what counts or waits on live agents walks these, not the
    /// whole history.
    pub fn active(&self) -> impl Iterator<Item = &Live> + '_ {
        // By a field, not by looking each shown id up: these walks run on every loop turn.
        self.agents.values().filter(|l| l.agent.cleaned_at.is_none())
    }

    /// Starts or ends the idle period after a turn; a request (any message) starts it anew.
    fn note_idle(&mut self, now: u64) {
        self.idle_since = if self.idle() { Some(self.idle_since.unwrap_or(now)) } else { None };
    }

    /// Exits (cleanly: the socket removed, the exports written) once idle for `idle_timeout`.
    fn stop_if_idle_long(&mut self) {
        let (Some(since), Some(limit)) = (self.idle_since, self.ws.config.supervisor.idle_timeout()) else { return };
        if self.idle() && self.io.mono_ms().saturating_sub(since) >= limit.as_millis() as u64 {
            crate::elog!(
                "corral daemon: idle for {} (no agent to look after, no client): exiting; the next corral \
                 command starts a supervisor again",
                humantime::format_duration(limit)
            );
            self.stopping = true;
        } else if !self.idle() {
            self.idle_since = None;
        }
    }

    /// After a pause: lets the connections, the pidfd watches and the file watcher deliver
    /// what queued, takes it in, and reads every running agent's status file and the
    /// handoffs directory anew (the watcher's queue may still be behind).
    async fn catch_up(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        replies: &mut Vec<(oneshot::Sender<Reply>, Reply)>,
    ) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(CATCH_UP_MS)).await;
        while let Ok(m) = rx.try_recv() {
            self.handle(m, replies);
        }
        let _ = self.store.begin();
        let live: Vec<AgentId> =
            self.active().filter(|l| l.agent.state.has_live_process()).map(|l| l.agent.spec.id.clone()).collect();
        for id in &live {
            self.refresh_status(id);
        }
        let known: Vec<(AgentId, usize)> = live.iter().map(|id| (id.clone(), self.agents[id].handoffs.len())).collect();
        self.scan_handoffs();
        for (id, before) in known {
            let new: Vec<PathBuf> = self.agents[&id].handoffs[before..].to_vec();
            for path in new {
                self.emit(Some(&id), "handoff", serde_json::json!({ "file": path }));
            }
        }
        self.settle();
    }

    /// Holds a reply until `hold` gives it.
    pub fn hold(&mut self, tx: oneshot::Sender<Reply>, hold: Hold) {
        self.held.push((tx, hold));
    }

    /// Gives the replies whose moment has come.
    pub(crate) fn release_held(&mut self, replies: &mut Vec<(oneshot::Sender<Reply>, Reply)>) {
        replies.append(&mut self.ready_replies);
        if self.held.is_empty() {
            return;
        }
        for (tx, mut hold) in std::mem::take(&mut self.held) {
            if tx.is_closed() {
                continue;
            }
            match hold(self) {
                Some(reply) => replies.push((tx, reply)),
                None => self.held.push((tx, hold)),
            }
        }
    }

    pub(crate) fn handle(&mut self, msg: Msg, replies: &mut Vec<(oneshot::Sender<Reply>, Reply)>) {
        if matches!(msg, Msg::Request(..)) {
            self.idle_since = None;
        }
        self.take(msg, replies);
        self.settle();
    }

    fn take(&mut self, msg: Msg, replies: &mut Vec<(oneshot::Sender<Reply>, Reply)>) {
        if let Err(e) = self.store.begin() {
            crate::elog!("corral daemon: cannot begin a registry transaction: {e}");
        }
        match msg {
            Msg::Request(req, tx) => {
                replies.extend(super::requests::dispatch(self, req, tx));
            }
            Msg::Exited { id, attempt, shim_pid } => {
                if shim_pid > 0 {
                    process::reap(shim_pid);
                    // The adopting thread reports the attempt's end itself.
                    if self.orphans.is_adopted(&id, attempt) || super::orphans::adopt_lost(self, &id, attempt) {
                        return;
                    }
                }
                self.attempt_ended(&id, attempt);
            }
            Msg::Written => {
                // The data dir itself named: it was deleted or moved (the loop looks next).
                let root = self.data.root().to_path_buf();
                for path in super::watch::take(&self.written) {
                    if path == root {
                        if self.identity.is_some() && self.lost.is_none() {
                            self.lost = Some(format!("the data dir {} was deleted or moved away", root.display()));
                        }
                    } else {
                        self.file_written(path);
                    }
                }
            }
            Msg::Launched { seq, shim_pid, result, pidfd } => launch::launched(self, seq, shim_pid, result, pidfd),
            Msg::ClientsGone => {}
            Msg::Prepared { id, attempt, result } => super::prepare::prepared(self, id, attempt, result),
            Msg::Verified { id, attempt, result } => super::prepare::verified(self, id, attempt, result),
            Msg::Checked { id, attempt, failing } => super::prepare::checked(self, id, attempt, failing),
            Msg::Notified { hook, event, agent, result } => self.notified(hook, event, agent, result),
            Msg::Pruned { removed, kept } => super::prepare::pruned(self, removed, kept),
        }
    }

    /// Carries out the queued work, then admission, until neither has anything left. Work
    /// that leads to more work (an attempt that cannot start ends, its agent is retried or
    /// its dependents fail, the next in the queue is admitted) queues it behind, so however
    /// long the chain, nothing recurses.
    pub fn settle(&mut self) {
        loop {
            if let Some((id, action)) = self.work.pop_front() {
                self.perform(&id, action);
            } else if std::mem::take(&mut self.admit_wanted) {
                self.run_admission();
            } else {
                return;
            }
        }
    }

    fn perform(&mut self, id: &AgentId, action: Action) {
        match action {
            Action::Spawn => launch::start_current(self, id),
            Action::SignalGroup { pgid, signal } => {
                let r = match signal {
                    // The watcher of the attempt (its shim) sends the TERM and keeps the
                    // grace for the whole group, leftovers of the leader included.
                    Signal::Term => self.stop_group(id, pgid),
                    Signal::Kill => self.io.signal_group(pgid, Signal::Kill),
                };
                if let Err(e) = r {
                    crate::elog!("corral daemon: signal to group {pgid} of {id} failed: {e}");
                }
            }
            Action::Emit { kind, data } => self.emit(Some(id), kind, data),
            Action::Escalate { reason } => {
                self.open_escalation(id, reason);
            }
            Action::Outcome { success } => self.breaker_outcome(id, success),
            Action::RateLimited { provider } => self.provider_rate_limited(&provider),
        }
    }

    /// Re-reads corral.toml when it changed. A broken file is reported and the last good
    /// configuration stays in force.
    pub fn reload_config(&mut self) -> Result<(), String> {
        let Some(f) = self.ws.config_file.clone() else { return Ok(()) };
        let mtime = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
        if mtime == self.config_mtime {
            return Ok(());
        }
        match crate::config::load(&f) {
            Ok(c) => {
                self.rules = Rc::new(c.rules());
                self.health = c.health();
                self.ws.config = c;
                self.apply_capacity();
                self.ws.config_error = None;
                self.config_mtime = mtime;
                if let Err(e) = crate::config::save_last_good(&f, self.data.root()) {
                    crate::elog!("corral daemon: {e}");
                }
                self.emit(None, "config_reloaded", serde_json::json!({ "file": f }));
                Ok(())
            }
            Err(e) => Err(format!("{e}\n(the supervisor keeps its last good configuration)")),
        }
    }

    /// Until when (monotonic ms) a queued agent's `--delay` holds it, if it still does.
    pub fn delay_mono(&self, agent: &Agent) -> Option<u64> {
        if !matches!(agent.state, AgentState::Queued { .. }) || !agent.attempts.is_empty() {
            return None;
        }
        let at = time::parse(agent.spec.not_before.as_deref()?)?;
        let ms = (at - time::now()).as_millis();
        (ms > 0).then(|| self.io.mono_ms().saturating_add(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// The configuration's limits with what `corral parallel` changed over them.
    pub fn apply_capacity(&mut self) {
        self.health.max_concurrent = self.capacity.max_concurrent(self.ws.config.health().max_concurrent);
        self.group_max = self.capacity.group_limits(self.ws.config.group_limits());
    }

    /// Keeps the run-time capacity changes in the registry (committed with the batch).
    pub fn keep_capacity(&mut self) -> Result<(), String> {
        let text = serde_json::to_string(&self.capacity).map_err(|e| e.to_string())?;
        self.store.put_meta(CAPACITY_KEY, &text).map_err(|e| format!("cannot keep the change in the registry: {e}"))
    }

    /// The registry row of this id could not be read.
    pub fn is_quarantined(&self, id: &str) -> bool {
        self.unreadable.iter().any(|u| u.id == id)
    }

    pub fn lookup(&self, id: &str) -> Result<AgentId, Reply> {
        if let Some(u) = self.unreadable.iter().find(|u| u.id == id) {
            return Err(Reply::err(
                1,
                format!(
                    "agent {id} is unreadable in the registry ({}): it is quarantined and left as it is; every \
                     other agent works. `corral status` shows it",
                    u.reason
                ),
            ));
        }
        if let Ok(exact) = AgentId::parse(id)
            && self.agents.contains_key(&exact)
        {
            return Ok(exact);
        }
        // A prefix or a number: the client's resolver, over the ids known here.
        match crate::ops::ids::resolve(id, self.order.iter().map(AgentId::as_str)) {
            Ok(Some(found)) => Ok(AgentId::parse(found).expect("a known id is valid")),
            Ok(None) => {
                AgentId::parse(id).map_err(|e| Reply::err(2, e.to_string()))?;
                Err(Reply::err(2, format!("no agent {id} in this workspace ({})", self.data.root().display())))
            }
            Err(f) => Err(Reply::err(f.code, f.msg)),
        }
    }

    /// Queues what the core decided for one agent; the loop carries it out (`settle`).
    pub fn apply(&mut self, id: &AgentId, actions: Vec<Action>) {
        self.mark_dirty(id);
        self.work.extend(actions.into_iter().map(|a| (id.clone(), a)));
    }

    fn stop_group(&mut self, id: &AgentId, pgid: i32) -> std::io::Result<()> {
        let a = &self.agents[id].agent;
        let n = a.current().map_or(0, |x| x.attempt);
        let grace = match &a.state {
            AgentState::Stopping { hard_kill_mono, .. } => hard_kill_mono.saturating_sub(self.io.mono_ms()),
            _ => lifecycle::STOP_GRACE_MS,
        };
        if self.orphans.stop_by_watcher(id, n, grace) { Ok(()) } else { self.io.signal_group(pgid, Signal::Term) }
    }

    /// Records a new open escalation for `id`; returns its number.
    pub fn open_escalation(&mut self, id: &AgentId, reason: String) -> u64 {
        self.record_escalation(id, reason, None)
    }

    /// Records a new open escalation, for the agent itself or for a conflict it is in.
    pub fn record_escalation(
        &mut self,
        id: &AgentId,
        reason: String,
        conflict: Option<crate::policy::escalation::ConflictRef>,
    ) -> u64 {
        let mut e = Escalation {
            n: 0,
            agent_id: id.clone(),
            reason: reason.clone(),
            opened_at: time::rfc3339(time::now()),
            resolved_at: None,
            note: None,
            conflict,
            answer: None,
            outcome: None,
        };
        match self.store.add_escalation(&e) {
            Ok(n) => e.n = n,
            Err(err) => crate::elog!("corral daemon: cannot record escalation of {id}: {err}"),
        }
        let n = e.n;
        self.escalations.push(e);
        self.escalations_dirty = true;
        if let Some(live) = self.agents.get_mut(id) {
            live.agent.state.link_escalation(n);
        }
        self.emit(Some(id), "escalation_opened", serde_json::json!({ "escalation": n, "reason": reason }));
        n
    }

    fn breaker_outcome(&mut self, id: &AgentId, success: bool) {
        let now = self.io.mono_ms();
        let role = self.agents.get(id).map(|l| l.agent.spec.role.clone()).unwrap_or_default();
        let changed = self.breaker.outcome(&self.health, &role, id.as_str(), success, now).map(|(key, b)| {
            let mut data = serde_json::to_value(b).unwrap_or_default();
            data["breaker"] = key.into();
            (b.name(), data)
        });
        if (!success || changed.is_some())
            && let Ok(s) = serde_json::to_string(&self.breaker)
        {
            let _ = self.store.put_meta(BREAKER_KEY, &s);
        }
        if let Some((state, data)) = changed {
            self.emit(None, &format!("breaker_{state}"), data);
        }
    }

    pub fn emit(&mut self, id: Option<&AgentId>, kind: &str, data: Value) {
        let at = time::rfc3339(time::now());
        match self.store.append_event(&at, id, kind, &data) {
            Ok(rec) => {
                self.last_seq = rec.seq;
                self.notice(&rec);
                self.unsent.push(rec);
            }
            Err(e) => crate::elog!("corral daemon: cannot record event {kind}: {e}"),
        }
    }

    pub fn mark_dirty(&mut self, id: &AgentId) {
        self.dirty.push(id.clone());
        self.registry_pending.push(id.clone());
    }

    pub fn mark_escalations_dirty(&mut self) {
        self.escalations_dirty = true;
    }

    pub fn cleanup_after_commit(&mut self, p: PathBuf) {
        self.cleanup.push(p);
    }

    /// Writes changed agents to the registry and commits.
    pub fn persist(&mut self) -> anyhow::Result<()> {
        self.check_run_over();
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut seen = std::collections::HashSet::with_capacity(dirty.len());
        dirty.retain(|id| seen.insert(id.clone()));
        let written = (|| {
            self.store.begin()?;
            for id in &dirty {
                if let Some(l) = self.agents.get(id) {
                    self.store.put(&l.agent)?;
                }
            }
            self.store.commit()
        })();
        if let Err(e) = written {
            // Written again next time: memory stays the truth until the store has it.
            self.dirty.extend(dirty);
            return Err(e.into());
        }
        for p in self.cleanup.drain(..) {
            let _ = std::fs::remove_file(p);
        }
        // Followers see an event only once it is committed: one that a supervisor killed
        // before its commit took with it was never seen, and its number may come again.
        for rec in self.unsent.drain(..) {
            let _ = self.events.send(rec);
        }
        self.dispatch_notifications();
        Ok(())
    }

    /// What changed for `spawn-registry.json` and `escalations.txt` since the last batch, with
    /// the replies to send once they are written. Status reports change neither, so a
    /// thousand agents reporting every second cost no rewrites.
    fn export_batch(&mut self, replies: Vec<(oneshot::Sender<Reply>, Reply)>) -> super::export::Batch {
        let added: Vec<AgentId> = self.order[self.exported.min(self.order.len())..].to_vec();
        self.exported = self.order.len();
        let mut lines = Vec::new();
        for id in std::mem::take(&mut self.registry_pending).into_iter().chain(added.iter().cloned()) {
            let Some(live) = self.agents.get(&id) else { continue };
            let line = serde_json::to_string(&views::spawn_record(self, live)).expect("records serialize");
            let hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                line.hash(&mut h);
                h.finish()
            };
            if self.registry_lines.insert(id.clone(), hash) != Some(hash) {
                lines.push((id, line));
            }
        }
        let escalations = std::mem::take(&mut self.escalations_dirty).then(|| {
            self.escalations
                .iter()
                .filter(|e| e.is_open())
                // One line per escalation whatever the reason holds: escaped as shown to a human.
                .map(|e| format!("{}: {}\n", e.agent_id, crate::display::escape(&e.reason)))
                .collect()
        });
        super::export::Batch { added, lines, rewrite: false, escalations, replies }
    }

    fn send_export(&self, batch: super::export::Batch) {
        match &self.exporter {
            Some(x) => x.send(batch),
            None => {
                for (tx, reply) in batch.replies {
                    let _ = tx.send(reply);
                }
            }
        }
    }

    /// The earliest moment anything is due, on the monotonic clock.
    fn next_deadline(&self) -> Option<u64> {
        self.active()
            .filter_map(|l| lifecycle::next_deadline(&l.agent))
            .chain(self.breaker.next_deadline())
            .chain(self.resource_recheck)
            .chain(self.active().filter_map(|l| l.not_before_mono))
            .chain(self.provider_loads.next_step(self.health.provider_recovery_ms))
            .chain(self.launches.values().map(|p| p.deadline))
            .chain(self.idle_deadline())
            .chain([self.next_reconcile])
            .min()
    }

    /// When an idle supervisor exits, unless something happens first.
    fn idle_deadline(&self) -> Option<u64> {
        let limit = self.ws.config.supervisor.idle_timeout()?;
        Some(self.idle_since?.saturating_add(limit.as_millis() as u64))
    }

    /// Looks at every agent's files again, as if each had been written: status files and
    /// handoffs, and the run file of every attempt believed running (its end recorded, or
    /// its shim gone, without the exit being heard). The file watch and the shims' exit
    /// watches are the fast path; this bounds what a missed event (an overflowed inotify
    /// queue, a write through a path no watch sees, a lost wakeup) can delay.
    pub fn reconcile_all(&mut self) {
        // The shown agents: a cleaned one is finished, nothing it writes changes a decision.
        for id in self.shown.clone() {
            // Read again only when the file is not the version last read.
            let stamp = FileStamp::of(&self.data.status_file(&id));
            if stamp.is_some() && stamp != self.agents[&id].status_seen {
                self.refresh_status(&id);
            }
        }
        self.file_written(self.data.handoff_dir());
        let starting: std::collections::HashSet<AgentId> = self.launches.values().map(|p| p.id.clone()).collect();
        for id in self.shown.clone() {
            let live = &self.agents[&id].agent;
            if !live.state.has_live_process() || starting.contains(&id) {
                continue;
            }
            let Some(cur) = live.current() else { continue };
            let (n, shim_pid) = match cur.run {
                crate::policy::agent::AttemptRun::Running { shim_pid, .. } => (cur.attempt, shim_pid),
                _ => continue,
            };
            if self.orphans.is_adopted(&id, n) {
                continue;
            }
            let probe = self.io.probe_run(&self.data.attempt_file(&id, n, "run"));
            if probe.info.exit.is_some() || probe.held == Some(false) {
                crate::elog!("corral daemon: the end of {id} attempt {n} was found by the periodic look, not heard");
                self.take(Msg::Exited { id: id.clone(), attempt: n, shim_pid }, &mut Vec::new());
            }
        }
    }

    pub fn tick(&mut self) {
        let _ = self.store.begin();
        let now = self.now();
        if now.mono >= self.next_reconcile {
            self.next_reconcile = now.mono + self.ws.config.supervisor.reconcile_ms();
            self.reconcile_all();
        }
        launch::overdue_handshakes(self, now.mono);
        for key in self.breaker.advance(now.mono) {
            let b = &self.breaker.by_key[&key];
            let mut data = serde_json::to_value(b).unwrap_or_default();
            data["breaker"] = key.into();
            self.emit(None, &format!("breaker_{}", b.name()), data);
        }
        self.resource_recheck = None;
        let restored = self.provider_loads.advance(now.mono, self.health.provider_recovery_ms);
        if !restored.is_empty() {
            self.save_provider_loads();
        }
        for (provider, back_to) in restored {
            self.emit(None, "provider_restored", serde_json::json!({ "provider": provider, "maxConcurrent": back_to }));
        }
        // A delay that is over holds no more (and is no deadline of the loop's any more).
        for live in self.agents.values_mut() {
            if live.not_before_mono.is_some_and(|t| t <= now.mono) {
                live.not_before_mono = None;
            }
        }
        let due: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, l)| lifecycle::next_deadline(&l.agent).is_some_and(|d| d <= now.mono))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            // Output counts as a heartbeat: look at the log before deciding it is stale.
            if self.agents[&id].agent.state == AgentState::Running
                && let Some(mono) = self.output_mono(&id)
            {
                lifecycle::output_seen(&mut self.agents.get_mut(&id).expect("present").agent, mono);
                self.mark_dirty(&id);
            }
            if self.agents[&id].agent.state == AgentState::Running
                && !self.agents[&id].agent.spec.adapter.is_none()
                && let Some(n) = self.agents[&id].agent.current().map(|a| a.attempt)
                && let Some(mono) = super::stream::StreamInfo::read(&self.data.attempt_file(&id, n, "run")).progress
            {
                lifecycle::progress_seen(&mut self.agents.get_mut(&id).expect("present").agent, mono);
            }
            let actions = lifecycle::tick(&mut self.agents.get_mut(&id).expect("present").agent, &now);
            if !actions.is_empty() {
                self.apply(&id, actions);
            }
        }
        self.admit_queued();
        self.settle();
    }

    /// When the attempt's output last came, on the monotonic clock, as its watcher stamped
    /// it in the run file when it relayed the output. The stamp is written at most every
    /// `STAMP_EVERY_MS`, so output may have come up to that much later: it counts as that
    /// late (never later than now), so an agent is never judged stale early.
    fn output_mono(&mut self, id: &AgentId) -> Option<u64> {
        let n = self.agents.get(id)?.agent.current()?.attempt;
        let stamp = super::shim::RunInfo::output_stamp(&self.data.attempt_file(id, n, "run"))?;
        Some((stamp + super::relay::STAMP_EVERY_MS).min(self.io.mono_ms()))
    }

    /// Takes the log's measure when an attempt starts (or is found again after a
    /// restart), so that only later output counts as a heartbeat.
    pub fn measure_log(&mut self, id: &AgentId) {
        let len = self.log_len(id);
        if let Some(live) = self.agents.get_mut(id) {
            live.log_seen = Some((len, None));
        }
    }

    fn log_len(&self, id: &AgentId) -> u64 {
        std::fs::metadata(self.data.log_file(id)).map(|m| m.len()).unwrap_or(0)
    }

    /// An agent of `provider` hit its rate limit: a burst lowers the provider's concurrency.
    fn provider_rate_limited(&mut self, provider: &str) {
        let running = self.provider_counts().get(provider).copied().unwrap_or(0);
        let (base, rec) = (self.health.provider_max_concurrent, self.health.provider_recovery_ms);
        let mono = self.io.mono_ms();
        let lowering = self.provider_loads.rate_limited(provider, mono, running, base, rec);
        self.save_provider_loads();
        if let Some(l) = lowering
            && l.limit < l.ceiling
        {
            let data = serde_json::json!({
                "provider": provider, "maxConcurrent": l.limit, "from": l.ceiling, "rateLimits": l.hits,
            });
            self.emit(None, "provider_lowered", data);
        }
    }

    /// Keeps the providers' loads in the registry, so a restarted supervisor admits their
    /// agents as this one would have.
    fn save_provider_loads(&mut self) {
        match serde_json::to_string(&self.provider_loads) {
            Ok(s) => {
                if let Err(e) = self.store.put_meta(PROVIDERS_KEY, &s) {
                    crate::elog!("corral daemon: cannot record the providers' limits: {e}");
                }
            }
            Err(e) => crate::elog!("corral daemon: cannot record the providers' limits: {e}"),
        }
    }

    /// How many agents of each provider have a live process.
    pub fn provider_counts(&self) -> HashMap<&'static str, usize> {
        let per = admission::Per { providers: true, groups: false };
        admission::Counts::of(self.active().map(|l| &l.agent), 0, per).by_provider
    }

    /// The rules admission applies now.
    pub fn limits(&self) -> admission::Limits<'_> {
        admission::Limits {
            health: &self.health,
            breakers: &self.breaker,
            groups: &self.group_max,
            capacity: &self.capacity,
        }
    }

    /// What admission reads that a start does not change, as of `mono`.
    pub fn admission_pass(&self, mono: u64) -> admission::Pass {
        admission::Pass {
            mono,
            resources: self.resources(),
            budget: self.ws.config.budget.max_cost_usd.and_then(|max| {
                let spent = self.agents.values().filter_map(|l| super::views::agent_totals(&l.agent).cost_usd).sum();
                lifecycle::workspace_budget_gate(Some(max), spent)
            }),
            holds: lifecycle::provider_holds(self.active().map(|l| &l.agent), mono),
            lowered: self.provider_loads.lowered(mono, self.health.provider_recovery_ms),
        }
    }

    /// What a start changes, counted now.
    pub fn admission_counts(&self, pass: &admission::Pass) -> admission::Counts {
        let per = self.limits().per(pass);
        admission::Counts::of(self.active().map(|l| &l.agent), self.open_escalations(), per)
    }

    pub fn running_count(&self) -> usize {
        self.active().filter(|l| l.agent.state.has_live_process()).count()
    }

    pub fn open_escalations(&self) -> usize {
        self.escalations.iter().filter(|e| e.is_open()).count()
    }

    pub fn resources(&self) -> Resources {
        let mut r = Resources::default();
        if self.health.min_free_memory.is_some() {
            r.free_memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            });
        }
        if self.health.max_load.is_some() {
            r.load =
                std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| t.split_whitespace().next()?.parse().ok());
        }
        r
    }

    /// Starts queued agents, in spawn order, while dependencies and health allow.
    /// Asks for queued agents to be looked at again once the current work is done.
    pub fn admit_queued(&mut self) {
        self.admit_wanted = true;
    }

    /// Starts queued agents, higher priority first and in spawn order among equals, while
    /// their dependencies and the holds allow. Starting is queued work: admission decides,
    /// `settle` starts.
    fn run_admission(&mut self) {
        loop {
            let now = self.now();
            let mut changed = false;
            // In spawn order (`shown` keeps it), then by priority.
            let mut queued: Vec<AgentId> = self
                .shown
                .iter()
                .filter(|id| matches!(self.agents[*id].agent.state, AgentState::Queued { .. }))
                .cloned()
                .collect();
            admission::by_priority(&mut queued, |id| self.agents[id].agent.spec.priority);
            let pass = self.admission_pass(now.mono);
            // Counted once, and again only after something started: a long queue held by
            // the gate costs one pass, not one pass per queued agent.
            let mut counts = None;
            for id in queued {
                if !matches!(self.agents[&id].agent.state, AgentState::Queued { .. }) {
                    continue;
                }
                let mut gate = lifecycle::dependency_gate(&self.agents[&id].agent.spec, |d| {
                    self.agents.get(d).map(|l| &l.agent.state)
                });
                if gate == lifecycle::Gate::Ready {
                    let counts = counts.get_or_insert_with(|| self.admission_counts(&pass));
                    let live = &self.agents[&id];
                    let hold = admission::hold(&live.agent.spec, live.not_before_mono, &self.limits(), &pass, counts);
                    if let Some(why) = hold {
                        if health::resources_short(&self.health, &pass.resources) {
                            self.resource_recheck = Some(now.mono + RESOURCE_RECHECK_MS);
                        }
                        gate = lifecycle::Gate::Wait(why);
                    }
                }
                let ready = gate == lifecycle::Gate::Ready;
                // Named only for an attempt that begins: a queue held by the gate reads no clock.
                let handoff =
                    if ready { self.data.handoff_file(&id, &time::compact(time::now())) } else { PathBuf::new() };
                let before = self.agents[&id].agent.state.clone();
                let actions =
                    lifecycle::admit(&mut self.agents.get_mut(&id).expect("present").agent, gate, &now, handoff);
                if ready {
                    self.breaker.started(&self.health, &self.agents[&id].agent.spec.role, id.as_str());
                }
                if !actions.is_empty() {
                    self.apply(&id, actions);
                    counts = None;
                }
                changed |= self.agents[&id].agent.state.is_finished() && !before.is_finished();
            }
            // A dependency failing can fail its dependents in turn; settle that chain.
            if !changed {
                break;
            }
        }
    }
}

#[cfg(test)]
mod turn_tests {
    use super::Turn;
    use std::time::{Duration, SystemTime};

    fn at(mono: u64, wall_ms: u64) -> Turn {
        Turn { mono, wall: SystemTime::UNIX_EPOCH + Duration::from_millis(wall_ms) }
    }

    #[test]
    fn a_turn_late_for_its_timer_or_a_wall_jump_is_a_gap() {
        let last = at(10_000, 1_000_000);
        // On time, or a little late under load: no gap.
        assert!(!last.gap_before(&at(11_000, 1_001_000), Some(1_000)));
        assert!(!last.gap_before(&at(11_300, 1_001_300), Some(1_000)));
        // Stopped past its timer: the monotonic clock says so.
        assert!(last.gap_before(&at(15_000, 1_005_000), Some(1_000)));
        // A message woke it long after the last turn, but no deadline was near: no gap.
        assert!(!last.gap_before(&at(70_000, 1_060_000), None));
        // Suspended: the wall clock moved an hour, the monotonic one a second.
        assert!(last.gap_before(&at(11_000, 4_600_000), None));
    }
}
