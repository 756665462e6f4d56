//! A [`LoopWorker`]: "run this loop until asked to stop", with start and stop hooks.
//!
//! The loop ticks on a short interval and returns as soon as the stop signal fires. The start
//! hook runs before the loop launches (connect, warm up); the stop hook runs after the loop has
//! returned (flush, close). `main` lets the loop tick a few times, then shuts down and shows that
//! the incarnation ended with exit reason `stopped`.
//!
//! Run with: `cargo run -p example-loop-worker`

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use workerkit_core::{LoopWorker, Runtime, WorkerSpec};

/// How often the loop polls. Short, so the example ends quickly.
const INTERVAL: Duration = Duration::from_millis(100);

/// How many ticks `main` waits for before shutting down.
const TICKS: u64 = 5;

/// A poller: ticks until asked to stop. `ticks` counts the ticks and wakes `main`.
fn poller(ticks: &Arc<watch::Sender<u64>>) -> LoopWorker {
    let in_loop = Arc::clone(ticks);
    let in_stop = Arc::clone(ticks);
    LoopWorker::new(move |ctx| {
        let ticks = Arc::clone(&in_loop);
        async move {
            let mut interval = tokio::time::interval(INTERVAL);
            loop {
                tokio::select! {
                    biased;
                    // The stop signal: fired by `stop`/`shutdown` before the stop hook runs.
                    () = ctx.stop_requested() => {
                        println!("loop: stop requested; leaving the loop");
                        return Ok(());
                    }
                    _ = interval.tick() => {
                        let n = *ticks.borrow() + 1;
                        println!("loop: tick {n} ({})", ctx.qualified_name());
                        ticks.send_replace(n);
                    }
                }
            }
        }
    })
    .on_start(|ctx| async move {
        println!(
            "start hook: connecting {} (incarnation {})",
            ctx.qualified_name(),
            ctx.incarnation()
        );
        Ok(())
    })
    .on_stop(move |ctx| {
        let ticks = Arc::clone(&in_stop);
        async move {
            println!(
                "stop hook: flushing after {} ticks ({})",
                *ticks.borrow(),
                ctx.qualified_name()
            );
            Ok(())
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let ticks = Arc::new(watch::Sender::new(0));
    let runtime = Runtime::builder("loops").build()?;
    runtime
        .register(WorkerSpec::new("poller", poller(&ticks)).description("ticks every 100 ms"))?;

    runtime.start_all().await?;
    let worker = runtime.worker("poller").ok_or("poller not registered")?;
    println!(
        "main: {} is {} and ready={}",
        worker.qualified_name, worker.status.state, worker.status.ready
    );

    // Let the loop do some work: wait (by notification, with a bound) for a few ticks.
    let mut seen = ticks.subscribe();
    tokio::time::timeout(INTERVAL * 20, seen.wait_for(|n| *n >= TICKS))
        .await
        .map_err(|_| "the loop did not tick in time")??;

    println!("main: shutting down");
    let report = runtime.shutdown().await?;
    println!(
        "main: shutdown stopped {:?} in {:?}",
        report.stopped, report.elapsed
    );

    // Every incarnation ends with a typed exit reason; `wait_exit` returns it.
    let exit = runtime.wait_exit("poller").await?;
    println!(
        "main: incarnation {} ended: {}",
        exit.incarnation,
        exit.reason.as_str()
    );
    Ok(())
}
