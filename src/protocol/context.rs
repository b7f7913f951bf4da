//! The delegation context handed to each attempt (`context/<agentId>.md`, `{context}`):
//! the seed's spawn context, plus what went wrong before on a retry.

use std::fmt::Write;
use std::path::Path;

pub struct ContextInput<'a> {
    pub agent_id: &'a str,
    pub role: &'a str,
    pub task: &'a str,
    pub scope: Option<&'a str>,
    pub constraints: &'a [String],
    pub attempt: u32,
    pub status_file: &'a Path,
    pub handoff_file: &'a Path,
    pub inbox_file: &'a Path,
    /// Earlier attempts' failures, oldest first, each with its last findings.
    pub previous_failures: &'a [String],
    pub extra_context: Option<&'a str>,
}

pub fn render(c: &ContextInput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Delegation: {} ({})\n", c.agent_id, c.role);
    let _ = writeln!(s, "## Task\n\n{}\n", c.task);
    let _ = writeln!(s, "## Scope\n\n{}\n", c.scope.unwrap_or("Not limited beyond the task."));
    if !c.constraints.is_empty() {
        let _ = writeln!(s, "## Constraints\n");
        for k in c.constraints {
            let _ = writeln!(s, "- {k}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "## Reporting status\n\nReport progress as you go (progress 0.0-1.0, phase, milestone):\n\n    \
         corral report --status active --progress 0.5 --phase implementation --milestone m1\n\n\
         or write JSON to `{}` with fields agentId, role, status (spawned, active, blocked, complete, failed), \
         progress, phase, milestone, lastUpdate, findings. If you are blocked, report `--status blocked` \
         with a `--finding` that says on what. Messages for you arrive in `{}`.\n",
        c.status_file.display(),
        c.inbox_file.display()
    );
    let _ = writeln!(
        s,
        "## Expected output\n\nWhen done, write your handoff:\n\n    \
         corral handoff --deliverable PATH --finding TEXT --decision TEXT --memory TEXT\n\n\
         or write JSON to `{}` with fields fromAgent, toAgent (ORCHESTRATOR), status, \
         deliverables {{files, findings, decisions}}, memoryCandidate. A finding may be an object \
         {{\"key\", \"value\", \"claim\", \"evidence\": [{{\"kind\": \"test|measurement|citation|reasoning\", \"ref\"}}]}}.\n",
        c.handoff_file.display()
    );
    if !c.previous_failures.is_empty() {
        let _ = writeln!(s, "## This is attempt {}: earlier attempts failed\n", c.attempt);
        for f in c.previous_failures {
            let _ = writeln!(s, "- {f}");
        }
        s.push('\n');
    }
    if let Some(x) = c.extra_context {
        let _ = writeln!(s, "## Additional context\n\n{x}\n");
    }
    s
}

/// Expands `{name}` placeholders in one argument of a command template, in one pass:
/// substituted text is never looked at again, so a task that says `{role}` reaches the
/// agent as typed. A brace that starts no known placeholder stays as it is.
pub fn expand(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        match vars.iter().find(|(name, _)| tail.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod expand_tests {
    use super::expand;

    #[test]
    fn placeholders_expand_once() {
        let vars = [("{task}", "literal {role} and {task}"), ("{role}", "T")];
        assert_eq!(expand("run {task} as {role}", &vars), "run literal {role} and {task} as T");
        assert_eq!(expand("{unknown} {{role}} {", &vars), "{unknown} {T} {");
        assert_eq!(expand("", &vars), "");
        assert_eq!(expand("{role}{role}", &vars), "TT");
    }
}
