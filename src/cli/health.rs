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
    if b.state == "off" {
        println!("breaker:     off (breaker_failures = 0)");
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
            "global" => println!("breaker:     {}", line(b)),
            _ if h.breakers.is_empty() => println!("breaker:     closed (one per role; no recent failures)"),
            _ => {
                println!("breakers:    one per role");
                for r in &h.breakers {
                    println!("  {:12} {}", r.key, line(r));
                }
            }
        }
    }
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
