//! The supervisor loop. It owns the registry and the in-memory view of every agent, turns
//! the world (requests, process exits, file writes, deadlines) into inputs for the policy
//! core, and carries out the actions the core returns. One task owns all state, so there
//! are no locks; each batch of inputs is committed once, then replies go out.

use super::{launch, process, views};
use crate::config::Workspace;
use crate::ipc::{DaemonView, Reply, Request};
use crate::policy::agent::{Agent, AgentState};
use crate::policy::lifecycle::{self, Action, Now, Signal};
use crate::protocol::files::{self, StatusFile};
use crate::protocol::{AgentId, DataDir, atomic, time};
use crate::store::{EventRecord, Registry};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::{broadcast, mpsc, oneshot};

pub const EVENTS_PAGE: usize = 10_000;

pub enum Msg {
    Request(Request, oneshot::Sender<Reply>),
    /// The shim of this attempt has ended (its pidfd became readable).
    Exited {
        id: AgentId,
        attempt: u32,
        shim_pid: i32,
    },
    /// A file in `agent-status/` or `handoffs/` was written.
    Fs(PathBuf),
}

/// An agent as the supervisor holds it: the durable record plus what its files say.
pub struct Live {
    pub agent: Agent,
    pub report: Option<StatusFile>,
    pub report_error: Option<String>,
    pub handoffs: Vec<PathBuf>,
}

pub struct Supervisor {
    pub ws: Workspace,
    pub data: DataDir,
    pub store: Box<dyn Registry>,
    pub agents: HashMap<AgentId, Live>,
    pub order: Vec<AgentId>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub events: broadcast::Sender<EventRecord>,
    pub socket: PathBuf,
    pub started_at: String,
    pub started_mono: u64,
    dirty: Vec<AgentId>,
    registry_dirty: bool,
    cleanup: Vec<PathBuf>,
    stopping: bool,
}

pub fn now() -> Now {
    Now {
        wall: time::rfc3339(time::now()),
        mono: time::mono_ms(),
    }
}

impl Supervisor {
    pub fn new(
        ws: Workspace,
        data: DataDir,
        store: Box<dyn Registry>,
        tx: mpsc::UnboundedSender<Msg>,
        socket: PathBuf,
    ) -> Self {
        Self {
            ws,
            data,
            store,
            agents: HashMap::new(),
            order: Vec::new(),
            tx,
            events: broadcast::channel(4096).0,
            socket,
            started_at: time::rfc3339(time::now()),
            started_mono: time::mono_ms(),
            dirty: Vec::new(),
            registry_dirty: true,
            cleanup: Vec::new(),
            stopping: false,
        }
    }

    /// Loads the registry and reconciles it with what is on disk and in the process table.
    /// This is the same path every start takes; there is no separate recovery mode.
    pub fn load(&mut self) -> anyhow::Result<()> {
        for agent in self.store.load()? {
            let id = agent.spec.id.clone();
            self.order.push(id.clone());
            self.agents.insert(
                id.clone(),
                Live {
                    agent,
                    report: None,
                    report_error: None,
                    handoffs: Vec::new(),
                },
            );
            self.refresh_status(&id);
        }
        self.scan_handoffs();
        self.store.begin()?;
        for id in self.order.clone() {
            let live = self.agents[&id].agent.state.has_live_process();
            if live {
                launch::reconcile(self, &id);
            }
        }
        self.admit_queued();
        self.flush()?;
        Ok(())
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) -> anyhow::Result<()> {
        let mut replies = Vec::new();
        while !self.stopping {
            let sleep = self
                .next_deadline()
                .map(|d| d.saturating_sub(time::mono_ms()));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m, &mut replies),
                    None => break,
                },
                _ = async { tokio::time::sleep(std::time::Duration::from_millis(sleep.unwrap_or(0))).await },
                    if sleep.is_some() => self.tick(),
            }
            // Take whatever else is already waiting, so one commit covers the whole batch.
            for _ in 0..1000 {
                match rx.try_recv() {
                    Ok(m) => self.handle(m, &mut replies),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.flush() {
                eprintln!("corral daemon: cannot commit to the registry: {e}");
                for (tx, _) in replies.drain(..) {
                    let _ = tx.send(Reply::err(1, format!("registry write failed: {e}")));
                }
                continue;
            }
            for (tx, reply) in replies.drain(..) {
                let _ = tx.send(reply);
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: Msg, replies: &mut Vec<(oneshot::Sender<Reply>, Reply)>) {
        if let Err(e) = self.store.begin() {
            eprintln!("corral daemon: cannot begin a registry transaction: {e}");
        }
        match msg {
            Msg::Request(req, tx) => {
                let reply = self.request(req);
                replies.push((tx, reply));
            }
            Msg::Exited {
                id,
                attempt,
                shim_pid,
            } => {
                process::reap(shim_pid);
                self.attempt_ended(&id, attempt);
            }
            Msg::Fs(path) => self.file_written(path),
        }
    }

    fn request(&mut self, req: Request) -> Reply {
        match req {
            Request::Spawn(s) => launch::spawn(self, *s),
            Request::Status { ids, role } => views::status(self, &ids, role.as_deref()),
            Request::Show { id } => views::show(self, &id),
            Request::Kill { id, grace_ms } => self.kill(&id, grace_ms),
            Request::Events { after, agent, .. } => {
                let agent = match agent.map(|a| AgentId::parse(&a)).transpose() {
                    Ok(a) => a,
                    Err(e) => return Reply::err(2, e.to_string()),
                };
                match self.store.events(after, agent.as_ref(), EVENTS_PAGE) {
                    Ok(ev) => Reply::ok(ev),
                    Err(e) => Reply::err(1, e.to_string()),
                }
            }
            Request::DaemonStatus => Reply::ok(DaemonView {
                pid: std::process::id(),
                socket: self.socket.display().to_string(),
                data_dir: self.data.root().display().to_string(),
                started_at: self.started_at.clone(),
                uptime_seconds: (time::mono_ms() - self.started_mono) as f64 / 1000.0,
                agents_supervised: self
                    .agents
                    .values()
                    .filter(|l| !l.agent.state.is_finished())
                    .count(),
                agents_total: self.agents.len(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            Request::Stop => {
                self.stopping = true;
                Reply::ok(serde_json::json!({ "stopped": std::process::id() }))
            }
        }
    }

    pub fn lookup(&self, id: &str) -> Result<AgentId, Reply> {
        let id = AgentId::parse(id).map_err(|e| Reply::err(2, e.to_string()))?;
        if self.agents.contains_key(&id) {
            Ok(id)
        } else {
            Err(Reply::err(
                2,
                format!(
                    "no agent {id} in this workspace ({})",
                    self.data.root().display()
                ),
            ))
        }
    }

    fn kill(&mut self, id: &str, grace_ms: u64) -> Reply {
        let id = match self.lookup(id) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let now = now();
        let live = self.agents.get_mut(&id).expect("looked up");
        match lifecycle::kill_requested(&mut live.agent, grace_ms, &now) {
            Ok(actions) => {
                self.apply(&id, actions);
                self.admit_queued();
                Reply::ok(
                    serde_json::json!({ "agentId": id, "status": self.agents[&id].agent.state.name() }),
                )
            }
            Err(e) => Reply::err(1, e),
        }
    }

    /// Carries out what the core decided for one agent.
    pub fn apply(&mut self, id: &AgentId, actions: Vec<Action>) {
        self.mark_dirty(id);
        for a in actions {
            match a {
                Action::Spawn => launch::start_current(self, id),
                Action::SignalGroup { pgid, signal } => {
                    let sig = match signal {
                        Signal::Term => libc::SIGTERM,
                        Signal::Kill => libc::SIGKILL,
                    };
                    if let Err(e) = process::signal_group(pgid, sig) {
                        eprintln!("corral daemon: signal to group {pgid} of {id} failed: {e}");
                    }
                }
                Action::Emit { kind, data } => self.emit(Some(id), kind, data),
            }
        }
    }

    pub fn emit(&mut self, id: Option<&AgentId>, kind: &str, data: Value) {
        let at = time::rfc3339(time::now());
        match self.store.append_event(&at, id, kind, &data) {
            Ok(rec) => {
                let _ = self.events.send(rec);
            }
            Err(e) => eprintln!("corral daemon: cannot record event {kind}: {e}"),
        }
    }

    pub fn mark_dirty(&mut self, id: &AgentId) {
        self.dirty.push(id.clone());
        self.registry_dirty = true;
    }

    pub fn cleanup_after_commit(&mut self, p: PathBuf) {
        self.cleanup.push(p);
    }

    /// Persists changed agents, commits, then rewrites the registry export.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.store.begin()?;
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            if let Some(l) = self.agents.get(&id) {
                self.store.put(&l.agent)?;
            }
        }
        self.store.commit()?;
        for p in self.cleanup.drain(..) {
            let _ = std::fs::remove_file(p);
        }
        if self.registry_dirty {
            self.registry_dirty = false;
            let records: Vec<_> = self
                .order
                .iter()
                .map(|id| views::spawn_record(self, &self.agents[id]))
                .collect();
            if let Err(e) = atomic::write_json_atomic(&self.data.registry_file(), &records) {
                eprintln!(
                    "corral daemon: cannot write {}: {e}",
                    self.data.registry_file().display()
                );
            }
        }
        Ok(())
    }

    /// The earliest deadline of any agent, on the monotonic clock.
    fn next_deadline(&self) -> Option<u64> {
        self.agents
            .values()
            .filter_map(|l| lifecycle::next_deadline(&l.agent))
            .min()
    }

    fn tick(&mut self) {
        let _ = self.store.begin();
        let now = now();
        let due: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, l)| lifecycle::next_deadline(&l.agent).is_some_and(|d| d <= now.mono))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let actions =
                lifecycle::tick(&mut self.agents.get_mut(&id).expect("present").agent, &now);
            self.apply(&id, actions);
        }
    }

    /// An attempt's shim is gone: read its exit record and let the core decide.
    pub fn attempt_ended(&mut self, id: &AgentId, attempt: u32) {
        let Some(live) = self.agents.get(id) else {
            return;
        };
        if live
            .agent
            .attempts
            .iter()
            .any(|a| a.attempt == attempt && a.ended().is_some())
        {
            return;
        }
        let end = launch::read_exit(self, id, attempt);
        self.refresh_status(id);
        let now = now();
        let live = self.agents.get_mut(id).expect("present");
        let reported = live
            .report
            .as_ref()
            .map(|r| (r.status, r.findings.last().map(finding_text)));
        let actions = lifecycle::exited(&mut live.agent, attempt, end, reported, &now);
        self.apply(id, actions);
        for kind in ["start", "exit", "lock"] {
            self.cleanup_after_commit(self.data.attempt_file(id, attempt, kind));
        }
        self.admit_queued();
    }

    /// Re-examines every queued agent (dependencies may have finished).
    pub fn admit_queued(&mut self) {
        loop {
            let now = now();
            let mut changed = false;
            for id in self.order.clone() {
                if !matches!(self.agents[&id].agent.state, AgentState::Queued { .. }) {
                    continue;
                }
                let gate = lifecycle::dependency_gate(&self.agents[&id].agent.spec, |d| {
                    self.agents.get(d).map(|l| &l.agent.state)
                });
                let handoff = self.data.handoff_file(&id, &time::compact(time::now()));
                let before = self.agents[&id].agent.state.clone();
                let actions = lifecycle::admit(
                    &mut self.agents.get_mut(&id).expect("present").agent,
                    gate,
                    &now,
                    handoff,
                );
                if !actions.is_empty() {
                    self.apply(&id, actions);
                }
                changed |= self.agents[&id].agent.state.is_finished() && !before.is_finished();
            }
            // A dependency failing can fail its dependents in turn; settle that chain.
            if !changed {
                break;
            }
        }
    }

    fn file_written(&mut self, path: PathBuf) {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return;
        };
        if path.parent() == Some(self.data.status_dir().as_path()) {
            if let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| AgentId::parse(s).ok())
                && self.agents.contains_key(&id)
            {
                self.refresh_status(&id);
            }
        } else if let Some(owner) =
            DataDir::handoff_owner(&name).and_then(|s| AgentId::parse(s).ok())
            && let Some(live) = self.agents.get_mut(&owner)
            && !live.handoffs.contains(&path)
        {
            live.handoffs.push(path.clone());
            self.emit(Some(&owner), "handoff", serde_json::json!({ "file": path }));
        }
    }

    /// Re-reads an agent's status file; a bad file is recorded against that agent alone.
    pub fn refresh_status(&mut self, id: &AgentId) {
        let path = self.data.status_file(id);
        if !path.exists() {
            return;
        }
        let parsed = files::read_status(&path).and_then(|s| {
            if s.agent_id == id.as_str() {
                Ok(s)
            } else {
                Err(format!(
                    "{}: agentId {:?} does not match the file name",
                    path.display(),
                    s.agent_id
                ))
            }
        });
        let Some(live) = self.agents.get_mut(id) else {
            return;
        };
        let event = match parsed {
            Ok(s) => {
                let changed = live.report.as_ref() != Some(&s);
                live.report_error = None;
                let ev = changed.then(|| {
                    serde_json::json!({
                        "status": s.status, "progress": s.progress, "phase": s.phase,
                        "milestone": s.milestone, "finding": s.findings.last(),
                    })
                });
                live.report = Some(s);
                ev.map(|e| ("status", e))
            }
            Err(e) => {
                let changed = live.report_error.as_ref() != Some(&e);
                live.report_error = Some(e.clone());
                changed.then(|| ("status_unreadable", serde_json::json!({ "reason": e })))
            }
        };
        if let Some((kind, data)) = event {
            self.emit(Some(id), kind, data);
        }
    }

    fn scan_handoffs(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.data.handoff_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(owner) = name
                .to_str()
                .and_then(DataDir::handoff_owner)
                .and_then(|s| AgentId::parse(s).ok())
            else {
                continue;
            };
            if let Some(live) = self.agents.get_mut(&owner) {
                live.handoffs.push(e.path());
            }
        }
    }
}

pub fn finding_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("claim")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}
