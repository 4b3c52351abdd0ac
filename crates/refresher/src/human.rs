//! Durations and instants for people, as the status page and the operator
//! commands show them: `1h 54m`, `3m 12s ago`, `in 4.5s`,
//! `2025-05-01 12:00:00 UTC`.
//!
//! Pure formatting of numbers: no I/O, no clock of its own (callers pass
//! "now", normally the Redis clock), no knowledge of keys or tokens.

use std::time::{Duration, UNIX_EPOCH};

/// A duration in ms as its one or two most significant units: `2d 3h`,
/// `1h 54m`, `3m 12s`, `42s`, `4.5s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// `at_ms` seen at `now_ms`: `3m 12s ago`, or `in 4m 0s` for a later instant.
pub fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms > now_ms {
        format!("in {}", duration(at_ms - now_ms))
    } else {
        format!("{} ago", duration(now_ms - at_ms))
    }
}

/// An instant in UTC to the second: `2025-05-01 12:00:00 UTC`.
pub fn clock(at_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(at_ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0.0s");
        assert_eq!(duration(4_520), "4.5s");
        assert_eq!(duration(42_999), "42s");
        assert_eq!(duration(192_000), "3m 12s");
        assert_eq!(duration(7_200_000), "2h 0m");
        assert_eq!(duration(6_840_000), "1h 54m");
        assert_eq!(duration(90_000_000), "1d 1h");
        assert_eq!(relative(1_000, 181_000), "3m 0s ago");
        assert_eq!(relative(61_000, 1_000), "in 1m 0s");
        assert_eq!(relative(5_000, 5_000), "0.0s ago");
        assert_eq!(clock(0), "1970-01-01 00:00:00 UTC");
    }
}
