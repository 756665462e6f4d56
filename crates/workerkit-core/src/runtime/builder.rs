//! `RuntimeBuilder`: runtime-wide settings and the defaults copied into each worker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::BuildError;
use crate::name::validate_runtime_name;
use crate::observe::Observer;
use crate::policy::{FailurePolicy, PanicPolicy, ReadinessPolicy};
use crate::runtime::Runtime;

/// Default per-attempt start timeout.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default budget of a graceful shutdown's drain and idle-wait phases.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval of a long shutdown's progress reports.
pub const DEFAULT_SHUTDOWN_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Default extra budget the stop phase of a shutdown always gets, even after the shutdown
/// budget ran out.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Default bound on awaiting the observers' shutdown hooks.
pub const DEFAULT_OBSERVER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Default per-attempt command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Worker defaults, copied into each worker at registration.
#[derive(Clone, Debug)]
pub(crate) struct Defaults {
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) command_timeout_mode: crate::command::TimeoutMode,
    pub(crate) command_retry: crate::retry::RetryPolicy,
    pub(crate) worker_command_concurrency: Option<usize>,
    pub(crate) command_admission: crate::command::AdmissionMode,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) ready_on_start: bool,
    pub(crate) accepting_work_on_start: bool,
    pub(crate) contributes: bool,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) panic_policy: PanicPolicy,
    pub(crate) restart: crate::supervise::RestartPolicy,
}

/// Runtime-wide settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) readiness_policy: ReadinessPolicy,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) observer_flush_timeout: Duration,
    pub(crate) command_concurrency: Option<usize>,
    pub(crate) jitter_seed: Option<u64>,
    pub(crate) shutdown_report_interval: Duration,
}

/// Builds a [`Runtime`]. Setters take and return `self`; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use workerkit_core::{FailurePolicy, Runtime};
///
/// let runtime = Runtime::builder("billing")
///     .stop_timeout(Duration::from_secs(10))
///     .failure_policy(FailurePolicy::MarkRuntimeUnready)
///     .build()?;
/// assert_eq!(runtime.name(), "billing");
/// # Ok::<(), workerkit_core::error::BuildError>(())
/// ```
#[must_use]
pub struct RuntimeBuilder {
    name: String,
    defaults: Defaults,
    settings: Settings,
    observers: Vec<Arc<dyn Observer>>,
    zero: Option<&'static str>,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("name", &self.name)
            .field("defaults", &self.defaults)
            .field("settings", &self.settings)
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl RuntimeBuilder {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            defaults: Defaults {
                command_timeout: Some(DEFAULT_COMMAND_TIMEOUT),
                command_timeout_mode: crate::command::TimeoutMode::default(),
                command_retry: crate::retry::RetryPolicy::never(),
                worker_command_concurrency: None,
                command_admission: crate::command::AdmissionMode::default(),
                start_timeout: Some(DEFAULT_START_TIMEOUT),
                stop_timeout: Some(DEFAULT_STOP_TIMEOUT),
                ready_on_start: true,
                accepting_work_on_start: true,
                contributes: true,
                failure_policy: FailurePolicy::default(),
                panic_policy: PanicPolicy::default(),
                restart: crate::supervise::RestartPolicy::never(),
            },
            settings: Settings {
                readiness_policy: ReadinessPolicy::default(),
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                stop_grace: DEFAULT_STOP_GRACE,
                observer_flush_timeout: DEFAULT_OBSERVER_FLUSH_TIMEOUT,
                command_concurrency: None,
                jitter_seed: None,
                shutdown_report_interval: DEFAULT_SHUTDOWN_REPORT_INTERVAL,
            },
            observers: Vec::new(),
            zero: None,
        }
    }

    fn nonzero(mut self, setting: &'static str, d: Duration) -> Self {
        if d.is_zero() && self.zero.is_none() {
            self.zero = Some(setting);
        }
        self
    }

    /// Which workers decide runtime readiness (default: contributing workers).
    pub fn readiness_policy(mut self, policy: ReadinessPolicy) -> Self {
        self.settings.readiness_policy = policy;
        self
    }

    /// Default start timeout for workers (default 30 s). Zero is a build error.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.start_timeout = Some(timeout);
        self.nonzero("start_timeout", timeout)
    }

    /// No start timeout by default.
    pub fn no_start_timeout(mut self) -> Self {
        self.defaults.start_timeout = None;
        self
    }

    /// Default stop timeout for workers (default 30 s). Zero is a build error.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.stop_timeout = Some(timeout);
        self.nonzero("stop_timeout", timeout)
    }

    /// No stop timeout by default (a shutdown's budget still applies).
    pub fn no_stop_timeout(mut self) -> Self {
        self.defaults.stop_timeout = None;
        self
    }

    /// Whether workers are ready as soon as their start succeeds (default true).
    pub fn ready_on_start(mut self, ready: bool) -> Self {
        self.defaults.ready_on_start = ready;
        self
    }

    /// Whether workers admit commands as soon as their start succeeds (default true).
    pub fn accepting_work_on_start(mut self, accepting: bool) -> Self {
        self.defaults.accepting_work_on_start = accepting;
        self
    }

    /// Whether workers count towards readiness by default (default true).
    pub fn contributes_to_readiness(mut self, contributes: bool) -> Self {
        self.defaults.contributes = contributes;
        self
    }

    /// Default failure policy (default `isolate`).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.defaults.failure_policy = policy;
        self
    }

    /// Default panic policy (default `recover`).
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.defaults.panic_policy = policy;
        self
    }

    /// Default restart policy of workers (default [`RestartPolicy::never`]).
    ///
    /// [`RestartPolicy::never`]: crate::supervise::RestartPolicy::never
    pub fn restart_policy(mut self, policy: crate::supervise::RestartPolicy) -> Self {
        self.defaults.restart = policy;
        self
    }

    /// Seeds the jitter of restart backoff, for reproducible tests (default: random).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.settings.jitter_seed = Some(seed);
        self
    }

    /// While a shutdown runs longer than this, it reports every `interval` which workers and how
    /// many commands it still waits for ([`SupervisionKind::ShutdownWaiting`]; default 5 s).
    ///
    /// [`SupervisionKind::ShutdownWaiting`]: crate::observe::SupervisionKind::ShutdownWaiting
    pub fn shutdown_report_interval(mut self, interval: Duration) -> Self {
        self.settings.shutdown_report_interval = interval;
        self.nonzero("shutdown_report_interval", interval)
    }

    /// Budget of [`Runtime::shutdown`]'s drain and idle-wait phases (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self.nonzero("shutdown_timeout", timeout)
    }

    /// Budget the stop phase of a shutdown always gets, even when the shutdown budget ran out
    /// (default 5 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.settings.stop_grace = grace;
        self.nonzero("stop_grace", grace)
    }

    /// Bound on awaiting the observers' shutdown hooks at the end of a shutdown (default 5 s).
    pub fn observer_flush_timeout(mut self, timeout: Duration) -> Self {
        self.settings.observer_flush_timeout = timeout;
        self.nonzero("observer_flush_timeout", timeout)
    }

    /// Default per-attempt timeout of commands (default 30 s). Zero is a build error.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.command_timeout = Some(timeout);
        self.nonzero("command_timeout", timeout)
    }

    /// No command timeout by default.
    pub fn no_command_timeout(mut self) -> Self {
        self.defaults.command_timeout = None;
        self
    }

    /// How command timeouts are enforced by default (default cooperative).
    pub fn command_timeout_mode(mut self, mode: crate::command::TimeoutMode) -> Self {
        self.defaults.command_timeout_mode = mode;
        self
    }

    /// Default command retry policy (default: never retry).
    pub fn command_retry(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.defaults.command_retry = policy;
        self
    }

    /// Default cap on each worker's concurrent commands (default unbounded). Zero is a build
    /// error.
    pub fn worker_command_concurrency(mut self, limit: usize) -> Self {
        self.defaults.worker_command_concurrency = Some(limit);
        if limit == 0 && self.zero.is_none() {
            self.zero = Some("worker_command_concurrency");
        }
        self
    }

    /// Cap on concurrent commands across the whole runtime (default unbounded). Zero is a
    /// build error.
    pub fn command_concurrency(mut self, limit: usize) -> Self {
        self.settings.command_concurrency = Some(limit);
        if limit == 0 && self.zero.is_none() {
            self.zero = Some("command_concurrency");
        }
        self
    }

    /// What a full limit does by default (default fail-fast).
    pub fn command_admission(mut self, mode: crate::command::AdmissionMode) -> Self {
        self.defaults.command_admission = mode;
        self
    }

    /// Adds an observer. Observers receive events in the order they were added.
    pub fn with_observer(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Adds an already shared observer.
    pub fn with_shared_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Validates the settings and builds the runtime. Needs no tokio runtime until a lifecycle
    /// operation runs.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidName`] for a bad runtime name, [`BuildError::ZeroDuration`] for a zero
    /// duration setting.
    pub fn build(self) -> Result<Runtime, BuildError> {
        validate_runtime_name(&self.name)?;
        if let Some(setting) = self.zero {
            return Err(BuildError::ZeroDuration { setting });
        }
        Ok(Runtime::from_parts(
            self.name,
            self.defaults,
            self.settings,
            self.observers,
        ))
    }
}
