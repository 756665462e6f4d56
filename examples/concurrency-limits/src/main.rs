//! Concurrency limits: runtime, worker and command caps, fail-fast and waiting admission, the
//! in-flight list, and cancelling a command by its dispatch id.
//!
//! The `media` runtime admits at most 3 commands at once; its `render` worker at most 2; and
//! `render`'s `thumbnail` command at most 1. Handlers here hold their slot until the example
//! releases them, so every limit can be filled on purpose:
//!
//! - a full limit rejects at once with `saturated`, naming the limit (`command`, `worker` or
//!   `runtime`), handing the request back, and suggesting a `retry_after`;
//! - [`Runtime::in_flight`] lists what runs (dispatch id, worker, command, incarnation, age);
//! - [`Runtime::cancel`] cancels one command by id: its handler sees
//!   [`CommandContext::cancelled`] and its caller gets `command_cancelled`;
//! - `export` admits in wait mode: a dispatch waits (shown as `waiting` in the worker's status)
//!   for a slot, up to 300 ms, and is rejected only if none frees up in time.
//!
//! Run with: `cargo run -p example-concurrency-limits`

use std::error::Error;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use workerkit_core::command::{
    AdmissionMode, CommandContext, CommandResult, DispatchError, DispatchId,
};
use workerkit_core::failure::BoxError;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

type Dispatch = JoinHandle<Result<CommandResult, DispatchError>>;

/// Holds handlers until released: each handler reports that it began, then waits for the gate to
/// open or for its cancellation.
#[derive(Clone)]
struct Gate {
    open: watch::Sender<bool>,
    began: mpsc::UnboundedSender<(String, DispatchId)>,
}

impl Gate {
    async fn hold(&self, ctx: CommandContext) -> Result<CommandResponse, BoxError> {
        let _ = self.began.send((ctx.request().name().to_owned(), ctx.id()));
        let mut open = self.open.subscribe();
        tokio::select! {
            _ = open.wait_for(|open| *open) => Ok(CommandResponse::message("done")),
            () = ctx.cancelled() => Err("cancelled before it was done".into()),
        }
    }

    fn handler(&self) -> impl workerkit_core::command::CommandHandler {
        let gate = self.clone();
        handler_fn(move |ctx| {
            let gate = gate.clone();
            async move { gate.hold(ctx).await }
        })
    }
}

/// Dispatches in a task of its own, as a server would for each request.
fn spawn(runtime: &Runtime, worker: &'static str, command: &'static str) -> Dispatch {
    let runtime = runtime.clone();
    let request = CommandRequest::new(worker, command);
    tokio::spawn(async move { runtime.dispatch(request).await })
}

/// Waits until a handler reports that it began; returns its command and dispatch id.
async fn began(
    rx: &mut mpsc::UnboundedReceiver<(String, DispatchId)>,
) -> Result<(String, DispatchId), Box<dyn Error>> {
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    Ok(next.ok_or("every handler is gone")?)
}

/// Dispatches in place and prints the outcome: saturation details, or anything else.
async fn try_dispatch(runtime: &Runtime, worker: &'static str, command: &'static str) {
    let began = Instant::now();
    let outcome = runtime.dispatch(CommandRequest::new(worker, command)).await;
    let waited = began.elapsed().as_millis();
    match outcome {
        Err(DispatchError::Saturated {
            scope,
            limit,
            retry_after,
            request,
            ..
        }) => println!(
            "   {worker}/{command}: saturated: the {} limit of {limit} is full; \
             retry after {retry_after:?} (request handed back: {}; waited {waited} ms)",
            scope.as_str(),
            request.name()
        ),
        Err(err) => println!("   {worker}/{command}: {}", err.code()),
        Ok(result) => println!(
            "   {worker}/{command}: {}",
            result.result.message.unwrap_or_default()
        ),
    }
}

/// Awaits a spawned dispatch and prints how it ended.
async fn finish(label: &str, dispatch: Dispatch) -> Result<(), Box<dyn Error>> {
    match tokio::time::timeout(Duration::from_secs(5), dispatch).await?? {
        Ok(result) => println!(
            "   {label}: {} ({})",
            result.result.message.unwrap_or_default(),
            result.id
        ),
        Err(err) => println!("   {label}: {} ({err})", err.code()),
    }
    Ok(())
}

/// Waits, briefly and bounded, until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (began_tx, mut began_rx) = mpsc::unbounded_channel();
    let gate = Gate {
        open: watch::Sender::new(false),
        began: began_tx,
    };

    let runtime = Runtime::builder("media").command_concurrency(3).build()?;
    runtime.register(
        WorkerSpec::new("render", worker_fn(|_ctx| async { Ok(()) }))
            .command_concurrency(2)
            .command(CommandSpec::new("thumbnail", gate.handler()).concurrency(1))
            .command(CommandSpec::new("resize", gate.handler()))
            .command(
                CommandSpec::new("export", gate.handler())
                    .concurrency(1)
                    .admission(AdmissionMode::Wait(Duration::from_millis(300))),
            ),
    )?;
    runtime.register(
        WorkerSpec::new("upload", worker_fn(|_ctx| async { Ok(()) }))
            .command(CommandSpec::new("store", gate.handler())),
    )?;
    runtime.start_all().await?;

    println!("== the command limit (thumbnail: 1)");
    let thumbnail = spawn(&runtime, "render", "thumbnail");
    let (_, thumbnail_id) = began(&mut began_rx).await?;
    try_dispatch(&runtime, "render", "thumbnail").await;

    println!("== the worker limit (render: 2)");
    let resize = spawn(&runtime, "render", "resize");
    began(&mut began_rx).await?;
    try_dispatch(&runtime, "render", "resize").await;

    println!("== the runtime limit (media: 3)");
    let store = spawn(&runtime, "upload", "store");
    began(&mut began_rx).await?;
    try_dispatch(&runtime, "upload", "store").await;

    println!("== in flight");
    for command in runtime.in_flight() {
        println!(
            "   {} {}/{} incarnation {} for {:?}",
            command.id, command.worker, command.command, command.incarnation, command.age
        );
    }
    let render = runtime.worker("render").ok_or("render is not registered")?;
    println!(
        "   runtime inFlight={}, render inFlight={}",
        runtime.status().in_flight,
        render.status.in_flight
    );

    println!("== cancel by id");
    runtime.cancel(thumbnail_id)?;
    println!("   cancelled {thumbnail_id}");
    if let Err(err) = runtime.cancel(thumbnail_id) {
        println!("   cancelling it again: {} ({err})", err.code());
    }
    finish("thumbnail", thumbnail).await?;
    if let Err(err) = runtime.cancel(thumbnail_id) {
        println!("   cancelling it once it ended: {}", err.code());
    }

    println!("== releasing the rest");
    gate.open.send_replace(true);
    finish("resize", resize).await?;
    finish("store", store).await?;
    gate.open.send_replace(false);

    println!("== wait-mode admission (export: 1, waits up to 300 ms)");
    let first = spawn(&runtime, "render", "export");
    began(&mut began_rx).await?;
    let second = spawn(&runtime, "render", "export");
    eventually("the second export waits", || {
        runtime
            .worker("render")
            .is_some_and(|w| w.status.waiting == 1)
    })
    .await?;
    let render = runtime.worker("render").ok_or("render is not registered")?;
    println!(
        "   render: inFlight={} waiting={}",
        render.status.in_flight, render.status.waiting
    );
    gate.open.send_replace(true);
    finish("first export", first).await?;
    // Admitted once the first one freed its slot; the gate is open, so it is done at once.
    began(&mut began_rx).await?;
    finish("second export (admitted once a slot freed up)", second).await?;
    gate.open.send_replace(false);

    let held = spawn(&runtime, "render", "export");
    began(&mut began_rx).await?;
    println!(" - no slot frees up within 300 ms:");
    try_dispatch(&runtime, "render", "export").await;
    gate.open.send_replace(true);
    finish("held export", held).await?;

    runtime.shutdown().await?;
    Ok(())
}
