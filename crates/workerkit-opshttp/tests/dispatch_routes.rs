//! `POST {p}/commands/dispatch` and `POST {p}/commands/cancel`: bodies, results and the status
//! of every dispatch error.

mod support;

use std::time::Duration;

use axum::Router;
use http::StatusCode;
use serde_json::{Value, json};
use support::{Gates, assert_error, dispatch, post, post_json, runtime};
use workerkit_core::Runtime;
use workerkit_opshttp::OpsHttp;

async fn started(gates: &Gates) -> (Runtime, Router) {
    let rt = runtime(gates);
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt.clone()).enable_dispatch().router();
    (rt, app)
}

#[tokio::test]
async fn echo_returns_the_payload_and_the_dispatch_identity() {
    let (_rt, app) = started(&Gates::default()).await;
    let reply = post_json(
        &app,
        "/admin/commands/dispatch",
        &json!({"worker": "echo", "name": "echo", "payload": {"n": [1, 2, 3]}}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    let data = &reply.body["data"];
    assert_eq!(data["name"], "echo");
    assert!(data["worker"].as_str().unwrap().ends_with("echo"));
    assert!(data["id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(data["attempts"], 1);
    assert_eq!(
        data["result"],
        json!({"message": "value", "payload": {"n": [1, 2, 3]}})
    );
}

#[tokio::test]
async fn absent_and_null_payloads_reach_the_handler_differently() {
    let (_rt, app) = started(&Gates::default()).await;
    let absent = dispatch(&app, "echo", "echo").await;
    assert_eq!(absent.status, StatusCode::OK);
    assert_eq!(absent.body["data"]["result"], json!({"message": "absent"}));
    let null = post(
        &app,
        "/admin/commands/dispatch",
        r#"{"worker":"echo","name":"echo","payload":null}"#,
    )
    .await;
    assert_eq!(null.status, StatusCode::OK);
    assert_eq!(
        null.body["data"]["result"]["message"], "null",
        "{}",
        null.raw
    );
}

#[tokio::test]
async fn strict_decoding_rejects_bad_bodies_with_400() {
    let (_rt, app) = started(&Gates::default()).await;
    for body in [
        "",
        "   ",
        "{",
        "[]",
        r#"{"worker":"echo"}"#,
        r#"{"worker":"echo","name":"echo","extra":1}"#,
        r#"{"worker":"echo","name":"echo"} {}"#,
        r#"{"worker":"echo","name":"echo"}x"#,
        r#"{"worker":1,"name":"echo"}"#,
    ] {
        let reply = post(&app, "/admin/commands/dispatch", body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_json");
        assert!(
            reply.body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid dispatch request JSON"),
            "{body:?}: {}",
            reply.raw
        );
    }
}

#[tokio::test]
async fn invalid_names_are_400_unknown_targets_404() {
    let (_rt, app) = started(&Gates::default()).await;
    assert_error(
        &dispatch(&app, "bad worker!", "echo").await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );
    assert_error(
        &dispatch(&app, "echo", "bad command!").await,
        StatusCode::BAD_REQUEST,
        "invalid_command_name",
    );
    let reply = dispatch(&app, "nope", "echo").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "worker_not_found");
    assert_eq!(reply.body["error"], "worker \"nope\" not found");
    let reply = dispatch(&app, "echo", "nope").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "command_not_found");
    assert_eq!(reply.body["error"], "command \"nope\" not found");
}

#[tokio::test]
async fn handler_errors_and_panics_are_500_without_their_text() {
    let (_rt, app) = started(&Gates::default()).await;
    // The handler's error text starts with "saturated": it must not become a 429.
    let reply = dispatch(&app, "echo", "fail").await;
    assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "command_failed");
    assert_eq!(reply.body["error"], "internal server error");
    assert!(reply.header("retry-after").is_none());
    let reply = dispatch(&app, "echo", "boom").await;
    assert_error(
        &reply,
        StatusCode::INTERNAL_SERVER_ERROR,
        "command_panicked",
    );
    assert_eq!(reply.body["error"], "internal server error");
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_command_is_504() {
    let (_rt, app) = started(&Gates::default()).await;
    let reply = dispatch(&app, "echo", "slow").await;
    assert_error(&reply, StatusCode::GATEWAY_TIMEOUT, "command_timed_out");
}

#[tokio::test]
async fn saturation_is_429_with_retry_after() {
    let gates = Gates::default();
    let (rt, app) = started(&gates).await;
    let entered = gates.entered.notified();
    let first = tokio::spawn({
        let app = app.clone();
        async move { dispatch(&app, "echo", "hold").await }
    });
    entered.await;
    let reply = dispatch(&app, "echo", "hold").await;
    assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "saturated");
    assert_eq!(reply.body["error"], "command concurrency limit reached");
    let after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(after >= 1);
    gates.release.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(rt.in_flight().len(), 0);
}

#[tokio::test]
async fn a_runtime_not_accepting_work_is_503_with_retry_after() {
    let rt = runtime(&Gates::default());
    let app = OpsHttp::new(rt.clone()).enable_dispatch().router();
    let reply = dispatch(&app, "echo", "echo").await;
    assert_error(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "runtime_not_accepting_work",
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn a_draining_worker_is_409() {
    let (rt, app) = started(&Gates::default()).await;
    rt.drain("echo").await.unwrap();
    let reply = dispatch(&app, "echo", "echo").await;
    assert_error(&reply, StatusCode::CONFLICT, "invalid_worker_state");
    assert!(reply.header("retry-after").is_none());
}

#[tokio::test]
async fn cancel_by_id_ends_the_dispatch_with_409_cancelled() {
    let gates = Gates::default();
    let (rt, app) = started(&gates).await;
    let entered = gates.entered.notified();
    let held = tokio::spawn({
        let app = app.clone();
        async move { dispatch(&app, "echo", "hold").await }
    });
    entered.await;
    let id = rt.in_flight()[0].id.to_string();

    let reply = post_json(&app, "/admin/commands/cancel", &json!({ "id": id })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    assert_eq!(reply.body["data"], json!({"id": id, "cancelled": true}));

    // A second cancel of the same command: 409. (`hold` ignores cancellation, and a handler
    // that still succeeds after a cancel succeeds.)
    let again = post_json(&app, "/admin/commands/cancel", &json!({ "id": id })).await;
    assert_error(&again, StatusCode::CONFLICT, "already_cancelled");
    gates.release.notify_one();
    let done = held.await.unwrap();
    assert!(
        done.status == StatusCode::OK || done.code() == "command_cancelled",
        "{}",
        done.raw
    );

    let gone = post_json(&app, "/admin/commands/cancel", &json!({ "id": id })).await;
    assert_error(&gone, StatusCode::NOT_FOUND, "dispatch_not_found");
    let bad = post_json(&app, "/admin/commands/cancel", &json!({"id": "nope"})).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_dispatch_id");
    let extra = post_json(&app, "/admin/commands/cancel", &json!({"id": id, "x": 1})).await;
    assert_error(&extra, StatusCode::BAD_REQUEST, "invalid_json");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_command_that_honours_cancellation_is_409_command_cancelled() {
    let (rt, app) = started(&Gates::default()).await;
    let pending = tokio::spawn({
        let app = app.clone();
        async move { dispatch(&app, "echo", "slow").await }
    });
    // Wait (paused clock, no sleeps) until the command is in flight.
    let id = loop {
        if let Some(c) = rt.in_flight().first() {
            break c.id;
        }
        tokio::task::yield_now().await;
    };
    rt.cancel(id).unwrap();
    let reply = pending.await.unwrap();
    assert_error(&reply, StatusCode::CONFLICT, "command_cancelled");
}

#[tokio::test]
async fn trace_context_and_request_id_reach_the_command_metadata() {
    let rt = Runtime::builder("meta").build().unwrap();
    rt.register(
        workerkit_core::WorkerSpec::new("w", workerkit_core::worker_fn(|_| async { Ok(()) }))
            .command(workerkit_core::CommandSpec::new(
                "meta",
                workerkit_core::handler_fn(|ctx| async move {
                    let meta: Value = ctx
                        .request()
                        .all_metadata()
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                    Ok(workerkit_core::CommandResponse::payload(meta))
                }),
            )),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt).enable_dispatch().router();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = http::Request::post("/admin/commands/dispatch")
        .header("traceparent", traceparent)
        .header("x-request-id", "req-42")
        .body(axum::body::Body::from(r#"{"worker":"w","name":"meta"}"#))
        .unwrap();
    let reply = support::send(&app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    let meta = &reply.body["data"]["result"]["payload"];
    assert_eq!(meta["traceparent"], traceparent);
    assert_eq!(meta["request_id"], "req-42");
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
}

#[tokio::test]
async fn nothing_admitted_is_lost_when_the_client_goes_away() {
    let gates = Gates::default();
    let (rt, app) = started(&gates).await;
    let entered = gates.entered.notified();
    let client = tokio::spawn({
        let app = app.clone();
        async move { dispatch(&app, "echo", "hold").await }
    });
    entered.await;
    client.abort();
    let _ = client.await;
    // The caller is gone; core ends the dispatch (abandoned) and frees its slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rt.in_flight().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatch never ended"
        );
        tokio::task::yield_now().await;
    }
    let again = dispatch(&app, "echo", "echo").await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_400_invalid_payload() {
    #[derive(serde::Deserialize)]
    struct Sleep {
        #[allow(dead_code)]
        ms: u64,
    }
    let rt = Runtime::builder("p").build().unwrap();
    rt.register(
        workerkit_core::WorkerSpec::new("w", workerkit_core::worker_fn(|_| async { Ok(()) }))
            .command(workerkit_core::CommandSpec::new(
                "sleep",
                workerkit_core::command::json_handler(|_ctx, _sleep: Sleep| async {
                    Ok::<_, workerkit_core::failure::BoxError>(())
                }),
            )),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt).enable_dispatch().router();
    for body in [
        r#"{"worker":"w","name":"sleep"}"#,
        r#"{"worker":"w","name":"sleep","payload":{"ms":"soon"}}"#,
    ] {
        let reply = post(&app, "/admin/commands/dispatch", body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_payload");
    }
    let ok = post(
        &app,
        "/admin/commands/dispatch",
        r#"{"worker":"w","name":"sleep","payload":{"ms":1}}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.raw);
}
