//! The control-plane traits and the two operations added for control surfaces:
//! `shutdown_worker` and `force_shutdown`.
#![allow(clippy::disallowed_methods)] // The callers here are tasks of their own, as a control surface's are.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use workerkit_core::command::{CommandRequest, DispatchError};
use workerkit_core::control::{Control, Dispatch, Inspect};
use workerkit_core::{
    CommandResponse, CommandSpec, LifecycleState, Runtime, ShutdownOptions, WorkerSpec, handler_fn,
    worker_fn,
};

/// A runtime with worker `w` whose command `hold` waits for `release` (ignoring cancellation)
/// and notifies `entered` when it starts.
fn runtime(entered: &Arc<Notify>, release: &Arc<Notify>) -> Runtime {
    let runtime = Runtime::builder("ctl").build().unwrap();
    let (entered, release) = (Arc::clone(entered), Arc::clone(release));
    runtime
        .register(
            WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) })).command(
                CommandSpec::new(
                    "hold",
                    handler_fn(move |_ctx| {
                        let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
                        async move {
                            let released = release.notified();
                            entered.notify_one();
                            released.await;
                            Ok(CommandResponse::message("done"))
                        }
                    }),
                )
                .no_timeout(),
            ),
        )
        .unwrap();
    runtime
}

/// Written against the traits only, as a control surface is.
async fn generic_cycle<R: Inspect + Dispatch + Control>(runtime: &R) -> Vec<LifecycleState> {
    let mut states = Vec::new();
    runtime.start_all().await.unwrap();
    states.push(runtime.status().state);
    runtime.drain("w").await.unwrap();
    states.push(runtime.worker("w").unwrap().status.state);
    runtime.stop("w").await.unwrap();
    states.push(runtime.worker("w").unwrap().status.state);
    runtime.start("w").await.unwrap();
    states.push(runtime.worker("w").unwrap().status.state);
    assert!(runtime.readiness().ready);
    assert!(runtime.liveness().live);
    assert_eq!(runtime.name(), "ctl");
    assert_eq!(runtime.commands("w").unwrap().len(), 1);
    assert_eq!(runtime.all_commands().len(), 1);
    assert!(runtime.in_flight().is_empty());
    assert!(runtime.workers().len() == 1);
    runtime.shutdown().await.unwrap();
    states.push(runtime.status().state);
    states
}

#[tokio::test]
async fn runtime_is_usable_through_the_traits_alone() {
    let n = Arc::new(Notify::new());
    let rt = runtime(&n, &n);
    assert_eq!(
        generic_cycle(&rt).await,
        [
            LifecycleState::Running,
            LifecycleState::Draining,
            LifecycleState::Stopped,
            LifecycleState::Running,
            LifecycleState::Stopped,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_worker_waits_for_commands_then_stops() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = runtime(&entered, &release);
    rt.start_all().await.unwrap();
    let wait = entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move { rt.dispatch(CommandRequest::new("w", "hold")).await }
    });
    wait.await;
    let shutdown = tokio::spawn({
        let rt = rt.clone();
        async move { rt.shutdown_worker("w", Duration::from_secs(3600)).await }
    });
    let mut watch = rt.subscribe();
    watch
        .wait_until(|rt| rt.worker("w").unwrap().status.state == LifecycleState::Draining)
        .await;
    assert!(!shutdown.is_finished(), "it waits for the command");
    release.notify_one();
    assert!(held.await.unwrap().is_ok());
    let status = shutdown.await.unwrap().unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn shutdown_worker_stops_anyway_when_the_wait_runs_out() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = runtime(&entered, &release);
    rt.start_all().await.unwrap();
    let wait = entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move { rt.dispatch(CommandRequest::new("w", "hold")).await }
    });
    wait.await;
    let status = rt
        .shutdown_worker("w", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
    assert_eq!(
        rt.in_flight().len(),
        1,
        "the command still runs; stop does not wait"
    );
    release.notify_one();
    assert!(held.await.unwrap().is_ok());
    // A stopped worker follows `stop`'s rules: an invalid state.
    let again = rt.shutdown_worker("w", Duration::from_millis(50)).await;
    assert!(
        matches!(
            again,
            Err(workerkit_core::LifecycleError::InvalidState { .. })
        ),
        "{again:?}"
    );
    // Unknown workers are errors.
    assert!(rt.shutdown_worker("nope", Duration::ZERO).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_shutdown_stops_waiting_for_in_flight_commands() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = runtime(&entered, &release);
    rt.start_all().await.unwrap();
    let wait = entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move { rt.dispatch(CommandRequest::new("w", "hold")).await }
    });
    wait.await;
    let shutdown = tokio::spawn({
        let rt = rt.clone();
        async move {
            rt.shutdown_with(ShutdownOptions::new(
                Duration::from_secs(3600),
                Duration::from_secs(1),
            ))
            .await
        }
    });
    let mut watch = rt.subscribe();
    watch.wait_until(|rt| rt.status().shutting_down).await;
    assert!(!shutdown.is_finished());
    rt.force_shutdown();
    let result = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("forcing ends the wait")
        .unwrap();
    let err = result.expect_err("a forced shutdown with a command in flight is incomplete");
    let workerkit_core::error::ShutdownError::Incomplete { report, .. } = err else {
        panic!("{err:?}")
    };
    assert!(report.deadline_exceeded);
    assert_eq!(report.abandoned_in_flight, 1);
    assert_eq!(rt.status().state, LifecycleState::Stopped);
    release.notify_one();
    let _ = held.await.unwrap();
    // After the shutdown, dispatch is refused.
    let err = rt
        .dispatch(CommandRequest::new("w", "hold"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DispatchError::RuntimeNotAccepting { .. }),
        "{err}"
    );
}
