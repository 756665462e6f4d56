//! Supervision: one event per `SupervisionKind` (message, level, fields), and the events of real
//! restarts, cancelled restarts, give-ups, watchdog stalls and long shutdowns through a `Runtime`
//! on a paused clock.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::{EventRecord, Recording, record};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::Level;
use workerkit_core::failure::{Failure, with_failure};
use workerkit_core::observe::{SupervisionEvent, SupervisionKind, TransitionEvent};
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::{Intensity, RestartPolicy, StallAction, Watchdog};
use workerkit_core::test_util::{FakeWorker, Step};
use workerkit_core::{ExitReason, LoopWorker, Observer, Runtime, Timestamp, WorkerSpec};
use workerkit_tracing::message::{
    GAVE_UP, RESTART_CANCELLED, RESTART_SCHEDULED, RESTARTED, SHUTDOWN_WAITING, STALL_CLEARED,
    STALLED,
};
use workerkit_tracing::{TARGET, TracingObserver};

/// What the runtime reported, as short lines (`restarted rt/w 2`, `rt/w starting->running`),
/// with a way to wait for a condition on them. Registered next to the observer under test, so
/// tests wait on the runtime's own events instead of on time.
#[derive(Clone, Debug)]
struct Seen(Arc<watch::Sender<Vec<String>>>);

impl Seen {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Vec::new())))
    }

    async fn wait_until(&self, predicate: impl Fn(&[String]) -> bool) {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|log| predicate(log)))
            .await
            .expect("the condition held within ten minutes of paused time")
            .expect("the sender lives in `self`");
    }

    /// How many lines equal `line`.
    fn count(log: &[String], line: &str) -> usize {
        log.iter().filter(|l| *l == line).count()
    }
}

impl Observer for Seen {
    fn on_supervision(&self, event: &SupervisionEvent) {
        let worker = event.worker.as_deref().unwrap_or("-");
        let line = format!("{} {worker} {}", event.kind.name(), event.incarnation);
        self.0.send_modify(|log| log.push(line));
    }

    fn on_transition(&self, event: &TransitionEvent) {
        if let Some(worker) = &event.worker {
            let line = format!("{worker} {}->{}", event.from.as_str(), event.to.as_str());
            self.0.send_modify(|log| log.push(line));
        }
    }
}

/// A runtime `rt` with the tracing observer and `seen`.
fn runtime(seen: &Seen) -> Runtime {
    Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .with_observer(seen.clone())
        .jitter_seed(7)
        .build()
        .expect("valid runtime")
}

fn keys(event: &EventRecord) -> BTreeSet<&str> {
    event.fields.keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Emits `kind` for worker `rt/w` (or the runtime) straight to a fresh observer and returns the
/// one event recorded.
fn emit(recording: &Recording, worker: Option<&str>, kind: SupervisionKind) -> EventRecord {
    recording.clear();
    TracingObserver::new().on_supervision(&SupervisionEvent::for_test(worker, kind));
    let mut events = recording.events();
    assert_eq!(
        events.len(),
        1,
        "one event per supervision event: {events:#?}"
    );
    let event = events.remove(0);
    assert_eq!(event.target, TARGET);
    assert_eq!(event.field("runtime"), Some("rt"));
    event
}

fn failure() -> Failure {
    Failure::new("upstream_down", "upstream down")
}

#[test]
fn each_supervision_kind_is_one_event_with_its_message_level_and_fields() {
    let (recording, _guard) = record();
    let common = [
        "message",
        "runtime",
        "worker",
        "incarnation",
        "supervision_kind",
    ];
    let with = |extra: &[&'static str]| {
        let mut all = set(&common);
        all.extend(extra.iter().copied());
        all
    };

    let e = emit(
        &recording,
        Some("rt/w"),
        SupervisionKind::RestartScheduled {
            attempt: 3,
            delay: Duration::from_millis(1500),
            due: Timestamp::now(),
            reason: ExitReason::Failed,
            failure: Some(failure()),
        },
    );
    assert_eq!((e.message(), e.level), (RESTART_SCHEDULED, Level::WARN));
    assert_eq!(
        keys(&e),
        with(&[
            "attempt",
            "delay_ms",
            "exit_reason",
            "failure_code",
            "error"
        ])
    );
    assert_eq!(e.field("worker"), Some("rt/w"));
    assert_eq!(e.field("incarnation"), Some("1"));
    assert_eq!(e.field("supervision_kind"), Some("restart_scheduled"));
    assert_eq!(e.field("attempt"), Some("3"));
    assert_eq!(e.field("delay_ms"), Some("1500"));
    assert_eq!(e.field("exit_reason"), Some("failed"));
    assert_eq!(e.field("failure_code"), Some("upstream_down"));
    assert_eq!(e.field("error"), Some("upstream down"));

    let e = emit(
        &recording,
        Some("rt/w"),
        SupervisionKind::Restarted {
            restarts: 4,
            attempt: 2,
        },
    );
    assert_eq!((e.message(), e.level), (RESTARTED, Level::INFO));
    assert_eq!(keys(&e), with(&["restarts", "attempt"]));
    assert_eq!(e.field("supervision_kind"), Some("restarted"));
    assert_eq!(e.field("restarts"), Some("4"));
    assert_eq!(e.field("attempt"), Some("2"));

    let e = emit(&recording, Some("rt/w"), SupervisionKind::RestartCancelled);
    assert_eq!((e.message(), e.level), (RESTART_CANCELLED, Level::INFO));
    assert_eq!(keys(&e), with(&[]));
    assert_eq!(e.field("supervision_kind"), Some("restart_cancelled"));

    let e = emit(
        &recording,
        Some("rt/w"),
        SupervisionKind::GaveUp {
            restarts: 10,
            reason: ExitReason::Panicked,
            failure: Some(Failure::new("panic", "worker panicked")),
            why: "intensity",
        },
    );
    assert_eq!((e.message(), e.level), (GAVE_UP, Level::ERROR));
    assert_eq!(
        keys(&e),
        with(&["restarts", "exit_reason", "failure_code", "error", "why"])
    );
    assert_eq!(e.field("supervision_kind"), Some("gave_up"));
    assert_eq!(e.field("restarts"), Some("10"));
    assert_eq!(e.field("exit_reason"), Some("panicked"));
    assert_eq!(e.field("failure_code"), Some("panic"));
    assert_eq!(e.field("why"), Some("intensity"));

    // Without a failure, no failure fields (absent, not empty).
    let e = emit(
        &recording,
        Some("rt/w"),
        SupervisionKind::GaveUp {
            restarts: 0,
            reason: ExitReason::ExitedUnexpectedly,
            failure: None,
            why: "permanent",
        },
    );
    assert_eq!(keys(&e), with(&["restarts", "exit_reason", "why"]));

    let e = emit(
        &recording,
        Some("rt/w"),
        SupervisionKind::Stalled {
            timeout: Duration::from_secs(2),
            action: StallAction::FailLiveness,
        },
    );
    assert_eq!((e.message(), e.level), (STALLED, Level::WARN));
    assert_eq!(keys(&e), with(&["timeout_ms", "action"]));
    assert_eq!(e.field("supervision_kind"), Some("stalled"));
    assert_eq!(e.field("timeout_ms"), Some("2000"));
    assert_eq!(e.field("action"), Some("fail_liveness"));

    let e = emit(&recording, Some("rt/w"), SupervisionKind::StallCleared);
    assert_eq!((e.message(), e.level), (STALL_CLEARED, Level::INFO));
    assert_eq!(keys(&e), with(&[]));
    assert_eq!(e.field("supervision_kind"), Some("stall_cleared"));

    let mut waiting = SupervisionEvent::for_test(
        None,
        SupervisionKind::ShutdownWaiting {
            elapsed: Duration::from_millis(5250),
            workers: vec!["rt/b".into(), "rt/a".into()],
            in_flight: 3,
            commands: Vec::new(),
            phase: "draining",
        },
    );
    waiting.incarnation = 0;
    recording.clear();
    TracingObserver::new().on_supervision(&waiting);
    let e = recording.one(SHUTDOWN_WAITING);
    assert_eq!(e.level, Level::WARN);
    assert_eq!(
        keys(&e),
        set(&[
            "message",
            "runtime",
            "supervision_kind",
            "elapsed_ms",
            "phase",
            "in_flight",
            "pending_workers",
            "workers",
            "commands"
        ]),
        "a runtime-wide event has no worker and no incarnation"
    );
    assert_eq!(e.field("supervision_kind"), Some("shutdown_waiting"));
    assert_eq!(e.field("elapsed_ms"), Some("5250"));
    assert_eq!(e.field("phase"), Some("draining"));
    assert_eq!(e.field("in_flight"), Some("3"));
    assert_eq!(e.field("pending_workers"), Some("2"));
    assert_eq!(e.field("workers"), Some("rt/b, rt/a"), "in stop order");
    assert_eq!(e.field("commands"), Some(""));
}

#[test]
fn the_routine_level_applies_to_the_routine_kinds_only() {
    let (recording, _guard) = record();
    let observer = TracingObserver::builder().level(Level::DEBUG).build();
    let kinds = [
        (
            SupervisionKind::Restarted {
                restarts: 1,
                attempt: 1,
            },
            Level::DEBUG,
        ),
        (SupervisionKind::RestartCancelled, Level::DEBUG),
        (SupervisionKind::StallCleared, Level::DEBUG),
        (
            SupervisionKind::Stalled {
                timeout: Duration::from_secs(1),
                action: StallAction::Report,
            },
            Level::WARN,
        ),
        (
            SupervisionKind::GaveUp {
                restarts: 1,
                reason: ExitReason::Failed,
                failure: None,
                why: "intensity",
            },
            Level::ERROR,
        ),
    ];
    for (kind, level) in kinds {
        recording.clear();
        let name = kind.name();
        observer.on_supervision(&SupervisionEvent::for_test(Some("rt/w"), kind));
        let events = recording.events();
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0].level, level, "{name}");
    }
}

/// A loop worker whose loop waits for a permit from `gate`, then fails (with public code
/// `upstream_down`), unless asked to stop first. Counts its runs in `runs`.
fn gated_failing_loop(gate: &Arc<Semaphore>, runs: &Arc<AtomicU32>) -> LoopWorker {
    let gate = Arc::clone(gate);
    let runs = Arc::clone(runs);
    LoopWorker::new(move |ctx| {
        let gate = Arc::clone(&gate);
        runs.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::select! {
                () = ctx.stop_requested() => return Ok(()),
                permit = gate.acquire() => permit.expect("open semaphore").forget(),
            }
            Err(with_failure(
                std::io::Error::other("dsn postgres://admin:hunter2@db"),
                "upstream_down",
                "upstream down",
            ))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn each_restart_of_a_failing_loop_logs_a_scheduled_and_a_restarted_event() {
    const N: usize = 3;
    let (recording, _guard) = record();
    let seen = Seen::new();
    let rt = runtime(&seen);
    let gate = Arc::new(Semaphore::new(0));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure().backoff(Backoff::constant(Duration::from_millis(250)));
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .expect("valid registration");
    rt.start_all().await.expect("start");

    for restart in 1..=N {
        gate.add_permits(1);
        // The restart is done once the new incarnation runs.
        seen.wait_until(|log| Seen::count(log, "rt/w starting->running") == restart + 1)
            .await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);

    let scheduled = recording.with_message(RESTART_SCHEDULED);
    let restarted = recording.with_message(RESTARTED);
    assert_eq!(scheduled.len(), N, "{scheduled:#?}");
    assert_eq!(restarted.len(), N, "{restarted:#?}");
    for (i, (s, r)) in scheduled.iter().zip(&restarted).enumerate() {
        let n = (i + 1).to_string();
        assert_eq!(s.level, Level::WARN);
        assert_eq!(s.field("worker"), Some("rt/w"));
        // The failed incarnation is scheduled for restart; the restart is the next one.
        assert_eq!(s.field("incarnation"), Some(n.as_str()));
        assert_eq!(
            s.field("attempt"),
            Some(n.as_str()),
            "no healthy run: it grows"
        );
        assert_eq!(s.field("delay_ms"), Some("250"));
        assert_eq!(s.field("exit_reason"), Some("failed"));
        assert_eq!(s.field("failure_code"), Some("upstream_down"));
        assert_eq!(s.field("error"), Some("upstream down"));
        assert_eq!(r.level, Level::INFO);
        assert_eq!(r.field("worker"), Some("rt/w"));
        assert_eq!(r.field("incarnation"), Some((i + 2).to_string().as_str()));
        assert_eq!(r.field("restarts"), Some(n.as_str()));
        assert_eq!(r.field("attempt"), Some(n.as_str()));
    }
    // Order: the failure, then its restart scheduled, then the restart.
    let messages: Vec<String> = recording
        .events()
        .iter()
        .map(|e| e.message().to_owned())
        .filter(|m| [RESTART_SCHEDULED, RESTARTED].contains(&m.as_str()))
        .collect();
    assert_eq!(
        messages,
        [RESTART_SCHEDULED, RESTARTED].repeat(N),
        "each restart is scheduled before it is made"
    );
    assert!(recording.with_message(RESTART_CANCELLED).is_empty());
    assert!(!recording.all_text().contains("hunter2"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_backoff_logs_the_cancelled_restart() {
    let (recording, _guard) = record();
    let seen = Seen::new();
    let rt = runtime(&seen);
    let gate = Arc::new(Semaphore::new(1));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure().backoff(Backoff::constant(Duration::from_secs(3600)));
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .expect("valid registration");
    rt.start_all().await.expect("start");
    seen.wait_until(|log| Seen::count(log, "restart_scheduled rt/w 1") == 1)
        .await;

    rt.stop("w").await.expect("stop during the backoff");
    let cancelled = recording.one(RESTART_CANCELLED);
    assert_eq!(cancelled.level, Level::INFO);
    assert_eq!(cancelled.field("worker"), Some("rt/w"));
    assert_eq!(cancelled.field("incarnation"), Some("1"));
    assert_eq!(
        cancelled.field("supervision_kind"),
        Some("restart_cancelled")
    );
    assert!(recording.with_message(RESTARTED).is_empty());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "no restart after the stop");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn exhausting_the_restart_intensity_logs_the_give_up_at_error() {
    let (recording, _guard) = record();
    let seen = Seen::new();
    let rt = runtime(&seen);
    let gate = Arc::new(Semaphore::new(3));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .intensity(Intensity::new(2, Duration::from_secs(60)).expect("valid intensity"));
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .expect("valid registration");
    rt.start_all().await.expect("start");
    seen.wait_until(|log| log.iter().any(|l| l.starts_with("gave_up rt/w")))
        .await;

    assert_eq!(recording.with_message(RESTARTED).len(), 2);
    let gave_up = recording.one(GAVE_UP);
    assert_eq!(gave_up.level, Level::ERROR);
    assert_eq!(gave_up.field("worker"), Some("rt/w"));
    assert_eq!(gave_up.field("incarnation"), Some("3"));
    assert_eq!(gave_up.field("restarts"), Some("2"));
    assert_eq!(gave_up.field("why"), Some("intensity"));
    assert_eq!(gave_up.field("exit_reason"), Some("failed"));
    assert_eq!(gave_up.field("failure_code"), Some("upstream_down"));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_watchdog_stall_and_its_end_are_logged() {
    let (recording, _guard) = record();
    let seen = Seen::new();
    let rt = runtime(&seen);
    let beat = Arc::new(Notify::new());
    let wake = Arc::clone(&beat);
    let worker = LoopWorker::new(move |ctx| {
        let wake = Arc::clone(&wake);
        async move {
            loop {
                tokio::select! {
                    () = ctx.stop_requested() => return Ok(()),
                    () = wake.notified() => ctx.beat(),
                }
            }
        }
    });
    let watchdog = Watchdog::new(Duration::from_secs(2), StallAction::Report).expect("valid");
    rt.register(WorkerSpec::new("w", worker).watchdog(watchdog))
        .expect("valid registration");
    rt.start_all().await.expect("start");

    // No beat: stalled within 1.5 timeouts of paused time.
    seen.wait_until(|log| Seen::count(log, "stalled rt/w 1") == 1)
        .await;
    let stalled = recording.one(STALLED);
    assert_eq!(stalled.level, Level::WARN);
    assert_eq!(stalled.field("worker"), Some("rt/w"));
    assert_eq!(stalled.field("incarnation"), Some("1"));
    assert_eq!(stalled.field("timeout_ms"), Some("2000"));
    assert_eq!(stalled.field("action"), Some("report"));
    assert!(recording.with_message(STALL_CLEARED).is_empty());

    beat.notify_one();
    seen.wait_until(|log| Seen::count(log, "stall_cleared rt/w 1") == 1)
        .await;
    let cleared = recording.one(STALL_CLEARED);
    assert_eq!(cleared.level, Level::INFO);
    assert_eq!(cleared.field("worker"), Some("rt/w"));
    assert_eq!(cleared.field("incarnation"), Some("1"));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_long_shutdown_logs_which_workers_it_still_waits_for() {
    let (recording, _guard) = record();
    let seen = Seen::new();
    let rt = Runtime::builder("rt")
        .with_observer(TracingObserver::new())
        .with_observer(seen.clone())
        .shutdown_report_interval(Duration::from_secs(1))
        .build()
        .expect("valid runtime");
    let (slow, control) = FakeWorker::new();
    control.on_stop(Step::Block);
    rt.register(WorkerSpec::new("slow", slow))
        .expect("valid registration");
    rt.register(WorkerSpec::new("quick", FakeWorker::new().0))
        .expect("valid registration");
    rt.start_all().await.expect("start");

    let shutdown = tokio::spawn({
        let rt = rt.clone();
        async move { rt.shutdown().await }
    });
    seen.wait_until(|log| log.iter().any(|l| l.starts_with("shutdown_waiting")))
        .await;
    control.release();
    shutdown
        .await
        .expect("the shutdown task")
        .expect("shutdown");

    let waiting = recording
        .with_message(SHUTDOWN_WAITING)
        .into_iter()
        .next()
        .expect("a shutdown waiting event");
    assert_eq!(waiting.level, Level::WARN);
    assert_eq!(waiting.field("worker"), None);
    assert_eq!(waiting.field("incarnation"), None);
    assert_eq!(waiting.field("phase"), Some("stopping"));
    assert_eq!(
        waiting.field("workers"),
        Some("rt/slow"),
        "only the one not stopped"
    );
    assert_eq!(waiting.field("pending_workers"), Some("1"));
    assert_eq!(waiting.field("in_flight"), Some("0"));
    assert_eq!(waiting.field("elapsed_ms"), Some("1000"));
}
