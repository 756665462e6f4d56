//! Observers and events (spec §2.6 sequences, §7.1, §7.3): exact event sequences per operation,
//! gap-free ordering, fan-out to several observers, contained observer panics, callbacks that
//! call back into the runtime, and the change feed and exit waits.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use support::{fake, recorded, seq, settle, spawn, state, within};
use tokio::time::Instant;
use workerkit_core::error::LifecycleError;
use workerkit_core::observe::{
    BoxFuture, FailureEvent, Observer, Operation, OperationEvent, OperationPhase, ReadinessEvent,
    TransitionEvent,
};
use workerkit_core::test_util::{Recorded, RecordingObserver, Step};
use workerkit_core::{ExitReason, LifecycleState, Runtime, WorkerContext, WorkerSpec, worker_fn};

use LifecycleState::{Running, Stopped};

// ---- Sequences ----

#[tokio::test(start_paused = true)]
async fn drain_emits_transition_readiness_then_runtime_events() {
    let (rt, recorder) = recorded();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    recorder.clear();
    rt.drain("w").await.unwrap();
    assert_eq!(
        recorder.all_briefs(),
        [
            "O drain started",
            "T rt/w running->draining",
            "R rt/w false",
            "T rt running->draining",
            "R rt false",
            "O drain succeeded",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stop_emits_the_stopping_then_stopped_sequence() {
    let (rt, recorder) = recorded();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    recorder.clear();
    rt.stop("w").await.unwrap();
    assert_eq!(
        recorder.all_briefs(),
        [
            "O stop started",
            "T rt/w running->stopping",
            "R rt/w false",
            "T rt running->stopping",
            "R rt false",
            "T rt/w stopping->stopped",
            "T rt stopping->stopped",
            "O stop succeeded",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_emits_the_start_sequence_from_stopped() {
    let (rt, recorder) = recorded();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    recorder.clear();
    rt.start("w").await.unwrap();
    assert_eq!(
        recorder.briefs(),
        [
            "T rt/w stopped->starting",
            "T rt stopped->starting",
            "T rt/w starting->running",
            "R rt/w true",
            "T rt starting->running",
            "R rt true",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_emits_transition_readiness_failure_then_runtime_events() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    recorder.clear();
    w.context(0).unwrap().report_failure("boom").unwrap();
    assert_eq!(
        recorder.all_briefs(),
        [
            "T rt/w running->failed",
            "R rt/w false",
            "F rt/w worker_failed",
            "T rt running->failed",
            "R rt false",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_emits_operation_events_around_the_failure() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    assert_eq!(
        recorder.all_briefs(),
        [
            "O start started",
            "T rt/w registered->starting",
            "T rt registered->starting",
            "T rt/w starting->failed",
            "F rt/w worker_failed",
            "T rt starting->failed",
            "O start failed:worker_failed",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn bulk_operations_bracket_their_worker_events() {
    let (rt, recorder) = recorded();
    fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    rt.stop_all().await.unwrap();
    let ops: Vec<_> = recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Operation(op) => Some((op.operation, op.worker.clone(), op.phase.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        ops,
        [
            (Operation::StartAll, None, OperationPhase::Started),
            (Operation::StartAll, None, OperationPhase::Succeeded),
            (Operation::StopAll, None, OperationPhase::Started),
            (Operation::StopAll, None, OperationPhase::Succeeded),
        ]
    );
    let briefs = recorder.all_briefs();
    assert_eq!(
        briefs.first().map(String::as_str),
        Some("O start_all started")
    );
    assert_eq!(
        briefs.last().map(String::as_str),
        Some("O stop_all succeeded")
    );
}

#[tokio::test(start_paused = true)]
async fn event_fields_name_the_runtime_worker_and_incarnation() {
    let (rt, recorder) = recorded();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    for event in recorder.events() {
        match event {
            Recorded::Transition(e) => {
                assert_eq!(e.runtime.as_ref(), "rt");
                match e.worker.as_deref() {
                    Some("rt/w") => assert!(e.incarnation == 1 || e.incarnation == 2),
                    None => assert_eq!(e.incarnation, 0, "runtime events have no incarnation"),
                    other => panic!("unexpected worker {other:?}"),
                }
            }
            Recorded::Readiness(e) => assert_eq!(e.runtime.as_ref(), "rt"),
            Recorded::Operation(e) => {
                assert_eq!(e.runtime.as_ref(), "rt");
                assert_eq!(e.worker.as_deref(), Some("rt/w"));
            }
            _ => {}
        }
    }
    let incarnations: Vec<_> = recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Transition(t) if t.to == LifecycleState::Starting && t.worker.is_some() => {
                Some(t.incarnation)
            }
            _ => None,
        })
        .collect();
    assert_eq!(incarnations, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn operation_events_carry_the_elapsed_time() {
    let (rt, recorder) = recorded();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    let ops: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::Operation(op) => Some((op.phase, op.elapsed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ops,
        [
            (OperationPhase::Started, Duration::ZERO),
            (OperationPhase::Succeeded, Duration::from_secs(2)),
        ]
    );
}

// ---- Ordering ----

fn assert_gap_free(events: &[Recorded]) {
    let seqs: Vec<u64> = events.iter().filter_map(seq).collect();
    assert!(!seqs.is_empty());
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seq must start at 1 and have no gaps");
}

#[tokio::test(start_paused = true)]
async fn event_seq_is_strictly_increasing_and_gap_free() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    b.on_start(Step::Fail("boom".into()));
    rt.start_all().await.unwrap_err();
    a.context(0).unwrap().set_ready(false).unwrap();
    a.context(0).unwrap().set_ready(true).unwrap();
    rt.drain("a").await.unwrap();
    rt.start("b").await.unwrap();
    b.context(1).unwrap().report_failure("boom").unwrap();
    rt.stop_all().await.unwrap();
    rt.shutdown().await.unwrap();
    assert_gap_free(&recorder.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_context_calls_keep_seq_gap_free_and_in_order() {
    let (rt, recorder) = recorded();
    let controls: Vec<_> = (0..4).map(|i| fake(&rt, &format!("w{i}"))).collect();
    rt.start_all().await.unwrap();
    let mut tasks = Vec::new();
    for control in &controls {
        let ctx = control.context(0).unwrap();
        tasks.push(spawn(async move {
            for i in 0..200 {
                ctx.set_ready(i % 2 == 1).unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_gap_free(&recorder.events());
    // Every worker's readiness events alternate, ending where its status ended.
    for i in 0..4 {
        let name = format!("rt/w{i}");
        let flips: Vec<bool> = recorder
            .events()
            .iter()
            .filter_map(|e| match e {
                Recorded::Readiness(r) if r.worker.as_deref() == Some(name.as_str()) => {
                    Some(r.ready)
                }
                _ => None,
            })
            .collect();
        assert!(flips.windows(2).all(|w| w[0] != w[1]), "{name}: {flips:?}");
        assert_eq!(
            flips.last().copied(),
            Some(rt.worker(&name).unwrap().status.ready)
        );
    }
    // The runtime's own readiness events alternate too, ending at its status.
    let runtime: Vec<bool> = recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Readiness(r) if r.worker.is_none() => Some(r.ready),
            _ => None,
        })
        .collect();
    assert!(runtime.windows(2).all(|w| w[0] != w[1]), "{runtime:?}");
    assert_eq!(runtime.last().copied(), Some(rt.status().ready));
}

#[tokio::test(start_paused = true)]
async fn every_observer_receives_the_same_events_in_order() {
    let first = RecordingObserver::new();
    let second = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(first.clone())
        .with_observer(Panicky::default())
        .with_observer(second.clone())
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    w.context(0).unwrap().report_failure("boom").unwrap();
    rt.stop("w").await.unwrap();
    let seqs = |r: &RecordingObserver| r.events().iter().filter_map(seq).collect::<Vec<_>>();
    assert!(!first.events().is_empty());
    assert_eq!(first.all_briefs(), second.all_briefs());
    assert_eq!(seqs(&first), seqs(&second));
    assert_gap_free(&second.events());
}

// ---- Observer panics ----

#[derive(Default)]
struct Panicky {
    calls: AtomicUsize,
}

impl Observer for Panicky {
    fn on_transition(&self, _: &TransitionEvent) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("observer bug");
    }
    fn on_failure(&self, _: &FailureEvent) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("observer bug");
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { panic!("observer shutdown bug") })
    }
}

#[tokio::test(start_paused = true)]
async fn observer_panics_are_contained_and_counted() {
    let recorder = RecordingObserver::new();
    let panicky = Arc::new(Panicky::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(panicky.clone())
        .with_observer(recorder.clone())
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    assert_eq!(rt.observer_panics(), 0);
    rt.start("w").await.unwrap();
    w.context(0).unwrap().report_failure("boom").unwrap();
    rt.stop("w").await.unwrap();

    let counted = recorder
        .events()
        .iter()
        .filter(|e| matches!(e, Recorded::Transition(_) | Recorded::Failure(_)))
        .count();
    assert!(counted > 0);
    assert_eq!(panicky.calls.load(Ordering::SeqCst), counted);
    assert_eq!(rt.observer_panics(), counted as u64);
    // The runtime carried on, and the later observer saw everything.
    assert_eq!(state(&rt, "w"), Stopped);
    assert_gap_free(&recorder.events());

    // A panicking shutdown hook is contained and counted too.
    rt.shutdown().await.unwrap();
    assert_eq!(rt.observer_panics(), counted as u64 + 1);
}

// ---- Callbacks that call back ----

/// On `rt/w` becoming ready, sets it unready again through its context.
#[derive(Default)]
struct Flipper {
    ctx: Mutex<Option<WorkerContext>>,
    armed: AtomicBool,
    result: Mutex<Option<Result<(), String>>>,
}

impl Observer for Flipper {
    fn on_readiness(&self, e: &ReadinessEvent) {
        if e.worker.as_deref() == Some("rt/w")
            && e.ready
            && self.armed.swap(false, Ordering::SeqCst)
        {
            let ctx = self.ctx.lock().unwrap().clone().unwrap();
            *self.result.lock().unwrap() = Some(ctx.set_ready(false).map_err(|e| e.to_string()));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_context_call_from_an_observer_callback_neither_deadlocks_nor_loses_events() {
    let flipper = Arc::new(Flipper::default());
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_shared_observer(flipper.clone())
        .with_observer(recorder.clone())
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    let ctx = w.context(0).unwrap();
    *flipper.ctx.lock().unwrap() = Some(ctx.clone());
    ctx.set_ready(false).unwrap();
    recorder.clear();

    flipper.armed.store(true, Ordering::SeqCst);
    ctx.set_ready(true).unwrap(); // returns: no deadlock on the state lock or the delivery

    assert_eq!(*flipper.result.lock().unwrap(), Some(Ok(())));
    // The nested change's events come after the current batch, in order, none lost.
    assert_eq!(
        recorder.briefs(),
        ["R rt/w true", "R rt true", "R rt/w false", "R rt false"]
    );
    let seqs: Vec<_> = recorder.events().iter().filter_map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(!rt.worker("w").unwrap().status.ready);
    assert!(!rt.status().ready);
}

/// Calls `stop` from inside a transition callback, polling it once.
#[derive(Default)]
struct Reentrant {
    runtime: Mutex<Option<Runtime>>,
    outcome: Mutex<Vec<String>>,
}

impl Observer for Reentrant {
    fn on_transition(&self, e: &TransitionEvent) {
        if e.worker.as_deref() != Some("rt/w") || e.to != LifecycleState::Running {
            return;
        }
        let Some(rt) = self.runtime.lock().unwrap().clone() else {
            return;
        };
        let mut stop = std::pin::pin!(rt.stop("w"));
        let mut cx = Context::from_waker(Waker::noop());
        let outcome = match stop.as_mut().poll(&mut cx) {
            Poll::Ready(Err(LifecycleError::Reentrant { operation })) => {
                format!("reentrant {operation}")
            }
            Poll::Ready(other) => format!("ready {other:?}"),
            Poll::Pending => "pending".to_owned(),
        };
        self.outcome.lock().unwrap().push(outcome);
    }
}

#[tokio::test(start_paused = true)]
async fn a_lifecycle_call_from_an_observer_during_an_operation_is_refused() {
    let observer = Arc::new(Reentrant::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(observer.clone())
        .build()
        .unwrap();
    *observer.runtime.lock().unwrap() = Some(rt.clone());
    let w = fake(&rt, "w");
    tokio::time::timeout(Duration::from_secs(5), rt.start("w"))
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(*observer.outcome.lock().unwrap(), ["reentrant stop"]);
    assert_eq!(state(&rt, "w"), Running);
    assert_eq!(w.stops(), 0);
    *observer.runtime.lock().unwrap() = None; // break the cycle
}

// ---- Waiting for changes and exits ----

#[tokio::test(start_paused = true)]
async fn status_watch_wait_until_wakes_on_the_change() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    let mut watch = rt.subscribe();
    let waiter = spawn(async move {
        watch
            .wait_until(|rt| rt.worker("w").is_some_and(|s| s.status.ready))
            .await;
        Instant::now()
    });
    settle().await;
    assert!(!waiter.is_finished());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiter.is_finished(), "nothing changed yet");

    rt.register(WorkerSpec::new("other", worker_fn(|_ctx| async { Ok(()) })))
        .unwrap();
    settle().await;
    assert!(
        !waiter.is_finished(),
        "an unrelated change does not satisfy it"
    );

    let started = Instant::now();
    rt.start("w").await.unwrap();
    let woke = within(waiter).await.unwrap();
    assert_eq!(woke, started);
    assert_eq!(w.starts(), 1);

    // A predicate that already holds returns at once.
    let mut watch = rt.subscribe();
    tokio::time::timeout(
        Duration::from_millis(1),
        watch.wait_until(|rt| rt.status().state == Running),
    )
    .await
    .expect("already true");
    assert_eq!(watch.runtime().name(), "rt");
}

#[tokio::test(start_paused = true)]
async fn status_watch_changed_wakes_on_every_commit() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    let mut watch = rt.subscribe();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watch.changed())
            .await
            .is_err()
    );
    w.context(0).unwrap().set_ready(false).unwrap();
    tokio::time::timeout(Duration::from_secs(1), watch.changed())
        .await
        .expect("woken by the change");
}

#[tokio::test(start_paused = true)]
async fn every_concurrent_exit_waiter_sees_the_same_exit() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            spawn(async move { rt.wait_exit("rt/w").await })
        })
        .collect();
    settle().await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "running: still waiting"
    );

    rt.stop("w").await.unwrap();
    let mut exits = Vec::new();
    for waiter in waiters {
        exits.push(within(waiter).await.unwrap().unwrap());
    }
    assert_eq!(exits[0].reason, ExitReason::Stopped);
    assert_eq!(exits[0].incarnation, 1);
    assert_eq!(exits[0].failure, None);
    assert!(exits.iter().all(|e| *e == exits[0]));
    // A late waiter gets the last exit at once.
    assert_eq!(within(rt.wait_exit("w")).await.unwrap(), exits[0]);
}

#[tokio::test(start_paused = true)]
async fn wait_exit_on_a_never_started_worker_waits_for_its_first_incarnation() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    let waiter = spawn({
        let rt = rt.clone();
        async move { rt.wait_exit("w").await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiter.is_finished());
    rt.start("w").await.unwrap();
    settle().await;
    assert!(
        !waiter.is_finished(),
        "running: the incarnation has not ended"
    );
    w.context(0).unwrap().report_failure("boom").unwrap();
    let exit = within(waiter).await.unwrap().unwrap();
    assert_eq!(exit.incarnation, 1);
    assert_eq!(exit.reason, ExitReason::Failed);
    assert_eq!(exit.failure.unwrap().code(), "worker_failed");
}

#[tokio::test(start_paused = true)]
async fn wait_exit_on_a_restarted_worker_waits_for_the_current_incarnation() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    let waiter = spawn({
        let rt = rt.clone();
        async move { rt.wait_exit("w").await }
    });
    settle().await;
    assert!(
        !waiter.is_finished(),
        "the first incarnation's exit is stale"
    );
    rt.stop("w").await.unwrap();
    assert_eq!(within(waiter).await.unwrap().unwrap().incarnation, 2);
}

#[tokio::test(start_paused = true)]
async fn wait_exit_rejects_unknown_workers() {
    let rt = Runtime::builder("rt").build().unwrap();
    assert_eq!(
        rt.wait_exit("missing").await.unwrap_err().code(),
        "worker_not_found"
    );
    assert_eq!(
        rt.wait_exit("other/w").await.unwrap_err().code(),
        "worker_not_found"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lifecycle_call_returns_only_after_its_events_were_delivered() {
    /// Records operation events; both must be there when `start` returns.
    #[derive(Default)]
    struct Ends(Mutex<Vec<String>>);
    impl Observer for Ends {
        fn on_operation(&self, e: &OperationEvent) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {:?}", e.operation, e.phase));
        }
    }
    let ends = Arc::new(Ends::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(ends.clone())
        .build()
        .unwrap();
    fake(&rt, "w");
    rt.start("w").await.unwrap();
    assert_eq!(
        *ends.0.lock().unwrap(),
        ["start Started", "start Succeeded"]
    );
}

/// `drain_all` (and the drain pass of a shutdown) drains in chunks of workers per hold of the
/// state lock; each worker's drain is still committed on its own: its transition and readiness
/// in registration order, the runtime's events right after the first drain, and `seq` strictly
/// increasing. Enough workers for several chunks, and a worker that is not running is skipped.
#[tokio::test(start_paused = true)]
async fn drain_all_emits_each_workers_events_in_registration_order() {
    let (rt, recorder) = recorded();
    let n = 150;
    for i in 0..n {
        fake(&rt, &format!("w{i}"));
    }
    rt.start_all().await.unwrap();
    rt.stop("w70").await.unwrap();
    recorder.clear();
    rt.drain_all().await.unwrap();
    // (The runtime is already unready: `w70` is stopped.)
    let mut expected = vec![];
    for i in (0..n).filter(|&i| i != 70) {
        expected.push(format!("T rt/w{i} running->draining"));
        expected.push(format!("R rt/w{i} false"));
        if i == 0 {
            expected.push("T rt running->draining".to_owned());
        }
    }
    assert_eq!(recorder.all_briefs(), expected);
    let seqs: Vec<u64> = recorder.events().iter().filter_map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "{seqs:?}");
}

/// The same for the drain pass of a shutdown, whose stop pass then goes in reverse order.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_in_registration_order_then_stops_in_reverse() {
    let (rt, recorder) = recorded();
    let n = 100;
    for i in 0..n {
        fake(&rt, &format!("w{i}"));
    }
    rt.start_all().await.unwrap();
    recorder.clear();
    let report = rt.shutdown().await.unwrap();
    let expected: Vec<String> = (0..n).rev().map(|i| format!("rt/w{i}")).collect();
    assert_eq!(report.stopped_names(), expected);
    let briefs = recorder.briefs();
    let drains: Vec<&String> = briefs.iter().filter(|b| b.contains("->draining")).collect();
    let mut expected_drains: Vec<String> = (0..n)
        .map(|i| format!("T rt/w{i} running->draining"))
        .collect();
    // The runtime's own transition comes right after the first worker's drain.
    expected_drains.insert(1, "T rt running->draining".to_owned());
    assert_eq!(drains, expected_drains.iter().collect::<Vec<_>>());
    let stops: Vec<&String> = briefs
        .iter()
        .filter(|b| b.contains("rt/w") && b.contains("->stopped"))
        .collect();
    let expected_stops: Vec<String> = (0..n)
        .rev()
        .map(|i| format!("T rt/w{i} stopping->stopped"))
        .collect();
    assert_eq!(stops, expected_stops.iter().collect::<Vec<_>>());
    let seqs: Vec<u64> = recorder.events().iter().filter_map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
