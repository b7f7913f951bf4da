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
    /// At this date and time of day in the machine's local time (Codex names the day when
    /// the reset is not today: "Try again at Dec 3rd, 2026 4:00 PM").
    Local { year: u16, month: u8, day: u8, hour: u8, minute: u8 },
}

/// Longest wait a message is believed for: a reset further away than this is taken as
/// this (a garbled figure must not park an agent for years).
pub const MAX_RESET_SECS: u64 = 7 * 24 * 3600;

const MINUTE_MS: i64 = 60_000;

impl Reset {
    /// When it ends, in Unix milliseconds, for a message seen at `now_ms` on a machine
    /// whose local time is UTC + `utc_offset_secs`. Never before `now_ms`, never later
    /// than [`MAX_RESET_SECS`] after it.
    ///
    /// A time of day names a whole minute (the CLIs print the reset truncated to it), so a
    /// time in the current minute means the end of that minute, and one earlier today
    /// means tomorrow: never an instant already past, which would retry at once.
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
                if local - at >= 0 && local - at < MINUTE_MS {
                    at += MINUTE_MS;
                } else if at <= local {
                    at += day;
                }
                at - i64::from(utc_offset_secs) * 1000
            }
            Self::Local { year, month, day, hour, minute } => {
                let Ok(date) = jiff::civil::Date::new(year as i16, month as i8, day as i8) else {
                    return now_ms;
                };
                let at = date.at(hour as i8, minute as i8, 0, 0);
                let offset = jiff::tz::Offset::from_seconds(utc_offset_secs).unwrap_or(jiff::tz::Offset::UTC);
                match offset.to_timestamp(at) {
                    // The end of the minute named: it is truncated as a time of day is.
                    Ok(ts) => ts.as_millisecond().saturating_add(MINUTE_MS),
                    Err(_) => now_ms,
                }
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

static DATED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:resets?|try again|available again)(?:\s+at)?\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4}),?\s+(\d{1,2}):(\d{2})\s*([ap]\.?m\.?)?",
    )
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
    if let Some(c) = DATED.captures(text) {
        const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
        let month = MONTHS.iter().position(|m| c[1].eq_ignore_ascii_case(m))? as u8 + 1;
        let day: u8 = c[2].parse().ok()?;
        let year: u16 = c[3].parse().ok()?;
        let hour = to_24h(c[4].parse().ok()?, c.get(6).map(|m| m.as_str()))?;
        let minute: u8 = c[5].parse().ok()?;
        return (minute < 60).then_some(Reset::Local { year, month, day, hour, minute });
    }
    for c in CLOCK.captures_iter(text) {
        let hour: u8 = c[1].parse().ok()?;
        let minute: u8 = c.get(2).map_or(Some(0), |m| m.as_str().parse().ok())?;
        let ampm = c.get(3).map(|m| m.as_str());
        // "resets 7" alone is no time: a time of day has am/pm or minutes.
        if ampm.is_none() && c.get(2).is_none() {
            continue;
        }
        if let Some(hour) = to_24h(hour, ampm)
            && minute < 60
        {
            return Some(Reset::Clock { hour, minute });
        }
    }
    None
}

/// An hour as said ("4" with "PM") on the 24-hour clock, or None if it is no hour.
fn to_24h(hour: u8, ampm: Option<&str>) -> Option<u8> {
    let pm = ampm.map(|s| s.to_ascii_lowercase().starts_with('p'));
    if pm.is_some() && !(1..=12).contains(&hour) {
        return None;
    }
    let hour = match pm {
        Some(true) if hour < 12 => hour + 12,
        Some(false) if hour == 12 => 0,
        _ => hour,
    };
    (hour < 24).then_some(hour)
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
