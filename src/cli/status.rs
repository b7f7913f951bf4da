//! `corral status`: one line per agent.

use super::output::{age, bar};
use super::{Ctx, Result};
use crate::ipc::{AgentView, Request};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub ids: Vec<String>,
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let raw = ctx.call_raw(&Request::Status { ids: a.ids, role: a.role })?;
    if a.json {
        // Printed as the supervisor wrote it: one object per agent, no re-encoding.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(raw.as_bytes())?;
        out.write_all(b"\n")?;
        return Ok(0);
    }
    let views: Vec<AgentView> = serde_json::from_str(&raw)?;
    if views.is_empty() {
        eprintln!("no agents");
        return Ok(0);
    }
    let idw = views.iter().map(|v| v.agent_id.len()).max().unwrap_or(5).max(5);
    let rw = views.iter().map(|v| v.role.len()).max().unwrap_or(4).max(4);
    println!(
        "{:idw$}  {:rw$}  {:9}  {:17}  {:24}  {:>6}  {:5}  ANOMALIES",
        "AGENT", "ROLE", "STATUS", "PROGRESS", "PHASE/MILESTONE", "AGE", "TRY"
    );
    for v in views {
        let pm = match (&v.phase, &v.milestone) {
            (Some(p), Some(m)) => format!("{p}/{m}"),
            (Some(p), None) => p.clone(),
            (None, Some(m)) => format!("-/{m}"),
            (None, None) => "-".into(),
        };
        let pm: String = if pm.chars().count() > 24 { pm.chars().take(23).chain(['~']).collect() } else { pm };
        let mut anomalies = v.anomalies.join(" ");
        if v.status == "queued"
            && let Some(r) = &v.reason
        {
            anomalies = format!("QUEUED: {r} {anomalies}");
        }
        println!(
            "{:idw$}  {:rw$}  {:9}  {:17}  {:24}  {:>6}  {:5}  {}",
            v.agent_id,
            v.role,
            v.status,
            bar(v.progress, 10),
            pm,
            age(v.age_seconds),
            format!("{}/{}", v.attempt, v.max_retries + 1),
            anomalies.trim()
        );
    }
    Ok(0)
}
