//! Status snapshots: cheap copies of the runtime's and each worker's state, in the Go JSON shape.

use std::sync::Arc;

use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::policy::{FailurePolicy, ReadinessPolicy};
use crate::time::Timestamp;

/// A change of lifecycle state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Transition {
    /// The state before.
    pub from: LifecycleState,
    /// The state after.
    pub to: LifecycleState,
    /// When it happened.
    pub at: Timestamp,
}

/// The public record of a failure: code, safe message and time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FailureRecord {
    /// The stable code (omitted from JSON when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// The safe message.
    pub message: String,
    /// When it was recorded.
    pub at: Timestamp,
}

impl FailureRecord {
    pub(crate) fn new(failure: &Failure, at: Timestamp) -> Self {
        Self {
            code: failure.code().to_owned(),
            message: failure.message().to_owned(),
            at,
        }
    }
}

/// The public record of a command's failure.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CommandFailureRecord {
    /// The command.
    pub command: String,
    /// The stable code (omitted from JSON when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// The safe message.
    pub message: String,
    /// When it was recorded.
    pub at: Timestamp,
}

/// Why a worker's incarnation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExitReason {
    /// It was asked to stop and stopped.
    Stopped,
    /// It failed: its start or stop returned an error, or it reported a failure.
    Failed,
    /// Its code panicked.
    Panicked,
    /// Its start did not finish within the start timeout.
    StartTimedOut,
    /// Its loop returned `Ok` although nobody asked it to stop (a failure, as in Go).
    ExitedUnexpectedly,
    /// Its watchdog found no beat within the timeout (`StallAction::Cancel` or `Restart`).
    Stalled,
}

impl ExitReason {
    /// The wire name (`stopped`, `failed`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Panicked => "panicked",
            Self::StartTimedOut => "start_timed_out",
            Self::ExitedUnexpectedly => "exited_unexpectedly",
            Self::Stalled => "stalled",
        }
    }

    /// Whether this exit is a failure (anything but a requested stop).
    #[must_use]
    pub const fn is_failure(self) -> bool {
        !matches!(self, Self::Stopped)
    }
}

/// How one incarnation of a worker ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Exit {
    /// The incarnation that ended (1 for the first start).
    pub incarnation: u64,
    /// Why it ended.
    pub reason: ExitReason,
    /// The public failure, for failed exits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// When it ended.
    pub at: Timestamp,
}

/// A snapshot of the runtime's aggregate status.
///
/// JSON: `{"name","state","ready","inFlight","workers","lastTransition"?,"shuttingDown",
/// "shutDown"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct RuntimeStatus {
    /// The runtime's name.
    pub name: Arc<str>,
    /// The aggregate state (see `docs/lifecycle.md`).
    pub state: LifecycleState,
    /// Whether the runtime is ready, by its readiness policy.
    pub ready: bool,
    /// Commands in flight across the runtime.
    pub in_flight: usize,
    /// The number of registered workers.
    pub workers: usize,
    /// The last change of the aggregate state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
    /// Whether a graceful shutdown has been asked for (it stays true afterwards).
    pub shutting_down: bool,
    /// Whether a graceful shutdown has finished: the runtime is terminal.
    pub shut_down: bool,
}

/// A snapshot of one worker's status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The qualified name, `runtime/worker`.
    pub name: Arc<str>,
    /// The local name.
    pub local_name: Arc<str>,
    /// The lifecycle state.
    pub state: LifecycleState,
    /// Whether the worker says it is ready.
    pub ready: bool,
    /// Whether the runtime may admit commands to it.
    pub accepting_work: bool,
    /// Commands in flight on this worker (every incarnation).
    pub in_flight: usize,
    /// Dispatches waiting for a concurrency slot.
    pub waiting: usize,
    /// The current (or last) incarnation: 0 before the first start, then 1, 2, ...
    pub incarnation: u64,
    /// Whether the worker counts towards runtime readiness.
    pub contributes_to_readiness: bool,
    /// The worker's failure policy.
    pub failure_policy: FailurePolicy,
    /// The last lifecycle change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
    /// The last lifecycle failure (kept after a stop, cleared by a successful start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
    /// The last command failure of the current incarnation (kept across restarts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_command_failure: Option<CommandFailureRecord>,
    /// How the last incarnation ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
    /// The worker's restart mode.
    pub restart_policy: crate::supervise::RestartMode,
    /// How many times the restart policy restarted the worker (monotonic; manual starts do not
    /// count).
    pub restarts: u64,
    /// When the pending restart is due, while `restarting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<Timestamp>,
    /// Whether the restart policy gave up (intensity exceeded, or a permanent failure under
    /// `on_failure`): the worker is `failed` and its failure policy applies. Cleared by a start.
    pub gave_up: bool,
    /// Whether the watchdog finds the worker stalled (no beat within its timeout).
    pub stalled: bool,
}

/// A worker's registration metadata and status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// The qualified name, `runtime/worker`.
    pub qualified_name: Arc<str>,
    /// The local name.
    pub name: Arc<str>,
    /// The description given at registration (omitted when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Arc<str>>,
    /// The live status.
    pub status: WorkerStatus,
}

/// Whether a worker blocks runtime readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReadinessImpact {
    /// Its readiness (or its failure) decides the runtime's readiness.
    Blocking,
    /// It is listed but does not block.
    NonBlocking,
}

impl ReadinessImpact {
    /// The wire name (`blocking`, `non_blocking`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::NonBlocking => "non_blocking",
        }
    }
}

impl std::fmt::Display for ReadinessImpact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One worker's line in a [`Readiness`] report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReadinessItem {
    /// The local worker name.
    pub name: Arc<str>,
    /// Running and ready.
    pub ready: bool,
    /// The lifecycle state.
    pub state: LifecycleState,
    /// Whether it blocks runtime readiness.
    pub impact: ReadinessImpact,
}

/// The runtime's readiness with one item per worker, for readiness probes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Whether the runtime is ready.
    pub ready: bool,
    /// `runtime ready`, or `runtime not ready: state=<state>`.
    pub reason: String,
    /// The readiness policy in force.
    pub policy: ReadinessPolicy,
    /// One item per worker, in registration order.
    pub items: Vec<ReadinessItem>,
}

/// Whether the process should be restarted, for liveness probes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Liveness {
    /// `false` only for conditions that mean "restart this process".
    pub live: bool,
    /// Why it is not live (empty when live).
    pub reasons: Vec<String>,
}
