//! Operating many agents: telling them apart (tasks in `status`, ids by number or unique
//! prefix, shell completion of live ids), all through the real binary.

mod common;

use common::Ws;
use std::process::Command;

#[test]
fn ids_by_number_and_unique_prefix_in_every_command() {
    let ws = Ws::new();
    let a = ws.spawn("PLANNER", &["sh", "-c", "echo planning; sleep 30"]);
    // Takes a second to go after a TERM: a kill by number must wait for it all the same.
    let b = ws.spawn("IMPLEMENTER", &["sh", "-c", "trap 'sleep 1; exit 0' TERM; echo building; sleep 30 & wait"]);
    assert_eq!((a.as_str(), b.as_str()), ("agent-001-PLANNER", "agent-002-IMPLEMENTER"));

    assert_eq!(ws.show("1")["agentId"], a);
    assert_eq!(ws.show("002")["agentId"], b);
    assert_eq!(ws.agent("agent-002")["agentId"], b);
    assert_eq!(ws.agent("agent-001-P")["agentId"], a);
    assert!(common::wait_until(common::SECS(10), || ws.ok(&["logs", "2"]).contains("building")));

    // Ambiguous: exit 2, every candidate named.
    let o = ws.run(&["show", "agent-00"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ambiguous") && err.contains(&a) && err.contains(&b), "{err}");
    // Unknown: exit 2, as before.
    assert_eq!(ws.run(&["show", "7"]).status.code(), Some(2));
    // --after takes them too: a dependency named by number waits for that agent.
    let c =
        ws.ok(&["spawn", "--role", "R", "--task", "after the second", "--after", "2", "--", "true"]).trim().to_string();
    assert_eq!(ws.show(&c)["after"], serde_json::json!([b.as_str()]), "{}", ws.show(&c));
    assert_eq!(ws.run(&["spawn", "--role", "R", "--task", "t", "--after", "9", "--", "true"]).status.code(), Some(2));

    // The reply names the agent by its whole id, whatever was typed.
    let killed = ws.json(&["kill", "2", "--json"]);
    assert_eq!(killed["agentId"], b.as_str(), "{killed}");
    assert_eq!(ws.agent(&b)["status"], "killed");
    ws.ok(&["tell", "1", "hello"]);
    ws.ok(&["kill", "agent-001"]);
    assert_eq!(ws.agent(&a)["status"], "killed");
}

#[test]
fn status_shortens_the_task_to_the_width_and_never_the_id() {
    let ws = Ws::new();
    let long = "Rewrite the settings page so that every form field validates on blur and explains why";
    let id = ws.ok(&[
        "spawn",
        "--role",
        "IMPLEMENTER",
        "--id",
        "implementer-frontend-settings",
        "--task",
        long,
        "--",
        "sleep",
        "30",
    ]);
    let id = id.trim();
    let o = ws.cmd(&["status"]).env("COLUMNS", "80").output().unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("Rewrite") && line.ends_with('~') && !line.contains("explains why"), "{line}");
    // Not a terminal and no COLUMNS: the whole task.
    let o = ws.cmd(&["status"]).env_remove("COLUMNS").output().unwrap();
    assert!(String::from_utf8(o.stdout).unwrap().contains(long));
}

/// Completions as bash computes them for the words of `line` (the last one being typed).
fn complete(ws: &Ws, script: &std::path::Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let program = format!(
        "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _clap_complete_corral corral '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let c = ws.cmd(&[]);
    let mut bash = Command::new("bash");
    bash.arg("-c").arg(program).current_dir(ws.path());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => bash.env(k, v),
            None => bash.env_remove(k),
        };
    }
    let o = bash.output().expect("bash runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completion_offers_commands_flags_and_live_ids() {
    let ws = Ws::new();
    let a = ws.spawn("PLANNER", &["sleep", "30"]);
    let b = ws.spawn("AUDITOR", &["sleep", "30"]);
    let script = ws.path().join("corral.bash");
    std::fs::write(&script, ws.ok(&["completions", "bash"])).unwrap();

    let commands = complete(&ws, &script, "corral st");
    assert!(commands.contains(&"status".to_string()), "{commands:?}");
    let flags = complete(&ws, &script, "corral status --js");
    assert_eq!(flags, ["--json"]);
    let ids = complete(&ws, &script, "corral show ");
    assert!(ids.contains(&a) && ids.contains(&b), "{ids:?}");
    let ids = complete(&ws, &script, "corral kill agent-002");
    assert_eq!(ids, std::slice::from_ref(&b));
    let ids = complete(&ws, &script, "corral logs agent-00");
    assert!(ids.contains(&a) && ids.contains(&b), "{ids:?}");
}

#[test]
fn status_since_keeps_agents_active_in_that_time() {
    let ws = Ws::new();
    let old = ws.spawn("W", &["true"]);
    ws.wait_state(&old, &["complete"], common::SECS(10));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let live = ws.spawn("W", &["sleep", "30"]);
    let ids = |args: &[&str]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&ws.ok(args)).unwrap();
        v.as_array().unwrap().iter().map(|a| a["agentId"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&["status", "--json", "--since", "1s"]), vec![live.clone()]);
    assert_eq!(ids(&["status", "--json", "--since", "1h"]), vec![old.clone(), live.clone()]);
    assert_eq!(ids(&["status", "--json", "--since", "1s", "--status", "complete"]), Vec::<String>::new());
    let o = ws.run(&["status", "--since", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--since"), "{o:?}");
    ws.ok(&["kill", &live]);
}
