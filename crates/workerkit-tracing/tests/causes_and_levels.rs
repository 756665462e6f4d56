//! Configuration: private causes (absent by default, at DEBUG with the opt-in, and only when
//! DEBUG is enabled), the routine level, and what a level filter lets through.

mod support;

use support::{Recording, record, record_at};
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use workerkit_core::failure::with_failure;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};
use workerkit_tracing::message::{
    COMMAND_COMPLETED, FAILURE, FAILURE_CAUSE, OPERATION_COMPLETED, TRANSITION,
};
use workerkit_tracing::{COMMAND_SPAN, TracingObserver};

/// The private text of every cause here.
const SECRET: &str = "token=hunter2";

/// A started runtime with `observer`, worker `w` owning `ok` (succeeds) and `bad` (fails with
/// public code `upstream_down` and a private cause `outer: token=hunter2`).
async fn started(observer: TracingObserver) -> Runtime {
    let rt = Runtime::builder("rt")
        .with_observer(observer)
        .build()
        .expect("valid runtime");
    let cause = || {
        let inner = std::io::Error::other(SECRET);
        std::io::Error::other(Chained("outer", inner))
    };
    let spec = WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) }))
        .command(CommandSpec::new(
            "ok",
            handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
        ))
        .command(CommandSpec::new(
            "bad",
            handler_fn(move |_ctx| {
                let error = with_failure(cause(), "upstream_down", "upstream down");
                async move { Err(error) }
            }),
        ));
    rt.register(spec).expect("valid registration");
    rt.start_all().await.expect("start");
    rt
}

/// An error with a message and a source, to see the whole chain in the cause field.
#[derive(Debug)]
struct Chained(&'static str, std::io::Error);

impl std::fmt::Display for Chained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Chained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

async fn dispatch_both(rt: &Runtime, recording: &Recording) {
    recording.clear();
    rt.dispatch(CommandRequest::new("w", "ok"))
        .await
        .expect("ok succeeds");
    rt.dispatch(CommandRequest::new("w", "bad"))
        .await
        .expect_err("bad fails");
}

#[tokio::test(start_paused = true)]
async fn causes_are_never_logged_by_default_even_with_everything_enabled() {
    let (recording, _guard) = record();
    let rt = started(TracingObserver::new()).await;
    dispatch_both(&rt, &recording).await;

    assert_eq!(recording.with_message(FAILURE).len(), 1);
    assert!(recording.with_message(FAILURE_CAUSE).is_empty());
    assert!(
        !recording.all_text().contains("hunter2"),
        "{}",
        recording.all_text()
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn with_the_opt_in_causes_follow_their_events_at_debug() {
    let (recording, _guard) = record();
    let observer = TracingObserver::builder().log_causes(true).build();
    assert!(observer.logs_causes());
    let rt = started(observer).await;
    dispatch_both(&rt, &recording).await;

    let events = recording.events();
    let causes: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].message() == FAILURE_CAUSE)
        .collect();
    assert_eq!(
        causes.len(),
        2,
        "one after the failure, one after the end: {events:#?}"
    );
    let span = recording
        .spans_named(COMMAND_SPAN)
        .pop()
        .expect("bad's span");
    for &i in &causes {
        let cause = &events[i];
        assert_eq!(cause.level, Level::DEBUG);
        // The whole chain: the `with_failure` wrapper (its public message), then the error's.
        assert_eq!(
            cause.field("cause"),
            Some("upstream down: outer: token=hunter2")
        );
        assert_eq!(cause.field("failure_code"), Some("upstream_down"));
        assert_eq!(cause.field("worker"), Some("rt/w"));
        assert_eq!(cause.field("command"), Some("bad"));
        assert_eq!(
            cause.field("dispatch_id"),
            Some(span.fields["dispatch_id"].as_str())
        );
    }
    // Each cause right after the event it belongs to; the end's inside the command span.
    assert_eq!(events[causes[0] - 1].message(), FAILURE);
    assert_eq!(events[causes[1] - 1].message(), COMMAND_COMPLETED);
    assert_eq!(events[causes[1]].parent(), Some(span.uid));
    // The public fields stay public.
    for event in events.iter().filter(|e| e.message() != FAILURE_CAUSE) {
        assert!(
            !event.fields.values().any(|v| v.contains("hunter2")),
            "{event:?}"
        );
    }
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn the_opt_in_logs_nothing_when_debug_is_filtered_out() {
    let (recording, _guard) = record_at(LevelFilter::INFO);
    let rt = started(TracingObserver::builder().log_causes(true).build()).await;
    dispatch_both(&rt, &recording).await;
    assert_eq!(recording.with_message(FAILURE).len(), 1);
    assert!(recording.with_message(FAILURE_CAUSE).is_empty());
    assert!(!recording.all_text().contains("hunter2"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn the_routine_level_applies_to_routine_events_and_the_span_but_not_to_failures() {
    let (recording, _guard) = record();
    let observer = TracingObserver::builder().level(Level::DEBUG).build();
    assert_eq!(observer.level(), Level::DEBUG);
    let rt = started(observer).await;
    dispatch_both(&rt, &recording).await;
    rt.shutdown().await.expect("shutdown");

    for span in recording.spans_named(COMMAND_SPAN) {
        assert_eq!(span.level, Level::DEBUG);
    }
    for message in [COMMAND_COMPLETED, TRANSITION, OPERATION_COMPLETED] {
        let events = recording.with_message(message);
        assert!(!events.is_empty(), "{message}");
        assert!(events.iter().all(|e| e.level == Level::DEBUG), "{message}");
    }
    assert_eq!(recording.one(FAILURE).level, Level::ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_warn_filter_lets_only_failures_through() {
    let (recording, _guard) = record_at(LevelFilter::WARN);
    let rt = started(TracingObserver::new()).await;
    dispatch_both(&rt, &recording).await;
    rt.shutdown().await.expect("shutdown");

    assert!(recording.spans().is_empty(), "{:#?}", recording.spans());
    let messages: Vec<String> = recording
        .events()
        .iter()
        .map(|e| e.message().to_owned())
        .collect();
    assert_eq!(messages, [FAILURE]);
}

#[test]
fn the_defaults_are_info_and_no_causes() {
    let observer = TracingObserver::default();
    assert_eq!(observer.level(), Level::INFO);
    assert!(!observer.logs_causes());
    let built = TracingObserver::builder().build();
    assert_eq!(built.level(), Level::INFO);
    assert!(!built.logs_causes());
}
