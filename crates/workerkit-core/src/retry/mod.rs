//! Retry policy: bounded attempts, backoff with jitter, a predicate, permanent errors, and an
//! optional total budget.
//!
//! Used for command retry, and by supervised restart for its backoff.
//!
//! ```
//! use std::time::Duration;
//! use workerkit_core::retry::{Backoff, Jitter, RetryPolicy};
//!
//! let policy = RetryPolicy::attempts(5)?
//!     .backoff(
//!         Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))?
//!             .jitter(Jitter::Full)?,
//!     )
//!     .total_budget(Duration::from_secs(10))?;
//! assert_eq!(policy.max_attempts(), 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backoff;
mod rng;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use backoff::{Backoff, BackoffError, Jitter};
pub use rng::JitterRng;

use crate::failure::BoxError;

/// An invalid retry policy.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryPolicyError {
    /// Zero attempts would never run the operation.
    #[error("max attempts must be at least 1")]
    ZeroAttempts,
    /// A zero total budget would never run a retry.
    #[error("total retry budget must not be zero")]
    ZeroBudget,
    /// The backoff is invalid.
    #[error(transparent)]
    Backoff(#[from] BackoffError),
}

impl RetryPolicyError {
    /// The stable code: `invalid_retry_policy` (or the backoff's).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Backoff(e) => e.code(),
            _ => "invalid_retry_policy",
        }
    }
}

type Predicate = Arc<dyn Fn(&(dyn StdError + 'static)) -> bool + Send + Sync>;

/// When and how often to retry a failed operation.
///
/// `max_attempts` counts every attempt, the first included; [`RetryPolicy::never`] is one
/// attempt. An error marked [`permanent`] is never retried; otherwise the optional predicate
/// decides; then the backoff gives the delay, and a retry whose delay would overrun the optional
/// total budget is not made.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    retry_if: Option<Predicate>,
    budget: Option<Duration>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_if", &self.retry_if.is_some())
            .field("budget", &self.budget)
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::never()
    }
}

impl RetryPolicy {
    /// One attempt, no retry. This is the default.
    #[must_use]
    pub const fn never() -> Self {
        Self {
            max_attempts: 1,
            backoff: Backoff::none(),
            retry_if: None,
            budget: None,
        }
    }

    /// Up to `max_attempts` attempts in all, with no delay until a backoff is set.
    ///
    /// # Errors
    ///
    /// [`RetryPolicyError::ZeroAttempts`] for 0.
    pub fn attempts(max_attempts: u32) -> Result<Self, RetryPolicyError> {
        if max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        Ok(Self {
            max_attempts,
            ..Self::never()
        })
    }

    /// Sets the backoff between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Retries only errors for which `predicate` returns true (permanent errors never).
    #[must_use]
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&(dyn StdError + 'static)) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// Bounds the time across all attempts and delays: no retry starts whose delay would end
    /// past the budget.
    ///
    /// # Errors
    ///
    /// [`RetryPolicyError::ZeroBudget`] for zero.
    pub fn total_budget(mut self, budget: Duration) -> Result<Self, RetryPolicyError> {
        if budget.is_zero() {
            return Err(RetryPolicyError::ZeroBudget);
        }
        self.budget = Some(budget);
        Ok(self)
    }

    /// The maximum number of attempts, the first included.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff.
    #[must_use]
    pub fn backoff_schedule(&self) -> &Backoff {
        &self.backoff
    }

    /// The total budget, if any.
    #[must_use]
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }

    /// Whether to retry after failed attempt `attempt` (1-based) with `error`, `elapsed` after
    /// the first attempt began; `Some(delay)` to retry after `delay`.
    pub fn next_delay(
        &self,
        attempt: u32,
        error: &(dyn StdError + 'static),
        elapsed: Duration,
        rng: &mut JitterRng,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts || is_permanent(error) {
            return None;
        }
        if let Some(predicate) = &self.retry_if {
            let retry = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| predicate(error)))
                .unwrap_or(false);
            if !retry {
                return None;
            }
        }
        let delay = self.backoff.delay(attempt, rng);
        match self.budget {
            Some(budget) if elapsed.saturating_add(delay) >= budget => None,
            _ => Some(delay),
        }
    }
}

/// An error marked as permanent: never retried.
#[derive(Debug)]
pub struct Permanent(BoxError);

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Marks `error` as permanent: no retry policy retries it. Its public presentation is kept.
pub fn permanent(error: impl Into<BoxError>) -> BoxError {
    Box::new(Permanent(error.into()))
}

/// Whether `error`, or any error in its `source()` chain, was marked [`permanent`] (a
/// [`PayloadError`](crate::command::PayloadError) is permanent too).
#[must_use]
pub fn is_permanent(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    let mut depth = 0;
    while let Some(e) = current {
        // A bad payload stays bad however often it is sent.
        if e.is::<Permanent>() || e.is::<crate::command::PayloadError>() {
            return true;
        }
        depth += 1;
        if depth > 64 {
            return false;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(text: &str) -> BoxError {
        std::io::Error::other(text.to_owned()).into()
    }

    #[test]
    fn zero_attempts_and_zero_budget_are_build_errors() {
        assert_eq!(
            RetryPolicy::attempts(0).unwrap_err(),
            RetryPolicyError::ZeroAttempts
        );
        assert_eq!(
            RetryPolicy::never()
                .total_budget(Duration::ZERO)
                .unwrap_err()
                .code(),
            "invalid_retry_policy"
        );
    }

    #[test]
    fn never_never_retries_and_attempts_counts_the_first() {
        let mut rng = JitterRng::seeded(1);
        let err = io("x");
        assert_eq!(
            RetryPolicy::never().next_delay(1, &*err, Duration::ZERO, &mut rng),
            None
        );
        let p = RetryPolicy::attempts(3).unwrap();
        assert_eq!(
            p.next_delay(1, &*err, Duration::ZERO, &mut rng),
            Some(Duration::ZERO)
        );
        assert!(p.next_delay(2, &*err, Duration::ZERO, &mut rng).is_some());
        assert_eq!(p.next_delay(3, &*err, Duration::ZERO, &mut rng), None);
    }

    #[test]
    fn permanent_errors_are_never_retried_even_when_wrapped() {
        let mut rng = JitterRng::seeded(1);
        let p = RetryPolicy::attempts(5).unwrap();
        let err = crate::failure::with_failure(permanent(io("bad input")), "bad", "bad input");
        assert!(is_permanent(&*err));
        assert_eq!(p.next_delay(1, &*err, Duration::ZERO, &mut rng), None);
        // The explicit public presentation survives the marker.
        let public =
            crate::failure::Failure::from_error(&*err, crate::failure::Failure::command_failed());
        assert_eq!(public.code(), "bad");
    }

    #[test]
    fn predicate_decides_and_a_panicking_predicate_means_no_retry() {
        let mut rng = JitterRng::seeded(1);
        let p = RetryPolicy::attempts(5)
            .unwrap()
            .retry_if(|e| e.to_string().contains("transient"));
        assert!(
            p.next_delay(1, &*io("transient"), Duration::ZERO, &mut rng)
                .is_some()
        );
        assert!(
            p.next_delay(1, &*io("other"), Duration::ZERO, &mut rng)
                .is_none()
        );
        let panicky = RetryPolicy::attempts(5)
            .unwrap()
            .retry_if(|_| panic!("bug"));
        assert!(
            panicky
                .next_delay(1, &*io("x"), Duration::ZERO, &mut rng)
                .is_none()
        );
    }

    #[test]
    fn total_budget_stops_retries_that_would_overrun() {
        let mut rng = JitterRng::seeded(1);
        let p = RetryPolicy::attempts(10)
            .unwrap()
            .backoff(Backoff::constant(Duration::from_secs(1)))
            .total_budget(Duration::from_secs(3))
            .unwrap();
        let err = io("x");
        assert_eq!(
            p.next_delay(1, &*err, Duration::from_secs(1), &mut rng),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            p.next_delay(2, &*err, Duration::from_secs(2), &mut rng),
            None
        );
    }
}
