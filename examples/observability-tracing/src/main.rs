//! Observability with `tracing`: the runtime's events as log lines, and a span per command.
//!
//! The example installs a `tracing_subscriber::fmt` subscriber and a `TracingObserver`, then
//! runs a runtime with one `indexer` worker (a loop with a readiness check) that owns three
//! commands, and dispatches each:
//!
//! - `rebuild` succeeds; the handler opens a span of its own (`rebuild_index`) and logs inside
//!   it: both lines carry the `workerkit.command` span, with its dispatch id, as their parent;
//! - `sync` fails with a public code (`upstream_unavailable`): a `workerkit failure` line at
//!   ERROR and the command's end line carry the code and the public message, never the private
//!   cause (which names a password here);
//! - `slow` runs out of its 50 ms timeout (`deadline_exceeded`);
//! - one more `rebuild` after the shutdown began is rejected (0 attempts).
//!
//! A second worker, `crawler`, loses its upstream in its first incarnation and is restarted by
//! its restart policy: a `workerkit restart scheduled` line at WARN (with the attempt, the
//! delay and the failure code), then `workerkit worker restarted`.
//!
//! Lifecycle transitions, readiness changes, lifecycle operations and the check's executions
//! are logged along the way. Set `WORKERKIT_LOG_CAUSES=1` to see the private causes too, at
//! DEBUG (for local development only).
//!
//! Run with: `cargo run -p example-observability-tracing`

use std::error::Error;
use std::time::Duration;

use tracing::{Instrument, Level};
use workerkit_core::failure;
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::RestartPolicy;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LoopWorker, ReadinessCheck, Runtime, WorkerSpec,
    handler_fn,
};
use workerkit_tracing::TracingObserver;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let log_causes = std::env::var("WORKERKIT_LOG_CAUSES").is_ok_and(|v| v == "1");
    tracing_subscriber::fmt()
        .with_max_level(if log_causes {
            Level::DEBUG
        } else {
            Level::INFO
        })
        .with_target(true)
        .init();

    let observer = TracingObserver::builder()
        .level(Level::INFO)
        .log_causes(log_causes)
        .build();
    let runtime = Runtime::builder("search").with_observer(observer).build()?;

    let indexer = WorkerSpec::new(
        "indexer",
        LoopWorker::new(|ctx| async move {
            ctx.stop_requested().await;
            Ok(())
        }),
    )
    .readiness_check(ReadinessCheck::new(|_ctx| async { Ok(true) }))
    .command(CommandSpec::new(
        "rebuild",
        handler_fn(|_ctx| async {
            let span = tracing::info_span!("rebuild_index", shards = 3);
            let _entered = span.enter();
            tracing::info!(documents = 1200, "index rebuilt");
            Ok(CommandResponse::message("rebuilt"))
        }),
    ))
    .command(CommandSpec::new(
        "sync",
        handler_fn(|_ctx| async {
            let cause = std::io::Error::other("connect https://admin:hunter2@upstream failed");
            Err(failure::with_failure(
                cause,
                "upstream_unavailable",
                "upstream unavailable",
            ))
        }),
    ))
    .command(
        CommandSpec::new(
            "slow",
            handler_fn(|ctx| async move {
                // A cooperative handler: it gives up when its deadline cancels it.
                tokio::select! {
                    () = ctx.cancelled() => Err("gave up at the deadline".into()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => Ok(CommandResponse::empty()),
                }
            }),
        )
        .timeout(Duration::from_millis(50)),
    );
    runtime.register(indexer)?;
    // Fails once, then runs: its restart policy brings it back after 20 ms.
    let crawler = WorkerSpec::from_factory("crawler", || {
        LoopWorker::new(|ctx| async move {
            if ctx.restart().is_none() {
                return Err(failure::with_failure(
                    std::io::Error::other("upstream reset the connection"),
                    "upstream_lost",
                    "upstream connection lost",
                ));
            }
            ctx.stop_requested().await;
            Ok(())
        })
    })
    .restart(RestartPolicy::on_failure().backoff(Backoff::constant(Duration::from_millis(20))));
    runtime.register(crawler)?;
    runtime.start_all().await?;
    runtime
        .subscribe()
        .wait_until(|rt| rt.worker("crawler").is_some_and(|w| w.status.restarts == 1))
        .await;

    // The caller's own span: the command spans nest under it.
    let request_span = tracing::info_span!("admin_request", user = "ops");
    for command in ["rebuild", "sync", "slow"] {
        let result = runtime
            .dispatch(CommandRequest::new("indexer", command))
            .instrument(request_span.clone())
            .await;
        match result {
            Ok(result) => println!("{command}: ok after {} attempt(s)", result.attempts),
            Err(error) => println!("{command}: failed, {}", error.code()),
        }
    }

    let shutdown = runtime.shutdown();
    let late = runtime.dispatch(CommandRequest::new("indexer", "rebuild"));
    let (report, late) = tokio::join!(shutdown, late);
    if let Err(error) = late {
        println!("late rebuild: rejected, {}", error.code());
    }
    let report = report?;
    println!("stopped {:?} in {:?}", report.stopped, report.elapsed);
    Ok(())
}
