//! Shared helpers for the lifecycle integration tests (`lifecycle_*`, `readiness_policy`,
//! `failure_policy`, `panic_policy`, `observe_events`, `status_json`).
//!
//! Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub(crate) mod command_tally;

use std::future::Future;

use workerkit_core::test_util::{FakeControl, FakeWorker, Recorded, RecordingObserver};
use workerkit_core::{LifecycleState, Runtime, RuntimeBuilder, WorkerSpec};

/// A runtime named `rt` with a recording observer.
pub(crate) fn recorded() -> (Runtime, RecordingObserver) {
    recorded_with(|b| b)
}

/// A runtime named `rt`, configured by `configure`, with a recording observer.
pub(crate) fn recorded_with(
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> (Runtime, RecordingObserver) {
    let recorder = RecordingObserver::new();
    let rt = configure(Runtime::builder("rt").with_observer(recorder.clone()))
        .build()
        .expect("valid runtime");
    (rt, recorder)
}

/// Registers a `FakeWorker` named `name` and returns its control.
pub(crate) fn fake(rt: &Runtime, name: &str) -> FakeControl {
    fake_with(rt, name, |spec| spec)
}

/// Registers a `FakeWorker` named `name`, with its spec adjusted by `configure`.
pub(crate) fn fake_with(
    rt: &Runtime,
    name: &str,
    configure: impl FnOnce(WorkerSpec) -> WorkerSpec,
) -> FakeControl {
    let (worker, control) = FakeWorker::new();
    rt.register(configure(WorkerSpec::new(name, worker)))
        .expect("valid registration");
    control
}

/// A worker's lifecycle state (panics if it is not registered).
pub(crate) fn state(rt: &Runtime, name: &str) -> LifecycleState {
    rt.worker(name).expect("registered worker").status.state
}

/// The runtime-wide sequence number of a recorded ordered event (`None` for check events).
pub(crate) fn seq(event: &Recorded) -> Option<u64> {
    match event {
        Recorded::Transition(e) => Some(e.seq),
        Recorded::Readiness(e) => Some(e.seq),
        Recorded::Failure(e) => Some(e.seq),
        Recorded::Operation(e) => Some(e.seq),
        _ => None,
    }
}

/// The briefs (see `Recorded::brief`) that mention `who` (a qualified worker name or the
/// runtime's), in order.
pub(crate) fn briefs_of(recorder: &RecordingObserver, who: &str) -> Vec<String> {
    recorder
        .briefs()
        .into_iter()
        .filter(|b| b.split(' ').nth(1) == Some(who))
        .collect()
}

/// Spawns a task onto the test's tokio runtime (to run a lifecycle call concurrently, or to
/// catch a resumed panic as a `JoinError`).
#[allow(clippy::disallowed_methods)] // Tests may spawn untracked tasks; the lint is for the crate.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Lets every other ready task run (a few scheduler turns), without advancing paused time.
pub(crate) async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Awaits `future`, failing the test if it takes more than a minute (of paused time, usually):
/// a missed wake-up fails instead of hanging.
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(60), future)
        .await
        .expect("did not complete within a minute")
}
