//! The names this adapter exports: instruments, units, attribute keys, span and event names.
//!
//! They are a public contract (dashboards and alerts are built on them) and change only in a
//! breaking release. The names the Go adapter exports (spec §7.5) are kept exactly; the others
//! are marked *(workerkit-rs)*.
//!
//! Metric attributes are bounded by construction: the runtime's, worker's and command's
//! registered names, failure codes, lifecycle states, check outcomes, watchdog actions and
//! booleans. Dispatch ids, attempt numbers, incarnations and restart counts are span attributes
//! only.

/// Instrumentation scope of the tracer and the meter.
pub const SCOPE_NAME: &str = "workerkit-otel";

// ---- Instruments ----

/// Counter of command dispatch results (every dispatch to a resolved command, rejections
/// included). No unit. Attributes: [`RUNTIME`], [`WORKER`], [`COMMAND`],
/// [`COMMAND_SUCCESS`], [`FAILURE_CODE`] (failures only).
pub const COMMAND_DISPATCHES: &str = "workerkit.command.dispatches";
/// Histogram of dispatch durations, in seconds ([`UNIT_SECONDS`]); same attributes as
/// [`COMMAND_DISPATCHES`].
pub const COMMAND_DURATION: &str = "workerkit.command.duration";
/// *(workerkit-rs)* Up-down counter of admitted commands whose handler is running
/// ([`UNIT_COMMAND`]). Attributes: [`RUNTIME`], [`WORKER`], [`COMMAND`].
pub const COMMAND_IN_FLIGHT: &str = "workerkit.command.in_flight";
/// *(workerkit-rs)* Counter of handler attempts run ([`UNIT_ATTEMPT`]); same attributes as
/// [`COMMAND_DISPATCHES`].
pub const COMMAND_HANDLER_ATTEMPTS: &str = "workerkit.command.handler_attempts";
/// *(workerkit-rs)* Counter of retries: attempts after the first ([`UNIT_RETRY`]); same
/// attributes as [`COMMAND_DISPATCHES`].
pub const COMMAND_RETRIES: &str = "workerkit.command.retries";
/// Counter of readiness check executions. No unit. Attributes: [`RUNTIME`], [`WORKER`],
/// [`CHECK_KIND`], [`CHECK_OUTCOME`], [`CHECK_LOOP_CONTINUES`].
pub const CHECK_EXECUTIONS: &str = "workerkit.check.executions";
/// Histogram of readiness check durations, in seconds; same attributes as
/// [`CHECK_EXECUTIONS`].
pub const CHECK_DURATION: &str = "workerkit.check.duration";
/// Counter of failures (worker and command). No unit. Attributes: [`RUNTIME`], [`WORKER`],
/// [`COMMAND`] (command failures), [`FAILURE_PANIC`], [`FAILURE_CODE`].
pub const FAILURES: &str = "workerkit.failures";
/// Counter of readiness changes. No unit. Attributes: [`RUNTIME`], [`WORKER`] (absent for the
/// runtime's own readiness), [`READY`].
pub const READINESS_CHANGES: &str = "workerkit.readiness.changes";
/// Counter of lifecycle transitions. No unit. Attributes: [`RUNTIME`], [`WORKER`] (absent for
/// the runtime's own state), [`LIFECYCLE_FROM`], [`LIFECYCLE_TO`].
pub const LIFECYCLE_TRANSITIONS: &str = "workerkit.lifecycle.transitions";
/// *(workerkit-rs)* Gauge of lifecycle states: 1 for the state a worker (or the runtime) is
/// in, 0 for a state it left ([`UNIT_ONE`]). Attributes: [`RUNTIME`], [`WORKER`] (absent for
/// the runtime), [`LIFECYCLE_STATE`]. A worker appears once it first changes state.
pub const LIFECYCLE_STATE_GAUGE: &str = "workerkit.lifecycle.state";
/// *(workerkit-rs)* Histogram of lifecycle operation durations, in seconds. Attributes:
/// [`RUNTIME`], [`WORKER`] (single-worker operations), [`OPERATION`], [`OPERATION_SUCCESS`],
/// [`FAILURE_CODE`] (failures only).
pub const OPERATION_DURATION: &str = "workerkit.operation.duration";
/// *(workerkit-rs)* Counter of supervised restarts made: one per new incarnation started by the
/// restart policy ([`UNIT_RESTART`]). Attributes: [`RUNTIME`], [`WORKER`].
pub const WORKER_RESTARTS: &str = "workerkit.worker.restarts";
/// *(workerkit-rs)* Counter of restart policies giving up: the worker stays failed
/// ([`UNIT_GIVE_UP`]). Attributes: [`RUNTIME`], [`WORKER`].
pub const WORKER_GIVE_UPS: &str = "workerkit.worker.give_ups";
/// *(workerkit-rs)* Counter of heartbeat watchdog stalls ([`UNIT_STALL`]). Attributes:
/// [`RUNTIME`], [`WORKER`], [`WATCHDOG_ACTION`].
pub const WORKER_STALLS: &str = "workerkit.worker.stalls";

// ---- Units (UCUM) ----

/// Seconds.
pub const UNIT_SECONDS: &str = "s";
/// Commands.
pub const UNIT_COMMAND: &str = "{command}";
/// Attempts.
pub const UNIT_ATTEMPT: &str = "{attempt}";
/// Retries.
pub const UNIT_RETRY: &str = "{retry}";
/// A dimensionless 0/1 value.
pub const UNIT_ONE: &str = "1";
/// Restarts.
pub const UNIT_RESTART: &str = "{restart}";
/// Give-ups.
pub const UNIT_GIVE_UP: &str = "{give_up}";
/// Stalls.
pub const UNIT_STALL: &str = "{stall}";

// ---- Attribute keys ----

/// The runtime's name.
pub const RUNTIME: &str = "workerkit.runtime";
/// The qualified worker name (`runtime/worker`).
pub const WORKER: &str = "workerkit.worker";
/// The command name.
pub const COMMAND: &str = "workerkit.command";
/// The dispatch id (spans only).
pub const COMMAND_DISPATCH_ID: &str = "workerkit.command.dispatch_id";
/// The 1-based attempt of a command failure (spans only).
pub const COMMAND_ATTEMPT: &str = "workerkit.command.attempt";
/// Handler attempts run by a dispatch (spans only; absent when 0).
pub const COMMAND_ATTEMPTS: &str = "workerkit.command.attempts";
/// Whether the dispatch succeeded.
pub const COMMAND_SUCCESS: &str = "workerkit.command.success";
/// *(workerkit-rs)* How the dispatch ended: `succeeded`, `rejected`, `failed`, `timed_out`,
/// `panicked`, `cancelled`, `abandoned` (spans only).
pub const COMMAND_OUTCOME: &str = "workerkit.command.outcome";
/// The check's kind (`readiness`).
pub const CHECK_KIND: &str = "workerkit.check.kind";
/// How the check ended (`ready`, `not_ready`, `timeout`, `canceled`, `panic`, `error`).
pub const CHECK_OUTCOME: &str = "workerkit.check.outcome";
/// Whether the check loop goes on.
pub const CHECK_LOOP_CONTINUES: &str = "workerkit.check.loop_continues";
/// The lifecycle state before a transition.
pub const LIFECYCLE_FROM: &str = "workerkit.lifecycle.from";
/// The lifecycle state after a transition.
pub const LIFECYCLE_TO: &str = "workerkit.lifecycle.to";
/// *(workerkit-rs)* A lifecycle state, for [`LIFECYCLE_STATE_GAUGE`].
pub const LIFECYCLE_STATE: &str = "workerkit.lifecycle.state";
/// The new readiness.
pub const READY: &str = "workerkit.ready";
/// Whether the failure was a panic.
pub const FAILURE_PANIC: &str = "workerkit.failure.panic";
/// The public failure code.
pub const FAILURE_CODE: &str = "workerkit.failure.code";
/// *(workerkit-rs)* The lifecycle operation (`start`, `drain`, `stop`, `start_all`,
/// `drain_all`, `stop_all`, `shutdown`).
pub const OPERATION: &str = "workerkit.operation";
/// *(workerkit-rs)* Whether the lifecycle operation succeeded.
pub const OPERATION_SUCCESS: &str = "workerkit.operation.success";
/// *(workerkit-rs)* The kind of a supervision event: `restart_scheduled`, `restarted`,
/// `restart_cancelled`, `gave_up`, `stalled`, `stall_cleared`, `shutdown_waiting` (spans only).
pub const SUPERVISION_KIND: &str = "workerkit.supervision.kind";
/// *(workerkit-rs)* The worker's incarnation a supervision event is about (spans only; the new
/// one for `restarted`).
pub const WORKER_INCARNATION: &str = "workerkit.worker.incarnation";
/// *(workerkit-rs)* The backoff attempt of a restart (spans only).
pub const RESTART_ATTEMPT: &str = "workerkit.restart.attempt";
/// *(workerkit-rs)* The backoff delay before a restart, in seconds (spans only).
pub const RESTART_DELAY: &str = "workerkit.restart.delay";
/// *(workerkit-rs)* Restarts of the worker so far (spans only).
pub const RESTART_COUNT: &str = "workerkit.restart.count";
/// *(workerkit-rs)* How an incarnation ended: `failed`, `panicked`, `start_timed_out`,
/// `exited_unexpectedly`, `stalled` (spans only).
pub const EXIT_REASON: &str = "workerkit.exit.reason";
/// *(workerkit-rs)* Why a restart policy gave up: `intensity` or `permanent` (spans only).
pub const GIVE_UP_WHY: &str = "workerkit.give_up.why";
/// *(workerkit-rs)* The watchdog timeout, in seconds (spans only).
pub const WATCHDOG_TIMEOUT: &str = "workerkit.watchdog.timeout";
/// *(workerkit-rs)* What the watchdog does about a stall: `report`, `fail_liveness`, `cancel`,
/// `restart`.
pub const WATCHDOG_ACTION: &str = "workerkit.watchdog.action";
/// *(workerkit-rs)* How long a shutdown still waiting has run, in seconds (spans only).
pub const SHUTDOWN_ELAPSED: &str = "workerkit.shutdown.elapsed";
/// *(workerkit-rs)* What a shutdown still waits in: `draining` or `stopping` (spans only).
pub const SHUTDOWN_PHASE: &str = "workerkit.shutdown.phase";
/// *(workerkit-rs)* The workers a shutdown still waits for, in stop order (spans only; a string
/// array).
pub const SHUTDOWN_WORKERS: &str = "workerkit.shutdown.workers";
/// *(workerkit-rs)* The commands a shutdown still waits for (spans only).
pub const SHUTDOWN_IN_FLIGHT: &str = "workerkit.shutdown.in_flight";

// ---- Attribute values ----

/// The value of [`CHECK_KIND`] for readiness checks (the only kind the runtime runs).
pub const CHECK_KIND_READINESS: &str = "readiness";

// ---- Spans and span events ----

/// Prefix of a command's span: `workerkit.command <command>`.
pub const COMMAND_SPAN_PREFIX: &str = "workerkit.command ";
/// A readiness check execution's span.
pub const CHECK_SPAN: &str = "workerkit.check";
/// *(workerkit-rs)* Prefix of a lifecycle operation's span: `workerkit.lifecycle <operation>`
/// (for example `workerkit.lifecycle start_all`).
pub const OPERATION_SPAN_PREFIX: &str = "workerkit.lifecycle ";
/// *(workerkit-rs)* A failure's own span (status error), child of the command's span for
/// command failures, else of the lifecycle operation's span while one is open, else a root.
pub const FAILURE_SPAN: &str = "workerkit.failure";
/// Span event for a lifecycle transition (on the open lifecycle operation's span).
pub const LIFECYCLE_EVENT: &str = "workerkit.lifecycle.change";
/// Span event for a readiness change (on the open lifecycle operation's span).
pub const READINESS_EVENT: &str = "workerkit.readiness.change";
/// Span event for a failure (on the command's or lifecycle operation's span).
pub const FAILURE_EVENT: &str = "workerkit.failure";
/// Span event recording a failed dispatch's public message on its command span (the
/// OpenTelemetry `exception` event; never the private cause).
pub const EXCEPTION_EVENT: &str = "exception";
/// The public failure message, on [`EXCEPTION_EVENT`].
pub const EXCEPTION_MESSAGE: &str = "exception.message";
/// *(workerkit-rs)* Prefix of a supervision event's own short span:
/// `workerkit.supervision <kind>` (for example `workerkit.supervision restarted`), a child of
/// the open lifecycle operation's span, else a root. Status `Error` for `gave_up` only.
pub const SUPERVISION_SPAN_PREFIX: &str = "workerkit.supervision ";
/// *(workerkit-rs)* Span event for a supervision event (on the open lifecycle operation's span).
pub const SUPERVISION_EVENT: &str = "workerkit.supervision";

/// The span name of command `command`: `workerkit.command <command>`.
#[must_use]
pub fn command_span_name(command: &str) -> String {
    let mut name = String::with_capacity(COMMAND_SPAN_PREFIX.len() + command.len());
    name.push_str(COMMAND_SPAN_PREFIX);
    name.push_str(command);
    name
}

/// The span name of a lifecycle operation: `workerkit.lifecycle <operation>`.
#[must_use]
pub fn operation_span_name(operation: &str) -> String {
    let mut name = String::with_capacity(OPERATION_SPAN_PREFIX.len() + operation.len());
    name.push_str(OPERATION_SPAN_PREFIX);
    name.push_str(operation);
    name
}

/// The span name of a supervision event: `workerkit.supervision <kind>`.
#[must_use]
pub fn supervision_span_name(kind: &str) -> String {
    let mut name = String::with_capacity(SUPERVISION_SPAN_PREFIX.len() + kind.len());
    name.push_str(SUPERVISION_SPAN_PREFIX);
    name.push_str(kind);
    name
}
