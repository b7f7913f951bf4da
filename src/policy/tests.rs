//! Policy-core tests on a simulated clock: no processes, no sleeps.

use super::agent::*;
use super::lifecycle::*;
use crate::protocol::AgentId;
use crate::protocol::files::ReportedStatus;

fn at(mono: u64) -> Now {
    Now {
        wall: format!("t+{mono}"),
        mono,
    }
}

fn agent(timeout_ms: Option<u64>, after: &[&str]) -> Agent {
    Agent {
        spec: AgentSpec {
            id: AgentId::parse("agent-001-X").unwrap(),
            role: "X".into(),
            task: "t".into(),
            scope: None,
            constraints: vec![],
            after: after.iter().map(|a| AgentId::parse(a).unwrap()).collect(),
            command: vec!["true".into()],
            template: false,
            cwd: "/".into(),
            env: vec![],
            attempt_timeout_ms: timeout_ms,
            max_retries: 1,
            spawned_at: "t".into(),
        },
        state: AgentState::Queued {
            reason: "new".into(),
        },
        attempts: vec![],
        updated_at: "t".into(),
    }
}

fn running(timeout_ms: Option<u64>) -> Agent {
    let mut a = agent(timeout_ms, &[]);
    assert_eq!(
        admit(&mut a, Gate::Ready, &at(0), "h".into()),
        vec![Action::Spawn]
    );
    started(&mut a, 10, 11, &at(1));
    a
}

#[test]
fn exit_codes_decide_the_outcome() {
    let mut a = running(None);
    exited(&mut a, 1, ProcessEnd::Exited { code: 0 }, None, &at(5));
    assert_eq!(a.state, AgentState::Complete);

    let mut a = running(None);
    exited(
        &mut a,
        1,
        ProcessEnd::Exited { code: 7 },
        Some((ReportedStatus::Active, Some("boom".into()))),
        &at(5),
    );
    assert!(
        matches!(&a.state, AgentState::Failed { reason } if reason.contains("code 7") && reason.contains("boom"))
    );
    assert_eq!(a.current().unwrap().ended().unwrap().1.exit_code(), Some(7));

    // exit 0 but the agent said it failed: not a success
    let mut a = running(None);
    exited(
        &mut a,
        1,
        ProcessEnd::Exited { code: 0 },
        Some((ReportedStatus::Failed, None)),
        &at(5),
    );
    assert!(matches!(a.state, AgentState::Failed { .. }));
}

#[test]
fn a_second_report_of_the_same_exit_changes_nothing() {
    let mut a = running(None);
    exited(&mut a, 1, ProcessEnd::Exited { code: 3 }, None, &at(5));
    let before = a.clone();
    assert!(exited(&mut a, 1, ProcessEnd::Exited { code: 0 }, None, &at(9)).is_empty());
    assert_eq!(a, before);
}

#[test]
fn attempt_timeout_terms_then_kills_the_group() {
    let mut a = running(Some(1_000));
    assert_eq!(next_deadline(&a), Some(1_000));
    assert!(tick(&mut a, &at(999)).is_empty());
    let acts = tick(&mut a, &at(1_000));
    assert!(acts.contains(&Action::SignalGroup {
        pgid: 11,
        signal: Signal::Term
    }));
    assert_eq!(next_deadline(&a), Some(1_000 + TIMEOUT_GRACE_MS));
    let acts = tick(&mut a, &at(1_000 + TIMEOUT_GRACE_MS));
    assert!(acts.contains(&Action::SignalGroup {
        pgid: 11,
        signal: Signal::Kill
    }));
    exited(
        &mut a,
        1,
        ProcessEnd::Signaled { signal: 9 },
        None,
        &at(7_000),
    );
    assert!(matches!(&a.state, AgentState::TimedOut { reason } if reason.contains("1s")));
}

#[test]
fn kill_request_is_final_and_queued_agents_die_without_a_process() {
    let mut a = running(None);
    let acts = kill_requested(&mut a, 2_000, &at(3)).unwrap();
    assert!(acts.contains(&Action::SignalGroup {
        pgid: 11,
        signal: Signal::Term
    }));
    exited(&mut a, 1, ProcessEnd::Signaled { signal: 15 }, None, &at(4));
    assert_eq!(a.state, AgentState::Killed);
    assert!(kill_requested(&mut a, 0, &at(5)).is_err());

    let mut q = agent(None, &["agent-000-Y"]);
    let acts = kill_requested(&mut q, 0, &at(1)).unwrap();
    assert!(!acts.iter().any(|x| matches!(x, Action::SignalGroup { .. })));
    assert_eq!(q.state, AgentState::Killed);
}

#[test]
fn dependencies_gate_the_start() {
    let a = agent(None, &["agent-000-Y"]);
    let running = AgentState::Running;
    assert!(
        matches!(dependency_gate(&a.spec, |_| Some(&running)), Gate::Wait(r) if r.contains("agent-000-Y"))
    );
    let done = AgentState::Complete;
    assert_eq!(dependency_gate(&a.spec, |_| Some(&done)), Gate::Ready);
    let failed = AgentState::Failed { reason: "x".into() };
    assert!(matches!(
        dependency_gate(&a.spec, |_| Some(&failed)),
        Gate::Fail(_)
    ));
    assert!(matches!(dependency_gate(&a.spec, |_| None), Gate::Fail(_)));
}
