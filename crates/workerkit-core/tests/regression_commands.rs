//! Regression tests for the command-related bugs and gaps of the Go original (spec §11) that the
//! Rust runtime fixes or fills: one test per item, named after it. Each states the Go behaviour
//! and the NEW Rust rule it pins down.

mod command_support;
mod support;

use std::collections::HashSet;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_support::{
    DropFlag, Gate, command, dispatch_in_background, gated, idle, plain, start_with,
};
use support::{fake_with, recorded, spawn, within};
use tokio::time::Instant;
use workerkit_core::command::{
    AdmissionMode, CancelReason, CommandHandler, DispatchError, DispatchId, LimitScope, TimeoutMode,
};
use workerkit_core::failure::BoxError;
use workerkit_core::observe::CommandOutcome;
use workerkit_core::retry::{Backoff, RetryPolicy};
use workerkit_core::{CommandRequest, CommandResponse, LifecycleState, Runtime, handler_fn};

fn req() -> CommandRequest {
    CommandRequest::new("w", "c")
}

// ---- §11.1 -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn go_11_1_4_cancellation_never_hides_the_real_outcome() {
    // Go §11.1 #4: cancelling the parent ctx made Dispatch return `context canceled` even when
    // the handler had failed on its own and no retry was pending; lastCommandFailure said
    // `command_failed` while CommandEnd said `canceled`. NEW rule in Rust: there is no parent
    // context. Dropping the dispatch future drops the handler and the end event says
    // `abandoned`; a handler error is `command_failed` everywhere (error, failure event, end
    // event, status), and a cancelled handler that still succeeds returns its success.
    let (rt, recorder) = recorded();
    let gate = Gate::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let droppable = {
        let gate = gate.clone();
        let dropped = Arc::clone(&dropped);
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            let flag = DropFlag(Arc::clone(&dropped));
            async move {
                let _flag = flag;
                gate.pass().await;
                Ok(CommandResponse::empty())
            }
        })
    };
    let fails = handler_fn(|_ctx| async { Err::<CommandResponse, BoxError>("disk full".into()) });
    start_with(
        &rt,
        idle("w")
            .command(command("drop", droppable))
            .command(command("fails", fails)),
    )
    .await;

    // The caller goes away: the handler is dropped with it, the end says abandoned.
    let task = dispatch_in_background(&rt, "w", "drop");
    gate.arrived(1).await;
    task.abort();
    assert!(within(task).await.unwrap_err().is_cancelled());
    assert!(dropped.load(Ordering::SeqCst));
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!(end.outcome, CommandOutcome::Abandoned);
    assert!(
        recorder.failures().is_empty(),
        "an abandoned dispatch is not a command failure"
    );

    // A handler's own error: the same `command_failed` in every place it shows up.
    let err = rt
        .dispatch(CommandRequest::new("w", "fails"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert_eq!(err.failure().unwrap().code(), "command_failed");
    assert_eq!(err.source().unwrap().to_string(), "disk full");
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!(end.outcome, CommandOutcome::Failed);
    assert_eq!(end.failure.unwrap().code(), "command_failed");
    assert_eq!(
        recorder.failures().pop().unwrap().failure.code(),
        "command_failed"
    );
    assert_eq!(
        rt.worker("w")
            .unwrap()
            .status
            .last_command_failure
            .unwrap()
            .code,
        "command_failed"
    );

    // Cancelled, but the handler finishes its work: the success is returned.
    let task = dispatch_in_background(&rt, "w", "drop");
    gate.arrived(2).await;
    rt.cancel(rt.in_flight()[0].id).unwrap();
    gate.release(1);
    assert!(within(task).await.unwrap().is_ok());
    assert_eq!(
        recorder.command_ends().pop().unwrap().outcome,
        CommandOutcome::Succeeded
    );
}

#[derive(Debug)]
struct Wrapped(DispatchError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "downstream said: {}", self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn go_11_1_7_a_handler_error_about_saturation_is_still_command_failed() {
    // Go §11.1 #7 (core side): a handler error wrapping an admission sentinel was reported as
    // that admission error (429/503), so handler errors could impersonate runtime state. NEW
    // rule: whatever a handler's error says or wraps, the dispatch's code is `command_failed`;
    // it is not a rejection, has no retry-after and hands back no request.
    let gate = Gate::new();
    let rt = plain();
    let mentions = handler_fn(|_ctx| async {
        Err::<CommandResponse, BoxError>(
            "worker command concurrency limit reached: limit=1 (saturated, retry later)".into(),
        )
    });
    // A handler that dispatches a saturated command and passes its error on.
    let nested = {
        let rt = rt.clone();
        handler_fn(move |_ctx| {
            let rt = rt.clone();
            async move {
                let inner = rt
                    .dispatch(CommandRequest::new("w", "busy"))
                    .await
                    .unwrap_err();
                assert_eq!(inner.code(), "saturated");
                Err::<CommandResponse, BoxError>(Box::new(Wrapped(inner)))
            }
        })
    };
    let direct = {
        let rt = rt.clone();
        handler_fn(move |_ctx| {
            let rt = rt.clone();
            async move {
                rt.dispatch(CommandRequest::new("w", "busy")).await?;
                Ok(CommandResponse::empty())
            }
        })
    };
    start_with(
        &rt,
        idle("w")
            .command(command("busy", gated(&gate)).concurrency(1))
            .command(command("mentions", mentions))
            .command(command("nested", nested))
            .command(command("direct", direct)),
    )
    .await;
    let busy = dispatch_in_background(&rt, "w", "busy");
    gate.arrived(1).await;

    for name in ["mentions", "nested", "direct"] {
        let err = rt
            .dispatch(CommandRequest::new("w", name))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "command_failed", "{name}: {err:?}");
        assert!(matches!(err, DispatchError::Failed { .. }), "{name}");
        assert!(!err.is_rejection(), "{name}");
        assert_eq!(err.retry_after(), None, "{name}");
        assert_eq!(err.failure().unwrap().code(), "command_failed", "{name}");
        assert!(err.into_request().is_none(), "{name}");
    }
    gate.release(1);
    within(busy).await.unwrap().unwrap();
}

// ---- §11.2 -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn go_11_2_11_wait_admission_per_command_caps_waiting_count_and_retry_after() {
    // Go §11.2 #11: caps were fail-fast only, runtime- and worker-wide, with no queue metrics
    // and no Retry-After. NEW rule: per-command caps; an admission mode per runtime, worker or
    // command (fail-fast by default, or wait up to a deadline); a `waiting` count in status; a
    // `retry_after` hint on saturation.
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(3)
            .command(
                command("queued", gated(&gate))
                    .concurrency(1)
                    .admission(AdmissionMode::Wait(Duration::from_secs(10))),
            )
            .command(command("strict", gated(&gate)).concurrency(1)),
    )
    .await;
    let queued = dispatch_in_background(&rt, "w", "queued");
    let strict = dispatch_in_background(&rt, "w", "strict");
    gate.arrived(2).await;

    // Fail-fast per-command cap, with a hint.
    let err = rt
        .dispatch(CommandRequest::new("w", "strict"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DispatchError::Saturated {
            scope: LimitScope::Command,
            limit: 1,
            ..
        }
    ));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(10)));

    // Waiting per-command admission: counted while waiting, admitted when the slot frees.
    let waiter = dispatch_in_background(&rt, "w", "queued");
    support::settle().await;
    assert_eq!(rt.worker("w").unwrap().status.waiting, 1);
    gate.release(1);
    within(queued).await.unwrap().unwrap();
    gate.arrived(3).await;
    assert_eq!(rt.worker("w").unwrap().status.waiting, 0);

    // And rejected once its wait runs out.
    let before = Instant::now();
    let err = within(rt.dispatch(CommandRequest::new("w", "queued")))
        .await
        .unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(10));
    assert_eq!(err.code(), "saturated");

    gate.release(2);
    within(waiter).await.unwrap().unwrap();
    within(strict).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn go_11_2_12_stop_can_cancel_in_flight_commands_after_a_grace() {
    // Go §11.2 #12: Stop neither waited for nor cancelled commands, and old-generation commands
    // kept counting against the new generation's caps. NEW rule: with
    // `cancel_commands_on_stop(grace)` a stop gives the incarnation's commands `grace` to
    // finish, then cancels the rest (`CancelReason::WorkerStopped`); caps are per incarnation.
    let quick_gate = Gate::new();
    let stubborn_saw_cancel = Arc::new(AtomicBool::new(false));
    let stubborn = {
        let saw = Arc::clone(&stubborn_saw_cancel);
        handler_fn(move |ctx| {
            let saw = Arc::clone(&saw);
            async move {
                ctx.cancelled().await;
                saw.store(true, Ordering::SeqCst);
                Err::<CommandResponse, BoxError>("interrupted".into())
            }
        })
    };
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .command_concurrency(2)
            .cancel_commands_on_stop(Duration::from_secs(5))
            .command(command("quick", gated(&quick_gate)))
            .command(command("stubborn", stubborn))
    });
    rt.start("w").await.unwrap();
    let quick = dispatch_in_background(&rt, "w", "quick");
    let slow = dispatch_in_background(&rt, "w", "stubborn");
    quick_gate.arrived(1).await;
    support::settle().await;
    assert_eq!(rt.in_flight().len(), 2);

    let before = Instant::now();
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop("w").await });
    support::settle().await;
    assert_eq!(
        w.stops(),
        0,
        "the stop gives the commands their grace first"
    );
    // One finishes within the grace: not cancelled.
    tokio::time::advance(Duration::from_secs(2)).await;
    quick_gate.release(1);
    within(quick).await.unwrap().unwrap();

    let err = within(slow).await.unwrap().unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(5));
    let DispatchError::Cancelled { reason, cause, .. } = &err else {
        panic!("expected Cancelled, got {err:?}");
    };
    assert_eq!(*reason, CancelReason::WorkerStopped);
    assert_eq!(cause.as_ref().unwrap().as_arc().to_string(), "interrupted");
    assert!(stubborn_saw_cancel.load(Ordering::SeqCst));
    within(stopping).await.unwrap().unwrap();
    assert_eq!(w.stops(), 1);
    assert_eq!(
        rt.worker("w").unwrap().status.state,
        LifecycleState::Stopped
    );
    assert!(rt.in_flight().is_empty());
    let outcomes: Vec<CommandOutcome> = recorder.command_ends().iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [CommandOutcome::Succeeded, CommandOutcome::Cancelled]
    );

    // When every command finishes early, the stop does not wait out the grace.
    rt.start("w").await.unwrap();
    let quick = dispatch_in_background(&rt, "w", "quick");
    quick_gate.arrived(2).await;
    let before = Instant::now();
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop("w").await });
    tokio::time::advance(Duration::from_secs(1)).await;
    quick_gate.release(1);
    within(quick).await.unwrap().unwrap();
    within(stopping).await.unwrap().unwrap();
    assert_eq!(before.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn go_11_2_12_old_incarnation_commands_do_not_hold_the_new_incarnations_caps() {
    // Go §4.8 / §11.2 #12: a command left over from before a restart held a slot of the new
    // generation's caps. NEW rule: it still shows in `in_flight` and idle waits, but the new
    // incarnation's caps start empty.
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command(command("c", gated(&gate))),
    )
    .await;
    let old = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();

    let new = dispatch_in_background(&rt, "w", "c");
    gate.arrived(2).await;
    assert_eq!(rt.worker("w").unwrap().status.in_flight, 2);
    let rt2 = rt.clone();
    let idle_wait = spawn(async move { rt2.wait_idle("w").await });
    gate.release(1);
    within(old).await.unwrap().unwrap();
    support::settle().await;
    assert!(!idle_wait.is_finished(), "the new one is still running");
    gate.release(1);
    within(new).await.unwrap().unwrap();
    within(idle_wait).await.unwrap().unwrap();
}

/// A handler that ignores cancellation entirely and would run for an hour.
fn ignores_cancellation(dropped: &Arc<AtomicBool>) -> impl CommandHandler {
    let dropped = Arc::clone(dropped);
    handler_fn(move |_ctx| {
        let flag = DropFlag(Arc::clone(&dropped));
        async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(CommandResponse::empty())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn go_11_2_15_hard_timeouts_drop_a_handler_cooperative_ones_let_it_clean_up() {
    // Go §11.2 #15: timeouts were cooperative only; a handler ignoring its ctx ran on. NEW rule:
    // `TimeoutMode::Hard { grace }` drops such a handler `grace` after its deadline, while the
    // default `Cooperative` mode waits for the handler so its cleanup runs.
    let dropped = Arc::new(AtomicBool::new(false));
    let cleaned = Arc::new(AtomicBool::new(false));
    let cooperative = {
        let cleaned = Arc::clone(&cleaned);
        handler_fn(move |ctx| {
            let cleaned = Arc::clone(&cleaned);
            async move {
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_secs(10)).await; // longer than any grace
                cleaned.store(true, Ordering::SeqCst);
                Err::<CommandResponse, BoxError>("cleaned up".into())
            }
        })
    };
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command_timeout(Duration::from_secs(2))
            .command(
                command("hard", ignores_cancellation(&dropped)).timeout_mode(TimeoutMode::Hard {
                    grace: Duration::from_secs(1),
                }),
            )
            .command(command("coop", cooperative)),
    )
    .await;

    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "hard"))
        .await
        .unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(3));
    assert_eq!(err.code(), "command_timed_out");
    assert!(dropped.load(Ordering::SeqCst));

    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "coop"))
        .await
        .unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(12));
    assert_eq!(err.code(), "command_timed_out");
    assert!(cleaned.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn go_11_2_18_dispatch_ids_are_unique_uuid_v7_strings_across_runtimes() {
    // Go §11.2 #18: ids were "<runtime>-<n>" from a per-runtime counter, so two runtimes (or one
    // restarted process) reused them. NEW rule: UUIDv7 strings, unique across runtimes.
    let seen_ids: Arc<Mutex<Vec<DispatchId>>> = Arc::default();
    let mut ids = HashSet::new();
    for _ in 0..3 {
        // Same runtime name every time, as after a process restart.
        let rt = Runtime::builder("rt").build().unwrap();
        let handler = {
            let seen_ids = Arc::clone(&seen_ids);
            handler_fn(move |ctx| {
                seen_ids.lock().unwrap().push(ctx.id());
                async { Ok(CommandResponse::empty()) }
            })
        };
        start_with(&rt, idle("w").command(command("c", handler))).await;
        for _ in 0..50 {
            let out = rt.dispatch(req()).await.unwrap();
            let text = out.id.to_string();
            assert!(!text.starts_with("rt-"), "{text}");
            assert_eq!(text.len(), 36);
            assert_eq!(text.as_bytes()[14], b'7', "UUID version 7: {text}");
            assert_eq!(text.parse::<DispatchId>().unwrap(), out.id);
            assert_eq!(
                serde_json::to_value(out.id).unwrap(),
                serde_json::json!(text)
            );
            assert!(ids.insert(out.id), "duplicate {text}");
        }
    }
    assert_eq!(ids.len(), 150);
    assert_eq!(
        seen_ids
            .lock()
            .unwrap()
            .iter()
            .copied()
            .collect::<HashSet<_>>(),
        ids
    );
}

#[tokio::test(start_paused = true)]
async fn go_11_2_25_a_total_retry_budget_bounds_attempts() {
    // Go §11.2 #25: a retried dispatch had no overall deadline, only per-attempt timeouts. NEW
    // rule: `RetryPolicy::total_budget` bounds the attempts, their delays and the last attempt's
    // deadline.
    let calls = Arc::new(AtomicUsize::new(0));
    let policy = RetryPolicy::attempts(100)
        .unwrap()
        .backoff(Backoff::constant(Duration::from_secs(2)))
        .total_budget(Duration::from_secs(7))
        .unwrap();
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(command("c", command_support::failing("x", &calls)).retry(policy)),
    )
    .await;
    let before = Instant::now();
    let err = rt.dispatch(req()).await.unwrap_err();
    // Attempts at 0, 2, 4 and 6 s; one at 8 s would overrun the 7 s budget.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(
        matches!(err, DispatchError::Failed { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(before.elapsed(), Duration::from_secs(6));
}
