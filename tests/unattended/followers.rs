//! Unattended scenarios: followers and the supervisor's lifetime. `wait`, `logs -f` and
//! `events -f` ride out a supervisor killed with SIGKILL (they reconnect, see every line
//! and event once, and `wait` says what really became of the agents); a supervisor with
//! nothing to look after exits after `idle_timeout`; a read command where there is no
//! workspace creates nothing and starts nothing.

use crate::common::*;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn pid_alive(pid: i32) -> bool {
    alive(pid)
}

#[test]
fn an_idle_supervisor_exits_after_idle_timeout_and_not_while_a_client_follows() {
    let ws = Ws::with_config(Some(&format!("{RELAXED}[supervisor]\nidle_timeout = \"1s\"\n")));
    let id = ws.spawn("X", &["sh", "-c", "echo hi; sleep 0.3"]);
    let socket = ws.json(&["daemon", "status", "--json"])["socket"].as_str().unwrap().to_string();
    let pid = ws.daemon_pid();
    // A follower connected keeps it alive past the idle timeout.
    let mut follower = ws.cmd(&["events", "-f"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    ws.wait_state(&id, &["complete"], SECS(10));
    std::thread::sleep(Duration::from_millis(2_500));
    let alive_with_client = pid_alive(pid);
    follower.kill().unwrap();
    follower.wait().unwrap();
    let gone_at = Instant::now();
    let exited = wait_until(SECS(10), || !pid_alive(pid));
    let after = gone_at.elapsed();
    let socket_left = std::path::Path::new(&socket).exists();
    // The exports were written before it left: the registry export shows the agent done.
    let exported: Value = ws.registry();
    let status = exported.as_array().unwrap().iter().find(|r| r["agentId"] == id.as_str()).unwrap()["status"].clone();
    println!(
        "UNATTENDED idle-timeout alive_with_client={alive_with_client} exited={exited} after_ms={} \
         socket_left={socket_left} exported_status={status}",
        after.as_millis()
    );
    assert!(alive_with_client, "the supervisor exited while a client was connected");
    assert!(exited, "an idle supervisor did not exit after idle_timeout");
    assert!(!socket_left, "the socket {socket} was left behind");
    assert_eq!(status, "complete");
    // The next command brings one back, with everything it knew.
    assert_eq!(ws.agent(&id)["status"], "complete");
}

#[test]
fn read_commands_without_a_workspace_create_and_start_nothing() {
    let ws = Ws::bare();
    let reads: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["show", "agent-001-X"],
        &["logs", "agent-001-X"],
        &["events"],
        &["wait"],
        &["escalations"],
        &["health"],
    ];
    let mut created = 0;
    for args in reads {
        let o = ws.run(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "corral {args:?}: {stderr}");
        assert!(stderr.contains("no corral workspace here"), "corral {args:?} said: {stderr}");
        assert!(o.stdout.is_empty(), "corral {args:?} printed {:?}", String::from_utf8_lossy(&o.stdout));
        created += std::fs::read_dir(ws.path()).unwrap().count();
    }
    println!("UNATTENDED no-workspace commands={} entries_created={created}", reads.len());
    assert_eq!(created, 0, "a read command created something in a directory with no workspace");
}
