//! Several workers in one runtime: an ingest → index pipeline and a maintenance job.
//!
//! - `index` consumes documents from a queue; on stop it flushes what is still queued;
//! - `ingest` produces documents into that queue;
//! - `maintenance` compacts now and then and does not contribute to readiness.
//!
//! `index` is registered first because it is what `ingest` depends on: a shutdown stops workers
//! in reverse registration order, so the producer stops before the consumer, and nothing queued
//! is lost. A [`StatusWatch`] task prints the runtime's aggregate state and readiness as they
//! change; `main` prints the aggregate status as JSON and a per-worker table, restarts one
//! worker while the others keep running, and ends with a graceful shutdown and its report.
//!
//! Run with: `cargo run -p example-multi-worker`

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use workerkit_core::{LifecycleState, LoopWorker, Runtime, StatusWatch, WorkerSpec};

/// How often `ingest` produces a document.
const INGEST_EVERY: Duration = Duration::from_millis(10);

/// How often `maintenance` compacts.
const COMPACT_EVERY: Duration = Duration::from_millis(100);

/// How many documents `main` waits to see indexed before it moves on.
const WARM: u64 = 20;

/// Upper bound on every wait, so the example always ends.
const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// Consumes documents until asked to stop, then flushes the queue.
fn index(queue: Arc<Mutex<mpsc::Receiver<u64>>>, indexed: Arc<watch::Sender<u64>>) -> LoopWorker {
    LoopWorker::new(move |ctx| {
        let queue = Arc::clone(&queue);
        let indexed = Arc::clone(&indexed);
        async move {
            let mut queue = queue.lock().await;
            loop {
                tokio::select! {
                    biased;
                    () = ctx.stop_requested() => break,
                    Some(_document) = queue.recv() => indexed.send_modify(|n| *n += 1),
                }
            }
            let mut flushed = 0;
            while queue.try_recv().is_ok() {
                indexed.send_modify(|n| *n += 1);
                flushed += 1;
            }
            println!("index: stop requested; flushed {flushed} queued documents");
            Ok(())
        }
    })
}

/// Produces a document every [`INGEST_EVERY`] until asked to stop.
fn ingest(queue: mpsc::Sender<u64>, produced: Arc<AtomicU64>) -> LoopWorker {
    LoopWorker::new(move |ctx| {
        let queue = queue.clone();
        let produced = Arc::clone(&produced);
        async move {
            let mut tick = tokio::time::interval(INGEST_EVERY);
            loop {
                tokio::select! {
                    biased;
                    () = ctx.stop_requested() => return Ok(()),
                    _ = tick.tick() => {
                        let id = produced.load(Ordering::Relaxed) + 1;
                        if queue.try_send(id).is_ok() {
                            produced.store(id, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    })
}

/// Compacts every [`COMPACT_EVERY`] until asked to stop.
fn maintenance() -> LoopWorker {
    LoopWorker::new(|ctx| async move {
        let mut tick = tokio::time::interval(COMPACT_EVERY);
        let mut runs = 0_u32;
        loop {
            tokio::select! {
                biased;
                () = ctx.stop_requested() => {
                    println!(
                        "maintenance: incarnation {} stopping after {runs} compactions",
                        ctx.incarnation()
                    );
                    return Ok(());
                }
                _ = tick.tick() => runs += 1,
            }
        }
    })
}

/// Prints the aggregate state and readiness whenever they change, until the runtime stopped.
///
/// A watch wakes on every committed change but always shows the latest status, so quick
/// successive changes can be seen as one; an observer gets every event.
async fn print_changes(mut watch: StatusWatch) {
    let mut last = None;
    loop {
        let status = watch.runtime().status();
        let now = (status.state, status.ready);
        if last != Some(now) {
            println!("watch: runtime state={} ready={}", now.0, now.1);
            last = Some(now);
        }
        if status.shutting_down && status.state == LifecycleState::Stopped {
            return;
        }
        watch.changed().await;
    }
}

/// Prints one line per worker.
fn print_workers(runtime: &Runtime) {
    println!("   worker                  state     ready  contributes  incarnation");
    for worker in runtime.workers() {
        let status = &worker.status;
        println!(
            "   {:<23} {:<9} {:<6} {:<12} {}",
            worker.qualified_name,
            status.state.as_str(),
            status.ready,
            status.contributes_to_readiness,
            status.incarnation
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (sender, receiver) = mpsc::channel(256);
    let queue = Arc::new(Mutex::new(receiver));
    let indexed = Arc::new(watch::Sender::new(0_u64));
    let produced = Arc::new(AtomicU64::new(0));

    let runtime = Runtime::builder("search").build()?;
    let watcher = tokio::spawn(print_changes(runtime.subscribe()));

    runtime.register(
        WorkerSpec::new("index", index(queue, Arc::clone(&indexed)))
            .description("indexes queued documents"),
    )?;
    runtime.register(
        WorkerSpec::new("ingest", ingest(sender, Arc::clone(&produced)))
            .description("queues new documents"),
    )?;
    runtime.register(
        WorkerSpec::new("maintenance", maintenance())
            .description("compacts the index")
            .contributes_to_readiness(false),
    )?;

    runtime.start_all().await?;
    let mut seen = indexed.subscribe();
    tokio::time::timeout(WAIT_LIMIT, seen.wait_for(|n| *n >= WARM))
        .await
        .map_err(|_| "nothing was indexed in time")??;

    println!(
        "status: {}",
        serde_json::to_string_pretty(&runtime.status())?
    );
    print_workers(&runtime);

    // Operate one worker while the others keep running: the runtime stays ready because
    // `maintenance` does not contribute to readiness.
    runtime.stop("maintenance").await?;
    let restarted = runtime.start("maintenance").await?;
    println!(
        "main: restarted {} (incarnation {})",
        restarted.name, restarted.incarnation
    );
    print_workers(&runtime);

    println!("main: shutting down");
    match runtime.shutdown().await {
        Ok(report) => println!(
            "shutdown: stopped {:?} in {:?} (deadline exceeded: {})",
            report.stopped, report.elapsed, report.deadline_exceeded
        ),
        Err(err) => println!("shutdown incomplete: {err}"),
    }
    tokio::time::timeout(WAIT_LIMIT, watcher).await??;
    println!(
        "main: produced {} documents, indexed {}",
        produced.load(Ordering::Relaxed),
        *indexed.borrow()
    );
    Ok(())
}
