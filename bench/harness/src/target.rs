//! The targets the harness measures, by the name `--only` takes, and the sizes of the
//! measurements beyond spawn and status (those are `measure::Plan`).

use crate::Result;

/// One measured target; `--only` names them, the report's summary rows start with the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Spawn to agent running, 1,000 sequential spawns, `status --json` at 1,000 agents
    /// (corral and pueue), and the seed's monitor script over the same status files.
    Spawn,
    /// Crash to retry scheduled, with 1,000 agents supervised.
    Retry,
    /// `corral aggregate` over 1,000 handoffs of 10 findings each (and the seed's jq loop).
    Aggregate,
    /// `corral monitor` with 1,000 agents reporting every second.
    Monitor,
    /// `spawn_agent` round trip over `corral mcp` (bench/mcp_spawn.py).
    Mcp,
    /// Supervisor memory, idle and with 1,000 running agents (corral and pueued).
    Memory,
    /// `status --json`, spawn latency and memory from 100 to 10,000 agents.
    Growth,
    /// Worktree agents on a repository of 10,000 files: creation against `git worktree
    /// add`, a plain spawn while worktrees are prepared, `corral merge` of 20 branches.
    Worktree,
}

impl Target {
    /// Every target, in the order of the report's summary.
    pub const ALL: [Target; 8] = [
        Target::Spawn,
        Target::Retry,
        Target::Aggregate,
        Target::Monitor,
        Target::Mcp,
        Target::Memory,
        Target::Growth,
        Target::Worktree,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Spawn => "spawn",
            Target::Retry => "retry",
            Target::Aggregate => "aggregate",
            Target::Monitor => "monitor",
            Target::Mcp => "mcp",
            Target::Memory => "memory",
            Target::Growth => "growth",
            Target::Worktree => "worktree",
        }
    }

    /// "spawn, retry, ..." for messages.
    pub fn names() -> String {
        Target::ALL.map(Target::name).join(", ")
    }

    /// `--only LIST`: comma-separated target names; anything else is refused with the names.
    pub fn parse_list(list: &str) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim) {
            let Some(t) = Target::ALL.into_iter().find(|t| t.name() == word) else {
                return Err(format!(
                    "--only {list}: unknown target `{word}`; the targets are {} (e.g. --only spawn,retry)",
                    Target::names()
                ));
            };
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

/// Sizes of the measurements beyond spawn and status in one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Retry: long-running agents supervised while the crashes happen, and the crashers.
    pub crash_long: usize,
    pub crashers: usize,
    /// Aggregate: handoffs aggregated, timed runs, and how many handoffs the seed loop reads.
    pub handoffs: usize,
    pub aggregate_runs: usize,
    pub seed_handoffs: usize,
    /// Monitor: reporting agents and the monitor's run time; whether to run it a second time
    /// with the workspace on the temp dir's filesystem (the first run uses tmpfs).
    pub live_agents: usize,
    pub live_seconds: u64,
    pub live_on_disk: bool,
    /// Mcp: spawn_agent calls.
    pub mcp_calls: usize,
    /// Memory: pueue tasks kept running for pueued's memory (0: skipped).
    pub pueue_running: usize,
    /// Growth: the sizes measured (agents), `status --json` runs and spawn probes at each,
    /// and how many of the smallest sizes the seed's monitor script also runs at.
    pub growth: [usize; 3],
    pub growth_status_runs: usize,
    pub growth_probes: usize,
    pub growth_seed: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                crash_long: 200,
                crashers: 50,
                handoffs: 1000,
                aggregate_runs: 5,
                seed_handoffs: 30,
                live_agents: 200,
                live_seconds: 8,
                live_on_disk: false,
                mcp_calls: 30,
                pueue_running: 100,
                growth: [50, 200, 1000],
                growth_status_runs: 10,
                growth_probes: 10,
                growth_seed: 2,
            }
        } else {
            Sizes {
                crash_long: 1000,
                crashers: 200,
                handoffs: 1000,
                aggregate_runs: 5,
                seed_handoffs: 1000,
                live_agents: 1000,
                live_seconds: 20,
                live_on_disk: true,
                mcp_calls: 100,
                // pueue adds one task per process start, slowly on a loaded machine: 500
                // running tasks are enough to see its growth per task.
                pueue_running: 500,
                growth: [100, 1000, 10_000],
                growth_status_runs: 10,
                growth_probes: 10,
                growth_seed: 2,
            }
        }
    }
}
