//! [`OtelObserver`]: the runtime's events as OpenTelemetry spans and metrics.

use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, Key, KeyValue, StringValue, Value};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use workerkit_core::command::{DispatchId, Metadata};
use workerkit_core::observe::{
    AttemptFailure, BoxFuture, CheckEndEvent, CheckOutcome, CommandEndEvent, CommandObservation,
    CommandOutcome, CommandStartEvent, FailureEvent, OperationEvent, OperationPhase,
    ReadinessEvent, SupervisionEvent, SupervisionKind, TransitionEvent,
};
use workerkit_core::{LifecycleState, Observer};

use crate::metrics::{InFlight, InFlightCount, Instruments};
use crate::semconv;

/// Turns a workerkit runtime's events into OpenTelemetry traces and metrics.
///
/// Register it with [`RuntimeBuilder::with_observer`]; it is a cheap `Clone` over shared state.
///
/// - **Commands**: one span per dispatch, `workerkit.command <command>`, from the dispatch's
///   start to its end, continuing the trace of a W3C `traceparent` (and `tracestate`) in the
///   request's metadata, else a child of the dispatching task's current OpenTelemetry context.
///   Its context is current while the handler is polled, so the handler's own spans are its
///   children. Status `Ok` on success, `Error` with the public failure message otherwise.
/// - **Lifecycle operations**: one span each, `workerkit.lifecycle <operation>`, carrying the
///   transitions and readiness changes of the operation as span events.
/// - **Failures**: a short span of their own, `workerkit.failure`, with status `Error`: a child
///   of the command's span for command failures, else of the open lifecycle operation's span.
/// - **Readiness checks**: one span per execution, `workerkit.check`.
/// - **Supervision** (restarts, give-ups, watchdog stalls, a shutdown still waiting): a short
///   span of their own, `workerkit.supervision <kind>`, a child of the open lifecycle
///   operation's span (which also gets a `workerkit.supervision` event), else a root; and the
///   restart, give-up and stall counters.
/// - **Metrics**: see [`semconv`](crate::semconv) for every instrument and attribute.
///
/// The observer never changes a span it did not start: the caller's span keeps its status.
///
/// Exporting happens in the SDK's batch span processor and periodic metric reader, never in an
/// event callback. The runtime awaits [`Observer::shutdown`] at the end of its shutdown: the
/// providers are flushed there (and shut down, when the observer owns them: see
/// [`OtelObserver::from_env`]), on a blocking thread.
///
/// [`RuntimeBuilder::with_observer`]: workerkit_core::RuntimeBuilder::with_observer
#[derive(Clone)]
pub struct OtelObserver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OtelObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelObserver")
            .field("owns_providers", &self.inner.providers.owned)
            .finish_non_exhaustive()
    }
}

struct Inner {
    tracer: SdkTracer,
    instruments: Instruments,
    /// The in-flight counters, per command.
    in_flight: Arc<InFlight>,
    propagator: TraceContextPropagator,
    /// The lifecycle operation in progress, per runtime (operations are serialised by the
    /// runtime's lifecycle gate, so there is at most one per runtime).
    operations: Mutex<Vec<OpenOperation>>,
    providers: Providers,
}

/// A lifecycle operation's span, open between its `Started` and its end.
struct OpenOperation {
    runtime: Arc<str>,
    cx: Context,
}

/// The providers the observer flushes at shutdown.
#[derive(Clone)]
pub(crate) struct Providers {
    pub(crate) tracer: SdkTracerProvider,
    pub(crate) meter: SdkMeterProvider,
    /// Whether the observer made them (then it shuts them down too).
    pub(crate) owned: bool,
}

impl Providers {
    /// Flushes both providers and, if owned, shuts them down. Blocks.
    fn flush(&self) {
        // Errors are reported by the SDK's own diagnostics; a failed export cannot be retried
        // at this point.
        let _ = self.tracer.force_flush();
        let _ = self.meter.force_flush();
        if self.owned {
            let _ = self.tracer.shutdown();
            let _ = self.meter.shutdown();
        }
    }
}

impl OtelObserver {
    /// An observer recording to providers the caller set up (and keeps owning: the observer's
    /// shutdown hook flushes them but does not shut them down).
    ///
    /// ```
    /// use opentelemetry_sdk::metrics::SdkMeterProvider;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    /// use workerkit_core::Runtime;
    /// use workerkit_otel::OtelObserver;
    ///
    /// let tracer_provider = SdkTracerProvider::builder().build();
    /// let meter_provider = SdkMeterProvider::builder().build();
    /// let observer = OtelObserver::new(&tracer_provider, &meter_provider);
    /// let runtime = Runtime::builder("billing").with_observer(observer).build()?;
    /// # let _ = runtime;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new(tracer_provider: &SdkTracerProvider, meter_provider: &SdkMeterProvider) -> Self {
        Self::with_providers(Providers {
            tracer: tracer_provider.clone(),
            meter: meter_provider.clone(),
            owned: false,
        })
    }

    pub(crate) fn with_providers(providers: Providers) -> Self {
        let scope = InstrumentationScope::builder(semconv::SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = providers.tracer.tracer_with_scope(scope.clone());
        let meter = providers.meter.meter_with_scope(scope);
        let in_flight = Arc::new(InFlight::default());
        Self {
            inner: Arc::new(Inner {
                tracer,
                instruments: Instruments::new(&meter, &in_flight),
                in_flight,
                propagator: TraceContextPropagator::new(),
                operations: Mutex::new(Vec::new()),
                providers,
            }),
        }
    }

    /// The tracer provider the observer records to: use it for your own spans (or install it
    /// with `opentelemetry::global::set_tracer_provider`).
    #[must_use]
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.inner.providers.tracer
    }

    /// The meter provider the observer records to.
    #[must_use]
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.inner.providers.meter
    }

    /// Flushes the providers (and shuts them down if the observer owns them), on a blocking
    /// thread when called inside a tokio runtime. The runtime calls this through
    /// [`Observer::shutdown`]; call it yourself only when the observer is not registered with a
    /// runtime that shuts down.
    pub async fn flush(&self) {
        let providers = self.inner.providers.clone();
        match tokio::runtime::Handle::try_current() {
            // The SDK's flush and shutdown block until the exporting threads are done.
            Ok(handle) => {
                let _ = handle.spawn_blocking(move || providers.flush()).await;
            }
            Err(_) => providers.flush(),
        }
    }
}

// ---- Attributes ----

fn string(value: &Arc<str>) -> Value {
    Value::String(StringValue::from(Arc::clone(value)))
}

fn kv(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(Key::from_static_str(key), value)
}

/// `workerkit.runtime`, then `workerkit.worker` when there is one.
fn base(runtime: &Arc<str>, worker: Option<&Arc<str>>, extra: usize) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(2 + extra);
    attrs.push(kv(semconv::RUNTIME, string(runtime)));
    if let Some(worker) = worker {
        attrs.push(kv(semconv::WORKER, string(worker)));
    }
    attrs
}

fn state_str(state: LifecycleState) -> &'static str {
    state.as_str()
}

/// A dispatch id as an attribute value (formatted into a string of its final size).
fn id_value(id: DispatchId) -> Value {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(36);
    let _ = write!(text, "{id}");
    Value::String(StringValue::from(text))
}

/// A count as an attribute value (saturating at `i64::MAX`).
fn count(n: u64) -> Value {
    Value::I64(i64::try_from(n).unwrap_or(i64::MAX))
}

fn failure_code(failure: &workerkit_core::failure::Failure) -> Value {
    Value::String(StringValue::from(failure.code().to_owned()))
}

fn failure_message(failure: &workerkit_core::failure::Failure) -> String {
    failure.message().to_owned()
}

// ---- Trace context from request metadata ----

/// Reads W3C trace context headers from a request's metadata (keys matched exactly, then
/// ASCII case-insensitively).
struct MetadataExtractor<'a>(&'a Metadata);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Inner {
    /// The parent of a command's span: the trace in the request's `traceparent`, else the
    /// dispatching task's current context.
    fn command_parent(&self, metadata: &Metadata) -> Context {
        let current = Context::current();
        if metadata.is_empty() {
            return current;
        }
        self.propagator
            .extract_with_context(&current, &MetadataExtractor(metadata))
    }

    /// The open lifecycle operation's context for `runtime`, if any.
    fn operation(&self, runtime: &str) -> Option<Context> {
        let open = self
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.iter()
            .find(|op| &*op.runtime == runtime)
            .map(|op| op.cx.clone())
    }
}

// ---- The observer ----

impl Observer for OtelObserver {
    fn on_transition(&self, event: &TransitionEvent) {
        let inner = &*self.inner;
        let (from, to) = (state_str(event.from), state_str(event.to));
        let mut attrs = base(&event.runtime, event.worker.as_ref(), 2);
        if let Some(cx) = inner.operation(&event.runtime) {
            let mut span_attrs = attrs.clone();
            span_attrs.push(kv(semconv::LIFECYCLE_FROM, from));
            span_attrs.push(kv(semconv::LIFECYCLE_TO, to));
            cx.span().add_event_with_timestamp(
                semconv::LIFECYCLE_EVENT,
                event.at.as_system_time(),
                span_attrs,
            );
        }
        // The state gauge: the state left goes to 0, the state entered to 1.
        let n = attrs.len();
        attrs.push(kv(semconv::LIFECYCLE_STATE, from));
        inner.instruments.lifecycle_state.record(0, &attrs);
        attrs[n] = kv(semconv::LIFECYCLE_STATE, to);
        inner.instruments.lifecycle_state.record(1, &attrs);
        attrs[n] = kv(semconv::LIFECYCLE_FROM, from);
        attrs.push(kv(semconv::LIFECYCLE_TO, to));
        inner.instruments.lifecycle_transitions.add(1, &attrs);
    }

    fn on_readiness(&self, event: &ReadinessEvent) {
        let inner = &*self.inner;
        let mut attrs = base(&event.runtime, event.worker.as_ref(), 1);
        attrs.push(kv(semconv::READY, event.ready));
        if let Some(cx) = inner.operation(&event.runtime) {
            cx.span().add_event_with_timestamp(
                semconv::READINESS_EVENT,
                event.at.as_system_time(),
                attrs.clone(),
            );
        }
        inner.instruments.readiness_changes.add(1, &attrs);
    }

    fn on_failure(&self, event: &FailureEvent) {
        let inner = &*self.inner;
        let mut attrs = base(&event.runtime, event.worker.as_ref(), 3);
        if let Some(command) = &event.command {
            attrs.push(kv(semconv::COMMAND, string(command)));
        }
        attrs.push(kv(semconv::FAILURE_PANIC, event.panic));
        attrs.push(kv(semconv::FAILURE_CODE, failure_code(&event.failure)));
        inner.instruments.failures.add(1, &attrs);

        // A command attempt's failure gets its span from the command's observation
        // (`CommandSpan::attempt_failed`), under the command's span, at once.
        if event.dispatch_id.is_some() {
            return;
        }
        // Any other failure's own span goes under the operation's span (ours), which also gets
        // a failure event. Never the caller's span.
        let parent = inner.operation(&event.runtime);
        let span_attrs = attrs;
        let at = event.at.as_system_time();
        let parent = match parent {
            Some(cx) => {
                cx.span()
                    .add_event_with_timestamp(semconv::FAILURE_EVENT, at, span_attrs.clone());
                cx
            }
            None => Context::new(),
        };
        let mut span = inner.tracer.build_with_context(
            SpanBuilder::from_name(semconv::FAILURE_SPAN)
                .with_kind(SpanKind::Internal)
                .with_start_time(at)
                .with_attributes(span_attrs),
            &parent,
        );
        span.set_status(Status::error(failure_message(&event.failure)));
        span.end_with_timestamp(at);
    }

    fn on_supervision(&self, event: &SupervisionEvent) {
        let inner = &*self.inner;
        let kind = event.kind.name();
        // Metrics: the worker's names only (and the watchdog's action), never its incarnation.
        let mut attrs = base(&event.runtime, event.worker.as_ref(), 8);
        match &event.kind {
            SupervisionKind::Restarted { .. } => inner.instruments.worker_restarts.add(1, &attrs),
            SupervisionKind::GaveUp { .. } => inner.instruments.worker_give_ups.add(1, &attrs),
            SupervisionKind::Stalled { action, .. } => {
                let mut stall = attrs.clone();
                stall.push(kv(semconv::WATCHDOG_ACTION, action.as_str()));
                inner.instruments.worker_stalls.add(1, &stall);
            }
            _ => {}
        }

        // Traces, as for failures: a short span of its own under the open operation's span
        // (ours), which also gets an event; else a root. Never the caller's span.
        attrs.push(kv(semconv::SUPERVISION_KIND, kind));
        if event.incarnation > 0 {
            attrs.push(kv(
                semconv::WORKER_INCARNATION,
                i64::try_from(event.incarnation).unwrap_or(i64::MAX),
            ));
        }
        let mut status = None;
        match &event.kind {
            SupervisionKind::RestartScheduled {
                attempt,
                delay,
                reason,
                failure,
                ..
            } => {
                attrs.push(kv(semconv::RESTART_ATTEMPT, i64::from(*attempt)));
                attrs.push(kv(semconv::RESTART_DELAY, delay.as_secs_f64()));
                attrs.push(kv(semconv::EXIT_REASON, reason.as_str()));
                if let Some(failure) = failure {
                    attrs.push(kv(semconv::FAILURE_CODE, failure_code(failure)));
                }
            }
            SupervisionKind::Restarted { restarts, attempt } => {
                attrs.push(kv(semconv::RESTART_COUNT, count(*restarts)));
                attrs.push(kv(semconv::RESTART_ATTEMPT, i64::from(*attempt)));
            }
            SupervisionKind::GaveUp {
                restarts,
                reason,
                failure,
                why,
            } => {
                attrs.push(kv(semconv::RESTART_COUNT, count(*restarts)));
                attrs.push(kv(semconv::EXIT_REASON, reason.as_str()));
                if let Some(failure) = failure {
                    attrs.push(kv(semconv::FAILURE_CODE, failure_code(failure)));
                }
                attrs.push(kv(semconv::GIVE_UP_WHY, *why));
                status = Some(Status::error(match failure {
                    Some(failure) => failure_message(failure),
                    None => format!("restart policy gave up: {why}"),
                }));
            }
            SupervisionKind::Stalled { timeout, action } => {
                attrs.push(kv(semconv::WATCHDOG_TIMEOUT, timeout.as_secs_f64()));
                attrs.push(kv(semconv::WATCHDOG_ACTION, action.as_str()));
            }
            SupervisionKind::ShutdownWaiting {
                elapsed,
                workers,
                in_flight,
                phase,
                ..
            } => {
                attrs.push(kv(semconv::SHUTDOWN_ELAPSED, elapsed.as_secs_f64()));
                attrs.push(kv(semconv::SHUTDOWN_PHASE, *phase));
                attrs.push(kv(
                    semconv::SHUTDOWN_IN_FLIGHT,
                    i64::try_from(*in_flight).unwrap_or(i64::MAX),
                ));
                let names = workers.iter().map(|w| StringValue::from(Arc::clone(w)));
                attrs.push(kv(
                    semconv::SHUTDOWN_WORKERS,
                    Value::Array(Array::String(names.collect())),
                ));
            }
            // `RestartCancelled`, `StallCleared`, and kinds added later: the kind says it all.
            _ => {}
        }
        let at = event.at.as_system_time();
        let parent = match inner.operation(&event.runtime) {
            Some(cx) => {
                cx.span()
                    .add_event_with_timestamp(semconv::SUPERVISION_EVENT, at, attrs.clone());
                cx
            }
            None => Context::new(),
        };
        let mut span = inner.tracer.build_with_context(
            SpanBuilder::from_name(semconv::supervision_span_name(kind))
                .with_kind(SpanKind::Internal)
                .with_start_time(at)
                .with_attributes(attrs),
            &parent,
        );
        if let Some(status) = status {
            span.set_status(status);
        }
        span.end_with_timestamp(at);
    }

    fn on_operation(&self, event: &OperationEvent) {
        let inner = &*self.inner;
        let operation = event.operation.as_str();
        match &event.phase {
            OperationPhase::Started => {
                let mut attrs = base(&event.runtime, event.worker.as_ref(), 1);
                attrs.push(kv(semconv::OPERATION, operation));
                let span = inner.tracer.build_with_context(
                    SpanBuilder::from_name(semconv::operation_span_name(operation))
                        .with_kind(SpanKind::Internal)
                        .with_start_time(event.at.as_system_time())
                        .with_attributes(attrs),
                    &Context::new(),
                );
                let cx = Context::new().with_span(span);
                let mut open = inner
                    .operations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // A stale entry (an end never seen) is ended rather than leaked.
                if let Some(i) = open.iter().position(|op| op.runtime == event.runtime) {
                    open.swap_remove(i).cx.span().end();
                }
                open.push(OpenOperation {
                    runtime: Arc::clone(&event.runtime),
                    cx,
                });
            }
            phase => {
                let failure = match phase {
                    OperationPhase::Failed(failure) => Some(failure),
                    _ => None,
                };
                let mut attrs = base(&event.runtime, event.worker.as_ref(), 3);
                attrs.push(kv(semconv::OPERATION, operation));
                attrs.push(kv(semconv::OPERATION_SUCCESS, failure.is_none()));
                if let Some(failure) = failure {
                    attrs.push(kv(semconv::FAILURE_CODE, failure_code(failure)));
                }
                inner
                    .instruments
                    .operation_duration
                    .record(event.elapsed.as_secs_f64(), &attrs);
                let open = {
                    let mut open = inner
                        .operations
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    open.iter()
                        .position(|op| op.runtime == event.runtime)
                        .map(|i| open.swap_remove(i))
                };
                if let Some(open) = open {
                    let span = open.cx.span();
                    span.set_attributes(attrs);
                    span.set_status(match failure {
                        None => Status::Ok,
                        Some(failure) => Status::error(failure_message(failure)),
                    });
                    span.end_with_timestamp(event.at.as_system_time());
                }
            }
        }
    }

    fn on_check_end(&self, event: &CheckEndEvent) {
        let inner = &*self.inner;
        let mut attrs = base(&event.runtime, Some(&event.worker), 3);
        attrs.push(kv(semconv::CHECK_KIND, semconv::CHECK_KIND_READINESS));
        attrs.push(kv(semconv::CHECK_OUTCOME, event.outcome.as_str()));
        attrs.push(kv(semconv::CHECK_LOOP_CONTINUES, event.loop_continues));
        inner.instruments.check_executions.add(1, &attrs);
        inner
            .instruments
            .check_duration
            .record(event.duration.as_secs_f64(), &attrs);
        // Built at its end, with its start time: the span has no children to parent.
        let mut span = inner.tracer.build_with_context(
            SpanBuilder::from_name(semconv::CHECK_SPAN)
                .with_kind(SpanKind::Internal)
                .with_start_time(event.started_at.as_system_time())
                .with_attributes(attrs),
            &Context::new(),
        );
        match event.outcome {
            CheckOutcome::Ready => span.set_status(Status::Ok),
            CheckOutcome::Canceled => {}
            outcome => span.set_status(Status::error(format!(
                "check execution outcome: {}",
                outcome.as_str()
            ))),
        }
        span.end_with_timestamp(event.ended_at.as_system_time());
    }

    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        let inner = &self.inner;
        let in_flight = inner
            .in_flight
            .count(&event.runtime, &event.worker, &event.command);
        // Room for the attributes added at the end, so the span's list is never reallocated.
        let mut attrs = Vec::with_capacity(8);
        attrs.extend_from_slice(&in_flight.attrs);
        attrs.push(kv(
            semconv::COMMAND_DISPATCH_ID,
            id_value(event.dispatch_id),
        ));
        let parent = inner.command_parent(&event.metadata);
        let span = inner.tracer.build_with_context(
            SpanBuilder::from_name(semconv::command_span_name(&event.command))
                .with_kind(SpanKind::Internal)
                .with_start_time(event.started_at.as_system_time())
                .with_attributes(attrs),
            &parent,
        );
        let cx = parent.with_span(span);
        Some(Box::new(CommandSpan {
            inner: Arc::clone(inner),
            cx,
            id: event.dispatch_id,
            running: AtomicBool::new(false),
            in_flight,
        }))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flush())
    }
}

/// The observation of one dispatch: its span's context and the in-flight bookkeeping.
struct CommandSpan {
    inner: Arc<Inner>,
    cx: Context,
    id: DispatchId,
    /// Whether the handler has been polled (then the dispatch counts as in flight).
    running: AtomicBool,
    /// The command's in-flight counter and base attributes.
    in_flight: Arc<InFlightCount>,
}

impl CommandObservation for CommandSpan {
    fn in_scope(&self, poll: &mut dyn FnMut()) {
        // The handler is polled only once the dispatch is admitted: its first poll makes it
        // in flight.
        if !self.running.load(Ordering::Relaxed) && !self.running.swap(true, Ordering::Relaxed) {
            self.in_flight.count.fetch_add(1, Ordering::Relaxed);
        }
        let _guard = self.cx.clone().attach();
        poll();
    }

    fn attempt_failed(&self, failure: &AttemptFailure<'_>) {
        // The failure's own span, under this command's span, which also gets a failure event.
        let mut attrs = Vec::with_capacity(7);
        attrs.extend_from_slice(&self.in_flight.attrs);
        attrs.push(kv(semconv::FAILURE_PANIC, failure.panic));
        attrs.push(kv(semconv::FAILURE_CODE, failure_code(failure.failure)));
        attrs.push(kv(semconv::COMMAND_DISPATCH_ID, id_value(self.id)));
        attrs.push(kv(semconv::COMMAND_ATTEMPT, i64::from(failure.attempt)));
        let at = failure.at.as_system_time();
        self.cx
            .span()
            .add_event_with_timestamp(semconv::FAILURE_EVENT, at, attrs.clone());
        let mut span = self.inner.tracer.build_with_context(
            SpanBuilder::from_name(semconv::FAILURE_SPAN)
                .with_kind(SpanKind::Internal)
                .with_start_time(at)
                .with_attributes(attrs),
            &self.cx,
        );
        span.set_status(Status::error(failure_message(failure.failure)));
        span.end_with_timestamp(at);
    }

    fn end(self: Box<Self>, event: &CommandEndEvent) {
        let inner = &*self.inner;
        let instruments = &inner.instruments;
        if self.running.load(Ordering::Relaxed) {
            self.in_flight.count.fetch_sub(1, Ordering::Relaxed);
        }
        let success = event.outcome == CommandOutcome::Succeeded;
        // The metric attributes on the stack: base, success, and the failure code if any.
        let [runtime, worker, command] = &self.in_flight.attrs;
        let code = event
            .failure
            .as_ref()
            .map(|failure| kv(semconv::FAILURE_CODE, failure_code(failure)));
        let with_code;
        let without_code;
        let attrs: &[KeyValue] = match &code {
            Some(code) => {
                with_code = [
                    runtime.clone(),
                    worker.clone(),
                    command.clone(),
                    kv(semconv::COMMAND_SUCCESS, success),
                    code.clone(),
                ];
                &with_code
            }
            None => {
                without_code = [
                    runtime.clone(),
                    worker.clone(),
                    command.clone(),
                    kv(semconv::COMMAND_SUCCESS, success),
                ];
                &without_code
            }
        };
        instruments.command_dispatches.add(1, attrs);
        instruments
            .command_duration
            .record(event.duration.as_secs_f64(), attrs);
        if event.attempts > 0 {
            instruments
                .command_handler_attempts
                .add(u64::from(event.attempts), attrs);
            if event.attempts > 1 {
                instruments
                    .command_retries
                    .add(u64::from(event.attempts - 1), attrs);
            }
        }

        // The span has the base attributes from its start; it gets the others at its end.
        let span_attrs = [
            Some(kv(semconv::COMMAND_SUCCESS, success)),
            code,
            (event.attempts > 0).then(|| kv(semconv::COMMAND_ATTEMPTS, i64::from(event.attempts))),
            Some(kv(semconv::COMMAND_OUTCOME, event.outcome.as_str())),
        ]
        .into_iter()
        .flatten();
        let span = self.cx.span();
        span.set_attributes(span_attrs);
        match &event.failure {
            None if success => span.set_status(Status::Ok),
            None => span.set_status(Status::error(event.outcome.as_str())),
            Some(failure) => {
                let message = failure_message(failure);
                if !message.is_empty() {
                    span.add_event_with_timestamp(
                        semconv::EXCEPTION_EVENT,
                        event.ended_at.as_system_time(),
                        vec![kv(semconv::EXCEPTION_MESSAGE, message.clone())],
                    );
                }
                span.set_status(Status::error(message));
            }
        }
        span.end_with_timestamp(event.ended_at.as_system_time());
    }
}

/// A hasher for addresses and ids (the metrics' in-flight map is keyed by name addresses).
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (self.0.rotate_left(5) ^ value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u128(&mut self, value: u128) {
        #[allow(clippy::cast_possible_truncation)] // Folding the halves is the point.
        let folded = (value as u64) ^ ((value >> 64) as u64);
        self.0 = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
