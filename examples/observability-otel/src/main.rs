//! OpenTelemetry: a runtime's commands, lifecycle, failures and readiness checks as traces and
//! metrics, with [`workerkit_otel::OtelObserver`].
//!
//! - With `OTEL_EXPORTER_OTLP_ENDPOINT` set, [`workerkit_otel::init`] exports over OTLP/HTTP
//!   (protobuf) to that endpoint, typically an OpenTelemetry Collector, with the service name
//!   from `OTEL_SERVICE_NAME`.
//! - Without it, the example records to the SDK's in-memory exporters and prints what would
//!   have been exported: every span with its parent and status, every metric with its unit.
//!
//! A `billing` worker owns two commands: `charge`, whose handler opens a span of its own (a
//! child of the command's span), and `refund`, which fails with a public code. `charge` is
//! dispatched with a W3C `traceparent` in its metadata, taken from the `TRACEPARENT`
//! environment variable when set, so its span continues the caller's trace. The runtime's
//! shutdown flushes the exporters (the observer's shutdown hook).
//!
//! With `OBSERVABILITY_OTEL_WAIT=1`, the example waits for SIGTERM or Ctrl-C before shutting
//! down, as a service would (the end-to-end test uses this).
//!
//! Run with: `cargo run -p example-observability-otel`, or to a collector:
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 OTEL_SERVICE_NAME=billing cargo run -p example-observability-otel`

use std::env;
use std::error::Error;
use std::time::Duration;

use opentelemetry::trace::{Status, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use workerkit_core::failure::with_failure;
use workerkit_core::signal::shutdown_signal;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, ReadinessCheck, Runtime, WorkerSpec, handler_fn,
    worker_fn,
};
use workerkit_otel::OtelObserver;

/// The trace `charge` continues when `TRACEPARENT` is not set.
const EXAMPLE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The in-memory exporters used when no OTLP endpoint is configured.
struct Memory {
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let wait_for_signal = env::var("OBSERVABILITY_OTEL_WAIT").is_ok_and(|v| v == "1");
    // Installed first, so that no signal is lost during startup.
    let mut signals = if wait_for_signal {
        Some(shutdown_signal()?)
    } else {
        None
    };

    let (observer, memory) = match workerkit_otel::init()? {
        Some(observer) => {
            println!("observability-otel: exporting over OTLP/HTTP");
            (observer, None)
        }
        None => {
            println!(
                "observability-otel: OTEL_EXPORTER_OTLP_ENDPOINT is not set; recording in memory"
            );
            let spans = InMemorySpanExporter::default();
            let metrics = InMemoryMetricExporter::default();
            let tracer_provider = SdkTracerProvider::builder()
                .with_simple_exporter(spans.clone())
                .build();
            let meter_provider = SdkMeterProvider::builder()
                .with_reader(PeriodicReader::builder(metrics.clone()).build())
                .build();
            let observer = OtelObserver::new(&tracer_provider, &meter_provider);
            (observer, Some(Memory { spans, metrics }))
        }
    };

    let runtime = Runtime::builder("billing")
        .with_observer(observer.clone())
        .build()?;
    runtime.register(billing(&observer))?;
    runtime.start_all().await?;

    let traceparent = env::var("TRACEPARENT").unwrap_or_else(|_| EXAMPLE_TRACEPARENT.to_owned());
    let charged = runtime
        .dispatch(CommandRequest::new("billing", "charge").metadata("traceparent", &traceparent))
        .await?;
    println!(
        "observability-otel: dispatched charge {} with traceparent {traceparent}",
        charged.id
    );
    let refund = runtime
        .dispatch(CommandRequest::new("billing", "refund"))
        .await
        .expect_err("refund always fails");
    println!(
        "observability-otel: refund failed with {} ({})",
        refund.code(),
        refund
            .failure()
            .map(|f| f.code().to_owned())
            .unwrap_or_default()
    );

    if let Some(signals) = &mut signals {
        println!("observability-otel: waiting for SIGTERM");
        let signal = signals.recv().await;
        println!("observability-otel: {signal:?} received; shutting down");
    }
    // Ends with the observer's shutdown hook, which flushes the exporters.
    let report = runtime.shutdown().await?;
    println!("observability-otel: shut down in {:?}", report.elapsed);

    if let Some(memory) = memory {
        print_recorded(&memory)?;
    }
    Ok(())
}

/// The `billing` worker: a readiness check and two commands.
fn billing(observer: &OtelObserver) -> WorkerSpec {
    let tracer = observer
        .tracer_provider()
        .tracer("example-observability-otel");
    let charge = handler_fn(move |_ctx| {
        let tracer = tracer.clone();
        async move {
            // The command's context is current while the handler runs: this span is its child.
            let span = tracer.start("charge card");
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(span);
            Ok(CommandResponse::empty())
        }
    });
    let refund = handler_fn(|_ctx| async {
        Err(with_failure(
            std::io::Error::other("ledger locked by batch job 42"),
            "ledger_locked",
            "the ledger is locked",
        ))
    });
    WorkerSpec::new("billing", worker_fn(|_ctx| async { Ok(()) }))
        .readiness_check(ReadinessCheck::new(|_ctx| async { Ok(true) }))
        .command(CommandSpec::new("charge", charge))
        .command(CommandSpec::new("refund", refund))
}

/// Prints what the in-memory exporters hold.
fn print_recorded(memory: &Memory) -> Result<(), Box<dyn Error>> {
    let spans = memory.spans.get_finished_spans()?;
    println!("spans ({}):", spans.len());
    for span in &spans {
        let parent = spans
            .iter()
            .find(|p| p.span_context.span_id() == span.parent_span_id)
            .map_or_else(
                || {
                    if span.parent_span_is_remote {
                        format!("remote {}", span.parent_span_id)
                    } else {
                        "root".to_owned()
                    }
                },
                |p| p.name.to_string(),
            );
        let status = match &span.status {
            Status::Unset => "unset".to_owned(),
            Status::Ok => "ok".to_owned(),
            Status::Error { description } => format!("error: {description}"),
        };
        println!(
            "  {:<34} trace {}  parent {:<32} {status}",
            span.name,
            span.span_context.trace_id(),
            parent
        );
    }
    let exported = memory.metrics.get_finished_metrics()?;
    let mut metrics: Vec<(String, String)> = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .map(|m| (m.name().to_owned(), m.unit().to_owned()))
        .collect();
    metrics.sort();
    metrics.dedup();
    println!("metrics ({}):", metrics.len());
    for (name, unit) in metrics {
        println!("  {name:<36} unit {unit:?}");
    }
    Ok(())
}
