//! A stop joins a resting loop inline: it polls the loop to its end in the stopping task, and the
//! loop's own task, never woken for it, only goes away afterwards (at once after a single stop,
//! together at the end of a bulk stop). These tests pin what that must not change: what waits on
//! the stop signal still wakes, a loop busy on another thread is waited for, a loop's end on its
//! stop is reported as before, and no task is left behind.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{recorded, spawn, within};
use workerkit_core::failure::BoxError;
use workerkit_core::{
    ExitReason, LifecycleState, LoopWorker, Runtime, ShutdownOptions, WorkerSpec, worker_fn,
};

/// An idle loop with a cleanup hook.
fn idle_loop() -> LoopWorker {
    LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok::<(), BoxError>(())
    })
    .on_stop(|_ctx| async { Ok(()) })
}

#[tokio::test(start_paused = true)]
async fn a_single_stop_lets_the_task_of_the_loop_it_joined_go_at_once() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(WorkerSpec::new("w", idle_loop())).unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    rt.start("w").await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), before + 1, "the loop's task");
    rt.stop("w").await.unwrap();
    // The stop woke the loop's task on its way out: one turn of the scheduler ends it.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "the loop's task is still there after its worker stopped"
    );
    let report = rt.shutdown().await.unwrap();
    assert_eq!(report.lingering_tasks, 0);
}

#[tokio::test(start_paused = true)]
async fn loops_joined_by_a_shutdown_leave_no_task_behind() {
    let (rt, recorder) = recorded();
    let n = 150;
    for i in 0..n {
        rt.register(WorkerSpec::new(format!("w{i}"), idle_loop()))
            .unwrap();
    }
    rt.start_all().await.unwrap();
    let report = rt
        .shutdown_with(ShutdownOptions::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert_eq!(report.stopped.len(), n);
    assert_eq!(report.stopped.first().map(|name| &**name), Some("rt/w149"));
    assert_eq!(report.lingering_tasks, 0, "{report:?}");
    // Nothing waited for a deadline: the stops and the tasks' ends took no time at all.
    assert_eq!(report.elapsed, Duration::ZERO, "{report:?}");
    for i in 0..n {
        let exit = rt.wait_exit(&format!("w{i}")).await.unwrap();
        assert_eq!(exit.reason, ExitReason::Stopped);
    }
    assert!(recorder.failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn what_waits_on_the_stop_signal_wakes_while_the_workers_stop_waits_for_it() {
    // The stop signal is fired before the worker's stop is called; something waiting on it
    // (here a task of the worker's own) must wake even while that stop is still waiting.
    let rt = Runtime::builder("rt").build().unwrap();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_rx = Arc::new(tokio::sync::Mutex::new(done_rx));
    let done_tx = Arc::new(done_tx);
    rt.register(
        WorkerSpec::new(
            "w",
            worker_fn(move |ctx| {
                let signal = ctx.stop_signal();
                let done_tx = Arc::clone(&done_tx);
                spawn(async move {
                    signal.wait().await;
                    done_tx.send_replace(true);
                });
                async { Ok(()) }
            })
            .on_stop(move |_ctx| {
                let done_rx = Arc::clone(&done_rx);
                async move {
                    let mut rx = done_rx.lock().await;
                    let _ = rx.wait_for(|done| *done).await;
                    Ok(())
                }
            }),
        )
        .stop_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    rt.start("w").await.unwrap();
    let began = tokio::time::Instant::now();
    rt.stop("w").await.unwrap();
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "the stop waited for its timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_loop_that_panics_on_its_stop_is_reported_as_a_panic_and_the_worker_stops() {
    let (rt, recorder) = recorded();
    rt.register(WorkerSpec::new(
        "w",
        LoopWorker::new(|ctx| async move {
            ctx.stop_requested().await;
            panic!("expected panic: loop on stop");
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    support::settle().await;
    let status = rt.stop("w").await.unwrap();
    assert_eq!(status.state, LifecycleState::Stopped);
    let failures = within(async {
        loop {
            let failures = recorder.failures();
            if !failures.is_empty() {
                break failures;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic, "{:?}", failures[0]);
    assert_eq!(failures[0].failure.code(), "panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_busy_on_another_thread_is_waited_for_not_joined_twice() {
    // The loop yields constantly, so its task is often polling it (on either thread) when the
    // stop comes: the stop must then wait for it, and the loop must end exactly once.
    for round in 0..200 {
        let rt = Runtime::builder("rt").build().unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let ends = Arc::new(AtomicUsize::new(0));
        let (p, e) = (Arc::clone(&polls), Arc::clone(&ends));
        rt.register(WorkerSpec::new(
            "busy",
            LoopWorker::new(move |ctx| {
                let (polls, ends) = (Arc::clone(&p), Arc::clone(&e));
                async move {
                    loop {
                        polls.fetch_add(1, Ordering::SeqCst);
                        if ctx.is_stop_requested() {
                            ends.fetch_add(1, Ordering::SeqCst);
                            return Ok::<(), BoxError>(());
                        }
                        tokio::task::yield_now().await;
                    }
                }
            }),
        ))
        .unwrap();
        rt.start("busy").await.unwrap();
        // Let it run a little on its own first, in some rounds.
        while round % 2 == 0 && polls.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        let status = rt.stop("busy").await.unwrap();
        assert_eq!(status.state, LifecycleState::Stopped, "round {round}");
        assert_eq!(ends.load(Ordering::SeqCst), 1, "round {round}");
        let exit = rt.wait_exit("busy").await.unwrap();
        assert_eq!(exit.reason, ExitReason::Stopped, "round {round}");
        let report = rt.shutdown().await.unwrap();
        assert_eq!(report.lingering_tasks, 0, "round {round}");
    }
}
