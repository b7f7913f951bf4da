//! The status file an agent writes (`agent-status/<id>.json`), read by the supervisor,
//! `corral status` and rewritten by `corral report`.
//!
//! Invariants: no panic on any input; an error names the file on one line; an accepted
//! file has the shape the protocol promises, and what `corral report` would write back
//! (pretty JSON, as `write_json_atomic` does) is accepted again with the same content.

#![no_main]

mod common;

use corral::protocol::files::{self, ReportedStatus, StatusFile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const PATH: &str = "agent-status/agent-001-FUZZ.json";

fuzz_target!(|data: &[u8]| {
    let Some(text) = common::as_file_text(data) else { return };
    let path = Path::new(PATH);
    let s = match files::parse_status(text, path) {
        Ok(s) => s,
        Err(e) => {
            assert!(e.starts_with(PATH), "error does not name the file: {e:?}");
            common::assert_one_line("status file error", &e);
            return;
        }
    };
    check_shape(&s);
    // The supervisor reads lastUpdate; any string must be handled.
    if let Some(t) = &s.last_update {
        let _ = corral::protocol::time::parse(t);
    }

    let before = serde_json::to_value(&s).expect("an accepted status file serializes");
    for rewritten in [serde_json::to_vec_pretty(&s), serde_json::to_vec(&s)] {
        let rewritten = rewritten.expect("an accepted status file serializes");
        let rewritten = String::from_utf8(rewritten).expect("serde_json writes UTF-8");
        let again = files::parse_status(&rewritten, path)
            .unwrap_or_else(|e| panic!("rewritten status file refused: {e}\n{rewritten}"));
        check_shape(&again);
        let after = serde_json::to_value(&again).unwrap();
        assert!(common::same_json(&before, &after), "rewrite changed the status file:\n{before}\n{after}");
    }
});

fn check_shape(s: &StatusFile) {
    assert_eq!(ReportedStatus::parse(s.status.as_str()), Some(s.status));
    if let Some(p) = s.progress {
        assert!((0.0..=1.0).contains(&p), "progress {p} accepted");
    }
    for f in &s.findings {
        assert!(f.is_string() || f.is_object(), "finding {f} accepted");
    }
    for known in ["agentId", "role", "status", "progress", "phase", "milestone", "lastUpdate", "findings"] {
        assert!(!s.extra.contains_key(known), "known field {known} kept as an unknown one");
    }
}
