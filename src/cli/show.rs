//! `corral show ID`: everything about one agent.

use super::output::{age, bar, print_json};
use super::{Ctx, Result};
use crate::display::{shown, shown_or_dash};
use crate::ipc::{Request, ShowView};
use crate::say_to;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent: its id, a unique prefix of it, or its number.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completions::agent_ids))]
    pub id: String,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let data = ctx.call(&Request::Show { id: a.id })?;
    if a.json {
        print_json(&data)?;
        return Ok(0);
    }
    let s: ShowView = serde_json::from_value(data)?;
    render(&s, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// What `corral show` prints about one agent.
pub fn render(s: &ShowView, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let v = &s.agent;
    say_to!(out, "{}  ({})", shown(&v.agent_id), shown(&v.role))?;
    say_to!(out, "  task:       {}", shown(&v.task))?;
    if let Some(sc) = &s.scope {
        say_to!(out, "  scope:      {}", shown(sc))?;
    }
    for c in &s.constraints {
        say_to!(out, "  constraint: {}", shown(c))?;
    }
    if !s.after.is_empty() {
        say_to!(out, "  after:      {}", shown(&s.after.join(", ")))?;
    }
    say_to!(out, "  command:    {:?}  (in {})", s.command, shown(&s.agent.cwd))?;
    match &v.reason {
        Some(r) => say_to!(out, "  status:     {} ({})", shown(&v.status), shown(r))?,
        None => say_to!(out, "  status:     {}", shown(&v.status))?,
    }
    if let Some(pid) = v.pid {
        say_to!(out, "  pid:        {pid} (process group {pid})")?;
    }
    if let Some(rs) = &v.reported_status {
        say_to!(
            out,
            "  reported:   {} {} {}/{}  updated {} ago",
            shown(rs),
            bar(v.progress, 10),
            shown_or_dash(v.phase.as_deref()),
            shown_or_dash(v.milestone.as_deref()),
            age(v.age_seconds)
        )?;
    }
    if let Some(u) = &v.unreadable {
        say_to!(out, "  UNREADABLE: {}", shown(u))?;
    }
    if !v.anomalies.is_empty() {
        say_to!(out, "  anomalies:  {}", shown(&v.anomalies.join(" ")))?;
    }
    if v.budget_attempt as usize == s.attempts.len() {
        say_to!(out, "  attempts ({} of at most {}):", s.attempts.len(), v.max_retries + 1)?;
    } else {
        // A human retry started a fresh budget: say both, so neither reads as `4 of 3`.
        say_to!(
            out,
            "  attempts ({} in all; {} of at most {} since the last human retry):",
            s.attempts.len(),
            v.budget_attempt,
            v.max_retries + 1
        )?;
    }
    for at in &s.attempts {
        let how = match (&at.ended_at, &at.reason) {
            (Some(t), Some(r)) => format!("ended {}: {}", shown(t), shown(r)),
            (Some(t), None) => format!("ended {}", shown(t)),
            (None, _) => match at.pid {
                Some(p) => format!("running, pid {p}"),
                None => "starting".into(),
            },
        };
        say_to!(
            out,
            "    #{} started {} timeout {}: {how}",
            at.attempt,
            shown(&at.started_at),
            shown(at.timeout.as_deref().unwrap_or("none"))
        )?;
    }
    if !s.findings.is_empty() {
        say_to!(out, "  last findings:")?;
        for f in s.findings.iter().rev().take(5).rev() {
            say_to!(out, "    - {}", shown(&crate::protocol::files::finding_text(f)))?;
        }
    }
    for h in &s.handoffs {
        say_to!(out, "  handoff:    {}", shown(h))?;
    }
    say_to!(out, "  files:      status {}", shown(&s.files.status_file))?;
    say_to!(out, "              log {}", shown(&s.files.log_file))?;
    say_to!(out, "              context {}", shown(&s.files.context_file))?;
    say_to!(out, "  events:")?;
    for e in &s.events {
        say_to!(out, "    {} {:18} {}", shown(&e.at), shown(&e.kind), shown(&e.data.to_string()))?;
    }
    Ok(())
}
