//! Unattended scenarios: followers and the supervisor's lifetime. `wait`, `logs -f` and
//! `events -f` ride out a supervisor killed with SIGKILL (they reconnect, see every line
//! and event once, and `wait` says what really became of the agents); a supervisor with
//! nothing to look after exits after `idle_timeout`; a read command where there is no
//! workspace creates nothing and starts nothing.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Stdio};
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

/// Prints `line 0` .. `line N-1`, one every 40 ms, then exits with `$CODE`.
const PRINTER: &str =
    r#"i=0; while [ $i -lt "$LINES" ]; do echo "line $i"; i=$((i+1)); sleep 0.04; done; exit "$CODE""#;

fn spawn_printer(ws: &Ws, lines: u32, code: i32) -> String {
    let (l, c) = (format!("LINES={lines}"), format!("CODE={code}"));
    ws.ok(&["spawn", "--role", "X", "--task", "print", "--env", &l, "--env", &c, "--", "sh", "-c", PRINTER])
        .trim()
        .to_string()
}

fn follow(ws: &Ws, args: &[&str]) -> Child {
    ws.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn output(c: Child) -> (Option<i32>, String, String) {
    let o = c.wait_with_output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// How many times each agent id starts a line of `wait`'s output.
fn finishes(out: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        if let Some(id) = l.split_whitespace().next() {
            *m.entry(id.to_string()).or_default() += 1;
        }
    }
    m
}

#[test]
fn followers_ride_out_a_killed_supervisor_and_lose_nothing() {
    let ws = Ws::new();
    let lines = 120;
    let good: Vec<String> = (0..3).map(|_| spawn_printer(&ws, lines, 0)).collect();
    let bad = spawn_printer(&ws, 60, 3);
    let mut good_args = vec!["wait"];
    good_args.extend(good.iter().map(String::as_str));
    let wait_good = follow(&ws, &good_args);
    let wait_all = follow(&ws, &["wait", "--all"]);
    let logs = follow(&ws, &["logs", "-f", &good[0]]);
    let mut events = follow(&ws, &["events", "-f"]);
    // Two supervisors killed with SIGKILL while they follow; the agents' side and the
    // followers bring one back each time.
    let mut kills = 0;
    for pause in [1_200, 1_500] {
        std::thread::sleep(Duration::from_millis(pause));
        // The last kill's replacement may still be starting on a loaded machine.
        let mut pid = None;
        let back = wait_until(SECS(20), || {
            let out = ws.run(&["daemon", "status", "--json"]).stdout;
            pid = serde_json::from_slice::<Value>(&out).ok().and_then(|v| v["pid"].as_i64()).map(|p| p as i32);
            pid.is_some()
        });
        assert!(back, "no supervisor came back after kill {kills}");
        let pid = pid.unwrap();
        // SAFETY: a signal to the supervisor this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(wait_until(SECS(5), || !alive(pid)), "supervisor {pid} survived SIGKILL");
        kills += 1;
    }
    let (good_code, good_out, good_err) = output(wait_good);
    let (all_code, all_out, all_err) = output(wait_all);
    let (logs_code, logs_out, logs_err) = output(logs);

    // Every event in the store, once each, in order, on the follower's stream.
    let stored: Vec<u64> = ws
        .ok(&["events"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    let last = *stored.last().unwrap();
    let mut followed: Vec<u64> = Vec::new();
    let mut text = String::new();
    {
        let mut so = events.stdout.take().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&so);
        // SAFETY: fcntl on a pipe we own.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
        let mut buf = [0u8; 65536];
        wait_until(SECS(10), || {
            while let Ok(n) = so.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|v| v["seq"].as_u64() >= Some(last))
        });
    }
    events.kill().unwrap();
    let (_, _, events_err) = output(events);
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            followed.push(v["seq"].as_u64().unwrap());
        }
    }
    let followed_set: std::collections::BTreeSet<u64> = followed.iter().copied().collect();
    let events_duplicated = followed.len() - followed_set.len();
    let events_missing = stored.iter().filter(|s| !followed_set.contains(s)).count();
    let out_of_order = followed.windows(2).filter(|w| w[0] >= w[1]).count();

    // Every line of the agent's output, once each, in order.
    let printed: Vec<&str> = logs_out.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (0..lines).map(|i| format!("line {i}")).collect();
    let log_lines_missing = expected.iter().filter(|e| !printed.contains(&e.as_str())).count();
    let log_lines_duplicated = printed.len().saturating_sub(expected.len() - log_lines_missing);
    let log_in_order = printed.iter().zip(&expected).all(|(p, e)| p == e);

    let good_seen = finishes(&good_out);
    let all_seen = finishes(&all_out);
    let wait_repeats = good_seen.values().chain(all_seen.values()).filter(|n| **n != 1).count();
    println!(
        "UNATTENDED followers kills={kills} wait_exit={good_code:?} wait_all_exit={all_code:?} \
         logs_exit={logs_code:?} log_lines_missing={log_lines_missing} log_lines_duplicated={log_lines_duplicated} \
         events_followed={} events_missing={events_missing} events_duplicated={events_duplicated} \
         events_out_of_order={out_of_order} wait_lines_not_once={wait_repeats}",
        followed.len()
    );
    let notes =
        format!("wait: {good_out}{good_err}\nwait --all: {all_out}{all_err}\nlogs: {logs_err}\nevents: {events_err}");
    assert_eq!(good_code, Some(0), "wait on agents that all completed: {notes}");
    assert_eq!(all_code, Some(1), "wait on a set with a failed agent: {notes}");
    assert_eq!(logs_code, Some(0), "{notes}");
    assert_eq!((log_lines_missing, log_lines_duplicated), (0, 0), "{logs_out}\n{notes}");
    assert!(log_in_order, "{logs_out}");
    assert_eq!((events_missing, events_duplicated, out_of_order), (0, 0, 0), "{notes}");
    assert_eq!(good_seen.len(), good.len(), "{notes}");
    assert_eq!(all_seen.len(), good.len() + 1, "{notes}");
    assert!(all_seen.contains_key(&bad));
    assert_eq!(wait_repeats, 0, "{notes}");
    // The followers said what they were doing.
    assert!(good_err.contains("reconnect"), "wait said nothing while reconnecting: {good_err}");
}
