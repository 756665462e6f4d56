//! The command span: one per dispatch, entered around every poll of the handler.

use tracing::{Level, Span};
use workerkit_core::failure::Failure;
use workerkit_core::observe::{CommandEndEvent, CommandObservation, CommandOutcome};

use crate::message;
use crate::observer::{CauseFields, log_cause};

/// Follows one dispatch: its span, and the end event emitted inside it.
#[derive(Debug)]
pub(crate) struct CommandSpan {
    span: Span,
    level: Level,
    log_causes: bool,
}

impl CommandSpan {
    pub(crate) const fn new(span: Span, level: Level, log_causes: bool) -> Self {
        Self {
            span,
            level,
            log_causes,
        }
    }
}

impl CommandObservation for CommandSpan {
    fn in_scope(&self, poll: &mut dyn FnMut()) {
        let _entered = self.span.enter();
        poll();
    }

    fn end(self: Box<Self>, event: &CommandEndEvent) {
        let span = &self.span;
        span.record("attempts", event.attempts);
        span.record("outcome", event.outcome.as_str());
        // The end event's parent is the span, given explicitly (cheaper than entering it); if a
        // filter disabled the span but not the event, the caller's span.
        let parent = span.id().or_else(|| Span::current().id());
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
