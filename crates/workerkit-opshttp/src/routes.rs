//! The route handlers: read, dispatch and lifecycle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use workerkit_core::command::{CommandRequest, DispatchId};
use workerkit_core::control::{Control, Dispatch, Inspect};
use workerkit_core::name::{validate_qualified_worker_name, validate_worker_local_name};
use workerkit_core::status::RuntimeStatus;

use crate::error::{ApiError, code};
use crate::extract::RequestId;
use crate::json::{check_content_type, decode, ok, read_body};

/// What every ops handler shares.
#[derive(Debug)]
pub(crate) struct Shared<R> {
    pub(crate) runtime: R,
    pub(crate) body_limit: usize,
    pub(crate) lifecycle_timeout: Option<Duration>,
    pub(crate) worker_idle_timeout: Duration,
    pub(crate) serving: crate::ServingState,
}

pub(crate) type St<R> = State<Arc<Shared<R>>>;

/// Turns a handler's `Result` into a response, stamping the request id on errors.
fn respond(rid: &RequestId, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|err| err.with_request_id(rid).into_response())
}

// ---- Read routes ----

#[derive(Serialize)]
struct Identity<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct RuntimeView<'a> {
    identity: Identity<'a>,
    status: RuntimeStatus,
}

fn runtime_view<R: Inspect>(runtime: &R) -> Response {
    ok(RuntimeView {
        identity: Identity {
            name: runtime.name(),
        },
        status: runtime.status(),
    })
}

pub(crate) async fn get_runtime<R: Inspect>(State(s): St<R>) -> Response {
    runtime_view(&s.runtime)
}

pub(crate) async fn get_workers<R: Inspect>(State(s): St<R>) -> Response {
    ok(s.runtime.workers())
}

/// A worker name must be a valid local or qualified name (400), then known (404).
fn check_name(name: &str) -> Result<(), ApiError> {
    if validate_worker_local_name(name).is_ok() || validate_qualified_worker_name(name).is_ok() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_NAME,
            "invalid worker name",
        ))
    }
}

pub(crate) fn worker_view<R: Inspect>(runtime: &R, name: &str) -> Result<Response, ApiError> {
    check_name(name)?;
    runtime
        .worker(name)
        .map(ok)
        .ok_or_else(|| ApiError::worker_not_found(name))
}

pub(crate) async fn get_worker<R: Inspect>(
    State(s): St<R>,
    rid: RequestId,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = match path {
        Ok(Path(name)) => worker_view(&s.runtime, &name),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_NAME,
            "invalid worker name",
        )),
    };
    respond(&rid, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandsQuery {
    worker: Option<String>,
}

pub(crate) async fn get_commands<R: Inspect>(
    State(s): St<R>,
    rid: RequestId,
    query: Result<Query<CommandsQuery>, QueryRejection>,
) -> Response {
    let result = (|| {
        let Ok(Query(query)) = query else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_QUERY,
                "invalid query: the only parameter is `worker`",
            ));
        };
        match query.worker {
            None => Ok(ok(s.runtime.all_commands())),
            Some(worker) => {
                check_name(&worker)?;
                s.runtime
                    .commands(&worker)
                    .map(ok)
                    .ok_or_else(|| ApiError::worker_not_found(&worker))
            }
        }
    })();
    respond(&rid, result)
}

pub(crate) async fn get_in_flight<R: Inspect>(State(s): St<R>) -> Response {
    ok(s.runtime.in_flight())
}

/// The event stream as Server-Sent Events: one `transition` event per lifecycle transition
/// (`id` = its `seq`, data = the transition as JSON: worker, from, to, reason, at), a comment
/// `lagged N` when this client fell behind and missed N, keep-alive comments, and the end of the
/// stream when shutdown begins (so an open stream never holds up the HTTP drain).
pub(crate) async fn get_events<R: Inspect>(State(s): St<R>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = s.runtime.events();
    let serving = s.serving.clone();
    let events = futures_util::stream::unfold(
        (stream, serving, 0_u64),
        |(mut stream, serving, reported_lag)| async move {
            let next = tokio::select! {
                () = serving.shutting_down() => None,
                next = stream.recv() => next,
            }?;
            let data = serde_json::to_string(&next).ok()?;
            let mut event = Event::default()
                .event("transition")
                .id(next.seq.to_string())
                .data(data);
            let lagged = stream.lagged();
            if lagged > reported_lag {
                event = event.comment(format!("lagged {lagged}"));
            }
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (stream, serving, lagged),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The runtime as a Mermaid flowchart, as text (not enveloped: paste it where Mermaid renders).
pub(crate) async fn get_diagram<R: Inspect>(State(s): St<R>) -> Response {
    let text = workerkit_core::diagram::mermaid(&s.runtime.status(), &s.runtime.workers());
    (
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

// ---- Dispatch ----

/// A field that is present, even as `null`: `Some(Value::Null)`; absent: `None` (by `default`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchBody {
    worker: String,
    name: String,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Value>,
}

#[derive(Serialize)]
struct DispatchView {
    id: DispatchId,
    worker: Arc<str>,
    name: Arc<str>,
    attempts: u32,
    result: ResultView,
}

#[derive(Serialize)]
struct ResultView {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

/// Request headers copied into the command's metadata, so observers can continue the caller's
/// trace (W3C trace context) without core knowing HTTP.
const FORWARDED_HEADERS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

pub(crate) async fn post_dispatch<R: Dispatch>(
    State(s): St<R>,
    request: axum::extract::Request,
) -> Response {
    // The request whole, not a `HeaderMap` extractor: that would clone every header (this is
    // the hot route).
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let rid = RequestId::from_headers(headers);
    let result = async {
        check_content_type(headers)?;
        let bytes = read_body(body, s.body_limit).await?;
        let body: DispatchBody = decode(&bytes, "dispatch request")?;
        let mut request = CommandRequest::new(body.worker, body.name).maybe_payload(body.payload);
        for name in FORWARDED_HEADERS {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                request = request.metadata(name, value);
            }
        }
        request = request.metadata("request_id", rid.as_str());
        match s.runtime.dispatch(request).await {
            Ok(done) => Ok(ok(DispatchView {
                id: done.id,
                worker: Arc::clone(done.worker()),
                name: Arc::clone(done.name()),
                attempts: done.attempts,
                result: ResultView {
                    message: done.result.message,
                    payload: done.result.payload,
                },
            })),
            Err(err) => Err(ApiError::from_dispatch(&err)),
        }
    }
    .await;
    respond(&rid, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    id: String,
}

#[derive(Serialize)]
struct CancelView {
    id: DispatchId,
    cancelled: bool,
}

pub(crate) async fn post_cancel<R: Dispatch>(
    State(s): St<R>,
    rid: RequestId,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        check_content_type(&headers)?;
        let bytes = read_body(body, s.body_limit).await?;
        let body: CancelBody = decode(&bytes, "cancel request")?;
        let id: DispatchId = body.id.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_DISPATCH_ID,
                "invalid dispatch id",
            )
        })?;
        s.runtime
            .cancel(id)
            .map_err(|err| ApiError::from_cancel(&err))?;
        Ok(ok(CancelView {
            id,
            cancelled: true,
        }))
    }
    .await;
    respond(&rid, result)
}

// ---- Lifecycle ----

/// A lifecycle verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Start,
    Drain,
    Stop,
    Shutdown,
    /// Worker only: a runtime is not removed.
    Remove,
}

impl Verb {
    /// The verbs of `POST {p}/workers/{verb}`.
    pub(crate) const WORKER: [Self; 5] = [
        Self::Start,
        Self::Drain,
        Self::Stop,
        Self::Shutdown,
        Self::Remove,
    ];
    /// The verbs of `POST {p}/runtime/{verb}`.
    pub(crate) const RUNTIME: [Self; 4] = [Self::Start, Self::Drain, Self::Stop, Self::Shutdown];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Drain => "drain",
            Self::Stop => "stop",
            Self::Shutdown => "shutdown",
            Self::Remove => "remove",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerBody {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// Runs a lifecycle operation in its own task, so it finishes even if the client goes away,
/// and answers 504 if it has not finished within the lifecycle timeout (which includes waiting
/// for the lifecycle gate). The operation is never dropped half-way: it runs to its end in the
/// background, and the status routes show the outcome.
async fn run_lifecycle<T: Send + 'static>(
    timeout: Option<Duration>,
    operation: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    let mut task = tokio::spawn(operation);
    let joined = match timeout {
        Some(limit) => match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    code::LIFECYCLE_TIMED_OUT,
                    "lifecycle operation timed out",
                ));
            }
        },
        None => task.await,
    };
    joined.map_err(|_| ApiError::internal(code::INTERNAL))
}

pub(crate) async fn post_worker_op<R: Inspect + Control + Clone + 'static>(
    verb: Verb,
    s: Arc<Shared<R>>,
    rid: RequestId,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        check_content_type(&headers)?;
        let bytes = read_body(body, s.body_limit).await?;
        let body: WorkerBody = decode(&bytes, "lifecycle request")?;
        let name = match body.name {
            Some(name) if !name.is_empty() => name,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_JSON,
                    "missing required JSON field \"name\"",
                ));
            }
        };
        check_name(&name)?;
        let runtime = s.runtime.clone();
        let idle_timeout = s.worker_idle_timeout;
        let target = name.clone();
        let outcome = run_lifecycle(s.lifecycle_timeout, async move {
            match verb {
                Verb::Start => runtime.start(&target).await.map(|_| None),
                Verb::Drain => runtime.drain(&target).await.map(|_| None),
                Verb::Stop => runtime.stop(&target).await.map(|_| None),
                Verb::Shutdown => runtime
                    .shutdown_worker(&target, idle_timeout)
                    .await
                    .map(|_| None),
                // The worker is gone afterwards: its last snapshot is the answer.
                Verb::Remove => runtime.remove(&target).await.map(Some),
            }
        })
        .await?;
        match outcome.map_err(|err| ApiError::from_lifecycle(&err))? {
            Some(last) => Ok(ok(last)),
            None => worker_view(&s.runtime, &name),
        }
    }
    .await;
    respond(&rid, result)
}

pub(crate) async fn post_runtime_op<R: Inspect + Control + Clone + 'static>(
    verb: Verb,
    s: Arc<Shared<R>>,
    rid: RequestId,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        check_content_type(&headers)?;
        let bytes = read_body(body, s.body_limit).await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            let _: EmptyBody = decode(&bytes, "lifecycle request")?;
        }
        let runtime = s.runtime.clone();
        let outcome = run_lifecycle(s.lifecycle_timeout, async move {
            match verb {
                Verb::Start => runtime
                    .start_all()
                    .await
                    .map_err(|e| ApiError::from_lifecycle(&e)),
                Verb::Drain => runtime
                    .drain_all()
                    .await
                    .map_err(|e| ApiError::from_lifecycle(&e)),
                Verb::Stop => runtime
                    .stop_all()
                    .await
                    .map_err(|e| ApiError::from_lifecycle(&e)),
                Verb::Shutdown => runtime
                    .shutdown()
                    .await
                    .map(drop)
                    .map_err(|e| ApiError::from_shutdown(&e)),
                // Not in `Verb::RUNTIME`, so never mounted here.
                Verb::Remove => Err(ApiError::internal(code::INTERNAL)),
            }
        })
        .await?;
        outcome?;
        Ok(runtime_view(&s.runtime))
    }
    .await;
    respond(&rid, result)
}

/// The JSON 405 of every ops path (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(rid: RequestId) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
    .with_request_id(&rid)
    .into_response()
}
