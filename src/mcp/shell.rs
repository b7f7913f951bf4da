//! Role templates that would turn an orchestrator's text into code.
//!
//! A placeholder is expanded inside one argument, never through a shell, so `{task}` given
//! to a program as its own argument stays data. Inside the script of `sh -c` (or `bash -lc`,
//! `env zsh -ec`, `python3 -c`, ...) it is code: a task an MCP client writes, itself often
//! an agent, could run anything. Such templates are refused for MCP-spawned agents unless
//! the workspace allows them.

use std::path::Path;

/// The placeholders a command template may hold.
pub const PLACEHOLDERS: &[&str] =
    &["{context}", "{context_file}", "{task}", "{agent_id}", "{role}", "{handoff_file}", "{status_file}"];

/// Programs that run an argument as code, and the option that says which one.
fn code_option(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
    match name {
        "sh" | "bash" | "zsh" | "dash" | "ksh" | "mksh" | "ash" | "yash" | "fish" | "busybox" => Some("c"),
        n if n.starts_with("python") => Some("c"),
        "perl" | "ruby" | "node" | "nodejs" => Some("e"),
        _ => None,
    }
}

/// The script argument of `argv` (its index and text) when `argv` runs a shell or an
/// interpreter on a script given inline, through `env` or not.
pub fn inline_script(argv: &[String]) -> Option<(usize, &str)> {
    let mut i = 0;
    // `env [-i] [-u NAME] [NAME=VALUE]... PROGRAM`.
    if argv.first().and_then(|p| Path::new(p).file_name()).is_some_and(|n| n == "env") {
        i = 1;
        while let Some(a) = argv.get(i) {
            if a == "-u" || a == "--unset" || a == "-C" || a == "--chdir" || a == "-S" || a == "--split-string" {
                i += 2;
            } else if a.starts_with('-') || a.contains('=') {
                i += 1;
            } else {
                break;
            }
        }
    }
    let program = argv.get(i)?;
    let letter = code_option(program)?;
    if Path::new(program).file_name().is_some_and(|n| n == "busybox") {
        // `busybox sh -c ...`
        i += 1;
        code_option(argv.get(i)?)?;
    }
    let mut inline = false;
    let mut j = i + 1;
    while let Some(a) = argv.get(j) {
        if a == "--" {
            j += 1;
            break;
        }
        if a == "-o" || a == "+o" || a == "--rcfile" || a == "--init-file" {
            j += 2;
            continue;
        }
        let short = a.len() > 1 && (a.starts_with('-') || a.starts_with('+')) && !a.starts_with("--");
        if short && a[1..].contains(letter) {
            inline = true;
        } else if !(a.starts_with('-') || a.starts_with('+')) {
            break;
        }
        j += 1;
    }
    if !inline {
        return None;
    }
    argv.get(j).map(|s| (j, s.as_str()))
}

/// Why the template `argv` of `role` may not run for an MCP client, if it may not.
pub fn refuse(role: &str, argv: &[String], config: &str) -> Option<String> {
    let (at, script) = inline_script(argv)?;
    let found: Vec<&str> = PLACEHOLDERS.iter().copied().filter(|p| script.contains(p)).collect();
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "argument `role`: role {role}'s command runs {} with {} inside its script (argument {} of the command): the text \
         an MCP client gives would run as shell code. Pass it as an argument of its own \
         ([\"sh\", \"-c\", \"... \\\"$1\\\" ...\", \"sh\", \"{{task}}\"]) or read $CORRAL_TASK or the context \
         file in the script; or, if every MCP client of this workspace is trusted, set \
         `allow_shell_templates = true` under [mcp] in {config}",
        argv[..at].join(" "),
        found.join(", "),
        at + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shells_with_a_placeholder_in_their_script_are_found() {
        for argv in [
            v(&["sh", "-c", "echo {task}"]),
            v(&["/bin/bash", "-lc", "claude -p '{context}'"]),
            v(&["zsh", "-ec", "x {task}"]),
            v(&["dash", "-e", "-c", "x {task}"]),
            v(&["bash", "-o", "pipefail", "-c", "run {agent_id} | tee"]),
            v(&["env", "-i", "A=1", "sh", "-c", "echo {task}"]),
            v(&["/usr/bin/env", "bash", "-c", "echo {context_file}"]),
            v(&["busybox", "sh", "-c", "echo {task}"]),
            v(&["python3", "-c", "print('{task}')"]),
            v(&["node", "-e", "console.log(`{task}`)"]),
        ] {
            assert!(refuse("R", &argv, "corral.toml").is_some(), "{argv:?} is not refused");
        }
    }

    #[test]
    fn placeholders_as_arguments_of_their_own_are_data() {
        for argv in [
            v(&["sh", "-c", "echo \"$1\"", "sh", "{task}"]),
            v(&["claude", "-p", "{context}"]),
            v(&["bash", "script.sh", "{task}"]),
            v(&["sh", "-c", "corral report --phase x"]),
            v(&["env", "A=1", "claude", "-c", "{task}"]),
            v(&["sh"]),
        ] {
            assert_eq!(refuse("R", &argv, "corral.toml"), None, "{argv:?} is refused");
        }
    }

    #[test]
    fn the_refusal_says_why_and_what_to_do() {
        let e = refuse("WORKER", &v(&["bash", "-lc", "run {task}"]), "/w/corral.toml").unwrap();
        for part in [
            "WORKER",
            "bash -lc",
            "{task}",
            "shell code",
            "$1",
            "allow_shell_templates = true",
            "[mcp]",
            "/w/corral.toml",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
    }
}
