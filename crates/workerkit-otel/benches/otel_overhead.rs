//! The OpenTelemetry adapter's cost (issue 6).
//!
//! One tracer provider (the SDK's batch span processor over an exporter that drops every batch)
//! and one meter provider (a periodic reader that never fires during the run) serve both sides:
//!
//! - `otel_dispatch`: `runtime.dispatch(CommandRequest::new("w", "noop"))` through a runtime
//!   whose only observer is the [`OtelObserver`]: a command span, its context attached around
//!   each poll of the handler, and the dispatch's metrics;
//! - `hand_instrumented`: the same handler (`trivial`) called directly, wrapped in what a
//!   careful hand-written instrumentation does for it: a span of the same name and attributes
//!   (the dispatch id included, formatted), its context attached while the handler runs, the
//!   same status, and the same metrics with the same attributes: dispatch counter, duration
//!   histogram, attempts counter, and in-flight as an up-down counter recorded up and down
//!   (the observer keeps an atomic per command instead, reported at collection).
//!
//! The target: `otel_dispatch` at most 1.3 times `hand_instrumented`. Diagnostics: the dispatch
//! without any observer and the bare direct call.
//!
//! Single-task scenarios on a current-thread tokio runtime, in interleaved batches; the
//! reported ns per operation is the median over batches. Output: criterion's report, then our
//! medians, also written as compact JSON to `$WORKERKIT_BENCH_REPORT_DIR/otel_overhead.json`
//! (default `<workspace>/target/bench-report`).
//!
//! `WORKERKIT_BENCH_QUICK=1` shortens everything. Without `--bench` (as `cargo test --benches`
//! runs it), or with criterion's `--test`, `--list` or `--profile-time`, no report is written;
//! without `--bench` every scenario runs a few times as a smoke test.

#[path = "../../workerkit-core/benches/common/mod.rs"]
mod common;

use common::{CpuTicks, Scenario, Target, round};
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::Throughput;
use opentelemetry::context::FutureExt as _;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _, UpDownCounter};
use opentelemetry::trace::{
    SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use workerkit_core::command::DispatchId;
use workerkit_core::failure::BoxError;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};
use workerkit_otel::{OtelObserver, semconv};

const WORKER: &str = "w";
const COMMAND: &str = "noop";
/// Issue number of every scenario in this report.
const ISSUE: u32 = 6;
/// The issue's target for `otel_dispatch / hand_instrumented`.
const TARGET_RATIO: f64 = 1.3;

/// An exporter that drops every batch: the cost measured is the SDK's and the adapter's, not
/// an exporter's.
#[derive(Debug)]
struct DropSpans;

impl SpanExporter for DropSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(black_box(batch));
        Ok(())
    }
}

/// The handler's work, in every scenario.
async fn trivial() -> Result<CommandResponse, BoxError> {
    Ok(CommandResponse::empty())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Direct,
    HandInstrumented,
    Dispatch,
    OtelDispatch,
}

impl Op {
    const ALL: [Self; 4] = [
        Self::Direct,
        Self::HandInstrumented,
        Self::Dispatch,
        Self::OtelDispatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct_call",
            Self::HandInstrumented => "hand_instrumented",
            Self::Dispatch => "dispatch_no_observer",
            Self::OtelDispatch => "otel_dispatch",
        }
    }
}

/// The hand-written instrumentation of the baseline: the instruments it records to.
#[derive(Clone, Debug)]
struct Hand {
    tracer: SdkTracer,
    dispatches: Counter<u64>,
    duration: Histogram<f64>,
    attempts: Counter<u64>,
    in_flight: UpDownCounter<i64>,
    runtime: StringValue,
    worker: StringValue,
    command: StringValue,
}

impl Hand {
    fn new(tracer_provider: &SdkTracerProvider, meter_provider: &SdkMeterProvider) -> Self {
        let meter = meter_provider.meter("hand");
        Self {
            tracer: tracer_provider.tracer("hand"),
            dispatches: meter.u64_counter("hand.dispatches").build(),
            duration: meter.f64_histogram("hand.duration").with_unit("s").build(),
            attempts: meter.u64_counter("hand.attempts").build(),
            in_flight: meter.i64_up_down_counter("hand.in_flight").build(),
            runtime: StringValue::from("bench"),
            worker: StringValue::from("bench/w"),
            command: StringValue::from(COMMAND),
        }
    }

    /// `trivial`, instrumented by hand as the observer instruments a dispatch.
    async fn call(&self) -> Result<CommandResponse, BoxError> {
        let began = Instant::now();
        let base = [
            KeyValue::new(semconv::RUNTIME, Value::String(self.runtime.clone())),
            KeyValue::new(semconv::WORKER, Value::String(self.worker.clone())),
            KeyValue::new(semconv::COMMAND, Value::String(self.command.clone())),
        ];
        let mut attrs = base.to_vec();
        // Formatted into a string of its final size, as the observer does.
        let mut id = String::with_capacity(36);
        let _ = write!(id, "{}", DispatchId::new());
        attrs.push(KeyValue::new(semconv::COMMAND_DISPATCH_ID, id));
        let parent = Context::current();
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(semconv::command_span_name(COMMAND))
                .with_kind(SpanKind::Internal)
                .with_start_time(SystemTime::now())
                .with_attributes(attrs),
            &parent,
        );
        let cx = parent.with_span(span);
        self.in_flight.add(1, &base);
        let result = trivial().with_context(cx.clone()).await;
        self.in_flight.add(-1, &base);
        let [runtime, worker, command] = &base;
        let metric_attrs = [
            runtime.clone(),
            worker.clone(),
            command.clone(),
            KeyValue::new(semconv::COMMAND_SUCCESS, true),
        ];
        self.dispatches.add(1, &metric_attrs);
        self.duration
            .record(began.elapsed().as_secs_f64(), &metric_attrs);
        self.attempts.add(1, &metric_attrs);
        let span = cx.span();
        span.set_attributes([
            KeyValue::new(semconv::COMMAND_SUCCESS, true),
            KeyValue::new(semconv::COMMAND_ATTEMPTS, 1_i64),
            KeyValue::new(semconv::COMMAND_OUTCOME, "succeeded"),
        ]);
        span.set_status(Status::Ok);
        span.end_with_timestamp(SystemTime::now());
        result
    }
}

/// What the scenarios run against.
#[derive(Clone, Debug)]
struct Ops {
    plain: Runtime,
    otel: Runtime,
    hand: Hand,
}

fn worker() -> WorkerSpec {
    WorkerSpec::new(WORKER, worker_fn(|_ctx| async { Ok(()) }))
        .command(CommandSpec::new(COMMAND, handler_fn(|_ctx| trivial())))
}

impl Ops {
    async fn new(tracer_provider: &SdkTracerProvider, meter_provider: &SdkMeterProvider) -> Self {
        let plain = Runtime::builder("bench").build().expect("runtime");
        plain.register(worker()).expect("register");
        plain.start_all().await.expect("start");
        let observer = OtelObserver::new(tracer_provider, meter_provider);
        let otel = Runtime::builder("bench")
            .with_observer(observer)
            .build()
            .expect("runtime");
        otel.register(worker()).expect("register");
        otel.start_all().await.expect("start");
        let ops = Self {
            plain,
            otel,
            hand: Hand::new(tracer_provider, meter_provider),
        };
        for op in Op::ALL {
            ops.run(op, 100).await;
        }
        ops
    }

    async fn run(&self, op: Op, n: u64) -> Duration {
        let started = Instant::now();
        match op {
            Op::Direct => {
                for _ in 0..n {
                    black_box(black_box(trivial()).await.expect("trivial"));
                }
            }
            Op::HandInstrumented => {
                for _ in 0..n {
                    black_box(self.hand.call().await.expect("trivial"));
                }
            }
            Op::Dispatch | Op::OtelDispatch => {
                let runtime = if op == Op::Dispatch {
                    &self.plain
                } else {
                    &self.otel
                };
                for _ in 0..n {
                    let result = runtime.dispatch(CommandRequest::new(WORKER, COMMAND)).await;
                    black_box(result.expect("dispatch"));
                }
            }
        }
        started.elapsed()
    }
}

struct Bench {
    tokio: tokio::runtime::Runtime,
    ops: Ops,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Bench {
    fn new() -> Self {
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(DropSpans)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(InMemoryMetricExporter::default())
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let ops = tokio.block_on(Ops::new(&tracer_provider, &meter_provider));
        Self {
            tokio,
            ops,
            tracer_provider,
            meter_provider,
        }
    }

    fn run(&self, op: Op, n: u64) -> Duration {
        let ops = self.ops.clone();
        let task = self.tokio.spawn(async move { ops.run(op, n).await });
        self.tokio.block_on(task).expect("bench task")
    }

    fn shutdown(self) {
        self.tokio.block_on(async {
            self.ops.plain.shutdown().await.expect("shutdown");
            self.ops.otel.shutdown().await.expect("shutdown");
        });
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

fn main() {
    let quick = std::env::var("WORKERKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .any(|arg| arg == name || arg.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
    };
    let bench = Bench::new();

    if !flag("--bench") {
        let n = 100;
        let mut line = format!("otel_overhead bench smoke (n={n}):");
        for op in Op::ALL {
            let _ = write!(
                line,
                " {} {:.0} ns,",
                op.name(),
                ns_per(bench.run(op, n), n)
            );
        }
        println!("{line}");
        bench.shutdown();
        return;
    }

    let cpu_before = CpuTicks::read();
    let mut criterion = common::criterion(quick);
    let mut group = criterion.benchmark_group("otel_overhead");
    group.throughput(Throughput::Elements(1));
    for op in Op::ALL {
        group.bench_function(op.name(), |b| b.iter_custom(|iters| bench.run(op, iters)));
    }
    group.finish();
    criterion.final_summary();
    if flag("--test") || flag("--list") || flag("--profile-time") {
        bench.shutdown();
        return;
    }

    let (reps, batch) = if quick { (9, 2_000) } else { (41, 10_000) };
    let mut samples: [Vec<f64>; 4] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for _ in 0..reps {
        for (values, op) in samples.iter_mut().zip(Op::ALL) {
            let n = if op == Op::Direct { batch * 100 } else { batch };
            values.push(ns_per(bench.run(op, n), n));
        }
    }
    bench.shutdown();
    let medians = samples.map(median);
    let ns = |op: Op| medians[Op::ALL.iter().position(|o| *o == op).expect("listed")];

    let scenario = {
        let (value, baseline) = (
            round(ns(Op::OtelDispatch), 1),
            round(ns(Op::HandInstrumented), 1),
        );
        let ratio = round(value / baseline, 4);
        Scenario {
            id: "otel/dispatch_vs_hand_instrumented",
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
        }
    };
    println!("\notel_overhead: ns per operation in one task, medians of {reps} batches of {batch}");
    for op in Op::ALL {
        println!("  {:<24}{:>10.1} ns", op.name(), ns(op));
    }
    println!(
        "  observer's own cost: {:+.1} ns per dispatch (otel_dispatch - dispatch_no_observer); \
         hand instrumentation: {:+.1} ns per call",
        ns(Op::OtelDispatch) - ns(Op::Dispatch),
        ns(Op::HandInstrumented) - ns(Op::Direct)
    );
    println!(
        "{:<38}{:>10}{:>10}{:>9}{:>8}  pass",
        "id", "value", "baseline", "ratio", "target"
    );
    println!(
        "{:<38}{:>10}{:>10}{:>9.3}{:>8}  {}",
        scenario.id,
        scenario.value,
        scenario.baseline,
        scenario.ratio,
        format!("<={TARGET_RATIO}"),
        if scenario.pass { "yes" } else { "NO" }
    );
    common::print_load_note(cpu_before);
    let path = common::write_report("otel_overhead.json", &[scenario]);
    println!("wrote {}", path.display());
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
