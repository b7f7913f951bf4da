//! `[[notify]]` hooks: a command run when an event happens (an agent needs a human, is
//! complete or failed, hits a rate limit or its budget, the run is over). The loop only
//! decides which hooks an event concerns; each hook has a worker thread that runs its
//! commands one at a time, bounded by the hook's timeout, and says how it went as a message
//! (`Msg::Notified`). A hook that is busy queues what comes meanwhile, up to [`QUEUE`];
//! beyond that the newest is dropped and the drop recorded. The loop never waits on a hook.
//!
//! Notifications are handed to the workers only once the batch that recorded their event is
//! committed: a hook never announces what the registry does not hold.

use super::daemon::{Msg, Supervisor};
use crate::config::NotifyOn;
use crate::policy::agent::AgentState;
use crate::protocol::AgentId;
use crate::store::EventRecord;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// How many notifications may wait for a busy hook; more are dropped (and recorded).
pub const QUEUE: usize = 16;
/// The notify log is started afresh (the old one kept as `.1`) past this size.
const LOG_MAX: u64 = 1 << 20;
/// How much of a failed hook's output its event keeps.
const TAIL: usize = 500;

/// One run of one hook.
pub struct Job {
    /// The hook's number: 1 is the first `[[notify]]` table.
    pub hook: usize,
    pub command: Vec<String>,
    pub timeout: Duration,
    pub event: &'static str,
    pub agent: Option<String>,
    pub reason: String,
    /// The event as JSON, for stdin.
    pub body: String,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

/// How a hook's run went: `Err` says why it failed.
pub type Outcome = Result<(), String>;

#[derive(Default)]
pub struct Notifier {
    /// Each hook's worker, started on its first notification.
    workers: HashMap<usize, SyncSender<Job>>,
    /// Decided in this batch, handed to the workers after the commit.
    pending: Vec<Job>,
    /// A run is going on: an agent started, and not every agent has finished since.
    run_active: bool,
    /// The agents started during the current run.
    run_agents: HashSet<AgentId>,
    /// An agent finished in this batch: whether the run is over is looked at before the commit.
    finish_seen: bool,
    /// The supervisor's environment without corral's own variables (what hooks inherit).
    base_env: Option<Vec<(String, String)>>,
    /// The process groups of the hooks running now, shared with the workers.
    running: Running,
}

/// Hooks' process groups running now, by hook; `None` once the supervisor stops: no more
/// hook starts, and those running are killed.
#[derive(Clone, Default)]
pub struct Running(std::sync::Arc<std::sync::Mutex<Option<HashMap<usize, i32>>>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<usize, i32>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Notifier {
    /// The supervisor stops: the hooks running now are killed (their process groups), and
    /// the ones waiting never start. Nothing is left behind to run unwatched.
    pub fn stop(&mut self) {
        self.workers.clear();
        let mut r = self.running.lock();
        for (hook, pgid) in r.take().unwrap_or_default() {
            crate::elog!("corral daemon: stopping: notify hook {hook} was still running; killed");
            // A group our worker started and has not yet reaped.
            let _ = crate::sys::signal_group(pgid, libc::SIGKILL);
        }
    }

    /// The notifications waiting for the commit: hook number, event and agent.
    pub fn pending(&self) -> Vec<(usize, &'static str, Option<&str>)> {
        self.pending.iter().map(|j| (j.hook, j.event, j.agent.as_deref())).collect()
    }

    /// After a restart: a run that was going on goes on, with the agents not yet finished.
    pub fn resume_run(&mut self, agents: &HashMap<AgentId, super::daemon::Live>) {
        self.run_agents =
            agents.iter().filter(|(_, l)| !l.agent.state.is_finished()).map(|(id, _)| id.clone()).collect();
        self.run_active = !self.run_agents.is_empty();
    }
}

/// The hook events an event stands for, most specific first.
fn triggers(sup: &Supervisor, rec: &EventRecord) -> &'static [NotifyOn] {
    match rec.kind.as_str() {
        "complete" => &[NotifyOn::Complete],
        "failed" | "timed_out" => &[NotifyOn::Failed],
        "rate_limited" => &[NotifyOn::RateLimited],
        "budget_exceeded" => &[NotifyOn::Budget],
        "all_finished" => &[NotifyOn::AllFinished],
        "escalation_opened" => {
            let blocked = rec
                .agent_id
                .as_ref()
                .and_then(|id| sup.agents.get(id))
                .is_some_and(|l| matches!(l.agent.state, AgentState::Blocked { .. }));
            if blocked { &[NotifyOn::NeedsHuman] } else { &[NotifyOn::Escalated, NotifyOn::NeedsHuman] }
        }
        _ => &[],
    }
}

/// The reason an event gives, in a line.
fn reason_of(rec: &EventRecord) -> String {
    match rec.data.get("reason").and_then(Value::as_str) {
        Some(r) => r.to_string(),
        None if rec.kind == "complete" => "complete".into(),
        None => rec.kind.replace('_', " "),
    }
}

impl Supervisor {
    /// Looks at an event just recorded: the run's bookkeeping, and the hooks it concerns.
    pub(crate) fn notice(&mut self, rec: &EventRecord) {
        match rec.kind.as_str() {
            "started" => {
                self.notify.run_active = true;
                if let Some(id) = &rec.agent_id {
                    self.notify.run_agents.insert(id.clone());
                }
            }
            k if AgentState::FINISHED_EVENTS.contains(&k) => self.notify.finish_seen = true,
            _ => {}
        }
        if self.ws.config.notify.is_empty() {
            return;
        }
        let on = triggers(self, rec);
        if on.is_empty() {
            return;
        }
        let reason = reason_of(rec);
        let agent = rec.agent_id.as_ref().and_then(|id| self.agents.get(id)).map(|l| &l.agent);
        let base = self.notify.base_env.get_or_insert_with(|| {
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, _)| !k.starts_with("CORRAL_"))
                .collect()
        });
        let mut jobs = Vec::new();
        for (i, hook) in self.ws.config.notify.iter().enumerate() {
            let Some(event) = on.iter().find(|o| hook.on.contains(o)) else { continue };
            let body = json!({
                "event": event.name(),
                "kind": rec.kind,
                "seq": rec.seq,
                "at": rec.at,
                "agentId": rec.agent_id,
                "role": agent.map(|a| a.spec.role.as_str()),
                "task": agent.map(|a| a.spec.task.as_str()),
                "status": agent.map(|a| a.state.name()),
                "reason": reason,
                "data": rec.data,
                "workspace": self.ws.root,
            });
            let mut env = base.clone();
            env.extend([
                ("CORRAL_EVENT".to_string(), event.name().to_string()),
                ("CORRAL_AGENT_ID".to_string(), rec.agent_id.as_ref().map(|a| a.to_string()).unwrap_or_default()),
                ("CORRAL_REASON".to_string(), reason.clone()),
            ]);
            jobs.push(Job {
                hook: i + 1,
                command: hook.command.clone(),
                timeout: hook.timeout(),
                event: event.name(),
                agent: rec.agent_id.as_ref().map(|a| a.to_string()),
                reason: reason.clone(),
                body: body.to_string(),
                env,
                cwd: self.ws.root.clone(),
                log: self.data.root().join("notify.log"),
            });
        }
        self.notify.pending.extend(jobs);
    }

    /// Before a commit: when an agent finished in this batch and nothing of the run is left
    /// (queued, starting, running, waiting, retrying), the run is over: `all_finished`.
    pub(crate) fn check_run_over(&mut self) {
        if !std::mem::take(&mut self.notify.finish_seen) || !self.notify.run_active {
            return;
        }
        if !self.nothing_left() {
            return;
        }
        self.notify.run_active = false;
        let run = std::mem::take(&mut self.notify.run_agents);
        let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
        for id in &run {
            if let Some(l) = self.agents.get(id) {
                let name = if l.agent.state.needs_human() { "needs_human" } else { l.agent.state.name() };
                *counts.entry(name).or_default() += 1;
            }
        }
        let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {}", k.replace('_', " "))).collect();
        let reason =
            format!("{} agent{} finished: {}", run.len(), if run.len() == 1 { "" } else { "s" }, summary.join(", "));
        // Recorded only where a hook asked for it: without hooks the event log stays as it was.
        if self.ws.config.notify.iter().any(|h| h.on.contains(&NotifyOn::AllFinished)) {
            self.emit(None, "all_finished", json!({ "agents": run.len(), "states": counts, "reason": reason }));
        }
    }

    /// After a commit: the notifications it recorded go to their hooks' workers.
    pub(crate) fn dispatch_notifications(&mut self) {
        for job in std::mem::take(&mut self.notify.pending) {
            let hook = job.hook;
            let tx = self.tx.clone();
            let running = self.notify.running.clone();
            let worker = self.notify.workers.entry(hook).or_insert_with(|| start_worker(hook, tx, running));
            match worker.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    let why = format!(
                        "hook {hook} is still running an earlier notification and {QUEUE} more wait; this \
                         {} notification was dropped",
                        job.event
                    );
                    let _ = self.tx.send(Msg::Notified { hook, event: job.event, agent: job.agent, result: Err(why) });
                }
                Err(TrySendError::Disconnected(job)) => {
                    self.notify.workers.remove(&hook);
                    let why = "the hook's worker thread is gone (it is started again for the next one)".to_string();
                    let _ = self.tx.send(Msg::Notified { hook, event: job.event, agent: job.agent, result: Err(why) });
                }
            }
        }
    }

    /// A hook's worker said how a run went: a failure is recorded as `notify_failed`.
    pub(crate) fn notified(&mut self, hook: usize, event: &'static str, agent: Option<String>, result: Outcome) {
        let Err(why) = result else { return };
        let id = agent.and_then(|a| AgentId::parse(&a).ok());
        crate::elog!("corral daemon: notify hook {hook} ({event}) failed: {why}");
        self.emit(id.as_ref(), "notify_failed", json!({ "hook": hook, "event": event, "reason": why }));
    }
}

fn start_worker(hook: usize, tx: tokio::sync::mpsc::UnboundedSender<Msg>, running: Running) -> SyncSender<Job> {
    let (jtx, jrx) = mpsc::sync_channel::<Job>(QUEUE);
    {
        let mut r = running.lock();
        if r.is_none() {
            *r = Some(HashMap::new());
        }
    }
    let spawned = std::thread::Builder::new().name(format!("corral-notify-{hook}")).spawn(move || {
        for job in jrx {
            let Some(result) = run(&job, &running) else { return };
            let _ = tx.send(Msg::Notified { hook: job.hook, event: job.event, agent: job.agent, result });
        }
    });
    if let Err(e) = spawned {
        crate::elog!("corral daemon: cannot start the worker of notify hook {hook}: {e}");
    }
    jtx
}

/// A file holding `body`, read from its start: the hook's stdin, which never blocks on a
/// hook that does not read it.
fn stdin_of(body: &str) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a valid C string; the returned descriptor is checked and owned.
    let fd = unsafe { libc::memfd_create(c"corral-notify".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(body.as_bytes())?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// Appends to the notify log, starting it afresh past [`LOG_MAX`].
fn open_log(path: &std::path::Path) -> Option<std::fs::File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path).ok()
}

/// Runs one hook: in its own process group, the event on stdin, output to the notify log;
/// the whole group killed at the timeout, and whatever it left behind when it ends.
/// `None`: the supervisor is stopping, and it did not run (or was killed).
pub fn run(job: &Job, running: &Running) -> Option<Outcome> {
    let Some((prog, args)) = job.command.split_first() else { return Some(Err("the command is empty".into())) };
    let mut log = open_log(&job.log);
    let start_len = log.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
    if let Some(f) = log.as_mut() {
        let _ = writeln!(
            f,
            "=== corral: hook {} ({}) for {} at {} ===",
            job.hook,
            job.event,
            job.agent.as_deref().unwrap_or("the workspace"),
            crate::protocol::time::rfc3339(crate::protocol::time::now())
        );
    }
    let stdin = match stdin_of(&job.body) {
        Ok(f) => f,
        Err(e) => return Some(Err(format!("cannot hand the event to {prog:?}: {e}"))),
    };
    let out =
        |l: &Option<std::fs::File>| l.as_ref().and_then(|f| f.try_clone().ok()).map_or(Stdio::null(), Stdio::from);
    // Started and registered under the lock: a stopping supervisor either sees the group
    // and kills it, or the hook never starts.
    let mut guard = running.lock();
    let groups = guard.as_mut()?;
    let spawned = Command::new(prog)
        .args(args)
        .current_dir(&job.cwd)
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(out(&log))
        .stderr(out(&log))
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Some(Err(format!("cannot start {prog:?}: {e}"))),
    };
    let pgid = child.id() as i32;
    groups.insert(job.hook, pgid);
    drop(guard);
    let begun = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) => {}
            Err(e) => break Err(format!("lost {prog:?}: {e}")),
        }
        if begun.elapsed() >= job.timeout {
            let _ = crate::sys::signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            break Err(format!(
                "{prog:?} did not finish within its {} timeout; its process group was killed",
                humantime::format_duration(job.timeout)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What the hook left running in its group goes with it (and is reaped: the supervisor
    // is the subreaper of what its children leave behind).
    {
        let mut r = running.lock();
        let stopping = r.is_none();
        if let Some(g) = r.as_mut() {
            g.remove(&job.hook);
        }
        // The group is not reaped yet, so its number is still ours.
        let _ = crate::sys::signal_group(pgid, libc::SIGKILL);
        super::process::reap_group(pgid);
        if stopping {
            return None;
        }
    }
    let failure = match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(match s.code() {
            Some(c) => format!("{prog:?} exited with code {c}"),
            None => format!("{prog:?} was killed by a signal"),
        }),
        Err(e) => Some(e),
    };
    // Its own output only: after the header line, before the footer.
    let tail = failure.as_ref().and_then(|_| {
        let b = std::fs::read(&job.log).ok()?;
        let text = String::from_utf8_lossy(b.get(start_len as usize..)?).into_owned();
        let own = text.split_once('\n').map_or("", |(_, rest)| rest);
        Some(crate::worktree::tail(own, TAIL))
    });
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "corral: hook {} {}", job.hook, failure.as_deref().unwrap_or("done"));
    }
    let Some(why) = failure else { return Some(Ok(())) };
    Some(Err(match tail.filter(|t| !t.is_empty()) {
        Some(t) => format!("{why}; the end of its output:\n{t}"),
        None => why,
    }))
}
