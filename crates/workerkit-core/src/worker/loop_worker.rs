//! `LoopWorker`: "run this loop until asked to stop".

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
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
type LoopFuture = BoxFuture<'static, Result<(), BoxError>>;
/// How a loop ended: returned (with its result) or panicked (with the payload).
type LoopEnd = Result<Result<(), BoxError>, Box<dyn Any + Send>>;

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
    /// The loop of the current run has ended (its task may still be cleaning up).
    exited: bool,
    /// The current run's loop task has not finished (it may not have been spawned yet, see
    /// [`batched`]). What a `JoinHandle` would say, without needing the task to exist.
    running: bool,
    /// How many `wait_finished` calls wait: with none, a run's end is not notified.
    waiting: usize,
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
        /// Counts this call among the waiters (see `Cleanup::waiting`) while it waits.
        struct Waiting<'a>(&'a Shared);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.lock().waiting -= 1;
            }
        }
        {
            let mut state = self.lock();
            if !state.running {
                return;
            }
            state.waiting += 1;
        }
        let _waiting = Waiting(self);
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

    /// A run's loop ended at its stop, joined inline: marks it exited, and finished if nobody
    /// has yet (`finished`), with its cleanup done if the stop has no hook to run (`cleaned`);
    /// wakes whoever waits for the run to finish.
    fn end_run(&self, finished: bool, cleaned: bool) {
        let waiting = {
            let mut state = self.lock();
            state.exited = true;
            if finished {
                state.running = false;
            }
            if cleaned {
                state.done = true;
                state.failed = false;
            }
            state.waiting
        };
        if finished && waiting > 0 {
            self.finished.notify_waiters();
        }
    }

    /// Marks the current run's task finished, and wakes whoever waits for that.
    fn mark_finished(&self) {
        let waiting = {
            let mut state = self.lock();
            state.running = false;
            state.waiting
        };
        if waiting > 0 {
            self.finished.notify_waiters();
        }
    }
}

/// Polls a loop once: its end, or the future to poll again. Panics of the poll, and of
/// dropping the finished future, are caught.
fn advance(mut future: LoopFuture, cx: &mut Context<'_>) -> Result<LoopEnd, LoopFuture> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Err(future),
        Ok(Poll::Ready(result)) => {
            match std::panic::catch_unwind(AssertUnwindSafe(move || drop(future))) {
                Ok(()) => Ok(Ok(result)),
                Err(payload) => Ok(Err(payload)),
            }
        }
        Err(payload) => {
            // Whatever dropping a future that panicked does, the panic is the news.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(future)));
            Ok(Err(payload))
        }
    }
}

/// The loop of a run whose loop function panicked: its first poll resumes that panic, which
/// the loop's task then catches and reports like any panic of the loop.
async fn rethrow(payload: Box<dyn Any + Send>) -> Result<(), BoxError> {
    std::panic::resume_unwind(payload)
}

/// Who holds a run's loop, and what is left to do when the run ends.
struct RunState {
    /// The loop while nobody polls it; `None` while the loop task or a joining stop polls it,
    /// and once it ended.
    body: Option<LoopFuture>,
    /// The loop ended.
    ended: bool,
    /// The run is not yet marked finished (`Cleanup::running`); whoever ends it does.
    unfinished: bool,
    /// The loop task's waker: to hand the loop back to it, or to let it end.
    waker: Option<Waker>,
    /// The loop task is gone (ended, dropped with the tokio runtime, or never launched).
    task_gone: bool,
}

/// One run of a loop worker's loop, shared by the loop's task, which polls the loop, and a
/// stop, which may *join* the loop inline: when the loop rests at the stop, the stop polls it to
/// its end itself, so an idle loop ends without its task being scheduled first and the stop
/// woken after (two task hand-offs per worker, which dominate the stop of many idle workers).
/// The loop's task then only has to go away (woken at once, or after a bulk stop).
struct RunCell {
    state: Mutex<RunState>,
    ctx: WorkerContext,
    shared: Arc<Shared>,
}

impl RunCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the run finished (`Cleanup::running` false), if nobody has yet.
    fn finish(&self) {
        let unfinished = std::mem::replace(&mut self.lock().unfinished, false);
        if unfinished {
            self.shared.mark_finished();
        }
    }

    /// The loop task's poll: `Some(end)` when the loop ended in it, `None` once a stop ended
    /// it (the task then has nothing left to do).
    fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Option<LoopEnd>> {
        let body = {
            let mut st = self.lock();
            if st.ended {
                return Poll::Ready(None);
            }
            match st.body.take() {
                Some(body) => body,
                None => {
                    // A stop is joining the loop: it hands it back, or ends it, and wakes us.
                    store_waker(&mut st.waker, cx);
                    return Poll::Pending;
                }
            }
        };
        match advance(body, cx) {
            Ok(end) => {
                self.lock().ended = true;
                Poll::Ready(Some(end))
            }
            Err(future) => {
                let mut st = self.lock();
                st.body = Some(future);
                store_waker(&mut st.waker, cx);
                Poll::Pending
            }
        }
    }

    /// The loop task is gone. A loop resting here goes with it (and the run is finished), as
    /// when the tokio runtime drops the task; one a stop is joining is that stop's to finish.
    fn task_gone(&self) {
        let body = {
            let mut st = self.lock();
            st.task_gone = true;
            if st.body.is_none() && !st.ended {
                return;
            }
            st.body.take()
        };
        drop(body);
        self.finish();
    }

    /// Takes the loop to join it inline: only when it rests (not while its task polls it) and
    /// its incarnation was asked to stop (so its end needs no automatic cleanup).
    fn claim(&self) -> Option<LoopFuture> {
        if !self.ctx.is_stop_requested() {
            return None;
        }
        let mut st = self.lock();
        if st.task_gone {
            return None;
        }
        st.body.take()
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A loop taken by a joining stop. Dropped before the loop ended (the stop timed out), it
/// hands the loop back to its task, which goes on polling it.
struct Joining<'a> {
    run: &'a RunCell,
    body: Option<LoopFuture>,
}

impl Joining<'_> {
    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<LoopEnd> {
        let Some(body) = self.body.take() else {
            return Poll::Ready(Ok(Ok(())));
        };
        // The loop runs as in its own task: lifecycle calls that would wait for it are refused.
        let advanced = match self.run.ctx.loop_key() {
            Some(key) => crate::runtime::LOOP_OF.sync_scope(key, || advance(body, cx)),
            None => advance(body, cx),
        };
        match advanced {
            // `join_inline` marks the loop ended, in the same step as the rest of its end.
            Ok(end) => Poll::Ready(end),
            Err(future) => {
                self.body = Some(future);
                Poll::Pending
            }
        }
    }
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else { return };
        let (body, waker) = {
            let mut st = self.run.lock();
            if st.task_gone {
                (Some(body), None)
            } else {
                st.body = Some(body);
                (None, st.waker.take())
            }
        };
        if let Some(body) = body {
            // The task is gone: so is the loop, and the run is over.
            drop(body);
            self.run.finish();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Joins a stopped run's loop inline if it rests (see [`RunCell`]); returns at once otherwise.
/// `true` when it did: the loop ended, and the run is finished. `cleaned`: the stop has no
/// cleanup hook to run, so the run's cleanup is done with its end.
async fn join_inline(run: &RunCell, cleaned: bool) -> bool {
    let Some(body) = run.claim() else {
        return false;
    };
    let mut joining = Joining {
        run,
        body: Some(body),
    };
    let end = std::future::poll_fn(|cx| joining.poll_join(cx)).await;
    drop(joining);
    // The loop ended on its stop signal: what its task would have done, minus the automatic
    // cleanup (a requested stop runs the cleanup hook itself).
    let waker = match classify_end(end, &run.ctx, true) {
        None => {
            // The usual end, in one step each for the run and the worker.
            let (unfinished, waker) = {
                let mut st = run.lock();
                st.ended = true;
                (
                    std::mem::replace(&mut st.unfinished, false),
                    st.waker.take(),
                )
            };
            run.shared.end_run(unfinished, cleaned);
            waker
        }
        Some(failing) => {
            run.lock().ended = true;
            run.shared.lock().exited = true;
            // Published before the run counts as finished, so before the stop completes.
            if let Ok(inner) = run.ctx.runtime() {
                let _ = ops::fail(&inner, run.ctx.index(), run.ctx.incarnation(), failing);
            }
            run.finish();
            if cleaned {
                run.shared.end_run(false, true);
            }
            run.lock().waker.take()
        }
    };
    if let Some(waker) = waker {
        wake_later(waker);
    }
    true
}

/// One loop run, ready to be spawned as its own task. Dropped without having run (a batched
/// launch that never happened) or with its task, it ends the run.
pub(crate) struct LoopRun {
    run: Arc<RunCell>,
    on_stop: Option<LoopFn>,
    cleanup_timeout: Duration,
}

impl Drop for LoopRun {
    fn drop(&mut self) {
        self.run.task_gone();
    }
}

impl LoopRun {
    fn launch(self) {
        let inner = self.run.ctx.runtime().ok();
        let key = self.run.ctx.loop_key();
        let task = RunLoop {
            run: self,
            key,
            cleanup: None,
        };
        // Tracked (the runtime's shutdown waits for it); not a child of the incarnation, which
        // a stop would abort: the loop is joined, not dropped, at the stop.
        match inner {
            Some(inner) => crate::task::spawn(&inner.tracker, task),
            None => crate::task::spawn(&tokio_util::task::TaskTracker::new(), task),
        };
    }
}

tokio::task_local! {
    /// Wakes of finished loop tasks deferred to the end of a bulk stop.
    static DEFERRED: Deferred;
}

/// Wakers to wake when dropped.
struct Deferred(RefCell<Vec<Waker>>);

impl Drop for Deferred {
    fn drop(&mut self) {
        for waker in self.0.get_mut().drain(..) {
            waker.wake();
        }
    }
}

/// Runs `future` (a bulk stop) with the wake-ups of loop tasks whose loops were joined inline
/// deferred to its end (or its drop). Such a task has nothing left to do but go; woken one by
/// one, each would be scheduled between two stops, where the scheduler hands it to another
/// thread. Woken together at the end, they go like a batch of plain tasks.
/// `capacity`: how many wakes to expect (room is made up front, see `ops::snapshot_states`).
pub(crate) async fn deferred_wakes<F: Future>(capacity: usize, future: F) -> F::Output {
    DEFERRED
        .scope(Deferred(RefCell::new(Vec::with_capacity(capacity))), future)
        .await
}

/// Wakes `waker` at the end of the enclosing [`deferred_wakes`], or now outside one.
fn wake_later(waker: Waker) {
    let mut waker = Some(waker);
    let _ = DEFERRED.try_with(|deferred| {
        if let (Ok(mut wakers), Some(waker)) = (deferred.0.try_borrow_mut(), waker.take()) {
            wakers.push(waker);
        }
    });
    if let Some(waker) = waker {
        waker.wake();
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
/// - `start` runs the optional start hook, calls the loop function (which makes the loop's
///   future; a panic there fails the worker like a panic of the loop), launches that future in
///   its own task, and (with auto-ready, the default) marks the worker ready.
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
    run_fn: LoopFn,
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
    /// The latest run (weakly: the run holds a context, which holds this worker's entry).
    run: Weak<RunCell>,
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
    /// A loop worker running `run` (called anew for each start, in `start`; the future it
    /// returns runs in the loop's own task).
    pub fn new<F, Fut>(run: F) -> Self
    where
        F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Self {
            run_fn: boxed(run),
            on_start: None,
            on_stop: None,
            auto_ready: true,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            previous: None,
            join_timed_out: false,
            shared: Arc::new(Shared::default()),
            run: Weak::new(),
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

/// How a loop's end fails its worker, if it does: `None` for an `Ok` return on a requested stop.
fn classify_end(end: LoopEnd, ctx: &WorkerContext, requested: bool) -> Option<ops::Failing> {
    Some(match end {
        Ok(Ok(())) if requested => return None,
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
    })
}

/// The loop task's future: runs the loop (unless a stop joins it first), then handles its
/// end. The run counts as finished when it is dropped (`LoopRun`'s drop).
///
/// Written out by hand, and small: its size sets the size of the task's allocation, one per
/// start (an `async fn` would keep its argument twice, and a task-local scope around it another
/// 40 bytes).
struct RunLoop {
    run: LoopRun,
    /// This worker's [`LOOP_OF`](crate::runtime::LOOP_OF) key, set while the task polls: a
    /// lifecycle call from the loop that would wait for it is refused. `None` once the runtime
    /// was gone at the launch.
    key: Option<(u64, usize)>,
    /// The automatic cleanup after the loop failed, once it runs.
    cleanup: Option<BoxFuture<'static, ()>>,
}

impl RunLoop {
    fn poll_scoped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(cleanup) = &mut self.cleanup {
                return cleanup.as_mut().poll(cx);
            }
            let Some(end) = std::task::ready!(self.run.run.poll_task(cx)) else {
                // A stop joined the loop and handled its end.
                return Poll::Ready(());
            };
            match loop_ended(&self.run, end) {
                Some(cleanup) => self.cleanup = Some(cleanup),
                None => return Poll::Ready(()),
            }
        }
    }
}

impl Future for RunLoop {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.key {
            Some(key) => crate::runtime::LOOP_OF.sync_scope(key, || this.poll_scoped(cx)),
            None => this.poll_scoped(cx),
        }
    }
}

/// A loop ended in its own task: publishes a failure, if it is one, and returns the automatic
/// cleanup to run, if any.
fn loop_ended(loop_run: &LoopRun, end: LoopEnd) -> Option<BoxFuture<'static, ()>> {
    let run = &loop_run.run;
    let ctx = &run.ctx;
    let cleanup = &run.shared;
    cleanup.lock().exited = true;
    let requested = ctx.is_stop_requested();
    let failing = classify_end(end, ctx, requested)?;
    let inner = ctx.runtime().ok()?;
    // Failure is published before cleanup and before any stop can complete. A failure racing
    // with a requested stop is recorded while the worker stops.
    let _ = ops::fail(&inner, ctx.index(), ctx.incarnation(), failing);
    if requested {
        return None;
    }
    let Some(hook) = loop_run.on_stop.clone() else {
        cleanup.lock().done = true;
        return None;
    };
    // Boxed: the cleanup's timer would otherwise make every loop task larger, idle or not.
    Some(Box::pin(clean_up_after_failure(
        hook,
        Arc::clone(cleanup),
        loop_run.cleanup_timeout,
        ctx.clone(),
        inner,
    )))
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

/// A start's checks of the previous run, under the worker's lock: refused while that run is
/// active or its cleanup failed; otherwise the new run begins (`running`: counts as running
/// from here).
fn admit(state: &mut Cleanup, running: bool) -> Result<(), BoxError> {
    if state.running {
        return Err(failure::with_failure(
            LoopError::Active,
            "loop_worker_active",
            "loop worker already active",
        ));
    }
    if state.failed {
        return Err(failure::with_failure(
            LoopError::CleanupPending,
            failure::code::LOOP_CLEANUP_FAILED,
            "loop worker cleanup pending",
        ));
    }
    state.done = false;
    state.exited = false;
    state.running = running;
    Ok(())
}

impl Worker for LoopWorker {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        // Without a start hook or a readiness of its own to set, nothing can fail the start
        // after the checks: the run counts as running from them on (one lock, not two).
        let running_now = self.on_start.is_none() && self.auto_ready;
        let checked = {
            let mut state = self.cleanup_state();
            // A stop that timed out while joining this loop means it ignores its stop signal:
            // refuse at once. Otherwise a loop told to stop is on its way out.
            let told_to_stop = !self.join_timed_out
                && self.previous.as_ref().is_some_and(StopSignal::is_triggered);
            // The previous loop has returned and its automatic cleanup is still running
            // (bounded by the cleanup timeout), or its incarnation ended and it is on its way
            // out: wait for it (bounded by the start timeout) rather than refuse.
            let wait = state.running && (state.exited || told_to_stop);
            (!wait).then(|| admit(&mut state, running_now))
        };
        let admitted = match checked {
            Some(admitted) => admitted,
            None => {
                self.shared.wait_finished().await;
                admit(&mut self.cleanup_state(), running_now)
            }
        };
        admitted?;
        if let Some(hook) = &self.on_start {
            hook(ctx.clone()).await?;
        }
        if !self.auto_ready {
            ctx.set_ready(false)?;
        }
        self.previous = Some(ctx.stop_signal());
        if !running_now {
            // Running from here until the loop task finishes, whether or not it is spawned yet.
            self.cleanup_state().running = true;
        }
        // The loop outlives the start call: its context does not carry the start's deadline.
        let ctx = ctx.without_deadline();
        // The loop function is called here (it only makes the loop's future, which runs in the
        // loop's task): the future is then allocated, and freed by a joining stop, on the
        // thread that runs the lifecycle operations, not on whichever one polls the loop first.
        let body = std::panic::catch_unwind(AssertUnwindSafe(|| (self.run_fn)(ctx.clone())))
            .unwrap_or_else(|payload| Box::pin(rethrow(payload)));
        let run = Arc::new(RunCell {
            state: Mutex::new(RunState {
                body: Some(body),
                ended: false,
                unfinished: true,
                waker: None,
                task_gone: false,
            }),
            ctx,
            shared: Arc::clone(&self.shared),
        });
        self.run = Arc::downgrade(&run);
        launch(LoopRun {
            run,
            on_stop: self.on_stop.clone(),
            cleanup_timeout: self.cleanup_timeout,
        });
        // With auto-ready, readiness follows the spec's `ready_on_start` (default true) when the
        // start succeeds; a readiness check, when the worker has one, decides instead.
        Ok(())
    }

    async fn stop(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        let running = {
            // Pending from here until the hook succeeds: if the runtime's stop timeout drops
            // this future while it joins the loop, a later start must not skip the cleanup.
            let mut state = self.cleanup_state();
            if self.on_stop.is_some() && !state.done {
                state.failed = true;
            }
            state.running
        };
        if running {
            // If the runtime's stop timeout drops this future here, the loop stays running and
            // the next stop joins it.
            self.join_timed_out = true;
            let cleaned = self.on_stop.is_none();
            let joined = match self.run.upgrade() {
                Some(run) => join_inline(&run, cleaned).await,
                None => false,
            };
            if !joined {
                self.shared.wait_finished().await;
            }
            self.join_timed_out = false;
            // The run is over: its cell (kept allocated by this weak reference) can go.
            self.run = Weak::new();
            if joined && cleaned {
                // Joined with nothing to clean up: marked done with the run's end.
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's cell is allocated at every start and freed when its loop task ends, often on
    /// another thread than the one that allocated it. Within 120 bytes (with the `Arc`'s
    /// counts), glibc frees it to a fast bin, lock-free; a larger one takes the allocating
    /// thread's arena lock, contended while that thread starts or stops other workers.
    #[test]
    fn run_cell_stays_a_small_allocation() {
        let allocation = std::mem::size_of::<RunCell>() + 2 * std::mem::size_of::<usize>();
        assert!(
            allocation <= 120,
            "Arc<RunCell> allocates {allocation} bytes"
        );
    }
}
