//! Runs the demo binary and drives it with signals: SIGTERM shuts it down gracefully, and a
//! second signal during the shutdown forces the exit.
//!
//! Every wait has a deadline on an event (a line of output, the process's exit), never a sleep.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The line the demo prints once it is up.
const RUNNING: &str = "demo: running; press Ctrl-C to stop";

/// Bound on the demo's startup (a debug build on a busy machine).
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Bound on the shutdown (maintenance's stop hook alone takes about 2 s).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// The demo's workers, as they appear in its event lines.
const WORKERS: [&str; 3] = ["demo/poller", "demo/subscriber", "demo/maintenance"];

/// A running demo process, its output lines and its exit status, each delivered by a thread.
struct Demo {
    pid: u32,
    lines: Receiver<String>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    transcript: Vec<String>,
    exited: bool,
}

impl Demo {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-demo"))
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
        Self {
            pid,
            lines,
            exit,
            transcript: Vec::new(),
            exited: false,
        }
    }

    fn output(&self) -> String {
        self.transcript.join("\n")
    }

    /// Reads output until a line contains `needle`, failing after `limit`.
    fn expect_line(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.transcript.push(line);
                    if found {
                        return;
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
    fn signal(&self, signal: &str) {
        send_signal(self.pid, signal);
    }

    /// Waits for the exit and the rest of the output, failing after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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

    fn has_line(&self, needle: &str) -> bool {
        self.transcript.iter().any(|line| line.contains(needle))
    }
}

impl Drop for Demo {
    /// Never leaves a demo running after a failed test.
    fn drop(&mut self) {
        if !self.exited {
            send_signal(self.pid, "KILL");
        }
    }
}

/// Sends a signal with `kill`, falling back to the shell's builtin where no `kill` binary exists.
fn send_signal(pid: u32, signal: &str) {
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

#[test]
fn sigterm_shuts_the_demo_down_gracefully() {
    let mut demo = Demo::start();
    demo.expect_line(RUNNING, STARTUP_LIMIT);
    assert!(demo.has_line("status: {"), "{}", demo.output());

    demo.signal("TERM");
    let status = demo.wait_exit(SHUTDOWN_LIMIT);

    assert_eq!(status.code(), Some(0), "output:\n{}", demo.output());
    assert!(
        demo.has_line("demo: SIGTERM received; shutting down gracefully"),
        "{}",
        demo.output()
    );
    assert!(
        demo.has_line("demo: shutdown complete: stopped"),
        "{}",
        demo.output()
    );
    for worker in WORKERS {
        assert!(
            demo.has_line(&format!("{worker}: stopping -> stopped")),
            "no stopped transition for {worker}; output:\n{}",
            demo.output()
        );
    }
    assert!(
        demo.has_line("demo (runtime): stopping -> stopped"),
        "{}",
        demo.output()
    );
}

#[test]
fn second_signal_during_shutdown_forces_exit() {
    let mut demo = Demo::start();
    demo.expect_line(RUNNING, STARTUP_LIMIT);

    demo.signal("TERM");
    // Maintenance stops first (reverse registration order) and takes about 2 s: signal again
    // while it finishes.
    demo.expect_line(
        "maintenance: finishing the current compaction",
        SHUTDOWN_LIMIT,
    );
    demo.signal("INT");
    let status = demo.wait_exit(SHUTDOWN_LIMIT);

    assert_eq!(status.code(), Some(130), "output:\n{}", demo.output());
    assert!(
        demo.has_line("demo: SIGINT received during shutdown; forcing exit"),
        "{}",
        demo.output()
    );
    assert!(
        !demo.has_line("demo: shutdown complete"),
        "{}",
        demo.output()
    );
}
