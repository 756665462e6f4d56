//! Lifecycle: transitions, readiness changes, lifecycle operations, worker failures and readiness
//! check executions, through a real `Runtime`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{EventRecord, quiet_expected_panics, record};
use tracing::Level;
use workerkit_core::failure::with_failure;
use workerkit_core::test_util::{FakeWorker, Recorded, RecordingObserver, Step};
use workerkit_core::{ReadinessCheck, Runtime, WorkerSpec, worker_fn};
use workerkit_tracing::message::{
    CHECK_COMPLETED, FAILURE, OPERATION_COMPLETED, OPERATION_STARTED, READINESS, TRANSITION,
};
use workerkit_tracing::{TARGET, TracingObserver};

fn runtime() -> Runtime {
    Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .build()
        .expect("valid runtime")
}

/// `worker from->to` for transitions, `worker ready` for readiness (`rt` for the runtime).
fn brief(event: &EventRecord) -> String {
    let who = event.field("worker").unwrap_or("rt");
    match event.message() {
        TRANSITION => format!(
            "{who} {}->{}",
            event.field("lifecycle_from").unwrap(),
            event.field("lifecycle_to").unwrap()
        ),
        READINESS => format!("{who} ready={}", event.field("ready").unwrap()),
        other => format!("{who} {other}"),
    }
}

fn briefs(events: &[EventRecord]) -> Vec<String> {
    events.iter().map(brief).collect()
}

#[tokio::test(start_paused = true)]
async fn start_and_shutdown_log_transitions_readiness_and_operations_at_the_routine_level() {
    let (recording, _guard) = record();
    let rt = runtime();
    rt.register(WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })))
        .expect("valid registration");
    rt.start_all().await.expect("start");
    rt.shutdown().await.expect("shutdown");

    let events = recording.events();
    for event in &events {
        assert_eq!(event.target, TARGET, "{event:?}");
        assert_eq!(event.level, Level::INFO, "{event:?}");
        assert_eq!(event.field("runtime"), Some("rt"), "{event:?}");
    }
    let transitions = recording.with_message(TRANSITION);
    assert_eq!(
        briefs(&transitions),
        [
            "rt/w registered->starting",
            "rt registered->starting",
            "rt/w starting->running",
            "rt starting->running",
            "rt/w running->draining",
            "rt running->draining",
            "rt/w draining->stopping",
            "rt draining->stopping",
            "rt/w stopping->stopped",
            "rt stopping->stopped",
        ]
    );
    // Runtime-level events have no `worker` field at all.
    let runtime_level = transitions.iter().find(|e| e.field("worker").is_none());
    assert_eq!(
        runtime_level.unwrap().fields.keys().collect::<Vec<_>>(),
        ["lifecycle_from", "lifecycle_to", "message", "runtime"]
    );
    assert_eq!(
        briefs(&recording.with_message(READINESS)),
        [
            "rt/w ready=true",
            "rt ready=true",
            "rt ready=false",
            "rt/w ready=false"
        ]
    );

    let started: Vec<_> = recording
        .with_message(OPERATION_STARTED)
        .iter()
        .map(|e| e.field("operation").unwrap().to_owned())
        .collect();
    assert_eq!(started, ["start_all", "shutdown"]);
    let completed = recording.with_message(OPERATION_COMPLETED);
    assert_eq!(completed.len(), 2);
    for event in &completed {
        assert_eq!(event.field("success"), Some("true"));
        assert!(event.field("duration").is_some());
        assert!(event.field("failure_code").is_none());
    }
    assert!(recording.with_message(FAILURE).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_readiness_change_through_the_context_is_logged() {
    let (recording, _guard) = record();
    let rt = runtime();
    let (worker, control) = FakeWorker::new();
    rt.register(WorkerSpec::new("w", worker))
        .expect("valid registration");
    rt.start_all().await.expect("start");
    recording.clear();

    control
        .context(0)
        .expect("one incarnation")
        .set_ready(false)
        .expect("running");
    let events = recording.with_message(READINESS);
    assert_eq!(briefs(&events), ["rt/w ready=false", "rt ready=false"]);
    assert_eq!(events[0].level, Level::INFO);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_logs_a_failure_and_a_failed_operation_at_error_without_the_cause() {
    let (recording, _guard) = record();
    let rt = runtime();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async {
            Err(with_failure(
                std::io::Error::other("dsn postgres://admin:hunter2@db"),
                "database_unavailable",
                "database unavailable",
            ))
        }),
    ))
    .expect("valid registration");
    rt.start("w").await.expect_err("the start fails");

    let failure = recording.one(FAILURE);
    assert_eq!(failure.level, Level::ERROR);
    assert_eq!(
        failure.fields.keys().collect::<Vec<_>>(),
        [
            "error",
            "failure_code",
            "message",
            "panic",
            "runtime",
            "worker"
        ],
        "no command fields on a worker failure"
    );
    assert_eq!(failure.field("worker"), Some("rt/w"));
    assert_eq!(failure.field("panic"), Some("false"));
    assert_eq!(failure.field("failure_code"), Some("database_unavailable"));
    assert_eq!(failure.field("error"), Some("database unavailable"));

    let operation = recording.one(OPERATION_COMPLETED);
    assert_eq!(
        operation.level,
        Level::ERROR,
        "a failed operation is at ERROR"
    );
    assert_eq!(operation.field("operation"), Some("start"));
    assert_eq!(operation.field("worker"), Some("rt/w"));
    assert_eq!(operation.field("success"), Some("false"));
    assert!(operation.field("failure_code").is_some());
    assert!(operation.field("error").is_some());
    assert!(!recording.all_text().contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_start_is_a_failure_with_panic_true() {
    quiet_expected_panics();
    let (recording, _guard) = record();
    let rt = runtime();
    let (worker, control) = FakeWorker::new();
    control.on_start(Step::Panic("expected panic in start".into()));
    rt.register(WorkerSpec::new("w", worker))
        .expect("valid registration");
    let _ = rt.start("w").await;

    let failure = recording.one(FAILURE);
    assert_eq!(failure.level, Level::ERROR);
    assert_eq!(failure.field("panic"), Some("true"));
    assert_eq!(failure.field("failure_code"), Some("panic"));
    assert!(!recording.all_text().contains("expected panic in start"));
}

#[tokio::test(start_paused = true)]
async fn each_check_execution_is_logged_with_its_kind_outcome_and_duration() {
    let (recording, _guard) = record();
    let seen = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .with_observer(seen.clone())
        .build()
        .expect("valid runtime");
    let ready = Arc::new(AtomicBool::new(true));
    let answer = Arc::clone(&ready);
    let check = ReadinessCheck::new(move |_ctx| {
        let ready = answer.load(Ordering::SeqCst);
        async move { Ok(ready) }
    })
    .interval(Duration::from_secs(1));
    rt.register(WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).readiness_check(check))
        .expect("valid registration");
    rt.start_all().await.expect("start");
    let check_ends = |events: &[Recorded]| {
        events
            .iter()
            .filter(|e| matches!(e, Recorded::CheckEnd(_)))
            .count()
    };
    seen.wait_until(|events| check_ends(events) >= 1).await;
    ready.store(false, Ordering::SeqCst);
    seen.wait_until(|events| check_ends(events) >= 2).await;
    rt.shutdown().await.expect("shutdown");

    let checks = recording.with_message(CHECK_COMPLETED);
    assert!(checks.len() >= 2, "{checks:#?}");
    for (event, outcome) in checks.iter().zip(["ready", "not_ready"]) {
        assert_eq!(event.level, Level::INFO);
        assert_eq!(event.target, TARGET);
        assert_eq!(event.field("runtime"), Some("rt"));
        assert_eq!(event.field("worker"), Some("rt/w"));
        assert_eq!(event.field("check_kind"), Some("checker"));
        assert_eq!(event.field("check_outcome"), Some(outcome));
        assert_eq!(event.field("loop_continues"), Some("true"));
        assert!(event.field("duration").is_some());
    }
}
