//! The tracing adapter's own cost (issue 6).
//!
//! The global subscriber is a `tracing_subscriber::fmt` subscriber writing to `std::io::sink`
//! (default format, `INFO` and above), so every span and event is formatted in full and then
//! thrown away. Every scenario runs the same trivial handler work (`trivial`, which returns
//! `CommandResponse::empty()`), in the same run:
//!
//! - `runtime_dispatch_traced`: `runtime.dispatch(CommandRequest::new("w", "noop"))` on a runtime
//!   with a `TracingObserver` (defaults): the `workerkit.command` span with six fields (two
//!   recorded at the end), entered around the handler's poll, and the end event with nine fields;
//! - `hand_instrumented_call` (the baseline): what a user would write by hand for the same
//!   output: a fresh dispatch id, the same span with the same fields (the handler's future
//!   instrumented with it), the same two fields recorded at the end, and the same end event
//!   inside the span, with its duration measured;
//! - diagnostics, not scenarios of the issue: `runtime_dispatch_untraced` (the same dispatch on a
//!   runtime without observers) and `direct_call` (`trivial().await`, no tracing).
//!
//! The ratio `runtime_dispatch_traced / hand_instrumented_call` is what the runtime and the
//! adapter together add to hand instrumentation; the issue's target is at most 1.3.
//!
//! Operations run on a current-thread tokio runtime, in batches, interleaved so that drift
//! affects them alike; the reported ns per operation is the median over batches. Output:
//! criterion's report, then our own medians, also written as compact JSON to
//! `$WORKERKIT_BENCH_REPORT_DIR/tracing_overhead.json` (default `<workspace>/target/bench-report`).
//!
//! `WORKERKIT_BENCH_QUICK=1` shortens everything. Without `--bench` (as `cargo test --benches`
//! runs it), or with criterion's `--test`, `--list` or `--profile-time`, no report is written;
//! without `--bench` every scenario runs a few times as a smoke test.

#[path = "../../workerkit-core/benches/common/mod.rs"]
mod common;

use common::{CpuTicks, Scenario, Target, round};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tracing::field::Empty;
use tracing::{Instrument, Level};
use workerkit_core::command::DispatchId;
use workerkit_core::failure::BoxError;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};
use workerkit_tracing::TracingObserver;
use workerkit_tracing::message::COMMAND_COMPLETED;

const RUNTIME: &str = "bench";
const WORKER: &str = "w";
const QUALIFIED_WORKER: &str = "bench/w";
const COMMAND: &str = "noop";

/// The issue's bound on `traced dispatch / hand-instrumented call`.
const TARGET_RATIO: f64 = 1.3;

/// Issue number of every scenario in this report.
const ISSUE: u32 = 6;

fn main() {
    let quick = std::env::var("WORKERKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .any(|arg| arg == name || arg.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
    };
    // The same subscriber for every scenario: the fmt layer, formatting into a sink.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let bench = Bench::new();

    if !flag("--bench") {
        smoke(&bench);
        bench.shutdown();
        return;
    }

    let cpu_before = CpuTicks::read();
    let mut criterion = common::criterion(quick);
    criterion_benches(&mut criterion, &bench);
    criterion.final_summary();
    // `--profile-time` (for profilers) skips criterion's analysis: skip ours as well.
    if flag("--test") || flag("--list") || flag("--profile-time") {
        bench.shutdown();
        return;
    }

    let plan = if quick { Plan::QUICK } else { Plan::NORMAL };
    let measured = measure(&bench, &plan);
    bench.shutdown();
    print!("{}", measured.table());
    common::print_load_note(cpu_before);
    let path = common::write_report("tracing_overhead.json", &measured.scenarios());
    println!("wrote {}", path.display());
}

// ---- Scenarios ----

/// The trivial work of every scenario: the dispatched command's handler and the direct calls.
async fn trivial() -> Result<CommandResponse, BoxError> {
    Ok(CommandResponse::empty())
}

/// The baseline: [`trivial`] with the instrumentation a user would write by hand to get what the
/// adapter emits for one dispatch (same target, span, fields and event).
async fn hand_instrumented() -> Result<CommandResponse, BoxError> {
    let started = Instant::now();
    let id = DispatchId::new();
    let span = tracing::info_span!(
        target: "workerkit",
        "workerkit.command",
        runtime = RUNTIME,
        worker = QUALIFIED_WORKER,
        command = COMMAND,
        dispatch_id = %id,
        attempts = Empty,
        outcome = Empty,
    );
    let result = trivial().instrument(span.clone()).await;
    let success = result.is_ok();
    let outcome = if success { "succeeded" } else { "failed" };
    span.record("attempts", 1_u32);
    span.record("outcome", outcome);
    let _entered = span.enter();
    tracing::info!(
        target: "workerkit",
        message = COMMAND_COMPLETED,
        runtime = RUNTIME,
        worker = QUALIFIED_WORKER,
        command = COMMAND,
        success,
        outcome,
        duration = ?started.elapsed(),
        dispatch_id = %id,
        attempts = 1_u32,
    );
    result
}

/// One kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Traced,
    HandInstrumented,
    Untraced,
    Direct,
}

impl Op {
    /// Every operation, in measurement order.
    const ALL: [Self; 4] = [
        Self::Traced,
        Self::HandInstrumented,
        Self::Untraced,
        Self::Direct,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Traced => "runtime_dispatch_traced",
            Self::HandInstrumented => "hand_instrumented_call",
            Self::Untraced => "runtime_dispatch_untraced",
            Self::Direct => "direct_call",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).expect("listed")
    }
}

/// What the scenarios run against.
#[derive(Clone, Debug)]
struct Ops {
    traced: Runtime,
    untraced: Runtime,
}

impl Ops {
    async fn new() -> Self {
        let traced = runtime(
            Runtime::builder(RUNTIME)
                .with_observer(TracingObserver::new())
                .build()
                .expect("runtime builds"),
        )
        .await;
        let untraced = runtime(Runtime::builder(RUNTIME).build().expect("runtime builds")).await;
        let ops = Self { traced, untraced };
        // Every operation works, and has made its first-use allocations, before anything is
        // measured.
        for op in Op::ALL {
            ops.run(op, 10).await;
        }
        ops
    }

    /// Runs `op` `n` times; returns the elapsed time.
    async fn run(&self, op: Op, n: u64) -> Duration {
        let started = Instant::now();
        for _ in 0..n {
            let result = match op {
                Op::Traced => self
                    .traced
                    .dispatch(CommandRequest::new(WORKER, COMMAND))
                    .await
                    .map(|r| r.result)
                    .map_err(BoxError::from),
                Op::Untraced => self
                    .untraced
                    .dispatch(CommandRequest::new(WORKER, COMMAND))
                    .await
                    .map(|r| r.result)
                    .map_err(BoxError::from),
                Op::HandInstrumented => hand_instrumented().await,
                Op::Direct => trivial().await,
            };
            black_box(result.expect("trivial"));
        }
        started.elapsed()
    }

    async fn shutdown(self) {
        self.traced.shutdown().await.expect("shutdown");
        self.untraced.shutdown().await.expect("shutdown");
    }
}

/// Registers the worker with the trivial command and starts it.
async fn runtime(runtime: Runtime) -> Runtime {
    let spec = WorkerSpec::new(WORKER, worker_fn(|_ctx| async { Ok(()) }))
        .command(CommandSpec::new(COMMAND, handler_fn(|_ctx| trivial())));
    runtime.register(spec).expect("register");
    runtime.start_all().await.expect("start_all");
    runtime
}

/// A current-thread tokio runtime and the [`Ops`] on it.
#[derive(Debug)]
struct Bench {
    tokio: tokio::runtime::Runtime,
    ops: Ops,
}

impl Bench {
    fn new() -> Self {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ops = tokio.block_on(Ops::new());
        Self { tokio, ops }
    }

    /// Runs `op` `n` times on the current-thread runtime.
    fn run(&self, op: Op, n: u64) -> Duration {
        self.tokio.block_on(self.ops.run(op, n))
    }

    fn shutdown(self) {
        self.tokio.block_on(self.ops.shutdown());
    }
}

/// Without `--bench`: every scenario a few times, to show the bench still works.
fn smoke(bench: &Bench) {
    let n = 100;
    let mut line = format!("tracing overhead bench smoke (n={n}):");
    for op in Op::ALL {
        let _ = write!(
            line,
            " {} {:.0} ns,",
            op.name(),
            ns_per(bench.run(op, n), n)
        );
    }
    println!("{}", line.trim_end_matches(','));
}

// ---- Criterion ----

fn criterion_benches(criterion: &mut Criterion, bench: &Bench) {
    let mut group = criterion.benchmark_group("tracing_overhead");
    group.throughput(Throughput::Elements(1));
    for op in Op::ALL {
        group.bench_function(op.name(), |b| b.iter_custom(|iters| bench.run(op, iters)));
    }
    group.finish();
}

// ---- Our own measurement ----

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Interleaved rounds of batches.
    reps: usize,
    /// Operations per batch (the direct call gets `DIRECT_FACTOR` times more).
    batch: u64,
}

/// The direct call takes nanoseconds: its batches are this much longer, so that they last long
/// enough to time.
const DIRECT_FACTOR: u64 = 100;

impl Plan {
    const QUICK: Self = Self {
        reps: 9,
        batch: 2_000,
    };
    const NORMAL: Self = Self {
        reps: 41,
        batch: 10_000,
    };
}

/// The medians of one run: ns per operation, by `Op::ALL` index.
#[derive(Debug)]
struct Measured {
    plan: Plan,
    ns: [f64; Op::ALL.len()],
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        f64::midpoint(values[mid - 1], values[mid])
    } else {
        values[mid]
    }
}

fn ns_per(duration: Duration, n: u64) -> f64 {
    duration.as_nanos() as f64 / n as f64
}

fn measure(bench: &Bench, plan: &Plan) -> Measured {
    let mut samples: [Vec<f64>; Op::ALL.len()] =
        std::array::from_fn(|_| Vec::with_capacity(plan.reps));
    for _ in 0..plan.reps {
        for op in Op::ALL {
            let n = if op == Op::Direct {
                plan.batch * DIRECT_FACTOR
            } else {
                plan.batch
            };
            samples[op.index()].push(ns_per(bench.run(op, n), n));
        }
    }
    Measured {
        plan: *plan,
        ns: samples.map(median),
    }
}

impl Measured {
    fn ns(&self, op: Op) -> f64 {
        self.ns[op.index()]
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let (value, baseline) = (
            round(self.ns(Op::Traced), 1),
            round(self.ns(Op::HandInstrumented), 1),
        );
        let ratio = round(value / baseline, 4);
        vec![Scenario {
            id: "tracing/dispatch_vs_hand_instrumented",
            issue: ISSUE,
            value,
            baseline,
            unit: "ns",
            ratio,
            target: Target {
                op: "<=",
                value: TARGET_RATIO,
            },
            pass: ratio.is_finite() && ratio <= TARGET_RATIO,
        }]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "\ntracing_overhead: ns per operation in one task (fmt subscriber into a sink), medians \
             of {} batches of {} ({} for the direct call)",
            p.reps,
            p.batch,
            p.batch * DIRECT_FACTOR
        );
        let baseline = self.ns(Op::HandInstrumented);
        for op in Op::ALL {
            let ns = self.ns(op);
            let _ = writeln!(
                out,
                "  {:<34}{ns:>9.1} ns  {:>6.3}x hand-instrumented",
                op.name(),
                ns / baseline
            );
        }
        let _ = writeln!(
            out,
            "{:<42}{:>10}{:>10}{:>9}{:>8}  pass",
            "id", "value", "baseline", "ratio", "target"
        );
        for s in self.scenarios() {
            let _ = writeln!(
                out,
                "{:<42}{:>10}{:>10}{:>9.3}{:>8}  {}",
                s.id,
                s.value,
                s.baseline,
                s.ratio,
                format!("{}{}", s.target.op, s.target.value),
                if s.pass { "yes" } else { "NO" }
            );
        }
        out
    }
}
