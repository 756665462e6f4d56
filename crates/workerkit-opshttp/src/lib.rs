//! The workerkit operations plane on axum: status, inspection, command discovery and
//! dispatch, lifecycle control, Kubernetes probes, and a managed runtime + server with a
//! budgeted graceful shutdown.
//!
//! [`OpsHttp`] builds an axum [`Router`] that you merge into your own app, whatever its state
//! type: it serves only routes under its prefix (default `/admin`) and has no fallback of its
//! own. Read routes are on by default; command dispatch and lifecycle control are off until you
//! enable them, and each route group takes its own tower layers (auth, timeouts, CORS).
//!
//! ```
//! use axum::{Router, routing::get};
//! use workerkit_core::Runtime;
//! use workerkit_opshttp::{BearerAuthLayer, OpsHttp};
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder("billing").build()?;
//! let ops = OpsHttp::new(runtime.clone())
//!     .enable_dispatch()
//!     .enable_lifecycle()
//!     .dispatch_layer(BearerAuthLayer::new("s3cret"))
//!     .lifecycle_layer(BearerAuthLayer::new("s3cret"));
//!
//! #[derive(Clone)]
//! struct AppState;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "my app" }))
//!     .fallback(|| async { "not here" })
//!     .with_state(AppState)
//!     .merge(ops.router())
//!     .merge(ops.probes());
//! # let _ = app; Ok(()) }
//! # demo().unwrap();
//! ```
//!
//! The wire contract (routes, bodies, status codes and their stable `code` strings) is in
//! `docs/ops-http.md`; the [`code`] module names every code.
//!
//! The handlers are written against core's control-plane traits
//! ([`Inspect`], [`Dispatch`], [`Control`]), never against `Runtime`'s internals.
#![deny(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod auth;
mod error;
mod extract;
mod json;
mod probes;
mod request_id;
mod routes;
mod service;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::{Route, get, post};
use tower::{Layer, Service};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use workerkit_core::control::{Control, Dispatch, Inspect};

pub use auth::{BearerAuth, BearerAuthLayer};
pub use error::code;
pub use probes::{SHUTTING_DOWN_REASON, ServingState, probes, probes_with};
pub use request_id::{REQUEST_ID, is_valid_request_id};
pub use service::{
    DEFAULT_SHUTDOWN_BUDGET, DEFAULT_STOP_GRACE, ManagedService, ServiceError, ServiceReport,
    ShutdownTrigger,
};

use extract::RequestId;
use routes::{Shared, Verb};

/// The default route prefix.
pub const DEFAULT_PREFIX: &str = "/admin";
/// The default request body limit: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The default bound of one lifecycle operation, including its wait for the lifecycle gate.
pub const DEFAULT_LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default wait for a worker's in-flight commands in `POST {p}/workers/shutdown`.
pub const DEFAULT_WORKER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Group<R> = Router<Arc<Shared<R>>>;
type LayerFn<R> = Arc<dyn Fn(Group<R>) -> Group<R> + Send + Sync>;

/// Builder of the ops routes and probes for one runtime; see the [crate docs](crate).
pub struct OpsHttp<R> {
    runtime: R,
    prefix: String,
    body_limit: usize,
    lifecycle_timeout: Option<Duration>,
    worker_idle_timeout: Duration,
    dispatch: bool,
    lifecycle: bool,
    read_layers: Vec<LayerFn<R>>,
    dispatch_layers: Vec<LayerFn<R>>,
    lifecycle_layers: Vec<LayerFn<R>>,
    serving: ServingState,
}

impl<R> fmt::Debug for OpsHttp<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpsHttp")
            .field("prefix", &self.prefix)
            .field("body_limit", &self.body_limit)
            .field("lifecycle_timeout", &self.lifecycle_timeout)
            .field("worker_idle_timeout", &self.worker_idle_timeout)
            .field("dispatch", &self.dispatch)
            .field("lifecycle", &self.lifecycle)
            .field("read_layers", &self.read_layers.len())
            .field("dispatch_layers", &self.dispatch_layers.len())
            .field("lifecycle_layers", &self.lifecycle_layers.len())
            .finish_non_exhaustive()
    }
}

/// Normalises a prefix as the Go original does: trim whitespace; `""` or `"/"` is the root;
/// add a leading `/`; strip every trailing `/`.
#[must_use]
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

impl<R> OpsHttp<R>
where
    R: Inspect + Dispatch + Control + Clone + 'static,
{
    /// Ops routes for `runtime` with the defaults: prefix `/admin`, read routes only, 4 MiB
    /// body limit, 30 s lifecycle timeout.
    pub fn new(runtime: R) -> Self {
        Self {
            runtime,
            prefix: DEFAULT_PREFIX.to_owned(),
            body_limit: DEFAULT_BODY_LIMIT,
            lifecycle_timeout: Some(DEFAULT_LIFECYCLE_TIMEOUT),
            worker_idle_timeout: DEFAULT_WORKER_IDLE_TIMEOUT,
            dispatch: false,
            lifecycle: false,
            read_layers: Vec::new(),
            dispatch_layers: Vec::new(),
            lifecycle_layers: Vec::new(),
            serving: ServingState::new(),
        }
    }

    /// The route prefix, normalised by [`normalize_prefix`] (`" ops/ "` → `/ops`, `""` → the
    /// root).
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = normalize_prefix(prefix);
        self
    }

    /// The request body limit in bytes (413 beyond it).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The bound of one lifecycle operation, including its wait for the lifecycle gate (504
    /// beyond it; the operation may still finish in the background).
    #[must_use]
    pub fn lifecycle_timeout(mut self, timeout: Duration) -> Self {
        self.lifecycle_timeout = Some(timeout);
        self
    }

    /// No bound on lifecycle operations.
    #[must_use]
    pub fn no_lifecycle_timeout(mut self) -> Self {
        self.lifecycle_timeout = None;
        self
    }

    /// How long `POST {p}/workers/shutdown` waits for the worker's in-flight commands before
    /// stopping it anyway. Keep it below the lifecycle timeout.
    #[must_use]
    pub fn worker_idle_timeout(mut self, timeout: Duration) -> Self {
        self.worker_idle_timeout = timeout;
        self
    }

    /// Mounts `POST {p}/commands/dispatch` and `POST {p}/commands/cancel`.
    #[must_use]
    pub fn enable_dispatch(mut self) -> Self {
        self.dispatch = true;
        self
    }

    /// Mounts the lifecycle routes: `POST {p}/workers/{start|drain|stop|shutdown|remove}` and
    /// `POST {p}/runtime/{start|drain|stop|shutdown}`.
    #[must_use]
    pub fn enable_lifecycle(mut self) -> Self {
        self.lifecycle = true;
        self
    }

    /// Adds a tower layer to the read routes (the last one added runs first).
    #[must_use]
    pub fn read_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<std::convert::Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.read_layers.push(layer_fn(layer));
        self
    }

    /// Adds a tower layer to the dispatch routes (the last one added runs first).
    #[must_use]
    pub fn dispatch_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<std::convert::Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.dispatch_layers.push(layer_fn(layer));
        self
    }

    /// Adds a tower layer to the lifecycle routes (the last one added runs first).
    #[must_use]
    pub fn lifecycle_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<std::convert::Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.lifecycle_layers.push(layer_fn(layer));
        self
    }

    /// The readiness state the probes of [`probes`](Self::probes) read; hand it to a
    /// [`ManagedService`] (or call [`ServingState::begin_shutdown`] yourself).
    #[must_use]
    pub fn serving_state(&self) -> ServingState {
        self.serving.clone()
    }

    /// The probe routes (`/livez`, `/readyz`) sharing this builder's [`ServingState`].
    pub fn probes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        probes_with(self.runtime.clone(), self.serving.clone())
    }

    fn path(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.prefix)
    }

    /// The ops routes, ready to merge into an app of any state type.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            runtime: self.runtime.clone(),
            body_limit: self.body_limit,
            lifecycle_timeout: self.lifecycle_timeout,
            worker_idle_timeout: self.worker_idle_timeout,
            serving: self.serving.clone(),
        });

        let mut read: Group<R> = Router::new()
            .route(&self.path("runtime"), get(routes::get_runtime::<R>))
            .route(&self.path("workers"), get(routes::get_workers::<R>))
            .route(&self.path("workers/{name}"), get(routes::get_worker::<R>))
            .route(&self.path("commands"), get(routes::get_commands::<R>))
            .route(
                &self.path("commands/inflight"),
                get(routes::get_in_flight::<R>),
            )
            .route(&self.path("diagram"), get(routes::get_diagram::<R>))
            .route(&self.path("events"), get(routes::get_events::<R>));
        if self.lifecycle {
            // `/workers/start` and friends are static paths, which win over `/workers/{name}`:
            // serve a worker named like a verb from them too.
            for verb in Verb::WORKER {
                read = read.route(
                    &self.path(&format!("workers/{}", verb.as_str())),
                    get(
                        move |State(s): State<Arc<Shared<R>>>, rid: RequestId| async move {
                            routes::worker_view(&s.runtime, verb.as_str())
                                .unwrap_or_else(|err| err.with_request_id(&rid).into_response())
                        },
                    ),
                );
            }
        }
        let mut router = apply(read, &self.read_layers);

        if self.dispatch {
            let dispatch: Group<R> = Router::new()
                .route(
                    &self.path("commands/dispatch"),
                    post(routes::post_dispatch::<R>),
                )
                .route(
                    &self.path("commands/cancel"),
                    post(routes::post_cancel::<R>),
                );
            router = router.merge(apply(dispatch, &self.dispatch_layers));
        }

        if self.lifecycle {
            let mut lifecycle: Group<R> = Router::new();
            for verb in Verb::WORKER {
                lifecycle = lifecycle.route(
                    &self.path(&format!("workers/{}", verb.as_str())),
                    post(
                        move |State(s): State<Arc<Shared<R>>>,
                              rid: RequestId,
                              headers: http::HeaderMap,
                              body: axum::body::Body| {
                            routes::post_worker_op(verb, s, rid, headers, body)
                        },
                    ),
                );
            }
            for verb in Verb::RUNTIME {
                lifecycle = lifecycle.route(
                    &self.path(&format!("runtime/{}", verb.as_str())),
                    post(
                        move |State(s): State<Arc<Shared<R>>>,
                              rid: RequestId,
                              headers: http::HeaderMap,
                              body: axum::body::Body| {
                            routes::post_runtime_op(verb, s, rid, headers, body)
                        },
                    ),
                );
            }
            router = router.merge(apply(lifecycle, &self.lifecycle_layers));
        }

        router
            .method_not_allowed_fallback(routes::method_not_allowed)
            // Outermost first at request time: drop an invalid inbound id, set one if absent,
            // echo it on the response.
            .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
            .layer(SetRequestIdLayer::new(
                REQUEST_ID.clone(),
                request_id::MakeId,
            ))
            .layer(request_id::ValidateRequestIdLayer)
            .with_state(shared)
    }
}

fn layer_fn<R, L>(layer: L) -> LayerFn<R>
where
    R: Send + Sync + 'static,
    L: Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request>>::Error: Into<std::convert::Infallible> + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    Arc::new(move |group: Group<R>| group.layer(layer.clone()))
}

fn apply<R>(mut group: Group<R>, layers: &[LayerFn<R>]) -> Group<R> {
    for layer in layers {
        group = layer(group);
    }
    group
}

/// The default ops routes (read-only, prefix `/admin`) for `runtime`; see [`OpsHttp`] to
/// enable dispatch and lifecycle routes, change the prefix or add layers.
pub fn router<R, S>(runtime: R) -> Router<S>
where
    R: Inspect + Dispatch + Control + Clone + 'static,
    S: Clone + Send + Sync + 'static,
{
    OpsHttp::new(runtime).router()
}
