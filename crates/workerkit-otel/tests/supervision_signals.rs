//! Supervision: restart, give-up and stall counters (bounded series), and the short
//! `workerkit.supervision <kind>` spans, for each kind and through a real `Runtime` on a paused
//! clock.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry::trace::Status;
use opentelemetry::{Array, StringValue, Value};
use support::{
    Attrs, Kind, Telemetry, error_message, is_child_of, is_root, span_attr, span_attrs, to_attrs,
};
use tokio::sync::{Notify, Semaphore, watch};
use workerkit_core::failure::{Failure, with_failure};
use workerkit_core::observe::{SupervisionEvent, SupervisionKind, TransitionEvent};
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::{Intensity, RestartPolicy, StallAction, Watchdog};
use workerkit_core::{ExitReason, LoopWorker, Observer, Runtime, Timestamp, WorkerSpec};

/// What the runtime reported, as short lines (`restarted rt/w 2`, `rt/w starting->running`),
/// with a way to wait for a condition on them: tests wait on the runtime's own events, never on
/// time.
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

/// A runtime `rt` with the observer under test, then `seen`.
fn runtime(t: &Telemetry, seen: &Seen) -> Runtime {
    t.runtime_with(|b| b.with_observer(seen.clone()).jitter_seed(7))
}

/// A loop worker whose loop waits for a permit from `gate`, then fails (public code
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
                std::io::Error::other("token=hunter2"),
                "upstream_down",
                "upstream down",
            ))
        }
    })
}

/// Every metric series: instrument name and attributes.
fn series(t: &Telemetry) -> BTreeSet<(String, Attrs)> {
    t.metrics()
        .into_iter()
        .flat_map(|(name, instrument)| {
            instrument
                .attribute_sets()
                .into_iter()
                .map(move |attrs| (name.clone(), attrs))
        })
        .collect()
}

const WORKER: [(&str, &str); 2] = [("workerkit.runtime", "rt"), ("workerkit.worker", "rt/w")];

#[tokio::test(start_paused = true)]
async fn restarting_a_worker_n_times_counts_n_restarts_on_a_constant_set_of_series() {
    const N: usize = 5;
    let t = Telemetry::new();
    let seen = Seen::new();
    let rt = runtime(&t, &seen);
    let gate = Arc::new(Semaphore::new(0));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .unbounded();
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .unwrap();
    rt.start_all().await.unwrap();

    let mut after_first: Option<BTreeSet<(String, Attrs)>> = None;
    for restart in 1..=N {
        gate.add_permits(1);
        // The restart is done once the new incarnation runs (and the loop waits on the gate).
        seen.wait_until(|log| Seen::count(log, "rt/w starting->running") == restart + 1)
            .await;

        let restarts = t.metric("workerkit.worker.restarts");
        assert_eq!(
            (restarts.kind, restarts.unit.as_str()),
            (Kind::Counter, "{restart}")
        );
        assert_eq!(
            restarts.attribute_sets(),
            [to_attrs(&WORKER)],
            "one series: the worker's names, no incarnation"
        );
        #[allow(clippy::cast_precision_loss)] // Small counts.
        let expected = restart as f64;
        assert_eq!(restarts.value(&WORKER), expected);

        // Every instrument's series exist once the first restart went through; later restarts
        // only add to them.
        let now = series(&t);
        match &after_first {
            None => after_first = Some(now),
            Some(first) => assert_eq!(&now, first, "restart {restart} added series"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    for (name, attrs) in after_first.unwrap() {
        assert!(
            !attrs.keys().any(|k| k.contains("incarnation")
                || k.contains("attempt")
                || k.contains("restart")),
            "{name} {attrs:?}"
        );
    }

    // One short root span per restart, with the new incarnation.
    let restarted = t.spans_named("workerkit.supervision restarted");
    assert_eq!(restarted.len(), N);
    for (i, span) in restarted.iter().enumerate() {
        assert!(
            is_root(span),
            "no operation is open during a supervised restart"
        );
        let n = i64::try_from(i).unwrap();
        assert_eq!(
            span_attr(span, "workerkit.worker.incarnation"),
            Some(Value::I64(n + 2))
        );
        assert_eq!(
            span_attr(span, "workerkit.restart.count"),
            Some(Value::I64(n + 1))
        );
        assert_eq!(span.status, Status::Unset);
    }
    let scheduled = t.spans_named("workerkit.supervision restart_scheduled");
    assert_eq!(scheduled.len(), N);
    assert_eq!(
        span_attr(&scheduled[0], "workerkit.restart.delay"),
        Some(Value::F64(0.1))
    );
    assert_eq!(
        span_attr(&scheduled[0], "workerkit.exit.reason"),
        Some(Value::from("failed"))
    );
    assert_eq!(
        span_attr(&scheduled[0], "workerkit.failure.code"),
        Some(Value::from("upstream_down"))
    );
    assert!(!format!("{:?}", t.spans()).contains("hunter2"));
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_give_up_is_counted_and_is_an_error_span() {
    let t = Telemetry::new();
    let seen = Seen::new();
    let rt = runtime(&t, &seen);
    let gate = Arc::new(Semaphore::new(3));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .intensity(Intensity::new(2, Duration::from_secs(60)).unwrap());
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .unwrap();
    rt.start_all().await.unwrap();
    seen.wait_until(|log| log.iter().any(|l| l.starts_with("gave_up rt/w")))
        .await;

    assert_eq!(t.metric("workerkit.worker.restarts").value(&WORKER), 2.0);
    let give_ups = t.metric("workerkit.worker.give_ups");
    assert_eq!(
        (give_ups.kind, give_ups.unit.as_str()),
        (Kind::Counter, "{give_up}")
    );
    assert_eq!(give_ups.attribute_sets(), [to_attrs(&WORKER)]);
    assert_eq!(give_ups.value(&WORKER), 1.0);

    let gave_up = t.span("workerkit.supervision gave_up");
    assert!(is_root(&gave_up));
    assert_eq!(error_message(&gave_up), "upstream down");
    assert_eq!(
        span_attrs(&gave_up),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.supervision.kind", "gave_up"),
            ("workerkit.worker.incarnation", "3"),
            ("workerkit.restart.count", "2"),
            ("workerkit.exit.reason", "failed"),
            ("workerkit.failure.code", "upstream_down"),
            ("workerkit.give_up.why", "intensity"),
        ])
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stall_is_counted_by_action_and_is_a_span_as_is_its_end() {
    let t = Telemetry::new();
    let seen = Seen::new();
    let rt = runtime(&t, &seen);
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
    let watchdog = Watchdog::new(Duration::from_secs(2), StallAction::Report).unwrap();
    rt.register(WorkerSpec::new("w", worker).watchdog(watchdog))
        .unwrap();
    rt.start_all().await.unwrap();
    seen.wait_until(|log| Seen::count(log, "stalled rt/w 1") == 1)
        .await;

    let stalls = t.metric("workerkit.worker.stalls");
    assert_eq!(
        (stalls.kind, stalls.unit.as_str()),
        (Kind::Counter, "{stall}")
    );
    let with_action = [
        ("workerkit.runtime", "rt"),
        ("workerkit.worker", "rt/w"),
        ("workerkit.watchdog.action", "report"),
    ];
    assert_eq!(stalls.attribute_sets(), [to_attrs(&with_action)]);
    assert_eq!(stalls.value(&with_action), 1.0);
    let stalled = t.span("workerkit.supervision stalled");
    assert!(is_root(&stalled));
    assert_eq!(stalled.status, Status::Unset);
    assert_eq!(
        span_attrs(&stalled),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.supervision.kind", "stalled"),
            ("workerkit.worker.incarnation", "1"),
            ("workerkit.watchdog.timeout", "2"),
            ("workerkit.watchdog.action", "report"),
        ])
    );

    beat.notify_one();
    seen.wait_until(|log| Seen::count(log, "stall_cleared rt/w 1") == 1)
        .await;
    let cleared = t.span("workerkit.supervision stall_cleared");
    assert_eq!(
        span_attr(&cleared, "workerkit.supervision.kind"),
        Some(Value::from("stall_cleared"))
    );
    assert_eq!(
        t.metric("workerkit.worker.stalls").value(&with_action),
        1.0,
        "the end of a stall is no stall"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_cancelled_by_a_stop_is_a_child_and_an_event_of_the_stop_span() {
    let t = Telemetry::new();
    let seen = Seen::new();
    let rt = runtime(&t, &seen);
    let gate = Arc::new(Semaphore::new(1));
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RestartPolicy::on_failure().backoff(Backoff::constant(Duration::from_secs(3600)));
    rt.register(WorkerSpec::new("w", gated_failing_loop(&gate, &runs)).restart(policy))
        .unwrap();
    rt.start_all().await.unwrap();
    seen.wait_until(|log| Seen::count(log, "restart_scheduled rt/w 1") == 1)
        .await;
    rt.stop("w").await.unwrap();

    let stop = t.span("workerkit.lifecycle stop");
    let cancelled = t.span("workerkit.supervision restart_cancelled");
    assert!(is_child_of(&cancelled, &stop));
    let events: Vec<_> = stop
        .events
        .iter()
        .filter(|e| e.name == "workerkit.supervision")
        .collect();
    assert_eq!(events.len(), 1);
    assert!(events[0].attributes.iter().any(|kv| {
        kv.key.as_str() == "workerkit.supervision.kind"
            && kv.value == Value::from("restart_cancelled")
    }));
    assert!(t.spans_named("workerkit.supervision restarted").is_empty());
    // The scheduled restart happened outside any operation: a root.
    assert!(is_root(&t.span("workerkit.supervision restart_scheduled")));
    rt.shutdown().await.unwrap();
}

#[test]
fn each_supervision_kind_is_a_span_with_its_attributes_and_only_three_kinds_count() {
    let t = Telemetry::new();
    let emit = |worker: Option<&str>, kind: SupervisionKind| {
        t.observer
            .on_supervision(&SupervisionEvent::for_test(worker, kind));
    };
    emit(
        Some("rt/w"),
        SupervisionKind::RestartScheduled {
            attempt: 3,
            delay: Duration::from_millis(1500),
            due: Timestamp::now(),
            reason: ExitReason::Panicked,
            failure: Some(Failure::new("panic", "worker panicked")),
        },
    );
    emit(
        Some("rt/w"),
        SupervisionKind::Restarted {
            restarts: 4,
            attempt: 3,
        },
    );
    emit(Some("rt/w"), SupervisionKind::RestartCancelled);
    emit(
        Some("rt/w"),
        SupervisionKind::GaveUp {
            restarts: 4,
            reason: ExitReason::Failed,
            failure: None,
            why: "permanent",
        },
    );
    emit(
        Some("rt/w"),
        SupervisionKind::Stalled {
            timeout: Duration::from_millis(500),
            action: StallAction::Restart,
        },
    );
    emit(Some("rt/w"), SupervisionKind::StallCleared);
    let mut waiting = SupervisionEvent::for_test(
        None,
        SupervisionKind::ShutdownWaiting {
            elapsed: Duration::from_secs(10),
            workers: vec!["rt/b".into(), "rt/a".into()],
            in_flight: 2,
            commands: Vec::new(),
            phase: "draining",
        },
    );
    waiting.incarnation = 0;
    t.observer.on_supervision(&waiting);

    let w = |kind: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut all = vec![
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.supervision.kind", kind),
            ("workerkit.worker.incarnation", "1"),
        ];
        all.extend_from_slice(extra);
        to_attrs(&all)
    };
    let span = |kind: &str| t.span(&format!("workerkit.supervision {kind}"));
    assert_eq!(
        span_attrs(&span("restart_scheduled")),
        w(
            "restart_scheduled",
            &[
                ("workerkit.restart.attempt", "3"),
                ("workerkit.restart.delay", "1.5"),
                ("workerkit.exit.reason", "panicked"),
                ("workerkit.failure.code", "panic"),
            ]
        )
    );
    assert_eq!(
        span_attrs(&span("restarted")),
        w(
            "restarted",
            &[
                ("workerkit.restart.count", "4"),
                ("workerkit.restart.attempt", "3"),
            ]
        )
    );
    assert_eq!(
        span_attrs(&span("restart_cancelled")),
        w("restart_cancelled", &[])
    );
    let gave_up = span("gave_up");
    assert_eq!(
        span_attrs(&gave_up),
        w(
            "gave_up",
            &[
                ("workerkit.restart.count", "4"),
                ("workerkit.exit.reason", "failed"),
                ("workerkit.give_up.why", "permanent"),
            ]
        )
    );
    assert_eq!(error_message(&gave_up), "restart policy gave up: permanent");
    assert_eq!(
        span_attrs(&span("stalled")),
        w(
            "stalled",
            &[
                ("workerkit.watchdog.timeout", "0.5"),
                ("workerkit.watchdog.action", "restart"),
            ]
        )
    );
    assert_eq!(span_attrs(&span("stall_cleared")), w("stall_cleared", &[]));
    let waiting = span("shutdown_waiting");
    assert_eq!(
        span_attr(&waiting, "workerkit.shutdown.workers"),
        Some(Value::Array(Array::String(vec![
            StringValue::from("rt/b"),
            StringValue::from("rt/a"),
        ])))
    );
    assert_eq!(span_attr(&waiting, "workerkit.worker"), None);
    assert_eq!(span_attr(&waiting, "workerkit.worker.incarnation"), None);
    assert_eq!(
        span_attr(&waiting, "workerkit.shutdown.phase"),
        Some(Value::from("draining"))
    );
    assert_eq!(
        span_attr(&waiting, "workerkit.shutdown.in_flight"),
        Some(Value::I64(2))
    );
    assert_eq!(
        span_attr(&waiting, "workerkit.shutdown.elapsed"),
        Some(Value::F64(10.0))
    );
    for span in t.spans() {
        assert!(is_root(&span), "no operation is open: {}", span.name);
        if span.name != "workerkit.supervision gave_up" {
            assert_eq!(span.status, Status::Unset, "{}", span.name);
        }
    }

    let metrics = t.metrics();
    let supervision: Vec<_> = metrics
        .keys()
        .filter(|name| name.starts_with("workerkit.worker."))
        .collect();
    assert_eq!(
        supervision,
        [
            "workerkit.worker.give_ups",
            "workerkit.worker.restarts",
            "workerkit.worker.stalls"
        ]
    );
    assert_eq!(metrics["workerkit.worker.restarts"].value(&WORKER), 1.0);
    assert_eq!(metrics["workerkit.worker.give_ups"].value(&WORKER), 1.0);
    assert_eq!(
        metrics["workerkit.worker.stalls"].value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.watchdog.action", "restart"),
        ]),
        1.0
    );
}
