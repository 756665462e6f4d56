//! The harness of the demo's process tests: runs the demo binary as a user would, on a free
//! loopback port, reads its output lines, and talks to it over real HTTP. Every wait has a
//! deadline on an event (a line of output, an HTTP answer, the process's exit), never a sleep.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The line the demo prints once it is up.
pub const RUNNING: &str = "demo: running; press Ctrl-C to stop";

/// Bound on the demo's startup (a debug build on a busy machine).
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Bound on the shutdown (maintenance's stop hook alone takes about 2 s).
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// A running demo process, its output lines and its exit status, each delivered by a thread.
pub struct Demo {
    pid: u32,
    addr: Option<SocketAddr>,
    lines: Receiver<String>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    pub transcript: Vec<String>,
    exited: bool,
}

impl Demo {
    /// Starts the demo on a free loopback port with these extra environment variables, and
    /// waits until it runs.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-demo"))
            .args(["--addr", "127.0.0.1:0"])
            .env_remove("WORKERKIT_DEMO_TOKEN")
            .env_remove("WORKERKIT_DEMO_ADDR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        let pid = child.id();
        let stdout = child.stdout.take().expect("the demo's stdout is piped");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });
        let mut demo = Self {
            pid,
            addr: None,
            lines,
            exit,
            transcript: Vec::new(),
            exited: false,
        };
        let line = demo.expect_line("demo: listening on http://", STARTUP_LIMIT);
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|addr| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        demo.addr = Some(addr);
        demo.expect_line(RUNNING, STARTUP_LIMIT);
        demo
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    pub fn output(&self) -> String {
        self.transcript.join("\n")
    }

    /// Reads output until a line contains `needle`, failing after `limit`; returns the line.
    pub fn expect_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.transcript.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no line containing {needle:?} within {limit:?}; output so far:\n{}",
                    self.output()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the demo closed its output before printing {needle:?}; output:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid, signal);
    }

    /// Waits for the exit and the rest of the output, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = match self.exit.recv_timeout(limit) {
            Ok(status) => status.expect("wait for the demo"),
            Err(_) => panic!(
                "the demo did not exit within {limit:?}; output so far:\n{}",
                self.output()
            ),
        };
        self.exited = true;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.transcript.push(line),
                Err(RecvTimeoutError::Disconnected) => return status,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the demo's output stayed open after it exited; output:\n{}",
                    self.output()
                ),
            }
        }
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.transcript.iter().any(|line| line.contains(needle))
    }
}

impl Drop for Demo {
    /// Never leaves a demo running after a failed test.
    fn drop(&mut self) {
        if !self.exited {
            // The process may have exited already: ignore the outcome.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// Sends a signal with `kill`, falling back to the shell's builtin where no `kill` binary exists.
pub fn send_signal(pid: u32, signal: &str) {
    let flag = format!("-{signal}");
    let status = Command::new("kill")
        .args([flag.as_str(), &pid.to_string()])
        .status()
        .or_else(|_| {
            Command::new("sh")
                .args(["-c", &format!("kill {flag} {pid}")])
                .status()
        })
        .expect("run kill");
    assert!(status.success(), "kill {flag} {pid} failed: {status}");
}

/// One HTTP/1.1 request on its own connection; returns the status and the body. `None` if the
/// connection was refused or cut.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A transition line of the tracing observer.
pub fn transition(worker: &str, from: &str, to: &str) -> String {
    format!(r#"worker="{worker}" lifecycle_from="{from}" lifecycle_to="{to}""#)
}
