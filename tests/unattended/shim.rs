//! Unattended scenarios: the shim keeps each attempt's limits by itself (kill grace for the
//! whole group, deadlines with no supervisor, output as a heartbeat stamped when it came,
//! the log cap) and brings a supervisor back when one is needed.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

pub const FAST: &str = "[health]\nmax_concurrent = 200\nbreaker_failures = 0\n\
                        [defaults]\nbackoff = { initial = \"1s\" }\nmax_retries = 2\n";

/// Events of one agent, oldest first.
pub fn events(ws: &Ws, id: &str) -> Vec<Value> {
    ws.show(id)["events"].as_array().cloned().unwrap_or_default()
}

pub fn event<'a>(evs: &'a [Value], kind: &str) -> Option<&'a Value> {
    evs.iter().find(|e| e["kind"] == kind)
}

/// Seconds between two events' wall times.
pub fn secs_between(a: &Value, b: &Value) -> f64 {
    let t = |e: &Value| e["at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    (t(b).as_millisecond() - t(a).as_millisecond()) as f64 / 1000.0
}

/// The pid the current attempt of `id` runs as (its process group).
pub fn pid_of(ws: &Ws, id: &str) -> i32 {
    let mut pid = 0;
    assert!(wait_until(SECS(10), || {
        pid = ws.agent(id)["pid"].as_i64().unwrap_or(0) as i32;
        pid > 0
    }));
    pid
}

/// Waits for a line in a file the agent writes.
pub fn wait_file_has(path: &std::path::Path, text: &str, limit: Duration) -> bool {
    wait_until(limit, || std::fs::read_to_string(path).is_ok_and(|t| t.contains(text)))
}

/// A shell snippet: a child in the agent's group that ignores TERM and says when it ends.
const STUBBORN: &str = r#"sh -c 'trap "" TERM; while :; do sleep 0.05; done' & echo ready > "$FLAG"; wait"#;

#[test]
fn kill_grace_is_the_whole_groups_grace() {
    let ws = Ws::with_config(Some(FAST));
    let flag = ws.path().join("ready");
    let env = format!("FLAG={}", flag.display());
    let id =
        ws.ok(&["spawn", "--role", "X", "--task", "t", "--env", &env, "--", "sh", "-c", STUBBORN]).trim().to_string();
    assert!(wait_file_has(&flag, "ready", SECS(10)));
    let pgid = pid_of(&ws, &id);
    let t0 = Instant::now();
    let mut child_gone_at = None;
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // The TERM-ignoring child must outlive the leader (TERMed at once) by the grace.
            wait_until(SECS(10), || group_members(pgid).is_empty());
            t0.elapsed()
        });
        ws.ok(&["kill", &id, "--grace", "3s"]);
        let returned = t0.elapsed();
        child_gone_at = Some(watcher.join().unwrap());
        let gone = child_gone_at.unwrap();
        println!(
            "UNATTENDED kill_grace grace_s=3 group_gone_s={:.2} kill_returned_s={:.2}",
            gone.as_secs_f64(),
            returned.as_secs_f64()
        );
        assert!(gone >= Duration::from_millis(2900), "the group was KILLed after {gone:?}, not after the 3s grace");
        assert!(gone < Duration::from_millis(4500), "the group outlived its grace: {gone:?}");
        assert!(
            returned >= gone.saturating_sub(Duration::from_millis(50)),
            "kill returned at {returned:?}, before the group was gone at {gone:?}"
        );
    });
    assert_eq!(ws.agent(&id)["status"], "killed");
}

#[test]
fn an_attempt_ends_when_its_group_is_gone_not_a_fixed_second_later() {
    let ws = Ws::with_config(Some(FAST));
    // A child that lingers after the leader exits, and ends on TERM.
    let lingering = ws.spawn("X", &["sh", "-c", "sleep 30 & echo leader done; exit 0"]);
    // Nothing left behind at all.
    let alone = ws.spawn("X", &["sh", "-c", "echo alone; exit 0"]);
    for id in [&lingering, &alone] {
        ws.wait_state(id, &["complete"], SECS(10));
        let evs = events(&ws, id);
        let took = secs_between(event(&evs, "started").unwrap(), event(&evs, "exited").unwrap());
        println!("UNATTENDED leftover_clearing agent={id} started_to_exited_s={took:.3}");
        assert!(took < 0.6, "{id}: {took}s from start to recorded exit");
    }
}

#[test]
fn kill_returns_only_when_the_group_is_gone_also_after_a_retry() {
    let ws = Ws::with_config(Some(FAST));
    let flag = ws.path().join("ready");
    let env = format!("FLAG={}", flag.display());
    // First attempt fails for good (exit 3 escalates), then a human retries it.
    let script = format!(r#"if [ "$CORRAL_ATTEMPT" = 1 ]; then exit 3; fi; {STUBBORN}"#);
    let id =
        ws.ok(&["spawn", "--role", "X", "--task", "t", "--env", &env, "--", "sh", "-c", &script]).trim().to_string();
    ws.wait_state(&id, &["escalated"], SECS(10));
    ws.ok(&["retry", &id]);
    assert!(wait_file_has(&flag, "ready", SECS(10)));
    let pgid = pid_of(&ws, &id);
    let t0 = Instant::now();
    ws.ok(&["kill", &id, "--grace", "1s"]);
    let took = t0.elapsed();
    let left = group_members(pgid);
    println!("UNATTENDED kill_after_retry kill_s={:.2} processes_left={}", took.as_secs_f64(), left.len());
    assert!(left.is_empty(), "kill returned while {left:?} of the retried attempt live");
    assert!(took >= Duration::from_millis(900), "kill returned after {took:?}, before the 1s grace");
    assert_eq!(ws.agent(&id)["status"], "killed");
}

fn kill_supervisor(ws: &Ws) {
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
}

/// The supervisor's pid from its lock, without asking it (which would start one).
fn supervisor_running(ws: &Ws) -> bool {
    std::fs::read_to_string(ws.data.join("daemon.lock"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(alive)
}

#[test]
fn with_no_supervisor_timeouts_fire_and_retries_start() {
    let ws = Ws::with_config(Some(FAST));
    let ledger = ws.path().join("ledger");
    let env = format!("LEDGER={}", ledger.display());
    // Attempt 1 runs past its 2s timeout; attempt 2 says it started and ends.
    let script =
        r#"echo "start $CORRAL_ATTEMPT" >> "$LEDGER"; if [ "$CORRAL_ATTEMPT" = 1 ]; then sleep 60; fi; exit 0"#;
    let id = ws
        .ok(&["spawn", "--role", "X", "--task", "t", "--timeout", "2s", "--env", &env, "--", "sh", "-c", script])
        .trim()
        .to_string();
    assert!(wait_file_has(&ledger, "start 1", SECS(10)));
    let t0 = Instant::now();
    kill_supervisor(&ws);
    // No command runs meanwhile: the shim stops the attempt at its deadline, starts a
    // supervisor, and that one starts the retry after its 1s backoff.
    let retried = wait_file_has(&ledger, "start 2", SECS(10));
    let took = t0.elapsed();
    println!("UNATTENDED no_supervisor timeout_s=2 backoff_s=1 retry_started_after_s={:.2}", took.as_secs_f64());
    assert!(
        retried,
        "no retry within 10s; daemon log:\n{}",
        std::fs::read_to_string(ws.data.join("daemon.log")).unwrap_or_default()
    );
    assert!(took < Duration::from_millis(2000 + 5000 + 1000 + 1000), "{took:?}");
    assert!(supervisor_running(&ws));
    let show = ws.show(&id);
    let a1 = &show["attempts"][0];
    assert_eq!(a1["failureType"], "timeout", "{a1}");
    ws.wait_state(&id, &["complete"], SECS(10));
}

#[test]
fn a_silent_agent_is_stale_at_heartbeat_timeout_counted_from_its_output() {
    let ws = Ws::with_config(Some(
        "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n[defaults]\nheartbeat_timeout = \"2s\"\nmax_retries = 0\n",
    ));
    let mark = ws.path().join("last-output");
    let env = format!("MARK={}", mark.display());
    // Reports once, prints for 2.5s (past one heartbeat_timeout), then is silent.
    let script = r#"corral report --status active --progress 0.1
i=0; while [ $i -lt 25 ]; do echo "working $i"; i=$((i+1)); sleep 0.1; done
date +%s.%N > "$MARK"; sleep 60"#;
    let id =
        ws.ok(&["spawn", "--role", "X", "--task", "t", "--env", &env, "--", "sh", "-c", script]).trim().to_string();
    ws.wait_state(&id, &["stopping", "timed_out", "failed", "escalated"], SECS(15));
    let evs = events(&ws, &id);
    let stale = event(&evs, "stale").unwrap_or_else(|| panic!("no stale event: {evs:?}"));
    let last: f64 = std::fs::read_to_string(&mark).unwrap().trim().parse().unwrap();
    let at = stale["at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let after = at.as_millisecond() as f64 / 1000.0 - last;
    println!("UNATTENDED stale_from_output heartbeat_timeout_s=2 stale_after_last_output_s={after:.2}");
    assert!(after >= 1.9, "stale {after}s after the last output, before heartbeat_timeout");
    assert!(after <= 3.1, "stale {after}s after the last output: more than a second late");
}

#[test]
fn a_streaming_agent_that_does_not_report_is_not_killed_under_the_documented_template() {
    // The documented Claude Code / Codex settings, with the stall check made short.
    let config = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n\
                  [roles.STREAM]\nheartbeat_timeout = \"10m\"\nstall_timeout = \"1s\"\noutput_is_progress = true\nmax_retries = 0\n\
                  [roles.PLAIN]\nheartbeat_timeout = \"10m\"\nstall_timeout = \"1s\"\nmax_retries = 0\n";
    let ws = Ws::with_config(Some(config));
    let streams =
        r#"i=0; while [ $i -lt 30 ]; do echo "{\"type\":\"delta\",\"n\":$i}"; i=$((i+1)); sleep 0.1; done; exit 0"#;
    let reports_once = format!("corral report --status active --progress 0.1; {streams}");
    let never = ws.spawn("STREAM", &["sh", "-c", streams]);
    let once = ws.spawn("STREAM", &["sh", "-c", &reports_once]);
    // With plain output not counted as progress (the default), the same agent is silent.
    let plain = ws.spawn("PLAIN", &["sh", "-c", &reports_once]);
    let done_never = ws.wait_state(&never, &["complete", "failed", "escalated", "timed_out"], SECS(15));
    let done_once = ws.wait_state(&once, &["complete", "failed", "escalated", "timed_out"], SECS(15));
    let done_plain = ws.wait_state(&plain, &["complete", "failed", "escalated", "timed_out"], SECS(15));
    println!(
        "UNATTENDED streaming never_reports={} reports_once={} reports_once_without_output_is_progress={}",
        done_never["status"], done_once["status"], done_plain["status"]
    );
    assert_eq!(done_never["status"], "complete");
    assert_eq!(done_once["status"], "complete");
    assert!(event(&events(&ws, &plain), "stalled").is_some(), "{done_plain}");
}

#[test]
fn the_log_cap_keeps_head_and_tail_and_says_what_was_dropped() {
    let ws = Ws::with_config(Some(
        "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n[defaults]\nmax_log_size = \"64KiB\"\nmax_retries = 0\n",
    ));
    // About 1 MB of numbered lines; the agent is not stopped for it.
    let id = ws.spawn("X", &["sh", "-c", "seq 1 150000 | sed 's/^/line /'; echo THE-END; exit 0"]);
    ws.wait_state(&id, &["complete"], SECS(30));
    let log = std::fs::read(ws.data.join("logs").join(format!("{id}.log"))).unwrap();
    let text = String::from_utf8_lossy(&log);
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("corral: ")?.split_once(" bytes of output dropped")?.0.parse().ok())
        .unwrap_or(0);
    let total: u64 =
        (1..=150000u64).map(|i| format!("line {i}\n").len() as u64).sum::<u64>() + "THE-END\n".len() as u64;
    println!("UNATTENDED log_cap cap=65536 written={total} log_bytes={} dropped={dropped}", log.len());
    assert!(text.contains("\nline 1\nline 2\n"), "the head is gone");
    assert!(text.contains("line 150000\nTHE-END\n"), "the newest tail is gone");
    assert!(dropped > 0 && dropped < total, "dropped {dropped}");
    assert!(log.len() as u64 <= 65536 * 5 / 4 + 1024, "log is {} bytes", log.len());
    // What is there plus what was dropped is what the agent wrote (no line lost unsaid).
    let header_footer: u64 = text
        .lines()
        .filter(|l| l.starts_with("=== corral") || l.starts_with("corral: "))
        .map(|l| l.len() as u64 + 1)
        .sum();
    let kept = log.len() as u64 - header_footer - 1; // the marker's leading line break
    assert_eq!(kept + dropped, total, "kept {kept} + dropped {dropped} != written {total}");
}

#[test]
fn kill_grace_holds_for_the_group_after_a_supervisor_restart() {
    let ws = Ws::with_config(Some(FAST));
    let flag = ws.path().join("ready");
    let env = format!("FLAG={}", flag.display());
    let id =
        ws.ok(&["spawn", "--role", "X", "--task", "t", "--env", &env, "--", "sh", "-c", STUBBORN]).trim().to_string();
    assert!(wait_file_has(&flag, "ready", SECS(10)));
    let pgid = pid_of(&ws, &id);
    kill_supervisor(&ws);
    ws.ok(&["status"]); // a new supervisor finds the attempt's shim again
    let t0 = Instant::now();
    ws.ok(&["kill", &id, "--grace", "2s"]);
    let returned = t0.elapsed();
    let left = group_members(pgid);
    println!(
        "UNATTENDED kill_grace_after_restart grace_s=2 kill_returned_s={:.2} left={}",
        returned.as_secs_f64(),
        left.len()
    );
    assert!(left.is_empty(), "{left:?}");
    assert!(returned >= Duration::from_millis(1900), "the group got {returned:?}, not the 2s grace");
    assert!(returned < Duration::from_millis(3500), "{returned:?}");
}
