//! Supervision: restart policy, restart intensity, and the heartbeat watchdog.
//!
//! A worker's [`RestartPolicy`] says what happens when an incarnation fails: with
//! [`RestartMode::Never`] (the default, and the Go behaviour) it stays `failed`; otherwise it
//! becomes `restarting`, its failed incarnation is stopped (its `stop` runs, its child tasks are
//! aborted and awaited), and after a backoff a new incarnation starts, made by the worker's
//! factory when it has one. A requested stop or drain never counts as a failure.
//!
//! Restarts are bounded twice: the [`Backoff`] spaces them (its attempt counter resets after a
//! healthy run of [`RestartPolicy::reset_after`]), and the [`Intensity`] gives up when more than
//! `max_restarts` would happen within `window`, as in OTP. When the policy gives up, the worker
//! becomes `failed` with [`gave_up`](crate::status::WorkerStatus::gave_up) set, and only then does
//! its [`FailurePolicy`](crate::FailurePolicy) apply: `fail_runtime` lets a Kubernetes pod be
//! restarted once in-process restarts did not help.
//!
//! A [`Watchdog`] (opt-in) expects [`WorkerContext::beat`](crate::WorkerContext::beat) at least
//! once per timeout and acts on a stall as its [`StallAction`] says.
//!
//! See `docs/supervision.md` for the full story, and the transition table.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::retry::{Backoff, Jitter};
use crate::status::Exit;

/// When a failed worker is restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RestartMode {
    /// Never: a failed worker stays `failed` (the default, as in Go).
    #[default]
    Never,
    /// After a failure, unless its error was marked
    /// [`permanent`](crate::retry::permanent): a permanent failure gives up at once.
    OnFailure,
    /// After every failure, permanent ones included.
    Always,
}

impl RestartMode {
    /// The wire name (`never`, `on_failure`, `always`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
        }
    }
}

impl fmt::Display for RestartMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The default restart backoff: 100 ms, doubling, capped at 30 s, with equal jitter (each delay
/// is between half and all of its base).
#[must_use]
pub fn default_restart_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(30))
        .and_then(|b| b.jitter(Jitter::Equal))
        .unwrap_or_else(|_| Backoff::constant(Duration::from_millis(100)))
}

/// The default [`RestartPolicy::reset_after`]: a run of one minute resets the backoff.
pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(60);

/// The default restart intensity: at most 10 restarts within one minute.
pub const DEFAULT_INTENSITY: Intensity = Intensity {
    max_restarts: 10,
    window: Duration::from_secs(60),
};

/// At most `max_restarts` restarts within any `window` (OTP's restart intensity). One more
/// failure within the window gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Intensity {
    max_restarts: u32,
    window: Duration,
}

impl Intensity {
    /// At most `max_restarts` restarts within `window`.
    ///
    /// # Errors
    ///
    /// [`SupervisionError::ZeroMaxRestarts`] (use [`RestartMode::Never`] instead) and
    /// [`SupervisionError::ZeroWindow`].
    pub const fn new(max_restarts: u32, window: Duration) -> Result<Self, SupervisionError> {
        if max_restarts == 0 {
            return Err(SupervisionError::ZeroMaxRestarts);
        }
        if window.is_zero() {
            return Err(SupervisionError::ZeroWindow);
        }
        Ok(Self {
            max_restarts,
            window,
        })
    }

    /// The most restarts allowed within [`window`](Self::window).
    #[must_use]
    pub const fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The sliding window.
    #[must_use]
    pub const fn window(&self) -> Duration {
        self.window
    }
}

/// A worker's restart policy; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use workerkit_core::retry::Backoff;
/// use workerkit_core::supervise::{Intensity, RestartPolicy};
///
/// let policy = RestartPolicy::on_failure()
///     .backoff(Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(5))?)
///     .reset_after(Duration::from_secs(30))
///     .intensity(Intensity::new(5, Duration::from_secs(60))?);
/// # let _ = policy;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestartPolicy {
    mode: RestartMode,
    backoff: Backoff,
    reset_after: Duration,
    intensity: Option<Intensity>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::never()
    }
}

impl RestartPolicy {
    fn with_mode(mode: RestartMode) -> Self {
        Self {
            mode,
            backoff: default_restart_backoff(),
            reset_after: DEFAULT_RESET_AFTER,
            intensity: Some(DEFAULT_INTENSITY),
        }
    }

    /// Never restart (the default).
    #[must_use]
    pub fn never() -> Self {
        Self::with_mode(RestartMode::Never)
    }

    /// Restart after failures that are not [`permanent`](crate::retry::permanent), with the
    /// default backoff, reset and intensity.
    #[must_use]
    pub fn on_failure() -> Self {
        Self::with_mode(RestartMode::OnFailure)
    }

    /// Restart after every failure, with the default backoff, reset and intensity.
    #[must_use]
    pub fn always() -> Self {
        Self::with_mode(RestartMode::Always)
    }

    /// Sets the backoff between restarts (the same type as command retry's; attempt 1 is the
    /// delay before the first restart after a healthy run).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// An incarnation that ran at least this long before failing resets the backoff to its
    /// first delay. `Duration::ZERO` resets it after every successful start.
    #[must_use]
    pub fn reset_after(mut self, healthy: Duration) -> Self {
        self.reset_after = healthy;
        self
    }

    /// Sets the restart intensity.
    #[must_use]
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = Some(intensity);
        self
    }

    /// No intensity bound: restart for ever (the backoff still spaces restarts).
    #[must_use]
    pub fn unbounded(mut self) -> Self {
        self.intensity = None;
        self
    }

    /// The mode.
    #[must_use]
    pub fn mode(&self) -> RestartMode {
        self.mode
    }

    /// The backoff between restarts.
    #[must_use]
    pub fn backoff_schedule(&self) -> &Backoff {
        &self.backoff
    }

    /// The healthy run that resets the backoff.
    #[must_use]
    pub fn healthy_after(&self) -> Duration {
        self.reset_after
    }

    /// The intensity bound, if any.
    #[must_use]
    pub fn intensity_bound(&self) -> Option<Intensity> {
        self.intensity
    }

    /// Whether a failure (permanent or not) is restarted under this policy.
    pub(crate) fn restarts(&self, permanent: bool) -> bool {
        match self.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => !permanent,
            RestartMode::Always => true,
        }
    }
}

/// What the [`Watchdog`] does when a worker stalls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StallAction {
    /// Emit a stall event and mark the worker `stalled` in its status; it keeps running, and the
    /// mark clears at its next beat (the default).
    #[default]
    Report,
    /// As `Report`, and liveness fails while the worker is stalled: for a stall that only a
    /// process restart (Kubernetes) can cure.
    FailLiveness,
    /// End the incarnation as failed (reason `stalled`): its stop signal fires and it stays
    /// failed; its failure policy applies. No restart, whatever the restart policy.
    Cancel,
    /// End the incarnation as failed (reason `stalled`) and let the restart policy restart it;
    /// needs a restart policy other than `never`.
    Restart,
}

impl StallAction {
    /// The wire name (`report`, `fail_liveness`, `cancel`, `restart`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::FailLiveness => "fail_liveness",
            Self::Cancel => "cancel",
            Self::Restart => "restart",
        }
    }
}

/// The shortest watchdog timeout: the watchdog wakes every half timeout, and tokio's timers
/// have a resolution of one millisecond.
pub const MIN_WATCHDOG_TIMEOUT: Duration = Duration::from_millis(2);

/// A heartbeat watchdog: the worker calls [`WorkerContext::beat`](crate::WorkerContext::beat)
/// at least once per `timeout`; a worker with no beat for `timeout` is stalled, found within
/// 1.5 × `timeout`.
///
/// Beats are a counter increment (no clock read, no wake-up); the watchdog wakes twice per
/// timeout, whether beats come or not, and compares the counter. The clock starts when the
/// incarnation is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Watchdog {
    timeout: Duration,
    action: StallAction,
}

impl Watchdog {
    /// A watchdog with `timeout` and `action`.
    ///
    /// # Errors
    ///
    /// [`SupervisionError::ZeroWatchdogTimeout`]: a zero timeout would mean "always stalled";
    /// [`SupervisionError::WatchdogTimeoutTooShort`] below [`MIN_WATCHDOG_TIMEOUT`] (tokio's
    /// timers have a resolution of one millisecond).
    pub const fn new(timeout: Duration, action: StallAction) -> Result<Self, SupervisionError> {
        if timeout.is_zero() {
            return Err(SupervisionError::ZeroWatchdogTimeout);
        }
        if timeout.as_nanos() < MIN_WATCHDOG_TIMEOUT.as_nanos() {
            return Err(SupervisionError::WatchdogTimeoutTooShort);
        }
        Ok(Self { timeout, action })
    }

    /// The timeout.
    #[must_use]
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The action on a stall.
    #[must_use]
    pub const fn action(&self) -> StallAction {
        self.action
    }
}

/// An invalid supervision setting: a build error, never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisionError {
    /// An intensity of zero restarts (use `RestartMode::Never`).
    #[error("restart intensity: max_restarts must not be zero (use RestartPolicy::never)")]
    ZeroMaxRestarts,
    /// An intensity window of zero.
    #[error("restart intensity: window must not be zero")]
    ZeroWindow,
    /// A watchdog timeout of zero.
    #[error("watchdog timeout must not be zero")]
    ZeroWatchdogTimeout,
    /// A watchdog timeout below [`MIN_WATCHDOG_TIMEOUT`].
    #[error("watchdog timeout must be at least 2 ms (tokio's timer resolution is 1 ms)")]
    WatchdogTimeoutTooShort,
    /// `StallAction::Restart` on a worker whose restart policy is `never`.
    #[error("watchdog action restart needs a restart policy other than never")]
    RestartActionWithoutPolicy,
}

impl SupervisionError {
    /// The stable code (`invalid_config`).
    #[must_use]
    pub fn code(&self) -> &'static str {
        "invalid_config"
    }
}

/// What a restarted incarnation learns about its restart, from
/// [`WorkerContext::restart`](crate::WorkerContext::restart).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartInfo {
    /// The consecutive restart attempt (1 for the first restart after a healthy run; it grows
    /// with the backoff and resets with it).
    pub attempt: u32,
    /// Restarts of this worker so far, this one included.
    pub restarts: u64,
    /// How the previous incarnation ended.
    pub previous: Exit,
}

pub(crate) type SharedRestartInfo = Arc<RestartInfo>;
