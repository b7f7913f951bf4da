//! Attempts whose shim is gone while their process group lives. The supervisor is a child
//! subreaper, so the agent of a shim that died is reparented to it: it adopts the group
//! (relays its output through the copy of the output pipe it kept, collects the leader's
//! exit code with waitpid, stops it on request) and records the exit the shim could not.
//! After a restart the group is not its child: it still adopts it (the exit code is then
//! unknowable and recorded as such). Either way no new attempt starts while a process of
//! the old one lives. It also carries stop requests to the right watcher: the shim, through
//! a signal on its pidfd that holds the grace, or the adopting thread.

use super::daemon::{Msg, Supervisor, now};
use super::process;
use super::relay::{LogSink, Relay};
use super::shim::{ExitRecord, RunFile, RunInfo, RunLine, Watch};
use super::stream::{Observer, StreamArgs, unfinished_line};
use crate::policy::agent::ProcessEnd;
use crate::policy::lifecycle;
use crate::protocol::{AgentId, time};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

type Key = (AgentId, u32);

#[derive(Default)]
pub struct Orphans {
    /// Per running attempt: a pidfd of its shim (stop requests go there) and a copy of its
    /// output pipe's read end.
    held: HashMap<Key, (Option<OwnedFd>, Option<OwnedFd>)>,
    /// Adopted attempts: where their stop requests go (the grace in ms).
    adopted: HashMap<Key, mpsc::Sender<u64>>,
}

impl Orphans {
    pub fn started(&mut self, id: &AgentId, n: u32, shim: Option<&OwnedFd>, out: Option<OwnedFd>) {
        let shim = shim.and_then(|f| f.try_clone().ok());
        self.held.insert((id.clone(), n), (shim, out));
    }

    pub fn is_adopted(&self, id: &AgentId, n: u32) -> bool {
        self.adopted.contains_key(&(id.clone(), n))
    }

    pub fn ended(&mut self, id: &AgentId, n: u32) {
        let k = (id.clone(), n);
        self.held.remove(&k);
        self.adopted.remove(&k);
    }

    /// TERM to the group now and KILL after `grace_ms`, by whoever watches the attempt (so
    /// the group's leftovers get the same grace); the group itself when nobody does.
    pub fn stop(&mut self, id: &AgentId, n: u32, pgid: i32, grace_ms: u64) -> std::io::Result<()> {
        if self.stop_by_watcher(id, n, grace_ms) { Ok(()) } else { process::signal_group(pgid, libc::SIGTERM) }
    }

    /// Hands the stop request to the attempt's watcher; false when it has none.
    pub fn stop_by_watcher(&mut self, id: &AgentId, n: u32, grace_ms: u64) -> bool {
        let k = (id.clone(), n);
        if let Some(tx) = self.adopted.get(&k)
            && tx.send(grace_ms).is_ok()
        {
            return true;
        }
        matches!(self.held.get(&k), Some((Some(pidfd), _))
            if process::pidfd_queue(pidfd, process::stop_signal(), grace_ms).is_ok())
    }
}

/// Whether process group `pgid` (its leader started at `start_time`) still has a live
/// process: a group whose leader is gone cannot have its number reused while a member
/// lives; a leader that is there must be the one that was started.
pub fn group_lives(pgid: i32, start_time: Option<u64>) -> bool {
    if !process::group_has_live(pgid) {
        return false;
    }
    match (process::start_time(pgid), start_time) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => true, // leader gone, members alive: still this group
    }
}

/// The shim of this attempt is gone without an exit record. If its group lives, adopt it
/// (true); otherwise the attempt is over and the caller records it as lost.
pub fn adopt_lost(sup: &mut Supervisor, id: &AgentId, n: u32) -> bool {
    let path = sup.data.attempt_file(id, n, "run");
    let info = RunInfo::read(&path);
    let (Some(start), None) = (info.start, info.exit) else { return false };
    if sup.orphans.is_adopted(id, n) || !group_lives(start.pid, start.start_time) {
        return false;
    }
    let Ok(Some(run)) = RunFile::claim(&path) else { return false };
    let Some(live) = sup.agents.get_mut(id) else { return false };
    let actions = lifecycle::started(&mut live.agent, start.shim_pid, start.pid, &now());
    let cap = live.agent.spec.policy.max_log_size;
    // The copy of the output pipe kept since the start, or else (a supervisor started after
    // every corral process was killed) the one the agent's own processes hold.
    let out = sup.orphans.held.get_mut(&(id.clone(), n)).and_then(|h| h.1.take()).or_else(|| {
        let fd = start.agent_out_fd?;
        process::group_members(start.pid).into_iter().find_map(|pid| {
            let pidfd = process::pidfd_open(pid).ok()?;
            process::pidfd_getfd(&pidfd, fd).ok().filter(process::is_pipe)
        })
    });
    // Through fsio, as the shim opens it: a log replaced by a symlink is set aside.
    let log = crate::protocol::fsio::open_write_replacing(
        sup.data.root(),
        &sup.data.log_file(id),
        crate::protocol::fsio::Mode::Update,
    );
    let sink = match log.and_then(|(f, _)| LogSink::new(f, cap)) {
        Ok(s) => s,
        Err(e) => {
            crate::elog!("corral daemon: cannot open the log of adopted {id}: {e}");
            return false;
        }
    };
    // An adapter agent's stream is read on from where its shim stopped.
    let stream = StreamArgs::of(&live.agent);
    let (run_path, log_path) = (path.clone(), sup.data.log_file(id));
    let (ctl_tx, ctl_rx) = mpsc::channel();
    sup.orphans.adopted.insert((id.clone(), n), ctl_tx);
    let tx = sup.tx.clone();
    let (aid, pid, start_time) = (id.clone(), start.pid, start.start_time);
    let lease = super::watchdog::configured(&sup.data);
    let spawned = std::thread::Builder::new().name(format!("adopt-{id}")).spawn(move || {
        let stream = stream.map(|args| (args, run_path, log_path));
        watch_adopted(aid, n, pid, start_time, run, sink, out, stream, lease, ctl_rx, tx)
    });
    if let Err(e) = spawned {
        crate::elog!("corral daemon: cannot watch adopted {id}: {e}");
        sup.orphans.adopted.remove(&(id.clone(), n));
        return false;
    }
    sup.apply(id, actions);
    let parent = if process::start_time(pid).is_some() { "the supervisor" } else { "nobody" };
    sup.emit(Some(id), "adopted", serde_json::json!({ "attempt": n, "pid": pid, "collector": parent }));
    true
}

#[allow(clippy::too_many_arguments)]
fn watch_adopted(
    id: AgentId,
    n: u32,
    pid: i32,
    start_time: Option<u64>,
    mut run: RunFile,
    sink: LogSink,
    out: Option<OwnedFd>,
    stream: Option<(StreamArgs, PathBuf, PathBuf)>,
    lease: Option<PathBuf>,
    ctl: mpsc::Receiver<u64>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
) {
    let had_pipe = out.is_some();
    let mut relay = Relay::new(out, sink);
    // The line the stream was in the middle of, read before anything is added to the log.
    let pending = stream.as_ref().map(|(_, _, log)| unfinished_line(log)).unwrap_or_default();
    relay.observer = stream.and_then(|(args, run, _)| Observer::resume(&run, args, &pending));
    // Written only between lines: in the middle of one it would cut the agent's line in two
    // (the `adopted` event says it anyway).
    if pending.is_empty() {
        relay.sink.note(&format!("corral: the attempt's shim is gone; the supervisor watches pid {pid}"));
    }
    let pidfd =
        process::pidfd_open(pid).ok().filter(|_| process::start_time(pid) == start_time || start_time.is_none());
    let mut w = Watch::new(pid, None, None, lifecycle::STOP_GRACE_MS);
    w.lease = lease;
    if pidfd.is_none() {
        w.leader_end = Some(unknown("its shim was killed after the process ended"));
    }
    let extra = pidfd.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut reap = |w: &mut Watch| {
        // The leader first: reaping the group would collect its status unseen.
        if w.leader_end.is_some() {
            process::reap_group(pid);
            return;
        }
        match process::try_wait(pid) {
            Ok(Some(end)) => w.leader_end = Some(end),
            Ok(None) => {}
            // Not our child (a supervisor restarted since it started): it has ended once
            // its pidfd says so, and how is not ours to know.
            Err(_) => {
                if pidfd.as_ref().is_some_and(|f| process::poll_readable(&[f.as_raw_fd()], 0)[0]) {
                    w.leader_end = Some(unknown("its shim and the supervisor that started it were killed"));
                }
            }
        }
        process::reap_group(pid);
    };
    let mut ask = |_: &mut Watch| ctl.try_recv().ok();
    let (end, stopped) = w.watch_with(&mut relay, &mut run, &mut reap, &mut ask, extra);
    relay.sink.note(&format!("corral: attempt ended: {}", end.describe()));
    let _ = had_pipe;
    let exit = RunLine::Exit(ExitRecord { end, ended_at: time::rfc3339(time::now()), stopped });
    if let Err(e) = run.append(&exit, Duration::from_secs(3600)) {
        crate::elog!("corral daemon: cannot record the exit of adopted {id}: {e}");
    }
    drop(run);
    let _ = tx.send(Msg::Exited { id, attempt: n, shim_pid: 0 });
}

fn unknown(why: &str) -> ProcessEnd {
    ProcessEnd::Lost { reason: format!("exit code unknown: {why}") }
}
