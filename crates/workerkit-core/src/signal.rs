//! Shutdown signals: SIGTERM and SIGINT (Ctrl-C).

use std::fmt;
use std::io;

/// Which signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignalKind {
    /// SIGINT, or Ctrl-C on Windows.
    Interrupt,
    /// SIGTERM (Unix only), as sent by Kubernetes at pod termination.
    Terminate,
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// A listener for shutdown signals. The first [`recv`](Self::recv) returns the signal that should
/// start a graceful shutdown; a second `recv` returns the next signal, so callers can force the
/// stop when an operator insists.
///
/// The handlers are installed by [`shutdown_signal`] and stay installed while this value lives,
/// so a second signal is never lost, even if it arrives before the second `recv`.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn demo(runtime: workerkit_core::Runtime) -> std::io::Result<()> {
/// let mut signals = workerkit_core::signal::shutdown_signal()?;
/// let first = signals.recv().await;
/// eprintln!("{first}: shutting down gracefully; send again to force");
/// tokio::select! {
///     result = runtime.shutdown() => { let _ = result; }
///     second = signals.recv() => eprintln!("{second}: forcing exit"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ShutdownSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

/// Installs SIGTERM and SIGINT handlers and returns a [`ShutdownSignal`].
///
/// # Errors
///
/// The I/O error from installing a handler (for example outside a tokio runtime with I/O
/// enabled).
pub fn shutdown_signal() -> io::Result<ShutdownSignal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind as Kind, signal};
        Ok(ShutdownSignal {
            terminate: signal(Kind::terminate())?,
            interrupt: signal(Kind::interrupt())?,
        })
    }
    #[cfg(not(unix))]
    {
        Ok(ShutdownSignal {})
    }
}

impl ShutdownSignal {
    /// Waits for the next SIGTERM or SIGINT.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a signal that arrives while no `recv` is pending is kept for the next one.
    pub async fn recv(&mut self) -> SignalKind {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => SignalKind::Terminate,
                _ = self.interrupt.recv() => SignalKind::Interrupt,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SignalKind::Interrupt
        }
    }
}
