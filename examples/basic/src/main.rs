//! The smallest workerkit program: one worker, start, a status printout, graceful shutdown.
//!
//! A hand-written [`Worker`] prints when the runtime starts and stops it. `main` registers it,
//! starts everything, prints the runtime's aggregate status and each worker's snapshot, then
//! shuts down gracefully (drain, wait for in-flight work, stop) and prints the report.
//!
//! Run with: `cargo run -p example-basic`

use std::error::Error;

use workerkit_core::failure::BoxError;
use workerkit_core::{Runtime, Worker, WorkerContext, WorkerSpec};

/// A worker with no background work: it only says when it starts and stops.
struct Printer;

impl Worker for Printer {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        println!(
            "worker {} started (incarnation {})",
            ctx.qualified_name(),
            ctx.incarnation()
        );
        Ok(())
    }

    async fn stop(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        println!("worker {} stopped", ctx.qualified_name());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let runtime = Runtime::builder("basic").build()?;
    runtime.register(
        WorkerSpec::new("printer", Printer).description("prints when it starts and stops"),
    )?;

    runtime.start_all().await?;

    let status = runtime.status();
    println!(
        "runtime={} state={} ready={} workers={}",
        status.name, status.state, status.ready, status.workers
    );
    for worker in runtime.workers() {
        println!(
            "worker={} state={} ready={} accepting_work={} incarnation={}",
            worker.qualified_name,
            worker.status.state,
            worker.status.ready,
            worker.status.accepting_work,
            worker.status.incarnation
        );
    }

    // Readiness off, drain, wait for in-flight work, stop in reverse registration order.
    let report = runtime.shutdown().await?;
    println!(
        "shutdown: stopped={:?} elapsed={:?}",
        report.stopped, report.elapsed
    );
    println!(
        "runtime={} state={}",
        runtime.name(),
        runtime.status().state
    );
    Ok(())
}
