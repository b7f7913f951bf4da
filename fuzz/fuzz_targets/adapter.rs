//! The agent CLI adapters' stream parsers (Claude Code stream-json, Codex exec --json),
//! fed raw bytes as the shim relays them.
//!
//! Invariants: no panic on any input; feeding the input in two pieces cut anywhere gives
//! what feeding it whole gives; the parser's buffer never holds more than one bounded line;
//! a reset parsed from any text resolves to a time within the bound.

#![no_main]

use corral::adapter::{Adapter, Parser, Summary, limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let kind = if first & 1 == 0 { Adapter::ClaudeCode } else { Adapter::Codex };
    let cut = if rest.is_empty() { 0 } else { usize::from(first >> 1) * rest.len() / 128 };
    let whole = Parser::new(kind).feed(rest);
    let mut p = Parser::new(kind);
    let mut split = p.feed(&rest[..cut]);
    split.extend(p.feed(&rest[cut..]));
    assert_eq!(whole, split, "a split changed what was seen");
    let mut s = Summary::default();
    for o in &whole {
        s.add(o);
    }
    let text = String::from_utf8_lossy(rest);
    if let Some(r) = limits::reset_in(&text) {
        let now = 1_800_000_000_000i64;
        let t = r.until_ms(now, 3600);
        assert!(t >= now && t <= now + (limits::MAX_RESET_SECS * 1000) as i64);
    }
});
