//! `corral.toml`, read by every command and reloaded by the supervisor when it changes.
//!
//! Invariants: no panic on any input (including while building the line/key of an error
//! and while resolving the accepted config into policies); an error starts with the file's
//! path, and with `path:LINE:` (the line the TOML error points at) when the TOML error
//! has a span; an accepted config names only valid roles, and resolving it (every role's
//! policy, timeouts for each attempt, backoff delays, classify rules, health) never panics.

#![no_main]

mod common;

use corral::config::{self, Config};
use corral::protocol::ids::validate_role;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const PATH: &str = "/ws/corral.toml";

fuzz_target!(|data: &[u8]| {
    // `config::load` reads with `read_to_string`: not UTF-8 is refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match config::parse(text, Path::new(PATH)) {
        Err(e) => check_error(text, &e),
        Ok(c) => resolve(&c),
    }
});

fn check_error(text: &str, e: &str) {
    let first = e.lines().next().unwrap_or("");
    assert!(first.starts_with(&format!("{PATH}:")), "error does not start with the path: {e:?}");
    match toml::from_str::<Config>(text) {
        Err(te) => match te.span() {
            Some(span) => {
                let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                let want = format!("{PATH}:{line}:");
                assert!(first.starts_with(&want), "error does not start with {want:?}: {e:?}");
            }
            None => assert!(first.starts_with(&format!("{PATH}: ")), "spanless error badly prefixed: {e:?}"),
        },
        // The TOML is fine; a role name was refused.
        Ok(_) => assert!(first.starts_with(&format!("{PATH}: [roles.")), "role error badly prefixed: {e:?}"),
    }
}

fn resolve(c: &Config) {
    let mut roles: Vec<&str> = c.roles.keys().map(String::as_str).collect();
    for name in &roles {
        assert!(validate_role(name).is_ok(), "invalid role {name:?} accepted");
    }
    roles.extend(["PLANNER", "IMPLEMENTER", "AUDITOR", "CLEANER", "OTHER"]);
    for name in roles {
        let (command, p) = c.role(name);
        let _ = command;
        for n in [0, 1, 2, 3, p.max_retries.saturating_add(1), u32::MAX] {
            let t = p.attempt_timeout(n);
            if let Some(m) = p.max_attempt_timeout_ms {
                assert!(t <= m, "attempt timeout {t} above its cap {m}");
            }
        }
        for retry in [0, 1, 2, 10, 64, u32::MAX] {
            for sample in [0.0, 0.5, 0.999, f64::NAN] {
                let d = p.backoff.delay_ms(retry, sample);
                if let Some(m) = p.backoff.max_ms {
                    assert!(d <= m, "backoff delay {d} above its max {m}");
                }
            }
        }
    }
    let rules = c.rules();
    assert_eq!(rules.len(), c.classify.len());
    let _ = c.health();
}
