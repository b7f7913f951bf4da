//! Policy-core tests on a simulated clock: no processes, no sleeps. One test per row of
//! the seed's tables.

use super::agent::*;
use super::classify::{Facts, FailureType, RuleAction, default_rules};
use super::health::{Breaker, HealthPolicy, Resources, hold_reason};
use super::lifecycle::*;
use super::role::{Backoff, Jitter, RolePolicy};
use crate::protocol::AgentId;
use crate::protocol::files::ReportedStatus;

const S: u64 = 1_000;
const M: u64 = 60 * S;

fn at(mono: u64) -> Now {
    Now { wall: format!("t+{mono}"), mono, jitter: 0.5 }
}

fn agent_with(role: &str, after: &[&str]) -> Agent {
    Agent {
        spec: AgentSpec {
            id: AgentId::parse(&format!("agent-001-{role}")).unwrap(),
            role: role.into(),
            task: "t".into(),
            scope: None,
            constraints: vec![],
            after: after.iter().map(|a| AgentId::parse(a).unwrap()).collect(),
            command: vec!["true".into()],
            template: false,
            cwd: "/".into(),
            env: vec![],
            policy: RolePolicy::seed(role),
            spawned_at: "t".into(),
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
        updated_at: "t".into(),
        budget_start: 0,
        next_context: None,
        base_commit: None,
        cleaned_at: None,
    }
}

fn start(a: &mut Agent, t: u64) {
    assert_eq!(admit(a, Gate::Ready, &at(t), "h".into()), vec![Action::Spawn]);
    started(a, 10, 11, &at(t));
}

fn running(role: &str) -> Agent {
    let mut a = agent_with(role, &[]);
    start(&mut a, 0);
    a
}

fn rules() -> Vec<super::classify::Rule> {
    default_rules()
}

fn facts(end: ProcessEnd, finding: Option<&str>) -> ExitFacts {
    ExitFacts {
        end,
        reported: finding.map(|_| ReportedStatus::Failed),
        last_finding: finding.map(str::to_string),
        handoff: HandoffFacts::Absent,
        output_tail: String::new(),
        ended_at: None,
        timed_out: false,
        verify: None,
        permanent: false,
        stream: None,
        limit_wait_ms: None,
        after_result: false,
    }
}

fn exit(a: &mut Agent, f: ExitFacts, t: u64) -> Vec<Action> {
    let d = rules();
    let n = a.current().unwrap().attempt;
    exited(a, n, f, &Rules { user: &[], defaults: &d }, &at(t))
}

fn crash(code: i32, finding: Option<&str>) -> ExitFacts {
    facts(ProcessEnd::Exited { code }, finding)
}

fn retry_delay(a: &Agent, now: u64) -> u64 {
    match a.state {
        AgentState::Retrying { next_mono, .. } => next_mono - now,
        ref s => panic!("not retrying: {s:?}"),
    }
}

/// Runs the backoff out and starts the next attempt.
fn next_attempt(a: &mut Agent, t: u64) {
    let acts = tick(a, &at(t));
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "retry_due", .. })), "{acts:?}");
    start(a, t);
}

#[test]
fn exit_zero_completes_and_exit_codes_are_kept() {
    let mut a = running("X");
    let acts = exit(&mut a, facts(ProcessEnd::Exited { code: 0 }, None), 5);
    assert_eq!(a.state, AgentState::Complete);
    assert!(acts.contains(&Action::Outcome { success: true }));
    let mut a = running("X");
    exit(&mut a, crash(7, None), 5);
    assert_eq!(a.current().unwrap().ended().unwrap().1.exit_code(), Some(7));
    // exit 0 while saying it failed is not a success
    let mut a = running("X");
    exit(&mut a, facts(ProcessEnd::Exited { code: 0 }, Some("oops")), 5);
    assert!(matches!(a.state, AgentState::Escalated { .. }), "{:?}", a.state);
}

#[test]
fn retry_delays_are_30s_60s_120s_by_default() {
    let mut a = running("IMPLEMENTER");
    a.spec.policy.max_retries = 3;
    let mut t = 0;
    for want in [30 * S, 60 * S, 120 * S] {
        t += 10;
        exit(&mut a, crash(1, Some("rate limit exceeded")), t);
        assert_eq!(retry_delay(&a, t), want);
        t += want;
        next_attempt(&mut a, t);
    }
    let b = Backoff { initial_ms: 30 * S, coefficient: 2.0, max_ms: Some(45 * S), jitter: Jitter::None };
    assert_eq!([1, 2, 3].map(|n| b.delay_ms(n, 0.5)), [30 * S, 45 * S, 45 * S]);
    let j = Backoff { jitter: Jitter::Full, ..b };
    assert_eq!(j.delay_ms(1, 0.5), 15 * S);
    assert!(j.delay_ms(3, 0.999) <= 45 * S);
}

#[test]
fn progressive_timeouts_are_15m_30m_45m_for_the_planner() {
    let mut a = running("PLANNER");
    a.spec.policy.max_retries = 2;
    assert_eq!(a.current().unwrap().timeout_ms, Some(15 * M));
    let mut t = 15 * M;
    for want in [30 * M, 45 * M] {
        assert!(tick(&mut a, &at(t)).contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }));
        exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), t + 10);
        assert_eq!(a.current().unwrap().ended().map(|_| ()), Some(()));
        t += 10 + retry_delay(&a, t + 10);
        next_attempt(&mut a, t);
        assert_eq!(a.current().unwrap().timeout_ms, Some(want));
        t += want;
    }
    let capped = RolePolicy { max_attempt_timeout_ms: Some(20 * M), ..RolePolicy::seed("PLANNER") };
    assert_eq!(capped.attempt_timeout(3), 20 * M);
    let flat = RolePolicy { progressive_timeout: false, ..RolePolicy::seed("PLANNER") };
    assert_eq!(flat.attempt_timeout(3), 15 * M);
}

#[test]
fn max_retries_per_role_then_escalation_with_every_reason() {
    for (role, retries) in [("PLANNER", 1), ("IMPLEMENTER", 2), ("AUDITOR", 1), ("CLEANER", 1), ("OTHER", 1)] {
        let mut a = running(role);
        let mut t = 0;
        for i in 0..retries {
            t += 10;
            exit(&mut a, crash(1, Some(&format!("network down {i}"))), t);
            t += retry_delay(&a, t);
            next_attempt(&mut a, t);
        }
        let acts = exit(&mut a, crash(1, Some("network down again")), t + 5);
        let AgentState::Escalated { reason, .. } = &a.state else { panic!("{role}: {:?}", a.state) };
        assert_eq!(a.attempts.len(), retries + 1, "{role}");
        assert!(reason.contains("network down 0") && reason.contains("network down again"), "{reason}");
        assert!(acts.iter().any(|x| matches!(x, Action::Escalate { .. })));
    }
}

#[test]
fn transient_failures_retry_and_permanent_ones_escalate_at_once() {
    for f in ["Rate limit hit", "request timeout", "network unreachable"] {
        let mut a = running("X");
        exit(&mut a, crash(1, Some(f)), 5);
        assert!(matches!(a.state, AgentState::Retrying { .. }), "{f}: {:?}", a.state);
    }
    // the output tail counts too
    let mut a = running("X");
    let mut fx = crash(1, None);
    fx.output_tail = "HTTP 429 Too Many Requests".into();
    exit(&mut a, fx, 5);
    assert!(matches!(a.state, AgentState::Retrying { .. }));
    let mut a = running("X");
    exit(&mut a, crash(1, Some("syntax error in main.rs")), 5);
    assert!(matches!(a.state, AgentState::Escalated { .. }), "{:?}", a.state);
    assert_eq!(a.attempts.len(), 1);
}

#[test]
fn missing_context_retries_with_the_blocker_in_the_context() {
    let d = rules();
    let mut a = running("X");
    let r = Report {
        status: ReportedStatus::Blocked,
        last_finding: Some("missing context: which database?".into()),
        changed: true,
    };
    let acts = status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(5));
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }), "{acts:?}");
    exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), 6);
    assert!(matches!(a.state, AgentState::Retrying { .. }), "{:?}", a.state);
    let t = 6 + retry_delay(&a, 6);
    next_attempt(&mut a, t);
    let note = a.current().unwrap().context_note.clone().unwrap();
    assert!(note.contains("which database?"), "{note}");
}

#[test]
fn external_dependency_waits_without_killing() {
    let d = rules();
    let mut a = running("X");
    let r = Report {
        status: ReportedStatus::Blocked,
        last_finding: Some("waiting for the staging DB".into()),
        changed: true,
    };
    let acts = status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(5));
    assert!(!acts.iter().any(|x| matches!(x, Action::SignalGroup { .. })), "{acts:?}");
    assert_eq!(a.state, AgentState::Running);
    // while it waits, heartbeat and stall checks and the attempt timeout are off: only
    // blocked_timeout (1h) bounds it
    assert_eq!(next_deadline(&a), Some(5 + 60 * M));
    assert_eq!(a.view_name(), "blocked");
    // any other blocker escalates
    let mut b = running("X");
    let r = Report { status: ReportedStatus::Blocked, last_finding: Some("I refuse".into()), changed: true };
    status_reported(&mut b, &r, &Rules { user: &[], defaults: &d }, &at(5));
    exit(&mut b, facts(ProcessEnd::Signaled { signal: 15 }, None), 6);
    assert!(matches!(b.state, AgentState::Escalated { .. }), "{:?}", b.state);
}

#[test]
fn user_rules_come_first() {
    let d = rules();
    let user = vec![super::classify::Rule {
        name: "exit 75 is temporary".into(),
        exit_codes: vec![75],
        signals: vec![],
        failure_types: vec![],
        finding: None,
        output: None,
        api_error_status: vec![],
        result: None,
        action: RuleAction::Ignore,
    }];
    let mut a = running("X");
    a.spec.policy.max_retries = 0;
    exited(&mut a, 1, crash(75, None), &Rules { user: &user, defaults: &d }, &at(5));
    assert!(matches!(a.state, AgentState::Retrying { .. }), "ignore must not use the budget: {:?}", a.state);
    assert!(!a.attempts[0].counted);
    let f = Facts {
        failure: FailureType::Crash,
        exit_code: Some(1),
        signal: None,
        last_finding: None,
        output_tail: "",
        api_error_status: None,
        result_text: None,
    };
    assert_eq!(super::classify::classify(&user, &d, &f).0, RuleAction::Escalate);
}

#[test]
fn deliverable_failure_gets_one_corrective_attempt_then_escalates() {
    let mut a = running("X");
    a.spec.policy.max_retries = 5;
    let mut f = facts(ProcessEnd::Exited { code: 0 }, None);
    f.handoff = HandoffFacts::MissingFiles(vec!["src/a.rs".into()]);
    exit(&mut a, f.clone(), 5);
    assert!(matches!(a.state, AgentState::Retrying { .. }), "{:?}", a.state);
    let t = 5 + retry_delay(&a, 5);
    next_attempt(&mut a, t);
    assert!(a.current().unwrap().context_note.as_ref().unwrap().contains("corrective"));
    exit(&mut a, f, t + 5);
    assert!(matches!(&a.state, AgentState::Escalated { reason, .. } if reason.contains("src/a.rs")), "{:?}", a.state);
    // require_handoff: completing without one is a deliverable failure
    let mut b = running("X");
    b.spec.policy.require_handoff = true;
    exit(&mut b, facts(ProcessEnd::Exited { code: 0 }, None), 5);
    assert!(
        matches!(b.current().unwrap().run, AttemptRun::Ended { ref failure_type, .. } if failure_type.as_deref() == Some("deliverable"))
    );
}

#[test]
fn second_retry_carries_the_retry_guidance() {
    let mut a = running("IMPLEMENTER");
    a.spec.policy.retry_guidance = Some("Spell it out.".into());
    exit(&mut a, crash(1, Some("timeout")), 5);
    let mut t = 5 + retry_delay(&a, 5);
    next_attempt(&mut a, t);
    assert!(a.current().unwrap().context_note.is_none());
    exit(&mut a, crash(1, Some("timeout")), t + 5);
    t += 5 + retry_delay(&a, t + 5);
    next_attempt(&mut a, t);
    assert_eq!(a.current().unwrap().context_note.as_deref(), Some("Spell it out."));
    assert_eq!(attempt_history(&a).len(), 2);
}

#[test]
fn heartbeat_staleness_and_attempt_timeout_are_two_numbers() {
    let d = rules();
    let mut a = running("X"); // 20m attempt timeout, 5m heartbeat
    // a plain command that never reports is never stale: only its attempt timeout bounds it
    assert_eq!(next_deadline(&a), Some(20 * M));
    let r = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
    status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(M));
    assert_eq!(next_deadline(&a), Some(6 * M));
    // output is a heartbeat too
    output_seen(&mut a, 5 * M);
    assert_eq!(next_deadline(&a), Some(10 * M));
    assert!(tick(&mut a, &at(10 * M - 1)).is_empty());
    let acts = tick(&mut a, &at(10 * M));
    assert!(matches!(a.state, AgentState::Stopping { cause: StopCause::Heartbeat, .. }));
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }));
    assert_eq!(a.state.name(), "stale");
}

#[test]
fn partial_progress_is_not_mistaken_for_a_stall() {
    let d = rules();
    let r = Rules { user: &[], defaults: &d };
    let mut a = running("X"); // stall 10m, heartbeat 5m
    a.attempts[0].timeout_ms = Some(60 * M);
    // progress moves every 4 minutes: never stale, never stalled
    for i in 1..=10u64 {
        let rep = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
        status_reported(&mut a, &rep, &r, &at(i * 4 * M / 2));
        assert!(tick(&mut a, &at(i * 4 * M / 2 + 1)).is_empty());
    }
    assert_eq!(a.state, AgentState::Running);
    // heartbeats without change: alive, but silent after stall_timeout
    let mut b = running("X");
    b.spec.policy.attempt_timeout_ms = 60 * M;
    b.attempts[0].timeout_ms = Some(60 * M);
    let first = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
    status_reported(&mut b, &first, &r, &at(M));
    for i in 2..=11u64 {
        let same = Report { changed: false, ..first.clone() };
        status_reported(&mut b, &same, &r, &at(i * M));
        tick(&mut b, &at(i * M));
    }
    assert!(matches!(b.state, AgentState::Stopping { cause: StopCause::Silent, .. }), "{:?}", b.state);
}

/// `hold_reason` for an agent of role X whose role breaker is `b`.
fn held(p: &HealthPolicy, b: &Breaker, running: usize, open: usize, r: &Resources, now: u64) -> Option<String> {
    let breakers = super::health::Breakers { by_key: [("X".to_string(), b.clone())].into() };
    hold_reason(p, &breakers, "X", running, open, r, now)
}

#[test]
fn breaker_opens_after_3_failures_in_5_minutes_and_probes_after_cooldown() {
    let p = HealthPolicy::default();
    let r = Resources::default();
    let mut b = Breaker::default();
    assert!(!b.failure("a", 0, &p));
    assert!(!b.failure("b", 2 * M, &p));
    // the first has aged out of the window by now: still closed
    assert!(!b.failure("c", 5 * M + 1, &p));
    assert!(b.failure("d", 6 * M, &p), "3 failures within 5 minutes open it");
    assert!(held(&p, &b, 0, 0, &r, 6 * M + 1).unwrap().contains("circuit breaker open"));
    b.advance(7 * M);
    assert_eq!(b.name(), "half_open");
    assert_eq!(held(&p, &b, 0, 0, &r, 7 * M), None, "one probe goes through");
    b.started("probe");
    assert!(held(&p, &b, 1, 0, &r, 7 * M).unwrap().contains("probe"));
    // the probe fails: open again; a later probe succeeds: closed
    assert!(b.failure("probe", 7 * M + 5, &p));
    b.advance(9 * M);
    b.started("probe2");
    assert!(b.success("probe2"));
    assert_eq!(b, Breaker::Closed { failures: vec![] });
}

#[test]
fn capacity_of_5_queues_the_sixth() {
    let p = HealthPolicy::default();
    let b = Breaker::default();
    let r = Resources::default();
    assert_eq!(held(&p, &b, 4, 0, &r, 0), None);
    assert_eq!(held(&p, &b, 5, 0, &r, 0).unwrap(), "capacity: 5 of 5 agents running");
    let p2 = HealthPolicy { min_free_memory: Some(1 << 30), max_load: Some(4.0), max_open_escalations: Some(1), ..p };
    let low = Resources { free_memory: Some(100 << 20), load: Some(1.0) };
    assert!(held(&p2, &b, 0, 0, &low, 0).unwrap().contains("free memory"));
    let busy = Resources { free_memory: Some(2 << 30), load: Some(9.0) };
    assert!(held(&p2, &b, 0, 0, &busy, 0).unwrap().contains("load"));
    let fine = Resources { free_memory: Some(2 << 30), load: Some(1.0) };
    assert!(held(&p2, &b, 0, 1, &fine, 0).unwrap().contains("open escalation"));
}

#[test]
fn kill_is_final_and_queued_agents_die_without_a_process() {
    let mut a = running("X");
    let acts = kill_requested(&mut a, 2_000, &at(3)).unwrap();
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }));
    let acts = exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), 4);
    assert_eq!(a.state, AgentState::Killed);
    assert!(!acts.iter().any(|x| matches!(x, Action::Outcome { .. })), "a kill is no failure for the breaker");
    assert!(kill_requested(&mut a, 0, &at(5)).is_err());
    let mut q = agent_with("X", &["agent-000-Y"]);
    kill_requested(&mut q, 0, &at(1)).unwrap();
    assert_eq!(q.state, AgentState::Killed);
}

#[test]
fn human_retry_starts_a_fresh_budget() {
    let mut a = running("X");
    a.spec.policy.max_retries = 0;
    exit(&mut a, crash(1, Some("boom")), 5);
    assert!(matches!(a.state, AgentState::Escalated { .. }));
    retry_requested(&mut a, Some("use the v2 API".into()), &at(10)).unwrap();
    assert!(matches!(a.state, AgentState::Queued { .. }));
    start(&mut a, 11);
    assert_eq!(a.current().unwrap().context_note.as_deref(), Some("use the v2 API"));
    assert_eq!(a.current().unwrap().timeout_ms, Some(20 * M), "a fresh budget restarts the progressive timeout");
    // retrying a running agent stops it first; the new attempt follows its exit
    let acts = retry_requested(&mut a, None, &at(12)).unwrap();
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }));
    exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), 13);
    assert!(matches!(a.state, AgentState::Queued { .. }), "{:?}", a.state);
}

#[test]
fn a_second_report_of_the_same_exit_changes_nothing() {
    let mut a = running("X");
    exit(&mut a, crash(3, None), 5);
    let before = a.clone();
    let d = rules();
    assert!(exited(&mut a, 1, crash(0, None), &Rules { user: &[], defaults: &d }, &at(9)).is_empty());
    assert_eq!(a, before);
}

#[test]
fn dependencies_gate_the_start() {
    let a = agent_with("X", &["agent-000-Y"]);
    let running = AgentState::Running;
    assert!(matches!(dependency_gate(&a.spec, |_| Some(&running)), Gate::Wait(r) if r.contains("agent-000-Y")));
    let done = AgentState::Complete;
    assert_eq!(dependency_gate(&a.spec, |_| Some(&done)), Gate::Ready);
    let failed = AgentState::Failed { reason: "x".into() };
    assert!(matches!(dependency_gate(&a.spec, |_| Some(&failed)), Gate::Fail(_)));
    assert!(matches!(dependency_gate(&a.spec, |_| None), Gate::Fail(_)));
}

#[test]
fn deadline_bounds_all_attempts_together() {
    let mut a = running("X");
    a.spec.policy.deadline_ms = Some(25 * M);
    a.spec.policy.max_retries = 5;
    exit(&mut a, crash(1, Some("timeout")), 10 * M);
    let t = 10 * M + retry_delay(&a, 10 * M);
    next_attempt(&mut a, t);
    assert_eq!(next_deadline(&a), Some(25 * M));
    tick(&mut a, &at(25 * M));
    exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), 25 * M + 1);
    assert!(matches!(&a.state, AgentState::Escalated { reason, .. } if reason.contains("deadline")), "{:?}", a.state);
}

#[test]
fn resource_shortage_is_known_without_reading_reasons() {
    use super::health::resources_short;
    let p = HealthPolicy { min_free_memory: Some(1 << 30), max_load: Some(4.0), ..HealthPolicy::default() };
    assert!(resources_short(&p, &Resources { free_memory: Some(1), load: Some(0.1) }));
    assert!(resources_short(&p, &Resources { free_memory: Some(2 << 30), load: Some(5.0) }));
    assert!(!resources_short(&p, &Resources { free_memory: Some(2 << 30), load: Some(1.0) }));
    assert!(!resources_short(&HealthPolicy::default(), &Resources { free_memory: Some(1), load: Some(99.0) }));
}

#[test]
fn finished_names_match_the_finished_states() {
    let states = [
        AgentState::Complete,
        AgentState::Failed { reason: String::new() },
        AgentState::Killed,
        AgentState::TimedOut { reason: String::new() },
        AgentState::Escalated { reason: String::new(), escalation: 0 },
        AgentState::Running,
        AgentState::Queued { reason: String::new() },
        AgentState::Retrying { next_mono: 0, reason: String::new() },
        AgentState::Blocked { reason: String::new(), escalation: 0 },
    ];
    for s in states {
        // a `blocked` agent is finished only when it needs a human (no process left)
        let by_name = AgentState::FINISHED.contains(&s.name()) || s.needs_human();
        assert_eq!(by_name, s.is_finished(), "{}", s.name());
        assert_eq!(AgentState::FINISHED_EVENTS.contains(&s.entry_event()), s.is_finished(), "{}", s.name());
    }
}

#[test]
fn an_endless_kill_grace_terms_now_and_never_kills_early() {
    let mut a = running("X");
    let acts = kill_requested(&mut a, u64::MAX, &at(3 * M)).unwrap();
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }));
    assert_eq!(next_deadline(&a), Some(u64::MAX));
    assert!(tick(&mut a, &at(3 * M + 1)).is_empty(), "KILL right after TERM");
    assert!(tick(&mut a, &at(u64::MAX - 1)).is_empty());
    // at the end of time the KILL goes out, and the next look cannot be later than that
    let acts = tick(&mut a, &at(u64::MAX));
    assert_eq!(acts, vec![Action::SignalGroup { pgid: 11, signal: Signal::Kill }]);
    assert_eq!(next_deadline(&a), Some(u64::MAX));
}

#[test]
fn endless_running_limits_never_come_due() {
    let d = rules();
    let mut a = agent_with("X", &[]);
    a.spec.policy = RolePolicy {
        attempt_timeout_ms: u64::MAX,
        heartbeat_timeout_ms: u64::MAX,
        stall_timeout_ms: u64::MAX,
        start_timeout_ms: Some(u64::MAX),
        deadline_ms: Some(u64::MAX),
        backoff: Backoff { initial_ms: u64::MAX, coefficient: 100.0, max_ms: None, jitter: Jitter::None },
        ..RolePolicy::seed("X")
    };
    start(&mut a, M);
    // deadline, attempt timeout and start timeout
    assert_eq!(next_deadline(&a), Some(u64::MAX));
    assert!(tick(&mut a, &at(2 * M)).is_empty());
    // heartbeat and stall
    let r = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
    status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(2 * M));
    output_seen(&mut a, 3 * M);
    assert_eq!(next_deadline(&a), Some(u64::MAX));
    assert!(tick(&mut a, &at(u64::MAX - 1)).is_empty());
    assert_eq!(a.state, AgentState::Running);
    // a failure late on the clock: the deadline has not passed, and the backoff ends no sooner than now
    let late = u64::MAX - M;
    exit(&mut a, crash(1, Some("rate limit exceeded")), late);
    assert!(matches!(a.state, AgentState::Retrying { next_mono: u64::MAX, .. }), "{:?}", a.state);
    assert!(tick(&mut a, &at(late + 1)).is_empty());
}

#[test]
fn an_endless_breaker_cooldown_keeps_it_open() {
    let p = HealthPolicy { breaker_cooldown_ms: u64::MAX, breaker_window_ms: u64::MAX, ..HealthPolicy::default() };
    let mut b = Breaker::default();
    assert!(!b.failure("a", M, &p));
    assert!(!b.failure("b", 2 * M, &p));
    assert!(b.failure("c", 3 * M, &p));
    assert_eq!(b.next_deadline(), Some(u64::MAX));
    let why = held(&p, &b, 0, 0, &Resources::default(), 0).unwrap();
    assert!(why.contains("circuit breaker open"), "{why}");
    b.advance(u64::MAX - 1);
    assert_eq!(b.name(), "open");
}

#[test]
fn overload_and_server_errors_are_transient_by_default() {
    let d = rules();
    let transient = [
        "API Error: 529 Overloaded",
        "{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}",
        "Anthropic is experiencing a server-side issue",
        "the service is temporarily unavailable",
        "We're currently experiencing high demand",
        "HTTP 500 Internal Server Error",
        "http status 502",
        "upstream returned HTTP/1.1 504 Gateway Timeout",
        "status: 503",
    ];
    for text in transient {
        for (finding, tail) in [(Some(text), ""), (None, text)] {
            let f = Facts {
                failure: FailureType::Crash,
                exit_code: Some(1),
                signal: None,
                last_finding: finding,
                output_tail: tail,
                api_error_status: None,
                result_text: None,
            };
            assert_eq!(
                super::classify::classify(&[], &d, &f).0,
                RuleAction::Retry,
                "{text:?} (finding: {})",
                finding.is_some()
            );
        }
    }
    for text in
        ["Segmentation fault (core dumped)", "error at line 512", "assertion failed: 5000 == 5001", "permission denied"]
    {
        let f = Facts {
            failure: FailureType::Crash,
            exit_code: Some(1),
            signal: None,
            last_finding: None,
            output_tail: text,
            api_error_status: None,
            result_text: None,
        };
        assert_eq!(super::classify::classify(&[], &d, &f).0, RuleAction::Escalate, "{text:?}");
    }
}

fn ended_attempt(findings_before: Option<usize>, log_start: Option<u64>) -> Attempt {
    let mut a = running("X");
    let at = a.current_mut().unwrap();
    at.findings_before = findings_before;
    at.log_start = log_start;
    at.clone()
}

#[test]
fn an_attempt_sees_only_its_own_findings_and_output() {
    use super::evidence::{attempt_findings, output_window};
    let all: Vec<serde_json::Value> = ["rate limit exceeded", "mine"].iter().map(|s| serde_json::json!(s)).collect();
    assert_eq!(attempt_findings(&ended_attempt(Some(1), None), &all, 0), &all[1..]);
    assert!(attempt_findings(&ended_attempt(Some(2), None), &all, 0).is_empty());
    // the oldest findings dropped to bound the file still count
    assert_eq!(attempt_findings(&ended_attempt(Some(11), None), &all, 10), &all[1..]);
    assert_eq!(attempt_findings(&ended_attempt(Some(5), None), &all, 10), &all[..]);
    // a status file rewritten from scratch by the agent is all this attempt's
    assert_eq!(attempt_findings(&ended_attempt(Some(5), None), &all, 0), &all[..]);
    // a record from before baselines were kept: the whole file
    assert_eq!(attempt_findings(&ended_attempt(None, None), &all, 0), &all[..]);
    // output: the last `tail` bytes, never before the attempt's own start
    assert_eq!(output_window(&ended_attempt(None, Some(9_000)), 10_000, 4096), (9_000, 1_000));
    assert_eq!(output_window(&ended_attempt(None, Some(1_000)), 10_000, 4096), (10_000 - 4096, 4096));
    assert_eq!(output_window(&ended_attempt(None, Some(20_000)), 10_000, 4096), (10_000, 0));
    assert_eq!(output_window(&ended_attempt(None, None), 100, 4096), (0, 100));
}

#[test]
fn a_later_attempt_is_judged_on_its_own_evidence() {
    let mut a = running("IMPLEMENTER");
    exit(&mut a, crash(1, Some("rate limit exceeded")), 5);
    let t = 5 + retry_delay(&a, 5);
    next_attempt(&mut a, t);
    // attempt 2 segfaults and says nothing: what attempt 1 said does not make it transient
    let acts = exit(&mut a, facts(ProcessEnd::Signaled { signal: 11 }, None), t + 5);
    let AgentState::Escalated { reason, .. } = &a.state else { panic!("{:?}", a.state) };
    assert!(acts.iter().any(|x| matches!(x, Action::Escalate { .. })));
    let AttemptRun::Ended { reason: Some(r2), action: Some(act2), .. } = &a.attempts[1].run else { panic!() };
    assert!(!r2.contains("rate limit"), "attempt 2's own reason quotes attempt 1: {r2}");
    assert_eq!(act2, "escalate");
    // the escalation keeps every attempt's reason, each under its own attempt
    assert!(reason.contains("attempt 1 (crash)") && reason.contains("rate limit"), "{reason}");
}

fn blocked_on(a: &mut Agent, finding: &str, t: u64) -> Vec<Action> {
    let d = rules();
    let r = Report { status: ReportedStatus::Blocked, last_finding: Some(finding.into()), changed: true };
    status_reported(a, &r, &Rules { user: &[], defaults: &d }, &at(t))
}

#[test]
fn blocked_with_nobody_left_needs_a_human_at_once() {
    let mut a = running("X");
    blocked_on(&mut a, "waiting on external API", 5);
    let mut f = facts(ProcessEnd::Exited { code: 0 }, Some("waiting on external API"));
    f.reported = Some(ReportedStatus::Blocked);
    let acts = exit(&mut a, f, 10);
    let AgentState::Blocked { reason, .. } = &a.state else { panic!("{:?}", a.state) };
    assert!(reason.contains("waiting on external API"), "{reason}");
    assert!(a.state.needs_human() && a.state.is_finished());
    assert!(acts.iter().any(|x| matches!(x, Action::Escalate { .. })), "{acts:?}");
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "needs_human", .. })), "{acts:?}");
    assert!(!acts.iter().any(|x| matches!(x, Action::Emit { kind: "retry_scheduled", .. })));
    assert_eq!(next_deadline(&a), None, "nothing is due: a human is");
    a.state.link_escalation(7);
    assert_eq!(a.state.escalation(), Some(7));
    // a dependent does not wait on it forever
    let dep = agent_with("Y", &["agent-001-X"]);
    assert!(matches!(dependency_gate(&dep.spec, |_| Some(&a.state)), Gate::Fail(_)));
    // a message resumes it with a fresh budget; so does a retry
    let mut b = a.clone();
    assert!(!told(&mut b, &at(20)).is_empty());
    assert!(matches!(b.state, AgentState::Queued { .. }));
    assert_eq!(b.budget_start, 1);
    assert!(retry_requested(&mut a, None, &at(20)).is_ok());
    assert!(matches!(a.state, AgentState::Queued { .. }));
    // a message to a running agent changes nothing about its state
    let mut c = running("X");
    assert!(told(&mut c, &at(5)).is_empty());
    assert_eq!(c.state, AgentState::Running);
}

#[test]
fn an_exit_while_a_wait_rule_holds_needs_a_human_too() {
    let d = rules();
    let user = vec![super::classify::Rule {
        name: "exit 75 waits".into(),
        exit_codes: vec![75],
        signals: vec![],
        failure_types: vec![],
        finding: None,
        output: None,
        api_error_status: vec![],
        result: None,
        action: RuleAction::Wait,
    }];
    let mut a = running("X");
    let acts = exited(&mut a, 1, crash(75, None), &Rules { user: &user, defaults: &d }, &at(5));
    assert!(matches!(a.state, AgentState::Blocked { .. }), "{:?}", a.state);
    assert!(acts.iter().any(|x| matches!(x, Action::Escalate { .. })));
}

#[test]
fn blocked_timeout_bounds_a_live_wait() {
    let mut a = running("X");
    a.spec.policy.blocked_timeout_ms = 10 * M;
    blocked_on(&mut a, "waiting for the staging DB", M);
    assert_eq!(next_deadline(&a), Some(11 * M));
    assert!(tick(&mut a, &at(11 * M - 1)).is_empty());
    let acts = tick(&mut a, &at(11 * M));
    assert!(acts.contains(&Action::SignalGroup { pgid: 11, signal: Signal::Term }), "{acts:?}");
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "blocked_timeout", .. })), "{acts:?}");
    let acts = exit(&mut a, facts(ProcessEnd::Signaled { signal: 15 }, None), 11 * M + 10);
    let AgentState::Blocked { reason, .. } = &a.state else { panic!("{:?}", a.state) };
    assert!(reason.contains("blocked_timeout") && reason.contains("staging DB"), "{reason}");
    assert!(acts.iter().any(|x| matches!(x, Action::Escalate { .. })));
    assert_eq!(a.attempts.len(), 1, "no retry is spent on a wait");
}

#[test]
fn the_attempt_timeout_does_not_count_time_spent_waiting() {
    let d = rules();
    let mut a = running("X"); // 20m attempt timeout
    blocked_on(&mut a, "waiting for the staging DB", 5 * M);
    // 30 minutes blocked, then it goes on
    let r = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
    let acts = status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(35 * M));
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "unblocked", .. })), "{acts:?}");
    assert_eq!(a.view_name(), "running");
    // the attempt timeout moves by the 30 minutes waited; the heartbeat comes first now
    assert_eq!(a.current().unwrap().liveness.blocked_ms, 30 * M);
    assert_eq!(next_deadline(&a), Some(40 * M));
    let mut quiet = a.clone();
    quiet.spec.policy.heartbeat_timeout_ms = u64::MAX;
    quiet.spec.policy.stall_timeout_ms = u64::MAX;
    assert_eq!(next_deadline(&quiet), Some(50 * M));
}

#[test]
fn streamed_output_is_progress_only_where_the_role_says_so() {
    let d = rules();
    let r = Rules { user: &[], defaults: &d };
    // Reports once at 1m, then only prints, every 30s, for 30 minutes.
    let run = |output_is_progress: bool| {
        let mut a = running("X"); // stall 10m, heartbeat 5m
        a.spec.policy.output_is_progress = output_is_progress;
        a.attempts[0].timeout_ms = Some(60 * M);
        let first = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
        status_reported(&mut a, &first, &r, &at(M));
        for i in 3..=60u64 {
            let t = i * M / 2;
            output_seen(&mut a, t);
            if !tick(&mut a, &at(t)).is_empty() {
                return (a.state, t);
            }
        }
        (a.state, 0)
    };
    // Output is a heartbeat either way (never stale), but progress only when configured.
    let (state, when) = run(false);
    assert!(matches!(state, AgentState::Stopping { cause: StopCause::Silent, .. }), "{state:?}");
    assert_eq!(when, 11 * M);
    let (state, _) = run(true);
    assert_eq!(state, AgentState::Running);
}

#[test]
fn an_attempt_its_shim_stopped_at_the_deadline_is_a_timeout() {
    let d = rules();
    let r = Rules { user: &[], defaults: &d };
    let mut a = running("X");
    // No supervisor ran at the deadline: the registry still says running.
    let f = ExitFacts { timed_out: true, ..facts(ProcessEnd::Signaled { signal: 15 }, None) };
    let acts = exited(&mut a, 1, f, &r, &at(21 * M));
    assert!(
        acts.iter().any(|x| matches!(x, Action::Emit { kind: "classified", data } if data["failureType"] == "timeout")),
        "{acts:?}"
    );
    // The log records the stop before the exit, as when the supervisor makes it.
    let kinds: Vec<&str> =
        acts.iter().filter_map(|x| if let Action::Emit { kind, .. } = x { Some(*kind) } else { None }).collect();
    assert_eq!(kinds.first(), Some(&"timeout"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"exited"), "{kinds:?}");
    let AttemptRun::Ended { reason, .. } = &a.attempts[0].run else { panic!() };
    assert!(reason.as_deref().unwrap_or("").contains("attempt timeout"), "{reason:?}");
    // Without the shim's word, the same end is a crash.
    let mut b = running("X");
    exited(&mut b, 1, facts(ProcessEnd::Signaled { signal: 15 }, None), &r, &at(21 * M));
    let AttemptRun::Ended { failure_type, .. } = &b.attempts[0].run else { panic!() };
    assert_eq!(failure_type.as_deref(), Some("crash"));
}

fn escalation(n: u64, agent: &str, conflict: Option<&[&str]>) -> Escalation {
    Escalation {
        n,
        agent_id: AgentId::parse(agent).unwrap(),
        reason: "r".into(),
        opened_at: "t".into(),
        resolved_at: None,
        note: None,
        conflict: conflict.map(|agents| super::escalation::ConflictRef {
            key: "port".into(),
            kind: "finding".into(),
            agents: agents.iter().map(|a| a.to_string()).collect(),
        }),
        answer: None,
        outcome: None,
    }
}

#[test]
fn a_conflict_answered_by_a_human_is_never_asked_again() {
    use super::escalation::{Answer, already_open, check_answer};
    let both = ["agent-001-X", "agent-002-X"];
    let mut c = escalation(1, "agent-001-X", Some(&both));
    let conflict = c.conflict.clone().unwrap();
    let list = vec![c.clone()];
    assert_eq!(already_open(&list, "agent-001-X", "other words", Some(&conflict)).map(|e| e.n), Some(1));
    c.resolved_at = Some("t".into());
    let list = vec![c.clone()];
    assert_eq!(
        already_open(&list, "agent-001-X", "r", Some(&conflict)).map(|e| e.n),
        Some(1),
        "resolved: not reopened"
    );
    // an agent's own escalation is opened again only once the last one is closed
    let own = vec![escalation(2, "agent-001-X", None)];
    assert!(already_open(&own, "agent-001-X", "r", None).is_some());
    assert!(already_open(&own, "agent-001-X", "other", None).is_none());
    assert!(already_open(&list, "agent-001-X", "r", None).is_none(), "a conflict is not the agent's own");
    // what an answer may say
    let open = escalation(3, "agent-001-X", Some(&both));
    let win = |w: &str| Answer { winner: Some(w.into()), ..Default::default() };
    assert!(check_answer(&open, &win("agent-002-X")).is_ok());
    assert!(check_answer(&open, &win("agent-009-X")).unwrap_err().contains("agent-001-X, agent-002-X"));
    assert!(check_answer(&open, &Answer { retry: true, ..Default::default() }).is_err());
    let both_given = Answer { choose: Some(serde_json::json!(1)), winner: Some("agent-001-X".into()), retry: false };
    assert!(check_answer(&open, &both_given).is_err());
    let agents_own = escalation(4, "agent-001-X", None);
    assert!(check_answer(&agents_own, &win("agent-001-X")).is_err());
    assert!(check_answer(&agents_own, &Answer { retry: true, ..Default::default() }).is_ok());
    assert!(check_answer(&c, &Answer::default()).unwrap_err().contains("already resolved"));
}

#[test]
fn resolving_an_agents_escalation_says_what_becomes_of_it() {
    let mut a = running("X");
    a.spec.policy.max_retries = 0;
    exit(&mut a, crash(2, Some("schema conflicts")), 5);
    a.state.link_escalation(6);
    let mut e = escalation(6, "agent-001-X", None);
    e.note = Some("fixed the schema by hand".into());
    let mut kept = a.clone();
    let (said, acts) = super::escalation::resolved(&mut kept, &e, false, &at(10));
    let AgentState::Failed { reason } = &kept.state else { panic!("{:?}", kept.state) };
    assert!(reason.contains("escalation 6") && reason.contains("fixed the schema by hand"), "{reason}");
    assert!(said.contains("stays failed"), "{said}");
    assert!(!kept.state.needs_human() && !acts.is_empty());
    let (said, _) = super::escalation::resolved(&mut a, &e, true, &at(10));
    assert!(said.contains("runs again"), "{said}");
    assert!(matches!(a.state, AgentState::Queued { .. }));
    assert_eq!(a.budget_start, 1, "a fresh budget");
}

#[test]
fn the_breaker_is_per_role_by_default() {
    use super::health::{BreakerScope, Breakers};
    let p = HealthPolicy::default(); // 3 failures within 5m
    let mut b = Breakers::default();
    for i in 0..4 {
        b.outcome(&p, "NET", &format!("agent-00{i}-NET"), false, i * S);
    }
    let r = Resources::default();
    let held = hold_reason(&p, &b, "NET", 0, 0, &r, 5 * S).unwrap();
    assert!(held.starts_with("NET: circuit breaker open after 3 recent failures"), "{held}");
    assert_eq!(hold_reason(&p, &b, "OTHER", 0, 0, &r, 5 * S), None, "another role is not held");
    assert_eq!(hold_reason(&p, &b, super::health::GLOBAL, 0, 0, &r, 5 * S), None);
    // one breaker for everyone when asked for
    let g = HealthPolicy { breaker_scope: BreakerScope::Global, ..HealthPolicy::default() };
    let mut b = Breakers::default();
    for i in 0..3 {
        b.outcome(&g, "NET", "agent-001-NET", false, i * S);
    }
    assert!(hold_reason(&g, &b, "OTHER", 0, 0, &r, 5 * S).unwrap().starts_with("circuit breaker open"));
    // cooldown over: a probe of the role goes through, and its success closes it
    let mut b = Breakers::default();
    for i in 0..3 {
        b.outcome(&p, "NET", "agent-001-NET", false, i * S);
    }
    assert_eq!(b.next_deadline(), Some(2 * S + M));
    assert_eq!(b.advance(2 * S + M), ["NET"]);
    assert_eq!(hold_reason(&p, &b, "NET", 0, 0, &r, 2 * S + M), None);
    b.started(&p, "NET", "agent-009-NET");
    assert!(hold_reason(&p, &b, "NET", 0, 0, &r, 2 * S + M).unwrap().contains("waiting on probe agent-009-NET"));
    assert!(b.outcome(&p, "NET", "agent-009-NET", true, 3 * M).is_some());
    assert!(b.by_key.is_empty(), "a closed breaker with no failures is forgotten");
}

#[test]
fn reasons_are_worded_for_their_numbers() {
    let p = HealthPolicy { max_concurrent: 1, max_open_escalations: Some(1), ..HealthPolicy::default() };
    let b = super::health::Breakers::default();
    let r = Resources::default();
    assert_eq!(hold_reason(&p, &b, "X", 1, 0, &r, 0).unwrap(), "capacity: 1 of 1 agent running");
    assert_eq!(hold_reason(&p, &b, "X", 0, 1, &r, 0).unwrap(), "1 open escalation (at most 1 allowed)");
    let one = Breaker::Open { until_mono: 10 * S, failures: 1 };
    assert!(one.blocks(0).unwrap().contains("after 1 recent failure;"), "{:?}", one.blocks(0));
    assert_eq!(super::plural(2, "attempt", "attempts"), "2 attempts");
}

#[test]
fn a_queued_agents_reason_is_the_admission_rule_now() {
    let dep = agent_with("Y", &["agent-001-X"]);
    let running = AgentState::Running;
    let gate = admission(&dep.spec, |_| Some(&running), |_| Some("held".into()));
    assert!(matches!(gate, Gate::Wait(w) if w.contains("agent-001-X")), "dependencies come first");
    let done = AgentState::Complete;
    assert_eq!(admission(&dep.spec, |_| Some(&done), |role| Some(format!("{role} held"))), Gate::Wait("Y held".into()));
    assert_eq!(admission(&dep.spec, |_| Some(&done), |_| None), Gate::Ready);
}

#[test]
fn timeout_advice_ignores_attempts_ended_by_a_timeout() {
    let mut list = Vec::new();
    for (secs, timed_out) in [(50, false), (55, false), (60, true), (60, true), (60, true)] {
        let mut a = running("SLOW");
        a.spec.policy.attempt_timeout_ms = 60 * S;
        let f = if timed_out {
            facts(ProcessEnd::Signaled { signal: 15 }, None)
        } else {
            facts(ProcessEnd::Exited { code: 0 }, None)
        };
        if timed_out {
            tick(&mut a, &at(20 * M));
        }
        exit(&mut a, f, 20 * M + 5);
        let at0 = &mut a.attempts[0];
        at0.started_at = "2026-01-01T00:00:00Z".into();
        if let AttemptRun::Ended { ended_at, .. } = &mut at0.run {
            *ended_at = format!("2026-01-01T00:00:{secs:02}Z");
        }
        list.push(a);
    }
    let refs: Vec<&Agent> = list.iter().collect();
    let p = &crate::memory::patterns(&refs)[0];
    assert_eq!(p.failure_types.get("timeout"), Some(&3), "{p:?}");
    assert_eq!(p.duration_max_ms, Some(55 * S), "timed-out attempts ran to the limit, not to the end of the work");
    assert!(p.advice.as_deref().unwrap_or("").contains("is near its 1m timeout"), "{p:?}");
}

#[test]
fn anomalies_are_one_rule_for_every_face() {
    use super::anomaly::{Seen, anomalies};
    let seen = Seen { reported: Some(ReportedStatus::Active), unreadable: false, queue_reason: None };
    let mut a = running("X"); // heartbeat 5m, stall 10m
    let d = rules();
    let r = Report { status: ReportedStatus::Active, last_finding: None, changed: true };
    status_reported(&mut a, &r, &Rules { user: &[], defaults: &d }, &at(0));
    let names =
        |a: &Agent, seen: &Seen, t: u64| anomalies(a, seen, t).iter().map(ToString::to_string).collect::<Vec<_>>();
    assert!(names(&a, &seen, 4 * M).is_empty());
    assert_eq!(names(&a, &seen, 5 * M + 1), ["STALE", "SLOW"]);
    // waiting on a blocker is neither slow nor running
    blocked_on(&mut a, "waiting for the staging DB", 6 * M);
    let blocked = Seen { reported: Some(ReportedStatus::Blocked), ..seen };
    assert_eq!(names(&a, &blocked, 6 * M + 1), ["BLOCKED"]);
    let mut q = agent_with("X", &[]);
    let held = Seen { reported: None, unreadable: true, queue_reason: Some("capacity: 5 of 5 agents running") };
    assert_eq!(names(&q, &held, 0), ["UNREADABLE", "QUEUED: capacity: 5 of 5 agents running"]);
    q.state = AgentState::Escalated { reason: "r".into(), escalation: 3 };
    let none = Seen { reported: None, unreadable: false, queue_reason: None };
    assert_eq!(names(&q, &none, 0), ["FAILED", "NEEDS-HUMAN #3"]);
    q.state = AgentState::Retrying { next_mono: 10 * S + 1, reason: "r".into() };
    assert_eq!(names(&q, &none, 0), ["RETRYING in 11s"]);
}

mod backoff_schedule {
    use super::super::role::{Backoff, Jitter};
    use proptest::prelude::*;

    proptest! {
        /// For any configuration: delays never shrink from one retry to the next, never
        /// exceed `max`, start at `initial` (capped), and full jitter stays within the
        /// un-jittered delay.
        #[test]
        fn delays_grow_are_capped_and_jitter_stays_below(
            initial in 0u64..10_000_000,
            coefficient in 1.0f64..100.0,
            max in proptest::option::of(0u64..100_000_000),
            retry in 1u32..200,
            sample in 0.0f64..1.0,
        ) {
            let b = Backoff { initial_ms: initial, coefficient, max_ms: max, jitter: Jitter::None };
            let (this, next) = (b.delay_ms(retry, 0.5), b.delay_ms(retry + 1, 0.5));
            prop_assert!(next >= this, "retry {retry}: {this} then {next}");
            if let Some(m) = max {
                prop_assert!(this <= m);
            }
            prop_assert_eq!(b.delay_ms(1, 0.5), max.map_or(initial, |m| initial.min(m)));
            let j = Backoff { jitter: Jitter::Full, ..b.clone() };
            prop_assert!(j.delay_ms(retry, sample) <= this);
        }
    }
}

#[test]
fn an_attempts_end_feeds_a_breaker_only_when_it_says_something_of_the_work() {
    use crate::policy::health::breaker_outcome;
    assert_eq!(breaker_outcome("complete"), Some(true));
    for s in ["failed", "timed_out", "escalated"] {
        assert_eq!(breaker_outcome(s), Some(false), "{s}");
    }
    for s in ["killed", "lost", "running", "queued", "blocked"] {
        assert_eq!(breaker_outcome(s), None, "{s}");
    }
}
