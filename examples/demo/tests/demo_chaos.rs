//! Runs the demo binary as a user would and crashes its supervised `chaos` worker over HTTP:
//! the worker goes `restarting` (status, event stream and logs say so) and comes back `running`
//! with one restart; then it is stopped and removed over HTTP.
//!
//! Every wait is bounded; the status is polled on real time, as a user with `curl` would.
#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Demo, SHUTDOWN_LIMIT, http, transition};

/// Bound on the whole crash-and-restart round trip (the first backoff is under 500 ms).
const RESTART_LIMIT: Duration = Duration::from_secs(30);

/// `GET /admin/workers/chaos`'s `data`.
fn chaos(addr: SocketAddr) -> Value {
    let (status, body) = http(addr, "GET", "/admin/workers/chaos", None).expect("status");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    body["data"].clone()
}

/// Opens `GET /admin/events` and returns once the stream is subscribed (the response head has
/// arrived); each event's JSON data arrives on the receiver.
fn events(addr: SocketAddr) -> Receiver<Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let request =
        format!("GET /admin/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head).expect("status line");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ") {
                let Ok(event) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// Waits for chaos's transition `from` → `to` on the event stream; returns the event.
fn expect_event(events: &Receiver<Value>, from: &str, to: &str, deadline: Instant) -> Value {
    loop {
        let event = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no chaos transition {from} -> {to} on the event stream"));
        if event["worker"] == "demo/chaos" && event["from"] == from && event["to"] == to {
            return event;
        }
    }
}

#[test]
fn a_crashed_chaos_worker_restarts_with_backoff_and_can_be_removed() {
    let mut demo = Demo::start(&[]);
    let addr = demo.addr();
    let before = chaos(addr);
    assert_eq!(before["status"]["state"], "running", "{before}");
    assert_eq!(before["status"]["restartPolicy"], "on_failure", "{before}");
    assert_eq!(before["status"]["restarts"], 0, "{before}");
    assert_eq!(before["status"]["stalled"], false, "{before}");
    let incarnation = before["status"]["incarnation"]
        .as_u64()
        .expect("incarnation");

    let stream = events(addr);
    let crash = r#"{"worker":"chaos","name":"crash"}"#;
    let (status, body) =
        http(addr, "POST", "/admin/commands/dispatch", Some(crash)).expect("crash");
    assert_eq!(status, 200, "{body}");

    // The status, polled as a user would: restarting (with the time of the restart), then
    // running again with one restart.
    let deadline = Instant::now() + RESTART_LIMIT;
    let mut restarting = None;
    let after = loop {
        let now = chaos(addr);
        let state = now["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state == "restarting" && restarting.is_none() {
            restarting = Some(now.clone());
        }
        if state == "running" && now["status"]["restarts"] == 1 {
            break now;
        }
        assert!(Instant::now() < deadline, "chaos did not come back: {now}");
        thread::yield_now();
    };
    let restarting = restarting.expect("the status showed chaos restarting");
    assert!(
        restarting["status"]["nextRestartAt"].is_string(),
        "{restarting}"
    );
    assert_eq!(
        restarting["status"]["lastExit"]["reason"], "panicked",
        "{restarting}"
    );
    assert_eq!(
        after["status"]["incarnation"].as_u64(),
        Some(incarnation + 1),
        "{after}"
    );
    assert!(after["status"].get("nextRestartAt").is_none(), "{after}");
    assert_eq!(after["status"]["gaveUp"], false, "{after}");

    // The event stream saw it all, in order.
    let failed = expect_event(&stream, "running", "restarting", deadline);
    assert!(failed["reason"].is_string(), "{failed}");
    expect_event(&stream, "restarting", "starting", deadline);
    expect_event(&stream, "starting", "running", deadline);

    // And so did the logs.
    demo.expect_line("chaos: incarnation 2 up after restart 1", RESTART_LIMIT);
    assert!(
        demo.has_line(&transition("demo/chaos", "running", "restarting")),
        "{}",
        demo.output()
    );
    assert!(
        demo.has_line("workerkit restart scheduled"),
        "{}",
        demo.output()
    );
    assert!(
        demo.has_line("workerkit worker restarted"),
        "{}",
        demo.output()
    );

    // A running worker is not removed; a stopped one is, and is gone.
    let name = r#"{"name":"chaos"}"#;
    let (status, body) = http(addr, "POST", "/admin/workers/remove", Some(name)).expect("remove");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains(r#""code":"invalid_worker_state""#), "{body}");
    let (status, body) = http(addr, "POST", "/admin/workers/stop", Some(name)).expect("stop");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(addr, "POST", "/admin/workers/remove", Some(name)).expect("remove");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"stopped""#), "{body}");
    let (status, body) = http(addr, "GET", "/admin/workers/chaos", None).expect("status");
    assert_eq!(status, 404, "{body}");

    demo.signal("TERM");
    assert_eq!(
        demo.wait_exit(SHUTDOWN_LIMIT).code(),
        Some(0),
        "{}",
        demo.output()
    );
}
