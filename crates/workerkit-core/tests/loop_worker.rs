//! `LoopWorker`: a port of Go's `loop_test.go` (spec §10.3, §2.9) to the Rust API.
//!
//! Every test runs on a paused clock; loops, hooks and the test synchronise through counters and
//! latches, never real sleeps.
//!
//! Go tests deliberately not ported: `StartRejectsNilLoop`, `StartRequiresWorkerRuntime` and
//! `StopRequiresWorkerRuntimeWhenNeverStarted` (the type system rules out a missing loop or
//! context), and `FailedStartCleanupErrorBlocksRestartUntilStopRetrySucceeds` (a failed Rust start
//! never runs the cleanup hook; pending cleanup after a loop failure is covered below).
//! `AutomaticCleanupPanicHonorsCrashPolicy` and `CleanupPanicDuringStopHonorsCrashPolicy` are
//! ported to the Rust divergence: `PanicPolicy::Propagate` escalates to a runtime failure where
//! no caller exists, and resumes the panic on the caller of `stop` where one does.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use workerkit_core::failure::{self, BoxError, PanicError};
use workerkit_core::observe::FailureEvent;
use workerkit_core::test_util::{FakeWorker, Recorded, RecordingObserver};
use workerkit_core::{
    ExitReason, LifecycleError, LifecycleState, LoopWorker, PanicPolicy, Runtime, Worker,
    WorkerContext, WorkerSpec,
};

// ---- helpers -------------------------------------------------------------------------------

/// Keeps the expected panics of these tests out of the output; any other panic (a failed
/// assertion) still goes to the default hook.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned());
            match text {
                Some(text) if text.starts_with("expected panic") => {}
                None if payload.is::<u32>() => {}
                _ => default(info),
            }
        }));
    });
}

/// Fails the test instead of hanging it (on the paused clock this costs no real time).
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .expect("timed out waiting for a condition")
}

/// A counter whose values can be awaited.
#[derive(Clone)]
struct Counter(Arc<watch::Sender<usize>>);

impl Counter {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    fn get(&self) -> usize {
        *self.0.borrow()
    }

    async fn reached(&self, n: usize) {
        let mut rx = self.0.subscribe();
        within(async {
            let _ = rx.wait_for(|v| *v >= n).await;
        })
        .await;
    }
}

/// A one-way gate: closed until opened, then open for good.
#[derive(Clone)]
struct Latch(Arc<watch::Sender<bool>>);

impl Latch {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Tracks loop runs: how many launched, exited, are live at once, and their contexts.
#[derive(Clone)]
struct Loops {
    launched: Counter,
    exited: Counter,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    incarnations: Arc<Mutex<Vec<u64>>>,
    deadlines: Arc<Mutex<Vec<Option<Instant>>>>,
}

/// Marks one loop run live until dropped (also when the loop panics or is dropped).
struct LiveLoop(Loops);

impl Drop for LiveLoop {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.exited.bump();
    }
}

impl Loops {
    fn new() -> Self {
        Self {
            launched: Counter::new(),
            exited: Counter::new(),
            active: Arc::new(AtomicUsize::new(0)),
            max_active: Arc::new(AtomicUsize::new(0)),
            incarnations: Arc::default(),
            deadlines: Arc::default(),
        }
    }

    fn enter(&self, ctx: &WorkerContext) -> LiveLoop {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        self.incarnations.lock().unwrap().push(ctx.incarnation());
        self.deadlines.lock().unwrap().push(ctx.deadline());
        self.launched.bump();
        LiveLoop(self.clone())
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }
}

/// How a scripted loop ends.
#[derive(Clone)]
enum End {
    /// Returns `Ok` when asked to stop.
    OnStop,
    /// Ignores the stop signal until the latch opens.
    IgnoreStopUntil(Latch),
    /// Never returns.
    Never,
    /// Returns `Ok` unasked after the delay.
    OkAfter(Duration),
    /// Returns an error with this public code after the delay.
    ErrAfter(Duration, &'static str),
    /// Panics after the delay.
    PanicAfter(Duration),
    /// Returns an error with this public code when asked to stop.
    ErrOnStop(&'static str),
}

fn secret_error(code: &'static str) -> BoxError {
    failure::with_failure(
        std::io::Error::other("postgres://admin:hunter2@db"),
        code,
        "public message",
    )
}

fn scripted_loop(loops: &Loops, end: End) -> LoopWorker {
    let loops = loops.clone();
    LoopWorker::new(move |ctx| {
        let loops = loops.clone();
        let end = end.clone();
        async move {
            let _live = loops.enter(&ctx);
            match end {
                End::OnStop => {
                    ctx.stop_requested().await;
                    Ok(())
                }
                End::IgnoreStopUntil(latch) => {
                    ctx.stop_requested().await;
                    latch.wait().await;
                    Ok(())
                }
                End::Never => std::future::pending().await,
                End::OkAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(())
                }
                End::ErrAfter(delay, code) => {
                    tokio::time::sleep(delay).await;
                    Err(secret_error(code))
                }
                End::PanicAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    panic!("expected panic: loop");
                }
                End::ErrOnStop(code) => {
                    ctx.stop_requested().await;
                    Err(secret_error(code))
                }
            }
        }
    })
}

/// What one call of a cleanup hook does.
#[derive(Clone, Copy, Debug)]
enum HookStep {
    Ok,
    Fail,
    Panic,
    Hang,
}

/// A scripted cleanup (stop) hook that counts its calls and overlapping runs.
#[derive(Clone)]
struct Hooks {
    script: Arc<Mutex<VecDeque<(Duration, HookStep)>>>,
    calls: Counter,
    finished: Counter,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
}

struct LiveHook(Hooks);

impl Drop for LiveHook {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.bump();
    }
}

impl Hooks {
    fn new(script: impl IntoIterator<Item = (Duration, HookStep)>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            calls: Counter::new(),
            finished: Counter::new(),
            active: Arc::new(AtomicUsize::new(0)),
            max_active: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn steps(steps: impl IntoIterator<Item = HookStep>) -> Self {
        Self::new(steps.into_iter().map(|s| (Duration::ZERO, s)))
    }

    async fn run(&self) -> Result<(), BoxError> {
        let (delay, step) = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((Duration::ZERO, HookStep::Ok));
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let _live = LiveHook(self.clone());
        self.calls.bump();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match step {
            HookStep::Ok => Ok(()),
            HookStep::Fail => Err(std::io::Error::other("cleanup: token=hunter2").into()),
            HookStep::Panic => panic!("expected panic: cleanup"),
            HookStep::Hang => std::future::pending().await,
        }
    }

    fn attach(&self, worker: LoopWorker) -> LoopWorker {
        let hooks = self.clone();
        worker.on_stop(move |_ctx| {
            let hooks = hooks.clone();
            async move { hooks.run().await }
        })
    }

    fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }
}

fn runtime(recorder: &RecordingObserver) -> Runtime {
    Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap()
}

fn state(rt: &Runtime, worker: &str) -> LifecycleState {
    rt.worker(worker).unwrap().status.state
}

fn last_failure_code(rt: &Runtime, worker: &str) -> Option<String> {
    rt.worker(worker)
        .unwrap()
        .status
        .last_failure
        .map(|f| f.code)
}

async fn wait_failures(recorder: &RecordingObserver, n: usize) -> Vec<FailureEvent> {
    within(recorder.wait_until(|events| {
        events
            .iter()
            .filter(|e| matches!(e, Recorded::Failure(_)))
            .count()
            >= n
    }))
    .await;
    recorder.failures()
}

fn position(briefs: &[String], wanted: &str) -> usize {
    briefs
        .iter()
        .position(|b| b == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {briefs:#?}"))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[allow(clippy::disallowed_methods)] // A test needs a task of its own to catch a resumed panic.
fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

// ---- start -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn start_hook_runs_before_the_loop() {
    let rt = runtime(&RecordingObserver::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let loops = Loops::new();
    let worker = {
        let (order, hook_order, hook_loops) = (order.clone(), order.clone(), loops.clone());
        let loops = loops.clone();
        LoopWorker::new(move |ctx| {
            let (order, loops) = (order.clone(), loops.clone());
            async move {
                let _live = loops.enter(&ctx);
                order.lock().unwrap().push("loop");
                ctx.stop_requested().await;
                Ok(())
            }
        })
        .on_start(move |_ctx| {
            let (order, loops) = (hook_order.clone(), hook_loops.clone());
            async move {
                // Even a hook that yields and takes time runs wholly before the loop.
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert_eq!(
                    loops.launched.get(),
                    0,
                    "the loop ran before the start hook"
                );
                order.lock().unwrap().push("start hook");
                Ok(())
            }
        })
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;
    assert_eq!(*order.lock().unwrap(), ["start hook", "loop"]);
}

#[tokio::test(start_paused = true)]
async fn start_hook_error_fails_the_start_and_no_loop_runs() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let worker = scripted_loop(&loops, End::OnStop)
        .on_start(|_ctx| async { Err(secret_error("config_invalid")) });
    rt.register(WorkerSpec::new("w", worker)).unwrap();

    let err = rt.start("w").await.unwrap_err();
    let LifecycleError::StartFailed {
        failure, reason, ..
    } = &err
    else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert_eq!(failure.code(), "config_invalid");
    assert_eq!(*reason, ExitReason::Failed);
    assert!(!err.to_string().contains("hunter2"));

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        loops.launched.get(),
        0,
        "a loop ran after a failed start hook"
    );
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Failed);
    assert!(!status.ready);
    assert_eq!(status.last_failure.unwrap().code, "config_invalid");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failure.code(), "config_invalid");
}

#[tokio::test(start_paused = true)]
async fn failed_restart_can_still_run_the_stop_hook() {
    // Go: FailedRestartCanRunStopHook — the stop hook runs after a failed restart, 2 calls in all.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    let start_calls = Arc::new(AtomicUsize::new(0));
    let worker = {
        let start_calls = start_calls.clone();
        hooks
            .attach(scripted_loop(&loops, End::OnStop))
            .on_start(move |_ctx| {
                let n = start_calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Ok(())
                    } else {
                        Err(secret_error("dependency_down"))
                    }
                }
            })
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();

    rt.start("w").await.unwrap();
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 1);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "dependency_down");
    assert_eq!(
        loops.launched.get(),
        1,
        "the failed restart launched a loop"
    );

    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);
}

// ---- readiness -------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn auto_ready_marks_the_worker_ready_by_default() {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new(
        "w",
        scripted_loop(&Loops::new(), End::OnStop),
    ))
    .unwrap();
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Running);
    assert!(status.ready);
    assert!(rt.status().ready);
    assert!(recorder.briefs().contains(&"R rt/w true".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn auto_ready_can_be_disabled() {
    let recorder = RecordingObserver::new();
    // `ready_on_start` (the runtime default) is true: the loop worker's own setting must win.
    let rt = runtime(&recorder);
    let loops = Loops::new();
    rt.register(WorkerSpec::new(
        "w",
        scripted_loop(&loops, End::OnStop).auto_ready(false),
    ))
    .unwrap();
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Running);
    assert!(!status.ready);
    loops.launched.reached(1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!rt.worker("w").unwrap().status.ready);
    assert!(!rt.status().ready);
    assert!(!recorder.briefs().iter().any(|b| b == "R rt/w true"));
}

#[tokio::test(start_paused = true)]
async fn loop_can_mark_itself_ready_when_auto_ready_is_disabled() {
    let rt = runtime(&RecordingObserver::new());
    let warm = Latch::new();
    let worker = {
        let warm = warm.clone();
        LoopWorker::new(move |ctx| {
            let warm = warm.clone();
            async move {
                warm.wait().await;
                ctx.set_ready(true)?;
                ctx.stop_requested().await;
                Ok(())
            }
        })
        .auto_ready(false)
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    assert!(!rt.start("w").await.unwrap().ready);
    assert!(!rt.worker("w").unwrap().status.ready);

    warm.open();
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.worker("w").unwrap().status.ready)).await;
    assert!(rt.status().ready);
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
}

// ---- the loop and stop -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn loop_outlives_the_start_call_and_its_deadline() {
    // Go: StartContextCancellationDoesNotCancelLoop — the loop is detached from the start call.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    rt.register(
        WorkerSpec::new("w", scripted_loop(&loops, End::OnStop))
            .start_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    // Far past the start timeout: the loop still runs, and its context carries no start deadline.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(loops.active(), 1);
    assert_eq!(loops.exited.get(), 0);
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
    assert_eq!(
        *loops.deadlines.lock().unwrap(),
        [None],
        "the loop's context carries the start call's deadline"
    );

    rt.stop("w").await.unwrap();
    assert_eq!(loops.exited.get(), 1);
    assert_eq!(loops.active(), 0);
}

#[tokio::test(start_paused = true)]
async fn stop_ends_the_loop_and_runs_the_stop_hook_once() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let live_at_hook = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let (hook_loops, live_at_hook) = (loops.clone(), live_at_hook.clone());
        scripted_loop(&loops, End::OnStop).on_stop(move |_ctx| {
            live_at_hook.lock().unwrap().push(hook_loops.active());
            async { Ok(()) }
        })
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    let status = rt.stop("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
    assert_eq!(loops.exited.get(), 1, "stop returned before the loop ended");
    assert_eq!(
        *live_at_hook.lock().unwrap(),
        [0],
        "the hook ran once, after the loop"
    );

    let err = rt.stop("w").await.unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::InvalidState {
                state: LifecycleState::Stopped,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(live_at_hook.lock().unwrap().len(), 1);
    assert_eq!(rt.wait_exit("w").await.unwrap().reason, ExitReason::Stopped);
}

#[tokio::test(start_paused = true)]
async fn stop_times_out_when_the_loop_ignores_the_stop_signal() {
    // Go: StopReturnsContextErrorWhenLoopDoesNotExit.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    rt.register(
        WorkerSpec::new("w", scripted_loop(&loops, End::Never))
            .stop_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    let began = Instant::now();
    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    assert!(matches!(err, LifecycleError::StopFailed { .. }), "{err:?}");
    assert_eq!(err.failure().unwrap().code(), "deadline_exceeded");
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(
        last_failure_code(&rt, "w").as_deref(),
        Some("deadline_exceeded")
    );
    assert_eq!(loops.active(), 1, "the loop is still alive");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].lifecycle_changed);
}

#[tokio::test(start_paused = true)]
async fn stop_timeout_never_creates_a_second_loop() {
    // Go: StopTimeoutCannotCreateDuplicateLoop.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    let release = Latch::new();
    rt.register(
        WorkerSpec::new(
            "w",
            hooks.attach(scripted_loop(&loops, End::IgnoreStopUntil(release.clone()))),
        )
        .stop_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "deadline_exceeded");
    assert_eq!(loops.active(), 1);
    assert_eq!(hooks.calls.get(), 0, "cleanup ran while the loop was live");

    // A restart is refused while the old loop lives.
    let err = rt.start("w").await.unwrap_err();
    assert!(matches!(err, LifecycleError::StartFailed { .. }), "{err:?}");
    assert_eq!(err.failure().unwrap().code(), "loop_worker_active");
    assert_eq!(
        last_failure_code(&rt, "w").as_deref(),
        Some("loop_worker_active")
    );
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(loops.launched.get(), 1);

    // A second stop joins the same loop.
    let (stopped, ()) = tokio::join!(rt.stop("w"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(loops.exited.get(), 0);
        release.open();
    });
    assert_eq!(stopped.unwrap().state, LifecycleState::Stopped);
    assert_eq!(loops.exited.get(), 1);
    assert_eq!(hooks.calls.get(), 1);

    // Now a restart runs a fresh loop, and there was never more than one at a time.
    rt.start("w").await.unwrap();
    loops.launched.reached(2).await;
    rt.stop("w").await.unwrap();
    assert_eq!(loops.launched.get(), 2);
    assert_eq!(loops.max_active(), 1, "two loops ran at once");
}

#[tokio::test(start_paused = true)]
async fn restart_waits_for_cleanup_after_a_timed_out_stop() {
    // Go: RestartWaitsForCleanupAfterTimedOutStop. The stop that timed out never ran the cleanup
    // hook; once the loop has ended on its own, a restart must still wait for a stop to run it.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    let release = Latch::new();
    rt.register(
        WorkerSpec::new(
            "w",
            hooks.attach(scripted_loop(&loops, End::IgnoreStopUntil(release.clone()))),
        )
        .stop_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;
    rt.stop("w").await.unwrap_err();

    release.open();
    loops.exited.reached(1).await;
    assert_eq!(hooks.calls.get(), 0);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    assert_eq!(
        loops.launched.get(),
        1,
        "restarted without the old run's cleanup"
    );

    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 1);
    rt.start("w").await.unwrap();
    loops.launched.reached(2).await;
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
}

// ---- unexpected exits and automatic cleanup ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn unexpected_ok_exit_fails_with_exited_unexpectedly_and_runs_cleanup() {
    // Go: UnexpectedNilExitReportsFailureAndRunsStopHook.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(&loops, End::OkAfter(Duration::from_secs(1)))),
    ))
    .unwrap();
    rt.start("w").await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::ExitedUnexpectedly);
    assert_eq!(exit.incarnation, 1);
    assert_eq!(
        exit.failure.as_ref().map(|f| f.code()),
        Some("loop_exited_unexpectedly")
    );
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Failed);
    assert!(!status.ready);
    assert_eq!(
        status.last_failure.unwrap().code,
        "loop_exited_unexpectedly"
    );
    hooks.finished.reached(1).await;
    assert_eq!(hooks.calls.get(), 1, "automatic cleanup did not run once");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].lifecycle_changed);
    assert!(!failures[0].panic);

    // The automatic cleanup succeeded: stop does not run the hook again.
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 1);
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn error_exit_fails_the_worker_and_runs_cleanup() {
    // Go: UnexpectedErrorExitReportsFailure.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start("w").await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Failed);
    assert_eq!(exit.failure.as_ref().map(|f| f.code()), Some("poll_failed"));
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(last_failure_code(&rt, "w").as_deref(), Some("poll_failed"));
    hooks.finished.reached(1).await;
    assert_eq!(hooks.calls.get(), 1);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failure.code(), "poll_failed");
    assert_eq!(failures[0].incarnation, 1);
    let json = serde_json::to_string(&rt.workers()).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
}

#[tokio::test(start_paused = true)]
async fn stop_waits_for_the_automatic_cleanup() {
    // Go: StopWaitsForFailureCleanup.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::new([(Duration::from_secs(2), HookStep::Ok)]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    hooks.calls.reached(1).await;
    let cleanup_began = Instant::now();

    rt.stop("w").await.unwrap();
    assert_eq!(
        cleanup_began.elapsed(),
        Duration::from_secs(2),
        "stop did not wait for the automatic cleanup"
    );
    assert_eq!(hooks.calls.get(), 1);
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);

    rt.start("w").await.unwrap();
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_start_during_the_automatic_cleanup_waits_for_it() {
    // Go blocks such a start until its deadline; here the start waits for the cleanup (bounded
    // by the cleanup timeout) and then starts the next incarnation. The hook ran only once.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::new([(Duration::from_secs(2), HookStep::Ok)]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    hooks.calls.reached(1).await;
    let cleanup_began = Instant::now();

    let status = rt.start("w").await.unwrap();
    assert_eq!(cleanup_began.elapsed(), Duration::from_secs(2));
    assert_eq!(status.state, LifecycleState::Running);
    assert_eq!(status.incarnation, 2);
    assert_eq!(hooks.calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn genuine_error_racing_with_stop_is_recorded_and_the_worker_ends_stopped() {
    // Go: ReportsGenuineErrorRacingWithStop.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(&loops, End::ErrOnStop("flush_failed"))),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    let status = rt.stop("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
    assert_eq!(status.last_failure.unwrap().code, "flush_failed");
    assert_eq!(rt.wait_exit("w").await.unwrap().reason, ExitReason::Stopped);
    // The cleanup ran once, from stop (no automatic cleanup for a requested stop).
    assert_eq!(hooks.calls.get(), 1);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failure.code(), "flush_failed");
    assert!(!failures[0].lifecycle_changed);

    // A successful restart clears the evidence.
    let status = rt.start("w").await.unwrap();
    assert!(status.last_failure.is_none());
}

#[tokio::test(start_paused = true)]
async fn failure_is_published_before_stop_completes() {
    // Go: PublishesFailureBeforeStopCompletes.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    rt.register(WorkerSpec::new(
        "w",
        scripted_loop(&loops, End::ErrOnStop("flush_failed")),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;

    let status = rt.stop("w").await.unwrap();
    // The status `stop` returns already carries the failure, and the failure event precedes the
    // end of the stop.
    assert_eq!(status.last_failure.unwrap().code, "flush_failed");
    let briefs = recorder.briefs();
    assert!(
        position(&briefs, "F rt/w flush_failed") < position(&briefs, "T rt/w stopping->stopped"),
        "{briefs:#?}"
    );
}

// ---- cleanup failures and retries --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cleanup_failure_keeps_primary_failure_and_blocks_restart_until_stop_retries() {
    // Go: FailureCleanupErrorBlocksRestartUntilStopRetrySucceeds.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::steps([HookStep::Fail]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start("w").await.unwrap();

    let failures = wait_failures(&recorder, 2).await;
    assert_eq!(failures[0].failure.code(), "poll_failed");
    assert!(failures[0].lifecycle_changed);
    assert_eq!(failures[1].failure.code(), "loop_cleanup_failed");
    assert!(!failures[1].lifecycle_changed);
    assert!(!failures[1].panic);
    assert_eq!(failures[1].incarnation, 1);
    assert!(!failures[1].failure.message().contains("hunter2"));
    // The primary failure stays the worker's last failure.
    assert_eq!(last_failure_code(&rt, "w").as_deref(), Some("poll_failed"));
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    assert_eq!(loops.launched.get(), 1);
    assert_eq!(hooks.calls.get(), 1);

    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2, "stop did not retry the cleanup");
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);
    rt.start("w").await.unwrap();
    loops.launched.reached(2).await;
}

#[tokio::test(start_paused = true)]
async fn automatic_cleanup_timeout_leaves_cleanup_pending() {
    // The automatic cleanup is bounded by the cleanup timeout; a hook that hangs is a failed
    // attempt, and restart waits for a stop to retry it.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::steps([HookStep::Hang]);
    rt.register(WorkerSpec::new(
        "w",
        hooks
            .attach(scripted_loop(
                &loops,
                End::ErrAfter(Duration::from_secs(1), "poll_failed"),
            ))
            .cleanup_timeout(Duration::from_secs(3)),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    hooks.calls.reached(1).await;
    let began = Instant::now();
    let failures = wait_failures(&recorder, 2).await;
    assert_eq!(began.elapsed(), Duration::from_secs(3));
    assert_eq!(failures[1].failure.code(), "loop_cleanup_failed");
    assert_eq!(last_failure_code(&rt, "w").as_deref(), Some("poll_failed"));

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn automatic_cleanup_panic_leaves_cleanup_pending_and_stop_retries() {
    // Go: AutomaticCleanupPanicRecoversAndRetries / CleanupPanicLeavesCleanupPending.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    let loops = Loops::new();
    let hooks = Hooks::steps([HookStep::Panic]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start_all().await.unwrap();

    let failures = wait_failures(&recorder, 2).await;
    assert_eq!(failures[1].failure.code(), "loop_cleanup_failed");
    assert!(failures[1].panic);
    assert!(!failures[1].lifecycle_changed);
    assert!(!failures[1].failure.message().contains("expected panic"));
    assert_eq!(last_failure_code(&rt, "w").as_deref(), Some("poll_failed"));
    // Recovered: the other worker keeps the runtime running and live.
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.liveness().live);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    rt.start("w").await.unwrap();
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
}

async fn stop_joins_a_failing_automatic_cleanup_then_retries(step: HookStep) {
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let loops = Loops::new();
    let hooks = Hooks::new([(Duration::from_secs(2), step)]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &loops,
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    hooks.calls.reached(1).await;

    // Stop while the automatic attempt is still running: it waits for that attempt to fail,
    // then retries — never two attempts at once.
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    assert_eq!(hooks.max_active(), 1, "two cleanup attempts overlapped");
    assert_eq!(state(&rt, "w"), LifecycleState::Stopped);
    let codes: Vec<_> = recorder
        .failures()
        .iter()
        .map(|f| f.failure.code().to_owned())
        .collect();
    assert_eq!(codes, ["poll_failed", "loop_cleanup_failed"]);
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_joins_a_failed_automatic_cleanup_before_retrying() {
    // Go: StopJoinsFailedFailureCleanupBeforeRetrying.
    stop_joins_a_failing_automatic_cleanup_then_retries(HookStep::Fail).await;
}

#[tokio::test(start_paused = true)]
async fn automatic_cleanup_panic_with_a_concurrent_stop_retries_without_overlap() {
    // Go: AutomaticCleanupPanicConcurrentStopRetriesWithoutOverlap.
    quiet_expected_panics();
    stop_joins_a_failing_automatic_cleanup_then_retries(HookStep::Panic).await;
}

#[tokio::test(start_paused = true)]
async fn automatic_cleanup_panic_under_propagate_escalates() {
    // Go: AutomaticCleanupPanicHonorsCrashPolicy (Go crashes the process). No caller waits for
    // the automatic cleanup, so under `Propagate` the panic escalates to a runtime failure.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    let hooks = Hooks::steps([HookStep::Panic]);
    rt.register(
        WorkerSpec::new(
            "w",
            hooks.attach(scripted_loop(
                &Loops::new(),
                End::ErrAfter(Duration::from_secs(1), "poll_failed"),
            )),
        )
        .panic_policy(PanicPolicy::Propagate),
    )
    .unwrap();
    rt.start_all().await.unwrap();

    let failures = wait_failures(&recorder, 2).await;
    assert!(failures[1].panic);
    assert_eq!(failures[1].failure.code(), "loop_cleanup_failed");
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.status().state == LifecycleState::Failed)).await;
    let briefs = recorder.briefs();
    // The loop's error alone did not fail the runtime (isolate); the cleanup panic did.
    assert!(
        position(&briefs, "F! rt/w loop_cleanup_failed")
            < position(&briefs, "T rt running->failed"),
        "{briefs:#?}"
    );
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness
            .reasons
            .iter()
            .any(|r| r.contains("rt/w") && r.contains("propagate")),
        "{liveness:?}"
    );
    assert_eq!(state(&rt, "other"), LifecycleState::Running);
}

#[tokio::test(start_paused = true)]
async fn stop_hook_timeout_leaves_cleanup_pending_until_a_stop_retry() {
    // Go: StopRetriesCleanupAfterHookTimeout.
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::steps([HookStep::Hang]);
    rt.register(
        WorkerSpec::new("w", hooks.attach(scripted_loop(&loops, End::OnStop)))
            .stop_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    rt.start("w").await.unwrap();

    let err = rt.stop("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "deadline_exceeded");
    assert_eq!(loops.exited.get(), 1);
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    assert_eq!(
        last_failure_code(&rt, "w").as_deref(),
        Some("loop_cleanup_failed")
    );
    assert_eq!(loops.launched.get(), 1);

    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    rt.start("w").await.unwrap();
    loops.launched.reached(2).await;
}

#[tokio::test(start_paused = true)]
async fn cleanup_panic_during_stop_leaves_cleanup_pending() {
    // Go: CleanupPanicLeavesCleanupPending (the hook called from stop).
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let hooks = Hooks::steps([HookStep::Panic]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(&Loops::new(), End::OnStop)),
    ))
    .unwrap();
    rt.start("w").await.unwrap();

    let err = rt.stop("w").await.unwrap_err();
    assert!(matches!(err, LifecycleError::StopFailed { .. }), "{err:?}");
    assert_eq!(err.failure().unwrap().code(), "panic");
    assert!(!err.to_string().contains("expected panic"));
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(
        rt.wait_exit("w").await.unwrap().reason,
        ExitReason::Panicked
    );

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cleanup_panic_during_stop_under_propagate_resumes_on_the_caller() {
    // Go: CleanupPanicDuringStopHonorsCrashPolicy. The caller of `stop` exists: the panic is
    // resumed there, after the bookkeeping; the gate is released and cleanup stays pending.
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let hooks = Hooks::steps([HookStep::Panic]);
    rt.register(
        WorkerSpec::new("w", hooks.attach(scripted_loop(&Loops::new(), End::OnStop)))
            .panic_policy(PanicPolicy::Propagate),
    )
    .unwrap();
    rt.start("w").await.unwrap();

    let handle = rt.clone();
    let joined = spawn(async move { handle.stop("w").await }).await;
    let err = joined.expect_err("stop should have resumed the panic");
    assert!(err.is_panic());
    assert_eq!(panic_text(&*err.into_panic()), "expected panic: cleanup");

    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(last_failure_code(&rt, "w").as_deref(), Some("panic"));
    assert!(recorder.failures()[0].panic);

    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.failure().unwrap().code(), "loop_cleanup_failed");
    rt.stop("w").await.unwrap();
    assert_eq!(hooks.calls.get(), 2);
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_all_retries_pending_cleanup() {
    // Go: StopAllRetriesPendingFailureCleanup.
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    let healthy = Hooks::steps([]);
    let failing = Hooks::steps([HookStep::Fail]);
    rt.register(WorkerSpec::new(
        "a",
        healthy.attach(scripted_loop(&Loops::new(), End::OnStop)),
    ))
    .unwrap();
    rt.register(WorkerSpec::new(
        "b",
        failing.attach(scripted_loop(
            &Loops::new(),
            End::ErrAfter(Duration::from_secs(1), "poll_failed"),
        )),
    ))
    .unwrap();
    rt.start_all().await.unwrap();
    wait_failures(&recorder, 2).await;

    rt.stop_all().await.unwrap();
    assert_eq!(failing.calls.get(), 2);
    assert_eq!(healthy.calls.get(), 1);
    assert_eq!(state(&rt, "a"), LifecycleState::Stopped);
    assert_eq!(state(&rt, "b"), LifecycleState::Stopped);
    rt.start("b").await.unwrap();
}

// ---- restart ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn start_while_running_is_an_invalid_state() {
    // Go: StartWhileRunningReturnsActiveError (the runtime refuses before the worker is asked).
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    rt.register(WorkerSpec::new("w", scripted_loop(&loops, End::OnStop)))
        .unwrap();
    rt.start("w").await.unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert!(
        matches!(
            err,
            LifecycleError::InvalidState {
                state: LifecycleState::Running,
                ..
            }
        ),
        "{err:?}"
    );
    loops.launched.reached(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(loops.launched.get(), 1);
    assert_eq!(state(&rt, "w"), LifecycleState::Running);
    assert!(last_failure_code(&rt, "w").is_none());
}

#[tokio::test(start_paused = true)]
async fn can_restart_after_stop() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    let hooks = Hooks::steps([]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(&loops, End::OnStop)),
    ))
    .unwrap();
    for round in 1..=3_u64 {
        let status = rt.start("w").await.unwrap();
        assert_eq!(status.incarnation, round);
        assert!(status.ready);
        loops.launched.reached(round as usize).await;
        let status = rt.stop("w").await.unwrap();
        assert_eq!(status.state, LifecycleState::Stopped);
        assert_eq!(hooks.calls.get(), round as usize);
    }
    assert_eq!(*loops.incarnations.lock().unwrap(), [1, 2, 3]);
    assert_eq!(loops.max_active(), 1);
}

// ---- panics in the loop ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn loop_panic_under_recover_fails_only_the_worker() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    let hooks = Hooks::steps([]);
    rt.register(WorkerSpec::new(
        "w",
        hooks.attach(scripted_loop(
            &Loops::new(),
            End::PanicAfter(Duration::from_secs(1)),
        )),
    ))
    .unwrap();
    rt.start_all().await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    let event = &failures[0];
    assert!(event.panic);
    assert_eq!(event.failure.code(), "panic");
    assert!(event.failure.message().contains("running loop"));
    assert!(!event.failure.message().contains("expected panic"));
    let cause = event.cause.as_ref().expect("a panic cause");
    let panic = cause.downcast_ref::<PanicError>().expect("a PanicError");
    assert_eq!(panic.payload_description(), "expected panic: loop");

    assert_eq!(state(&rt, "w"), LifecycleState::Failed);
    assert_eq!(state(&rt, "other"), LifecycleState::Running);
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.liveness().live);
    hooks.finished.reached(1).await;
    assert_eq!(hooks.calls.get(), 1, "no automatic cleanup after the panic");
}

#[tokio::test(start_paused = true)]
async fn loop_panic_under_propagate_escalates_to_runtime_failure() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new("other", FakeWorker::new().0))
        .unwrap();
    rt.register(
        WorkerSpec::new(
            "w",
            scripted_loop(&Loops::new(), End::PanicAfter(Duration::from_secs(1))),
        )
        .panic_policy(PanicPolicy::Propagate),
    )
    .unwrap();
    rt.start_all().await.unwrap();

    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    assert!(recorder.failures()[0].panic);
    let status = rt.status();
    assert_eq!(status.state, LifecycleState::Failed);
    assert!(!status.ready);
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness.reasons.iter().any(|r| r.contains("propagate")),
        "{liveness:?}"
    );
    assert_eq!(state(&rt, "other"), LifecycleState::Running);

    // Stopping the panicked worker clears the escalation.
    rt.stop("w").await.unwrap();
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn loop_panic_with_a_non_string_payload_is_described() {
    quiet_expected_panics();
    let recorder = RecordingObserver::new();
    let rt = runtime(&recorder);
    rt.register(WorkerSpec::new(
        "w",
        LoopWorker::new(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            std::panic::panic_any(42_u32)
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    let exit = within(rt.wait_exit("w")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::Panicked);
    let failures = recorder.failures();
    let panic = failures[0]
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<PanicError>())
        .expect("a PanicError cause");
    assert_eq!(panic.payload_description(), "non-string panic payload");
}

// ---- shutdown ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_loop_to_finish_its_final_work() {
    let rt = runtime(&RecordingObserver::new());
    let flushed = Counter::new();
    let worker = {
        let flushed = flushed.clone();
        LoopWorker::new(move |ctx| {
            let flushed = flushed.clone();
            async move {
                ctx.stop_requested().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                flushed.bump();
                Ok(())
            }
        })
    };
    rt.register(WorkerSpec::new("w", worker)).unwrap();
    rt.start("w").await.unwrap();
    let began = Instant::now();
    let report = rt.shutdown().await.unwrap();
    assert_eq!(
        flushed.get(),
        1,
        "shutdown returned before the loop finished"
    );
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    assert_eq!(report.stopped_names(), ["rt/w"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_many_idle_loops() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    for i in 0..64 {
        rt.register(WorkerSpec::new(
            format!("w{i}"),
            scripted_loop(&loops, End::OnStop),
        ))
        .unwrap();
    }
    rt.start_all().await.unwrap();
    loops.launched.reached(64).await;
    let began = Instant::now();
    let report = within(rt.shutdown()).await.unwrap();
    assert_eq!(began.elapsed(), Duration::ZERO);
    assert_eq!(report.stopped.len(), 64);
    assert_eq!(loops.exited.get(), 64);
    assert!(
        rt.workers()
            .iter()
            .all(|w| w.status.state == LifecycleState::Stopped)
    );
}

// ---- start_all launches loops in batches ---------------------------------------------------

/// A loop that opens `latch` once it runs, then waits for its stop.
fn opening_loop(latch: &Latch) -> LoopWorker {
    let latch = latch.clone();
    LoopWorker::new(move |ctx| {
        let latch = latch.clone();
        async move {
            latch.open();
            ctx.stop_requested().await;
            Ok(())
        }
    })
}

/// `start_all` spawns loop tasks in batches, but a start that waits flushes the batch first:
/// a worker's start can wait for an earlier worker's loop (here on a single-threaded runtime,
/// where nothing else could run that loop).
#[tokio::test(start_paused = true)]
async fn start_all_start_can_wait_for_an_earlier_workers_loop() {
    let rt = runtime(&RecordingObserver::new());
    let opened = Latch::new();
    rt.register(WorkerSpec::new("source", opening_loop(&opened)))
        .unwrap();
    let waits = opened.clone();
    let dependent = LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok(())
    })
    .on_start(move |_ctx| {
        let waits = waits.clone();
        async move {
            waits.wait().await;
            Ok(())
        }
    });
    rt.register(WorkerSpec::new("dependent", dependent).start_timeout(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    within(rt.start_all()).await.unwrap();
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "the start did not wait for its timeout"
    );
    assert_eq!(rt.status().state, LifecycleState::Running);
    within(rt.shutdown()).await.unwrap();
}

/// Every loop of a `start_all` has been spawned by the time it returns, also when a later start
/// fails (fail-fast): the started workers' loops run, and stop normally.
#[tokio::test(start_paused = true)]
async fn start_all_launches_every_started_loop_also_when_a_later_start_fails() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    for i in 0..3 {
        rt.register(WorkerSpec::new(
            format!("w{i}"),
            scripted_loop(&loops, End::OnStop),
        ))
        .unwrap();
    }
    let failing = LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok(())
    })
    .on_start(|_ctx| async { Err::<(), BoxError>("expected start failure".into()) });
    rt.register(WorkerSpec::new("failing", failing)).unwrap();
    rt.register(WorkerSpec::new("never", scripted_loop(&loops, End::OnStop)))
        .unwrap();
    let err = within(rt.start_all()).await.unwrap_err();
    assert_eq!(err.code(), "start_failed");
    loops.launched.reached(3).await;
    assert_eq!(
        loops.launched.get(),
        3,
        "the worker after the failure never started"
    );
    let report = within(rt.shutdown()).await.unwrap();
    assert_eq!(
        report.stopped_names(),
        ["rt/failing", "rt/w2", "rt/w1", "rt/w0"]
    );
    assert_eq!(loops.exited.get(), 3);
}

/// A loop that fails at once after a `start_all` fails its worker afterwards (row 14a): the
/// start itself succeeded, and the worker ends `failed` with its loop's exit reason.
#[tokio::test(start_paused = true)]
async fn start_all_loop_failing_at_once_fails_its_worker_after_the_start() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    rt.register(WorkerSpec::new("ok", scripted_loop(&loops, End::OnStop)))
        .unwrap();
    rt.register(WorkerSpec::new(
        "quits",
        LoopWorker::new(|_ctx| async { Ok::<(), BoxError>(()) }),
    ))
    .unwrap();
    within(rt.start_all()).await.unwrap();
    let exit = within(rt.wait_exit("quits")).await.unwrap();
    assert_eq!(exit.reason, ExitReason::ExitedUnexpectedly);
    assert_eq!(
        rt.worker("quits").unwrap().status.state,
        LifecycleState::Failed
    );
    loops.launched.reached(1).await;
    within(rt.stop("quits")).await.unwrap();
    within(rt.shutdown()).await.unwrap();
}

// ---- a stop and its loop ----------------------------------------------------------------------

/// A worker built on a loop worker whose stop first waits for a word its loop sends once told
/// to stop, and only then joins the loop.
struct Handshake {
    inner: LoopWorker,
    word: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Handshake {
    fn new() -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let inner = LoopWorker::new(move |ctx| {
            let tx = Arc::clone(&tx);
            async move {
                ctx.stop_requested().await;
                // The loop's own task has to run for this: the stop below is not joining it yet.
                tokio::task::yield_now().await;
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                Ok(())
            }
        });
        Self {
            inner,
            word: Some(rx),
        }
    }
}

impl Worker for Handshake {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        self.inner.start(ctx).await
    }

    async fn stop(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        if let Some(word) = self.word.take() {
            word.await?;
        }
        self.inner.stop(ctx).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_waits_for_its_loop_before_joining_it_lets_the_loop_run() {
    let rt = runtime(&RecordingObserver::new());
    let loops = Loops::new();
    rt.register(WorkerSpec::new("first", scripted_loop(&loops, End::OnStop)))
        .unwrap();
    rt.register(
        WorkerSpec::new("handshake", Handshake::new()).stop_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    loops.launched.reached(1).await;
    let began = Instant::now();
    // The loop must run in its own task while its worker's stop waits: otherwise the stop would
    // wait for the word until the stop timeout and fail.
    let report = within(rt.shutdown()).await.unwrap();
    assert_eq!(began.elapsed(), Duration::ZERO);
    assert_eq!(report.stopped_names(), ["rt/handshake", "rt/first"]);
    assert_eq!(report.lingering_tasks, 0);
}

#[tokio::test(start_paused = true)]
async fn a_loop_that_keeps_working_after_its_stop_signal_finishes_in_its_own_task() {
    let rt = runtime(&RecordingObserver::new());
    let latch = Latch::new();
    let loops = Loops::new();
    rt.register(WorkerSpec::new(
        "w",
        scripted_loop(&loops, End::IgnoreStopUntil(latch.clone())),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    loops.launched.reached(1).await;
    let stop = spawn({
        let rt = rt.clone();
        async move { rt.stop("w").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!stop.is_finished(), "the stop did not wait for the loop");
    assert_eq!(state(&rt, "w"), LifecycleState::Stopping);
    // Opened from here: the loop goes on in its own task and ends; the stop then returns.
    latch.open();
    let status = within(stop).await.unwrap().unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
    assert_eq!(loops.exited.get(), 1);
}

#[test]
fn dropping_the_tokio_runtime_drops_a_waiting_loop() {
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loops = Loops::new();
    let rt = tokio_rt.block_on(async {
        let rt = runtime(&RecordingObserver::new());
        rt.register(WorkerSpec::new("w", scripted_loop(&loops, End::OnStop)))
            .unwrap();
        rt.start("w").await.unwrap();
        // The loop's task has polled it: it waits for its stop signal.
        loops.launched.reached(1).await;
        tokio::task::yield_now().await;
        rt
    });
    assert_eq!(loops.exited.get(), 0);
    // The loop's future goes with its task: nothing else may keep it alive.
    drop(tokio_rt);
    assert_eq!(loops.exited.get(), 1, "the loop's future leaked");
    drop(rt);
}
