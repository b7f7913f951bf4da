//! Hostile scenarios: stalls. A supervisor that is stopped (SIGSTOP, a debugger, a host
//! under memory pressure) for longer than `heartbeat_timeout` while its agents keep
//! reporting must, once it runs again, read what they wrote meanwhile before it judges any
//! deadline: no healthy agent is killed as stale, and a handoff written just before an
//! exit during the pause counts.

use crate::common::*;
use std::time::{Duration, Instant};

const FINISHED: &[&str] = &["complete", "failed", "killed", "timed_out", "escalated", "needs-human"];

const CONFIG: &str = "[health]\nmax_concurrent = 100\nbreaker_failures = 0\n\
                      [defaults]\nheartbeat_timeout = \"2s\"\nstall_timeout = \"2s\"\nrequire_handoff = true\n\
                      max_retries = 0\n";

/// Reports a new phase every 200 ms until `$STOP_FILE` exists, then writes its handoff and
/// exits 0. It prints nothing, so only its reports are heartbeats.
const REPORTER: &str = r#"i=0
while [ ! -e "$STOP_FILE" ] && [ $i -lt 300 ]; do
  corral report --status active --phase "p$i" >/dev/null 2>&1
  i=$((i+1)); sleep 0.2
done
corral handoff --finding "reported $i times" >/dev/null 2>&1
exit 0"#;

#[test]
fn a_paused_supervisor_reads_what_queued_before_it_judges_deadlines() {
    let ws = Ws::with_config(Some(CONFIG));
    let late = ws.path().join("late");
    let early = ws.path().join("early");
    let spawn = |stop: &std::path::Path| {
        let env = format!("STOP_FILE={}", stop.display());
        ws.ok(&["spawn", "--role", "X", "--task", "report", "--env", &env, "--", "sh", "-c", REPORTER])
            .trim()
            .to_string()
    };
    // Four keep reporting through the pause and beyond; two hand off and exit during it.
    let steady: Vec<String> = (0..4).map(|_| spawn(&late)).collect();
    let exiting: Vec<String> = (0..2).map(|_| spawn(&early)).collect();
    for id in steady.iter().chain(&exiting) {
        ws.wait_state(id, &["running"], SECS(15));
        assert!(wait_until(SECS(15), || ws.agent(id)["phase"].as_str().is_some()), "{id} never reported");
    }
    let pid = ws.daemon_pid();
    // SAFETY: signals to the supervisor this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let paused = Instant::now();
    std::thread::sleep(Duration::from_millis(1_500));
    std::fs::write(&early, "").unwrap();
    // Long enough for the two to hand off and exit, and well past heartbeat_timeout.
    std::thread::sleep(Duration::from_millis(3_000));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let pause = paused.elapsed();

    for id in &exiting {
        ws.wait_state(id, FINISHED, SECS(20));
    }
    // The steady ones keep reporting for a while after the pause: none is judged stale.
    std::thread::sleep(Duration::from_millis(1_500));
    std::fs::write(&late, "").unwrap();
    for id in &steady {
        ws.wait_state(id, FINISHED, SECS(20));
    }
    let mut killed_as_stale = 0;
    let mut missed_handoffs = 0;
    let mut other = Vec::new();
    for id in steady.iter().chain(&exiting) {
        let a = ws.agent(id);
        let reason = a["reason"].as_str().unwrap_or_default().to_string();
        if reason.contains("stale") || reason.contains("silent") {
            killed_as_stale += 1;
        } else if reason.contains("handoff") {
            missed_handoffs += 1;
        } else if a["status"] != "complete" {
            other.push(format!("{id}: {} {reason}", a["status"]));
        }
    }
    println!(
        "HOSTILE stalls-sigstop paused_ms={} agents={} killed_as_stale={killed_as_stale} \
         missed_handoffs={missed_handoffs} other_failures={}",
        pause.as_millis(),
        steady.len() + exiting.len(),
        other.len()
    );
    assert_eq!(killed_as_stale, 0, "healthy reporters killed as stale after a pause");
    assert_eq!(missed_handoffs, 0, "handoffs written during the pause were missed");
    assert!(other.is_empty(), "agents that did not complete: {other:?}");
}
