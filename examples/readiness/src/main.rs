//! Readiness: how worker readiness rolls up to the runtime's, and what a probe would see.
//!
//! Three workers under the default `contributing_workers` policy:
//!
//! - `cache` contributes; it starts unready, warms up in a background task and then calls
//!   `set_ready(true)` itself;
//! - `subscriber` contributes; a [`ReadinessCheck`] decides its readiness (is the broker
//!   connection up?), so a lost connection makes the runtime unready until it comes back;
//! - `reporter` does not contribute: it never says it is ready, and the runtime is ready anyway.
//!
//! After each step the example prints [`Runtime::readiness`]: the runtime's verdict and one item
//! per worker with its impact (`blocking` or `non_blocking`). It ends by showing the stricter
//! `all_workers` policy, under which the same reporter does block.
//!
//! Run with: `cargo run -p example-readiness`

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use workerkit_core::{
    LoopWorker, ReadinessCheck, ReadinessPolicy, Runtime, WorkerContext, WorkerSpec, worker_fn,
};

/// How long the cache takes to warm up.
const WARMUP: Duration = Duration::from_millis(150);

/// How often the subscriber's readiness check runs (the default is 10 s; short here).
const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Upper bound on every wait, so the example always ends.
const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// Prints the runtime's readiness verdict and one JSON item per worker.
fn show(step: &str, runtime: &Runtime) -> Result<(), Box<dyn Error>> {
    let readiness = runtime.readiness();
    println!(
        "-- {step}\n   ready={} policy={} reason={:?}",
        readiness.ready, readiness.policy, readiness.reason
    );
    for item in &readiness.items {
        println!("   {}", serde_json::to_string(item)?);
    }
    Ok(())
}

/// Waits (by notification, bounded) until the runtime's readiness is `ready`.
async fn wait_ready(runtime: &Runtime, ready: bool) -> Result<(), Box<dyn Error>> {
    let mut watch = runtime.subscribe();
    tokio::time::timeout(
        WAIT_LIMIT,
        watch.wait_until(|rt| rt.status().ready == ready),
    )
    .await
    .map_err(|_| format!("runtime did not become ready={ready} in time"))?;
    Ok(())
}

/// A loop that idles until asked to stop; the readiness check reports its health. A worker
/// with a readiness check is never auto-ready: the check alone decides.
fn subscriber_loop(connected: &Arc<AtomicBool>) -> LoopWorker {
    let connected = Arc::clone(connected);
    LoopWorker::new(move |ctx| {
        let connected = Arc::clone(&connected);
        async move {
            // "Connect" to the broker, then consume until asked to stop.
            connected.store(true, Ordering::Relaxed);
            ctx.stop_requested().await;
            connected.store(false, Ordering::Relaxed);
            Ok(())
        }
    })
}

/// A maintenance loop that never says it is ready.
fn reporter_loop() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        ctx.stop_requested().await;
        Ok(())
    })
    .auto_ready(false)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let connected = Arc::new(AtomicBool::new(false));
    let runtime = Runtime::builder("shop").build()?;

    // Warm-up: unready after start, then ready once the background warm-up is done.
    let cache = worker_fn(|ctx: WorkerContext| async move {
        let warm = ctx.clone();
        // `spawn` ties the task to this incarnation: it is dropped when the worker stops.
        ctx.spawn(async move {
            tokio::time::sleep(WARMUP).await;
            println!("   (cache: warm-up done, set_ready(true))");
            let _ = warm.set_ready(true);
        });
        Ok(())
    });
    runtime.register(
        WorkerSpec::new("cache", cache)
            .description("warms a cache, then says it is ready")
            .ready_on_start(false),
    )?;

    let probe = Arc::clone(&connected);
    let check = ReadinessCheck::new(move |_ctx| {
        let probe = Arc::clone(&probe);
        async move { Ok(probe.load(Ordering::Relaxed)) }
    })
    .interval(CHECK_INTERVAL)
    .timeout(Duration::from_millis(50));
    runtime.register(
        WorkerSpec::new("subscriber", subscriber_loop(&connected))
            .description("consumes from a broker; a readiness check watches the connection")
            .readiness_check(check),
    )?;

    runtime.register(
        WorkerSpec::new("reporter", reporter_loop())
            .description("optional maintenance work")
            .contributes_to_readiness(false),
    )?;

    runtime.start_all().await?;
    show("all started; cache is warming up", &runtime)?;

    wait_ready(&runtime, true).await?;
    show("cache warm and subscriber connected", &runtime)?;

    println!("   (broker connection lost)");
    connected.store(false, Ordering::Relaxed);
    wait_ready(&runtime, false).await?;
    show("the readiness check failed", &runtime)?;

    println!("   (broker connection back)");
    connected.store(true, Ordering::Relaxed);
    wait_ready(&runtime, true).await?;
    show("the readiness check passed again", &runtime)?;

    // A draining worker is unready and admits no new work, but keeps running.
    runtime.drain("cache").await?;
    show("cache drained", &runtime)?;

    runtime.shutdown().await?;
    show("after shutdown", &runtime)?;

    // The same non-contributing reporter blocks readiness under `all_workers`.
    let strict = Runtime::builder("strict")
        .readiness_policy(ReadinessPolicy::AllWorkers)
        .build()?;
    strict.register(WorkerSpec::new("api", reporter_loop().auto_ready(true)))?;
    strict
        .register(WorkerSpec::new("reporter", reporter_loop()).contributes_to_readiness(false))?;
    strict.start_all().await?;
    show("policy all_workers: every worker must be ready", &strict)?;
    strict.shutdown().await?;
    Ok(())
}
