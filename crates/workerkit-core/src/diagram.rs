//! A Mermaid rendering of a runtime: the runtime, its workers in registration order, their
//! states, readiness, incarnations, restarts (and give-ups and stalls) and in-flight commands, for a README, a dashboard or an
//! operator's terminal (`GET {p}/diagram` in `workerkit-opshttp`).
//!
//! ```
//! use workerkit_core::{Runtime, WorkerSpec, worker_fn};
//!
//! let runtime = Runtime::builder("billing").build()?;
//! runtime.register(WorkerSpec::new("invoicer", worker_fn(|_ctx| async { Ok(()) })))?;
//! let text = workerkit_core::diagram::mermaid(&runtime.status(), &runtime.workers());
//! assert!(text.starts_with("flowchart LR\n"));
//! assert!(text.contains("invoicer"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Node ids are generated (`runtime`, `w0`, `w1`, …) and every label is escaped, so any name
//! gives a valid diagram: characters other than ASCII letters, digits, space and `_ . / -` are
//! written as Mermaid entity codes (`#35;`).

use std::fmt::Write as _;

use crate::LifecycleState;
use crate::status::{RuntimeStatus, WorkerSnapshot};

/// Renders the runtime and its workers as a Mermaid `flowchart`, one node per worker, coloured
/// by lifecycle state.
#[must_use]
pub fn mermaid(status: &RuntimeStatus, workers: &[WorkerSnapshot]) -> String {
    let mut out = String::with_capacity(256 + workers.len() * 160);
    out.push_str("flowchart LR\n");
    let _ = writeln!(
        out,
        "    runtime[\"{}<br/>{}\"]",
        escape(&status.name),
        summary(status.state, status.ready, status.in_flight, None)
    );
    let _ = writeln!(out, "    class runtime {}", status.state.as_str());
    for (index, worker) in workers.iter().enumerate() {
        let s = &worker.status;
        let _ = writeln!(
            out,
            "    runtime --> w{index}[\"{}<br/>{}\"]",
            escape(&worker.name),
            summary(s.state, s.ready, s.in_flight, Some(s.incarnation)) + &supervision(s)
        );
        let _ = writeln!(out, "    class w{index} {}", s.state.as_str());
    }
    for (state, style) in STYLES {
        let _ = writeln!(out, "    classDef {} {style}", state.as_str());
    }
    out
}

/// One colour per state: green running, amber in transition, grey idle, red failed.
const STYLES: [(LifecycleState, &str); 8] = [
    (LifecycleState::Registered, "fill:#eeeeee,stroke:#999999"),
    (LifecycleState::Starting, "fill:#fff3cd,stroke:#d39e00"),
    (LifecycleState::Running, "fill:#d4edda,stroke:#28a745"),
    (LifecycleState::Draining, "fill:#fff3cd,stroke:#d39e00"),
    (LifecycleState::Stopping, "fill:#fff3cd,stroke:#d39e00"),
    (LifecycleState::Stopped, "fill:#eeeeee,stroke:#999999"),
    (LifecycleState::Failed, "fill:#f8d7da,stroke:#dc3545"),
    (LifecycleState::Restarting, "fill:#ffe5b4,stroke:#fd7e14"),
];

/// The supervision badges of a worker: restarts, a pending restart, a give-up, a stall.
fn supervision(s: &crate::status::WorkerStatus) -> String {
    let mut text = String::new();
    if s.restarts > 0 {
        let _ = write!(text, " · restarts {}", s.restarts);
    }
    if s.gave_up {
        text.push_str(" · gave up");
    }
    if s.stalled {
        text.push_str(" · stalled");
    }
    text
}

fn summary(
    state: LifecycleState,
    ready: bool,
    in_flight: usize,
    incarnation: Option<u64>,
) -> String {
    let mut text = format!(
        "{} · {}",
        state.as_str(),
        if ready { "ready" } else { "not ready" }
    );
    if let Some(incarnation) = incarnation.filter(|n| *n > 0) {
        let _ = write!(text, " · incarnation {incarnation}");
    }
    if in_flight > 0 {
        let _ = write!(text, " · {in_flight} in flight");
    }
    text
}

/// Escapes a label: anything but ASCII letters, digits, space and `_ . / -` becomes a Mermaid
/// entity code, so quotes, brackets, `<`, `#`, `;` and newlines cannot break the syntax.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '/' | '-') {
            out.push(c);
        } else {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn labels_cannot_break_out_of_their_quotes() {
        let hostile = "a\"]-->x[\"<script>#;\n`é";
        let escaped = escape(hostile);
        assert!(
            escaped
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " _./-#;".contains(c)),
            "{escaped}"
        );
        assert_eq!(
            escaped,
            "a#34;#93;--#62;x#91;#34;#60;script#62;#35;#59;#10;#96;#233;"
        );
        assert_eq!(escape("ingest-2.eu/west_1"), "ingest-2.eu/west_1");
    }
}
