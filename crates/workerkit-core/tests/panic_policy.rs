//! Panics in worker code (spec §2.8, rows 5 and 12; Go `PanicPolicyOptions`): caught, recorded
//! as a failure with `panic: true` and `ExitReason::Panicked`, and under
//! `PanicPolicy::Propagate` resumed in the caller of the lifecycle operation after the
//! bookkeeping. Rust's policies are `recover`/`propagate` (Go: `recover`/`crash`).

mod support;

use std::any::Any;
use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{fake, fake_with, recorded, recorded_with, spawn, state};
use workerkit_core::error::LifecycleError;
use workerkit_core::failure::PanicError;
use workerkit_core::test_util::{FakeWorker, Step};
use workerkit_core::{ExitReason, LifecycleState, LoopWorker, PanicPolicy, Runtime, WorkerSpec};

use LifecycleState::{Failed, Running, Stopped};

fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string payload".into())
}

fn propagate(spec: WorkerSpec) -> WorkerSpec {
    spec.panic_policy(PanicPolicy::Propagate)
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_start_is_caught_and_fails_the_worker() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    w.on_start(Step::Panic("secret=hunter2".into()));
    let err = rt.start("w").await.unwrap_err();

    assert_eq!(err.code(), "worker_panicked");
    let LifecycleError::StartFailed {
        failure, reason, ..
    } = &err
    else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert_eq!(*reason, ExitReason::Panicked);
    assert_eq!(failure.code(), "panic");
    assert_eq!(
        failure.message(),
        "recovered panic during starting worker \"rt/w\""
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Failed);
    assert_eq!(status.last_failure.as_ref().unwrap().code, "panic");
    assert_eq!(
        status.last_exit.as_ref().unwrap().reason,
        ExitReason::Panicked
    );
    assert_eq!(
        rt.wait_exit("w").await.unwrap().reason,
        ExitReason::Panicked
    );
    assert!(!serde_json::to_string(&status).unwrap().contains("hunter2"));

    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert_eq!(failures[0].failure.code(), "panic");
    // The panic message is private: in the cause, bounded, for observers and the caller.
    let cause = failures[0].cause.as_ref().unwrap();
    let panic = cause
        .downcast_ref::<PanicError>()
        .expect("a PanicError cause");
    assert_eq!(panic.payload_description(), "secret=hunter2");
    assert!(!panic.to_string().contains("hunter2"));
    assert!(err.source().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_stop_is_caught_and_fails_the_worker() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    w.on_stop(Step::Panic("boom".into()));
    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(err.code(), "stop_failed");
    let failure = err.failure().unwrap();
    assert_eq!(failure.code(), "panic");
    assert_eq!(
        failure.message(),
        "recovered panic during stopping worker \"rt/w\""
    );
    assert_eq!(state(&rt, "w"), Failed);
    assert_eq!(
        rt.wait_exit("w").await.unwrap().reason,
        ExitReason::Panicked
    );
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    // A failed stop may be retried.
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
}

#[tokio::test(start_paused = true)]
async fn propagate_resumes_a_start_panic_in_the_caller_after_the_bookkeeping() {
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", propagate);
    w.on_start(Step::Panic("boom".into()));
    let joined = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    })
    .await;
    let err = joined.expect_err("the panic reaches the caller");
    assert!(err.is_panic());
    assert_eq!(
        payload_text(&*err.into_panic()),
        "boom",
        "the original payload"
    );

    // Bookkeeping and events happened before the panic was resumed.
    assert_eq!(state(&rt, "w"), Failed);
    assert_eq!(
        rt.worker("w").unwrap().status.last_exit.unwrap().reason,
        ExitReason::Panicked
    );
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert!(
        recorder
            .all_briefs()
            .contains(&"O start failed:panic".to_owned()),
        "{:?}",
        recorder.all_briefs()
    );
    // The lifecycle gate was released while unwinding.
    let restarted = tokio::time::timeout(Duration::from_secs(1), rt.start("w"))
        .await
        .expect("gate is free");
    assert_eq!(restarted.unwrap().state, Running);
}

#[tokio::test(start_paused = true)]
async fn propagate_resumes_a_stop_panic_in_the_caller() {
    let rt = Runtime::builder("rt")
        .panic_policy(PanicPolicy::Propagate)
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    w.on_stop(Step::Panic("boom".into()));
    let err = spawn({
        let rt = rt.clone();
        async move { rt.stop("w").await }
    })
    .await
    .expect_err("the panic reaches the caller");
    assert!(err.is_panic());
    assert_eq!(payload_text(&*err.into_panic()), "boom");
    assert_eq!(state(&rt, "w"), Failed);
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_worker_override_wins_over_the_runtime_panic_policy() {
    // Go PanicPolicyOptions: a crash default panics out of Start; a recover override returns an
    // error.
    let rt = Runtime::builder("rt")
        .panic_policy(PanicPolicy::Propagate)
        .build()
        .unwrap();
    let w = fake_with(&rt, "w", |s| s.panic_policy(PanicPolicy::Recover));
    w.on_start(Step::Panic("boom".into()));
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "worker_panicked");

    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake_with(&rt, "w", propagate);
    w.on_start(Step::Panic("boom".into()));
    let joined = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
}

#[tokio::test(start_paused = true)]
async fn a_propagated_start_panic_does_not_escalate_to_the_runtime() {
    // The panic had a caller to resume on, so the failure follows the worker's own failure
    // policy (isolate): the other worker keeps the runtime running and live.
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let w = fake_with(&rt, "w", |s| propagate(s).contributes_to_readiness(false));
    rt.start("main").await.unwrap();
    w.on_start(Step::Panic("boom".into()));
    let joined = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(rt.status().state, Running);
    assert!(rt.status().ready);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn stop_all_tries_every_worker_before_resuming_a_propagated_panic() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    let b = fake_with(&rt, "b", propagate);
    rt.start_all().await.unwrap();
    b.on_stop(Step::Panic("boom".into())); // stopped first (reverse order)
    let err = spawn({
        let rt = rt.clone();
        async move { rt.stop_all().await }
    })
    .await
    .expect_err("the panic reaches the caller");
    assert_eq!(payload_text(&*err.into_panic()), "boom");
    assert_eq!(a.stops(), 1);
    assert_eq!(state(&rt, "a"), Stopped);
    assert_eq!(state(&rt, "b"), Failed);
}

#[tokio::test(start_paused = true)]
async fn start_all_with_a_propagated_panic_is_fail_fast() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake_with(&rt, "a", propagate);
    let b = fake(&rt, "b");
    a.on_start(Step::Panic("boom".into()));
    let err = spawn({
        let rt = rt.clone();
        async move { rt.start_all().await }
    })
    .await
    .expect_err("the panic reaches the caller");
    assert!(err.is_panic());
    assert_eq!(state(&rt, "a"), Failed);
    assert_eq!(b.starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_factory_fails_the_start() {
    let (rt, recorder) = recorded();
    let made = Arc::new(AtomicUsize::new(0));
    rt.register(WorkerSpec::from_factory("w", {
        let made = Arc::clone(&made);
        move || {
            if made.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("factory secret=hunter2");
            }
            FakeWorker::new().0
        }
    }))
    .unwrap();
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "worker_panicked");
    assert_eq!(err.failure().unwrap().code(), "panic");
    assert!(!err.to_string().contains("hunter2"));
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Failed);
    assert_eq!(status.incarnation, 2);
    assert_eq!(status.last_exit.unwrap().reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);

    // The next start asks the factory again.
    assert_eq!(rt.start("w").await.unwrap().state, Running);
    assert_eq!(made.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_factory_panic_is_propagated_under_propagate() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(propagate(WorkerSpec::from_factory(
        "w",
        || -> FakeWorker { panic!("factory boom") },
    )))
    .unwrap();
    let err = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    })
    .await
    .expect_err("the panic reaches the caller");
    assert_eq!(payload_text(&*err.into_panic()), "factory boom");
    assert_eq!(state(&rt, "w"), Failed);
}

#[tokio::test(start_paused = true)]
async fn a_loop_function_that_panics_fails_its_worker_as_a_loop_panic() {
    // The loop function (called at each start to make the loop's future) panics before it
    // returns one: the start still succeeds, and the worker then fails with that panic, as if
    // the loop had panicked at its first step; the next start calls the function again.
    let (rt, recorder) = recorded();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    rt.register(WorkerSpec::new(
        "loop",
        LoopWorker::new(move |ctx| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("loop function boom");
            }
            async move {
                ctx.stop_requested().await;
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.start("loop").await.unwrap();
    let exit = rt.wait_exit("loop").await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    assert_eq!(state(&rt, "loop"), Failed);
    let failure = recorder
        .failures()
        .into_iter()
        .find(|f| f.panic)
        .expect("a panic failure event");
    assert_eq!(failure.failure.code(), "panic");
    let panic = failure
        .cause
        .as_ref()
        .and_then(|cause| cause.downcast_ref::<PanicError>())
        .expect("a PanicError cause");
    assert_eq!(panic.payload_description(), "loop function boom");

    rt.start("loop").await.unwrap();
    assert_eq!(state(&rt, "loop"), Running);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    rt.stop("loop").await.unwrap();
    assert_eq!(state(&rt, "loop"), Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_panic_with_no_caller_escalates_under_propagate() {
    // A loop panic has nobody to resume on: under `propagate` it counts as `fail_runtime`
    // whatever the worker's failure policy, so the runtime fails and is not live.
    let (rt, recorder) = recorded_with(|b| b.panic_policy(PanicPolicy::Propagate));
    fake(&rt, "main");
    rt.register(
        WorkerSpec::new(
            "loop",
            LoopWorker::new(|_ctx| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                panic!("loop boom");
            }),
        )
        .contributes_to_readiness(false),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let exit = rt.wait_exit("loop").await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    assert_eq!(rt.status().state, Failed);
    assert!(!rt.status().ready);
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness.reasons.iter().any(|r| r.contains("rt/loop")),
        "{liveness:?}"
    );
    assert!(recorder.failures().iter().any(|f| f.panic));

    // Under `recover` the same panic is an isolated failure.
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    rt.register(
        WorkerSpec::new(
            "loop",
            LoopWorker::new(|_ctx| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                panic!("loop boom");
            }),
        )
        .contributes_to_readiness(false),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    rt.wait_exit("loop").await.unwrap();
    assert_eq!(rt.status().state, Running);
    assert!(rt.liveness().live);
}
