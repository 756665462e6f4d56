//! Lifecycle operations, transitions, readiness, failures and readiness checks: spans, span
//! events, status rules and metrics.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, Value};
use support::{
    Kind, Telemetry, error_message, is_child_of, is_root, span_attr, span_attrs, to_attrs,
};
use workerkit_core::test_util::{FakeWorker, Step};
use workerkit_core::{ReadinessCheck, WorkerSpec};

fn event_pairs(span: &opentelemetry_sdk::trace::SpanData, name: &str) -> Vec<String> {
    span.events
        .iter()
        .filter(|e| e.name == name)
        .map(|e| {
            e.attributes
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_lifecycle_operation_is_a_span_with_its_transitions_and_readiness_changes() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(WorkerSpec::new("w", FakeWorker::new().0))
        .unwrap();
    rt.start_all().await.unwrap();
    rt.shutdown().await.unwrap();

    let start_all = t.span("workerkit.lifecycle start_all");
    assert!(is_root(&start_all));
    assert_eq!(start_all.status, Status::Ok);
    assert_eq!(
        span_attrs(&start_all),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.operation", "start_all"),
            ("workerkit.operation.success", "true"),
        ])
    );
    assert_eq!(
        event_pairs(&start_all, "workerkit.lifecycle.change"),
        [
            "workerkit.runtime=rt workerkit.worker=rt/w workerkit.lifecycle.from=registered \
             workerkit.lifecycle.to=starting",
            "workerkit.runtime=rt workerkit.lifecycle.from=registered workerkit.lifecycle.to=starting",
            "workerkit.runtime=rt workerkit.worker=rt/w workerkit.lifecycle.from=starting \
             workerkit.lifecycle.to=running",
            "workerkit.runtime=rt workerkit.lifecycle.from=starting workerkit.lifecycle.to=running",
        ]
    );
    assert_eq!(
        event_pairs(&start_all, "workerkit.readiness.change"),
        [
            "workerkit.runtime=rt workerkit.worker=rt/w workerkit.ready=true",
            "workerkit.runtime=rt workerkit.ready=true",
        ]
    );

    let shutdown = t.span("workerkit.lifecycle shutdown");
    assert_eq!(shutdown.status, Status::Ok);
    assert!(
        event_pairs(&shutdown, "workerkit.lifecycle.change")
            .iter()
            .any(|e| e.ends_with("workerkit.lifecycle.to=stopped")),
        "{:?}",
        event_pairs(&shutdown, "workerkit.lifecycle.change")
    );

    let transitions = t.metric("workerkit.lifecycle.transitions");
    assert_eq!(
        (transitions.kind, transitions.unit.as_str()),
        (Kind::Counter, "")
    );
    assert_eq!(
        transitions.value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.lifecycle.from", "starting"),
            ("workerkit.lifecycle.to", "running"),
        ]),
        1.0
    );
    assert_eq!(
        transitions.value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.lifecycle.from", "starting"),
            ("workerkit.lifecycle.to", "running"),
        ]),
        1.0
    );

    let state = t.metric("workerkit.lifecycle.state");
    assert_eq!((state.kind, state.unit.as_str()), (Kind::Gauge, "1"));
    let worker_state = |s: &str| {
        state.value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.lifecycle.state", s),
        ])
    };
    assert_eq!(worker_state("stopped"), 1.0);
    assert_eq!(worker_state("running"), 0.0);
    assert_eq!(worker_state("starting"), 0.0);

    let readiness = t.metric("workerkit.readiness.changes");
    assert_eq!(
        (readiness.kind, readiness.unit.as_str()),
        (Kind::Counter, "")
    );
    for ready in ["true", "false"] {
        assert_eq!(
            readiness.value(&[
                ("workerkit.runtime", "rt"),
                ("workerkit.worker", "rt/w"),
                ("workerkit.ready", ready),
            ]),
            1.0
        );
    }

    let operations = t.metric("workerkit.operation.duration");
    assert_eq!(
        (operations.kind, operations.unit.as_str()),
        (Kind::Histogram, "s")
    );
    for op in ["start_all", "shutdown"] {
        let point = operations.point(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.operation", op),
            ("workerkit.operation.success", "true"),
        ]);
        assert_eq!(point.count, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_has_an_error_span_and_a_failure_span_and_leaves_the_callers_span_alone() {
    let t = Telemetry::new();
    let rt = t.runtime();
    let (worker, control) = FakeWorker::new();
    control.on_start(Step::Fail("connect: password=hunter2".into()));
    rt.register(WorkerSpec::new("w", worker)).unwrap();

    let tracer = t.tracer_provider.tracer("caller");
    let cx = Context::current_with_span(tracer.start("caller"));
    rt.start("w").with_context(cx.clone()).await.unwrap_err();
    cx.span().end();

    let caller = t.span("caller");
    assert_eq!(
        caller.status,
        Status::Unset,
        "the caller's span is not ours"
    );
    assert!(caller.events.is_empty());

    let start = t.span("workerkit.lifecycle start");
    assert!(matches!(start.status, Status::Error { .. }));
    assert_eq!(
        span_attr(&start, "workerkit.operation.success"),
        Some(Value::Bool(false))
    );
    assert_eq!(
        span_attr(&start, "workerkit.worker"),
        Some(Value::from("rt/w"))
    );
    let code = span_attr(&start, "workerkit.failure.code").expect("a failure code");

    let failure = t.span("workerkit.failure");
    assert!(is_child_of(&failure, &start));
    assert!(!error_message(&failure).is_empty());
    assert_eq!(span_attr(&failure, "workerkit.command"), None);
    assert_eq!(
        span_attr(&failure, "workerkit.failure.code"),
        Some(code.clone())
    );
    assert_eq!(event_pairs(&start, "workerkit.failure").len(), 1);
    assert!(!format!("{:?}", t.spans()).contains("hunter2"));

    let failures = t.metric("workerkit.failures");
    assert_eq!(
        failures.value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.failure.panic", "false"),
            ("workerkit.failure.code", code.as_str().as_ref()),
        ]),
        1.0
    );
    let operations = t.metric("workerkit.operation.duration");
    assert_eq!(
        operations
            .point(&[
                ("workerkit.runtime", "rt"),
                ("workerkit.worker", "rt/w"),
                ("workerkit.operation", "start"),
                ("workerkit.operation.success", "false"),
                ("workerkit.failure.code", code.as_str().as_ref()),
            ])
            .count,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_outside_any_operation_is_a_root_span_and_leaves_the_current_span_alone() {
    let t = Telemetry::new();
    let rt = t.runtime();
    let (worker, control) = FakeWorker::new();
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start_all().await.unwrap();
    let ctx = control.context(0).expect("the first incarnation's context");
    // Reported from code running in a span of its own: the failure is delivered on this thread,
    // with that span current, and must not touch it.
    let tracer = t.tracer_provider.tracer("worker code");
    let cx = Context::current_with_span(tracer.start("poll upstream"));
    {
        let _attached = cx.clone().attach();
        ctx.report_failure(std::io::Error::other("lost connection"))
            .unwrap();
    }
    cx.span().end();
    let own = t.span("poll upstream");
    assert_eq!(
        own.status,
        Status::Unset,
        "the worker code's span is not ours"
    );
    assert!(own.events.is_empty());

    let failure = t.span("workerkit.failure");
    assert!(
        is_root(&failure),
        "not a child of a span the adapter does not own"
    );
    assert!(matches!(failure.status, Status::Error { .. }));
    let transitions = t.metric("workerkit.lifecycle.transitions");
    assert_eq!(
        transitions.value(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.lifecycle.from", "running"),
            ("workerkit.lifecycle.to", "failed"),
        ]),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_checks_are_spans_and_metrics_with_the_go_status_rules() {
    let t = Telemetry::new();
    let rt = t.runtime();
    let calls = Arc::new(AtomicU32::new(0));
    let check = {
        let calls = Arc::clone(&calls);
        ReadinessCheck::new(move |_ctx| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Ok(true),
                    1 => Ok(false),
                    _ => Err("redis: password=hunter2".into()),
                }
            }
        })
        .interval(Duration::from_secs(1))
    };
    rt.register(WorkerSpec::new("w", FakeWorker::new().0).readiness_check(check))
        .unwrap();
    rt.start_all().await.unwrap();
    // Executions at 0 s, 1 s and 2 s (paused clock): ready, not ready, error.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(t.spans_named("workerkit.check").len() >= 3);
    rt.shutdown().await.unwrap();

    let checks = t.spans_named("workerkit.check");
    let by_outcome = |outcome: &str| {
        checks
            .iter()
            .find(|s| {
                span_attr(s, "workerkit.check.outcome") == Some(Value::from(outcome.to_owned()))
            })
            .unwrap_or_else(|| panic!("a check span with outcome {outcome}"))
    };
    let ready = by_outcome("ready");
    assert_eq!(ready.status, Status::Ok);
    assert_eq!(
        span_attrs(ready),
        to_attrs(&[
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.check.kind", "readiness"),
            ("workerkit.check.outcome", "ready"),
            ("workerkit.check.loop_continues", "true"),
        ])
    );
    assert_eq!(
        error_message(by_outcome("not_ready")),
        "check execution outcome: not_ready"
    );
    assert_eq!(
        error_message(by_outcome("error")),
        "check execution outcome: error"
    );
    if let Some(canceled) = checks
        .iter()
        .find(|s| span_attr(s, "workerkit.check.outcome") == Some(Value::from("canceled")))
    {
        assert_eq!(
            canceled.status,
            Status::Unset,
            "a canceled check is no error"
        );
    }
    assert!(!format!("{checks:?}").contains("hunter2"));

    let executions = t.metric("workerkit.check.executions");
    assert_eq!(
        (executions.kind, executions.unit.as_str()),
        (Kind::Counter, "")
    );
    let attrs = |outcome| {
        [
            ("workerkit.runtime", "rt"),
            ("workerkit.worker", "rt/w"),
            ("workerkit.check.kind", "readiness"),
            ("workerkit.check.outcome", outcome),
            ("workerkit.check.loop_continues", "true"),
        ]
    };
    assert_eq!(executions.value(&attrs("ready")), 1.0);
    assert_eq!(executions.value(&attrs("not_ready")), 1.0);
    assert!(executions.value(&attrs("error")) >= 1.0);
    let duration = t.metric("workerkit.check.duration");
    assert_eq!(
        (duration.kind, duration.unit.as_str()),
        (Kind::Histogram, "s")
    );
    assert_eq!(duration.point(&attrs("ready")).count, 1);
}
