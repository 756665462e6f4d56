//! End to end, as a user would run it: the demo exports over real OTLP/HTTP to a receiver
//! started here on a loopback port. A dispatch over HTTP with a `traceparent` header continues
//! that trace; the service name comes from `OTEL_SERVICE_NAME`; the metrics arrive; and all of
//! it is delivered by the flush at shutdown after SIGTERM (the exporters' own schedules are set
//! far beyond the test).
//!
//! Every wait is bounded and waits for an event (a line of output, a request, the exit).
#![cfg(unix)]

#[path = "../../observability-otel/tests/support/otlp_receiver.rs"]
mod otlp_receiver;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use otlp_receiver::{OtlpReceiver, attribute, hex};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const SERVICE: &str = "demo-e2e";
/// Bound on the demo's startup (a debug build on a busy machine) and on its shutdown.
const LIMIT: Duration = Duration::from_secs(60);

async fn dispatch_with_traceparent(addr: SocketAddr) -> String {
    let body = r#"{"worker":"echo","name":"echo","payload":{"traced":true}}"#;
    let request = format!(
        "POST /admin/commands/dispatch HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\ntraceparent: 00-{TRACE_ID}-{PARENT_SPAN_ID}-01\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exports_a_callers_trace_and_metrics_over_otlp() {
    let receiver = OtlpReceiver::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-demo"))
        .args(["--addr", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("WORKERKIT_DEMO_TOKEN")
        .env_remove("WORKERKIT_DEMO_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut transcript = Vec::new();
    let addr: SocketAddr = tokio::time::timeout(LIMIT, async {
        let mut addr = None;
        while let Some(line) = lines.next_line().await.expect("read the demo's output") {
            if let Some(rest) = line.split("demo: listening on http://").nth(1) {
                addr = rest.trim().parse().ok();
            }
            let running = line.contains("demo: running");
            transcript.push(line);
            if running {
                return addr.expect("the address was printed");
            }
        }
        panic!("the demo ended before running: {transcript:#?}");
    })
    .await
    .expect("the demo started");
    assert!(
        transcript
            .iter()
            .any(|l| l.contains("exporting traces and metrics over OTLP/HTTP")),
        "{transcript:#?}"
    );

    let response = dispatch_with_traceparent(addr).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        receiver.received().spans().is_empty(),
        "batched: nothing is exported before the shutdown"
    );
    // Keep draining the demo's output so it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the demo exits after SIGTERM")
        .expect("wait for the demo");
    assert!(exit.success(), "exit status {exit}");
    drain.abort();

    let arrived = receiver
        .wait_until(
            |r| {
                r.spans()
                    .iter()
                    .any(|(_, s)| s.name == "workerkit.command echo")
                    && r.metrics()
                        .iter()
                        .any(|(_, m)| m.name == "workerkit.command.dispatches")
            },
            LIMIT,
        )
        .await;
    let received = receiver.received();
    assert!(arrived, "spans and metrics arrived: {received:#?}");

    let spans = received.spans();
    let (service, echo) = spans
        .iter()
        .find(|(_, s)| s.name == "workerkit.command echo")
        .expect("the command span");
    assert_eq!(service, SERVICE);
    assert_eq!(
        hex(&echo.trace_id),
        TRACE_ID,
        "the caller's trace continues"
    );
    assert_eq!(hex(&echo.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(
        attribute(&echo.attributes, "workerkit.worker").as_deref(),
        Some("demo/echo")
    );
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.name == "workerkit.lifecycle shutdown"),
        "the shutdown's own span is flushed too"
    );
    let metrics = received.metrics();
    let (service, _) = metrics
        .iter()
        .find(|(_, m)| m.name == "workerkit.command.dispatches")
        .expect("the dispatch counter");
    assert_eq!(service, SERVICE);
}
