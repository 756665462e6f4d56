//! Command admission and its interplay with lifecycle operations: rejections, drain, stop,
//! stop-all, shutdown, failure policy, and late or stale commands after a stop or restart
//! (spec §3.3, §3.4, §4.3 step 7, §4.8, rows 13–17; Go `runtime_test.go` admission, drain,
//! shutdown and "commands versus stop and restart" tests).

mod command_support;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_support::{
    Gate, command, dispatch_in_background, gated, gated_failing, idle, ok_handler, plain,
    quiet_expected_panics, start_with,
};
use support::{fake_with, recorded, spawn, state, within};
use workerkit_core::command::{CommandHandler, DispatchError};
use workerkit_core::error::{ContextError, ShutdownError};
use workerkit_core::failure::BoxError;
use workerkit_core::observe::CommandOutcome;
use workerkit_core::test_util::Step;
use workerkit_core::{
    CommandRequest, CommandResponse, FailurePolicy, LifecycleState, ShutdownOptions, WorkerSpec,
    handler_fn,
};

use LifecycleState::{Draining, Failed, Running, Starting, Stopped, Stopping};

fn req(worker: &'static str) -> CommandRequest {
    CommandRequest::new(worker, "c")
}

/// The state an `InvalidWorkerState` rejection names (panics on anything else).
fn rejected_state(err: &DispatchError) -> LifecycleState {
    match err {
        DispatchError::InvalidWorkerState { state, .. } => *state,
        other => panic!("expected InvalidWorkerState, got {other:?}"),
    }
}

/// What a worker's handler does once its gate opens, decided by the test meanwhile.
#[derive(Clone, Copy, Debug)]
enum Then {
    Succeed,
    Fail,
    Panic,
    ReportFailure,
}

/// A handler that passes `gate`, then does what `then` says at that moment; the result of a
/// `ReportFailure` call is stored in `reported`.
fn scripted(
    gate: &Gate,
    then: &Arc<Mutex<Then>>,
    reported: &Arc<Mutex<Vec<Result<(), ContextError>>>>,
) -> impl CommandHandler {
    let gate = gate.clone();
    let then = Arc::clone(then);
    let reported = Arc::clone(reported);
    handler_fn(move |ctx| {
        let gate = gate.clone();
        let then = Arc::clone(&then);
        let reported = Arc::clone(&reported);
        async move {
            gate.pass().await;
            let action = *then.lock().unwrap();
            match action {
                Then::Succeed => Ok(CommandResponse::message("done")),
                Then::Fail => Err::<CommandResponse, BoxError>("late failure".into()),
                Then::Panic => panic!("expected panic: late"),
                Then::ReportFailure => {
                    let result = ctx.worker().report_failure("handler saw trouble");
                    reported.lock().unwrap().push(result);
                    Ok(CommandResponse::message("reported"))
                }
            }
        }
    })
}

struct Scripted {
    gate: Gate,
    then: Arc<Mutex<Then>>,
    reported: Arc<Mutex<Vec<Result<(), ContextError>>>>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            gate: Gate::new(),
            then: Arc::new(Mutex::new(Then::Succeed)),
            reported: Arc::default(),
        }
    }

    fn handler(&self) -> impl CommandHandler {
        scripted(&self.gate, &self.then, &self.reported)
    }

    fn then(&self, then: Then) {
        *self.then.lock().unwrap() = then;
    }
}

// ---- admission errors (§4.3 step 7) ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dispatch_admission_errors() {
    let rt = plain();
    rt.register(idle("w").command(command("c", ok_handler())))
        .unwrap();
    rt.register(
        idle("closed")
            .accepting_work_on_start(false)
            .command(command("c", ok_handler())),
    )
    .unwrap();

    // Before any start the aggregate is `registered`: nothing is admitted.
    let err = rt.dispatch(req("w")).await.unwrap_err();
    let DispatchError::RuntimeNotAccepting { state, runtime, .. } = &err else {
        panic!("expected RuntimeNotAccepting, got {err:?}");
    };
    assert_eq!(
        (*state, runtime.as_str()),
        (LifecycleState::Registered, "rt")
    );
    assert_eq!(err.code(), "runtime_not_accepting_work");

    rt.start_all().await.unwrap();
    let err = rt
        .dispatch(CommandRequest::new("missing", "c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "worker_not_found");
    assert_eq!(err.to_string(), "worker not found: missing");
    let err = rt
        .dispatch(CommandRequest::new("w", "missing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_not_found");
    assert_eq!(err.to_string(), "command not found: rt/w/missing");
    let err = rt
        .dispatch(CommandRequest::new("w", "Bad Name"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_command_name");
    let err = rt.dispatch(req("closed")).await.unwrap_err();
    assert!(
        matches!(err, DispatchError::WorkerNotAccepting { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), "worker_not_accepting_work");
    assert!(rt.dispatch(req("w")).await.is_ok());

    // After every worker stopped, the aggregate is `stopped`: the runtime admits nothing.
    rt.stop_all().await.unwrap();
    let err = rt.dispatch(req("w")).await.unwrap_err();
    let DispatchError::RuntimeNotAccepting { state, .. } = &err else {
        panic!("expected RuntimeNotAccepting, got {err:?}");
    };
    assert_eq!(*state, Stopped);
    assert!(err.is_rejection());
    assert_eq!(
        err.failure(),
        None,
        "rejections have no admitted-failure face"
    );
}

#[tokio::test(start_paused = true)]
async fn accepting_work_toggles_admission_without_touching_lifecycle() {
    let gate = Gate::new();
    let rt = plain();
    let toggle = handler_fn(|ctx| async move {
        ctx.worker()
            .set_accepting_work(false)
            .map_err(BoxError::from)?;
        Ok(CommandResponse::message("closed"))
    });
    start_with(
        &rt,
        idle("w")
            .command(command("slow", gated(&gate)))
            .command(command("close", toggle)),
    )
    .await;

    let slow = dispatch_in_background(&rt, "w", "slow");
    gate.arrived(1).await;
    rt.dispatch(CommandRequest::new("w", "close"))
        .await
        .unwrap();
    let err = rt
        .dispatch(CommandRequest::new("w", "slow"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "worker_not_accepting_work");
    let status = rt.worker("w").unwrap().status;
    assert_eq!((status.state, status.accepting_work), (Running, false));
    // The admitted command still finishes.
    gate.release(1);
    within(slow).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_starting_worker_rejects_dispatch_with_invalid_worker_state() {
    let rt = plain();
    rt.register(idle("a").command(command("c", ok_handler())))
        .unwrap();
    rt.start("a").await.unwrap();
    let b = fake_with(&rt, "b", |s| s.command(command("c", ok_handler())));
    b.on_start(Step::Block);
    let rt2 = rt.clone();
    let starting = spawn(async move { rt2.start("b").await });
    b.entered(1).await;

    assert_eq!(state(&rt, "b"), Starting);
    let err = rt.dispatch(req("b")).await.unwrap_err();
    assert_eq!(rejected_state(&err), Starting);
    b.release();
    within(starting).await.unwrap().unwrap();
    assert!(rt.dispatch(req("b")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn dispatch_remains_concurrent_with_a_lifecycle_operation() {
    let rt = plain();
    start_with(&rt, idle("a").command(command("c", ok_handler()))).await;
    let b = fake_with(&rt, "b", |s| s);
    b.on_start(Step::Block);
    let rt2 = rt.clone();
    let starting = spawn(async move { rt2.start("b").await });
    b.entered(1).await;

    // The lifecycle gate is held by b's start; dispatch is not gated.
    let out = within(rt.dispatch(req("a"))).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("ok"));
    assert!(!starting.is_finished());
    b.release();
    within(starting).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn stopping_one_worker_does_not_close_admission_for_other_workers() {
    let rt = plain();
    start_with(&rt, idle("a").command(command("c", ok_handler()))).await;
    let b = fake_with(&rt, "b", |s| s.command(command("c", ok_handler())));
    rt.start("b").await.unwrap();
    b.on_stop(Step::Block);
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop("b").await });
    b.entered(2).await;

    assert_eq!(rt.status().state, Stopping);
    let err = rt.dispatch(req("b")).await.unwrap_err();
    assert_eq!(rejected_state(&err), Stopping);
    assert!(rt.dispatch(req("a")).await.is_ok());
    b.release();
    within(stopping).await.unwrap().unwrap();
    assert!(rt.dispatch(req("a")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn draining_one_worker_does_not_close_admission_for_other_workers() {
    let rt = plain();
    start_with(&rt, idle("a").command(command("c", ok_handler()))).await;
    start_with(&rt, idle("b").command(command("c", ok_handler()))).await;
    rt.drain("b").await.unwrap();
    assert_eq!(rt.status().state, Draining);
    assert_eq!(
        rejected_state(&rt.dispatch(req("b")).await.unwrap_err()),
        Draining
    );
    assert!(rt.dispatch(req("a")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn drain_marks_the_worker_unready_and_rejects_dispatch() {
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", ok_handler()))).await;
    rt.drain("w").await.unwrap();
    // Draining a draining worker is a no-op, not an error.
    let status = rt.drain("w").await.unwrap();
    assert_eq!(status.state, Draining);
    assert!(!status.ready);
    assert!(!status.accepting_work);
    let err = rt.dispatch(req("w")).await.unwrap_err();
    // The lifecycle check comes before the accepting check.
    assert_eq!(rejected_state(&err), Draining);
    assert_eq!(err.code(), "invalid_worker_state");
}

#[tokio::test(start_paused = true)]
async fn drain_then_wait_idle_then_stop_is_a_graceful_single_worker_shutdown() {
    let gate = Gate::new();
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout().command(command("c", gated(&gate)))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;

    rt.drain("w").await.unwrap();
    let rt2 = rt.clone();
    let graceful = spawn(async move {
        rt2.wait_idle("w").await.unwrap();
        rt2.stop("w").await
    });
    support::settle().await;
    assert_eq!(w.stops(), 0, "stop waits for the in-flight command");
    assert!(!graceful.is_finished());

    gate.release(1);
    within(task).await.unwrap().unwrap();
    within(graceful).await.unwrap().unwrap();
    assert_eq!(w.stops(), 1);
    assert_eq!(state(&rt, "w"), Stopped);
    // The command ended before the stop began.
    let briefs = recorder.all_briefs();
    let end = briefs
        .iter()
        .position(|b| b == "E rt/w/c succeeded")
        .unwrap();
    let stopping = briefs
        .iter()
        .position(|b| b == "T rt/w draining->stopping")
        .unwrap();
    assert!(end < stopping, "{briefs:?}");
}

// ---- runtime-wide admission: stop-all, shutdown, fail_runtime --------------------------------

#[tokio::test(start_paused = true)]
async fn stop_all_closes_runtime_admission_before_the_first_worker_stops() {
    let rt = plain();
    start_with(&rt, idle("a").command(command("c", ok_handler()))).await;
    // Stop-all goes in reverse registration order: b first; its stop blocks.
    let b = fake_with(&rt, "b", |s| s.command(command("c", ok_handler())));
    rt.start("b").await.unwrap();
    b.on_stop(Step::Block);
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop_all().await });
    b.entered(2).await;

    assert_eq!(state(&rt, "a"), Running);
    let err = rt.dispatch(req("a")).await.unwrap_err();
    assert_eq!(err.code(), "runtime_not_accepting_work");
    b.release();
    within(stopping).await.unwrap().unwrap();

    // After a restart admission works again.
    rt.start_all().await.unwrap();
    assert!(rt.dispatch(req("a")).await.is_ok());
    assert!(rt.dispatch(req("b")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_waits_for_in_flight_commands_and_stops_in_reverse_order() {
    let gate = Gate::new();
    let (rt, recorder) = recorded();
    let a = fake_with(&rt, "a", |s| {
        s.no_command_timeout().command(command("c", gated(&gate)))
    });
    let b = fake_with(&rt, "b", |s| s.command(command("c", ok_handler())));
    rt.start_all().await.unwrap();
    let task = dispatch_in_background(&rt, "a", "c");
    gate.arrived(1).await;

    let rt2 = rt.clone();
    let shutdown = spawn(async move { rt2.shutdown().await });
    support::settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        (a.stops(), b.stops()),
        (0, 0),
        "no stop until the command finished"
    );
    assert_eq!(state(&rt, "a"), Draining);
    assert_eq!(state(&rt, "b"), Draining);

    gate.release(1);
    within(task).await.unwrap().unwrap();
    let report = within(shutdown).await.unwrap().unwrap();
    assert_eq!(report.stopped_names(), ["rt/b", "rt/a"]);
    assert_eq!(report.abandoned_in_flight, 0);
    assert!(!report.deadline_exceeded);
    let stops: Vec<String> = recorder
        .briefs()
        .into_iter()
        .filter(|b| b.starts_with("T rt/") && b.ends_with("->stopping"))
        .collect();
    assert_eq!(
        stops,
        ["T rt/b draining->stopping", "T rt/a draining->stopping"]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_runtime_admission_before_the_sequential_drain_completes() {
    let rt = plain();
    start_with(&rt, idle("a").command(command("c", ok_handler()))).await;
    // A slow start holds the lifecycle gate, so the shutdown cannot begin its drain yet.
    let slow = fake_with(&rt, "slow", |s| s);
    slow.on_start(Step::Block);
    let rt2 = rt.clone();
    let starting = spawn(async move { rt2.start("slow").await });
    slow.entered(1).await;
    let rt3 = rt.clone();
    let shutdown = spawn(async move { rt3.shutdown().await });
    support::settle().await;

    assert_eq!(state(&rt, "a"), Running, "not drained yet");
    let err = rt.dispatch(req("a")).await.unwrap_err();
    assert_eq!(err.code(), "runtime_not_accepting_work");

    slow.release();
    within(starting).await.unwrap().unwrap();
    within(shutdown).await.unwrap().unwrap();
    assert_eq!(
        rt.dispatch(req("a")).await.unwrap_err().code(),
        "runtime_not_accepting_work"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_during_the_idle_wait_does_not_fail_the_worker() {
    // Go: the deadline expires during the idle wait, Stop is never called and the worker stays
    // `draining` forever (§11.1 #5). Rust divergence (the NEW rule): the stop phase always gets
    // its grace, so the worker is stopped — cleanly, not failed — and the report says the idle
    // wait ran out with one command abandoned.
    let gate = Gate::new();
    let rt = plain();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout().command(command("c", gated(&gate)))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;

    let err = within(rt.shutdown_with(ShutdownOptions::new(
        Duration::from_secs(1),
        Duration::from_secs(5),
    )))
    .await
    .unwrap_err();
    let ShutdownError::Incomplete { unfinished, report } = &err else {
        panic!("expected Incomplete, got {err:?}");
    };
    assert!(unfinished.is_empty(), "{unfinished:?}");
    assert!(report.deadline_exceeded);
    assert_eq!(report.abandoned_in_flight, 1);
    assert_eq!(w.stops(), 1);
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopped);
    assert!(status.last_failure.is_none());
    assert_eq!(status.in_flight, 1, "the command is still running");

    gate.release(1);
    within(task).await.unwrap().unwrap();
    assert_eq!(rt.status().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn fail_runtime_policy_closes_admission_for_other_workers() {
    let rt = plain();
    start_with(&rt, idle("healthy").command(command("c", ok_handler()))).await;
    let bad = fake_with(&rt, "bad", |s| s.failure_policy(FailurePolicy::FailRuntime));
    rt.start("bad").await.unwrap();
    assert!(rt.dispatch(req("healthy")).await.is_ok());

    bad.context(0).unwrap().report_failure("broken").unwrap();
    assert_eq!(rt.status().state, Failed);
    let err = rt.dispatch(req("healthy")).await.unwrap_err();
    let DispatchError::RuntimeNotAccepting { state, .. } = &err else {
        panic!("expected RuntimeNotAccepting, got {err:?}");
    };
    assert_eq!(*state, Failed);
}

// ---- commands versus stop and restart (§4.8) -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stop_completes_while_an_admitted_command_remains_in_flight() {
    let gate = Gate::new();
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout().command(command("c", gated(&gate)))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;

    // Without `cancel_commands_on_stop`, as in Go, a stop neither waits for nor cancels it.
    within(rt.stop("w")).await.unwrap();
    assert_eq!(w.stops(), 1);
    let status = rt.worker("w").unwrap().status;
    assert_eq!((status.state, status.in_flight), (Stopped, 1));
    assert_eq!(rt.status().in_flight, 1);
    assert_eq!(
        rt.dispatch(req("w")).await.unwrap_err().code(),
        "runtime_not_accepting_work"
    );

    gate.release(1);
    within(task).await.unwrap().unwrap();
    assert_eq!(rt.worker("w").unwrap().status.in_flight, 0);
    assert_eq!(rt.status().in_flight, 0);
    assert!(recorder.failures().is_empty());
    assert_eq!(state(&rt, "w"), Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_command_error_after_stop_records_a_command_failure_without_changing_lifecycle() {
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    recorder.clear();

    script.then(Then::Fail);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_failed");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopped);
    assert!(status.last_failure.is_none());
    assert_eq!(
        status.last_command_failure.map(|r| r.code),
        Some("command_failed".to_owned())
    );
    assert_eq!(recorder.briefs(), ["F rt/w command_failed"]);
    assert!(!recorder.failures()[0].lifecycle_changed);
}

#[tokio::test(start_paused = true)]
async fn a_stale_command_error_does_not_mutate_the_restarted_worker() {
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    let before = rt.worker("w").unwrap().status;
    assert_eq!(before.incarnation, 2);
    // The old incarnation's command still counts as in flight.
    assert_eq!(rt.status().in_flight, 1);
    assert_eq!(before.in_flight, 1);
    recorder.clear();

    script.then(Then::Fail);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_failed");

    let after = rt.worker("w").unwrap().status;
    assert_eq!(after.state, Running);
    assert!(after.ready);
    assert!(after.last_command_failure.is_none(), "stale: not recorded");
    assert!(after.last_failure.is_none());
    assert_eq!(after.in_flight, 0);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1, "the stale failure is still observed");
    assert_eq!(failures[0].incarnation, 1);
    assert!(!failures[0].lifecycle_changed);
}

#[tokio::test(start_paused = true)]
async fn a_command_reporting_failure_while_stopping_keeps_the_stopping_lifecycle() {
    let script = Scripted::new();
    let (rt, _recorder) = recorded();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    w.on_stop(Step::Block);
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop("w").await });
    w.entered(2).await;
    assert_eq!(state(&rt, "w"), Stopping);

    script.then(Then::ReportFailure);
    script.gate.release(1);
    within(task).await.unwrap().unwrap();
    assert_eq!(script.reported.lock().unwrap().as_slice(), [Ok(())]);
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopping);
    assert_eq!(status.last_failure.unwrap().code, "worker_failed");

    w.release();
    within(stopping).await.unwrap().unwrap();
    assert_eq!(state(&rt, "w"), Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_command_reporting_failure_after_stop_gets_invalid_worker_state() {
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    recorder.clear();

    script.then(Then::ReportFailure);
    script.gate.release(1);
    within(task).await.unwrap().unwrap();
    let reported = script.reported.lock().unwrap().clone();
    assert!(
        matches!(
            reported.as_slice(),
            [Err(ContextError::InvalidState { state: Stopped, .. })]
        ),
        "{reported:?}"
    );
    assert!(rt.worker("w").unwrap().status.last_failure.is_none());
    assert!(recorder.briefs().is_empty(), "no mutation, no event");
}

#[tokio::test(start_paused = true)]
async fn a_stale_command_reporting_failure_does_not_mutate_the_restarted_worker() {
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    recorder.clear();

    script.then(Then::ReportFailure);
    script.gate.release(1);
    within(task).await.unwrap().unwrap();
    let reported = script.reported.lock().unwrap().clone();
    assert!(
        matches!(
            reported.as_slice(),
            [Err(ContextError::Stale {
                incarnation: 1,
                current: 2,
                ..
            })]
        ),
        "{reported:?}"
    );
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Running);
    assert!(status.last_failure.is_none());
    assert!(recorder.briefs().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_command_panic_after_stop_preserves_the_stopped_lifecycle() {
    quiet_expected_panics();
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    recorder.clear();

    script.then(Then::Panic);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopped);
    assert!(status.last_failure.is_none());
    assert_eq!(status.last_command_failure.unwrap().code, "panic");
    assert_eq!(recorder.briefs(), ["F! rt/w panic"]);
    assert!(!recorder.failures()[0].lifecycle_changed);
}

#[tokio::test(start_paused = true)]
async fn a_command_panic_while_stopping_preserves_the_stopping_lifecycle() {
    quiet_expected_panics();
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    w.on_stop(Step::Block);
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop("w").await });
    w.entered(2).await;

    script.then(Then::Panic);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    assert_eq!(state(&rt, "w"), Stopping);
    assert!(recorder.failures().iter().any(|f| f.panic));

    w.release();
    within(stopping).await.unwrap().unwrap();
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Stopped);
    assert_eq!(status.last_command_failure.unwrap().code, "panic");
}

#[tokio::test(start_paused = true)]
async fn a_stale_command_panic_does_not_fail_the_restarted_worker() {
    quiet_expected_panics();
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    recorder.clear();

    script.then(Then::Panic);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Running);
    assert!(status.last_failure.is_none());
    assert!(status.last_command_failure.is_none());
    assert_eq!(
        recorder.briefs(),
        ["F! rt/w panic"],
        "the event is still emitted"
    );
    assert_eq!(recorder.failures()[0].incarnation, 1);
    // The restarted worker admits and runs commands as usual.
    script.then(Then::Succeed);
    script.gate.release(1);
    assert!(within(rt.dispatch(req("w"))).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_late_success_after_stop_changes_nothing_but_the_slot() {
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command(command("c", script.handler()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    let before = rt.worker("w").unwrap().status;
    recorder.clear();

    script.gate.release(1);
    let out = within(task).await.unwrap().unwrap();
    assert_eq!(out.result.message.as_deref(), Some("done"));
    let after = rt.worker("w").unwrap().status;
    assert_eq!(after.in_flight, 0);
    assert_eq!(
        (after.state, after.last_transition, after.last_failure),
        (before.state, before.last_transition, before.last_failure)
    );
    assert!(recorder.briefs().is_empty());
    let ends = recorder.command_ends();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].outcome, CommandOutcome::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn failing_late_commands_count_once_per_attempt_and_never_fail_the_worker() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("late", gated_failing(&gate, "nope")))
            .command(command("now", command_support::failing("nope", &calls))),
    )
    .await;
    let task = dispatch_in_background(&rt, "w", "late");
    gate.arrived(1).await;
    for _ in 0..3 {
        assert_eq!(
            rt.dispatch(CommandRequest::new("w", "now"))
                .await
                .unwrap_err()
                .code(),
            "command_failed"
        );
    }
    gate.release(1);
    within(task).await.unwrap().unwrap_err();
    assert_eq!(recorder.failures().len(), 4);
    assert_eq!(state(&rt, "w"), Running);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_worker_spec_built_from_a_factory_keeps_its_commands_across_restarts() {
    let rt = plain();
    rt.register(
        WorkerSpec::from_factory("w", || workerkit_core::worker_fn(|_ctx| async { Ok(()) }))
            .command(command("c", ok_handler())),
    )
    .unwrap();
    for _ in 0..3 {
        rt.start("w").await.unwrap();
        assert!(rt.dispatch(req("w")).await.is_ok());
        rt.stop("w").await.unwrap();
        assert!(rt.dispatch(req("w")).await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_panic_while_draining_fails_the_worker() {
    // Row 15 covers `running` and `draining`: a drained worker's admitted command still belongs
    // to its current incarnation.
    quiet_expected_panics();
    let script = Scripted::new();
    let (rt, recorder) = recorded();
    rt.register(idle("other")).unwrap();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", script.handler())),
    )
    .await;
    let task = dispatch_in_background(&rt, "w", "c");
    script.gate.arrived(1).await;
    rt.drain("w").await.unwrap();
    recorder.clear();

    script.then(Then::Panic);
    script.gate.release(1);
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Failed);
    assert_eq!(status.last_failure.unwrap().code, "panic");
    assert_eq!(
        recorder.briefs()[..2],
        ["T rt/w draining->failed", "F! rt/w panic"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_handler_may_stop_its_own_worker() {
    // Dispatch is not a lifecycle operation, so a command (say, an operator's "shutdown"
    // command) may stop the worker that owns it: no reentrancy error and no deadlock, with or
    // without `cancel_commands_on_stop`.
    for cancel_on_stop in [false, true] {
        let rt = plain();
        let stopper = {
            let rt = rt.clone();
            handler_fn(move |_ctx| {
                let rt = rt.clone();
                async move {
                    let status = rt.stop("w").await.map_err(BoxError::from)?;
                    Ok(CommandResponse::message(status.state.to_string()))
                }
            })
        };
        let spec = idle("w").command(command("c", stopper));
        let spec = if cancel_on_stop {
            spec.cancel_commands_on_stop(Duration::from_secs(3))
        } else {
            spec
        };
        start_with(&rt, spec).await;
        let before = tokio::time::Instant::now();
        let out = within(rt.dispatch(req("w"))).await.unwrap();
        assert_eq!(
            out.result.message.as_deref(),
            Some("stopped"),
            "{cancel_on_stop}"
        );
        assert_eq!(state(&rt, "w"), Stopped);
        let waited = if cancel_on_stop {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        assert_eq!(before.elapsed(), waited, "{cancel_on_stop}");
        assert_eq!(rt.status().in_flight, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_budget_bounds_the_grace_of_cancel_commands_on_stop() {
    // A worker's command grace (`cancel_commands_on_stop`) is how long its commands may keep a
    // *stop* waiting; inside a shutdown, what is left of the shutdown's budget bounds it too, so
    // a long grace cannot hold the whole shutdown past its budget.
    let rt = plain();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .cancel_commands_on_stop(Duration::from_secs(60))
            .command(command("c", command_support::until_cancelled()))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    assert_eq!(rt.in_flight().len(), 1);

    let before = tokio::time::Instant::now();
    let result = within(rt.shutdown_with(ShutdownOptions::new(
        Duration::from_secs(1),
        Duration::from_secs(2),
    )))
    .await;
    // 1 s idle wait (the command does not finish), then at most the 2 s stop grace.
    assert!(
        before.elapsed() <= Duration::from_secs(3),
        "shutdown took {:?}",
        before.elapsed()
    );
    let err = within(task).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: workerkit_core::command::CancelReason::WorkerStopped,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(w.stops(), 1);
    assert_eq!(state(&rt, "w"), Stopped);
    let ShutdownError::Incomplete { unfinished, report } = result.unwrap_err() else {
        panic!("expected Incomplete");
    };
    assert!(unfinished.is_empty(), "{unfinished:?}");
    assert!(report.deadline_exceeded);
}

#[tokio::test(start_paused = true)]
async fn after_the_command_grace_the_worker_stop_gets_its_full_stop_timeout() {
    // The stop timeout times the worker's own `stop`, which starts after its commands' grace;
    // the deadline in the stop's context must agree with the one the runtime enforces.
    let seen: Arc<Mutex<Option<Duration>>> = Arc::default();
    let worker = {
        let seen = Arc::clone(&seen);
        workerkit_core::worker_fn(|_ctx| async { Ok(()) }).on_stop(move |ctx| {
            let seen = Arc::clone(&seen);
            async move {
                let left = ctx
                    .deadline()
                    .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                *seen.lock().unwrap() = left;
                Ok(())
            }
        })
    };
    let rt = plain();
    rt.register(
        WorkerSpec::new("w", worker)
            .no_command_timeout()
            .stop_timeout(Duration::from_secs(10))
            .cancel_commands_on_stop(Duration::from_secs(4))
            .command(command("c", command_support::until_cancelled())),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    let before = tokio::time::Instant::now();
    rt.stop("w").await.unwrap();
    assert_eq!(
        before.elapsed(),
        Duration::from_secs(4),
        "the command grace"
    );
    assert_eq!(*seen.lock().unwrap(), Some(Duration::from_secs(10)));
    assert_eq!(
        within(task).await.unwrap().unwrap_err().code(),
        "command_cancelled"
    );
}
