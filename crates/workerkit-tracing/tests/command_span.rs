//! Commands: the `workerkit.command` span (fields, parent, the handler's spans nested in it) and
//! the end and failure events, for success, handler error, timeout, panic and admission
//! rejection, through a real `Runtime`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{EventRecord, Recording, SpanRecord, quiet_expected_panics, record, record_filtered};
use tracing::{Instrument, Level};
use workerkit_core::command::{CommandHandler, CommandResult, DispatchError};
use workerkit_core::failure::with_failure;
use workerkit_core::retry::RetryPolicy;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};
use workerkit_tracing::message::{COMMAND_COMPLETED, FAILURE, FAILURE_CAUSE};
use workerkit_tracing::{COMMAND_SPAN, TARGET, TracingObserver};

/// Private text of the handler errors: must never appear in any recorded field.
const SECRET: &str = "postgres://admin:hunter2@db";

/// A started runtime `rt` with the default observer and worker `w` owning `spec`.
async fn started(spec: CommandSpec) -> Runtime {
    let rt = Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .build()
        .expect("valid runtime");
    rt.register(WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).command(spec))
        .expect("valid registration");
    rt.start_all().await.expect("workers start");
    rt
}

/// Dispatches `w`/`c` inside a `caller` span; returns the result and the caller span's uid.
async fn dispatch_in_caller_span(
    rt: &Runtime,
    recording: &Recording,
) -> (Result<CommandResult, DispatchError>, u64) {
    recording.clear();
    let caller = tracing::info_span!("caller");
    let result = rt
        .dispatch(CommandRequest::new("w", "c"))
        .instrument(caller)
        .await;
    let caller_uid = recording.span("caller").uid;
    (result, caller_uid)
}

fn keys(event: &EventRecord) -> BTreeSet<&str> {
    event.fields.keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Checks the command span's identity fields and returns it.
fn command_span(recording: &Recording, caller: u64) -> SpanRecord {
    let span = recording.span(COMMAND_SPAN);
    assert_eq!(span.target, TARGET);
    assert_eq!(span.level, Level::INFO);
    assert_eq!(span.parent, Some(caller), "the caller's span is the parent");
    assert_eq!(span.fields["runtime"], "rt");
    assert_eq!(span.fields["worker"], "rt/w");
    assert_eq!(span.fields["command"], "c");
    assert!(span.closed, "the span closes when the dispatch ends");
    span
}

/// Checks the end event's common fields and that it is inside `span`; returns it.
fn end_event(recording: &Recording, span: &SpanRecord) -> EventRecord {
    let end = recording.one(COMMAND_COMPLETED);
    assert_eq!(end.target, TARGET);
    assert_eq!(end.level, Level::INFO, "command ends are routine events");
    assert_eq!(end.parent(), Some(span.uid), "the end event is in the span");
    assert_eq!(end.field("runtime"), Some("rt"));
    assert_eq!(end.field("worker"), Some("rt/w"));
    assert_eq!(end.field("command"), Some("c"));
    assert_eq!(
        end.field("dispatch_id"),
        Some(span.fields["dispatch_id"].as_str())
    );
    assert!(end.field("duration").is_some());
    end
}

fn failing_handler() -> impl CommandHandler {
    handler_fn(|_ctx| async {
        Err(with_failure(
            std::io::Error::other(SECRET),
            "upstream_down",
            "upstream down",
        ))
    })
}

#[tokio::test(start_paused = true)]
async fn success_is_a_span_under_the_caller_with_the_handlers_spans_and_the_end_inside() {
    let (recording, _guard) = record();
    let handler = handler_fn(|_ctx| async {
        tracing::info!("first poll");
        tokio::task::yield_now().await;
        tracing::info!("second poll");
        async { tracing::info!("in the handler's span") }
            .instrument(tracing::info_span!("handler_work"))
            .await;
        Ok(CommandResponse::message("ok"))
    });
    let rt = started(CommandSpec::new("c", handler)).await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    let result = result.expect("the command succeeds");

    let span = command_span(&recording, caller);
    assert_eq!(span.fields["dispatch_id"], result.id.to_string());
    assert_eq!(span.fields["attempts"], "1");
    assert_eq!(span.fields["outcome"], "succeeded");

    // Every poll of the handler is inside the command span, and its own span nests under it.
    for message in ["first poll", "second poll"] {
        assert_eq!(
            recording.one(message).scope,
            vec![caller, span.uid],
            "{message}"
        );
    }
    let work = recording.span("handler_work");
    assert_eq!(work.parent, Some(span.uid));
    assert_eq!(
        recording.one("in the handler's span").scope,
        vec![caller, span.uid, work.uid]
    );

    let end = end_event(&recording, &span);
    assert_eq!(
        keys(&end),
        set(&[
            "message",
            "runtime",
            "worker",
            "command",
            "success",
            "outcome",
            "duration",
            "dispatch_id",
            "attempts"
        ]),
        "no failure fields on success"
    );
    assert_eq!(end.field("success"), Some("true"));
    assert_eq!(end.field("outcome"), Some("succeeded"));
    assert_eq!(end.field("attempts"), Some("1"));
    assert!(recording.with_message(FAILURE).is_empty());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_handler_error_logs_a_failure_at_error_and_a_failed_end_with_public_fields_only() {
    let (recording, _guard) = record();
    let rt = started(CommandSpec::new("c", failing_handler())).await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    assert!(result.is_err());

    let span = command_span(&recording, caller);
    assert_eq!(span.fields["attempts"], "1");
    assert_eq!(span.fields["outcome"], "failed");

    let failure = recording.one(FAILURE);
    assert_eq!(failure.level, Level::ERROR);
    assert_eq!(failure.target, TARGET);
    assert_eq!(
        failure.scope,
        vec![caller, span.uid],
        "the failed attempt is logged inside the command span"
    );
    assert_eq!(
        keys(&failure),
        set(&[
            "message",
            "runtime",
            "worker",
            "command",
            "panic",
            "dispatch_id",
            "attempt",
            "failure_code",
            "error"
        ])
    );
    assert_eq!(failure.field("worker"), Some("rt/w"));
    assert_eq!(failure.field("command"), Some("c"));
    assert_eq!(failure.field("panic"), Some("false"));
    assert_eq!(
        failure.field("dispatch_id"),
        Some(span.fields["dispatch_id"].as_str())
    );
    assert_eq!(failure.field("attempt"), Some("1"));
    assert_eq!(failure.field("failure_code"), Some("upstream_down"));
    assert_eq!(failure.field("error"), Some("upstream down"));

    let end = end_event(&recording, &span);
    assert_eq!(end.field("success"), Some("false"));
    assert_eq!(end.field("outcome"), Some("failed"));
    assert_eq!(end.field("attempts"), Some("1"));
    assert_eq!(end.field("failure_code"), Some("upstream_down"));
    assert_eq!(end.field("error"), Some("upstream down"));

    assert!(
        !recording.all_text().contains("hunter2"),
        "the private cause is never recorded: {}",
        recording.all_text()
    );
    assert!(recording.with_message(FAILURE_CAUSE).is_empty());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_ends_as_timed_out_with_deadline_exceeded() {
    let (recording, _guard) = record();
    let handler = handler_fn(|ctx| async move {
        ctx.cancelled().await;
        Err(SECRET.into())
    });
    let spec = CommandSpec::new("c", handler).timeout(Duration::from_secs(1));
    let rt = started(spec).await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    let error = result.expect_err("the command times out");

    let span = command_span(&recording, caller);
    assert_eq!(span.fields["outcome"], "timed_out");
    assert_eq!(span.fields["attempts"], "1");
    let failure = recording.one(FAILURE);
    assert_eq!(failure.level, Level::ERROR);
    assert_eq!(failure.field("failure_code"), Some("deadline_exceeded"));
    assert_eq!(failure.field("panic"), Some("false"));
    let end = end_event(&recording, &span);
    assert_eq!(end.field("success"), Some("false"));
    assert_eq!(end.field("outcome"), Some("timed_out"));
    assert_eq!(end.field("failure_code"), Some("deadline_exceeded"));
    assert_eq!(error.code(), "command_timed_out");
    assert!(!recording.all_text().contains("hunter2"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_panic_ends_as_panicked_with_a_panic_failure() {
    quiet_expected_panics();
    let (recording, _guard) = record();
    let handler = handler_fn(|_ctx| async {
        if true {
            panic!("expected panic: {SECRET}");
        }
        Ok(CommandResponse::empty())
    });
    let rt = started(CommandSpec::new("c", handler)).await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    assert!(result.is_err());

    let span = command_span(&recording, caller);
    assert_eq!(span.fields["outcome"], "panicked");
    let failure = recording.one(FAILURE);
    assert_eq!(failure.level, Level::ERROR);
    assert_eq!(failure.field("panic"), Some("true"));
    assert_eq!(failure.field("failure_code"), Some("panic"));
    let end = end_event(&recording, &span);
    assert_eq!(end.field("outcome"), Some("panicked"));
    assert_eq!(end.field("success"), Some("false"));
    assert_eq!(end.field("failure_code"), Some("panic"));
    assert!(!recording.all_text().contains("hunter2"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn an_admission_rejection_ends_with_zero_attempts_and_no_failure_event() {
    let (recording, _guard) = record();
    let rt = Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .build()
        .expect("valid runtime");
    let spec = CommandSpec::new(
        "c",
        handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
    );
    rt.register(WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).command(spec))
        .expect("valid registration");

    // Not started: the worker does not accept work.
    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    let error = result.expect_err("rejected");

    let span = command_span(&recording, caller);
    assert_eq!(span.fields["attempts"], "0");
    assert_eq!(span.fields["outcome"], "rejected");
    let end = end_event(&recording, &span);
    assert_eq!(
        keys(&end),
        set(&[
            "message",
            "runtime",
            "worker",
            "command",
            "success",
            "outcome",
            "duration",
            "dispatch_id",
            "failure_code",
            "error"
        ]),
        "no `attempts` field when no attempt ran"
    );
    assert_eq!(end.field("success"), Some("false"));
    assert_eq!(end.field("outcome"), Some("rejected"));
    assert_eq!(end.field("failure_code"), Some(error.code()));
    assert!(recording.with_message(FAILURE).is_empty());
}

#[tokio::test(start_paused = true)]
async fn dispatches_to_unknown_commands_open_no_span() {
    let (recording, _guard) = record();
    let rt = started(CommandSpec::new("c", failing_handler())).await;
    recording.clear();
    let error = rt
        .dispatch(CommandRequest::new("w", "nope"))
        .await
        .expect_err("unknown command");
    assert_eq!(error.code(), "command_not_found");
    assert!(recording.spans_named(COMMAND_SPAN).is_empty());
    assert!(recording.with_message(COMMAND_COMPLETED).is_empty());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn with_the_command_span_filtered_out_the_end_event_stays_in_the_callers_span() {
    let (recording, _guard) = record_filtered(tracing_subscriber::filter::filter_fn(|meta| {
        meta.name() != COMMAND_SPAN
    }));
    let rt = started(CommandSpec::new(
        "c",
        handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
    ))
    .await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    result.expect("the command succeeds");
    assert!(recording.spans_named(COMMAND_SPAN).is_empty());
    let end = recording.one(COMMAND_COMPLETED);
    assert_eq!(end.scope, vec![caller]);
    assert_eq!(end.field("attempts"), Some("1"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn each_failed_attempt_is_logged_once_inside_the_command_span_before_the_end() {
    let (recording, _guard) = record();
    let rt = Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .build()
        .expect("valid runtime");
    rt.register(
        WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) }))
            .command_retry(RetryPolicy::attempts(3).expect("valid retry policy"))
            .command(CommandSpec::new("c", failing_handler())),
    )
    .expect("valid registration");
    rt.start_all().await.expect("start");

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    assert!(result.is_err());
    let span = command_span(&recording, caller);
    assert_eq!(span.fields["attempts"], "3");

    let failures = recording.with_message(FAILURE);
    let attempts: Vec<_> = failures.iter().map(|f| f.field("attempt")).collect();
    assert_eq!(
        attempts,
        [Some("1"), Some("2"), Some("3")],
        "once per attempt"
    );
    for failure in &failures {
        assert_eq!(failure.scope, vec![caller, span.uid]);
        assert_eq!(failure.level, Level::ERROR);
        assert_eq!(
            failure.field("dispatch_id"),
            Some(span.fields["dispatch_id"].as_str())
        );
        assert_eq!(failure.field("failure_code"), Some("upstream_down"));
    }
    let messages: Vec<String> = recording
        .events()
        .iter()
        .map(|e| e.message().to_owned())
        .collect();
    assert_eq!(messages.last().map(String::as_str), Some(COMMAND_COMPLETED));
    assert!(!recording.all_text().contains("hunter2"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn with_the_command_span_filtered_out_a_failure_stays_in_the_callers_span() {
    let (recording, _guard) = record_filtered(tracing_subscriber::filter::filter_fn(|meta| {
        meta.name() != COMMAND_SPAN
    }));
    let rt = started(CommandSpec::new("c", failing_handler())).await;

    let (result, caller) = dispatch_in_caller_span(&rt, &recording).await;
    assert!(result.is_err());
    assert!(recording.spans_named(COMMAND_SPAN).is_empty());
    let failure = recording.one(FAILURE);
    assert_eq!(failure.scope, vec![caller]);
    assert_eq!(failure.field("attempt"), Some("1"));
    rt.shutdown().await.expect("shutdown");
}
