//! `corral health`: capacity, queue, breaker, resources, and why spawning is held.

use super::output::print_json;
use super::{Ctx, Result};
use crate::ipc::{HealthView, Request};
use crate::say_to;

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
    print(&h, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// What `corral health` prints: why starts are held, capacity, breakers, resources,
/// escalations, providers, groups, cost and the queue, each line only when it says something.
pub fn print(h: &HealthView, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match &h.held_because {
        None => say_to!(out, "healthy: new agents start at once")?,
        Some(why) => say_to!(out, "holding new starts: {why}")?,
    }
    match h.configured_max_concurrent {
        Some(c) => say_to!(
            out,
            "capacity:    {} of {} running (corral parallel; corral.toml says {c}; corral parallel --reset goes back)",
            h.running,
            h.max_concurrent
        )?,
        None => say_to!(out, "capacity:    {} of {} running", h.running, h.max_concurrent)?,
    }
    if h.paused {
        say_to!(out, "paused:      no queued agent starts (corral resume to release)")?;
    }
    let b = &h.breaker;
    if b.state == "off" {
        say_to!(out, "breaker:     off (breaker_failures = 0)")?;
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
            "global" => say_to!(out, "breaker:     {}", line(b))?,
            _ if h.breakers.is_empty() => say_to!(out, "breaker:     closed (one per role; no recent failures)")?,
            _ => {
                say_to!(out, "breakers:    one per role")?;
                for r in &h.breakers {
                    say_to!(out, "  {:12} {}", crate::display::shown(&r.key), line(r))?;
                }
            }
        }
    }
    if let Some(m) = h.free_memory {
        say_to!(out, "memory:      {} MiB free (minimum {} MiB)", m >> 20, h.min_free_memory.unwrap_or(0) >> 20)?;
    }
    if let Some(l) = h.load {
        say_to!(out, "load:        {l:.2} (maximum {:.2})", h.max_load.unwrap_or(0.0))?;
    }
    match h.max_open_escalations {
        Some(m) => say_to!(out, "escalations: {} open (at most {m})", h.open_escalations)?,
        None => say_to!(out, "escalations: {} open", h.open_escalations)?,
    }
    for p in &h.providers {
        let mut what = Vec::new();
        if let Some(u) = &p.held_until {
            what.push(format!("held until {u}"));
        }
        if let Some(m) = p.max_concurrent {
            what.push(format!("{} of at most {m} running", p.running));
        }
        say_to!(
            out,
            "provider:    {} {} ({})",
            crate::display::shown(&p.name),
            what.join(", "),
            crate::display::shown(&p.reason)
        )?;
    }
    for g in &h.groups {
        let max = g.max_concurrent.map_or("no limit of its own".to_string(), |m| format!("at most {m}"));
        let paused = if g.paused { ", paused" } else { "" };
        say_to!(
            out,
            "group:       {} {} running ({max}{paused}), {} queued",
            crate::display::shown(&g.name),
            g.running,
            g.queued
        )?;
    }
    if h.cost_usd > 0.0 {
        say_to!(out, "cost:        ${:.4} so far", h.cost_usd)?;
    }
    say_to!(out, "queue:       {} waiting", h.queued.len())?;
    for q in &h.queued {
        say_to!(out, "  {}  {}", q.agent_id, q.reason)?;
    }
    Ok(())
}
