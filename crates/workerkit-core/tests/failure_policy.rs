//! Failures: `report_failure` in every state (spec §2.2 rows 3, 4, 6, 11, 13, 14), exactly one
//! failure event per failure, and the public/private split (§1.7, Go `failure_test.go`): a
//! worker's own error text never reaches status, JSON, public event fields or error `Display`.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use support::{briefs_of, fake, fake_with, recorded, recorded_with, spawn, state};
use tokio::sync::Notify;
use tokio::time::timeout;
use workerkit_core::error::{ContextError, LifecycleError};
use workerkit_core::failure::{self, BoxError};
use workerkit_core::test_util::{RecordingObserver, Step};
use workerkit_core::{
    ExitReason, FailurePolicy, LifecycleState, Runtime, WorkerContext, WorkerSpec, worker_fn,
};

use LifecycleState::{Draining, Failed, Running, Starting, Stopped};

const SECRET: &str = "postgres://admin:hunter2@db";

fn secret_error() -> BoxError {
    Box::new(std::io::Error::other(format!("connect {SECRET} failed")))
}

/// Everything public about a runtime, as text: status, every worker snapshot, readiness and
/// liveness as JSON, and the public fields of every recorded event.
fn public_text(rt: &Runtime, recorder: &RecordingObserver) -> String {
    let mut text = serde_json::to_string(&rt.status()).unwrap();
    text += &serde_json::to_string(&rt.workers()).unwrap();
    text += &serde_json::to_string(&rt.readiness()).unwrap();
    text += &serde_json::to_string(&rt.liveness()).unwrap();
    for event in recorder.failures() {
        text += &serde_json::to_string(&event.failure).unwrap();
        text += event.failure.code();
        text += event.failure.message();
    }
    text += &recorder.all_briefs().concat();
    text
}

fn no_transition_to_itself(recorder: &RecordingObserver) {
    for brief in recorder.briefs() {
        if let Some(change) = brief.strip_prefix("T ") {
            let (_, states) = change.split_once(' ').unwrap();
            let (from, to) = states.split_once("->").unwrap();
            assert_ne!(from, to, "same-state transition: {brief}");
        }
    }
}

// ---- report_failure, by state ----

#[tokio::test(start_paused = true)]
async fn report_failure_while_running_fails_the_worker() {
    // Row 14.
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    recorder.clear();
    let ctx = w.context(0).unwrap();
    ctx.report_failure(secret_error()).unwrap();

    assert_eq!(
        recorder.briefs(),
        [
            "T rt/w running->failed",
            "R rt/w false",
            "F rt/w worker_failed",
            "T rt running->failed",
            "R rt false",
        ]
    );
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Failed);
    assert!(!status.ready && !status.accepting_work);
    let last = status.last_failure.unwrap();
    assert_eq!(
        (last.code.as_str(), last.message.as_str()),
        ("worker_failed", "worker operation failed")
    );
    assert!(
        ctx.is_stop_requested(),
        "the failed incarnation is told to stop"
    );
    let exit = rt.wait_exit("w").await.unwrap();
    assert_eq!(exit.reason, ExitReason::Failed);
    assert_eq!(exit.incarnation, 1);
    assert_eq!(exit.failure.unwrap().code(), "worker_failed");
    assert_eq!(
        w.stops(),
        0,
        "the runtime never stops a failed worker by itself"
    );

    let event = &recorder.failures()[0];
    assert_eq!(event.worker.as_deref(), Some("rt/w"));
    assert_eq!(event.runtime.as_ref(), "rt");
    assert_eq!(event.incarnation, 1);
    assert!(event.lifecycle_changed);
    assert!(!event.panic);
    // The private cause reaches observers, and only through `cause`.
    let cause = event.cause.as_ref().expect("cause for observers");
    assert!(cause.to_string().contains(SECRET));
    assert!(!public_text(&rt, &recorder).contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn report_failure_while_draining_fails_the_worker() {
    // Row 14.
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    recorder.clear();
    w.context(0).unwrap().report_failure("boom").unwrap();
    assert_eq!(
        recorder.briefs(),
        [
            "T rt/w draining->failed",
            "F rt/w worker_failed",
            "T rt draining->failed",
        ]
    );
    assert_eq!(state(&rt, "w"), Failed);
}

#[tokio::test(start_paused = true)]
async fn report_failure_during_start_fails_the_start() {
    // Rows 6 and 3. Rust rule: Go's Start returns nil here; `start` returns StartFailed.
    let (rt, recorder) = recorded();
    let release = Arc::new(Notify::new());
    let reported = Arc::new(Notify::new());
    let (release_in, reported_in) = (Arc::clone(&release), Arc::clone(&reported));
    rt.register(
        WorkerSpec::new(
            "w",
            worker_fn(move |ctx: WorkerContext| {
                let (release, reported) = (Arc::clone(&release_in), Arc::clone(&reported_in));
                async move {
                    ctx.set_ready(true)?;
                    ctx.report_failure(failure::with_failure(
                        secret_error(),
                        "database_unavailable",
                        "database unavailable",
                    ))?;
                    assert!(ctx.is_stop_requested());
                    reported.notify_one();
                    release.notified().await;
                    Ok(())
                }
            }),
        )
        .no_start_timeout(),
    )
    .unwrap();
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("w").await }
    });
    reported.notified().await;

    // The worker stays `starting` until its start returns; lifecycle calls wait for the gate.
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Starting);
    assert!(!status.ready);
    assert_eq!(status.last_failure.unwrap().code, "database_unavailable");
    assert!(
        timeout(Duration::from_secs(60), rt.stop("w"))
            .await
            .is_err()
    );

    release.notify_one();
    let err = starting.await.unwrap().unwrap_err();
    match &err {
        LifecycleError::StartFailed {
            worker,
            failure,
            reason,
            ..
        } => {
            assert_eq!(worker, "rt/w");
            assert_eq!(failure.code(), "database_unavailable");
            assert_eq!(failure.message(), "database unavailable");
            assert_eq!(*reason, ExitReason::Failed);
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(err.code(), "start_failed");
    assert_eq!(state(&rt, "w"), Failed);
    assert_eq!(
        briefs_of(&recorder, "rt/w"),
        [
            "T rt/w registered->starting",
            "R rt/w true",
            "R rt/w false",
            "F rt/w database_unavailable",
            "T rt/w starting->failed",
        ]
    );
    let failures = recorder.failures();
    assert_eq!(
        failures.len(),
        1,
        "no second failure event at the end of start"
    );
    assert!(!failures[0].lifecycle_changed);
    let exit = rt.wait_exit("w").await.unwrap();
    assert_eq!(exit.reason, ExitReason::Failed);
    assert_eq!(exit.failure.unwrap().code(), "database_unavailable");
    assert!(!err.to_string().contains("hunter2"));
    assert!(!public_text(&rt, &recorder).contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn report_failure_then_a_start_error_gives_one_failure_event() {
    // Row 4: the reported failure is the one observed; no failed->failed transition.
    let (rt, recorder) = recorded();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|ctx: WorkerContext| async move {
            ctx.report_failure("reported first")?;
            Err::<(), BoxError>("then start failed".into())
        }),
    ))
    .unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "start_failed");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].cause.as_ref().unwrap().to_string(),
        "reported first"
    );
    assert_eq!(
        briefs_of(&recorder, "rt/w")
            .iter()
            .filter(|b| b.starts_with("T "))
            .collect::<Vec<_>>(),
        ["T rt/w registered->starting", "T rt/w starting->failed"]
    );
    no_transition_to_itself(&recorder);
    assert_eq!(state(&rt, "w"), Failed);
}

#[tokio::test(start_paused = true)]
async fn report_failure_while_stopping_is_recorded_and_the_stop_goes_on() {
    // Row 13.
    let (rt, recorder) = recorded();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async { Ok(()) }).on_stop(|ctx: WorkerContext| async move {
            ctx.report_failure("flush failed")?;
            Ok(())
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    recorder.clear();
    let status = rt.stop("w").await.unwrap();
    assert_eq!(status.state, Stopped);
    assert_eq!(status.last_failure.unwrap().code, "worker_failed");
    assert_eq!(
        briefs_of(&recorder, "rt/w"),
        [
            "T rt/w running->stopping",
            "R rt/w false",
            "F rt/w worker_failed",
            "T rt/w stopping->stopped",
        ]
    );
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(!failures[0].lifecycle_changed);
    assert_eq!(rt.wait_exit("w").await.unwrap().reason, ExitReason::Stopped);
}

#[tokio::test(start_paused = true)]
async fn report_failure_when_stopped_or_failed_is_refused_without_effect() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    let ctx = w.context(0).unwrap();
    rt.stop("w").await.unwrap();
    recorder.clear();
    match ctx.report_failure("late") {
        Err(err @ ContextError::InvalidState { .. }) => {
            assert_eq!(err.code(), "invalid_worker_state");
            assert!(
                matches!(&err, ContextError::InvalidState { state: Stopped, action, .. } if *action == "report failure")
            );
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    assert_eq!(rt.worker("w").unwrap().status.last_failure, None);

    rt.start("w").await.unwrap();
    let ctx = w.context(1).unwrap();
    ctx.report_failure("first").unwrap();
    let before = rt.worker("w").unwrap().status;
    recorder.clear();
    let err = ctx.report_failure("second").unwrap_err();
    assert!(
        matches!(err, ContextError::InvalidState { state: Failed, .. }),
        "{err:?}"
    );
    assert_eq!(rt.worker("w").unwrap().status, before, "no mutation");
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());
}

// ---- One failure event per failure ----

#[tokio::test(start_paused = true)]
async fn a_start_failure_emits_exactly_one_failure_event() {
    for (step, code, failure_code) in [
        (Step::Fail("boom".into()), "start_failed", "worker_failed"),
        (Step::Hang, "start_timed_out", "deadline_exceeded"),
        (Step::Panic("boom".into()), "worker_panicked", "panic"),
    ] {
        let (rt, recorder) = recorded_with(|b| b.start_timeout(Duration::from_secs(1)));
        let w = fake(&rt, "w");
        w.on_start(step);
        let err = rt.start("w").await.unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.failure().unwrap().code(), failure_code);
        let failures = recorder.failures();
        assert_eq!(failures.len(), 1, "{code}");
        assert!(failures[0].lifecycle_changed);
        assert_eq!(failures[0].failure.code(), failure_code);
        assert_eq!(
            briefs_of(&recorder, "rt/w"),
            [
                "T rt/w registered->starting".to_owned(),
                "T rt/w starting->failed".to_owned(),
                format!(
                    "F{} rt/w {failure_code}",
                    if failure_code == "panic" { "!" } else { "" }
                ),
            ],
            "{code}"
        );
        assert_eq!(
            rt.worker("w").unwrap().status.last_failure.unwrap().code,
            failure_code
        );
    }
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_never_emit_a_failed_to_failed_transition() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("one".into()));
    w.on_start(Step::Fail("two".into()));
    rt.start("w").await.unwrap_err();
    rt.start("w").await.unwrap_err();
    assert!(w.context(1).unwrap().report_failure("three").is_err());
    rt.start("w").await.unwrap();
    w.context(2).unwrap().report_failure("four").unwrap();
    w.on_stop(Step::Fail("five".into()));
    rt.stop("w").await.unwrap_err();
    no_transition_to_itself(&recorder);
    assert_eq!(recorder.failures().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_stop_failure_fails_the_worker_and_a_later_stop_may_succeed() {
    // Rows 11 and 9 (from failed).
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    w.on_stop(Step::Fail(SECRET.into()));
    let err = rt.stop("w").await.unwrap_err();
    assert!(
        matches!(&err, LifecycleError::StopFailed { worker, .. } if worker == "rt/w"),
        "{err:?}"
    );
    assert_eq!(err.failure().unwrap().code(), "worker_failed");
    assert!(err.source().unwrap().to_string().contains(SECRET));
    assert!(!err.to_string().contains("hunter2"));
    assert_eq!(state(&rt, "w"), Failed);
    assert_eq!(recorder.failures().len(), 1);
    assert_eq!(rt.stop("w").await.unwrap().state, Stopped);
    assert_eq!(
        rt.worker("w").unwrap().status.last_failure.unwrap().code,
        "worker_failed"
    );
}

// ---- Public and private ----

#[tokio::test(start_paused = true)]
async fn a_failure_cause_stays_private() {
    let (rt, recorder) = recorded_with(|b| b.failure_policy(FailurePolicy::FailRuntime));
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async { Err::<(), BoxError>(secret_error()) }),
    ))
    .unwrap();
    let err = rt.start("w").await.unwrap_err();

    // The direct caller gets the cause through `source()`, never through `Display`.
    assert_eq!(
        err.to_string(),
        "worker \"rt/w\" failed to start: worker operation failed"
    );
    assert!(err.source().unwrap().to_string().contains(SECRET));
    let event = &recorder.failures()[0];
    assert_eq!(event.failure.code(), "worker_failed");
    assert_eq!(event.failure.message(), "worker operation failed");
    assert!(event.cause.as_ref().unwrap().to_string().contains(SECRET));
    let exit = rt.wait_exit("w").await.unwrap();
    assert!(!serde_json::to_string(&exit).unwrap().contains("hunter2"));

    let text = public_text(&rt, &recorder);
    assert!(
        text.contains("worker_failed"),
        "the public text was checked"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn with_failure_sets_the_public_code_and_message() {
    let (rt, recorder) = recorded_with(|b| b.failure_policy(FailurePolicy::FailRuntime));
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async {
            Err::<(), BoxError>(failure::with_failure(
                secret_error(),
                "database_unavailable",
                "database unavailable",
            ))
        }),
    ))
    .unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "start_failed");
    assert_eq!(err.failure().unwrap().code(), "database_unavailable");
    assert_eq!(
        err.to_string(),
        "worker \"rt/w\" failed to start: database unavailable"
    );
    let last = rt.worker("w").unwrap().status.last_failure.unwrap();
    assert_eq!(last.code, "database_unavailable");
    assert_eq!(last.message, "database unavailable");
    let event = &recorder.failures()[0];
    assert_eq!(event.failure.code(), "database_unavailable");
    assert_eq!(event.failure.message(), "database unavailable");
    assert!(
        rt.liveness()
            .reasons
            .iter()
            .any(|r| r.contains("database_unavailable")),
        "{:?}",
        rt.liveness()
    );
    // The wrapper and its cause are still reachable for the direct caller. (`source()` is
    // currently the shared `Arc` around the wrapper: it displays like the wrapper but does not
    // downcast to it.)
    let source = err.source().unwrap();
    assert_eq!(source.to_string(), "database unavailable");
    assert!(source.source().unwrap().to_string().contains(SECRET));
    assert!(!public_text(&rt, &recorder).contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn a_reported_failure_with_an_explicit_code_is_shown_everywhere() {
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| s.failure_policy(FailurePolicy::FailRuntime));
    rt.start("w").await.unwrap();
    w.context(0)
        .unwrap()
        .report_failure(failure::with_failure(
            secret_error(),
            "queue_lost",
            "queue connection lost",
        ))
        .unwrap();
    let snapshot = rt.worker("w").unwrap();
    let last = snapshot.status.last_failure.as_ref().unwrap();
    assert_eq!(
        (last.code.as_str(), last.message.as_str()),
        ("queue_lost", "queue connection lost")
    );
    let exit = snapshot.status.last_exit.as_ref().unwrap();
    assert_eq!(exit.failure.as_ref().unwrap().code(), "queue_lost");
    assert_eq!(recorder.failures()[0].failure.code(), "queue_lost");
    let text = public_text(&rt, &recorder);
    assert!(text.contains("queue connection lost"));
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_one_worker_leaves_an_isolated_neighbour_alone() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    rt.start_all().await.unwrap();
    a.context(0).unwrap().report_failure("boom").unwrap();
    let b_status = rt.worker("b").unwrap().status;
    assert_eq!(b_status.state, Running);
    assert!(b_status.ready && b_status.accepting_work);
    assert!(!b.context(0).unwrap().is_stop_requested());
    // Recovery is manual: stop (optional) then start.
    rt.start("a").await.unwrap();
    assert_eq!(state(&rt, "a"), Running);
    assert_eq!(rt.worker("a").unwrap().status.last_failure, None);
}

#[tokio::test(start_paused = true)]
async fn report_failure_while_draining_keeps_draining_neighbours_draining() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    rt.drain_all().await.unwrap();
    a.context(0).unwrap().report_failure("boom").unwrap();
    assert_eq!(state(&rt, "b"), Draining);
    assert_eq!(rt.status().state, Draining);
}
