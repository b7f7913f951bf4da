//! Hostile scenarios: terminal. Agents put terminal controls (OSC title, CSI clear screen,
//! 8-bit CSI, bidi overrides, line separators) and line breaks into everything a human
//! later reads: the task, phase, milestone, findings, a blocker, a handoff, the command
//! line of the log header. Every human face (`status`, `show`, `escalations`, `aggregate`,
//! `health`, `memory`, `wait`, `logs`, `monitor`) must show them escaped, on the line they
//! belong to, and `escalations.txt` must hold one line per escalation.

use crate::common::*;
use std::process::Output;
use std::time::Duration;

const PHASE: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
const MILESTONE: &str = "m\u{202e}dlrow\u{2028}x";
const FINDING: &str = "ok\u{1b}[31mRED\u{9b}2J\nFORGED finding line";
const BLOCKER: &str = "sandbox down\nFORGED escalation line\r\u{1b}[1A\u{85}";
const TASK: &str = "fix it\u{1b}]8;;http://evil\u{7}click\u{1b}]8;;\u{7}\nFORGED task line";

const CONFIG: &str = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n[defaults]\nmax_retries = 0\n";

/// Bytes that act on a terminal or split a value: C0 controls other than the newline
/// ending a line, DEL, and the UTF-8 forms of C1 controls, bidi controls and the
/// line/paragraph separators.
fn raw_control_bytes(out: &[u8]) -> usize {
    let text = String::from_utf8_lossy(out);
    text.chars()
        .filter(|&c| {
            (c < ' ' && c != '\n')
                || ('\u{7f}'..='\u{9f}').contains(&c)
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{61c}')
                || matches!(c, '\u{2028}' | '\u{2029}')
        })
        .count()
}

/// Lines an agent made start: the hostile texts put `FORGED` right after a line break.
fn forged_lines(out: &[u8]) -> usize {
    String::from_utf8_lossy(out).lines().filter(|l| l.trim_start().starts_with("FORGED")).count()
}

struct Tally {
    raw: usize,
    forged: usize,
    faces: usize,
}

impl Tally {
    fn check(&mut self, face: &str, o: &Output) {
        let (raw, forged) = (
            raw_control_bytes(&o.stdout) + raw_control_bytes(&o.stderr),
            forged_lines(&o.stdout) + forged_lines(&o.stderr),
        );
        if raw + forged > 0 {
            eprintln!(
                "{face}: {raw} raw control bytes, {forged} forged lines:\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        self.raw += raw;
        self.forged += forged;
        self.faces += 1;
    }
}

/// Two agents: one reports hostile progress and hands off hostile findings; the other
/// reports a hostile blocker and exits, so a human is asked with that blocker as reason.
fn hostile_workspace() -> (Ws, String, String) {
    let ws = Ws::with_config(Some(CONFIG));
    let writer = ws.ok(&[
        "spawn",
        "--role",
        "WRITER",
        "--task",
        TASK,
        "--",
        "sh",
        "-c",
        "corral report --status active --progress 0.5 --phase \"$1\" --milestone \"$2\" --finding \"$3\"; \
         corral handoff --finding \"$3\" --decision \"$1\" --memory \"$2\" --deliverable \"$2\"",
        "sh",
        PHASE,
        MILESTONE,
        FINDING,
    ]);
    let blocked = ws.ok(&[
        "spawn",
        "--role",
        "BLOCKED",
        "--task",
        TASK,
        "--",
        "sh",
        "-c",
        "corral report --status blocked --phase \"$1\" --finding \"$2\"; exit 0",
        "sh",
        PHASE,
        BLOCKER,
    ]);
    let (writer, blocked) = (writer.trim().to_string(), blocked.trim().to_string());
    ws.wait_state(&writer, &["complete", "failed", "escalated"], SECS(20));
    let v = ws.wait_state(&blocked, &["blocked", "escalated", "failed", "complete"], SECS(20));
    assert!(v["needsHuman"] == true, "the blocked agent with no process left needs a human: {v}");
    (ws, writer, blocked)
}

#[test]
fn agent_text_is_escaped_in_every_human_face() {
    let (ws, writer, blocked) = hostile_workspace();
    let mut t = Tally { raw: 0, forged: 0, faces: 0 };
    let faces: Vec<(&str, Vec<&str>)> = vec![
        ("status", vec!["status"]),
        ("status-filtered", vec!["status", "--status", "needs-human"]),
        ("show-writer", vec!["show", &writer]),
        ("show-blocked", vec!["show", &blocked]),
        ("escalations", vec!["escalations"]),
        ("escalations-all", vec!["escalations", "--all"]),
        ("aggregate", vec!["aggregate"]),
        ("health", vec!["health"]),
        ("memory", vec!["memory"]),
        ("wait", vec!["wait", "--all", "--timeout", "5s"]),
        ("logs", vec!["logs", &writer]),
    ];
    for (face, args) in &faces {
        let o = ws.run(args);
        t.check(face, &o);
    }
    // Shown, not dropped: the title sequence is there, as visible text.
    let status = ws.ok(&["status"]);
    assert!(status.contains("\\e]0;PWNED"), "the phase is shown escaped: {status}");
    let show = ws.ok(&["show", &writer]);
    assert!(show.contains("\\e[31mRED\\u{9b}2J\\nFORGED"), "the finding is shown escaped: {show}");
    // The file an agent's --out writes is escaped the same way.
    let md = ws.path().join("report.md");
    ws.run(&["aggregate", "--out", md.to_str().unwrap()]);
    let md = std::fs::read(&md).unwrap();
    t.raw += raw_control_bytes(&md);
    t.forged += forged_lines(&md);
    t.faces += 1;
    // JSON keeps the real text.
    assert_eq!(ws.agent(&writer)["phase"], PHASE);

    // escalations.txt: one line per open escalation, whatever the reason holds.
    let open = ws.json(&["escalations", "--json"]).as_array().unwrap().len();
    let mut lines = 0;
    assert!(
        wait_until(SECS(5), || {
            let text = std::fs::read(ws.data.join("escalations.txt")).unwrap_or_default();
            lines = text.iter().filter(|&&b| b == b'\n').count();
            lines == open && open > 0
        }),
        "escalations.txt holds {lines} lines for {open} open escalations"
    );
    let text = std::fs::read(ws.data.join("escalations.txt")).unwrap();
    t.raw += raw_control_bytes(&text);
    t.forged += forged_lines(&text);
    let forged_export = lines.saturating_sub(open);

    println!(
        "HOSTILE terminal-faces raw_control_bytes={} forged_lines={} faces={} escalations={open} export_lines={lines}",
        t.raw,
        t.forged + forged_export,
        t.faces
    );
    assert_eq!(t.raw, 0, "raw control bytes reached a human face");
    assert_eq!(t.forged + forged_export, 0, "agent text forged a line");
}

#[test]
fn monitor_shows_agent_text_without_obeying_it() {
    if std::process::Command::new("tmux").arg("-V").output().is_err() {
        println!("HOSTILE terminal-monitor SKIPPED: tmux is not installed (./scripts/test.sh installs it)");
        return;
    }
    let (ws, _writer, _blocked) = hostile_workspace();
    let socket = format!("corral-hostile-{}", std::process::id());
    let cmd = format!(
        "cd {} && PATH={}:$PATH {} monitor",
        ws.path().display(),
        bin().parent().unwrap().display(),
        bin().display()
    );
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux").arg("-L").arg(&socket).args(args).env_remove("TMUX").output().unwrap()
    };
    let started = tmux(&["new-session", "-d", "-s", "m", "-x", "120", "-y", "30", &cmd]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "m"]).stdout).into_owned();
    let mut last = String::new();
    let drawn = wait_until(SECS(10), || {
        last = screen();
        last.contains("\\e]0;PWNED") && last.contains("sandbox down")
    });
    let title =
        String::from_utf8_lossy(&tmux(&["display-message", "-p", "-t", "m", "#{pane_title}"]).stdout).into_owned();
    let _ = tmux(&["send-keys", "-t", "m", "q"]);
    std::thread::sleep(Duration::from_millis(200));
    let _ = tmux(&["kill-server"]);
    let forged = last.lines().filter(|l| l.trim_start().starts_with("FORGED")).count();
    let retitled = usize::from(title.contains("PWNED"));
    println!(
        "HOSTILE terminal-monitor raw_control_bytes={retitled} forged_lines={forged} shown_escaped={}",
        usize::from(drawn)
    );
    assert!(drawn, "the dashboard shows the hostile phase escaped and the escalation:\n{last}");
    assert_eq!(retitled, 0, "an agent's phase set the terminal title: {title}");
    assert_eq!(forged, 0, "agent text forged a line on the dashboard:\n{last}");
}
