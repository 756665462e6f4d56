//! Transport-agnostic lifecycle runtime for ordinary async workers.
//!
//! A [`Runtime`] owns the operational shell around your workers — registration, start,
//! readiness, drain, graceful shutdown with deadlines, status snapshots, failure and panic
//! policy, and events for observers — so that a poller, a subscriber or a long-running loop gets
//! what an HTTP server already has. The workers own the domain logic.
//!
//! ```
//! use std::time::Duration;
//! use workerkit_core::{LifecycleState, LoopWorker, Runtime, WorkerSpec};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder("billing").build()?;
//! runtime.register(WorkerSpec::new(
//!     "invoicer",
//!     LoopWorker::new(|ctx| async move {
//!         let mut tick = tokio::time::interval(Duration::from_secs(5));
//!         loop {
//!             tokio::select! {
//!                 () = ctx.stop_requested() => return Ok(()),
//!                 _ = tick.tick() => { /* send due invoices */ }
//!             }
//!         }
//!     }),
//! ))?;
//!
//! runtime.start_all().await?;
//! assert!(runtime.status().ready);
//!
//! // On SIGTERM: readiness off, drain, wait for in-flight work, stop in reverse order.
//! runtime.shutdown().await?;
//! assert_eq!(runtime.status().state, LifecycleState::Stopped);
//! # Ok(()) }
//! ```
//!
//! # Concepts
//!
//! - **Workers** implement [`Worker`] (`start`/`stop`), or are a [`LoopWorker`] or a closure
//!   ([`worker_fn`]). A [`WorkerSpec`] names a worker and overrides the runtime's defaults; it is
//!   built from one instance or from a factory that makes a fresh worker for every start.
//! - **Incarnations**: each start is a new incarnation with its own [`WorkerContext`]; a context
//!   from an earlier incarnation is stale and cannot touch the new one. Each incarnation ends
//!   with a typed [`ExitReason`], which [`Runtime::wait_exit`] returns.
//! - **Lifecycle**: `registered → starting → running → draining → stopping → stopped`,
//!   `failed`, and `restarting` under a restart policy. Operations are serialised by a lifecycle
//!   gate; calls a worker makes on its own context are not. See `docs/lifecycle.md`.
//! - **Readiness** rolls up from workers by a [`ReadinessPolicy`]; [`Runtime::readiness`] and
//!   [`Runtime::liveness`] are what probes serve.
//! - **Failures** show a public code and message ([`failure::Failure`]) and keep the error itself
//!   private. A [`FailurePolicy`] says what a failed worker does to the runtime; a
//!   [`PanicPolicy`] what a panic does.
//! - **Supervision** (opt-in, [`supervise`]): a [`RestartPolicy`](supervise::RestartPolicy)
//!   restarts a worker whose running incarnation failed, after a backoff and within an
//!   OTP-style intensity; when it gives up, the failure policy applies. A
//!   [`Watchdog`](supervise::Watchdog) finds a worker that stopped calling
//!   [`WorkerContext::beat`]. A restarted incarnation learns why from
//!   [`WorkerContext::restart`]. [`Runtime::remove`] takes a stopped or failed worker out. See
//!   `docs/supervision.md`.
//! - **Observers** ([`observe::Observer`]) receive ordered events; adapters turn them into logs,
//!   traces and metrics.
//!
//! # Feature flags
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `test-util` | no | [`test_util`]: `RecordingObserver`, `FakeWorker`, and event constructors for adapter tests |
//!
//! # Minimum Rust version
//!
//! Rust 1.86 (the workspace's `rust-version`).
//!
//! # Safety
//!
//! No `unsafe` code (`#![forbid(unsafe_code)]` through the workspace lints).
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

/// The root README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

pub mod command;
pub mod control;
pub mod diagram;
pub mod error;
pub mod failure;
mod lifecycle;
pub mod name;
pub mod observe;
mod policy;
pub mod retry;
mod runtime;
pub mod signal;
pub mod status;
pub mod supervise;
mod task;
#[cfg(feature = "test-util")]
pub mod test_util;
mod time;
mod worker;

pub use command::{CommandRequest, CommandResponse, CommandSpec, handler_fn};
pub use error::LifecycleError;
pub use lifecycle::{LifecycleState, ParseEnumError};
pub use observe::Observer;
pub use policy::{FailurePolicy, PanicPolicy, ReadinessPolicy};
pub use runtime::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_OBSERVER_FLUSH_TIMEOUT, DEFAULT_SHUTDOWN_REPORT_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_START_TIMEOUT, DEFAULT_STOP_GRACE, DEFAULT_STOP_TIMEOUT,
    Runtime, RuntimeBuilder, ShutdownOptions, StatusWatch,
};
pub use status::ExitReason;
pub use time::Timestamp;
pub use worker::{
    DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_CLEANUP_TIMEOUT, FnWorker, LoopError,
    LoopWorker, NoStop, ReadinessCheck, StopSignal, Worker, WorkerContext, WorkerSpec, worker_fn,
};
