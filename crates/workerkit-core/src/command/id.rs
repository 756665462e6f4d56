//! Dispatch ids: UUIDv7, unique across processes and restarts, ordered by time.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
#[cfg(test)]
use std::time::SystemTime;
#[cfg(test)]
use std::time::UNIX_EPOCH;

use crate::retry::JitterRng;

/// The id of one dispatch: a UUIDv7 (48-bit Unix milliseconds, then random bits), so ids are
/// unique across processes and restarts and sort by creation time to the millisecond (ids made
/// within one millisecond are in no particular order).
///
/// Displayed in the hyphenated form, e.g. `019a6f0e-7c1d-7b3a-9f2e-4c5d6e7f8a9b`.
///
/// Stored as two 64-bit halves (high, low), which order as the 128-bit value does: a `u128`
/// would align every request, dispatch state and future that holds an id to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DispatchId(u64, u64);

impl fmt::Debug for DispatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DispatchId").field(&self.as_u128()).finish()
    }
}

thread_local! {
    /// The state of this thread's id generator (SplitMix64, as [`JitterRng`]); 0 until it is
    /// seeded at the first id. A `const` cell: no lazy-initialisation check or borrow flag.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The next 64 random bits of this thread's id generator.
fn next_random() -> u64 {
    RNG.with(|state| {
        let mut seed = state.get();
        if seed == 0 {
            seed = JitterRng::from_entropy().next_u64() | 1;
        }
        let mut rng = JitterRng::seeded(seed);
        let value = rng.next_u64();
        state.set(rng.state().max(1));
        value
    })
}

impl DispatchId {
    /// A new id.
    #[must_use]
    pub fn new() -> Self {
        Self::at_millis(crate::time::Timestamp::now().unix_millis())
    }

    /// A new id stamped with `millis` since the Unix epoch (saves a clock read when the caller
    /// has the time already).
    pub(crate) fn at_millis(millis: u64) -> Self {
        let millis = millis & 0xFFFF_FFFF_FFFF;
        let (a, b) = (next_random(), next_random());
        let rand_a = a & 0x0FFF; // 12 bits
        let rand_b = b & 0x3FFF_FFFF_FFFF_FFFF; // 62 bits
        let value = (u128::from(millis) << 80)
            | (0x7_u128 << 76)
            | (u128::from(rand_a) << 64)
            | (0b10_u128 << 62)
            | u128::from(rand_b);
        Self::from_u128(value)
    }

    const fn from_u128(value: u128) -> Self {
        Self((value >> 64) as u64, value as u64)
    }

    /// The 128-bit value.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        ((self.0 as u128) << 64) | self.1 as u128
    }
}

impl Default for DispatchId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DispatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 8-4-4-4-12 lowercase hex digits, encoded by hand: ids are formatted on hot paths
        // (JSON answers, request ids), where `write!` with five padded integers is slow.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 36];
        let mut value = self.as_u128();
        for position in (0..36).rev() {
            if matches!(position, 8 | 13 | 18 | 23) {
                continue;
            }
            out[position] = HEX[(value & 0xF) as usize];
            value >>= 4;
        }
        // Only ASCII hex digits and dashes were written.
        f.pad(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// The error of parsing a [`DispatchId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid dispatch id: expected a hyphenated UUID")]
pub struct ParseDispatchIdError;

impl FromStr for DispatchId {
    type Err = ParseDispatchIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
            return Err(ParseDispatchIdError);
        }
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseDispatchIdError);
        }
        u128::from_str_radix(&hex, 16)
            .map(Self::from_u128)
            .map_err(|_| ParseDispatchIdError)
    }
}

impl serde::Serialize for DispatchId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_unique_and_round_trip() {
        let a = DispatchId::new();
        let b = DispatchId::new();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "version 7: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant: {text}"
        );
        assert_eq!(text.parse::<DispatchId>().unwrap(), a);
        assert!("not-a-uuid".parse::<DispatchId>().is_err());
        assert!(
            "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
                .parse::<DispatchId>()
                .is_err()
        );
    }

    #[test]
    fn ids_carry_the_creation_millisecond_in_their_top_bits() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let id = DispatchId::new();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let millis = id.as_u128() >> 80;
        assert!(before <= millis && millis <= after);
    }
}
