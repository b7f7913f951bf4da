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
    s.parse::<Timestamp>().ok()
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
