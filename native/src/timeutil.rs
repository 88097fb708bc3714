//! Event-time helpers equal to fatigue/timeutil.py: formatting instants and durations, and the common ISO-8601
//! forms of input timestamps. All instants are integer epoch milliseconds.

/// 2000-01-01T00:00:00Z: earlier timestamps are garbage (fatigue.timeutil.MIN_TS_MS).
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z (exclusive), fatigue.timeutil.MAX_TS_MS.
pub const MAX_TS_MS: i64 = 4_102_444_800_000;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
#[inline]
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's civil_from_days).
#[inline]
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[inline]
fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

#[inline]
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => 28 + u32::from(is_leap(year)),
    }
}

#[inline]
fn push_2(out: &mut String, value: u32) {
    out.push((b'0' + (value / 10) as u8) as char);
    out.push((b'0' + (value % 10) as u8) as char);
}

/// Appends `format_ms(ms)` to `out`: `YYYY-MM-DDTHH:MM:SS`, `.fff` only when the milliseconds are not 0, `Z`.
///
/// Python renders the date with `strftime("%Y")`, which glibc does not pad: years 1..999 come out as `999`, not
/// `0999`, and so they do here. Outside years 1..9999 Python raises (OverflowError); here the year is simply
/// written as a number, which no instant of the engine (2000..2100, give or take a window) ever reaches.
pub fn push_ms(out: &mut String, ms: i64) {
    let day = ms.div_euclid(MS_PER_DAY);
    let within = ms.rem_euclid(MS_PER_DAY) as u32; // floored like Python's // and %
    let (year, month, day_of_month) = civil_from_days(day);
    if !(1000..=9999).contains(&year) {
        out.push_str(&year.to_string());
        push_after_year(out, month, day_of_month, within);
        return;
    }
    // on the hot path of every decision (its evidence lists instants): written into one buffer, copied once
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let year = year as u32;
    put_2(&mut text, 0, year / 100);
    put_2(&mut text, 2, year % 100);
    put_2(&mut text, 5, month);
    put_2(&mut text, 8, day_of_month);
    put_2(&mut text, 11, within / MS_PER_HOUR as u32);
    put_2(&mut text, 14, within / MS_PER_MINUTE as u32 % 60);
    put_2(&mut text, 17, within / MS_PER_SECOND as u32 % 60);
    let millis = within % MS_PER_SECOND as u32;
    let length = if millis == 0 {
        text[19] = b'Z';
        20
    } else {
        text[20] = b'0' + (millis / 100) as u8;
        put_2(&mut text, 21, millis % 100);
        24
    };
    // SAFETY: `text` holds only the ASCII template and ASCII digits written by put_2 and above.
    out.push_str(unsafe { std::str::from_utf8_unchecked(&text[..length]) });
}

#[inline]
fn put_2(text: &mut [u8; 24], at: usize, value: u32) {
    text[at] = b'0' + (value / 10) as u8;
    text[at + 1] = b'0' + (value % 10) as u8;
}

fn push_after_year(out: &mut String, month: u32, day_of_month: u32, within: u32) {
    out.push('-');
    push_2(out, month);
    out.push('-');
    push_2(out, day_of_month);
    out.push('T');
    push_2(out, within / MS_PER_HOUR as u32);
    out.push(':');
    push_2(out, within / MS_PER_MINUTE as u32 % 60);
    out.push(':');
    push_2(out, within / MS_PER_SECOND as u32 % 60);
    let millis = within % MS_PER_SECOND as u32;
    if millis != 0 {
        out.push('.');
        out.push((b'0' + (millis / 100) as u8) as char);
        push_2(out, millis % 100);
    }
    out.push('Z');
}

/// == fatigue.timeutil.format_ms: ISO-8601 UTC with a `Z`, milliseconds only when there are any.
pub fn format_ms(ms: i64) -> String {
    let mut out = String::with_capacity(24);
    push_ms(&mut out, ms);
    out
}

/// == fatigue.timeutil.format_duration: the largest of d, h, m, s that divides `ms` exactly, else ms
/// (weeks left out on purpose, as in Python: "7d" reads better than "1w").
pub fn format_duration(ms: i64) -> String {
    if ms != 0 {
        for (size, unit) in [(MS_PER_DAY, 'd'), (MS_PER_HOUR, 'h'), (MS_PER_MINUTE, 'm'), (MS_PER_SECOND, 's')] {
            if ms % size == 0 {
                let mut out = (ms / size).to_string();
                out.push(unit);
                return out;
            }
        }
    }
    let mut out = ms.to_string();
    out.push_str("ms");
    out
}

#[inline(always)]
fn two_digits(bytes: &[u8], at: usize) -> Option<u32> {
    let tens = bytes[at].wrapping_sub(b'0');
    let ones = bytes[at + 1].wrapping_sub(b'0');
    if tens <= 9 && ones <= 9 {
        Some(u32::from(tens) * 10 + u32::from(ones))
    } else {
        None
    }
}

/// Epoch ms of an ISO-8601 instant in the forms senders actually use, else None (then Python decides).
///
/// Accepted: `YYYY-MM-DDTHH:MM:SS`, an optional fraction `.` + 1..9 digits, then `Z` or `+HH:MM`/`-HH:MM`; every
/// one of them a valid date and time. This is fatigue.timeutil._parse_common_iso_ms (which only takes exactly 3
/// digits) plus other fraction lengths, which Python hands to `datetime.fromisoformat`: since 3.11 it reads at most
/// 6 digits and drops the rest (truncation, not rounding), and the result is floored to ms, so the ms are always
/// the first three digits, zero-padded. Everything else (a space or lowercase separator, `+HHMM`, an offset with
/// seconds, basic format, week dates...) returns None although Python may accept it.
pub fn parse_iso_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let size = b.len();
    // shortest: 2026-09-01T00:00:04Z (20); longest: .fffffffff and +HH:MM (19 + 10 + 6 = 35)
    if !(20..=35).contains(&size) {
        return None;
    }
    let head: &[u8; 20] = b[..20].try_into().ok()?; // fixed size: no bounds checks below
    if head[4] != b'-' || head[7] != b'-' || head[10] != b'T' || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let year = i64::from(two_digits(head, 0)? * 100 + two_digits(head, 2)?);
    let month = two_digits(head, 5)?;
    let day = two_digits(head, 8)?;
    let hour = two_digits(head, 11)?;
    let minute = two_digits(head, 14)?;
    let second = two_digits(head, 17)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis: i64 = 0;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < size && b[at].is_ascii_digit() {
            at += 1;
        }
        let digits = at - start;
        if !(1..=9).contains(&digits) {
            return None;
        }
        for index in 0..3 {
            millis *= 10;
            if index < digits {
                millis += i64::from(b[start + index] - b'0');
            }
        }
    }
    let offset_minutes: i64 = match size - at {
        1 if b[at] == b'Z' => 0,
        6 if (b[at] == b'+' || b[at] == b'-') && b[at + 3] == b':' => {
            let offset_hour = two_digits(b, at + 1)?;
            let offset_minute = two_digits(b, at + 4)?;
            if offset_hour > 23 || offset_minute > 59 {
                return None;
            }
            let minutes = i64::from(offset_hour * 60 + offset_minute);
            if b[at] == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
    Some(days * MS_PER_DAY + seconds * MS_PER_SECOND + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn formats() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ms(MIN_TS_MS), "2000-01-01T00:00:00Z");
        assert_eq!(format_ms(MAX_TS_MS - 1), "2099-12-31T23:59:59.999Z");
        assert_eq!(format_ms(1_788_220_804_171), "2026-09-01T00:00:04.171Z");
        assert_eq!(format_ms(1_788_220_804_070), "2026-09-01T00:00:04.070Z");
        assert_eq!(format_ms(-62_135_596_800_000), "1-01-01T00:00:00Z");
        assert_eq!(format_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_duration(0), "0ms");
        assert_eq!(format_duration(604_800_000), "7d");
        assert_eq!(format_duration(-86_400_000), "-1d");
        assert_eq!(format_duration(5_400_000), "90m");
        assert_eq!(format_duration(1_500), "1500ms");
        assert_eq!(format_duration(i64::MIN), format!("{}ms", i64::MIN));
    }

    #[test]
    fn parses() {
        assert_eq!(parse_iso_ms("2026-09-01T00:00:04.171Z"), Some(1_788_220_804_171));
        assert_eq!(parse_iso_ms("2026-08-31T19:00:04.171-05:00"), Some(1_788_220_804_171));
        assert_eq!(parse_iso_ms("2026-09-01T08:00:04.171+08:00"), Some(1_788_220_804_171));
        assert_eq!(parse_iso_ms("2026-09-01T00:00:04.1719999Z"), Some(1_788_220_804_171));
        assert_eq!(parse_iso_ms("2026-09-01T00:00:04.1Z"), Some(1_788_220_804_100));
        assert_eq!(parse_iso_ms("2026-09-01T00:00:04Z"), Some(1_788_220_804_000));
        assert!(parse_iso_ms("2024-02-29T00:00:00Z").is_some());
        for bad in [
            "2025-02-29T00:00:00Z",
            "2026-09-01T24:00:00Z",
            "2026-09-01T00:60:00Z",
            "2026-09-01T00:00:60Z",
            "2026-09-01T00:00:04z",
            "2026-09-01 00:00:04Z",
            "2026-09-01T00:00:04.Z",
            "2026-09-01T00:00:04.1234567890Z",
            "2026-09-01T00:00:04+0500",
            "2026-09-01T00:00:04+24:00",
            "2026-09-01T00:00:04+05:60",
            "0000-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-09-00T00:00:00Z",
            "2026-09-01T00:00:04",
            "2026-09-01T00:00:04ZZ",
            "２026-09-01T00:00:04Z",
        ] {
            assert_eq!(parse_iso_ms(bad), None, "{bad}");
        }
    }
}
