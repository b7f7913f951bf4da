//! Policy-core tests of adapter agents on a simulated clock: what the CLI's result, limits
//! and usage make of an attempt's end, and how a limit holds its provider.

use super::agent::*;
use super::classify::default_rules;
use super::lifecycle::*;
use super::role::{RolePolicy, TokenPrices};
use crate::adapter::{Adapter, Limit, RunResult, Summary, Usage};
use crate::protocol::AgentId;

const S: u64 = 1_000;

fn at(mono: u64) -> Now {
    Now { wall: format!("t+{mono}"), mono, jitter: 0.5 }
}

fn agent(n: u32, adapter: Adapter) -> Agent {
    let mut policy = RolePolicy::seed("W");
    policy.backoff.initial_ms = 2 * S;
    Agent {
        spec: AgentSpec {
            id: AgentId::parse(&format!("agent-{n:03}-W")).unwrap(),
            role: "W".into(),
            task: "t".into(),
            scope: None,
            constraints: vec![],
            after: vec![],
            command: vec!["claude".into()],
            template: false,
            cwd: "/".into(),
            env: vec![],
            policy,
            spawned_at: "t".into(),
            idempotency_key: None,
            adapter,
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

fn running(adapter: Adapter, t: u64) -> Agent {
    let mut a = agent(1, adapter);
    admit(&mut a, Gate::Ready, &at(t), "h".into());
    started(&mut a, 10, 11, &at(t));
    a
}

fn end(code: i32, stream: Option<Summary>) -> ExitFacts {
    ExitFacts {
        end: ProcessEnd::Exited { code },
        reported: None,
        last_finding: None,
        handoff: HandoffFacts::Absent,
        output_tail: String::new(),
        ended_at: None,
        timed_out: false,
        stream,
        limit_wait_ms: None,
        after_result: false,
        verify: None,
        permanent: false,
    }
}

fn ok_result() -> RunResult {
    RunResult {
        ok: true,
        subtype: Some("success".into()),
        text: Some("done".into()),
        api_error_status: None,
        terminal_reason: None,
    }
}

fn summary(result: Option<RunResult>, usage: Option<Usage>) -> Summary {
    Summary { session_id: Some("s1".into()), usage, result, ..Default::default() }
}

fn exit(a: &mut Agent, f: ExitFacts, t: u64) -> Vec<Action> {
    let d = default_rules();
    let n = a.current().unwrap().attempt;
    exited(a, n, f, &Rules { user: &[], defaults: &d }, &at(t))
}

fn failure(a: &Agent) -> Option<String> {
    match &a.attempts.last().unwrap().run {
        AttemptRun::Ended { failure_type, .. } => failure_type.clone(),
        r => panic!("not ended: {r:?}"),
    }
}

fn reason(a: &Agent) -> String {
    match &a.attempts.last().unwrap().run {
        AttemptRun::Ended { reason, .. } => reason.clone().unwrap_or_default(),
        r => panic!("not ended: {r:?}"),
    }
}

#[test]
fn an_ok_result_with_exit_0_completes_and_records_the_stream() {
    let mut a = running(Adapter::ClaudeCode, 0);
    let u = Usage { input: 100, output: 20, cost_usd: Some(0.5), turns: Some(3), session_totals: true };
    let acts = exit(&mut a, end(0, Some(summary(Some(ok_result()), Some(u)))), 5 * S);
    assert_eq!(a.state, AgentState::Complete);
    let s = a.attempts[0].stream.as_ref().unwrap();
    assert_eq!(s.session_id.as_deref(), Some("s1"));
    assert_eq!((s.tokens.unwrap().input, s.tokens.unwrap().output, s.cost_usd, s.turns), (100, 20, Some(0.5), Some(3)));
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "result", .. })));
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "usage", .. })));
}

#[test]
fn an_error_result_after_exit_0_is_a_crash() {
    let mut a = running(Adapter::ClaudeCode, 0);
    let bad = RunResult { ok: false, api_error_status: Some(500), text: Some("API Error: 500".into()), ..ok_result() };
    exit(&mut a, end(0, Some(summary(Some(bad), None))), 5 * S);
    assert_eq!(failure(&a).as_deref(), Some("crash"));
    assert!(reason(&a).contains("the CLI reported an error (API status 500)"), "{}", reason(&a));
    assert!(matches!(a.state, AgentState::Retrying { .. }), "a 5xx is transient: {:?}", a.state);
}

#[test]
fn exit_0_without_a_result_is_a_crash_but_a_plain_agent_completes() {
    let mut a = running(Adapter::Codex, 0);
    exit(&mut a, end(0, Some(summary(None, None))), 5 * S);
    assert_eq!(failure(&a).as_deref(), Some("crash"));
    assert!(reason(&a).contains("ended without a result"));
    let mut p = running(Adapter::None, 0);
    exit(&mut p, end(0, None), 5 * S);
    assert_eq!(p.state, AgentState::Complete);
}

#[test]
fn stopped_after_lingering_past_an_ok_result_is_complete() {
    let mut a = running(Adapter::ClaudeCode, 0);
    let f = ExitFacts {
        end: ProcessEnd::Signaled { signal: 15 },
        after_result: true,
        ..end(0, Some(summary(Some(ok_result()), None)))
    };
    exit(&mut a, f, 20 * S);
    assert_eq!(a.state, AgentState::Complete);
}

#[test]
fn a_rate_limit_waits_for_the_reset_without_spending_a_retry_and_holds_the_provider() {
    let mut a = running(Adapter::ClaudeCode, 0);
    a.spec.policy.max_retries = 0;
    let mut s = summary(Some(RunResult { ok: false, api_error_status: Some(429), ..ok_result() }), None);
    s.rate_limited =
        Some(Limit { provider: "anthropic".into(), reset: None, message: "resets 7pm".into(), until_ms: None });
    let f = ExitFacts { limit_wait_ms: Some(30 * S), ..end(1, Some(s)) };
    let acts = exit(&mut a, f, 5 * S);
    assert!(
        matches!(&a.state, AgentState::Waiting { next_mono, provider, .. } if *next_mono == 35 * S && provider == "anthropic"),
        "{:?}",
        a.state
    );
    assert_eq!(a.view_name(), "waiting");
    assert!(!a.attempts[0].counted, "no retry spent");
    assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "rate_limited", .. })));
    assert!(
        acts.iter().any(|x| matches!(x, Action::RateLimited { provider } if provider == "anthropic")),
        "the provider's load is fed: {acts:?}"
    );
    assert!(!acts.iter().any(|x| matches!(x, Action::Outcome { .. })), "the breaker is not fed");
    // Another agent of the same provider is held, one of another provider is not.
    let holds = provider_holds([&a], 10 * S);
    let other = agent(2, Adapter::ClaudeCode);
    assert!(provider_gate(&other.spec, &holds, 10 * S).unwrap().contains("anthropic is rate-limited for 25s"));
    assert_eq!(provider_gate(&agent(3, Adapter::Codex).spec, &holds, 10 * S), None);
    assert!(provider_holds([&a], 35 * S).is_empty(), "the hold ends at the reset");
    // At the reset it queues again and starts within the same budget.
    assert_eq!(next_deadline(&a), Some(35 * S));
    assert!(tick(&mut a, &at(34 * S)).is_empty());
    tick(&mut a, &at(35 * S));
    assert!(matches!(a.state, AgentState::Queued { .. }), "{:?}", a.state);
    admit(&mut a, Gate::Ready, &at(35 * S), "h".into());
    assert_eq!(a.counted_attempts(), 1);
}

#[test]
fn a_limit_without_a_reset_backs_off_longer_each_time() {
    let mut a = running(Adapter::Codex, 0);
    let limited = || {
        let mut s = summary(Some(RunResult { ok: false, ..ok_result() }), None);
        s.rate_limited = Some(Limit { provider: "openai".into(), reset: None, message: "429".into(), until_ms: None });
        end(1, Some(s))
    };
    let mut waits = Vec::new();
    let mut t = 0;
    for _ in 0..3 {
        t += S;
        exit(&mut a, limited(), t);
        let AgentState::Waiting { next_mono, .. } = a.state else { panic!("{:?}", a.state) };
        waits.push(next_mono - t);
        t = next_mono;
        tick(&mut a, &at(t));
        admit(&mut a, Gate::Ready, &at(t), "h".into());
        started(&mut a, 10, 11, &at(t));
    }
    assert_eq!(waits, vec![2 * S, 4 * S, 8 * S]);
}

#[test]
fn budgets_stop_with_failure_type_budget_and_escalate() {
    for (set, usage) in [
        (
            (|p: &mut RolePolicy| p.max_cost_usd = Some(0.1)) as fn(&mut RolePolicy),
            Usage { input: 1, output: 1, cost_usd: Some(0.2), turns: Some(1), session_totals: true },
        ),
        (
            |p| p.max_tokens = Some(100),
            Usage { input: 90, output: 20, cost_usd: None, turns: None, session_totals: false },
        ),
        (
            |p| p.max_turns = Some(2),
            Usage { input: 1, output: 1, cost_usd: None, turns: Some(3), session_totals: false },
        ),
    ] {
        let mut a = running(Adapter::ClaudeCode, 0);
        set(&mut a.spec.policy);
        a.spec.policy.max_retries = 5;
        let acts = exit(&mut a, end(0, Some(summary(Some(ok_result()), Some(usage)))), 5 * S);
        assert_eq!(failure(&a).as_deref(), Some("budget"), "{usage:?}");
        assert!(matches!(a.state, AgentState::Escalated { .. }), "{:?}", a.state);
        assert!(acts.iter().any(|x| matches!(x, Action::Emit { kind: "budget_exceeded", .. })));
    }
}

#[test]
fn token_prices_price_a_cli_without_cost_and_a_resumed_session_counts_once() {
    let mut a = running(Adapter::Codex, 0);
    a.spec.policy.token_prices = Some(TokenPrices { input: 2.0, output: 10.0 });
    let u = Usage { input: 1_000_000, output: 100_000, cost_usd: None, turns: Some(1), session_totals: false };
    exit(&mut a, end(0, Some(summary(Some(ok_result()), Some(u)))), 5 * S);
    assert_eq!(a.attempts[0].stream.as_ref().unwrap().cost_usd, Some(3.0));

    // Claude's totals cover the session: the second attempt of the same session counts its share.
    let mut a = running(Adapter::ClaudeCode, 0);
    let first = Usage { input: 100, output: 10, cost_usd: Some(1.0), turns: Some(2), session_totals: true };
    let bad = RunResult { ok: false, api_error_status: Some(529), text: Some("Overloaded".into()), ..ok_result() };
    exit(&mut a, end(1, Some(summary(Some(bad), Some(first)))), S);
    let AgentState::Retrying { next_mono, .. } = a.state else { panic!("{:?}", a.state) };
    tick(&mut a, &at(next_mono));
    admit(&mut a, Gate::Ready, &at(next_mono), "h".into());
    started(&mut a, 10, 11, &at(next_mono));
    let whole = Usage { input: 150, output: 25, cost_usd: Some(1.5), turns: Some(3), session_totals: true };
    exit(&mut a, end(0, Some(summary(Some(ok_result()), Some(whole)))), next_mono + S);
    let s = a.attempts[1].stream.as_ref().unwrap();
    assert_eq!((s.tokens.unwrap().input, s.tokens.unwrap().output, s.cost_usd, s.turns), (50, 15, Some(0.5), Some(1)));
}

/// Ends the current attempt with `f` at `t`, runs out the wait or backoff and starts the next.
fn again(a: &mut Agent, f: ExitFacts, t: u64) -> u64 {
    exit(a, f, t);
    let next = match a.state {
        AgentState::Retrying { next_mono, .. } | AgentState::Waiting { next_mono, .. } => next_mono,
        ref s => panic!("not retrying: {s:?}"),
    };
    tick(a, &at(next));
    admit(a, Gate::Ready, &at(next), "h".into());
    started(a, 10, 11, &at(next));
    next
}

#[test]
fn a_retry_after_a_transient_failure_or_a_limit_resumes_the_session_others_start_fresh() {
    let overloaded = || {
        let bad = RunResult { ok: false, api_error_status: Some(529), text: Some("Overloaded".into()), ..ok_result() };
        end(1, Some(summary(Some(bad), None)))
    };
    let mut a = running(Adapter::ClaudeCode, 0);
    a.spec.policy.max_retries = 3;
    let t = again(&mut a, overloaded(), S);
    let s = a.attempts[1].stream.as_ref().unwrap();
    assert!(s.resumed && s.session_id.as_deref() == Some("s1"), "{s:?}");
    assert_eq!(session_to_resume(&a), None, "the running attempt has not ended");

    // A limit resumes too.
    let mut limited = summary(Some(RunResult { ok: false, ..ok_result() }), None);
    limited.rate_limited =
        Some(Limit { provider: "anthropic".into(), reset: None, message: "429".into(), until_ms: None });
    again(&mut a, ExitFacts { limit_wait_ms: Some(S), ..end(1, Some(limited)) }, t + S);
    assert!(a.attempts[2].stream.as_ref().unwrap().resumed);

    // Off for the role: fresh.
    let mut b = running(Adapter::ClaudeCode, 0);
    b.spec.policy.resume_session = Some(false);
    again(&mut b, overloaded(), S);
    assert!(b.attempts[1].stream.is_none());

    // A permanent failure the rules retry with context starts fresh; so does a plain agent.
    let mut c = running(Adapter::ClaudeCode, 0);
    c.spec.policy.max_retries = 3;
    let f = ExitFacts {
        handoff: HandoffFacts::MissingFiles(vec!["x".into()]),
        ..end(0, Some(summary(Some(ok_result()), None)))
    };
    again(&mut c, f, S);
    assert!(c.attempts[1].stream.is_none(), "a corrective attempt starts over");
    let mut p = running(Adapter::None, 0);
    p.spec.policy.max_retries = 3;
    again(&mut p, ExitFacts { output_tail: "network error".into(), ..end(1, None) }, S);
    assert!(p.attempts[1].stream.is_none());
}

#[test]
fn the_stream_so_far_is_recorded_while_the_attempt_runs_and_not_after() {
    let mut a = running(Adapter::Codex, 0);
    let u = Usage { input: 100, output: 20, cost_usd: None, turns: Some(1), session_totals: false };
    assert!(stream_seen(&mut a, 1, &summary(None, Some(u))));
    let s = a.attempts[0].stream.as_ref().unwrap();
    assert_eq!((s.tokens.unwrap().input, s.turns, s.session_id.as_deref()), (100, Some(1), Some("s1")));
    // The same summary again changes nothing (nothing to write); another attempt's is ignored.
    assert!(!stream_seen(&mut a, 1, &summary(None, Some(u))));
    assert!(!stream_seen(&mut a, 2, &summary(None, Some(u))));
    let more = Usage { input: 300, output: 50, turns: Some(2), ..u };
    assert!(stream_seen(&mut a, 1, &summary(None, Some(more))));
    assert_eq!(a.attempts[0].stream.as_ref().unwrap().turns, Some(2));
    // Once ended, the end's record stands.
    exit(&mut a, end(0, Some(summary(Some(ok_result()), Some(more)))), 5 * S);
    assert!(!stream_seen(&mut a, 1, &summary(None, Some(u))));
    assert_eq!(a.attempts[0].stream.as_ref().unwrap().tokens.unwrap().input, 300);
    // A plain agent has no stream to record.
    let mut plain = running(Adapter::None, 0);
    assert!(!stream_seen(&mut plain, 1, &summary(None, Some(u))));
}

#[test]
fn a_limit_that_names_no_provider_is_charged_to_the_adapters_and_an_unnamed_one_holds_nothing() {
    let limited = |provider: &str| {
        let mut s = summary(Some(RunResult { ok: false, api_error_status: Some(429), ..ok_result() }), None);
        s.rate_limited = Some(Limit { provider: provider.into(), reset: None, message: "429".into(), until_ms: None });
        ExitFacts { limit_wait_ms: Some(30 * S), ..end(1, Some(s)) }
    };
    // The limit line said no provider: the CLI's own is the one limited.
    let mut a = running(Adapter::ClaudeCode, 0);
    let acts = exit(&mut a, limited(""), 5 * S);
    assert!(matches!(&a.state, AgentState::Waiting { provider, .. } if provider == "anthropic"), "{:?}", a.state);
    assert!(acts.iter().any(|x| matches!(x, Action::RateLimited { provider } if provider == "anthropic")), "{acts:?}");
    // An agent waiting on a limit of no provider (as a registry of an older version may
    // hold it) holds no provider's admission; a named one does.
    let mut b = agent(2, Adapter::None);
    b.state = AgentState::Waiting { next_mono: 60 * S, provider: String::new(), reason: "limit".into() };
    assert!(provider_holds([&b], 10 * S).is_empty());
    assert_eq!(provider_holds([&a, &b], 10 * S).len(), 1);
    assert!(provider_holds([&a, &b], 10 * S).iter().all(|h| !h.name.is_empty()));
}

#[test]
fn an_unseen_exit_after_the_clis_ok_result_completes_and_an_error_result_does_not() {
    let lost = |ok: bool| ExitFacts {
        end: ProcessEnd::Lost { reason: "exit code unknown: its shim and the supervisor were killed".into() },
        ..end(0, Some(summary(Some(RunResult { ok, ..ok_result() }), None)))
    };
    let mut a = running(Adapter::ClaudeCode, 0);
    exit(&mut a, lost(true), 5 * S);
    assert_eq!(a.state, AgentState::Complete);
    let mut b = running(Adapter::ClaudeCode, 0);
    exit(&mut b, lost(false), 5 * S);
    assert_eq!(failure(&b).as_deref(), Some("crash"));
    // Without a CLI to say so, an unseen exit is no success.
    let mut c = running(Adapter::None, 0);
    exit(&mut c, ExitFacts { stream: None, ..lost(true) }, 5 * S);
    assert_ne!(c.state, AgentState::Complete);
}
