//! Hostile scenarios: shims. A shim killed with SIGKILL (as the OOM killer or `pkill -9 -f
//! corral` would), and every corral process killed by pid at once, never make an agent run
//! twice, never lose an exit code that could still be known, and never let `kill` or a
//! timeout be lost.
//!
//! Agents append `start`/`end` lines with times to a ledger outside the data dir; two
//! attempts of one agent whose intervals overlap are a double run.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CONFIG: &str = "[health]\nmax_concurrent = 200\nbreaker_failures = 0\n\
                      [defaults]\nbackoff = { initial = \"200ms\" }\nmax_retries = 2\n\
                      [[classify]]\nexit_codes = [7]\naction = \"retry\"\n\
                      [[classify]]\nfailure_type = [\"crash\"]\naction = \"retry\"\n";

/// Writes ledger lines around its work: `start ID N NANOS` and `end ID N NANOS`.
/// An agent that dies of a signal (SIGPIPE once nothing reads its output, TERM) writes
/// its end line too.
const LEDGERED: &str = r#"echo "start $CORRAL_AGENT_ID $CORRAL_ATTEMPT $(date +%s%N)" >> "$LEDGER"
trap 'echo "end $CORRAL_AGENT_ID $CORRAL_ATTEMPT $(date +%s%N)" >> "$LEDGER"; exit 141' PIPE TERM
i=0; while [ $i -lt "$TICKS" ]; do echo "tick $i"; i=$((i+1)); sleep 0.1; done
echo "end $CORRAL_AGENT_ID $CORRAL_ATTEMPT $(date +%s%N)" >> "$LEDGER"
exit "$CODE""#;

/// Overlapping attempts of one agent in the ledger (an attempt with a start and no end is
/// taken to run until now).
pub fn double_runs(ledger: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut spans: BTreeMap<(String, u32), (u128, u128)> = BTreeMap::new();
    let mut starts: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [kind, id, n, t] = f[..] else { continue };
        let (Ok(n), Ok(t)) = (n.parse::<u32>(), t.parse::<u128>()) else { continue };
        let e = spans.entry((id.to_string(), n)).or_insert((t, u128::MAX));
        if kind == "start" {
            *starts.entry((id.to_string(), n)).or_default() += 1;
            e.0 = t;
        } else {
            e.1 = t;
        }
    }
    let mut bad = Vec::new();
    for ((id, n), c) in &starts {
        if *c > 1 {
            bad.push(format!("{id} attempt {n} started {c} times"));
        }
    }
    let list: Vec<_> = spans.iter().collect();
    for (i, ((id, n), (s, e))) in list.iter().enumerate() {
        for ((id2, n2), (s2, e2)) in &list[i + 1..] {
            if id == id2 && s < e2 && s2 < e {
                bad.push(format!("{id}: attempts {n} and {n2} ran at the same time"));
            }
        }
    }
    (bad.len(), bad)
}

fn spawn_ledgered(ws: &Ws, ledger: &Path, ticks: u32, code: i32, extra: &[&str]) -> String {
    let envs = [format!("LEDGER={}", ledger.display()), format!("TICKS={ticks}"), format!("CODE={code}")];
    let mut args = vec!["spawn", "--role", "X", "--task", "ledgered"];
    for e in &envs {
        args.extend(["--env", e.as_str()]);
    }
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", LEDGERED]);
    ws.ok(&args).trim().to_string()
}

/// The pid of the shim of the running attempt `n` of `id`, from its run file.
pub fn shim_pid(ws: &Ws, id: &str, n: u32) -> i32 {
    let path = ws.data.join("run").join(format!("{id}.{n}.run"));
    let mut pid = 0;
    assert!(wait_until(SECS(10), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        pid = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["start"]["shimPid"].as_i64())
            .unwrap_or(0) as i32;
        pid > 0
    }));
    pid
}

fn kill9(pid: i32) {
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)), "{pid} survived SIGKILL");
}

fn wait_started(ledger: &Path, id: &str, n: u32) {
    let needle = format!("start {id} {n} ");
    assert!(
        wait_until(SECS(10), || std::fs::read_to_string(ledger).is_ok_and(|t| t.contains(&needle))),
        "{id} attempt {n} never started"
    );
}

fn attempt(show: &Value, n: u64) -> Value {
    show["attempts"].as_array().and_then(|a| a.iter().find(|x| x["attempt"] == n)).cloned().unwrap_or(Value::Null)
}

#[test]
fn a_killed_shim_leaves_one_copy_and_its_exit_code() {
    let ws = Ws::with_config(Some(CONFIG));
    let ledger = ws.path().join("ledger");
    // Exit 7 is retried: a second attempt must wait for the first's processes to be gone.
    let id = spawn_ledgered(&ws, &ledger, 15, 7, &["--max-retries", "1"]);
    wait_started(&ledger, &id, 1);
    kill9(shim_pid(&ws, &id, 1));
    ws.wait_state(&id, &["escalated", "failed", "complete"], SECS(20));
    let show = ws.show(&id);
    let (doubles, why) = double_runs(&ledger);
    let lost = [1, 2].iter().filter(|n| attempt(&show, **n)["exitCode"] != 7).count();
    let log = std::fs::read_to_string(ws.data.join("logs").join(format!("{id}.log"))).unwrap_or_default();
    let ticks_after = log.split("the attempt's shim is gone").nth(1).map_or(0, |t| t.matches("tick").count());
    println!(
        "HOSTILE shim_kill9 double_runs={doubles} exit_codes_lost={lost} output_relayed_after_shim_death={ticks_after}"
    );
    assert_eq!(doubles, 0, "{why:?}");
    assert_eq!(lost, 0, "{show}");
    assert!(ticks_after > 0, "the agent's output after its shim died was not kept:\n{log}");
}

#[test]
fn kill_of_an_agent_whose_shim_died_returns_when_its_processes_are_gone() {
    let ws = Ws::with_config(Some(CONFIG));
    let flag = ws.path().join("ready");
    let script = r#"sh -c 'trap "" TERM; while :; do sleep 0.05; done' & echo ready > "$FLAG"; wait"#;
    let env = format!("FLAG={}", flag.display());
    let id =
        ws.ok(&["spawn", "--role", "X", "--task", "t", "--env", &env, "--", "sh", "-c", script]).trim().to_string();
    assert!(wait_until(SECS(10), || flag.exists()));
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    kill9(shim_pid(&ws, &id, 1));
    assert!(wait_until(SECS(5), || ws.show(&id)["events"].as_array().unwrap().iter().any(|e| e["kind"] == "adopted")));
    let t0 = Instant::now();
    ws.ok(&["kill", &id, "--grace", "1s"]);
    let took = t0.elapsed();
    let left = group_members(pgid);
    println!("HOSTILE shim_kill9_then_kill processes_left={} kill_s={:.2}", left.len(), took.as_secs_f64());
    assert!(left.is_empty(), "kill returned while {left:?} live");
    assert_eq!(ws.agent(&id)["status"], "killed");
}

#[test]
fn the_timeout_of_an_agent_whose_shim_died_still_fires() {
    let ws = Ws::with_config(Some(CONFIG));
    let ledger = ws.path().join("ledger");
    let id = spawn_ledgered(&ws, &ledger, 600, 0, &["--timeout", "2s", "--max-retries", "0"]);
    wait_started(&ledger, &id, 1);
    let pgid = ws.agent(&id)["pid"].as_i64().unwrap() as i32;
    let t0 = Instant::now();
    kill9(shim_pid(&ws, &id, 1));
    let done = ws.wait_state(&id, &["timed_out", "escalated", "failed"], SECS(15));
    let took = t0.elapsed();
    let left = group_members(pgid);
    let show = ws.show(&id);
    let timed_out = attempt(&show, 1)["failureType"] == "timeout";
    println!(
        "HOSTILE shim_kill9_timeout timeout_fired={} after_s={:.2} processes_left={}",
        timed_out,
        took.as_secs_f64(),
        left.len()
    );
    assert!(timed_out, "{done}");
    assert!(took < Duration::from_secs(2 + 5 + 2), "{took:?}");
    assert!(left.is_empty(), "{left:?}");
}

/// Every live process running this corral binary (supervisor, launcher, shims, and any
/// `corral report` of an agent), other than the test itself.
fn corral_processes() -> Vec<i32> {
    let exe = std::fs::canonicalize(bin()).unwrap();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid != me && alive(pid) && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe) {
            out.push(pid);
        }
    }
    out
}

/// Pids that belong to this workspace: its supervisor, the supervisor's launcher and the
/// shims of its run files.
fn workspace_corral(ws: &Ws, ids: &[String]) -> Vec<i32> {
    let sup: i32 = std::fs::read_to_string(ws.data.join("daemon.lock")).unwrap().trim().parse().unwrap();
    let mut v = vec![sup];
    for pid in corral_processes() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: i32 = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
        if ppid == sup {
            v.push(pid); // the launcher (and shims it executed itself)
        }
    }
    for id in ids {
        for n in 1..=3 {
            let path: PathBuf = ws.data.join("run").join(format!("{id}.{n}.run"));
            if let Ok(t) = std::fs::read_to_string(path) {
                for v2 in t.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
                    if let Some(p) = v2["start"]["shimPid"].as_i64() {
                        v.push(p as i32);
                    }
                }
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

#[test]
fn killing_every_corral_process_never_runs_an_agent_twice() {
    let ws = Ws::with_config(Some(CONFIG));
    let ledger = ws.path().join("ledger");
    // Three that end before the kill (their codes are recorded), three that run through it.
    let short: Vec<String> =
        (0..3).map(|i| spawn_ledgered(&ws, &ledger, 1, 7 + (i % 2) * 3, &["--max-retries", "0"])).collect();
    let long: Vec<String> = (0..3).map(|_| spawn_ledgered(&ws, &ledger, 20, 0, &[])).collect();
    for id in &short {
        ws.wait_state(id, &["escalated", "failed"], SECS(10));
    }
    for id in &long {
        wait_started(&ledger, id, 1);
    }
    let all: Vec<String> = short.iter().chain(&long).cloned().collect();
    let victims = workspace_corral(&ws, &all);
    for p in &victims {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    for p in &victims {
        assert!(wait_until(SECS(5), || !alive(*p)));
    }
    // Any command brings a supervisor back; it must not start a retry beside a live group.
    let status = ws.status();
    assert_eq!(status.len(), 6);
    for id in &long {
        ws.wait_state(id, &["complete", "escalated", "failed"], SECS(30));
    }
    let (doubles, why) = double_runs(&ledger);
    let mut lost = 0;
    for (i, id) in short.iter().enumerate() {
        let want = 7 + (i as i64 % 2) * 3;
        if attempt(&ws.show(id), 1)["exitCode"] != want {
            lost += 1;
        }
    }
    // Attempts that ran through the kill: their code is unknowable (nobody was their
    // parent); it must say so, not pretend.
    let mut pretended = 0;
    for id in &long {
        let a = attempt(&ws.show(id), 1);
        let r = a["reason"].as_str().unwrap_or("");
        if !(a["exitCode"] == 0 || r.contains("exit code unknown")) {
            pretended += 1;
        }
    }
    println!(
        "HOSTILE kill_every_corral_process killed={} double_runs={doubles} exit_codes_lost={lost} made_up_codes={pretended}",
        victims.len()
    );
    assert_eq!(doubles, 0, "{why:?}");
    assert_eq!(lost, 0);
    assert_eq!(pretended, 0);
}
