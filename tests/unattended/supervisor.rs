//! Unattended scenarios: supervisor. The file watch is the fast path; a slow periodic
//! reconcile backs it up, so an event the supervisor never hears (here a status file
//! rewritten through a hard link in a directory no watch covers) delays a decision by at most
//! `reconcile_interval`, never forever.

use crate::common::*;
use std::time::{Duration, Instant};

/// Rewrites agent `id`'s status file through a hard link outside `agent-status/` with `phase`,
/// so no watch on the status directory sees the write.
fn write_unseen(ws: &Ws, id: &str, phase: &str) {
    let file = ws.data.join("agent-status").join(format!("{id}.json"));
    let hidden_dir = ws.path().join("elsewhere");
    std::fs::create_dir_all(&hidden_dir).unwrap();
    let link = hidden_dir.join(format!("{id}.json"));
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&file, &link).unwrap();
    let text = std::fs::read_to_string(&link).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["phase"] = phase.into();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&link).unwrap();
    f.write_all(v.to_string().as_bytes()).unwrap();
    drop(f);
    std::fs::remove_file(&link).unwrap();
}

/// Spawns a reporting agent, waits for its first report, rewrites it unseen, and returns how
/// long (up to `limit`) until `status` shows the new phase; `None` if it never did.
fn delay_of_unseen_write(config: &str, limit: Duration) -> Option<Duration> {
    let ws = Ws::with_config(Some(config));
    let id = ws.spawn("R", &["sh", "-c", "corral report --status active --phase seen; sleep 20"]);
    assert!(wait_until(SECS(10), || ws.agent(&id)["phase"] == "seen"), "the first report is seen: {}", ws.agent(&id));
    write_unseen(&ws, &id, "unseen");
    let t = Instant::now();
    let shown = wait_until(limit, || ws.agent(&id)["phase"] == "unseen");
    ws.ok(&["kill", &id, "--grace", "0s"]);
    shown.then(|| t.elapsed())
}

#[test]
fn a_missed_status_event_is_found_by_the_periodic_reconcile() {
    // The control: with the default period (30s) the write stays unseen for seconds, so the
    // watch really missed it. (A loop held up past its timer under load reads every status
    // file again on its own; one quiet run of three is enough to show the watch is blind.)
    let mut control = None;
    for _ in 0..3 {
        control = delay_of_unseen_write(RELAXED, SECS(3));
        if control.is_none() {
            break;
        }
    }
    // With a 1s period it is found within that period (plus the time to look).
    let config = format!("{RELAXED}[supervisor]\nreconcile_interval = \"1s\"\n");
    let found = delay_of_unseen_write(&config, SECS(10));
    let missed_forever = usize::from(found.is_none());
    let late = usize::from(found.is_some_and(|d| d > SECS(3)));
    println!(
        "UNATTENDED missed_event_reconciled control_seen_by_watch={} missed_forever={missed_forever} \
         late={late} delay_ms={}",
        usize::from(control.is_some()),
        found.map_or(0, |d| d.as_millis())
    );
    assert!(control.is_none(), "the watch saw the write after all ({control:?}): the scenario proves nothing");
    assert_eq!((missed_forever, late), (0, 0), "found after {found:?}");
}
