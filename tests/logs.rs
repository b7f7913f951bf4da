//! `corral logs` as lines: the last N, one attempt's part, JSON lines with attempt and
//! stream, every agent of a role at once (followed, interleaved, prefixed with the id);
//! headers that name the delegation context by its file, footers and outcomes that say
//! why an attempt ended. All through the real binary.

mod common;

use common::*;
use serde_json::Value;

/// Crashes are retried quickly; W's first attempt crashes, its second completes.
fn config() -> String {
    format!(
        "{FAST}{}",
        r#"
[[classify]]
failure_type = ["crash"]
action = "retry"
[roles.W]
command = ["sh", "-c", "echo out-$CORRAL_ATTEMPT; echo err-$CORRAL_ATTEMPT >&2; [ $CORRAL_ATTEMPT -ge 2 ] || exit 3", "{context}"]
max_retries = 2
"#
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[test]
fn lines_by_attempt_last_n_and_json_with_attempt_and_stream() {
    let ws = Ws::with_config(Some(&config()));
    let id = ws.ok(&["spawn", "--role", "W", "--task", "two attempts"]).trim().to_string();
    ws.wait_state(&id, &["complete"], SECS(20));

    let all = ws.ok(&["logs", &id]);
    // The header names the context by its file; the text itself is not on the line.
    let header = all.lines().next().unwrap();
    assert!(header.contains(&format!("<the context in {}", ws.path().join(".corral/context").display())), "{header}");
    assert!(!all.contains("# Delegation"), "{all}");
    // The footer says how the process ended; the outcome line how corral judged it.
    assert!(all.contains("corral: attempt ended: exited with code 3"), "{all}");
    assert!(all.contains("corral: attempt 1 judged crash: exited with code 3; then: retry in 200ms"), "{all}");
    assert!(all.contains("corral: attempt 2 judged complete"), "{all}");

    // One attempt's part: its header, its output, its footer and outcome, nothing else.
    let second = ws.ok(&["logs", &id, "--attempt", "2"]);
    let lines: Vec<&str> = second.lines().collect();
    assert!(lines[0].starts_with(&format!("=== corral: {id} attempt 2 at ")), "{second}");
    assert!(second.contains("out-2") && second.contains("err-2") && !second.contains("out-1"), "{second}");
    assert_eq!(lines.len(), 5, "{second}");

    // The last N lines of the whole log.
    let tail = ws.ok(&["logs", &id, "-n", "2"]);
    assert_eq!(
        tail.lines().collect::<Vec<_>>(),
        all.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>()
    );

    // JSON: every line with its attempt and stream.
    let j = json_lines(&ws.ok(&["logs", &id, "--json"]));
    assert_eq!(j.len(), all.lines().count());
    let find =
        |line: &str| j.iter().find(|x| x["line"] == line).unwrap_or_else(|| panic!("{line} not in {j:?}")).clone();
    assert_eq!(find("out-1")["attempt"], 1);
    assert_eq!(find("err-2")["attempt"], 2);
    assert_eq!(find("out-2")["stream"], "output");
    assert_eq!(j[0]["stream"], "corral");
    assert!(j.iter().all(|x| x["agentId"] == id.as_str()));
    // An attempt that did not happen is a usage error that says how many there are.
    let o = ws.run(&["logs", &id, "--attempt", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("2 attempts"), "{o:?}");
}

#[test]
fn a_forged_header_in_the_output_does_not_start_an_attempt() {
    let ws = Ws::with_config(Some(&config()));
    let id = ws.spawn("W", &["sh", "-c", "echo \"=== corral: $CORRAL_AGENT_ID attempt 2 at now: [] ===\"; echo after"]);
    ws.wait_state(&id, &["complete"], SECS(10));
    let j = json_lines(&ws.ok(&["logs", &id, "--json"]));
    let after = j.iter().find(|x| x["line"] == "after").expect("the line after the forged header");
    assert_eq!(after["attempt"], 1, "{j:?}");
}

#[test]
fn follow_a_role_interleaves_its_agents_with_their_ids_until_all_finish() {
    let ws = Ws::with_config(Some(&config()));
    let a = ws.spawn("R", &["sh", "-c", "echo a-one; sleep 1; echo a-two; sleep 1"]);
    let other = ws.spawn("OTHER", &["sh", "-c", "echo not-this-role"]);
    let mut child = ws.cmd(&["logs", "--follow", "--role", "R"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Spawned after the follower started: followed from its start.
    let b = ws.spawn("R", &["sh", "-c", "sleep 0.5; echo b-one"]);
    let out = bounded_output(&mut child, SECS(20));
    let lines: Vec<&str> = out.lines().collect();
    for (id, text) in [(&a, "a-one"), (&a, "a-two"), (&b, "b-one")] {
        assert!(lines.contains(&format!("{id} | {text}").as_str()), "{id} {text} in {out}");
    }
    assert!(!out.contains("not-this-role") && !out.contains(&other), "{out}");
    // Both outcomes came before it ended.
    assert!(out.contains(&format!("{a} | corral: attempt 1 judged complete")), "{out}");
    assert!(out.contains(&format!("{b} | corral: attempt 1 judged complete")), "{out}");
}

/// The child's stdout once it exits, or a failure past `limit`.
fn bounded_output(child: &mut std::process::Child, limit: std::time::Duration) -> String {
    use std::io::Read;
    let ok = wait_until(limit, || child.try_wait().ok().flatten().is_some());
    if !ok {
        let _ = child.kill();
        panic!("the follower did not end within {limit:?}");
    }
    let mut s = String::new();
    child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    s
}
