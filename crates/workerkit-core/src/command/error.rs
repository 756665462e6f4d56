//! What a dispatch returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::handler::CancelReason;
use super::{CommandRequest, CommandResponse, DispatchId};
use crate::error::SharedCause;
use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::name::NameError;

/// A successful dispatch.
///
/// Serialized as `{"id", "worker", "name", "result"}` (the Go shape; `attempts` is left out).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandResult {
    /// The dispatch id.
    pub id: DispatchId,
    /// The worker and the command (one allocation shared by the command's results: a result
    /// costs one reference count, not one per name).
    target: Arc<CommandTarget>,
    /// Handler attempts run.
    pub attempts: u32,
    /// What the handler returned.
    pub result: CommandResponse,
}

/// The qualified worker name and the command name of a [`CommandResult`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommandTarget {
    pub(crate) worker: Arc<str>,
    pub(crate) name: Arc<str>,
}

impl CommandResult {
    pub(crate) fn new(
        id: DispatchId,
        target: Arc<CommandTarget>,
        attempts: u32,
        result: CommandResponse,
    ) -> Self {
        Self {
            id,
            target,
            attempts,
            result,
        }
    }

    /// The qualified worker name (`runtime/worker`).
    #[must_use]
    pub fn worker(&self) -> &Arc<str> {
        &self.target.worker
    }

    /// The command name.
    #[must_use]
    pub fn name(&self) -> &Arc<str> {
        &self.target.name
    }
}

impl fmt::Debug for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandResult")
            .field("id", &self.id)
            .field("worker", &self.target.worker)
            .field("name", &self.target.name)
            .field("attempts", &self.attempts)
            .field("result", &self.result)
            .finish()
    }
}

impl serde::Serialize for CommandResult {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("CommandResult", 4)?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("worker", &*self.target.worker)?;
        out.serialize_field("name", &*self.target.name)?;
        out.serialize_field("result", &self.result)?;
        out.end()
    }
}

/// Which concurrency limit was full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitScope {
    /// The runtime-wide limit.
    Runtime,
    /// The worker's limit.
    Worker,
    /// The command's own limit.
    Command,
}

impl LimitScope {
    fn describe(self) -> &'static str {
        match self {
            Self::Runtime => "runtime command",
            Self::Worker => "worker command",
            Self::Command => "command",
        }
    }

    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Worker => "worker",
            Self::Command => "command",
        }
    }
}

/// A dispatch that failed: rejected before admission (the request comes back, see
/// [`into_request`](Self::into_request)), or admitted and then failed, timed out, panicked or
/// was cancelled.
///
/// `Display` never includes a handler's own error text; the private cause is the `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The worker name is invalid.
    #[error("invalid command target: {error}")]
    InvalidTarget {
        /// What is wrong with it.
        error: NameError,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The command name is invalid.
    #[error("invalid command name: {error}")]
    InvalidCommandName {
        /// What is wrong with it.
        error: NameError,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// No worker has this name.
    #[error("worker not found: {worker}")]
    WorkerNotFound {
        /// The name as given.
        worker: String,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The worker has no such command.
    #[error("command not found: {worker}/{command}")]
    CommandNotFound {
        /// The qualified worker name.
        worker: String,
        /// The command name as given.
        command: String,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The runtime admits no commands (stop-all or shutdown in progress, or its state is
    /// `failed`, `stopped` or `registered`).
    #[error("runtime not accepting work: runtime {runtime:?} is in state {}", state.as_str())]
    RuntimeNotAccepting {
        /// The runtime's name.
        runtime: String,
        /// Its aggregate state.
        state: LifecycleState,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The worker is not running (for example draining or stopped).
    #[error("invalid worker state: cannot dispatch to worker {worker:?} in state {}", state.as_str())]
    InvalidWorkerState {
        /// The qualified worker name.
        worker: String,
        /// Its state.
        state: LifecycleState,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The worker runs but does not accept work.
    #[error("worker not accepting work: {worker}")]
    WorkerNotAccepting {
        /// The qualified worker name.
        worker: String,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// A concurrency limit was full (and stayed full for the admission wait, if any).
    #[error("{} concurrency limit reached: limit={limit}", scope.describe())]
    Saturated {
        /// Which limit.
        scope: LimitScope,
        /// Its size.
        limit: usize,
        /// A hint for when to retry.
        retry_after: Duration,
        /// The request, handed back.
        request: Box<CommandRequest>,
    },
    /// The handler's last attempt returned an error.
    #[error("command {worker}/{command} failed: {failure}")]
    Failed {
        /// The dispatch id.
        id: DispatchId,
        /// The qualified worker name.
        worker: Arc<str>,
        /// The command name.
        command: Arc<str>,
        /// Attempts run.
        attempts: u32,
        /// The public failure.
        failure: Failure,
        /// The handler's error.
        #[source]
        cause: SharedCause,
    },
    /// The last attempt ran out of time.
    #[error("command {worker}/{command} timed out after {attempts} attempt(s)")]
    TimedOut {
        /// The dispatch id.
        id: DispatchId,
        /// The qualified worker name.
        worker: Arc<str>,
        /// The command name.
        command: Arc<str>,
        /// Attempts run.
        attempts: u32,
        /// The handler's error, if it returned one after its deadline.
        #[source]
        cause: Option<SharedCause>,
    },
    /// The handler panicked.
    #[error("command {worker}/{command} failed: {failure}")]
    Panicked {
        /// The dispatch id.
        id: DispatchId,
        /// The qualified worker name.
        worker: Arc<str>,
        /// The command name.
        command: Arc<str>,
        /// Attempts run.
        attempts: u32,
        /// The public failure (`panic`).
        failure: Failure,
    },
    /// The dispatch was cancelled by id or by its worker's stop.
    #[error("command {worker}/{command} cancelled ({reason})")]
    Cancelled {
        /// The dispatch id.
        id: DispatchId,
        /// The qualified worker name.
        worker: Arc<str>,
        /// The command name.
        command: Arc<str>,
        /// Attempts run.
        attempts: u32,
        /// Why.
        reason: CancelReason,
        /// The handler's error, if it returned one after the cancellation.
        #[source]
        cause: Option<SharedCause>,
    },
}

/// The retry-after hint of [`DispatchError::RuntimeNotAccepting`]: a runtime that does not
/// accept work is starting, shutting down or failed, so a caller should come back after a
/// while (or, behind a load balancer, go to another replica).
pub const RUNTIME_NOT_ACCEPTING_RETRY_AFTER: Duration = Duration::from_secs(1);

impl DispatchError {
    /// The stable code, which the HTTP layer maps to a status.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidTarget { .. } => "invalid_target",
            Self::InvalidCommandName { .. } => "invalid_command_name",
            Self::WorkerNotFound { .. } => "worker_not_found",
            Self::CommandNotFound { .. } => "command_not_found",
            Self::RuntimeNotAccepting { .. } => "runtime_not_accepting_work",
            Self::InvalidWorkerState { .. } => "invalid_worker_state",
            Self::WorkerNotAccepting { .. } => "worker_not_accepting_work",
            Self::Saturated { .. } => "saturated",
            Self::Failed { .. } => "command_failed",
            Self::TimedOut { .. } => "command_timed_out",
            Self::Panicked { .. } => "command_panicked",
            Self::Cancelled { .. } => "command_cancelled",
        }
    }

    /// Whether the dispatch was rejected before admission (the handler never ran).
    #[must_use]
    pub fn is_rejection(&self) -> bool {
        self.request().is_some()
    }

    /// The rejected request, for rejections.
    #[must_use]
    pub fn request(&self) -> Option<&CommandRequest> {
        match self {
            Self::InvalidTarget { request, .. }
            | Self::InvalidCommandName { request, .. }
            | Self::WorkerNotFound { request, .. }
            | Self::CommandNotFound { request, .. }
            | Self::RuntimeNotAccepting { request, .. }
            | Self::InvalidWorkerState { request, .. }
            | Self::WorkerNotAccepting { request, .. }
            | Self::Saturated { request, .. } => Some(request),
            _ => None,
        }
    }

    /// Takes the rejected request back, for rejections.
    #[must_use]
    pub fn into_request(self) -> Option<CommandRequest> {
        match self {
            Self::InvalidTarget { request, .. }
            | Self::InvalidCommandName { request, .. }
            | Self::WorkerNotFound { request, .. }
            | Self::CommandNotFound { request, .. }
            | Self::RuntimeNotAccepting { request, .. }
            | Self::InvalidWorkerState { request, .. }
            | Self::WorkerNotAccepting { request, .. }
            | Self::Saturated { request, .. } => Some(*request),
            _ => None,
        }
    }

    /// The dispatch id, for admitted dispatches.
    #[must_use]
    pub fn dispatch_id(&self) -> Option<DispatchId> {
        match self {
            Self::Failed { id, .. }
            | Self::TimedOut { id, .. }
            | Self::Panicked { id, .. }
            | Self::Cancelled { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The retry-after hint: for saturation, the limit's estimate; for a runtime that does not
    /// accept work, [`RUNTIME_NOT_ACCEPTING_RETRY_AFTER`] (retry elsewhere or later).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Saturated { retry_after, .. } => Some(*retry_after),
            Self::RuntimeNotAccepting { .. } => Some(RUNTIME_NOT_ACCEPTING_RETRY_AFTER),
            _ => None,
        }
    }

    /// The public failure of an admitted dispatch (handler failure, timeout, panic, cancel).
    #[must_use]
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Failed { failure, .. } | Self::Panicked { failure, .. } => Some(failure.clone()),
            Self::TimedOut { .. } => Some(Failure::deadline_exceeded()),
            Self::Cancelled { .. } => Some(Failure::canceled()),
            _ => None,
        }
    }
}

/// The error of [`Runtime::cancel`](crate::Runtime::cancel).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No dispatch with this id is in flight (it may have finished).
    #[error("no command in flight with id {0}")]
    NotFound(DispatchId),
    /// It was already cancelled.
    #[error("command {0} was already cancelled")]
    AlreadyCancelled(DispatchId),
}

impl CancelError {
    /// The stable code: `dispatch_not_found` or `already_cancelled`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "dispatch_not_found",
            Self::AlreadyCancelled(_) => "already_cancelled",
        }
    }
}

/// A command in flight, as listed by [`Runtime::in_flight`](crate::Runtime::in_flight).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InFlightCommand {
    /// The dispatch id.
    pub id: DispatchId,
    /// The qualified worker name.
    pub worker: Arc<str>,
    /// The command name.
    pub command: Arc<str>,
    /// The worker incarnation that admitted it.
    pub incarnation: u64,
    /// Time since it was dispatched (tokio clock).
    #[serde(serialize_with = "seconds")]
    pub age: Duration,
    /// Whether it has been cancelled (and is finishing).
    pub cancelled: bool,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The error a retry predicate sees for an attempt that ran out of time; its `source()` is the
/// handler's own error when it returned one after its deadline (cooperative timeout), and none
/// when the handler was dropped (hard timeout).
#[derive(Debug)]
pub struct AttemptTimedOut {
    pub(crate) source: Option<crate::observe::Cause>,
}

impl std::fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("command attempt timed out")
    }
}

impl std::error::Error for AttemptTimedOut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
