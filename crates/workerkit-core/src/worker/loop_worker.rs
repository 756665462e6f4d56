//! `LoopWorker`: "run this loop until asked to stop".

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::failure::{self, BoxError, Failure, PanicError};
use crate::observe::BoxFuture;
use crate::runtime::ops;
use crate::status::ExitReason;
use crate::task::CatchUnwind;
use crate::worker::{StopSignal, Worker, WorkerContext};

/// Default bound on the automatic cleanup that runs after a loop fails.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

type LoopFn = Arc<dyn Fn(WorkerContext) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Why a [`LoopWorker`] refused to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    /// The previous loop is still running (its stop timed out); stop it again first.
    #[error("loop worker already active")]
    Active,
    /// The previous run's cleanup hook failed; a stop must retry it before a new start.
    #[error("loop worker cleanup pending")]
    CleanupPending,
}

#[derive(Debug, Default)]
struct Cleanup {
    /// The cleanup hook succeeded for the current run.
    done: bool,
    /// A cleanup attempt failed and no later one succeeded.
    failed: bool,
    /// The loop function of the current run has returned (its task may still be cleaning up).
    exited: bool,
    /// The current run's loop task has not finished (it may not have been spawned yet, see
    /// [`batched`]). What a `JoinHandle` would say, without needing the task to exist.
    running: bool,
}

/// What a loop worker shares with its loop task.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Cleanup>,
    /// Notified when a run's task finishes (`Cleanup::running` goes false).
    finished: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cleanup> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_running(&self) -> bool {
        self.lock().running
    }

    /// Completes once the current run's task has finished (at once if there is none).
    async fn wait_finished(&self) {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if !self.is_running() {
                return;
            }
            finished.await;
            // Checked at once: the usual wake-up is the run's end, and registering again to
            // find that out would cost a second registration.
            if !self.is_running() {
                return;
            }
        }
    }
}

/// Marks a run's task finished when dropped: when the task ends, or when it is dropped without
/// ending (the tokio runtime shut down, or a batched launch that never happened).
struct Finish(Arc<Shared>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.lock().running = false;
        self.0.finished.notify_waiters();
    }
}

/// One loop run, ready to be spawned as its own task.
pub(crate) struct LoopRun {
    run: LoopFn,
    on_stop: Option<LoopFn>,
    cleanup_timeout: Duration,
    ctx: WorkerContext,
    finish: Finish,
}

impl LoopRun {
    fn launch(self) {
        let ctx = self.ctx.clone();
        ctx.spawn_loop(run_loop(self));
    }
}

tokio::task_local! {
    /// Loop runs launched by the bulk start running in this task, not spawned yet.
    static BATCH: RefCell<Vec<LoopRun>>;
}

/// Runs `future` (a bulk start) with loop launches batched: each loop task is spawned when the
/// future next waits (see [`flush`]) or ends, rather than at once.
///
/// Spawning from a worker thread puts the new task in the thread's LIFO slot and moves the one
/// it held to the run queue, waking an idle worker thread to steal it: one cross-thread wake-up
/// per worker when starts and spawns interleave. Spawned back to back, like plain tasks, the
/// loops cost a few wake-ups in all. Until it is spawned, a loop could not have run anyway
/// (the task starting the workers does not yield while their starts complete at once), and a
/// start that waits flushes the batch first, so a worker's start can always wait for an
/// earlier worker's loop.
pub(crate) async fn batched<F: Future>(future: F) -> F::Output {
    BATCH
        .scope(RefCell::new(Vec::new()), async move {
            let output = future.await;
            flush();
            output
        })
        .await
}

/// Spawns the loops batched in this task so far (nothing outside [`batched`]). Called by the
/// runtime whenever worker code it runs in a batch waits.
pub(crate) fn flush() {
    let runs = BATCH
        .try_with(|batch| std::mem::take(&mut *batch.borrow_mut()))
        .unwrap_or_default();
    for run in runs {
        run.launch();
    }
}

/// Launches `run` now, or batches it when called inside [`batched`].
fn launch(run: LoopRun) {
    let mut run = Some(run);
    let _ = BATCH.try_with(|batch| {
        if let (Ok(mut batch), Some(queued)) = (batch.try_borrow_mut(), run.take()) {
            batch.push(queued);
        }
    });
    if let Some(run) = run {
        run.launch();
    }
}

/// A worker that runs a loop in its own task until asked to stop.
///
/// - `start` runs the optional start hook, launches the loop, and (with auto-ready, the default)
///   marks the worker ready.
/// - The loop watches [`WorkerContext::stop_requested`] and returns when it fires.
/// - `stop` waits for the loop to return, then runs the optional stop (cleanup) hook.
/// - A loop that returns an error, returns `Ok` unasked ([`ExitReason::ExitedUnexpectedly`]) or
///   panics fails the worker; its panic is caught and goes through the worker's panic policy.
///   The cleanup hook then runs once automatically (bounded by the cleanup timeout); if it fails,
///   the worker cannot start again until a `stop` retried the cleanup successfully.
/// - A `stop` that times out leaves the loop running and the cleanup pending: a restart is
///   refused (`loop_worker_active` while the loop lives, then `loop_cleanup_failed`) until a
///   later `stop` has joined the loop and run the hook.
///
/// ```
/// use std::time::Duration;
/// use workerkit_core::{LoopWorker, WorkerSpec};
///
/// let poller = LoopWorker::new(|ctx| async move {
///     let mut tick = tokio::time::interval(Duration::from_secs(1));
///     loop {
///         tokio::select! {
///             () = ctx.stop_requested() => return Ok(()),
///             _ = tick.tick() => { /* poll something */ }
///         }
///     }
/// });
/// let spec = WorkerSpec::new("poller", poller);
/// # let _ = spec;
/// ```
#[must_use]
pub struct LoopWorker {
    run: LoopFn,
    on_start: Option<LoopFn>,
    on_stop: Option<LoopFn>,
    auto_ready: bool,
    cleanup_timeout: Duration,
    /// The stop signal of the incarnation whose loop runs (or ran last).
    previous: Option<StopSignal>,
    /// A stop began joining the loop and did not finish (its future was dropped at the stop
    /// timeout).
    join_timed_out: bool,
    shared: Arc<Shared>,
}

impl fmt::Debug for LoopWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopWorker")
            .field("auto_ready", &self.auto_ready)
            .field("cleanup_timeout", &self.cleanup_timeout)
            .field("running", &self.shared.is_running())
            .finish_non_exhaustive()
    }
}

fn boxed<F, Fut>(f: F) -> LoopFn
where
    F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

impl LoopWorker {
    /// A loop worker running `run` (called anew for each start).
    pub fn new<F, Fut>(run: F) -> Self
    where
        F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Self {
            run: boxed(run),
            on_start: None,
            on_stop: None,
            auto_ready: true,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            previous: None,
            join_timed_out: false,
            shared: Arc::new(Shared::default()),
        }
    }

    /// A hook run in `start` before the loop launches; an error fails the start.
    pub fn on_start<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_start = Some(boxed(hook));
        self
    }

    /// A cleanup hook run after the loop ended: by `stop`, or automatically after a failure.
    pub fn on_stop<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_stop = Some(boxed(hook));
        self
    }

    /// Whether the worker becomes ready once the loop launched (default true): it then follows
    /// the spec's `ready_on_start` (default true). Without it, the worker starts unready and the
    /// loop calls [`WorkerContext::set_ready`] itself. A worker with a
    /// [`ReadinessCheck`](crate::ReadinessCheck) is never auto-ready: the check decides.
    pub fn auto_ready(mut self, auto_ready: bool) -> Self {
        self.auto_ready = auto_ready;
        self
    }

    /// Bound on the automatic cleanup after a failure (default 5 s).
    pub fn cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = timeout;
        self
    }

    fn cleanup_state(&self) -> std::sync::MutexGuard<'_, Cleanup> {
        self.shared.lock()
    }
}

fn cleanup_error(err: BoxError) -> BoxError {
    failure::with_failure(
        err,
        failure::code::LOOP_CLEANUP_FAILED,
        "loop worker cleanup failed",
    )
}

/// The loop task: runs the loop, then classifies its exit. The run counts as finished when this
/// future is dropped (`LoopRun::finish`).
async fn run_loop(loop_run: LoopRun) {
    let LoopRun {
        run,
        on_stop,
        cleanup_timeout,
        ctx,
        finish,
    } = loop_run;
    let cleanup = &finish.0;
    let result = CatchUnwind::new(run(ctx.clone())).await;
    cleanup.lock().exited = true;
    let requested = ctx.is_stop_requested();
    let failing = match result {
        Ok(Ok(())) if requested => return,
        Ok(Ok(())) => ops::Failing {
            failure: Failure::loop_exited_unexpectedly(),
            cause: None,
            reason: ExitReason::ExitedUnexpectedly,
            panic: false,
        },
        Ok(Err(err)) => ops::Failing {
            failure: Failure::from_error(&*err, Failure::worker_failed()),
            cause: Some(Arc::from(err)),
            reason: ExitReason::Failed,
            panic: false,
        },
        Err(payload) => {
            let panic = PanicError::new(
                format_args!("running loop of worker {:?}", ctx.qualified_name()),
                &*payload,
            );
            ops::Failing {
                failure: panic.failure().clone(),
                cause: Some(Arc::new(panic)),
                reason: ExitReason::Panicked,
                panic: true,
            }
        }
    };
    let Ok(inner) = ctx.runtime() else { return };
    // Failure is published before cleanup and before any stop can complete. A failure racing
    // with a requested stop is recorded while the worker stops.
    let _ = ops::fail(&inner, ctx.index(), ctx.incarnation(), failing);
    if requested {
        return;
    }
    let Some(hook) = on_stop else {
        cleanup.lock().done = true;
        return;
    };
    // Boxed: the cleanup's timer would otherwise make every loop task larger, idle or not.
    Box::pin(clean_up_after_failure(
        hook,
        Arc::clone(cleanup),
        cleanup_timeout,
        ctx,
        inner,
    ))
    .await;
}

/// The automatic cleanup after a failed loop, bounded by the cleanup timeout.
async fn clean_up_after_failure(
    hook: LoopFn,
    cleanup: Arc<Shared>,
    cleanup_timeout: Duration,
    ctx: WorkerContext,
    inner: Arc<crate::runtime::Inner>,
) {
    let outcome = tokio::time::timeout(cleanup_timeout, CatchUnwind::new(hook(ctx.clone()))).await;
    let failing = match outcome {
        Ok(Ok(Ok(()))) => {
            let mut state = cleanup.lock();
            state.done = true;
            state.failed = false;
            return;
        }
        Ok(Ok(Err(err))) => ops::Failing {
            failure: Failure::loop_cleanup_failed(),
            cause: Some(Arc::from(err)),
            reason: ExitReason::Failed,
            panic: false,
        },
        Err(_) => ops::Failing {
            failure: Failure::loop_cleanup_failed(),
            cause: None,
            reason: ExitReason::Failed,
            panic: false,
        },
        Ok(Err(payload)) => {
            let panic = PanicError::new(
                format_args!("cleaning up loop of worker {:?}", ctx.qualified_name()),
                &*payload,
            );
            ops::Failing {
                failure: Failure::new(
                    failure::code::LOOP_CLEANUP_FAILED,
                    panic.failure().message().to_owned(),
                ),
                cause: Some(Arc::new(panic)),
                reason: ExitReason::Panicked,
                panic: true,
            }
        }
    };
    cleanup.lock().failed = true;
    ops::observe_failure(&inner, ctx.index(), ctx.incarnation(), failing);
}

impl Worker for LoopWorker {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        if self.shared.is_running() {
            // A stop that timed out while joining this loop means it ignores its stop signal:
            // refuse at once. Otherwise a loop told to stop is on its way out.
            let told_to_stop = !self.join_timed_out
                && self.previous.as_ref().is_some_and(StopSignal::is_triggered);
            if self.cleanup_state().exited || told_to_stop {
                // The previous loop has returned and its automatic cleanup is still running
                // (bounded by the cleanup timeout), or its incarnation ended and it is on its
                // way out: wait for it (bounded by the start timeout) rather than refuse.
                self.shared.wait_finished().await;
            }
        }
        if self.shared.is_running() {
            return Err(failure::with_failure(
                LoopError::Active,
                "loop_worker_active",
                "loop worker already active",
            ));
        }
        if self.cleanup_state().failed {
            return Err(failure::with_failure(
                LoopError::CleanupPending,
                failure::code::LOOP_CLEANUP_FAILED,
                "loop worker cleanup pending",
            ));
        }
        {
            let mut state = self.cleanup_state();
            state.done = false;
            state.exited = false;
        }
        if let Some(hook) = &self.on_start {
            hook(ctx.clone()).await?;
        }
        if !self.auto_ready {
            ctx.set_ready(false)?;
        }
        self.previous = Some(ctx.stop_signal());
        // Running from here until the loop task finishes, whether or not it is spawned yet.
        self.cleanup_state().running = true;
        // The loop outlives the start call: its context does not carry the start's deadline.
        launch(LoopRun {
            run: Arc::clone(&self.run),
            on_stop: self.on_stop.clone(),
            cleanup_timeout: self.cleanup_timeout,
            ctx: ctx.without_deadline(),
            finish: Finish(Arc::clone(&self.shared)),
        });
        // With auto-ready, readiness follows the spec's `ready_on_start` (default true) when the
        // start succeeds; a readiness check, when the worker has one, decides instead.
        Ok(())
    }

    async fn stop(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        {
            // Pending from here until the hook succeeds: if the runtime's stop timeout drops
            // this future while it joins the loop, a later start must not skip the cleanup.
            let mut state = self.cleanup_state();
            if self.on_stop.is_some() && !state.done {
                state.failed = true;
            }
        }
        if self.shared.is_running() {
            // If the runtime's stop timeout drops this future here, the loop stays running and
            // the next stop joins it.
            self.join_timed_out = true;
            self.shared.wait_finished().await;
            self.join_timed_out = false;
        }
        {
            let mut state = self.cleanup_state();
            if state.done {
                // The automatic cleanup may have finished while this stop marked it pending.
                state.failed = false;
                return Ok(());
            }
        }
        if let Some(hook) = &self.on_stop {
            // Pending until the hook succeeds, also if it panics or its future is dropped.
            self.cleanup_state().failed = true;
            hook(ctx).await.map_err(cleanup_error)?;
        }
        let mut state = self.cleanup_state();
        state.done = true;
        state.failed = false;
        Ok(())
    }
}
