//! End to end: the example exports over real OTLP/HTTP to a receiver started here on a loopback
//! port. A command carrying a `traceparent` continues its trace, the service name comes from
//! `OTEL_SERVICE_NAME`, and everything arrives through the flush at shutdown after SIGTERM
//! (the batch processor's and metric reader's own schedules are set far beyond the test).
//!
//! Every wait is bounded and waits for an event (a line of output, a request, the exit).
#![cfg(unix)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::otlp_receiver::{OtlpReceiver, attribute, hex};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN_ID: &str = "b7ad6b7169203331";
const SERVICE: &str = "e2e-billing";
/// Bound on the example's startup (a debug build on a busy machine) and on its shutdown.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_arrive_over_otlp_http_after_sigterm() {
    let receiver = OtlpReceiver::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-observability-otel"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("TRACEPARENT", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .env("OBSERVABILITY_OTEL_WAIT", "1")
        // Nothing is exported on a schedule: only the shutdown flush can deliver.
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        .env_remove("OTEL_SDK_DISABLED")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut transcript = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read the example's output") {
            let waiting = line.contains("waiting for SIGTERM");
            transcript.push(line);
            if waiting {
                return;
            }
        }
        panic!("the example ended before waiting: {transcript:#?}");
    })
    .await
    .expect("the example dispatched and waits for SIGTERM");
    assert!(
        transcript
            .iter()
            .any(|l| l.contains("exporting over OTLP/HTTP")),
        "{transcript:#?}"
    );
    assert!(
        receiver.received().spans().is_empty(),
        "batched: nothing is exported before the shutdown"
    );

    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the example exits after SIGTERM")
        .expect("wait for the example");
    assert!(exit.success(), "exit status {exit}");

    // The flush completed before the process exited (the exporter waits for the response).
    let arrived = receiver
        .wait_until(
            |r| {
                r.spans()
                    .iter()
                    .any(|(_, s)| s.name == "workerkit.command charge")
                    && r.metrics()
                        .iter()
                        .any(|(_, m)| m.name == "workerkit.command.dispatches")
            },
            LIMIT,
        )
        .await;
    let received = receiver.received();
    assert!(arrived, "spans and metrics arrived: {received:#?}");

    let spans = received.spans();
    let (service, charge) = spans
        .iter()
        .find(|(_, s)| s.name == "workerkit.command charge")
        .expect("the command span");
    assert_eq!(service, SERVICE);
    assert_eq!(hex(&charge.trace_id), TRACE_ID, "the traceparent's trace");
    assert_eq!(hex(&charge.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(
        attribute(&charge.attributes, "workerkit.worker").as_deref(),
        Some("billing/billing")
    );
    let (_, card) = spans
        .iter()
        .find(|(_, s)| s.name == "charge card")
        .expect("the handler's span");
    assert_eq!(
        card.parent_span_id, charge.span_id,
        "nested under the command"
    );
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.name == "workerkit.lifecycle shutdown"),
        "the shutdown's own span is flushed too"
    );

    let metrics = received.metrics();
    let (service, dispatches) = metrics
        .iter()
        .find(|(_, m)| m.name == "workerkit.command.dispatches")
        .expect("the dispatch counter");
    assert_eq!(service, SERVICE);
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = &dispatches.data
    else {
        panic!("a sum: {dispatches:?}");
    };
    let charge_point = sum
        .data_points
        .iter()
        .find(|p| attribute(&p.attributes, "workerkit.command").as_deref() == Some("charge"))
        .expect("a point for charge");
    assert_eq!(
        attribute(&charge_point.attributes, "workerkit.command.success").as_deref(),
        Some("true")
    );
    let (_, duration) = metrics
        .iter()
        .find(|(_, m)| m.name == "workerkit.command.duration")
        .expect("the duration histogram");
    assert_eq!(duration.unit, "s");
}
