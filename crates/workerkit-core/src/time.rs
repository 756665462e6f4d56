//! Wall-clock timestamps for status and events.
//!
//! Deadlines and timers use tokio's clock; wall-clock time is read in one place, [`Timestamp::now`],
//! and used only to stamp status and events.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock instant, serialized as RFC 3339 in UTC with nanoseconds and trailing zeros
/// trimmed (`2026-11-22T19:23:43.207807057Z`), as Go's `time.Time` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// The current wall-clock time.
    #[must_use]
    pub fn now() -> Self {
        Self(SystemTime::now())
    }

    /// Milliseconds since the Unix epoch (0 before it).
    pub(crate) fn unix_millis(self) -> u64 {
        millis_of(self.since_epoch())
    }

    fn since_epoch(self) -> Duration {
        self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
    }

    /// This instant plus `d` (saturating at the far future).
    pub(crate) fn plus(self, d: Duration) -> Self {
        Self(self.0.checked_add(d).unwrap_or(self.0))
    }

    /// The wrapped `SystemTime`.
    #[must_use]
    pub fn as_system_time(self) -> SystemTime {
        self.0
    }
}

fn millis_of(since_epoch: Duration) -> u64 {
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let nanos = since.subsec_nanos();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )?;
        if nanos != 0 {
            let mut frac = format!("{nanos:09}");
            while frac.ends_with('0') {
                frac.pop();
            }
            write!(f, ".{frac}")?;
        }
        f.write_str("Z")
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Days since 1970-01-01 to a (year, month, day) civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> String {
        Timestamp(UNIX_EPOCH + Duration::new(secs, nanos)).to_string()
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            at(1_795_375_423, 207_807_057),
            "2026-11-22T19:23:43.207807057Z"
        );
        assert_eq!(at(1_795_375_423, 500_000_000), "2026-11-22T19:23:43.5Z");
        // A leap day.
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_102_444_799, 10), "2099-12-31T23:59:59.00000001Z");
    }

    #[test]
    fn serializes_as_a_string() {
        let json = serde_json::to_string(&Timestamp(UNIX_EPOCH)).unwrap();
        assert_eq!(json, "\"1970-01-01T00:00:00Z\"");
    }
}
