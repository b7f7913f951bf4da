//! Timestamps as the files carry them: RFC 3339 with an offset, UTC, millisecond precision.

use jiff::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::now()
}

/// `2026-11-24T06:04:21.123+00:00`
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

/// `20261124T060421.123Z`: sortable and free of `:` for file names.
pub fn compact(t: Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Parses any RFC 3339 timestamp; `None` (never "epoch 0") when it cannot be read.
pub fn parse(s: &str) -> Option<Timestamp> {
    // corral's own layout (every view reads several per agent) without the general parser.
    own_layout(s).or_else(|| s.parse::<Timestamp>().ok())
}

/// `YYYY-MM-DDTHH:MM:SS.mmm+00:00` (or with `Z`), as [`rfc3339`] writes it; anything else
/// (other offsets, other precisions, out-of-range fields) is left to the general parser.
fn own_layout(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let tail = match b.len() {
        29 if &b[23..] == b"+00:00" => 23,
        24 if b[23] == b'Z' => 23,
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')];
    if tail != 23 || seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > days_in[(mo - 1) as usize] || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), then milliseconds.
    let (y2, m2) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Timestamp::from_millisecond(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms).ok()
}

/// Milliseconds on the monotonic clock (CLOCK_MONOTONIC). Shared by every process on the
/// machine, so deadlines survive a supervisor restart; it ignores wall-clock steps and does
/// not count a host suspend, so an agent that was suspended with its host is not overdue
/// for the time the host slept.
pub fn mono_ms() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// This boot of the machine (`/proc/sys/kernel/random/boot_id`): the monotonic clock starts
/// again at each boot, so a value read under another boot id is from another clock.
pub fn boot_id() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_round_trip() {
        let t: Timestamp = "2026-11-24T06:04:21.5Z".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-24T06:04:21.500+00:00");
        assert_eq!(compact(t), "20261124T060421.500Z");
        assert_eq!(parse(&rfc3339(t)), Some(t));
        assert_eq!(parse("yesterday"), None);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast path reads what the general parser reads, for every instant corral can write.
        #[test]
        fn own_layout_agrees_with_the_general_parser(ms in -62_135_596_800_000i64..253_402_300_799_999i64) {
            let t = Timestamp::from_millisecond(ms).unwrap();
            let s = rfc3339(t);
            prop_assert_eq!(own_layout(&s), Some(t));
            prop_assert_eq!(own_layout(&s.replace("+00:00", "Z")), Some(t));
        }

        /// Whatever the fast path accepts, the general parser reads the same way.
        #[test]
        fn own_layout_never_reads_what_the_general_parser_reads_otherwise(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}(\\+00:00|Z)") {
            if let Some(t) = own_layout(&s) {
                prop_assert_eq!(s.parse::<Timestamp>().ok(), Some(t));
            }
        }
    }

    #[test]
    fn other_forms_go_to_the_general_parser() {
        assert_eq!(own_layout("2026-02-29T00:00:00.000+00:00"), None);
        assert_eq!(own_layout("2026-12-03T11:55:40.021+01:00"), None);
        assert_eq!(parse("2026-12-03T11:55:40.021+01:00"), "2026-12-03T10:55:40.021Z".parse().ok());
        assert_eq!(parse("2026-12-03T11:55:40Z"), "2026-12-03T11:55:40Z".parse().ok());
        assert_eq!(parse("2024-02-29T23:59:59.999Z"), "2024-02-29T23:59:59.999Z".parse().ok());
    }
}
