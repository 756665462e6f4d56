//! Command timeouts and retry (spec §4.6, §5; Go `options_test.go` `TimeoutOptionsSetAttemptDeadlines`
//! and `RetryOptions` for commands, `runtime_test.go`
//! `CommandRetryEmitsFailurePerFailedAttemptAndSuccessfulCommandEnd`), and the Rust additions:
//! hard timeouts (§11.2 #15), a total retry budget (§11.2 #25), permanent errors and the retry
//! predicate. The backoff and jitter formulas themselves are unit-tested in `src/retry`.

mod command_support;
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_support::{
    DropFlag, Gate, attempts, attempts_of, command, dispatch_in_background, failing, idle, plain,
    quiet_expected_panics, start_with, until_cancelled,
};
use support::{recorded, within};
use tokio::time::Instant;
use workerkit_core::command::{CancelReason, CommandHandler, DispatchError, TimeoutMode};
use workerkit_core::failure::{BoxError, with_failure};
use workerkit_core::observe::CommandOutcome;
use workerkit_core::retry::{Backoff, RetryPolicy, permanent};
use workerkit_core::{
    CommandRequest, CommandResponse, DEFAULT_COMMAND_TIMEOUT, Runtime, WorkerSpec, handler_fn,
};

fn req() -> CommandRequest {
    CommandRequest::new("w", "c")
}

/// A handler that fails its first `failures` attempts with `text`, then succeeds; it records
/// when each attempt began (tokio clock, relative to `origin`).
fn flaky(
    failures: u32,
    text: &'static str,
    origin: Instant,
    starts: &Arc<Mutex<Vec<Duration>>>,
) -> impl CommandHandler {
    let starts = Arc::clone(starts);
    handler_fn(move |ctx| {
        starts.lock().unwrap().push(origin.elapsed());
        let attempt = ctx.attempt();
        async move {
            if attempt <= failures {
                Err::<CommandResponse, BoxError>(text.into())
            } else {
                Ok(CommandResponse::message(format!("attempt {attempt}")))
            }
        }
    })
}

// ---- timeouts ---------------------------------------------------------------------------------

/// Runs one dispatch of a handler that waits for its cancellation; returns how long it took.
async fn time_out(rt: &Runtime, spec: WorkerSpec) -> Duration {
    start_with(rt, spec).await;
    let before = Instant::now();
    let err = within(rt.dispatch(req())).await.unwrap_err();
    assert!(matches!(err, DispatchError::TimedOut { .. }), "{err:?}");
    before.elapsed()
}

#[tokio::test(start_paused = true)]
async fn the_default_command_timeout_is_thirty_seconds() {
    assert_eq!(DEFAULT_COMMAND_TIMEOUT, Duration::from_secs(30));
    let rt = plain();
    let took = time_out(&rt, idle("w").command(command("c", until_cancelled()))).await;
    assert_eq!(took, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn command_timeouts_are_overridden_by_runtime_worker_and_command() {
    let rt = Runtime::builder("rt")
        .command_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let took = time_out(&rt, idle("w").command(command("c", until_cancelled()))).await;
    assert_eq!(took, Duration::from_secs(5), "runtime default");

    let rt = Runtime::builder("rt")
        .command_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let took = time_out(
        &rt,
        idle("w")
            .command_timeout(Duration::from_secs(3))
            .command(command("c", until_cancelled())),
    )
    .await;
    assert_eq!(took, Duration::from_secs(3), "worker override");

    let rt = Runtime::builder("rt")
        .command_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let took = time_out(
        &rt,
        idle("w")
            .command_timeout(Duration::from_secs(3))
            .command(command("c", until_cancelled()).timeout(Duration::from_secs(1))),
    )
    .await;
    assert_eq!(took, Duration::from_secs(1), "command override");
}

#[tokio::test(start_paused = true)]
async fn no_command_timeout_gives_no_deadline() {
    let handler = handler_fn(|ctx| async move {
        assert_eq!(ctx.deadline(), None);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!ctx.is_cancelled());
        Ok(CommandResponse::message("slow but fine"))
    });
    let rt = Runtime::builder("rt").no_command_timeout().build().unwrap();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let out = rt.dispatch(req()).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("slow but fine"));

    // A worker or command can also switch it off under a runtime default.
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("c", until_cancelled()).no_timeout())
            .command(command("d", until_cancelled())),
    )
    .await;
    let task = dispatch_in_background(&rt, "w", "c");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!task.is_finished(), "no timeout for `c`");
    assert_eq!(rt.in_flight().len(), 1);
    rt.cancel(rt.in_flight()[0].id).unwrap();
    assert_eq!(
        within(task).await.unwrap().unwrap_err().code(),
        "command_cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_typed_and_observed_as_deadline_exceeded() {
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(command("c", until_cancelled()).timeout(Duration::from_secs(2))),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    let DispatchError::TimedOut {
        attempts, cause, ..
    } = &err
    else {
        panic!("expected TimedOut, got {err:?}");
    };
    assert_eq!(*attempts, 1);
    assert_eq!(
        cause.as_ref().map(|c| c.as_arc().to_string()).as_deref(),
        Some("gave up"),
        "the handler's own error after its deadline is kept"
    );
    assert_eq!(err.code(), "command_timed_out");
    assert_eq!(err.failure().unwrap().code(), "deadline_exceeded");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failure.code(), "deadline_exceeded");
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!(end.outcome, CommandOutcome::TimedOut);
    assert_eq!(
        rt.worker("w")
            .unwrap()
            .status
            .last_command_failure
            .unwrap()
            .code,
        "deadline_exceeded"
    );
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_a_fresh_deadline_and_its_own_attempt_number() {
    let seen: Arc<Mutex<Vec<(u32, Option<Duration>)>>> = Arc::default();
    let origin = Instant::now();
    let handler = {
        let seen = Arc::clone(&seen);
        handler_fn(move |ctx| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push((
                    ctx.attempt(),
                    ctx.deadline().map(|d| d.duration_since(origin)),
                ));
                ctx.cancelled().await;
                assert!(ctx.is_cancelled());
                Err::<CommandResponse, BoxError>("timed out".into())
            }
        })
    };
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command_retry(attempts(3).backoff(Backoff::constant(Duration::from_secs(1))))
            .command(command("c", handler).timeout(Duration::from_secs(2))),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(attempts_of(&err), 3);
    assert_eq!(err.code(), "command_timed_out");
    // Attempts at 0, 3 (2 s + 1 s backoff) and 6 s; each deadline 2 s after its start.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, Some(Duration::from_secs(2))),
            (2, Some(Duration::from_secs(5))),
            (3, Some(Duration::from_secs(8))),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_before_the_deadline_is_a_failure_not_a_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(command("c", failing("quick", &calls)).timeout(Duration::from_secs(1))),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_succeeds_after_its_deadline_returns_its_success() {
    // Cooperative: the deadline is a request to stop; a handler that finishes its work anyway
    // reports that work's real outcome.
    let handler = handler_fn(|ctx| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(ctx.is_cancelled(), "its deadline has passed");
        Ok(CommandResponse::message("late but done"))
    });
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(command("c", handler).timeout(Duration::from_secs(1))),
    )
    .await;
    let out = rt.dispatch(req()).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("late but done"));
}

// ---- cooperative vs hard timeouts (§11.2 #15) ------------------------------------------------

/// A handler that ignores its cancellation and would run for an hour; `dropped` is set if the
/// runtime drops it.
fn stubborn(dropped: &Arc<AtomicBool>) -> impl CommandHandler {
    let dropped = Arc::clone(dropped);
    handler_fn(move |_ctx| {
        let flag = DropFlag(Arc::clone(&dropped));
        async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(CommandResponse::message("finished"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn cooperative_timeouts_wait_for_the_handler_to_clean_up() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let handler = {
        let cleaned = Arc::clone(&cleaned);
        handler_fn(move |ctx| {
            let cleaned = Arc::clone(&cleaned);
            async move {
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_secs(4)).await;
                cleaned.store(true, Ordering::SeqCst);
                Err::<CommandResponse, BoxError>("rolled back".into())
            }
        })
    };
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(
            command("c", handler)
                .timeout(Duration::from_secs(2))
                .timeout_mode(TimeoutMode::Cooperative),
        ),
    )
    .await;
    let before = Instant::now();
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(6));
    assert!(cleaned.load(Ordering::SeqCst));
    let DispatchError::TimedOut { cause, .. } = &err else {
        panic!("expected TimedOut, got {err:?}");
    };
    assert_eq!(cause.as_ref().unwrap().as_arc().to_string(), "rolled back");
}

#[tokio::test(start_paused = true)]
async fn hard_timeouts_drop_a_handler_that_ignores_cancellation_after_the_grace() {
    let dropped = Arc::new(AtomicBool::new(false));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(
            command("c", stubborn(&dropped))
                .timeout(Duration::from_secs(2))
                .timeout_mode(TimeoutMode::Hard {
                    grace: Duration::from_secs(1),
                }),
        ),
    )
    .await;
    let before = Instant::now();
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(3), "timeout + grace");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler future was dropped"
    );
    let DispatchError::TimedOut { cause, .. } = &err else {
        panic!("expected TimedOut, got {err:?}");
    };
    assert!(cause.is_none(), "a dropped handler returned nothing");
    assert!(rt.in_flight().is_empty());
    assert_eq!(recorder.command_ends()[0].outcome, CommandOutcome::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn hard_timeouts_still_let_a_cooperative_handler_finish_within_the_grace() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let handler = {
        let cleaned = Arc::clone(&cleaned);
        handler_fn(move |ctx| {
            let cleaned = Arc::clone(&cleaned);
            async move {
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                cleaned.store(true, Ordering::SeqCst);
                Err::<CommandResponse, BoxError>("rolled back".into())
            }
        })
    };
    let rt = Runtime::builder("rt")
        .command_timeout_mode(TimeoutMode::Hard {
            grace: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    start_with(
        &rt,
        idle("w").command(command("c", handler).timeout(Duration::from_secs(2))),
    )
    .await;
    let before = Instant::now();
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_millis(2_500));
    assert!(cleaned.load(Ordering::SeqCst));
    assert!(
        matches!(err, DispatchError::TimedOut { cause: Some(_), .. }),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeout_mode_is_set_per_runtime_worker_and_command() {
    let dropped = Arc::new(AtomicBool::new(false));
    let hard = TimeoutMode::Hard {
        grace: Duration::from_secs(1),
    };
    // Runtime says hard, worker says cooperative, one command says hard again.
    let rt = Runtime::builder("rt")
        .command_timeout_mode(hard)
        .command_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    start_with(
        &rt,
        idle("w")
            .command_timeout_mode(TimeoutMode::Cooperative)
            .command(command("coop", stubborn(&dropped)))
            .command(command("hard", stubborn(&dropped)).timeout_mode(hard)),
    )
    .await;
    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "hard"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_timed_out");
    assert_eq!(before.elapsed(), Duration::from_secs(2));
    assert!(dropped.swap(false, Ordering::SeqCst));

    // The cooperative one runs to its own end (an hour), then succeeds.
    let before = Instant::now();
    let out = rt.dispatch(CommandRequest::new("w", "coop")).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("finished"));
    // It ran its full hour: it was not dropped at its deadline.
    assert_eq!(before.elapsed(), Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn hard_mode_drops_a_handler_ignoring_a_cancel_by_id_after_the_grace() {
    let dropped = Arc::new(AtomicBool::new(false));
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(
                command("c", stubborn(&dropped)).timeout_mode(TimeoutMode::Hard {
                    grace: Duration::from_secs(2),
                }),
            ),
    )
    .await;
    let task = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    let id = rt.in_flight()[0].id;
    let before = Instant::now();
    rt.cancel(id).unwrap();
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(2));
    assert!(dropped.load(Ordering::SeqCst));
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::Requested,
                cause: None,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---- retry (§5) -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn command_retry_emits_a_failure_per_failed_attempt_and_a_successful_end() {
    let starts = Arc::default();
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command_retry(attempts(2)).command(command(
            "c",
            flaky(1, "first try fails", Instant::now(), &starts),
        )),
    )
    .await;
    recorder.clear();

    let out = rt.dispatch(req()).await.unwrap();
    assert_eq!(out.attempts, 2);
    assert_eq!(out.result.message.as_deref(), Some("attempt 2"));

    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].attempt, 1);
    assert_eq!(failures[0].dispatch_id, Some(out.id));
    assert_eq!(failures[0].command.as_deref(), Some("c"));
    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!((starts.len(), ends.len()), (1, 1));
    assert_eq!(starts[0].dispatch_id, out.id);
    assert_eq!(ends[0].dispatch_id, out.id);
    assert_eq!(ends[0].attempts, 2);
    assert_eq!(ends[0].outcome, CommandOutcome::Succeeded);
    assert!(ends[0].failure.is_none());
    assert!(ends[0].cause.is_none());
    // The failed attempt is still the worker's last command failure.
    assert_eq!(
        rt.worker("w")
            .unwrap()
            .status
            .last_command_failure
            .unwrap()
            .code,
        "command_failed"
    );
}

#[tokio::test(start_paused = true)]
async fn every_failed_attempt_is_observed_and_the_last_error_is_returned() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .command_retry(attempts(3))
            .command(command("c", failing("always", &calls))),
    )
    .await;
    recorder.clear();
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(attempts_of(&err), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let attempts: Vec<u32> = recorder.failures().iter().map(|f| f.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let ids: std::collections::HashSet<_> =
        recorder.failures().iter().map(|f| f.dispatch_id).collect();
    assert_eq!(ids.len(), 1, "one dispatch id for every attempt");
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!((end.outcome, end.attempts), (CommandOutcome::Failed, 3));
    assert_eq!(
        end.cause.as_ref().map(ToString::to_string).as_deref(),
        Some("always")
    );
}

#[tokio::test(start_paused = true)]
async fn command_retry_defaults_to_never_and_is_overridden_by_runtime_worker_and_command() {
    let run = |rt: Runtime, spec: WorkerSpec, calls: Arc<AtomicUsize>| async move {
        start_with(&rt, spec).await;
        let err = rt.dispatch(req()).await.unwrap_err();
        (attempts_of(&err), calls.load(Ordering::SeqCst))
    };

    let calls = Arc::new(AtomicUsize::new(0));
    let spec = idle("w").command(command("c", failing("x", &calls)));
    assert_eq!(
        run(plain(), spec, Arc::clone(&calls)).await,
        (1, 1),
        "default: never"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder("rt")
        .command_retry(attempts(2))
        .build()
        .unwrap();
    let spec = idle("w").command(command("c", failing("x", &calls)));
    assert_eq!(run(rt, spec, Arc::clone(&calls)).await, (2, 2), "runtime");

    let calls = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder("rt")
        .command_retry(attempts(2))
        .build()
        .unwrap();
    let spec = idle("w")
        .command_retry(attempts(3))
        .command(command("c", failing("x", &calls)));
    assert_eq!(run(rt, spec, Arc::clone(&calls)).await, (3, 3), "worker");

    let calls = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder("rt")
        .command_retry(attempts(2))
        .build()
        .unwrap();
    let spec = idle("w")
        .command_retry(attempts(3))
        .command(command("c", failing("x", &calls)).retry(RetryPolicy::never()));
    assert_eq!(run(rt, spec, Arc::clone(&calls)).await, (1, 1), "command");
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_separate_attempts() {
    let starts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let origin = Instant::now();
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(
            command("c", flaky(3, "x", origin, &starts)).retry(attempts(4).backoff(
                Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(3)).unwrap(),
            )),
        ),
    )
    .await;
    let out = rt.dispatch(req()).await.unwrap();
    assert_eq!(out.attempts, 4);
    // Delays 1 s, 2 s, then 4 s capped to 3 s.
    assert_eq!(
        *starts.lock().unwrap(),
        [0, 1, 3, 6].map(Duration::from_secs)
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_never_retried_and_keep_their_public_face() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |_ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<CommandResponse, BoxError>(permanent(with_failure(
                    std::io::Error::other("row 7 is malformed"),
                    "bad_input",
                    "bad input",
                )))
            }
        })
    };
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(command("c", handler).retry(attempts(5))),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(err.code(), "command_failed");
    assert_eq!(err.failure().unwrap().code(), "bad_input");
}

#[tokio::test(start_paused = true)]
async fn a_payload_error_returned_by_a_handler_is_permanent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            let decoded = ctx.request().json::<u64>();
            async move {
                let n = decoded?;
                Ok(CommandResponse::message(n.to_string()))
            }
        })
    };
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(command("c", handler).retry(attempts(5))),
    )
    .await;
    let err = rt
        .dispatch(req().payload(serde_json::json!("not a number")))
        .await
        .unwrap_err();
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(err.failure().unwrap().code(), "invalid_payload");
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(err.failure().unwrap().message(), "payload required");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_retry_predicate_decides_which_errors_are_retried() {
    let transient_calls = Arc::new(AtomicUsize::new(0));
    let fatal_calls = Arc::new(AtomicUsize::new(0));
    let policy = attempts(4).retry_if(|e| e.to_string().contains("transient"));
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command_retry(policy)
            .command(command("t", failing("transient glitch", &transient_calls)))
            .command(command("f", failing("fatal", &fatal_calls))),
    )
    .await;
    let err = rt
        .dispatch(CommandRequest::new("w", "t"))
        .await
        .unwrap_err();
    assert_eq!(attempts_of(&err), 4);
    let err = rt
        .dispatch(CommandRequest::new("w", "f"))
        .await
        .unwrap_err();
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(
        (
            transient_calls.load(Ordering::SeqCst),
            fatal_calls.load(Ordering::SeqCst)
        ),
        (4, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn panics_are_never_retried() {
    quiet_expected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |_ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { panic!("expected panic: no retry") }
        })
    };
    let rt = plain();
    rt.register(idle("other")).unwrap();
    start_with(
        &rt,
        idle("w").command(command("c", handler).retry(attempts(5))),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rejections_never_reach_the_retry_loop() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command_retry(attempts(5))
            .command(command("busy", command_support::gated(&gate)).concurrency(1))
            .command(command("c", failing("x", &calls))),
    )
    .await;
    let busy = dispatch_in_background(&rt, "w", "busy");
    gate.arrived(1).await;
    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "busy"))
        .await
        .unwrap_err();
    assert!(err.is_rejection());
    assert_eq!(before.elapsed(), Duration::ZERO);
    assert_eq!(gate.count(), 1);
    gate.release(1);
    within(busy).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_the_backoff_ends_the_dispatch_without_another_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(
            command("c", failing("x", &calls))
                .retry(attempts(5).backoff(Backoff::constant(Duration::from_secs(60)))),
        ),
    )
    .await;
    let task = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "waiting in the backoff");
    let before = Instant::now();
    rt.cancel(rt.in_flight()[0].id).unwrap();
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(
        before.elapsed(),
        Duration::ZERO,
        "the backoff is abandoned at once"
    );
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::Requested,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!((end.outcome, end.attempts), (CommandOutcome::Cancelled, 1));
}

#[tokio::test(start_paused = true)]
async fn a_total_budget_bounds_attempts_and_caps_the_last_attempts_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let budget = attempts(10)
        .backoff(Backoff::constant(Duration::from_secs(1)))
        .total_budget(Duration::from_millis(3_500))
        .unwrap();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("fast", failing("x", &calls)).retry(budget.clone()))
            .command(
                command("hang", until_cancelled())
                    .timeout(Duration::from_secs(10))
                    .retry(budget),
            ),
    )
    .await;

    // Failures at 0, 1, 2 and 3 s; a fifth attempt would start at 4 s, past the budget.
    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "fast"))
        .await
        .unwrap_err();
    assert_eq!(attempts_of(&err), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(before.elapsed(), Duration::from_secs(3));

    // A hanging attempt's deadline is the budget's end, not its 10 s timeout.
    let before = Instant::now();
    let err = rt
        .dispatch(CommandRequest::new("w", "hang"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_timed_out");
    assert_eq!(attempts_of(&err), 1);
    assert_eq!(before.elapsed(), Duration::from_millis(3_500));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_attempt_is_never_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        handler_fn(move |ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                ctx.cancelled().await;
                Err::<CommandResponse, BoxError>("interrupted".into())
            }
        })
    };
    let rt = plain();
    let w = support::fake_with(&rt, "w", |s| {
        s.no_command_timeout()
            .cancel_commands_on_stop(Duration::from_secs(1))
            .command_retry(attempts(5))
            .command(command("c", handler))
    });
    rt.start("w").await.unwrap();
    let task = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    rt.stop("w").await.unwrap();
    let err = within(task).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::WorkerStopped,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(w.stops(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_predicate_can_tell_timeouts_from_failures() {
    // A timed-out attempt reaches the predicate as `AttemptTimedOut`, whose source is the
    // handler's own error (if it returned one after its deadline).
    let seen: Arc<Mutex<Vec<(bool, Option<String>)>>> = Arc::default();
    let policy = {
        let seen = Arc::clone(&seen);
        attempts(5).retry_if(move |e| {
            let timed_out = e.is::<workerkit_core::command::AttemptTimedOut>();
            seen.lock()
                .unwrap()
                .push((timed_out, e.source().map(ToString::to_string)));
            timed_out
        })
    };
    let handler = handler_fn(|ctx| async move {
        if ctx.attempt() == 1 {
            ctx.cancelled().await;
            Err::<CommandResponse, BoxError>("too slow".into())
        } else {
            Err("broken".into())
        }
    });
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(
            command("c", handler)
                .timeout(Duration::from_secs(1))
                .retry(policy),
        ),
    )
    .await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert_eq!(attempts_of(&err), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [(true, Some("too slow".to_owned())), (false, None)]
    );
}
