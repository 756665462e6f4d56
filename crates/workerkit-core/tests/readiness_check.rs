//! Readiness checks: a port of Go's `check_loop_test.go` and `check_loop_internal_test.go`
//! (spec §2.10, §10.3) to `ReadinessCheck`.
//!
//! Every test runs on a paused clock.
//!
//! Go tests deliberately not ported: nil checker/group rejection (ruled out by the type
//! system), initial delay, run-immediately=false, jitter, `ReadyOnSuccess(false)`,
//! report-on-not-ready, and the result/summary observers (`ReadinessCheck` has none of these
//! options: it always runs at once, marks readiness, and never fails the worker for a negative
//! result); "SetReady error is returned" (the Rust check loop never fails the worker on a
//! readiness update: while draining a positive result is ignored, and a refused update ends the
//! loop quietly once the worker leaves `running`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use workerkit_core::error::RegisterError;
use workerkit_core::failure::PanicError;
use workerkit_core::observe::{CheckEndEvent, CheckOutcome, CheckStartEvent};
use workerkit_core::test_util::{FakeWorker, Recorded, RecordingObserver};
use workerkit_core::{
    DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, ExitReason, LifecycleState, LoopWorker,
    PanicPolicy, ReadinessCheck, Runtime, WorkerSpec,
};

// ---- helpers -------------------------------------------------------------------------------

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with("expected panic"));
            if !expected {
                default(info);
            }
        }));
    });
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .expect("timed out waiting for a condition")
}

/// What one check execution answers, after an optional delay.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ready,
    NotReady,
    Error,
    Hang,
    Panic,
}

/// A scripted check: answers from a queue, then a default; records when each execution began.
#[derive(Clone)]
struct Script {
    queue: Arc<Mutex<VecDeque<(Duration, Answer)>>>,
    default: (Duration, Answer),
    starts: Arc<Mutex<Vec<Instant>>>,
    calls: Arc<watch::Sender<usize>>,
}

impl Script {
    fn new(
        queue: impl IntoIterator<Item = (Duration, Answer)>,
        default: (Duration, Answer),
    ) -> Self {
        Self {
            queue: Arc::new(Mutex::new(queue.into_iter().collect())),
            default,
            starts: Arc::default(),
            calls: Arc::new(watch::Sender::new(0)),
        }
    }

    fn always(answer: Answer) -> Self {
        Self::new([], (Duration::ZERO, answer))
    }

    fn check(&self) -> ReadinessCheck {
        let script = self.clone();
        ReadinessCheck::new(move |_ctx| {
            let script = script.clone();
            async move {
                let (delay, answer) = script
                    .queue
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(script.default);
                script.starts.lock().unwrap().push(Instant::now());
                script.calls.send_modify(|n| *n += 1);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match answer {
                    Answer::Ready => Ok(true),
                    Answer::NotReady => Ok(false),
                    Answer::Error => Err(std::io::Error::other("redis: password=hunter2").into()),
                    Answer::Hang => std::future::pending().await,
                    Answer::Panic => panic!("expected panic: check"),
                }
            }
        })
    }

    fn calls(&self) -> usize {
        *self.calls.borrow()
    }

    async fn reached(&self, n: usize) {
        let mut rx = self.calls.subscribe();
        within(async {
            let _ = rx.wait_for(|c| *c >= n).await;
        })
        .await;
    }

    fn starts(&self) -> Vec<Instant> {
        self.starts.lock().unwrap().clone()
    }
}

fn runtime(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap()
}

fn check_ends(recorder: &RecordingObserver) -> Vec<CheckEndEvent> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::CheckEnd(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn check_starts(recorder: &RecordingObserver) -> Vec<CheckStartEvent> {
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Recorded::CheckStart(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Waits until `n` check executions have ended.
async fn ended(recorder: &RecordingObserver, n: usize) -> Vec<CheckEndEvent> {
    within(recorder.wait_until(|events| {
        events
            .iter()
            .filter(|e| matches!(e, Recorded::CheckEnd(_)))
            .count()
            >= n
    }))
    .await;
    check_ends(recorder)
}

fn outcomes(recorder: &RecordingObserver) -> Vec<CheckOutcome> {
    check_ends(recorder).iter().map(|e| e.outcome).collect()
}

fn position(briefs: &[String], wanted: &str) -> usize {
    briefs
        .iter()
        .position(|b| b == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {briefs:#?}"))
}

fn status(rt: &Runtime, worker: &str) -> workerkit_core::status::WorkerStatus {
    rt.worker(worker).unwrap().status
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn check_runs_immediately_and_marks_the_worker_ready() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::always(Answer::Ready);
    rt.register(WorkerSpec::new("w", FakeWorker::new().0).readiness_check(script.check()))
        .unwrap();
    let began = Instant::now();

    // The worker starts unready, though `ready_on_start` defaults to true: the check decides.
    let started = rt.start("w").await.unwrap();
    assert_eq!(started.state, LifecycleState::Running);
    assert!(!started.ready);

    ended(&recorder, 1).await;
    assert_eq!(
        script.starts(),
        [began],
        "the first check did not run at once"
    );
    assert!(status(&rt, "w").ready);
    assert!(rt.status().ready);
    let briefs = recorder.all_briefs();
    assert!(
        position(&briefs, "O start succeeded") < position(&briefs, "C rt/w start")
            && position(&briefs, "C rt/w start") < position(&briefs, "R rt/w true")
            && position(&briefs, "C rt/w start") < position(&briefs, "C rt/w ready"),
        "{briefs:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn interval_is_measured_after_the_check_completes() {
    // Go: check_loop_internal_test — a 5s check with a 30s interval gives a 35s cadence, and
    // executions never overlap.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new([], (Duration::from_secs(5), Answer::Ready));
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0).readiness_check(
            script
                .check()
                .interval(Duration::from_secs(30))
                .timeout(Duration::from_secs(10)),
        ),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    script.reached(4).await;

    let starts = script.starts();
    let gaps: Vec<_> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [Duration::from_secs(35); 3]);
    let ends = check_ends(&recorder);
    assert_eq!(ends.len(), 3, "the fourth check has not finished yet");
    assert!(ends.iter().all(|e| e.duration == Duration::from_secs(5)));
    assert!(ends.iter().all(|e| e.loop_continues));
}

#[tokio::test(start_paused = true)]
async fn not_ready_keeps_the_worker_running_unready_without_failure() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::always(Answer::NotReady);
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    ended(&recorder, 3).await;

    assert_eq!(outcomes(&recorder)[..3], [CheckOutcome::NotReady; 3]);
    let st = status(&rt, "w");
    assert_eq!(st.state, LifecycleState::Running);
    assert!(!st.ready);
    assert!(st.last_failure.is_none());
    assert!(recorder.failures().is_empty());
    assert!(!rt.status().ready);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn error_outcome_makes_the_worker_unready_without_failure() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [(Duration::ZERO, Answer::Ready)],
        (Duration::ZERO, Answer::Error),
    );
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let ends = ended(&recorder, 3).await;

    assert_eq!(
        ends.iter().map(|e| e.outcome).collect::<Vec<_>>()[..3],
        [
            CheckOutcome::Ready,
            CheckOutcome::Error,
            CheckOutcome::Error
        ]
    );
    assert!(ends.iter().all(|e| e.loop_continues));
    let st = status(&rt, "w");
    assert_eq!(st.state, LifecycleState::Running);
    assert!(!st.ready);
    assert!(recorder.failures().is_empty());
    let briefs = recorder.briefs();
    assert_eq!(
        briefs
            .iter()
            .filter(|b| b.starts_with("R rt/w"))
            .collect::<Vec<_>>(),
        ["R rt/w true", "R rt/w false"]
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_outcome_makes_the_worker_unready_and_drops_the_late_result() {
    // Go: "a late ready result after a timeout leaves the worker unready" and "a timeout returns
    // DeadlineExceeded without ReportFailure".
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [
            (Duration::ZERO, Answer::Ready),
            (Duration::from_secs(3), Answer::Ready),
        ],
        (Duration::ZERO, Answer::NotReady),
    );
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0).readiness_check(
            script
                .check()
                .interval(Duration::from_secs(10))
                .timeout(Duration::from_secs(2)),
        ),
    )
    .unwrap();
    let began = Instant::now();
    rt.start("w").await.unwrap();

    let ends = ended(&recorder, 2).await;
    assert_eq!(ends[1].outcome, CheckOutcome::Timeout);
    assert_eq!(ends[1].duration, Duration::from_secs(2));
    assert!(ends[1].loop_continues);
    assert_eq!(began.elapsed(), Duration::from_secs(12));
    assert!(!status(&rt, "w").ready);

    // Past the moment the dropped check would have answered `ready`: still unready.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = status(&rt, "w");
    assert!(!st.ready);
    assert_eq!(st.state, LifecycleState::Running);
    assert!(recorder.failures().is_empty());
    assert_eq!(check_ends(&recorder).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn stop_cancels_an_in_flight_check() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::always(Answer::Hang);
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().timeout(Duration::from_secs(60))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    script.reached(1).await;

    let began = Instant::now();
    rt.stop("w").await.unwrap();
    assert_eq!(began.elapsed(), Duration::ZERO, "stop waited for the check");
    let ends = check_ends(&recorder);
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].outcome, CheckOutcome::Canceled);
    assert!(!ends[0].loop_continues);
    let briefs = recorder.all_briefs();
    assert!(
        position(&briefs, "C rt/w canceled") < position(&briefs, "T rt/w stopping->stopped"),
        "{briefs:#?}"
    );

    // No check runs after the stop.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(script.calls(), 1);
    assert!(recorder.failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn check_events_carry_runtime_worker_incarnation_and_outcome() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [(Duration::from_millis(250), Answer::NotReady)],
        (Duration::ZERO, Answer::Ready),
    );
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    ended(&recorder, 2).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    ended(&recorder, 3).await;

    let starts = check_starts(&recorder);
    let ends = check_ends(&recorder);
    for (start, end) in starts.iter().zip(&ends) {
        assert_eq!(&*start.runtime, "rt");
        assert_eq!(&*start.worker, "rt/w");
        assert_eq!(&*end.runtime, "rt");
        assert_eq!(&*end.worker, "rt/w");
        assert_eq!(start.incarnation, end.incarnation);
        assert_eq!(start.started_at, end.started_at);
        assert!(end.ended_at >= end.started_at);
    }
    assert_eq!(
        ends.iter()
            .map(|e| (e.incarnation, e.outcome))
            .collect::<Vec<_>>()[..3],
        [
            (1, CheckOutcome::NotReady),
            (1, CheckOutcome::Ready),
            (2, CheckOutcome::Ready),
        ]
    );
    assert_eq!(ends[0].duration, Duration::from_millis(250));
    let briefs: Vec<_> = recorder
        .all_briefs()
        .into_iter()
        .filter(|b| b.starts_with("C "))
        .collect();
    assert_eq!(
        briefs[..5],
        [
            "C rt/w start",
            "C rt/w not_ready",
            "C rt/w start",
            "C rt/w ready",
            "C rt/w start",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn draining_ignores_ready_results_and_never_fails_the_worker() {
    // §11.1 #2: in Go, the first ready result after a drain failed the worker.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [
            (Duration::ZERO, Answer::Ready),
            (Duration::ZERO, Answer::Ready),
            (Duration::ZERO, Answer::NotReady),
        ],
        (Duration::ZERO, Answer::Ready),
    );
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    ended(&recorder, 1).await;
    assert!(status(&rt, "w").ready);

    rt.drain("w").await.unwrap();
    let ends = ended(&recorder, 6).await;
    assert_eq!(
        ends.iter().map(|e| e.outcome).collect::<Vec<_>>()[1..6],
        [
            CheckOutcome::Ready,
            CheckOutcome::NotReady,
            CheckOutcome::Ready,
            CheckOutcome::Ready,
            CheckOutcome::Ready,
        ]
    );
    assert!(ends.iter().all(|e| e.loop_continues));
    let st = status(&rt, "w");
    assert_eq!(st.state, LifecycleState::Draining);
    assert!(!st.ready);
    assert!(st.last_failure.is_none());
    assert!(recorder.failures().is_empty());
    assert_eq!(
        recorder
            .briefs()
            .iter()
            .filter(|b| b.starts_with("R rt/w"))
            .collect::<Vec<_>>(),
        ["R rt/w true", "R rt/w false"]
    );
    rt.stop("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn check_panic_fails_the_worker_as_a_panic() {
    // §11.1 #6: Go reported check panics with `Panic=false`.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [(Duration::ZERO, Answer::Ready)],
        (Duration::ZERO, Answer::Panic),
    );
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    let event = &failures[0];
    assert!(event.panic);
    assert!(event.lifecycle_changed);
    assert_eq!(event.failure.code(), "panic");
    assert!(event.failure.message().contains("checking readiness"));
    assert!(!event.failure.message().contains("expected panic"));
    let panic = event
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<PanicError>())
        .expect("a PanicError cause");
    assert_eq!(panic.payload_description(), "expected panic: check");

    let st = status(&rt, "w");
    assert_eq!(st.state, LifecycleState::Failed);
    assert!(!st.ready);
    let ends = ended(&recorder, 2).await;
    assert_eq!(ends[1].outcome, CheckOutcome::Panic);
    assert!(!ends[1].loop_continues);

    // The check loop ended with the panic.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn check_panic_under_recover_fails_only_the_worker() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(Script::always(Answer::Panic).check())
            .panic_policy(PanicPolicy::Recover),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(status(&rt, "w").state, LifecycleState::Failed);
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn check_panic_under_propagate_escalates_to_runtime_failure() {
    // No caller waits for a check task: under `Propagate` the panic counts as `fail_runtime`.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    rt.register(
        WorkerSpec::new("w", FakeWorker::new().0)
            .readiness_check(Script::always(Answer::Panic).check())
            .panic_policy(PanicPolicy::Propagate),
    )
    .unwrap();
    rt.start_all().await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    assert!(recorder.failures()[0].panic);
    let st = rt.status();
    assert_eq!(st.state, LifecycleState::Failed);
    assert!(!st.ready);
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness
            .reasons
            .iter()
            .any(|r| r.contains("rt/w") && r.contains("propagate")),
        "{liveness:?}"
    );
    assert_eq!(status(&rt, "other").state, LifecycleState::Running);
}

#[tokio::test(start_paused = true)]
async fn zero_interval_or_timeout_is_rejected_at_registration() {
    let rt = runtime(&RecordingObserver::new());
    let check = Script::always(Answer::Ready).check();
    for (spec, expected) in [
        (
            WorkerSpec::new("w", FakeWorker::new().0)
                .readiness_check(check.clone().interval(Duration::ZERO)),
            "readiness_check.interval",
        ),
        (
            WorkerSpec::new("w", FakeWorker::new().0)
                .readiness_check(check.clone().timeout(Duration::ZERO)),
            "readiness_check.timeout",
        ),
    ] {
        let err = rt.register(spec).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        match &err {
            RegisterError::ZeroDuration { worker, setting } => {
                assert_eq!(worker, "rt/w");
                assert_eq!(*setting, expected);
            }
            other => panic!("expected ZeroDuration, got {other:?}"),
        }
        assert!(rt.worker("w").is_none());
    }
    rt.register(WorkerSpec::new("w", FakeWorker::new().0).readiness_check(check))
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn hung_check_times_out_after_the_default_timeout_and_retries_after_the_default_interval() {
    // §11.2 #21: Go's check loop had no default timeout.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::always(Answer::Hang);
    rt.register(WorkerSpec::new("w", FakeWorker::new().0).readiness_check(script.check()))
        .unwrap();
    rt.start("w").await.unwrap();

    let ends = ended(&recorder, 2).await;
    assert_eq!(ends[0].outcome, CheckOutcome::Timeout);
    assert_eq!(ends[0].duration, DEFAULT_CHECK_TIMEOUT);
    let starts = script.starts();
    assert_eq!(
        starts[1] - starts[0],
        DEFAULT_CHECK_TIMEOUT + DEFAULT_CHECK_INTERVAL
    );
    assert_eq!(status(&rt, "w").state, LifecycleState::Running);
    assert!(recorder.failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn loop_worker_without_auto_ready_is_gated_by_its_check() {
    // Go's check loops are loop workers with auto-ready off: unready until a check passes.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let script = Script::new(
        [(Duration::ZERO, Answer::NotReady)],
        (Duration::ZERO, Answer::Ready),
    );
    let worker = LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok(())
    })
    .auto_ready(false);
    rt.register(
        WorkerSpec::new("w", worker)
            .readiness_check(script.check().interval(Duration::from_secs(5))),
    )
    .unwrap();
    let began = Instant::now();
    assert!(!rt.start("w").await.unwrap().ready);
    ended(&recorder, 1).await;
    assert!(!status(&rt, "w").ready);

    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.worker("w").unwrap().status.ready)).await;
    assert_eq!(began.elapsed(), Duration::from_secs(5));
    rt.stop("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_worker_stops_checking_and_a_restart_checks_anew() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let (worker, control) = FakeWorker::new();
    let script = Script::always(Answer::Ready);
    rt.register(
        WorkerSpec::new("w", worker)
            .readiness_check(script.check().interval(Duration::from_secs(1))),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    script.reached(2).await;

    control
        .context(0)
        .unwrap()
        .report_failure(std::io::Error::other("lost connection"))
        .unwrap();
    assert_eq!(status(&rt, "w").state, LifecycleState::Failed);
    let calls = script.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(script.calls(), calls, "checks ran on a failed worker");
    assert!(!status(&rt, "w").ready);

    // A restart from `failed` gets a fresh check loop for the new incarnation.
    rt.start("w").await.unwrap();
    script.reached(calls + 1).await;
    let ends = ended(&recorder, calls + 1).await;
    assert_eq!(ends.last().unwrap().incarnation, 2);
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.worker("w").unwrap().status.ready)).await;
}
