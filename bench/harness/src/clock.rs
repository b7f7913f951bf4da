//! RFC 3339 timestamps to and from milliseconds since the epoch, without a date library:
//! corral's event log and status files carry them, and the harness's reporter agents write them.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// `2026-11-24T07:34:14.698+00:00` (or `Z`, any number of fraction digits) to epoch ms.
pub fn parse_ms(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut frac = 0.0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        frac = format!("0.{}", s.get(start..i)?).parse::<f64>().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let m = oh * 60 + om;
            if *sign == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs as f64 * 1e3 + frac * 1e3)
}

/// Epoch ms to `2026-11-24T07:34:14.698+00:00`, the form corral writes.
pub fn format_ms(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, f) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:03}+00:00")
}

/// Epoch ms to `20261124T073414.698Z`, the compact form in handoff file names.
pub fn compact_ms(ms: i64) -> String {
    let full = format_ms(ms);
    let b = full.as_bytes();
    format!(
        "{}{}{}T{}{}{}.{}Z",
        &full[0..4],
        &full[5..7],
        &full[8..10],
        &full[11..13],
        &full[14..16],
        &full[17..19],
        std::str::from_utf8(&b[20..23]).unwrap_or("000")
    )
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let ms = 1_795_505_654_698; // 2026-11-24T07:34:14.698Z
        assert_eq!(format_ms(ms), "2026-11-24T07:34:14.698+00:00");
        assert_eq!(compact_ms(ms), "20261124T073414.698Z");
        assert_eq!(parse_ms("2026-11-24T07:34:14.698+00:00"), Some(ms as f64));
        assert_eq!(parse_ms("2026-11-24T08:34:14.698+01:00"), Some(ms as f64));
        assert_eq!(parse_ms("2026-11-24T07:34:14Z"), Some((ms - 698) as f64));
        assert_eq!(parse_ms("1970-01-01T00:00:00.000+00:00"), Some(0.0));
        assert_eq!(parse_ms("garbage"), None);
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000+00:00");
    }
}
