//! The message of every event this crate emits: a public contract, shared with the Go original's
//! slog adapter where it has the event (log queries and alerts match on them).

/// A worker or the runtime changed lifecycle state (fields `lifecycle_from`, `lifecycle_to`).
pub const TRANSITION: &str = "workerkit lifecycle transition";

/// A worker's or the runtime's readiness changed (field `ready`).
pub const READINESS: &str = "workerkit readiness change";

/// A failure was observed (always at `ERROR`; fields `panic`, `dispatch_id`, `attempt`,
/// `failure_code`, `error`).
pub const FAILURE: &str = "workerkit failure";

/// A dispatch ended (fields `success`, `outcome`, `duration`, `dispatch_id`, `attempts`,
/// `failure_code`, `error`), inside the command span.
pub const COMMAND_COMPLETED: &str = "workerkit command dispatch completed";

/// A readiness check execution ended (fields `check_kind`, `check_outcome`, `loop_continues`,
/// `duration`).
pub const CHECK_COMPLETED: &str = "workerkit check execution completed";

/// A lifecycle operation began (field `operation`). Not in the Go original, which has no
/// operation events.
pub const OPERATION_STARTED: &str = "workerkit lifecycle operation started";

/// A lifecycle operation ended (fields `operation`, `success`, `duration`, `failure_code`,
/// `error`; at `ERROR` if it failed). Not in the Go original.
pub const OPERATION_COMPLETED: &str = "workerkit lifecycle operation completed";

/// The private cause of a failure, at `DEBUG`, only with
/// [`log_causes(true)`](crate::TracingObserverBuilder::log_causes) (field `cause`).
pub const FAILURE_CAUSE: &str = "workerkit failure cause";

/// The restart policy scheduled a restart of a failed incarnation (at `WARN`; fields
/// `supervision_kind`, `incarnation`, `attempt`, `delay_ms`, `exit_reason`, `failure_code`,
/// `error`). Not in the Go original, which has no supervised restart.
pub const RESTART_SCHEDULED: &str = "workerkit restart scheduled";

/// A restart began: `incarnation` is the new one, now starting (routine level; fields
/// `supervision_kind`, `incarnation`, `restarts`, `attempt`). Not in the Go original.
pub const RESTARTED: &str = "workerkit worker restarted";

/// A pending restart was cancelled by a drain, stop, shutdown or removal (routine level; fields
/// `supervision_kind`, `incarnation`). Not in the Go original.
pub const RESTART_CANCELLED: &str = "workerkit restart cancelled";

/// The restart policy gave up: the worker stays failed (at `ERROR`; fields `supervision_kind`,
/// `incarnation`, `restarts`, `exit_reason`, `failure_code`, `error`, `why`). Not in the Go
/// original.
pub const GAVE_UP: &str = "workerkit restart gave up";

/// The heartbeat watchdog found no beat within its timeout (at `WARN`; fields
/// `supervision_kind`, `incarnation`, `timeout_ms`, `action`). Not in the Go original.
pub const STALLED: &str = "workerkit worker stalled";

/// Beats came again after a stall (routine level; fields `supervision_kind`, `incarnation`).
/// Not in the Go original.
pub const STALL_CLEARED: &str = "workerkit worker stall cleared";

/// A shutdown has run longer than the report interval and still waits (at `WARN`; no `worker`
/// field; fields `supervision_kind`, `elapsed_ms`, `phase`, `in_flight`, `pending_workers`,
/// `workers`). Not in the Go original.
pub const SHUTDOWN_WAITING: &str = "workerkit shutdown waiting";

/// A supervision event of a kind this version does not know yet (routine level; field
/// `supervision_kind`).
pub const SUPERVISION: &str = "workerkit supervision";
