//! Observers: how adapters (tracing, OpenTelemetry, your own) learn what the runtime does.
//!
//! An [`Observer`] has one method per event kind, each with an empty default body, so an observer
//! implements only what it needs and new hooks can be added without breaking it. Register any
//! number with [`RuntimeBuilder::with_observer`]; the runtime fans out to them in registration
//! order and contains their panics (counted in [`Runtime::observer_panics`]).
//!
//! # Ordering
//!
//! Transition, readiness, failure and operation events carry a runtime-wide `seq` and are
//! delivered in that order, which is the order in which the state changed. For one change the
//! order is: worker transition, worker readiness, failure, runtime transition, runtime readiness.
//! A lifecycle operation returns only after its own events have been delivered.
//!
//! # Reentrancy
//!
//! Observers are called synchronously, never while a lock is held. They must not block (do I/O
//! in a background task or a batch exporter instead) and must not call lifecycle operations:
//! such a call returns [`LifecycleError::Reentrant`]. Calls on a [`WorkerContext`] are allowed;
//! their events are delivered after the current callback returns.
//!
//! [`RuntimeBuilder::with_observer`]: crate::RuntimeBuilder::with_observer
//! [`Runtime::observer_panics`]: crate::Runtime::observer_panics
//! [`LifecycleError::Reentrant`]: crate::error::LifecycleError::Reentrant
//! [`WorkerContext`]: crate::WorkerContext

mod event;
mod stream;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use event::{
    Cause, CheckEndEvent, CheckOutcome, CheckStartEvent, CommandEndEvent, CommandOutcome,
    CommandStartEvent, FailureEvent, Operation, OperationEvent, OperationPhase, ReadinessEvent,
    SHUTDOWN_REPORT_COMMANDS, SupervisionEvent, SupervisionKind, TransitionEvent,
};
pub use stream::{EVENT_STREAM_CAPACITY, EventStream, StreamEvent};

/// A boxed future, as returned by [`Observer::shutdown`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives the runtime's events. Every method has an empty default body.
///
/// See the [module docs](self) for ordering and reentrancy rules.
pub trait Observer: Send + Sync + 'static {
    /// A worker or the runtime changed lifecycle state.
    fn on_transition(&self, event: &TransitionEvent) {
        let _ = event;
    }

    /// A worker's or the runtime's readiness changed.
    fn on_readiness(&self, event: &ReadinessEvent) {
        let _ = event;
    }

    /// A failure was observed.
    fn on_failure(&self, event: &FailureEvent) {
        let _ = event;
    }

    /// A lifecycle operation began or ended.
    fn on_operation(&self, event: &OperationEvent) {
        let _ = event;
    }

    /// A supervision event: restart scheduled, made or cancelled, give-up, watchdog stall, or
    /// a shutdown still waiting.
    fn on_supervision(&self, event: &SupervisionEvent) {
        let _ = event;
    }

    /// A readiness check execution began.
    fn on_check_start(&self, event: &CheckStartEvent) {
        let _ = event;
    }

    /// A dispatch to a resolved command began. Return an observation to follow it: its
    /// [`CommandObservation::in_scope`] wraps every poll of the handler (so spans the handler
    /// opens nest under the command's), and its [`CommandObservation::end`] is called exactly
    /// once, with the [`CommandEndEvent`].
    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        let _ = event;
        None
    }

    /// A readiness check execution ended.
    fn on_check_end(&self, event: &CheckEndEvent) {
        let _ = event;
    }

    /// Flush and release resources. Awaited once, at the end of [`Runtime::shutdown`], bounded by
    /// the runtime's observer flush timeout. Exporters flush here, never in event callbacks.
    ///
    /// [`Runtime::shutdown`]: crate::Runtime::shutdown
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Follows one dispatch; see [`Observer::on_command_start`].
pub trait CommandObservation: Send + Sync + 'static {
    /// Runs `poll` (one poll of the handler's future) inside this observation's scope, e.g. with
    /// a span entered or a trace context attached. The default just calls it.
    fn in_scope(&self, poll: &mut dyn FnMut()) {
        poll();
    }

    /// An attempt of this dispatch failed. Called on the dispatching task right after the
    /// attempt, before any retry, so an observation can attach the failure to its own span or
    /// scope at once. [`Observer::on_failure`] still receives the same failure as an ordered
    /// event (with `dispatch_id` set). The default does nothing.
    fn attempt_failed(&self, failure: &AttemptFailure<'_>) {
        let _ = failure;
    }

    /// The dispatch ended. Called exactly once.
    fn end(self: Box<Self>, event: &CommandEndEvent);
}

/// A failed attempt of a dispatch, as [`CommandObservation::attempt_failed`] sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttemptFailure<'a> {
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// The public failure.
    pub failure: &'a crate::failure::Failure,
    /// Whether the handler panicked.
    pub panic: bool,
    /// The private cause, if there is one (never show it publicly).
    pub cause: Option<&'a Cause>,
    /// When the attempt failed.
    pub at: crate::Timestamp,
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn on_transition(&self, event: &TransitionEvent) {
        (**self).on_transition(event);
    }
    fn on_readiness(&self, event: &ReadinessEvent) {
        (**self).on_readiness(event);
    }
    fn on_failure(&self, event: &FailureEvent) {
        (**self).on_failure(event);
    }
    fn on_operation(&self, event: &OperationEvent) {
        (**self).on_operation(event);
    }
    fn on_supervision(&self, event: &SupervisionEvent) {
        (**self).on_supervision(event);
    }
    fn on_check_start(&self, event: &CheckStartEvent) {
        (**self).on_check_start(event);
    }
    fn on_check_end(&self, event: &CheckEndEvent) {
        (**self).on_check_end(event);
    }
    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        (**self).on_command_start(event)
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        (**self).shutdown()
    }
}

/// The observations of one dispatch, nested in observer order and ended in reverse order.
pub(crate) struct CommandObservations {
    list: Vec<Box<dyn CommandObservation>>,
}

impl CommandObservations {
    pub(crate) fn none() -> Self {
        Self { list: Vec::new() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Polls inside every observation's scope (the first observer's scope outermost). A panic
    /// in one observation's scope is contained at its own level, so the scopes around it still
    /// exit normally; returns how many panicked.
    pub(crate) fn in_scope(&self, poll: &mut dyn FnMut()) -> u64 {
        fn nest(
            list: &[Box<dyn CommandObservation>],
            poll: &mut dyn FnMut(),
            panics: &std::cell::Cell<u64>,
        ) {
            match list.split_first() {
                None => poll(),
                Some((first, rest)) => {
                    let scoped = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        first.in_scope(&mut || nest(rest, poll, panics));
                    }));
                    if scoped.is_err() {
                        panics.set(panics.get() + 1);
                    }
                }
            }
        }
        let panics = std::cell::Cell::new(0);
        nest(&self.list, poll, &panics);
        panics.get()
    }

    /// Tells every observation that an attempt failed; returns how many panicked.
    pub(crate) fn attempt_failed(&self, failure: &AttemptFailure<'_>) -> u64 {
        let mut panics = 0;
        for observation in &self.list {
            if std::panic::catch_unwind(AssertUnwindSafe(|| observation.attempt_failed(failure)))
                .is_err()
            {
                panics += 1;
            }
        }
        panics
    }

    /// Ends every observation, in reverse order; returns how many panicked.
    pub(crate) fn end(self, event: &CommandEndEvent) -> u64 {
        let mut panics = 0;
        for observation in self.list.into_iter().rev() {
            if std::panic::catch_unwind(AssertUnwindSafe(|| observation.end(event))).is_err() {
                panics += 1;
            }
        }
        panics
    }
}

/// The ordered events, queued under the state lock and delivered after it is released.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    Transition(TransitionEvent),
    Readiness(ReadinessEvent),
    Failure(FailureEvent),
    Operation(OperationEvent),
    Supervision(SupervisionEvent),
}

impl Event {
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Self::Transition(e) => e.seq,
            Self::Readiness(e) => e.seq,
            Self::Failure(e) => e.seq,
            Self::Operation(e) => e.seq,
            Self::Supervision(e) => e.seq,
        }
    }
}

/// The fan-out to every registered observer, with panic isolation.
pub(crate) struct Observers {
    list: Vec<Arc<dyn Observer>>,
    panics: AtomicU64,
    shut_down: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("len", &self.list.len())
            .field("panics", &self.panics.load(Ordering::Relaxed))
            .finish()
    }
}

impl Observers {
    pub(crate) fn new(list: Vec<Arc<dyn Observer>>) -> Self {
        Self {
            list,
            panics: AtomicU64::new(0),
            shut_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    fn each(&self, f: impl Fn(&dyn Observer)) {
        for observer in &self.list {
            if std::panic::catch_unwind(AssertUnwindSafe(|| f(&**observer))).is_err() {
                self.panics.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn emit(&self, event: &Event) {
        match event {
            Event::Transition(e) => self.each(|o| o.on_transition(e)),
            Event::Readiness(e) => self.each(|o| o.on_readiness(e)),
            Event::Failure(e) => self.each(|o| o.on_failure(e)),
            Event::Operation(e) => self.each(|o| o.on_operation(e)),
            Event::Supervision(e) => self.each(|o| o.on_supervision(e)),
        }
    }

    pub(crate) fn check_start(&self, event: &CheckStartEvent) {
        self.each(|o| o.on_check_start(event));
    }

    pub(crate) fn check_end(&self, event: &CheckEndEvent) {
        self.each(|o| o.on_check_end(event));
    }

    /// Starts the observations of one dispatch (panicking observers are skipped).
    pub(crate) fn command_start(&self, event: &CommandStartEvent) -> CommandObservations {
        let mut list = Vec::new();
        for observer in &self.list {
            match std::panic::catch_unwind(AssertUnwindSafe(|| observer.on_command_start(event))) {
                Ok(Some(observation)) => list.push(observation),
                Ok(None) => {}
                Err(_) => {
                    self.panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        CommandObservations { list }
    }

    pub(crate) fn count_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Awaits every observer's shutdown hook concurrently, once per runtime (later calls do
    /// nothing); panics are contained and counted.
    pub(crate) async fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut hooks: Vec<Option<_>> = self
            .list
            .iter()
            .map(|observer| Some(crate::task::CatchUnwind::new(observer.shutdown())))
            .collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for slot in &mut hooks {
                if let Some(hook) = slot {
                    match std::pin::Pin::new(hook).poll(cx) {
                        std::task::Poll::Ready(result) => {
                            if result.is_err() {
                                self.panics.fetch_add(1, Ordering::Relaxed);
                            }
                            *slot = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
    }
}
