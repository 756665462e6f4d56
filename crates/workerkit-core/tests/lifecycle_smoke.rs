//! Smoke tests of the main lifecycle paths.

use std::time::Duration;

use workerkit_core::test_util::{FakeWorker, RecordingObserver, Step};
use workerkit_core::{
    ExitReason, LifecycleError, LifecycleState, LoopWorker, Runtime, WorkerSpec, worker_fn,
};

fn runtime_with(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn start_one_worker_emits_the_go_event_sequence() {
    let recorder = RecordingObserver::new();
    let rt = runtime_with(&recorder);
    let (worker, _control) = FakeWorker::new();
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Running);
    assert_eq!(
        recorder.briefs(),
        [
            "T rt/w registered->starting",
            "T rt registered->starting",
            "T rt/w starting->running",
            "R rt/w true",
            "T rt starting->running",
            "R rt true",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_then_stops_in_reverse_order() {
    let recorder = RecordingObserver::new();
    let rt = runtime_with(&recorder);
    for name in ["a", "b"] {
        rt.register(WorkerSpec::new(name, FakeWorker::new().0))
            .unwrap();
    }
    rt.start_all().await.unwrap();
    recorder.clear();
    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.stopped_names(), ["rt/b", "rt/a"]);
    assert_eq!(
        recorder.briefs(),
        [
            "R rt false",
            "T rt/a running->draining",
            "R rt/a false",
            "T rt running->draining",
            "T rt/b running->draining",
            "R rt/b false",
            "T rt/b draining->stopping",
            "T rt/b stopping->stopped",
            "T rt/a draining->stopping",
            "T rt draining->stopping",
            "T rt/a stopping->stopped",
            "T rt stopping->stopped",
        ]
    );
    assert!(matches!(
        rt.start("a").await,
        Err(LifecycleError::ShutDown { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn start_failure_is_reported_once_and_kept_private() {
    let recorder = RecordingObserver::new();
    let rt = runtime_with(&recorder);
    let (worker, control) = FakeWorker::new();
    control.on_start(Step::Fail("password=hunter2".into()));
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "start_failed");
    assert!(!err.to_string().contains("hunter2"));
    let snap = rt.worker("w").unwrap();
    assert_eq!(snap.status.state, LifecycleState::Failed);
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    assert_eq!(recorder.failures().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn loop_panic_is_caught_and_reported_as_a_panic() {
    let recorder = RecordingObserver::new();
    let rt = runtime_with(&recorder);
    rt.register(WorkerSpec::new(
        "loop",
        LoopWorker::new(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("boom");
        }),
    ))
    .unwrap();
    rt.start("loop").await.unwrap();
    let exit = rt.wait_exit("loop").await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert_eq!(
        rt.worker("loop").unwrap().status.state,
        LifecycleState::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn start_timeout_fails_with_start_timed_out() {
    let rt = Runtime::builder("rt").build().unwrap();
    let (worker, control) = FakeWorker::new();
    control.on_start(Step::Hang);
    rt.register(WorkerSpec::new("w", worker).start_timeout(Duration::from_secs(2)))
        .unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "start_timed_out");
    let exit = rt.wait_exit("w").await.unwrap();
    assert_eq!(exit.reason, ExitReason::StartTimedOut);
}

#[tokio::test(start_paused = true)]
async fn lifecycle_call_from_inside_start_is_refused_not_deadlocked() {
    let rt = Runtime::builder("rt").build().unwrap();
    let inner = rt.clone();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(move |_ctx| {
            let inner = inner.clone();
            async move {
                match inner.stop("w").await {
                    Err(LifecycleError::Reentrant { .. }) => Ok(()),
                    other => Err(format!("unexpected: {other:?}").into()),
                }
            }
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stale_context_cannot_touch_the_next_incarnation() {
    let rt = Runtime::builder("rt").build().unwrap();
    let (worker, control) = FakeWorker::new();
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    let old = control.context(0).unwrap();
    let err = old.set_ready(false).unwrap_err();
    assert_eq!(err.code(), "stale_context");
    assert!(rt.worker("w").unwrap().status.ready);
}
