//! [`TracingObserver`]: the events, and its builder.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tracing::field::Empty;
use tracing::span::Id;
use tracing::{Level, Span};
use workerkit_core::Observer;
use workerkit_core::command::DispatchId;
use workerkit_core::observe::{
    Cause, CheckEndEvent, CommandObservation, CommandStartEvent, FailureEvent, OperationEvent,
    OperationPhase, ReadinessEvent, SupervisionEvent, SupervisionKind, TransitionEvent,
};

use crate::command::CommandSpan;
use crate::{COMMAND_SPAN, TARGET, message};

/// The `check_kind` of every check event. The Rust runtime has one kind of check, a worker's
/// `ReadinessCheck`: the Go original's `checker` (its other kind, `check_group`, has no Rust
/// counterpart).
const CHECK_KIND: &str = "checker";

/// An [`Observer`] that emits the runtime's events as `tracing` events and each command
/// dispatch as a span; see the [crate docs](crate) for what is emitted.
///
/// Cheap to clone. Install it with [`RuntimeBuilder::with_observer`].
///
/// [`RuntimeBuilder::with_observer`]: workerkit_core::RuntimeBuilder::with_observer
#[derive(Clone, Debug)]
pub struct TracingObserver {
    level: Level,
    log_causes: bool,
}

impl Default for TracingObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl TracingObserver {
    /// An observer with the defaults: routine events at `INFO`, causes never logged.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            level: Level::INFO,
            log_causes: false,
        }
    }

    /// A builder, to change the defaults.
    pub const fn builder() -> TracingObserverBuilder {
        TracingObserverBuilder {
            observer: Self::new(),
        }
    }

    /// The level of routine events and of the command span.
    #[must_use]
    pub const fn level(&self) -> Level {
        self.level
    }

    /// Whether private causes are logged at `DEBUG`.
    #[must_use]
    pub const fn logs_causes(&self) -> bool {
        self.log_causes
    }

    /// Whether an event at the routine level could be recorded by the current subscriber.
    fn routine_enabled(&self) -> bool {
        match self.level {
            Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
            Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
            Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
            Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
            _ => tracing::enabled!(target: TARGET, Level::TRACE),
        }
    }

    /// Whether cause events could be recorded.
    fn causes_enabled(&self) -> bool {
        self.log_causes && tracing::enabled!(target: TARGET, Level::DEBUG)
    }
}

/// Configures a [`TracingObserver`]; from [`TracingObserver::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct TracingObserverBuilder {
    observer: TracingObserver,
}

impl TracingObserverBuilder {
    /// The level of routine events (transitions, readiness, operations, checks, command ends)
    /// and of the command span. Failures are always at `ERROR`. Default `INFO`.
    pub const fn level(mut self, level: Level) -> Self {
        self.observer.level = level;
        self
    }

    /// Whether to log each failure's private cause, in a `DEBUG` event `workerkit failure cause`
    /// after the event that carries it. For local development only: a cause's text may hold
    /// credentials or customer data. Default `false`.
    pub const fn log_causes(mut self, log_causes: bool) -> Self {
        self.observer.log_causes = log_causes;
        self
    }

    /// The observer.
    #[must_use]
    pub const fn build(self) -> TracingObserver {
        self.observer
    }
}

impl Observer for TracingObserver {
    fn on_transition(&self, event: &TransitionEvent) {
        event_at!(
            self.level,
            message = message::TRANSITION,
            runtime = &*event.runtime,
            worker = event.worker.as_deref(),
            lifecycle_from = event.from.as_str(),
            lifecycle_to = event.to.as_str(),
        );
    }

    fn on_readiness(&self, event: &ReadinessEvent) {
        event_at!(
            self.level,
            message = message::READINESS,
            runtime = &*event.runtime,
            worker = event.worker.as_deref(),
            ready = event.ready,
        );
    }

    fn on_failure(&self, event: &FailureEvent) {
        // A command attempt's failure is logged by the command's observation
        // (`CommandSpan::attempt_failed`), inside the command span, right after the attempt.
        if event.dispatch_id.is_some() {
            return;
        }
        tracing::event!(
            target: TARGET,
            Level::ERROR,
            message = message::FAILURE,
            runtime = &*event.runtime,
            worker = event.worker.as_deref(),
            command = event.command.as_deref(),
            panic = event.panic,
            dispatch_id = event.dispatch_id.map(tracing::field::display),
            attempt = (event.attempt > 0).then_some(event.attempt),
            failure_code = event.failure.code(),
            error = event.failure.message(),
        );
        if self.log_causes {
            log_cause(
                Span::current().id(),
                &CauseFields {
                    runtime: &event.runtime,
                    worker: event.worker.as_deref(),
                    command: event.command.as_deref(),
                    dispatch_id: event.dispatch_id,
                    failure_code: Some(event.failure.code()),
                },
                event.cause.as_ref(),
            );
        }
    }

    fn on_operation(&self, event: &OperationEvent) {
        let failure = match &event.phase {
            OperationPhase::Started => {
                event_at!(
                    self.level,
                    message = message::OPERATION_STARTED,
                    runtime = &*event.runtime,
                    worker = event.worker.as_deref(),
                    operation = event.operation.as_str(),
                );
                return;
            }
            OperationPhase::Failed(failure) => Some(failure),
            // `OperationPhase` is non-exhaustive: a phase added later counts as an end.
            _ => None,
        };
        let level = if failure.is_some() {
            Level::ERROR
        } else {
            self.level
        };
        event_at!(
            level,
            message = message::OPERATION_COMPLETED,
            runtime = &*event.runtime,
            worker = event.worker.as_deref(),
            operation = event.operation.as_str(),
            success = failure.is_none(),
            duration = tracing::field::debug(event.elapsed),
            failure_code = failure.map(|f| f.code()),
            error = failure.map(|f| f.message()),
        );
    }

    fn on_supervision(&self, event: &SupervisionEvent) {
        let runtime = &*event.runtime;
        let worker = event.worker.as_deref();
        // Runtime-wide events (incarnation 0) have no `incarnation` field.
        let incarnation = (event.incarnation > 0).then_some(event.incarnation);
        let kind = event.kind.name();
        match &event.kind {
            SupervisionKind::RestartScheduled {
                attempt,
                delay,
                reason,
                failure,
                ..
            } => tracing::event!(
                target: TARGET,
                Level::WARN,
                message = message::RESTART_SCHEDULED,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
                attempt = *attempt,
                delay_ms = millis(*delay),
                exit_reason = reason.as_str(),
                failure_code = failure.as_ref().map(|f| f.code()),
                error = failure.as_ref().map(|f| f.message()),
            ),
            SupervisionKind::Restarted { restarts, attempt } => event_at!(
                self.level,
                message = message::RESTARTED,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
                restarts = *restarts,
                attempt = *attempt,
            ),
            SupervisionKind::RestartCancelled => event_at!(
                self.level,
                message = message::RESTART_CANCELLED,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
            ),
            SupervisionKind::GaveUp {
                restarts,
                reason,
                failure,
                why,
            } => tracing::event!(
                target: TARGET,
                Level::ERROR,
                message = message::GAVE_UP,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
                restarts = *restarts,
                exit_reason = reason.as_str(),
                failure_code = failure.as_ref().map(|f| f.code()),
                error = failure.as_ref().map(|f| f.message()),
                why = *why,
            ),
            SupervisionKind::Stalled { timeout, action } => tracing::event!(
                target: TARGET,
                Level::WARN,
                message = message::STALLED,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
                timeout_ms = millis(*timeout),
                action = action.as_str(),
            ),
            SupervisionKind::StallCleared => event_at!(
                self.level,
                message = message::STALL_CLEARED,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
            ),
            SupervisionKind::ShutdownWaiting {
                elapsed,
                workers,
                in_flight,
                commands,
                phase,
                ..
            } => tracing::event!(
                target: TARGET,
                Level::WARN,
                message = message::SHUTDOWN_WAITING,
                runtime,
                worker,
                supervision_kind = kind,
                elapsed_ms = millis(*elapsed),
                phase = *phase,
                in_flight = *in_flight,
                pending_workers = workers.len(),
                workers = %Names(workers),
                commands = %Commands(commands),
            ),
            // `SupervisionKind` is non-exhaustive: a kind added later is logged by name.
            _ => event_at!(
                self.level,
                message = message::SUPERVISION,
                runtime,
                worker,
                incarnation,
                supervision_kind = kind,
            ),
        }
    }

    fn on_check_end(&self, event: &CheckEndEvent) {
        event_at!(
            self.level,
            message = message::CHECK_COMPLETED,
            runtime = &*event.runtime,
            worker = &*event.worker,
            check_kind = CHECK_KIND,
            check_outcome = event.outcome.as_str(),
            loop_continues = event.loop_continues,
            duration = tracing::field::debug(event.duration),
        );
    }

    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        let span = span_at!(
            self.level,
            COMMAND_SPAN,
            runtime = &*event.runtime,
            worker = &*event.worker,
            command = &*event.command,
            dispatch_id = %event.dispatch_id,
            attempts = Empty,
            outcome = Empty,
        );
        // With nothing to record (no span, no end event, no failure event), skip the
        // observation and its box.
        if span.is_disabled()
            && !self.routine_enabled()
            && !self.causes_enabled()
            && !tracing::enabled!(target: TARGET, Level::ERROR)
        {
            return None;
        }
        Some(Box::new(CommandSpan::new(
            span,
            self.level,
            self.log_causes,
            event,
        )))
    }
}

/// Where a cause event says the cause comes from.
pub(crate) struct CauseFields<'a> {
    pub(crate) runtime: &'a str,
    pub(crate) worker: Option<&'a str>,
    pub(crate) command: Option<&'a str>,
    pub(crate) dispatch_id: Option<DispatchId>,
    pub(crate) failure_code: Option<&'a str>,
}

/// Emits the `DEBUG` cause event, if there is a cause.
pub(crate) fn log_cause(parent: Option<Id>, fields: &CauseFields<'_>, cause: Option<&Cause>) {
    let Some(cause) = cause else { return };
    tracing::event!(
        target: TARGET,
        parent: parent,
        Level::DEBUG,
        message = message::FAILURE_CAUSE,
        runtime = fields.runtime,
        worker = fields.worker,
        command = fields.command,
        dispatch_id = fields.dispatch_id.map(tracing::field::display),
        failure_code = fields.failure_code,
        cause = %CauseChain(&**cause),
    );
}

/// Displays an error and its sources, `outer: inner: innermost`.
struct CauseChain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for CauseChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// A duration in whole milliseconds (saturating), for the `*_ms` fields.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Displays worker names comma-separated (`rt/a, rt/b`), without allocating.
/// In-flight commands as `worker/command (id, age 1.250s)`, comma separated.
struct Commands<'a>(&'a [workerkit_core::command::InFlightCommand]);

impl fmt::Display for Commands<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, command) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{}/{} ({}, age {:.3}s)",
                command.worker,
                command.command,
                command.id,
                command.age.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

struct Names<'a>(&'a [Arc<str>]);

impl fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}
