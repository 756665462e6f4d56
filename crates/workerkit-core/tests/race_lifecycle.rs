//! Multi-thread races between lifecycle operations, context calls and event delivery.
//!
//! Each test repeats its race on a fresh runtime many times; the racers line up on a
//! `tokio::sync::Barrier` and nothing sleeps. Each iteration checks that the outcome is one of the
//! serialisations the lifecycle gate allows, and that nothing is left in a transitional state.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use tokio::sync::{Barrier, watch};
use workerkit_core::error::ContextError;
use workerkit_core::failure::{self, BoxError};
use workerkit_core::observe::{
    FailureEvent, Observer, OperationEvent, ReadinessEvent, TransitionEvent,
};
use workerkit_core::test_util::{FakeControl, FakeWorker, Recorded, RecordingObserver};
use workerkit_core::{
    ExitReason, LifecycleError, LifecycleState, LoopWorker, Runtime, Worker, WorkerContext,
    WorkerSpec,
};

const ITERATIONS: usize = 500;

// ---- helpers -------------------------------------------------------------------------------

#[allow(clippy::disallowed_methods)] // Races need real tasks on the multi-thread scheduler.
fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Bounds a wait on the real clock, so a lost wake-up fails the test instead of hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

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

fn runtime(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap()
}

fn state(rt: &Runtime, worker: &str) -> LifecycleState {
    rt.worker(worker).unwrap().status.state
}

/// The sequence numbers of every ordered event, in delivery order.
fn seqs(recorder: &RecordingObserver) -> Vec<u64> {
    recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Transition(e) => Some(e.seq),
            Recorded::Readiness(e) => Some(e.seq),
            Recorded::Failure(e) => Some(e.seq),
            Recorded::Operation(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

/// Ordered events are delivered exactly once each, in sequence order, with no gap.
fn assert_gap_free(recorder: &RecordingObserver) {
    let seqs = seqs(recorder);
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "events delivered out of order or lost");
}

/// The worker's own transitions, as `from->to`.
fn transitions(recorder: &RecordingObserver, worker: &str) -> Vec<String> {
    let prefix = format!("T {worker} ");
    recorder
        .briefs()
        .iter()
        .filter_map(|b| b.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

/// Operation events come in started/ended pairs that never interleave: the gate serialises.
fn assert_operations_serialised(recorder: &RecordingObserver) -> Vec<String> {
    let ops: Vec<String> = recorder
        .all_briefs()
        .into_iter()
        .filter(|b| b.starts_with("O "))
        .collect();
    assert_eq!(ops.len() % 2, 0, "{ops:#?}");
    for pair in ops.chunks(2) {
        let started = pair[0]
            .strip_suffix(" started")
            .unwrap_or_else(|| panic!("operations interleaved: {ops:#?}"));
        let ended = &pair[1];
        assert!(
            ended.starts_with(&format!("{started} succeeded"))
                || ended.starts_with(&format!("{started} failed:")),
            "operations interleaved: {ops:#?}"
        );
    }
    ops
}

/// A worker whose start and stop yield to the scheduler, to widen the race windows.
struct YieldingWorker;

impl Worker for YieldingWorker {
    async fn start(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        tokio::task::yield_now().await;
        Ok(())
    }
}

// ---- races -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_races_stop_of_the_same_worker() {
    for i in 0..ITERATIONS {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        rt.register(WorkerSpec::new("w", YieldingWorker)).unwrap();
        let initially_running = i % 2 == 1;
        if initially_running {
            rt.start("w").await.unwrap();
        }
        recorder.clear();

        let barrier = Arc::new(Barrier::new(2));
        let start = {
            let (rt, barrier) = (rt.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                rt.start("w").await
            }
        };
        let stop = {
            let (rt, barrier) = (rt.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                rt.stop("w").await
            }
        };
        // The task spawned last tends to pass the barrier first: alternate the spawn order.
        let (starter, stopper) = if i / 2 % 2 == 0 {
            let starter = spawn(start);
            (starter, spawn(stop))
        } else {
            let stopper = spawn(stop);
            (spawn(start), stopper)
        };
        let started = within("start", starter).await.unwrap();
        let stopped = within("stop", stopper).await.unwrap();

        let worker = rt.worker("w").unwrap().status;
        let seen = transitions(&recorder, "rt/w");
        let started_first = match (initially_running, &started, &stopped) {
            // From `registered`: start then stop, or a refused stop then start.
            (false, Ok(_), Ok(_)) => true,
            (
                false,
                Ok(_),
                Err(LifecycleError::InvalidState {
                    state: LifecycleState::Registered,
                    ..
                }),
            ) => false,
            // From `running`: a refused start then stop, or stop then a restart.
            (
                true,
                Err(LifecycleError::InvalidState {
                    state: LifecycleState::Running,
                    ..
                }),
                Ok(_),
            ) => true,
            (true, Ok(_), Ok(_)) => false,
            other => panic!("iteration {i}: impossible outcome {other:?}"),
        };
        let (final_state, expected): (_, &[&str]) = match (initially_running, started_first) {
            (false, true) => (
                LifecycleState::Stopped,
                &[
                    "registered->starting",
                    "starting->running",
                    "running->stopping",
                    "stopping->stopped",
                ],
            ),
            (false, false) => (
                LifecycleState::Running,
                &["registered->starting", "starting->running"],
            ),
            (true, true) => (
                LifecycleState::Stopped,
                &["running->stopping", "stopping->stopped"],
            ),
            (true, false) => (
                LifecycleState::Running,
                &[
                    "running->stopping",
                    "stopping->stopped",
                    "stopped->starting",
                    "starting->running",
                ],
            ),
        };
        assert_eq!(worker.state, final_state, "iteration {i}");
        assert_eq!(seen, expected, "iteration {i}");
        assert_eq!(worker.ready, final_state == LifecycleState::Running);
        assert_eq!(rt.status().state, final_state, "iteration {i}");
        let expected_incarnation = match (initially_running, started_first) {
            (true, false) => 2,
            _ => 1,
        };
        assert_eq!(worker.incarnation, expected_incarnation, "iteration {i}");
        let ops = assert_operations_serialised(&recorder);
        assert_eq!(ops.len(), 4, "iteration {i}: {ops:#?}");
        assert_gap_free_after_clear(&recorder, i);
    }
}

/// After `clear()`, the remaining ordered events are still consecutive and increasing.
fn assert_gap_free_after_clear(recorder: &RecordingObserver, iteration: usize) {
    let seqs = seqs(recorder);
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "iteration {iteration}: events out of order: {seqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_races_a_failure_reported_by_the_worker() {
    for i in 0..ITERATIONS {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        let (worker, control) = FakeWorker::new();
        rt.register(WorkerSpec::new("w", worker)).unwrap();
        rt.start("w").await.unwrap();
        let ctx = control.context(0).unwrap();

        let barrier = Arc::new(Barrier::new(2));
        let drain = {
            let (rt, barrier) = (rt.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                rt.drain("w").await
            }
        };
        let report = {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                ctx.report_failure(failure::with_failure(
                    std::io::Error::other("broker gone"),
                    "broker_unavailable",
                    "broker unavailable",
                ))
            }
        };
        let (drainer, reporter) = if i % 2 == 0 {
            let drainer = spawn(drain);
            (drainer, spawn(report))
        } else {
            let reporter = spawn(report);
            (spawn(drain), reporter)
        };
        let drained = within("drain", drainer).await.unwrap();
        let reported = within("report", reporter).await.unwrap();

        // A failure is allowed while running and while draining: it always lands.
        reported.unwrap_or_else(|e| panic!("iteration {i}: report refused: {e:?}"));
        let seen = transitions(&recorder, "rt/w");
        let status = rt.worker("w").unwrap().status;
        assert_eq!(status.state, LifecycleState::Failed, "iteration {i}");
        assert!(!status.ready);
        assert!(!status.accepting_work);
        assert_eq!(status.last_failure.unwrap().code, "broker_unavailable");
        match drained {
            Ok(_) => assert_eq!(
                seen[2..],
                ["running->draining", "draining->failed"],
                "iteration {i}"
            ),
            Err(LifecycleError::InvalidState {
                state: LifecycleState::Failed,
                ..
            }) => assert_eq!(seen[2..], ["running->failed"], "iteration {i}"),
            Err(other) => panic!("iteration {i}: unexpected drain error {other:?}"),
        }
        let failures = recorder.failures();
        assert_eq!(failures.len(), 1, "iteration {i}");
        assert!(failures[0].lifecycle_changed);
        let exit = within("wait_exit", rt.wait_exit("w")).await.unwrap();
        assert_eq!(exit.reason, ExitReason::Failed);
        assert_operations_serialised(&recorder);
        assert_gap_free(&recorder);
    }
}

/// A worker with a background task that reports a failure as soon as the stop signal fires;
/// its `stop` waits for that task, so the report lands while the worker is stopping.
struct ReportsWhileStopping {
    done: Option<watch::Receiver<Option<Result<(), ContextError>>>>,
}

impl Worker for ReportsWhileStopping {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        let (tx, rx) = watch::channel(None);
        self.done = Some(rx);
        spawn(async move {
            ctx.stop_requested().await;
            let result = ctx.report_failure(failure::with_failure(
                std::io::Error::other("flush: disk full"),
                "flush_failed",
                "flush failed",
            ));
            tx.send_replace(Some(result));
        });
        Ok(())
    }

    async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        if let Some(mut done) = self.done.take() {
            let result = done
                .wait_for(Option::is_some)
                .await
                .map_err(|_| "reporter vanished")?
                .clone();
            if let Some(Err(refused)) = result {
                return Err(Box::new(refused));
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_races_a_failure_reported_while_stopping() {
    for i in 0..ITERATIONS {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        rt.register(WorkerSpec::new("a", ReportsWhileStopping { done: None }))
            .unwrap();
        rt.register(WorkerSpec::new("b", YieldingWorker)).unwrap();
        rt.start_all().await.unwrap();

        let report = within("shutdown", rt.shutdown())
            .await
            .unwrap_or_else(|e| panic!("iteration {i}: {e:?}"));
        assert_eq!(report.stopped_names(), ["rt/b", "rt/a"], "iteration {i}");

        let a = rt.worker("a").unwrap().status;
        assert_eq!(a.state, LifecycleState::Stopped, "iteration {i}");
        assert_eq!(a.last_failure.unwrap().code, "flush_failed");
        assert_eq!(
            transitions(&recorder, "rt/a")[2..],
            [
                "running->draining",
                "draining->stopping",
                "stopping->stopped"
            ],
            "iteration {i}"
        );
        let failures = recorder.failures();
        assert_eq!(failures.len(), 1, "iteration {i}");
        assert!(!failures[0].lifecycle_changed);
        assert_eq!(rt.wait_exit("a").await.unwrap().reason, ExitReason::Stopped);
        assert_eq!(state(&rt, "b"), LifecycleState::Stopped);
        assert_eq!(rt.status().state, LifecycleState::Stopped);
        assert_gap_free(&recorder);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_start_all_starts_each_worker_once() {
    for i in 0..ITERATIONS {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        let controls: Vec<FakeControl> = ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                let (worker, control) = FakeWorker::new();
                rt.register(WorkerSpec::new(name, worker)).unwrap();
                control
            })
            .collect();

        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (rt, barrier) = (rt.clone(), barrier.clone());
                spawn(async move {
                    barrier.wait().await;
                    rt.start_all().await
                })
            })
            .collect();
        for racer in racers {
            within("start_all", racer)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("iteration {i}: {e:?}"));
        }

        for (name, control) in ["a", "b", "c"].iter().zip(&controls) {
            assert_eq!(control.starts(), 1, "iteration {i}: {name} started twice");
            assert_eq!(state(&rt, name), LifecycleState::Running);
            assert_eq!(
                transitions(&recorder, &format!("rt/{name}")),
                ["registered->starting", "starting->running"]
            );
        }
        assert!(rt.status().ready);
        let ops = assert_operations_serialised(&recorder);
        assert_eq!(
            ops,
            [
                "O start_all started",
                "O start_all succeeded",
                "O start_all started",
                "O start_all succeeded",
            ]
        );
        assert_gap_free(&recorder);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ready_storms_while_stop_runs() {
    const STORMERS: usize = 3;
    for i in 0..ITERATIONS {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        let (worker, control) = FakeWorker::new();
        rt.register(WorkerSpec::new("w", worker)).unwrap();
        rt.start("w").await.unwrap();
        let ctx = control.context(0).unwrap();

        let barrier = Arc::new(Barrier::new(STORMERS + 1));
        let stormers: Vec<_> = (0..STORMERS)
            .map(|k| {
                let (ctx, barrier) = (ctx.clone(), barrier.clone());
                spawn(async move {
                    barrier.wait().await;
                    for n in 0..50 {
                        match ctx.set_ready((n + k) % 2 == 0) {
                            Ok(()) => {}
                            Err(ContextError::InvalidState { state, .. }) => {
                                assert!(
                                    matches!(
                                        state,
                                        LifecycleState::Stopping | LifecycleState::Stopped
                                    ),
                                    "refused in {state:?}"
                                );
                                return;
                            }
                            Err(other) => panic!("unexpected {other:?}"),
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let stopper = {
            let (rt, barrier) = (rt.clone(), barrier.clone());
            spawn(async move {
                barrier.wait().await;
                rt.stop("w").await
            })
        };
        within("stop", stopper)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("iteration {i}: {e:?}"));
        for stormer in stormers {
            within("stormer", stormer).await.unwrap();
        }

        let status = rt.worker("w").unwrap().status;
        assert_eq!(status.state, LifecycleState::Stopped, "iteration {i}");
        assert!(!status.ready);
        assert!(!rt.status().ready);
        assert!(matches!(
            ctx.set_ready(true),
            Err(ContextError::InvalidState {
                state: LifecycleState::Stopped,
                ..
            })
        ));
        assert_gap_free(&recorder);

        // Readiness events are emitted only on change, so the worker's alternate; none says
        // `true` once the stop began; the last says `false`.
        let briefs = recorder.briefs();
        let readiness: Vec<&String> = briefs.iter().filter(|b| b.starts_with("R rt/w ")).collect();
        for pair in readiness.windows(2) {
            assert_ne!(pair[0], pair[1], "iteration {i}: duplicate readiness event");
        }
        assert_eq!(
            readiness.last().map(|s| s.as_str()),
            Some("R rt/w false"),
            "iteration {i}"
        );
        let stopping = briefs
            .iter()
            .position(|b| b == "T rt/w running->stopping")
            .unwrap();
        assert!(
            !briefs[stopping..].iter().any(|b| b == "R rt/w true"),
            "iteration {i}: ready after the stop began: {briefs:#?}"
        );
    }
}

/// Checks, without recording, that ordered events arrive once each and in sequence order.
#[derive(Default)]
struct OrderChecker {
    last: AtomicU64,
    delivered: AtomicU64,
    out_of_order: AtomicU64,
}

impl OrderChecker {
    fn see(&self, seq: u64) {
        self.delivered.fetch_add(1, Ordering::SeqCst);
        if self.last.swap(seq, Ordering::SeqCst) >= seq {
            self.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn assert_in_order(&self) {
        assert_eq!(
            self.out_of_order.load(Ordering::SeqCst),
            0,
            "events delivered out of order (two threads delivered at once)"
        );
        assert_eq!(
            self.delivered.load(Ordering::SeqCst),
            self.last.load(Ordering::SeqCst),
            "events lost or delivered twice"
        );
    }
}

impl Observer for OrderChecker {
    fn on_transition(&self, event: &TransitionEvent) {
        self.see(event.seq);
    }
    fn on_readiness(&self, event: &ReadinessEvent) {
        self.see(event.seq);
    }
    fn on_failure(&self, event: &FailureEvent) {
        self.see(event.seq);
    }
    fn on_operation(&self, event: &OperationEvent) {
        self.see(event.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ready_storm_from_blocking_threads_delivers_events_in_order() {
    // Context calls are synchronous and may come from any thread. Three threads hammering one
    // worker's readiness contend for the single event-delivery role; a hand-off that lets two
    // threads deliver at once shows up as an out-of-order sequence number.
    const THREADS: usize = 3;
    const CALLS: usize = 1_000_000;
    let checker = Arc::new(OrderChecker::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(checker.clone())
        .build()
        .unwrap();
    let (worker, control) = FakeWorker::new();
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start("w").await.unwrap();
    let ctx = control.context(0).unwrap();

    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let stormers: Vec<_> = (0..THREADS)
        .map(|k| {
            let (ctx, barrier) = (ctx.clone(), barrier.clone());
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                for n in 0..CALLS {
                    ctx.set_ready((n + k) % 2 == 0).unwrap();
                }
            })
        })
        .collect();
    for stormer in stormers {
        within("stormer", stormer).await.unwrap();
    }
    checker.assert_in_order();
    assert!(checker.delivered.load(Ordering::SeqCst) > 1000);

    rt.stop("w").await.unwrap();
    checker.assert_in_order();
    assert!(!rt.worker("w").unwrap().status.ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exit_from_many_tasks_while_the_worker_panics() {
    const WAITERS: usize = 8;
    quiet_expected_panics();
    for i in 0..ITERATIONS {
        let rt = runtime(&RecordingObserver::new());
        let barrier = Arc::new(Barrier::new(WAITERS + 1));
        let (go, _) = watch::channel(false);
        let go = Arc::new(go);
        let worker = {
            let go = go.clone();
            LoopWorker::new(move |_ctx| {
                let mut go = go.subscribe();
                async move {
                    let _ = go.wait_for(|go| *go).await;
                    panic!("expected panic: race");
                }
            })
        };
        rt.register(WorkerSpec::new("w", worker)).unwrap();
        rt.start("w").await.unwrap();

        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let (rt, barrier) = (rt.clone(), barrier.clone());
                spawn(async move {
                    barrier.wait().await;
                    rt.wait_exit("w").await
                })
            })
            .collect();
        barrier.wait().await;
        go.send_replace(true);
        for waiter in waiters {
            let exit = within("wait_exit", waiter)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("iteration {i}: {e:?}"));
            assert_eq!(exit.reason, ExitReason::Panicked, "iteration {i}");
            assert_eq!(exit.incarnation, 1);
            assert_eq!(exit.failure.as_ref().map(|f| f.code()), Some("panic"));
        }
        assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    }
}
