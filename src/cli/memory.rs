//! `corral memory [list | search Q | export --format mcp-memory [--out FILE]]`.

use super::output::print_json;
use super::{Ctx, Result, usage};
use crate::ipc::Request;
use crate::memory::{self, MemorySnapshot};
use crate::policy::lifecycle::fmt_ms;
use crate::{note, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Stored memory candidates and failure patterns per role (the default).
    List {
        /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Candidates and patterns that mention Q (case-insensitive).
    Search {
        /// Words to look for in learned memories and failure patterns.
        q: String,
        /// Print JSON (a stable shape: see schemas/ and the README) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the memory as a knowledge graph another tool reads.
    Export {
        /// mcp-memory: the JSONL graph of @modelcontextprotocol/server-memory.
        #[arg(long, default_value = "mcp-memory")]
        format: String,
        /// Write here instead of stdout (atomically).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let snapshot: MemorySnapshot = serde_json::from_value(ctx.call(&Request::Memory)?)?;
    present(snapshot, a)
}

/// What `a` asks of the memory `snapshot` (this workspace's, or the cluster's).
pub fn present(snapshot: MemorySnapshot, a: Args) -> Result {
    match a.action {
        None => show(&snapshot, a.json),
        Some(Action::List { json }) => show(&snapshot, json || a.json),
        Some(Action::Search { q, json }) => show(&memory::search(&snapshot, &q), json || a.json),
        Some(Action::Export { format, out }) => {
            if format != "mcp-memory" {
                return Err(usage(format!("--format {format:?}: the supported format is mcp-memory")));
            }
            let text = memory::export::to_mcp_memory_jsonl(&snapshot);
            match out {
                Some(path) => {
                    crate::protocol::atomic::write_atomic(&path, text.as_bytes())?;
                    crate::protocol::perms::user_file(&path)?;
                    note!("wrote {} lines to {}", text.lines().count(), path.display())?;
                }
                None => crate::display::raw_out(text.as_bytes())?,
            }
            Ok(0)
        }
    }
}

fn show(s: &MemorySnapshot, json: bool) -> Result {
    if json {
        print_json(s)?;
        return Ok(0);
    }
    say!("memory candidates ({}):", s.candidates.len())?;
    for c in &s.candidates {
        let v = match &c.value {
            serde_json::Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        say!("  - {v}  ({}, {})", c.agent_id, c.role)?;
    }
    say!("failure patterns by role:")?;
    for p in &s.patterns {
        let types: Vec<String> = p.failure_types.iter().map(|(k, v)| format!("{k} {v}")).collect();
        say!(
            "  {}: {} agents, {} attempts, {} failed{}; {} escalated",
            p.role,
            p.agents,
            p.attempts,
            p.failed_attempts,
            if types.is_empty() { String::new() } else { format!(" ({})", types.join(", ")) },
            p.escalated
        )?;
        if p.retried_completed + p.retried_escalated + p.retried_other > 0 {
            say!(
                "    retried: {} then completed, {} then escalated, {} other",
                p.retried_completed,
                p.retried_escalated,
                p.retried_other
            )?;
        }
        for (r, n) in &p.top_reasons {
            say!("    {n}x {r}")?;
        }
        if let (Some(p50), Some(p95)) = (p.duration_p50_ms, p.duration_p95_ms) {
            say!(
                "    attempt duration p50 {}, p95 {}; timeout {}",
                fmt_ms(p50),
                fmt_ms(p95),
                fmt_ms(p.attempt_timeout_ms)
            )?;
        }
        if let Some(c) = p.cost_usd {
            let per = p.cost_per_agent_usd.map(|x| format!(" (${x:.4} per agent)")).unwrap_or_default();
            let failed = p.failed_cost_usd.map(|x| format!("; ${x:.4} on failed attempts")).unwrap_or_default();
            say!("    cost ${c:.4}{per}{failed}")?;
        }
        if let (Some(t), Some(per)) = (p.tokens, p.tokens_per_agent) {
            say!("    tokens {} in, {} out ({} in, {} out per agent)", t.input, t.output, per.input, per.output)?;
        }
        if let Some(adv) = &p.advice {
            say!("    ADVICE: {adv}")?;
        }
    }
    Ok(0)
}
