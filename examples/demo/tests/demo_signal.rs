//! Runs the demo binary as a user would, over real HTTP, and drives it with signals: SIGTERM
//! drains HTTP and commands and exits 0; a budget that runs out still stops the workers, names
//! the stragglers and exits non-zero; a second signal forces the stop.
//!
//! Every wait has a deadline on an event (a line of output, an HTTP answer, the process's exit),
//! never a sleep.
#![cfg(unix)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use support::{Demo, SHUTDOWN_LIMIT, STARTUP_LIMIT, http, transition};

/// The demo's workers, as they appear in its event lines.
const WORKERS: [&str; 6] = [
    "demo/poller",
    "demo/subscriber",
    "demo/maintenance",
    "demo/admin",
    "demo/echo",
    "demo/chaos",
];

/// Waits (bounded) until a command is in flight, as `GET /admin/commands/inflight` says;
/// returns its dispatch id.
fn wait_in_flight(addr: SocketAddr) -> String {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let (status, body) = http(addr, "GET", "/admin/commands/inflight", None).expect("inflight");
        assert_eq!(status, 200, "{body}");
        if let Some(rest) = body.split(r#""id":""#).nth(1) {
            return rest.split('"').next().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "no command in flight: {body}");
        thread::yield_now();
    }
}

/// Dispatches `echo/sleep` for `ms` on a thread; the answer arrives on the receiver.
fn sleep_command(addr: SocketAddr, ms: u64) -> Receiver<Option<(u16, String)>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let body = format!(r#"{{"worker":"echo","name":"sleep","payload":{{"ms":{ms}}}}}"#);
        let _ = tx.send(http(addr, "POST", "/admin/commands/dispatch", Some(&body)));
    });
    rx
}

#[test]
fn sigterm_lets_commands_in_flight_finish_and_exits_zero() {
    let mut demo = Demo::start(&[("WORKERKIT_DEMO_PRE_STOP_MS", "300")]);
    let addr = demo.addr();
    let (status, body) = http(addr, "GET", "/readyz", None).expect("readyz");
    assert_eq!(status, 200, "{body}");

    let answer = sleep_command(addr, 2000);
    wait_in_flight(addr);
    demo.signal("TERM");

    // Readiness goes 503 while the server still serves (the pre-stop delay).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(addr, "GET", "/readyz", None).expect("served during pre-stop");
        if status == 503 {
            assert!(body.contains(r#""status":"not_ready""#), "{body}");
            assert!(body.contains("shutting down"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {status}: {body}"
        );
    }

    let (status, body) = answer
        .recv_timeout(SHUTDOWN_LIMIT)
        .expect("an answer")
        .expect("the command's HTTP request completed");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""slept_ms":2000"#), "{body}");

    let exit = demo.wait_exit(SHUTDOWN_LIMIT);
    assert_eq!(exit.code(), Some(0), "output:\n{}", demo.output());
    // The HTTP drain let the command finish before any worker began to stop.
    let position = |needle: &str| demo.transcript.iter().position(|l| l.contains(needle));
    let finished = position(r#"command="sleep" success=true"#).expect("the command's end line");
    let first_stop = position(r#"lifecycle_to="stopping""#).expect("a stopping transition");
    assert!(finished < first_stop, "output:\n{}", demo.output());
    assert!(
        demo.has_line("demo: shutdown complete (Signal(Terminate))"),
        "{}",
        demo.output()
    );
    for worker in WORKERS {
        assert!(
            demo.has_line(&transition(worker, "stopping", "stopped")),
            "no stopped transition for {worker}; output:\n{}",
            demo.output()
        );
    }
}

#[test]
fn an_exhausted_budget_still_stops_the_workers_names_stragglers_and_exits_non_zero() {
    let mut demo = Demo::start(&[("WORKERKIT_DEMO_SHUTDOWN_BUDGET_MS", "300")]);
    let addr = demo.addr();
    let answer = sleep_command(addr, 60_000);
    let id = wait_in_flight(addr);
    demo.signal("TERM");

    let exit = demo.wait_exit(SHUTDOWN_LIMIT);
    assert_eq!(exit.code(), Some(1), "output:\n{}", demo.output());
    assert!(
        demo.has_line(&format!(
            "commands still running when the HTTP drain was cut: demo/echo/sleep ({id})"
        )),
        "the straggler is named; output:\n{}",
        demo.output()
    );
    // Its caller got an answer that says why, and the command ended with its request.
    let (status, body) = answer
        .recv_timeout(SHUTDOWN_LIMIT)
        .expect("an answer")
        .expect("the HTTP request got a response");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""code":"shutting_down""#), "{body}");
    // The workers were stopped anyway.
    assert!(
        demo.has_line(&transition("demo/echo", "stopping", "stopped")),
        "{}",
        demo.output()
    );
    assert!(
        demo.has_line(&transition("demo/poller", "stopping", "stopped")),
        "{}",
        demo.output()
    );
    assert!(
        demo.transcript.iter().any(|line| {
            line.contains("workerkit command dispatch completed")
                && line.contains(&format!("dispatch_id={id}"))
                && line.contains(r#"outcome="abandoned""#)
        }),
        "the long command ended as abandoned with its request; output:\n{}",
        demo.output()
    );
}

#[test]
fn a_second_signal_forces_the_stop() {
    let mut demo = Demo::start(&[]);
    demo.signal("TERM");
    // Maintenance stops fourth (reverse registration order) and takes about 2 s: signal again
    // while it finishes.
    demo.expect_line(
        "maintenance: finishing the current compaction",
        SHUTDOWN_LIMIT,
    );
    let forced_at = Instant::now();
    demo.signal("INT");
    let exit = demo.wait_exit(SHUTDOWN_LIMIT);
    assert_eq!(exit.code(), Some(1), "output:\n{}", demo.output());
    assert!(demo.has_line("forced=true"), "{}", demo.output());
    assert!(
        demo.transcript
            .iter()
            .any(|l| l.contains("workers that did not stop cleanly:")
                && l.contains("demo/maintenance")),
        "the unfinished worker is named; output:\n{}",
        demo.output()
    );
    assert!(
        !demo.has_line("maintenance: compaction finished"),
        "{}",
        demo.output()
    );
    assert!(
        forced_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        forced_at.elapsed()
    );
}

/// `http` with an `Authorization: Bearer` header.
fn http_with_token(addr: SocketAddr, path: &str, body: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, response)
}

#[test]
fn the_token_guards_mutating_routes_and_echo_admits_eight_at_once() {
    let mut demo = Demo::start(&[("WORKERKIT_DEMO_TOKEN", "s3cret")]);
    let addr = demo.addr();
    let echo = r#"{"worker":"echo","name":"echo","payload":{"n":1}}"#;
    let (status, body) =
        http(addr, "POST", "/admin/commands/dispatch", Some(echo)).expect("answer");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""code":"unauthorized""#), "{body}");
    let (status, body) = http_with_token(addr, "/admin/commands/dispatch", echo, "wrong");
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_with_token(addr, "/admin/commands/dispatch", echo, "s3cret");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""payload":{"n":1}"#), "{body}");
    // Read routes stay open.
    let (status, _) = http(addr, "GET", "/admin/workers/echo", None).expect("answer");
    assert_eq!(status, 200);

    // `fail` answers 500 and its fake secret stays in the process.
    let fail = r#"{"worker":"echo","name":"fail"}"#;
    let (status, body) = http_with_token(addr, "/admin/commands/dispatch", fail, "s3cret");
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("hunter2"), "{body}");

    // Eight sleeps fill echo's limit; the ninth is refused at once with a retry hint.
    let sleeps: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let body = r#"{"worker":"echo","name":"sleep","payload":{"ms":1500}}"#;
                http_with_token(addr, "/admin/commands/dispatch", body, "s3cret")
            })
        })
        .collect();
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        let (_, body) = http(addr, "GET", "/admin/commands/inflight", None).expect("inflight");
        if body.matches(r#""command":"sleep""#).count() == 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eight sleeps never in flight: {body}"
        );
        thread::yield_now();
    }
    let ninth = r#"{"worker":"echo","name":"sleep","payload":{"ms":1}}"#;
    let (status, response) = http_with_token(addr, "/admin/commands/dispatch", ninth, "s3cret");
    assert_eq!(status, 429, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after: 1"),
        "{response}"
    );
    assert!(response.contains(r#""code":"saturated""#), "{response}");
    for sleep in sleeps {
        let (status, body) = sleep.join().expect("client thread");
        assert_eq!(status, 200, "{body}");
    }
    demo.signal("TERM");
    assert_eq!(
        demo.wait_exit(SHUTDOWN_LIMIT).code(),
        Some(0),
        "{}",
        demo.output()
    );
}
