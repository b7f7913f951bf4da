//! `corral init`: writes corral.toml with the seed's role table and creates the data dir.

use super::{Ctx, Fail, Result};
use crate::config::{CONFIG_FILE, DEFAULT_DATA_DIR};
use crate::protocol::DataDir;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing corral.toml.
    #[arg(long)]
    pub force: bool,
}

pub const TEMPLATE: &str = r#"# corral configuration. Durations take forms like 90s, 15m, 1h30m; sizes 512MiB, 2GiB.
# Precedence: [roles.NAME] over [defaults] over the built-in seed table.

# Where agents' status files, handoffs, logs and the registry live.
# "data" gives exactly the seed's paths (data/agent-status, data/handoffs, ...).
data_dir = "{data_dir}"

[defaults]
# argv template used when `corral spawn` has no `-- CMD`. Placeholders, each expanded
# inside one argument (never through a shell):
#   {context} {context_file} {task} {agent_id} {role} {handoff_file} {status_file}
# command = ["claude", "-p", "{context}", "--output-format", "stream-json"]
attempt_timeout = "20m"       # one attempt may run this long; then TERM, KILL after 5s
max_retries = 1               # attempts = retries + 1; after the last, escalate
# heartbeat_timeout = "5m"    # a reporting agent with no status write and no output is stale
# stall_timeout = "10m"       # a reporting agent whose status does not change is silent
# start_timeout = "2m"        # spawn to first sign of life (status write or output)
# deadline = "2h"             # all attempts together
# progressive_timeout = true  # attempt n gets attempt_timeout x n (the seed's 15m, 30m, 45m)
# max_attempt_timeout = "1h"  # cap for the progressive timeout
# backoff = { initial = "30s", coefficient = 2.0, max = "10m", jitter = "none" }  # or "full"
# retry_guidance = "Work in small steps and report blockers instead of guessing."
# require_handoff = false     # true: exiting 0 without a handoff is a deliverable failure
# blocked_timeout = "1h"      # longest a live agent waits on an external blocker before a human is asked
# output_is_progress = false  # true: plain output also resets the stall check (streaming
#                             # CLIs that report once, then only print); output is always a heartbeat
# max_log_size = "100MiB"     # per attempt, in the log: head and newest tail kept, the cut
#                             # said in the log; the agent is not stopped for it (0: no cap)

# The seed's role table.
[roles.PLANNER]
attempt_timeout = "15m"
max_retries = 1

[roles.IMPLEMENTER]
attempt_timeout = "30m"
max_retries = 2

[roles.AUDITOR]
attempt_timeout = "20m"
max_retries = 1

[roles.CLEANER]
attempt_timeout = "10m"
max_retries = 1

# Failure classification: ordered rules, first match wins, before the built-in defaults
# (rate limit / timeout / network: retry; missing context / unclear requirement: retry
# with context; external dependency: wait; anything else: escalate).
# Conditions (all optional, all must match): exit_codes, signals, failure_type (crash,
# timeout, blocked, deliverable, silent), finding (regex on the last finding), output
# (regex on the end of the log). Actions: retry, retry_with_context, wait, escalate,
# fail, ignore (retry without using the budget).
# [[classify]]
# exit_codes = [75]
# action = "retry"
#
# [[classify]]
# signals = ["SIGKILL"]
# output = "(?i)out of memory"
# action = "escalate"

[health]
max_concurrent = 5            # agents running at once; more spawns queue, in order
breaker_failures = 3          # this many failed attempts ...
breaker_window = "5m"         # ... within this window open the circuit breaker
breaker_cooldown = "1m"       # then one probe spawn; its success closes the breaker
# breaker_scope = "role"      # one breaker per role; "global": one for the whole workspace
# min_free_memory = "512MiB"  # hold spawns while MemAvailable is lower
# max_load = 8.0              # hold spawns while the 1-minute load average is higher
# max_open_escalations = 3    # hold spawns while this many escalations are open
"#;

pub fn run(ctx: &Ctx, data_dir: Option<PathBuf>, a: Args) -> Result {
    let cwd = std::env::current_dir()?;
    let path = cwd.join(CONFIG_FILE);
    if path.exists() && !a.force {
        return Err(Fail { code: 1, msg: format!("{} already exists; pass --force to overwrite it", path.display()) });
    }
    let dd = data_dir.map(|d| d.display().to_string()).unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
    let text = TEMPLATE.replace("{data_dir}", &dd.replace('\\', "\\\\").replace('"', "\\\""));
    crate::config::parse(&text, &path).map_err(|e| Fail { code: 2, msg: e })?;
    crate::protocol::atomic::write_atomic(&path, text.as_bytes())?;
    // The user's file, not corral's private one: the mode their umask asks for.
    crate::protocol::perms::user_file(&path)?;
    let data = if PathBuf::from(&dd).is_absolute() { PathBuf::from(&dd) } else { cwd.join(&dd) };
    DataDir::new(data.clone()).create_all()?;
    let _ = ctx;
    eprintln!("wrote {} and created {}", path.display(), data.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    /// The commented-out knobs are documentation; uncommented, each must be valid.
    #[test]
    fn every_commented_knob_is_valid_when_uncommented() {
        let text: Vec<&str> = super::TEMPLATE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(r) if r.contains(" = ") || r.starts_with("[[") => r,
                _ => l,
            })
            .collect();
        let text = text.join("\n").replace("{data_dir}", ".corral");
        let c = crate::config::parse(&text, std::path::Path::new("corral.toml")).unwrap();
        assert_eq!(c.rules().len(), 2);
        let (cmd, p) = c.role("OTHER");
        assert!(cmd.is_some());
        assert_eq!(p.deadline_ms, Some(2 * 3600 * 1000));
        assert_eq!(c.health().min_free_memory, Some(512 << 20));
        assert_eq!(c.role("PLANNER").1.attempt_timeout_ms, 15 * 60 * 1000);
    }
}
