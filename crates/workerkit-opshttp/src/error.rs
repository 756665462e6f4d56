//! The error body and the stable codes.

use std::borrow::Cow;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use workerkit_core::LifecycleError;
use workerkit_core::command::{CancelError, DispatchError, LimitScope};
use workerkit_core::error::ShutdownError;

use crate::extract::RequestId;

/// The stable `code` strings of error bodies, one per condition. They are a public contract
/// (clients branch on them); `docs/ops-http.md` lists them with their statuses.
pub mod code {
    /// 400: the body is not the JSON the route expects (malformed, empty, trailing data,
    /// unknown or missing fields).
    pub const INVALID_JSON: &str = "invalid_json";
    /// 400: a query string the route does not accept.
    pub const INVALID_QUERY: &str = "invalid_query";
    /// 400: a worker name with invalid syntax.
    pub const INVALID_NAME: &str = "invalid_name";
    /// 400: a dispatch target (worker name) with invalid syntax.
    pub const INVALID_TARGET: &str = "invalid_target";
    /// 400: a command name with invalid syntax.
    pub const INVALID_COMMAND_NAME: &str = "invalid_command_name";
    /// 400: the command's payload does not decode into what its handler takes.
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    /// 400: a dispatch id that does not parse.
    pub const INVALID_DISPATCH_ID: &str = "invalid_dispatch_id";
    /// 401: missing or wrong credentials.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 404: no such worker.
    pub const WORKER_NOT_FOUND: &str = "worker_not_found";
    /// 404: no such command on the worker.
    pub const COMMAND_NOT_FOUND: &str = "command_not_found";
    /// 404: no command in flight with this dispatch id.
    pub const DISPATCH_NOT_FOUND: &str = "dispatch_not_found";
    /// 405: the path exists, the method does not.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the worker's state does not allow the operation or dispatch.
    pub const INVALID_WORKER_STATE: &str = "invalid_worker_state";
    /// 409: the worker runs but does not accept commands.
    pub const WORKER_NOT_ACCEPTING_WORK: &str = "worker_not_accepting_work";
    /// 409: the command was already cancelled.
    pub const ALREADY_CANCELLED: &str = "already_cancelled";
    /// 409: the command was cancelled (by id, or by its worker's stop) before it finished.
    pub const COMMAND_CANCELLED: &str = "command_cancelled";
    /// 409: the runtime has been shut down.
    pub const RUNTIME_SHUT_DOWN: &str = "runtime_shut_down";
    /// 409: the worker still has commands in flight, so it cannot be removed.
    pub const WORKER_BUSY: &str = "worker_busy";
    /// 409: the operation was refused because waiting for it would deadlock.
    pub const REENTRANT_LIFECYCLE_CALL: &str = "reentrant_lifecycle_call";
    /// 413: the body is over the limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 415: an explicit `Content-Type` that is not JSON.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 429: a concurrency limit is full (`Retry-After` says when to retry).
    pub const SATURATED: &str = "saturated";
    /// 503: the server is shutting down and the request was still running when the HTTP
    /// drain ran out of time (`ManagedService`).
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// 503: the runtime does not accept commands (`Retry-After` says when to retry).
    pub const RUNTIME_NOT_ACCEPTING_WORK: &str = "runtime_not_accepting_work";
    /// 500: the handler returned an error.
    pub const COMMAND_FAILED: &str = "command_failed";
    /// 500: the handler panicked.
    pub const COMMAND_PANICKED: &str = "command_panicked";
    /// 500: a worker's own start failed (error, timeout or panic).
    pub const START_FAILED: &str = "start_failed";
    /// 500: a worker's own stop failed.
    pub const STOP_FAILED: &str = "stop_failed";
    /// 500: a shutdown finished, but not cleanly (a worker failed to stop, or the budget ran
    /// out).
    pub const SHUTDOWN_INCOMPLETE: &str = "shutdown_incomplete";
    /// 500: anything else.
    pub const INTERNAL: &str = "internal";
    /// 504: the command ran out of time.
    pub const COMMAND_TIMED_OUT: &str = "command_timed_out";
    /// 504: the lifecycle operation did not finish within the lifecycle timeout (it may still
    /// finish in the background; read the status).
    pub const LIFECYCLE_TIMED_OUT: &str = "lifecycle_timed_out";
}

/// Core's public failure code for a payload that does not decode (`json_handler`).
const INVALID_PAYLOAD: &str = "invalid_payload";

/// An error answer: status, stable code, a message that is safe to show (never a handler's or
/// worker's own error text), and an optional `Retry-After`.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: Cow<'static, str>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) request_id: Option<HeaderValue>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            request_id: None,
        }
    }

    pub(crate) fn internal(code: &'static str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            "internal server error",
        )
    }

    pub(crate) fn bad_json(label: &str, error: &serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code::INVALID_JSON,
            format!("invalid {label} JSON: {error}"),
        )
    }

    #[must_use]
    pub(crate) fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    #[must_use]
    pub(crate) fn with_request_id(mut self, id: &RequestId) -> Self {
        self.request_id = Some(id.0.clone());
        self
    }

    pub(crate) fn worker_not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::WORKER_NOT_FOUND,
            format!("worker {name:?} not found"),
        )
    }

    /// Maps a dispatch error. Only the error's variant decides, never the handler's own error
    /// (which stays private: its text never reaches the client).
    pub(crate) fn from_dispatch(err: &DispatchError) -> Self {
        use DispatchError as E;
        let this = match err {
            E::InvalidTarget { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_TARGET,
                "invalid command target",
            ),
            E::InvalidCommandName { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_COMMAND_NAME,
                "invalid command name",
            ),
            E::WorkerNotFound { .. } => err.request().map_or_else(
                || Self::worker_not_found(""),
                |r| Self::worker_not_found(r.worker()),
            ),
            E::CommandNotFound { command, .. } => Self::new(
                StatusCode::NOT_FOUND,
                code::COMMAND_NOT_FOUND,
                format!("command {command:?} not found"),
            ),
            E::RuntimeNotAccepting { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::RUNTIME_NOT_ACCEPTING_WORK,
                "runtime not accepting work",
            ),
            E::InvalidWorkerState { .. } => Self::new(
                StatusCode::CONFLICT,
                code::INVALID_WORKER_STATE,
                "invalid worker state",
            ),
            E::WorkerNotAccepting { .. } => Self::new(
                StatusCode::CONFLICT,
                code::WORKER_NOT_ACCEPTING_WORK,
                "worker not accepting work",
            ),
            E::Saturated { scope, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::SATURATED,
                match scope {
                    LimitScope::Runtime => "runtime command concurrency limit reached",
                    LimitScope::Worker => "worker command concurrency limit reached",
                    _ => "command concurrency limit reached",
                },
            ),
            E::TimedOut { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                code::COMMAND_TIMED_OUT,
                "command timed out",
            ),
            E::Cancelled { .. } => Self::new(
                StatusCode::CONFLICT,
                code::COMMAND_CANCELLED,
                "command cancelled",
            ),
            E::Panicked { .. } => Self::internal(code::COMMAND_PANICKED),
            // The payload did not decode into the handler's type (`json_handler`): the caller's
            // mistake, and core's own public code, not the handler's text.
            E::Failed { failure, .. } if failure.code() == INVALID_PAYLOAD => Self::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_PAYLOAD,
                "invalid command payload",
            ),
            // `Failed`, and any variant added later: a 500 that says nothing.
            _ => Self::internal(code::COMMAND_FAILED),
        };
        this.retry_after(err.retry_after())
    }

    pub(crate) fn from_cancel(err: &CancelError) -> Self {
        match err {
            CancelError::AlreadyCancelled(_) => Self::new(
                StatusCode::CONFLICT,
                code::ALREADY_CANCELLED,
                "command already cancelled",
            ),
            // `NotFound`, and any variant added later.
            _ => Self::new(
                StatusCode::NOT_FOUND,
                code::DISPATCH_NOT_FOUND,
                "no command in flight with this id",
            ),
        }
    }

    /// Maps a lifecycle error: a bad name is the caller's fault (400), an unknown worker 404, a
    /// wrong state or a worker still busy 409; a worker's own start or stop failure is a 500
    /// that says nothing more.
    pub(crate) fn from_lifecycle(err: &LifecycleError) -> Self {
        use LifecycleError as E;
        match err {
            E::InvalidName(_) => Self::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_NAME,
                "invalid worker name",
            ),
            E::WorkerNotFound { worker } => Self::worker_not_found(worker),
            E::InvalidState { .. } => Self::new(
                StatusCode::CONFLICT,
                code::INVALID_WORKER_STATE,
                "invalid worker state",
            ),
            E::ShutDown { .. } => Self::new(
                StatusCode::CONFLICT,
                code::RUNTIME_SHUT_DOWN,
                "runtime has been shut down",
            ),
            E::Reentrant { .. } => Self::new(
                StatusCode::CONFLICT,
                code::REENTRANT_LIFECYCLE_CALL,
                "operation refused: it would wait for itself",
            ),
            E::WorkerBusy { worker, in_flight } => Self::new(
                StatusCode::CONFLICT,
                code::WORKER_BUSY,
                format!("worker {worker:?} has {in_flight} commands in flight"),
            ),
            E::StartFailed { .. } => Self::internal(code::START_FAILED),
            E::StopFailed { .. } => Self::internal(code::STOP_FAILED),
            E::Multiple { errors } => {
                // As in Go: a wrong state anywhere in a bulk operation is a conflict.
                if errors
                    .iter()
                    .any(|e| matches!(e, E::InvalidState { .. } | E::ShutDown { .. }))
                {
                    Self::new(
                        StatusCode::CONFLICT,
                        code::INVALID_WORKER_STATE,
                        "invalid worker state",
                    )
                } else if errors.iter().all(|e| matches!(e, E::StartFailed { .. })) {
                    Self::internal(code::START_FAILED)
                } else if errors.iter().all(|e| matches!(e, E::StopFailed { .. })) {
                    Self::internal(code::STOP_FAILED)
                } else {
                    Self::internal(code::INTERNAL)
                }
            }
            _ => Self::internal(code::INTERNAL),
        }
    }

    pub(crate) fn from_shutdown(err: &ShutdownError) -> Self {
        match err {
            ShutdownError::Lifecycle(err) => Self::from_lifecycle(err),
            _ => Self::internal(code::SHUTDOWN_INCOMPLETE),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            code: self.code,
            request_id: self.request_id.as_ref().and_then(|v| v.to_str().ok()),
        };
        let mut response = crate::json::response(self.status, &body);
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up, at least 1 (0 would invite a hot retry loop).
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
