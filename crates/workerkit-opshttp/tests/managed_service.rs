//! `ManagedService`: runtime and server together, one shutdown budget, forced stops, and the
//! runtime ending the service by itself. Real TCP on loopback, explicit synchronisation only.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use workerkit_core::failure::BoxError;
use workerkit_core::{FailurePolicy, LoopWorker, Runtime, WorkerSpec, worker_fn};
use workerkit_opshttp::{ManagedService, OpsHttp, ServiceError, ShutdownTrigger};

/// One HTTP/1.1 request on its own connection: (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

struct Setup {
    runtime: Runtime,
    ops: OpsHttp<Runtime>,
    listener: TcpListener,
    addr: SocketAddr,
    gates: support::Gates,
}

async fn setup() -> Setup {
    let gates = support::Gates::default();
    let runtime = support::runtime(&gates);
    let ops = OpsHttp::new(runtime.clone())
        .enable_dispatch()
        .enable_lifecycle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Setup {
        runtime,
        ops,
        listener,
        addr,
        gates,
    }
}

fn service(s: &Setup) -> ManagedService {
    let app = axum::Router::new()
        .merge(s.ops.router())
        .merge(s.ops.probes());
    ManagedService::new(s.runtime.clone(), app)
        .serving_state(s.ops.serving_state())
        .os_signals(false)
}

/// Waits until the runtime is running (the service starts the workers).
async fn running(runtime: &Runtime) {
    let mut watch = runtime.subscribe();
    watch.wait_until(|rt| rt.status().ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_before_the_workers_stop() {
    let s = setup().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc = service(&s).shutdown_on(async {
        let _ = stop_rx.await;
    });
    let listener = s.listener;
    let run = tokio::spawn(svc.run(listener));
    running(&s.runtime).await;

    let entered = s.gates.entered.notified();
    let request = tokio::spawn(http(
        s.addr,
        "POST",
        "/admin/commands/dispatch",
        r#"{"worker":"echo","name":"hold"}"#,
    ));
    entered.await;
    stop_tx.send(()).unwrap();
    // Shutdown began: not ready, but the worker is still running while its request is served.
    let serving = s.ops.serving_state();
    let mut watch = s.runtime.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !serving.is_shutting_down() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        s.runtime.worker("echo").unwrap().status.state,
        workerkit_core::LifecycleState::Running
    );
    s.gates.release.notify_one();
    let (status, body) = request.await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    let report = run.await.unwrap().expect("clean shutdown");
    assert_eq!(report.trigger, ShutdownTrigger::Requested);
    assert!(report.is_clean());
    assert!(report.http_drained);
    assert_eq!(report.shutdown.as_ref().unwrap().stopped.len(), 2);
    watch.wait_until(|rt| rt.status().shut_down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_still_stops_the_workers_and_names_the_stuck_command() {
    let s = setup().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc = service(&s)
        .shutdown_budget(Duration::from_millis(200))
        .stop_grace(Duration::from_millis(500))
        .shutdown_on(async {
            let _ = stop_rx.await;
        });
    let run = tokio::spawn(svc.run(s.listener));
    running(&s.runtime).await;
    let entered = s.gates.entered.notified();
    let request = tokio::spawn(http(
        s.addr,
        "POST",
        "/admin/commands/dispatch",
        r#"{"worker":"echo","name":"hold"}"#,
    ));
    entered.await;
    let id = s.runtime.in_flight()[0].id;
    stop_tx.send(()).unwrap();

    let err = run.await.unwrap().expect_err("the budget ran out");
    let ServiceError::Unclean(report) = &err else {
        panic!("{err:?}")
    };
    assert!(!report.http_drained);
    assert!(report.budget_exceeded);
    assert_eq!(report.abandoned_commands.len(), 1);
    assert_eq!(report.abandoned_commands[0].id, id);
    assert!(
        err.to_string()
            .contains("commands still running when the HTTP drain was cut"),
        "{err}"
    );
    // The caller was answered, and the command it carried ended (abandoned with its request).
    let (status, body) = request.await.unwrap().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""code":"shutting_down""#), "{body}");
    assert!(s.runtime.in_flight().is_empty());
    // Both workers were stopped anyway.
    for worker in s.runtime.workers() {
        assert_eq!(
            worker.status.state,
            workerkit_core::LifecycleState::Stopped,
            "{}",
            worker.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_returns_without_waiting_for_a_slow_stop() {
    let runtime = Runtime::builder("slow")
        .stop_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&stopping);
    runtime
        .register(WorkerSpec::new(
            "sticky",
            LoopWorker::new(|ctx| async move {
                ctx.stop_requested().await;
                Ok(())
            })
            .on_stop(move |_ctx| {
                let notify = Arc::clone(&notify);
                async move {
                    notify.notify_one();
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        ))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (force_tx, force_rx) = oneshot::channel::<()>();
    let svc = ManagedService::new(runtime.clone(), axum::Router::new())
        .os_signals(false)
        .shutdown_on(async {
            let _ = stop_rx.await;
        })
        .force_on(async {
            let _ = force_rx.await;
        });
    let run = tokio::spawn(svc.run(listener));
    running(&runtime).await;
    let entered_stop = stopping.notified();
    stop_tx.send(()).unwrap();
    entered_stop.await;
    force_tx.send(()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("forcing does not wait for the stop")
        .unwrap()
        .expect_err("a forced stop is an error");
    let report = err.report().unwrap();
    assert!(report.forced);
    assert_eq!(report.unfinished, ["slow/sticky"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_shut_down_over_http_ends_the_service_cleanly() {
    let s = setup().await;
    let svc = service(&s);
    let run = tokio::spawn(svc.run(s.listener));
    running(&s.runtime).await;
    let (status, body) = http(s.addr, "POST", "/admin/runtime/shutdown", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.trigger, ShutdownTrigger::RuntimeShutDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runtime_ends_the_service_with_an_error() {
    let runtime = Runtime::builder("ops").build().unwrap();
    let (fail_tx, fail_rx) = oneshot::channel::<()>();
    let fail_rx = std::sync::Mutex::new(Some(fail_rx));
    runtime
        .register(
            WorkerSpec::new(
                "fragile",
                LoopWorker::new(move |_ctx| {
                    let rx = fail_rx.lock().unwrap().take();
                    async move {
                        if let Some(rx) = rx {
                            let _ = rx.await;
                        }
                        Err::<(), BoxError>("disk gone".into())
                    }
                }),
            )
            .failure_policy(FailurePolicy::FailRuntime),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = tokio::spawn(
        ManagedService::new(runtime.clone(), axum::Router::new())
            .os_signals(false)
            .run(listener),
    );
    running(&runtime).await;
    fail_tx.send(()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .expect_err("failed");
    let report = err.report().unwrap();
    assert_eq!(report.trigger, ShutdownTrigger::RuntimeFailed);
    assert!(report.runtime_failed);
    assert!(
        err.to_string().contains("runtime failed"),
        "{err}: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failure_shuts_the_runtime_down_and_errors() {
    let runtime = Runtime::builder("ops").build().unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopped);
    runtime
        .register(WorkerSpec::new(
            "fine",
            LoopWorker::new(|ctx| async move {
                ctx.stop_requested().await;
                Ok(())
            })
            .on_stop(move |_ctx| {
                let flag = Arc::clone(&flag);
                async move {
                    flag.store(true, Ordering::SeqCst);
                    Ok(())
                }
            }),
        ))
        .unwrap();
    runtime
        .register(WorkerSpec::new(
            "broken",
            worker_fn(|_ctx| async { Err::<(), BoxError>("no".into()) }),
        ))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ManagedService::new(runtime.clone(), axum::Router::new())
        .os_signals(false)
        .run(listener)
        .await
        .expect_err("start failed");
    assert!(matches!(err, ServiceError::Start { .. }), "{err:?}");
    assert_eq!(err.report().unwrap().trigger, ShutdownTrigger::StartFailed);
    assert!(
        stopped.load(Ordering::SeqCst),
        "the started worker was stopped"
    );
    assert!(runtime.status().shut_down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_asked_for_during_a_slow_start_does_not_wait_for_serving() {
    let runtime = Runtime::builder("ops").no_start_timeout().build().unwrap();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let finish_rx = std::sync::Mutex::new(Some(finish_rx));
    runtime
        .register(WorkerSpec::new(
            "slow",
            worker_fn(move |_ctx| {
                let started = started_tx.lock().unwrap().take();
                let finish = finish_rx.lock().unwrap().take();
                async move {
                    if let Some(started) = started {
                        let _ = started.send(());
                    }
                    if let Some(finish) = finish {
                        let _ = finish.await;
                    }
                    Ok(())
                }
            }),
        ))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = workerkit_opshttp::ServingState::new();
    let run = tokio::spawn(
        ManagedService::new(runtime.clone(), axum::Router::new())
            .serving_state(serving.clone())
            .os_signals(false)
            .shutdown_on(async {
                let _ = stop_rx.await;
            })
            .run(listener),
    );
    started_rx.await.unwrap();
    stop_tx.send(()).unwrap();
    // The shutdown began (not ready) while the start is still running: it did not wait for
    // the start to finish and the server to come up first.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !serving.is_shutting_down() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("shutdown began during the start");
    assert!(
        !run.is_finished(),
        "the start (holding the gate) is still running"
    );
    finish_tx.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .expect("a clean shutdown");
    assert_eq!(report.trigger, ShutdownTrigger::Requested);
    assert!(runtime.status().shut_down);
}
