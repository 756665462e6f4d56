//! Multi-thread races between command dispatch and lifecycle operations, cancellation, caller
//! drops and concurrency limits.
//!
//! Each test repeats its race on a fresh runtime many times, the racers lined up on a
//! `tokio::sync::Barrier` and jittered by a seeded number of scheduler yields. Every wait is bounded
//! on the real clock, so a lost wake-up fails the test instead of hanging it. Each iteration checks
//! that the outcome is one the runtime allows, that every observed dispatch start has exactly one
//! end, and that nothing is left in flight.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use support::command_tally::{CommandTally, TAG};
use tokio::sync::{Barrier, Notify, Semaphore};
use workerkit_core::command::{
    AdmissionMode, CancelError, CancelReason, CommandResult, DispatchError, DispatchId,
};
use workerkit_core::observe::{CommandOutcome, ReadinessEvent};
use workerkit_core::test_util::{Recorded, RecordingObserver};
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LifecycleState, Observer, Runtime,
    RuntimeBuilder, WorkerSpec, handler_fn, worker_fn,
};

const ITERATIONS: u64 = 500;

// ---- helpers -------------------------------------------------------------------------------

/// Bounds a wait on the real clock, so a lost wake-up fails the test instead of hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// Polls `condition` (yielding, then sleeping 1 ms) until it holds, within the real-clock bound.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        let mut spins = 0_u32;
        while !condition() {
            spins += 1;
            if spins < 64 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
}

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .is_some_and(|s| s.starts_with("expected panic"));
            if !expected {
                default(info);
            }
        }));
    });
}

/// SplitMix64, seeded per test and iteration, to jitter the racers reproducibly.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// A runtime named `rt` with a command tally, configured by `configure`.
fn runtime(
    tally: &CommandTally,
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> Runtime {
    configure(Runtime::builder("rt").with_observer(tally.clone()))
        .build()
        .unwrap()
}

/// A worker that does nothing itself; its `stop` sets `stopped`.
fn idle_worker(name: &str, stopped: &Arc<AtomicBool>) -> WorkerSpec {
    let stopped = Arc::clone(stopped);
    WorkerSpec::new(
        name,
        worker_fn(|_ctx| async { Ok(()) }).on_stop(move |_ctx| {
            stopped.store(true, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
}

fn request(worker: &'static str, command: &'static str, tag: &impl ToString) -> CommandRequest {
    CommandRequest::new(worker, command).metadata(TAG, tag.to_string())
}

/// Nothing in flight or waiting, anywhere.
fn assert_quiet(rt: &Runtime, when: &str) {
    assert!(rt.in_flight().is_empty(), "{when}: {:?}", rt.in_flight());
    assert_eq!(rt.status().in_flight, 0, "{when}");
    for w in rt.workers() {
        assert_eq!(w.status.in_flight, 0, "{when}: {}", w.qualified_name);
        assert_eq!(w.status.waiting, 0, "{when}: {}", w.qualified_name);
    }
}

async fn shut_down_cleanly(rt: &Runtime, when: &str) {
    let report = within("shutdown", rt.shutdown())
        .await
        .unwrap_or_else(|err| panic!("{when}: {err}"));
    assert_eq!(report.lingering_tasks, 0, "{when}: {report:?}");
    assert!(!report.deadline_exceeded, "{when}: {report:?}");
    assert_quiet(rt, when);
}

/// The single dispatch tagged `tag`, which must have started and ended exactly once.
fn ended(tally: &CommandTally, tag: &impl ToString) -> (DispatchId, CommandOutcome) {
    let tag = tag.to_string();
    let seen = tally.by_tag(&tag);
    assert_eq!(seen.len(), 1, "dispatch {tag}: {seen:#?}");
    let (id, s) = &seen[0];
    assert_eq!((s.starts, s.ends), (1, 1), "dispatch {tag}: {s:#?}");
    (*id, s.outcome.expect("ended"))
}

/// The attempts reported by the end event of the single dispatch tagged `tag`.
fn attempts(tally: &CommandTally, tag: &impl ToString) -> u32 {
    let seen = tally.by_tag(&tag.to_string());
    assert_eq!(seen.len(), 1);
    seen[0].1.attempts
}

/// A command that records, when its handler finishes, whether its worker's `stop` had run.
fn recording_op(
    stopped: &Arc<AtomicBool>,
    finished: &Arc<AtomicUsize>,
    stopped_at_finish: &Arc<AtomicUsize>,
    work: u64,
) -> CommandSpec {
    let (stopped, finished, stopped_at_finish) = (
        Arc::clone(stopped),
        Arc::clone(finished),
        Arc::clone(stopped_at_finish),
    );
    CommandSpec::new(
        "op",
        handler_fn(move |_ctx| {
            let (stopped, finished, stopped_at_finish) = (
                Arc::clone(&stopped),
                Arc::clone(&finished),
                Arc::clone(&stopped_at_finish),
            );
            async move {
                yields(work).await;
                if work % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if stopped.load(Ordering::SeqCst) {
                    stopped_at_finish.fetch_add(1, Ordering::SeqCst);
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(CommandResponse::message("done"))
            }
        }),
    )
}

// ---- dispatch vs lifecycle ---------------------------------------------------------------------

/// A dispatch racing a drain of its worker is admitted (and completes) or rejected as
/// `invalid_worker_state`; the shutdown that follows never stops the worker under a running
/// command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_races_drain_of_the_same_worker() {
    let (mut admitted, mut rejected) = (0, 0);
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0xD4A1 ^ i);
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let stopped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let stopped_at_finish = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let work = rng.below(40);
        let op = recording_op(&stopped, &finished, &stopped_at_finish, work);
        let counted = {
            let started = Arc::clone(&started);
            CommandSpec::new(
                "counted",
                handler_fn(move |_ctx| {
                    started.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(Ok(CommandResponse::empty()))
                }),
            )
        };
        rt.register(idle_worker("w", &stopped).command(op).command(counted))
            .unwrap();
        rt.start_all().await.unwrap();

        let barrier = Arc::new(Barrier::new(2));
        let (jitter_a, jitter_b) = (rng.below(8), rng.below(8));
        let dispatcher = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            async move {
                barrier.wait().await;
                yields(jitter_a).await;
                rt.dispatch(request("w", "op", &i)).await
            }
        };
        let drainer = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            async move {
                barrier.wait().await;
                yields(jitter_b).await;
                rt.drain("w").await
            }
        };
        let (dispatcher, drainer) = if i % 2 == 0 {
            let d = support::spawn(dispatcher);
            (d, support::spawn(drainer))
        } else {
            let r = support::spawn(drainer);
            (support::spawn(dispatcher), r)
        };
        within("drain", drainer).await.unwrap().unwrap();
        // The dispatch has been decided once its observation started and it was either
        // admitted (in flight) or ended; only then does the shutdown race the running command.
        until("the dispatch to be decided", || {
            let seen = tally.by_tag(&i.to_string());
            seen.len() == 1
                && (seen[0].1.ends == 1 || !rt.in_flight().is_empty() || dispatcher.is_finished())
        })
        .await;
        // Nothing is admitted by a draining worker.
        let late = rt
            .dispatch(request("w", "counted", &"late"))
            .await
            .unwrap_err();
        assert_eq!(late.code(), "invalid_worker_state", "iteration {i}");
        assert_eq!(started.load(Ordering::SeqCst), 0);

        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
        let result = within("dispatch", dispatcher).await.unwrap();
        let (_, outcome) = ended(&tally, &i);
        match &result {
            Ok(done) => {
                admitted += 1;
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                assert_eq!(done.attempts, 1);
                assert_eq!(finished.load(Ordering::SeqCst), 1, "iteration {i}");
            }
            Err(DispatchError::InvalidWorkerState {
                state: LifecycleState::Draining,
                ..
            }) => {
                rejected += 1;
                assert_eq!(outcome, CommandOutcome::Rejected, "iteration {i}");
                assert_eq!(finished.load(Ordering::SeqCst), 0, "iteration {i}");
            }
            Err(err) => panic!("iteration {i}: unexpected {err:?}"),
        }
        assert_eq!(
            stopped_at_finish.load(Ordering::SeqCst),
            0,
            "iteration {i}: the shutdown stopped the worker under an admitted command"
        );
        assert!(
            stopped.load(Ordering::SeqCst),
            "iteration {i}: never stopped"
        );
        tally.assert_balanced();
    }
    eprintln!("dispatch vs drain: {admitted} admitted, {rejected} rejected");
    assert!(
        admitted > 0 && rejected > 0,
        "the race never went both ways"
    );
}

/// A dispatch racing `stop_all` is admitted first or rejected as `runtime_not_accepting_work`
/// (admission is closed for the whole call). With `cancel_commands_on_stop`, the stop waits for
/// an admitted command within its grace, or cancels it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_races_stop_all() {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0x5A11 ^ i);
        let variant = i % 3;
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let stopped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let stopped_at_finish = Arc::new(AtomicUsize::new(0));
        let mut spec = idle_worker("w", &stopped);
        spec = match variant {
            // Go's behaviour: a stop neither waits for nor cancels admitted commands.
            0 => spec.command(recording_op(
                &stopped,
                &finished,
                &stopped_at_finish,
                rng.below(30),
            )),
            // The stop waits for the admitted command (it finishes well within the grace).
            1 => spec
                .command(recording_op(
                    &stopped,
                    &finished,
                    &stopped_at_finish,
                    rng.below(30),
                ))
                .cancel_commands_on_stop(Duration::from_secs(10)),
            // The admitted command waits for cancellation; the stop cancels it after the grace.
            _ => spec
                .command(CommandSpec::new(
                    "op",
                    handler_fn(|ctx| async move {
                        ctx.cancelled().await;
                        Err("expected failure after cancellation".into())
                    }),
                ))
                .cancel_commands_on_stop(Duration::from_millis(1)),
        };
        rt.register(spec).unwrap();
        rt.start_all().await.unwrap();

        let barrier = Arc::new(Barrier::new(2));
        let (jitter_a, jitter_b) = (rng.below(8), rng.below(8));
        let dispatcher = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter_a).await;
                rt.dispatch(request("w", "op", &i)).await
            })
        };
        let stopper = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter_b).await;
                rt.stop_all().await
            })
        };
        within("stop_all", stopper).await.unwrap().unwrap();
        let result = within("dispatch", dispatcher).await.unwrap();
        let (_, outcome) = ended(&tally, &i);
        let key = match (&result, variant) {
            (Err(DispatchError::RuntimeNotAccepting { .. }), _) => {
                assert_eq!(outcome, CommandOutcome::Rejected, "iteration {i}");
                assert_eq!(finished.load(Ordering::SeqCst), 0, "iteration {i}");
                "rejected"
            }
            (Ok(_), 0 | 1) => {
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                assert_eq!(finished.load(Ordering::SeqCst), 1, "iteration {i}");
                if variant == 1 {
                    assert_eq!(
                        stopped_at_finish.load(Ordering::SeqCst),
                        0,
                        "iteration {i}: stopped under a command within its grace"
                    );
                }
                "admitted"
            }
            (
                Err(DispatchError::Cancelled {
                    reason: CancelReason::WorkerStopped,
                    ..
                }),
                2,
            ) => {
                assert_eq!(outcome, CommandOutcome::Cancelled, "iteration {i}");
                "cancelled by the stop"
            }
            (other, _) => panic!("iteration {i} (variant {variant}): unexpected {other:?}"),
        };
        *seen.entry(key).or_insert(0) += 1;
        assert_eq!(
            rt.worker("w").unwrap().status.state,
            LifecycleState::Stopped
        );
        // Stopped and not accepting: a later dispatch is rejected by the runtime.
        let late = rt.dispatch(request("w", "op", &"late")).await.unwrap_err();
        assert_eq!(late.code(), "runtime_not_accepting_work", "iteration {i}");
        within("idle", rt.wait_all_idle()).await;
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
        tally.assert_balanced();
    }
    eprintln!("dispatch vs stop_all: {seen:?}");
    assert!(seen.get("rejected").is_some_and(|n| *n > 0), "{seen:?}");
    assert!(
        seen.get("admitted").is_some_and(|n| *n > 0)
            || seen.get("cancelled by the stop").is_some_and(|n| *n > 0),
        "{seen:?}"
    );
}

/// Stamps, on a shared clock, when the runtime's readiness first went false.
#[derive(Clone, Debug)]
struct UnreadyStamp {
    clock: Arc<AtomicU64>,
    unready_at: Arc<AtomicU64>,
}

impl Observer for UnreadyStamp {
    fn on_readiness(&self, event: &ReadinessEvent) {
        if event.worker.is_none() && !event.ready {
            let now = self.clock.fetch_add(1, Ordering::SeqCst);
            let _ =
                self.unready_at
                    .compare_exchange(u64::MAX, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// Dispatches racing a shutdown: the shutdown waits for every admitted command before it stops
/// the worker, and no dispatch that begins after the runtime's readiness went false is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_race_shutdown() {
    const DISPATCHERS: usize = 3;
    let (mut admitted_total, mut late_rejections) = (0, 0);
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0x5D0E ^ i);
        let tally = CommandTally::new();
        let clock = Arc::new(AtomicU64::new(0));
        let stamp = UnreadyStamp {
            clock: Arc::clone(&clock),
            unready_at: Arc::new(AtomicU64::new(u64::MAX)),
        };
        let rt = runtime(&tally, |b| b.with_observer(stamp.clone()));
        let stopped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let stopped_at_finish = Arc::new(AtomicUsize::new(0));
        rt.register(idle_worker("w", &stopped).command(recording_op(
            &stopped,
            &finished,
            &stopped_at_finish,
            rng.below(20),
        )))
        .unwrap();
        rt.start_all().await.unwrap();
        assert!(rt.readiness().ready);

        let barrier = Arc::new(Barrier::new(DISPATCHERS + 1));
        let dispatchers: Vec<_> = (0..DISPATCHERS)
            .map(|d| {
                let (rt, barrier, clock) = (rt.clone(), Arc::clone(&barrier), Arc::clone(&clock));
                let jitter = rng.below(6);
                support::spawn(async move {
                    barrier.wait().await;
                    yields(jitter).await;
                    let mut log = Vec::new();
                    // Dispatch until the runtime refuses (it closes for good at shutdown).
                    for n in 0.. {
                        let began = clock.fetch_add(1, Ordering::SeqCst);
                        let result = rt.dispatch(request("w", "op", &format!("{d}.{n}"))).await;
                        let refused =
                            matches!(result, Err(DispatchError::RuntimeNotAccepting { .. }));
                        log.push((began, format!("{d}.{n}"), result));
                        if refused {
                            break;
                        }
                    }
                    log
                })
            })
            .collect();
        let shutdown = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            let jitter = rng.below(12);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                rt.shutdown().await
            })
        };
        let report = within("shutdown", shutdown).await.unwrap().unwrap();
        assert_eq!(report.lingering_tasks, 0, "iteration {i}");
        assert!(!report.deadline_exceeded, "iteration {i}: {report:?}");
        // The shutdown returned: every admitted command had finished before the stop.
        let finished_at_shutdown = finished.load(Ordering::SeqCst);
        let unready_at = stamp.unready_at.load(Ordering::SeqCst);
        assert_ne!(
            unready_at,
            u64::MAX,
            "iteration {i}: readiness never went false"
        );

        let mut admitted = 0;
        for dispatcher in dispatchers {
            for (began, tag, result) in within("dispatcher", dispatcher).await.unwrap() {
                let (_, outcome) = ended(&tally, &tag);
                match result {
                    Ok(_) => {
                        admitted += 1;
                        assert_eq!(outcome, CommandOutcome::Succeeded);
                        assert!(
                            began < unready_at,
                            "iteration {i}: dispatch {tag} began at {began}, after readiness \
                             went false at {unready_at}, and was admitted"
                        );
                    }
                    Err(DispatchError::RuntimeNotAccepting { .. }) => {
                        assert_eq!(outcome, CommandOutcome::Rejected);
                        if began > unready_at {
                            late_rejections += 1;
                        }
                    }
                    Err(err) => panic!("iteration {i}: dispatch {tag}: unexpected {err:?}"),
                }
            }
        }
        assert_eq!(
            finished_at_shutdown, admitted,
            "iteration {i}: the shutdown returned before every admitted command finished"
        );
        assert_eq!(
            stopped_at_finish.load(Ordering::SeqCst),
            0,
            "iteration {i}: the worker was stopped under an admitted command"
        );
        admitted_total += admitted;
        tally.assert_balanced();
        assert_quiet(&rt, &format!("iteration {i}"));
    }
    eprintln!(
        "dispatch vs shutdown: {admitted_total} admitted, {late_rejections} rejected after unready"
    );
    assert!(admitted_total > 0 && late_rejections > 0);
}

// ---- caller drops and cancellation ------------------------------------------------------------

/// A worker with `command_concurrency(1)` and a quick `ping` command, to prove the slot is free.
fn ping() -> CommandSpec {
    CommandSpec::new(
        "ping",
        handler_fn(|_ctx| std::future::ready(Ok(CommandResponse::message("pong")))),
    )
}

/// Dropping the dispatch future at a random point: one end event per started dispatch,
/// `abandoned` when dropped after admission, and the slot is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_drop_races_completion() {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0xD0D0 ^ i);
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let work = rng.below(20);
        let stopped = Arc::new(AtomicBool::new(false));
        rt.register(
            idle_worker("w", &stopped)
                .command(CommandSpec::new(
                    "op",
                    handler_fn(move |_ctx| async move {
                        yields(work).await;
                        Ok(CommandResponse::message("done"))
                    }),
                ))
                .command(ping())
                .command_concurrency(1),
        )
        .unwrap();
        rt.start_all().await.unwrap();

        let drop_now = Arc::new(Notify::new());
        let barrier = Arc::new(Barrier::new(2));
        let dropper = {
            let (drop_now, barrier) = (Arc::clone(&drop_now), Arc::clone(&barrier));
            let jitter = rng.below(30);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                drop_now.notify_one();
            })
        };
        let caller = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            support::spawn(async move {
                barrier.wait().await;
                tokio::select! {
                    result = rt.dispatch(request("w", "op", &i)) => Some(result),
                    () = drop_now.notified() => None,
                }
            })
        };
        within("dropper", dropper).await.unwrap();
        let result = within("caller", caller).await.unwrap();
        // Dropping is synchronous: nothing is left in flight once the caller returned.
        assert_quiet(&rt, &format!("iteration {i}"));
        let observed = tally.by_tag(&i.to_string());
        let key = match result {
            Some(Ok(_)) => {
                let (_, outcome) = ended(&tally, &i);
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                "completed"
            }
            Some(Err(err)) => panic!("iteration {i}: unexpected {err:?}"),
            // Dropped before its first poll: never observed.
            None if observed.is_empty() => "dropped before the first poll",
            None => {
                let (_, outcome) = ended(&tally, &i);
                assert_eq!(outcome, CommandOutcome::Abandoned, "iteration {i}");
                // Fail-fast admission decides in the first poll: the handler had started.
                assert_eq!(attempts(&tally, &i), 1, "iteration {i}");
                "abandoned"
            }
        };
        *seen.entry(key).or_insert(0) += 1;
        // The single slot is free again.
        within("ping", rt.dispatch(request("w", "ping", &"ping")))
            .await
            .unwrap_or_else(|err| panic!("iteration {i}: the slot leaked: {err:?}"));
        tally.assert_balanced();
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("caller drop vs completion: {seen:?}");
    assert!(seen.get("completed").is_some_and(|n| *n > 0), "{seen:?}");
    assert!(seen.get("abandoned").is_some_and(|n| *n > 0), "{seen:?}");
}

/// Dropping a dispatch that waits for a slot (wait admission), racing the slot's release: its
/// observation still ends exactly once, and its waiting count and the slot are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_drop_races_wait_admission() {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0x3A17 ^ i);
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let stopped = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Semaphore::new(0));
        let blocking = {
            let gate = Arc::clone(&gate);
            CommandSpec::new(
                "op",
                handler_fn(move |_ctx| {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok(CommandResponse::message("done"))
                    }
                }),
            )
        };
        rt.register(
            idle_worker("w", &stopped)
                .command(blocking)
                .command(ping())
                .command_concurrency(1)
                .command_admission(AdmissionMode::Wait(Duration::from_secs(30))),
        )
        .unwrap();
        rt.start_all().await.unwrap();

        // The blocker holds the only slot.
        let blocker = {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "op", &"blocker")).await })
        };
        until("the blocker's admission", || rt.in_flight().len() == 1).await;

        let drop_now = Arc::new(Notify::new());
        let waiter = {
            let (rt, drop_now) = (rt.clone(), Arc::clone(&drop_now));
            support::spawn(async move {
                tokio::select! {
                    result = rt.dispatch(request("w", "op", &i)) => Some(result),
                    () = drop_now.notified() => None,
                }
            })
        };
        if i % 2 == 0 {
            // Drop it while it certainly waits.
            until("the waiter to wait", || {
                rt.worker("w").unwrap().status.waiting == 1
            })
            .await;
        }
        let barrier = Arc::new(Barrier::new(2));
        let releaser = {
            let (gate, barrier) = (Arc::clone(&gate), Arc::clone(&barrier));
            let jitter = rng.below(20);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                // Enough for the blocker and the waiter, if it gets in.
                gate.add_permits(2);
            })
        };
        let dropper = {
            let barrier = Arc::clone(&barrier);
            let jitter = rng.below(20);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                drop_now.notify_one();
            })
        };
        within("releaser", releaser).await.unwrap();
        within("dropper", dropper).await.unwrap();
        let result = within("waiter", waiter).await.unwrap();
        within("blocker", blocker).await.unwrap().unwrap();
        assert_quiet(&rt, &format!("iteration {i}"));
        let observed = tally.by_tag(&i.to_string());
        let key = match result {
            Some(Ok(_)) => {
                let (_, outcome) = ended(&tally, &i);
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                "completed"
            }
            Some(Err(err)) => panic!("iteration {i}: unexpected {err:?}"),
            None if observed.is_empty() => "dropped before the first poll",
            None => {
                let (_, outcome) = ended(&tally, &i);
                assert_eq!(outcome, CommandOutcome::Abandoned, "iteration {i}");
                if attempts(&tally, &i) == 0 {
                    "abandoned while waiting"
                } else {
                    "abandoned after admission"
                }
            }
        };
        *seen.entry(key).or_insert(0) += 1;
        within("ping", rt.dispatch(request("w", "ping", &"ping")))
            .await
            .unwrap_or_else(|err| panic!("iteration {i}: the slot leaked: {err:?}"));
        tally.assert_balanced();
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("caller drop vs wait admission: {seen:?}");
    assert!(
        seen.get("abandoned while waiting").is_some_and(|n| *n > 0),
        "{seen:?}"
    );
}

/// Cancelling by id races the handler's natural completion: the caller gets a success or
/// `Cancelled`, never both and never anything else, and `cancel` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_id_races_natural_completion() {
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0xCA9C ^ i);
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let work = rng.below(20);
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<DispatchId>();
        let id_tx = Arc::new(Mutex::new(Some(id_tx)));
        let stopped = Arc::new(AtomicBool::new(false));
        rt.register(idle_worker("w", &stopped).command(CommandSpec::new(
            "op",
            handler_fn(move |ctx| {
                let id_tx = Arc::clone(&id_tx);
                async move {
                    if let Some(tx) = id_tx.lock().unwrap().take() {
                        let _ = tx.send(ctx.id());
                    }
                    tokio::select! {
                        () = ctx.cancelled() => Err("expected failure after cancellation".into()),
                        () = yields(work) => Ok(CommandResponse::message("done")),
                    }
                }
            }),
        )))
        .unwrap();
        rt.start_all().await.unwrap();

        let caller = {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "op", &i)).await })
        };
        let id = within("the handler's id", id_rx).await.unwrap();
        yields(rng.below(20)).await;
        let cancelled = rt.cancel(id);
        let result = within("caller", caller).await.unwrap();
        let (observed_id, outcome) = ended(&tally, &i);
        assert_eq!(observed_id, id);
        let key = match (&cancelled, &result) {
            (
                Ok(()),
                Err(DispatchError::Cancelled {
                    reason, id: got, ..
                }),
            ) => {
                assert_eq!(*reason, CancelReason::Requested, "iteration {i}");
                assert_eq!(*got, id);
                assert_eq!(outcome, CommandOutcome::Cancelled, "iteration {i}");
                "cancelled"
            }
            // Cancelled after the handler had already succeeded, before its slot was released.
            (Ok(()), Ok(done)) => {
                assert_eq!(done.id, id);
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                "cancel lost to success"
            }
            (Err(CancelError::NotFound(missing)), Ok(done)) => {
                assert_eq!((*missing, done.id), (id, id));
                assert_eq!(outcome, CommandOutcome::Succeeded, "iteration {i}");
                "completed first"
            }
            (cancelled, result) => {
                panic!("iteration {i}: cancel {cancelled:?} with result {result:?}")
            }
        };
        *seen.entry(key).or_insert(0) += 1;
        // The dispatch is gone: a second cancel finds nothing.
        assert_eq!(rt.cancel(id), Err(CancelError::NotFound(id)));
        assert_quiet(&rt, &format!("iteration {i}"));
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("cancel vs completion: {seen:?}");
    assert!(seen.get("cancelled").is_some_and(|n| *n > 0), "{seen:?}");
    assert!(
        seen.get("completed first").is_some_and(|n| *n > 0),
        "{seen:?}"
    );
}

// ---- panics and restarts -----------------------------------------------------------------------

/// A command of incarnation 1 panics while the worker restarts: whatever the interleaving, the
/// new incarnation is not failed by the old one's panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_races_restart() {
    quiet_expected_panics();
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0xB00B ^ i);
        let tally = CommandTally::new();
        let recorder = RecordingObserver::new();
        let rt = runtime(&tally, |b| b.with_observer(recorder.clone()));
        let go = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let boom = {
            let (go, entered) = (Arc::clone(&go), Arc::clone(&entered));
            CommandSpec::new(
                "boom",
                handler_fn(move |_ctx| {
                    let (go, entered) = (Arc::clone(&go), Arc::clone(&entered));
                    async move {
                        entered.notify_one();
                        go.notified().await;
                        panic!("expected panic in a command racing a restart");
                    }
                }),
            )
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let mut spec = idle_worker("w", &stopped).command(boom);
        if i % 2 == 1 {
            // The stop waits for the command, which panics while the worker is stopping.
            spec = spec.cancel_commands_on_stop(Duration::from_secs(10));
        }
        rt.register(spec).unwrap();
        rt.start_all().await.unwrap();

        let caller = {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "boom", &i)).await })
        };
        within("the handler", entered.notified()).await;

        let barrier = Arc::new(Barrier::new(2));
        let trigger = {
            let (go, barrier) = (Arc::clone(&go), Arc::clone(&barrier));
            let jitter = rng.below(40);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                go.notify_one();
            })
        };
        let restarter = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            let jitter = rng.below(8);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                rt.stop("w").await.map(|_| ())?;
                rt.start("w").await.map(|_| ())
            })
        };
        within("trigger", trigger).await.unwrap();
        within("restart", restarter)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("iteration {i}: restart failed: {err}"));
        let result = within("caller", caller).await.unwrap();
        assert!(
            matches!(result, Err(DispatchError::Panicked { .. })),
            "iteration {i}: {result:?}"
        );
        let (_, outcome) = ended(&tally, &i);
        assert_eq!(outcome, CommandOutcome::Panicked);
        // Failure events are delivered in order, possibly by another thread a moment later.
        let panic_events = || {
            recorder
                .events()
                .into_iter()
                .filter(|e| matches!(e, Recorded::Failure(f) if f.panic))
                .count()
        };
        until("the panic's failure event", || panic_events() >= 1).await;

        let status = rt.worker("w").unwrap().status;
        assert_eq!(status.state, LifecycleState::Running, "iteration {i}");
        assert_eq!(status.incarnation, 2, "iteration {i}");
        assert!(status.last_failure.is_none(), "iteration {i}: {status:?}");
        // The panic is reported once, against incarnation 1; incarnation 2 never fails.
        let events = recorder.events();
        let panics: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Recorded::Failure(f) if f.panic => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(panics.len(), 1, "iteration {i}: {panics:#?}");
        assert_eq!(panics[0].incarnation, 1, "iteration {i}");
        assert_eq!(panics[0].command.as_deref(), Some("boom"));
        let failed_again = events.iter().any(|e| {
            matches!(e, Recorded::Transition(t)
                if t.incarnation == 2 && t.to == LifecycleState::Failed)
        });
        assert!(
            !failed_again,
            "iteration {i}: the old panic failed the new incarnation"
        );
        let key = if panics[0].lifecycle_changed {
            "failed incarnation 1"
        } else {
            "stale panic"
        };
        *seen.entry(key).or_insert(0) += 1;
        // The restarted worker still serves commands (and this one panics against
        // incarnation 2, as it should).
        let again = {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "boom", &"again")).await })
        };
        within("the handler", entered.notified()).await;
        go.notify_one();
        let again = within("again", again).await.unwrap();
        assert!(matches!(again, Err(DispatchError::Panicked { .. })));
        assert_eq!(rt.worker("w").unwrap().status.state, LifecycleState::Failed);
        tally.assert_balanced();
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("panic vs restart: {seen:?}");
    assert!(seen.get("stale panic").is_some_and(|n| *n > 0), "{seen:?}");
}

// ---- limits ----------------------------------------------------------------------------------

/// Concurrent dispatches at a concurrency limit (worker, command or runtime) never run more
/// than the limit at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_are_never_exceeded() {
    const DISPATCHERS: u64 = 12;
    const EACH: u64 = 4;
    let mut reached = 0;
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0x11B1 ^ i);
        let limit = usize::try_from(1 + rng.below(4)).unwrap();
        let scope = i % 3;
        let wait = i % 2 == 0;
        let tally = CommandTally::new();
        let admission = if wait {
            AdmissionMode::Wait(Duration::from_secs(30))
        } else {
            AdmissionMode::FailFast
        };
        let rt = runtime(&tally, |b| {
            let b = b.command_admission(admission);
            if scope == 2 {
                b.command_concurrency(limit)
            } else {
                b
            }
        });
        let current = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let mut counted = || {
            let (current, max) = (Arc::clone(&current), Arc::clone(&max));
            let work = rng.below(10);
            CommandSpec::new(
                "op",
                handler_fn(move |_ctx| {
                    let (current, max) = (Arc::clone(&current), Arc::clone(&max));
                    async move {
                        let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        yields(work).await;
                        current.fetch_sub(1, Ordering::SeqCst);
                        Ok(CommandResponse::empty())
                    }
                }),
            )
        };
        let stopped = Arc::new(AtomicBool::new(false));
        // Runtime scope: two workers share the runtime's limit.
        let workers: &[&str] = if scope == 2 { &["a", "b"] } else { &["a"] };
        for name in workers {
            let spec = idle_worker(name, &stopped);
            let spec = match scope {
                0 => spec.command(counted()).command_concurrency(limit),
                1 => spec.command(counted().concurrency(limit)),
                _ => spec.command(counted()),
            };
            rt.register(spec).unwrap();
        }
        rt.start_all().await.unwrap();

        let barrier = Arc::new(Barrier::new(usize::try_from(DISPATCHERS).unwrap()));
        let tasks: Vec<_> = (0..DISPATCHERS)
            .map(|d| {
                let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
                let worker = workers[usize::try_from(d).unwrap() % workers.len()];
                support::spawn(async move {
                    barrier.wait().await;
                    let mut results = Vec::new();
                    for n in 0..EACH {
                        results.push(rt.dispatch(request(worker, "op", &(d * EACH + n))).await);
                    }
                    results
                })
            })
            .collect();
        for task in tasks {
            for result in within("dispatcher", task).await.unwrap() {
                match result {
                    Ok(_) => {}
                    Err(DispatchError::Saturated { limit: got, .. }) if !wait => {
                        assert_eq!(got, limit, "iteration {i}");
                    }
                    Err(err) => panic!("iteration {i}: unexpected {err:?}"),
                }
            }
        }
        let max = max.load(Ordering::SeqCst);
        assert!(
            (1..=limit).contains(&max),
            "iteration {i}: {max} in flight at once with a limit of {limit} (scope {scope})"
        );
        if max == limit {
            reached += 1;
        }
        tally.assert_balanced();
        assert_eq!(tally.len(), usize::try_from(DISPATCHERS * EACH).unwrap());
        assert_quiet(&rt, &format!("iteration {i}"));
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("concurrency limits: reached in {reached} of {ITERATIONS} iterations");
    assert!(reached > 0, "no iteration ever reached its limit");
}

fn gated_result(result: &Result<CommandResult, DispatchError>, what: &str) {
    if let Err(err) = result {
        panic!("{what}: {err:?}");
    }
}

/// Wait admission wakes every waiter as capacity frees one slot at a time: all are admitted,
/// long before their admission deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_admission_wakes_every_waiter() {
    const WAITERS: usize = 6;
    for i in 0..ITERATIONS {
        let scope = i % 3;
        let tally = CommandTally::new();
        let wait = AdmissionMode::Wait(Duration::from_secs(60));
        let rt = runtime(&tally, |b| {
            if scope == 2 {
                b.command_concurrency(1).command_admission(wait)
            } else {
                b
            }
        });
        let gate = Arc::new(Semaphore::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let op = {
            let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
            CommandSpec::new(
                "op",
                handler_fn(move |_ctx| {
                    let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
                    async move {
                        gate.acquire().await.unwrap().forget();
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok(CommandResponse::empty())
                    }
                }),
            )
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let spec = idle_worker("w", &stopped);
        let spec = match scope {
            0 => spec
                .command(op)
                .command_concurrency(1)
                .command_admission(wait),
            1 => spec.command(op.concurrency(1).admission(wait)),
            _ => spec.command(op),
        };
        rt.register(spec).unwrap();
        rt.start_all().await.unwrap();

        let began = tokio::time::Instant::now();
        let dispatch = |tag: String| {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "op", &tag)).await })
        };
        let blocker = dispatch("blocker".to_owned());
        until("the blocker's admission", || rt.in_flight().len() == 1).await;
        let waiters: Vec<_> = (0..WAITERS).map(|w| dispatch(w.to_string())).collect();
        until("every waiter to wait", || {
            rt.worker("w").unwrap().status.waiting == WAITERS
        })
        .await;
        // Free one slot at a time; each time, exactly one more command gets in and finishes.
        for k in 1..=WAITERS + 1 {
            gate.add_permits(1);
            until("the next waiter's admission", || {
                let status = rt.worker("w").unwrap().status;
                finished.load(Ordering::SeqCst) == k
                    && status.waiting == WAITERS.saturating_sub(k)
                    && status.in_flight == usize::from(k <= WAITERS)
            })
            .await;
        }
        gated_result(&within("blocker", blocker).await.unwrap(), "blocker");
        for waiter in waiters {
            gated_result(&within("waiter", waiter).await.unwrap(), "waiter");
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "iteration {i}: a waiter was admitted only at its deadline"
        );
        tally.assert_balanced();
        assert_eq!(tally.len(), WAITERS + 1);
        assert_quiet(&rt, &format!("iteration {i}"));
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
}

/// Dispatches waiting for a slot race a drain, a stop, `stop_all` or a shutdown that makes their
/// admission impossible: each is rejected at once (woken, not left to wait out its admission
/// wait), while the command holding the slot still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_race_the_end_of_admission() {
    const WAITERS: usize = 3;
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..ITERATIONS {
        let mut rng = SplitMix::new(0x3E5C ^ i);
        let variant = i % 4;
        let tally = CommandTally::new();
        let rt = runtime(&tally, |b| b);
        let gate = Arc::new(Semaphore::new(0));
        let op = {
            let gate = Arc::clone(&gate);
            CommandSpec::new(
                "op",
                handler_fn(move |_ctx| {
                    let gate = Arc::clone(&gate);
                    async move {
                        gate.acquire().await.unwrap().forget();
                        Ok(CommandResponse::empty())
                    }
                }),
            )
        };
        let stopped = Arc::new(AtomicBool::new(false));
        rt.register(
            idle_worker("w", &stopped)
                .command(op)
                .command_concurrency(1)
                // Far longer than the real-clock bound of every wait here.
                .command_admission(AdmissionMode::Wait(Duration::from_secs(600))),
        )
        .unwrap();
        rt.start_all().await.unwrap();
        let blocker = {
            let rt = rt.clone();
            support::spawn(async move { rt.dispatch(request("w", "op", &"blocker")).await })
        };
        until("the blocker's admission", || rt.in_flight().len() == 1).await;

        let barrier = Arc::new(Barrier::new(WAITERS + 1));
        let waiters: Vec<_> = (0..WAITERS)
            .map(|w| {
                let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
                let jitter = rng.below(10);
                support::spawn(async move {
                    barrier.wait().await;
                    yields(jitter).await;
                    rt.dispatch(request("w", "op", &w)).await
                })
            })
            .collect();
        let ender = {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            let jitter = rng.below(10);
            support::spawn(async move {
                barrier.wait().await;
                yields(jitter).await;
                match variant {
                    0 => rt.drain("w").await.map(|_| ()).map_err(|e| e.to_string()),
                    1 => rt.stop("w").await.map(|_| ()).map_err(|e| e.to_string()),
                    2 => rt.stop_all().await.map_err(|e| e.to_string()),
                    // The shutdown waits for the blocker, released below.
                    _ => rt.shutdown().await.map(|_| ()).map_err(|e| e.to_string()),
                }
            })
        };
        for (w, waiter) in waiters.into_iter().enumerate() {
            let result = within("a waiter's rejection", waiter).await.unwrap();
            let code = match result {
                Err(err) if err.is_rejection() => err.code(),
                other => panic!("iteration {i} (variant {variant}): waiter {w}: {other:?}"),
            };
            let allowed: &[&str] = match variant {
                0 => &["invalid_worker_state"],
                _ => &["invalid_worker_state", "runtime_not_accepting_work"],
            };
            assert!(
                allowed.contains(&code),
                "iteration {i} (variant {variant}): waiter {w}: {code}"
            );
            let (_, outcome) = ended(&tally, &w);
            assert_eq!(outcome, CommandOutcome::Rejected);
            *seen.entry(code).or_insert(0) += 1;
        }
        // Every waiter was rejected while the blocker still held its slot.
        assert_eq!(rt.in_flight().len(), 1, "iteration {i}");
        assert_eq!(rt.worker("w").unwrap().status.waiting, 0, "iteration {i}");
        gate.add_permits(1);
        within("blocker", blocker).await.unwrap().unwrap();
        within("the lifecycle operation", ender)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("iteration {i} (variant {variant}): {err}"));
        tally.assert_balanced();
        shut_down_cleanly(&rt, &format!("iteration {i}")).await;
    }
    eprintln!("waiters vs the end of admission: {seen:?}");
}
