//! Compile-time checks of the public API's auto traits: handles, status types and errors are
//! `Send + Sync + 'static` (and handles `Clone`), and the futures of lifecycle calls are `Send`,
//! so they can be moved into `tokio::spawn`. A regression here fails to compile.

use std::cell::Cell;
use std::future::Future;

use workerkit_core::error::{
    BuildError, ContextError, LifecycleError, RegisterError, ShutdownError, ShutdownReport,
    Unfinished,
};
use workerkit_core::failure::{BoxError, Failure, OperationalFailure, PanicError};
use workerkit_core::name::NameError;
use workerkit_core::observe::{
    CheckEndEvent, CheckStartEvent, FailureEvent, NoopObserver, Observer, OperationEvent,
    ReadinessEvent, TransitionEvent,
};
use workerkit_core::status::{
    Exit, FailureRecord, Liveness, Readiness, ReadinessItem, RuntimeStatus, Transition,
    WorkerSnapshot, WorkerStatus,
};
use workerkit_core::test_util::{FakeControl, RecordingObserver};
use workerkit_core::{
    ExitReason, FailurePolicy, LifecycleState, LoopError, LoopWorker, PanicPolicy, ReadinessCheck,
    ReadinessPolicy, Runtime, RuntimeBuilder, ShutdownOptions, StatusWatch, StopSignal, Timestamp,
    Worker, WorkerContext, WorkerSpec,
};

const fn send_sync<T: Send + Sync + 'static>() {}
const fn shared_handle<T: Send + Sync + Clone + 'static>() {}
const fn error<E: std::error::Error + Send + Sync + 'static>() {}
const fn send<T: Send + 'static>() {}
const fn observer<O: Observer>() {}

fn send_future<F: Future + Send>(future: F) -> F {
    future
}

/// What `tokio::spawn` asks of a future.
fn spawnable<F>(future: F) -> F
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    future
}

#[test]
fn handles_are_send_sync_clone_and_static() {
    const {
        shared_handle::<Runtime>();
        shared_handle::<WorkerContext>();
        shared_handle::<StopSignal>();
        shared_handle::<ReadinessCheck>();
        shared_handle::<RecordingObserver>();
        shared_handle::<FakeControl>();
        send_sync::<StatusWatch>();
        send_sync::<RuntimeBuilder>();
    }
}

#[test]
fn worker_specs_and_workers_are_send() {
    // A `WorkerSpec` owns a `Box<dyn Worker>` that is only `Send` (workers need not be `Sync`),
    // so the spec is `Send + 'static` but not `Sync`: build it where you register it, or move
    // it.
    const {
        send::<WorkerSpec>();
        send::<LoopWorker>();
    }

    /// A worker that is `Send` but not `Sync` can be registered.
    struct NotSync(Cell<u32>);
    impl Worker for NotSync {
        async fn start(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }
        async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
            Ok(())
        }
    }
    let spec = WorkerSpec::new("w", NotSync(Cell::new(0)));
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(spec).unwrap();
    assert_eq!(rt.workers().len(), 1);
}

#[test]
fn status_types_are_send_sync_clone_and_static() {
    const {
        shared_handle::<RuntimeStatus>();
        shared_handle::<WorkerStatus>();
        shared_handle::<WorkerSnapshot>();
        shared_handle::<Transition>();
        shared_handle::<FailureRecord>();
        shared_handle::<Exit>();
        shared_handle::<Readiness>();
        shared_handle::<ReadinessItem>();
        shared_handle::<Liveness>();
        shared_handle::<ShutdownReport>();
        shared_handle::<Unfinished>();
        shared_handle::<ShutdownOptions>();
        shared_handle::<Failure>();
        shared_handle::<Timestamp>();
        shared_handle::<LifecycleState>();
        shared_handle::<ExitReason>();
        shared_handle::<FailurePolicy>();
        shared_handle::<PanicPolicy>();
        shared_handle::<ReadinessPolicy>();
    }
}

#[test]
fn events_are_send_sync_clone_and_static() {
    const {
        shared_handle::<TransitionEvent>();
        shared_handle::<ReadinessEvent>();
        shared_handle::<FailureEvent>();
        shared_handle::<OperationEvent>();
        shared_handle::<CheckStartEvent>();
        shared_handle::<CheckEndEvent>();
        observer::<NoopObserver>();
        observer::<RecordingObserver>();
        observer::<std::sync::Arc<RecordingObserver>>();
    }
}

#[test]
fn errors_are_send_sync_static_errors() {
    const {
        error::<BuildError>();
        error::<RegisterError>();
        error::<LifecycleError>();
        error::<ShutdownError>();
        error::<ContextError>();
        error::<NameError>();
        error::<LoopError>();
        error::<PanicError>();
        error::<OperationalFailure>();
    }
    // So they convert into the boxed error that workers and `main` return.
    let boxed: BoxError = LifecycleError::Reentrant {
        operation: workerkit_core::observe::Operation::Stop,
    }
    .into();
    assert!(
        boxed
            .to_string()
            .starts_with("stop refused: waiting for it here would deadlock"),
        "{boxed}"
    );
}

#[test]
fn lifecycle_futures_are_send() {
    let rt = Runtime::builder("rt").build().unwrap();
    // Built but never polled: no async runtime is needed to check their types.
    drop(send_future(rt.start("w")));
    drop(send_future(rt.stop("w")));
    drop(send_future(rt.drain("w")));
    drop(send_future(rt.start_all()));
    drop(send_future(rt.drain_all()));
    drop(send_future(rt.stop_all()));
    drop(send_future(rt.shutdown()));
    drop(send_future(rt.shutdown_with(ShutdownOptions::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(1),
    ))));
    drop(send_future(rt.wait_exit("w")));
    let mut watch = rt.subscribe();
    drop(send_future(watch.changed()));
    drop(send_future(watch.wait_until(|rt| rt.status().ready)));
}

#[test]
fn lifecycle_calls_can_be_spawned() {
    let rt = Runtime::builder("rt").build().unwrap();
    let owned = rt.clone();
    drop(spawnable(async move { owned.start("w").await }));
    let owned = rt.clone();
    drop(spawnable(async move { owned.stop_all().await }));
    let owned = rt.clone();
    drop(spawnable(async move { owned.shutdown().await }));
    let owned = rt.clone();
    drop(spawnable(async move { owned.wait_exit("w").await }));
    let mut watch = rt.subscribe();
    drop(spawnable(async move {
        watch.wait_until(|rt| rt.status().ready).await
    }));
}

#[test]
fn worker_side_futures_are_send() {
    fn check(ctx: &WorkerContext) {
        drop(send_future(ctx.stop_requested()));
        let signal = ctx.stop_signal();
        drop(spawnable(async move { signal.wait().await }));
        let owned = ctx.clone();
        drop(spawnable(async move {
            owned.stop_requested().await;
            owned.set_ready(false)
        }));
    }
    // `check` is only type-checked here: a context comes from a running worker.
    let _: fn(&WorkerContext) = check;
}
