//! `corral init`: writes corral.toml with the seed's role table and creates the data dir.

use super::{Ctx, Fail, Result};
use crate::config::{CONFIG_FILE, DEFAULT_DATA_DIR};
use crate::note;
use crate::protocol::DataDir;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing corral.toml.
    #[arg(long)]
    pub force: bool,
    /// Write a `[defaults] command` that runs this agent CLI for every role, as it works
    /// today: `claude-code` (Claude Code, `claude -p`) or `codex` (Codex, `codex exec`).
    #[arg(long, value_enum)]
    pub agent: Option<Agent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    #[value(name = "claude-code")]
    ClaudeCode,
    Codex,
}

/// The `[defaults]` lines that run Claude Code: print mode, the stream of JSON events
/// (which needs `--verbose`), and corral's own two commands allowed for its Bash tool so
/// `corral report` and `corral handoff` run without a permission prompt nobody answers.
const CLAUDE_CODE: &str = r#"command = ["claude", "-p", "{context}", "--output-format", "stream-json", "--verbose",
           "--allowedTools", "Bash(corral report *),Bash(corral handoff *),Read,Edit,Write"]
output_is_progress = true     # it streams events as it works and may report only once"#;

/// The `[defaults]` lines that run Codex: `exec` with JSON events, the workspace-write
/// sandbox (the data dir is inside the workspace, so reports are written), outside a git
/// repository too, and commands run in a plain shell: a login shell's profile resets PATH
/// and `corral` would not be found.
const CODEX: &str = r#"command = ["codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
           "-c", "allow_login_shell=false", "{context}"]
output_is_progress = true     # it streams events as it works and may report only once"#;

const COMMAND_EXAMPLE: &str =
    r#"# command = ["claude", "-p", "{context}", "--output-format", "stream-json", "--verbose"]"#;

pub const TEMPLATE: &str = r#"# corral configuration. Durations take forms like 90s, 15m, 1h30m; sizes 512MiB, 2GiB.
# Precedence: [roles.NAME] over [defaults] over the built-in seed table.

# Where agents' status files, handoffs, logs and the registry live.
# "data" gives exactly the seed's paths (data/agent-status, data/handoffs, ...).
data_dir = "{data_dir}"

[defaults]
# argv template used when `corral spawn` has no `-- CMD`. Placeholders, each expanded
# inside one argument (never through a shell):
#   {context} {context_file} {task} {agent_id} {role} {handoff_file} {status_file}
{command}
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
# isolation = "worktree"      # each agent in its own git worktree on branch corral/<agentId>
# base = "HEAD"               # the commit worktrees are made from
# worktree_copy = [".env"]    # files copied into each new worktree
# worktree_setup = ["npm", "ci"]  # run in a new worktree before the agent; failing is permanent
# ports_per_agent = 1         # ports reserved per agent (CORRAL_PORT is the first)
# port_base = 20000           # the lowest port handed to agents (1024 to 65535)
# verify = ["cargo", "test"]  # must pass in the agent's tree before it counts as complete
# verify_timeout = "10m"
# group = "review"            # the admission group of the role's agents (spawn --group overrides it)
# placement = { gpu = true }  # cluster mode: only workers with these labels run its agents (spawn --on adds)

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
max_concurrent = 5            # agents running at once; more spawns queue, by --priority, then in order
breaker_failures = 3          # this many failed attempts ...
breaker_window = "5m"         # ... within this window open the circuit breaker
breaker_cooldown = "1m"       # then one probe spawn; its success closes the breaker
# breaker_scope = "role"      # one breaker per role; "global": one for the whole workspace
# min_free_memory = "512MiB"  # hold spawns while MemAvailable is lower
# max_load = 8.0              # hold spawns while the 1-minute load average is higher
# max_open_escalations = 3    # hold spawns while this many escalations are open
# provider_max_concurrent = 4 # agents of one provider (anthropic, openai) at once; a burst
# provider_recovery = "1m"    #   of rate limits lowers it for a while, up one per quiet period
# `corral parallel N` changes max_concurrent at run time, kept over this file until
# `corral parallel --reset`; `corral pause` / `corral resume` hold and release admission.

# Admission groups: at most max_concurrent of a group's agents run at once (within the
# workspace's max_concurrent). An agent is in a group by `spawn --group G` or its role's
# `group`; a group with no table here has no limit of its own.
# [groups.review]
# max_concurrent = 2

[mcp]
# allow_raw_commands = false     # true: spawn_agent may run an argv the MCP client gives
# allow_shell_templates = false  # true: spawn_agent may run a role whose template puts a
#   placeholder inside a shell's script (["sh", "-c", "... {task} ..."]). Off, because the
#   client's text would run as shell code; pass it as an argument of its own instead:
#   ["sh", "-c", "... \"$1\" ...", "sh", "{task}"], or read $CORRAL_TASK in the script.

[supervisor]
# idle_timeout = "10m"        # with no agent to look after and no client, exit after this ("0s": never)

# Notifications: a command run when something happens, off the supervisor's loop, one at a
# time per hook, killed (its process group) after `timeout` (default 10s); a failure is
# recorded as a `notify_failed` event. `on`: needs-human (escalated, or blocked with nobody
# to unblock it), escalated, complete, failed, rate-limited, budget, all-finished (the last
# agent of a run finished). The event is JSON on stdin; CORRAL_EVENT, CORRAL_AGENT_ID and
# CORRAL_REASON are in the environment. The output goes to <data dir>/notify.log.
# A desktop notification:
# [[notify]]
# on = ["needs-human", "all-finished"]
# command = ["sh", "-c", 'notify-send "corral: $CORRAL_EVENT" "$CORRAL_AGENT_ID $CORRAL_REASON"']
#
# ntfy (pick a topic nobody can guess):
# [[notify]]
# on = ["needs-human", "failed", "all-finished"]
# command = ["sh", "-c", 'curl -sS -H "Title: corral $CORRAL_EVENT" -d "$CORRAL_AGENT_ID: $CORRAL_REASON" https://ntfy.sh/your-topic']
#
# A Slack incoming webhook (its URL in SLACK_WEBHOOK_URL where corral runs):
# [[notify]]
# on = ["needs-human", "all-finished"]
# command = ["sh", "-c", 'r=$(printf %s "$CORRAL_REASON" | tr "\n" " " | tr -d "[:cntrl:]\\\\\"" | cut -c1-300); curl -sS -H "Content-Type: application/json" -d "{\"text\": \"corral $CORRAL_EVENT $CORRAL_AGENT_ID: $r\"}" "$SLACK_WEBHOOK_URL"']
# timeout = "15s"
"#;

/// The corral.toml `corral init` writes.
pub fn render(data_dir: &str, agent: Option<Agent>) -> String {
    let command = match agent {
        None => COMMAND_EXAMPLE,
        Some(Agent::ClaudeCode) => CLAUDE_CODE,
        Some(Agent::Codex) => CODEX,
    };
    TEMPLATE.replace("{command}", command).replace("{data_dir}", &data_dir.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn run(ctx: &Ctx, data_dir: Option<PathBuf>, a: Args) -> Result {
    let cwd = std::env::current_dir()?;
    let path = cwd.join(CONFIG_FILE);
    if path.exists() && !a.force {
        return Err(Fail { code: 1, msg: format!("{} already exists; pass --force to overwrite it", path.display()) });
    }
    let dd = data_dir.map(|d| d.display().to_string()).unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
    let text = render(&dd, a.agent);
    crate::config::parse(&text, &path).map_err(|e| Fail { code: 2, msg: e })?;
    crate::protocol::atomic::write_atomic(&path, text.as_bytes())?;
    // The user's file, not corral's private one: the mode their umask asks for.
    crate::protocol::perms::user_file(&path)?;
    let data = if PathBuf::from(&dd).is_absolute() { PathBuf::from(&dd) } else { cwd.join(&dd) };
    DataDir::new(data.clone()).create_all()?;
    let _ = ctx;
    note!("wrote {} and created {}", path.display(), data.display())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    /// The commented-out knobs are documentation; uncommented, each must be valid.
    #[test]
    fn every_commented_knob_is_valid_when_uncommented() {
        let template = super::render(".corral", None);
        let text: Vec<&str> = template
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(r) if r.contains(" = ") || r.starts_with('[') => r,
                _ => l,
            })
            .collect();
        let text = text.join("\n");
        let c = crate::config::parse(&text, std::path::Path::new("corral.toml")).unwrap();
        assert_eq!(c.rules().len(), 2);
        let (cmd, p) = c.role("OTHER");
        assert!(cmd.is_some());
        assert_eq!(p.deadline_ms, Some(2 * 3600 * 1000));
        assert_eq!(c.health().min_free_memory, Some(512 << 20));
        assert_eq!(c.role("PLANNER").1.attempt_timeout_ms, 15 * 60 * 1000);
        assert_eq!(c.notify.len(), 3);
        assert_eq!(c.group_limits().get("review"), Some(&2));
        assert_eq!(c.role_group("OTHER").as_deref(), Some("review"));
        assert!(c.notify.iter().all(|n| n.command[0] == "sh"));
    }

    /// Each agent template parses and gives every role the agent's command.
    #[test]
    fn agent_templates_give_every_role_the_command() {
        for (agent, program) in [(super::Agent::ClaudeCode, "claude"), (super::Agent::Codex, "codex")] {
            let text = super::render(".corral", Some(agent));
            let c = crate::config::parse(&text, std::path::Path::new("corral.toml")).unwrap();
            for role in ["PLANNER", "IMPLEMENTER", "AUDITOR", "CLEANER", "OTHER"] {
                let (cmd, _) = c.role(role);
                let cmd = cmd.unwrap_or_else(|| panic!("{role} has no command for {program}"));
                assert_eq!(cmd[0], program);
                assert!(cmd.iter().any(|a| a == "{context}"), "{cmd:?}");
            }
        }
    }
}
