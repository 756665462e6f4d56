//! Every error this crate returns, one type per operation.
//!
//! Each has a stable snake_case [`code`](LifecycleError::code), the only thing an HTTP layer should
//! map to a status. Their `Display` never prints a worker's own error text: the private cause is
//! reachable through [`std::error::Error::source`] for the direct caller only.

use std::sync::Arc;
use std::time::Duration;

use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::name::NameError;
use crate::observe::{Cause, Operation};
use crate::status::ExitReason;

/// A private error cause carried by an error value, shared with the observers that saw it.
///
/// It dereferences to the worker's own error, and the carrying error's
/// [`source()`](std::error::Error::source) is that error itself, so callers can downcast it.
#[derive(Clone, Debug)]
pub struct SharedCause(Cause);

impl SharedCause {
    pub(crate) fn new(cause: Cause) -> Self {
        Self(cause)
    }

    /// The shared error.
    #[must_use]
    pub fn as_arc(&self) -> &Arc<dyn std::error::Error + Send + Sync + 'static> {
        &self.0
    }
}

impl std::ops::Deref for SharedCause {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// An invalid runtime configuration, from [`RuntimeBuilder::build`](crate::RuntimeBuilder::build).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The runtime name is invalid.
    #[error("invalid runtime identity: {0}")]
    InvalidName(#[from] NameError),
    /// A duration or limit setting was zero; use the matching `no_*` setter to disable a
    /// timeout.
    #[error("{setting} must not be zero")]
    ZeroDuration {
        /// The setting's name.
        setting: &'static str,
    },
}

impl BuildError {
    /// The stable code: `invalid_name` or `invalid_config`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::ZeroDuration { .. } => "invalid_config",
        }
    }
}

/// A worker could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The worker's name is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A worker with this name is already registered.
    #[error("worker already registered: {worker}")]
    AlreadyRegistered {
        /// The qualified worker name.
        worker: String,
    },
    /// A command's name is invalid.
    #[error("worker {worker:?}: {error}")]
    InvalidCommandName {
        /// The qualified worker name.
        worker: String,
        /// What is wrong with the name.
        error: NameError,
    },
    /// Two commands of the worker have the same name.
    #[error("command already registered: {worker}/{command}")]
    CommandAlreadyRegistered {
        /// The qualified worker name.
        worker: String,
        /// The command name.
        command: String,
    },
    /// The runtime is shutting down or shut down.
    #[error("runtime {runtime:?} is shutting down; registration is closed")]
    ShuttingDown {
        /// The runtime's name.
        runtime: String,
    },
    /// A duration or limit setting was zero.
    #[error("worker {worker:?}: {setting} must not be zero")]
    ZeroDuration {
        /// The qualified worker name.
        worker: String,
        /// The setting's name.
        setting: &'static str,
    },
    /// The supervision settings do not fit together.
    #[error("worker {worker:?}: {error}")]
    Supervision {
        /// The qualified worker name.
        worker: String,
        /// What is wrong.
        error: crate::supervise::SupervisionError,
    },
}

impl RegisterError {
    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::AlreadyRegistered { .. } => "worker_already_registered",
            Self::InvalidCommandName { .. } => "invalid_command_name",
            Self::CommandAlreadyRegistered { .. } => "command_already_registered",
            Self::ShuttingDown { .. } => "runtime_shutting_down",
            Self::ZeroDuration { .. } | Self::Supervision { .. } => "invalid_config",
        }
    }
}

/// A lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The worker name is invalid.
    #[error("invalid worker name: {0}")]
    InvalidName(#[from] NameError),
    /// No worker has this name.
    #[error("worker not found: {worker}")]
    WorkerNotFound {
        /// The name as given.
        worker: String,
    },
    /// The worker's state does not allow the operation.
    #[error("invalid worker state: cannot {operation} worker {worker:?} in state {state:?}", state = state.as_str())]
    InvalidState {
        /// The qualified worker name.
        worker: String,
        /// Its state when the operation was tried.
        state: LifecycleState,
        /// The operation.
        operation: Operation,
    },
    /// The worker's start failed (error, timeout or panic); the worker is now `failed`.
    #[error("worker {worker:?} failed to start: {failure}")]
    StartFailed {
        /// The qualified worker name.
        worker: String,
        /// The public failure.
        failure: Failure,
        /// How the incarnation ended.
        reason: ExitReason,
        /// The private cause.
        #[source]
        cause: Option<SharedCause>,
    },
    /// The worker's stop failed (error, timeout or panic); the worker is now `failed`.
    #[error("worker {worker:?} failed to stop: {failure}")]
    StopFailed {
        /// The qualified worker name.
        worker: String,
        /// The public failure.
        failure: Failure,
        /// The private cause.
        #[source]
        cause: Option<SharedCause>,
    },
    /// A lifecycle operation was called where waiting for it would deadlock: from inside another
    /// one (a worker's `start` or `stop`, or an observer called during one), or from a loop
    /// worker's own loop when the operation would stop or restart that worker (`stop` or
    /// `start` of itself, `stop_all`, `start_all`, `shutdown`). A loop that wants its worker gone returns from the loop (an error fails the
    /// worker) or reports a failure.
    #[error(
        "{operation} refused: waiting for it here would deadlock (called inside a lifecycle operation, or from the loop it would stop)"
    )]
    Reentrant {
        /// The operation that was refused.
        operation: Operation,
    },
    /// The runtime has been shut down.
    #[error("runtime {runtime:?} has been shut down")]
    ShutDown {
        /// The runtime's name.
        runtime: String,
    },
    /// The worker still has commands in flight (removal waits for none).
    #[error("worker {worker:?} has {in_flight} commands in flight")]
    WorkerBusy {
        /// The qualified worker name.
        worker: String,
        /// Commands in flight.
        in_flight: usize,
    },
    /// A bulk operation met several errors; each is kept.
    #[error("{} workers failed: {}", errors.len(), join(errors))]
    Multiple {
        /// The errors, in the order met.
        errors: Vec<Self>,
    },
    /// The operation was called outside a tokio runtime.
    #[error("{operation} must run inside a tokio runtime")]
    NoAsyncRuntime {
        /// The refused operation.
        operation: Operation,
    },
    /// The tokio runtime shut down while the operation was running.
    #[error("{operation} was interrupted because the async runtime shut down")]
    Interrupted {
        /// The interrupted operation.
        operation: Operation,
    },
}

fn join(errors: &[LifecycleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LifecycleError {
    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::WorkerNotFound { .. } => "worker_not_found",
            Self::InvalidState { .. } => "invalid_worker_state",
            Self::StartFailed { reason, .. } => match reason {
                ExitReason::StartTimedOut => "start_timed_out",
                ExitReason::Panicked => "worker_panicked",
                _ => "start_failed",
            },
            Self::StopFailed { .. } => "stop_failed",
            Self::Reentrant { .. } => "reentrant_lifecycle_call",
            Self::ShutDown { .. } => "runtime_shut_down",
            Self::Multiple { .. } => "multiple_failures",
            Self::WorkerBusy { .. } => "worker_busy",
            Self::NoAsyncRuntime { .. } => "no_async_runtime",
            Self::Interrupted { .. } => "interrupted",
        }
    }

    /// The worker this error concerns, if it concerns one.
    #[must_use]
    pub fn worker(&self) -> Option<&str> {
        match self {
            Self::WorkerNotFound { worker }
            | Self::InvalidState { worker, .. }
            | Self::StartFailed { worker, .. }
            | Self::StopFailed { worker, .. }
            | Self::WorkerBusy { worker, .. } => Some(worker),
            Self::InvalidName(e) => Some(e.name()),
            _ => None,
        }
    }

    /// The public failure, for start and stop failures.
    #[must_use]
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::StartFailed { failure, .. } | Self::StopFailed { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// A worker that a shutdown could not stop cleanly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Unfinished {
    /// The qualified worker name.
    pub worker: String,
    /// Its state when the shutdown gave up on it.
    pub state: LifecycleState,
    /// Why, publicly.
    pub failure: Failure,
}

/// What a graceful shutdown did. JSON: camelCase, `elapsed` in seconds (a float).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Workers stopped by this shutdown (qualified names), in stop order. Shared with the
    /// runtime's records, not copied: a shutdown of many workers allocates nothing per worker
    /// for its report.
    pub stopped: Vec<Arc<str>>,
    /// Commands still in flight when the idle wait gave up (0 when it did not).
    pub abandoned_in_flight: usize,
    /// Whether the drain and idle-wait budget ran out.
    pub deadline_exceeded: bool,
    /// Worker tasks (loops, checks, spawned tasks) still running when the shutdown returned:
    /// code that ignored its stop signal past the stop budget.
    pub lingering_tasks: usize,
    /// How long the shutdown took (tokio clock).
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// The names in [`stopped`](Self::stopped), as `&str`.
    #[must_use]
    pub fn stopped_names(&self) -> Vec<&str> {
        self.stopped.iter().map(|name| &**name).collect()
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A graceful shutdown finished, but not cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// Some workers did not stop cleanly, or the budget ran out; the report says what was done.
    #[error("shutdown incomplete: {}", describe(unfinished, report))]
    Incomplete {
        /// Workers that did not stop cleanly (failed to stop, or ran out of time).
        unfinished: Vec<Unfinished>,
        /// What was done.
        report: ShutdownReport,
    },
    /// A shutdown was called from inside a lifecycle operation.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

fn describe(unfinished: &[Unfinished], report: &ShutdownReport) -> String {
    let mut parts = Vec::new();
    if report.deadline_exceeded {
        parts.push(format!(
            "deadline exceeded with {} commands in flight",
            report.abandoned_in_flight
        ));
    }
    if !unfinished.is_empty() {
        let names: Vec<_> = unfinished
            .iter()
            .map(|u| format!("{} ({})", u.worker, u.failure.code()))
            .collect();
        parts.push(format!("workers not stopped cleanly: {}", names.join(", ")));
    }
    parts.join("; ")
}

impl ShutdownError {
    /// The stable code: `shutdown_incomplete`, or the lifecycle error's.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Incomplete { .. } => "shutdown_incomplete",
            Self::Lifecycle(e) => e.code(),
        }
    }
}

/// A call on a [`WorkerContext`](crate::WorkerContext) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The context belongs to an earlier incarnation (or a failed start attempt) of the worker.
    #[error("stale worker context for {worker:?}: incarnation={incarnation} current={current}")]
    Stale {
        /// The qualified worker name.
        worker: String,
        /// The context's incarnation.
        incarnation: u64,
        /// The worker's current incarnation.
        current: u64,
    },
    /// The worker's state does not allow the call.
    #[error("invalid worker state: cannot {action} for worker {worker:?} in state {state:?}", state = state.as_str())]
    InvalidState {
        /// The qualified worker name.
        worker: String,
        /// Its state.
        state: LifecycleState,
        /// What was tried (`set ready`, `report failure`, ...).
        action: &'static str,
    },
    /// The runtime has been dropped.
    #[error("the runtime of worker {worker:?} no longer exists")]
    RuntimeGone {
        /// The qualified worker name.
        worker: String,
    },
}

impl ContextError {
    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Stale { .. } => "stale_context",
            Self::InvalidState { .. } => "invalid_worker_state",
            Self::RuntimeGone { .. } => "runtime_gone",
        }
    }
}
