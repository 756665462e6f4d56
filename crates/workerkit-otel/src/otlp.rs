//! Setup in one call: OTLP/HTTP providers configured from the standard `OTEL_*` variables.

use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::observer::{OtelObserver, Providers};

/// The generic endpoint variable; signal paths (`/v1/traces`, `/v1/metrics`) are appended.
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The endpoint variables of traces and metrics (full URLs, used as they are).
const SIGNAL_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
];
/// The protocol variables; only `http/protobuf` is built in.
const PROTOCOL_VARS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
];
/// The protocol this crate exports with.
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Why [`OtelObserver::from_env`] could not set up the exporters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// An `OTEL_EXPORTER_OTLP*_PROTOCOL` variable names a protocol other than `http/protobuf`.
    #[error("{var}={value:?} is not supported: workerkit-otel exports OTLP as http/protobuf")]
    UnsupportedProtocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The OTLP exporter of a signal could not be built (for example, a malformed endpoint).
    #[error("cannot build the OTLP {signal} exporter")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

impl InitError {
    /// A stable identifier: `unsupported_protocol` or `exporter`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsupportedProtocol { .. } => "unsupported_protocol",
            Self::Exporter { .. } => "exporter",
        }
    }
}

impl OtelObserver {
    /// An observer with its own tracer and meter providers, exporting over OTLP/HTTP (protobuf)
    /// as the standard environment variables say:
    ///
    /// - `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`; `/v1/traces` and
    ///   `/v1/metrics` are appended), or the signal-specific `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    ///   and `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`; `OTEL_EXPORTER_OTLP_HEADERS`,
    ///   `OTEL_EXPORTER_OTLP_TIMEOUT` and their signal-specific forms;
    /// - `OTEL_EXPORTER_OTLP_PROTOCOL` (and the signal-specific forms): unset or `http/protobuf`;
    /// - `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, through the SDK's resource;
    /// - `OTEL_BSP_*` for the batch span processor and `OTEL_METRIC_EXPORT_INTERVAL` (default
    ///   60 s) for the periodic metric reader.
    ///
    /// Spans are exported by a batch span processor and metrics by a periodic reader, each on
    /// its own thread with a blocking HTTP client, so nothing exports on the runtime's
    /// threads. The observer owns the providers: its [`shutdown`](workerkit_core::Observer::shutdown)
    /// hook, which the runtime awaits at the end of its shutdown, flushes and shuts them down.
    ///
    /// # Errors
    ///
    /// [`InitError::UnsupportedProtocol`] for a protocol other than `http/protobuf`,
    /// [`InitError::Exporter`] when an exporter cannot be built.
    ///
    /// ```no_run
    /// use workerkit_core::Runtime;
    /// use workerkit_otel::OtelObserver;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let observer = OtelObserver::from_env()?;
    /// let runtime = Runtime::builder("billing").with_observer(observer).build()?;
    /// # let _ = runtime;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, InitError> {
        for var in PROTOCOL_VARS {
            if let Some(value) = non_empty_var(var) {
                if value.trim() != HTTP_PROTOBUF {
                    return Err(InitError::UnsupportedProtocol { var, value });
                }
            }
        }
        let resource = Resource::builder().build();
        let spans = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|source| InitError::Exporter {
                signal: "traces",
                source,
            })?;
        let metrics = MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|source| InitError::Exporter {
                signal: "metrics",
                source,
            })?;
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(metrics)
            .build();
        Ok(Self::with_providers(Providers {
            tracer,
            meter,
            owned: true,
        }))
    }
}

/// [`OtelObserver::from_env`] when an OTLP endpoint is configured
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set and not empty) and `OTEL_SDK_DISABLED` is not
/// `true`; `Ok(None)` otherwise, so that a service exports only where a collector was set up.
///
/// # Errors
///
/// As [`OtelObserver::from_env`].
///
/// ```no_run
/// use workerkit_core::Runtime;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut builder = Runtime::builder("billing");
/// if let Some(observer) = workerkit_otel::init()? {
///     builder = builder.with_observer(observer);
/// }
/// let runtime = builder.build()?;
/// # let _ = runtime;
/// # Ok(()) }
/// ```
pub fn init() -> Result<Option<OtelObserver>, InitError> {
    if endpoint_configured() {
        OtelObserver::from_env().map(Some)
    } else {
        Ok(None)
    }
}

/// Whether an OTLP endpoint is configured and the SDK is not disabled (see [`init`]).
#[must_use]
pub fn endpoint_configured() -> bool {
    let disabled =
        non_empty_var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled
        && std::iter::once(ENDPOINT_VAR)
            .chain(SIGNAL_ENDPOINT_VARS)
            .any(|var| non_empty_var(var).is_some())
}

fn non_empty_var(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}
