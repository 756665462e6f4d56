//! Failure presentation: what the world may see of an error, kept apart from the error itself.
//!
//! Status, events' public fields, logs, telemetry and HTTP only ever show a [`Failure`]: a stable
//! `code` and a safe `message`. The error that caused it (which may hold a DSN, a token or a
//! customer's data in its text) is the private *cause*: returned to the direct caller and handed to
//! observers as `cause`, never formatted into public fields.
//!
//! A worker chooses its public presentation by wrapping an error with [`with_failure`]; without
//! one, the runtime uses a generic code and message for the path (`worker_failed`, ...).
//!
//! ```
//! use workerkit_core::failure::{self, Failure};
//!
//! let cause = std::io::Error::other("connect postgres://admin:hunter2@db failed");
//! let err = failure::with_failure(cause, "database_unavailable", "database unavailable");
//! let public = Failure::from_error(&*err, Failure::worker_failed());
//! assert_eq!(public.code(), "database_unavailable");
//! assert!(!public.message().contains("hunter2"));
//! ```

use std::any::Any;
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::panic::AssertUnwindSafe;

/// A boxed error, as returned by worker code.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Stable public failure codes used by the runtime itself.
pub mod code {
    /// A worker operation failed (the generic code for worker paths).
    pub const WORKER_FAILED: &str = "worker_failed";
    /// A loop worker's cleanup hook failed.
    pub const LOOP_CLEANUP_FAILED: &str = "loop_cleanup_failed";
    /// A loop worker's loop returned although nobody asked it to stop.
    pub const LOOP_EXITED_UNEXPECTEDLY: &str = "loop_exited_unexpectedly";
    /// A command failed (the generic code for command paths).
    pub const COMMAND_FAILED: &str = "command_failed";
    /// An operation ran out of time.
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    /// An operation was cancelled.
    pub const CANCELED: &str = "canceled";
    /// Worker code panicked.
    pub const PANIC: &str = "panic";
    /// A worker's watchdog found no heartbeat within its timeout.
    pub const STALLED: &str = "stalled";
}

/// The public face of a failure: a stable code and a safe message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Failure {
    code: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl Failure {
    /// A failure with the given code and message.
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The generic failure of a worker path: `worker_failed` / "worker operation failed".
    #[must_use]
    pub const fn worker_failed() -> Self {
        Self::from_static(code::WORKER_FAILED, "worker operation failed")
    }

    /// The generic failure of a command path: `command_failed` / "command failed".
    #[must_use]
    pub const fn command_failed() -> Self {
        Self::from_static(code::COMMAND_FAILED, "command failed")
    }

    /// `deadline_exceeded` / "operation deadline exceeded".
    #[must_use]
    pub const fn deadline_exceeded() -> Self {
        Self::from_static(code::DEADLINE_EXCEEDED, "operation deadline exceeded")
    }

    /// `canceled` / "operation canceled".
    #[must_use]
    pub const fn canceled() -> Self {
        Self::from_static(code::CANCELED, "operation canceled")
    }

    /// `loop_exited_unexpectedly` / "loop worker exited unexpectedly".
    #[must_use]
    pub const fn loop_exited_unexpectedly() -> Self {
        Self::from_static(
            code::LOOP_EXITED_UNEXPECTEDLY,
            "loop worker exited unexpectedly",
        )
    }

    /// `loop_cleanup_failed` / "loop worker cleanup failed".
    #[must_use]
    pub const fn loop_cleanup_failed() -> Self {
        Self::from_static(code::LOOP_CLEANUP_FAILED, "loop worker cleanup failed")
    }

    /// `panic` / "recovered panic during `operation`".
    pub fn panic(operation: impl fmt::Display) -> Self {
        Self::new(code::PANIC, format!("recovered panic during {operation}"))
    }

    const fn from_static(code: &'static str, message: &'static str) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: Cow::Borrowed(message),
        }
    }

    /// The stable code, e.g. `worker_failed`.
    #[must_use]
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The safe, human-readable message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Projects an error to its public face.
    ///
    /// Walks the `source()` chain for the first [`OperationalFailure`] (made by [`with_failure`])
    /// and uses its code and message; otherwise a timeout maps to `deadline_exceeded`, and
    /// anything else to `fallback`. The error's own `Display` text is never used, and a broken
    /// error chain (a panicking `source()`) gives `fallback`.
    #[must_use]
    pub fn from_error(err: &(dyn StdError + 'static), fallback: Self) -> Self {
        std::panic::catch_unwind(AssertUnwindSafe(|| project(err)))
            .ok()
            .flatten()
            .unwrap_or(fallback)
    }
}

fn project(err: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        if let Some(op) = e.downcast_ref::<OperationalFailure>() {
            return Some(op.failure.clone());
        }
        if let Some(p) = e.downcast_ref::<PanicError>() {
            return Some(p.failure.clone());
        }
        if let Some(p) = e.downcast_ref::<crate::command::PayloadError>() {
            return Some(p.failure());
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return Some(Failure::deadline_exceeded());
        }
        depth += 1;
        if depth > 64 {
            break;
        }
        current = e.source();
    }
    None
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An error carrying an explicit public presentation.
///
/// Its `Display` is the public message; its `source()` is the private cause.
#[derive(Debug)]
pub struct OperationalFailure {
    failure: Failure,
    cause: BoxError,
}

impl OperationalFailure {
    /// The public presentation.
    #[must_use]
    pub fn failure(&self) -> &Failure {
        &self.failure
    }

    /// The private cause.
    #[must_use]
    pub fn cause(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.cause
    }
}

impl fmt::Display for OperationalFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.failure.message())
    }
}

impl StdError for OperationalFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.cause)
    }
}

/// Wraps `cause` with an explicit public `code` and `message`.
///
/// Status, events and telemetry show the code and message; the cause stays private.
pub fn with_failure(
    cause: impl Into<BoxError>,
    code: impl Into<Cow<'static, str>>,
    message: impl Into<Cow<'static, str>>,
) -> BoxError {
    Box::new(OperationalFailure {
        failure: Failure::new(code, message),
        cause: cause.into(),
    })
}

/// The longest panic description kept, in bytes.
pub const MAX_PANIC_DESCRIPTION: usize = 256;

/// A recovered panic, as a private cause.
///
/// Its `Display` is the public message (`recovered panic during ...`); the panic's own message,
/// when it was a string, is available from [`PanicError::payload_description`], truncated to
/// [`MAX_PANIC_DESCRIPTION`] bytes. Non-string payloads are described as such.
#[derive(Debug, Clone)]
pub struct PanicError {
    failure: Failure,
    description: String,
}

impl PanicError {
    pub(crate) fn new(operation: impl fmt::Display, payload: &(dyn Any + Send)) -> Self {
        Self {
            failure: Failure::panic(operation),
            description: describe_panic(payload),
        }
    }

    /// The public presentation (`panic` / `recovered panic during ...`).
    #[must_use]
    pub fn failure(&self) -> &Failure {
        &self.failure
    }

    /// The panic's message, bounded. Private: may contain anything the panicking code formatted.
    #[must_use]
    pub fn payload_description(&self) -> &str {
        &self.description
    }
}

impl fmt::Display for PanicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.failure.message())
    }
}

impl StdError for PanicError {}

/// Describes a panic payload in a bounded string.
pub(crate) fn describe_panic(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        return "non-string panic payload".to_owned();
    };
    truncate(text, MAX_PANIC_DESCRIPTION)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "wrapped: {}", self.0)
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn plain_errors_use_the_fallback_and_never_their_text() {
        let err = std::io::Error::other("password=hunter2");
        let f = Failure::from_error(&err, Failure::worker_failed());
        assert_eq!(f, Failure::worker_failed());
    }

    #[test]
    fn explicit_presentation_is_found_through_wrappers() {
        let inner = with_failure(std::io::Error::other("secret"), "db_down", "database down");
        let outer = Wrapper(inner);
        let f = Failure::from_error(&outer, Failure::worker_failed());
        assert_eq!((f.code(), f.message()), ("db_down", "database down"));
        // The cause stays reachable for the direct caller.
        let op = outer.0.downcast_ref::<OperationalFailure>().unwrap();
        assert_eq!(op.cause().to_string(), "secret");
    }

    #[derive(Debug)]
    struct BrokenChain;
    impl fmt::Display for BrokenChain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("broken")
        }
    }
    impl StdError for BrokenChain {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            panic!("broken source chain")
        }
    }

    #[test]
    fn a_panicking_error_chain_gives_the_fallback() {
        let f = Failure::from_error(&BrokenChain, Failure::command_failed());
        assert_eq!(f, Failure::command_failed());
    }

    #[test]
    fn panic_descriptions_are_bounded_and_typed() {
        let long: Box<dyn Any + Send> = Box::new("x".repeat(10_000));
        assert!(describe_panic(&*long).len() <= MAX_PANIC_DESCRIPTION + '…'.len_utf8());
        let number: Box<dyn Any + Send> = Box::new(42_u32);
        assert_eq!(describe_panic(&*number), "non-string panic payload");
        let s: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(describe_panic(&*s), "boom");
    }

    #[test]
    fn failure_json_shape() {
        let json = serde_json::to_string(&Failure::worker_failed()).unwrap();
        assert_eq!(
            json,
            r#"{"code":"worker_failed","message":"worker operation failed"}"#
        );
    }
}
