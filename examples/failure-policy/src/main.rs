//! Failure and panic policy: what a failed or panicking worker does to the runtime.
//!
//! Each scenario runs a healthy `api` worker next to a `flaky` worker that does not contribute to
//! readiness, lets `flaky` fail, and prints the runtime's state, readiness and liveness:
//!
//! - `isolate` (the default): the worker fails alone; the runtime stays ready and live;
//! - `mark_runtime_unready`: the runtime is not ready while the worker is failed (even though
//!   the worker does not contribute), but stays live;
//! - `fail_runtime`: the runtime's state becomes `failed`: not ready and not live, so a
//!   liveness probe restarts the process. A manual `start` recovers it here.
//!
//! Then panics: under `recover` (the default) a panicking loop is caught and fails only its
//! worker, with exit reason `panicked`; under `propagate` a panic with no caller to resume on
//! escalates to `fail_runtime`, and a panic in `start` is resumed on the caller of `start`.
//! [`Runtime::wait_exit`] returns how each incarnation ended. The failing error's text (which
//! holds a password here) never appears in status: only the public code and message do.
//!
//! Run with: `cargo run -p example-failure-policy`

use std::error::Error;
use std::io;
use std::time::Duration;

use workerkit_core::failure::{self, BoxError};
use workerkit_core::{
    FailurePolicy, LoopWorker, PanicPolicy, Runtime, WorkerContext, WorkerSpec, worker_fn,
};

/// How long the flaky loop runs before it fails.
const FAIL_AFTER: Duration = Duration::from_millis(50);

/// A loop that runs until asked to stop.
fn steady() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        ctx.stop_requested().await;
        Ok(())
    })
}

/// A loop whose first incarnation fails with a public code; later incarnations run normally.
fn flaky() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        if ctx.incarnation() == 1 {
            tokio::time::sleep(FAIL_AFTER).await;
            // The cause is private; `with_failure` gives the public face.
            let cause = io::Error::other("connect amqp://admin:hunter2@broker: refused");
            return Err(failure::with_failure(
                cause,
                "upstream_unavailable",
                "upstream unavailable",
            ));
        }
        ctx.stop_requested().await;
        Ok(())
    })
}

/// A loop that panics shortly after it starts.
fn panicking() -> LoopWorker {
    LoopWorker::new(|_ctx: WorkerContext| async move {
        tokio::time::sleep(FAIL_AFTER).await;
        panic!("index out of bounds in batch 42");
    })
}

/// Prints the runtime's state, readiness and liveness in one line, and liveness reasons.
fn show(runtime: &Runtime) {
    let status = runtime.status();
    let liveness = runtime.liveness();
    println!(
        "   runtime: state={} ready={} live={}",
        status.state, status.ready, liveness.live
    );
    for reason in &liveness.reasons {
        println!("   liveness: {reason}");
    }
}

/// Waits for the end of the worker's current incarnation and prints it.
async fn show_exit(runtime: &Runtime, worker: &str) -> Result<(), Box<dyn Error>> {
    let exit = tokio::time::timeout(Duration::from_secs(5), runtime.wait_exit(worker))
        .await
        .map_err(|_| format!("{worker} did not exit in time"))??;
    let code = exit.failure.as_ref().map_or("-", |f| f.code());
    println!(
        "   {worker}: incarnation {} ended: reason={} code={code}",
        exit.incarnation,
        exit.reason.as_str()
    );
    Ok(())
}

/// One failure-policy scenario: `api` and a non-contributing `flaky` under `policy`.
async fn failure_scenario(policy: FailurePolicy) -> Result<Runtime, Box<dyn Error>> {
    println!("== failure policy {policy}");
    let runtime = Runtime::builder("orders").build()?;
    runtime.register(WorkerSpec::new("api", steady()))?;
    runtime.register(
        WorkerSpec::new("flaky", flaky())
            .contributes_to_readiness(false)
            .failure_policy(policy),
    )?;
    runtime.start_all().await?;
    show_exit(&runtime, "flaky").await?;
    show(&runtime);
    Ok(runtime)
}

/// A loop panic under `panic_policy`; the worker's failure policy stays `isolate`.
async fn panic_scenario(policy: PanicPolicy) -> Result<(), Box<dyn Error>> {
    println!("== panic policy {policy} (a panicking loop)");
    let runtime = Runtime::builder("indexer").build()?;
    runtime.register(WorkerSpec::new("api", steady()))?;
    runtime.register(
        WorkerSpec::new("batcher", panicking())
            .contributes_to_readiness(false)
            .panic_policy(policy),
    )?;
    runtime.start_all().await?;
    show_exit(&runtime, "batcher").await?;
    show(&runtime);
    runtime.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Panics are caught by the runtime; keep the default hook's report to one line.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string payload)");
        println!("   (panic in worker code: {message:?}; caught)");
    }));

    for policy in [FailurePolicy::Isolate, FailurePolicy::MarkRuntimeUnready] {
        let runtime = failure_scenario(policy).await?;
        runtime.shutdown().await?;
    }

    let runtime = failure_scenario(FailurePolicy::FailRuntime).await?;
    // Status shows the public failure only; the cause's text stays private.
    let flaky = runtime.worker("flaky").ok_or("flaky not registered")?;
    println!(
        "   flaky lastFailure: {}",
        serde_json::to_string(&flaky.status.last_failure)?
    );
    // The runtime never restarts a failed worker. Its loop failed, so a manual start recovers it
    // (a new incarnation), even right after `wait_exit`: a `LoopWorker`'s start first waits for
    // the failed loop's automatic cleanup, if that is still running.
    let status = runtime.start("flaky").await?;
    println!(
        "   restarted flaky: incarnation {} is {}",
        status.incarnation, status.state
    );
    show(&runtime);
    runtime.shutdown().await?;

    panic_scenario(PanicPolicy::Recover).await?;
    panic_scenario(PanicPolicy::Propagate).await?;

    // Under `propagate`, a panic in `start` is resumed on whoever called `start`, after the
    // runtime recorded it. Here the caller is a task, so the panic ends that task.
    println!("== panic policy propagate (a panicking start)");
    let runtime = Runtime::builder("loader").build()?;
    runtime.register(WorkerSpec::new("api", steady()))?;
    let boom = worker_fn(|_ctx: WorkerContext| async move {
        let batch: usize = "eight".parse().expect("BATCH_SIZE must be a number");
        println!("   batch size {batch}");
        Ok::<(), BoxError>(())
    });
    runtime.register(
        WorkerSpec::new("boom", boom)
            .contributes_to_readiness(false)
            .panic_policy(PanicPolicy::Propagate),
    )?;
    runtime.start("api").await?;
    let caller = runtime.clone();
    let joined = tokio::spawn(async move { caller.start("boom").await }).await;
    match joined {
        Err(err) if err.is_panic() => println!("   start(\"boom\") panicked in its caller"),
        other => println!("   unexpected: {other:?}"),
    }
    show_exit(&runtime, "boom").await?;
    show(&runtime);
    runtime.shutdown().await?;
    Ok(())
}
