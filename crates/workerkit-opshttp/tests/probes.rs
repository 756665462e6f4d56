//! `/livez` and `/readyz`.

mod support;

use axum::Router;
use http::StatusCode;
use serde_json::json;
use std::time::Duration;
use support::{Gates, get, runtime};

use workerkit_core::failure::BoxError;
use workerkit_core::supervise::{StallAction, Watchdog};
use workerkit_core::{FailurePolicy, LoopWorker, Runtime, WorkerSpec};
use workerkit_opshttp::{OpsHttp, SHUTTING_DOWN_REASON};

#[tokio::test]
async fn readyz_is_503_until_started_then_200_with_items() {
    let rt = runtime(&Gates::default());
    let app: Router = workerkit_opshttp::probes(rt.clone());
    let reply = get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "not_ready");
    assert_eq!(reply.body["reason"], "runtime not ready: state=registered");
    assert_eq!(reply.body["items"][0]["state"], "registered");

    rt.start_all().await.unwrap();
    let reply = get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["status"], "ready");
    assert_eq!(reply.body["reason"], "runtime ready");
    assert_eq!(
        reply.body["items"],
        json!([
            {"name": "echo", "ready": true, "state": "running", "impact": "blocking"},
            {"name": "start", "ready": true, "state": "running", "impact": "blocking"},
        ])
    );
}

#[tokio::test]
async fn readyz_is_503_from_the_moment_shutdown_begins() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let ops = OpsHttp::new(rt.clone());
    let app: Router = ops.probes();
    assert_eq!(get(&app, "/readyz").await.status, StatusCode::OK);
    ops.serving_state().begin_shutdown();
    let reply = get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "not_ready");
    assert_eq!(reply.body["reason"], SHUTTING_DOWN_REASON);
    // Liveness is not readiness: the process is still live.
    assert_eq!(get(&app, "/livez").await.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_follows_a_runtime_shutdown_started_elsewhere() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app: Router = workerkit_opshttp::probes(rt.clone());
    rt.shutdown().await.unwrap();
    let reply = get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["reason"], SHUTTING_DOWN_REASON);
}

#[tokio::test]
async fn livez_is_ok_until_the_runtime_fails() {
    let rt = Runtime::builder("ops").build().unwrap();
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
    let fail_rx = std::sync::Mutex::new(Some(fail_rx));
    rt.register(
        WorkerSpec::new(
            "fragile",
            workerkit_core::LoopWorker::new(move |_ctx| {
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
    rt.start_all().await.unwrap();
    let app: Router = workerkit_opshttp::probes(rt.clone());
    let reply = get(&app, "/livez").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"status": "ok"}));

    fail_tx.send(()).unwrap();
    let mut watch = rt.subscribe();
    watch.wait_until(|rt| !rt.liveness().live).await;
    let reply = get(&app, "/livez").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["status"], "not_live");
    assert_eq!(
        reply.body["reasons"],
        json!([
            "runtime \"ops\" failed",
            "worker \"ops/fragile\" failed (worker_failed; fail_runtime)"
        ])
    );
    assert!(!reply.raw.contains("disk gone"), "the cause stays private");
}

#[tokio::test]
async fn a_wrong_method_on_a_probe_is_a_json_405() {
    let app: Router = workerkit_opshttp::probes(runtime(&Gates::default()));
    let reply = support::post(&app, "/readyz", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.code(), "method_not_allowed");
    assert!(reply.header("allow").unwrap().contains("GET"));
}

#[tokio::test(start_paused = true)]
async fn livez_names_a_stalled_worker_whose_watchdog_fails_liveness_and_readyz_stays_ready() {
    let rt = Runtime::builder("ops").build().unwrap();
    rt.register(
        WorkerSpec::new(
            "stuck",
            // Never beats.
            LoopWorker::new(|ctx| async move {
                ctx.stop_requested().await;
                Ok::<(), BoxError>(())
            }),
        )
        .watchdog(Watchdog::new(Duration::from_secs(1), StallAction::FailLiveness).unwrap()),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let app: Router = workerkit_opshttp::probes(rt.clone());
    assert_eq!(get(&app, "/livez").await.status, StatusCode::OK);
    let ready_before = get(&app, "/readyz").await;
    assert_eq!(ready_before.status, StatusCode::OK, "{}", ready_before.raw);

    // The paused clock runs on to the watchdog's check.
    let mut watch = rt.subscribe();
    watch.wait_until(|rt| !rt.liveness().live).await;
    let reply = get(&app, "/livez").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.raw
    );
    assert_eq!(reply.body["status"], "not_live");
    let reasons = reply.body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{}", reply.raw);
    let reason = reasons[0].as_str().unwrap();
    assert!(reason.contains("\"ops/stuck\""), "{reason}");
    assert!(reason.contains("stalled"), "{reason}");

    // Readiness is not liveness: unchanged.
    let reply = get(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body, ready_before.body);
}
