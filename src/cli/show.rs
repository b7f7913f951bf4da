//! `corral show ID`: everything about one agent.

use super::output::{age, bar, print_json};
use super::{Ctx, Result};
use crate::ipc::{Request, ShowView};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
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
    let v = &s.agent;
    println!("{}  ({})", v.agent_id, v.role);
    println!("  task:       {}", v.task);
    if let Some(sc) = &s.scope {
        println!("  scope:      {sc}");
    }
    for c in &s.constraints {
        println!("  constraint: {c}");
    }
    if !s.after.is_empty() {
        println!("  after:      {}", s.after.join(", "));
    }
    println!("  command:    {:?}  (in {})", s.command, s.agent.cwd);
    print!("  status:     {}", v.status);
    if let Some(r) = &v.reason {
        print!(" ({r})");
    }
    println!();
    if let Some(pid) = v.pid {
        println!("  pid:        {pid} (process group {pid})");
    }
    if let Some(rs) = &v.reported_status {
        println!(
            "  reported:   {rs} {} {}/{}  updated {} ago",
            bar(v.progress, 10),
            v.phase.as_deref().unwrap_or("-"),
            v.milestone.as_deref().unwrap_or("-"),
            age(v.age_seconds)
        );
    }
    if let Some(u) = &v.unreadable {
        println!("  UNREADABLE: {u}");
    }
    if !v.anomalies.is_empty() {
        println!("  anomalies:  {}", v.anomalies.join(" "));
    }
    if v.budget_attempt as usize == s.attempts.len() {
        println!("  attempts ({} of at most {}):", s.attempts.len(), v.max_retries + 1);
    } else {
        // A human retry started a fresh budget: say both, so neither reads as `4 of 3`.
        println!(
            "  attempts ({} in all; {} of at most {} since the last human retry):",
            s.attempts.len(),
            v.budget_attempt,
            v.max_retries + 1
        );
    }
    for at in &s.attempts {
        let how = match (&at.ended_at, &at.reason) {
            (Some(t), Some(r)) => format!("ended {t}: {r}"),
            (Some(t), None) => format!("ended {t}"),
            (None, _) => match at.pid {
                Some(p) => format!("running, pid {p}"),
                None => "starting".into(),
            },
        };
        println!(
            "    #{} started {} timeout {}: {how}",
            at.attempt,
            at.started_at,
            at.timeout.as_deref().unwrap_or("none")
        );
    }
    if !s.findings.is_empty() {
        println!("  last findings:");
        for f in s.findings.iter().rev().take(5).rev() {
            println!("    - {}", crate::supervisor::daemon::finding_text(f));
        }
    }
    for h in &s.handoffs {
        println!("  handoff:    {h}");
    }
    println!(
        "  files:      status {}\n              log {}\n              context {}",
        s.files.status_file, s.files.log_file, s.files.context_file
    );
    println!("  events:");
    for e in &s.events {
        println!("    {} {:18} {}", e.at, e.kind, e.data);
    }
    Ok(0)
}
