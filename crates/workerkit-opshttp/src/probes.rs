//! Kubernetes probes: `GET /livez` and `GET /readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use http::StatusCode;
use serde::Serialize;
use workerkit_core::control::Inspect;
use workerkit_core::status::ReadinessItem;

use crate::json::response;

/// Whether the process is shutting down, as the readiness probe sees it: set by the managed
/// service ([`crate::ManagedService`]) the moment shutdown begins — before the pre-stop delay,
/// so load balancers stop sending traffic while requests in flight finish — or by you, if you
/// run the server yourself. Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct ServingState(Arc<ServingInner>);

#[derive(Debug, Default)]
struct ServingInner {
    shutting_down: AtomicBool,
    notify: tokio::sync::Notify,
}

impl ServingState {
    /// A state that is not shutting down.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process as shutting down: `/readyz` answers 503 from now on, and event
    /// streams (`GET {p}/events`) end, so they do not hold up the HTTP drain. Irreversible.
    pub fn begin_shutdown(&self) {
        if !self.0.shutting_down.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_waiters();
        }
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// Completes once [`begin_shutdown`](Self::begin_shutdown) was called.
    pub async fn shutting_down(&self) {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_shutting_down() {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct Probes<R> {
    runtime: R,
    serving: ServingState,
}

#[derive(Serialize)]
struct LiveBody<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    reasons: &'a [String],
}

#[derive(Serialize)]
struct ReadyBody<'a> {
    status: &'a str,
    reason: &'a str,
    items: &'a [ReadinessItem],
}

async fn livez<R: Inspect>(State(p): State<Arc<Probes<R>>>) -> Response {
    let liveness = p.runtime.liveness();
    if liveness.live {
        response(
            StatusCode::OK,
            &LiveBody {
                status: "ok",
                reasons: &[],
            },
        )
    } else {
        response(
            StatusCode::SERVICE_UNAVAILABLE,
            &LiveBody {
                status: "not_live",
                reasons: &liveness.reasons,
            },
        )
    }
}

/// The reason `/readyz` gives while the process shuts down.
pub const SHUTTING_DOWN_REASON: &str = "shutting down";

async fn readyz<R: Inspect>(State(p): State<Arc<Probes<R>>>) -> Response {
    let readiness = p.runtime.readiness();
    let shutting_down = p.serving.is_shutting_down() || p.runtime.status().shutting_down;
    let (status, reason) = if shutting_down {
        (StatusCode::SERVICE_UNAVAILABLE, SHUTTING_DOWN_REASON)
    } else if readiness.ready {
        (StatusCode::OK, readiness.reason.as_str())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, readiness.reason.as_str())
    };
    response(
        status,
        &ReadyBody {
            status: if status == StatusCode::OK {
                "ready"
            } else {
                "not_ready"
            },
            reason,
            items: &readiness.items,
        },
    )
}

/// The probe routes, `GET /livez` and `GET /readyz`, at the root of the returned router (nest
/// it elsewhere if you like). They never call worker code.
///
/// - `/livez`: 200 `{"status":"ok"}`, or 503 `{"status":"not_live","reasons":[…]}` when the
///   runtime says the process should be restarted.
/// - `/readyz`: 200 `{"status":"ready","reason":…,"items":[…]}`, or 503 with
///   `"status":"not_ready"` when the runtime is not ready or `serving` says shutdown began. One
///   item per worker: `{"name","ready","state","impact"}`.
pub fn probes_with<R, S>(runtime: R, serving: ServingState) -> Router<S>
where
    R: Inspect + 'static,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/livez", get(livez::<R>))
        .route("/readyz", get(readyz::<R>))
        .method_not_allowed_fallback(crate::routes::method_not_allowed)
        .with_state(Arc::new(Probes { runtime, serving }))
}

/// [`probes_with`] and a [`ServingState`] of their own (use [`crate::OpsHttp::probes`] to share
/// the state with a managed service).
pub fn probes<R, S>(runtime: R) -> Router<S>
where
    R: Inspect + 'static,
    S: Clone + Send + Sync + 'static,
{
    probes_with(runtime, ServingState::new())
}
