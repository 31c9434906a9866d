//! Event time: strict RFC 3339 timestamps and journey durations.
//!
//! It owns the one representation of time in Caravan, [`Timestamp`], a count of nanoseconds since the Unix
//! epoch in UTC, and the parsing and formatting of it. It is not a clock: nothing here reads the wall clock.
//!
//! Parsing is hand-written because it sits on the hot path (every input record carries a `ts`) and because
//! SPEC §7 asks for *strict* RFC 3339: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, upper-case `T` and `Z`,
//! no leap second, a real calendar date.
//!
//! ```
//! use caravan_schemas::time::{Timestamp, parse_duration};
//! let t = Timestamp::parse_rfc3339("2026-01-01T00:00:00.250Z").unwrap();
//! assert_eq!(t.to_rfc3339(), "2026-01-01T00:00:00.250Z");
//! assert_eq!(parse_duration("2d").unwrap(), 2 * 86_400 * 1_000_000_000);
//! ```

use crate::SchemaError;
use serde::{Deserialize, Serialize};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A point in event time: nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The smallest timestamp; the watermark before any record.
    pub const MIN: Timestamp = Timestamp(i64::MIN);

    /// The form nearly every event has, `YYYY-MM-DDTHH:MM:SS.mmmZ`, read at fixed places with no error
    /// text; `None` for anything else (including an invalid date or time), which the general reader then
    /// reads or explains. The same value as the general reader by construction (the property test
    /// `millisecond_form_reads_like_the_general_reader` holds it to that).
    fn parse_millis_utc(b: &[u8]) -> Option<Timestamp> {
        if b.len() != 24 || [b[4], b[7], b[10], b[13], b[16], b[19], b[23]] != *b"--T::.Z" {
            return None;
        }
        let n = |from, len| digits(b, from, len);
        let (year, month, day) = (n(0, 4)?, n(5, 2)?, n(8, 2)?);
        let (hour, minute, second, millis) = (n(11, 2)?, n(14, 2)?, n(17, 2)?, n(20, 3)?);
        let secs = civil_seconds(year, month, day, hour, minute, second).ok()?;
        secs.checked_mul(NANOS_PER_SEC)?.checked_add(millis * 1_000_000).map(Timestamp)
    }

    /// Parses a strict RFC 3339 timestamp.
    ///
    /// # Errors
    /// [`SchemaError::NotRfc3339`], [`SchemaError::NotCalendarDate`], [`SchemaError::TimeOfDay`] or
    /// [`SchemaError::TimestampRange`], naming what is wrong, when the text is not a strict RFC 3339 date-time.
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, SchemaError> {
        match Self::parse_millis_utc(s.as_bytes()) {
            Some(ts) => Ok(ts),
            None => Self::parse_any_rfc3339(s),
        }
    }

    /// Every strict RFC 3339 form (any fraction, `Z` or an offset), with a message for what is wrong.
    fn parse_any_rfc3339(s: &str) -> Result<Timestamp, SchemaError> {
        let b = s.as_bytes();
        let bad = || SchemaError::NotRfc3339(s.to_owned());
        if b.len() < 20 {
            return Err(bad());
        }
        let num = |from, len| digits(b, from, len);
        let sep = |i: usize, c: u8| b.get(i) == Some(&c);
        if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
            return Err(bad());
        }
        let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
            (num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2))
        else {
            return Err(bad());
        };
        let civil = civil_seconds(year, month, day, hour, minute, second).map_err(|e| match e {
            CivilError::Date => SchemaError::NotCalendarDate(s.to_owned()),
            CivilError::TimeOfDay => SchemaError::TimeOfDay(s.to_owned()),
        })?;
        let mut i = 19;
        let mut nanos = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 9 {
                    nanos = nanos * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let digits = i - start;
            if digits == 0 {
                return Err(bad());
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset_secs = match b.get(i) {
            Some(b'Z') if i + 1 == b.len() => 0,
            Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
                let (Some(oh), Some(om)) = (num(i + 1, 2), num(i + 4, 2)) else {
                    return Err(bad());
                };
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let off = oh * 3600 + om * 60;
                if c == b'+' { off } else { -off }
            }
            _ => return Err(bad()),
        };
        let secs = civil - offset_secs;
        // Years past 2262 (or before 1677) do not fit in i64 nanoseconds.
        secs.checked_mul(NANOS_PER_SEC)
            .and_then(|n| n.checked_add(nanos))
            .map(Timestamp)
            .ok_or_else(|| SchemaError::TimestampRange(s.to_owned()))
    }

    /// Formats as RFC 3339 in UTC with `Z`, with milliseconds, or with as many fraction digits as needed.
    pub fn to_rfc3339(self) -> String {
        let mut text = Vec::with_capacity(30);
        self.write_rfc3339(&mut text);
        String::from_utf8(text).expect("only ASCII digits and separators were written")
    }

    /// Appends [`Timestamp::to_rfc3339`]'s text to `text`, without allocating.
    pub fn write_rfc3339(self, text: &mut Vec<u8>) {
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let nanos = self.0.rem_euclid(NANOS_PER_SEC);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // Written by hand: this runs for every output record, and `format!` is several times slower.
        fn digits(text: &mut Vec<u8>, v: i64, width: u32) {
            for i in (0..width).rev() {
                text.push(b'0' + (v / 10i64.pow(i) % 10) as u8);
            }
        }
        digits(text, y, 4);
        for (sep, v) in [(b'-', m), (b'-', d), (b'T', sod / 3600), (b':', (sod / 60) % 60), (b':', sod % 60)] {
            text.push(sep);
            digits(text, v, 2);
        }
        let (frac, width) = if nanos % 1_000_000 == 0 {
            (nanos / 1_000_000, 3)
        } else if nanos % 1000 == 0 {
            (nanos / 1000, 6)
        } else {
            (nanos, 9)
        };
        text.push(b'.');
        digits(text, frac, width);
        text.push(b'Z');
    }

    /// This timestamp moved by `nanos`, saturating at the ends of the range.
    pub fn plus(self, nanos: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(nanos))
    }
}

impl Serialize for TimestampText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339())
    }
}

impl schemars::JsonSchema for TimestampText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

/// A [`Timestamp`] that serializes as RFC 3339 text (output records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampText(pub Timestamp);

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// The number written by the `len` ASCII digits of `b` at `from`; `None` if any is not a digit (or missing).
fn digits(b: &[u8], from: usize, len: usize) -> Option<i64> {
    b.get(from..from + len)?.iter().try_fold(0i64, |v, &c| c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0')))
}

/// Why a date and time of day name no instant.
enum CivilError {
    Date,
    TimeOfDay,
}

/// Seconds since 1970-01-01T00:00:00 of a date and a time of day (UTC), checked against the calendar and
/// the clock.
fn civil_seconds(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Result<i64, CivilError> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(CivilError::Date);
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(CivilError::TimeOfDay);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Parses a journey duration: a positive integer followed by `s`, `m`, `h`, `d` or `w` (`30m`, `6h`, `2d`, `1w`).
///
/// # Errors
/// [`SchemaError::Duration`] when the text is not such a duration.
pub fn parse_duration(s: &str) -> Result<i64, SchemaError> {
    let bad = || SchemaError::Duration(s.to_owned());
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(bad()),
    };
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(secs * NANOS_PER_SEC).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_known_instants() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0, "1970-01-01T00:00:00.000Z"),
            ("2026-01-01T00:00:00.000Z", 1_767_225_600 * NANOS_PER_SEC, "2026-01-01T00:00:00.000Z"),
            ("2026-01-01T01:00:00+01:00", 1_767_225_600 * NANOS_PER_SEC, "2026-01-01T00:00:00.000Z"),
            ("2024-02-29T23:59:59.123456Z", 1_709_251_199_123_456_000, "2024-02-29T23:59:59.123456Z"),
            ("2000-01-01T00:00:00.000000001Z", 946_684_800_000_000_001, "2000-01-01T00:00:00.000000001Z"),
        ];
        for (text, nanos, canonical) in cases {
            let t = Timestamp::parse_rfc3339(text).expect(text);
            assert_eq!(t.0, nanos, "{text}");
            assert_eq!(t.to_rfc3339(), canonical);
        }
    }

    #[test]
    fn refuses_what_is_not_strict_rfc3339() {
        for text in [
            "",
            "2026-01-01",
            "2026-01-01 00:00:00Z",
            "2026-01-01t00:00:00Z",
            "2026-01-01T00:00:00z",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:60Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00Z ",
            "yesterday",
        ] {
            assert!(Timestamp::parse_rfc3339(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(1800 * NANOS_PER_SEC));
        assert_eq!(parse_duration("1w"), Ok(604_800 * NANOS_PER_SEC));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("-1d").is_err());
        assert!(parse_duration("2y").is_err());
    }

    proptest! {
        /// The fixed-place reader of `YYYY-MM-DDTHH:MM:SS.mmmZ` reads what the general reader reads, and
        /// declines (to the general reader) every text of that shape that is not a valid instant: a digit
        /// position holding something else, month 13, 30 February, hour 24...
        #[test]
        fn millisecond_form_reads_like_the_general_reader(
            digits in proptest::collection::vec(prop_oneof![8 => b'0'..=b'9', 1 => Just(b'x'), 1 => Just(b'/')], 17),
            small in (0i64..3, 0i64..40, 0i64..30),
        ) {
            let d = |i: usize| char::from(digits[i]);
            // Months and days around their limits half of the time, any digits the rest.
            let (month, day) = if small.0 > 0 {
                (format!("{:02}", small.1 % 14), format!("{:02}", small.2 + small.1 % 3))
            } else {
                (format!("{}{}", d(4), d(5)), format!("{}{}", d(6), d(7)))
            };
            let text = format!(
                "{}{}{}{}-{month}-{day}T{}{}:{}{}:{}{}.{}{}{}Z",
                d(0), d(1), d(2), d(3), d(8), d(9), d(10), d(11), d(12), d(13), d(14), d(15), d(16)
            );
            let general = Timestamp::parse_any_rfc3339(&text).ok();
            prop_assert_eq!(Timestamp::parse_millis_utc(text.as_bytes()), general, "{}", text);
        }

        /// Every instant written with milliseconds takes the fixed-place path.
        #[test]
        fn millisecond_instants_take_the_fixed_place_path(millis in 0i64..9_200_000_000_000) {
            let ts = Timestamp(millis * 1_000_000);
            let text = ts.to_rfc3339();
            prop_assert_eq!(Timestamp::parse_millis_utc(text.as_bytes()), Some(ts), "{}", text);
        }

        #[test]
        fn format_then_parse_round_trips(nanos in 0i64..4_102_444_800_000_000_000) {
            let t = Timestamp(nanos);
            prop_assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        }
    }
}
