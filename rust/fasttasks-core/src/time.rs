//! Timestamps. Everything is UTC. On SQLite timestamps are stored as text in the exact form Django writes
//! for a `DateTimeField` ("YYYY-MM-DD HH:MM:SS[.ffffff]", naive UTC), which sorts lexically in time order.

use chrono::{DateTime, NaiveDateTime, Utc};

pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to microseconds (what both databases store), so a value read back
/// compares equal to the one written.
pub fn now() -> Timestamp {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("current time is representable")
}

/// Formats a timestamp for an SQLite text column, always with six fractional digits.
pub fn to_sqlite_text(ts: Timestamp) -> String {
    ts.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parses what Django or this crate wrote into an SQLite datetime column. Accepts a missing fraction
/// (Django's `str(datetime)` drops `.000000`), a `T` separator and a trailing UTC offset.
pub fn from_sqlite_text(text: &str) -> Option<Timestamp> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_round_trips_and_sorts() {
        let a = now();
        let b = a + chrono::Duration::microseconds(1);
        assert_eq!(from_sqlite_text(&to_sqlite_text(a)), Some(a));
        assert!(to_sqlite_text(a) < to_sqlite_text(b));
    }

    #[test]
    fn parses_what_django_writes() {
        let whole = from_sqlite_text("2026-11-21 06:13:00").unwrap();
        let fraction = from_sqlite_text("2026-11-21 06:13:00.250000").unwrap();
        assert_eq!((fraction - whole).num_milliseconds(), 250);
        assert_eq!(from_sqlite_text("2026-11-21 06:13:00+00:00"), Some(whole));
        assert_eq!(from_sqlite_text("not a time"), None);
    }
}
