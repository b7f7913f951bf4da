//! `corral health`: capacity, queue, breaker, resources, and why spawning is held.

use super::output::print_json;
use super::{Ctx, Result};
use crate::ipc::{HealthView, Request};
use crate::say;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let data = ctx.call(&Request::Health)?;
    if a.json {
        print_json(&data)?;
        return Ok(0);
    }
    let h: HealthView = serde_json::from_value(data)?;
    match &h.held_because {
        None => say!("healthy: new agents start at once")?,
        Some(why) => say!("holding new starts: {why}")?,
    }
    match h.configured_max_concurrent {
        Some(c) => say!(
            "capacity:    {} of {} running (corral parallel; corral.toml says {c}; corral parallel --reset goes back)",
            h.running,
            h.max_concurrent
        )?,
        None => say!("capacity:    {} of {} running", h.running, h.max_concurrent)?,
    }
    if h.paused {
        say!("paused:      no queued agent starts (corral resume to release)")?;
    }
    let b = &h.breaker;
    if b.state == "off" {
        say!("breaker:     off (breaker_failures = 0)")?;
    } else {
        let line = |b: &crate::ipc::BreakerView| {
            let mut line = format!(
                "{} ({} of {} within {}; cooldown {})",
                b.state,
                b.recent_failures,
                crate::policy::plural(b.threshold, "failure", "failures"),
                b.window,
                b.cooldown
            );
            if let Some(s) = b.probe_in_seconds {
                line.push_str(&format!("; probe in {}s", s.ceil() as u64));
            }
            if let Some(p) = &b.probe {
                line.push_str(&format!("; probe {p} running"));
            }
            line
        };
        match b.scope.as_str() {
            "global" => say!("breaker:     {}", line(b))?,
            _ if h.breakers.is_empty() => say!("breaker:     closed (one per role; no recent failures)")?,
            _ => {
                say!("breakers:    one per role")?;
                for r in &h.breakers {
                    say!("  {:12} {}", crate::display::shown(&r.key), line(r))?;
                }
            }
        }
    }
    if let Some(m) = h.free_memory {
        say!("memory:      {} MiB free (minimum {} MiB)", m >> 20, h.min_free_memory.unwrap_or(0) >> 20)?;
    }
    if let Some(l) = h.load {
        say!("load:        {l:.2} (maximum {:.2})", h.max_load.unwrap_or(0.0))?;
    }
    match h.max_open_escalations {
        Some(m) => say!("escalations: {} open (at most {m})", h.open_escalations)?,
        None => say!("escalations: {} open", h.open_escalations)?,
    }
    for p in &h.providers {
        let mut what = Vec::new();
        if let Some(u) = &p.held_until {
            what.push(format!("held until {u}"));
        }
        if let Some(m) = p.max_concurrent {
            what.push(format!("{} of at most {m} running", p.running));
        }
        say!(
            "provider:    {} {} ({})",
            crate::display::shown(&p.name),
            what.join(", "),
            crate::display::shown(&p.reason)
        )?;
    }
    for g in &h.groups {
        let max = g.max_concurrent.map_or("no limit of its own".to_string(), |m| format!("at most {m}"));
        let paused = if g.paused { ", paused" } else { "" };
        say!(
            "group:       {} {} running ({max}{paused}), {} queued",
            crate::display::shown(&g.name),
            g.running,
            g.queued
        )?;
    }
    if h.cost_usd > 0.0 {
        say!("cost:        ${:.4} so far", h.cost_usd)?;
    }
    say!("queue:       {} waiting", h.queued.len())?;
    for q in &h.queued {
        say!("  {}  {}", q.agent_id, q.reason)?;
    }
    Ok(0)
}
