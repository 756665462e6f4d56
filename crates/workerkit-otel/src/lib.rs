//! OpenTelemetry traces and metrics for a workerkit [`Runtime`], exported over OTLP.
//!
//! [`OtelObserver`] is an [`Observer`]: register it with the runtime and every command dispatch,
//! lifecycle operation, failure and readiness check becomes spans and metrics, named as in
//! [`semconv`]. Handler code keeps using OpenTelemetry as usual: its spans nest under the
//! command's span.
//!
//! ```no_run
//! use workerkit_core::signal::shutdown_signal;
//! use workerkit_core::{CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec};
//! use workerkit_core::{handler_fn, worker_fn};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut signals = shutdown_signal()?;
//!     let mut builder = Runtime::builder("billing");
//!     // OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (OTEL_SERVICE_NAME names the service).
//!     if let Some(observer) = workerkit_otel::init()? {
//!         builder = builder.with_observer(observer);
//!     }
//!     let runtime = builder.build()?;
//!     runtime.register(
//!         WorkerSpec::new("invoicer", worker_fn(|_ctx| async { Ok(()) })).command(
//!             CommandSpec::new("send", handler_fn(|_ctx| async { Ok(CommandResponse::empty()) })),
//!         ),
//!     )?;
//!     runtime.start_all().await?;
//!
//!     // A request carrying W3C trace context continues the caller's trace.
//!     let request = CommandRequest::new("invoicer", "send").metadata(
//!         "traceparent",
//!         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
//!     );
//!     runtime.dispatch(request).await?;
//!
//!     signals.recv().await;
//!     // Ends with the observer's shutdown hook: the exporters are flushed and shut down.
//!     runtime.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! # Setup
//!
//! - [`init`] builds an OTLP/HTTP observer from the standard `OTEL_*` environment variables
//!   when an endpoint is set, and returns `None` otherwise; [`OtelObserver::from_env`] always
//!   builds one (default endpoint `http://localhost:4318`).
//! - [`OtelObserver::new`] records to tracer and meter providers you built yourself (with
//!   other exporters, samplers or views, or the SDK's in-memory exporters in tests).
//!
//! # What is recorded
//!
//! | Event | Span | Metrics |
//! |---|---|---|
//! | command dispatch | `workerkit.command <command>` (status `Ok` or `Error`) | `workerkit.command.dispatches`, `.duration`, `.in_flight`, `.handler_attempts`, `.retries` |
//! | lifecycle operation | `workerkit.lifecycle <operation>` with transition and readiness events | `workerkit.operation.duration` |
//! | failure | `workerkit.failure` (status `Error`), child of the command's or operation's span | `workerkit.failures` |
//! | transition | event `workerkit.lifecycle.change` on the operation's span | `workerkit.lifecycle.transitions`, `workerkit.lifecycle.state` |
//! | readiness change | event `workerkit.readiness.change` on the operation's span | `workerkit.readiness.changes` |
//! | readiness check | `workerkit.check` | `workerkit.check.executions`, `.duration` |
//! | supervision (restart, give-up, stall, shutdown waiting) | `workerkit.supervision <kind>`, child of the operation's span | `workerkit.worker.restarts`, `.give_ups`, `.stalls` |
//!
//! The observer never changes the status of a span it did not start (the Go adapter marked
//! the caller's span as failed).
//!
//! # Feature flags
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `otlp` | yes | [`init`], [`OtelObserver::from_env`]: the OTLP/HTTP exporters |
//!
//! # Minimum Rust version
//!
//! Rust 1.86 (the workspace's `rust-version`).
//!
//! # Safety
//!
//! No `unsafe` code (`#![forbid(unsafe_code)]` through the workspace lints).
//!
//! [`Runtime`]: workerkit_core::Runtime
//! [`Observer`]: workerkit_core::Observer
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod metrics;
mod observer;
#[cfg(feature = "otlp")]
mod otlp;
pub mod semconv;

pub use observer::OtelObserver;
#[cfg(feature = "otlp")]
pub use otlp::{InitError, endpoint_configured, init};
