//! Command metrics: every instrument with its unit, kind and exact attribute sets, for success,
//! handler error, timeout, panic, rejection and retries; in-flight while a handler runs; no
//! unbounded attribute anywhere.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::{Kind, Telemetry, within, worker_with};
use tokio::sync::Notify;
use workerkit_core::command::CommandSpec;
use workerkit_core::failure::with_failure;
use workerkit_core::retry::{Backoff, RetryPolicy};
use workerkit_core::{CommandRequest, CommandResponse, handler_fn};

const BASE: [(&str, &str); 3] = [
    ("workerkit.runtime", "rt"),
    ("workerkit.worker", "rt/w"),
    ("workerkit.command", "c"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut attrs = BASE.to_vec();
    attrs.extend_from_slice(extra);
    attrs
}

fn req() -> CommandRequest {
    CommandRequest::new("w", "c")
}

/// A command whose handler does what the request's payload says (`ok`, `fail`, `panic`,
/// `hang`), failing on its first attempt when asked to (`flaky`).
fn scripted() -> CommandSpec {
    let flaky = Arc::new(AtomicU32::new(0));
    CommandSpec::new(
        "c",
        handler_fn(move |ctx| {
            let flaky = Arc::clone(&flaky);
            async move {
                let script: String = ctx.request().json()?;
                match script.as_str() {
                    "fail" => Err(with_failure(
                        std::io::Error::other("private"),
                        "billing_down",
                        "billing is down",
                    )),
                    "panic" => panic!("boom"),
                    "hang" => {
                        ctx.cancelled().await;
                        Err("gave up".into())
                    }
                    "flaky" if flaky.fetch_add(1, Ordering::SeqCst) == 0 => Err("flaky".into()),
                    _ => Ok(CommandResponse::empty()),
                }
            }
        }),
    )
    .timeout(Duration::from_secs(2))
    .retry(
        RetryPolicy::attempts(2)
            .unwrap()
            .backoff(Backoff::constant(Duration::from_secs(1)))
            .retry_if(|err| err.to_string() == "flaky"),
    )
}

#[tokio::test(start_paused = true)]
async fn every_command_metric_has_its_unit_and_bounded_attributes() {
    let t = Telemetry::new();
    let rt = t.runtime();
    rt.register(worker_with(scripted())).unwrap();
    // Rejected: not started yet.
    rt.dispatch(req().payload("ok".into())).await.unwrap_err();
    rt.start_all().await.unwrap();
    for script in ["ok", "ok", "flaky", "fail", "hang", "panic"] {
        let _ = within(rt.dispatch(req().payload(script.into()))).await;
    }

    let dispatches = t.metric("workerkit.command.dispatches");
    assert_eq!(
        (dispatches.kind, dispatches.unit.as_str()),
        (Kind::Counter, "")
    );
    let success = with(&[("workerkit.command.success", "true")]);
    assert_eq!(dispatches.value(&success), 3.0, "ok, ok, flaky");
    let failed = with(&[
        ("workerkit.command.success", "false"),
        ("workerkit.failure.code", "billing_down"),
    ]);
    assert_eq!(dispatches.value(&failed), 1.0);
    let timed_out = with(&[
        ("workerkit.command.success", "false"),
        ("workerkit.failure.code", "deadline_exceeded"),
    ]);
    assert_eq!(dispatches.value(&timed_out), 1.0);
    assert_eq!(
        dispatches.points.len(),
        5,
        "success, failed, timed out, panicked, rejected: {:#?}",
        dispatches.points
    );
    let rejected = dispatches
        .points
        .iter()
        .find(|p| {
            p.attrs
                .get("workerkit.failure.code")
                .is_some_and(|c| c.contains("state") || c.contains("accepting"))
        })
        .expect("the rejection's point");
    assert_eq!(rejected.value, 1.0);

    let duration = t.metric("workerkit.command.duration");
    assert_eq!(
        (duration.kind, duration.unit.as_str()),
        (Kind::Histogram, "s")
    );
    assert_eq!(duration.point(&success).count, 3);
    let timed_out_point = duration.point(&timed_out);
    assert_eq!(timed_out_point.count, 1);
    assert!(
        (timed_out_point.value - 2.0).abs() < 1e-6,
        "the timed-out dispatch took its 2 s timeout (paused clock): {}",
        timed_out_point.value
    );
    assert_eq!(duration.attribute_sets(), dispatches.attribute_sets());

    let attempts = t.metric("workerkit.command.handler_attempts");
    assert_eq!(
        (attempts.kind, attempts.unit.as_str()),
        (Kind::Counter, "{attempt}")
    );
    assert_eq!(attempts.value(&success), 4.0, "ok, ok, and flaky twice");
    assert_eq!(attempts.value(&failed), 1.0);
    assert!(
        !attempts.attribute_sets().contains(&rejected.attrs),
        "a rejection runs no attempt"
    );

    let retries = t.metric("workerkit.command.retries");
    assert_eq!(
        (retries.kind, retries.unit.as_str()),
        (Kind::Counter, "{retry}")
    );
    assert_eq!(retries.points.len(), 1);
    assert_eq!(retries.value(&success), 1.0);

    let failures = t.metric("workerkit.failures");
    assert_eq!((failures.kind, failures.unit.as_str()), (Kind::Counter, ""));
    assert_eq!(
        failures.value(&with(&[
            ("workerkit.failure.panic", "false"),
            ("workerkit.failure.code", "billing_down"),
        ])),
        1.0
    );
    let panics: f64 = failures
        .points
        .iter()
        .filter(|p| p.attrs["workerkit.failure.panic"] == "true")
        .map(|p| p.value)
        .sum();
    assert!(
        panics >= 1.0,
        "the panic is counted: {:#?}",
        failures.points
    );

    // No dispatch id, attempt number or other unbounded value is a metric attribute.
    for (name, instrument) in t.metrics() {
        for point in &instrument.points {
            for key in point.attrs.keys() {
                assert!(
                    !key.contains("dispatch_id") && key != "workerkit.command.attempt",
                    "{name} has the unbounded attribute {key}"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_a_command_while_its_handler_runs() {
    let t = Telemetry::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let handler = {
        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
        handler_fn(move |_ctx| {
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            async move {
                entered.notify_one();
                release.notified().await;
                Ok(CommandResponse::empty())
            }
        })
    };
    let rt = t.runtime();
    rt.register(worker_with(CommandSpec::new("c", handler)))
        .unwrap();
    // A rejection never counts as in flight.
    rt.dispatch(req()).await.unwrap_err();
    assert_eq!(
        t.metric("workerkit.command.in_flight").value(&BASE),
        0.0,
        "nothing was in flight yet"
    );
    rt.start_all().await.unwrap();

    let task = tokio::spawn({
        let rt = rt.clone();
        async move { rt.dispatch(req()).await }
    });
    within(entered.notified()).await;
    let in_flight = t.metric("workerkit.command.in_flight");
    assert_eq!(
        (in_flight.kind, in_flight.unit.as_str()),
        (Kind::UpDownCounter, "{command}")
    );
    assert_eq!(in_flight.value(&BASE), 1.0);
    assert_eq!(in_flight.points.len(), 1);

    release.notify_one();
    within(task).await.unwrap().unwrap();
    assert_eq!(t.metric("workerkit.command.in_flight").value(&BASE), 0.0);
}
