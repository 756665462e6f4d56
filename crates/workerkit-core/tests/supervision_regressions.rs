//! Regression tests from an independent review of supervised restart and the watchdog. Each
//! asserts the documented behaviour and failed on the code as first written.

#![allow(clippy::disallowed_methods)] // The tests spawn lifecycle calls to race them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::sync::Notify;
use workerkit_core::failure::BoxError;
use workerkit_core::retry::Backoff;
use workerkit_core::status::WorkerStatus;
use workerkit_core::supervise::{RestartPolicy, StallAction, Watchdog};
use workerkit_core::test_util::{Recorded, RecordingObserver};
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LifecycleState, LoopWorker, Runtime, Worker,
    WorkerContext, WorkerSpec, handler_fn,
};

const MS: Duration = Duration::from_millis(1);

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            match text {
                Some(text) if text.starts_with("expected panic") => {}
                _ => default(info),
            }
        }));
    });
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .expect("timed out waiting for a condition")
}

async fn until_worker(rt: &Runtime, name: &str, mut predicate: impl FnMut(&WorkerStatus) -> bool) {
    let name = name.to_owned();
    within(
        rt.subscribe()
            .wait_until(move |rt| predicate(&rt.worker(&name).unwrap().status)),
    )
    .await;
}

fn constant(ms: u64) -> RestartPolicy {
    RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(ms)))
        .unbounded()
}

fn supervision_names(recorder: &RecordingObserver) -> Vec<&'static str> {
    recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Supervision(s) => Some(s.kind.name()),
            _ => None,
        })
        .collect()
}

/// A hand-written worker that counts its starts and stops, keeps its contexts, and can block
/// its first stop until released.
#[derive(Clone, Default)]
struct Probe {
    starts: Arc<AtomicUsize>,
    stops: Arc<AtomicUsize>,
    ctxs: Arc<Mutex<Vec<WorkerContext>>>,
    block_first_stop: Arc<AtomicBool>,
    stop_entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Worker for Probe {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.ctxs.lock().unwrap().push(ctx);
        Ok(())
    }

    async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        if self.block_first_stop.swap(false, Ordering::SeqCst) {
            self.stop_entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

impl Probe {
    fn ctx(&self, n: usize) -> WorkerContext {
        self.ctxs.lock().unwrap()[n].clone()
    }
}

// ---- Finding 1 -----------------------------------------------------------------------------

/// docs/supervision.md: "no restart is scheduled once a shutdown has begun", "a pending restart
/// adds nothing to a shutdown (it is cancelled at once)"; lifecycle.md: the shutdown is
/// committed from the call on, before it waits for the gate.
///
/// The supervisor task holds the lifecycle gate while it reaps the failed incarnation; when the
/// backoff has already elapsed by then it keeps the gate and starts the new incarnation. A
/// shutdown requested meanwhile (already `shutting_down`, waiting for the gate) does not stop
/// it: `ops::start(.., Some(generation))` never checks `shutting_down`, and `shutdown_with`
/// cancels pending restarts only once it has won the gate. A new incarnation is started (factory
/// call, `Worker::start` under the start timeout) after the shutdown began, and is then drained
/// and stopped by that shutdown.
#[tokio::test(start_paused = true)]
async fn r1_a_restart_never_starts_after_a_shutdown_was_requested() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .jitter_seed(7)
        .build()
        .unwrap();
    let probe = Probe::default();
    probe.block_first_stop.store(true, Ordering::SeqCst);
    rt.register(
        WorkerSpec::new("w", probe.clone())
            .restart(constant(10))
            .no_stop_timeout(),
    )
    .unwrap();
    rt.start("w").await.unwrap();

    probe
        .ctx(0)
        .report_failure(std::io::Error::other("boom"))
        .unwrap();
    // The supervisor task holds the gate and is inside the failed incarnation's stop.
    within(probe.stop_entered.notified()).await;
    // The stop takes longer than the backoff: no backoff is left when it returns.
    tokio::time::advance(50 * MS).await;

    let rt2 = rt.clone();
    let shutdown = tokio::spawn(async move { rt2.shutdown().await });
    while !rt.status().shutting_down {
        tokio::task::yield_now().await;
    }
    // The shutdown has begun (readiness false, admission closed); now the stop returns.
    probe.release.notify_one();
    let report = within(shutdown).await.unwrap();
    assert!(report.is_ok(), "{report:?}");

    let kinds = supervision_names(&recorder);
    assert_eq!(
        probe.starts.load(Ordering::SeqCst),
        1,
        "a new incarnation was started after the shutdown had begun; supervision events: {kinds:?}"
    );
    assert!(!kinds.contains(&"restarted"), "{kinds:?}");
}

/// Same root cause, without the zero-backoff path: the supervisor's backoff ends while another
/// lifecycle operation holds the gate, so it queues for the gate *before* a shutdown that is
/// requested afterwards. When the gate frees, the supervisor wins it, finds its generation still
/// pending (nothing cancelled it: shutdown has only set `shutting_down`) and restarts the worker.
#[tokio::test(start_paused = true)]
async fn r1b_a_restart_queued_on_the_gate_does_not_run_once_shutdown_is_requested() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .jitter_seed(7)
        .build()
        .unwrap();
    let probe = Probe::default();
    rt.register(WorkerSpec::new("w", probe.clone()).restart(constant(100)))
        .unwrap();
    // A second worker whose (requested) start blocks, holding the gate.
    let slow_entered = Arc::new(Notify::new());
    let slow_release = Arc::new(Notify::new());
    {
        let (entered, release) = (Arc::clone(&slow_entered), Arc::clone(&slow_release));
        rt.register(
            WorkerSpec::new(
                "slow",
                workerkit_core::worker_fn(move |_ctx| {
                    let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                    async move {
                        entered.notify_one();
                        release.notified().await;
                        Ok(())
                    }
                }),
            )
            .no_start_timeout(),
        )
        .unwrap();
    }
    rt.start("w").await.unwrap();
    probe
        .ctx(0)
        .report_failure(std::io::Error::other("boom"))
        .unwrap();
    // Reaped, now in the 100 ms backoff with the gate released.
    until_worker(&rt, "w", |s| s.state == LifecycleState::Restarting).await;
    within(async {
        while probe.stops.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let rt_slow = rt.clone();
    let slow = tokio::spawn(async move { rt_slow.start("slow").await });
    within(slow_entered.notified()).await;
    // The backoff ends while "slow" holds the gate: the supervisor queues for it.
    tokio::time::advance(200 * MS).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let rt2 = rt.clone();
    let shutdown = tokio::spawn(async move { rt2.shutdown().await });
    while !rt.status().shutting_down {
        tokio::task::yield_now().await;
    }
    slow_release.notify_one();
    let _ = within(slow).await.unwrap();
    let _ = within(shutdown).await.unwrap();

    let kinds = supervision_names(&recorder);
    assert_eq!(
        probe.starts.load(Ordering::SeqCst),
        1,
        "restarted after shutdown began; supervision events: {kinds:?}"
    );
}

// ---- Finding 2 -----------------------------------------------------------------------------

fn stalling_spec(name: &str, action: StallAction, policy: RestartPolicy) -> WorkerSpec {
    let crash = handler_fn(|_ctx| async move {
        if true {
            panic!("expected panic: crash command");
        }
        Ok(CommandResponse::empty())
    });
    WorkerSpec::from_factory(name, || {
        // Never beats: stalls one watchdog timeout after it runs.
        LoopWorker::new(|ctx: WorkerContext| async move {
            ctx.stop_requested().await;
            Ok(())
        })
    })
    .restart(policy)
    .watchdog(Watchdog::new(100 * MS, action).unwrap())
    .command(CommandSpec::new("crash", crash))
}

/// docs/supervision.md, status fields: `stalled` is "cleared ... when the incarnation fails".
/// `ops::command_failure` (a command panic failing the worker) never clears `sup.stalled`,
/// unlike `fail_with`. The incarnation's watchdog exits at the stop signal, so nothing clears it
/// afterwards. A stalled `fail_liveness` worker whose command panics becomes `restarting` with
/// `stalled: true`; drained (restarting -> draining), the stale flag counts in the aggregate's
/// `fail_liveness` (which counts running *and draining* workers): /livez fails and stays failed
/// until someone stops the worker, although no incarnation is even alive.
#[tokio::test(start_paused = true)]
async fn r2_a_command_panic_clears_the_stall_and_a_drained_restart_stays_live() {
    quiet_expected_panics();
    let rt = Runtime::builder("rt").jitter_seed(7).build().unwrap();
    rt.register(stalling_spec(
        "w",
        StallAction::FailLiveness,
        constant(60_000),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.stalled).await;
    assert!(
        !rt.liveness().live,
        "fail_liveness while stalled (as documented)"
    );

    let err = rt
        .dispatch(CommandRequest::new("w", "crash"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_panicked");
    let s = rt.worker("w").unwrap().status;
    assert_eq!(s.state, LifecycleState::Restarting);

    rt.drain("w").await.unwrap();
    let s = rt.worker("w").unwrap().status;
    assert_eq!(s.state, LifecycleState::Draining);
    let liveness = rt.liveness();
    assert!(
        liveness.live && !s.stalled,
        "no incarnation is alive, yet: stalled={} liveness={:?}",
        s.stalled,
        liveness
    );
}

/// The same stale flag, visible on its own: with no restart policy the worker ends `failed`
/// and still reports `stalled: true`.
#[tokio::test(start_paused = true)]
async fn r2b_a_worker_failed_by_a_command_panic_is_not_reported_stalled() {
    quiet_expected_panics();
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(stalling_spec(
        "w",
        StallAction::Report,
        RestartPolicy::never(),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.stalled).await;
    let _ = rt.dispatch(CommandRequest::new("w", "crash")).await;
    let s = rt.worker("w").unwrap().status;
    assert_eq!(s.state, LifecycleState::Failed);
    assert!(!s.stalled, "a failed incarnation still reported stalled");
}

// ---- Finding 3 -----------------------------------------------------------------------------

/// Starts `w`, fails its first incarnation through `probe`, and returns the streamed
/// transition of `w` to `restarting`.
async fn start_fail_and_stream_restarting(
    rt: &Runtime,
    probe: &Probe,
) -> workerkit_core::observe::StreamEvent {
    let mut events = rt.events();
    rt.start("w").await.unwrap();
    probe
        .ctx(0)
        .report_failure(std::io::Error::other("boom"))
        .unwrap();
    within(async {
        loop {
            let e = events.recv().await.expect("open");
            if e.worker.is_some() && e.to == LifecycleState::Restarting {
                break e;
            }
        }
    })
    .await
}

/// docs/supervision.md, events: the event stream's `reason` is "the public failure code for a
/// transition to `restarting` or `failed`". `Inner::stream_transition` computes it at delivery
/// with `State::last_failure_code`, which looks the worker up *by qualified name* and takes the
/// first record: after `remove` + `register` of the same name that is the tombstone (whose
/// `last_failure` `remove` cleared), so every failure/restart of the new worker streams
/// `reason: None`.
#[tokio::test(start_paused = true)]
async fn r3_the_event_stream_reason_survives_remove_and_reregister() {
    let rt = Runtime::builder("rt").jitter_seed(7).build().unwrap();
    let first = Probe::default();
    rt.register(WorkerSpec::new("w", first.clone())).unwrap();
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    rt.remove("w").await.unwrap();

    let second = Probe::default();
    rt.register(WorkerSpec::new("w", second.clone()).restart(constant(1000)))
        .unwrap();
    let restarting = start_fail_and_stream_restarting(&rt, &second).await;
    assert_eq!(
        restarting.reason.as_deref(),
        Some("worker_failed"),
        "{restarting:?}"
    );
}

/// Control for r3 (passes): without the remove/re-register, the same sequence streams the code.
#[tokio::test(start_paused = true)]
async fn r3_control_the_reason_is_streamed_without_a_tombstone() {
    let rt = Runtime::builder("rt").jitter_seed(7).build().unwrap();
    let second = Probe::default();
    rt.register(WorkerSpec::new("w", second.clone()).restart(constant(1000)))
        .unwrap();
    let restarting = start_fail_and_stream_restarting(&rt, &second).await;
    assert_eq!(restarting.reason.as_deref(), Some("worker_failed"));
}

// Suspicion, not reproduced: the stream's `reason` is read at *delivery* (current
// `last_failure`), not at the transition; a delivery lagging behind a restart's successful start
// (which clears `last_failure`) would stream `None`.

// ---- Finding 4 -----------------------------------------------------------------------------

/// `Watchdog::new` rejects only a zero timeout, but `watch` ticks every `timeout / 2`; for a
/// 1 ns timeout that is zero, and `tokio::time::interval_at` panics ("`period` must be
/// non-zero") inside the watchdog task. The panic is swallowed by the task: the worker is
/// silently never watched (never stalled), although the configuration was accepted.
#[tokio::test(start_paused = true)]
async fn r4_a_one_nanosecond_watchdog_is_rejected_or_works() {
    // Below the timer resolution: a typed rejection.
    assert_eq!(
        Watchdog::new(Duration::from_nanos(1), StallAction::Report).unwrap_err(),
        workerkit_core::supervise::SupervisionError::WatchdogTimeoutTooShort
    );
    // The shortest accepted timeout works.
    let watchdog = Watchdog::new(
        workerkit_core::supervise::MIN_WATCHDOG_TIMEOUT,
        StallAction::Report,
    )
    .unwrap();
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(
        WorkerSpec::from_factory("w", || {
            LoopWorker::new(|ctx: WorkerContext| async move {
                ctx.stop_requested().await;
                Ok(())
            })
        })
        .watchdog(watchdog),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        rt.subscribe()
            .wait_until(|rt| rt.worker("w").unwrap().status.stalled)
            .await;
    })
    .await;
    assert!(
        found.is_ok(),
        "a worker that never beats was never found stalled (watchdog task panicked)"
    );
}

// ---- Finding 5 -----------------------------------------------------------------------------

/// `Worker::stop`: "Called once per requested stop". With `WorkerSpec::new`, the supervisor's
/// reap (`ops::reap`) already called the instance's `stop` for the failed incarnation; a `stop`
/// (or `stop_all`/`shutdown`) during the backoff calls it a second time for the same
/// incarnation (`ops::stop` does not know the incarnation was reaped). supervision.md says "If
/// the failed incarnation had not been stopped yet, its stop runs now".
#[tokio::test(start_paused = true)]
async fn r5_a_stop_during_backoff_does_not_stop_a_reaped_instance_again() {
    let rt = Runtime::builder("rt").jitter_seed(7).build().unwrap();
    let probe = Probe::default();
    rt.register(WorkerSpec::new("w", probe.clone()).restart(constant(10_000)))
        .unwrap();
    rt.start("w").await.unwrap();
    probe
        .ctx(0)
        .report_failure(std::io::Error::other("boom"))
        .unwrap();
    within(async {
        while probe.stops.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    rt.stop("w").await.unwrap();
    assert_eq!(probe.starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        probe.stops.load(Ordering::SeqCst),
        1,
        "one incarnation, stopped twice"
    );
}
