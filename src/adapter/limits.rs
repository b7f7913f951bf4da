//! Rate and usage limits as the CLIs word them, and when they end: "resets 7pm", "try
//! again in 2h 13m", `retry-after: 30`, `resets_in_seconds`, "usage limit reached|<epoch>".
//! Pure: a reset at a time of day is resolved against a clock and offset given by the caller.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// When a limit ends, as the message said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reset {
    /// After this many seconds from when it was said.
    After { secs: u64 },
    /// At this Unix time (seconds).
    At { unix: i64 },
    /// At the next time of day (the machine's local time) with this hour and minute.
    Clock { hour: u8, minute: u8 },
}

/// Longest wait a message is believed for: a reset further away than this is taken as
/// this (a garbled figure must not park an agent for years).
pub const MAX_RESET_SECS: u64 = 7 * 24 * 3600;

impl Reset {
    /// When it ends, in Unix milliseconds, for a message seen at `now_ms` on a machine
    /// whose local time is UTC + `utc_offset_secs`. Never before `now_ms`, never later
    /// than [`MAX_RESET_SECS`] after it.
    pub fn until_ms(&self, now_ms: i64, utc_offset_secs: i32) -> i64 {
        let max = now_ms.saturating_add((MAX_RESET_SECS * 1000) as i64);
        let t = match *self {
            Self::After { secs } => now_ms.saturating_add((secs.min(MAX_RESET_SECS) * 1000) as i64),
            Self::At { unix } => unix.saturating_mul(1000),
            Self::Clock { hour, minute } => {
                let day = 86_400_000i64;
                let local = now_ms + i64::from(utc_offset_secs) * 1000;
                let midnight = local.div_euclid(day) * day;
                let mut at = midnight + (i64::from(hour) * 3600 + i64::from(minute) * 60) * 1000;
                if at <= local {
                    at += day;
                }
                at - i64::from(utc_offset_secs) * 1000
            }
        };
        t.clamp(now_ms, max)
    }
}

static RATE_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)rate[ _-]?limit|usage[ _-]?limit|too many requests|\b429\b|hit your limit|limit reached|quota exceeded|insufficient_quota",
    )
    .expect("valid regex")
});

static EPOCH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?:limit reached\|\s*|"?resets?_at"?\s*[:=]\s*)(\d{9,11})\b"#).expect("valid regex")
});

static SECONDS_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)"?(?:resets_in_seconds|retry[_-]after(?:[_-]seconds)?)"?\s*[:=]\s*"?(\d+(?:\.\d+)?)\s*"?(ms)?"#)
        .expect("valid regex")
});

static IN_DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:try again in|retry in|resets? in|retry after|available in|wait)\s+((?:\d+(?:\.\d+)?\s*[a-z]*[\s,]*(?:and\s+)?){1,4})")
        .expect("valid regex")
});

static CLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:resets?|try again|available again|reset)(?:\s+at)?\s+(\d{1,2})(?::(\d{2}))?\s*([ap]\.?m\.?)?")
        .expect("valid regex")
});

static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(\d+(?:\.\d+)?)\s*([a-z]*)").expect("valid regex"));

/// Whether the text (an error, a result) speaks of a rate or usage limit, or the HTTP
/// status is 429. Overload (529) and other 5xx are not limits.
pub fn is_limit(text: &str, status: Option<u16>) -> bool {
    status == Some(429) || RATE_WORDS.is_match(text)
}

/// The reset the text gives, if any.
pub fn reset_in(text: &str) -> Option<Reset> {
    if let Some(c) = EPOCH.captures(text)
        && let Ok(unix) = c[1].parse::<i64>()
    {
        return Some(Reset::At { unix });
    }
    if let Some(c) = SECONDS_FIELD.captures(text)
        && let Ok(n) = c[1].parse::<f64>()
    {
        let secs = if c.get(2).is_some() { n / 1000.0 } else { n };
        return Some(Reset::After { secs: secs.ceil().max(0.0) as u64 });
    }
    if let Some(c) = IN_DURATION.captures(text)
        && let Some(secs) = duration_secs(&c[1])
    {
        return Some(Reset::After { secs });
    }
    for c in CLOCK.captures_iter(text) {
        let hour: u8 = c[1].parse().ok()?;
        let minute: u8 = c.get(2).map_or(Some(0), |m| m.as_str().parse().ok())?;
        let ampm = c.get(3).map(|m| m.as_str().to_ascii_lowercase());
        // "resets 7" alone is no time: a time of day has am/pm or minutes.
        if ampm.is_none() && c.get(2).is_none() {
            continue;
        }
        let hour = match ampm.as_deref().map(|s| s.starts_with('p')) {
            Some(true) if (1..12).contains(&hour) => hour + 12,
            Some(false) if hour == 12 => 0,
            _ => hour,
        };
        if hour < 24 && minute < 60 {
            return Some(Reset::Clock { hour, minute });
        }
    }
    None
}

/// "2h 13m", "2 hours 13 minutes", "45s", "30" (seconds), "1 day".
fn duration_secs(text: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut any = false;
    for c in DURATION_PART.captures_iter(text) {
        let n: f64 = c[1].parse().ok()?;
        let unit = c[2].to_ascii_lowercase();
        let mult = match unit.as_str() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "ms" => 0.001,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "and" => continue,
            _ => break,
        };
        total += n * mult;
        any = true;
    }
    any.then(|| total.ceil().clamp(0.0, MAX_RESET_SECS as f64) as u64)
}
