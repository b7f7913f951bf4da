//! `corral health`: capacity, queue, breaker, resources, and why spawning is held.

use super::output::print_json;
use super::{Ctx, Result};
use crate::ipc::{HealthView, Request};

#[derive(Debug, clap::Args)]
pub struct Args {
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
        None => println!("healthy: new agents start at once"),
        Some(why) => println!("holding new starts: {why}"),
    }
    println!("capacity:    {} of {} running", h.running, h.max_concurrent);
    let b = &h.breaker;
    let mut line = format!(
        "breaker:     {} ({} of {} failures within {}; cooldown {})",
        b.state, b.recent_failures, b.threshold, b.window, b.cooldown
    );
    if let Some(s) = b.probe_in_seconds {
        line.push_str(&format!("; probe in {s:.0}s"));
    }
    if let Some(p) = &b.probe {
        line.push_str(&format!("; probe {p} running"));
    }
    println!("{line}");
    if let Some(m) = h.free_memory {
        println!("memory:      {} MiB free (minimum {} MiB)", m >> 20, h.min_free_memory.unwrap_or(0) >> 20);
    }
    if let Some(l) = h.load {
        println!("load:        {l:.2} (maximum {:.2})", h.max_load.unwrap_or(0.0));
    }
    match h.max_open_escalations {
        Some(m) => println!("escalations: {} open (at most {m})", h.open_escalations),
        None => println!("escalations: {} open", h.open_escalations),
    }
    println!("queue:       {} waiting", h.queued.len());
    for q in &h.queued {
        println!("  {}  {}", q.agent_id, q.reason);
    }
    Ok(0)
}
