//! The events the runtime reports to observers.
//!
//! Every event is `#[non_exhaustive]`: fields may be added in minor releases. Adapters' tests build
//! them with the constructors behind the `test-util` feature.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::time::Timestamp;

/// A private error cause, shared by events. Never part of any public field or serialization.
pub type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// A worker or the runtime changed lifecycle state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransitionEvent {
    /// Runtime-wide order of this event (gap-free across all ordered events).
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name, or `None` for the runtime's aggregate state.
    pub worker: Option<Arc<str>>,
    /// The worker's incarnation (0 for runtime events).
    pub incarnation: u64,
    /// The state before.
    pub from: LifecycleState,
    /// The state after.
    pub to: LifecycleState,
    /// When it happened.
    pub at: Timestamp,
}

/// A worker's or the runtime's readiness changed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReadinessEvent {
    /// Runtime-wide order of this event.
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name, or `None` for the runtime.
    pub worker: Option<Arc<str>>,
    /// The new readiness.
    pub ready: bool,
    /// When it happened.
    pub at: Timestamp,
}

/// A failure was observed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FailureEvent {
    /// Runtime-wide order of this event.
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name.
    pub worker: Option<Arc<str>>,
    /// The worker's incarnation the failure belongs to.
    pub incarnation: u64,
    /// The public failure: the only part to log or export.
    pub failure: Failure,
    /// Whether it was a panic.
    pub panic: bool,
    /// Whether the failure changed the worker's lifecycle (a cleanup failure, a command
    /// failure, or a failure reported while starting or stopping, does not).
    pub lifecycle_changed: bool,
    /// The command, for command failures.
    pub command: Option<Arc<str>>,
    /// The dispatch, for command failures.
    pub dispatch_id: Option<crate::command::DispatchId>,
    /// The 1-based attempt, for command failures (0 otherwise).
    pub attempt: u32,
    /// The private cause. Never log it in public fields.
    pub cause: Option<Cause>,
    /// When it happened.
    pub at: Timestamp,
}

/// A lifecycle operation (start, stop, drain, shutdown, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// Start one worker.
    Start,
    /// Drain one worker.
    Drain,
    /// Stop one worker.
    Stop,
    /// Start every worker that is not running.
    StartAll,
    /// Drain every running worker.
    DrainAll,
    /// Stop every worker, in reverse registration order.
    StopAll,
    /// Graceful shutdown: close admission and readiness, drain, wait for in-flight work, stop.
    Shutdown,
    /// Remove one stopped (or never started, or failed) worker.
    Remove,
}

impl Operation {
    /// The wire name (`start`, `stop_all`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Drain => "drain",
            Self::Stop => "stop",
            Self::StartAll => "start_all",
            Self::DrainAll => "drain_all",
            Self::StopAll => "stop_all",
            Self::Shutdown => "shutdown",
            Self::Remove => "remove",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a lifecycle operation is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OperationPhase {
    /// It won the lifecycle gate and begins.
    Started,
    /// It finished successfully.
    Succeeded,
    /// It finished with an error, presented publicly.
    Failed(Failure),
}

/// A lifecycle operation began or ended.
///
/// Started/ended pairs let adapters give each operation a span of its own (rather than annotating
/// whatever span the caller had).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OperationEvent {
    /// Runtime-wide order of this event.
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name for single-worker operations.
    pub worker: Option<Arc<str>>,
    /// Which operation.
    pub operation: Operation,
    /// Started or ended, and how.
    pub phase: OperationPhase,
    /// When this phase was reached.
    pub at: Timestamp,
    /// Time since the operation started (zero for `Started`).
    pub elapsed: Duration,
}

/// How one readiness check execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CheckOutcome {
    /// The check said ready.
    Ready,
    /// The check said not ready.
    NotReady,
    /// The check did not finish within its timeout.
    Timeout,
    /// The check was cancelled because the worker is stopping.
    Canceled,
    /// The check panicked.
    Panic,
    /// The check returned an error (treated as not ready).
    Error,
}

impl CheckOutcome {
    /// The wire name (`ready`, `not_ready`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NotReady => "not_ready",
            Self::Timeout => "timeout",
            Self::Canceled => "canceled",
            Self::Panic => "panic",
            Self::Error => "error",
        }
    }
}

/// A readiness check execution began.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckStartEvent {
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name.
    pub worker: Arc<str>,
    /// The worker's incarnation.
    pub incarnation: u64,
    /// When it began.
    pub started_at: Timestamp,
}

/// A readiness check execution ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckEndEvent {
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name.
    pub worker: Arc<str>,
    /// The worker's incarnation.
    pub incarnation: u64,
    /// How it ended.
    pub outcome: CheckOutcome,
    /// Whether the check loop goes on.
    pub loop_continues: bool,
    /// When it began.
    pub started_at: Timestamp,
    /// When it ended.
    pub ended_at: Timestamp,
    /// How long it took (tokio clock).
    pub duration: Duration,
}

/// How a dispatch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommandOutcome {
    /// The handler succeeded.
    Succeeded,
    /// Rejected before admission (0 attempts): not accepting, wrong state, saturated.
    Rejected,
    /// The handler's last attempt returned an error.
    Failed,
    /// The last attempt ran out of time.
    TimedOut,
    /// The handler panicked.
    Panicked,
    /// Cancelled by id or by its worker's stop.
    Cancelled,
    /// The caller dropped the dispatch future; the handler was dropped with it (or never ran,
    /// if the future was dropped while waiting for admission: 0 attempts).
    Abandoned,
}

impl CommandOutcome {
    /// The wire name (`succeeded`, `failed`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Panicked => "panicked",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }
}

/// A dispatch to a resolved command began (before admission).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CommandStartEvent {
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name (registration-owned, never the caller's string).
    pub worker: Arc<str>,
    /// The command name (registration-owned).
    pub command: Arc<str>,
    /// The dispatch id.
    pub dispatch_id: crate::command::DispatchId,
    /// The request's metadata (e.g. `traceparent`).
    pub metadata: crate::command::Metadata,
    /// When the dispatch began.
    pub started_at: Timestamp,
}

/// A dispatch ended. Exactly one per [`CommandStartEvent`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CommandEndEvent {
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name.
    pub worker: Arc<str>,
    /// The command name.
    pub command: Arc<str>,
    /// The dispatch id.
    pub dispatch_id: crate::command::DispatchId,
    /// Handler attempts actually run (0 for rejections).
    pub attempts: u32,
    /// How it ended.
    pub outcome: CommandOutcome,
    /// The public failure (`None` on success).
    pub failure: Option<Failure>,
    /// The private cause. Never log it in public fields.
    pub cause: Option<Cause>,
    /// When the dispatch began.
    pub started_at: Timestamp,
    /// When it ended.
    pub ended_at: Timestamp,
    /// How long it took (tokio clock).
    pub duration: Duration,
}

/// A supervision event: a restart scheduled or made, a restart policy giving up, a watchdog
/// stall, or a shutdown still waiting.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SupervisionEvent {
    /// Runtime-wide order of this event.
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name (`None` for runtime-wide events such as
    /// [`SupervisionKind::ShutdownWaiting`]).
    pub worker: Option<Arc<str>>,
    /// The worker's incarnation the event is about (0 for runtime-wide events).
    pub incarnation: u64,
    /// What happened.
    pub kind: SupervisionKind,
    /// When it happened.
    pub at: Timestamp,
}

/// How many in-flight commands a [`SupervisionKind::ShutdownWaiting`] names.
pub const SHUTDOWN_REPORT_COMMANDS: usize = 16;

/// What a [`SupervisionEvent`] reports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SupervisionKind {
    /// The incarnation failed and a restart is scheduled after `delay`.
    RestartScheduled {
        /// The backoff attempt (1 after a healthy run).
        attempt: u32,
        /// The backoff delay.
        delay: Duration,
        /// When the restart is due.
        due: Timestamp,
        /// How the incarnation ended.
        reason: crate::status::ExitReason,
        /// Its public failure.
        failure: Option<Failure>,
    },
    /// A restart began: `incarnation` is the new one, now starting.
    Restarted {
        /// Restarts of this worker so far, this one included.
        restarts: u64,
        /// The backoff attempt.
        attempt: u32,
    },
    /// A pending restart was cancelled by a drain, stop, shutdown or removal.
    RestartCancelled,
    /// The restart policy gave up: the worker is failed and its failure policy applies.
    GaveUp {
        /// Restarts made before giving up.
        restarts: u64,
        /// How the last incarnation ended.
        reason: crate::status::ExitReason,
        /// Its public failure.
        failure: Option<Failure>,
        /// Why: `intensity` (too many restarts within the window) or `permanent` (a permanent
        /// failure under `on_failure`).
        why: &'static str,
    },
    /// The watchdog found no beat within `timeout`.
    Stalled {
        /// The watchdog timeout.
        timeout: Duration,
        /// What the watchdog does about it.
        action: crate::supervise::StallAction,
    },
    /// Beats came again after a stall (actions `report` and `fail_liveness`).
    StallCleared,
    /// A shutdown has been running longer than the report interval and still waits.
    ShutdownWaiting {
        /// How long the shutdown has run.
        elapsed: Duration,
        /// Workers not yet stopped (qualified names, in stop order).
        workers: Vec<Arc<str>>,
        /// Commands still in flight.
        in_flight: usize,
        /// The oldest of them (at most [`SHUTDOWN_REPORT_COMMANDS`]), oldest first.
        commands: Vec<crate::command::InFlightCommand>,
        /// The phase: `draining` (waiting for commands) or `stopping`.
        phase: &'static str,
    },
}

impl SupervisionKind {
    /// A stable name for the kind: `restart_scheduled`, `restarted`, `restart_cancelled`,
    /// `gave_up`, `stalled`, `stall_cleared`, `shutdown_waiting`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::RestartScheduled { .. } => "restart_scheduled",
            Self::Restarted { .. } => "restarted",
            Self::RestartCancelled => "restart_cancelled",
            Self::GaveUp { .. } => "gave_up",
            Self::Stalled { .. } => "stalled",
            Self::StallCleared => "stall_cleared",
            Self::ShutdownWaiting { .. } => "shutdown_waiting",
        }
    }
}

#[cfg(feature = "test-util")]
mod test_constructors {
    use super::*;

    impl TransitionEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: Option<&str>, from: LifecycleState, to: LifecycleState) -> Self {
            Self {
                seq: 0,
                runtime: "rt".into(),
                worker: worker.map(Into::into),
                incarnation: 1,
                from,
                to,
                at: Timestamp::now(),
            }
        }
    }

    impl ReadinessEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: Option<&str>, ready: bool) -> Self {
            Self {
                seq: 0,
                runtime: "rt".into(),
                worker: worker.map(Into::into),
                ready,
                at: Timestamp::now(),
            }
        }
    }

    impl FailureEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: &str, failure: Failure, panic: bool, cause: Option<Cause>) -> Self {
            Self {
                seq: 0,
                runtime: "rt".into(),
                worker: Some(worker.into()),
                incarnation: 1,
                failure,
                panic,
                lifecycle_changed: true,
                command: None,
                dispatch_id: None,
                attempt: 0,
                cause,
                at: Timestamp::now(),
            }
        }
    }

    impl OperationEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: Option<&str>, operation: Operation, phase: OperationPhase) -> Self {
            Self {
                seq: 0,
                runtime: "rt".into(),
                worker: worker.map(Into::into),
                operation,
                phase,
                at: Timestamp::now(),
                elapsed: Duration::ZERO,
            }
        }
    }

    impl CheckStartEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: &str) -> Self {
            Self {
                runtime: "rt".into(),
                worker: worker.into(),
                incarnation: 1,
                started_at: Timestamp::now(),
            }
        }
    }

    impl CheckEndEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: &str, outcome: CheckOutcome, duration: Duration) -> Self {
            let now = Timestamp::now();
            Self {
                runtime: "rt".into(),
                worker: worker.into(),
                incarnation: 1,
                outcome,
                loop_continues: true,
                started_at: now,
                ended_at: now,
                duration,
            }
        }
    }

    impl SupervisionEvent {
        /// Builds an event for adapter tests (`test-util`).
        #[must_use]
        pub fn for_test(worker: Option<&str>, kind: SupervisionKind) -> Self {
            Self {
                seq: 0,
                runtime: "rt".into(),
                worker: worker.map(Into::into),
                incarnation: 1,
                kind,
                at: Timestamp::now(),
            }
        }
    }
}
