//! The lifecycle routes: worker and runtime verbs, their bodies and errors.

mod support;

use std::time::Duration;

use axum::Router;
use http::StatusCode;
use serde_json::json;
use support::{Gates, assert_error, get, post, post_json, runtime};
use workerkit_core::failure::BoxError;
use workerkit_core::{LifecycleState, Runtime, WorkerSpec, worker_fn};
use workerkit_opshttp::OpsHttp;

fn app(rt: &Runtime) -> Router {
    OpsHttp::new(rt.clone()).enable_lifecycle().router()
}

async fn worker_op(app: &Router, verb: &str, name: &str) -> support::Reply {
    post_json(
        app,
        &format!("/admin/workers/{verb}"),
        &json!({ "name": name }),
    )
    .await
}

#[tokio::test]
async fn worker_verbs_return_the_snapshot() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = worker_op(&app, "start", "echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["name"], "echo");
    assert_eq!(reply.body["data"]["status"]["state"], "running");

    let reply = worker_op(&app, "drain", "echo").await;
    assert_eq!(
        reply.body["data"]["status"]["state"], "draining",
        "{}",
        reply.raw
    );

    let reply = worker_op(&app, "stop", "echo").await;
    assert_eq!(
        reply.body["data"]["status"]["state"], "stopped",
        "{}",
        reply.raw
    );

    worker_op(&app, "start", "echo").await;
    let reply = worker_op(&app, "shutdown", "echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["status"]["state"], "stopped");
    assert_eq!(
        rt.worker("echo").unwrap().status.state,
        LifecycleState::Stopped
    );
}

#[tokio::test]
async fn a_worker_named_like_a_verb_can_be_controlled_and_read() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = worker_op(&app, "start", "start").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["name"], "start");
    let read = get(&app, "/admin/workers/start").await;
    assert_eq!(
        read.body["data"]["status"]["state"], "running",
        "{}",
        read.raw
    );
}

#[tokio::test]
async fn worker_shutdown_waits_for_in_flight_commands() {
    let gates = Gates::default();
    let rt = runtime(&gates);
    rt.start_all().await.unwrap();
    let app = app(&rt);
    let entered = gates.entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move {
            rt.dispatch(workerkit_core::CommandRequest::new("echo", "hold"))
                .await
        }
    });
    entered.await;
    let shutdown = tokio::spawn({
        let app = app.clone();
        async move { worker_op(&app, "shutdown", "echo").await }
    });
    // The worker drains while its command runs.
    let mut watch = rt.subscribe();
    watch
        .wait_until(|rt| rt.worker("echo").unwrap().status.state == LifecycleState::Draining)
        .await;
    assert!(!shutdown.is_finished());
    gates.release.notify_one();
    assert!(held.await.unwrap().is_ok(), "the command finished normally");
    let reply = shutdown.await.unwrap();
    assert_eq!(
        reply.body["data"]["status"]["state"], "stopped",
        "{}",
        reply.raw
    );
}

#[tokio::test]
async fn runtime_verbs_return_identity_and_status() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = post(&app, "/admin/runtime/start", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["identity"]["name"], "ops");
    assert_eq!(reply.body["data"]["status"]["state"], "running");

    let reply = post(&app, "/admin/runtime/drain", "{}").await;
    assert_eq!(
        reply.body["data"]["status"]["state"], "draining",
        "{}",
        reply.raw
    );
    let reply = post(&app, "/admin/runtime/stop", " {} ").await;
    assert_eq!(
        reply.body["data"]["status"]["state"], "stopped",
        "{}",
        reply.raw
    );

    let reply = post(&app, "/admin/runtime/shutdown", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(
        reply.body["data"]["status"]["shutDown"], true,
        "{}",
        reply.raw
    );
    // Terminal: starting again is a conflict.
    let reply = post(&app, "/admin/runtime/start", "").await;
    assert_error(&reply, StatusCode::CONFLICT, "runtime_shut_down");
}

#[tokio::test]
async fn bodies_are_strict_and_names_checked() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    for body in ["{}", r#"{"name":""}"#, r#"{"name":null}"#] {
        let reply = post(&app, "/admin/workers/start", body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_json");
        assert_eq!(
            reply.body["error"], "missing required JSON field \"name\"",
            "{body:?}"
        );
    }
    for body in [
        "",
        r#"{"name":"echo","x":1}"#,
        r#"{"name":"echo"}{}"#,
        "nope",
    ] {
        let reply = post(&app, "/admin/workers/start", body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_json");
    }
    let reply = post(&app, "/admin/runtime/start", r#"{"force":true}"#).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_json");
    assert_error(
        &worker_op(&app, "start", "bad name!").await,
        StatusCode::BAD_REQUEST,
        "invalid_name",
    );
    let reply = worker_op(&app, "stop", "nope").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "worker_not_found");
    assert_eq!(rt.status().state, LifecycleState::Registered, "nothing ran");
}

#[tokio::test]
async fn a_wrong_state_is_409() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    // Draining a worker that never started.
    let reply = worker_op(&app, "drain", "echo").await;
    assert_error(&reply, StatusCode::CONFLICT, "invalid_worker_state");
}

#[tokio::test]
async fn a_workers_own_start_failure_is_500_without_its_text() {
    let rt = Runtime::builder("ops").build().unwrap();
    rt.register(WorkerSpec::new(
        "broken",
        worker_fn(|_ctx| async {
            Err::<(), BoxError>(format!("cannot open {}", support::SECRET).into())
        }),
    ))
    .unwrap();
    let app = app(&rt);
    let reply = worker_op(&app, "start", "broken").await;
    assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "start_failed");
    assert_eq!(reply.body["error"], "internal server error");
    let reply = post(&app, "/admin/runtime/start", "").await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.raw
    );
    assert!(!reply.raw.contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn a_lifecycle_operation_beyond_its_timeout_is_504() {
    let rt = Runtime::builder("ops").no_start_timeout().build().unwrap();
    rt.register(WorkerSpec::new(
        "hangs",
        worker_fn(|_ctx| std::future::pending::<Result<(), BoxError>>()),
    ))
    .unwrap();
    let app = OpsHttp::new(rt.clone())
        .enable_lifecycle()
        .lifecycle_timeout(Duration::from_millis(10))
        .router();
    let reply = worker_op(&app, "start", "hangs").await;
    assert_error(&reply, StatusCode::GATEWAY_TIMEOUT, "lifecycle_timed_out");
}

#[tokio::test]
async fn an_operation_finishes_when_the_client_goes_away() {
    let rt = runtime(&Gates::default());
    // A slow start holds the lifecycle gate, so the request's operation is still waiting for
    // it when the client goes away: only an operation in a task of its own survives that.
    let (entered, release) = (
        std::sync::Arc::new(tokio::sync::Notify::new()),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    );
    let (e, r) = (
        std::sync::Arc::clone(&entered),
        std::sync::Arc::clone(&release),
    );
    rt.register(WorkerSpec::new(
        "slow",
        worker_fn(move |_ctx| {
            let (e, r) = (std::sync::Arc::clone(&e), std::sync::Arc::clone(&r));
            async move {
                let released = r.notified();
                e.notify_one();
                released.await;
                Ok::<(), BoxError>(())
            }
        }),
    ))
    .unwrap();
    let began = entered.notified();
    let slow = tokio::spawn({
        let rt = rt.clone();
        async move { rt.start("slow").await }
    });
    began.await;
    let app = app(&rt);
    // Poll the request once (the operation task is spawned and waits for the gate), then drop it.
    let request = support::post_request("/admin/workers/start", r#"{"name":"echo"}"#);
    {
        let response = tower::ServiceExt::oneshot(app.clone(), request);
        let mut response = std::pin::pin!(response);
        assert!(
            !futures_poll_once(response.as_mut()).await,
            "it waits for the gate"
        );
    }
    release.notify_one();
    slow.await.unwrap().unwrap();
    let mut watch = rt.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_until(|rt| rt.worker("echo").unwrap().status.state == LifecycleState::Running),
    )
    .await
    .expect("the start ran to completion without its client");
}

/// Polls a future once (and a few scheduler turns), returning whether it finished.
async fn futures_poll_once<F: std::future::Future>(mut future: std::pin::Pin<&mut F>) -> bool {
    for _ in 0..3 {
        let done =
            std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready()))
                .await;
        if done {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_a_json_405_with_allow() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = get(&app, "/admin/runtime/start").await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = post(&app, "/admin/runtime", "{}").await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert!(reply.header("allow").unwrap().contains("GET"));
}

#[tokio::test]
async fn runtime_stop_with_a_command_in_flight_then_dispatch_503_then_start_again() {
    // Go's flow: stop answers at once (no wait for the command), new dispatches get 503, a
    // start brings dispatch back.
    let gates = Gates::default();
    let rt = runtime(&gates);
    let app = OpsHttp::new(rt.clone())
        .enable_dispatch()
        .enable_lifecycle()
        .router();
    assert_eq!(
        post(&app, "/admin/runtime/start", "").await.status,
        StatusCode::OK
    );
    let entered = gates.entered.notified();
    let held = tokio::spawn({
        let app = app.clone();
        async move { support::dispatch(&app, "echo", "hold").await }
    });
    entered.await;

    let reply = post(&app, "/admin/runtime/stop", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["status"]["state"], "stopped");
    assert_eq!(reply.body["data"]["status"]["inFlight"], 1, "{}", reply.raw);

    let reply = support::dispatch(&app, "echo", "echo").await;
    assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "runtime_not_accepting_work",
    );

    assert_eq!(
        post(&app, "/admin/runtime/start", "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        support::dispatch(&app, "echo", "echo").await.status,
        StatusCode::OK
    );
    gates.release.notify_one();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn starting_a_running_worker_is_a_conflict() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    assert_eq!(
        worker_op(&app, "start", "echo").await.status,
        StatusCode::OK
    );
    let reply = worker_op(&app, "start", "echo").await;
    assert_error(&reply, StatusCode::CONFLICT, "invalid_worker_state");
}

#[tokio::test]
async fn remove_answers_the_last_snapshot_and_frees_the_name() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = worker_op(&app, "remove", "start").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["name"], "start");
    assert_eq!(reply.body["data"]["status"]["state"], "registered");
    // Gone: not readable, not removable again, and the name can be registered again.
    assert_error(
        &get(&app, "/admin/workers/start").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_error(
        &worker_op(&app, "remove", "start").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    assert_eq!(
        get(&app, "/admin/workers").await.body["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    rt.register(WorkerSpec::new("start", worker_fn(|_ctx| async { Ok(()) })))
        .unwrap();
    assert_eq!(
        get(&app, "/admin/workers/start").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn remove_refuses_an_active_worker_then_removes_it_once_stopped() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    worker_op(&app, "start", "echo").await;
    let reply = worker_op(&app, "remove", "echo").await;
    assert_error(&reply, StatusCode::CONFLICT, "invalid_worker_state");
    assert_eq!(
        rt.worker("echo").unwrap().status.state,
        LifecycleState::Running,
        "a refused remove changes nothing"
    );
    worker_op(&app, "stop", "echo").await;
    let reply = worker_op(&app, "remove", "echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["status"]["state"], "stopped");
    assert!(rt.worker("echo").is_none());
}

#[tokio::test]
async fn removing_a_worker_with_a_command_in_flight_is_409_worker_busy() {
    let gates = Gates::default();
    let rt = runtime(&gates);
    rt.start_all().await.unwrap();
    let app = app(&rt);
    let entered = gates.entered.notified();
    let held = tokio::spawn({
        let rt = rt.clone();
        async move {
            rt.dispatch(workerkit_core::CommandRequest::new("echo", "hold"))
                .await
        }
    });
    entered.await;
    // A stop does not wait for the command: the worker is stopped, the command still runs.
    worker_op(&app, "stop", "echo").await;
    let reply = worker_op(&app, "remove", "echo").await;
    assert_error(&reply, StatusCode::CONFLICT, "worker_busy");
    assert_eq!(
        reply.body["error"], "worker \"ops/echo\" has 1 commands in flight",
        "{}",
        reply.raw
    );
    gates.release.notify_one();
    held.await.unwrap().unwrap();
    let reply = worker_op(&app, "remove", "echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
}

#[tokio::test]
async fn remove_checks_bodies_and_names_and_is_a_worker_verb_only() {
    let rt = runtime(&Gates::default());
    let app = app(&rt);
    let reply = post(&app, "/admin/workers/remove", "{}").await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_json");
    assert_error(
        &worker_op(&app, "remove", "bad name!").await,
        StatusCode::BAD_REQUEST,
        "invalid_name",
    );
    assert_error(
        &worker_op(&app, "remove", "nope").await,
        StatusCode::NOT_FOUND,
        "worker_not_found",
    );
    // A runtime is not removed: no such route.
    assert_eq!(
        post(&app, "/admin/runtime/remove", "").await.status,
        StatusCode::NOT_FOUND
    );
    // A worker named `remove` stays readable, and removable.
    rt.register(WorkerSpec::new(
        "remove",
        worker_fn(|_ctx| async { Ok(()) }),
    ))
    .unwrap();
    let read = get(&app, "/admin/workers/remove").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.raw);
    assert_eq!(read.body["data"]["name"], "remove");
    let reply = worker_op(&app, "remove", "remove").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"]["name"], "remove");
}
