//! Supervised restart and the heartbeat watchdog (issue 7): the pitfalls of `seed-systems.md` §8
//! and the anchors' restart bugs (`rust-anchors.md` §9), as named tests.
//!
//! Every test runs on a paused clock; workers and tests synchronise through the status feed,
//! counters and latches, never real sleeps.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::time::Instant;
use workerkit_core::retry::{Backoff, permanent};
use workerkit_core::status::WorkerStatus;
use workerkit_core::supervise::{
    Intensity, RestartMode, RestartPolicy, StallAction, SupervisionError, Watchdog,
};
use workerkit_core::test_util::{Recorded, RecordingObserver};
use workerkit_core::{
    ExitReason, FailurePolicy, LifecycleError, LifecycleState, LoopWorker, Runtime, WorkerContext,
    WorkerSpec,
};

const MS: Duration = Duration::from_millis(1);

// ---- helpers -------------------------------------------------------------------------------

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

/// Fails the test instead of hanging it (on the paused clock this costs no real time).
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .expect("timed out waiting for a condition")
}

/// What one incarnation's loop does.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Runs until asked to stop (the default once the script is empty).
    Run,
    /// Returns an error at once.
    Fail,
    /// Returns an error marked permanent.
    FailPermanently,
    /// Panics at once.
    Panic,
    /// Returns `Ok` unasked.
    Exit,
    /// Beats every 10 ms until asked to stop.
    Beat,
}

/// A script of loop behaviours, one per incarnation, and a record of what ran.
#[derive(Clone, Default)]
struct Script {
    acts: Arc<Mutex<VecDeque<Act>>>,
    /// Incarnations whose loop began.
    began: Arc<AtomicUsize>,
    /// Loops running now (at most one live incarnation).
    live: Arc<AtomicUsize>,
    /// The most loops ever running at once.
    most_live: Arc<AtomicUsize>,
    /// Every context handed to a loop.
    contexts: Arc<Mutex<Vec<WorkerContext>>>,
}

impl Script {
    fn new(acts: impl IntoIterator<Item = Act>) -> Self {
        let script = Self::default();
        script.acts.lock().unwrap().extend(acts);
        script
    }

    fn next(&self) -> Act {
        self.acts.lock().unwrap().pop_front().unwrap_or(Act::Run)
    }

    fn context(&self, n: usize) -> WorkerContext {
        self.contexts.lock().unwrap()[n].clone()
    }

    /// A factory spec running this script.
    fn spec(&self, name: &str) -> WorkerSpec {
        let script = self.clone();
        WorkerSpec::from_factory(name, move || {
            let script = script.clone();
            LoopWorker::new(move |ctx: WorkerContext| {
                let script = script.clone();
                async move {
                    script.began.fetch_add(1, Ordering::SeqCst);
                    script.contexts.lock().unwrap().push(ctx.clone());
                    let now = script.live.fetch_add(1, Ordering::SeqCst) + 1;
                    script.most_live.fetch_max(now, Ordering::SeqCst);
                    struct Live(Arc<AtomicUsize>);
                    impl Drop for Live {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _live = Live(Arc::clone(&script.live));
                    match script.next() {
                        Act::Run => {
                            ctx.stop_requested().await;
                            Ok(())
                        }
                        Act::Fail => Err("broker connection lost".into()),
                        Act::FailPermanently => Err(permanent(std::io::Error::other("bad config"))),
                        Act::Panic => panic!("expected panic in the loop"),
                        Act::Exit => Ok(()),
                        Act::Beat => {
                            let mut tick = tokio::time::interval(10 * MS);
                            loop {
                                tokio::select! {
                                    () = ctx.stop_requested() => return Ok(()),
                                    _ = tick.tick() => ctx.beat(),
                                }
                            }
                        }
                    }
                }
            })
        })
    }
}

fn constant(ms: u64) -> RestartPolicy {
    RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(ms)))
        .unbounded()
}

fn runtime(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .jitter_seed(7)
        .build()
        .unwrap()
}

fn status(rt: &Runtime, name: &str) -> WorkerStatus {
    rt.worker(name).unwrap().status
}

async fn until(rt: &Runtime, predicate: impl FnMut(&Runtime) -> bool) {
    within(rt.subscribe().wait_until(predicate)).await;
}

async fn until_worker(rt: &Runtime, name: &str, mut predicate: impl FnMut(&WorkerStatus) -> bool) {
    let name = name.to_owned();
    until(rt, move |rt| predicate(&rt.worker(&name).unwrap().status)).await;
}

fn supervision(recorder: &RecordingObserver) -> Vec<String> {
    recorder
        .events()
        .iter()
        .filter(|e| matches!(e, Recorded::Supervision(_)))
        .map(Recorded::brief)
        .collect()
}

// ---- restart policy ------------------------------------------------------------------------

/// Pitfall #2: a panicking worker under `on_failure` restarts after the initial backoff, and the
/// snapshot shows the panic and one restart.
#[tokio::test(start_paused = true)]
async fn pitfall_02_a_panicking_worker_restarts_after_the_initial_backoff() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Run, Act::Run]);
    rt.register(script.spec("w").restart(constant(100)))
        .unwrap();
    rt.start("w").await.unwrap();

    let crashed = Instant::now();
    // First a reported failure of the running incarnation...
    script
        .context(0)
        .report_failure(std::io::Error::other("placeholder"))
        .unwrap();
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Restarting);
    assert!(s.next_restart_at.is_some());
    assert_eq!(s.restarts, 0);
    until_worker(&rt, "w", |s| {
        s.state == LifecycleState::Running && s.restarts == 1
    })
    .await;
    assert!(
        crashed.elapsed() >= 100 * MS,
        "restarted before the backoff"
    );
    assert!(
        crashed.elapsed() < 150 * MS,
        "restarted late: {:?}",
        crashed.elapsed()
    );

    // ...then a real panic in the loop of another worker.
    let script2 = Script::new([Act::Panic]);
    rt.register(script2.spec("p").restart(constant(100)))
        .unwrap();
    rt.start("p").await.unwrap();
    until_worker(&rt, "p", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    let s = status(&rt, "p");
    assert_eq!(s.last_exit.as_ref().unwrap().reason, ExitReason::Panicked);
    assert_eq!(s.last_exit.as_ref().unwrap().incarnation, 1);
    assert_eq!(s.incarnation, 2);
    assert!(s.next_restart_at.is_none());
    assert!(!s.gave_up);
    let briefs = supervision(&recorder);
    assert!(
        briefs.contains(&"U rt/p restart_scheduled".to_owned()),
        "{briefs:?}"
    );
    assert!(
        briefs.contains(&"U rt/p restarted".to_owned()),
        "{briefs:?}"
    );
}

/// Every failure path ends in a restart, end to end (pitfall #26): a returned error, a panic, an
/// unexpected `Ok` exit, a reported failure, a command handler's panic.
#[tokio::test(start_paused = true)]
async fn pitfall_26_every_failure_path_restarts_end_to_end() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let cases = [
        ("error", Act::Fail, ExitReason::Failed),
        ("panic", Act::Panic, ExitReason::Panicked),
        ("exit", Act::Exit, ExitReason::ExitedUnexpectedly),
    ];
    for (name, act, _) in cases {
        let script = Script::new([act]);
        rt.register(script.spec(name).restart(constant(10)))
            .unwrap();
    }
    let handler = workerkit_core::handler_fn(|_ctx| async move {
        panic!("expected panic in the handler");
        #[allow(unreachable_code)]
        Ok(workerkit_core::CommandResponse::empty())
    });
    let command_script = Script::new([]);
    rt.register(
        command_script
            .spec("command")
            .restart(constant(10))
            .command(workerkit_core::CommandSpec::new("boom", handler)),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let err = rt
        .dispatch(workerkit_core::CommandRequest::new("command", "boom"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_panicked");

    for (name, _, reason) in cases {
        until_worker(&rt, name, |s| {
            s.restarts == 1 && s.state == LifecycleState::Running
        })
        .await;
        assert_eq!(
            status(&rt, name).last_exit.unwrap().reason,
            reason,
            "{name}"
        );
    }
    until_worker(&rt, "command", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    assert_eq!(
        status(&rt, "command").last_exit.unwrap().reason,
        ExitReason::Panicked
    );
    // The restarted worker serves commands again.
    let err = rt
        .dispatch(workerkit_core::CommandRequest::new("command", "boom"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_panicked");
}

/// A requested stop or drain is never a failure and never restarts (kameo PR #377).
#[tokio::test(start_paused = true)]
async fn an_operators_stop_or_drain_never_restarts() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([]);
    rt.register(
        script
            .spec("w")
            .restart(RestartPolicy::always().unbounded()),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    rt.stop("w").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Stopped);
    assert_eq!(s.restarts, 0);
    assert_eq!(s.last_exit.unwrap().reason, ExitReason::Stopped);
    assert_eq!(script.began.load(Ordering::SeqCst), 1);
    assert!(supervision(&recorder).is_empty());
}

/// A failure while draining is not restarted: the drain asked the worker to wind down.
#[tokio::test(start_paused = true)]
async fn a_failure_while_draining_is_not_restarted() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([]);
    rt.register(script.spec("w").restart(constant(10))).unwrap();
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    script
        .context(0)
        .report_failure(std::io::Error::other("lost"))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Failed);
    assert_eq!(s.restarts, 0);
}

/// A stop issued while the worker waits in backoff is not undone by the pending restart
/// (task-supervisor 0.5.0).
#[tokio::test(start_paused = true)]
async fn a_stop_during_backoff_cancels_the_restart_for_good() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(1000)))
        .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.state == LifecycleState::Restarting).await;
    rt.stop("w").await.unwrap();
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Stopped);
    assert!(s.next_restart_at.is_none());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Stopped);
    assert_eq!(s.restarts, 0);
    assert_eq!(script.began.load(Ordering::SeqCst), 1);
    assert!(
        supervision(&recorder).contains(&"U rt/w restart_cancelled".to_owned()),
        "{:?}",
        supervision(&recorder)
    );
}

/// A drain during backoff cancels the restart; the worker waits, draining, for a stop.
#[tokio::test(start_paused = true)]
async fn a_drain_during_backoff_cancels_the_restart() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(1000)))
        .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.state == LifecycleState::Restarting).await;
    rt.drain("w").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Draining);
    assert!(!s.ready);
    assert_eq!(s.restarts, 0);
    assert_eq!(script.began.load(Ordering::SeqCst), 1);
    rt.stop("w").await.unwrap();
    assert_eq!(status(&rt, "w").state, LifecycleState::Stopped);
}

/// A shutdown during backoff cancels the restart and stops the worker.
#[tokio::test(start_paused = true)]
async fn a_shutdown_during_backoff_cancels_the_restart() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(1000)))
        .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.state == LifecycleState::Restarting).await;
    rt.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Stopped);
    assert_eq!(script.began.load(Ordering::SeqCst), 1);
}

/// A manual stop and start racing an automatic restart never give two incarnations
/// (task-supervisor 0.5.0); a requested start of a restarting worker is refused.
#[tokio::test(start_paused = true)]
async fn a_manual_restart_racing_the_automatic_one_gives_one_incarnation() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(100)))
        .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.state == LifecycleState::Restarting).await;
    let err = rt.start("w").await.unwrap_err();
    assert!(matches!(err, LifecycleError::InvalidState { .. }), "{err}");
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Running);
    assert_eq!(s.incarnation, 2);
    assert_eq!(s.restarts, 0, "the manual start is not a restart");
    assert_eq!(script.began.load(Ordering::SeqCst), 2);
    assert_eq!(script.most_live.load(Ordering::SeqCst), 1);
}

/// The next incarnation never starts before the previous one's stop finished (kameo PR #387):
/// the failed incarnation's `stop` (here a slow cleanup hook) runs first.
#[tokio::test(start_paused = true)]
async fn the_next_incarnation_waits_for_the_failed_ones_stop() {
    let rt = Runtime::builder("rt").build().unwrap();
    let cleaning = Arc::new(AtomicBool::new(false));
    let overlap = Arc::new(AtomicBool::new(false));
    let incarnations = Arc::new(AtomicUsize::new(0));
    let (c, o, n) = (cleaning.clone(), overlap.clone(), incarnations.clone());
    rt.register(
        WorkerSpec::from_factory("w", move || {
            let (c1, o1, n1) = (c.clone(), o.clone(), n.clone());
            let c2 = c.clone();
            LoopWorker::new(move |ctx: WorkerContext| {
                let (c, o, n) = (c1.clone(), o1.clone(), n1.clone());
                async move {
                    if c.load(Ordering::SeqCst) {
                        o.store(true, Ordering::SeqCst);
                    }
                    if n.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err("first incarnation fails".into());
                    }
                    ctx.stop_requested().await;
                    Ok(())
                }
            })
            .on_stop(move |_ctx| {
                let c = c2.clone();
                async move {
                    c.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    c.store(false, Ordering::SeqCst);
                    Ok(())
                }
            })
        })
        .restart(constant(0)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    assert!(
        !overlap.load(Ordering::SeqCst),
        "started during the cleanup"
    );
    assert_eq!(incarnations.load(Ordering::SeqCst), 2);
}

/// Handles taken before a restart keep working after it (kameo #392, bastion #287); a context of
/// the old incarnation is stale and changes nothing (a late writer never overwrites newer
/// state).
#[tokio::test(start_paused = true)]
async fn handles_survive_a_restart_and_old_contexts_are_stale() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let handle = rt.clone();
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(10))).unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    assert_eq!(handle.worker("w").unwrap().status.incarnation, 2);
    let old = script.context(0);
    assert!(old.report_failure(std::io::Error::other("late")).is_err());
    assert!(old.set_ready(false).is_err());
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Running);
    assert!(s.ready);
    // The restart context says what happened.
    let info = script.context(1).restart().cloned().unwrap();
    assert_eq!(info.attempt, 1);
    assert_eq!(info.restarts, 1);
    assert_eq!(info.previous.incarnation, 1);
    assert_eq!(info.previous.reason, ExitReason::Failed);
    assert!(script.context(0).restart().is_none());
}

/// A late failure report from the failed incarnation (its loop returning an error after it
/// reported a failure) does not overwrite the `restarting` state, nor does it once the worker
/// was drained (pitfall #4).
#[tokio::test(start_paused = true)]
async fn pitfall_04_a_late_report_never_revises_a_newer_state() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([]);
    rt.register(script.spec("w").restart(constant(1000)))
        .unwrap();
    rt.start("w").await.unwrap();
    let ctx = script.context(0);
    ctx.report_failure(std::io::Error::other("first")).unwrap();
    assert_eq!(status(&rt, "w").state, LifecycleState::Restarting);
    assert!(ctx.report_failure(std::io::Error::other("second")).is_err());
    assert_eq!(status(&rt, "w").state, LifecycleState::Restarting);
    rt.drain("w").await.unwrap();
    assert!(ctx.report_failure(std::io::Error::other("third")).is_err());
    assert_eq!(status(&rt, "w").state, LifecycleState::Draining);
    let scheduled = supervision(&recorder)
        .iter()
        .filter(|b| b.ends_with("restart_scheduled"))
        .count();
    assert_eq!(scheduled, 1);
}

/// A stop racing a natural failure (yield interleavings): the final state is exactly one of the
/// two outcomes and is never revised afterwards (pitfall #4).
#[tokio::test(start_paused = true)]
async fn pitfall_04_stop_racing_a_crash_settles_once() {
    for yields in 0..12 {
        let rt = Runtime::builder("rt").build().unwrap();
        let script = Script::new([]);
        rt.register(script.spec("w").restart(constant(50))).unwrap();
        rt.start("w").await.unwrap();
        let ctx = script.context(0);
        let crash = async {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            let _ = ctx.report_failure(std::io::Error::other("crash"));
        };
        let (_, stopped) = tokio::join!(crash, rt.stop("w"));
        let settled = status(&rt, "w");
        // Either the stop won (stopped) or the crash won and the stop stopped the restarting
        // worker: stopped either way, never restarted afterwards.
        assert!(stopped.is_ok(), "yields {yields}: {stopped:?}");
        assert_eq!(settled.state, LifecycleState::Stopped, "yields {yields}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let later = status(&rt, "w");
        assert_eq!(later.state, LifecycleState::Stopped, "yields {yields}");
        assert_eq!(later.incarnation, 1, "yields {yields}");
        assert_eq!(script.began.load(Ordering::SeqCst), 1, "yields {yields}");
    }
}

/// Pitfall #5: three concurrent waiters on a failing worker all see the same reason; waiting on
/// a panicked worker does not hang (suture v4.0.2).
#[tokio::test(start_paused = true)]
async fn pitfall_05_concurrent_waiters_see_the_same_exit() {
    quiet_expected_panics();
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Panic]);
    rt.register(script.spec("w").restart(constant(10))).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let rt = rt.clone();
            async move { rt.wait_exit("w").await.unwrap() }
        })
        .collect();
    let start = async { rt.start("w").await.unwrap() };
    let (exits, _) = tokio::join!(futures_join_all(waiters), start);
    assert!(exits.iter().all(|e| e == &exits[0]));
    assert_eq!(exits[0].reason, ExitReason::Panicked);
    assert_eq!(exits[0].incarnation, 1);
}

/// Joins futures of one type (no `futures` dependency).
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        out.push(f.await);
    }
    out
}

/// Backoff grows with consecutive failures and resets after a healthy run.
#[tokio::test(start_paused = true)]
async fn backoff_grows_and_resets_after_a_healthy_run() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([Act::Fail, Act::Fail, Act::Fail]);
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::exponential(100 * MS, 2.0, Duration::from_secs(10)).unwrap())
        .reset_after(Duration::from_secs(5))
        .unbounded();
    rt.register(script.spec("w").restart(policy)).unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 3 && s.state == LifecycleState::Running
    })
    .await;
    let delays: Vec<Duration> = recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Supervision(e) => match &e.kind {
                workerkit_core::observe::SupervisionKind::RestartScheduled { delay, .. } => {
                    Some(*delay)
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS]);
    // A healthy run of 5 s: the next failure starts the backoff over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    script
        .context(3)
        .report_failure(std::io::Error::other("after a good run"))
        .unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 4 && s.state == LifecycleState::Running
    })
    .await;
    assert_eq!(script.context(4).restart().unwrap().attempt, 1);
}

/// Intensity: more restarts than allowed within the window gives up; then the failure policy
/// applies (`fail_runtime`: the runtime fails, so Kubernetes can restart the pod). Limits larger
/// than any internal buffer still trip (task-supervisor 0.5.2).
#[tokio::test(start_paused = true)]
async fn intensity_gives_up_and_only_then_the_failure_policy_applies() {
    for max in [3_u32, 40] {
        let recorder = RecordingObserver::new();
        let rt = runtime(&recorder);
        let script = Script::new(std::iter::repeat_n(Act::Fail, 1000));
        let policy = RestartPolicy::on_failure()
            .backoff(Backoff::constant(MS))
            .intensity(Intensity::new(max, Duration::from_secs(60)).unwrap());
        rt.register(
            script
                .spec("w")
                .restart(policy)
                .failure_policy(FailurePolicy::FailRuntime),
        )
        .unwrap();
        rt.start("w").await.unwrap();
        // While it restarts, the runtime is not failed and liveness holds.
        assert_ne!(rt.status().state, LifecycleState::Failed);
        until_worker(&rt, "w", |s| s.gave_up).await;
        let s = status(&rt, "w");
        assert_eq!(s.state, LifecycleState::Failed);
        assert_eq!(s.restarts, u64::from(max));
        assert_eq!(rt.status().state, LifecycleState::Failed);
        assert!(!rt.liveness().live);
        let gave_up = supervision(&recorder)
            .iter()
            .filter(|b| b.ends_with("gave_up"))
            .count();
        assert_eq!(gave_up, 1);
        // A requested start begins afresh.
        rt.start("w").await.unwrap();
        assert!(!status(&rt, "w").gave_up);
    }
}

/// Restarts spread over more than the window never give up.
#[tokio::test(start_paused = true)]
async fn restarts_spread_beyond_the_window_do_not_give_up() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([]);
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::constant(MS))
        .intensity(Intensity::new(2, Duration::from_secs(10)).unwrap());
    rt.register(script.spec("w").restart(policy)).unwrap();
    rt.start("w").await.unwrap();
    for n in 0..6_usize {
        tokio::time::sleep(Duration::from_secs(6)).await;
        script
            .context(n)
            .report_failure(std::io::Error::other("now and then"))
            .unwrap();
        let want = u64::try_from(n + 1).unwrap();
        until_worker(&rt, "w", |s| {
            s.restarts == want && s.state == LifecycleState::Running
        })
        .await;
    }
    assert!(!status(&rt, "w").gave_up);
}

/// `on_failure` gives up at once on a permanent error; `always` restarts it.
#[tokio::test(start_paused = true)]
async fn permanent_failures_give_up_under_on_failure_but_not_always() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let a = Script::new([Act::FailPermanently]);
    let b = Script::new([Act::FailPermanently]);
    rt.register(a.spec("a").restart(constant(10))).unwrap();
    rt.register(
        b.spec("b")
            .restart(RestartPolicy::always().backoff(Backoff::constant(10 * MS))),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    until_worker(&rt, "a", |s| s.gave_up).await;
    until_worker(&rt, "b", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    assert_eq!(status(&rt, "a").state, LifecycleState::Failed);
    assert_eq!(status(&rt, "a").restarts, 0);
    assert_eq!(status(&rt, "b").restart_policy, RestartMode::Always);
}

/// The `never` policy (the default) keeps the Go behaviour: a failed worker stays failed.
#[tokio::test(start_paused = true)]
async fn the_default_policy_never_restarts() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w")).unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.state == LifecycleState::Failed).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Failed);
    assert_eq!(s.restarts, 0);
    assert!(!s.gave_up);
    assert_eq!(s.restart_policy, RestartMode::Never);
}

/// A restart whose start fails is retried with the next backoff; a requested start that fails
/// is not restarted (its caller has the error).
#[tokio::test(start_paused = true)]
async fn a_restarts_failed_start_is_retried_but_a_requested_one_is_not() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let starts = Arc::new(AtomicUsize::new(0));
    let contexts: Arc<Mutex<Vec<WorkerContext>>> = Arc::default();
    let (s2, c2) = (starts.clone(), contexts.clone());
    rt.register(
        WorkerSpec::from_factory("w", move || {
            let starts = s2.clone();
            let contexts = c2.clone();
            LoopWorker::new(|ctx: WorkerContext| async move {
                ctx.stop_requested().await;
                Ok(())
            })
            .on_start(move |ctx| {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                contexts.lock().unwrap().push(ctx);
                async move {
                    // Start 0 (requested) and start 2 (the first restart) fail.
                    if n == 0 || n == 2 {
                        Err("not yet".into())
                    } else {
                        Ok(())
                    }
                }
            })
        })
        .restart(constant(10)),
    )
    .unwrap();
    rt.start("w").await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(status(&rt, "w").state, LifecycleState::Failed);
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "a requested start was retried"
    );
    rt.start("w").await.unwrap();
    let running = contexts.lock().unwrap()[1].clone();
    running
        .report_failure(std::io::Error::other("crash"))
        .unwrap();
    until_worker(&rt, "w", |s| {
        s.state == LifecycleState::Running && s.restarts == 2
    })
    .await;
    assert_eq!(starts.load(Ordering::SeqCst), 4);
    let s = status(&rt, "w");
    assert_eq!(s.incarnation, 4);
    let info = contexts.lock().unwrap()[3].restart().cloned().unwrap();
    assert_eq!(info.attempt, 2, "the failed restart counts as an attempt");
    assert_eq!(info.previous.reason, ExitReason::Failed);
}

// ---- child tasks ---------------------------------------------------------------------------

/// Pitfall #11: after an incarnation ends (stop, or failure and restart), its `ctx.spawn`
/// children are gone — aborted and awaited before the stop returns and before the next
/// incarnation starts.
#[tokio::test(start_paused = true)]
async fn pitfall_11_child_tasks_end_with_their_incarnation() {
    let rt = Runtime::builder("rt").build().unwrap();
    let alive = Arc::new(AtomicUsize::new(0));
    let alive_at_start = Arc::new(Mutex::new(Vec::new()));
    let (a, at) = (alive.clone(), alive_at_start.clone());
    rt.register(
        WorkerSpec::from_factory("w", move || {
            let (a, at) = (a.clone(), at.clone());
            LoopWorker::new(move |ctx: WorkerContext| {
                let (a, at) = (a.clone(), at.clone());
                async move {
                    at.lock().unwrap().push(a.load(Ordering::SeqCst));
                    struct Guard(Arc<AtomicUsize>);
                    impl Drop for Guard {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    for _ in 0..3 {
                        a.fetch_add(1, Ordering::SeqCst);
                        let guard = Guard(a.clone());
                        // A child that would never end on its own, and ignores the stop signal
                        // by holding no reference to it.
                        ctx.spawn(async move {
                            let _guard = guard;
                            std::future::pending::<()>().await;
                        });
                    }
                    if ctx.incarnation() == 1 {
                        return Err("crash with children running".into());
                    }
                    ctx.stop_requested().await;
                    Ok(())
                }
            })
        })
        .restart(constant(10)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    assert_eq!(
        *alive_at_start.lock().unwrap(),
        [0, 0],
        "children of the failed incarnation outlived it"
    );
    assert_eq!(alive.load(Ordering::SeqCst), 3);
    rt.stop("w").await.unwrap();
    assert_eq!(
        alive.load(Ordering::SeqCst),
        0,
        "children outlived the stop"
    );
}

// ---- watchdog ------------------------------------------------------------------------------

/// Pitfall #1: a worker with no watchdog that never beats runs for an hour untouched; and an
/// idle registered worker with a watchdog is not declared stalled (the clock starts when it
/// runs, ractor PR #445).
#[tokio::test(start_paused = true)]
async fn pitfall_01_no_watchdog_means_never_stalled() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(Script::new([]).spec("plain")).unwrap();
    rt.register(
        Script::new([])
            .spec("idle")
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Cancel).unwrap()),
    )
    .unwrap();
    rt.start("plain").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(status(&rt, "plain").state, LifecycleState::Running);
    assert!(!status(&rt, "plain").stalled);
    assert_eq!(status(&rt, "idle").state, LifecycleState::Registered);
    assert!(supervision(&recorder).is_empty());
}

/// Pitfall #25 (reworded by the issue): a worker with no beat for its timeout is marked stalled
/// within 1.5 × the timeout, never before the timeout; beats keep it healthy; the mark clears
/// when beats resume (action `report`).
#[tokio::test(start_paused = true)]
async fn pitfall_25_stalls_are_found_within_one_and_a_half_timeouts() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let timeout = Duration::from_secs(1);
    let beating = Arc::new(AtomicBool::new(true));
    let b = beating.clone();
    rt.register(
        WorkerSpec::new(
            "w",
            LoopWorker::new(move |ctx: WorkerContext| {
                let b = b.clone();
                async move {
                    let mut tick = tokio::time::interval(100 * MS);
                    loop {
                        tokio::select! {
                            () = ctx.stop_requested() => return Ok(()),
                            _ = tick.tick() => if b.load(Ordering::SeqCst) { ctx.beat() },
                        }
                    }
                }
            }),
        )
        .watchdog(Watchdog::new(timeout, StallAction::Report).unwrap()),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    // Beats every 100 ms: an hour without a stall.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!status(&rt, "w").stalled);
    beating.store(false, Ordering::SeqCst);
    let last_beat = Instant::now();
    until_worker(&rt, "w", |s| s.stalled).await;
    let found = last_beat.elapsed();
    assert!(found >= timeout - 100 * MS, "stalled early: {found:?}");
    assert!(found <= timeout * 3 / 2, "stalled late: {found:?}");
    // `report` keeps it running; liveness is not affected.
    assert_eq!(status(&rt, "w").state, LifecycleState::Running);
    assert!(rt.liveness().live);
    beating.store(true, Ordering::SeqCst);
    until_worker(&rt, "w", |s| !s.stalled).await;
    let briefs = supervision(&recorder);
    assert_eq!(briefs, ["U rt/w stalled", "U rt/w stall_cleared"]);
}

/// Pitfall #3: a stalled worker with action `restart` gets a new incarnation; the runtime stays
/// up. Action `cancel` ends it failed without a restart.
#[tokio::test(start_paused = true)]
async fn pitfall_03_a_stall_restarts_or_cancels_as_configured() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    // Incarnation 1 never beats; incarnation 2 beats.
    let script = Script::new([Act::Run, Act::Beat]);
    rt.register(
        script
            .spec("restarted")
            .restart(constant(10))
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Restart).unwrap()),
    )
    .unwrap();
    let cancelled = Script::new([Act::Run]);
    rt.register(
        cancelled
            .spec("cancelled")
            .restart(constant(10))
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Cancel).unwrap()),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    until_worker(&rt, "restarted", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    until_worker(&rt, "cancelled", |s| s.state == LifecycleState::Failed).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s = status(&rt, "restarted");
    assert_eq!(
        s.state,
        LifecycleState::Running,
        "the beating incarnation stays"
    );
    assert_eq!(s.last_exit.unwrap().reason, ExitReason::Stalled);
    let c = status(&rt, "cancelled");
    assert_eq!(c.state, LifecycleState::Failed);
    assert_eq!(c.restarts, 0);
    assert_eq!(c.last_exit.unwrap().reason, ExitReason::Stalled);
    assert_eq!(c.last_failure.unwrap().code, "stalled");
    assert_ne!(rt.status().state, LifecycleState::Failed);
    assert!(rt.liveness().live);
}

/// Liveness fails only for a stall whose action says so, and names the worker.
#[tokio::test(start_paused = true)]
async fn a_stall_with_fail_liveness_fails_liveness_until_beats_resume() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Run]);
    rt.register(
        script
            .spec("w")
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::FailLiveness).unwrap()),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    assert!(rt.liveness().live);
    until_worker(&rt, "w", |s| s.stalled).await;
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness
            .reasons
            .iter()
            .any(|r| r.contains("rt/w") && r.contains("stalled")),
        "{:?}",
        liveness.reasons
    );
    // Readiness is not the watchdog's business.
    assert!(rt.readiness().ready);
    script.context(0).beat();
    until_worker(&rt, "w", |s| !s.stalled).await;
    assert!(rt.liveness().live);
}

/// Pitfall #22: supervision settings are validated with typed errors, never panics.
#[tokio::test(start_paused = true)]
async fn pitfall_22_bad_supervision_settings_are_typed_errors() {
    assert_eq!(
        Watchdog::new(Duration::ZERO, StallAction::Report).unwrap_err(),
        SupervisionError::ZeroWatchdogTimeout
    );
    assert_eq!(
        Intensity::new(0, Duration::from_secs(1)).unwrap_err(),
        SupervisionError::ZeroMaxRestarts
    );
    assert_eq!(
        Intensity::new(1, Duration::ZERO).unwrap_err(),
        SupervisionError::ZeroWindow
    );
    let rt = Runtime::builder("rt").build().unwrap();
    let err = rt
        .register(
            Script::new([])
                .spec("w")
                .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Restart).unwrap()),
        )
        .unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    assert!(err.to_string().contains("restart policy"), "{err}");
}

// ---- removal, shutdown reports -------------------------------------------------------------

/// A stopped worker can be removed from a running runtime, and its name registered again; an
/// active or restarting one cannot.
#[tokio::test(start_paused = true)]
async fn a_stopped_worker_can_be_removed_and_its_name_reused() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(Script::new([]).spec("keep")).unwrap();
    rt.register(Script::new([]).spec("gone")).unwrap();
    rt.start_all().await.unwrap();
    let err = rt.remove("gone").await.unwrap_err();
    assert!(matches!(err, LifecycleError::InvalidState { .. }), "{err}");
    rt.stop("gone").await.unwrap();
    let last = rt.remove("gone").await.unwrap();
    assert_eq!(last.status.state, LifecycleState::Stopped);
    assert!(rt.worker("gone").is_none());
    assert_eq!(rt.workers().len(), 1);
    assert_eq!(rt.status().workers, 1);
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.readiness().ready);
    assert!(matches!(
        rt.remove("gone").await.unwrap_err(),
        LifecycleError::WorkerNotFound { .. }
    ));
    // The name is free again, and the new worker is a worker like any other.
    rt.register(Script::new([]).spec("gone")).unwrap();
    rt.start("gone").await.unwrap();
    assert_eq!(status(&rt, "gone").incarnation, 1);
    rt.stop_all().await.unwrap();
    rt.start_all().await.unwrap();
    assert_eq!(rt.workers().len(), 2);

    // A restarting worker cannot be removed.
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("flaky").restart(constant(1000)))
        .unwrap();
    rt.start("flaky").await.unwrap();
    until_worker(&rt, "flaky", |s| s.state == LifecycleState::Restarting).await;
    assert!(matches!(
        rt.remove("flaky").await.unwrap_err(),
        LifecycleError::InvalidState { .. }
    ));
}

/// A shutdown that runs longer than the report interval says, every interval, which workers it
/// still waits for.
#[tokio::test(start_paused = true)]
async fn a_long_shutdown_reports_what_it_waits_for() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .shutdown_report_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    rt.register(
        WorkerSpec::new(
            "slow",
            LoopWorker::new(|ctx: WorkerContext| async move {
                ctx.stop_requested().await;
                // Winds down for 3.5 s.
                tokio::time::sleep(Duration::from_millis(3500)).await;
                Ok(())
            }),
        )
        .stop_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    rt.register(Script::new([]).spec("fast")).unwrap();
    rt.start_all().await.unwrap();
    rt.shutdown().await.unwrap();
    let waiting: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::Supervision(e) => match e.kind {
                workerkit_core::observe::SupervisionKind::ShutdownWaiting {
                    workers,
                    phase,
                    ..
                } => Some((workers, phase)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(waiting.len(), 3, "{waiting:?}");
    for (workers, phase) in &waiting {
        assert_eq!(phase, &"stopping");
        assert_eq!(
            workers.iter().map(|w| &**w).collect::<Vec<_>>(),
            ["rt/slow"]
        );
    }
}

/// Pitfall #18 and the diagram: restart counts and the `restarting` state are shown, and any
/// worker name gives a valid diagram (every label character outside a safe set is an entity).
#[tokio::test(start_paused = true)]
async fn pitfall_18_the_diagram_shows_restarts_with_escaped_names() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Fail, Act::Fail]);
    rt.register(script.spec("flaky").restart(constant(1000)))
        .unwrap();
    rt.start("flaky").await.unwrap();
    until_worker(&rt, "flaky", |s| {
        s.restarts == 1 && s.state == LifecycleState::Restarting
    })
    .await;
    let text = workerkit_core::diagram::mermaid(&rt.status(), &rt.workers());
    assert!(
        text.contains("restarting · not ready · incarnation 2 · restarts 1"),
        "{text}"
    );
    assert!(text.contains("class w0 restarting"), "{text}");
    assert!(text.contains("classDef restarting "), "{text}");
    for line in text.lines().filter(|l| l.contains("-->")) {
        let label = line.split_once("[\"").unwrap().1.trim_end_matches("\"]");
        assert!(
            label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _./-#;<>·".contains(c)),
            "{label}"
        );
    }
}

/// A stalled worker that is stopped no longer fails liveness, nor shows as stalled.
#[tokio::test(start_paused = true)]
async fn stopping_a_stalled_worker_clears_the_stall() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Run]);
    rt.register(
        script
            .spec("w")
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::FailLiveness).unwrap()),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.stalled).await;
    assert!(!rt.liveness().live);
    rt.stop("w").await.unwrap();
    assert!(rt.liveness().live, "{:?}", rt.liveness().reasons);
    assert!(!status(&rt, "w").stalled);
}

/// An observer registered behind an `Arc` gets supervision events too (every hook forwards).
#[tokio::test(start_paused = true)]
async fn an_arc_observer_gets_supervision_events() {
    let shared = Arc::new(RecordingObserver::new());
    let rt = Runtime::builder("rt")
        .with_observer(Arc::clone(&shared))
        .build()
        .unwrap();
    let script = Script::new([Act::Fail]);
    rt.register(script.spec("w").restart(constant(10))).unwrap();
    rt.start("w").await.unwrap();
    until_worker(&rt, "w", |s| s.restarts == 1).await;
    assert_eq!(
        supervision(&shared),
        ["U rt/w restart_scheduled", "U rt/w restarted"]
    );
}

/// While a shutdown waits for commands, its reports name them (oldest first).
#[tokio::test(start_paused = true)]
async fn a_shutdown_waiting_for_commands_names_them() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .shutdown_report_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let slow = workerkit_core::handler_fn(|_ctx| async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(workerkit_core::CommandResponse::empty())
    });
    rt.register(Script::new([]).spec("w").command(
        workerkit_core::CommandSpec::new("export", slow).timeout(Duration::from_secs(10)),
    ))
    .unwrap();
    rt.start_all().await.unwrap();
    let dispatch = rt.dispatch(workerkit_core::CommandRequest::new("w", "export"));
    let (result, report) = tokio::join!(dispatch, async {
        tokio::task::yield_now().await;
        rt.shutdown().await
    });
    let id = result.unwrap().id;
    report.unwrap();
    let reports: Vec<_> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::Supervision(e) => match e.kind {
                workerkit_core::observe::SupervisionKind::ShutdownWaiting {
                    commands,
                    in_flight,
                    phase,
                    ..
                } => Some((commands, in_flight, phase)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for (commands, in_flight, phase) in reports {
        assert_eq!((in_flight, phase), (1, "draining"));
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0].id, id);
        assert_eq!(&*commands[0].command, "export");
    }
}

/// Beats from a previous incarnation's context do not count: they cannot hide a stall of the
/// current one.
#[tokio::test(start_paused = true)]
async fn stale_beats_do_not_hide_a_stall() {
    let rt = Runtime::builder("rt").build().unwrap();
    let script = Script::new([Act::Beat, Act::Run]);
    rt.register(
        script
            .spec("w")
            .restart(constant(10))
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Report).unwrap()),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let old = script.context(0);
    old.report_failure(std::io::Error::other("crash")).unwrap();
    until_worker(&rt, "w", |s| {
        s.restarts == 1 && s.state == LifecycleState::Running
    })
    .await;
    let began = Instant::now();
    // The old context beats on; the new incarnation never does.
    while !status(&rt, "w").stalled {
        old.beat();
        tokio::time::sleep(100 * MS).await;
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the stale beats hid the stall"
        );
    }
}

/// A permanent failure reported during a restart's start gives up under `on_failure`, as the
/// same error returned from the start does.
#[tokio::test(start_paused = true)]
async fn a_permanent_failure_reported_during_a_restart_start_gives_up() {
    let rt = Runtime::builder("rt").build().unwrap();
    let starts = Arc::new(AtomicUsize::new(0));
    let contexts: Arc<Mutex<Vec<WorkerContext>>> = Arc::default();
    let (s2, c2) = (starts.clone(), contexts.clone());
    rt.register(
        WorkerSpec::from_factory("w", move || {
            let starts = s2.clone();
            let contexts = c2.clone();
            LoopWorker::new(|ctx: WorkerContext| async move {
                ctx.stop_requested().await;
                Ok(())
            })
            .on_start(move |ctx: WorkerContext| {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                contexts.lock().unwrap().push(ctx.clone());
                async move {
                    if n == 1 {
                        ctx.report_failure(permanent(std::io::Error::other("bad config")))
                            .unwrap();
                    }
                    Ok(())
                }
            })
        })
        .restart(constant(10)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let first = contexts.lock().unwrap()[0].clone();
    first
        .report_failure(std::io::Error::other("crash"))
        .unwrap();
    until_worker(&rt, "w", |s| s.gave_up).await;
    let s = status(&rt, "w");
    assert_eq!(s.state, LifecycleState::Failed);
    assert_eq!(s.restarts, 1);
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

/// Pitfall #13: no busy loops, no fixed-period polling. Counted as the scheduler's park count
/// over 10 s of paused time (the current-thread scheduler parks about three times per timer
/// wake-up here): an idle runtime wakes once (the test's own sleep), and a watchdog with a 1 s
/// timeout about twice per timeout, stalled or not; a 100 ms poller would be fifty times that.
#[tokio::test(start_paused = true)]
async fn pitfall_13_idle_workers_cause_no_wakeups_and_the_watchdog_two_per_timeout() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let parks = || metrics.worker_park_count(0);

    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(Script::new([]).spec("idle")).unwrap();
    rt.start_all().await.unwrap();
    tokio::task::yield_now().await;
    let before = parks();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = parks() - before;
    assert!(idle <= 4, "an idle runtime parked {idle} times in 10 s");

    rt.register(
        Script::new([])
            .spec("watched")
            .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::Report).unwrap()),
    )
    .unwrap();
    rt.start("watched").await.unwrap();
    tokio::task::yield_now().await;
    let before = parks();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let watched = parks() - before;
    assert!(status(&rt, "watched").stalled);
    // 20 watchdog ticks and the sleep: about 63 parks; three ticks per timeout would be 94.
    assert!(
        (30..=80).contains(&watched),
        "with a watchdog the runtime parked {watched} times in 10 s (expected about 63)"
    );
}

/// At most one live incarnation also for a requested start: a factory worker that failed (and
/// was not stopped) has its old incarnation stopped — its loop joined — before the new one
/// starts, even when the old loop takes a while to wind down.
#[tokio::test(start_paused = true)]
async fn a_requested_start_after_a_failure_waits_for_the_old_loop() {
    let rt = Runtime::builder("rt").build().unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let contexts: Arc<Mutex<Vec<WorkerContext>>> = Arc::default();
    let (l, m, c) = (live.clone(), most.clone(), contexts.clone());
    rt.register(WorkerSpec::from_factory("w", move || {
        let (l, m, c) = (l.clone(), m.clone(), c.clone());
        LoopWorker::new(move |ctx: WorkerContext| {
            let (l, m, c) = (l.clone(), m.clone(), c.clone());
            async move {
                let now = l.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                c.lock().unwrap().push(ctx.clone());
                ctx.stop_requested().await;
                // Winds down slowly after the stop signal.
                tokio::time::sleep(Duration::from_millis(500)).await;
                l.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
    }))
    .unwrap();
    rt.start("w").await.unwrap();
    within(async {
        while contexts.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let first = contexts.lock().unwrap()[0].clone();
    first
        .report_failure(std::io::Error::other("crash"))
        .unwrap();
    assert_eq!(status(&rt, "w").state, LifecycleState::Failed);
    // The old loop is still winding down; the requested start waits for it.
    rt.start("w").await.unwrap();
    within(async {
        while live.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two incarnations were live at once"
    );
    assert_eq!(status(&rt, "w").incarnation, 2);
}
