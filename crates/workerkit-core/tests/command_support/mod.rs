//! Helpers shared by the command test files (`command_dispatch`, `command_admission`,
//! `command_limits`, `command_timeout_retry`, `command_observe`, `regression_commands`).
//!
//! Each test file compiles this module on its own and uses only part of it. Generic helpers
//! (`spawn`, `within`, `settle`, `recorded`) live in `tests/support`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use tokio::sync::{Semaphore, watch};
use workerkit_core::command::{CommandHandler, CommandResult, DispatchError};
use workerkit_core::failure::BoxError;
use workerkit_core::retry::RetryPolicy;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

/// A point handlers stop at until the test lets them through: counts arrivals and releases
/// them by permits. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    entered: Arc<watch::Sender<usize>>,
    permits: Arc<Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            entered: Arc::new(watch::Sender::new(0)),
            permits: Arc::new(Semaphore::new(0)),
        }
    }

    /// Records an arrival and waits to be let through (cancel-safe: a dropped waiter consumes
    /// no permit).
    pub(crate) async fn pass(&self) {
        self.entered.send_modify(|n| *n += 1);
        self.permits
            .acquire()
            .await
            .expect("the gate's semaphore is never closed")
            .forget();
    }

    /// Waits until at least `n` handlers arrived in all (bounded: fails the test after a minute
    /// of paused time).
    pub(crate) async fn arrived(&self, n: usize) {
        let mut rx = self.entered.subscribe();
        crate::support::within(rx.wait_for(|entered| *entered >= n))
            .await
            .expect("the gate's sender lives as long as the gate");
    }

    /// How many handlers arrived so far.
    pub(crate) fn count(&self) -> usize {
        *self.entered.borrow()
    }

    /// Lets `n` handlers through (now or when they arrive).
    pub(crate) fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }
}

/// A worker that starts and stops at once.
pub(crate) fn idle(name: &str) -> WorkerSpec {
    WorkerSpec::new(name, worker_fn(|_ctx| async { Ok(()) }))
}

/// A handler that answers `ok` at once.
pub(crate) fn ok_handler() -> impl CommandHandler {
    handler_fn(|_ctx| async { Ok(CommandResponse::message("ok")) })
}

/// A handler that passes `gate`, then answers `ok`.
pub(crate) fn gated(gate: &Gate) -> impl CommandHandler {
    let gate = gate.clone();
    handler_fn(move |_ctx| {
        let gate = gate.clone();
        async move {
            gate.pass().await;
            Ok(CommandResponse::message("ok"))
        }
    })
}

/// A handler that passes `gate`, then fails with an error whose private text is `text`.
pub(crate) fn gated_failing(gate: &Gate, text: &'static str) -> impl CommandHandler {
    let gate = gate.clone();
    handler_fn(move |_ctx| {
        let gate = gate.clone();
        async move {
            gate.pass().await;
            Err(text.into())
        }
    })
}

/// A handler that fails at once with an error whose private text is `text`, counting calls.
pub(crate) fn failing(text: &'static str, calls: &Arc<AtomicUsize>) -> impl CommandHandler {
    let calls = Arc::clone(calls);
    handler_fn(move |_ctx| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<CommandResponse, BoxError>(text.into()) }
    })
}

/// A handler that counts calls and answers `ok`.
pub(crate) fn counting(calls: &Arc<AtomicUsize>) -> impl CommandHandler {
    let calls = Arc::clone(calls);
    handler_fn(move |_ctx| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(CommandResponse::message("ok")) }
    })
}

/// A handler that waits for its cancellation (deadline, cancel by id, or worker stop), then
/// fails with `gave up`.
pub(crate) fn until_cancelled() -> impl CommandHandler {
    handler_fn(|ctx| async move {
        ctx.cancelled().await;
        Err("gave up".into())
    })
}

/// A spec for command `name` with `handler`.
pub(crate) fn command(name: &str, handler: impl CommandHandler) -> CommandSpec {
    CommandSpec::new(name, handler)
}

/// Registers `spec` and starts every worker.
pub(crate) async fn start_with(rt: &Runtime, spec: WorkerSpec) {
    rt.register(spec).expect("valid registration");
    rt.start_all().await.expect("workers start");
}

/// A runtime named `rt` with no observer.
pub(crate) fn plain() -> Runtime {
    Runtime::builder("rt").build().expect("valid runtime")
}

/// Dispatches `worker`/`name` in a spawned task.
pub(crate) fn dispatch_in_background(
    rt: &Runtime,
    worker: &'static str,
    name: &'static str,
) -> tokio::task::JoinHandle<Result<CommandResult, DispatchError>> {
    let rt = rt.clone();
    let request = CommandRequest::new(worker, name);
    crate::support::spawn(async move { rt.dispatch(request).await })
}

/// Dispatches `request` in a spawned task.
pub(crate) fn dispatch_request_in_background(
    rt: &Runtime,
    request: CommandRequest,
) -> tokio::task::JoinHandle<Result<CommandResult, DispatchError>> {
    let rt = rt.clone();
    crate::support::spawn(async move { rt.dispatch(request).await })
}

/// Sets a flag when dropped: put one in a handler's future to see whether it was dropped.
#[derive(Debug)]
pub(crate) struct DropFlag(pub(crate) Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Silences the default panic message for panics whose payload starts with "expected panic"
/// (handlers and observers that panic on purpose); every other panic still prints.
pub(crate) fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload
                .downcast_ref::<&str>()
                .map(|s| s.starts_with("expected panic"))
                .or_else(|| {
                    payload
                        .downcast_ref::<String>()
                        .map(|s| s.starts_with("expected panic"))
                })
                .unwrap_or(false);
            if !expected {
                default(info);
            }
        }));
    });
}

/// The source chain of an error as text, outermost first.
pub(crate) fn source_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain = Vec::new();
    let mut current = err.source();
    while let Some(e) = current {
        chain.push(e.to_string());
        current = e.source();
    }
    chain
}

/// A retry policy of `n` attempts (defaults otherwise).
pub(crate) fn attempts(n: u32) -> RetryPolicy {
    RetryPolicy::attempts(n).unwrap()
}

/// How many attempts an admitted dispatch ran.
pub(crate) fn attempts_of(err: &DispatchError) -> u32 {
    match err {
        DispatchError::Failed { attempts, .. }
        | DispatchError::TimedOut { attempts, .. }
        | DispatchError::Panicked { attempts, .. }
        | DispatchError::Cancelled { attempts, .. } => *attempts,
        other => panic!("expected an admitted failure, got {other:?}"),
    }
}
