//! Hostile scenarios: files. Agents replace the files and directories corral opens under
//! the data dir (logs, status files, handoffs, inboxes, run files, export companions, whole
//! directories) with symlinks to a file outside, hard links, FIFOs and devices, and list
//! deliverables that lead out of the workspace. corral must never write outside, never
//! hang, never copy an outside file into a view or a context, and still see every other
//! agent's reports.
//!
//! Every corral command runs under a timeout: a hang is counted, not waited out.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "[health]\nmax_concurrent = 100\nbreaker_failures = 0\n\
                      [defaults]\nbackoff = { initial = \"100ms\" }\nmax_retries = 2\n\
                      [[classify]]\nexit_codes = [75]\naction = \"retry\"\n";

const SECRET: &[u8] = b"export API_KEY=SECRET-VALUE-never-copied\n";

/// A file outside the data dir (and the workspace) that must stay byte-identical.
struct Outside {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Outside {
    fn new(content: &[u8]) -> Self {
        let dir = tempfile::Builder::new().prefix("corral-outside").tempdir().unwrap();
        let file = dir.path().join("bashrc");
        std::fs::write(&file, content).unwrap();
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        Self { file, dir: sub, _dir: dir }
    }
    /// Bytes that differ from what was there, plus anything created in the outside dir.
    fn bytes_written(&self, original: &[u8]) -> usize {
        let now = std::fs::read(&self.file).unwrap_or_default();
        let changed = if now == original { 0 } else { now.len().max(1) };
        let created: usize = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().map(|e| e.metadata().map(|m| m.len() as usize).unwrap_or(0).max(1)).sum())
            .unwrap_or(0);
        changed + created
    }
}

/// `corral ARGS` with a time limit; `None` when it hung (it is killed).
fn run_t(ws: &Ws, args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = ws.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
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

/// Counts hangs of corral commands and hands back their output.
#[derive(Default)]
struct Hangs(usize);

impl Hangs {
    fn json(&mut self, ws: &Ws, args: &[&str]) -> Value {
        match run_t(ws, args, SECS(10)) {
            Some(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            Some(o) => panic!("corral {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            None => {
                self.0 += 1;
                Value::Null
            }
        }
    }
    fn text(&mut self, ws: &Ws, args: &[&str]) -> String {
        match run_t(ws, args, SECS(10)) {
            Some(o) => String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
            None => {
                self.0 += 1;
                String::new()
            }
        }
    }
    fn spawn(&mut self, ws: &Ws, env: &[(&str, &str)], script: &str) -> String {
        let mut args = vec!["spawn", "--role", "R", "--task", "hostile"];
        let envs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &envs {
            args.push("--env");
            args.push(e);
        }
        args.extend(["--", "sh", "-c", script]);
        let o = run_t(ws, &args, SECS(10));
        match o {
            Some(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Some(o) => panic!("spawn: {}", String::from_utf8_lossy(&o.stderr)),
            None => {
                self.0 += 1;
                panic!("spawn hung")
            }
        }
    }
    fn wait_state(&mut self, ws: &Ws, id: &str, states: &[&str]) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(SECS(15), || {
            last = self.json(ws, &["status", id, "--json"])[0].clone();
            states.contains(&last["status"].as_str().unwrap_or(""))
        });
        assert!(ok, "{id} never reached {states:?}: {last}");
        last
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An agent replaces its log with a symlink to (or a hard link of) a file outside and
/// exits 75: the retry's output goes to a fresh log, the outside file is untouched.
#[test]
fn files_log_symlink_and_hard_link() {
    let ws = Ws::with_config(Some(CONFIG));
    let out = Outside::new(SECRET);
    let mut hangs = Hangs::default();
    let script = r#"log="$CORRAL_DATA_DIR/logs/$CORRAL_AGENT_ID.log"
        if [ "$CORRAL_ATTEMPT" = 1 ]; then rm -f "$log"; $LINK "$OUTSIDE" "$log"; exit 75; fi
        echo "second attempt output"; exit 0"#;
    let file = s(&out.file);
    let sym = hangs.spawn(&ws, &[("OUTSIDE", &file), ("LINK", "ln -s")], script);
    let hard = hangs.spawn(&ws, &[("OUTSIDE", &file), ("LINK", "ln")], script);
    let mut kept = 0;
    for id in [&sym, &hard] {
        hangs.wait_state(&ws, id, &["complete"]);
        let logs = hangs.text(&ws, &["logs", id]);
        kept += usize::from(logs.contains("second attempt output"));
        let log = ws.data.join(format!("logs/{id}.log"));
        let m = std::fs::symlink_metadata(&log).unwrap();
        assert!(m.is_file() && std::os::unix::fs::MetadataExt::nlink(&m) == 1, "{id}: log not replaced");
    }
    let written = out.bytes_written(SECRET);
    println!("HOSTILE files-log-links outside_bytes_written={written} hangs={} output_lost={}", hangs.0, 2 - kept);
    assert_eq!((written, hangs.0, kept), (0, 0, 2));
}

/// Status files and handoffs as a FIFO, a symlink to /dev/zero and a symlink to an outside
/// file holding valid JSON: reported unreadable, never read into a view or a report.
#[test]
fn files_status_and_handoff_planted() {
    let ws = Ws::with_config(Some(CONFIG));
    let status_secret = br#"{"agentId":"X","status":"active","phase":"SECRETPHASE","findings":["SECRETFINDING"]}"#;
    let out = Outside::new(status_secret);
    let handoff_secret = Outside::new(br#"{"fromAgent":"X","deliverables":{"findings":["SECRETHANDOFF"]}}"#);
    let mut hangs = Hangs::default();
    let plant = [
        ("fifo", r#"mkfifo "$CORRAL_STATUS_FILE"; mkfifo "$CORRAL_HANDOFF_FILE""#.to_string()),
        ("zero", r#"ln -s /dev/zero "$CORRAL_STATUS_FILE"; ln -s /dev/zero "$CORRAL_HANDOFF_FILE""#.to_string()),
        (
            "secret",
            format!(
                r#"ln -s {} "$CORRAL_STATUS_FILE"; ln -s {} "$CORRAL_HANDOFF_FILE""#,
                s(&out.file),
                s(&handoff_secret.file)
            ),
        ),
    ];
    let mut ids = Vec::new();
    for (_, p) in &plant {
        // The planted id goes in the file so its agentId check cannot be what refuses it.
        let script = format!("rm -f \"$CORRAL_STATUS_FILE\"; {p}; sleep 30");
        ids.push(hangs.spawn(&ws, &[], &script));
    }
    let other = hangs.spawn(&ws, &[], "corral report --status active --progress 0.4; sleep 30");
    for id in &ids {
        let ok = wait_until(SECS(10), || {
            hangs.json(&ws, &["status", id, "--json"])[0]["anomalies"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "UNREADABLE"))
        });
        assert!(ok, "{id} never UNREADABLE");
    }
    assert!(wait_until(SECS(10), || hangs.json(&ws, &["status", &other, "--json"])[0]["progress"] == 0.4));
    let mut leaked = 0;
    for id in &ids {
        let views = hangs.text(&ws, &["show", id, "--json"]) + &hangs.text(&ws, &["status"]);
        leaked += views.matches("SECRET").count();
    }
    let report = hangs.text(&ws, &["aggregate", "--json"]);
    leaked += report.matches("SECRETHANDOFF").count();
    for id in ids.iter().chain([&other]) {
        hangs.text(&ws, &["kill", id]);
    }
    let written = out.bytes_written(status_secret);
    println!(
        "HOSTILE files-status-handoff-planted outside_bytes_written={written} hangs={} secrets_in_views={leaked}",
        hangs.0
    );
    assert_eq!((written, hangs.0, leaked), (0, 0, 0));
}

/// Inboxes replaced by a FIFO, a symlink to /dev/zero and a symlink to an outside file,
/// read into the retry's context, also by a restarted supervisor: nothing hangs, nothing
/// bloats, the outside file never reaches a context.
#[test]
fn files_inbox_planted_across_restart() {
    let ws = Ws::with_config(Some(CONFIG));
    let out = Outside::new(SECRET);
    let mut hangs = Hangs::default();
    let plants = ["mkfifo \"$inbox\"", "ln -s /dev/zero \"$inbox\"", &format!("ln -s {} \"$inbox\"", s(&out.file))];
    let ctx_dir = out.dir.parent().unwrap().join("contexts");
    std::fs::create_dir(&ctx_dir).unwrap();
    let mut ids = Vec::new();
    for p in plants {
        let script = format!(
            r#"inbox="$CORRAL_INBOX_FILE"
            cp "$CORRAL_CONTEXT_FILE" "{ctx}/$CORRAL_AGENT_ID.$CORRAL_ATTEMPT"
            if [ ! -e "{ctx}/$CORRAL_AGENT_ID.planted" ]; then rm -f "$inbox"; {p}; touch "{ctx}/$CORRAL_AGENT_ID.planted"; exit 75; fi
            exit 0"#,
            ctx = s(&ctx_dir)
        );
        ids.push(hangs.spawn(&ws, &[], &script));
    }
    for id in &ids {
        hangs.wait_state(&ws, id, &["complete"]);
    }
    // Planted again while no supervisor runs; the next one reads them on a retry.
    hangs.text(&ws, &["daemon", "stop"]);
    for (id, p) in ids.iter().zip(plants) {
        let inbox = ws.data.join(format!("inbox/{id}.md"));
        let _ = std::fs::remove_file(&inbox);
        let _ = std::fs::remove_file(ctx_dir.join(format!("{id}.planted")));
        Command::new("sh").arg("-c").arg(p).env("inbox", &inbox).status().unwrap();
    }
    for id in &ids {
        hangs.text(&ws, &["retry", id]);
    }
    for id in &ids {
        hangs.wait_state(&ws, id, &["complete"]);
        let told = hangs.text(&ws, &["tell", id, "still there?"]);
        assert!(!told.contains("error"), "{told}");
    }
    let mut leaked = 0;
    let mut largest = 0;
    for e in std::fs::read_dir(&ctx_dir).unwrap().flatten() {
        let text = std::fs::read(e.path()).unwrap();
        largest = largest.max(text.len());
        leaked += String::from_utf8_lossy(&text).matches("SECRET-VALUE").count();
    }
    let bloated = usize::from(largest > 256 * 1024);
    let written = out.bytes_written(SECRET);
    println!(
        "HOSTILE files-inbox-planted outside_bytes_written={written} hangs={} secrets_in_contexts={leaked} \
         contexts_bloated={bloated}",
        hangs.0
    );
    assert_eq!((written, hangs.0, leaked, bloated), (0, 0, 0, 0));
}

/// Run files and the exports' temporary and `.swap` companions planted as symlinks to an
/// outside file before the supervisor writes them.
#[test]
fn files_run_and_export_companions_planted() {
    let ws = Ws::with_config(Some(CONFIG));
    let out = Outside::new(SECRET);
    let mut hangs = Hangs::default();
    std::fs::create_dir_all(ws.data.join("run")).unwrap();
    use std::os::unix::fs::symlink;
    for name in [".spawn-registry.json.swap", ".escalations.txt.swap", "spawn-registry.json", "daemon.lock"] {
        symlink(&out.file, ws.data.join(name)).unwrap();
    }
    for n in 1..=3 {
        symlink(&out.file, ws.data.join(format!("run/agent-900-R.{n}.run"))).unwrap();
        symlink(&out.file, ws.data.join(format!("run/agent-900-R.{n}.out"))).unwrap();
    }
    symlink(&out.file, ws.data.join("run/agent-900-R.report.lock")).unwrap();
    let o = run_t(
        &ws,
        &[
            "spawn",
            "--role",
            "R",
            "--task",
            "t",
            "--id",
            "agent-900-R",
            "--",
            "sh",
            "-c",
            "corral report --progress 0.5",
        ],
        SECS(10),
    );
    let o = o.expect("spawn hung");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let failing = hangs.spawn(&ws, &[], "exit 3");
    hangs.wait_state(&ws, "agent-900-R", &["complete"]);
    hangs.wait_state(&ws, &failing, &["escalated", "failed"]);
    let registry_ok = wait_until(SECS(5), || {
        std::fs::read_to_string(ws.data.join("spawn-registry.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.as_array().map(|a| a.len()))
            == Some(2)
    });
    let written = out.bytes_written(SECRET);
    println!(
        "HOSTILE files-run-export-planted outside_bytes_written={written} hangs={} registry_unreadable={}",
        hangs.0,
        usize::from(!registry_ok)
    );
    assert_eq!((written, hangs.0, registry_ok), (0, 0, true));
}

/// One agent replaces `agent-status/` (rm + mkdir, then a symlink to a directory outside):
/// the other agents' later reports are still seen, and nothing lands outside.
#[test]
fn files_status_dir_replaced() {
    let ws = Ws::with_config(Some(CONFIG));
    let out = Outside::new(SECRET);
    let mut hangs = Hangs::default();
    let marks = out.dir.parent().unwrap().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let replace = [
        r#"rm -rf "$CORRAL_DATA_DIR/agent-status"; mkdir "$CORRAL_DATA_DIR/agent-status""#.to_string(),
        format!(
            r#"mv "$CORRAL_DATA_DIR/agent-status" "$CORRAL_DATA_DIR/moved"; ln -s {} "$CORRAL_DATA_DIR/agent-status""#,
            s(&out.dir)
        ),
    ];
    let mut missed = 0;
    for (round, r) in replace.iter().enumerate() {
        let mark = marks.join(format!("m{round}"));
        let reporter = hangs.spawn(
            &ws,
            &[],
            &format!(
                "while [ ! -e {m} ]; do sleep 0.02; done; sleep 0.3; corral report --status active --progress 0.{p}; sleep 30",
                m = s(&mark),
                p = round + 6
            ),
        );
        let vandal = hangs.spawn(&ws, &[], &format!("{r}; touch {}; sleep 30", s(&mark)));
        let want = format!("0.{}", round + 6).parse::<f64>().unwrap();
        if !wait_until(SECS(10), || hangs.json(&ws, &["status", &reporter, "--json"])[0]["progress"] == want) {
            missed += 1;
        }
        for id in [&reporter, &vandal] {
            hangs.text(&ws, &["kill", id]);
        }
    }
    let m = std::fs::symlink_metadata(ws.data.join("agent-status")).unwrap();
    assert!(m.is_dir(), "agent-status is a real directory again");
    let written = out.bytes_written(SECRET);
    println!(
        "HOSTILE files-status-dir-replaced outside_bytes_written={written} hangs={} reports_missed={missed}",
        hangs.0
    );
    assert_eq!((written, hangs.0, missed), (0, 0, 0));
}

/// A deliverable that is a symlink pointing out of the workspace: the supervisor's
/// completion check and `aggregate` both flag it; neither counts it as delivered.
#[test]
fn files_deliverable_symlink_out() {
    let ws = Ws::with_config(Some("[health]\nbreaker_failures = 0\n[defaults]\nmax_retries = 0\n"));
    let out = Outside::new(SECRET);
    let mut hangs = Hangs::default();
    let script = format!(
        "ln -sf {} leak.txt; echo fine > ok.txt; corral handoff --deliverable leak.txt --deliverable ok.txt",
        s(&out.file)
    );
    let id = hangs.spawn(&ws, &[], &script);
    let end = hangs.wait_state(&ws, &id, &["escalated", "failed", "complete"]);
    let shown = hangs.text(&ws, &["show", &id, "--json"]);
    let supervisor_flagged = end["status"] != "complete" && shown.contains("leak.txt") && shown.contains("symlink");
    // Exit 1: the result is partial (the agent is not complete); the report is still there.
    // aggregate looks at handoffs of complete agents, and at handoffs of agents the
    // supervisor does not know: one such, listing the files the agent made.
    let handoff = ws.data.join("handoffs/handoff-20260101T000000.000Z-agent-999-X-to-ORCHESTRATOR.json");
    std::fs::write(&handoff, r#"{"fromAgent":"agent-999-X","deliverables":{"files":["leak.txt","ok.txt"]}}"#).unwrap();
    let report: Value = match run_t(&ws, &["aggregate", "--json"], SECS(10)) {
        Some(o) => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
        None => {
            hangs.0 += 1;
            Value::Null
        }
    };
    let files = report["deliverables"]
        .as_array()
        .and_then(|d| d.iter().find(|a| a["agent"] == "agent-999-X"))
        .and_then(|a| a["files"].as_array().cloned())
        .unwrap_or_default();
    let state = |name: &str| files.iter().find(|f| f["listed"] == name).map(|f| f["state"].clone());
    let aggregate_flagged =
        state("leak.txt") == Some("outside_workspace".into()) && state("ok.txt") == Some("exists".into());
    let leaked = report.to_string().matches("SECRET-VALUE").count();
    let written = out.bytes_written(SECRET);
    println!(
        "HOSTILE files-deliverable-symlink outside_bytes_written={written} hangs={} supervisor_missed={} \
         aggregate_missed={} secrets_in_report={leaked}",
        hangs.0,
        usize::from(!supervisor_flagged),
        usize::from(!aggregate_flagged)
    );
    assert!(supervisor_flagged, "{end}\n{shown}");
    assert!(aggregate_flagged, "{report}");
    assert_eq!((written, hangs.0, leaked), (0, 0, 0));
}
