//! A minimal OTLP/HTTP (protobuf) receiver for end-to-end tests: `POST /v1/traces` and
//! `POST /v1/metrics` on a loopback port, decoded with `opentelemetry-proto` and kept in memory.
//!
//! Reusable by any test that runs a process exporting with `OTEL_EXPORTER_OTLP_ENDPOINT` set to
//! [`OtlpReceiver::endpoint`]. Waits are by notification, bounded by a deadline.
#![allow(dead_code)] // Each test uses part of it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::{Notify, oneshot};

/// Everything received so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct Received {
    pub(crate) traces: Vec<ExportTraceServiceRequest>,
    pub(crate) metrics: Vec<ExportMetricsServiceRequest>,
}

impl Received {
    /// Every span, with the service name of its resource.
    pub(crate) fn spans(&self) -> Vec<(String, Span)> {
        self.traces
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|rs| {
                let service = service_name(rs.resource.as_ref());
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .map(move |span| (service.clone(), span.clone()))
            })
            .collect()
    }

    /// Every metric, with the service name of its resource.
    pub(crate) fn metrics(&self) -> Vec<(String, Metric)> {
        self.metrics
            .iter()
            .flat_map(|request| &request.resource_metrics)
            .flat_map(|rm| {
                let service = service_name(rm.resource.as_ref());
                rm.scope_metrics
                    .iter()
                    .flat_map(|sm| &sm.metrics)
                    .map(move |metric| (service.clone(), metric.clone()))
            })
            .collect()
    }
}

/// The `service.name` of a resource (empty if absent).
pub(crate) fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| attribute(&r.attributes, "service.name"))
        .unwrap_or_default()
}

/// A string (or other scalar, as text) attribute.
pub(crate) fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
        .map(|value| match value {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::BoolValue(b) => b.to_string(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

/// Lower-case hex of an id's bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Received>>,
    changed: Arc<Notify>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub(crate) struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    changed: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
}

impl OtlpReceiver {
    /// Binds `127.0.0.1` on a free port and serves in a task of the current tokio runtime.
    pub(crate) async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve OTLP");
        });
        Self {
            addr,
            received: shared.received,
            changed: shared.changed,
            stop: Some(stop),
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was received so far.
    pub(crate) fn received(&self) -> Received {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `predicate` holds for what was received; `false` after `limit`.
    pub(crate) async fn wait_until(
        &self,
        mut predicate: impl FnMut(&Received) -> bool,
        limit: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if predicate(&self.received()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return predicate(&self.received());
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn traces(State(shared): State<Shared>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            shared
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .traces
                .push(request);
            shared.changed.notify_waiters();
            protobuf(ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()).into_response(),
    }
}

async fn metrics(State(shared): State<Shared>, body: Bytes) -> impl IntoResponse {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => {
            shared
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .metrics
                .push(request);
            shared.changed.notify_waiters();
            protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()).into_response(),
    }
}

fn protobuf(body: Vec<u8>) -> axum::response::Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response()
}
