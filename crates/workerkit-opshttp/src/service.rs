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
    /// The budget ran out: requests or commands were still running at its end, or the
    /// runtime's shutdown had not finished by the budget plus the stop grace.
    pub budget_exceeded: bool,
    /// The runtime's shutdown report.
    pub shutdown: Option<ShutdownReport>,
    /// Workers that did not stop cleanly, by qualified name.
    pub unfinished: Vec<String>,
    /// Commands in flight when the HTTP drain was cut short (by the budget or a forced stop).
    /// The HTTP requests still running then were answered 503 (`shutting_down`) at once, and
    /// a command running inside one ended as abandoned (its caller went away); a command
    /// dispatched some other way ended as the runtime's shutdown dictated.
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
            && !self.budget_exceeded
            && self.unfinished.is_empty()
            && self.abandoned_commands.is_empty()
            && self.shutdown.as_ref().is_none_or(|r| !r.deadline_exceeded)
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
    if report.budget_exceeded
        || report
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
            "commands still running when the HTTP drain was cut: {}",
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
        let mut force_on = force_on.unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut ending = Ending {
            runtime: &runtime,
            serving: &serving,
            budget,
            stop_grace,
            signals: &mut signals,
            force_on: &mut force_on,
        };

        if start_workers {
            // A signal (or the caller's future) during a slow start is not left waiting for it:
            // the start goes on in the background (it holds the lifecycle gate), and the
            // shutdown, bounded like any other, follows it.
            let started = tokio::select! {
                result = runtime.start_all() => Ok(result),
                kind = next_signal(ending.signals) => Err(ShutdownTrigger::Signal(kind)),
                () = &mut shutdown_on => Err(ShutdownTrigger::Requested),
            };
            match started {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    let report = ending.run(ShutdownTrigger::StartFailed).await;
                    return Err(ServiceError::Start {
                        error,
                        report: Box::new(report),
                    });
                }
                Err(trigger) => return finish(ending.run(trigger).await, None),
            }
        }

        // Requests still running when the HTTP drain is cut (budget or force) are answered
        // 503 at once; dropping them ends their commands as abandoned (core's rule for a
        // caller that goes away), so nothing admitted is left without an answer.
        let (cut, cut_rx) = watch::channel(false);
        let app = app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let mut cut_rx = cut_rx.clone();
                async move {
                    tokio::select! {
                        response = next.run(request) => response,
                        _ = cut_rx.wait_for(|cut| *cut) => cut_off_response(),
                    }
                }
            },
        ));
        let (stop_http, mut http_stopped) = watch::channel(false);
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stopped.wait_for(|stop| *stop).await;
        });
        let mut server = tokio::spawn(async move { serve.await });

        // Wait for the trigger.
        let mut watch = runtime.subscribe();
        let mut server_result = None;
        let trigger = tokio::select! {
            kind = next_signal(ending.signals) => ShutdownTrigger::Signal(kind),
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
        let http = Http {
            server,
            server_result,
            stop: stop_http,
            cut,
            pre_stop_delay,
        };
        let (report, serve_error) = ending.run_with_http(trigger, http).await;
        finish(report, serve_error)
    }
}

/// The 503 a request still running at the end of the HTTP drain gets.
fn cut_off_response() -> axum::response::Response {
    crate::json::response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "error": "the server is shutting down",
            "code": crate::code::SHUTTING_DOWN,
        }),
    )
}

fn finish(
    report: ServiceReport,
    serve_error: Option<io::Error>,
) -> Result<ServiceReport, ServiceError> {
    if let Some(err) = serve_error {
        return Err(ServiceError::Io(err));
    }
    if report.is_clean() {
        Ok(report)
    } else {
        Err(ServiceError::Unclean(Box::new(report)))
    }
}

/// The server's side of a shutdown.
struct Http {
    server: tokio::task::JoinHandle<io::Result<()>>,
    server_result: Option<Result<io::Result<()>, tokio::task::JoinError>>,
    stop: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    pre_stop_delay: Duration,
}

/// The least time the HTTP drain gets, even when the pre-stop delay used the whole budget: an
/// idle server closes within a few polls.
const DRAIN_FLOOR: Duration = Duration::from_millis(100);

/// Core's least time for each worker's stop once a shutdown's budget is spent.
const STOP_FLOOR: Duration = Duration::from_millis(100);

/// What the wait for the runtime's shutdown allows for its observers' flush.
const FLUSH_ALLOWANCE: Duration = Duration::from_secs(1);

/// How long connections get to deliver the 503 of cut-off requests before the server task is
/// dropped.
const CUT_GRACE: Duration = Duration::from_millis(100);

/// Everything a shutdown needs; `run` and `run_with_http` carry it out within the budget.
struct Ending<'a> {
    runtime: &'a Runtime,
    serving: &'a ServingState,
    budget: Duration,
    stop_grace: Duration,
    signals: &'a mut Option<ShutdownSignal>,
    force_on: &'a mut BoxFuture,
}

impl Ending<'_> {
    /// A report of nothing done yet; whether the runtime failed is read now, at the trigger
    /// (a worker failing to stop later is an unfinished worker, not a failed runtime).
    fn report(&self, trigger: ShutdownTrigger) -> ServiceReport {
        ServiceReport {
            trigger,
            forced: false,
            runtime_failed: trigger == ShutdownTrigger::RuntimeFailed
                || !self.runtime.liveness().live,
            http_drained: true,
            budget_exceeded: false,
            shutdown: None,
            unfinished: Vec::new(),
            abandoned_commands: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// A shutdown with no server to drain (the server never ran).
    async fn run(&mut self, trigger: ShutdownTrigger) -> ServiceReport {
        let began = Instant::now();
        self.serving.begin_shutdown();
        let mut report = self.report(trigger);
        let mut forced = false;
        self.runtime_shutdown(&mut report, began + self.budget, &mut forced)
            .await;
        report.forced = forced;
        report.elapsed = began.elapsed();
        report
    }

    /// Not ready → pre-stop delay → HTTP drain → the runtime's shutdown, in one budget.
    async fn run_with_http(
        &mut self,
        trigger: ShutdownTrigger,
        mut http: Http,
    ) -> (ServiceReport, Option<io::Error>) {
        let began = Instant::now();
        let deadline = began + self.budget;
        self.serving.begin_shutdown();
        let mut report = self.report(trigger);
        let mut forced = false;
        let mut serve_error = None;

        // 1. Pre-stop delay: keep serving, not ready.
        if !http.pre_stop_delay.is_zero() && http.server_result.is_none() {
            tokio::select! {
                () = tokio::time::sleep_until((began + http.pre_stop_delay).min(deadline)) => {}
                () = force(self.signals, self.force_on) => forced = true,
            }
        }

        // 2. HTTP drain: stop accepting, let requests in flight finish.
        let _ = http.stop.send(true);
        let outcome = if let Some(result) = http.server_result.take() {
            Some(Ok(result))
        } else if forced {
            None
        } else {
            let drain_deadline = deadline.max(Instant::now() + DRAIN_FLOOR);
            tokio::select! {
                result = tokio::time::timeout_at(drain_deadline, &mut http.server) => Some(result),
                () = force(self.signals, self.force_on) => {
                    forced = true;
                    None
                }
            }
        };
        match outcome {
            Some(Ok(Ok(Ok(())))) => {}
            Some(Ok(Ok(Err(err)))) => serve_error = Some(err),
            Some(Ok(Err(_panicked))) => report.http_drained = false,
            Some(Err(_)) | None => {
                // Cut what is still running: those requests get a 503 now.
                report.http_drained = false;
                report.budget_exceeded |= !forced;
                report.abandoned_commands = self.runtime.in_flight();
                let _ = http.cut.send(true);
                if tokio::time::timeout(CUT_GRACE, &mut http.server)
                    .await
                    .is_err()
                {
                    http.server.abort();
                }
            }
        }

        // 3. The runtime's graceful shutdown, in what is left of the budget.
        self.runtime_shutdown(&mut report, deadline, &mut forced)
            .await;
        report.forced = forced;
        report.elapsed = began.elapsed();
        (report, serve_error)
    }

    /// The runtime's shutdown, in a task of its own so that nothing here can cancel it, waited
    /// for until `deadline` + stop grace + 100 ms per worker + 1 s at most (the shutdown may
    /// first wait for an operation holding the lifecycle gate, gives every worker's stop at
    /// least 100 ms, and flushes observers at its end). A force stops the wait at
    /// once; the runtime goes on stopping workers until the process exits.
    async fn runtime_shutdown(
        &mut self,
        report: &mut ServiceReport,
        deadline: Instant,
        forced: &mut bool,
    ) {
        // What core's shutdown may take beyond the budget: the stop grace, the floor each
        // worker's stop gets after it, and a second for the observers' flush.
        let workers = u32::try_from(self.runtime.workers().len()).unwrap_or(u32::MAX);
        let hard_deadline = deadline.max(Instant::now())
            + self.stop_grace
            + STOP_FLOOR.saturating_mul(workers)
            + FLUSH_ALLOWANCE;
        if *forced {
            self.runtime.force_shutdown();
        }
        let already_ended = report.trigger == ShutdownTrigger::RuntimeShutDown;
        let mut task = if already_ended {
            // Someone else shut the runtime down (e.g. `POST {p}/runtime/shutdown`): wait for
            // that shutdown rather than running a second one over its results.
            let mut watch = self.runtime.subscribe();
            tokio::spawn(async move {
                watch.wait_until(|rt| rt.status().shut_down).await;
                None
            })
        } else {
            let runtime = self.runtime.clone();
            let options = ShutdownOptions::new(
                deadline.saturating_duration_since(Instant::now()),
                self.stop_grace,
            );
            tokio::spawn(async move { Some(runtime.shutdown_with(options).await) })
        };
        let waited = if *forced {
            tokio::time::timeout_at(
                hard_deadline.min(Instant::now() + self.stop_grace),
                &mut task,
            )
            .await
            .ok()
        } else {
            tokio::select! {
                result = tokio::time::timeout_at(hard_deadline, &mut task) => result.ok(),
                () = force(self.signals, self.force_on) => {
                    *forced = true;
                    self.runtime.force_shutdown();
                    None
                }
            }
        };
        match waited {
            Some(Ok(Some(result))) => record_shutdown(report, result),
            Some(Ok(None)) => report.unfinished = not_stopped(self.runtime),
            Some(Err(_)) | None => {
                report.budget_exceeded |= !*forced;
                report.unfinished = not_stopped(self.runtime);
                if report.unfinished.is_empty() && !*forced {
                    // Every worker stopped, but the shutdown (its flush) did not finish.
                    report
                        .unfinished
                        .push("<runtime: shutdown unfinished>".to_owned());
                }
            }
        }
    }
}

/// Waits for a second signal or the caller's force future.
async fn force(signals: &mut Option<ShutdownSignal>, force_on: &mut BoxFuture) {
    tokio::select! {
        _ = next_signal(signals) => {}
        () = force_on => {}
    }
}

/// Workers not stopped (running, in transition, or failed), by qualified name.
fn not_stopped(runtime: &Runtime) -> Vec<String> {
    runtime
        .workers()
        .into_iter()
        .filter(|w| {
            !matches!(
                w.status.state,
                LifecycleState::Stopped | LifecycleState::Registered
            )
        })
        .map(|w| w.qualified_name.to_string())
        .collect()
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
