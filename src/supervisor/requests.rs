//! Answers to CLI requests: each one a thin layer over the core or the views.

use super::daemon::{Answer, EVENTS_PAGE, Supervisor};
use super::{launch, views};
use crate::ipc::{BreakerView, DaemonView, HealthView, QueuedView, Reply, Request};
use crate::policy::admission;
use crate::policy::agent::AgentState;
use crate::policy::escalation;
use crate::policy::lifecycle;
use crate::protocol::{AgentId, fsio, time};
use std::io::Write;

/// A `corral kill` whose attempt still has processes: answered when its end is recorded,
/// so the reply means that no process of the attempt lives.
pub struct HeldKill {
    id: AgentId,
    attempt: u32,
    tx: tokio::sync::oneshot::Sender<Reply>,
}

/// Answers a request now, or holds the reply (a kill) until what it promises is true.
pub fn dispatch(
    sup: &mut Supervisor,
    req: Request,
    tx: tokio::sync::oneshot::Sender<Reply>,
) -> Option<(tokio::sync::oneshot::Sender<Reply>, Reply)> {
    // A ping says only that this supervisor takes requests: it changes nothing the exports
    // show, so it is answered at once, not after them. A client pipelines its request behind
    // a ping, and that request is read only once the ping is answered.
    let ping = matches!(req, Request::Ping);
    let kill = match &req {
        Request::Kill { id, .. } => Some(id.clone()),
        _ => None,
    };
    let reply = match handle(sup, req) {
        Answer::Now(reply) => reply,
        Answer::Hold(hold) => {
            sup.hold(tx, hold);
            return None;
        }
    };
    if ping {
        let _ = tx.send(reply);
        return None;
    }
    // The agent as the kill resolved it: the id given may be a number or a prefix.
    if let (Some(id), true) = (kill, reply.ok)
        && let Ok(id) = sup.lookup(&id)
        && let Some(live) = sup.agents.get(&id)
        && live.agent.state.has_live_process()
        && let Some(a) = live.agent.current()
    {
        sup.held_kills.push(HeldKill { id, attempt: a.attempt, tx });
        return None;
    }
    Some((tx, reply))
}

/// The attempt's end is recorded (its group is gone): the kills waiting for it get their
/// answer.
pub fn attempt_over(sup: &mut Supervisor, id: &AgentId, attempt: u32) {
    let (done, rest): (Vec<HeldKill>, Vec<HeldKill>) =
        std::mem::take(&mut sup.held_kills).into_iter().partition(|h| h.id == *id && h.attempt <= attempt);
    sup.held_kills = rest;
    for h in done {
        let status = sup.agents.get(id).map(|l| l.agent.state.name()).unwrap_or("killed");
        sup.ready_replies.push((h.tx, Reply::ok(serde_json::json!({ "agentId": id, "status": status }))));
    }
}

pub fn handle(sup: &mut Supervisor, req: Request) -> Answer {
    let config = sup.reload_config();
    match req {
        Request::Spawn(s) => match config {
            Err(e) => Answer::Now(Reply::err(2, e)),
            Ok(()) => launch::spawn(sup, *s),
        },
        Request::Retry { id, context, env } => held_for_agent(sup, &id, |sup, id| {
            let now = sup.now();
            let live = sup.agents.get_mut(id).expect("looked up");
            for (k, v) in env {
                live.agent.spec.env.retain(|(x, _)| *x != k);
                live.agent.spec.env.push((k, v));
            }
            let actions = lifecycle::retry_requested(&mut live.agent, context, &now).map_err(|e| Reply::err(1, e))?;
            sup.apply(id, actions);
            // Retried, a cleaned agent is back in the views.
            let live = sup.agents.get_mut(id).expect("looked up");
            if live.agent.cleaned_at.take().is_some() {
                sup.mark_dirty(id);
                let agents = &sup.agents;
                sup.shown = sup.order.iter().filter(|o| agents[*o].agent.cleaned_at.is_none()).cloned().collect();
            }
            // A human retry answers the agent's open escalations.
            resolve_for(sup, id, "retried by a human");
            sup.admit_queued();
            Ok(|sup: &Supervisor, id: &AgentId| {
                let a = &sup.agents[id].agent;
                serde_json::json!({ "agentId": id, "status": a.state.name(), "reason": a.state.reason() })
            })
        }),
        Request::Parallel { group, max } => capacity_change(sup, group, |sup, group| set_parallel(sup, group, max)),
        Request::Pause { group, paused, all } => {
            capacity_change(sup, group, move |sup, group| set_paused(sup, group, paused, all))
        }
        Request::Tell { id, text } => held_for_agent(sup, &id, |sup, id| {
            let path = sup.data.inbox_file(id);
            let entry = format!("\n## {}\n\n{}\n", time::rfc3339(time::now()), text);
            // Through fsio: an inbox replaced by a FIFO, a symlink or a hard link is set
            // aside and the message goes to a fresh one; nothing blocks, nothing leaves.
            fsio::open_write_replacing(sup.data.root(), &path, fsio::Mode::Append)
                .and_then(|(mut f, _)| f.write_all(entry.as_bytes()))
                .map_err(|e| Reply::err(1, format!("cannot write {}: {e}", path.display())))?;
            sup.emit(Some(id), "told", serde_json::json!({ "text": text }));
            // An agent blocked with nobody left to unblock it resumes with the message.
            let now = sup.now();
            let live = sup.agents.get_mut(id).expect("looked up");
            let actions = lifecycle::told(&mut live.agent, &now);
            let resumed = !actions.is_empty();
            if resumed {
                sup.apply(id, actions);
                resolve_for(sup, id, "answered by corral tell");
                sup.admit_queued();
            }
            Ok(move |sup: &Supervisor, id: &AgentId| {
                let a = &sup.agents[id].agent;
                serde_json::json!({ "agentId": id, "inbox": path, "status": a.view_name(), "resumed": resumed })
            })
        }),
        other => Answer::Now(answer(sup, other)),
    }
}

/// A request that changes an agent and answers with what the agent is once the loop has
/// carried out what the change set going (an admission, a start): `f` makes the change and
/// gives what to say then.
fn held_for_agent<V>(
    sup: &mut Supervisor,
    id: &str,
    f: impl FnOnce(&mut Supervisor, &AgentId) -> Result<V, Reply>,
) -> Answer
where
    V: Fn(&Supervisor, &AgentId) -> serde_json::Value + 'static,
{
    let id = match sup.lookup(id) {
        Ok(id) => id,
        Err(r) => return Answer::Now(r),
    };
    match f(sup, &id) {
        Ok(view) => Answer::Hold(Box::new(move |sup: &mut Supervisor| Some(Reply::ok(view(sup, &id))))),
        Err(r) => Answer::Now(r),
    }
}

fn answer(sup: &mut Supervisor, req: Request) -> Reply {
    match req {
        Request::Spawn(_)
        | Request::Retry { .. }
        | Request::Tell { .. }
        | Request::Parallel { .. }
        | Request::Pause { .. } => unreachable!("answered by `handle`"),
        Request::Status { ids, role } => views::status(sup, &ids, role.as_deref()),
        Request::Show { id } => views::show(sup, &id),
        Request::Kill { id, grace_ms } => with_agent(sup, &id, |sup, id| {
            let now = sup.now();
            let live = sup.agents.get_mut(id).expect("looked up");
            let actions = lifecycle::kill_requested(&mut live.agent, grace_ms, &now).map_err(|e| Reply::err(1, e))?;
            sup.apply(id, actions);
            // A human's kill answers what the agent waited on a human for.
            resolve_for(sup, id, "killed by a human");
            sup.admit_queued();
            Ok(serde_json::json!({ "agentId": id, "status": sup.agents[id].agent.state.name() }))
        }),
        Request::Escalations { all } => {
            let list: Vec<_> = sup.escalations.iter().filter(|e| all || e.is_open()).cloned().collect();
            Reply::ok(list)
        }
        Request::Resolve { n, note, answer } => resolve(sup, n, note, answer),
        Request::Health => Reply::ok(health_view(sup)),
        Request::Escalate { id, reason, conflict } => with_agent(sup, &id, |sup, id| {
            if reason.trim().is_empty() || reason.len() > 16 * 1024 {
                return Err(Reply::err(2, "an escalation needs a reason of at most 16 KiB"));
            }
            let seen = escalation::already_open(&sup.escalations, id.as_str(), &reason, conflict.as_ref());
            let (n, open) = match seen {
                Some(e) => (e.n, e.is_open()),
                None => (sup.record_escalation(id, reason, conflict), true),
            };
            Ok(serde_json::json!({ "escalation": n, "open": open }))
        }),
        Request::Memory => match sup.store.memories() {
            Ok(candidates) => {
                let agents: Vec<_> = sup.order.iter().map(|id| &sup.agents[id].agent).collect();
                Reply::ok(crate::memory::MemorySnapshot { candidates, patterns: crate::memory::patterns(&agents) })
            }
            Err(e) => Reply::err(1, e.to_string()),
        },
        Request::LastSeq => Reply::ok(sup.last_seq),
        Request::Events { after, agent, .. } => {
            // A prefix or number of a known agent names it; any other valid id is taken
            // as it is (its events may outlive it).
            let known = |a: &str| {
                crate::ops::ids::resolve(a, sup.order.iter().map(AgentId::as_str)).map(|f| f.map(str::to_string))
            };
            let agent = match agent.map(|a| match known(&a) {
                Ok(Some(found)) => AgentId::parse(&found).map_err(|e| Reply::err(2, e.to_string())),
                Ok(None) => AgentId::parse(&a).map_err(|e| Reply::err(2, e.to_string())),
                Err(f) => Err(Reply::err(f.code, f.msg)),
            }) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(r)) => return r,
            };
            match sup.store.events(after, agent.as_ref(), EVENTS_PAGE) {
                Ok(ev) => Reply::ok(ev),
                Err(e) => Reply::err(1, e.to_string()),
            }
        }
        Request::Clean { older_than_ms, worktrees } => clean(sup, older_than_ms, worktrees),
        Request::DaemonStatus => Reply::ok(DaemonView {
            pid: std::process::id(),
            socket: sup.socket.display().to_string(),
            data_dir: sup.data.root().display().to_string(),
            started_at: sup.started_at.clone(),
            uptime_seconds: sup.io.mono_ms().saturating_sub(sup.started_mono) as f64 / 1000.0,
            agents_supervised: sup.active().filter(|l| !l.agent.state.is_finished()).count(),
            agents_total: sup.agents.len(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        Request::Ping => Reply::ok(std::process::id()),
        Request::Stop => {
            sup.stopping = true;
            Reply::ok(serde_json::json!({ "stopped": std::process::id() }))
        }
    }
}

fn with_agent(
    sup: &mut Supervisor,
    id: &str,
    f: impl FnOnce(&mut Supervisor, &AgentId) -> Result<serde_json::Value, Reply>,
) -> Reply {
    match sup.lookup(id).and_then(|id| f(sup, &id)) {
        Ok(v) => Reply::ok(v),
        Err(r) => r,
    }
}

/// Records a human's answer to escalation `n` and carries out what it means for the agent.
fn resolve(sup: &mut Supervisor, n: u64, note: Option<String>, answer: escalation::Answer) -> Reply {
    let Some(i) = sup.escalations.iter().position(|e| e.n == n) else {
        return Reply::err(2, format!("no escalation {n}; `corral escalations` lists the open ones"));
    };
    if let Err(why) = escalation::check_answer(&sup.escalations[i], &answer) {
        return Reply::err(if sup.escalations[i].is_open() { 2 } else { 1 }, why);
    }
    let mut e = sup.escalations[i].clone();
    e.resolved_at = Some(time::rfc3339(time::now()));
    e.note = note.clone();
    let id = e.agent_id.clone();
    let now = sup.now();
    let (outcome, actions) = match (&e.conflict, sup.agents.get_mut(&id)) {
        (Some(c), _) => (format!("the conflict on {} is settled for the next aggregate", c.key), vec![]),
        (None, Some(live)) => escalation::resolved(&mut live.agent, &e, answer.retry, &now),
        (None, None) => (format!("{id} is not in the registry"), vec![]),
    };
    e.answer = Some(answer);
    e.outcome = Some(outcome);
    if let Err(err) = sup.store.put_escalation(&e) {
        return Reply::err(1, err.to_string());
    }
    sup.escalations[i] = e.clone();
    sup.mark_escalations_dirty();
    sup.emit(
        Some(&id),
        "escalation_resolved",
        serde_json::json!({ "escalation": n, "note": note, "answer": e.answer, "outcome": e.outcome }),
    );
    if !actions.is_empty() {
        sup.apply(&id, actions);
    }
    sup.admit_queued(); // an escalation limit may have been what held spawns
    Reply::ok(e)
}

/// A human acted on the agent itself (retry, kill, a message): that answers its own open
/// escalations; the conflicts it is part of still wait for their own answer.
fn resolve_for(sup: &mut Supervisor, id: &AgentId, note: &str) {
    let at = time::rfc3339(time::now());
    let mut changed = Vec::new();
    for e in sup.escalations.iter_mut().filter(|e| e.is_open() && e.agent_id == *id && e.conflict.is_none()) {
        e.resolved_at = Some(at.clone());
        e.note = Some(note.to_string());
        changed.push(e.clone());
    }
    for e in changed {
        let _ = sup.store.put_escalation(&e);
        sup.mark_escalations_dirty();
    }
}

pub fn health_view(sup: &Supervisor) -> HealthView {
    let now = sup.io.mono_ms();
    let gauges = views::Gauges::of(sup);
    let (r, running) = (&gauges.pass.resources, gauges.counts.running);
    // What holds every start, whatever its role (a role's own breaker is in `breakers`).
    let held = admission::workspace_hold(&sup.limits(), &gauges.pass, &gauges.counts);
    let h = &sup.health;
    let (summary, breakers) = BreakerView::all(h, &sup.breaker, now);
    HealthView {
        healthy: held.is_none(),
        held_because: held,
        running,
        max_concurrent: h.max_concurrent,
        configured_max_concurrent: sup.capacity.max_concurrent.map(|_| sup.ws.config.health().max_concurrent),
        paused: sup.capacity.paused,
        queued: sup
            .order
            .iter()
            .filter_map(|id| {
                let live = &sup.agents[id];
                views::queue_reason(sup, live, &gauges).map(|reason| QueuedView { agent_id: id.to_string(), reason })
            })
            .collect(),
        breaker: summary,
        breakers,
        free_memory: r.free_memory,
        min_free_memory: h.min_free_memory,
        load: r.load,
        max_load: h.max_load,
        open_escalations: sup.open_escalations(),
        max_open_escalations: h.max_open_escalations,
        cost_usd: sup.agents.values().filter_map(|l| views::agent_totals(&l.agent).cost_usd).sum(),
        providers: provider_views(&gauges),
        groups: group_views(sup, &gauges),
    }
}

/// A change of capacity or of a pause: `f` makes it (after `group` is checked), then it is
/// kept in the registry, queued agents are looked at again, and the reply says what the
/// capacity is once those that may start have started.
fn capacity_change(
    sup: &mut Supervisor,
    group: Option<String>,
    f: impl FnOnce(&mut Supervisor, Option<&str>) -> Result<(), Reply>,
) -> Answer {
    if let Some(g) = &group
        && let Err(e) = crate::protocol::ids::validate_group(g)
    {
        return Answer::Now(Reply::err(2, format!("--group: {e}")));
    }
    let before = sup.capacity.clone();
    if let Err(r) = f(sup, group.as_deref()) {
        return Answer::Now(r);
    }
    if sup.capacity != before {
        if let Err(e) = sup.keep_capacity() {
            sup.capacity = before;
            sup.apply_capacity();
            return Answer::Now(Reply::err(1, e));
        }
        sup.apply_capacity();
        sup.admit_queued();
    }
    Answer::Hold(Box::new(move |sup: &mut Supervisor| Some(Reply::ok(capacity_view(sup, group.as_deref())))))
}

fn set_parallel(sup: &mut Supervisor, group: Option<&str>, max: Option<usize>) -> Result<(), Reply> {
    if max == Some(0) {
        return Err(Reply::err(
            2,
            "a capacity of 0 would never start anything; use `corral pause` to hold admission (and `corral resume` \
             to release it), or give 1 or more",
        ));
    }
    let (from, configured) = match group {
        None => (Some(sup.health.max_concurrent), Some(sup.ws.config.health().max_concurrent)),
        Some(g) => (sup.group_max.get(g).copied(), sup.ws.config.group_limits().get(g).copied()),
    };
    sup.capacity.set_limit(group, max);
    if let Some(data) = crate::policy::admission::Capacity::limit_event(group, max, from, configured) {
        sup.emit(None, "capacity_changed", data);
    }
    Ok(())
}

fn set_paused(sup: &mut Supervisor, group: Option<&str>, paused: bool, all: bool) -> Result<(), Reply> {
    for g in sup.capacity.set_paused(group, paused, all) {
        sup.emit(None, if paused { "paused" } else { "resumed" }, serde_json::json!({ "group": g }));
    }
    Ok(())
}

/// The capacity of the workspace, or of one group, as it is now.
pub fn capacity_view(sup: &Supervisor, group: Option<&str>) -> crate::ipc::CapacityView {
    let of = |l: &&super::daemon::Live| group.is_none_or(|g| l.agent.spec.group.as_deref() == Some(g));
    let running = sup.active().filter(of).filter(|l| l.agent.state.has_live_process()).count();
    let queued = sup.active().filter(of).filter(|l| matches!(l.agent.state, AgentState::Queued { .. })).count();
    let c = &sup.capacity;
    match group {
        None => crate::ipc::CapacityView {
            group: None,
            max_concurrent: Some(sup.health.max_concurrent),
            configured: Some(sup.ws.config.health().max_concurrent),
            changed: c.max_concurrent.is_some(),
            paused: c.paused,
            running,
            queued,
        },
        Some(g) => crate::ipc::CapacityView {
            group: Some(g.to_string()),
            max_concurrent: sup.group_max.get(g).copied(),
            configured: sup.ws.config.group_limits().get(g).copied(),
            changed: c.groups.contains_key(g),
            paused: c.paused_groups.contains(g),
            running,
            queued,
        },
    }
}

/// Every admission group with a limit, or with agents running or queued.
pub fn group_views(sup: &Supervisor, g: &views::Gauges) -> Vec<crate::ipc::GroupView> {
    let mut queued: std::collections::BTreeMap<&str, usize> = Default::default();
    for l in sup.active() {
        if let (Some(name), AgentState::Queued { .. }) = (&l.agent.spec.group, &l.agent.state) {
            *queued.entry(name.as_str()).or_insert(0) += 1;
        }
    }
    let mut names: std::collections::BTreeSet<&str> = sup.group_max.keys().map(String::as_str).collect();
    names.extend(sup.capacity.paused_groups.iter().map(String::as_str));
    names.extend(g.counts.by_group.keys().map(String::as_str));
    names.extend(queued.keys().copied());
    names
        .into_iter()
        .map(|name| crate::ipc::GroupView {
            name: name.to_string(),
            running: g.counts.by_group.get(name).copied().unwrap_or(0),
            queued: queued.get(name).copied().unwrap_or(0),
            max_concurrent: sup.group_max.get(name).copied(),
            paused: sup.capacity.paused_groups.contains(name),
        })
        .collect()
}

/// The providers held by a rate limit or with their concurrency lowered by a burst of them.
fn provider_views(g: &views::Gauges) -> Vec<crate::ipc::ProviderView> {
    let mono = time::mono_ms();
    let mut out: Vec<crate::ipc::ProviderView> = g
        .pass
        .holds
        .iter()
        .map(|p| crate::ipc::ProviderView {
            name: p.name.clone(),
            held_until: Some(time::rfc3339(
                time::now()
                    .checked_add(jiff::SignedDuration::from_millis(
                        i64::try_from(p.until_mono.saturating_sub(mono)).unwrap_or(0),
                    ))
                    .unwrap_or_else(|_| time::now()),
            )),
            max_concurrent: None,
            running: g.counts.by_provider.get(p.name.as_str()).copied().unwrap_or(0),
            reason: p.reason.clone(),
        })
        .collect();
    for l in &g.pass.lowered {
        let why = l.reason.clone();
        match out.iter_mut().find(|v| v.name == l.name) {
            Some(v) => {
                v.max_concurrent = Some(l.max);
                v.reason = format!("{}; {why}", v.reason);
            }
            None => out.push(crate::ipc::ProviderView {
                name: l.name.clone(),
                held_until: None,
                max_concurrent: Some(l.max),
                running: g.counts.by_provider.get(l.name.as_str()).copied().unwrap_or(0),
                reason: why,
            }),
        }
    }
    out
}

/// Takes finished agents that no human waits on out of the views; their records stay.
fn clean(sup: &mut Supervisor, older_than_ms: Option<u64>, worktrees: bool) -> Reply {
    let now = time::now();
    let cutoff = older_than_ms.map(|ms| {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX / 2);
        now.checked_sub(jiff::SignedDuration::from_millis(ms)).unwrap_or(jiff::Timestamp::MIN)
    });
    let old_enough = |a: &crate::policy::agent::Agent| match cutoff {
        None => true,
        Some(c) => a.current().and_then(|x| x.ended()).and_then(|(t, _)| time::parse(t)).is_some_and(|t| t <= c),
    };
    let listed = |a: &crate::policy::agent::Agent, now: bool| crate::ipc::CleanedAgent {
        agent_id: a.spec.id.to_string(),
        status: a.view_name().to_string(),
        now,
        worktree: a.spec.worktree.as_ref().map(|w| w.path.display().to_string()),
        branch: a.spec.worktree.as_ref().map(|w| w.branch.clone()),
        repo: a.spec.worktree.as_ref().map(|w| w.repo.display().to_string()),
    };
    let mut out = Vec::new();
    let mut cleaned = Vec::new();
    let stamp = time::rfc3339(now);
    for id in &sup.shown {
        let a = &sup.agents[id].agent;
        if a.state.is_finished() && !a.state.needs_human() && old_enough(a) {
            cleaned.push(id.clone());
        }
    }
    if worktrees {
        for id in &sup.order {
            let a = &sup.agents[id].agent;
            if a.cleaned_at.is_some() && a.spec.worktree.is_some() && old_enough(a) {
                out.push(listed(a, false));
            }
        }
    }
    for id in &cleaned {
        let live = sup.agents.get_mut(id).expect("shown agents are known");
        live.agent.cleaned_at = Some(stamp.clone());
        out.push(listed(&live.agent, true));
        sup.mark_dirty(id);
        sup.emit(Some(id), "cleaned", serde_json::json!({}));
    }
    if !cleaned.is_empty() {
        let gone: std::collections::HashSet<&AgentId> = cleaned.iter().collect();
        sup.shown.retain(|id| !gone.contains(id));
    }
    Reply::ok(out)
}
