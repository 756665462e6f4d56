//! The demo service: four workers, every status change printed, graceful shutdown on Ctrl-C or
//! SIGTERM, and a forced exit on a second signal.
//!
//! - `poller` polls on an interval (a [`LoopWorker`]) and fills a cache;
//! - `subscriber` consumes from a simulated broker; a [`ReadinessCheck`] watches the connection,
//!   which drops for a few seconds every 20 s, so you can watch readiness go down and up;
//! - `maintenance` compacts now and then and does not contribute to readiness; its stop hook
//!   takes about two seconds to finish the current compaction, so a shutdown takes visible time;
//! - `admin` runs nothing by itself and owns three commands: `status/snapshot` (the workers'
//!   counters as JSON), `cache/flush` (marked dangerous) and a slow `reindex` that stops when
//!   cancelled. When `admin` stops, its commands get 1 s to finish, then are cancelled.
//!
//! A small [`Observer`] prints one line per event (transition, readiness, failure) and one per
//! command dispatch. Once every worker runs and the runtime is ready, the demo lists the
//! commands, dispatches `status/snapshot` and prints its result, prints the runtime's status as
//! JSON and the line `demo: running; press Ctrl-C to stop`. The first Ctrl-C or SIGTERM starts a
//! graceful shutdown (readiness off, drain, stop in reverse order) and prints its report; a
//! second one during the shutdown exits at once with code 130. Everything is simulated
//! in-process: no external services, no configuration.
//!
//! Run with: `cargo run --release -p example-demo`

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use workerkit_core::failure;
use workerkit_core::observe::{
    CommandEndEvent, CommandObservation, CommandStartEvent, FailureEvent, Observer, ReadinessEvent,
    TransitionEvent,
};
use workerkit_core::signal::shutdown_signal;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LoopWorker, ReadinessCheck, Runtime,
    WorkerContext, WorkerSpec, handler_fn, worker_fn,
};

/// The line printed once the demo is up; `tests/demo_signal.rs` waits for it.
const RUNNING: &str = "demo: running; press Ctrl-C to stop";

/// The exit code of a forced exit (128 + SIGINT, as shells report an interrupted program).
const FORCED_EXIT_CODE: i32 = 130;

/// How often the poller polls.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How often the simulated broker connection drops, and for how long.
const OUTAGE_EVERY: Duration = Duration::from_secs(20);
const OUTAGE_FOR: Duration = Duration::from_secs(3);

/// How often maintenance compacts, and how long finishing a compaction takes at stop.
const COMPACT_EVERY: Duration = Duration::from_secs(10);
const FINISH_COMPACTION: Duration = Duration::from_secs(2);

/// How many steps a reindex takes, and how long each one.
const REINDEX_STEPS: u32 = 20;
const REINDEX_STEP: Duration = Duration::from_millis(250);

/// How long `admin`'s commands may run on once `admin` is asked to stop.
const COMMAND_GRACE: Duration = Duration::from_secs(1);

/// What the workers count, for the `status/snapshot` command.
#[derive(Debug, Default)]
struct Counters {
    polls: AtomicU64,
    cached: AtomicU64,
    compactions: AtomicU64,
}

/// Prints one line per lifecycle event, and publishes the runtime's readiness so `main` can
/// wait for it after its event line was printed.
///
/// Gaps in the `#` numbering are operation events (an operation began or ended), which this
/// observer does not print.
#[derive(Debug)]
struct PrintObserver {
    runtime_ready: watch::Sender<bool>,
}

/// The subject of an event: the qualified worker name, or the runtime.
fn subject(worker: Option<&str>, runtime: &str) -> String {
    worker.map_or_else(|| format!("{runtime} (runtime)"), str::to_owned)
}

/// Follows one command dispatch and prints how it ended.
#[derive(Debug)]
struct PrintCommand;

impl CommandObservation for PrintCommand {
    fn end(self: Box<Self>, event: &CommandEndEvent) {
        let code = event.failure.as_ref().map_or("-", |f| f.code());
        println!(
            "command {} {} ({}): {} after {} attempt(s) in {:?} (code {code})",
            event.worker,
            event.command,
            event.dispatch_id,
            event.outcome.as_str(),
            event.attempts,
            event.duration
        );
    }
}

impl Observer for PrintObserver {
    fn on_transition(&self, event: &TransitionEvent) {
        println!(
            "event #{:<3} {}: {} -> {}",
            event.seq,
            subject(event.worker.as_deref(), &event.runtime),
            event.from,
            event.to
        );
    }

    fn on_readiness(&self, event: &ReadinessEvent) {
        println!(
            "event #{:<3} {}: ready={}",
            event.seq,
            subject(event.worker.as_deref(), &event.runtime),
            event.ready
        );
        if event.worker.is_none() {
            self.runtime_ready.send_replace(event.ready);
        }
    }

    fn on_failure(&self, event: &FailureEvent) {
        // Only the public code and message; the private cause never goes to output.
        println!(
            "event #{:<3} {}: failure code={} message={:?} panic={}",
            event.seq,
            subject(event.worker.as_deref(), &event.runtime),
            event.failure.code(),
            event.failure.message(),
            event.panic
        );
    }

    fn on_command_start(&self, _event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        Some(Box::new(PrintCommand))
    }
}

/// Polls every [`POLL_EVERY`], caches what it got, and reports every fifth poll.
fn poller(counters: &Arc<Counters>) -> LoopWorker {
    let counters = Arc::clone(counters);
    LoopWorker::new(move |ctx: WorkerContext| {
        let counters = Arc::clone(&counters);
        async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            loop {
                tokio::select! {
                    biased;
                    () = ctx.stop_requested() => return Ok(()),
                    _ = tick.tick() => {
                        let polls = counters.polls.fetch_add(1, Ordering::Relaxed) + 1;
                        counters.cached.fetch_add(3, Ordering::Relaxed);
                        if polls % 5 == 0 {
                            println!("poller: {polls} polls so far");
                        }
                    }
                }
            }
        }
    })
}

/// Consumes from a simulated broker whose connection drops every [`OUTAGE_EVERY`]. Its readiness
/// check decides its readiness (a worker with a check is never auto-ready).
fn subscriber(connected: &Arc<AtomicBool>) -> LoopWorker {
    let connected = Arc::clone(connected);
    LoopWorker::new(move |ctx: WorkerContext| {
        let connected = Arc::clone(&connected);
        async move {
            loop {
                connected.store(true, Ordering::Relaxed);
                tokio::select! {
                    () = ctx.stop_requested() => break,
                    () = tokio::time::sleep(OUTAGE_EVERY) => {}
                }
                println!("subscriber: broker connection lost (simulated)");
                connected.store(false, Ordering::Relaxed);
                tokio::select! {
                    () = ctx.stop_requested() => break,
                    () = tokio::time::sleep(OUTAGE_FOR) => {}
                }
                println!("subscriber: reconnected");
            }
            connected.store(false, Ordering::Relaxed);
            Ok(())
        }
    })
}

/// Compacts every [`COMPACT_EVERY`]; at stop, finishes the current compaction first.
fn maintenance(counters: &Arc<Counters>) -> LoopWorker {
    let counters = Arc::clone(counters);
    LoopWorker::new(move |ctx: WorkerContext| {
        let counters = Arc::clone(&counters);
        async move {
            let mut tick = tokio::time::interval(COMPACT_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    biased;
                    () = ctx.stop_requested() => return Ok(()),
                    _ = tick.tick() => {
                        counters.compactions.fetch_add(1, Ordering::Relaxed);
                        println!("maintenance: compacted");
                    }
                }
            }
        }
    })
    .on_stop(|_ctx| async {
        println!(
            "maintenance: finishing the current compaction (about {} s); \
             press Ctrl-C again to force exit",
            FINISH_COMPACTION.as_secs()
        );
        tokio::time::sleep(FINISH_COMPACTION).await;
        println!("maintenance: compaction finished");
        Ok(())
    })
}

/// The operator's worker: runs nothing by itself, and owns three commands.
fn admin(counters: &Arc<Counters>, connected: &Arc<AtomicBool>) -> WorkerSpec {
    let snapshot = {
        let counters = Arc::clone(counters);
        let connected = Arc::clone(connected);
        handler_fn(move |_ctx| {
            let payload = json!({
                "polls": counters.polls.load(Ordering::Relaxed),
                "cached": counters.cached.load(Ordering::Relaxed),
                "compactions": counters.compactions.load(Ordering::Relaxed),
                "broker_connected": connected.load(Ordering::Relaxed),
            });
            async move { Ok(CommandResponse::payload(payload)) }
        })
    };
    let flush = {
        let counters = Arc::clone(counters);
        handler_fn(move |_ctx| {
            let flushed = counters.cached.swap(0, Ordering::Relaxed);
            async move {
                Ok(CommandResponse::message(format!(
                    "flushed {flushed} cached entries"
                )))
            }
        })
    };
    let reindex = handler_fn(|ctx| async move {
        for step in 1..=REINDEX_STEPS {
            tokio::select! {
                // Cancelled by id, by `admin`'s stop (after the grace), or at the timeout.
                () = ctx.cancelled() => {
                    let cause = format!("reindex interrupted at step {step} of {REINDEX_STEPS}");
                    return Err(failure::with_failure(
                        cause,
                        "reindex_interrupted",
                        "reindex interrupted",
                    ));
                }
                () = tokio::time::sleep(REINDEX_STEP) => {}
            }
        }
        Ok(CommandResponse::message(format!(
            "reindexed in {REINDEX_STEPS} steps"
        )))
    });

    WorkerSpec::new("admin", worker_fn(|_ctx| async { Ok(()) }))
        .description("operator commands")
        .cancel_commands_on_stop(COMMAND_GRACE)
        .command(
            CommandSpec::new("status/snapshot", snapshot)
                .description("the workers' counters as JSON")
                .idempotent(true),
        )
        .command(
            CommandSpec::new("cache/flush", flush)
                .description("drops every cached entry")
                .dangerous(true)
                .idempotent(true),
        )
        .command(
            CommandSpec::new("reindex", reindex)
                .description("rebuilds the search index (about 5 s; cancellable)")
                .concurrency(1)
                .timeout(Duration::from_secs(30)),
        )
}

/// How the demo ended.
enum Ending {
    /// The graceful shutdown finished; exit with this code.
    Graceful(std::process::ExitCode),
    /// A second signal arrived during the shutdown.
    Forced,
}

async fn run() -> Result<Ending, Box<dyn Error>> {
    // Install the signal handlers first, so a signal during startup is not lost.
    let mut signals = shutdown_signal()?;

    let runtime_ready = watch::Sender::new(false);
    let mut ready = runtime_ready.subscribe();
    let runtime = Runtime::builder("demo")
        .with_observer(PrintObserver { runtime_ready })
        .stop_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(10))
        .build()?;

    let counters = Arc::new(Counters::default());
    let connected = Arc::new(AtomicBool::new(false));
    let probe = Arc::clone(&connected);
    let broker_check = ReadinessCheck::new(move |_ctx| {
        let probe = Arc::clone(&probe);
        async move { Ok(probe.load(Ordering::Relaxed)) }
    })
    .interval(Duration::from_millis(500))
    .timeout(Duration::from_millis(200));

    runtime.register(
        WorkerSpec::new("poller", poller(&counters)).description("polls an upstream API"),
    )?;
    runtime.register(
        WorkerSpec::new("subscriber", subscriber(&connected))
            .description("consumes from a broker")
            .readiness_check(broker_check),
    )?;
    runtime.register(
        WorkerSpec::new("maintenance", maintenance(&counters))
            .description("compacts storage; optional for readiness")
            .contributes_to_readiness(false),
    )?;
    runtime.register(admin(&counters, &connected))?;

    runtime.start_all().await?;
    // `wait_for` returns a borrow of the value, which blocks the observer's next `send_replace`
    // while it lives: keep only the verdict.
    let became_ready = tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .is_ok_and(|result| result.is_ok());
    if !became_ready {
        println!("demo: not ready after 10 s; running anyway");
    }
    let commands: Vec<String> = runtime
        .all_commands()
        .iter()
        .map(|info| {
            let dangerous = if info.dangerous { " (dangerous)" } else { "" };
            format!("{} {}{dangerous}", info.worker, info.name)
        })
        .collect();
    println!("commands: {}", commands.join(", "));
    let snapshot = runtime
        .dispatch(CommandRequest::new("admin", "status/snapshot"))
        .await?;
    println!(
        "status/snapshot: {}",
        serde_json::to_string(&snapshot.result)?
    );
    println!("status: {}", serde_json::to_string(&runtime.status())?);
    println!("{RUNNING}");

    let first = signals.recv().await;
    println!("demo: {first} received; shutting down gracefully (send it again to force exit)");
    tokio::select! {
        result = runtime.shutdown() => match result {
            Ok(report) => {
                println!(
                    "demo: shutdown complete: stopped {:?} in {:?}",
                    report.stopped, report.elapsed
                );
                Ok(Ending::Graceful(std::process::ExitCode::SUCCESS))
            }
            Err(err) => {
                println!("demo: shutdown incomplete: {err}");
                Ok(Ending::Graceful(std::process::ExitCode::FAILURE))
            }
        },
        second = signals.recv() => {
            println!("demo: {second} received during shutdown; forcing exit");
            Ok(Ending::Forced)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(Ending::Graceful(code)) => code,
        // Exit now, without waiting for the workers the shutdown is still stopping.
        Ok(Ending::Forced) => std::process::exit(FORCED_EXIT_CODE),
        Err(err) => {
            eprintln!("demo: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
