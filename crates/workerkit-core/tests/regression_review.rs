//! Regressions found by the concurrency review of the core (each named for the failure it
//! prevents).

mod command_support;
mod support;

use std::time::Duration;

use command_support::{command, idle, quiet_expected_panics};
use support::{spawn, within};
use workerkit_core::error::LifecycleError;
use workerkit_core::{
    CommandRequest, CommandResponse, ExitReason, LifecycleState, LoopWorker, Runtime, WorkerSpec,
    handler_fn, worker_fn,
};

#[tokio::test(start_paused = true)]
async fn a_loop_restarting_its_own_worker_is_refused_instead_of_holding_the_gate() {
    let rt = Runtime::builder("rt").no_start_timeout().build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let reply = std::sync::Mutex::new(tx.take());
    let reply = std::sync::Arc::new(reply);
    rt.register(WorkerSpec::new(
        "lw",
        LoopWorker::new(move |ctx| {
            let reply = std::sync::Arc::clone(&reply);
            async move {
                if ctx.incarnation() == 1 {
                    ctx.report_failure(std::io::Error::other("restart me"))?;
                    let rt = ctx.runtime_handle().expect("runtime alive");
                    let result = rt.start(ctx.name()).await.map(|_| ());
                    if let Some(tx) = reply.lock().unwrap().take() {
                        let _ = tx.send(result);
                    }
                } else {
                    ctx.stop_requested().await;
                }
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.register(idle("other")).unwrap();
    rt.start("lw").await.unwrap();
    let result = within(rx).await.unwrap();
    assert!(
        matches!(result, Err(LifecycleError::Reentrant { .. })),
        "{result:?}"
    );
    // The gate is free: another lifecycle call goes through.
    within(rt.start("other")).await.unwrap();
}

struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("expected panic: in drop");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_future_that_panics_when_dropped_fails_the_worker_instead_of_stranding_it() {
    quiet_expected_panics();
    let rt = Runtime::builder("rt")
        .start_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(|_ctx| async move {
            let _guard = PanicOnDrop;
            std::future::pending::<()>().await;
            Ok(())
        }),
    ))
    .unwrap();
    let err = within(rt.start("w")).await.unwrap_err();
    assert_eq!(err.code(), "worker_panicked");
    assert_eq!(rt.worker("w").unwrap().status.state, LifecycleState::Failed);
    assert_eq!(
        within(rt.wait_exit("w")).await.unwrap().reason,
        ExitReason::Panicked
    );
    // The runtime is not wedged: shutdown completes.
    within(rt.shutdown()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stop_command_grace_comes_out_of_the_shutdown_budget() {
    let rt = Runtime::builder("rt")
        .shutdown_timeout(Duration::from_secs(10))
        .stop_grace(Duration::from_secs(4))
        .build()
        .unwrap();
    rt.register(WorkerSpec::new(
        "quick",
        worker_fn(|_ctx| async { Ok(()) }).on_stop(|_ctx| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        }),
    ))
    .unwrap();
    rt.register(
        WorkerSpec::new(
            "busy",
            worker_fn(|_ctx| async { Ok(()) }).on_stop(|_ctx| async {
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .cancel_commands_on_stop(Duration::from_secs(60))
        .command(
            command(
                "stuck",
                handler_fn(|_ctx| async {
                    std::future::pending::<()>().await;
                    Ok(CommandResponse::empty())
                }),
            )
            .no_timeout(),
        ),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    let handle = rt.clone();
    let _stuck = spawn(async move { handle.dispatch(CommandRequest::new("busy", "stuck")).await });
    while rt.in_flight().is_empty() {
        tokio::task::yield_now().await;
    }
    let began = tokio::time::Instant::now();
    let result = rt.shutdown().await;
    // The idle wait uses the 10 s budget; the stop phase gets its 4 s grace, within which the
    // command grace and the busy worker's stop fit, plus at most a 100 ms floor per worker.
    assert!(
        began.elapsed() <= Duration::from_millis(14_200),
        "{:?}",
        began.elapsed()
    );
    assert!(result.is_err(), "the busy worker cannot stop cleanly");
    // The worker stopped after it (reverse order: quick is first registered, stopped last)
    // still had time to stop.
    assert_eq!(
        rt.worker("quick").unwrap().status.state,
        LifecycleState::Stopped
    );
}
