//! Worker and runtime lifecycle states.

use std::fmt;
use std::str::FromStr;

/// The lifecycle state of a worker, or the aggregate state of a runtime.
///
/// Wire names are the Go original's (`registered`, `starting`, ...). See `docs/lifecycle.md` for the
/// full transition table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LifecycleState {
    /// Registered and never started. This is the default.
    #[default]
    Registered,
    /// `Worker::start` is running.
    Starting,
    /// Started successfully and not asked to stop.
    Running,
    /// Asked to finish its admitted work: not ready, admits no new commands, keeps running.
    Draining,
    /// `Worker::stop` is running.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Failed: start failed, the worker reported a failure, panicked, or its stop failed.
    Failed,
    /// Its incarnation failed and its restart policy restarts it: the failed incarnation is
    /// stopped, then a new one starts after a backoff (see `WorkerStatus::next_restart_at`).
    /// A transitional state, not a failure: neither the failure policy nor liveness sees it.
    Restarting,
}

impl LifecycleState {
    /// Every state, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::Registered,
        Self::Starting,
        Self::Running,
        Self::Draining,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
        Self::Restarting,
    ];

    /// The wire name (`registered`, `starting`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Restarting => "restarting",
        }
    }

    /// Whether a worker in this state has a live incarnation (starting, running, draining or
    /// stopping).
    #[must_use]
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Draining | Self::Stopping
        )
    }

    /// Whether this state is a transition between two resting states (starting, draining,
    /// stopping, restarting).
    #[must_use]
    pub const fn is_transitional(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Draining | Self::Stopping | Self::Restarting
        )
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether `start` may begin from this state.
    pub(crate) const fn can_start(self) -> bool {
        matches!(self, Self::Registered | Self::Stopped | Self::Failed)
    }

    /// Whether `stop` may begin from this state.
    pub(crate) const fn can_stop(self) -> bool {
        matches!(
            self,
            Self::Running | Self::Draining | Self::Failed | Self::Restarting
        )
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error returned when parsing an unknown wire name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct ParseEnumError {
    pub(crate) what: &'static str,
    pub(crate) value: String,
}

impl FromStr for LifecycleState {
    type Err = ParseEnumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                what: "lifecycle state",
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_the_go_ones() {
        let names: Vec<_> = LifecycleState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "registered",
                "starting",
                "running",
                "draining",
                "stopping",
                "stopped",
                "failed",
                "restarting"
            ]
        );
        for state in LifecycleState::ALL {
            assert_eq!(state.as_str().parse::<LifecycleState>().unwrap(), state);
            assert_eq!(
                state.index(),
                LifecycleState::ALL
                    .iter()
                    .position(|s| *s == state)
                    .unwrap()
            );
        }
        assert!("Running".parse::<LifecycleState>().is_err());
    }

    #[test]
    fn transition_table() {
        use LifecycleState::*;
        let start: Vec<_> = LifecycleState::ALL
            .into_iter()
            .filter(|s| s.can_start())
            .collect();
        assert_eq!(start, [Registered, Stopped, Failed]);
        let stop: Vec<_> = LifecycleState::ALL
            .into_iter()
            .filter(|s| s.can_stop())
            .collect();
        assert_eq!(stop, [Running, Draining, Failed, Restarting]);
    }
}
