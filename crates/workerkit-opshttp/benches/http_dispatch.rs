//! Issue 5's benchmark: `POST /admin/commands/dispatch` of an `echo` command over loopback,
//! against a plain axum handler that decodes the same JSON and calls the same handler function
//! directly, with the same client in the same run.
//!
//! The client is a small Rust load generator: `CONNECTIONS` keep-alive HTTP/1.1 connections,
//! each sending its share of a fixed number of requests one after another, and recording every
//! request's latency. Server (a 2-worker tokio runtime) and client (its own current-thread
//! runtime on another OS thread) share the machine's cores, so each side is measured in several
//! alternating rounds, and each ratio is the median of the rounds' ratios (the two sides of a
//! round ran back to back, so a slow stretch of the machine hits both).
//!
//! Targets (issue 5): throughput at least 0.8x the plain handler's, p99 latency at most 1.5x.
//! Criterion also measures one request's round trip on each side, for its reports.

#[path = "../../workerkit-core/benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{CpuTicks, Scenario, Target, round, write_report};
use criterion::Criterion;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workerkit_core::command::DispatchId;
use workerkit_core::failure::BoxError;
use workerkit_core::{CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn};
use workerkit_opshttp::OpsHttp;

/// Concurrent keep-alive connections of the load generator.
const CONNECTIONS: usize = 16;

/// The request body both sides decode.
const BODY: &str = r#"{"worker":"echo","name":"echo","payload":{"order":42,"items":["tea","cake"],"note":"benchmark"}}"#;

/// The handler function both sides call.
async fn echo(payload: Option<Value>) -> Result<CommandResponse, BoxError> {
    Ok(CommandResponse::empty().with_payload(payload))
}

// ---- The plain axum side: decode the same JSON, call `echo`, answer the same envelope ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainBody {
    #[allow(dead_code)]
    worker: String,
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    payload: Option<Value>,
}

#[derive(Serialize)]
struct PlainResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

#[derive(Serialize)]
struct PlainData {
    id: DispatchId,
    worker: &'static str,
    name: &'static str,
    attempts: u32,
    result: PlainResult,
}

#[derive(Serialize)]
struct Envelope<T> {
    data: T,
}

async fn plain(body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<PlainBody>(&body) else {
        return (http::StatusCode::BAD_REQUEST, "bad").into_response();
    };
    match echo(request.payload).await {
        Ok(response) => {
            let json = serde_json::to_vec(&Envelope {
                data: PlainData {
                    id: DispatchId::new(),
                    worker: "bench/echo",
                    name: "echo",
                    attempts: 1,
                    result: PlainResult {
                        message: response.message,
                        payload: response.payload,
                    },
                },
            })
            .unwrap_or_default();
            ([(http::header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

// ---- The server ----

struct Server {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _workers: Runtime,
}

fn server() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let (addr, workers) = rt.block_on(async {
        let workers = Runtime::builder("bench").build().expect("runtime");
        workers
            .register(
                WorkerSpec::new("echo", worker_fn(|_ctx| async { Ok(()) })).command(
                    CommandSpec::new(
                        "echo",
                        handler_fn(|ctx| echo(ctx.request().raw_payload().cloned())),
                    ),
                ),
            )
            .expect("register");
        workers.start_all().await.expect("start");
        let app = Router::new()
            .route("/plain", post(plain))
            .merge(OpsHttp::new(workers.clone()).enable_dispatch().router());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, workers)
    });
    Server {
        addr,
        _runtime: rt,
        _workers: workers,
    }
}

// ---- The client ----

/// One keep-alive connection.
struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
        .into_bytes();
        Self {
            stream,
            request,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends the request and reads one whole response; panics on anything but a 200.
    async fn round_trip(&mut self) {
        self.stream.write_all(&self.request).await.expect("write");
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            let Some(end) = find(&self.buffer, b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buffer[..end]).expect("ascii head");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("content-length");
            if self.buffer.len() >= end + 4 + length {
                return;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One load round: `requests` requests over `CONNECTIONS` connections to `path`; returns
/// (requests per second, p99 latency in microseconds).
fn load(addr: SocketAddr, path: &'static str, requests: usize) -> (f64, f64) {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    client.block_on(async move {
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let mut connection = Connection::open(addr, path).await;
            connection.round_trip().await; // warm the connection
            connections.push(connection);
        }
        let per_connection = requests / CONNECTIONS;
        let started = Instant::now();
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|mut connection| {
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_connection);
                    for _ in 0..per_connection {
                        let sent = Instant::now();
                        connection.round_trip().await;
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(requests);
        for task in tasks {
            latencies.extend(task.await.expect("client task"));
        }
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        (
            latencies.len() as f64 / elapsed.as_secs_f64(),
            p99.as_secs_f64() * 1e6,
        )
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::var_os("WORKERKIT_BENCH_QUICK").is_some();
    // Rounds of about 0.1 s: more of them, not longer ones, is what steadies the medians on a
    // two-core machine where client and server share the cores.
    // Single rounds' ratios spread widely (client and server share two cores): 15 rounds (about
    // 2 s in all) steady the median, which 7 left to move by about ±0.05 from run to run.
    let (rounds, requests) = if quick { (15, 10_000) } else { (21, 40_000) };
    let server = Arc::new(server());
    let addr = server.addr;

    // Warm both paths.
    load(addr, "/plain", 2_000);
    load(addr, "/admin/commands/dispatch", 2_000);

    let load_before = CpuTicks::read();
    let (mut plain_rps, mut plain_p99, mut ops_rps, mut ops_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round_index in 0..rounds {
        // Alternate which side goes first, so neither always gets the warmer machine.
        let order: [&'static str; 2] = if round_index % 2 == 0 {
            ["/plain", "/admin/commands/dispatch"]
        } else {
            ["/admin/commands/dispatch", "/plain"]
        };
        for path in order {
            let (rps, p99) = load(addr, path, requests);
            if path == "/plain" {
                plain_rps.push(rps);
                plain_p99.push(p99);
            } else {
                ops_rps.push(rps);
                ops_p99.push(p99);
            }
        }
    }
    let foreign = load_before.and_then(CpuTicks::foreign_share);
    // The ratios are medians of each round's pair (the two sides ran back to back, so a slow
    // stretch of the machine hits both), not ratios of the separate medians.
    let paired = |ops: &[f64], plain: &[f64]| {
        let mut ratios: Vec<f64> = ops.iter().zip(plain).map(|(o, p)| o / p).collect();
        median(&mut ratios)
    };
    let throughput_ratio = round(paired(&ops_rps, &plain_rps), 4);
    let p99_ratio = round(paired(&ops_p99, &plain_p99), 4);
    let (plain_rps, plain_p99) = (median(&mut plain_rps), median(&mut plain_p99));
    let (ops_rps, ops_p99) = (median(&mut ops_rps), median(&mut ops_p99));
    let scenarios = [
        Scenario {
            id: "opshttp/dispatch_throughput_vs_plain_axum",
            issue: 5,
            value: round(ops_rps, 1),
            baseline: round(plain_rps, 1),
            unit: "requests/s",
            ratio: throughput_ratio,
            target: Target {
                op: ">=",
                value: 0.8,
            },
            pass: throughput_ratio >= 0.8,
        },
        Scenario {
            id: "opshttp/dispatch_p99_vs_plain_axum",
            issue: 5,
            value: round(ops_p99, 1),
            baseline: round(plain_p99, 1),
            unit: "us",
            ratio: p99_ratio,
            target: Target {
                op: "<=",
                value: 1.5,
            },
            pass: p99_ratio <= 1.5,
        },
    ];
    let path = write_report("opshttp.json", &scenarios);
    println!(
        "opshttp dispatch over loopback ({CONNECTIONS} connections, {requests} requests, median of {rounds} rounds):"
    );
    println!(
        "  throughput: {ops_rps:.0} req/s vs plain axum {plain_rps:.0} req/s: ratio {throughput_ratio} (target >= 0.8)"
    );
    println!(
        "  p99:        {ops_p99:.1} us vs plain axum {plain_p99:.1} us: ratio {p99_ratio} (target <= 1.5)"
    );
    if let Some(share) = foreign {
        println!(
            "  other processes used {:.0}% of the machine meanwhile",
            share * 100.0
        );
    }
    println!("  report part: {}", path.display());

    // Criterion: one request's round trip on each side, on one warm connection.
    let mut criterion = if quick {
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
    } else {
        Criterion::default()
    }
    .configure_from_args();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut group = criterion.benchmark_group("opshttp_round_trip");
    for (name, path) in [
        ("plain_axum", "/plain"),
        ("dispatch", "/admin/commands/dispatch"),
    ] {
        let mut connection = client.block_on(Connection::open(addr, path));
        group.bench_function(name, |b| {
            b.iter(|| client.block_on(connection.round_trip()));
        });
        black_box(&connection.buffer);
    }
    group.finish();
    criterion.final_summary();
    drop(server);
}
