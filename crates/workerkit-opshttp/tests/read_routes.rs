//! The read routes: on by default, read-only, Go status shapes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::{Gates, assert_error, get, runtime};
use workerkit_core::failure::BoxError;
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::RestartPolicy;
use workerkit_core::{LifecycleState, LoopWorker, Runtime, WorkerSpec};
use workerkit_opshttp::OpsHttp;

#[tokio::test]
async fn runtime_route_gives_identity_and_status() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = workerkit_opshttp::router(rt.clone());
    let reply = get(&app, "/admin/runtime").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body["data"]["identity"], json!({"name": "ops"}));
    assert_eq!(reply.body["data"]["status"]["state"], "running");
    assert_eq!(reply.body["data"]["status"]["ready"], true);
    assert_eq!(
        reply.body["data"]["status"],
        serde_json::to_value(rt.status()).unwrap()
    );
}

#[tokio::test]
async fn workers_route_lists_snapshots_in_registration_order() {
    let rt = runtime(&Gates::default());
    let app = workerkit_opshttp::router(rt.clone());
    let reply = get(&app, "/admin/workers").await;
    assert_eq!(reply.status, StatusCode::OK);
    let names: Vec<&str> = reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "start"]);
    assert_eq!(
        reply.body["data"],
        serde_json::to_value(rt.workers()).unwrap()
    );
}

#[tokio::test]
async fn one_worker_by_local_or_qualified_name() {
    let rt = runtime(&Gates::default());
    let app = workerkit_opshttp::router(rt.clone());
    let reply = get(&app, "/admin/workers/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["data"]["name"], "echo");
    assert_eq!(reply.body["data"]["status"]["state"], "registered");
    // The supervision fields, with a worker's defaults (`nextRestartAt` only while restarting).
    let status = &reply.body["data"]["status"];
    assert_eq!(status["restartPolicy"], "never", "{}", reply.raw);
    assert_eq!(status["restarts"], 0);
    assert_eq!(status["gaveUp"], false);
    assert_eq!(status["stalled"], false);
    assert!(status.get("nextRestartAt").is_none(), "{}", reply.raw);
    let qualified = reply.body["data"]["qualifiedName"]
        .as_str()
        .unwrap()
        .to_owned();
    // A qualified name holds a `/`: it travels percent-encoded in the one path segment.
    let encoded = qualified.replace('/', "%2F");
    let by_qualified = get(&app, &format!("/admin/workers/{encoded}")).await;
    assert_eq!(by_qualified.status, StatusCode::OK, "{}", by_qualified.raw);
    assert_eq!(by_qualified.body["data"]["name"], "echo");
}

#[tokio::test]
async fn unknown_worker_is_404_and_bad_name_is_400() {
    let app = workerkit_opshttp::router(runtime(&Gates::default()));
    let reply = get(&app, "/admin/workers/nope").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "worker_not_found");
    assert_eq!(reply.body["error"], "worker \"nope\" not found");
    let reply = get(&app, "/admin/workers/bad%20name!").await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_name");
}

#[tokio::test]
async fn a_worker_named_like_a_verb_is_readable_with_lifecycle_routes_on_or_off() {
    let rt = runtime(&Gates::default());
    for ops in [
        OpsHttp::new(rt.clone()),
        OpsHttp::new(rt.clone()).enable_lifecycle(),
    ] {
        let app = ops.router();
        let reply = get(&app, "/admin/workers/start").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
        assert_eq!(reply.body["data"]["name"], "start");
    }
}

#[tokio::test]
async fn commands_route_lists_all_or_one_workers_commands() {
    let rt = runtime(&Gates::default());
    let app = workerkit_opshttp::router(rt.clone());
    let all = get(&app, "/admin/commands").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        all.body["data"],
        serde_json::to_value(rt.all_commands()).unwrap()
    );
    assert_eq!(all.body["data"].as_array().unwrap().len(), 5);

    let echo = get(&app, "/admin/commands?worker=echo").await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.body["data"], all.body["data"]);

    let none = get(&app, "/admin/commands?worker=start").await;
    assert_eq!(none.body["data"], json!([]));

    assert_error(
        &get(&app, "/admin/commands?worker=nope").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_error(
        &get(&app, "/admin/commands?worker=bad!").await,
        StatusCode::BAD_REQUEST,
        "invalid_name",
    );
    assert_error(
        &get(&app, "/admin/commands?verbose=1").await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
}

#[tokio::test]
async fn in_flight_route_lists_running_commands() {
    let gates = Gates::default();
    let rt = runtime(&gates);
    rt.start_all().await.unwrap();
    let app = workerkit_opshttp::router(rt.clone());
    assert_eq!(
        get(&app, "/admin/commands/inflight").await.body["data"],
        json!([])
    );

    let entered = gates.entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move {
            rt.dispatch(workerkit_core::CommandRequest::new("echo", "hold"))
                .await
        }
    });
    entered.await;
    let reply = get(&app, "/admin/commands/inflight").await;
    assert_eq!(reply.status, StatusCode::OK);
    let list = reply.body["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", reply.raw);
    assert_eq!(list[0]["command"], "hold");
    assert!(list[0]["worker"].as_str().unwrap().ends_with("echo"));
    assert!(list[0]["id"].is_string());
    assert!(list[0]["age"].is_number());
    gates.release.notify_one();
    held.await.unwrap().unwrap();
    assert_eq!(
        get(&app, "/admin/commands/inflight").await.body["data"],
        json!([])
    );
}

#[tokio::test]
async fn mutating_routes_are_off_by_default() {
    let app = workerkit_opshttp::router(runtime(&Gates::default()));
    for uri in [
        "/admin/commands/dispatch",
        "/admin/commands/cancel",
        "/admin/runtime/start",
        "/admin/runtime/shutdown",
    ] {
        let reply = support::post(&app, uri, "{}").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
    }
    // `/workers/stop` is a worker name here, read-only: POST is not allowed on it.
    let reply = support::post(&app, "/admin/workers/stop", r#"{"name":"echo"}"#).await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn diagram_route_serves_the_runtime_as_mermaid_text() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = workerkit_opshttp::router(rt.clone());
    let reply = get(&app, "/admin/diagram").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(reply.raw.starts_with("flowchart LR\n"), "{}", reply.raw);
    assert_eq!(
        reply.raw,
        workerkit_core::diagram::mermaid(&rt.status(), &rt.workers())
    );
    assert!(
        reply
            .raw
            .contains("runtime --> w0[\"echo<br/>running · ready · incarnation 1\"]"),
        "{}",
        reply.raw
    );
    assert!(
        reply.raw.contains("runtime --> w1[\"start<br/>running"),
        "{}",
        reply.raw
    );
    assert!(reply.raw.contains("class w0 running"), "{}", reply.raw);
}

#[tokio::test(start_paused = true)]
async fn a_restarting_worker_shows_its_state_and_next_restart() {
    let rt = Runtime::builder("ops").build().unwrap();
    // The loop fails once; its restart waits 10 s (no jitter).
    let failed_once = Arc::new(AtomicBool::new(false));
    rt.register(
        WorkerSpec::new(
            "flaky",
            LoopWorker::new(move |ctx| {
                let first = !failed_once.swap(true, Ordering::Relaxed);
                async move {
                    if first {
                        return Err::<(), BoxError>("lost the connection".into());
                    }
                    ctx.stop_requested().await;
                    Ok(())
                }
            }),
        )
        .restart(RestartPolicy::on_failure().backoff(Backoff::constant(Duration::from_secs(10)))),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let mut watch = rt.subscribe();
    watch
        .wait_until(|rt| rt.worker("flaky").unwrap().status.state == LifecycleState::Restarting)
        .await;
    let app = workerkit_opshttp::router(rt.clone());
    let reply = get(&app, "/admin/workers/flaky").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    let status = &reply.body["data"]["status"];
    assert_eq!(status["state"], "restarting", "{}", reply.raw);
    assert_eq!(status["restartPolicy"], "on_failure");
    assert_eq!(status["restarts"], 0);
    assert!(status["nextRestartAt"].is_string(), "{}", reply.raw);
    assert_eq!(status["gaveUp"], false);

    // Time moves on (paused clock): the restart happens, and the field goes.
    watch
        .wait_until(|rt| rt.worker("flaky").unwrap().status.state == LifecycleState::Running)
        .await;
    let reply = get(&app, "/admin/workers/flaky").await;
    let status = &reply.body["data"]["status"];
    assert_eq!(status["state"], "running", "{}", reply.raw);
    assert_eq!(status["restarts"], 1);
    assert!(status.get("nextRestartAt").is_none(), "{}", reply.raw);
}
