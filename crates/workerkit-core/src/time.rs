//! Wall-clock timestamps for status and events.
//!
//! Deadlines and timers use tokio's clock; wall-clock time is read in one place, [`Timestamp::now`],
//! and used only to stamp status and events.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// The wall-clock time at `now`, a monotonic instant the caller has just read: derived from
    /// a wall-clock reading of this thread's made at most [`REANCHOR`] earlier (and at most
    /// [`MAX_USES`] derivations ago), so that a hot path that needs both clocks reads only one.
    ///
    /// The derivation is as exact as the clocks: the kernel slews the monotonic and the wall
    /// clock alike, so only a step of the wall clock (e.g. set by hand) shows up late, by at
    /// most `REANCHOR`. The anchor pairs the caller's monotonic reading with a wall-clock
    /// reading taken after it, so a derived time is never earlier than a wall-clock reading
    /// taken before `now` (it is later than the true time by the gap between the two readings,
    /// at most [`MAX_SKEW`]). A `now` that is not this thread's real clock, just read (a paused
    /// test clock, a reading delayed by preemption), or that did not advance since the anchor,
    /// gets a plain wall-clock reading.
    ///
    /// Returns the time and its [Unix milliseconds](Self::unix_millis), which the anchor makes
    /// cheap to derive as well.
    pub(crate) fn at_instant(now: Instant) -> (Self, u64) {
        thread_local! {
            static ANCHOR: Cell<Option<Anchor>> = const { Cell::new(None) };
        }
        ANCHOR.with(|cell| {
            if let Some(mut anchor) = cell.get() {
                let since = now.saturating_duration_since(anchor.mono);
                if !since.is_zero() && since < REANCHOR && anchor.uses < MAX_USES {
                    anchor.uses += 1;
                    cell.set(Some(anchor));
                    // `since` is below a millisecond: its nanoseconds are all of it.
                    let nanos = u64::from(anchor.wall_sub_ms) + u64::from(since.subsec_nanos());
                    return (
                        Self(anchor.wall + since),
                        anchor.wall_ms + nanos / 1_000_000,
                    );
                }
            }
            let wall = Self(SystemTime::now());
            let since_epoch = wall.since_epoch();
            let fresh = Instant::now()
                .checked_duration_since(now)
                .is_some_and(|gap| gap <= MAX_SKEW);
            cell.set(fresh.then_some(Anchor {
                mono: now,
                wall: wall.0,
                wall_ms: millis_of(since_epoch),
                wall_sub_ms: since_epoch.subsec_nanos() % 1_000_000,
                uses: 0,
            }));
            (wall, millis_of(since_epoch))
        })
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

/// How long a thread's wall-clock anchor serves [`Timestamp::at_instant`].
const REANCHOR: Duration = Duration::from_millis(1);
/// How many derivations an anchor serves at most (a bound for a clock that barely advances).
const MAX_USES: u32 = 4096;
/// The largest gap between the caller's monotonic reading and the anchor's wall-clock reading.
const MAX_SKEW: Duration = Duration::from_micros(20);

/// A monotonic instant and the wall-clock time read just after it.
#[derive(Clone, Copy)]
struct Anchor {
    mono: Instant,
    wall: SystemTime,
    /// `wall` in Unix milliseconds, and the nanoseconds past that millisecond.
    wall_ms: u64,
    wall_sub_ms: u32,
    uses: u32,
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
    fn a_derived_time_lies_between_wall_clock_readings_around_it() {
        for _ in 0..10_000 {
            let before = SystemTime::now();
            let (derived, millis) = Timestamp::at_instant(Instant::now());
            let after = SystemTime::now();
            assert_eq!(millis, derived.unix_millis());
            let derived = derived.0;
            assert!(before <= derived, "{before:?} > {derived:?}");
            assert!(derived <= after + MAX_SKEW, "{derived:?} > {after:?}");
        }
    }

    #[test]
    fn an_instant_that_is_not_fresh_gets_a_plain_reading() {
        let stale = Instant::now()
            .checked_sub(Duration::from_millis(2))
            .expect("the monotonic clock is past 2 ms");
        let before = SystemTime::now();
        let derived = Timestamp::at_instant(stale).0.0;
        assert!(before <= derived, "{before:?} > {derived:?}");
        // And it does not anchor: a later derivation is not based on it.
        let before = SystemTime::now();
        let derived = Timestamp::at_instant(Instant::now()).0.0;
        assert!(before <= derived, "{before:?} > {derived:?}");
    }

    #[test]
    fn serializes_as_a_string() {
        let json = serde_json::to_string(&Timestamp(UNIX_EPOCH)).unwrap();
        assert_eq!(json, "\"1970-01-01T00:00:00Z\"");
    }
}
