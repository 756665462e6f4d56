//! Graceful shutdown (spec §2.5 "Shutdown", with the Rust rules: readiness false at the first
//! instant, registration closed from then on, the stop phase always runs under `stop_grace`
//! (§11.1 #5), and a terminal runtime afterwards).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use support::{fake, fake_with, recorded, recorded_with, spawn, state};
use tokio::time::Instant;
use workerkit_core::error::{LifecycleError, RegisterError, ShutdownError};
use workerkit_core::observe::{
    BoxFuture, FailureEvent, Observer, OperationEvent, OperationPhase, ReadinessEvent,
    TransitionEvent,
};
use workerkit_core::test_util::{FakeWorker, Step};
use workerkit_core::{
    LifecycleState, Runtime, ShutdownOptions, WorkerContext, WorkerSpec, worker_fn,
};

use LifecycleState::{Draining, Failed, Registered, Stopped};

#[tokio::test(start_paused = true)]
async fn shutdown_closes_readiness_drains_in_order_then_stops_in_reverse_order() {
    let (rt, recorder) = recorded();
    let a = fake(&rt, "a");
    // Never started: left alone (and not contributing, so the runtime is ready before).
    let idle = fake_with(&rt, "idle", |s| s.contributes_to_readiness(false));
    let c = fake(&rt, "c");
    rt.start("a").await.unwrap();
    rt.start("c").await.unwrap();
    assert!(rt.status().ready);
    recorder.clear();

    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.stopped_names(), ["rt/c", "rt/a"]);
    assert!(!report.deadline_exceeded);
    assert_eq!(report.abandoned_in_flight, 0);
    assert_eq!(
        recorder.all_briefs(),
        [
            "R rt false",
            "O shutdown started",
            "T rt/a running->draining",
            "R rt/a false",
            "T rt running->draining",
            "T rt/c running->draining",
            "R rt/c false",
            "T rt/c draining->stopping",
            "T rt/c stopping->stopped",
            "T rt/a draining->stopping",
            "T rt draining->stopping",
            "T rt/a stopping->stopped",
            "T rt stopping->stopped",
            "O shutdown succeeded",
        ]
    );
    assert_eq!((a.stops(), idle.stops(), c.stops()), (1, 0, 1));
    assert_eq!(state(&rt, "idle"), Registered);
    let status = rt.status();
    assert_eq!(status.state, Stopped);
    assert!(status.shutting_down);
    assert!(!status.ready);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_failed_workers_too() {
    let rt = Runtime::builder("rt").build().unwrap();
    let ok = fake(&rt, "ok");
    let bad = fake(&rt, "bad");
    rt.start_all().await.unwrap();
    bad.context(0).unwrap().report_failure("boom").unwrap();
    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.stopped_names(), ["rt/bad", "rt/ok"]);
    assert_eq!((ok.stops(), bad.stops()), (1, 1));
    assert_eq!(state(&rt, "bad"), Stopped);
}

/// Records, for every event, whether the runtime reported itself ready at that moment.
#[derive(Default)]
struct ReadyProbe {
    runtime: OnceLock<Runtime>,
    seen: Mutex<Vec<(String, bool, bool)>>,
}

impl ReadyProbe {
    fn note(&self, what: String) {
        if let Some(rt) = self.runtime.get() {
            let ready = rt.status().ready;
            let probe = rt.readiness().ready;
            self.seen.lock().unwrap().push((what, ready, probe));
        }
    }
}

impl Observer for ReadyProbe {
    fn on_transition(&self, e: &TransitionEvent) {
        self.note(format!("T {:?} {}->{}", e.worker, e.from, e.to));
    }
    fn on_readiness(&self, e: &ReadinessEvent) {
        self.note(format!("R {:?} {}", e.worker, e.ready));
    }
    fn on_operation(&self, e: &OperationEvent) {
        self.note(format!("O {} {:?}", e.operation, e.phase));
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_is_false_from_the_first_event_of_shutdown() {
    let probe = Arc::new(ReadyProbe::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(probe.clone())
        .build()
        .unwrap();
    probe.runtime.set(rt.clone()).unwrap();
    fake(&rt, "a");
    fake(&rt, "b");
    rt.start_all().await.unwrap();
    assert!(rt.status().ready);
    probe.seen.lock().unwrap().clear();

    rt.shutdown().await.unwrap();
    let seen = probe.seen.lock().unwrap().clone();
    // Readiness goes false as the shutdown is asked for, even before it wins the lifecycle
    // gate; from then on, status and probe both say not ready, before any worker drains.
    assert_eq!(seen[0].0, "R None false");
    assert_eq!(seen[1].0, "O shutdown Started");
    for (what, ready, probe_ready) in &seen {
        assert!(!ready && !probe_ready, "ready at {what}: {seen:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn while_shutting_down_the_runtime_is_unready_and_closed_to_registration() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    rt.start_all().await.unwrap();
    a.on_stop(Step::Block);
    let shutting_down = spawn({
        let rt = rt.clone();
        async move { rt.shutdown().await }
    });
    a.entered(2).await; // start, then the stop of the shutdown

    let status = rt.status();
    assert!(status.shutting_down);
    assert!(!status.ready);
    let readiness = rt.readiness();
    assert!(!readiness.ready);
    assert_eq!(
        readiness.reason,
        "runtime not ready: state=stopping (shutting down)"
    );
    let (worker, late) = FakeWorker::new();
    let err = rt.register(WorkerSpec::new("late", worker)).unwrap_err();
    assert!(
        matches!(&err, RegisterError::ShuttingDown { runtime } if runtime == "rt"),
        "{err:?}"
    );
    assert_eq!(err.code(), "runtime_shutting_down");
    assert!(rt.worker("late").is_none());

    a.release();
    shutting_down.await.unwrap().unwrap();
    assert_eq!(late.starts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_stop_makes_shutdown_incomplete_and_the_others_still_stop() {
    let (rt, recorder) = recorded_with(|b| b.no_stop_timeout());
    let a = fake(&rt, "a");
    let b = fake(&rt, "b");
    let hang = fake(&rt, "hang");
    rt.start_all().await.unwrap();
    hang.on_stop(Step::Hang);

    let began = Instant::now();
    let err = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(1),
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    // The hanging stop (first in reverse order) used the whole stop phase: max(budget left,
    // stop_grace) = 2 s.
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    assert_eq!(err.code(), "shutdown_incomplete");
    let ShutdownError::Incomplete { unfinished, report } = &err else {
        panic!("expected Incomplete, got {err:?}");
    };
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].worker, "rt/hang");
    assert_eq!(unfinished[0].state, Failed);
    assert_eq!(unfinished[0].failure.code(), "deadline_exceeded");
    assert_eq!(report.stopped_names(), ["rt/b", "rt/a"]);
    assert!(
        !report.deadline_exceeded,
        "the drain and idle wait were in time"
    );
    assert!(
        err.to_string().contains("rt/hang (deadline_exceeded)"),
        "{err}"
    );

    // The stop phase went on after the hanging worker.
    assert_eq!((a.stops(), b.stops(), hang.stops()), (1, 1, 1));
    assert_eq!(state(&rt, "a"), Stopped);
    assert_eq!(state(&rt, "b"), Stopped);
    assert_eq!(state(&rt, "hang"), Failed);
    assert_eq!(
        rt.worker("hang").unwrap().status.last_failure.unwrap().code,
        "deadline_exceeded"
    );
    assert!(
        recorder
            .all_briefs()
            .contains(&"O shutdown failed:shutdown_incomplete".to_owned()),
        "{:?}",
        recorder.all_briefs()
    );
}

fn slow_stop(rt: &Runtime, name: &str, stop_takes: Duration, stopped: &Arc<AtomicUsize>) {
    let stopped = Arc::clone(stopped);
    rt.register(
        WorkerSpec::new(
            name,
            worker_fn(|_ctx| async { Ok(()) }).on_stop(move |_ctx: WorkerContext| {
                let stopped = Arc::clone(&stopped);
                async move {
                    tokio::time::sleep(stop_takes).await;
                    stopped.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .no_stop_timeout(),
    )
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_stop_phase_gets_stop_grace_when_the_budget_is_spent() {
    // Go leaves workers draining when the budget runs out (§11.1 #5); here the stop phase
    // always runs, within max(what is left of the budget, stop_grace).
    let rt = Runtime::builder("rt").build().unwrap();
    let stopped = Arc::new(AtomicUsize::new(0));
    slow_stop(&rt, "a", Duration::from_secs(1), &stopped);
    slow_stop(&rt, "b", Duration::from_secs(3), &stopped);
    rt.start_all().await.unwrap();

    let began = Instant::now();
    let report = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(1),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(4),
        "well past the 1 s budget"
    );
    assert_eq!(report.stopped_names(), ["rt/b", "rt/a"]);
    assert_eq!(stopped.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_stop_phase_gets_the_rest_of_the_budget_when_it_exceeds_stop_grace() {
    let rt = Runtime::builder("rt").build().unwrap();
    let stopped = Arc::new(AtomicUsize::new(0));
    slow_stop(&rt, "a", Duration::from_secs(6), &stopped);
    rt.start_all().await.unwrap();
    let report = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
    assert_eq!(report.stopped_names(), ["rt/a"]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_stop_timeout_still_applies_within_shutdown() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake_with(&rt, "w", |s| s.stop_timeout(Duration::from_secs(2)));
    rt.start_all().await.unwrap();
    w.on_stop(Step::Hang);
    let began = Instant::now();
    let err = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .await
        .unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    let ShutdownError::Incomplete { unfinished, .. } = &err else {
        panic!("expected Incomplete, got {err:?}");
    };
    assert_eq!(unfinished[0].worker, "rt/w");
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_is_fine_and_stops_what_was_left() {
    let rt = Runtime::builder("rt")
        .no_stop_timeout()
        .stop_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    rt.start_all().await.unwrap();
    w.on_stop(Step::Hang);
    rt.shutdown().await.unwrap_err();
    assert_eq!(state(&rt, "w"), Failed);

    // The next stop succeeds: a second shutdown stops the failed worker.
    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.stopped_names(), ["rt/w"]);
    assert_eq!(state(&rt, "w"), Stopped);
    // And a third has nothing left to do.
    let report = rt.shutdown().await.unwrap();
    assert!(report.stopped.is_empty());
    assert_eq!(w.stops(), 2);
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_the_runtime_is_terminal() {
    // Rust rule: Go lets stopped workers start again after Shutdown; here `start` is refused.
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    fake(&rt, "never");
    rt.start("w").await.unwrap();
    rt.shutdown().await.unwrap();

    for name in ["w", "never"] {
        let err = rt.start(name).await.unwrap_err();
        assert!(
            matches!(&err, LifecycleError::ShutDown { runtime } if runtime == "rt"),
            "{err:?}"
        );
        assert_eq!(err.code(), "runtime_shut_down");
    }
    assert_eq!(
        rt.start_all().await.unwrap_err().code(),
        "runtime_shut_down"
    );
    let (worker, _control) = FakeWorker::new();
    assert_eq!(
        rt.register(WorkerSpec::new("late", worker))
            .unwrap_err()
            .code(),
        "runtime_shutting_down"
    );
    assert_eq!(w.starts(), 1);
    assert_eq!(state(&rt, "never"), Registered);
    // Operations that start nothing still answer.
    rt.stop_all().await.unwrap();
    rt.drain_all().await.unwrap();
    assert_eq!(rt.status().state, Stopped);
    assert!(!rt.status().ready);
}

struct Flushing {
    flushed: Arc<AtomicBool>,
    takes: Duration,
}

impl Observer for Flushing {
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            tokio::time::sleep(self.takes).await;
            self.flushed.store(true, Ordering::SeqCst);
        })
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_awaits_the_observers_shutdown_hooks() {
    let first = Arc::new(AtomicBool::new(false));
    let second = Arc::new(AtomicBool::new(false));
    let rt = Runtime::builder("rt")
        .with_observer(Flushing {
            flushed: Arc::clone(&first),
            takes: Duration::from_secs(2),
        })
        .with_observer(Flushing {
            flushed: Arc::clone(&second),
            takes: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    fake(&rt, "w");
    rt.start_all().await.unwrap();
    assert!(!first.load(Ordering::SeqCst));
    rt.shutdown().await.unwrap();
    assert!(first.load(Ordering::SeqCst), "awaited, not just started");
    assert!(second.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_observer_hook_is_bounded_by_the_flush_timeout() {
    let flushed = Arc::new(AtomicBool::new(false));
    let rt = Runtime::builder("rt")
        .observer_flush_timeout(Duration::from_secs(3))
        .with_observer(Flushing {
            flushed: Arc::clone(&flushed),
            takes: Duration::from_secs(3600),
        })
        .build()
        .unwrap();
    fake(&rt, "w");
    rt.start_all().await.unwrap();
    let began = Instant::now();
    rt.shutdown().await.unwrap();
    assert_eq!(began.elapsed(), Duration::from_secs(3));
    assert!(!flushed.load(Ordering::SeqCst));
    assert_eq!(rt.status().state, Stopped);
}

#[tokio::test(start_paused = true)]
async fn the_observers_see_every_shutdown_event_before_their_hook_runs() {
    #[derive(Default)]
    struct Ordered {
        log: Mutex<Vec<String>>,
    }
    impl Observer for Ordered {
        fn on_failure(&self, _: &FailureEvent) {
            self.log.lock().unwrap().push("failure".into());
        }
        fn on_operation(&self, e: &OperationEvent) {
            if e.phase != OperationPhase::Started {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("{} ended", e.operation));
            }
        }
        fn shutdown(&self) -> BoxFuture<'_, ()> {
            self.log.lock().unwrap().push("hook".into());
            Box::pin(async {})
        }
    }
    let observer = Arc::new(Ordered::default());
    let rt = Runtime::builder("rt")
        .with_shared_observer(observer.clone())
        .build()
        .unwrap();
    let w = fake(&rt, "w");
    rt.start_all().await.unwrap();
    w.on_stop(Step::Fail("boom".into()));
    observer.log.lock().unwrap().clear();
    rt.shutdown().await.unwrap_err();
    assert_eq!(
        *observer.log.lock().unwrap(),
        ["failure", "shutdown ended", "hook"]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_of_an_empty_runtime_succeeds() {
    let rt = Runtime::builder("rt").build().unwrap();
    let report = rt.shutdown().await.unwrap();
    assert!(report.stopped.is_empty());
    assert!(rt.status().shutting_down);
    assert_eq!(rt.status().state, Registered);
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_draining_workers_stopped() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start_all().await.unwrap();
    rt.drain("w").await.unwrap();
    assert_eq!(state(&rt, "w"), Draining);
    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.stopped_names(), ["rt/w"]);
    assert_eq!(w.stops(), 1);
    assert_eq!(state(&rt, "w"), Stopped);
}
