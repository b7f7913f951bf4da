//! The report for people. It shows everything the JSON holds that a reader needs to act:
//! no position of a conflict is left out, and values are printed as the agents gave them,
//! on one line each and with every character that could drive a terminal escaped (the
//! report is read with `cat` as often as with a Markdown viewer).

use super::findings::rank_name;
use super::*;
use std::fmt::Write;

/// Inline code that survives backticks and line breaks inside agent-supplied text.
fn code(s: &str) -> String {
    let s = one_line(s);
    let mut longest = 0;
    let mut run = 0;
    for ch in s.chars() {
        run = if ch == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Agent text on one line, so it cannot break the list it sits in, and escaped, so it
/// cannot drive the terminal of whoever reads the report.
fn one_line(s: &str) -> String {
    let joined = s.split(['\n', '\r']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ");
    crate::display::escape(&joined).into_owned()
}

fn value(v: &Value) -> String {
    match v {
        Value::String(s) => code(s),
        other => code(&other.to_string()),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn evidence_text(items: &[Value], rank: u8) -> String {
    if items.is_empty() {
        return "no evidence".into();
    }
    let shown: Vec<String> = items
        .iter()
        .map(|e| {
            let kind = e.get("kind").and_then(Value::as_str);
            let r = e.get("ref").and_then(Value::as_str);
            let passed = match e.get("passed") {
                Some(Value::Bool(true)) => ", passed",
                Some(Value::Bool(false)) => ", did NOT pass",
                _ => "",
            };
            match (kind, r) {
                (Some(k), Some(r)) => format!("{} {}{passed}", one_line(k), code(r)),
                (Some(k), None) => format!("{}{passed}", one_line(k)),
                _ => value(e),
            }
        })
        .collect();
    format!("{} (rank {rank}: {})", shown.join("; "), rank_name(rank))
}

fn summary(r: &Report) -> String {
    let c = &r.counts;
    let state = if r.complete {
        "Complete"
    } else if r.partial {
        "Partial"
    } else {
        "Needs attention"
    };
    let mut parts =
        vec![format!("{} of {} aggregated", c.aggregated - c.unknown_agents, plural(c.agents, "agent", "agents"))];
    if c.unknown_agents > 0 {
        parts.push(format!(
            "plus {}",
            plural(c.unknown_agents, "handoff from an unknown agent", "handoffs from unknown agents")
        ));
    }
    if c.failed > 0 {
        parts.push(format!("{} not complete", plural(c.failed, "agent", "agents")));
    }
    if c.missing > 0 {
        parts.push(format!("{} missing or unreadable", plural(c.missing, "handoff", "handoffs")));
    }
    if c.conflicts == 0 {
        parts.push("no conflicts".into());
    } else {
        let human =
            if c.resolved_by_human > 0 { format!(", {} by a human", c.resolved_by_human) } else { String::new() };
        parts.push(format!(
            "{} ({} by evidence, {} by majority{human}, {} unresolved)",
            plural(c.conflicts, "conflict", "conflicts"),
            c.resolved_by_evidence,
            c.resolved_by_majority,
            c.unresolved
        ));
    }
    if c.deliverable_failures > 0 {
        parts.push(plural(c.deliverable_failures, "deliverable failure", "deliverable failures"));
    }
    parts.push(format!("{} left", plural(c.todo, "TODO", "TODOs")));
    format!("**{state}:** {}.", parts.join(", "))
}

pub fn render_markdown(r: &Report) -> String {
    let mut out = String::new();
    let o = &mut out;
    let unknown: HashSet<&str> = r.unknown_agents.iter().map(String::as_str).collect();
    let who = |a: &str| {
        if unknown.contains(a) { format!("{} (not a known agent)", one_line(a)) } else { one_line(a) }
    };
    let many = |agents: &[String]| agents.iter().map(|a| who(a)).collect::<Vec<_>>().join(", ");

    let _ = writeln!(o, "# Aggregation report\n\n{}\n", summary(r));

    let _ = writeln!(o, "## Findings\n");
    if r.findings.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for f in &r.findings {
        let what = match &f.key {
            Some(k) => format!("{} = {}", code(k), value(&f.value)),
            None => match &f.value {
                Value::String(s) => one_line(s),
                v => value(v),
            },
        };
        let _ = writeln!(o, "- {what} ({}; strongest evidence: {})", many(&f.agents), rank_name(f.evidence_rank));
    }

    let _ = writeln!(o, "\n## Decisions\n");
    if r.decisions.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for d in &r.decisions {
        let text = match &d.decision {
            Value::String(s) => one_line(s),
            v => value(v),
        };
        let _ = writeln!(o, "- {text} ({})", many(&d.agents));
    }

    let _ = writeln!(o, "\n## Deliverables\n");
    if r.deliverables.iter().all(|d| d.files.is_empty()) {
        let _ = writeln!(o, "No files listed.");
    }
    for d in r.deliverables.iter().filter(|d| !d.files.is_empty()) {
        let _ = writeln!(o, "- {} (handoff status {}):", who(&d.agent), code(&d.handoff_status));
        for f in &d.files {
            let state = match f.state {
                FileState::Exists => "exists",
                FileState::Missing => "**MISSING**",
                FileState::OutsideWorkspace => "**OUTSIDE THE WORKSPACE** (not checked)",
            };
            let shown =
                if f.listed == f.path { code(&f.path) } else { format!("{} ({})", code(&f.path), code(&f.listed)) };
            let _ = writeln!(o, "  - {shown}: {state}");
        }
    }
    if !r.deliverable_failures.is_empty() {
        let _ = writeln!(o, "\nDeliverable failures (the handoff claims complete):\n");
    }
    for f in &r.deliverable_failures {
        let mut bad: Vec<String> = f.missing.iter().map(|p| format!("{} missing", code(p))).collect();
        bad.extend(f.outside_workspace.iter().map(|p| format!("{} outside the workspace", code(p))));
        let _ = writeln!(o, "- {}: {}", who(&f.agent), bad.join(", "));
    }

    if !r.branches.is_empty() {
        let _ = writeln!(o, "\nBranches (what each worktree agent changed):\n");
    }
    for b in &r.branches {
        let files: Vec<String> = b.files.iter().map(|f| code(f)).collect();
        let _ = writeln!(o, "- {} on {}: {}", who(&b.agent), code(&b.branch), files.join(", "));
    }
    for v in &r.overlaps {
        let _ = writeln!(o, "- {} changed by {}: merges cleanly", code(&v.file), many(&v.agents));
    }

    let _ = writeln!(o, "\n## Conflicts\n");
    if r.conflicts.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for c in &r.conflicts {
        let kind = match c.kind {
            ConflictKind::Finding => "finding",
            ConflictKind::File => "file",
        };
        let outcome = match (&c.resolution, &c.winner) {
            (Resolution::Human, w) => {
                let chose =
                    w.as_ref().map(|w| format!(": {} ({})", value(&w.value), many(&w.agents))).unwrap_or_default();
                let esc = c.escalation.map(|n| format!(" (escalation #{n})")).unwrap_or_default();
                let note = c.note.as_deref().map(|n| format!(", note: \"{}\"", one_line(n))).unwrap_or_default();
                format!("resolved by a human{esc}{chose}{note}")
            }
            (Resolution::Unresolved, _) | (_, None) => "**UNRESOLVED**: escalate to a human".to_string(),
            (res, Some(w)) => {
                let by = if *res == Resolution::Evidence { "evidence" } else { "majority" };
                format!("resolved by {by}: {} ({})", value(&w.value), many(&w.agents))
            }
        };
        let _ = writeln!(o, "### {kind} {}: {outcome}\n", code(&c.key));
        let _ = writeln!(o, "Why: {}\n", one_line(&c.reason));
        for p in &c.positions {
            let mark = match &c.winner {
                Some(w) if w.value == p.value && w.agents.contains(&p.agent) => "kept",
                Some(_) => "lost",
                None => "open",
            };
            let claim = p.claim.as_deref().map(|s| format!(": \"{}\"", one_line(s))).unwrap_or_default();
            let _ = writeln!(
                o,
                "- [{mark}] {} says {}{claim}; evidence: {}",
                who(&p.agent),
                value(&p.value),
                evidence_text(&p.evidence, p.evidence_rank)
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## Failed or unfinished agents\n");
    if r.failed.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for f in &r.failed {
        let reason = f.reason.as_deref().map(one_line).unwrap_or_else(|| "no reason recorded".into());
        let left =
            f.handoff.as_ref().map(|h| format!(" (its handoff {} is not aggregated)", code(&h.display().to_string())));
        let _ = writeln!(
            o,
            "- {} ({}), {}: {reason}. Task: {}{}",
            one_line(&f.agent),
            one_line(&f.role),
            one_line(&f.status),
            one_line(&f.task),
            left.unwrap_or_default()
        );
    }

    let _ = writeln!(o, "\n## Missing handoffs\n");
    if r.missing.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for m in &r.missing {
        let agent = one_line(m.agent.as_deref().unwrap_or("unknown agent"));
        match (&m.kind, &m.path) {
            (MissingKind::Unreadable, Some(p)) => {
                let _ =
                    writeln!(o, "- {agent}: {} is unreadable: {}", code(&p.display().to_string()), one_line(&m.reason));
            }
            _ => {
                let _ = writeln!(o, "- {agent}: {}", one_line(&m.reason));
            }
        }
    }

    let _ = writeln!(o, "\n## TODO\n");
    if r.todo.is_empty() {
        let _ = writeln!(o, "Nothing left.");
    }
    for t in &r.todo {
        let _ = writeln!(o, "- [ ] {}", one_line(&t.text));
    }

    let _ = writeln!(o, "\n## Memory candidates\n");
    if r.memory.is_empty() {
        let _ = writeln!(o, "None.");
    }
    for m in &r.memory {
        let _ = writeln!(o, "- {} ({})", value(&m.candidate), many(&m.agents));
    }
    if !r.memory_withheld.is_empty() {
        let _ = writeln!(o, "\nWithheld (their handoffs failed deliverable checks):\n");
        for m in &r.memory_withheld {
            let _ = writeln!(o, "- {} ({})", value(&m.candidate), many(&m.agents));
        }
    }
    // Every value above is escaped where it is written; this pass keeps a value a future
    // line forgets from reaching a terminal as it is.
    match crate::display::block(&out) {
        std::borrow::Cow::Borrowed(_) => out,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}
