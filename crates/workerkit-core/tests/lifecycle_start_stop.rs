//! Start, stop and drain at the public boundary: the transition table (spec §2.2), the lifecycle
//! gate (§2.3), single-worker and bulk operations (§2.4, §2.5), idempotency (§2.7),
//! registration and name resolution. Ports the lifecycle tests of the Go `runtime_test.go` and
//! `worker_test.go` (§10.1, §10.2); command, dispatch and opskit tests come with commands.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{fake, fake_with, recorded, recorded_with, settle, spawn, state, within};
use tokio::time::{Instant, timeout};
use workerkit_core::error::{BuildError, ContextError, LifecycleError, RegisterError};
use workerkit_core::failure::BoxError;
use workerkit_core::name::NameProblem;
use workerkit_core::observe::Operation;
use workerkit_core::test_util::Step;
use workerkit_core::{
    ExitReason, LifecycleState, ReadinessCheck, Runtime, Worker, WorkerContext, WorkerSpec,
    worker_fn,
};

use LifecycleState::{Draining, Failed, Registered, Running, Stopped};

fn expect_invalid_state(
    result: Result<impl std::fmt::Debug, LifecycleError>,
    worker: &str,
    in_state: LifecycleState,
    op: Operation,
) {
    match result {
        Err(LifecycleError::InvalidState {
            worker: w,
            state,
            operation,
        }) => {
            assert_eq!(w, worker);
            assert_eq!(state, in_state);
            assert_eq!(operation, op);
        }
        other => panic!("expected InvalidState({in_state}, {op}), got {other:?}"),
    }
}

// ---- Construction and registration ----

#[test]
fn builder_rejects_an_invalid_runtime_name() {
    for name in [
        "",
        "Runtime",
        "runtime.name",
        "runtime name",
        " runtime",
        "rt/w",
    ] {
        let err = Runtime::builder(name).build().unwrap_err();
        assert!(
            matches!(err, BuildError::InvalidName(_)),
            "{name:?}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_name");
    }
    let rt = Runtime::builder("runtime-1").build().unwrap();
    assert_eq!(rt.name(), "runtime-1");
}

#[test]
fn builder_rejects_zero_durations() {
    let cases: [(
        &str,
        fn(workerkit_core::RuntimeBuilder) -> workerkit_core::RuntimeBuilder,
    ); 5] = [
        ("start_timeout", |b| b.start_timeout(Duration::ZERO)),
        ("stop_timeout", |b| b.stop_timeout(Duration::ZERO)),
        ("shutdown_timeout", |b| b.shutdown_timeout(Duration::ZERO)),
        ("stop_grace", |b| b.stop_grace(Duration::ZERO)),
        ("observer_flush_timeout", |b| {
            b.observer_flush_timeout(Duration::ZERO)
        }),
    ];
    for (name, configure) in cases {
        match configure(Runtime::builder("rt")).build() {
            Err(err @ BuildError::ZeroDuration { setting }) => {
                assert_eq!(setting, name);
                assert_eq!(err.code(), "invalid_config");
            }
            other => panic!("{name}: expected ZeroDuration, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn register_rejects_invalid_names_and_registers_nothing() {
    let rt = Runtime::builder("rt").build().unwrap();
    let long = "a".repeat(64);
    let cases = [
        ("", NameProblem::Empty),
        ("W", NameProblem::InvalidCharacter),
        ("a.b", NameProblem::InvalidCharacter),
        ("é", NameProblem::InvalidCharacter),
        ("a b", NameProblem::InnerWhitespace),
        (" a", NameProblem::SurroundingWhitespace),
        ("rt/a", NameProblem::Slash),
        (long.as_str(), NameProblem::TooLong { max: 63 }),
    ];
    for (name, problem) in cases {
        let (worker, _control) = workerkit_core::test_util::FakeWorker::new();
        match rt.register(WorkerSpec::new(name, worker)) {
            Err(err @ RegisterError::InvalidName(_)) => {
                assert_eq!(err.code(), "invalid_name");
                let RegisterError::InvalidName(name_err) = &err else {
                    unreachable!()
                };
                assert_eq!(name_err.problem(), problem, "{name:?}");
            }
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
    assert!(rt.workers().is_empty());
    assert_eq!(rt.status().workers, 0);
    // Odd but valid names are accepted, as in Go.
    fake(&rt, "a0-b_1");
    fake(&rt, "-");
    assert_eq!(rt.status().workers, 2);
}

#[tokio::test(start_paused = true)]
async fn register_rejects_a_duplicate_name_and_keeps_the_first_worker() {
    let rt = Runtime::builder("rt").build().unwrap();
    let first = fake(&rt, "w");
    let (worker, second) = workerkit_core::test_util::FakeWorker::new();
    let err = rt
        .register(WorkerSpec::new("w", worker).description("second"))
        .unwrap_err();
    assert!(
        matches!(&err, RegisterError::AlreadyRegistered { worker } if worker == "rt/w"),
        "{err:?}"
    );
    assert_eq!(err.code(), "worker_already_registered");
    assert_eq!(rt.status().workers, 1);
    rt.start("w").await.unwrap();
    assert_eq!(first.starts(), 1);
    assert_eq!(second.starts(), 0);
    assert_eq!(rt.worker("w").unwrap().description, None);
}

#[tokio::test(start_paused = true)]
async fn register_rejects_zero_durations() {
    let rt = Runtime::builder("rt").build().unwrap();
    let check = || ReadinessCheck::new(|_ctx| async { Ok(true) });
    let cases: [(&str, fn(WorkerSpec, ReadinessCheck) -> WorkerSpec); 4] = [
        ("start_timeout", |s, _| s.start_timeout(Duration::ZERO)),
        ("stop_timeout", |s, _| s.stop_timeout(Duration::ZERO)),
        ("readiness_check.interval", |s, c| {
            s.readiness_check(c.interval(Duration::ZERO))
        }),
        ("readiness_check.timeout", |s, c| {
            s.readiness_check(c.timeout(Duration::ZERO))
        }),
    ];
    for (name, configure) in cases {
        let (worker, _control) = workerkit_core::test_util::FakeWorker::new();
        let spec = configure(WorkerSpec::new("w", worker), check());
        match rt.register(spec) {
            Err(err @ RegisterError::ZeroDuration { .. }) => {
                assert_eq!(err.code(), "invalid_config");
                let RegisterError::ZeroDuration { worker, setting } = &err else {
                    unreachable!()
                };
                assert_eq!(worker, "rt/w");
                assert_eq!(*setting, name);
            }
            other => panic!("{name}: expected ZeroDuration, got {other:?}"),
        }
    }
    assert!(rt.workers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn registration_stays_open_after_start() {
    // Rust rule (Go closes registration once the runtime leaves `registered`, §2.7): a worker
    // registered into a running runtime is `registered` until started.
    let (rt, recorder) = recorded();
    fake(&rt, "a");
    rt.start_all().await.unwrap();
    recorder.clear();

    let late = fake(&rt, "late");
    assert_eq!(state(&rt, "late"), Registered);
    assert_eq!(late.starts(), 0);
    assert_eq!(
        rt.status().state,
        Running,
        "a mix of running and registered"
    );
    // A contributing worker that is not running makes the runtime unready until it starts:
    // the readiness policy applies to a late worker like to any other.
    assert!(!rt.status().ready);
    assert_eq!(recorder.briefs(), ["R rt false"]);

    rt.start_all().await.unwrap();
    assert_eq!(state(&rt, "late"), Running);
    assert_eq!(late.starts(), 1);
    assert!(rt.status().ready);
}

#[tokio::test(start_paused = true)]
async fn register_does_not_wait_for_a_blocked_start_all_and_is_not_started_by_it() {
    // Rust rule: `register` is not gated (Go's Register waits for the gate, then fails).
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    a.on_start(Step::Block);
    let start_all = spawn({
        let rt = rt.clone();
        async move { rt.start_all().await }
    });
    a.entered(1).await;

    let late = fake(&rt, "late"); // returns at once although the gate is held
    a.release();
    start_all.await.unwrap().unwrap();
    assert_eq!(state(&rt, "a"), Running);
    assert_eq!(state(&rt, "late"), Registered);
    assert_eq!(late.starts(), 0);
}

// ---- Names ----

#[tokio::test(start_paused = true)]
async fn lifecycle_calls_resolve_local_and_qualified_names() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    assert_eq!(rt.start("rt/w").await.unwrap().name.as_ref(), "rt/w");
    assert_eq!(rt.drain("w").await.unwrap().state, Draining);
    assert_eq!(rt.stop("rt/w").await.unwrap().state, Stopped);
    assert_eq!((w.starts(), w.stops()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn strict_lifecycle_calls_reject_invalid_names_with_invalid_name() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    for name in ["", "W", "w ", "rt/W", "rt/w/x", "/w", "rt/"] {
        let err = rt.start(name).await.unwrap_err();
        assert!(
            matches!(err, LifecycleError::InvalidName(_)),
            "{name:?}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_name", "{name:?}");
        assert_eq!(rt.stop(name).await.unwrap_err().code(), "invalid_name");
        assert_eq!(rt.drain(name).await.unwrap_err().code(), "invalid_name");
        assert_eq!(rt.wait_exit(name).await.unwrap_err().code(), "invalid_name");
    }
    assert_eq!(w.starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn unknown_and_foreign_qualified_names_are_not_found() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    // `other/w` is well-formed but names another runtime's worker (§1.2): not found.
    for (name, reported) in [
        ("other/w", "other/w"),
        ("missing", "rt/missing"),
        ("rt/missing", "rt/missing"),
    ] {
        match rt.start(name).await {
            Err(err @ LifecycleError::WorkerNotFound { .. }) => {
                assert_eq!(err.code(), "worker_not_found");
                assert_eq!(err.worker(), Some(reported));
            }
            other => panic!("{name:?}: expected WorkerNotFound, got {other:?}"),
        }
    }
    assert_eq!(w.starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn worker_lookup_is_lenient() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "w");
    assert_eq!(rt.worker("w").unwrap().qualified_name.as_ref(), "rt/w");
    assert_eq!(rt.worker("rt/w").unwrap().name.as_ref(), "w");
    // Invalid or foreign names simply miss; no error.
    for name in ["W", "", "other/w", "rt/w/x", "rt/", "missing", "rt/W"] {
        assert!(rt.worker(name).is_none(), "{name:?}");
    }
}

// ---- Transition table: allowed and refused operations ----

#[tokio::test(start_paused = true)]
async fn start_is_refused_unless_registered_stopped_or_failed() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    expect_invalid_state(rt.start("w").await, "rt/w", Running, Operation::Start);
    rt.drain("w").await.unwrap();
    expect_invalid_state(rt.start("w").await, "rt/w", Draining, Operation::Start);
    assert_eq!(w.starts(), 1, "a refused start never calls the worker");
    rt.stop("w").await.unwrap();
    assert_eq!(rt.start("w").await.unwrap().state, Running);
    assert_eq!(w.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_is_allowed_from_failed() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    assert_eq!(state(&rt, "w"), Failed);
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.state, Running);
    assert_eq!(status.incarnation, 2);
}

#[tokio::test(start_paused = true)]
async fn stop_is_refused_from_registered_and_stopped() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    expect_invalid_state(rt.stop("w").await, "rt/w", Registered, Operation::Stop);
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    recorder.clear();
    // Stop is not idempotent (§2.7, §11.3 #33).
    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(err.code(), "invalid_worker_state");
    expect_invalid_state(Err::<(), _>(err), "rt/w", Stopped, Operation::Stop);
    assert_eq!(w.stops(), 1);
    assert!(
        recorder.briefs().is_empty(),
        "a refused stop changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_is_allowed_from_running_draining_and_failed() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
    assert_eq!(w.stops(), 3);
}

#[tokio::test(start_paused = true)]
async fn drain_is_refused_unless_running_or_draining() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    expect_invalid_state(rt.drain("w").await, "rt/w", Registered, Operation::Drain);
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    expect_invalid_state(rt.drain("w").await, "rt/w", Stopped, Operation::Drain);
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    expect_invalid_state(rt.drain("w").await, "rt/w", Failed, Operation::Drain);
}

#[tokio::test(start_paused = true)]
async fn drain_makes_a_worker_unready_and_closed_without_calling_it() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    let status = rt.drain("w").await.unwrap();
    assert_eq!(status.state, Draining);
    assert!(!status.ready);
    assert!(!status.accepting_work);
    assert_eq!(
        (w.starts(), w.stops()),
        (1, 0),
        "drain never calls worker code"
    );
    assert!(
        !w.context(0).unwrap().is_stop_requested(),
        "draining keeps the worker running"
    );

    // A second drain is a no-op: no error and no events.
    recorder.clear();
    let again = rt.drain("w").await.unwrap();
    assert_eq!(again.state, Draining);
    assert!(!again.ready && !again.accepting_work);
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());
}

#[tokio::test(start_paused = true)]
async fn draining_one_worker_leaves_the_others_running_and_accepting() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    rt.drain("a").await.unwrap();
    assert_eq!(rt.status().state, Draining);
    let b = rt.worker("b").unwrap().status;
    assert_eq!(b.state, Running);
    assert!(b.ready && b.accepting_work);
}

#[tokio::test(start_paused = true)]
async fn stopping_one_worker_leaves_the_others_running_and_accepting() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    a.on_stop(Step::Block);
    let stopping = spawn({
        let rt = rt.clone();
        async move { rt.stop("a").await }
    });
    a.entered(2).await; // start, then stop
    assert_eq!(rt.status().state, LifecycleState::Stopping);
    assert_eq!(state(&rt, "a"), LifecycleState::Stopping);
    let b = rt.worker("b").unwrap().status;
    assert_eq!(b.state, Running);
    assert!(b.ready && b.accepting_work);
    a.release();
    stopping.await.unwrap().unwrap();
    assert_eq!(rt.status().state, Running);
}

#[tokio::test(start_paused = true)]
async fn stop_fires_the_stop_signal_before_calling_stop() {
    let seen = Arc::new(Mutex::new(None));
    let rt = Runtime::builder("rt").build().unwrap();
    let seen_in_stop = Arc::clone(&seen);
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async { Ok(()) }).on_stop(move |ctx: WorkerContext| {
            let seen = Arc::clone(&seen_in_stop);
            async move {
                *seen.lock().unwrap() = Some(ctx.is_stop_requested());
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(true));
}

// ---- Idempotency (§2.7, adapted) ----

#[tokio::test(start_paused = true)]
async fn repeated_calls_follow_the_idempotency_table() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    rt.start_all().await.unwrap();

    // StartAll when all are running: Ok, nothing started again, no worker events.
    recorder.clear();
    rt.start_all().await.unwrap();
    assert_eq!((a.starts(), b.starts()), (1, 1));
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());

    // SetReady with the same value: Ok, no event.
    a.context(0).unwrap().set_ready(true).unwrap();
    a.context(0).unwrap().set_accepting_work(true).unwrap();
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());

    // DrainAll when all are draining: Ok, no events the second time.
    rt.drain_all().await.unwrap();
    recorder.clear();
    rt.drain_all().await.unwrap();
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());

    // StopAll and Shutdown when all are stopped: Ok, nothing stopped again.
    rt.stop_all().await.unwrap();
    assert_eq!((a.stops(), b.stops()), (1, 1));
    recorder.clear();
    rt.stop_all().await.unwrap();
    let report = rt.shutdown().await.unwrap();
    assert!(report.stopped.is_empty());
    assert_eq!((a.stops(), b.stops()), (1, 1));
    assert!(
        !recorder.briefs().iter().any(|b| b.starts_with("T rt/")),
        "{:?}",
        recorder.briefs()
    );
}

#[tokio::test(start_paused = true)]
async fn start_all_refuses_a_draining_worker() {
    // §2.5: StartAll treats starting, draining and stopping as errors, not skips.
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    rt.start("a").await.unwrap();
    rt.drain("a").await.unwrap();
    expect_invalid_state(rt.start_all().await, "rt/a", Draining, Operation::Start);
    assert_eq!(a.starts(), 1);
    assert_eq!(b.starts(), 0, "fail-fast: later workers are not started");
    assert_eq!(state(&rt, "b"), Registered);
}

// ---- Bulk operations ----

#[tokio::test(start_paused = true)]
async fn start_all_starts_in_registration_order_and_does_not_roll_back() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    let c = fake(&rt, "c");
    b.on_start(Step::Fail("boom".into()));

    let err = rt.start_all().await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::StartFailed { worker, .. } if worker == "rt/b"),
        "{err:?}"
    );
    assert_eq!(state(&rt, "a"), Running, "no rollback");
    assert_eq!(state(&rt, "b"), Failed);
    assert_eq!(state(&rt, "c"), Registered, "fail-fast");
    assert_eq!((a.starts(), b.starts(), c.starts()), (1, 1, 0));
    assert_eq!(
        (a.stops(), b.stops(), c.stops()),
        (0, 0, 0),
        "no stop is called"
    );

    let starts: Vec<_> = recorder
        .briefs()
        .into_iter()
        .filter(|e| e.ends_with("->starting") && e.starts_with("T rt/"))
        .collect();
    assert_eq!(
        starts,
        ["T rt/a registered->starting", "T rt/b registered->starting"]
    );
}

#[tokio::test(start_paused = true)]
async fn start_all_restarts_stopped_and_failed_workers_and_skips_running_ones() {
    let rt = Runtime::builder("rt").build().unwrap();
    let running = fake(&rt, "running");
    let stopped = fake(&rt, "stopped");
    let failed = fake(&rt, "failed");
    failed.on_start(Step::Fail("boom".into()));
    rt.start("running").await.unwrap();
    rt.start("stopped").await.unwrap();
    rt.stop("stopped").await.unwrap();
    rt.start("failed").await.unwrap_err();

    rt.start_all().await.unwrap();
    for name in ["running", "stopped", "failed"] {
        assert_eq!(state(&rt, name), Running, "{name}");
    }
    assert_eq!(
        (running.starts(), stopped.starts(), failed.starts()),
        (1, 2, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn drain_all_drains_running_workers_in_order_and_skips_inactive_ones() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    fake(&rt, "registered");
    let b = fake(&rt, "b");
    let stopped = fake(&rt, "stopped");
    let failed = fake(&rt, "failed");
    failed.on_start(Step::Fail("boom".into()));
    rt.start("a").await.unwrap();
    rt.start("b").await.unwrap();
    rt.start("stopped").await.unwrap();
    rt.stop("stopped").await.unwrap();
    rt.start("failed").await.unwrap_err();
    recorder.clear();

    rt.drain_all().await.unwrap();
    assert_eq!(state(&rt, "a"), Draining);
    assert_eq!(state(&rt, "b"), Draining);
    assert_eq!(state(&rt, "registered"), Registered);
    assert_eq!(state(&rt, "stopped"), Stopped);
    assert_eq!(state(&rt, "failed"), Failed);
    let drains: Vec<_> = recorder
        .briefs()
        .into_iter()
        .filter(|e| e.starts_with("T rt/"))
        .collect();
    assert_eq!(
        drains,
        ["T rt/a running->draining", "T rt/b running->draining"]
    );
    assert_eq!((a.stops(), b.stops(), stopped.stops()), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn stop_all_stops_in_reverse_order_and_joins_errors() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    let c = fake(&rt, "c");
    rt.start_all().await.unwrap();
    a.on_stop(Step::Fail("a secret".into()));
    c.on_stop(Step::Fail("c secret".into()));
    recorder.clear();

    let err = rt.stop_all().await.unwrap_err();
    assert_eq!(err.code(), "multiple_failures");
    let LifecycleError::Multiple { errors } = &err else {
        panic!("expected Multiple, got {err:?}");
    };
    // Every worker is tried; errors are kept in the order met (reverse registration order).
    let failed: Vec<_> = errors.iter().map(|e| (e.code(), e.worker())).collect();
    assert_eq!(
        failed,
        [("stop_failed", Some("rt/c")), ("stop_failed", Some("rt/a"))]
    );
    assert!(!err.to_string().contains("secret"), "{err}");
    assert_eq!((a.stops(), b.stops(), c.stops()), (1, 1, 1));
    assert_eq!(state(&rt, "a"), Failed);
    assert_eq!(state(&rt, "b"), Stopped);
    assert_eq!(state(&rt, "c"), Failed);

    let stopping: Vec<_> = recorder
        .briefs()
        .into_iter()
        .filter(|e| e.starts_with("T rt/") && e.ends_with("->stopping"))
        .collect();
    assert_eq!(
        stopping,
        [
            "T rt/c running->stopping",
            "T rt/b running->stopping",
            "T rt/a running->stopping"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stop_all_with_one_failure_returns_that_error_alone() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    a.on_stop(Step::Fail("boom".into()));
    let err = rt.stop_all().await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::StopFailed { worker, .. } if worker == "rt/a"),
        "{err:?}"
    );
    assert_eq!(state(&rt, "b"), Stopped);
}

#[tokio::test(start_paused = true)]
async fn stop_all_stops_failed_workers_and_keeps_their_last_failure() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    fake(&rt, "idle"); // registered: skipped
    rt.start("w").await.unwrap();
    w.context(0).unwrap().report_failure("boom").unwrap();
    assert_eq!(state(&rt, "w"), Failed);

    rt.stop_all().await.unwrap();
    assert_eq!(w.stops(), 1, "stop_all calls stop on a failed worker");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopped);
    let last = status.last_failure.expect("last failure kept after stop");
    assert_eq!(last.code, "worker_failed");
    assert_eq!(last.message, "worker operation failed");
    assert_eq!(state(&rt, "idle"), Registered);
}

// ---- Last failure ----

#[tokio::test(start_paused = true)]
async fn a_successful_start_clears_the_last_failure() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    assert!(rt.worker("w").unwrap().status.last_failure.is_some());
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.last_failure, None);
    assert_eq!(rt.worker("w").unwrap().status.last_failure, None);
}

#[tokio::test(start_paused = true)]
async fn a_successful_stop_keeps_the_last_failure() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    let before = rt.worker("w").unwrap().status.last_failure.unwrap();
    let status = rt.stop("w").await.unwrap();
    assert_eq!(status.state, Stopped);
    assert_eq!(status.last_failure, Some(before));
}

// ---- Timeouts ----

#[tokio::test(start_paused = true)]
async fn start_timeout_comes_from_the_runtime_default_or_the_worker() {
    let rt = Runtime::builder("rt")
        .start_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let default = fake(&rt, "default");
    let custom = fake_with(&rt, "custom", |s| s.start_timeout(Duration::from_secs(2)));
    default.on_start(Step::Hang);
    custom.on_start(Step::Hang);

    for (name, limit) in [("default", 5), ("custom", 2)] {
        let began = Instant::now();
        let err = rt.start(name).await.unwrap_err();
        assert_eq!(began.elapsed(), Duration::from_secs(limit), "{name}");
        assert_eq!(err.code(), "start_timed_out");
        let status = rt.worker(name).unwrap().status;
        assert_eq!(status.state, Failed);
        assert_eq!(status.last_failure.unwrap().code, "deadline_exceeded");
        assert_eq!(status.last_exit.unwrap().reason, ExitReason::StartTimedOut);
    }
    // The timed-out incarnation was told to stop.
    assert!(default.context(0).unwrap().is_stop_requested());
}

#[tokio::test(start_paused = true)]
async fn the_start_context_carries_the_start_deadline() {
    let deadline = Arc::new(Mutex::new(None));
    let rt = Runtime::builder("rt").build().unwrap();
    let seen = Arc::clone(&deadline);
    rt.register(
        WorkerSpec::new(
            "w",
            worker_fn(move |ctx: WorkerContext| {
                *seen.lock().unwrap() = Some(ctx.deadline());
                async { Ok(()) }
            }),
        )
        .start_timeout(Duration::from_secs(7)),
    )
    .unwrap();
    let began = Instant::now();
    rt.start("w").await.unwrap();
    assert_eq!(
        *deadline.lock().unwrap(),
        Some(Some(began + Duration::from_secs(7)))
    );
}

#[tokio::test(start_paused = true)]
async fn no_start_timeout_lets_a_slow_start_finish() {
    let rt = Runtime::builder("rt")
        .start_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    rt.register(
        WorkerSpec::new(
            "slow",
            worker_fn(|_ctx| async {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(())
            }),
        )
        .no_start_timeout(),
    )
    .unwrap();
    assert_eq!(rt.start("slow").await.unwrap().state, Running);
}

#[tokio::test(start_paused = true)]
async fn stop_timeout_fails_the_worker_with_deadline_exceeded() {
    let (rt, recorder) = recorded_with(|b| b.stop_timeout(Duration::from_secs(30)));
    let w = fake_with(&rt, "w", |s| s.stop_timeout(Duration::from_secs(3)));
    rt.start("w").await.unwrap();
    w.on_stop(Step::Hang);

    let began = Instant::now();
    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_secs(3));
    assert!(matches!(err, LifecycleError::StopFailed { .. }), "{err:?}");
    assert_eq!(err.code(), "stop_failed");
    assert_eq!(err.failure().unwrap().code(), "deadline_exceeded");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Failed);
    assert_eq!(status.last_failure.unwrap().code, "deadline_exceeded");
    assert_eq!(status.last_exit.unwrap().reason, ExitReason::Failed);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failure.code(), "deadline_exceeded");

    // Row 11: a later stop is allowed from failed.
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
    assert_eq!(w.stops(), 2);
}

// ---- Incarnations and factories ----

#[derive(Debug)]
struct Tagged {
    id: usize,
    started: bool,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker for Tagged {
    async fn start(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        let fresh = if self.started { "again" } else { "fresh" };
        self.started = true;
        self.log
            .lock()
            .unwrap()
            .push(format!("start {} {fresh}", self.id));
        Ok(())
    }

    async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        self.log.lock().unwrap().push(format!("stop {}", self.id));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_factory_gives_a_fresh_instance_for_every_start() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(WorkerSpec::from_factory("w", {
        let log = Arc::clone(&log);
        let made = Arc::clone(&made);
        move || Tagged {
            id: made.fetch_add(1, Ordering::SeqCst) + 1,
            started: false,
            log: Arc::clone(&log),
        }
    }))
    .unwrap();
    assert_eq!(
        made.load(Ordering::SeqCst),
        0,
        "nothing is made before the first start"
    );
    for _ in 0..2 {
        rt.start("w").await.unwrap();
        rt.stop("w").await.unwrap();
    }
    assert_eq!(
        *log.lock().unwrap(),
        ["start 1 fresh", "stop 1", "start 2 fresh", "stop 2"]
    );
    assert_eq!(made.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_instance_spec_restarts_the_same_instance() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(WorkerSpec::new(
        "w",
        Tagged {
            id: 1,
            started: false,
            log: Arc::clone(&log),
        },
    ))
    .unwrap();
    for _ in 0..2 {
        rt.start("w").await.unwrap();
        rt.stop("w").await.unwrap();
    }
    assert_eq!(
        *log.lock().unwrap(),
        ["start 1 fresh", "stop 1", "start 1 again", "stop 1"]
    );
}

#[tokio::test(start_paused = true)]
async fn each_start_is_a_new_incarnation_with_its_own_context() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    assert_eq!(rt.worker("w").unwrap().status.incarnation, 0);
    for n in 1..=3 {
        assert_eq!(rt.start("w").await.unwrap().incarnation, n);
        rt.stop("w").await.unwrap();
        assert_eq!(
            rt.worker("w").unwrap().status.incarnation,
            n,
            "stop keeps it"
        );
    }
    let contexts: Vec<_> = (0..3).map(|n| w.context(n).unwrap()).collect();
    let incarnations: Vec<_> = contexts.iter().map(WorkerContext::incarnation).collect();
    assert_eq!(incarnations, [1, 2, 3]);
    assert!(
        contexts
            .iter()
            .all(|c| c.name() == "w" && c.qualified_name() == "rt/w")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_context_cannot_mutate_the_restarted_worker() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    recorder.clear();
    let stale = w.context(0).unwrap();
    let expect_stale = |result: Result<(), ContextError>| match result {
        Err(err @ ContextError::Stale { .. }) => {
            assert_eq!(err.code(), "stale_context");
            assert_eq!(
                err,
                ContextError::Stale {
                    worker: "rt/w".into(),
                    incarnation: 1,
                    current: 2
                }
            );
        }
        other => panic!("expected Stale, got {other:?}"),
    };
    expect_stale(stale.set_ready(false));
    expect_stale(stale.set_accepting_work(false));
    expect_stale(stale.report_failure("late failure"));
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Running);
    assert!(status.ready && status.accepting_work);
    assert_eq!(status.last_failure, None);
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());
    // The old incarnation's stop signal fired at its stop; the new one's has not.
    assert!(stale.is_stop_requested());
    assert!(!w.context(1).unwrap().is_stop_requested());
}

// ---- The lifecycle gate ----

#[tokio::test(start_paused = true)]
async fn a_blocked_start_makes_a_concurrent_stop_wait() {
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", WorkerSpec::no_start_timeout);
    w.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    });
    w.entered(1).await;

    let mut stopping = spawn({
        let rt = rt.clone();
        async move { rt.stop("w").await }
    });
    // The stop waits for the gate: not even an hour is enough while the start is blocked.
    assert!(
        timeout(Duration::from_secs(3600), &mut stopping)
            .await
            .is_err()
    );
    assert_eq!(
        w.stops(),
        0,
        "stop does not enter the worker until start finishes"
    );
    assert_eq!(state(&rt, "w"), LifecycleState::Starting);

    w.release();
    assert_eq!(starting.await.unwrap().unwrap().state, Running);
    assert_eq!(stopping.await.unwrap().unwrap().state, Stopped);
    assert_eq!(w.stops(), 1);
    let ops: Vec<_> = recorder
        .all_briefs()
        .into_iter()
        .filter(|b| b.starts_with("O "))
        .collect();
    assert_eq!(
        ops,
        [
            "O start started",
            "O start succeeded",
            "O stop started",
            "O stop succeeded"
        ],
        "operations do not interleave"
    );
}

#[tokio::test(start_paused = true)]
async fn drain_all_waits_for_a_concurrent_start_and_then_drains_it() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake_with(&rt, "w", WorkerSpec::no_start_timeout);
    w.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    });
    w.entered(1).await;
    let mut draining = spawn({
        let rt = rt.clone();
        async move { rt.drain_all().await }
    });
    assert!(
        timeout(Duration::from_secs(60), &mut draining)
            .await
            .is_err()
    );
    assert_eq!(state(&rt, "w"), LifecycleState::Starting);
    w.release();
    starting.await.unwrap().unwrap();
    draining.await.unwrap().unwrap();
    // drain_all looked at the workers after it won the gate, so it saw `w` running.
    assert_eq!(state(&rt, "w"), Draining);
}

#[tokio::test(start_paused = true)]
async fn context_calls_do_not_wait_for_the_gate() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    rt.start("a").await.unwrap();
    b.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("b").await }
    });
    b.entered(1).await;
    // While the gate is held, a running worker still reports through its context, and
    // status reads answer.
    let ctx = a.context(0).unwrap();
    ctx.set_ready(false).unwrap();
    assert!(!rt.worker("a").unwrap().status.ready);
    ctx.set_ready(true).unwrap();
    assert_eq!(rt.status().state, LifecycleState::Starting);
    b.release();
    starting.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_lifecycle_call_that_waits_for_the_gate_does_nothing() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    a.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("a").await }
    });
    a.entered(1).await;

    // Go honours the caller's ctx while waiting for the gate; in Rust the caller drops the
    // future (here by a timeout).
    assert!(
        timeout(Duration::from_secs(5), rt.start("b"))
            .await
            .is_err()
    );
    assert!(timeout(Duration::from_secs(5), rt.stop("a")).await.is_err());

    a.release();
    starting.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(b.starts(), 0);
    assert_eq!(state(&rt, "b"), Registered);
    assert_eq!(a.stops(), 0);
    assert_eq!(state(&rt, "a"), Running);
    assert!(
        !recorder
            .all_briefs()
            .iter()
            .any(|e| e.contains("rt/b") || e.starts_with("O stop")),
        "{:?}",
        recorder.all_briefs()
    );
    // The abandoned waits did not keep the gate.
    timeout(Duration::from_secs(1), rt.start("b"))
        .await
        .expect("gate is free")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_lifecycle_call_after_it_won_the_gate_lets_it_complete() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    w.on_start(Step::Block);
    // The start wins the (free) gate at once and blocks inside the worker; then it is dropped.
    assert!(
        timeout(Duration::from_secs(5), rt.start("w"))
            .await
            .is_err()
    );
    w.entered(1).await;
    assert_eq!(state(&rt, "w"), LifecycleState::Starting);

    w.release();
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.worker("w").is_some_and(|s| s.status.state == Running))).await;
    // The operation finished with its events, and released the gate.
    within(recorder.wait_until(|events| events.iter().any(|e| e.brief() == "O start succeeded")))
        .await;
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
}

#[tokio::test(start_paused = true)]
async fn the_gate_is_released_after_a_failed_operation() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    rt.start("missing").await.unwrap_err();
    rt.drain("w").await.unwrap_err();
    let ok = timeout(Duration::from_secs(1), rt.start("w")).await;
    assert_eq!(ok.expect("gate is free").unwrap().state, Running);
}
