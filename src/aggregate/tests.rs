//! Aggregation tests on fixture handoffs (tests/fixtures/aggregate/) and a fake filesystem:
//! the `locate` closure answers from a list and records every question it was asked.

use super::*;
use crate::protocol::files::parse_handoff;
use serde_json::json;
use std::cell::RefCell;

const WS: &str = "/ws";

macro_rules! fixture {
    ($name:literal) => {
        ($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/aggregate/", $name)))
    };
}

/// A fixture as the caller would pass it: parsed by the protocol's own parser, or reported
/// as unreadable with the parser's error.
fn handoff(f: (&str, &str), modified: &str) -> HandoffInput {
    let path = PathBuf::from(format!("{WS}/.corral/handoffs/{}", f.0));
    match parse_handoff(f.1, &path) {
        Ok(handoff) => HandoffInput::Parsed { path, handoff, modified: modified.into() },
        Err(error) => HandoffInput::Unreadable { path, error },
    }
}

fn at(f: (&str, &str)) -> HandoffInput {
    handoff(f, "2026-01-01T00:00:00Z")
}

fn agent(id: &str, status: &str, reason: Option<&str>) -> AgentOutcome {
    AgentOutcome {
        agent_id: id.into(),
        role: id.rsplit('-').next().unwrap_or_default().into(),
        task: format!("task of {id}"),
        status: status.into(),
        reason: reason.map(str::to_string),
        needs_human: status == "escalated",
        cwd: WS.into(),
    }
}

fn complete(ids: &[&str]) -> Vec<AgentOutcome> {
    ids.iter().map(|id| agent(id, "complete", None)).collect()
}

/// Runs aggregation; `existing` are workspace-relative paths that exist. Returns the report
/// and every path `exists` was asked about.
fn run(agents: Vec<AgentOutcome>, handoffs: Vec<HandoffInput>, existing: &[&str]) -> (Report, Vec<PathBuf>) {
    run_with(agents, handoffs, existing, vec![])
}

fn run_with(
    agents: Vec<AgentOutcome>,
    handoffs: Vec<HandoffInput>,
    existing: &[&str],
    human: Vec<HumanAnswer>,
) -> (Report, Vec<PathBuf>) {
    let asked = RefCell::new(Vec::new());
    let locate = |p: &Path| {
        asked.borrow_mut().push(p.to_path_buf());
        if existing.iter().any(|e| Path::new(WS).join(e) == p) {
            workspace::Found::Exists
        } else {
            workspace::Found::Missing
        }
    };
    let r = aggregate(&Input {
        agents,
        handoffs,
        workspace: Path::new(WS),
        locate: &locate,
        human,
        branches: vec![],
        merges: vec![],
        trees: Default::default(),
    });
    (r, asked.into_inner())
}

fn outputs(r: &Report) -> (String, String) {
    (serde_json::to_string_pretty(r).unwrap(), render_markdown(r))
}

fn only_conflict(r: &Report) -> &Conflict {
    assert_eq!(r.conflicts.len(), 1, "{:#?}", r.conflicts);
    &r.conflicts[0]
}

/// Every position of every conflict, winning or not, is in both outputs with its agent.
fn assert_positions_kept(r: &Report) {
    let (json, md) = outputs(r);
    for c in &r.conflicts {
        for p in &c.positions {
            assert!(md.contains(&format!("{} says", p.agent)), "markdown lacks {}'s position:\n{md}", p.agent);
            let v = match &p.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert!(md.contains(&v) && json.contains(&v), "{v} missing from an output");
            for e in &p.evidence {
                if let Some(r) = e.get("ref").and_then(Value::as_str) {
                    assert!(md.contains(r) && json.contains(r), "evidence {r} missing from an output");
                }
            }
        }
    }
}

#[test]
fn agreement_is_merged_with_every_agent() {
    let ids = ["agent-001-AUDITOR", "agent-002-AUDITOR"];
    let (r, _) = run(
        complete(&ids),
        vec![at(fixture!("agree-1.json")), at(fixture!("agree-2.json"))],
        &["docs/audit-db.md", "docs/audit-api.md"],
    );
    assert!(r.conflicts.is_empty());
    assert!(r.complete && !r.partial, "{:#?}", r.todo);
    let engine = r.findings.iter().find(|f| f.key.as_deref() == Some("db.engine")).unwrap();
    assert_eq!(engine.value, json!("postgres"));
    assert_eq!(engine.agents, ids);
    assert_eq!(engine.evidence_rank, 2, "the strongest support (a citation) is kept");
    assert_eq!(engine.support.len(), 2);
    let plain = r.findings.iter().find(|f| f.key.is_none()).unwrap();
    assert_eq!(plain.value, json!("all migrations are reversible"));
    assert_eq!(plain.agents, ids);
    assert_eq!(r.counts.findings, 2);

    assert_eq!(r.decisions.len(), 2);
    assert_eq!(r.decisions[0].agents, ids);
    assert_eq!(r.decisions[1].agents, ["agent-002-AUDITOR"]);

    // An object from one and an array holding the same object from the other: one candidate.
    assert_eq!(r.memory.len(), 2);
    assert_eq!(r.memory[0].candidate, json!({"pattern": "check config/database.yml before guessing the engine"}));
    assert_eq!(r.memory[0].agents, ids);
    assert_eq!(r.memory[1].agents, ["agent-002-AUDITOR"]);

    let md = render_markdown(&r);
    assert!(md.starts_with("# Aggregation report\n\n**Complete:**"), "{md}");
    assert!(md.contains("`db.engine` = `postgres` (agent-001-AUDITOR, agent-002-AUDITOR"), "{md}");
}

#[test]
fn test_evidence_beats_a_reasoning_majority() {
    let (r, _) = run(
        complete(&["agent-001-IMPLEMENTER", "agent-002-IMPLEMENTER", "agent-003-IMPLEMENTER"]),
        vec![
            at(fixture!("evidence-reasoning-a.json")),
            at(fixture!("evidence-test.json")),
            at(fixture!("evidence-reasoning-b.json")),
        ],
        &[],
    );
    let c = only_conflict(&r);
    assert_eq!((c.key.as_str(), c.kind), ("server.port", ConflictKind::Finding));
    assert_eq!(c.resolution, Resolution::Evidence);
    let w = c.winner.as_ref().unwrap();
    assert_eq!((w.agent.as_str(), &w.value), ("agent-001-IMPLEMENTER", &json!(8080)));
    assert_eq!(c.positions.len(), 3, "the two losing positions stay");
    let ranks: Vec<(&str, u8)> = c.positions.iter().map(|p| (p.agent.as_str(), p.evidence_rank)).collect();
    assert_eq!(ranks, [("agent-001-IMPLEMENTER", 3), ("agent-002-IMPLEMENTER", 1), ("agent-003-IMPLEMENTER", 1)]);
    assert!(r.findings.is_empty(), "a conflicting key is not also a merged finding");
    assert!(r.complete, "a resolved conflict leaves nothing to do");
    assert_positions_kept(&r);
    let md = render_markdown(&r);
    assert!(md.contains("resolved by evidence: `8080`"), "{md}");
    assert!(md.contains("- [lost] agent-002-IMPLEMENTER says `9090`"), "{md}");
}

#[test]
fn majority_of_distinct_agents_wins_among_equal_evidence() {
    let (r, _) = run(
        complete(&["agent-001-PLANNER", "agent-002-PLANNER", "agent-003-PLANNER"]),
        vec![at(fixture!("majority-3.json")), at(fixture!("majority-1.json")), at(fixture!("majority-2.json"))],
        &[],
    );
    let c = only_conflict(&r);
    assert_eq!(c.resolution, Resolution::Majority);
    let w = c.winner.as_ref().unwrap();
    assert_eq!(w.value, json!("60s"));
    assert_eq!(w.agents, ["agent-001-PLANNER", "agent-002-PLANNER"]);
    assert!(c.positions.iter().any(|p| p.agent == "agent-003-PLANNER" && p.value == json!("300s")));
    assert!(c.reason.contains("2 of 3"), "{}", c.reason);
    assert_positions_kept(&r);
}

#[test]
fn one_one_tie_at_equal_evidence_is_unresolved_and_kept() {
    let (r, _) = run(
        complete(&["agent-001-AUDITOR", "agent-002-AUDITOR"]),
        vec![at(fixture!("tie-a.json")), at(fixture!("tie-b.json"))],
        &[],
    );
    let c = only_conflict(&r);
    assert_eq!(c.resolution, Resolution::Unresolved);
    assert_eq!(c.winner, None);
    assert_eq!(c.positions.len(), 2);
    assert_eq!(r.counts.unresolved, 1);
    assert!(!r.complete && !r.partial);
    assert_eq!(r.todo.len(), 1);
    assert_eq!((r.todo[0].kind, r.todo[0].key.as_deref()), (TodoKind::Conflict, Some("server.port")));
    let (json, md) = outputs(&r);
    assert!(json.contains("\"resolution\": \"unresolved\"") && json.contains("\"winner\": null"), "{json}");
    assert!(md.contains("**UNRESOLVED**") && md.contains("**Needs attention:**"), "{md}");
    assert_positions_kept(&r);
}

#[test]
fn numbers_are_never_averaged() {
    let tie = run(
        complete(&["agent-001-AUDITOR", "agent-002-AUDITOR"]),
        vec![at(fixture!("tie-a.json")), at(fixture!("tie-b.json"))],
        &[],
    )
    .0;
    let evidence = run(
        complete(&["agent-001-IMPLEMENTER", "agent-002-IMPLEMENTER", "agent-003-IMPLEMENTER"]),
        vec![
            at(fixture!("evidence-test.json")),
            at(fixture!("evidence-reasoning-a.json")),
            at(fixture!("evidence-reasoning-b.json")),
        ],
        &[],
    )
    .0;
    for r in [&tie, &evidence] {
        let (json, md) = outputs(r);
        for out in [&json, &md] {
            assert!(out.contains("8080") && out.contains("9090"));
            assert!(!out.contains("8585"), "a value no agent gave appeared:\n{out}");
        }
    }
}

#[test]
fn repeats_by_one_agent_count_once() {
    let port = |v: u64| json!({"key": "server.port", "value": v, "evidence": [{"kind": "reasoning"}]});
    let mk = |id: &str, findings: Vec<Value>| {
        let h = json!({"fromAgent": id, "deliverables": {"findings": findings}});
        HandoffInput::Parsed {
            path: format!("{WS}/.corral/handoffs/{id}.json").into(),
            handoff: serde_json::from_value(h).unwrap(),
            modified: "2026-01-01T00:00:00Z".into(),
        }
    };
    let loud = mk("agent-001-A", vec![port(9090), port(9090), port(9090)]);
    let (r, _) = run(
        complete(&["agent-001-A", "agent-002-A", "agent-003-A"]),
        vec![loud.clone(), mk("agent-002-A", vec![port(8080)]), mk("agent-003-A", vec![port(8080)])],
        &[],
    );
    let c = only_conflict(&r);
    assert_eq!(c.resolution, Resolution::Majority);
    assert_eq!(c.winner.as_ref().unwrap().value, json!(8080));
    assert_eq!(c.positions.iter().filter(|p| p.agent == "agent-001-A").count(), 1);

    let (r, _) = run(complete(&["agent-001-A", "agent-002-A"]), vec![loud, mk("agent-002-A", vec![port(8080)])], &[]);
    assert_eq!(only_conflict(&r).resolution, Resolution::Unresolved, "three repeats are still one agent");

    // A plurality is not a majority: 2 of 4 agents is no strict majority.
    let (r, _) = run(
        complete(&["agent-001-A", "agent-002-A", "agent-003-A", "agent-004-A"]),
        vec![
            mk("agent-001-A", vec![port(8080)]),
            mk("agent-002-A", vec![port(8080)]),
            mk("agent-003-A", vec![port(9090)]),
            mk("agent-004-A", vec![port(7070)]),
        ],
        &[],
    );
    assert_eq!(only_conflict(&r).resolution, Resolution::Unresolved);
    assert_eq!(only_conflict(&r).positions.len(), 4);

    // An agent contradicting itself cannot be merged as agreed fact, nor win by itself.
    let (r, _) = run(complete(&["agent-001-A"]), vec![mk("agent-001-A", vec![port(8080), port(9090)])], &[]);
    assert_eq!(only_conflict(&r).resolution, Resolution::Unresolved);

    // A test that did not pass supports nothing: reasoning outranks it.
    let failed_test = json!({"key": "server.port", "value": 8080, "evidence": [{"kind": "test", "passed": false}]});
    let (r, _) = run(
        complete(&["agent-001-A", "agent-002-A"]),
        vec![mk("agent-001-A", vec![failed_test]), mk("agent-002-A", vec![port(9090)])],
        &[],
    );
    let c = only_conflict(&r);
    assert_eq!((c.resolution, &c.winner.as_ref().unwrap().value), (Resolution::Evidence, &json!(9090)));
}

#[test]
fn two_agents_listing_one_file_conflict() {
    let ids = ["agent-001-IMPLEMENTER", "agent-002-IMPLEMENTER"];
    let existing = ["src/lib.rs", "docs/guide.md", "src/cli.rs"];
    let (r, _) = run(complete(&ids), vec![at(fixture!("files-a.json")), at(fixture!("files-b.json"))], &existing);
    let c = only_conflict(&r);
    assert_eq!((c.key.as_str(), c.kind, c.resolution), ("src/lib.rs", ConflictKind::File, Resolution::Unresolved));
    assert_eq!(c.positions.iter().map(|p| p.agent.as_str()).collect::<Vec<_>>(), ids);
    assert!(c.positions[1].claim.as_deref().unwrap().contains("src/../src/lib.rs"));
    assert_eq!(r.todo.len(), 1);
    assert_eq!(r.todo[0].key.as_deref(), Some("src/lib.rs"));
    assert_eq!(r.findings.len(), 2, "the agents' other findings still merge");
    assert_positions_kept(&r);

    // When only one of the handoffs claims completion, its change is the one that stands.
    let mut b = at(fixture!("files-b.json"));
    if let HandoffInput::Parsed { handoff, .. } = &mut b {
        handoff.status = "failed".into();
    }
    let (r, _) = run(complete(&ids), vec![at(fixture!("files-a.json")), b], &existing);
    let c = only_conflict(&r);
    assert_eq!(c.resolution, Resolution::Evidence);
    assert_eq!(c.winner.as_ref().unwrap().agent, "agent-001-IMPLEMENTER");
    assert_eq!(c.positions.len(), 2);
}

#[test]
fn missing_deliverable_is_a_deliverable_failure() {
    let (r, asked) =
        run(complete(&["agent-001-CLEANER"]), vec![at(fixture!("missing-file.json"))], &["out/removed.txt"]);
    assert_eq!(asked, [PathBuf::from("/ws/out/cleanup-report.md"), PathBuf::from("/ws/out/removed.txt")]);
    let states: Vec<_> = r.deliverables[0].files.iter().map(|f| (f.path.as_str(), f.state)).collect();
    assert_eq!(states, [("out/cleanup-report.md", FileState::Missing), ("out/removed.txt", FileState::Exists)]);
    assert_eq!(r.deliverable_failures.len(), 1);
    assert_eq!(r.deliverable_failures[0].missing, ["out/cleanup-report.md"]);
    assert_eq!(r.counts.missing_files, 1);
    assert_eq!(r.todo.len(), 1);
    assert_eq!(r.todo[0].kind, TodoKind::Deliverable);
    assert!(r.todo[0].text.contains("out/cleanup-report.md"));
    assert!(r.memory.is_empty() && r.memory_withheld.len() == 1, "memory from a failed handoff is not validated");
    assert!(!r.complete);
    assert!(render_markdown(&r).contains("`out/cleanup-report.md`: **MISSING**"));

    // A handoff that does not claim success reports the file as missing but is no failure of a claim.
    let mut h = at(fixture!("missing-file.json"));
    if let HandoffInput::Parsed { handoff, .. } = &mut h {
        handoff.status = "blocked".into();
    }
    let (r, _) = run(complete(&["agent-001-CLEANER"]), vec![h], &["out/removed.txt"]);
    assert!(r.deliverable_failures.is_empty());
    assert_eq!(r.counts.missing_files, 1);
}

#[test]
fn paths_escaping_the_workspace_are_flagged_and_never_checked() {
    for cwd in ["/ws", "/ws/sub"] {
        let mut a = agent("agent-002-CLEANER", "complete", None);
        a.cwd = cwd.into();
        let (r, asked) = run(vec![a], vec![at(fixture!("escape.json"))], &["notes/ok.md", "sub/notes/ok.md"]);
        assert!(asked.iter().all(|p| p.starts_with(WS)), "asked about {asked:?}");
        let files = &r.deliverables[0].files;
        assert_eq!(files.len(), 3);
        for f in &files[..2] {
            assert_eq!((f.path.as_str(), f.state), ("/etc/passwd", FileState::OutsideWorkspace), "{f:?}");
        }
        assert_eq!(files[2].state, FileState::Exists);
        assert_eq!(r.deliverable_failures[0].outside_workspace, ["/etc/passwd"]);
        assert_eq!(r.counts.outside_workspace, 2);
        let md = render_markdown(&r);
        assert!(md.contains("`/etc/passwd` (`../../etc/passwd`): **OUTSIDE THE WORKSPACE**"), "{md}");
    }
}

#[test]
fn unreadable_handoff_is_reported_and_the_rest_aggregated() {
    let torn = (
        "handoff-20260101T000000.000Z-agent-003-CLEANER-to-ORCHESTRATOR.json",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/aggregate/torn.json")),
    );
    let h = at(torn);
    assert!(matches!(h, HandoffInput::Unreadable { .. }), "the fixture must not parse");
    let (r, _) = run(
        complete(&["agent-001-AUDITOR", "agent-003-CLEANER"]),
        vec![h, at(fixture!("agree-1.json"))],
        &["docs/audit-db.md"],
    );
    assert_eq!(r.counts.aggregated, 1);
    assert_eq!(r.findings.len(), 2);
    assert_eq!(r.missing.len(), 1, "the agent is reported once, with the error: {:#?}", r.missing);
    let m = &r.missing[0];
    assert_eq!((m.kind, m.agent.as_deref()), (MissingKind::Unreadable, Some("agent-003-CLEANER")));
    assert!(m.reason.contains("torn"), "{}", m.reason);
    assert!(r.partial && !r.complete);
    assert_eq!(r.todo.len(), 1);
    assert_eq!(r.todo[0].kind, TodoKind::UnreadableHandoff);
    assert!(render_markdown(&r).contains("is unreadable"));

    // A stray unreadable file beside an agent's readable handoff: a TODO, but nothing left out.
    let (r, _) = run(
        complete(&["agent-003-CLEANER"]),
        vec![at(torn), at(fixture!("escape.json"))]
            .into_iter()
            .map(|h| match h {
                HandoffInput::Parsed { path, mut handoff, modified } => {
                    handoff.from_agent = "agent-003-CLEANER".into();
                    handoff.deliverables.files.clear();
                    HandoffInput::Parsed { path, handoff, modified }
                }
                other => other,
            })
            .collect(),
        &[],
    );
    assert_eq!(r.counts.aggregated, 1);
    assert!(!r.partial && !r.complete);
    assert_eq!(r.todo.len(), 1);
}

#[test]
fn partial_aggregation_lists_unfinished_agents_without_waiting() {
    let mut agents = complete(&["agent-001-AUDITOR", "agent-002-AUDITOR", "agent-003-AUDITOR"]);
    agents.push(agent("agent-004-IMPLEMENTER", "escalated", Some("permanent: missing credentials")));
    agents.push(agent("agent-005-IMPLEMENTER", "running", Some("attempt 2 of 3")));
    let (r, _) = run(
        agents,
        vec![at(fixture!("agree-1.json")), at(fixture!("agree-2.json")), at(fixture!("partial-3.json"))],
        &["docs/audit-db.md", "docs/audit-api.md", "docs/audit-ui.md"],
    );
    assert_eq!((r.counts.agents, r.counts.aggregated, r.counts.failed), (5, 3, 2));
    let engine = r.findings.iter().find(|f| f.key.as_deref() == Some("db.engine")).unwrap();
    assert_eq!(engine.agents.len(), 3);
    assert_eq!(engine.evidence_rank, 3);
    let failed: Vec<_> = r.failed.iter().map(|f| (f.agent.as_str(), f.status.as_str(), f.reason.as_deref())).collect();
    assert_eq!(
        failed,
        [
            ("agent-004-IMPLEMENTER", "escalated", Some("permanent: missing credentials")),
            ("agent-005-IMPLEMENTER", "running", Some("attempt 2 of 3")),
        ]
    );
    let todo: Vec<_> = r.todo.iter().map(|t| (t.kind, t.agent.as_deref())).collect();
    assert_eq!(
        todo,
        [(TodoKind::Escalated, Some("agent-004-IMPLEMENTER")), (TodoKind::Unfinished, Some("agent-005-IMPLEMENTER"))]
    );
    assert!(r.todo[1].text.contains("task of agent-005-IMPLEMENTER"));
    assert!(r.partial && !r.complete);
    let md = render_markdown(&r);
    assert!(md.contains("**Partial:** 3 of 5 agents aggregated, 2 agents not complete"), "{md}");
    assert!(md.contains("agent-004-IMPLEMENTER (IMPLEMENTER), escalated: permanent: missing credentials"), "{md}");
    assert!(md.contains("- [ ] agent-005-IMPLEMENTER (IMPLEMENTER) is still running"), "{md}");
}

#[test]
fn retried_agent_contributes_only_its_latest_handoff_in_any_order() {
    let old = handoff(fixture!("tie-b.json"), "2026-01-01T00:00:00Z");
    let mut new = handoff(fixture!("tie-a.json"), "2026-01-01T00:05:00+00:00");
    if let HandoffInput::Parsed { handoff, .. } = &mut new {
        handoff.from_agent = "agent-002-AUDITOR".into();
    }
    let agents = complete(&["agent-002-AUDITOR"]);
    let (r, _) = run(agents.clone(), vec![old.clone(), new.clone()], &[]);
    assert!(r.conflicts.is_empty(), "an agent does not conflict with its own earlier attempt");
    assert_eq!(r.counts.superseded, 1);
    assert_eq!(r.findings[0].value, json!(8080));
    let (reversed, _) = run(agents, vec![new, old], &[]);
    assert_eq!(r, reversed);
}

#[test]
fn report_does_not_depend_on_completion_order() {
    let ids = ["agent-001-IMPLEMENTER", "agent-002-IMPLEMENTER", "agent-003-IMPLEMENTER"];
    let hs = || {
        vec![
            at(fixture!("evidence-test.json")),
            at(fixture!("evidence-reasoning-a.json")),
            at(fixture!("evidence-reasoning-b.json")),
        ]
    };
    let (a, _) = run(complete(&ids), hs(), &[]);
    let (b, _) = run(complete(&ids), hs().into_iter().rev().collect(), &[]);
    assert_eq!(a, b);
}

#[test]
fn other_agents_edge_cases() {
    // Not complete, but left a handoff: listed with it, not merged.
    // Complete without a handoff: missing.
    // A handoff from no known agent: merged and labelled.
    let mut ghost = at(fixture!("tie-b.json"));
    if let HandoffInput::Parsed { handoff, .. } = &mut ghost {
        handoff.from_agent = "agent-099-GHOST".into();
    }
    let agents =
        vec![agent("agent-001-AUDITOR", "failed", Some("exit 1")), agent("agent-002-AUDITOR", "complete", None)];
    let (r, _) = run(agents, vec![at(fixture!("tie-a.json")), ghost], &[]);
    assert_eq!(r.failed.len(), 1);
    assert!(r.failed[0].handoff.is_some());
    assert_eq!(r.missing.len(), 1);
    assert_eq!((r.missing[0].kind, r.missing[0].agent.as_deref()), (MissingKind::NoHandoff, Some("agent-002-AUDITOR")));
    assert_eq!(r.unknown_agents, ["agent-099-GHOST"]);
    assert!(r.conflicts.is_empty(), "the failed agent's 8080 is not a position");
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].agents, ["agent-099-GHOST"]);
    assert!(!r.deliverables[0].known);
    let kinds: Vec<_> = r.todo.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TodoKind::Failed, TodoKind::MissingHandoff]);
    let md = render_markdown(&r);
    assert!(md.contains("agent-099-GHOST (not a known agent)"), "{md}");
    assert!(md.contains("is not aggregated"), "{md}");
}

#[test]
fn json_uses_the_documented_names() {
    let (r, _) = run(
        complete(&["agent-002-CLEANER", "agent-001-AUDITOR", "agent-002-AUDITOR"]),
        vec![at(fixture!("escape.json")), at(fixture!("tie-a.json")), at(fixture!("tie-b.json"))],
        &[],
    );
    let v = serde_json::to_value(&r).unwrap();
    for k in [
        "complete",
        "partial",
        "counts",
        "findings",
        "decisions",
        "deliverables",
        "deliverableFailures",
        "conflicts",
        "failed",
        "missing",
        "todo",
        "memory",
        "memoryWithheld",
        "unknownAgents",
    ] {
        assert!(v.get(k).is_some(), "no {k}");
    }
    let c = &v["conflicts"][0];
    assert_eq!((c["kind"].as_str(), c["resolution"].as_str()), (Some("finding"), Some("unresolved")));
    let p = &c["positions"][0];
    for k in ["agent", "value", "claim", "evidence", "evidenceRank"] {
        assert!(p.get(k).is_some(), "position has no {k}");
    }
    assert_eq!(v["deliverables"][0]["files"][0]["state"], json!("outside_workspace"));
    assert_eq!(v["counts"]["outsideWorkspace"], json!(2));
    let back: Report = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
}

#[test]
fn markdown_survives_hostile_text() {
    let h = json!({"fromAgent": "agent-001-A", "deliverables": {
        "findings": ["line one\n## not a heading", {"key": "k`", "value": "``x``"}],
        "decisions": ["- [ ] fake todo\nsecond"]}});
    let input = HandoffInput::Parsed {
        path: "/ws/h.json".into(),
        handoff: serde_json::from_value(h).unwrap(),
        modified: "x".into(),
    };
    let (r, _) = run(complete(&["agent-001-A"]), vec![input], &[]);
    let md = render_markdown(&r);
    assert!(!md.contains("\n## not a heading"), "{md}");
    assert!(!md.contains("\nsecond"), "{md}");
    assert!(md.contains("``` ``x`` ```"), "{md}");
}

#[test]
fn scales_to_a_thousand_handoffs() {
    const N: usize = 1000;
    let handoffs: Vec<HandoffInput> = (0..N)
        .map(|i| {
            let id = format!("agent-{i:04}-W");
            let mut findings: Vec<Value> =
                (0..5).map(|j| json!({"key": format!("shared.{j}"), "value": "same"})).collect();
            findings.extend((0..4).map(|j| json!({"key": format!("own.{i}.{j}"), "value": j})));
            findings.push(json!({"key": "split", "value": i % 2}));
            let h = json!({"fromAgent": id, "deliverables": {"files": [format!("out/{i}.txt")], "findings": findings},
                           "memoryCandidate": {"bucket": i % 10}});
            HandoffInput::Parsed {
                path: format!("/ws/.corral/handoffs/{id}.json").into(),
                handoff: serde_json::from_value(h).unwrap(),
                modified: "2026-01-01T00:00:00Z".into(),
            }
        })
        .collect();
    let agents = (0..N).map(|i| agent(&format!("agent-{i:04}-W"), "complete", None)).collect();
    let r = aggregate(&Input {
        agents,
        handoffs,
        workspace: Path::new(WS),
        locate: &|_| workspace::Found::Exists,
        human: vec![],
        branches: vec![],
        merges: vec![],
        trees: Default::default(),
    });
    let c = &r.counts;
    assert_eq!((c.agents, c.aggregated, c.failed, c.missing), (N, N, 0, 0));
    assert_eq!(c.findings, 5 + 4 * N);
    assert_eq!((c.conflicts, c.unresolved), (1, 1));
    assert_eq!(r.conflicts[0].positions.len(), N);
    assert_eq!(r.findings[0].agents.len(), N);
    assert_eq!((c.files, c.missing_files, c.memory, c.todo), (N, 0, 10, 1));
}

fn answer(choose: Option<serde_json::Value>, winner: Option<&str>) -> HumanAnswer {
    HumanAnswer {
        key: "server.port".into(),
        kind: ConflictKind::Finding,
        escalation: 4,
        note: Some("ops runs it on 9090".into()),
        choose,
        winner: winner.map(str::to_string),
    }
}

#[test]
fn a_humans_answer_settles_a_conflict_and_stays() {
    let tie = || vec![at(fixture!("tie-a.json")), at(fixture!("tie-b.json"))];
    let agents = || complete(&["agent-001-AUDITOR", "agent-002-AUDITOR"]);
    let (plain, _) = run(agents(), tie(), &[]);
    let open = only_conflict(&plain);
    let (owner, reason, conflict) = conflict_escalation(open).unwrap();
    assert_eq!(owner, "agent-001-AUDITOR");
    assert_eq!(conflict.agents, ["agent-001-AUDITOR", "agent-002-AUDITOR"], "every agent is named");
    assert!(reason.contains("agent-001-AUDITOR") && reason.contains("agent-002-AUDITOR"), "{reason}");
    let values: Vec<_> = open.positions.iter().map(|p| p.value.clone()).collect();
    for (choose, winner) in [(Some(values[1].clone()), None), (None, Some(open.positions[1].agent.as_str()))] {
        let (r, _) = run_with(agents(), tie(), &[], vec![answer(choose, winner)]);
        let c = only_conflict(&r);
        assert_eq!(c.resolution, Resolution::Human);
        assert_eq!((c.escalation, c.note.as_deref()), (Some(4), Some("ops runs it on 9090")));
        let w = c.winner.as_ref().unwrap();
        assert_eq!((&w.value, w.agents.as_slice()), (&values[1], [open.positions[1].agent.clone()].as_slice()));
        assert_eq!((r.counts.resolved_by_human, r.counts.unresolved), (1, 0));
        assert!(r.todo.is_empty() && r.complete, "{:?}", r.todo);
        let (json, md) = outputs(&r);
        assert!(json.contains("\"resolution\": \"human\""), "{json}");
        assert!(md.contains("resolved by a human (escalation #4)") && md.contains("ops runs it on 9090"), "{md}");
        assert_positions_kept(&r);
    }
    // a note alone settles it too, with no value invented
    let (r, _) = run_with(agents(), tie(), &[], vec![answer(None, None)]);
    assert_eq!((only_conflict(&r).resolution, &only_conflict(&r).winner), (Resolution::Human, &None));
    // an answer about another key changes nothing
    let mut other = answer(None, None);
    other.key = "db.name".into();
    let (r, _) = run_with(agents(), tie(), &[], vec![other]);
    assert_eq!(only_conflict(&r).resolution, Resolution::Unresolved);
}
