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
