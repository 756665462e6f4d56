//! The control-plane API: what an operations surface may read from and ask of a runtime.
//!
//! [`Runtime`] implements three traits, split by what a caller may do:
//!
//! - [`Inspect`]: read-only status, worker snapshots, command discovery, in-flight commands,
//!   readiness and liveness. Never calls worker code.
//! - [`Dispatch`]: run a worker's command, cancel one in flight.
//! - [`Control`]: lifecycle operations on one worker or on the whole runtime.
//!
//! Adapters such as `workerkit-opshttp` are written against these traits, never against
//! `Runtime`'s internals, so they can be tested with a fake and cannot reach past the public
//! contract. The methods mirror `Runtime`'s inherent methods of the same names, which document
//! the semantics.
//!
//! ```
//! use workerkit_core::control::{Control, Inspect};
//!
//! // Anything that can be inspected and controlled: a `Runtime`, or a test double.
//! async fn restart<R: Inspect + Control>(runtime: &R, worker: &str) -> bool {
//!     let _ = runtime.stop(worker).await;
//!     runtime.start(worker).await.is_ok() && runtime.worker(worker).is_some()
//! }
//! # let _ = restart::<workerkit_core::Runtime>;
//! ```

use std::future::Future;
use std::time::Duration;

use crate::Runtime;
use crate::command::{
    CancelError, CommandInfo, CommandRequest, CommandResult, DispatchError, DispatchId,
    InFlightCommand,
};
use crate::error::{LifecycleError, ShutdownError, ShutdownReport};
use crate::observe::EventStream;
use crate::runtime::ShutdownOptions;
use crate::status::{Liveness, Readiness, RuntimeStatus, WorkerSnapshot, WorkerStatus};

/// Read-only inspection of a runtime. No method calls worker code or waits.
pub trait Inspect: Send + Sync {
    /// The runtime's name.
    fn name(&self) -> &str;
    /// The runtime's aggregate status.
    fn status(&self) -> RuntimeStatus;
    /// Every worker, in registration order.
    fn workers(&self) -> Vec<WorkerSnapshot>;
    /// One worker by local or qualified name; `None` if unknown or malformed.
    fn worker(&self, name: &str) -> Option<WorkerSnapshot>;
    /// A worker's commands; `None` for an unknown worker.
    fn commands(&self, worker: &str) -> Option<Vec<CommandInfo>>;
    /// Every worker's commands.
    fn all_commands(&self) -> Vec<CommandInfo>;
    /// The commands in flight, oldest first.
    fn in_flight(&self) -> Vec<InFlightCommand>;
    /// The readiness roll-up, one item per worker.
    fn readiness(&self) -> Readiness;
    /// Whether the process should be restarted, and why.
    fn liveness(&self) -> Liveness;
    /// Every lifecycle transition from now on; see [`Runtime::events`].
    fn events(&self) -> EventStream;
}

/// Command dispatch and cancellation.
pub trait Dispatch: Send + Sync {
    /// Runs a command; see [`Runtime::dispatch`].
    fn dispatch(
        &self,
        request: CommandRequest,
    ) -> impl Future<Output = Result<CommandResult, DispatchError>> + Send;
    /// Cancels an in-flight command; see [`Runtime::cancel`].
    ///
    /// # Errors
    ///
    /// As [`Runtime::cancel`].
    fn cancel(&self, id: DispatchId) -> Result<(), CancelError>;
}

/// Lifecycle control of workers and of the whole runtime.
pub trait Control: Send + Sync {
    /// Starts one worker; see [`Runtime::start`].
    fn start(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send;
    /// Drains one worker; see [`Runtime::drain`].
    fn drain(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send;
    /// Stops one worker at once; see [`Runtime::stop`].
    fn stop(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send;
    /// Drains one worker, waits up to `idle_timeout` for its commands, then stops it; see
    /// [`Runtime::shutdown_worker`].
    fn shutdown_worker(
        &self,
        worker: &str,
        idle_timeout: Duration,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send;
    /// Starts every worker; see [`Runtime::start_all`].
    fn start_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send;
    /// Drains every worker; see [`Runtime::drain_all`].
    fn drain_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send;
    /// Stops every worker; see [`Runtime::stop_all`].
    fn stop_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send;
    /// Removes a registered, stopped or failed worker with no command in flight, and returns
    /// its last snapshot; see [`Runtime::remove`].
    fn remove(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerSnapshot, LifecycleError>> + Send;
    /// Graceful shutdown with the given budgets; see [`Runtime::shutdown_with`].
    fn shutdown_with(
        &self,
        options: ShutdownOptions,
    ) -> impl Future<Output = Result<ShutdownReport, ShutdownError>> + Send;
    /// Graceful shutdown with the configured budgets; see [`Runtime::shutdown`].
    fn shutdown(&self) -> impl Future<Output = Result<ShutdownReport, ShutdownError>> + Send;
    /// Makes a running or later shutdown stop waiting for in-flight commands; see
    /// [`Runtime::force_shutdown`].
    fn force_shutdown(&self);
}

impl Inspect for Runtime {
    fn name(&self) -> &str {
        Self::name(self)
    }
    fn status(&self) -> RuntimeStatus {
        Self::status(self)
    }
    fn workers(&self) -> Vec<WorkerSnapshot> {
        Self::workers(self)
    }
    fn worker(&self, name: &str) -> Option<WorkerSnapshot> {
        Self::worker(self, name)
    }
    fn commands(&self, worker: &str) -> Option<Vec<CommandInfo>> {
        Self::commands(self, worker)
    }
    fn all_commands(&self) -> Vec<CommandInfo> {
        Self::all_commands(self)
    }
    fn in_flight(&self) -> Vec<InFlightCommand> {
        Self::in_flight(self)
    }
    fn readiness(&self) -> Readiness {
        Self::readiness(self)
    }
    fn liveness(&self) -> Liveness {
        Self::liveness(self)
    }
    fn events(&self) -> EventStream {
        Self::events(self)
    }
}

impl Dispatch for Runtime {
    fn dispatch(
        &self,
        request: CommandRequest,
    ) -> impl Future<Output = Result<CommandResult, DispatchError>> + Send {
        Self::dispatch(self, request)
    }
    fn cancel(&self, id: DispatchId) -> Result<(), CancelError> {
        Self::cancel(self, id)
    }
}

impl Control for Runtime {
    fn start(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send {
        Self::start(self, worker)
    }
    fn drain(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send {
        Self::drain(self, worker)
    }
    fn stop(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send {
        Self::stop(self, worker)
    }
    fn shutdown_worker(
        &self,
        worker: &str,
        idle_timeout: Duration,
    ) -> impl Future<Output = Result<WorkerStatus, LifecycleError>> + Send {
        Self::shutdown_worker(self, worker, idle_timeout)
    }
    fn start_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        Self::start_all(self)
    }
    fn drain_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        Self::drain_all(self)
    }
    fn stop_all(&self) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        Self::stop_all(self)
    }
    fn remove(
        &self,
        worker: &str,
    ) -> impl Future<Output = Result<WorkerSnapshot, LifecycleError>> + Send {
        Self::remove(self, worker)
    }
    fn shutdown_with(
        &self,
        options: ShutdownOptions,
    ) -> impl Future<Output = Result<ShutdownReport, ShutdownError>> + Send {
        Self::shutdown_with(self, options)
    }
    fn shutdown(&self) -> impl Future<Output = Result<ShutdownReport, ShutdownError>> + Send {
        Self::shutdown(self)
    }
    fn force_shutdown(&self) {
        Self::force_shutdown(self);
    }
}

impl Runtime {
    /// Graceful shutdown of one worker: drain it (if it runs), wait up to `idle_timeout` for
    /// its in-flight commands, then stop it — also when the wait ran out, so the worker is
    /// stopped either way (its remaining commands then end as the worker's stop dictates).
    ///
    /// A worker that is not running is just stopped, with [`stop`](Self::stop)'s rules (a
    /// worker already stopped is an invalid state, as for `stop`). The three steps are separate
    /// lifecycle operations: another operation may run between them.
    ///
    /// # Errors
    ///
    /// As [`drain`](Self::drain) (except an invalid state, which skips the drain) and
    /// [`stop`](Self::stop).
    pub async fn shutdown_worker(
        &self,
        worker: &str,
        idle_timeout: Duration,
    ) -> Result<WorkerStatus, LifecycleError> {
        match self.drain(worker).await {
            Ok(_) | Err(LifecycleError::InvalidState { .. }) => {}
            Err(err) => return Err(err),
        }
        let _ = tokio::time::timeout(idle_timeout, self.wait_idle(worker)).await;
        self.stop(worker).await
    }

    /// Makes a shutdown stop waiting for in-flight commands: a shutdown in progress (or the next
    /// one) skips the rest of its idle wait and stops every worker at once, with its stop grace
    /// as the budget. What the commands still running then get is what their worker's stop
    /// gives them. For a second SIGTERM, or an operator who cannot wait. Irreversible.
    pub fn force_shutdown(&self) {
        self.inner.force.cancel();
    }
}
