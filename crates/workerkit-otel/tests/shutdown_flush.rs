//! The runtime's shutdown flushes the batch span processor and the periodic metric reader
//! through the observer's shutdown hook; providers the caller owns are not shut down.
//!
//! Real time (not paused): the hook runs the SDK's blocking flush on a blocking thread, under
//! the runtime's observer flush timeout, which auto-advancing paused time would cut short.

use std::time::Duration;

use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, InMemorySpanExporter, SdkTracerProvider,
};
use workerkit_core::{CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec};
use workerkit_core::{handler_fn, worker_fn};
use workerkit_otel::OtelObserver;

/// Longer than any test: nothing is exported on a schedule.
const NEVER: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_batched_spans_and_metrics_but_keeps_callers_providers() {
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(spans.clone())
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(NEVER)
                        .build(),
                )
                .build(),
        )
        .build();
    let metrics = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metrics.clone())
                .with_interval(NEVER)
                .build(),
        )
        .build();
    let observer = OtelObserver::new(&tracer_provider, &meter_provider);
    let rt = Runtime::builder("rt")
        .with_observer(observer)
        .build()
        .unwrap();
    rt.register(
        WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).command(CommandSpec::new(
            "c",
            handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
        )),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
    assert!(
        spans.get_finished_spans().unwrap().is_empty(),
        "batched: nothing exported before the shutdown"
    );
    assert!(metrics.get_finished_metrics().unwrap().is_empty());

    rt.shutdown().await.unwrap();

    let names: Vec<String> = spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();
    for name in [
        "workerkit.lifecycle start_all",
        "workerkit.command c",
        "workerkit.lifecycle shutdown",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let exported = metrics.get_finished_metrics().unwrap();
    let metric_names: Vec<String> = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .map(|m| m.name().to_owned())
        .collect();
    assert!(
        metric_names
            .iter()
            .any(|n| n == "workerkit.command.dispatches"),
        "{metric_names:?}"
    );

    // The caller's providers still work: the hook flushed them without shutting them down.
    assert!(!spans.is_shutdown_called());
    drop(tracer_provider.tracer("after").start("after shutdown 2"));
    tokio::task::spawn_blocking(move || tracer_provider.force_flush())
        .await
        .unwrap()
        .unwrap();
    assert!(
        spans
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.name == "after shutdown 2")
    );
}
