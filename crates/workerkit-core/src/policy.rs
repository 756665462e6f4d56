//! Failure, panic and readiness policies.

use std::fmt;
use std::str::FromStr;

use crate::lifecycle::ParseEnumError;

macro_rules! wire_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $wire:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stable wire name.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ParseEnumError { what: $what, value: s.to_owned() })
            }
        }
    };
}

/// What a worker's failure does to the runtime, while that worker is `failed`.
///
/// Once the worker is stopped or started again, its failure no longer counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailurePolicy {
    /// The worker fails alone: other workers keep running and admitting commands; the runtime's
    /// readiness changes only through the readiness policy. This is the default.
    #[default]
    Isolate,
    /// As `Isolate`, and the runtime is not ready while the worker is failed, even if the worker
    /// does not contribute to readiness.
    MarkRuntimeUnready,
    /// The runtime's aggregate state becomes `failed`: it is not ready, not live, and admits no
    /// commands to any worker.
    FailRuntime,
}

wire_enum!(FailurePolicy, "failure policy", {
    Isolate => "isolate",
    MarkRuntimeUnready => "mark_runtime_unready",
    FailRuntime => "fail_runtime",
});

/// What happens when worker code panics.
///
/// Panics are caught wherever worker code runs: `start`, `stop`, a [`LoopWorker`]'s loop and its
/// hooks, and readiness checks. Either way the worker becomes `failed` with exit reason
/// `panicked`, and a failure event with `panic: true` is emitted.
///
/// [`LoopWorker`]: crate::LoopWorker
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PanicPolicy {
    /// The panic is recovered and reported as a failure, which then follows the worker's
    /// [`FailurePolicy`]. This is the default.
    #[default]
    Recover,
    /// After the same bookkeeping as `Recover`, the panic is resumed on the caller of the
    /// lifecycle operation that ran the code (`start`, `stop`, ...), as Go's `crash` policy does.
    ///
    /// Where no caller is waiting (a loop task or a readiness check task), the panic escalates
    /// instead: the worker's failure counts as [`FailurePolicy::FailRuntime`] whatever its own
    /// failure policy, so the runtime becomes `failed` and not live, and an orchestrator such as
    /// Kubernetes restarts the process. The panic payload is not resumed anywhere in that case.
    Propagate,
}

wire_enum!(PanicPolicy, "panic policy", {
    Recover => "recover",
    Propagate => "propagate",
});

/// Which workers decide whether the runtime is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReadinessPolicy {
    /// The runtime is ready when every worker that contributes to readiness is running and
    /// ready. With no contributing worker, it is ready when some worker runs and none is in
    /// transition. This is the default.
    #[default]
    ContributingWorkers,
    /// The runtime is ready when it has workers and every one is running and ready.
    AllWorkers,
}

wire_enum!(ReadinessPolicy, "readiness policy", {
    ContributingWorkers => "contributing_workers",
    AllWorkers => "all_workers",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for p in FailurePolicy::ALL {
            assert_eq!(p.as_str().parse::<FailurePolicy>().unwrap(), *p);
        }
        for p in PanicPolicy::ALL {
            assert_eq!(p.as_str().parse::<PanicPolicy>().unwrap(), *p);
        }
        for p in ReadinessPolicy::ALL {
            assert_eq!(p.as_str().parse::<ReadinessPolicy>().unwrap(), *p);
        }
        assert_eq!(
            FailurePolicy::MarkRuntimeUnready.as_str(),
            "mark_runtime_unready"
        );
        assert!("bogus".parse::<FailurePolicy>().is_err());
    }
}
