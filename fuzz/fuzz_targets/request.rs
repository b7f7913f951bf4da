//! Control-socket request lines, as the supervisor reads them (src/supervisor/server.rs):
//! the stream is cut at '\n' and each line goes to `serde_json::from_slice::<Request>`;
//! then the ids and roles it carries are checked with `AgentId::parse` / `validate_role`.
//!
//! Invariants: no panic on any line; the error reply for a malformed line is one JSON
//! line; an accepted request, written as the CLI writes it (`serde_json::to_vec`), is one
//! line that the supervisor accepts again as the same request; every id that
//! `AgentId::parse` accepts on the way is a safe file name.

#![no_main]

mod common;

use corral::ipc::{MAX_REQUEST_BYTES, Reply, Request};
use corral::protocol::AgentId;
use corral::protocol::ids::{validate_id, validate_role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        if line.len() > MAX_REQUEST_BYTES {
            continue;
        }
        match serde_json::from_slice::<Request>(line) {
            Err(e) => {
                let reply = serde_json::to_vec(&Reply::err(2, format!("malformed request: {e}"))).unwrap();
                assert!(!reply.contains(&b'\n'), "error reply spans several lines");
            }
            Ok(req) => {
                round_trip(&req);
                check_names(&req);
            }
        }
    }
});

fn round_trip(req: &Request) {
    let sent = serde_json::to_vec(req).expect("an accepted request serializes");
    assert!(!sent.contains(&b'\n'), "request line holds a newline: {}", String::from_utf8_lossy(&sent));
    let again = serde_json::from_slice::<Request>(&sent)
        .unwrap_or_else(|e| panic!("request refused after a round trip: {e}\n{}", String::from_utf8_lossy(&sent)));
    let resent = serde_json::to_vec(&again).unwrap();
    assert_eq!(sent, resent, "request changed in a round trip");
}

fn id(s: &str) {
    let by_parse = AgentId::parse(s);
    assert_eq!(by_parse.is_ok(), validate_id(s).is_ok(), "AgentId::parse and validate_id disagree on {s:?}");
    if let Ok(a) = by_parse {
        assert_eq!(a.as_str(), s);
        common::check_accepted_id(s);
    }
}

fn check_names(req: &Request) {
    match req {
        Request::Spawn(s) => {
            let _ = validate_role(&s.role);
            s.after.iter().for_each(|a| id(a));
            if let Some(i) = &s.id {
                id(i);
            }
        }
        Request::Status { ids, role } => {
            ids.iter().for_each(|a| id(a));
            if let Some(r) = role {
                let _ = validate_role(r);
            }
        }
        Request::Show { id: i }
        | Request::Kill { id: i, .. }
        | Request::Retry { id: i, .. }
        | Request::Tell { id: i, .. }
        | Request::Escalate { id: i, .. } => id(i),
        Request::Events { agent: Some(a), .. } => id(a),
        _ => {}
    }
}
