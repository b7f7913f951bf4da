//! The supervisor loop on the fake machine (`fake`): admission order, restarts with attempts
//! in every state, and long chains of work, deterministically and without processes.

use super::daemon::{Msg, Supervisor};
use super::fake::{FakeIo, FakeRun, MemRegistry};
use super::shim::Handshake;
use crate::config::Workspace;
use crate::ipc::{Reply, Request, SpawnRequest};
use crate::policy::agent::{Agent, AgentSpec, AgentState, AttemptRun, ProcessEnd};
use crate::policy::lifecycle::{self, Gate, Now, Signal};
use crate::protocol::{AgentId, DataDir};
use tokio::sync::oneshot;

/// Fake pids beyond any real pid_max: nothing real is ever touched by them.
const PID_BASE: i32 = 5_000_000;

struct Rig {
    sup: Supervisor,
    io: FakeIo,
    store: MemRegistry,
    dir: tempfile::TempDir,
    _rx: tokio::sync::mpsc::UnboundedReceiver<Msg>,
}

fn workspace(dir: &std::path::Path, config: &str) -> Workspace {
    let config = crate::config::parse(config, &dir.join("corral.toml")).expect("test config parses");
    Workspace { root: dir.to_path_buf(), config_file: None, config, config_error: None }
}

fn rig_with(config: &str, store: MemRegistry, io: FakeIo, dir: tempfile::TempDir) -> Rig {
    let data = DataDir::new(dir.path().join("data"));
    data.create_all().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ws = workspace(dir.path(), config);
    let mut sup = Supervisor::new(ws, data, Box::new(store.clone()), Box::new(io.clone()), tx, dir.path().join("sock"));
    sup.load().expect("loads");
    Rig { sup, io, store, dir, _rx: rx }
}

fn rig(config: &str) -> Rig {
    rig_with(config, MemRegistry::default(), FakeIo::default(), tempfile::tempdir().unwrap())
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

impl Rig {
    /// Handles one message; the replies given now.
    fn step(&mut self, msg: Msg) -> Vec<Reply> {
        let mut replies = Vec::new();
        self.sup.handle(msg, &mut replies);
        self.sup.release_held(&mut replies);
        replies.into_iter().map(|(_, r)| r).collect()
    }

    fn request(&mut self, req: Request) -> (Vec<Reply>, oneshot::Receiver<Reply>) {
        let (tx, mut rx) = oneshot::channel();
        let mut replies = Vec::new();
        self.sup.handle(Msg::Request(req, tx), &mut replies);
        self.sup.release_held(&mut replies);
        let mut given = Vec::new();
        for (tx, r) in replies {
            let _ = tx.send(r);
        }
        if let Ok(r) = rx.try_recv() {
            given.push(r);
        }
        (given, rx)
    }

    fn spawn(&mut self, name: &str) -> (Vec<Reply>, oneshot::Receiver<Reply>) {
        self.request(Request::Spawn(Box::new(SpawnRequest {
            role: "worker".into(),
            task: format!("task of {name}"),
            scope: None,
            constraints: vec![],
            id: Some(name.into()),
            after: vec![],
            timeout_ms: None,
            max_retries: None,
            env: vec![],
            caller_env: vec![],
            cwd: self.dir.path().display().to_string(),
            command: vec!["true".into()],
            idempotency_key: None,
            adapter: Default::default(),
            worktree: None,
            ..Default::default()
        })))
    }

    /// Agents whose shims were asked for, in order.
    fn started(&self) -> Vec<String> {
        self.io.0.borrow().started.iter().map(|a| a.run.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    /// Answers the newest request for a shim of `name` with a start.
    fn answer(&mut self, name: &str, n: i32) -> Vec<Reply> {
        let seq = {
            let w = self.io.0.borrow();
            let prefix = format!("{name}.");
            w.started
                .iter()
                .rev()
                .find(|a| a.run.file_name().unwrap().to_string_lossy().starts_with(&prefix))
                .unwrap()
                .seq
        };
        self.step(Msg::Launched {
            seq,
            shim_pid: PID_BASE + 2 * n,
            result: Handshake::Started { pid: PID_BASE + 2 * n + 1, out_fd: None },
            pidfd: None,
        })
    }

    /// The shim of `name`'s current attempt ended, its run file saying `end`.
    fn end(&mut self, name: &str, end: ProcessEnd) -> Vec<Reply> {
        let agent = &self.sup.agents[&id(name)].agent;
        let a = agent.current().unwrap();
        let (n, shim_pid) = (
            a.attempt,
            match a.run {
                AttemptRun::Running { shim_pid, .. } => shim_pid,
                _ => 0,
            },
        );
        let path = self.sup.data.attempt_file(&id(name), n, "run");
        self.io.0.borrow_mut().runs.insert(path, FakeRun { exit: Some(end), ..Default::default() });
        self.step(Msg::Exited { id: id(name), attempt: n, shim_pid })
    }

    fn state(&self, name: &str) -> AgentState {
        self.sup.agents[&id(name)].agent.state.clone()
    }
}

#[test]
fn admission_follows_spawn_order_under_max_concurrent_and_spawn_replies_wait_for_the_handshake() {
    let mut r = rig("[health]\nmax_concurrent = 2\n");
    let (now1, mut held1) = r.spawn("a1");
    let (now2, _held2) = r.spawn("a2");
    assert!(now1.is_empty() && now2.is_empty(), "a started agent's reply waits for its handshake");
    for name in ["a3", "a4", "a5"] {
        let (now, _) = r.spawn(name);
        assert_eq!(now.len(), 1, "a queued agent is answered at once");
        assert_eq!(now[0].parse::<serde_json::Value>().unwrap()["status"], "queued");
    }
    assert_eq!(r.started(), ["a1.1.run", "a2.1.run"]);
    // Other requests are answered while the handshakes are outstanding.
    let (status, _) = r.request(Request::Status { ids: vec![], role: None });
    assert_eq!(status.len(), 1);

    let replies = r.answer("a1", 1);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].parse::<serde_json::Value>().unwrap()["status"], "running");
    assert_eq!(replies[0].parse::<serde_json::Value>().unwrap()["pid"], PID_BASE + 3);
    assert!(held1.try_recv().is_err(), "the test collects replies itself");
    r.answer("a2", 2);
    r.end("a2", ProcessEnd::Exited { code: 0 });
    assert_eq!(r.state("a2"), AgentState::Complete);
    assert_eq!(r.started(), ["a1.1.run", "a2.1.run", "a3.1.run"]);
    r.end("a1", ProcessEnd::Exited { code: 0 });
    assert_eq!(r.started(), ["a1.1.run", "a2.1.run", "a3.1.run", "a4.1.run"]);
    assert!(matches!(r.state("a5"), AgentState::Queued { .. }));
}

#[test]
fn a_handshake_that_never_comes_ends_the_attempt_at_its_deadline_and_a_late_one_changes_nothing() {
    let mut r = rig("[roles.worker]\nmax_retries = 0\n");
    let (now, _slow) = r.spawn("slow");
    assert!(now.is_empty());
    let (now, _fast) = r.spawn("fast");
    assert!(now.is_empty(), "the second spawn is not held up by the first's silence");
    assert_eq!(r.answer("fast", 1).len(), 1);
    r.io.0.borrow_mut().mono += super::io::HANDSHAKE_TIMEOUT_MS + 1_000;
    r.sup.tick();
    let mut replies = Vec::new();
    r.sup.release_held(&mut replies);
    assert_eq!(replies.len(), 1, "the held spawn reply goes out when the attempt ends");
    let st = r.state("slow");
    assert!(st.is_finished() || matches!(st, AgentState::Retrying { .. }), "{st:?}");
    assert!(r.answer("slow", 9).is_empty());
    assert_eq!(r.state("slow"), st, "a handshake after its deadline is not a start");
}

#[test]
fn a_kill_while_the_shim_is_starting_terms_the_group_once_it_has_one() {
    let mut r = rig("");
    r.spawn("k");
    let (reply, _kill) = r.request(Request::Kill { id: "k".into(), grace_ms: 5_000 });
    assert!(reply.is_empty(), "a kill is answered once no process of the attempt lives");
    assert!(r.io.0.borrow().signals.is_empty(), "no group to signal yet");
    r.answer("k", 1);
    assert_eq!(r.io.0.borrow().signals, [(PID_BASE + 3, Signal::Term)]);
    let replies = r.end("k", ProcessEnd::Signaled { signal: libc::SIGTERM });
    assert!(replies.iter().any(|r| r.parse::<serde_json::Value>().unwrap()["status"] == "killed"), "{replies:?}");
}

/// A queued agent as a spawn leaves it, for building registries by hand.
fn queued(sup: &Supervisor, name: &str) -> Agent {
    let (_, policy) = sup.ws.config.role("worker");
    Agent {
        spec: AgentSpec {
            id: id(name),
            role: "worker".into(),
            task: "t".into(),
            scope: None,
            constraints: vec![],
            after: vec![],
            command: vec!["true".into()],
            template: false,
            cwd: sup.ws.root.clone(),
            env: vec![],
            policy,
            spawned_at: "2026-01-01T00:00:00.000+00:00".into(),
            idempotency_key: None,
            adapter: Default::default(),
            worktree: None,
            ports: None,
            group: None,
            priority: 0,
            not_before: None,
        },
        state: AgentState::Queued { reason: "new".into() },
        attempts: vec![],
        updated_at: "2026-01-01T00:00:00.000+00:00".into(),
        budget_start: 0,
        next_context: None,
        base_commit: None,
        cleaned_at: None,
    }
}

fn at(mono: u64) -> Now {
    Now { wall: "2026-01-01T00:00:00.000+00:00".into(), mono, jitter: 0.5 }
}

#[test]
fn a_long_queue_of_commands_that_cannot_start_is_worked_through_without_recursion() {
    // Each start fails at once (the registry cannot record it); every failure admits the
    // next. Carried out recursively, this chain overflows the small stack it runs on.
    const N: usize = 300;
    let out = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let mut r = rig("[health]\nmax_concurrent = 1\nbreaker_failures = 1000000\n");
            let _first = r.spawn("first");
            r.answer("first", 0);
            let rows: Vec<Agent> = (0..N).map(|i| queued(&r.sup, &format!("q{i}"))).collect();
            for a in rows {
                let name = a.spec.id.clone();
                r.sup.order.push(name.clone());
                r.sup.shown.push(name.clone());
                r.sup.agents.insert(name, super::daemon::Live::new(a));
            }
            r.store.0.borrow_mut().failing = true;
            r.end("first", ProcessEnd::Exited { code: 0 });
            let live = r.sup.agents.values().filter(|l| l.agent.state.has_live_process()).count();
            let not_started = r
                .sup
                .agents
                .values()
                .filter(|l| {
                    l.agent
                        .attempts
                        .iter()
                        .any(|a| matches!(&a.run, AttemptRun::Ended { end: ProcessEnd::NotStarted { .. }, .. }))
                })
                .count();
            (r.started().len(), live, not_started)
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(out, (1, 0, N), "(shims asked for, agents live, attempts that did not start)");
}

#[test]
fn a_restart_reconciles_attempts_in_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemRegistry::default();
    let io = FakeIo::default();
    io.0.borrow_mut().mono = 50;
    // Agents as a supervisor that died would have left them.
    let template = rig("");
    let data = DataDir::new(dir.path().join("data"));
    let put = |a: Agent| {
        use crate::store::Registry;
        let mut s = store.clone();
        s.put(&a).unwrap();
    };
    let running = |name: &str, n: i32| {
        let mut a = queued(&template.sup, name);
        lifecycle::admit(&mut a, Gate::Ready, &at(10), data.handoff_file(&id(name), "x"));
        lifecycle::started(&mut a, PID_BASE + 2 * n, PID_BASE + 2 * n + 1, &at(10));
        a
    };
    put(queued(&template.sup, "queued"));
    let mut starting = queued(&template.sup, "starting");
    lifecycle::admit(&mut starting, Gate::Ready, &at(10), data.handoff_file(&id("starting"), "x"));
    put(starting);
    put(running("alive", 1));
    put(running("ended", 2));
    put(running("lost", 3));
    let mut stopping = running("stopping", 4);
    lifecycle::kill_requested(&mut stopping, 20, &at(10)).unwrap();
    put(stopping);
    let mut retrying = queued(&template.sup, "retrying");
    retrying.state = AgentState::Retrying { next_mono: 100, reason: "backoff".into() };
    put(retrying);
    let mut done = running("done", 5);
    done.state = AgentState::Complete;
    put(done);
    {
        let mut w = io.0.borrow_mut();
        let run = |name: &str| data.attempt_file(&id(name), 1, "run");
        let start = |n: i32| Some((PID_BASE + 2 * n, PID_BASE + 2 * n + 1));
        w.runs.insert(run("alive"), FakeRun { held: true, start: start(1), ..Default::default() });
        w.runs.insert(
            run("ended"),
            FakeRun { start: start(2), exit: Some(ProcessEnd::Exited { code: 0 }), ..Default::default() },
        );
        w.runs.insert(run("lost"), FakeRun { start: start(3), ..Default::default() });
        w.runs.insert(run("stopping"), FakeRun { held: true, start: start(4), ..Default::default() });
    }
    drop(template);

    let mut r = rig_with("", store, io, dir);
    assert_eq!(r.state("alive"), AgentState::Running);
    assert!(r.io.0.borrow().watched.iter().any(|(a, n, pid)| a.as_str() == "alive" && *n == 1 && *pid == PID_BASE + 2));
    assert_eq!(r.state("ended"), AgentState::Complete);
    let lost = r.sup.agents[&id("lost")].agent.attempts[0].clone();
    assert!(matches!(lost.run, AttemptRun::Ended { end: ProcessEnd::Lost { .. }, .. }), "{:?}", lost.run);
    assert_eq!(r.state("done"), AgentState::Complete);
    // The stopping agent's grace ran out while no supervisor was there: KILL at once.
    assert!(matches!(r.state("stopping"), AgentState::Stopping { .. }));
    assert!(r.io.0.borrow().signals.contains(&(PID_BASE + 9, Signal::Kill)));
    // Never started: started now, once; the queued agent is admitted too.
    let started = r.started();
    assert_eq!(started.iter().filter(|s| s.starts_with("starting.")).count(), 1);
    assert_eq!(started.iter().filter(|s| s.starts_with("queued.")).count(), 1);
    assert!(matches!(r.state("retrying"), AgentState::Retrying { .. }));
    r.io.0.borrow_mut().mono = 100;
    r.sup.tick();
    assert!(r.started().iter().any(|s| s.starts_with("retrying.1")), "a due retry starts: {:?}", r.started());
}

#[test]
fn the_periodic_reconcile_finds_an_exit_and_a_report_no_event_announced() {
    let mut r = rig("[supervisor]\nreconcile_interval = \"5s\"\n");
    r.spawn("quiet");
    r.answer("quiet", 1);
    r.spawn("reporter");
    r.answer("reporter", 2);
    // The exit is in the run file, but no exit message ever comes (a lost wakeup).
    let run = r.sup.data.attempt_file(&id("quiet"), 1, "run");
    r.io.0.borrow_mut().runs.insert(run, FakeRun { exit: Some(ProcessEnd::Exited { code: 0 }), ..Default::default() });
    // A status write no watch saw (there is no watcher on the fake machine at all).
    let status = r.sup.data.status_file(&id("reporter"));
    std::fs::write(&status, r#"{"agentId":"reporter","status":"active","phase":"unseen"}"#).unwrap();

    r.io.0.borrow_mut().mono += 4_000;
    r.sup.tick();
    assert_eq!(r.state("quiet"), AgentState::Running, "nothing is looked at before the period");
    assert!(r.sup.agents[&id("reporter")].report.is_none());

    r.io.0.borrow_mut().mono += 1_001;
    r.sup.tick();
    assert_eq!(r.state("quiet"), AgentState::Complete, "the end is found within one period");
    let live = &r.sup.agents[&id("reporter")];
    let report = live.report.clone().unwrap_or_else(|| panic!("not read within one period: {:?}", live.report_error));
    assert_eq!(report.phase.as_deref(), Some("unseen"));
    assert_eq!(r.state("reporter"), AgentState::Running);
}

#[test]
fn an_unreadable_row_is_quarantined_and_its_id_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemRegistry::default();
    {
        let template = rig("");
        let mut s = store.clone();
        use crate::store::Registry;
        s.put(&queued(&template.sup, "good")).unwrap();
        let mut bad_id = queued(&template.sup, "x");
        bad_id.state = AgentState::Complete;
        let body = serde_json::to_string(&bad_id).unwrap().replace("\"id\":\"x\"", "\"id\":\"../../etc\"");
        let mut t = store.0.borrow_mut();
        t.agents.push(("agent-007-worker".into(), "{not json".into()));
        t.agents.push(("x".into(), body));
    }
    let mut r = rig_with("", store, FakeIo::default(), dir);
    let ids: Vec<String> = r.sup.unreadable.iter().map(|u| u.id.clone()).collect();
    assert_eq!(ids, ["agent-007-worker", "x"]);
    assert!(r.sup.agents.contains_key(&id("good")));
    let (replies, _) = r.request(Request::Status { ids: vec![], role: None });
    let views: Vec<serde_json::Value> = replies[0].parse().unwrap();
    let status: Vec<(&str, &str)> =
        views.iter().map(|v| (v["agentId"].as_str().unwrap(), v["status"].as_str().unwrap())).collect();
    assert_eq!(status, [("good", "running"), ("agent-007-worker", "unreadable"), ("x", "unreadable")]);
    assert!(views[1]["reason"].as_str().unwrap().contains("not an agent record"), "{}", views[1]);
    assert!(views[2]["reason"].as_str().unwrap().contains("not allowed"), "{}", views[2]);
    let (show, _) = r.request(Request::Show { id: "agent-007-worker".into() });
    assert_eq!(show[0].parse::<serde_json::Value>().unwrap()["status"], "unreadable");
    let (kill, _) = r.request(Request::Kill { id: "x".into(), grace_ms: 0 });
    assert!(kill[0].error.as_deref().unwrap_or("").contains("quarantined"), "{:?}", kill[0].error);
    // The next generated id is past the quarantined one's number.
    let (now, _) = r.request(Request::Spawn(Box::new(SpawnRequest {
        role: "worker".into(),
        task: "t".into(),
        scope: None,
        constraints: vec![],
        id: None,
        after: vec![],
        timeout_ms: None,
        max_retries: None,
        env: vec![],
        caller_env: vec![],
        cwd: r.dir.path().display().to_string(),
        command: vec!["true".into()],
        idempotency_key: None,
        adapter: Default::default(),
        worktree: None,
        ..Default::default()
    })));
    assert!(now.is_empty(), "the spawn waits for its handshake");
    assert!(r.started().iter().any(|s| s.starts_with("agent-008-worker.")), "{:?}", r.started());
    // The bad rows are never written over.
    assert_eq!(r.store.0.borrow().agents[1].1, "{not json");
}

#[test]
fn an_emptied_registry_next_to_run_files_and_an_export_is_refused_or_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("data"));
    data.create_all().unwrap();
    std::fs::write(
        data.registry_file(),
        r#"[{"agentId":"agent-002-worker","role":"worker","task":"the task","status":"complete"}]"#,
    )
    .unwrap();
    std::fs::write(data.attempt_file(&id("agent-005-worker"), 1, "run"), "").unwrap();
    let export_before = std::fs::read(data.registry_file()).unwrap();

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ws = workspace(dir.path(), "");
    let mut sup = Supervisor::new(
        ws.clone(),
        data.clone(),
        Box::new(MemRegistry::default()),
        Box::new(FakeIo::default()),
        tx.clone(),
        dir.path().join("sock"),
    );
    let err = sup.load().unwrap_err().to_string();
    assert!(err.contains("agent-002-worker") && err.contains("agent-005-worker"), "{err}");
    assert!(err.contains("--rebuild"), "{err}");
    drop(sup);
    assert_eq!(std::fs::read(data.registry_file()).unwrap(), export_before, "the export is left as it was");

    let store = MemRegistry::default();
    let mut sup =
        Supervisor::new(ws, data, Box::new(store.clone()), Box::new(FakeIo::default()), tx, dir.path().join("sock"));
    sup.rebuild = true;
    sup.load().unwrap();
    let a2 = &sup.agents[&id("agent-002-worker")].agent;
    assert_eq!((a2.state.clone(), a2.spec.task.as_str()), (AgentState::Complete, "the task"));
    // The rebuilt attempt is judged by its run file like any other: nothing ever ran, so it
    // starts now, once.
    assert!(sup.agents.contains_key(&id("agent-005-worker")));
    use crate::store::Registry;
    let mut s = store.clone();
    assert_eq!(s.next_number().unwrap(), 6, "no number the data dir names is handed out again");
}

#[test]
fn after_a_reboot_deadlines_from_the_old_clock_are_due_at_once() {
    if crate::protocol::time::boot_id().is_none() {
        // No boot id on this machine: nothing to tell boots apart by.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut store = MemRegistry::default();
    let io = FakeIo::default();
    // The new boot's clock is young; the registry was written under another boot, with a
    // backoff that ends at the old machine's uptime plus a little.
    io.0.borrow_mut().mono = 50;
    let template = rig("");
    {
        use crate::store::Registry;
        store.put_meta("boot_id", "an-older-boot").unwrap();
        let mut a = queued(&template.sup, "retrying");
        a.state = AgentState::Retrying { next_mono: 9_000_000_000, reason: "backoff".into() };
        store.put(&a).unwrap();
    }
    drop(template);
    let mut r = rig_with("", store, io, dir);
    match r.state("retrying") {
        AgentState::Retrying { next_mono, .. } => assert!(next_mono <= 50, "still waits for {next_mono}"),
        other => assert!(!matches!(other, AgentState::Retrying { .. })),
    }
    r.sup.tick();
    assert!(!matches!(r.state("retrying"), AgentState::Retrying { .. }), "the backoff did not end");
    // The new boot is recorded: a second start under it moves nothing.
    use crate::store::Registry;
    assert_eq!(r.store.get_meta("boot_id").unwrap(), crate::protocol::time::boot_id());
}

/// Which hooks an event concerns, and as what: rate limits and budgets included, events no
/// hook asked for never queued, and `escalated` only where the agent is not merely blocked.
#[test]
fn events_reach_the_hooks_that_asked_for_them() {
    let mut r = rig("[[notify]]\non = [\"rate-limited\", \"budget\"]\ncommand = [\"true\"]\n\
         [[notify]]\non = [\"escalated\", \"needs-human\", \"complete\"]\ncommand = [\"true\"]\n");
    let a = id("agent-001-IMPLEMENTER");
    r.sup.emit(Some(&a), "rate_limited", serde_json::json!({ "reason": "usage limit", "waitMs": 1000 }));
    r.sup.emit(Some(&a), "budget_exceeded", serde_json::json!({ "reason": "over $1" }));
    r.sup.emit(Some(&a), "escalation_opened", serde_json::json!({ "escalation": 1, "reason": "stuck" }));
    r.sup.emit(Some(&a), "retry_scheduled", serde_json::json!({}));
    r.sup.emit(None, "all_finished", serde_json::json!({ "reason": "1 agent finished" }));
    let a = Some("agent-001-IMPLEMENTER");
    assert_eq!(
        r.sup.notify.pending(),
        vec![(1, "rate-limited", a), (1, "budget", a), (2, "escalated", a)],
        "no hook asked for all-finished or retries"
    );
}

/// `all_finished` is recorded once when the last agent of a run finishes, never while one is
/// still queued or running, again for a later run, and a run a restart interrupted goes on.
#[test]
fn all_finished_is_recorded_once_per_run_and_a_restart_keeps_the_run() {
    let finished = |store: &MemRegistry| -> Vec<serde_json::Value> {
        store.0.borrow().events.iter().filter(|e| e.kind == "all_finished").map(|e| e.data.clone()).collect()
    };
    const CONFIG: &str = "[health]\nmax_concurrent = 1\n[[notify]]\non = [\"all-finished\"]\ncommand = [\"true\"]\n";
    let mut r = rig(CONFIG);
    r.spawn("r1");
    r.spawn("r2");
    r.answer("r1", 1);
    r.end("r1", ProcessEnd::Exited { code: 0 });
    r.sup.persist().unwrap();
    assert!(finished(&r.store).is_empty(), "r2 is still to run");
    r.answer("r2", 2);
    r.end("r2", ProcessEnd::Exited { code: 0 });
    r.sup.persist().unwrap();
    let f = finished(&r.store);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["agents"], 2);
    assert_eq!(f[0]["states"]["complete"], 2);
    r.sup.persist().unwrap();
    assert_eq!(finished(&r.store).len(), 1, "once per run");

    // A new run, interrupted by a restart: it ends when its last agent does.
    r.spawn("r3");
    r.answer("r3", 3);
    r.sup.persist().unwrap();
    let Rig { sup, io, store, dir, .. } = r;
    drop(sup);
    let mut r = rig_with(CONFIG, store, io, dir);
    assert_eq!(r.state("r3"), AgentState::Running);
    r.end("r3", ProcessEnd::Exited { code: 0 });
    assert_eq!(r.state("r3"), AgentState::Complete);
    r.sup.persist().unwrap();
    let f = finished(&r.store);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[1]["agents"], 1);
}
