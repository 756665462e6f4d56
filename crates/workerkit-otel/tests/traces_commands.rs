//! Command spans: names, attributes, parents (trace context, the caller's span, the handler's
//! spans), status rules, and failure spans, for success, handler error, timeout, panic,
//! rejection and retries.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    Span as _, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, Value};
use support::{
    Telemetry, error_message, is_child_of, is_root, ok_command, span_attr, span_attrs, to_attrs,
    within, worker_with,
};
use workerkit_core::command::DispatchId;
use workerkit_core::failure::with_failure;
use workerkit_core::retry::{Backoff, RetryPolicy};
use workerkit_core::{CommandRequest, CommandResponse, CommandSpec, handler_fn};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn req() -> CommandRequest {
    CommandRequest::new("w", "c")
}

#[tokio::test(start_paused = true)]
async fn a_successful_dispatch_is_one_command_span_with_status_ok() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    rt.start_all().await.unwrap();
    let id = DispatchId::new();
    rt.dispatch(req().with_id(id)).await.unwrap();

    let span = t.span("workerkit.command c");
    assert_eq!(span.status, Status::Ok);
    assert!(is_root(&span), "no traceparent and no current span: a root");
    assert_eq!(
        span_attrs(&span),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.command", "c"),
            ("workerkit.command.dispatch_id", &id.to_string()),
            ("workerkit.command.success", "true"),
            ("workerkit.command.attempts", "1"),
            ("workerkit.command.outcome", "succeeded"),
        ])
    );
    assert!(span.end_time >= span.start_time);
    assert!(t.spans_named("workerkit.failure").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_traceparent_in_the_request_metadata_continues_that_trace() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(
        req()
            .metadata("traceparent", TRACEPARENT)
            .metadata("tracestate", "vendor=opaque"),
    )
    .await
    .unwrap();

    let span = t.span("workerkit.command c");
    assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(span.parent_span_id.to_string(), PARENT_SPAN_ID);
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_context.trace_state().header(), "vendor=opaque");
}

#[tokio::test(start_paused = true)]
async fn metadata_keys_are_matched_case_insensitively() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(req().metadata("Traceparent", TRACEPARENT))
        .await
        .unwrap();
    let span = t.span("workerkit.command c");
    assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_traceparent_is_ignored() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(req().metadata("traceparent", "00-not-a-trace-01"))
        .await
        .unwrap();
    let span = t.span("workerkit.command c");
    assert!(is_root(&span));
    assert_eq!(span.status, Status::Ok);
}

#[tokio::test(start_paused = true)]
async fn spans_the_handler_opens_are_children_of_the_command_span_across_awaits() {
    let t = Telemetry::new();
    let tracer = t.tracer_provider.tracer("handler");
    let handler = handler_fn(move |_ctx| {
        let tracer = tracer.clone();
        async move {
            tracer.start("before await").end();
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            tracer.start("after await").end();
            Ok(CommandResponse::empty())
        }
    });
    let rt = t.runtime();
    rt.register(worker_with(CommandSpec::new("c", handler)))
        .unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(req().metadata("traceparent", TRACEPARENT))
        .await
        .unwrap();

    let command = t.span("workerkit.command c");
    for name in ["before await", "after await"] {
        let child = t.span(name);
        assert!(
            is_child_of(&child, &command),
            "{name:?} must be a child of the command span"
        );
    }
    // Outside the handler's polls the command's context is not current.
    assert!(!Context::current().has_active_span());
}

#[tokio::test(start_paused = true)]
async fn without_a_traceparent_the_command_span_is_a_child_of_the_callers_span() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    rt.start_all().await.unwrap();
    let tracer = t.tracer_provider.tracer("caller");
    let caller = tracer.start("caller");
    let cx = Context::current_with_span(caller);
    rt.dispatch(req()).with_context(cx.clone()).await.unwrap();
    cx.span().end();

    let caller = t.span("caller");
    let command = t.span("workerkit.command c");
    assert!(is_child_of(&command, &caller));
}

/// Spec §11.1 #9: the Go adapter set the status of the span in the caller's context to Error on
/// every failure. The caller's span is not the adapter's: its status stays as the caller left it.
#[tokio::test(start_paused = true)]
async fn a_failing_command_never_changes_the_status_of_the_callers_span() {
    let t = Telemetry::new();
    let handler = handler_fn(|_ctx| async {
        Err(with_failure(
            std::io::Error::other("db password=hunter2"),
            "billing_down",
            "billing is down",
        ))
    });
    let rt = t.runtime();
    rt.register(worker_with(CommandSpec::new("c", handler)))
        .unwrap();
    rt.start_all().await.unwrap();
    let tracer = t.tracer_provider.tracer("caller");
    let cx = Context::current_with_span(tracer.start("caller"));
    let err = rt
        .dispatch(req())
        .with_context(cx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_failed");
    cx.span().end();

    let caller = t.span("caller");
    assert_eq!(
        caller.status,
        Status::Unset,
        "the adapter must not touch the caller's span"
    );
    assert!(caller.events.is_empty(), "nor add events to it");

    let command = t.span("workerkit.command c");
    assert!(is_child_of(&command, &caller));
    assert_eq!(error_message(&command), "billing is down");
    assert_eq!(
        span_attr(&command, "workerkit.command.success"),
        Some(Value::Bool(false))
    );
    assert_eq!(
        span_attr(&command, "workerkit.failure.code"),
        Some(Value::from("billing_down"))
    );
    assert_eq!(
        span_attr(&command, "workerkit.command.outcome"),
        Some(Value::from("failed"))
    );
    let exception = command
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event with the public message");
    assert_eq!(
        exception.attributes[0].value,
        Value::from("billing is down")
    );

    let failure = t.span("workerkit.failure");
    assert!(is_child_of(&failure, &command));
    assert_eq!(error_message(&failure), "billing is down");
    assert_eq!(
        span_attrs(&failure),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.command", "c"),
            ("workerkit.failure.panic", "false"),
            ("workerkit.failure.code", "billing_down"),
            (
                "workerkit.command.dispatch_id",
                &span_attr(&command, "workerkit.command.dispatch_id")
                    .unwrap()
                    .as_str()
            ),
            ("workerkit.command.attempt", "1"),
        ])
    );
    assert!(
        command.events.iter().any(|e| e.name == "workerkit.failure"),
        "the command span records the failed attempt"
    );

    // The private cause appears nowhere.
    let everything = format!("{:?}", t.spans());
    assert!(!everything.contains("hunter2"), "{everything}");
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_command_ends_with_an_error_span_and_a_failure_span() {
    let t = Telemetry::new();
    let handler = handler_fn(|ctx| async move {
        ctx.cancelled().await;
        Err("gave up".into())
    });
    let rt = t.runtime();
    rt.register(worker_with(
        CommandSpec::new("c", handler).timeout(Duration::from_secs(2)),
    ))
    .unwrap();
    rt.start_all().await.unwrap();
    let err = within(rt.dispatch(req())).await.unwrap_err();
    assert_eq!(err.code(), "command_timed_out");

    let command = t.span("workerkit.command c");
    assert!(matches!(command.status, Status::Error { .. }));
    assert_eq!(
        span_attr(&command, "workerkit.command.outcome"),
        Some(Value::from("timed_out"))
    );
    assert_eq!(
        span_attr(&command, "workerkit.failure.code"),
        Some(Value::from("deadline_exceeded"))
    );
    let failure = t.span("workerkit.failure");
    assert!(is_child_of(&failure, &command));
    assert_eq!(
        span_attr(&failure, "workerkit.failure.code"),
        Some(Value::from("deadline_exceeded"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_ends_with_an_error_span_and_a_panic_failure_span() {
    let t = Telemetry::new();
    let handler = handler_fn(|_ctx| async {
        if true {
            panic!("boom: secret=42");
        }
        Ok(CommandResponse::empty())
    });
    let rt = t.runtime();
    rt.register(worker_with(CommandSpec::new("c", handler)))
        .unwrap();
    rt.start_all().await.unwrap();
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(err.code(), "command_panicked");

    let command = t.span("workerkit.command c");
    assert!(matches!(command.status, Status::Error { .. }));
    assert_eq!(
        span_attr(&command, "workerkit.command.outcome"),
        Some(Value::from("panicked"))
    );
    let failure = t
        .spans_named("workerkit.failure")
        .into_iter()
        .find(|s| span_attr(s, "workerkit.command").is_some())
        .expect("the command's failure span");
    assert!(is_child_of(&failure, &command));
    assert_eq!(
        span_attr(&failure, "workerkit.failure.panic"),
        Some(Value::Bool(true))
    );
    assert!(matches!(failure.status, Status::Error { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_dispatch_has_an_error_span_without_attempts_or_failure_span() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(ok_command("c"))).unwrap();
    // Not started: the worker does not accept commands.
    let err = rt.dispatch(req()).await.unwrap_err();

    let command = t.span("workerkit.command c");
    assert!(matches!(command.status, Status::Error { .. }));
    assert_eq!(
        span_attr(&command, "workerkit.command.outcome"),
        Some(Value::from("rejected"))
    );
    assert_eq!(
        span_attr(&command, "workerkit.failure.code"),
        Some(Value::from(err.code().to_owned()))
    );
    assert_eq!(span_attr(&command, "workerkit.command.attempts"), None);
    assert!(t.spans_named("workerkit.failure").is_empty());
}

#[tokio::test(start_paused = true)]
async fn each_failed_attempt_gets_a_failure_span_under_the_command_span() {
    let t = Telemetry::new();
    let calls = Arc::new(AtomicU32::new(0));
    let handler = handler_fn(move |_ctx| {
        let calls = Arc::clone(&calls);
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err("flaky".into())
            } else {
                Ok(CommandResponse::empty())
            }
        }
    });
    let rt = t.runtime();
    rt.register(worker_with(
        CommandSpec::new("c", handler).retry(
            RetryPolicy::attempts(3)
                .unwrap()
                .backoff(Backoff::constant(Duration::from_secs(1))),
        ),
    ))
    .unwrap();
    rt.start_all().await.unwrap();
    within(rt.dispatch(req())).await.unwrap();

    let command = t.span("workerkit.command c");
    assert_eq!(command.status, Status::Ok);
    assert_eq!(
        span_attr(&command, "workerkit.command.attempts"),
        Some(Value::I64(3))
    );
    let mut attempts: Vec<i64> = t
        .spans_named("workerkit.failure")
        .iter()
        .map(|failure| {
            assert!(is_child_of(failure, &command));
            match span_attr(failure, "workerkit.command.attempt") {
                Some(Value::I64(n)) => n,
                other => panic!("attempt attribute: {other:?}"),
            }
        })
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(
        command
            .events
            .iter()
            .filter(|e| e.name == "workerkit.failure")
            .count(),
        2
    );
}
