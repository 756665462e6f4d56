//! Hardening beyond the Go semantics: error sources, self-stop deadlocks, observer shutdown
//! hooks, lingering tasks, loop restarts racing their own cleanup.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{fake_with, recorded, spawn, within};
use workerkit_core::error::LifecycleError;
use workerkit_core::failure::{self, BoxError, Failure};
use workerkit_core::observe::{BoxFuture, Observer};
use workerkit_core::test_util::Step;
use workerkit_core::{
    ExitReason, LifecycleState, LoopWorker, ReadinessCheck, Runtime, ShutdownOptions, WorkerSpec,
    worker_fn,
};

#[derive(Debug)]
struct DbDown(&'static str);

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connect to {} failed", self.0)
    }
}

impl std::error::Error for DbDown {}

#[tokio::test(start_paused = true)]
async fn start_failed_source_is_the_workers_own_error() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(WorkerSpec::new(
        "db",
        worker_fn(|_ctx| async {
            Err(failure::with_failure(
                DbDown("postgres://admin:secret@db"),
                "db_down",
                "database unavailable",
            ))
        }),
    ))
    .unwrap();
    let err = rt.start("db").await.unwrap_err();
    // The public presentation is found through the returned error's chain...
    let public = Failure::from_error(&err, Failure::worker_failed());
    assert_eq!(public.code(), "db_down");
    // ...and the private cause can be downcast by the direct caller.
    let source = err.source().expect("a source");
    let op = source
        .downcast_ref::<failure::OperationalFailure>()
        .expect("the worker's error itself");
    assert!(op.cause().downcast_ref::<DbDown>().is_some());
    // Display stays public.
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test(start_paused = true)]
async fn a_loop_cannot_deadlock_by_stopping_its_own_worker_or_the_runtime() {
    let rt = Runtime::builder("rt").build().unwrap();
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (handle, seen) = (rt.clone(), Arc::clone(&results));
    rt.register(WorkerSpec::new(
        "self-stopper",
        LoopWorker::new(move |ctx| {
            let (rt, seen) = (handle.clone(), Arc::clone(&seen));
            async move {
                let codes = [
                    rt.stop("self-stopper").await.map(|_| ()),
                    rt.stop_all().await,
                    rt.shutdown().await.map(|_| ()).map_err(|e| match e {
                        workerkit_core::error::ShutdownError::Lifecycle(l) => l,
                        other => panic!("unexpected {other:?}"),
                    }),
                ]
                .map(|r| r.err().map(|e| e.code()));
                seen.lock().unwrap().extend(codes);
                ctx.stop_requested().await;
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.start("self-stopper").await.unwrap();
    within(async {
        while results.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        *results.lock().unwrap(),
        [Some("reentrant_lifecycle_call"); 3]
    );
    // The refused shutdown did not begin a shutdown: the runtime still runs and is ready.
    assert!(rt.status().ready && !rt.status().shutting_down);
    // A task the worker spawns may ask for the shutdown: it is dropped at the stop signal,
    // which does not cancel the shutdown it asked for.
    let handle = rt.clone();
    rt.register(WorkerSpec::new(
        "requester",
        worker_fn(move |ctx| {
            let rt = handle.clone();
            ctx.spawn(async move {
                let _ = rt.shutdown().await;
            });
            async { Ok(()) }
        }),
    ))
    .unwrap();
    rt.start("requester").await.unwrap();
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.status().shut_down)).await;
    assert_eq!(rt.status().state, LifecycleState::Stopped);
}

#[derive(Default)]
struct Hooks {
    calls: AtomicUsize,
    hang: bool,
}

impl Observer for Hooks {
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn observer_shutdown_hooks_run_concurrently_once_and_bounded() {
    let hung = Arc::new(Hooks {
        hang: true,
        ..Hooks::default()
    });
    let fine = Arc::new(Hooks::default());
    let rt = Runtime::builder("rt")
        .with_observer(Arc::clone(&hung))
        .with_observer(Arc::clone(&fine))
        .observer_flush_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let began = tokio::time::Instant::now();
    rt.shutdown().await.unwrap();
    // The hung hook did not starve the other, and the flush was bounded.
    assert_eq!(fine.calls.load(Ordering::SeqCst), 1);
    assert_eq!(began.elapsed(), Duration::from_secs(2));
    rt.shutdown().await.unwrap();
    assert_eq!(
        (
            hung.calls.load(Ordering::SeqCst),
            fine.calls.load(Ordering::SeqCst)
        ),
        (1, 1),
        "hooks run once per runtime"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_after_a_reported_start_failure_is_still_reported() {
    let (rt, recorder) = recorded();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|ctx| async move {
            ctx.report_failure(std::io::Error::other("first"))?;
            panic!("expected panic: then it panics");
        }),
    ))
    .unwrap();
    let err = rt.start("w").await.unwrap_err();
    assert_eq!(err.code(), "worker_panicked");
    let failures = recorder.failures();
    assert_eq!(failures.len(), 2, "{:?}", recorder.briefs());
    assert!(!failures[0].panic && failures[1].panic);
    assert_eq!(
        rt.wait_exit("w").await.unwrap().reason,
        ExitReason::Panicked
    );
}

#[tokio::test(start_paused = true)]
async fn a_readiness_check_decides_a_loop_workers_readiness() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(
        WorkerSpec::new(
            "poller",
            LoopWorker::new(|ctx| async move {
                ctx.stop_requested().await;
                Ok(())
            }),
        )
        .readiness_check(
            ReadinessCheck::new(|_ctx| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(true)
            })
            .interval(Duration::from_secs(10)),
        ),
    )
    .unwrap();
    rt.start("poller").await.unwrap();
    assert!(
        !rt.worker("poller").unwrap().status.ready,
        "auto-ready overrode the check"
    );
    let mut watch = rt.subscribe();
    within(watch.wait_until(|rt| rt.status().ready)).await;
}

#[tokio::test(start_paused = true)]
async fn a_loop_worker_restarts_right_after_wait_exit_even_while_its_cleanup_runs() {
    let rt = Runtime::builder("rt").build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    rt.register(WorkerSpec::new(
        "flaky",
        LoopWorker::new(move |ctx| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    return Err(BoxError::from("first run fails"));
                }
                ctx.stop_requested().await;
                Ok(())
            }
        })
        .on_stop(|_ctx| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        }),
    ))
    .unwrap();
    rt.start("flaky").await.unwrap();
    assert_eq!(
        rt.wait_exit("flaky").await.unwrap().reason,
        ExitReason::Failed
    );
    let status = rt.start("flaky").await.unwrap();
    assert_eq!(status.state, LifecycleState::Running);
    assert_eq!(status.incarnation, 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_tasks_that_ignore_their_stop_signal() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(
        WorkerSpec::new(
            "stubborn",
            LoopWorker::new(|_ctx| std::future::pending::<Result<(), BoxError>>()),
        )
        .stop_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let well_behaved = fake_with(&rt, "fine", |s| s);
    well_behaved.on_stop(Step::Succeed);
    rt.start_all().await.unwrap();
    let err = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(5),
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    let workerkit_core::error::ShutdownError::Incomplete { unfinished, report } = err else {
        panic!("expected an incomplete shutdown");
    };
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].worker, "rt/stubborn");
    assert_eq!(report.lingering_tasks, 1);
    assert_eq!(report.stopped_names(), ["rt/fine"]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["lingeringTasks"], 1);
    assert!(json["elapsed"].is_f64());
}

#[tokio::test(start_paused = true)]
async fn status_says_shut_down_once_the_shutdown_finished() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake_with(&rt, "w", |s| s);
    rt.start_all().await.unwrap();
    let handle = rt.clone();
    let shutdown = spawn(async move { handle.shutdown().await });
    shutdown.await.unwrap().unwrap();
    let status = rt.status();
    assert!(status.shutting_down && status.shut_down);
    assert!(rt.readiness().reason.ends_with("(shut down)"));
    assert!(!rt.readiness().ready);
}

#[test]
fn wire_enums_honour_padding() {
    assert_eq!(format!("[{:<9}]", LifecycleState::Running), "[running  ]");
    assert_eq!(
        format!("[{:>8}]", workerkit_core::FailurePolicy::Isolate),
        "[ isolate]"
    );
    assert_eq!(
        workerkit_core::status::ReadinessImpact::NonBlocking.to_string(),
        "non_blocking"
    );
}

#[tokio::test(start_paused = true)]
async fn reentrancy_errors_name_the_refused_operation() {
    let rt = Runtime::builder("rt").build().unwrap();
    let handle = rt.clone();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(move |_ctx| {
            let rt = handle.clone();
            async move {
                match rt.start_all().await {
                    Err(LifecycleError::Reentrant { operation }) => {
                        assert_eq!(operation.as_str(), "start_all");
                        Ok(())
                    }
                    other => Err(format!("{other:?}").into()),
                }
            }
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_loop_worker_restarts_right_after_a_reported_failure_while_its_loop_winds_down() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(WorkerSpec::new(
        "w",
        LoopWorker::new(|ctx| async move {
            if ctx.incarnation() == 1 {
                let reporter = ctx.clone();
                ctx.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = reporter.report_failure(std::io::Error::other("lost the broker"));
                });
            }
            ctx.stop_requested().await;
            // Winding down takes a while after the stop signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    assert_eq!(rt.wait_exit("w").await.unwrap().reason, ExitReason::Failed);
    let status = rt.start("w").await.unwrap();
    assert_eq!(
        (status.state, status.incarnation),
        (LifecycleState::Running, 2)
    );
}
