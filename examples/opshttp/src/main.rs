//! Merging the operations plane into an existing axum app.
//!
//! The app has its own state (a hit counter), its own routes and its own fallback; the ops
//! routes (read, dispatch and lifecycle, the mutating ones behind a bearer token) and the probes
//! are merged into it. A [`ManagedService`] runs runtime and server together; the example sends
//! a few real HTTP requests over loopback, prints each answer, then asks the service to shut
//! down and prints its report. It ends by itself.
//!
//! Run with: `cargo run -p example-opshttp`

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workerkit_core::{CommandResponse, CommandSpec, LoopWorker, Runtime, WorkerSpec, handler_fn};
use workerkit_opshttp::{BearerAuthLayer, ManagedService, OpsHttp};

/// The token the mutating routes require.
const TOKEN: &str = "example-token";

/// The app's own state.
#[derive(Clone, Default)]
struct AppState {
    hits: Arc<AtomicU64>,
}

async fn hello(State(state): State<AppState>) -> String {
    let hits = state.hits.fetch_add(1, Ordering::Relaxed) + 1;
    format!("hello from the app (hit {hits})")
}

/// One HTTP/1.1 request on its own connection; returns the status line and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<(String, String), Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let runtime = Runtime::builder("shop").build()?;
    runtime.register(
        WorkerSpec::new(
            "orders",
            LoopWorker::new(|ctx| async move {
                ctx.stop_requested().await;
                Ok(())
            }),
        )
        .description("processes orders")
        .command(
            CommandSpec::new(
                "count",
                handler_fn(|_ctx| async { Ok(CommandResponse::payload(json!({"open": 3}))) }),
            )
            .description("counts open orders"),
        ),
    )?;

    // The ops routes, read routes open, dispatch and lifecycle behind the token.
    let ops = OpsHttp::new(runtime.clone())
        .enable_dispatch()
        .enable_lifecycle()
        .dispatch_layer(BearerAuthLayer::new(TOKEN))
        .lifecycle_layer(BearerAuthLayer::new(TOKEN));

    // An existing app: its own state, routes and fallback. The ops router has no fallback, so
    // the merge works, and unknown paths (under /admin too) stay the app's.
    let app = Router::new()
        .route("/", get(hello))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "the app's own 404") })
        .with_state(AppState::default())
        .merge(ops.router())
        .merge(ops.probes());

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("serving on http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = ManagedService::new(runtime.clone(), app)
        .serving_state(ops.serving_state())
        .os_signals(false)
        .shutdown_on(async {
            let _ = stopped.await;
        });
    let running = tokio::spawn(service.run(listener));
    runtime.subscribe().wait_until(|rt| rt.status().ready).await;

    let dispatch = r#"{"worker":"orders","name":"count"}"#;
    for (method, path, body, token) in [
        ("GET", "/", None, None),
        ("GET", "/readyz", None, None),
        ("GET", "/admin/workers/orders", None, None),
        ("GET", "/admin/commands", None, None),
        ("POST", "/admin/commands/dispatch", Some(dispatch), None),
        (
            "POST",
            "/admin/commands/dispatch",
            Some(dispatch),
            Some(TOKEN),
        ),
        (
            "POST",
            "/admin/commands/dispatch",
            Some("{\"worker\":"),
            Some(TOKEN),
        ),
        ("GET", "/admin/nope", None, None),
    ] {
        let (status, body) = request(addr, method, path, body, token).await?;
        let auth = if token.is_some() { " (with token)" } else { "" };
        println!("{method} {path}{auth}\n  {status}\n  {}", body.trim());
    }

    let _ = stop.send(());
    let report = running.await??;
    println!(
        "shut down ({:?}): stopped {:?}, clean={}",
        report.trigger,
        report
            .shutdown
            .as_ref()
            .map(|r| r.stopped.clone())
            .unwrap_or_default(),
        report.is_clean()
    );
    Ok(())
}
