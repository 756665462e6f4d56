//! The managed service: a runtime and an axum server, run together, shut down together within
//! one budget.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use workerkit_core::command::InFlightCommand;
use workerkit_core::error::{ShutdownError, ShutdownReport};
use workerkit_core::signal::{ShutdownSignal, SignalKind, shutdown_signal};
use workerkit_core::{LifecycleError, LifecycleState, Runtime, ShutdownOptions};

use crate::ServingState;

/// The default shutdown budget: pre-stop delay, HTTP drain and the runtime's graceful shutdown
/// together. Kubernetes' default `terminationGracePeriodSeconds` is 30 s; keep the budget a few
/// seconds below yours.
pub const DEFAULT_SHUTDOWN_BUDGET: Duration = Duration::from_secs(25);
/// The default stop grace: what the workers' stop phase always gets, even after the budget ran
/// out.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a [`Runtime`] and an axum server together:
///
/// 1. starts every worker (unless told not to);
/// 2. serves the app;
/// 3. on SIGTERM or SIGINT (or the future given to [`shutdown_on`](Self::shutdown_on), or the
///    runtime shutting down or failing by itself): marks the process not ready
///    ([`ServingState`]), waits the pre-stop delay (so load balancers see it), lets in-flight
///    HTTP requests finish, then shuts the runtime down gracefully — all within one
///    [shutdown budget](Self::shutdown_budget). If the budget runs out, the workers are stopped
///    anyway (each still gets the [stop grace](Self::stop_grace)) and the report names the ones
///    that did not finish;
/// 4. a second signal (or the future given to [`force_on`](Self::force_on)) cuts the waiting
///    short: the server stops waiting for requests, the runtime stops waiting for commands
///    ([`Runtime::force_shutdown`]), and `run` returns without waiting for the workers' stops
///    still running (at most the stop grace, if they had not begun); the report names the
///    workers not yet stopped.
///
/// [`run`](Self::run) returns an error (so `main` can exit non-zero) when the runtime failed,
/// or the shutdown was forced or incomplete.
///
/// ```no_run
/// use workerkit_core::Runtime;
/// use workerkit_opshttp::{ManagedService, OpsHttp};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder("billing").build()?;
/// let ops = OpsHttp::new(runtime.clone());
/// let app = axum::Router::new().merge(ops.router()).merge(ops.probes());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let report = ManagedService::new(runtime, app)
///     .serving_state(ops.serving_state())
///     .pre_stop_delay(std::time::Duration::from_secs(5))
///     .run(listener)
///     .await?;
/// println!("clean shutdown in {:?}", report.elapsed);
/// # Ok(()) }
/// # let _ = demo;
/// ```
pub struct ManagedService {
    runtime: Runtime,
    app: Router,
    serving: ServingState,
    pre_stop_delay: Duration,
    budget: Duration,
    stop_grace: Duration,
    start_workers: bool,
    os_signals: bool,
    signals: Option<ShutdownSignal>,
    shutdown_on: Option<BoxFuture>,
    force_on: Option<BoxFuture>,
}

impl fmt::Debug for ManagedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedService")
            .field("runtime", &self.runtime.name())
            .field("pre_stop_delay", &self.pre_stop_delay)
            .field("budget", &self.budget)
            .field("stop_grace", &self.stop_grace)
            .field("start_workers", &self.start_workers)
            .field("os_signals", &self.os_signals)
            .finish_non_exhaustive()
    }
}

/// What started the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownTrigger {
    /// A signal (SIGTERM, SIGINT).
    Signal(SignalKind),
    /// The future given to [`ManagedService::shutdown_on`].
    Requested,
    /// The runtime was shut down by someone else (e.g. `POST {p}/runtime/shutdown`).
    RuntimeShutDown,
    /// The runtime failed (its liveness went false).
    RuntimeFailed,
    /// The server stopped by itself (an accept error).
    ServerExited,
    /// Starting the workers failed.
    StartFailed,
}

/// What a [`ManagedService::run`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServiceReport {
    /// What started the shutdown.
    pub trigger: ShutdownTrigger,
    /// A second signal (or [`ManagedService::force_on`]) cut the shutdown short.
    pub forced: bool,
    /// The runtime failed (its liveness was false at some point before the end).
    pub runtime_failed: bool,
    /// Every in-flight HTTP request finished within the budget.
    pub http_drained: bool,
    /// The runtime's shutdown report.
    pub shutdown: Option<ShutdownReport>,
    /// Workers that did not stop cleanly, by qualified name.
    pub unfinished: Vec<String>,
    /// Commands still running when the HTTP drain was cut short (by the budget or a forced
    /// stop): their HTTP requests were no longer waited for. What became of each is what the
    /// runtime's shutdown gave it (its worker's stop, or the end of the process).
    pub abandoned_commands: Vec<InFlightCommand>,
    /// From the trigger to the end.
    pub elapsed: Duration,
}

impl ServiceReport {
    /// Whether everything ended cleanly: not forced, runtime not failed, HTTP drained, every
    /// worker stopped within the budget.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        !self.forced
            && !self.runtime_failed
            && self.http_drained
            && self.unfinished.is_empty()
            && self.abandoned_commands.is_empty()
            && self.shutdown.as_ref().is_some_and(|r| !r.deadline_exceeded)
    }
}

/// Why a [`ManagedService::run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Installing signal handlers or serving failed.
    #[error("service I/O error: {0}")]
    Io(#[from] io::Error),
    /// Starting the workers failed; the runtime was then shut down.
    #[error("start workers: {error}")]
    Start {
        /// The start error.
        #[source]
        error: LifecycleError,
        /// The shutdown that followed.
        report: Box<ServiceReport>,
    },
    /// The service ended, but not cleanly: the runtime failed, the shutdown was forced, or it
    /// did not finish within the budget.
    #[error("{}", describe(.0))]
    Unclean(Box<ServiceReport>),
}

impl ServiceError {
    /// The report, where there is one.
    #[must_use]
    pub fn report(&self) -> Option<&ServiceReport> {
        match self {
            Self::Io(_) => None,
            Self::Start { report, .. } | Self::Unclean(report) => Some(report),
        }
    }
}

fn describe(report: &ServiceReport) -> String {
    let mut parts = Vec::new();
    if report.runtime_failed {
        parts.push("runtime failed".to_owned());
    }
    if report.forced {
        parts.push("shutdown forced".to_owned());
    }
    if !report.http_drained {
        parts.push("HTTP requests still in flight at the deadline".to_owned());
    }
    if report
        .shutdown
        .as_ref()
        .is_some_and(|r| r.deadline_exceeded)
    {
        parts.push("shutdown budget exhausted".to_owned());
    }
    if !report.abandoned_commands.is_empty() {
        let commands: Vec<String> = report
            .abandoned_commands
            .iter()
            .map(|c| format!("{}/{} ({})", c.worker, c.command, c.id))
            .collect();
        parts.push(format!(
            "commands cut off with their HTTP requests: {}",
            commands.join(", ")
        ));
    }
    if !report.unfinished.is_empty() {
        parts.push(format!(
            "workers that did not stop cleanly: {}",
            report.unfinished.join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push("shutdown incomplete".to_owned());
    }
    parts.join("; ")
}

impl ManagedService {
    /// A service running `runtime` and serving `app`.
    pub fn new(runtime: Runtime, app: Router) -> Self {
        Self {
            runtime,
            app,
            serving: ServingState::new(),
            pre_stop_delay: Duration::ZERO,
            budget: DEFAULT_SHUTDOWN_BUDGET,
            stop_grace: DEFAULT_STOP_GRACE,
            start_workers: true,
            os_signals: true,
            signals: None,
            shutdown_on: None,
            force_on: None,
        }
    }

    /// The readiness state the app's probes read (from [`crate::OpsHttp::serving_state`]);
    /// marked as shutting down the moment shutdown begins.
    #[must_use]
    pub fn serving_state(mut self, serving: ServingState) -> Self {
        self.serving = serving;
        self
    }

    /// How long to keep serving, not ready, before closing the listener (default 0; in
    /// Kubernetes a few seconds, so endpoints are updated before the server stops accepting).
    #[must_use]
    pub fn pre_stop_delay(mut self, delay: Duration) -> Self {
        self.pre_stop_delay = delay;
        self
    }

    /// The one budget for pre-stop delay, HTTP drain and the runtime's shutdown (default 25 s).
    #[must_use]
    pub fn shutdown_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// What the workers' stop phase always gets, even after the budget ran out (default 2 s).
    #[must_use]
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Whether [`run`](Self::run) starts every worker first (default `true`).
    #[must_use]
    pub fn start_workers(mut self, start: bool) -> Self {
        self.start_workers = start;
        self
    }

    /// Whether SIGTERM and SIGINT start (first) and force (second) the shutdown (default
    /// `true`).
    #[must_use]
    pub fn os_signals(mut self, enabled: bool) -> Self {
        self.os_signals = enabled;
        self
    }

    /// Uses signal handlers installed earlier, so that a signal arriving before
    /// [`run`](Self::run) (say, during a slow startup) is not lost: install them with
    /// [`shutdown_signal`](workerkit_core::signal::shutdown_signal) first thing in `main`.
    #[must_use]
    pub fn signals(mut self, signals: ShutdownSignal) -> Self {
        self.signals = Some(signals);
        self.os_signals = true;
        self
    }

    /// Starts the graceful shutdown when `future` completes (as well as on signals).
    #[must_use]
    pub fn shutdown_on(mut self, future: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown_on = Some(Box::pin(future));
        self
    }

    /// Forces a shutdown in progress when `future` completes (as a second signal does).
    #[must_use]
    pub fn force_on(mut self, future: impl Future<Output = ()> + Send + 'static) -> Self {
        self.force_on = Some(Box::pin(future));
        self
    }

    /// Runs until shutdown; see the type's docs.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Start`] if the workers did not start, [`ServiceError::Unclean`] if the
    /// runtime failed or the shutdown was forced or incomplete, [`ServiceError::Io`] if signal
    /// handlers could not be installed or serving failed.
    pub async fn run(self, listener: TcpListener) -> Result<ServiceReport, ServiceError> {
        let Self {
            runtime,
            app,
            serving,
            pre_stop_delay,
            budget,
            stop_grace,
            start_workers,
            os_signals,
            signals,
            shutdown_on,
            force_on,
        } = self;
        let mut signals = match signals {
            Some(signals) => Some(signals),
            None if os_signals => Some(shutdown_signal()?),
            None => None,
        };

        let mut shutdown_on = shutdown_on.unwrap_or_else(|| Box::pin(std::future::pending()));
        if start_workers {
            // A signal (or the caller's future) during a slow start is not left waiting for it:
            // the start goes on in the background (it holds the lifecycle gate), and the
            // shutdown follows it.
            let started = tokio::select! {
                result = runtime.start_all() => Ok(result),
                kind = next_signal(&mut signals) => Err(ShutdownTrigger::Signal(kind)),
                () = &mut shutdown_on => Err(ShutdownTrigger::Requested),
            };
            let started = match started {
                Ok(result) => result,
                Err(trigger) => {
                    serving.begin_shutdown();
                    let began = Instant::now();
                    let result = runtime
                        .shutdown_with(ShutdownOptions::new(budget, stop_grace))
                        .await;
                    let mut report = ServiceReport {
                        trigger,
                        forced: false,
                        runtime_failed: !runtime.liveness().live,
                        http_drained: true,
                        shutdown: None,
                        unfinished: Vec::new(),
                        abandoned_commands: Vec::new(),
                        elapsed: Duration::ZERO,
                    };
                    record_shutdown(&mut report, result);
                    report.elapsed = began.elapsed();
                    return if report.is_clean() {
                        Ok(report)
                    } else {
                        Err(ServiceError::Unclean(Box::new(report)))
                    };
                }
            };
            if let Err(error) = started {
                serving.begin_shutdown();
                let began = Instant::now();
                let result = runtime
                    .shutdown_with(ShutdownOptions::new(budget, stop_grace))
                    .await;
                let mut report = ServiceReport {
                    trigger: ShutdownTrigger::StartFailed,
                    forced: false,
                    runtime_failed: !runtime.liveness().live,
                    http_drained: true,
                    shutdown: None,
                    unfinished: Vec::new(),
                    abandoned_commands: Vec::new(),
                    elapsed: Duration::ZERO,
                };
                record_shutdown(&mut report, result);
                report.elapsed = began.elapsed();
                return Err(ServiceError::Start {
                    error,
                    report: Box::new(report),
                });
            }
        }

        let (stop_http, mut http_stopped) = watch::channel(false);
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stopped.wait_for(|stop| *stop).await;
        });
        let mut server = tokio::spawn(async move { serve.await });

        // Wait for the trigger.
        let mut watch = runtime.subscribe();
        let mut server_result = None;
        let trigger = tokio::select! {
            kind = next_signal(&mut signals) => ShutdownTrigger::Signal(kind),
            () = &mut shutdown_on => ShutdownTrigger::Requested,
            failed = runtime_ended(&mut watch) => if failed {
                ShutdownTrigger::RuntimeFailed
            } else {
                ShutdownTrigger::RuntimeShutDown
            },
            result = &mut server => {
                server_result = Some(result);
                ShutdownTrigger::ServerExited
            }
        };
        let began = Instant::now();
        let deadline = began + budget;
        serving.begin_shutdown();
        let runtime_failed_before = !runtime.liveness().live;

        // A second signal, or the caller's force future, forces.
        let mut force_on = force_on.unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut forced = false;
        let force = async {
            tokio::select! {
                _ = next_signal(&mut signals) => {}
                () = &mut force_on => {}
            }
        };
        let mut force = std::pin::pin!(force);

        // 1. Pre-stop delay: keep serving, not ready.
        if !pre_stop_delay.is_zero() && server_result.is_none() {
            tokio::select! {
                () = tokio::time::sleep_until((began + pre_stop_delay).min(deadline)) => {}
                () = &mut force => forced = true,
            }
        }

        // 2. HTTP drain: stop accepting, let requests in flight finish.
        let _ = stop_http.send(true);
        let mut serve_error = None;
        let mut abandoned_commands = Vec::new();
        let http_drained = if let Some(result) = server_result.take() {
            if let Ok(Err(err)) = result {
                serve_error = Some(err);
            }
            true
        } else if forced {
            abandoned_commands = runtime.in_flight();
            server.abort();
            false
        } else {
            tokio::select! {
                result = tokio::time::timeout_at(deadline, &mut server) => match result {
                    Ok(Ok(Ok(()))) => true,
                    Ok(Ok(Err(err))) => {
                        serve_error = Some(err);
                        true
                    }
                    Ok(Err(_join)) => false,
                    Err(_elapsed) => {
                        abandoned_commands = runtime.in_flight();
                        server.abort();
                        false
                    }
                },
                () = &mut force => {
                    forced = true;
                    abandoned_commands = runtime.in_flight();
                    server.abort();
                    false
                }
            }
        };

        // 3. The runtime's graceful shutdown, in what is left of the budget.
        if forced {
            runtime.force_shutdown();
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let shutdown = runtime.shutdown_with(ShutdownOptions::new(remaining, stop_grace));
        let mut shutdown = std::pin::pin!(shutdown);
        let result = if forced {
            // Forced before the workers' shutdown began: stop them, but wait no longer than the
            // stop grace.
            tokio::time::timeout(stop_grace, &mut shutdown).await.ok()
        } else {
            tokio::select! {
                result = &mut shutdown => Some(result),
                // Forced while the workers shut down: stop waiting at once. The runtime goes on
                // stopping them until the process exits.
                () = &mut force => {
                    forced = true;
                    runtime.force_shutdown();
                    None
                }
            }
        };

        let mut report = ServiceReport {
            trigger,
            forced,
            runtime_failed: runtime_failed_before || !runtime.liveness().live,
            http_drained,
            shutdown: None,
            unfinished: Vec::new(),
            abandoned_commands,
            elapsed: Duration::ZERO,
        };
        match result {
            Some(result) => record_shutdown(&mut report, result),
            None => {
                report.unfinished = runtime
                    .workers()
                    .into_iter()
                    .filter(|w| {
                        !matches!(
                            w.status.state,
                            LifecycleState::Stopped | LifecycleState::Registered
                        )
                    })
                    .map(|w| w.qualified_name.to_string())
                    .collect();
            }
        }
        report.elapsed = began.elapsed();
        if let Some(err) = serve_error {
            return Err(ServiceError::Io(err));
        }
        if report.is_clean() {
            Ok(report)
        } else {
            Err(ServiceError::Unclean(Box::new(report)))
        }
    }
}

fn record_shutdown(report: &mut ServiceReport, result: Result<ShutdownReport, ShutdownError>) {
    match result {
        Ok(shutdown) => report.shutdown = Some(shutdown),
        Err(ShutdownError::Incomplete {
            unfinished,
            report: shutdown,
        }) => {
            report.unfinished = unfinished.into_iter().map(|u| u.worker).collect();
            report.shutdown = Some(shutdown);
        }
        Err(err) => {
            // A lifecycle error of the shutdown itself (e.g. called from inside an operation).
            report.unfinished.push(format!("<runtime: {}>", err.code()));
        }
    }
}

async fn next_signal(signals: &mut Option<ShutdownSignal>) -> SignalKind {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Completes when the runtime was shut down (`false`) or failed (`true`) by itself.
async fn runtime_ended(watch: &mut workerkit_core::StatusWatch) -> bool {
    let mut failed = false;
    watch
        .wait_until(|runtime| {
            let status = runtime.status();
            failed = !runtime.liveness().live;
            failed || status.shutting_down || status.shut_down
        })
        .await;
    failed
}
