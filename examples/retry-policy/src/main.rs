//! Retry policy: which failed command attempts are tried again, when, and for how long.
//!
//! - **Backoff and jitter**: a flaky handler fails three times, then succeeds, under up to five
//!   attempts with capped exponential backoff and full jitter. The example prints the schedule
//!   (base delays, and a seeded sample of jittered ones), then each attempt and the delay
//!   actually waited before it.
//! - **Permanent errors**: an error wrapped with [`permanent`] is never retried, whatever the
//!   policy.
//! - **A predicate**: only errors the predicate accepts are retried (here: connection refused,
//!   not permission denied).
//! - **A total budget**: no retry starts whose delay would end past the budget, and the budget
//!   also cuts short the attempt that is running.
//! - **Panics are never retried**: a panicking handler fails its worker at once.
//! - **Validation**: a NaN multiplier, zero attempts or a jitter fraction above 1 are errors
//!   with stable codes, not silently "fixed" values.
//!
//! Run with: `cargo run -p example-retry-policy`

use std::error::Error;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use workerkit_core::command::{CommandContext, DispatchError};
use workerkit_core::failure::{self, BoxError};
use workerkit_core::retry::{Backoff, Jitter, JitterRng, RetryPolicy, RetryPolicyError, permanent};
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

const MS: Duration = Duration::from_millis(1);

/// Remembers when the previous attempt began, to print the delay before each attempt.
#[derive(Clone, Default)]
struct Attempts {
    last: Arc<Mutex<Option<Instant>>>,
}

impl Attempts {
    /// Prints "attempt n" and the time since the previous attempt began.
    fn begin(&self, ctx: &CommandContext) {
        let now = Instant::now();
        let previous = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(now);
        match previous {
            Some(previous) if ctx.attempt() > 1 => println!(
                "   attempt {} of {}, {} ms after the previous one",
                ctx.attempt(),
                ctx.request().name(),
                now.duration_since(previous).as_millis()
            ),
            _ => println!("   attempt {} of {}", ctx.attempt(), ctx.request().name()),
        }
    }
}

/// A transient error: the upstream refused the connection.
fn refused() -> BoxError {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "upstream refused the connection",
    )
    .into()
}

/// The backoff of the flaky command: 100 ms, 200 ms, 400 ms, ... capped at 300 ms, full jitter.
fn flaky_backoff() -> Result<Backoff, Box<dyn Error>> {
    Ok(Backoff::exponential(100 * MS, 2.0, 300 * MS)?.jitter(Jitter::Full)?)
}

/// The `sync` worker and its commands, each with its own retry policy.
fn sync_worker(attempts: &Attempts) -> Result<WorkerSpec, Box<dyn Error>> {
    let flaky = {
        let attempts = attempts.clone();
        handler_fn(move |ctx| {
            let attempts = attempts.clone();
            async move {
                attempts.begin(&ctx);
                if ctx.attempt() <= 3 {
                    return Err(refused());
                }
                Ok(CommandResponse::message("synced"))
            }
        })
    };
    let rejected = {
        let attempts = attempts.clone();
        handler_fn(move |ctx| {
            let attempts = attempts.clone();
            async move {
                attempts.begin(&ctx);
                let cause = io::Error::other("record 42 fails validation");
                Err(permanent(failure::with_failure(
                    cause,
                    "invalid_record",
                    "the record is invalid",
                )))
            }
        })
    };
    let picky = {
        let attempts = attempts.clone();
        handler_fn(move |ctx| {
            let attempts = attempts.clone();
            async move {
                attempts.begin(&ctx);
                Err(if ctx.attempt() == 1 {
                    refused()
                } else {
                    io::Error::new(io::ErrorKind::PermissionDenied, "token revoked").into()
                })
            }
        })
    };
    let down = {
        let attempts = attempts.clone();
        handler_fn(move |ctx| {
            let attempts = attempts.clone();
            async move {
                attempts.begin(&ctx);
                Err(refused())
            }
        })
    };
    let hang = {
        let attempts = attempts.clone();
        handler_fn(move |ctx| {
            let attempts = attempts.clone();
            async move {
                attempts.begin(&ctx);
                // Waits for an answer that never comes, until its deadline.
                ctx.cancelled().await;
                Err::<CommandResponse, BoxError>(io::Error::other("no answer").into())
            }
        })
    };

    Ok(WorkerSpec::new("sync", worker_fn(|_ctx| async { Ok(()) }))
        .command(
            CommandSpec::new("pull", flaky)
                .retry(RetryPolicy::attempts(5)?.backoff(flaky_backoff()?)),
        )
        .command(
            CommandSpec::new("import", rejected)
                .retry(RetryPolicy::attempts(5)?.backoff(Backoff::constant(50 * MS))),
        )
        .command(
            CommandSpec::new("push", picky).retry(
                RetryPolicy::attempts(5)?
                    .backoff(Backoff::constant(50 * MS))
                    .retry_if(|err| {
                        err.downcast_ref::<io::Error>()
                            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
                    }),
            ),
        )
        .command(
            CommandSpec::new("mirror", down).retry(
                RetryPolicy::attempts(100)?
                    .backoff(Backoff::constant(100 * MS))
                    .total_budget(350 * MS)?,
            ),
        )
        .command(
            CommandSpec::new("fetch", hang).no_timeout().retry(
                RetryPolicy::attempts(3)?
                    .backoff(Backoff::constant(50 * MS))
                    .total_budget(200 * MS)?,
            ),
        ))
}

/// Dispatches one command of `sync` and prints how it ended and how long it took.
async fn run(runtime: &Runtime, command: &'static str) {
    let began = Instant::now();
    let outcome = runtime.dispatch(CommandRequest::new("sync", command)).await;
    let took = began.elapsed().as_millis();
    match outcome {
        Ok(result) => println!(
            "   => succeeded after {} attempt(s) in {took} ms: {}",
            result.attempts,
            result.result.message.unwrap_or_default()
        ),
        Err(err) => print_error(&err, took),
    }
}

fn print_error(err: &DispatchError, took: u128) {
    let attempts = match err {
        DispatchError::Failed { attempts, .. }
        | DispatchError::TimedOut { attempts, .. }
        | DispatchError::Panicked { attempts, .. }
        | DispatchError::Cancelled { attempts, .. } => *attempts,
        _ => 0,
    };
    let failure = err
        .failure()
        .map(|f| f.code().to_owned())
        .unwrap_or_default();
    println!(
        "   => {} after {attempts} attempt(s) in {took} ms (failure {failure})",
        err.code()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // A panicking handler is caught by the runtime; keep the default hook's report to one line.
    std::panic::set_hook(Box::new(|_| println!("   (a handler panicked; caught)")));

    println!("== the schedule: exponential 100 ms x2, capped at 300 ms, full jitter");
    let backoff = flaky_backoff()?;
    let bases: Vec<u128> = (1..=4).map(|a| backoff.base_delay(a).as_millis()).collect();
    println!("   base delays after attempts 1-4: {bases:?} ms");
    let mut rng = JitterRng::seeded(7);
    let jittered: Vec<u128> = (1..=4)
        .map(|a| backoff.delay(a, &mut rng).as_millis())
        .collect();
    println!("   jittered, seed 7 (uniform in [0, base)): {jittered:?} ms");

    let runtime = Runtime::builder("etl").build()?;
    let attempts = Attempts::default();
    runtime.register(sync_worker(&attempts)?)?;
    runtime.start_all().await?;

    println!("== a flaky command: retried until it succeeds");
    run(&runtime, "pull").await;

    println!("== a permanent error: never retried");
    run(&runtime, "import").await;

    println!("== a predicate: connection refused is retried, permission denied is not");
    run(&runtime, "push").await;

    println!("== a total budget of 350 ms, 100 ms apart: no retry that would end past it");
    run(&runtime, "mirror").await;

    println!("== a total budget of 200 ms also bounds the attempt that is running");
    run(&runtime, "fetch").await;

    println!("== a panic: never retried, and it fails the worker");
    runtime.register(
        WorkerSpec::new("fragile", worker_fn(|_ctx| async { Ok(()) }))
            .contributes_to_readiness(false)
            .command(
                CommandSpec::new(
                    "explode",
                    handler_fn(|_ctx| async move {
                        let rows: Vec<u32> = Vec::new();
                        Ok(CommandResponse::message(format!("first row {}", rows[0])))
                    }),
                )
                .retry(RetryPolicy::attempts(5)?),
            ),
    )?;
    runtime.start("fragile").await?;
    let began = Instant::now();
    match runtime
        .dispatch(CommandRequest::new("fragile", "explode"))
        .await
    {
        Ok(result) => println!("   unexpected success: {result:?}"),
        Err(err) => print_error(&err, began.elapsed().as_millis()),
    }
    let fragile = runtime
        .worker("fragile")
        .ok_or("fragile is not registered")?;
    println!("   fragile is now {}", fragile.status.state);

    println!("== invalid settings are errors with stable codes");
    let invalid = [
        (
            "exponential with a NaN multiplier",
            Backoff::exponential(100 * MS, f64::NAN, 300 * MS).map_err(RetryPolicyError::from),
        ),
        (
            "exponential with a cap below the first delay",
            Backoff::exponential(100 * MS, 2.0, 50 * MS).map_err(RetryPolicyError::from),
        ),
        (
            "symmetric jitter of 1.5",
            Backoff::constant(100 * MS)
                .jitter(Jitter::Symmetric(1.5))
                .map_err(RetryPolicyError::from),
        ),
        (
            "zero attempts",
            RetryPolicy::attempts(0).map(|p| *p.backoff_schedule()),
        ),
    ];
    for (what, result) in invalid {
        match result {
            Ok(backoff) => println!("   {what}: accepted: {backoff:?}"),
            Err(err) => println!("   {what}: {} ({err})", err.code()),
        }
    }

    runtime.shutdown().await?;
    Ok(())
}
