//! The status-file merge of `corral report`: an existing status file, a report's findings
//! and a size bound, all from the input.
//!
//! Invariants: no panic on any input; a merge that succeeds is written within the bound,
//! keeps the newest findings in order (old ones first, then the report's), and counts
//! every finding it did not keep in `findingsDropped`, so nothing is lost unsaid; the
//! written file is accepted again as it is. A refusal names why on one line and happens
//! only when the report could never fit.

#![no_main]

mod common;

use corral::protocol::agent_side::{ReportUpdate, merge};
use corral::protocol::files::{self, ReportedStatus};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::path::Path;

const ID: &str = "agent-001-FUZZ";

fuzz_target!(|data: &[u8]| {
    // Bound: 64 bytes to 64 KiB from the first two bytes; then the old file's text, then the
    // report's findings and phase, separated by 0xff bytes (never in UTF-8 text).
    let [a, b, rest @ ..] = data else { return };
    let bound = 64 + (usize::from(*a) << 8 | usize::from(*b));
    let mut parts = rest.split(|x| *x == 0xff);
    let Some(old_text) = parts.next().and_then(common::as_file_text) else { return };
    let old = files::parse_status(old_text, Path::new("s.json")).ok().filter(|s| s.agent_id == ID);
    let mut findings = Vec::new();
    let mut phase = None;
    for (i, p) in parts.enumerate() {
        let Ok(text) = std::str::from_utf8(p) else { return };
        if i == 0 && text.starts_with("phase:") {
            phase = Some(text["phase:".len()..].to_string());
            continue;
        }
        findings.push(files::text_or_json(text));
    }
    let update = ReportUpdate {
        status: Some(ReportedStatus::Active),
        phase,
        findings: findings.clone(),
        ..Default::default()
    };
    let before: Vec<Value> = old.as_ref().map(|s| s.findings.clone()).unwrap_or_default();
    let dropped_before = old.as_ref().and_then(|s| s.findings_dropped).unwrap_or(0);
    match merge(old, ID, None, update, "2026-01-01T00:00:00.000Z".into(), bound) {
        Err(e) => common::assert_one_line("merge refusal", &e),
        Ok(m) => {
            let text = serde_json::to_vec_pretty(&m.status).expect("a merged status file serializes");
            assert!(text.len() < bound, "merged file is {} bytes, bound {bound}", text.len());
            let all: Vec<&Value> = before.iter().chain(findings.iter()).collect();
            let kept = &m.status.findings;
            assert_eq!(kept.len() as u64 + m.dropped, all.len() as u64, "findings lost without being counted");
            let newest = &all[all.len() - kept.len()..];
            assert!(kept.iter().zip(newest).all(|(k, n)| k == *n), "the kept findings are not the newest, in order");
            assert_eq!(m.status.findings_dropped.unwrap_or(0), dropped_before + m.dropped);
            assert_eq!(m.status.status, ReportedStatus::Active);
            let text = String::from_utf8(text).unwrap();
            let again = files::parse_status(&text, Path::new("s.json"))
                .unwrap_or_else(|e| panic!("merged status file refused: {e}\n{text}"));
            assert_eq!(again.findings.len(), kept.len());
            assert_eq!(again.findings_dropped, m.status.findings_dropped);
        }
    }
});
