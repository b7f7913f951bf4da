//! The handoff an agent leaves (`handoffs/handoff-<ts>-<id>-to-ORCHESTRATOR.json`), read by
//! the supervisor and `corral aggregate`; and the JSON an agent hands to `corral handoff` /
//! the MCP tool, checked by `validate_handoff_value` before it is written.
//!
//! Invariants: no panic on any input; a file error names the file on one line; the field
//! check and the full parse agree (a file the parser accepts passes the field check); an
//! accepted handoff has the promised shape, and what `write_handoff` would write (pretty
//! JSON) is accepted again, with the same content, by the parser and the field check.

#![no_main]

mod common;

use corral::protocol::AgentId;
use corral::protocol::agent_side::handoff_from_json;
use corral::protocol::files::{self, Handoff};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::path::Path;

const PATH: &str = "handoffs/handoff-20260101T000000.000Z-agent-001-FUZZ-to-ORCHESTRATOR.json";
const CALLER: &str = "agent-001-FUZZ";

fuzz_target!(|data: &[u8]| {
    let Some(text) = common::as_file_text(data) else { return };
    let path = Path::new(PATH);
    let parsed = files::parse_handoff(text, path);
    let value = serde_json::from_str::<Value>(text).ok();

    // The field check on its own: what `corral handoff --json` and the MCP tool run.
    if let Some(v) = &value {
        let checked = files::validate_handoff_value(v);
        if let Err(e) = &checked {
            common::assert_one_line("handoff field error", e);
            assert!(parsed.is_err(), "field check refused what the parser accepted: {e}");
        }
        let caller = AgentId::parse(CALLER).unwrap();
        if let Ok(h) = handoff_from_json(v.clone(), &caller) {
            assert_eq!(h.from_agent, CALLER, "handoff written for someone else");
            round_trip(&h);
        }
    }

    match parsed {
        Err(e) => {
            assert!(e.starts_with(PATH), "error does not name the file: {e:?}");
            common::assert_one_line("handoff error", &e);
        }
        Ok(h) => {
            assert!(value.is_some(), "a handoff the parser accepted is not JSON");
            round_trip(&h);
        }
    }
});

fn check_shape(h: &Handoff) {
    assert!(!h.from_agent.is_empty(), "empty fromAgent accepted");
    for f in &h.deliverables.findings {
        assert!(f.is_string() || f.is_object(), "finding {f} accepted");
    }
    if let Some(m) = &h.memory_candidate {
        assert!(m.is_object() || m.is_array(), "memoryCandidate {m} accepted");
    }
    for known in ["fromAgent", "toAgent", "status", "deliverables", "memoryCandidate"] {
        assert!(!h.extra.contains_key(known), "known field {known} kept as an unknown one");
    }
    for known in ["files", "findings", "decisions"] {
        assert!(!h.deliverables.extra.contains_key(known), "known field deliverables.{known} kept as unknown");
    }
}

fn round_trip(h: &Handoff) {
    check_shape(h);
    let path = Path::new(PATH);
    let before = serde_json::to_value(h).expect("an accepted handoff serializes");
    files::validate_handoff_value(&before).unwrap_or_else(|e| panic!("field check refuses a written handoff: {e}"));
    let written = String::from_utf8(serde_json::to_vec_pretty(h).unwrap()).unwrap();
    let again =
        files::parse_handoff(&written, path).unwrap_or_else(|e| panic!("written handoff refused: {e}\n{written}"));
    check_shape(&again);
    let after = serde_json::to_value(&again).unwrap();
    assert!(common::same_json(&before, &after), "rewrite changed the handoff:\n{before}\n{after}");
}
