use super::*;
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adapters").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn summary(kind: Adapter, bytes: &[u8]) -> (Summary, Vec<Observation>) {
    let mut p = Parser::new(kind);
    let obs = p.feed(bytes);
    let mut s = Summary::default();
    for o in &obs {
        s.add(o);
    }
    (s, obs)
}

#[test]
fn program_name_chooses_the_adapter() {
    assert_eq!(Adapter::from_program("claude"), Adapter::ClaudeCode);
    assert_eq!(Adapter::from_program("/usr/local/bin/claude"), Adapter::ClaudeCode);
    assert_eq!(Adapter::from_program("target/npm/node_modules/.bin/codex"), Adapter::Codex);
    assert_eq!(Adapter::from_program("sh"), Adapter::None);
    assert_eq!(Adapter::from_program("claude-wrapper"), Adapter::None);
    for n in Adapter::NAMES {
        assert_eq!(Adapter::parse(n).unwrap().as_str(), *n);
    }
    assert_eq!(Adapter::parse("gemini"), None);
}

#[test]
fn claude_success_gives_session_usage_turns_and_an_ok_result() {
    let (s, obs) = summary(Adapter::ClaudeCode, &fixture("claude-success.jsonl"));
    assert_eq!(s.session_id.as_deref(), Some("5f1c2a9e-7b7e-4d53-9a55-0f2d7b1c9e01"));
    let u = s.usage.unwrap();
    assert_eq!((u.input, u.output, u.turns, u.cost_usd), (2500, 52, Some(2), Some(0.0123)));
    assert!(u.session_totals);
    let r = s.result.unwrap();
    assert!(r.ok);
    assert_eq!(r.terminal_reason.as_deref(), Some("completed"));
    assert_eq!(r.text.as_deref(), Some("Done: the report and the handoff are written."));
    assert!(s.rate_limited.is_none());
    let calls = obs.iter().filter(|o| **o == Observation::Progress { what: ProgressKind::ToolCall }).count();
    let turns = obs.iter().filter(|o| **o == Observation::Progress { what: ProgressKind::Turn }).count();
    assert_eq!((calls, turns), (2, 2), "{obs:?}");
    assert_eq!(obs.iter().filter(|o| **o == Observation::Heartbeat).count(), 5);
}

#[test]
fn claude_429_is_a_rate_limit_with_the_reset_hour_and_retries_are_not_progress() {
    let (s, obs) = summary(Adapter::ClaudeCode, &fixture("claude-rate-limited.jsonl"));
    let r = s.result.clone().unwrap();
    assert!(!r.ok, "is_error with subtype success is an error");
    assert_eq!(r.api_error_status, Some(429));
    let l = s.rate_limited.unwrap();
    assert_eq!(l.provider, "anthropic");
    assert_eq!(l.reset, Some(Reset::Clock { hour: 19, minute: 0 }));
    assert_eq!(s.api_retries, 2);
    assert_eq!(s.last_retry_status, Some(429));
    assert!(!obs.iter().any(|o| matches!(o, Observation::Progress { .. })));
}

#[test]
fn claude_overload_is_an_error_but_no_limit() {
    let (s, _) = summary(Adapter::ClaudeCode, &fixture("claude-overloaded.jsonl"));
    let r = s.result.unwrap();
    assert!(!r.ok);
    assert_eq!(r.api_error_status, Some(529));
    assert_eq!(r.terminal_reason.as_deref(), Some("api_error"));
    assert!(s.rate_limited.is_none(), "529 is transient, not a limit");
}

#[test]
fn claude_usage_limit_epoch_is_the_reset() {
    let (s, _) = summary(Adapter::ClaudeCode, &fixture("claude-usage-limit.jsonl"));
    assert_eq!(s.rate_limited.unwrap().reset, Some(Reset::At { unix: 1796238000 }));
}

#[test]
fn a_stream_cut_short_has_no_result() {
    let (s, _) = summary(Adapter::ClaudeCode, &fixture("claude-no-result.jsonl"));
    assert!(s.result.is_none());
    assert!(s.session_id.is_some());
}

#[test]
fn codex_success_counts_turn_usage_and_takes_the_last_message() {
    let (s, obs) = summary(Adapter::Codex, &fixture("codex-success.jsonl"));
    assert_eq!(s.session_id.as_deref(), Some("0199a213-81c0-7800-8aa1-bbab2a035a53"));
    let u = s.usage.unwrap();
    assert_eq!((u.input, u.output, u.turns, u.cost_usd), (24763, 122, Some(1), None));
    assert!(!u.session_totals);
    let r = s.result.unwrap();
    assert!(r.ok);
    assert_eq!(r.text.as_deref(), Some("The handoff is written."));
    assert!(obs.contains(&Observation::Progress { what: ProgressKind::ToolCall }));
}

#[test]
fn codex_429_and_usage_limit_are_limits_and_high_demand_is_not() {
    let (s, _) = summary(Adapter::Codex, &fixture("codex-429.jsonl"));
    let r = s.result.unwrap();
    assert!(!r.ok);
    assert_eq!(r.api_error_status, Some(429));
    assert_eq!(s.rate_limited.as_ref().unwrap().provider, "openai");
    assert_eq!(s.rate_limited.unwrap().reset, None);

    let (s, _) = summary(Adapter::Codex, &fixture("codex-usage-limit.jsonl"));
    assert_eq!(s.rate_limited.unwrap().reset, Some(Reset::After { secs: 2 * 3600 + 13 * 60 }));

    let (s, _) = summary(Adapter::Codex, &fixture("codex-overloaded.jsonl"));
    assert!(!s.result.unwrap().ok);
    assert!(s.rate_limited.is_none());
    assert_eq!(s.api_retries, 2);
}

#[test]
fn resets_as_the_clis_word_them() {
    let cases: &[(&str, Option<Reset>)] = &[
        ("5-hour limit reached · resets 7pm", Some(Reset::Clock { hour: 19, minute: 0 })),
        ("limit reached, resets at 7:30 AM (Europe/Berlin)", Some(Reset::Clock { hour: 7, minute: 30 })),
        ("resets 12am", Some(Reset::Clock { hour: 0, minute: 0 })),
        ("resets 12pm", Some(Reset::Clock { hour: 12, minute: 0 })),
        ("try again at 19:05", Some(Reset::Clock { hour: 19, minute: 5 })),
        ("You've hit your usage limit. Try again at 4:00 PM.", Some(Reset::Clock { hour: 16, minute: 0 })),
        ("You've hit your usage limit. Try again at 12:30 AM.", Some(Reset::Clock { hour: 0, minute: 30 })),
        (
            "You've hit your usage limit. Try again at Dec 3rd, 2026 4:05 PM.",
            Some(Reset::Local { year: 2026, month: 12, day: 3, hour: 16, minute: 5 }),
        ),
        (
            "Try again at Jan 1st, 2027 12:00 AM.",
            Some(Reset::Local { year: 2027, month: 1, day: 1, hour: 0, minute: 0 }),
        ),
        ("try again in 2h 13m", Some(Reset::After { secs: 7980 })),
        ("Please try again in 45s.", Some(Reset::After { secs: 45 })),
        ("retry-after: 30", Some(Reset::After { secs: 30 })),
        ("Retry-After: 1.5", Some(Reset::After { secs: 2 })),
        (r#"{"type":"usage_limit_reached","resets_in_seconds":3600}"#, Some(Reset::After { secs: 3600 })),
        ("usage limit reached|1796238000", Some(Reset::At { unix: 1796238000 })),
        ("rate_limit_error: slow down", None),
        ("resets 7", None),
        ("resets 25pm", None),
    ];
    for (text, want) in cases {
        assert_eq!(limits::reset_in(text), *want, "{text}");
    }
    assert!(limits::is_limit("rate_limit_error", None));
    assert!(limits::is_limit("usage_limit_reached", None));
    assert!(limits::is_limit("HTTP 429", None));
    assert!(limits::is_limit("anything", Some(429)));
    assert!(!limits::is_limit("API Error: 529 Overloaded", Some(529)));
    assert!(!limits::is_limit("took 1429 ms", None));
}

#[test]
fn a_reset_resolves_to_the_next_such_time_and_is_bounded() {
    let day = 86_400_000i64;
    let now = 20_000 * day + 18 * 3_600_000; // 18:00 UTC
    let c = Reset::Clock { hour: 19, minute: 0 };
    assert_eq!(c.until_ms(now, 0), now + 3_600_000);
    // 19:00 at UTC+2 is 17:00 UTC: passed today, so tomorrow.
    assert_eq!(c.until_ms(now, 7200), now + 23 * 3_600_000);
    assert_eq!(Reset::After { secs: 10 }.until_ms(now, 0), now + 10_000);
    assert_eq!(Reset::At { unix: 1 }.until_ms(now, 0), now, "a reset in the past is now");
    // "Try again at 6:00 PM" said at 18:00:30: the reset lies in that minute, so it is
    // over at 18:01, not tomorrow and not already past.
    let four = Reset::Clock { hour: 18, minute: 0 };
    assert_eq!(four.until_ms(now + 30_000, 0), now + 60_000);
    assert_eq!(four.until_ms(now, 0), now + 60_000);
    // A minute later it is a time earlier today: the next one is tomorrow.
    assert_eq!(four.until_ms(now + 60_000, 0), now + day);
    let dated = Reset::Local { year: 2024, month: 10, day: 4, hour: 19, minute: 30 };
    let at = jiff::tz::Offset::UTC.to_timestamp(jiff::civil::date(2024, 10, 4).at(19, 30, 0, 0)).unwrap();
    let t = at.as_millisecond();
    assert_eq!(dated.until_ms(t - 3_600_000, 0), t + 60_000);
    assert_eq!(dated.until_ms(t - 3_600_000, 3600), t - 3_600_000 + 60_000, "in local time UTC+1");
    assert_eq!(Reset::Local { year: 2024, month: 2, day: 30, hour: 1, minute: 0 }.until_ms(t, 0), t, "no such day");
    let far = Reset::After { secs: u64::MAX }.until_ms(now, 0);
    assert_eq!(far, now + (limits::MAX_RESET_SECS * 1000) as i64);
}

#[test]
fn junk_and_huge_lines_are_skipped_safely() {
    let mut p = Parser::new(Adapter::ClaudeCode);
    let mut input = b"not json\n\xff\xfe{\"type\":\"result\"\n{\"type\":\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
    input.extend_from_slice(b"\n");
    input.extend_from_slice(&fixture("claude-success.jsonl"));
    let obs = p.feed(&input);
    assert!(obs.iter().any(|o| matches!(o, Observation::Result(r) if r.ok)));
    assert!(p.lines.buf.len() <= MAX_LINE);
    // A line that never ends holds no more than the bound.
    let mut p = Parser::new(Adapter::Codex);
    for _ in 0..40 {
        p.feed(&[b'{'; 64 * 1024]);
        assert!(p.lines.buf.len() <= MAX_LINE);
    }
    assert_eq!(p.feed(b"\n"), vec![Observation::Heartbeat]);
}

fn all_fixtures() -> Vec<(Adapter, Vec<u8>)> {
    let mut v = Vec::new();
    for name in ["claude-success", "claude-rate-limited", "claude-overloaded", "claude-usage-limit", "claude-no-result"]
    {
        v.push((Adapter::ClaudeCode, fixture(&format!("{name}.jsonl"))));
    }
    for name in ["codex-success", "codex-429", "codex-usage-limit", "codex-overloaded"] {
        v.push((Adapter::Codex, fixture(&format!("{name}.jsonl"))));
    }
    v
}

proptest! {
    #[test]
    fn a_time_of_day_is_never_past_and_at_most_a_day_away(
        hour in 1u8..=12, minute in 0u8..60, pm in any::<bool>(), now in 0i64..4_000_000_000_000, offset in -50_400i32..=50_400,
    ) {
        let said = format!("You've hit your usage limit. Try again at {hour}:{minute:02} {}.", if pm { "PM" } else { "AM" });
        let h24 = match (hour, pm) { (12, false) => 0, (12, true) => 12, (h, true) => h + 12, (h, false) => h };
        let r = limits::reset_in(&said);
        prop_assert_eq!(r, Some(Reset::Clock { hour: h24, minute }));
        let until = r.unwrap().until_ms(now, offset);
        prop_assert!(until > now, "{said} at {now}: {until}");
        prop_assert!(until <= now + 86_400_000);
        // It lands on a whole minute of local time with the hour and minute said, or on the
        // end of that minute when it is the current one.
        let local = until + i64::from(offset) * 1000;
        prop_assert_eq!(local.rem_euclid(60_000), 0);
        let mins = local.rem_euclid(86_400_000) / 60_000;
        let said_mins = i64::from(h24) * 60 + i64::from(minute);
        prop_assert!(mins == said_mins || mins == (said_mins + 1) % 1440, "{mins} vs {said_mins}");
        if mins != said_mins {
            prop_assert!(until - now <= 60_000, "the end of the minute only when it is the current one");
        }
    }

    #[test]
    fn resets_in_hours_and_minutes_are_that_many_seconds(h in 0u64..48, m in 0u64..60, s in 0u64..60, now in 0i64..4_000_000_000_000) {
        let said = format!("rate limited, try again in {h}h {m}m {s}s");
        let secs = (h * 3600 + m * 60 + s).min(limits::MAX_RESET_SECS);
        prop_assert_eq!(limits::reset_in(&said), Some(Reset::After { secs }));
        let words = format!("Please try again in {h} hours and {m} minutes.");
        prop_assert_eq!(limits::reset_in(&words), Some(Reset::After { secs: h * 3600 + m * 60 }));
        prop_assert_eq!(Reset::After { secs }.until_ms(now, 0), now + secs as i64 * 1000);
    }

    #[test]
    fn retry_after_and_resets_in_seconds_are_read_as_given(n in 0u64..10_000_000, frac in 0u32..1000, now in 0i64..4_000_000_000_000) {
        prop_assert_eq!(limits::reset_in(&format!("Retry-After: {n}")), Some(Reset::After { secs: n }));
        prop_assert_eq!(limits::reset_in(&format!("retry-after: {n}.{frac:03}")), Some(Reset::After { secs: n + u64::from(frac > 0) }));
        let body = format!(r#"{{"error":{{"type":"usage_limit_reached","resets_in_seconds":{n}}}}}"#);
        prop_assert_eq!(limits::reset_in(&body), Some(Reset::After { secs: n }));
        let until = Reset::After { secs: n }.until_ms(now, 0);
        prop_assert_eq!(until, now + (n.min(limits::MAX_RESET_SECS) * 1000) as i64);
    }

    #[test]
    fn any_split_gives_what_the_whole_gives(which in 0usize..9, cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let (kind, bytes) = all_fixtures().swap_remove(which);
        let whole = Parser::new(kind).feed(&bytes);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort();
        let mut p = Parser::new(kind);
        let mut got = Vec::new();
        let mut from = 0;
        for c in at.into_iter().chain([bytes.len()]) {
            got.extend(p.feed(&bytes[from..c]));
            from = c;
        }
        prop_assert_eq!(got, whole);
    }

    /// A parser resumed at any point from what the first one recorded (its summary) and the
    /// line it was in the middle of records what one parser reading it all does (a Codex
    /// answer given before the cut and its turn's end after it aside: that answer's text).
    #[test]
    fn a_parser_resumed_from_the_summary_and_the_unfinished_line_ends_where_one_would(which in 0usize..9, cut in any::<prop::sample::Index>()) {
        let (kind, bytes) = all_fixtures().swap_remove(which);
        let c = cut.index(bytes.len() + 1);
        let (mut whole, _) = summary(kind, &bytes);
        let (mut first, _) = summary(kind, &bytes[..c]);
        let pending = &bytes[bytes[..c].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)..c];
        let mut p = Parser::resume(kind, &first, pending);
        for o in p.feed(&bytes[c..]) {
            first.add(&o);
        }
        if kind == Adapter::Codex {
            for s in [&mut whole, &mut first] {
                if let Some(r) = s.result.as_mut() {
                    r.text = None;
                }
            }
        }
        prop_assert_eq!(first, whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), codex in any::<bool>()) {
        let kind = if codex { Adapter::Codex } else { Adapter::ClaudeCode };
        let mut p = Parser::new(kind);
        let mut s = Summary::default();
        for o in p.feed(&bytes) {
            s.add(&o);
        }
        let _ = limits::reset_in(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn a_resumed_session_goes_where_each_cli_takes_it() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        resume_argv(Adapter::ClaudeCode, &v(&["claude", "-p", "ctx", "--output-format", "stream-json"]), "S1"),
        v(&["claude", "-p", "ctx", "--output-format", "stream-json", "--resume", "S1"])
    );
    assert_eq!(
        resume_argv(Adapter::Codex, &v(&["codex", "exec", "--json", "ctx"]), "T1"),
        v(&["codex", "exec", "--json", "resume", "T1", "ctx"])
    );
    let already = v(&["claude", "-p", "x", "--resume", "OLD"]);
    assert_eq!(resume_argv(Adapter::ClaudeCode, &already, "S1"), already);
    assert_eq!(resume_argv(Adapter::None, &v(&["sh"]), "S1"), v(&["sh"]));
}

/// Parsing throughput of each adapter's parser, for `bench/run.sh --only parse` (release
/// build): a stream of about 32 MiB, made of the recorded fixtures over and over, fed in
/// 64 KiB reads as the shim gets them. Prints MB/s; asserts only that every line was read.
#[test]
#[ignore = "benchmark: bench/run.sh --only parse"]
fn parse_throughput() {
    for (kind, name) in [(Adapter::ClaudeCode, "claude-success.jsonl"), (Adapter::Codex, "codex-success.jsonl")] {
        let one = fixture(name);
        let lines_in_one = one.iter().filter(|b| **b == b'\n').count();
        let mut stream = Vec::with_capacity(33 << 20);
        while stream.len() < 32 << 20 {
            stream.extend_from_slice(&one);
        }
        let lines = stream.iter().filter(|b| **b == b'\n').count();
        assert_eq!(lines % lines_in_one, 0);
        let mut best = f64::MAX;
        let mut seen = 0;
        for _ in 0..5 {
            let mut p = Parser::new(kind);
            let t = std::time::Instant::now();
            let mut heartbeats = 0;
            for chunk in stream.chunks(64 << 10) {
                heartbeats += p.feed(chunk).iter().filter(|o| matches!(o, Observation::Heartbeat)).count();
            }
            best = best.min(t.elapsed().as_secs_f64());
            seen = heartbeats;
        }
        assert!(seen >= lines, "{name}: a heartbeat for every stream line ({seen} for {lines})");
        let mb = stream.len() as f64 / 1e6;
        crate::note!(
            "parse {}: {:.1} MB/s ({} lines, {:.1} MB, best of 5: {:.1} ms; {:.0} lines/s)",
            kind.as_str(),
            mb / best,
            lines,
            mb,
            best * 1e3,
            lines as f64 / best
        )
        .unwrap();
    }
}
