//! Agent ids and role names: they become file names under the data dir (status file, log,
//! context, inbox, handoff, attempt records), so validation is the only thing between an
//! id from a request, an MCP call or a file name and a path outside it.
//!
//! Invariants: no panic; `AgentId::parse` never accepts an id with '/', "..", a NUL, or a
//! leading '.', nor one that is not a single path component; `validate_id` and
//! `AgentId::parse` agree; every valid role is a valid id; the files named after an
//! accepted id stay directly in their directory, and the owner read back from a handoff
//! file name is the id itself; the id of an agent generated for a valid role is valid.

#![no_main]

mod common;

use corral::protocol::ids::{validate_id, validate_role};
use corral::protocol::{AgentId, DataDir};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    // Ids arrive as UTF-8 (JSON, argv through clap, file names through `to_str`).
    let Ok(s) = std::str::from_utf8(data) else { return };

    let parsed = AgentId::parse(s);
    assert_eq!(parsed.is_ok(), validate_id(s).is_ok(), "AgentId::parse and validate_id disagree on {s:?}");
    match &parsed {
        Err(e) => common::assert_one_line("id error", &format!("{e}")),
        Ok(id) => {
            assert_eq!(id.as_str(), s);
            common::check_accepted_id(s);
            files_stay_inside(id);
        }
    }

    match validate_role(s) {
        Err(e) => common::assert_one_line("role error", &format!("{e}")),
        Ok(()) => {
            assert!(!s.contains('.'), "role with '.' accepted: {s:?}");
            assert!(parsed.is_ok(), "role {s:?} is valid but not as an id");
            for n in [0, 1, 42, 999, 1000, 123_456, u64::MAX] {
                let g = AgentId::generated(n, s);
                assert!(
                    validate_id(g.as_str()).is_ok(),
                    "generated id {g} for valid role {s:?} is not a valid id: {}",
                    validate_id(g.as_str()).unwrap_err()
                );
            }
        }
    }
});

fn files_stay_inside(id: &AgentId) {
    let data = DataDir::new(PathBuf::from("/ws/.corral"));
    let direct = |f: PathBuf, dir: PathBuf| {
        assert_eq!(f.parent(), Some(dir.as_path()), "{} escapes {}", f.display(), dir.display());
    };
    direct(data.status_file(id), data.status_dir());
    direct(data.log_file(id), data.log_dir());
    direct(data.context_file(id), data.context_dir());
    direct(data.inbox_file(id), data.inbox_dir());
    direct(data.attempt_file(id, 1, "exit"), data.run_dir());
    let h = data.handoff_file(id, "20260101T000000.000Z");
    direct(h.clone(), data.handoff_dir());
    let name = h.file_name().and_then(|n| n.to_str()).unwrap();
    assert_eq!(DataDir::handoff_owner(name), Some(id.as_str()), "handoff file {name} read back as someone else's");
    let status = data.status_file(id);
    let stem = status.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
    assert_eq!(stem, Some(id.as_str()));
}
