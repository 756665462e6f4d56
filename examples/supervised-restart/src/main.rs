//! Supervised restart and the heartbeat watchdog: what the runtime does when a worker fails or
//! stops making progress, printed as it happens.
//!
//! Four workers share one runtime:
//!
//! - `ingest`, a [`LoopWorker`] made by a factory ([`WorkerSpec::from_factory`]), fails on its
//!   first two incarnations. Its restart policy (`on_failure`, backoff 100 ms doubling) stops the
//!   failed incarnation, waits, and starts a fresh one; each new incarnation prints what
//!   [`WorkerContext::restart`] tells it. The third incarnation runs normally.
//! - `heartbeat` calls [`WorkerContext::beat`] every 50 ms under a 200 ms [`Watchdog`] whose
//!   action is `restart`. Its first incarnation gets stuck (no more beats); the watchdog finds it
//!   stalled and the restart policy brings up a second incarnation, which beats normally.
//! - `broken` fails every time. Its restart intensity (at most 2 restarts within 10 s) gives up
//!   on the third failure: the worker stays `failed` with `gaveUp`, its failure policy
//!   (`isolate`) applies, and `main` removes it with [`Runtime::remove`].
//! - `flusher` takes 600 ms to stop, so the final graceful shutdown reports every 250 ms what it
//!   is still waiting for.
//!
//! A small [`Observer`] prints every worker transition and supervision event with the time since
//! the program started. Lines from the workers themselves are indented. The whole run takes
//! about 1.5 s; see `docs/supervision.md` for the rules behind each line.
//!
//! Run with: `cargo run -p example-supervised-restart`

use std::error::Error;
use std::io;
use std::time::{Duration, Instant};

use workerkit_core::failure;
use workerkit_core::observe::{SupervisionEvent, SupervisionKind, TransitionEvent};
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::{Intensity, RestartPolicy, StallAction, Watchdog};
use workerkit_core::{
    LifecycleState, LoopWorker, Observer, Runtime, WorkerContext, WorkerSpec, worker_fn,
};

/// How long a failing incarnation of `ingest` runs before it fails.
const INGEST_FAILS_AFTER: Duration = Duration::from_millis(100);

/// How often `heartbeat` beats, and its watchdog timeout.
const BEAT_EVERY: Duration = Duration::from_millis(50);
const WATCHDOG_TIMEOUT: Duration = Duration::from_millis(200);

/// How long `flusher` takes to stop, and how often a shutdown reports what it waits for.
const FLUSH_TAKES: Duration = Duration::from_millis(600);
const SHUTDOWN_REPORT_EVERY: Duration = Duration::from_millis(250);

/// Prints one line of the event log, stamped with the time since the program started.
fn log(started: Instant, line: &str) {
    println!("{:>7.3}s  {line}", started.elapsed().as_secs_f64());
}

/// The event log: worker transitions and supervision events, in the runtime's order.
#[derive(Debug)]
struct EventLog {
    started: Instant,
}

impl Observer for EventLog {
    fn on_transition(&self, event: &TransitionEvent) {
        // The runtime's own aggregate state has transitions too (`worker` is `None`); they are
        // left out to keep the log short: the summary after the run shows the runtime's state.
        if let Some(worker) = event.worker.as_deref() {
            log(
                self.started,
                &format!(
                    "{worker}: {} -> {} (incarnation {})",
                    event.from, event.to, event.incarnation
                ),
            );
        }
    }

    fn on_supervision(&self, event: &SupervisionEvent) {
        let who = event.worker.as_deref().unwrap_or(&event.runtime);
        let code = |failure: &Option<failure::Failure>| {
            failure
                .as_ref()
                .map_or_else(String::new, |f| format!(", code {}", f.code()))
        };
        let what = match &event.kind {
            SupervisionKind::RestartScheduled {
                attempt,
                delay,
                reason,
                failure,
                ..
            } => format!(
                "incarnation {} ended ({}{}); restart attempt {attempt} in {delay:?}",
                event.incarnation,
                reason.as_str(),
                code(failure)
            ),
            SupervisionKind::Restarted { restarts, attempt } => format!(
                "restart #{restarts} (attempt {attempt}): incarnation {} starts",
                event.incarnation
            ),
            SupervisionKind::RestartCancelled => "the pending restart was cancelled".to_owned(),
            SupervisionKind::GaveUp {
                restarts,
                reason,
                failure,
                why,
            } => format!(
                "GAVE UP ({why}) after {restarts} restarts; the last incarnation ended ({}{}); \
                 the failure policy applies now",
                reason.as_str(),
                code(failure)
            ),
            SupervisionKind::Stalled { timeout, action } => format!(
                "STALLED: no beat within {timeout:?}; watchdog action `{}`",
                action.as_str()
            ),
            SupervisionKind::StallCleared => "beats again; no longer stalled".to_owned(),
            SupervisionKind::ShutdownWaiting {
                elapsed,
                workers,
                in_flight,
                phase,
                ..
            } => format!(
                "shutdown still {phase} after {elapsed:.2?}: waiting for {workers:?}, \
                 {in_flight} command(s) in flight"
            ),
            // `SupervisionKind` is non-exhaustive: later versions may add kinds.
            other => other.name().to_owned(),
        };
        log(
            self.started,
            &format!("{who}: [{}] {what}", event.kind.name()),
        );
    }
}

/// Says how this incarnation came to be: a requested start, or a restart.
fn introduce(ctx: &WorkerContext) {
    match ctx.restart() {
        None => println!(
            "           | {} #{}: first start (ctx.restart() is None)",
            ctx.name(),
            ctx.incarnation()
        ),
        Some(info) => println!(
            "           | {} #{}: restarted; ctx.restart(): attempt {}, restarts {}, \
             previous incarnation {} ended `{}`",
            ctx.name(),
            ctx.incarnation(),
            info.attempt,
            info.restarts,
            info.previous.incarnation,
            info.previous.reason.as_str()
        ),
    }
}

/// `ingest`: its first two incarnations fail after a short while; later ones run until asked
/// to stop. Built by a factory, so each incarnation is a fresh `LoopWorker`.
fn ingest() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        introduce(&ctx);
        if ctx.incarnation() <= 2 {
            tokio::select! {
                () = ctx.stop_requested() => return Ok(()),
                () = tokio::time::sleep(INGEST_FAILS_AFTER) => {}
            }
            println!(
                "           | ingest #{}: the upstream connection dropped; failing",
                ctx.incarnation()
            );
            // The cause stays private; status and events show the public code.
            let cause = io::Error::other("read tcp 10.0.0.7:5672: connection reset by peer");
            return Err(failure::with_failure(
                cause,
                "upstream_unavailable",
                "upstream unavailable",
            ));
        }
        println!(
            "           | ingest #{}: connected; consuming",
            ctx.incarnation()
        );
        ctx.set_ready(true)?;
        ctx.stop_requested().await;
        Ok(())
    })
    // Ready once connected, not as soon as the loop is launched.
    .auto_ready(false)
}

/// `heartbeat`: beats on every tick. Its first incarnation gets stuck after three beats.
fn heartbeat() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        introduce(&ctx);
        ctx.set_ready(true)?;
        let mut tick = tokio::time::interval(BEAT_EVERY);
        let mut beats = 0_u32;
        loop {
            tokio::select! {
                () = ctx.stop_requested() => return Ok(()),
                _ = tick.tick() => {}
            }
            // One relaxed counter increment: cheap enough for every iteration.
            ctx.beat();
            beats += 1;
            if ctx.incarnation() == 1 && beats == 3 {
                println!(
                    "           | heartbeat #1: stuck in a call that never returns (no more beats)"
                );
                // A stuck call that still honours the stop signal; the watchdog fires it.
                ctx.stop_requested().await;
                println!("           | heartbeat #1: released by its stop signal");
                return Ok(());
            }
        }
    })
    .auto_ready(false)
}

/// `broken`: every incarnation fails soon after it starts.
fn broken() -> LoopWorker {
    LoopWorker::new(|ctx: WorkerContext| async move {
        introduce(&ctx);
        tokio::select! {
            () = ctx.stop_requested() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(30)) => {}
        }
        let cause = io::Error::other("open /etc/pipeline/broken.toml: no such file");
        Err(failure::with_failure(
            cause,
            "config_missing",
            "configuration missing",
        ))
    })
}

/// Whether every scenario has played out: `ingest` and `heartbeat` run (and are ready) again
/// after their restarts, and `broken`'s policy gave up.
fn settled(runtime: &Runtime) -> bool {
    let ready = |name: &str, incarnation: u64| {
        runtime.worker(name).is_some_and(|w| {
            w.status.state == LifecycleState::Running
                && w.status.ready
                && w.status.incarnation == incarnation
        })
    };
    let gave_up = runtime
        .worker("broken")
        .is_some_and(|w| w.status.state == LifecycleState::Failed && w.status.gave_up);
    ready("ingest", 3) && ready("heartbeat", 2) && gave_up
}

/// Prints one line per worker with its supervision fields.
fn show_workers(runtime: &Runtime) {
    println!(
        "\n{:<10} {:<8} {:>11} {:>8} {:>6} {:>7}  last exit",
        "worker", "state", "incarnation", "restarts", "gaveUp", "stalled"
    );
    for worker in runtime.workers() {
        let s = &worker.status;
        let last_exit = s.last_exit.as_ref().map_or_else(
            || "-".to_owned(),
            |exit| {
                let code = exit.failure.as_ref().map_or("-", |f| f.code());
                format!(
                    "incarnation {}: {} ({code})",
                    exit.incarnation,
                    exit.reason.as_str()
                )
            },
        );
        println!(
            "{:<10} {:<8} {:>11} {:>8} {:>6} {:>7}  {last_exit}",
            &*worker.name, s.state, s.incarnation, s.restarts, s.gave_up, s.stalled
        );
    }
    let readiness = runtime.readiness();
    let liveness = runtime.liveness();
    println!(
        "runtime: state={} ready={} live={}\n",
        runtime.status().state,
        readiness.ready,
        liveness.live
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let runtime = Runtime::builder("pipeline")
        .with_observer(EventLog { started })
        .shutdown_report_interval(SHUTDOWN_REPORT_EVERY)
        .build()?;

    // Restart after a failure, 100 ms then 200 ms, 400 ms, ... (capped at 1 s; no jitter, so the
    // output is the same on every run), at most 5 restarts within a minute.
    let restart = RestartPolicy::on_failure()
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            2.0,
            Duration::from_secs(1),
        )?)
        .intensity(Intensity::new(5, Duration::from_secs(60))?);

    runtime.register(WorkerSpec::from_factory("ingest", ingest).restart(restart))?;
    runtime.register(
        WorkerSpec::from_factory("heartbeat", heartbeat)
            .restart(restart)
            .watchdog(Watchdog::new(WATCHDOG_TIMEOUT, StallAction::Restart)?),
    )?;
    runtime.register(
        WorkerSpec::new("broken", broken())
            .contributes_to_readiness(false)
            .restart(
                RestartPolicy::on_failure()
                    .backoff(Backoff::constant(Duration::from_millis(50)))
                    .intensity(Intensity::new(2, Duration::from_secs(10))?),
            ),
    )?;
    let flusher = worker_fn(|_ctx: WorkerContext| async { Ok(()) }).on_stop(|_ctx| async {
        println!("           | flusher: flushing buffers ({FLUSH_TAKES:?})");
        tokio::time::sleep(FLUSH_TAKES).await;
        Ok(())
    });
    runtime.register(WorkerSpec::new("flusher", flusher))?;

    println!("Each line starts with the time since the program started. `worker: a -> b` is a");
    println!(
        "transition, `[kind]` a supervision event, and lines after `|` come from the workers.\n"
    );
    println!("== start_all: four workers");
    runtime.start_all().await?;

    // Nothing to do but wait: the runtime restarts and watches the workers by itself.
    let mut watch = runtime.subscribe();
    tokio::time::timeout(Duration::from_secs(5), watch.wait_until(settled))
        .await
        .map_err(|_| "the scenarios did not play out within 5 s")?;
    println!("\n== settled: ingest and heartbeat run again; broken gave up");
    show_workers(&runtime);

    // A worker that gave up is `failed`: it can be started by hand (supervision starts afresh),
    // or removed. Its name is free again afterwards.
    let broken = runtime.worker("broken").ok_or("broken not registered")?;
    println!(
        "broken's status JSON: {}",
        serde_json::to_string(&broken.status)?
    );
    let removed = runtime.remove("broken").await?;
    println!(
        "removed {} (it was {}); the runtime now has {} workers",
        removed.qualified_name,
        removed.status.state,
        runtime.status().workers
    );

    println!("\n== shutdown: drain, then stop in reverse registration order");
    let report = runtime.shutdown().await?;
    println!(
        "\nshutdown stopped {:?} in {:.2?}",
        report.stopped, report.elapsed
    );

    // The example doubles as a check, run by `cargo xtask ci`.
    let restarts = |name: &str| runtime.worker(name).map(|w| w.status.restarts);
    if restarts("ingest") != Some(2) || restarts("heartbeat") != Some(1) {
        return Err(format!(
            "unexpected restart counts: ingest {:?}, heartbeat {:?}",
            restarts("ingest"),
            restarts("heartbeat")
        )
        .into());
    }
    Ok(())
}
