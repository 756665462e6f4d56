//! Workers: the `Worker` trait, its adapters, and `WorkerSpec` (a worker plus its registration).

pub(crate) mod check;
mod context;
mod loop_worker;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use check::{DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, ReadinessCheck};
pub use context::{StopSignal, WorkerContext};
pub use loop_worker::{DEFAULT_CLEANUP_TIMEOUT, LoopError, LoopWorker};
pub(crate) use loop_worker::{
    batched as batched_loops, deferred_wakes as deferred_loop_wakes, flush as flush_loops,
};

use crate::failure::BoxError;
use crate::observe::BoxFuture;
use crate::policy::{FailurePolicy, PanicPolicy};

/// A long-lived unit of work that the runtime starts and stops.
///
/// Most workers are a [`LoopWorker`] ("run this loop until asked to stop") or a closure
/// ([`worker_fn`]); implement the trait by hand when start and stop need state of their own.
///
/// # Contract
///
/// - `start` may return once the worker is up, after launching background work; spawn that work
///   with [`WorkerContext::spawn`] (or watch [`WorkerContext::stop_signal`]) so it ends with the
///   incarnation.
/// - A failed `start` must leave the worker safe for a later `stop` or `start`; the runtime never
///   calls `stop` from inside a failing `start`.
/// - `stop` must tolerate partial startup, an earlier failure, and repeated calls.
/// - The runtime enforces the start and stop timeouts by dropping the future at the deadline
///   (and firing the stop signal), so both must be cancel-safe: hold no state across an `.await`
///   that would be corrupt if the future were dropped there.
/// - Neither method may call the runtime's lifecycle operations (`start`, `stop`, ...): such a
///   call returns [`LifecycleError::Reentrant`](crate::error::LifecycleError::Reentrant).
/// - `start` need not be idempotent: the runtime never calls it on a running worker.
/// - A panic in either method is caught and handled by the worker's [`PanicPolicy`].
pub trait Worker: Send + 'static {
    /// Starts the worker. The context is this incarnation's; keep a clone to report readiness
    /// and failures later.
    fn start(&mut self, ctx: WorkerContext) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Stops the worker. Called once per requested stop, after the stop signal has fired
    /// ([`WorkerContext::is_stop_requested`] is true). Tasks waiting on the signal are woken
    /// once this future has been polled the first time: do not block the thread in that first
    /// poll waiting for them.
    fn stop(&mut self, ctx: WorkerContext) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The object-safe form of [`Worker`], used inside the runtime.
pub(crate) trait DynWorker: Send + 'static {
    fn start_dyn(&mut self, ctx: WorkerContext) -> BoxFuture<'_, Result<(), BoxError>>;
    fn stop_dyn(&mut self, ctx: WorkerContext) -> BoxFuture<'_, Result<(), BoxError>>;
    /// The worker as a [`LoopWorker`], whose `start` and `stop` the runtime calls without
    /// boxing their futures (two allocations per worker lifecycle fewer for the most common
    /// kind of worker).
    fn as_loop_worker(&mut self) -> Option<&mut LoopWorker>;
}

impl<W: Worker> DynWorker for W {
    fn start_dyn(&mut self, ctx: WorkerContext) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(self.start(ctx))
    }

    fn stop_dyn(&mut self, ctx: WorkerContext) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(self.stop(ctx))
    }

    fn as_loop_worker(&mut self) -> Option<&mut LoopWorker> {
        (self as &mut dyn std::any::Any).downcast_mut()
    }
}

/// A worker made of closures; see [`worker_fn`].
pub struct FnWorker<S, T> {
    start: S,
    stop: T,
}

impl<S, T> fmt::Debug for FnWorker<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnWorker").finish_non_exhaustive()
    }
}

/// The stop half of a [`FnWorker`] built without [`FnWorker::on_stop`]: does nothing.
pub type NoStop = fn(WorkerContext) -> std::future::Ready<Result<(), BoxError>>;

fn no_stop(_ctx: WorkerContext) -> std::future::Ready<Result<(), BoxError>> {
    std::future::ready(Ok(()))
}

/// Builds a worker from a start closure. Add a stop closure with [`FnWorker::on_stop`].
///
/// ```
/// use workerkit_core::{worker_fn, WorkerSpec};
///
/// let spec = WorkerSpec::new(
///     "warmup",
///     worker_fn(|ctx| async move {
///         // Prime a cache, then stay up; readiness follows the runtime default.
///         let _ = ctx.name();
///         Ok(())
///     }),
/// );
/// # let _ = spec;
/// ```
pub fn worker_fn<S, F>(start: S) -> FnWorker<S, NoStop>
where
    S: FnMut(WorkerContext) -> F + Send + 'static,
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    FnWorker {
        start,
        stop: no_stop,
    }
}

impl<S> FnWorker<S, NoStop> {
    /// Adds a stop closure.
    pub fn on_stop<T, G>(self, stop: T) -> FnWorker<S, T>
    where
        T: FnMut(WorkerContext) -> G + Send + 'static,
        G: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        FnWorker {
            start: self.start,
            stop,
        }
    }
}

impl<S, F, T, G> Worker for FnWorker<S, T>
where
    S: FnMut(WorkerContext) -> F + Send + 'static,
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
    T: FnMut(WorkerContext) -> G + Send + 'static,
    G: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn start(&mut self, ctx: WorkerContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.start)(ctx)
    }

    fn stop(&mut self, ctx: WorkerContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        (self.stop)(ctx)
    }
}

pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn DynWorker> + Send + Sync>;

pub(crate) enum WorkerSource {
    /// One instance, started again on every start.
    Instance(Box<dyn DynWorker>),
    /// A fresh instance for every start.
    Factory(Factory),
}

/// A timeout setting: the runtime default, a duration, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutSetting {
    Inherit,
    After(Duration),
    Never,
}

/// Per-worker overrides of the runtime defaults, resolved at registration.
#[derive(Clone, Debug)]
pub(crate) struct Overrides {
    pub(crate) start_timeout: TimeoutSetting,
    pub(crate) stop_timeout: TimeoutSetting,
    pub(crate) ready_on_start: Option<bool>,
    pub(crate) accepting_work_on_start: Option<bool>,
    pub(crate) contributes_to_readiness: Option<bool>,
    pub(crate) failure_policy: Option<FailurePolicy>,
    pub(crate) panic_policy: Option<PanicPolicy>,
    pub(crate) restart: Option<crate::supervise::RestartPolicy>,
    pub(crate) watchdog: Option<crate::supervise::Watchdog>,
}

impl Default for Overrides {
    fn default() -> Self {
        Self {
            start_timeout: TimeoutSetting::Inherit,
            stop_timeout: TimeoutSetting::Inherit,
            ready_on_start: None,
            accepting_work_on_start: None,
            contributes_to_readiness: None,
            failure_policy: None,
            panic_policy: None,
            restart: None,
            watchdog: None,
        }
    }
}

/// A worker and how to run it: its name, description, and overrides of the runtime defaults.
///
/// Built from one instance ([`WorkerSpec::new`], started again after each stop) or from a factory
/// ([`WorkerSpec::from_factory`], a fresh instance for every start). Settings left unset take the
/// runtime's defaults, copied at registration: later changes to the runtime do not reach a
/// registered worker. Nothing is validated until [`Runtime::register`], which returns a typed
/// error for a bad name or setting.
///
/// [`Runtime::register`]: crate::Runtime::register
#[must_use]
pub struct WorkerSpec {
    pub(crate) commands: Vec<crate::command::CommandSpec>,
    pub(crate) command_overrides: crate::command::WorkerCommandOverrides,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) source: WorkerSource,
    pub(crate) overrides: Overrides,
    pub(crate) readiness_check: Option<ReadinessCheck>,
}

impl fmt::Debug for WorkerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSpec")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("overrides", &self.overrides)
            .field("readiness_check", &self.readiness_check)
            .field("commands", &self.commands)
            .finish_non_exhaustive()
    }
}

impl WorkerSpec {
    /// A spec for one worker instance, restarted in place after a stop.
    pub fn new(name: impl Into<String>, worker: impl Worker) -> Self {
        Self::with_source(name.into(), WorkerSource::Instance(Box::new(worker)))
    }

    /// A spec whose every start gets a fresh worker from `factory` (the previous instance is
    /// dropped after its stop). Use this when a worker holds state that must not survive a
    /// restart.
    pub fn from_factory<W, F>(name: impl Into<String>, factory: F) -> Self
    where
        W: Worker,
        F: Fn() -> W + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Box::new(factory()) as Box<dyn DynWorker>);
        Self::with_source(name.into(), WorkerSource::Factory(factory))
    }

    fn with_source(name: String, source: WorkerSource) -> Self {
        Self {
            commands: Vec::new(),
            command_overrides: crate::command::WorkerCommandOverrides::default(),
            name,
            description: None,
            source,
            overrides: Overrides::default(),
            readiness_check: None,
        }
    }

    /// The local name this spec registers under.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A human description, shown in status.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// How long one start may take before it fails as `start_timed_out` (default: the runtime's).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.start_timeout = TimeoutSetting::After(timeout);
        self
    }

    /// No start timeout for this worker.
    pub fn no_start_timeout(mut self) -> Self {
        self.overrides.start_timeout = TimeoutSetting::Never;
        self
    }

    /// How long a stop may take before the worker fails with `deadline_exceeded` (default: the
    /// runtime's).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.overrides.stop_timeout = TimeoutSetting::After(timeout);
        self
    }

    /// No stop timeout for this worker (a shutdown's own budget still applies).
    pub fn no_stop_timeout(mut self) -> Self {
        self.overrides.stop_timeout = TimeoutSetting::Never;
        self
    }

    /// Whether the worker is ready as soon as its start succeeds, unless it said otherwise
    /// during start.
    pub fn ready_on_start(mut self, ready: bool) -> Self {
        self.overrides.ready_on_start = Some(ready);
        self
    }

    /// Whether the worker admits commands as soon as its start succeeds, unless it said
    /// otherwise during start.
    pub fn accepting_work_on_start(mut self, accepting: bool) -> Self {
        self.overrides.accepting_work_on_start = Some(accepting);
        self
    }

    /// Whether the worker counts towards runtime readiness under the `contributing_workers`
    /// policy.
    pub fn contributes_to_readiness(mut self, contributes: bool) -> Self {
        self.overrides.contributes_to_readiness = Some(contributes);
        self
    }

    /// What this worker's failure does to the runtime.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.overrides.failure_policy = Some(policy);
        self
    }

    /// What a panic in this worker's code does.
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.overrides.panic_policy = Some(policy);
        self
    }

    /// This worker's restart policy (default: the runtime's, which defaults to never). See
    /// [`supervise`](crate::supervise).
    pub fn restart(mut self, policy: crate::supervise::RestartPolicy) -> Self {
        self.overrides.restart = Some(policy);
        self
    }

    /// A heartbeat watchdog for this worker (default: none). The worker calls
    /// [`WorkerContext::beat`] at least once per timeout. [`StallAction::Restart`] needs a
    /// restart policy other than never (a registration error otherwise).
    ///
    /// [`StallAction::Restart`]: crate::supervise::StallAction::Restart
    pub fn watchdog(mut self, watchdog: crate::supervise::Watchdog) -> Self {
        self.overrides.watchdog = Some(watchdog);
        self
    }

    /// Adds a command this worker owns. Commands are validated (name, uniqueness, settings) at
    /// registration.
    pub fn command(mut self, command: crate::command::CommandSpec) -> Self {
        self.commands.push(command);
        self
    }

    /// Per-attempt timeout of this worker's commands (default: the runtime's).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_overrides.timeout = Some(Some(timeout));
        self
    }

    /// No timeout for this worker's commands.
    pub fn no_command_timeout(mut self) -> Self {
        self.command_overrides.timeout = Some(None);
        self
    }

    /// How this worker's command timeouts are enforced.
    pub fn command_timeout_mode(mut self, mode: crate::command::TimeoutMode) -> Self {
        self.command_overrides.timeout_mode = Some(mode);
        self
    }

    /// Retry policy of this worker's commands.
    pub fn command_retry(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.command_overrides.retry = Some(policy);
        self
    }

    /// Cap on this worker's concurrent commands (of its current incarnation).
    pub fn command_concurrency(mut self, limit: usize) -> Self {
        self.command_overrides.concurrency = Some(limit);
        self
    }

    /// What a full limit does for this worker's commands.
    pub fn command_admission(mut self, mode: crate::command::AdmissionMode) -> Self {
        self.command_overrides.admission = Some(mode);
        self
    }

    /// When this worker stops, give its in-flight commands `grace` to finish, then cancel the
    /// rest (their callers get `DispatchError::Cancelled` with reason `WorkerStopped`). Without
    /// it, as in Go, a stop neither waits for nor cancels admitted commands.
    pub fn cancel_commands_on_stop(mut self, grace: Duration) -> Self {
        self.command_overrides.cancel_on_stop = Some(grace);
        self
    }

    /// A periodic readiness check that decides this worker's readiness while it runs. The
    /// worker starts unready (unless it sets readiness itself during start) and becomes ready
    /// when a check passes.
    pub fn readiness_check(mut self, check: ReadinessCheck) -> Self {
        self.readiness_check = Some(check);
        self
    }
}
