//! Regression tests for the bugs and gaps of the Go original (spec §11) that the Rust runtime
//! fixes: one test per item, named after it.

use std::future::Future;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use workerkit_core::error::{ContextError, ShutdownError};
use workerkit_core::observe::CheckOutcome;
use workerkit_core::test_util::{FakeWorker, Recorded, RecordingObserver, Step};
use workerkit_core::{
    DEFAULT_CHECK_TIMEOUT, ExitReason, FailurePolicy, LifecycleError, LifecycleState, LoopWorker,
    ReadinessCheck, Runtime, ShutdownOptions, WorkerSpec, worker_fn,
};

// ---- helpers -------------------------------------------------------------------------------

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let expected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with("expected panic"));
            if !expected {
                default(info);
            }
        }));
    });
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .expect("timed out waiting for a condition")
}

fn runtime(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap()
}

fn state(rt: &Runtime, worker: &str) -> LifecycleState {
    rt.worker(worker).unwrap().status.state
}

fn idle_loop() -> LoopWorker {
    LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok(())
    })
}

/// Waits until `n` check executions ended with `outcome`.
async fn check_outcomes(recorder: &RecordingObserver, outcome: CheckOutcome, n: usize) {
    within(recorder.wait_until(|events| {
        events
            .iter()
            .filter(|e| matches!(e, Recorded::CheckEnd(end) if end.outcome == outcome))
            .count()
            >= n
    }))
    .await;
}

// ---- §11.1 -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn go_11_1_1_loop_panic_is_caught_not_a_process_crash() {
    // §11.1 #1: a panic in a Go LoopWorker's loop crashed the process whatever the panic policy.
    // Here it is caught, reported as a panic, and fails only its worker.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("steady", idle_loop())).unwrap();
    rt.register(WorkerSpec::new(
        "crashy",
        LoopWorker::new(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("expected panic: loop");
        }),
    ))
    .unwrap();
    rt.start_all().await.unwrap();

    let exit = within(rt.wait_exit("crashy")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert_eq!(failures[0].failure.code(), "panic");
    assert_eq!(state(&rt, "crashy"), LifecycleState::Failed);
    assert_eq!(state(&rt, "steady"), LifecycleState::Running);
    assert!(rt.liveness().live);

    // The runtime carries on: the crashed worker can be stopped and started again.
    rt.stop("crashy").await.unwrap();
    rt.start("crashy").await.unwrap();
    assert_eq!(state(&rt, "crashy"), LifecycleState::Running);
}

#[tokio::test(start_paused = true)]
async fn go_11_1_2_drain_then_ready_check_does_not_fail_the_worker() {
    // §11.1 #2: in Go, the first ready result after a drain failed the worker, and under
    // `fail_runtime` a routine drain took the whole runtime down.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .failure_policy(FailurePolicy::FailRuntime)
            .readiness_check(
                ReadinessCheck::new(|_ctx| async { Ok(true) }).interval(Duration::from_secs(1)),
            ),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    check_outcomes(&recorder, CheckOutcome::Ready, 1).await;
    assert!(rt.status().ready);

    rt.drain("w").await.unwrap();
    check_outcomes(&recorder, CheckOutcome::Ready, 4).await;

    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Draining);
    assert!(!status.ready);
    assert!(status.last_failure.is_none());
    assert!(recorder.failures().is_empty());
    assert_eq!(rt.status().state, LifecycleState::Draining);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn go_11_1_3_aggregate_of_registered_and_stopped_workers_is_stopped() {
    // §11.1 #3: Go kept the previous aggregate state for a mix of registered and stopped
    // workers, so starting and stopping one of two workers left the runtime `stopping` forever.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("a", FakeWorker::new().0))
        .unwrap();
    rt.register(WorkerSpec::new("b", FakeWorker::new().0))
        .unwrap();
    assert_eq!(rt.status().state, LifecycleState::Registered);

    rt.start("a").await.unwrap();
    assert_eq!(rt.status().state, LifecycleState::Running);
    rt.stop("a").await.unwrap();

    let status = rt.status();
    assert_eq!(status.state, LifecycleState::Stopped);
    assert_eq!(status.last_transition.unwrap().to, LifecycleState::Stopped);
    assert_eq!(state(&rt, "b"), LifecycleState::Registered);
    let runtime_transitions: Vec<_> = recorder
        .briefs()
        .into_iter()
        .filter(|b| b.starts_with("T rt "))
        .collect();
    assert_eq!(
        runtime_transitions.last().map(String::as_str),
        Some("T rt stopping->stopped")
    );
}

#[tokio::test(start_paused = true)]
async fn go_11_1_5_shutdown_with_exhausted_budget_still_stops_every_worker() {
    // §11.1 #5: a Go shutdown whose budget ran out left workers `draining` forever, and its
    // error repeated the deadline text. Here the stop phase always gets `stop_grace`: a slow
    // worker that spends the whole budget does not keep the others from stopping, a hung one is
    // cut off and named once, and nothing is left draining.
    let rt = runtime(&RecordingObserver::new());
    let (stuck, stuck_control) = FakeWorker::new();
    stuck_control.on_stop(Step::Hang);
    rt.register(WorkerSpec::new("stuck", stuck)).unwrap();
    rt.register(WorkerSpec::new("fast", FakeWorker::new().0))
        .unwrap();
    rt.register(WorkerSpec::new(
        "slow",
        worker_fn(|_ctx| async { Ok(()) }).on_stop(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }),
    ))
    .unwrap();
    rt.start_all().await.unwrap();

    let began = Instant::now();
    let err = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(1),
            Duration::from_secs(3),
        ))
        .await
        .unwrap_err();
    // Stops run in reverse order: slow (2s, past the 1s budget), fast, then stuck, cut off
    // when the 3s grace ends.
    assert_eq!(began.elapsed(), Duration::from_secs(3));
    let ShutdownError::Incomplete { unfinished, report } = &err else {
        panic!("expected Incomplete, got {err:?}");
    };
    assert_eq!(report.stopped_names(), ["rt/slow", "rt/fast"]);
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].worker, "rt/stuck");
    assert_eq!(unfinished[0].failure.code(), "deadline_exceeded");
    assert_eq!(err.code(), "shutdown_incomplete");

    let text = err.to_string();
    assert_eq!(text.matches("rt/stuck").count(), 1, "{text}");
    assert_eq!(text.matches("deadline").count(), 1, "{text}");
    assert!(
        !text.contains("rt/slow") && !text.contains("rt/fast"),
        "{text}"
    );

    assert_eq!(state(&rt, "slow"), LifecycleState::Stopped);
    assert_eq!(state(&rt, "fast"), LifecycleState::Stopped);
    assert_eq!(state(&rt, "stuck"), LifecycleState::Failed);
    assert!(
        rt.workers()
            .iter()
            .all(|w| w.status.state != LifecycleState::Draining)
    );
}

#[tokio::test(start_paused = true)]
async fn go_11_1_6_check_panic_is_reported_as_a_panic() {
    // §11.1 #6: Go reported a panicking check with code `panic` but `Panic=false`, and ignored
    // the panic policy.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0).readiness_check(ReadinessCheck::new(
            |_ctx| async { panic!("expected panic: check token=hunter2") },
        )),
    )
    .unwrap();
    rt.start("w").await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].panic,
        "a check panic must be reported as a panic"
    );
    assert_eq!(failures[0].failure.code(), "panic");
    assert!(!failures[0].failure.message().contains("hunter2"));
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
}

#[tokio::test(start_paused = true)]
async fn go_11_1_8_stale_context_cannot_mutate_a_later_incarnation() {
    // §11.1 #8: Go's start attempts shared one generation, so work leaked by a failed attempt
    // could change the successful one. Each Rust start attempt is its own incarnation.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let (worker, control) = FakeWorker::new();
    control.on_start(Step::Fail("refused".into()));
    control.on_start(Step::Hang);
    rt.register(WorkerSpec::new("w", worker).start_timeout(Duration::from_secs(1)))
        .unwrap();
    rt.start("w").await.unwrap_err();
    rt.start("w").await.unwrap_err();
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.incarnation, 3);
    assert!(status.ready);
    let failures_before = recorder.failures().len();

    for (n, attempt) in [control.context(0).unwrap(), control.context(1).unwrap()]
        .iter()
        .enumerate()
    {
        assert!(
            attempt.is_stop_requested(),
            "a failed attempt's stop signal fired"
        );
        let stale = |err: ContextError| match err {
            ContextError::Stale {
                incarnation,
                current,
                ..
            } => {
                assert_eq!(incarnation, n as u64 + 1);
                assert_eq!(current, 3);
            }
            other => panic!("expected Stale, got {other:?}"),
        };
        stale(attempt.set_ready(false).unwrap_err());
        stale(attempt.set_accepting_work(false).unwrap_err());
        stale(
            attempt
                .report_failure(std::io::Error::other("late"))
                .unwrap_err(),
        );
    }

    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Running);
    assert!(status.ready);
    assert!(status.accepting_work);
    assert!(status.last_failure.is_none());
    assert_eq!(recorder.failures().len(), failures_before);

    // The current context still works, and becomes stale after a restart too.
    let current = control.context(2).unwrap();
    current.set_ready(false).unwrap();
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    assert_eq!(current.set_ready(true).unwrap_err().code(), "stale_context");
}

// ---- §11.2 -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn go_11_2_13_shutdown_idle_wait_is_by_notification() {
    // §11.2 #13: Go's idle waits polled every 10 ms. With nothing in flight, and a worker whose
    // stop finishes on a notification from another task, a shutdown completes without the
    // paused clock moving at all: no poll interval, no tick, no grace sleep.
    let rt = runtime(&RecordingObserver::new());
    rt.register(WorkerSpec::new("loop", idle_loop())).unwrap();
    rt.register(WorkerSpec::new("fake", FakeWorker::new().0))
        .unwrap();
    let (entered_tx, mut entered_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    rt.register(WorkerSpec::new(
        "notified",
        worker_fn(|_ctx| async { Ok(()) }).on_stop(move |_ctx| {
            let entered_tx = entered_tx.clone();
            let mut done_rx = done_rx.clone();
            async move {
                entered_tx.send_replace(true);
                let _ = done_rx.wait_for(|done| *done).await;
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.start_all().await.unwrap();

    let before = Instant::now();
    let (report, ()) = tokio::join!(rt.shutdown(), async {
        let _ = entered_rx.wait_for(|entered| *entered).await;
        done_tx.send_replace(true);
    });
    let report = report.unwrap();
    assert_eq!(Instant::now(), before, "shutdown waited on the clock");
    assert_eq!(
        report.stopped_names(),
        ["rt/notified", "rt/fake", "rt/loop"]
    );
    assert_eq!(report.elapsed, Duration::ZERO);
    assert_eq!(report.abandoned_in_flight, 0);
    assert!(!report.deadline_exceeded);
}

#[tokio::test(start_paused = true)]
async fn go_11_2_21_hung_check_is_bounded_by_the_default_timeout() {
    // §11.2 #21: Go's check loop had no default timeout, so a hung checker hung forever and
    // blocked Stop. Here the default timeout ends it, the worker stays running (unready), and a
    // stop during a hung check returns at once.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0).readiness_check(ReadinessCheck::new(
            |_ctx| async { std::future::pending().await },
        )),
    )
    .unwrap();
    let began = Instant::now();
    rt.start("w").await.unwrap();

    check_outcomes(&recorder, CheckOutcome::Timeout, 1).await;
    assert_eq!(began.elapsed(), DEFAULT_CHECK_TIMEOUT);
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Running);
    assert!(!status.ready);
    assert!(recorder.failures().is_empty());

    // The next execution hangs as well; stop cancels it without waiting for its timeout.
    within(recorder.wait_until(|events| {
        events
            .iter()
            .filter(|e| matches!(e, Recorded::CheckStart(_)))
            .count()
            >= 2
    }))
    .await;
    let stopping = Instant::now();
    rt.stop("w").await.unwrap();
    assert_eq!(stopping.elapsed(), Duration::ZERO);
    check_outcomes(&recorder, CheckOutcome::Canceled, 1).await;
}

#[tokio::test(start_paused = true)]
async fn go_11_2_22_reentrant_lifecycle_call_is_an_error_not_a_deadlock() {
    // §11.2 #22: in Go, a worker calling a gated runtime method from its Start or Stop blocked
    // until its context expired. Here every such call returns `Reentrant` at once, from start
    // and from stop.
    async fn try_everything(rt: &Runtime, log: &Mutex<Vec<String>>) {
        let mut codes = vec![
            rt.start("other").await.unwrap_err().code(),
            rt.stop("w").await.unwrap_err().code(),
            rt.drain("w").await.unwrap_err().code(),
            rt.start_all().await.unwrap_err().code(),
            rt.drain_all().await.unwrap_err().code(),
            rt.stop_all().await.unwrap_err().code(),
        ];
        match rt.shutdown().await {
            Err(ShutdownError::Lifecycle(LifecycleError::Reentrant { .. })) => {
                codes.push("reentrant_lifecycle_call");
            }
            other => panic!("shutdown from inside a lifecycle call: {other:?}"),
        }
        log.lock()
            .unwrap()
            .extend(codes.into_iter().map(str::to_owned));
    }

    let rt = runtime(&RecordingObserver::new());
    let from_start = Arc::new(Mutex::new(Vec::new()));
    let from_stop = Arc::new(Mutex::new(Vec::new()));
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    let worker = {
        let (rt_start, rt_stop) = (rt.clone(), rt.clone());
        let (from_start, from_stop) = (from_start.clone(), from_stop.clone());
        worker_fn(move |_ctx| {
            let (rt, log) = (rt_start.clone(), from_start.clone());
            async move {
                try_everything(&rt, &log).await;
                Ok(())
            }
        })
        .on_stop(move |_ctx| {
            let (rt, log) = (rt_stop.clone(), from_stop.clone());
            async move {
                try_everything(&rt, &log).await;
                Ok(())
            }
        })
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();

    let began = Instant::now();
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    assert_eq!(began.elapsed(), Duration::ZERO, "a reentrant call waited");
    for log in [&from_start, &from_stop] {
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 7);
        assert!(
            log.iter().all(|c| c == "reentrant_lifecycle_call"),
            "{log:?}"
        );
    }
    // Nothing the refused calls asked for happened, and the gate is free afterwards.
    assert_eq!(state(&rt, "other"), LifecycleState::Registered);
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);
    rt.start_all().await.unwrap();
    rt.shutdown().await.unwrap();
}
