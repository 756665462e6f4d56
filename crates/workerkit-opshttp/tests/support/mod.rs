//! Shared fixtures of the router tests: a runtime with known workers and commands, and
//! request/response helpers over `tower::ServiceExt::oneshot`.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;
use workerkit_core::failure::BoxError;
use workerkit_core::{CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn};

/// The text a failing handler hides in its error; it must never reach a client.
pub const SECRET: &str = "postgres://admin:hunter2@db.internal/prod";

/// Gates for handlers that block until the test lets them go.
#[derive(Clone, Default)]
pub struct Gates {
    /// Notified when a `hold` handler has started.
    pub entered: Arc<Notify>,
    /// Releases the `hold` handlers.
    pub release: Arc<Notify>,
}

/// A runtime named `ops` with workers:
/// - `echo`: commands `echo` (result payload = request payload, message = how the payload
///   arrived: `absent`, `null` or `value`), `fail` (error with [`SECRET`]), `boom` (panics),
///   `slow` (waits for cancellation, then fails; 50 ms timeout), `hold` (waits for [`Gates::release`];
///   concurrency 1, fail-fast).
/// - `start`: a worker named like a lifecycle verb, no commands.
pub fn runtime(gates: &Gates) -> Runtime {
    let runtime = Runtime::builder("ops").build().expect("runtime");
    let g = gates.clone();
    runtime
        .register(
            WorkerSpec::new("echo", worker_fn(|_ctx| async { Ok(()) }))
                .description("echoes")
                .command(CommandSpec::new(
                    "echo",
                    handler_fn(|ctx| async move {
                        let how = match ctx.request().raw_payload() {
                            None => "absent",
                            Some(Value::Null) => "null",
                            Some(_) => "value",
                        };
                        Ok(CommandResponse::message(how)
                            .with_payload(ctx.request().raw_payload().cloned()))
                    }),
                ))
                .command(CommandSpec::new(
                    "fail",
                    handler_fn(|_ctx| async move {
                        Err::<CommandResponse, BoxError>(
                            format!("saturated: cannot reach {SECRET}").into(),
                        )
                    }),
                ))
                .command(CommandSpec::new(
                    "boom",
                    handler_fn(|_ctx| async move {
                        if SECRET.is_empty() {
                            return Ok(CommandResponse::empty());
                        }
                        panic!("{SECRET}")
                    }),
                ))
                .command(
                    CommandSpec::new(
                        "slow",
                        handler_fn(|ctx| async move {
                            ctx.cancelled().await;
                            Err::<CommandResponse, BoxError>("gave up: cancelled".into())
                        }),
                    )
                    .timeout(Duration::from_millis(50)),
                )
                .command(
                    CommandSpec::new(
                        "hold",
                        handler_fn(move |_ctx| {
                            let g = g.clone();
                            async move {
                                let released = g.release.notified();
                                g.entered.notify_one();
                                released.await;
                                Ok(CommandResponse::message("released"))
                            }
                        }),
                    )
                    .concurrency(1)
                    .no_timeout(),
                ),
        )
        .expect("register echo");
    runtime
        .register(WorkerSpec::new("start", worker_fn(|_ctx| async { Ok(()) })))
        .expect("register start");
    runtime
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Reply {
    /// The error body's `code`.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("<none>")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub fn post_request(uri: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

pub async fn post(app: &Router, uri: &str, body: &str) -> Reply {
    send(app, post_request(uri, body)).await
}

pub async fn post_json(app: &Router, uri: &str, body: &Value) -> Reply {
    post(app, uri, &body.to_string()).await
}

pub async fn dispatch(app: &Router, worker: &str, name: &str) -> Reply {
    post_json(
        app,
        "/admin/commands/dispatch",
        &json!({"worker": worker, "name": name}),
    )
    .await
}

/// Asserts the error envelope: status, code, a message, a request id, and no secret.
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.raw);
    assert_eq!(reply.code(), code, "body: {}", reply.raw);
    assert!(reply.body["error"].is_string(), "body: {}", reply.raw);
    assert!(
        reply.body["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "error bodies carry the request id: {}",
        reply.raw
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "errors are JSON"
    );
    assert!(
        !reply.raw.contains("hunter2"),
        "secret leaked: {}",
        reply.raw
    );
}
