//! Hostile scenarios: resource exhaustion. A flood of idle connections at the usual soft
//! limit of 1,024 descriptors, half-sent huge requests from many connections, and a
//! reporter that outgrows its status file: the supervisor keeps answering, keeps every exit
//! code, does not spin, stays within its memory, and no finding is lost unsaid.

use crate::common::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// `corral ARGS` with the descriptor limit at `limit` (soft and hard): a supervisor it
/// starts cannot raise it either.
fn limited(ws: &Ws, args: &[&str], limit: u64) -> Command {
    let mut c = ws.cmd(args);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        })
    };
    c
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    rest.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + rest.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A command answered within `limit`: whether it succeeded in time.
fn answered(mut c: Command, limit: Duration) -> bool {
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The exit codes the attempts of `id` recorded, in order.
fn exit_codes(ws: &Ws, id: &str) -> Vec<Option<i64>> {
    ws.show(id)["attempts"].as_array().unwrap().iter().map(|a| a["exitCode"].as_i64()).collect()
}

#[test]
fn idle_connection_flood_at_1024_descriptors_loses_nothing() {
    const LIMIT: u64 = 1024;
    const FLOOD: usize = 1100;
    let ws = Ws::new();
    assert!(limited(&ws, &["status"], LIMIT).status().unwrap().success());
    let pid = ws.daemon_pid();
    let socket = ws.data.join("corral.sock");
    // Agents that end while the flood is on, each with its own exit code.
    let mut expected = Vec::new();
    for i in 0..12 {
        let code = i % 4;
        let script = format!("sleep 1; exit {code}");
        let id = ws.ok(&["spawn", "--role", "r", "--task", "t", "--max-retries", "0", "--", "sh", "-c", &script]);
        expected.push((id.trim().to_string(), code as i64));
    }

    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..FLOOD {
        match UnixStream::connect(&socket) {
            Ok(s) => flood.push(s),
            Err(_) => refused += 1,
        }
    }
    // Other clients are answered meanwhile, and new agents still start and end.
    let mut unanswered = 0;
    for _ in 0..5 {
        if !answered(limited(&ws, &["status", "--json"], LIMIT), SECS(10)) {
            unanswered += 1;
        }
    }
    for i in 0..6 {
        let code = 10 + i;
        let script = format!("exit {code}");
        let mut c = limited(
            &ws,
            &["spawn", "--role", "r", "--task", "t", "--max-retries", "0", "--", "sh", "-c", &script],
            LIMIT,
        );
        let out = c.output().unwrap();
        if out.status.success() {
            expected.push((String::from_utf8(out.stdout).unwrap().trim().to_string(), code as i64));
        } else {
            unanswered += 1;
        }
    }
    for (id, _) in &expected {
        ws.wait_state(id, &["complete", "failed", "escalated"], SECS(30));
    }
    // Settled, the flood still connected: the supervisor must be idle, not retrying accepts.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = (cpu_ticks(pid) - before) as f64 / ticks_per_s;
    let share = cpu / window.elapsed().as_secs_f64();
    let spinning = usize::from(share > 0.25);
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);

    let mut lost = Vec::new();
    for (id, code) in &expected {
        let codes = exit_codes(&ws, id);
        if codes.last().copied().flatten() != Some(*code) {
            lost.push(format!("{id}: expected {code}, recorded {codes:?}"));
        }
    }
    let still = answered(ws.cmd(&["status"]), SECS(10));
    drop(flood);
    println!(
        "HOSTILE exhaustion_idle_flood connections={FLOOD} refused_connects={refused} supervisor_fds={open_fds} \
         lost_exit_codes={} unanswered_clients={} spinning={spinning} supervisor_cpu_share={share:.3}",
        lost.len(),
        unanswered + usize::from(!still)
    );
    assert_eq!(lost, Vec::<String>::new());
    assert_eq!(unanswered, 0);
    assert!(still, "the supervisor stopped answering");
    assert_eq!(spinning, 0, "the supervisor used {cpu:.2}s of CPU in a 2s window of idle connections");
    assert!(open_fds as u64 <= LIMIT);
}

#[test]
fn half_sent_huge_requests_do_not_grow_the_supervisor() {
    const CONNS: usize = 40;
    const EACH: usize = 7 * 1024 * 1024; // under the 8 MiB a single request may have
    let ws = Ws::new();
    ws.ok(&["status"]);
    let pid = ws.daemon_pid();
    let socket = ws.data.join("corral.sock");
    let base = status_kib(pid, "VmRSS:");
    let writers: Vec<_> = (0..CONNS)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = UnixStream::connect(&socket) else { return (0, None) };
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let chunk = vec![b'a'; 64 * 1024];
                let mut sent = 0;
                while sent < EACH {
                    if s.write_all(&chunk).is_err() {
                        return (sent, None); // shed by the supervisor
                    }
                    sent += chunk.len();
                }
                (sent, Some(s)) // held, half-sent, open
            })
        })
        .collect();
    let results: Vec<(usize, Option<UnixStream>)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let offered: usize = results.iter().map(|r| r.0).sum();
    let held = results.iter().filter(|r| r.1.is_some()).count();
    let peak = status_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(base) / 1024;
    let still = answered(ws.cmd(&["status"]), SECS(10));
    drop(results);
    println!(
        "HOSTILE exhaustion_half_sent connections={CONNS} attempted_mib={} taken_mib={} held_open={held} \
         rss_growth_mib={growth_mib} over_bound={} unanswered_clients={}",
        CONNS * EACH / (1024 * 1024),
        offered / (1024 * 1024),
        u8::from(growth_mib > 200),
        u8::from(!still)
    );
    assert!(held < CONNS, "nothing was shed: the scenario did not reach the bound");
    assert!(growth_mib <= 200, "the supervisor grew by {growth_mib} MiB for half-sent requests");
    assert!(still, "the supervisor stopped answering");
}

/// `calls` reports of `per_call` findings of about `size` bytes each, from `threads`
/// reporters at once: every finding is in the status file or its drop was said.
fn findings_flood(calls: usize, per_call: usize, size: usize, threads: usize) {
    let ws = Ws::new();
    let id = "agent-001-FLOOD";
    let pad = "x".repeat(size.saturating_sub(20));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let said_dropped = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let call = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if call >= calls {
                        break;
                    }
                    let mut args = vec!["report".to_string(), "--agent".into(), id.into()];
                    for f in 0..per_call {
                        args.push("--finding".into());
                        args.push(format!("c{call:05}f{f:04}-{pad}"));
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let out = ws.run(&args);
                    if !out.status.success() {
                        failed.fetch_add(per_call, std::sync::atomic::Ordering::Relaxed);
                    }
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    for line in stderr.lines() {
                        if let Some(n) = line
                            .split("dropped its ")
                            .nth(1)
                            .and_then(|r| r.split_whitespace().next())
                            .and_then(|n| n.parse::<u64>().ok())
                        {
                            said_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let text = std::fs::read_to_string(ws.data.join(format!("agent-status/{id}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kept = v["findings"].as_array().unwrap();
    let mut distinct: Vec<&str> = kept.iter().map(|f| f.as_str().unwrap()).collect();
    distinct.sort();
    distinct.dedup();
    let total = (calls * per_call) as u64;
    let counted = v["findingsDropped"].as_u64().unwrap_or(0);
    let said = said_dropped.into_inner();
    let failed = failed.into_inner() as u64;
    let silent = total.saturating_sub(kept.len() as u64 + said + failed);
    println!(
        "HOSTILE exhaustion_findings findings={total} calls={calls} kept={} dropped_and_said={said} \
         findings_dropped_field={counted} failed_loudly={failed} duplicated={} silently_lost={silent}",
        kept.len(),
        kept.len() - distinct.len()
    );
    assert_eq!(silent, 0, "findings lost without a word");
    assert_eq!(kept.len(), distinct.len(), "a finding was kept twice");
    assert_eq!(kept.len() as u64 + said + failed, total);
    assert_eq!(counted, said, "findingsDropped disagrees with what the reporters were told");
    assert!(text.len() as u64 <= 4 * 1024 * 1024, "the status file outgrew what the supervisor reads");
}

#[test]
fn findings_past_the_status_file_bound_are_never_lost_unsaid() {
    // Crosses the 4 MiB bound in a few calls (the full-size flood is ignored below).
    findings_flood(24, 100, 2_500, 2);
}

#[test]
#[ignore = "long: 100,000 findings in 1,000 reports (minutes in a debug build)"]
fn hundred_thousand_findings_in_a_thousand_reports() {
    findings_flood(1_000, 100, 270, 4);
}
