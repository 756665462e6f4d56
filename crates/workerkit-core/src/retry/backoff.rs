//! Backoff delays with jitter, validated at construction.

use std::time::Duration;

use super::rng::JitterRng;

/// An invalid backoff or jitter setting.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffError {
    /// The multiplier is NaN or infinite.
    #[error("backoff multiplier must be finite, got {0}")]
    NonFiniteMultiplier(f64),
    /// The multiplier is below 1 (delays would shrink).
    #[error("backoff multiplier must be at least 1, got {0}")]
    MultiplierBelowOne(f64),
    /// The cap is below the first delay.
    #[error("backoff cap {max:?} is below the initial delay {initial:?}")]
    InvertedBounds {
        /// The first delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// The symmetric jitter fraction is NaN, infinite, or outside `[0, 1]`.
    #[error("jitter fraction must be within [0, 1], got {0}")]
    InvalidJitter(f64),
}

impl BackoffError {
    /// The stable code: `invalid_backoff`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        "invalid_backoff"
    }
}

/// How a delay is randomised, so that many retrying callers do not retry in lockstep.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness. This is the default.
    #[default]
    None,
    /// Uniform in `[0, delay)` ("full jitter").
    Full,
    /// Uniform in `[delay/2, delay)` ("equal jitter").
    Equal,
    /// Uniform in `[delay·(1−f), delay·(1+f))`, then capped.
    Symmetric(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Curve {
    Constant,
    Linear,
    Exponential(f64),
}

/// A backoff schedule: constant, linear or capped exponential delays, with jitter.
///
/// Attempt numbers are 1-based: `delay(1)` is the wait after the first failed attempt. The cap
/// holds after jitter, and jitter is still applied once the cap is reached.
///
/// ```
/// use std::time::Duration;
/// use workerkit_core::retry::{Backoff, Jitter, JitterRng};
///
/// let backoff = Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(50))?
///     .jitter(Jitter::Full)?;
/// assert_eq!(backoff.base_delay(4), Duration::from_millis(50)); // 80 ms, capped
/// let mut rng = JitterRng::seeded(7);
/// assert!(backoff.delay(4, &mut rng) < Duration::from_millis(50));
/// # Ok::<(), workerkit_core::retry::BackoffError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    curve: Curve,
    initial: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::none()
    }
}

impl Backoff {
    /// No delay between attempts.
    #[must_use]
    pub const fn none() -> Self {
        Self::constant(Duration::ZERO)
    }

    /// The same delay every time.
    #[must_use]
    pub const fn constant(delay: Duration) -> Self {
        Self {
            curve: Curve::Constant,
            initial: delay,
            max: delay,
            jitter: Jitter::None,
        }
    }

    /// `step`, `2·step`, `3·step`, ... capped at `max`.
    ///
    /// # Errors
    ///
    /// [`BackoffError::InvertedBounds`] when `max < step`.
    pub fn linear(step: Duration, max: Duration) -> Result<Self, BackoffError> {
        if max < step {
            return Err(BackoffError::InvertedBounds { initial: step, max });
        }
        Ok(Self {
            curve: Curve::Linear,
            initial: step,
            max,
            jitter: Jitter::None,
        })
    }

    /// `initial`, `initial·m`, `initial·m²`, ... capped at `max`.
    ///
    /// # Errors
    ///
    /// [`BackoffError::NonFiniteMultiplier`] for NaN or infinity (Go silently treats NaN as 1),
    /// [`BackoffError::MultiplierBelowOne`], [`BackoffError::InvertedBounds`] when `max < initial`.
    pub fn exponential(
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> Result<Self, BackoffError> {
        if !multiplier.is_finite() {
            return Err(BackoffError::NonFiniteMultiplier(multiplier));
        }
        if multiplier < 1.0 {
            return Err(BackoffError::MultiplierBelowOne(multiplier));
        }
        if max < initial {
            return Err(BackoffError::InvertedBounds { initial, max });
        }
        Ok(Self {
            curve: Curve::Exponential(multiplier),
            initial,
            max,
            jitter: Jitter::None,
        })
    }

    /// Sets the jitter.
    ///
    /// # Errors
    ///
    /// [`BackoffError::InvalidJitter`] for a symmetric fraction that is not finite or not within
    /// `[0, 1]`.
    pub fn jitter(mut self, jitter: Jitter) -> Result<Self, BackoffError> {
        if let Jitter::Symmetric(f) = jitter {
            if !f.is_finite() || !(0.0..=1.0).contains(&f) {
                return Err(BackoffError::InvalidJitter(f));
            }
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// The cap.
    #[must_use]
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay after failed attempt `attempt` (1-based; 0 counts as 1), before jitter.
    #[must_use]
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        match self.curve {
            Curve::Constant => self.initial,
            Curve::Linear => self.initial.saturating_mul(attempt).min(self.max),
            Curve::Exponential(m) => {
                let factor = m.powi(i32::try_from(attempt - 1).unwrap_or(i32::MAX));
                let secs = self.initial.as_secs_f64() * factor;
                if !secs.is_finite() || secs >= self.max.as_secs_f64() {
                    self.max
                } else {
                    Duration::try_from_secs_f64(secs)
                        .unwrap_or(self.max)
                        .min(self.max)
                }
            }
        }
    }

    /// The jittered delay after failed attempt `attempt`, never above the cap.
    pub fn delay(&self, attempt: u32, rng: &mut JitterRng) -> Duration {
        let base = self.base_delay(attempt);
        if base.is_zero() {
            return base;
        }
        let scale = |factor: f64| {
            Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(self.max)
        };
        let jittered = match self.jitter {
            Jitter::None => base,
            Jitter::Full => scale(rng.next_f64()),
            Jitter::Equal => scale(0.5 + rng.next_f64() / 2.0),
            Jitter::Symmetric(f) => scale((1.0 - f) + rng.next_f64() * 2.0 * f),
        };
        jittered.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn go_exponential_examples() {
        let b = Backoff::exponential(10 * MS, 2.0, Duration::MAX).unwrap();
        assert_eq!(b.base_delay(1), 10 * MS);
        assert_eq!(b.base_delay(4), 80 * MS);
        let capped = Backoff::exponential(10 * MS, 2.0, 50 * MS).unwrap();
        assert_eq!(capped.base_delay(4), 50 * MS);
        assert_eq!(capped.base_delay(u32::MAX), 50 * MS);
        assert_eq!(capped.base_delay(0), 10 * MS);
    }

    #[test]
    fn go_silent_normalisations_are_build_errors_here() {
        assert_eq!(
            Backoff::exponential(MS, f64::NAN, MS).unwrap_err().code(),
            "invalid_backoff"
        );
        assert!(matches!(
            Backoff::exponential(MS, f64::INFINITY, MS),
            Err(BackoffError::NonFiniteMultiplier(_))
        ));
        assert!(matches!(
            Backoff::exponential(MS, 0.5, MS),
            Err(BackoffError::MultiplierBelowOne(_))
        ));
        assert!(matches!(
            Backoff::exponential(10 * MS, 2.0, MS),
            Err(BackoffError::InvertedBounds { .. })
        ));
        assert!(matches!(
            Backoff::linear(10 * MS, MS),
            Err(BackoffError::InvertedBounds { .. })
        ));
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert!(
                Backoff::constant(MS)
                    .jitter(Jitter::Symmetric(bad))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn linear_saturates_instead_of_overflowing() {
        let b = Backoff::linear(Duration::MAX / 2, Duration::MAX).unwrap();
        assert_eq!(b.base_delay(3), Duration::MAX);
        let small = Backoff::linear(10 * MS, 25 * MS).unwrap();
        assert_eq!(
            [1, 2, 3].map(|a| small.base_delay(a)),
            [10 * MS, 20 * MS, 25 * MS]
        );
    }

    #[test]
    fn jitter_stays_in_bounds_spreads_and_respects_the_cap() {
        let cap = 100 * MS;
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Symmetric(0.5)] {
            let b = Backoff::exponential(10 * MS, 3.0, cap)
                .unwrap()
                .jitter(jitter)
                .unwrap();
            let mut rng = JitterRng::seeded(42);
            for attempt in 1..=8 {
                let base = b.base_delay(attempt);
                let (lo, hi) = match jitter {
                    Jitter::Full => (Duration::ZERO, base),
                    Jitter::Equal => (base / 2, base),
                    _ => (base / 2, cap.min(base * 3 / 2)),
                };
                let samples: Vec<_> = (0..200).map(|_| b.delay(attempt, &mut rng)).collect();
                assert!(samples.iter().all(|d| *d >= lo && *d <= hi && *d <= cap));
                let distinct: std::collections::HashSet<_> = samples.iter().collect();
                assert!(
                    distinct.len() > 50,
                    "{jitter:?} attempt {attempt} does not spread"
                );
            }
        }
    }

    #[test]
    fn jitter_is_still_applied_at_the_cap() {
        let b = Backoff::exponential(10 * MS, 2.0, 20 * MS)
            .unwrap()
            .jitter(Jitter::Full)
            .unwrap();
        let mut rng = JitterRng::seeded(3);
        let samples: Vec<_> = (0..100).map(|_| b.delay(10, &mut rng)).collect();
        assert!(samples.iter().any(|d| *d < 15 * MS));
    }

    #[test]
    fn first_attempt_waits_about_the_initial_delay() {
        let b = Backoff::exponential(100 * MS, 2.0, Duration::from_secs(10))
            .unwrap()
            .jitter(Jitter::Symmetric(0.1))
            .unwrap();
        let mut rng = JitterRng::seeded(9);
        for _ in 0..100 {
            let d = b.delay(1, &mut rng);
            assert!(d >= 90 * MS && d <= 110 * MS, "{d:?}");
        }
    }

    #[test]
    fn seeded_jitter_is_deterministic() {
        let b = Backoff::constant(Duration::from_secs(1))
            .jitter(Jitter::Full)
            .unwrap();
        let run = |seed| {
            let mut rng = JitterRng::seeded(seed);
            (1..=5).map(|a| b.delay(a, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
