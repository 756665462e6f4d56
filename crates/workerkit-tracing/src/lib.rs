//! A workerkit [`Observer`] that turns the runtime's events into [`tracing`] events, and each
//! command dispatch into a span under which the handler's own spans nest.
//!
//! ```
//! use workerkit_core::{CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec};
//! use workerkit_core::{handler_fn, worker_fn};
//! use workerkit_tracing::TracingObserver;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Install any subscriber first, e.g. `tracing_subscriber::fmt().init()`.
//! let runtime = Runtime::builder("billing")
//!     .with_observer(TracingObserver::new())
//!     .build()?;
//! runtime.register(
//!     WorkerSpec::new("invoicer", worker_fn(|_ctx| async { Ok(()) })).command(CommandSpec::new(
//!         "flush",
//!         handler_fn(|_ctx| async {
//!             // Spans and events here are children of the `workerkit.command` span.
//!             tracing::info!("flushing");
//!             Ok(CommandResponse::message("flushed"))
//!         }),
//!     )),
//! )?;
//! runtime.start_all().await?; // "workerkit lifecycle transition", "workerkit readiness change", ...
//! runtime.dispatch(CommandRequest::new("invoicer", "flush")).await?; // "workerkit command dispatch completed"
//! runtime.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What is emitted
//!
//! Every event has the target [`TARGET`] (`workerkit`) and the message strings and field names
//! of the Go original's slog adapter (the constants in [`message`]); the full catalogue is in
//! `docs/observability.md`. In short:
//!
//! | Runtime event | Message | Level |
//! |---|---|---|
//! | transition | `workerkit lifecycle transition` | routine |
//! | readiness change | `workerkit readiness change` | routine |
//! | failure | `workerkit failure` | `ERROR` |
//! | lifecycle operation started | `workerkit lifecycle operation started` | routine |
//! | lifecycle operation ended | `workerkit lifecycle operation completed` | routine, `ERROR` if it failed |
//! | readiness check ended | `workerkit check execution completed` | routine |
//! | command dispatch ended | `workerkit command dispatch completed` | routine, inside the command span |
//! | command attempt failed | `workerkit failure` | `ERROR`, inside the command span |
//! | restart scheduled | `workerkit restart scheduled` | `WARN` |
//! | restarted | `workerkit worker restarted` | routine |
//! | restart cancelled | `workerkit restart cancelled` | routine |
//! | restart policy gave up | `workerkit restart gave up` | `ERROR` |
//! | watchdog stall | `workerkit worker stalled` | `WARN` |
//! | stall cleared | `workerkit worker stall cleared` | routine |
//! | shutdown still waiting | `workerkit shutdown waiting` | `WARN` |
//!
//! The routine level is [`INFO`](tracing::Level::INFO) unless set with
//! [`TracingObserverBuilder::level`]. Common fields: `runtime`, then `worker` and `command` when
//! the event has them. Supervision events also have `supervision_kind` (the stable
//! [`SupervisionKind::name`]) and, for a worker, its `incarnation`.
//!
//! [`SupervisionKind::name`]: workerkit_core::observe::SupervisionKind::name
//!
//! # The command span
//!
//! Each dispatch to a registered command opens a span named `workerkit.command` at the routine
//! level, with the fields `runtime`, `worker`, `command`, `dispatch_id`, and `attempts` and
//! `outcome` recorded when the dispatch ends. Its parent is the span current where
//! [`Runtime::dispatch`] is awaited, and the runtime enters it around every poll of the handler,
//! so whatever the handler logs or opens nests under it. The `workerkit failure` event of each
//! failed attempt, and the end event, are inside it too.
//!
//! # Private causes
//!
//! A failure's private cause (the error that caused it, which may carry credentials or customer
//! data in its text) is never put in any field. For local development,
//! [`TracingObserverBuilder::log_causes`] adds a `DEBUG` event `workerkit failure cause` with a
//! `cause` field after each event that carries one.
//!
//! # Cost
//!
//! Callbacks never block and allocate nothing of their own beyond the boxed command observation
//! (and none at all when the level is disabled): fields borrow from the event and are formatted
//! by the subscriber only if it records them.
//!
//! [`Observer`]: workerkit_core::Observer
//! [`Runtime::dispatch`]: workerkit_core::Runtime::dispatch
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

/// Emits a `tracing` event at a level known only at run time (each level has its own callsite,
/// so a disabled level costs a callsite check and nothing else).
macro_rules! event_at {
    (parent: $parent:expr, $level:expr, $($fields:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::event!(
                target: $crate::TARGET, parent: $parent, ::tracing::Level::ERROR, $($fields)+
            ),
            ::tracing::Level::WARN => ::tracing::event!(
                target: $crate::TARGET, parent: $parent, ::tracing::Level::WARN, $($fields)+
            ),
            ::tracing::Level::INFO => ::tracing::event!(
                target: $crate::TARGET, parent: $parent, ::tracing::Level::INFO, $($fields)+
            ),
            ::tracing::Level::DEBUG => ::tracing::event!(
                target: $crate::TARGET, parent: $parent, ::tracing::Level::DEBUG, $($fields)+
            ),
            _ => ::tracing::event!(
                target: $crate::TARGET, parent: $parent, ::tracing::Level::TRACE, $($fields)+
            ),
        }
    };
    ($level:expr, $($fields:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => {
                ::tracing::event!(target: $crate::TARGET, ::tracing::Level::ERROR, $($fields)+)
            }
            ::tracing::Level::WARN => {
                ::tracing::event!(target: $crate::TARGET, ::tracing::Level::WARN, $($fields)+)
            }
            ::tracing::Level::INFO => {
                ::tracing::event!(target: $crate::TARGET, ::tracing::Level::INFO, $($fields)+)
            }
            ::tracing::Level::DEBUG => {
                ::tracing::event!(target: $crate::TARGET, ::tracing::Level::DEBUG, $($fields)+)
            }
            _ => ::tracing::event!(target: $crate::TARGET, ::tracing::Level::TRACE, $($fields)+),
        }
    };
}

/// Opens a `tracing` span at a level known only at run time.
macro_rules! span_at {
    ($level:expr, $name:expr, $($fields:tt)+) => {
        match $level {
            ::tracing::Level::ERROR => {
                ::tracing::span!(target: $crate::TARGET, ::tracing::Level::ERROR, $name, $($fields)+)
            }
            ::tracing::Level::WARN => {
                ::tracing::span!(target: $crate::TARGET, ::tracing::Level::WARN, $name, $($fields)+)
            }
            ::tracing::Level::INFO => {
                ::tracing::span!(target: $crate::TARGET, ::tracing::Level::INFO, $name, $($fields)+)
            }
            ::tracing::Level::DEBUG => {
                ::tracing::span!(target: $crate::TARGET, ::tracing::Level::DEBUG, $name, $($fields)+)
            }
            _ => ::tracing::span!(target: $crate::TARGET, ::tracing::Level::TRACE, $name, $($fields)+),
        }
    };
}

mod command;
pub mod message;
mod observer;

pub use observer::{TracingObserver, TracingObserverBuilder};

/// The target of every span and event this crate emits, for filters
/// (e.g. `RUST_LOG=workerkit=debug` with an `EnvFilter`).
pub const TARGET: &str = "workerkit";

/// The name of the span opened for each command dispatch.
pub const COMMAND_SPAN: &str = "workerkit.command";
