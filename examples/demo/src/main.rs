//! The demo service: an HTTP operations plane over six workers, with Kubernetes probes and a
//! managed graceful shutdown on Ctrl-C or SIGTERM (a second signal forces it).
//!
//! - `poller` polls on an interval (a [`LoopWorker`]) and fills a cache;
//! - `subscriber` consumes from a simulated broker; a [`ReadinessCheck`] watches the connection,
//!   which drops for a few seconds every 20 s, so you can watch readiness go down and up;
//! - `maintenance` compacts now and then and does not contribute to readiness; its stop hook
//!   takes about two seconds to finish the current compaction, so a shutdown takes visible time;
//! - `admin` owns `status/snapshot`, `cache/flush` (dangerous) and a slow, cancellable
//!   `reindex`; when `admin` stops, its commands get 1 s to finish, then are cancelled;
//! - `echo` has a worker-local concurrency limit of 8 (fail-fast: the ninth concurrent command
//!   gets 429) and the commands `echo` (returns its JSON payload), `sleep` (`{"ms": N}`: waits,
//!   honouring cancellation) and `fail` (a handler error whose text holds a fake secret, which
//!   never reaches a client);
//! - `chaos` is supervised: made by a factory (a fresh instance per incarnation), restarted on
//!   failure with a visible backoff (500 ms doubling up to 10 s, equal jitter; at most 5
//!   restarts a minute, then it gives up and stays `failed`), and watched by a heartbeat
//!   watchdog (5 s, action `report`). Its command `crash` makes its loop panic, so you can watch
//!   it go `restarting` and come back in `GET /admin/workers/chaos`, `GET /admin/events` and the
//!   logs; `stall` (`{"ms": N}`) makes it skip its heartbeats for a while, so its status shows
//!   `stalled`. It does not contribute to readiness: the service stays ready while it restarts.
//!
//! HTTP (default `127.0.0.1:8080`; `--addr` or `WORKERKIT_DEMO_ADDR` to change it; port 0 picks
//! a free port, and the bound address is printed): probes `/livez` and `/readyz` at the root;
//! read, dispatch and lifecycle routes under `/admin`. Mutating routes require
//! `Authorization: Bearer <token>` when `WORKERKIT_DEMO_TOKEN` is set; without a token they are
//! open on a loopback address and not mounted on any other.
//!
//! Shutdown: `WORKERKIT_DEMO_PRE_STOP_MS` (default 0) is the pre-stop delay during which
//! `/readyz` is 503 and requests are still served; `WORKERKIT_DEMO_SHUTDOWN_BUDGET_MS` (default
//! 10000) bounds pre-stop delay, HTTP drain and the workers' shutdown together. The exit code is
//! 0 after a clean shutdown and 1 otherwise (forced, budget exhausted, or a failed runtime).
//!
//! Logs go to stdout: every lifecycle, readiness, failure and command event through
//! [`TracingObserver`] (with a span per command, and every supervision event: restart scheduled,
//! restarted, gave up, stalled...), and the demo's own lines. When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and only then), traces and metrics are exported over
//! OTLP/HTTP as well (`OTEL_SERVICE_NAME` names the service); a dispatch's `traceparent` header
//! continues the caller's trace. Everything is
//! simulated in-process: no external services.
//!
//! Run with: `cargo run --release -p example-demo`

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use workerkit_core::command::{AdmissionMode, json_handler};
use workerkit_core::failure;
use workerkit_core::retry::{Backoff, Jitter};
use workerkit_core::signal::shutdown_signal;
use workerkit_core::supervise::{Intensity, RestartPolicy, StallAction, Watchdog};
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LoopWorker, ReadinessCheck, Runtime,
    WorkerContext, WorkerSpec, handler_fn, worker_fn,
};
use workerkit_opshttp::{BearerAuthLayer, ManagedService, OpsHttp};
use workerkit_tracing::TracingObserver;

/// The line printed once the demo is up; `tests/demo_signal.rs` waits for it.
const RUNNING: &str = "demo: running; press Ctrl-C to stop";

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

/// The `echo` worker's fake secret: its `fail` command hides it in a handler error, and it must
/// never reach a client.
const FAKE_SECRET: &str = "password=hunter2";

/// The `echo` worker: nothing to run by itself; three commands; at most 8 at once (fail-fast).
fn echo() -> WorkerSpec {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sleep {
        ms: u64,
    }
    WorkerSpec::new("echo", worker_fn(|_ctx| async { Ok(()) }))
        .description("echoes, sleeps and fails on request")
        .command_concurrency(8)
        .command_admission(AdmissionMode::FailFast)
        // At its stop, commands still running get half a second, then are cancelled.
        .cancel_commands_on_stop(Duration::from_millis(500))
        .command(
            CommandSpec::new(
                "echo",
                handler_fn(|ctx| async move {
                    Ok(CommandResponse::empty().with_payload(ctx.request().raw_payload().cloned()))
                }),
            )
            .description("returns its JSON payload")
            .payload_kind("any")
            .idempotent(true),
        )
        .command(
            CommandSpec::new(
                "sleep",
                json_handler(|ctx, sleep: Sleep| async move {
                    tokio::select! {
                        () = ctx.cancelled() => Err(failure::with_failure(
                            format!("sleep of {} ms cancelled", sleep.ms),
                            "cancelled",
                            "sleep cancelled",
                        )),
                        () = tokio::time::sleep(Duration::from_millis(sleep.ms)) => {
                            Ok(json!({ "slept_ms": sleep.ms }))
                        }
                    }
                }),
            )
            .description("waits {\"ms\": N} milliseconds, honouring cancellation")
            .payload_kind("sleep")
            .no_timeout(),
        )
        .command(
            CommandSpec::new(
                "fail",
                handler_fn(|_ctx| async {
                    Err::<CommandResponse, _>(failure::BoxError::from(format!(
                        "could not connect with {FAKE_SECRET}"
                    )))
                }),
            )
            .description("always fails (its error text holds a fake secret)"),
        )
}

/// How often `chaos` ticks, and beats.
const CHAOS_TICK: Duration = Duration::from_secs(1);

/// `chaos`'s watchdog timeout: with no beat for this long it is reported stalled.
const CHAOS_WATCHDOG: Duration = Duration::from_secs(5);

/// `chaos`'s restart policy: on failure, after 500 ms, 1 s, 2 s, ... up to 10 s (equal jitter:
/// each delay between half and all of that), at most 5 restarts a minute; a minute of healthy
/// running resets the backoff.
fn chaos_restart_policy() -> Result<RestartPolicy, Box<dyn Error>> {
    let backoff = Backoff::exponential(Duration::from_millis(500), 2.0, Duration::from_secs(10))?
        .jitter(Jitter::Equal)?;
    Ok(RestartPolicy::on_failure()
        .backoff(backoff)
        .reset_after(Duration::from_secs(60))
        .intensity(Intensity::new(5, Duration::from_secs(60))?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stall {
    ms: u64,
}

/// The `chaos` worker: a supervised loop that ticks and beats, with commands that break it.
///
/// Each incarnation comes from the factory and subscribes to the crash requests when it is made,
/// before it runs: a `crash` dispatched while it runs is never missed, and one from before it
/// existed is never replayed.
fn chaos() -> Result<WorkerSpec, Box<dyn Error>> {
    let (crash_tx, _) = tokio::sync::watch::channel(0_u64);
    let crash_tx = Arc::new(crash_tx);
    // The loop skips its beats until this instant (the `stall` command).
    let stall_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>> = Arc::default();

    let factory = {
        let crash_tx = Arc::clone(&crash_tx);
        let stall_until = Arc::clone(&stall_until);
        move || {
            let crash = crash_tx.subscribe();
            let stall_until = Arc::clone(&stall_until);
            LoopWorker::new(move |ctx: WorkerContext| {
                let mut crash = crash.clone();
                let stall_until = Arc::clone(&stall_until);
                async move {
                    let how = ctx.restart().map_or_else(String::new, |info| {
                        format!(
                            " after restart {} (backoff attempt {}; the previous one: {})",
                            info.restarts,
                            info.attempt,
                            info.previous.reason.as_str()
                        )
                    });
                    println!("chaos: incarnation {} up{how}", ctx.incarnation());
                    let mut tick = tokio::time::interval(CHAOS_TICK);
                    loop {
                        tokio::select! {
                            biased;
                            () = ctx.stop_requested() => return Ok(()),
                            changed = crash.changed() => {
                                if changed.is_err() {
                                    // No more crash requests can come (the spec is gone).
                                    ctx.stop_requested().await;
                                    return Ok(());
                                }
                                println!("chaos: crash requested; panicking now");
                                panic!("chaos: crash requested");
                            }
                            _ = tick.tick() => {
                                let stalled = stall_until
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .is_some_and(|until| tokio::time::Instant::now() < until);
                                if !stalled {
                                    ctx.beat();
                                }
                            }
                        }
                    }
                }
            })
        }
    };

    let crash = handler_fn(move |_ctx| {
        crash_tx.send_modify(|requests| *requests += 1);
        async {
            Ok(CommandResponse::message(
                "chaos crashes now; watch GET /admin/workers/chaos",
            ))
        }
    });
    let stall = json_handler(move |_ctx, stall: Stall| {
        let until = tokio::time::Instant::now() + Duration::from_millis(stall.ms);
        *stall_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
        async move { Ok::<_, failure::BoxError>(json!({ "stalled_ms": stall.ms })) }
    });

    Ok(WorkerSpec::from_factory("chaos", factory)
        .description("a supervised worker you can crash: restarts with backoff")
        .contributes_to_readiness(false)
        .restart(chaos_restart_policy()?)
        .watchdog(Watchdog::new(CHAOS_WATCHDOG, StallAction::Report)?)
        .command(
            CommandSpec::new("crash", crash)
                .description("makes the worker's loop panic; the restart policy restarts it")
                .dangerous(true),
        )
        .command(
            CommandSpec::new("stall", stall)
                .description("skips heartbeats for {\"ms\": N} milliseconds (watchdog: stalled)")
                .payload_kind("stall"),
        ))
}

/// The demo's settings, from the command line and the environment.
#[derive(Debug)]
struct Settings {
    addr: SocketAddr,
    token: Option<String>,
    pre_stop: Duration,
    budget: Duration,
}

fn settings() -> Result<Settings, Box<dyn Error>> {
    let mut addr = std::env::var("WORKERKIT_DEMO_ADDR").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = Some(
                    args.next()
                        .ok_or("--addr needs a value, e.g. 127.0.0.1:8080")?,
                )
            }
            other => match other.strip_prefix("--addr=") {
                Some(value) => addr = Some(value.to_owned()),
                None => {
                    return Err(format!("unknown argument {other:?} (try --addr HOST:PORT)").into());
                }
            },
        }
    }
    let addr = addr.as_deref().unwrap_or(DEFAULT_ADDR);
    let addr: SocketAddr = addr
        .parse()
        .map_err(|err| format!("invalid address {addr:?}: {err}"))?;
    let millis = |name: &str, default: u64| -> Result<Duration, Box<dyn Error>> {
        match std::env::var(name) {
            Ok(value) => {
                Ok(Duration::from_millis(value.parse().map_err(|err| {
                    format!("invalid {name}={value:?}: {err}")
                })?))
            }
            Err(_) => Ok(Duration::from_millis(default)),
        }
    };
    Ok(Settings {
        addr,
        token: std::env::var("WORKERKIT_DEMO_TOKEN")
            .ok()
            .filter(|token| !token.is_empty()),
        pre_stop: millis("WORKERKIT_DEMO_PRE_STOP_MS", 0)?,
        budget: millis("WORKERKIT_DEMO_SHUTDOWN_BUDGET_MS", 10_000)?,
    })
}

/// The default listen address.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

async fn run() -> Result<(), Box<dyn Error>> {
    let settings = settings()?;
    // Install the signal handlers first, so a signal during startup is not lost.
    let signals = shutdown_signal()?;

    // Logs on stdout: the runtime's events through the tracing observer.
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_target(false)
        .init();
    let mut builder = Runtime::builder("demo")
        .with_observer(TracingObserver::new())
        .stop_timeout(Duration::from_secs(5));
    // OpenTelemetry traces and metrics over OTLP/HTTP when an endpoint is configured (the
    // standard `OTEL_*` variables), and only then; flushed at the end of the shutdown.
    if let Some(otel) = workerkit_otel::init()? {
        println!("demo: exporting traces and metrics over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT)");
        builder = builder.with_observer(otel);
    }
    let runtime = builder.build()?;

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
    runtime.register(echo())?;
    runtime.register(chaos()?)?;

    // The operations plane. Mutating routes need the token when one is set; without one they
    // are mounted only on a loopback address.
    let mut ops = OpsHttp::new(runtime.clone());
    let mutating = settings.token.is_some() || settings.addr.ip().is_loopback();
    if mutating {
        ops = ops.enable_dispatch().enable_lifecycle();
    } else {
        println!(
            "demo: {} is not a loopback address and WORKERKIT_DEMO_TOKEN is not set: \
             dispatch and lifecycle routes are off",
            settings.addr
        );
    }
    if let Some(token) = &settings.token {
        ops = ops
            .dispatch_layer(BearerAuthLayer::new(token))
            .lifecycle_layer(BearerAuthLayer::new(token));
    }
    let app = axum::Router::new().merge(ops.router()).merge(ops.probes());
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", settings.addr))?;
    let local = listener.local_addr()?;

    // Start the workers here (not in the managed service) to show the commands and status
    // once everything runs.
    runtime.start_all().await?;
    let mut watch = runtime.subscribe();
    let became_ready = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_until(|rt| rt.status().ready),
    )
    .await
    .is_ok();
    if !became_ready {
        println!("demo: not ready after 10 s; serving anyway");
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
    println!("demo: listening on http://{local}");
    println!("demo: try  curl -s http://{local}/readyz  and  curl -s http://{local}/admin/workers");
    println!("{RUNNING}");

    let result = ManagedService::new(runtime, app)
        .serving_state(ops.serving_state())
        .signals(signals)
        .start_workers(false)
        .pre_stop_delay(settings.pre_stop)
        .shutdown_budget(settings.budget)
        .run(listener)
        .await;
    match result {
        Ok(report) => {
            let stopped = report.shutdown.map(|r| r.stopped).unwrap_or_default();
            println!(
                "demo: shutdown complete ({:?}): stopped {stopped:?} in {:?}",
                report.trigger, report.elapsed
            );
            Ok(())
        }
        Err(err) => {
            if let Some(report) = err.report() {
                println!(
                    "demo: shutdown not clean ({:?}, forced={}): {err}",
                    report.trigger, report.forced
                );
            }
            Err(err.into())
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            println!("demo: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
