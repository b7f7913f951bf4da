//! Starting attempts and finding them again. `spawn` validates a request and records the
//! agent; `start_current` records the current attempt and asks for its shim, whose handshake
//! comes back later (`launched`); `reconcile` re-attaches to attempts that were running when
//! a supervisor died. Nothing here waits for a shim.

use super::daemon::{Answer, Live, PendingLaunch, Supervisor};
use super::io::{HANDSHAKE_TIMEOUT_MS, no_word_reason};
use super::shim::{Handshake, ShimArgs, StopReason};
use crate::ipc::{Reply, SpawnReply, SpawnRequest};
use crate::policy::agent::{Agent, AgentSpec, AgentState, AttemptRun, ProcessEnd};
use crate::policy::{admission, lifecycle};
use crate::protocol::context::{ContextInput, render};
use crate::protocol::files::FileStamp;
use crate::protocol::ids::validate_role;
use crate::protocol::{AgentId, DataDir, atomic, fsio, time};
use std::os::fd::OwnedFd;
use std::path::Path;

/// The reply to a spawn: once the agent is started (its handshake came back), queued, or
/// ended without starting. Until then it is held, and the loop goes on with other work.
fn spawn_reply(sup: &Supervisor, id: &AgentId) -> Option<Reply> {
    let a = &sup.agents.get(id)?.agent;
    let starting = a.state.has_live_process() && a.current().is_some_and(|x| x.run == AttemptRun::Starting);
    // An agent whose worktree is being made is recorded and on its way: the caller need
    // not wait for git.
    if starting && !sup.stopping && !sup.prepare.preparing.contains(id) {
        return None;
    }
    Some(Reply::ok(SpawnReply {
        agent_id: id.to_string(),
        status: a.state.name().to_string(),
        pid: a.current().and_then(|x| x.pid()).filter(|_| a.state.has_live_process()),
        reason: a.state.reason().map(str::to_string),
        warning: None,
    }))
}

pub fn spawn(sup: &mut Supervisor, req: SpawnRequest) -> Answer {
    let id = match record(sup, req) {
        Ok(id) => id,
        Err(reply) => return Answer::Now(reply),
    };
    Answer::Hold(Box::new(move |sup: &mut Supervisor| {
        spawn_reply(sup, &id).or_else(|| (!sup.agents.contains_key(&id)).then(|| Reply::err(1, "agent vanished")))
    }))
}

/// Validates and records a new agent and asks for it to be admitted; its id, or the refusal.
fn record(sup: &mut Supervisor, req: SpawnRequest) -> Result<AgentId, Reply> {
    if let Some(key) = req.idempotency_key.as_deref() {
        if key.is_empty() || key.len() > 200 {
            return Err(Reply::err(2, "idempotency key must be 1 to 200 characters"));
        }
        let seen = sup.order.iter().find(|id| sup.agents[*id].agent.spec.idempotency_key.as_deref() == Some(key));
        if let Some(id) = seen {
            return match differs(&sup.agents[id].agent.spec, &req) {
                None => Ok(id.clone()),
                Some(what) => Err(Reply::err(
                    2,
                    format!(
                        "idempotency key {key:?} already belongs to {id}, spawned with {what}; nothing was spawned. \
                         Repeat the same request to get {id} back, or use a new key for a new request"
                    ),
                )),
            };
        }
    }
    let spec = validate(sup, req)?;
    let id = spec.id.clone();
    let now = sup.now();
    let agent = Agent {
        spec,
        state: AgentState::Queued { reason: "new".into() },
        attempts: Vec::new(),
        updated_at: now.wall.clone(),
        budget_start: 0,
        next_context: None,
        base_commit: None,
        cleaned_at: None,
    };
    sup.order.push(id.clone());
    sup.shown.push(id.clone());
    let mut live = Live::new(agent);
    live.not_before_mono = sup.delay_mono(&live.agent);
    sup.agents.insert(id.clone(), live);
    let s = &sup.agents[&id].agent.spec;
    sup.emit(
        Some(&id),
        "spawned",
        serde_json::json!({ "role": s.role, "task": s.task, "command": s.command, "after": s.after }),
    );
    // New agents take the same way in as every queued one: dependencies, then health.
    sup.mark_dirty(&id);
    sup.admit_queued();
    Ok(id)
}

/// How a request differs from the spawn that first used its idempotency key (role, task,
/// command), said as "X (here Y)".
fn differs(spec: &AgentSpec, req: &SpawnRequest) -> Option<String> {
    if spec.role != req.role {
        return Some(format!("role {} (here {})", spec.role, req.role));
    }
    if spec.task != req.task {
        return Some(format!("another task ({:?}; here {:?})", clip(&spec.task), clip(&req.task)));
    }
    let same_command =
        if req.command.is_empty() { spec.template } else { !spec.template && spec.command == req.command };
    if !same_command {
        let shown = |t: bool, c: &[String]| if t { "the role's command".to_string() } else { format!("{c:?}") };
        return Some(format!(
            "another command ({}; here {})",
            clip(&shown(spec.template, &spec.command)),
            clip(&shown(req.command.is_empty(), &req.command))
        ));
    }
    None
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn validate(sup: &mut Supervisor, req: SpawnRequest) -> Result<AgentSpec, Reply> {
    let bad = |m: String| Reply::err(2, m);
    validate_role(&req.role).map_err(|e| bad(e.to_string()))?;
    if req.task.trim().is_empty() {
        return Err(bad("the task is empty; say what the agent should do with --task".into()));
    }
    let (role_command, mut policy) = sup.ws.config.role(&req.role);
    if let Some(t) = req.timeout_ms {
        policy.attempt_timeout_ms = t;
    }
    if let Some(n) = req.max_retries {
        crate::config::check_retries(n.into()).map_err(|e| bad(format!("max_retries: {e}")))?;
        policy.max_retries = n;
    }
    let (command, template) = if !req.command.is_empty() {
        (req.command, false)
    } else {
        match role_command {
            Some(c) if !c.is_empty() => (c, true),
            _ => {
                return Err(bad(format!(
                    "no command for role {}: pass one after `--`, or set `command` under [roles.{}] in {}",
                    req.role,
                    req.role,
                    sup.ws.root.join(crate::config::CONFIG_FILE).display()
                )));
            }
        }
    };
    let cwd = Path::new(&req.cwd);
    if !cwd.is_dir() {
        return Err(bad(format!("working directory {} does not exist", cwd.display())));
    }
    let mut after = Vec::new();
    for a in &req.after {
        // As everywhere: the whole id, its number or a unique prefix.
        let id = sup.lookup(a).map_err(|r| bad(format!("--after {a}: {}", r.error.unwrap_or_default())))?;
        after.push(id);
    }
    let id = match &req.id {
        Some(given) => {
            let id = AgentId::parse(given).map_err(|e| bad(e.to_string()))?;
            if sup.agents.contains_key(&id) || sup.is_quarantined(id.as_str()) {
                return Err(bad(format!("agent id {id} is already taken; choose another --id")));
            }
            id
        }
        None => loop {
            let n = sup.store.next_number().map_err(|e| Reply::err(1, e.to_string()))?;
            let id = AgentId::generated(n, &req.role);
            if !sup.agents.contains_key(&id) && !sup.is_quarantined(id.as_str()) {
                break id;
            }
        },
    };
    let adapter = match req.adapter.as_deref() {
        Some(name) => crate::adapter::Adapter::parse(name).ok_or_else(|| {
            bad(format!("--adapter {name:?} is not known; use one of {}", crate::adapter::Adapter::NAMES.join(", ")))
        })?,
        None => policy.adapter.unwrap_or_else(|| crate::adapter::Adapter::from_program(&command[0])),
    };
    policy.worktree = req.worktree.unwrap_or(policy.worktree);
    let (worktree, cwd) = if policy.worktree {
        let (w, inner) = super::prepare::plan(sup, &id, cwd, policy.base.as_deref()).map_err(bad)?;
        (Some(w), inner)
    } else {
        (None, cwd.to_path_buf())
    };
    let group = match req.group {
        Some(g) => {
            crate::protocol::ids::validate_group(&g).map_err(|e| bad(format!("--group: {e}")))?;
            Some(g)
        }
        None => sup.ws.config.role_group(&req.role),
    };
    let priority = admission::check_priority(req.priority.into()).map_err(|e| bad(format!("--priority: {e}")))?;
    let spawned = time::now();
    let not_before = match req.delay_ms.filter(|d| *d > 0) {
        None => None,
        Some(ms) => {
            let d = jiff::SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX));
            let at = spawned.checked_add(d).map_err(|_| bad("--delay is too long".into()))?;
            Some(time::rfc3339(at))
        }
    };
    let from = policy.port_base.unwrap_or(crate::policy::role::FIRST_PORT);
    let ports = super::prepare::reserve_ports(sup, from, policy.ports());
    if ports.is_none() && policy.ports() > 0 {
        return Err(Reply::err(
            1,
            format!(
                "no {} free ports from {from} up for the agent (port_base): stop what holds them, or set another \
                 port_base",
                policy.ports()
            ),
        ));
    }
    let mut env = req.caller_env;
    env.retain(|(k, _)| !k.starts_with("CORRAL_"));
    for (k, v) in req.env {
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    }
    Ok(AgentSpec {
        id,
        role: req.role,
        task: req.task,
        scope: req.scope,
        constraints: req.constraints,
        after,
        command,
        template,
        cwd,
        env,
        policy,
        spawned_at: time::rfc3339(spawned),
        idempotency_key: req.idempotency_key,
        adapter,
        worktree,
        ports,
        group,
        priority,
        not_before,
    })
}

/// Starts the process of the agent's current attempt: recorded durably first, then the
/// shim is asked for. Its handshake comes back as a message (`launched`).
pub fn start_current(sup: &mut Supervisor, id: &AgentId) {
    let Some(n) = sup.agents.get(id).and_then(|l| l.agent.current()).map(|a| a.attempt) else { return };
    take_baselines(sup, id);
    // Durable before it runs: a supervisor that dies now finds the attempt and its lock.
    if let Err(e) = sup.persist() {
        // Starting it anyway could leave an agent running that a restarted supervisor
        // knows nothing about: it does not start, and says why.
        crate::elog!("corral daemon: cannot record attempt of {id} before starting it: {e}");
        sup.attempt_not_started(id, n, format!("the registry cannot be written ({e})"));
        return;
    }
    let _ = sup.store.begin();
    if super::prepare::needed(sup, id) {
        return super::prepare::begin(sup, id, n);
    }
    let mut args = match shim_args(sup, id) {
        Ok(a) => a,
        Err(reason) => return sup.attempt_not_started(id, n, reason),
    };
    sup.launch_seq += 1;
    args.seq = sup.launch_seq;
    // A little longer than a directly started shim is given, so that its own answer (with
    // what its run file says) comes first.
    let deadline = sup.io.mono_ms().saturating_add(HANDSHAKE_TIMEOUT_MS + 1_000);
    sup.launches.insert(args.seq, PendingLaunch { id: id.clone(), attempt: n, deadline });
    sup.io.start_shim(args);
}

/// A shim answered: the attempt runs (watch it) or did not start (it ends as not started).
/// An answer that comes after its deadline, or for an attempt that is no longer starting,
/// changes nothing.
pub fn launched(sup: &mut Supervisor, seq: u64, shim_pid: i32, result: Handshake, pidfd: Option<OwnedFd>) {
    let Some(p) = sup.launches.remove(&seq) else { return };
    let (id, n) = (p.id, p.attempt);
    let starting = sup
        .agents
        .get(&id)
        .and_then(|l| l.agent.current())
        .is_some_and(|a| a.attempt == n && a.run == AttemptRun::Starting);
    if !starting {
        return;
    }
    match result {
        Handshake::Started { pid, out_fd } => {
            let run = sup.data.attempt_file(&id, n, "run");
            let pidfd = pidfd.or_else(|| sup.io.open_shim(shim_pid, &run));
            let out = copy_out(pidfd.as_ref(), out_fd);
            sup.orphans.started(&id, n, pidfd.as_ref(), out);
            sup.io.watch_exit(&id, n, shim_pid, &run, pidfd);
            sup.measure_log(&id);
            let now = sup.now();
            let live = sup.agents.get_mut(&id).expect("present");
            let actions = lifecycle::started(&mut live.agent, shim_pid, pid, &now);
            sup.apply(&id, actions);
        }
        // Ended like any other attempt, so the policy classifies it like any other.
        Handshake::NotStarted { reason } => sup.attempt_not_started(&id, n, reason),
    }
}

/// Shims that have not answered in time: if one recorded a start, it owns the attempt and
/// its exit record will say how it ended; otherwise the attempt did not start.
pub fn overdue_handshakes(sup: &mut Supervisor, mono: u64) {
    if sup.launches.is_empty() {
        return;
    }
    let overdue: Vec<u64> = sup.launches.iter().filter(|(_, p)| p.deadline <= mono).map(|(s, _)| *s).collect();
    for seq in overdue {
        let Some(p) = sup.launches.get(&seq) else { continue };
        let run = sup.data.attempt_file(&p.id, p.attempt, "run");
        let result = match sup.io.probe_run(&run).info.start {
            Some(s) => (s.shim_pid, Handshake::Started { pid: s.pid, out_fd: None }),
            None => (0, Handshake::NotStarted { reason: no_word_reason() }),
        };
        launched(sup, seq, result.0, result.1, None);
    }
}

/// What the agent's files look like before the attempt starts, so that what it writes is
/// told from what earlier attempts left (by content identity, not by file times).
fn take_baselines(sup: &mut Supervisor, id: &AgentId) {
    sup.take_evidence_baseline(id);
    let status = FileStamp::of(&sup.data.status_file(id));
    let live = &sup.agents[id];
    let n = live.agent.current().map(|a| a.attempt).unwrap_or(1);
    let mut before: Vec<String> = live.handoffs.iter().filter_map(|p| Some(p.file_name()?.to_str()?.into())).collect();
    if n > 1 {
        // A handoff an earlier attempt wrote just before it ended may not have been
        // announced yet: look at the directory itself (retries only; a first attempt has
        // nothing before it).
        if let Ok(rd) = std::fs::read_dir(sup.data.handoff_dir()) {
            for e in rd.flatten() {
                if let Some(name) = e.file_name().to_str()
                    && DataDir::handoff_owner(name) == Some(id.as_str())
                    && !before.iter().any(|b| b == name)
                {
                    before.push(name.to_string());
                }
            }
        }
    }
    if let Some(a) = sup.agents.get_mut(id).expect("present").agent.current_mut() {
        a.status_baseline = status;
        a.handoffs_before = before;
    }
}

/// Everything the shim needs for the agent's current attempt; writes the context file.
fn shim_args(sup: &Supervisor, id: &AgentId) -> Result<ShimArgs, String> {
    let live = &sup.agents[id];
    let spec = &live.agent.spec;
    let attempt = live.agent.current().ok_or("no attempt recorded")?;
    let n = attempt.attempt;
    let d = &sup.data;
    let (status_file, context_file, inbox) = (d.status_file(id), d.context_file(id), d.inbox_file(id));
    let previous = lifecycle::attempt_history(&live.agent);
    let inbox_text = read_inbox(d, &inbox);
    let extra: Vec<&str> = attempt.context_note.as_deref().into_iter().chain(inbox_text.as_deref()).collect();
    let extra = if extra.is_empty() { None } else { Some(extra.join("\n\n")) };
    let context = render(&ContextInput {
        agent_id: id.as_str(),
        role: &spec.role,
        task: &spec.task,
        scope: spec.scope.as_deref(),
        constraints: &spec.constraints,
        attempt: n,
        status_file: &status_file,
        handoff_file: &attempt.handoff_file,
        inbox_file: &inbox,
        previous_failures: &previous,
        extra_context: extra.as_deref(),
    });
    let spare = sup.context_spare.lock().ok().and_then(|mut s| s.take());
    if spare.is_none_or(|s| s.write_over(&context_file, context.as_bytes()).is_err()) {
        atomic::write_beneath(d.root(), &context_file, context.as_bytes())
            .map_err(|e| format!("cannot write context {}: {e}", context_file.display()))?;
    }
    let context_path = context_file.to_string_lossy();
    let expand = |context: &str| -> Vec<String> {
        if !spec.template {
            return spec.command.clone();
        }
        let vars = [
            ("{context}", context),
            ("{context_file}", &context_path),
            ("{task}", spec.task.as_str()),
            ("{agent_id}", id.as_str()),
            ("{role}", spec.role.as_str()),
            ("{handoff_file}", &attempt.handoff_file.to_string_lossy()),
            ("{status_file}", &status_file.to_string_lossy()),
        ];
        spec.command.iter().map(|a| crate::protocol::context::expand(a, &vars)).collect()
    };
    // A retry that continues the CLI's session (see `lifecycle::session_to_resume`).
    let resumed = |argv: Vec<String>| match attempt.stream.as_ref().and_then(|s| s.resumed_session()) {
        Some(session) => crate::adapter::resume_argv(spec.adapter, &argv, session),
        None => argv,
    };
    let argv = resumed(expand(context.as_str()));
    // The log's header names the delegation context by its file: the whole text would
    // make one line of pages, and it is in that file.
    let shown = resumed(expand(&format!("<the context in {context_path}>")));
    let header = format!("=== corral: {id} attempt {n} at {}: {shown:?} ===", attempt.started_at);
    // A cluster worker's agents reach the cluster (see `watchdog::ENV_FILE`), read at each
    // start so a worker restarted with another password passes that on; first, so a role's
    // own env may name another database on purpose. Nothing to read on a single machine.
    let lease = super::watchdog::configured(d);
    let mut env = if lease.is_some() { super::watchdog::read_env(d) } else { Vec::new() };
    env.extend(spec.env.iter().cloned());
    let s = |p: &Path| p.display().to_string();
    env.extend([
        ("CORRAL_AGENT_ID".into(), id.to_string()),
        ("CORRAL_ROLE".into(), spec.role.clone()),
        ("CORRAL_ATTEMPT".into(), n.to_string()),
        ("CORRAL_DATA_DIR".into(), s(d.root())),
        ("CORRAL_STATUS_FILE".into(), s(&status_file)),
        ("CORRAL_HANDOFF_FILE".into(), s(&attempt.handoff_file)),
        ("CORRAL_CONTEXT_FILE".into(), s(&context_file)),
        ("CORRAL_INBOX_FILE".into(), s(&inbox)),
        ("CORRAL_TASK".into(), spec.task.clone()),
    ]);
    if let Some(w) = &spec.worktree {
        env.extend(super::prepare::worktree_env(w, live.agent.base_commit.as_deref(), spec.ports));
    } else if let Some((p, _)) = spec.ports {
        env.push(("CORRAL_PORT".into(), p.to_string()));
    }
    // The attempt's own limits, which its shim keeps even with no supervisor running.
    let p = &spec.policy;
    let attempt_end = attempt.timeout_ms.map(|t| attempt.started_mono.saturating_add(t));
    let role_end = p.deadline_ms.zip(live.agent.attempts.first()).map(|(d, f)| f.started_mono.saturating_add(d));
    let args = ShimArgs {
        seq: 0,
        run: d.attempt_file(id, n, "run"),
        log: d.log_file(id),
        cwd: spec.cwd.clone(),
        header,
        argv,
        env: Some(env),
        deadline_mono: attempt_end.into_iter().chain(role_end).min(),
        stop_grace_ms: lifecycle::STOP_GRACE_MS,
        max_log_size: p.max_log_size,
        data_dir: Some(d.root().to_path_buf()),
        workspace: Some(sup.ws.root.clone()),
        stream: super::stream::StreamArgs::of(&live.agent),
        lease,
    };
    Ok(args)
}

/// The newest messages of the agent's inbox, for its context. Read through fsio (never a
/// symlink to a file outside the data dir, a FIFO or a device) and bounded: the context
/// may become a command-line argument.
fn read_inbox(d: &DataDir, inbox: &Path) -> Option<String> {
    const INBOX_BYTES: u64 = 64 * 1024;
    let (bytes, skipped) = match fsio::read_tail(d.root(), inbox, INBOX_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            crate::elog!("corral daemon: inbox {} not read: {e}", inbox.display());
            return None;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = if skipped > 0 {
        format!("(the {skipped} bytes of older messages before these are left out)\n{}", text)
    } else {
        text.into_owned()
    };
    Some(text).filter(|t| !t.trim().is_empty())
}

/// A copy of the shim's end of the output pipe: while the supervisor holds it, the agent
/// never writes into a pipe with no reader, even once its shim is gone.
fn copy_out(pidfd: Option<&OwnedFd>, out_fd: Option<i32>) -> Option<OwnedFd> {
    super::process::pidfd_getfd(pidfd?, out_fd?).ok()
}

/// How the attempt ended, and when, from the shim's exit record, and whether its shim
/// stopped it at its deadline. An error when the record could not be read for a reason
/// that may pass (out of descriptors): read it again later.
pub fn read_exit(
    sup: &Supervisor,
    id: &AgentId,
    attempt: u32,
) -> std::io::Result<(ProcessEnd, Option<String>, Option<StopReason>)> {
    Ok(match sup.io.read_run(&sup.data.attempt_file(id, attempt, "run"))?.exit {
        Some(r) => (r.end, Some(r.ended_at), r.stopped),
        None => (
            ProcessEnd::Lost {
                reason: "exit code unknown: the attempt's shim ended without recording an exit (was it killed?)".into(),
            },
            None,
            None,
        ),
    })
}

/// After a restart: find out what became of an attempt that was live, and watch it again.
pub fn reconcile(sup: &mut Supervisor, id: &AgentId) {
    let Some(a) = sup.agents[id].agent.current() else {
        return;
    };
    let n = a.attempt;
    let path = sup.data.attempt_file(id, n, "run");
    let super::io::RunProbe { held, info } = sup.io.probe_run(&path);
    if info.exit.is_some() {
        sup.attempt_ended(id, n);
        return;
    }
    match (held, info.start) {
        (Some(true), start) => {
            // The shim is alive and holds the attempt: watch it again.
            let shim_pid = info.shim_pid.unwrap_or(0);
            match sup.io.open_shim(shim_pid, &path) {
                Some(fd) => {
                    // Stop requests go to the shim again (so a kill's grace holds for the
                    // whole group), and the output pipe gets a second reader again.
                    let out = start.as_ref().and_then(|s| copy_out(Some(&fd), s.out_fd));
                    sup.orphans.started(id, n, Some(&fd), out);
                    if let Some(s) = start {
                        let now = sup.now();
                        let live = sup.agents.get_mut(id).expect("present");
                        let actions = lifecycle::started(&mut live.agent, s.shim_pid, s.pid, &now);
                        sup.apply(id, actions);
                    }
                    sup.measure_log(id);
                    sup.emit(Some(id), "reattached", serde_json::json!({ "attempt": n, "shimPid": shim_pid }));
                    sup.io.watch_exit(id, n, shim_pid, &path, Some(fd));
                }
                None => sup.attempt_ended(id, n),
            }
        }
        // Started, shim gone, no exit record: its group may live on (adopted until it is
        // gone, so no retry runs beside it); else lost.
        (_, Some(_)) => {
            if !super::orphans::adopt_lost(sup, id, n) {
                sup.attempt_ended(id, n);
            }
        }
        (_, None) => {
            // Nothing ever ran for this attempt (no start record, nobody holds its lock):
            // starting it now cannot start it twice.
            sup.emit(Some(id), "restarting_unstarted_attempt", serde_json::json!({ "attempt": n }));
            start_current(sup, id);
        }
    }
}
