//! What `status`, `show` and the registry export say about an agent, built from the
//! supervisor's memory (no file is re-read to answer a read command).

use super::daemon::{Live, Supervisor};
use crate::ipc::{AgentView, AttemptView, Reply, ShowFiles, ShowView};
use crate::policy::admission;
use crate::policy::agent::{AgentState, AttemptRun};
use crate::policy::anomaly::{self, Seen};
use crate::policy::lifecycle::{self, Gate, fmt_ms};
use crate::protocol::registry::SpawnRecord;
use crate::protocol::time;

/// What admission looks at, taken once per read command (not once per agent).
pub struct Gauges {
    pub pass: admission::Pass,
    pub counts: admission::Counts,
}

impl Gauges {
    pub fn of(sup: &Supervisor) -> Self {
        let pass = sup.admission_pass(time::mono_ms());
        // Per provider and group always: `health` shows each one's live agents.
        let agents = sup.active().map(|l| &l.agent);
        let counts = admission::Counts::of(agents, sup.open_escalations(), admission::Per::ALL);
        Self { pass, counts }
    }
}

pub fn agent_view(sup: &Supervisor, live: &Live, now: jiff::Timestamp, gauges: &Gauges) -> AgentView {
    let a = &live.agent;
    let cur = a.current();
    let last_end = cur.and_then(|x| x.ended());
    let report = live.report.as_ref();
    let last_update = report.and_then(|r| r.last_update.clone());
    let since = last_update.as_deref().and_then(time::parse).or_else(|| cur.and_then(|c| time::parse(&c.started_at)));
    let mono = time::mono_ms();
    let live_attempt = cur.filter(|_| a.state.has_live_process());
    let queued = match &a.state {
        AgentState::Queued { .. } => queue_reason(sup, live, gauges),
        _ => None,
    };
    let seen = Seen {
        reported: report.map(|r| r.status),
        unreadable: live.report_error.is_some(),
        queue_reason: queued.as_deref(),
    };
    let anomalies: Vec<String> = anomaly::anomalies(a, &seen, mono).iter().map(ToString::to_string).collect();
    let totals = agent_totals(a);
    let next_in = match a.state {
        AgentState::Retrying { next_mono, .. } => Some(next_mono.saturating_sub(mono) as f64 / 1000.0),
        _ => None,
    };
    AgentView {
        agent_id: a.spec.id.to_string(),
        role: a.spec.role.clone(),
        task: a.spec.task.clone(),
        status: a.view_name().to_string(),
        reason: queued.or_else(|| a.state.reason().map(str::to_string)).or_else(|| {
            live_attempt.and_then(|c| c.liveness.waiting_on.as_ref()).map(|b| format!("waiting on a blocker: {b}"))
        }),
        needs_human: a.state.needs_human(),
        reported_status: report.map(|r| r.status.as_str().to_string()),
        pid: if a.state.has_live_process() { cur.and_then(|c| c.pid()) } else { None },
        attempt: cur.map(|c| c.attempt).unwrap_or(0),
        budget_attempt: a.counted_attempts() as u32,
        max_retries: a.spec.policy.max_retries,
        progress: report.and_then(|r| r.progress),
        phase: report.and_then(|r| r.phase.clone()),
        milestone: report.and_then(|r| r.milestone.clone()),
        last_update,
        age_seconds: since.map(|t| ((now - t).as_secs_f64()).max(0.0)),
        anomalies,
        exit_code: last_end.and_then(|(_, e)| e.exit_code()),
        signal: last_end.and_then(|(_, e)| e.signal()),
        spawned_at: a.spec.spawned_at.clone(),
        cwd: a.spec.cwd.to_string_lossy().into_owned(),
        ended_at: if a.state.is_finished() { last_end.map(|(t, _)| t.to_string()) } else { None },
        unreadable: live.report_error.clone(),
        next_attempt_in_seconds: next_in,
        escalation: a.state.escalation(),
        adapter: a.spec.adapter.as_str().to_string(),
        worktree: a.spec.worktree.as_ref().map(|w| w.path.display().to_string()),
        branch: a.spec.worktree.as_ref().map(|w| w.branch.clone()),
        repo: a.spec.worktree.as_ref().map(|w| w.repo.display().to_string()),
        base_commit: a.base_commit.clone(),
        port: a.spec.ports.map(|(p, _)| p),
        verify: a.spec.policy.verify.clone(),
        verify_timeout_ms: a.spec.policy.verify.as_ref().map(|_| a.spec.policy.verify_timeout_ms),
        session_id: a.attempts.iter().rev().find_map(|x| x.stream.as_ref()?.session_id.clone()),
        cost_usd: totals.cost_usd,
        tokens: totals.tokens,
        turns: totals.turns,
        waiting_until: match &a.state {
            AgentState::Waiting { next_mono, .. } => {
                let ms = i64::try_from(next_mono.saturating_sub(mono)).unwrap_or(i64::MAX / 2);
                now.checked_add(jiff::SignedDuration::from_millis(ms)).ok().map(time::rfc3339)
            }
            _ => None,
        },
        group: a.spec.group.clone(),
        priority: a.spec.priority,
        not_before: a.spec.not_before.clone(),
    }
}

pub use crate::policy::usage::{Totals, agent_totals};

/// Why a queued agent waits, computed now by the rule admission uses (the reason recorded
/// when it was queued may be stale: a cooldown counts down, capacity frees up).
pub fn queue_reason(sup: &Supervisor, live: &Live, g: &Gauges) -> Option<String> {
    let AgentState::Queued { reason } = &live.agent.state else { return None };
    let gate = lifecycle::admission(
        &live.agent.spec,
        |d| sup.agents.get(d).map(|l| &l.agent.state),
        |_| admission::hold(&live.agent.spec, live.not_before_mono, &sup.limits(), &g.pass, &g.counts),
    );
    Some(match gate {
        Gate::Wait(why) | Gate::Fail(why) => why,
        // Nothing holds it: it starts with the next admission pass.
        Gate::Ready => reason.clone(),
    })
}

/// An agent whose registry row could not be read: quarantined, shown with the reason.
pub fn unreadable_view(sup: &Supervisor, u: &crate::store::Unreadable) -> AgentView {
    let reason = format!(
        "its registry row cannot be read ({}); it is left as it is and no other agent is affected. \
         Look at the row in {} or remove it",
        u.reason,
        sup.data.db_file().display()
    );
    // Built from its JSON form: every field an agent view may grow is absent here.
    serde_json::from_value(serde_json::json!({
        "agentId": u.id,
        "role": u.role,
        "task": "",
        "status": "unreadable",
        "reason": reason,
        "needsHuman": true,
        "attempt": 0,
        "budgetAttempt": 0,
        "maxRetries": 0,
        "anomalies": ["UNREADABLE"],
        "spawnedAt": "",
        "cwd": "",
        "unreadable": reason,
        "adapter": "none",
    }))
    .expect("an unreadable agent's view is a valid agent view")
}

pub fn status(sup: &Supervisor, ids: &[String], role: Option<&str>) -> Reply {
    let mut wanted = Vec::new();
    let mut quarantined = Vec::new();
    for id in ids {
        if let Some(u) = sup.unreadable.iter().find(|u| u.id == *id) {
            quarantined.push(u);
            continue;
        }
        match sup.lookup(id) {
            Ok(id) => wanted.push(id),
            Err(r) => return r,
        }
    }
    let now = time::now();
    let gauges = Gauges::of(sup);
    // Named agents are found even when cleaned; the default set skips cleaned ones
    // without walking them.
    let walk = if wanted.is_empty() { &sup.shown } else { &sup.order };
    let lives: Vec<&Live> = if !ids.is_empty() && wanted.is_empty() {
        Vec::new()
    } else {
        walk.iter()
            .filter(|id| wanted.is_empty() || wanted.contains(id))
            .map(|id| &sup.agents[id])
            .filter(|l| role.is_none_or(|r| l.agent.spec.role == r))
            .collect()
    };
    let unreadable: Vec<_> = if ids.is_empty() { sup.unreadable.iter().collect() } else { quarantined };
    let unreadable = unreadable.into_iter().filter(|u| role.is_none_or(|r| u.role == r)).collect();
    Reply::ok(Views { sup, lives, unreadable, now, gauges })
}

/// The agents' views, each built as it is written out: a status of thousands of agents
/// never holds them all at once (building, holding and freeing them cost more than the
/// writing).
struct Views<'a> {
    sup: &'a Supervisor,
    lives: Vec<&'a Live>,
    unreadable: Vec<&'a crate::store::Unreadable>,
    now: jiff::Timestamp,
    gauges: Gauges,
}

impl serde::Serialize for Views<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.lives.len() + self.unreadable.len()))?;
        for l in &self.lives {
            seq.serialize_element(&agent_view(self.sup, l, self.now, &self.gauges))?;
        }
        for u in &self.unreadable {
            seq.serialize_element(&unreadable_view(self.sup, u))?;
        }
        seq.end()
    }
}

pub fn show(sup: &mut Supervisor, id: &str) -> Reply {
    if let Some(u) = sup.unreadable.iter().find(|u| u.id == id) {
        let d = &sup.data;
        let file = |p: std::path::PathBuf| p.display().to_string();
        let (status_file, log_file, context_file) = match crate::protocol::AgentId::parse(id) {
            Ok(a) => (file(d.status_file(&a)), file(d.log_file(&a)), file(d.context_file(&a))),
            Err(_) => Default::default(),
        };
        return Reply::ok(ShowView {
            agent: unreadable_view(sup, u),
            scope: None,
            constraints: Vec::new(),
            after: Vec::new(),
            command: Vec::new(),
            attempts: Vec::new(),
            findings: Vec::new(),
            files: ShowFiles { status_file, log_file, context_file, expected_handoff: String::new() },
            handoffs: Vec::new(),
            events: Vec::new(),
        });
    }
    let id = match sup.lookup(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let events = sup.store.recent_events(&id, 50).unwrap_or_default();
    let live = &sup.agents[&id];
    let a = &live.agent;
    let attempts = a
        .attempts
        .iter()
        .map(|x| {
            let (ended_at, end, failure_type, reason, action, rule) = match &x.run {
                AttemptRun::Ended { ended_at, end, failure_type, reason, action, rule } => (
                    Some(ended_at.clone()),
                    Some(end),
                    failure_type.clone(),
                    reason.clone(),
                    action.clone(),
                    rule.clone(),
                ),
                _ => (None, None, None, None, None, None),
            };
            AttemptView {
                attempt: x.attempt,
                started_at: x.started_at.clone(),
                ended_at,
                exit_code: end.and_then(|e| e.exit_code()),
                signal: end.and_then(|e| e.signal()),
                failure_type,
                reason,
                action,
                rule,
                pid: match x.run {
                    AttemptRun::Running { pid, .. } => Some(pid),
                    _ => None,
                },
                timeout: x.timeout_ms.map(fmt_ms),
                session_id: x.stream.as_ref().and_then(|s| s.session_id.clone()),
                cost_usd: x.stream.as_ref().and_then(|s| s.cost_usd),
                tokens: x.stream.as_ref().and_then(|s| s.tokens),
                turns: x.stream.as_ref().and_then(|s| s.turns),
                result: x.stream.as_ref().and_then(|s| s.result.as_ref()).map(|r| crate::ipc::ResultView {
                    ok: r.ok,
                    subtype: r.subtype.clone(),
                    text: r.text.clone(),
                    api_error_status: r.api_error_status,
                }),
                resumed: x.stream.as_ref().is_some_and(|s| s.resumed),
                log_start: x.log_start,
            }
        })
        .collect();
    let d = &sup.data;
    let view = ShowView {
        agent: agent_view(sup, live, time::now(), &Gauges::of(sup)),
        scope: a.spec.scope.clone(),
        constraints: a.spec.constraints.clone(),
        after: a.spec.after.iter().map(|x| x.to_string()).collect(),
        command: a.spec.command.clone(),
        attempts,
        findings: live.report.as_ref().map(|r| r.findings.clone()).unwrap_or_default(),
        files: ShowFiles {
            status_file: d.status_file(&id).display().to_string(),
            log_file: d.log_file(&id).display().to_string(),
            context_file: d.context_file(&id).display().to_string(),
            expected_handoff: a.current().map(|c| c.handoff_file.display().to_string()).unwrap_or_default(),
        },
        handoffs: live.handoffs.iter().map(|p| p.display().to_string()).collect(),
        events,
    };
    Reply::ok(view)
}

/// One entry of `spawn-registry.json`, with paths relative to the workspace like the seed's.
pub fn spawn_record(sup: &Supervisor, live: &Live) -> SpawnRecord {
    let a = &live.agent;
    let cur = a.current();
    let rel = |p: &std::path::Path| p.strip_prefix(&sup.ws.root).unwrap_or(p).display().to_string();
    let expected = match cur {
        Some(c) => rel(&c.handoff_file),
        None => rel(&sup.data.handoff_dir().join(format!("handoff-*-{}-to-ORCHESTRATOR.json", a.spec.id))),
    };
    let timeout_at = cur.filter(|_| a.state.has_live_process()).and_then(|c| {
        let start = time::parse(&c.started_at)?;
        let t = start.checked_add(jiff::SignedDuration::from_millis(i64::try_from(c.timeout_ms?).ok()?)).ok()?;
        Some(time::rfc3339(t))
    });
    let end = cur.and_then(|c| c.ended());
    SpawnRecord {
        agent_id: a.spec.id.to_string(),
        spawned_at: a.spec.spawned_at.clone(),
        role: a.spec.role.clone(),
        task: a.spec.task.clone(),
        scope: a.spec.scope.clone(),
        expected_handoff: expected,
        status: a.view_name().to_string(),
        timeout_at,
        attempt: cur.map(|c| c.attempt).unwrap_or(0),
        max_retries: a.spec.policy.max_retries,
        pid: if a.state.has_live_process() { cur.and_then(|c| c.pid()) } else { None },
        exit_code: end.and_then(|(_, e)| e.exit_code()),
        signal: end.and_then(|(_, e)| e.signal()),
        ended_at: end.map(|(t, _)| t.to_string()),
        after: a.spec.after.iter().map(|x| x.to_string()).collect(),
        session_id: a.attempts.iter().rev().find_map(|x| x.stream.as_ref()?.session_id.clone()),
        cost_usd: agent_totals(a).cost_usd,
        tokens: agent_totals(a).tokens,
    }
}
