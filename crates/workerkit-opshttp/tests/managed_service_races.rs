//! Races between a managed shutdown and lifecycle operations holding the lifecycle gate (from a
//! review): the budget is a bound even when the gate is held, a force never leaves the workers
//! unstopped, and a lifecycle route's timeout never drops its operation half-way.
//! Paused time or explicit synchronisation only.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use workerkit_core::failure::BoxError;
use workerkit_core::{LifecycleState, Runtime, WorkerSpec, worker_fn};
use workerkit_opshttp::{ManagedService, OpsHttp};

/// A runtime with `fast` (starts at once) and `slow` (its start waits for `release`, and
/// notifies `entered` when it begins).
fn slow_start_runtime(entered: &Arc<Notify>, release: &Arc<Notify>) -> Runtime {
    let rt = Runtime::builder("r").no_start_timeout().build().unwrap();
    rt.register(WorkerSpec::new("fast", worker_fn(|_| async { Ok(()) })))
        .unwrap();
    let (entered, release) = (Arc::clone(entered), Arc::clone(release));
    rt.register(WorkerSpec::new(
        "slow",
        worker_fn(move |_| {
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            async move {
                let released = release.notified();
                entered.notify_one();
                released.await;
                Ok::<(), BoxError>(())
            }
        }),
    ))
    .unwrap();
    rt
}

/// Starts `fast`, then a start of `slow` that holds the gate until `release`.
async fn hold_the_gate(rt: &Runtime, entered: &Arc<Notify>) {
    rt.start("fast").await.unwrap();
    let began = entered.notified();
    tokio::spawn({
        let rt = rt.clone();
        async move {
            let _ = rt.start("slow").await;
        }
    });
    began.await;
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_the_shutdown_even_while_an_operation_holds_the_gate() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = slow_start_runtime(&entered, &release);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(
        ManagedService::new(rt.clone(), axum::Router::new())
            .os_signals(false)
            .start_workers(false)
            .shutdown_budget(Duration::from_millis(200))
            .stop_grace(Duration::from_millis(300))
            .shutdown_on(async {
                let _ = stop_rx.await;
            })
            .run(listener),
    );
    hold_the_gate(&rt, &entered).await;
    let began = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();
    let err = run
        .await
        .unwrap()
        .expect_err("the shutdown could not finish");
    // Budget + stop grace + 100 ms per worker + 1 s for the flush, on the (paused) tokio
    // clock: never the held operation's length.
    assert!(
        began.elapsed() <= Duration::from_millis(200 + 300 + 2 * 100 + 1000 + 10),
        "{:?}",
        began.elapsed()
    );
    let report = err.report().unwrap();
    assert!(report.budget_exceeded, "{report:?}");
    assert!(!report.unfinished.is_empty(), "{report:?}");

    // The shutdown was not dropped: once the gate is free it runs and stops every worker.
    release.notify_one();
    let mut watch = rt.subscribe();
    watch.wait_until(|rt| rt.status().shut_down).await;
    assert_eq!(
        rt.worker("fast").unwrap().status.state,
        LifecycleState::Stopped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_before_the_gate_is_won_still_stops_every_worker() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = slow_start_runtime(&entered, &release);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (force_tx, force_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(
        ManagedService::new(rt.clone(), axum::Router::new())
            .os_signals(false)
            .start_workers(false)
            .shutdown_budget(Duration::from_secs(3600))
            .shutdown_on(async {
                let _ = stop_rx.await;
            })
            .force_on(async {
                let _ = force_rx.await;
            })
            .run(listener),
    );
    hold_the_gate(&rt, &entered).await;
    stop_tx.send(()).unwrap();
    let mut watch = rt.subscribe();
    // Wait until the service's own shutdown has been asked for (readiness goes false at once).
    watch.wait_until(|rt| rt.status().shutting_down).await;
    force_tx.send(()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("a force returns at once")
        .unwrap()
        .expect_err("forced");
    assert!(err.report().unwrap().forced);
    release.notify_one();
    watch.wait_until(|rt| rt.status().shut_down).await;
    for worker in rt.workers() {
        assert_eq!(
            worker.status.state,
            LifecycleState::Stopped,
            "{}",
            worker.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_route_that_times_out_leaves_its_operation_running_to_its_end() {
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let rt = slow_start_runtime(&entered, &release);
    let app = OpsHttp::new(rt.clone())
        .enable_lifecycle()
        .lifecycle_timeout(Duration::from_millis(50))
        .router();
    hold_the_gate(&rt, &entered).await;
    // The shutdown waits for the gate past the route's timeout: 504, but not dropped.
    let reply = support::post(&app, "/admin/runtime/shutdown", "").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.raw);
    assert_eq!(reply.code(), "lifecycle_timed_out");
    release.notify_one();
    let mut watch = rt.subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_until(|rt| rt.status().shut_down),
    )
    .await
    .expect("the shutdown ran once the gate was free");
}
