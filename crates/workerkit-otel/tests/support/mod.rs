//! Shared helpers of the in-memory tests: an [`OtelObserver`] over the SDK's in-memory span and
//! metric exporters, and readers for what they hold.
//!
//! Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use workerkit_core::{CommandResponse, CommandSpec, Runtime, RuntimeBuilder, WorkerSpec};
use workerkit_core::{handler_fn, worker_fn};
use workerkit_otel::OtelObserver;

/// Attributes as sorted `key → value` text.
pub(crate) type Attrs = BTreeMap<String, String>;

/// The observer, its providers and their in-memory exporters.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) observer: OtelObserver,
    pub(crate) tracer_provider: SdkTracerProvider,
    pub(crate) meter_provider: SdkMeterProvider,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
}

impl Telemetry {
    /// Spans are exported as they end (simple processor), metrics on [`Telemetry::metrics`].
    pub(crate) fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let observer = OtelObserver::new(&tracer_provider, &meter_provider);
        Self {
            observer,
            tracer_provider,
            meter_provider,
            spans,
            metrics,
        }
    }

    /// A runtime named `rt` with this observer.
    pub(crate) fn runtime(&self) -> Runtime {
        self.runtime_with(|b| b)
    }

    /// A runtime named `rt` with this observer, configured by `configure`.
    pub(crate) fn runtime_with(
        &self,
        configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> Runtime {
        configure(Runtime::builder("rt").with_observer(self.observer.clone()))
            .build()
            .expect("valid runtime")
    }

    /// Every finished span so far.
    pub(crate) fn spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("in-memory spans")
    }

    /// The finished spans named `name`.
    pub(crate) fn spans_named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|span| span.name == name)
            .collect()
    }

    /// The one finished span named `name`.
    pub(crate) fn span(&self, name: &str) -> SpanData {
        let mut spans = self.spans_named(name);
        assert_eq!(
            spans.len(),
            1,
            "expected one span {name:?}, got {}; all spans: {:?}",
            spans.len(),
            self.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        spans.remove(0)
    }

    pub(crate) fn clear_spans(&self) {
        self.spans.reset();
    }

    /// Collects the metrics now (cumulative) and returns them by instrument name.
    pub(crate) fn metrics(&self) -> BTreeMap<String, Instrument> {
        self.metrics.reset();
        self.meter_provider.force_flush().expect("flush metrics");
        let exported = self.metrics.get_finished_metrics().expect("metrics");
        let mut out = BTreeMap::new();
        for resource in &exported {
            for scope in resource.scope_metrics() {
                assert_eq!(scope.scope().name(), workerkit_otel::semconv::SCOPE_NAME);
                for metric in scope.metrics() {
                    out.insert(metric.name().to_owned(), Instrument::from(metric));
                }
            }
        }
        out
    }

    /// The instrument `name` (it must have been recorded).
    pub(crate) fn metric(&self, name: &str) -> Instrument {
        let mut all = self.metrics();
        all.remove(name).unwrap_or_else(|| {
            panic!(
                "no metric {name:?}; recorded: {:?}",
                all.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// One exported instrument: its unit and data points.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Instrument {
    pub(crate) unit: String,
    pub(crate) kind: Kind,
    pub(crate) points: Vec<Point>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A monotonic sum.
    Counter,
    /// A non-monotonic sum.
    UpDownCounter,
    Histogram,
    Gauge,
}

/// One data point: its attributes and value (for histograms, the count and the sum).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) attrs: Attrs,
    pub(crate) value: f64,
    pub(crate) count: u64,
}

impl Instrument {
    fn from(metric: &opentelemetry_sdk::metrics::data::Metric) -> Self {
        fn conv<T: Copy>(data: &MetricData<T>, f: impl Fn(T) -> f64) -> (Kind, Vec<Point>) {
            match data {
                MetricData::Sum(sum) => (
                    if sum.is_monotonic() {
                        Kind::Counter
                    } else {
                        Kind::UpDownCounter
                    },
                    sum.data_points()
                        .map(|p| Point {
                            attrs: attrs(p.attributes()),
                            value: f(p.value()),
                            count: 0,
                        })
                        .collect(),
                ),
                MetricData::Gauge(gauge) => (
                    Kind::Gauge,
                    gauge
                        .data_points()
                        .map(|p| Point {
                            attrs: attrs(p.attributes()),
                            value: f(p.value()),
                            count: 0,
                        })
                        .collect(),
                ),
                MetricData::Histogram(hist) => (
                    Kind::Histogram,
                    hist.data_points()
                        .map(|p| Point {
                            attrs: attrs(p.attributes()),
                            value: f(p.sum()),
                            count: p.count(),
                        })
                        .collect(),
                ),
                MetricData::ExponentialHistogram(_) => panic!("no exponential histograms"),
            }
        }
        let (kind, mut points) = match metric.data() {
            AggregatedMetrics::F64(data) => conv(data, |v| v),
            #[allow(clippy::cast_precision_loss)] // Test counts are small.
            AggregatedMetrics::U64(data) => conv(data, |v| v as f64),
            #[allow(clippy::cast_precision_loss)]
            AggregatedMetrics::I64(data) => conv(data, |v| v as f64),
        };
        points.sort_by(|a, b| a.attrs.cmp(&b.attrs));
        Self {
            unit: metric.unit().to_owned(),
            kind,
            points,
        }
    }

    /// The value of the point with exactly these attributes.
    pub(crate) fn value(&self, attrs: &[(&str, &str)]) -> f64 {
        self.point(attrs).value
    }

    /// The point with exactly these attributes.
    pub(crate) fn point(&self, attrs: &[(&str, &str)]) -> &Point {
        let wanted = to_attrs(attrs);
        self.points
            .iter()
            .find(|p| p.attrs == wanted)
            .unwrap_or_else(|| panic!("no point with {wanted:?}; points: {:#?}", self.points))
    }

    /// Every point's attributes.
    pub(crate) fn attribute_sets(&self) -> Vec<Attrs> {
        self.points.iter().map(|p| p.attrs.clone()).collect()
    }
}

pub(crate) fn to_attrs(attrs: &[(&str, &str)]) -> Attrs {
    attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn attrs<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Attrs {
    kvs.map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
        .collect()
}

/// A span's attributes as text.
pub(crate) fn span_attrs(span: &SpanData) -> Attrs {
    attrs(span.attributes.iter())
}

/// One attribute of a span.
pub(crate) fn span_attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::new(key.to_owned()))
        .map(|kv| kv.value.clone())
}

/// Whether `child` is a child of `parent`.
pub(crate) fn is_child_of(child: &SpanData, parent: &SpanData) -> bool {
    child.parent_span_id == parent.span_context.span_id()
        && child.span_context.trace_id() == parent.span_context.trace_id()
}

/// Whether the span is a root.
pub(crate) fn is_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID
}

/// The error description of a span, or panics if its status is not an error.
pub(crate) fn error_message(span: &SpanData) -> String {
    match &span.status {
        Status::Error { description } => description.to_string(),
        other => panic!("span {:?} has status {other:?}, not an error", span.name),
    }
}

/// A worker `w` whose start returns at once, owning `command`.
pub(crate) fn worker_with(command: CommandSpec) -> WorkerSpec {
    WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).command(command)
}

/// A command that succeeds.
pub(crate) fn ok_command(name: &str) -> CommandSpec {
    CommandSpec::new(
        name,
        handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
    )
}

/// Fails the test if `future` does not finish within a minute (of paused time, usually).
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("finished within a minute")
}
