//! Hostile scenarios: config. Values that can never work (no agent could ever start, a limit
//! over the moment it begins, more retries than an attempt counter holds, a rule that can
//! never match) are refused with the file, the line and the key, exit 2, and nothing is
//! started; a running supervisor that reads such a file keeps its last good configuration
//! and keeps serving. A `corral.toml` replaced by a FIFO hangs nothing.

use crate::common::*;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const GOOD: &str = "[health]\nmax_concurrent = 7\nbreaker_failures = 0\n";

/// Each impossible value (as the line after its table header) and the key the error names.
const IMPOSSIBLE: &[(&str, &str, &str)] = &[
    ("[health]", "max_concurrent = 0", "health.max_concurrent"),
    ("[health]", "max_concurrent = -1", "health.max_concurrent"),
    ("[health]", "max_load = -2.0", "health.max_load"),
    ("[health]", "max_load = 0", "health.max_load"),
    ("[health]", "breaker_failures = -3", "health.breaker_failures"),
    ("[health]", "breaker_window = \"0s\"", "health.breaker_window"),
    ("[health]", "max_open_escalations = 0", "health.max_open_escalations"),
    ("[defaults]", "max_retries = 4294967295", "defaults.max_retries"),
    ("[defaults]", "max_retries = -1", "defaults.max_retries"),
    ("[defaults]", "attempt_timeout = \"0s\"", "defaults.attempt_timeout"),
    ("[defaults]", "heartbeat_timeout = \"0s\"", "defaults.heartbeat_timeout"),
    ("[defaults]", "stall_timeout = \"0ms\"", "defaults.stall_timeout"),
    ("[defaults]", "max_log_size = 10", "defaults.max_log_size"),
    ("[defaults]", "command = []", "defaults.command"),
    ("[defaults]", "backoff = { coefficient = 0.5 }", "defaults.backoff"),
    ("[roles.W]", "deadline = \"0s\"", "roles.W.deadline"),
    ("[roles.W]", "attempt_timeout = \"99999999999h\"", "roles.W.attempt_timeout"),
    ("[[classify]]", "exit_codes = [300]", "classify.exit_codes"),
    ("[[classify]]", "output = \"(unclosed\"", "classify.output"),
    ("[[classify]]", "failure_type = \"hang\"", "classify.failure_type"),
];

/// The good config with one impossible line; that line's number in the file.
fn broken(table: &str, line: &str) -> (String, usize) {
    if table == "[health]" {
        let key = line.split('=').next().unwrap().trim();
        let rest: Vec<&str> = GOOD.lines().skip(1).filter(|l| l.split('=').next().unwrap().trim() != key).collect();
        return (format!("[health]\n{line}\n{}\n", rest.join("\n")), 2);
    }
    let mut text = GOOD.to_string();
    let n = text.lines().count() + 2;
    text.push_str(&format!("{table}\n{line}\n"));
    if table == "[[classify]]" {
        text.push_str("action = \"retry\"\n");
    }
    (text, n)
}

fn run_t(ws: &Ws, dir: &std::path::Path, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = ws.cmd(args).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let until = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every impossible value, with a supervisor running an agent: `spawn` refuses it with the
/// file, line and key (exit 2) and writes nothing; the supervisor, asked through a client
/// whose own file is fine, refuses the spawn too and keeps its last good configuration;
/// `status` keeps working and says why once.
#[test]
fn impossible_values_are_refused_and_the_supervisor_keeps_serving() {
    let ws = Ws::with_config(Some(GOOD));
    let sleeper = ws.spawn("W", &["sleep", "30"]);
    let pid = ws.daemon_pid();
    // A second directory whose own corral.toml is good, pointed at the same data dir: its
    // spawns reach the supervisor, which judges the workspace's file itself.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("corral.toml"), GOOD).unwrap();
    let data = ws.data.display().to_string();
    let file = ws.path().join("corral.toml");
    let (mut refused, mut wrong_exit, mut unnamed, mut started, mut hangs, mut status_broken) = (0, 0, 0, 0, 0, 0);
    let mut supervisor_refused = 0;
    for (i, (table, line, key)) in IMPOSSIBLE.iter().enumerate() {
        let (text, n) = broken(table, line);
        std::fs::write(&file, &text).unwrap();
        let at = format!("{}:{n}: key `{key}", file.display());
        let before = ws.registry().as_array().unwrap().len();
        match run_t(&ws, ws.path(), &["spawn", "--role", "W", "--task", "t", "--", "true"], SECS(20)) {
            None => hangs += 1,
            Some(o) => {
                refused += usize::from(!o.status.success());
                wrong_exit += usize::from(o.status.code() != Some(2));
                if !stderr(&o).contains(&at) {
                    unnamed += 1;
                    eprintln!("{line}: expected {at:?} in {:?}", stderr(&o));
                }
            }
        }
        // The supervisor's own reading of the file: a fresh mtime each round.
        let t = std::time::SystemTime::now() + Duration::from_secs(i as u64 + 1);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(t).unwrap();
        let args = ["--data-dir", &data, "spawn", "--role", "W", "--task", "t", "--", "true"];
        match run_t(&ws, other.path(), &args, SECS(20)) {
            None => hangs += 1,
            Some(o) => {
                if o.status.code() == Some(2) && stderr(&o).contains(&at) {
                    supervisor_refused += 1;
                } else {
                    eprintln!("supervisor on {line}: {:?} {:?}", o.status, stderr(&o));
                }
            }
        }
        started += ws.registry().as_array().unwrap().len() - before;
        match run_t(&ws, ws.path(), &["status", "--json"], SECS(20)) {
            None => hangs += 1,
            Some(o) => {
                let warned = stderr(&o).matches("warning: ").count() == 1 && stderr(&o).contains(&at);
                if !o.status.success() || !warned || !String::from_utf8_lossy(&o.stdout).contains(&sleeper) {
                    status_broken += 1;
                    eprintln!("status on {line}: {:?} {:?}", o.status, stderr(&o));
                }
            }
        }
    }
    // The command line's retry budget follows the same bound as the file's.
    std::fs::write(&file, GOOD).unwrap();
    let cli_retries = ws.run(&["spawn", "--role", "W", "--task", "t", "--max-retries", "4294967295", "--", "true"]);
    wrong_exit += usize::from(cli_retries.status.code() != Some(2));
    unnamed += usize::from(!stderr(&cli_retries).contains("--max-retries: 4294967295 is more retries"));
    std::fs::write(&file, broken(IMPOSSIBLE[0].0, IMPOSSIBLE[0].1).0).unwrap();
    // The last good configuration stayed in force all along.
    let health = ws.json(&["health", "--json"]);
    let kept = health["maxConcurrent"].as_u64();
    let restarts = usize::from(ws.daemon_pid() != pid);
    // Fixed again: spawns go through.
    std::fs::write(&file, GOOD.replace("7", "8")).unwrap();
    let after = ws.spawn("W", &["true"]);
    let fixed = ws.json(&["health", "--json"])["maxConcurrent"].as_u64();
    println!(
        "HOSTILE config-impossible values={} refused={refused} supervisor_refused={supervisor_refused} \
         wrong_exit={wrong_exit} unnamed={unnamed} started={started} hangs={hangs} status_broken={status_broken} \
         supervisor_restarts={restarts}",
        IMPOSSIBLE.len()
    );
    assert_eq!((refused, supervisor_refused), (IMPOSSIBLE.len(), IMPOSSIBLE.len()));
    assert_eq!((wrong_exit, unnamed, started, hangs, status_broken, restarts), (0, 0, 0, 0, 0, 0));
    assert_eq!(kept, Some(7), "the last good max_concurrent stays in force: {health}");
    assert_eq!(fixed, Some(8), "a fixed file is taken at once");
    assert!(!after.is_empty());
    ws.ok(&["kill", &sleeper]);
}

/// A `corral.toml` replaced by a FIFO (nobody ever writes to it) blocks no command and no
/// supervisor: spawn refuses it, read commands warn and work.
#[test]
fn a_config_replaced_by_a_fifo_hangs_nothing() {
    let ws = Ws::with_config(Some(GOOD));
    let id = ws.spawn("W", &["true"]);
    let file = ws.path().join("corral.toml");
    std::fs::remove_file(&file).unwrap();
    let c = std::ffi::CString::new(file.display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut hangs = 0;
    let spawn = run_t(&ws, ws.path(), &["spawn", "--role", "W", "--task", "t", "--", "true"], SECS(20));
    let status = run_t(&ws, ws.path(), &["status", "--json"], SECS(20));
    let show = run_t(&ws, ws.path(), &["show", &id, "--json"], SECS(20));
    for o in [&spawn, &status, &show] {
        hangs += usize::from(o.is_none());
    }
    let spawn_exit = spawn.as_ref().and_then(|o| o.status.code());
    let reads_ok = [&status, &show].iter().filter(|o| o.as_ref().is_some_and(|o| o.status.success())).count();
    println!("HOSTILE config-fifo hangs={hangs} spawn_exit={spawn_exit:?} reads_ok={reads_ok}");
    assert_eq!(hangs, 0);
    assert_eq!(spawn_exit, Some(2), "{:?}", spawn.as_ref().map(stderr));
    assert!(spawn.as_ref().map(stderr).unwrap_or_default().contains("not a regular file"));
    assert_eq!(reads_ok, 2, "{:?}", status.as_ref().map(stderr));
    std::fs::remove_file(&file).unwrap();
}

/// A `corral.toml` an agent filled with terminal controls: the error every command shows
/// (spawn's refusal, the others' warning) carries them escaped, never raw.
#[test]
fn terminal_controls_in_the_config_reach_no_terminal() {
    let ws = Ws::with_config(Some(GOOD));
    let id = ws.spawn("W", &["true"]);
    std::fs::write(ws.path().join("corral.toml"), format!("{GOOD}\x1b]0;PWNED\x07\x1b[2J = 1\n")).unwrap();
    let mut raw_controls = 0;
    let mut outputs = 0;
    for args in [&["spawn", "--role", "W", "--task", "t", "--", "true"][..], &["status"], &["show", &id]] {
        if let Some(o) = run_t(&ws, ws.path(), args, SECS(20)) {
            outputs += 1;
            let e = stderr(&o);
            raw_controls += e.matches(['\x1b', '\x07']).count();
            assert!(e.contains("corral.toml:4:") && e.contains("\\e]0;PWNED"), "{args:?}: {e:?}");
        }
    }
    println!("HOSTILE config-terminal outputs={outputs} raw_controls={raw_controls}");
    assert_eq!((outputs, raw_controls), (3, 0));
}
