//! The command span: one per dispatch, entered around every poll of the handler.

use std::sync::Arc;

use tracing::{Level, Span};
use workerkit_core::command::DispatchId;
use workerkit_core::failure::Failure;
use workerkit_core::observe::{
    AttemptFailure, CommandEndEvent, CommandObservation, CommandOutcome, CommandStartEvent,
};

use crate::observer::{CauseFields, log_cause};
use crate::{TARGET, message};

/// Follows one dispatch: its span, and the failure and end events emitted inside it.
#[derive(Debug)]
pub(crate) struct CommandSpan {
    span: Span,
    level: Level,
    log_causes: bool,
    /// The dispatch's names, for the failure events of its attempts (the end event has its own).
    runtime: Arc<str>,
    worker: Arc<str>,
    command: Arc<str>,
    dispatch_id: DispatchId,
}

impl CommandSpan {
    pub(crate) fn new(
        span: Span,
        level: Level,
        log_causes: bool,
        start: &CommandStartEvent,
    ) -> Self {
        Self {
            span,
            level,
            log_causes,
            runtime: Arc::clone(&start.runtime),
            worker: Arc::clone(&start.worker),
            command: Arc::clone(&start.command),
            dispatch_id: start.dispatch_id,
        }
    }

    /// The parent of the events emitted inside the span: the span, given explicitly (cheaper
    /// than entering it); if a filter disabled the span but not the event, the caller's span.
    fn parent(&self) -> Option<tracing::span::Id> {
        self.span.id().or_else(|| Span::current().id())
    }
}

impl CommandObservation for CommandSpan {
    fn in_scope(&self, poll: &mut dyn FnMut()) {
        let _entered = self.span.enter();
        poll();
    }

    fn attempt_failed(&self, failure: &AttemptFailure<'_>) {
        // The failure event of this attempt, inside the command span, at once (the runtime's
        // ordered `FailureEvent` for it is not logged again: see `on_failure`).
        let parent = self.parent();
        tracing::event!(
            target: TARGET,
            parent: parent.clone(),
            Level::ERROR,
            message = message::FAILURE,
            runtime = &*self.runtime,
            worker = &*self.worker,
            command = &*self.command,
            panic = failure.panic,
            dispatch_id = %self.dispatch_id,
            attempt = failure.attempt,
            failure_code = failure.failure.code(),
            error = failure.failure.message(),
        );
        if self.log_causes {
            log_cause(
                parent,
                &CauseFields {
                    runtime: &self.runtime,
                    worker: Some(&self.worker),
                    command: Some(&self.command),
                    dispatch_id: Some(self.dispatch_id),
                    failure_code: Some(failure.failure.code()),
                },
                failure.cause,
            );
        }
    }

    fn end(self: Box<Self>, event: &CommandEndEvent) {
        let span = &self.span;
        span.record("attempts", event.attempts);
        span.record("outcome", event.outcome.as_str());
        let parent = self.parent();
        let failure = event.failure.as_ref();
        event_at!(
            parent: parent.clone(),
            self.level,
            message = message::COMMAND_COMPLETED,
            runtime = &*event.runtime,
            worker = &*event.worker,
            command = &*event.command,
            success = event.outcome == CommandOutcome::Succeeded,
            outcome = event.outcome.as_str(),
            duration = tracing::field::debug(event.duration),
            dispatch_id = %event.dispatch_id,
            attempts = (event.attempts > 0).then_some(event.attempts),
            failure_code = failure.map(Failure::code),
            error = failure.map(Failure::message),
        );
        if self.log_causes {
            log_cause(
                parent,
                &CauseFields {
                    runtime: &event.runtime,
                    worker: Some(&event.worker),
                    command: Some(&event.command),
                    dispatch_id: Some(event.dispatch_id),
                    failure_code: failure.map(Failure::code),
                },
                event.cause.as_ref(),
            );
        }
        // The span closes when `self` drops, after the guard.
    }
}
