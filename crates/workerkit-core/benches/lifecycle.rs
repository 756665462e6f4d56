//! Lifecycle cost of idle workers (issue 3).
//!
//! Registers, starts and gracefully shuts down N idle workers — `LoopWorker`s whose loop only
//! awaits `ctx.stop_requested()`, so each one runs one task — against N plain `tokio::spawn`ed
//! tasks that await one `CancellationToken` and are cancelled and joined, in the same run, on the
//! same two-thread tokio runtime. Both scenarios run as a task on a runtime worker thread: the
//! runtime's lifecycle operations run there anyway, and spawning from outside the runtime (the
//! `block_on` thread) would make the baseline about twice as slow.
//!
//! Memory per worker is measured by `lifecycle_memory.rs`, a binary of its own: its counting
//! allocator updates one global atomic on every allocation and free, which here would slow the
//! runtime (a few allocations per worker) more than the plain tasks (one each) and skew the
//! time ratio.
//!
//! Output: criterion's report for the timed scenarios, then our own medians over separate,
//! interleaved repetitions (with a per-phase breakdown), also written as compact JSON to
//! `$WORKERKIT_BENCH_REPORT_DIR/lifecycle.json` (default `<workspace>/target/bench-report`).
//!
//! `WORKERKIT_BENCH_QUICK=1` shortens everything. Without `--bench` (as `cargo test --benches`
//! runs it), or with criterion's `--test`, `--list` or `--profile-time`, no report is written;
//! without `--bench` every scenario runs once at a small N as a smoke test.

mod common;

use common::{CpuTicks, Scenario, median};
use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use tokio_util::sync::CancellationToken;
use workerkit_core::failure::BoxError;
use workerkit_core::{LoopWorker, Runtime, WorkerSpec, worker_fn};

/// The worker counts compared.
const SMALL: usize = 1_000;
const LARGE: usize = 10_000;

/// Issue number of every scenario in this report.
const ISSUE: u32 = 3;

fn main() {
    let quick = std::env::var("WORKERKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|arg| arg == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    if !flag("--bench") {
        smoke(&rt);
        return;
    }

    let cpu_before = CpuTicks::read();
    let mut criterion = if quick {
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_millis(1500))
    } else {
        Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
    }
    .configure_from_args();
    criterion_benches(&mut criterion, &rt);
    criterion.final_summary();
    if flag("--test") || flag("--list") || flag("--profile-time") {
        return;
    }

    let reps = if quick { 9 } else { 21 };
    let measured = measure(&rt, reps);
    print!("{}", measured.table());
    common::print_load_note(cpu_before);
    let path = common::write_report("lifecycle.json", &measured.scenarios());
    println!("wrote {}", path.display());
}

// ---- Scenarios ----

/// Wall time of the phases of one runtime lifecycle.
#[derive(Clone, Copy, Debug)]
struct Phases {
    /// Building the specs and registering them.
    register: Duration,
    start_all: Duration,
    shutdown: Duration,
    /// Dropping the runtime afterwards: reported, not part of the measured lifecycle.
    drop: Duration,
}

impl Phases {
    /// The measured lifecycle: "start and gracefully shut down", from `start_all` to the end
    /// of the shutdown. Registration is set-up (like building the baseline's token) and is
    /// reported in its own column (and its memory by `lifecycle_memory.rs`).
    fn lifecycle(&self) -> Duration {
        self.start_all + self.shutdown
    }
}

/// An idle loop worker.
fn idle_worker() -> LoopWorker {
    LoopWorker::new(|ctx| async move {
        ctx.stop_requested().await;
        Ok::<(), BoxError>(())
    })
}

fn idle_spec(i: usize) -> WorkerSpec {
    WorkerSpec::new(format!("w{i}"), idle_worker())
}

/// A worker whose start returns at once and that runs no task: what the runtime's own
/// bookkeeping costs, without a task per worker (a diagnostic, not a scenario of the issue).
fn taskless_spec(i: usize) -> WorkerSpec {
    WorkerSpec::new(format!("w{i}"), worker_fn(|_ctx| async { Ok(()) }))
}

fn runtime() -> Runtime {
    Runtime::builder("bench").build().expect("runtime builds")
}

/// Registers `n` workers made by `spec`, starts them all and shuts the runtime down.
async fn runtime_lifecycle(n: usize, spec: fn(usize) -> WorkerSpec) -> Phases {
    let runtime = runtime();
    let t0 = Instant::now();
    for i in 0..n {
        runtime.register(spec(i)).expect("register");
    }
    let t1 = Instant::now();
    runtime.start_all().await.expect("start_all");
    let t2 = Instant::now();
    runtime.shutdown().await.expect("shutdown");
    let t3 = Instant::now();
    drop(runtime);
    Phases {
        register: t1 - t0,
        start_all: t2 - t1,
        shutdown: t3 - t2,
        drop: t3.elapsed(),
    }
}

/// The baseline: spawns `n` tasks awaiting one token, cancels it and joins them all.
#[allow(clippy::disallowed_methods)] // The baseline is plain `tokio::spawn` by definition.
async fn plain_lifecycle(n: usize) -> Duration {
    let started = Instant::now();
    let token = CancellationToken::new();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let token = token.clone();
            tokio::spawn(async move { token.cancelled().await })
        })
        .collect();
    token.cancel();
    for handle in handles {
        handle.await.expect("plain task");
    }
    started.elapsed()
}

/// Runs `future` as a task on a worker thread of `rt` and waits for it.
fn on_worker<F>(rt: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(rt.spawn(future)).expect("bench task")
}

/// Without `--bench`: every scenario once, at a small N, to show the bench still works.
fn smoke(rt: &tokio::runtime::Runtime) {
    let n = 100;
    let phases = on_worker(rt, runtime_lifecycle(n, idle_spec));
    let taskless = on_worker(rt, runtime_lifecycle(n, taskless_spec));
    let plain = on_worker(rt, plain_lifecycle(n));
    println!(
        "lifecycle bench smoke (n={n}): runtime {:?} (taskless {:?}), plain {plain:?}",
        phases.lifecycle(),
        taskless.lifecycle(),
    );
}

// ---- Criterion ----

fn criterion_benches(criterion: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group("lifecycle");
    // One iteration takes milliseconds: flat sampling keeps the sample count and time sane.
    group.sampling_mode(SamplingMode::Flat);
    for n in [SMALL, LARGE] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("plain_tasks", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| on_worker(rt, plain_lifecycle(n)))
                    .sum::<Duration>()
            });
        });
        group.bench_with_input(BenchmarkId::new("runtime_workers", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| on_worker(rt, runtime_lifecycle(n, idle_spec)).lifecycle())
                    .sum::<Duration>()
            });
        });
    }
    group.finish();
}

// ---- Our own measurement ----

/// Median ns per worker of the lifecycle and of each phase (each its own median).
#[derive(Clone, Copy, Debug)]
struct PhaseNs {
    lifecycle: f64,
    register: f64,
    start_all: f64,
    shutdown: f64,
    drop: f64,
}

/// The medians of one run.
#[derive(Debug)]
struct Measured {
    reps: usize,
    small_reps: usize,
    /// Idle loop workers at `LARGE` and `SMALL`.
    large: PhaseNs,
    small: PhaseNs,
    /// Workers that run no task, at `LARGE` (diagnostic).
    taskless: PhaseNs,
    /// ns per plain task at `LARGE` and `SMALL`.
    plain_large: f64,
    plain_small: f64,
}

fn ns_per(duration: Duration, n: usize) -> f64 {
    duration.as_nanos() as f64 / n as f64
}

fn phase_medians(runs: &[Phases], n: usize) -> PhaseNs {
    let of = |f: fn(&Phases) -> Duration| median(runs.iter().map(|p| ns_per(f(p), n)).collect());
    PhaseNs {
        lifecycle: of(Phases::lifecycle),
        register: of(|p| p.register),
        start_all: of(|p| p.start_all),
        shutdown: of(|p| p.shutdown),
        drop: of(|p| p.drop),
    }
}

/// Measures every scenario `reps` times (the cheap `SMALL` ones five times as often),
/// interleaved so that drift affects them alike.
fn measure(rt: &tokio::runtime::Runtime, reps: usize) -> Measured {
    // Warm up the worker threads, the allocator and the timer wheel.
    for n in [SMALL, LARGE] {
        on_worker(rt, plain_lifecycle(n));
        on_worker(rt, runtime_lifecycle(n, idle_spec));
    }
    let small_reps = reps * 5;
    let (mut large, mut taskless, mut plain_large) = (Vec::new(), Vec::new(), Vec::new());
    let (mut small, mut plain_small) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        plain_large.push(ns_per(on_worker(rt, plain_lifecycle(LARGE)), LARGE));
        large.push(on_worker(rt, runtime_lifecycle(LARGE, idle_spec)));
        taskless.push(on_worker(rt, runtime_lifecycle(LARGE, taskless_spec)));
        for _ in 0..small_reps / reps {
            plain_small.push(ns_per(on_worker(rt, plain_lifecycle(SMALL)), SMALL));
            small.push(on_worker(rt, runtime_lifecycle(SMALL, idle_spec)));
        }
    }
    Measured {
        reps,
        small_reps,
        large: phase_medians(&large, LARGE),
        small: phase_medians(&small, SMALL),
        taskless: phase_medians(&taskless, LARGE),
        plain_large: median(plain_large),
        plain_small: median(plain_small),
    }
}

/// A scenario whose ratio `value / baseline` must be at most `max`.
fn scenario(id: &'static str, value: f64, baseline: f64, unit: &'static str, max: f64) -> Scenario {
    common::at_most(id, ISSUE, (value, baseline), unit, max)
}

impl Measured {
    fn scenarios(&self) -> Vec<Scenario> {
        vec![
            scenario(
                "lifecycle/start_shutdown_10k_time_per_worker",
                self.large.lifecycle,
                self.plain_large,
                "ns",
                3.0,
            ),
            scenario(
                "lifecycle/per_worker_cost_scaling",
                self.large.lifecycle,
                self.small.lifecycle,
                "ns",
                1.5,
            ),
        ]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nlifecycle: ns per worker (or task), medians of {} runs ({} at n={SMALL})",
            self.reps, self.small_reps
        );
        let _ = writeln!(
            out,
            "{:<28}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "", "lifecycle", "register", "start_all", "shutdown", "(drop)"
        );
        let rows = [
            ("runtime, n=1000", &self.small),
            ("runtime, n=10000", &self.large),
            ("runtime taskless, n=10000", &self.taskless),
        ];
        for (name, p) in rows {
            let _ = writeln!(
                out,
                "{name:<28}{:>10.0}{:>10.0}{:>10.0}{:>10.0}{:>10.0}",
                p.lifecycle, p.register, p.start_all, p.shutdown, p.drop
            );
        }
        for (name, ns) in [
            ("plain tasks, n=1000", self.plain_small),
            ("plain tasks, n=10000", self.plain_large),
        ] {
            let _ = writeln!(out, "{name:<28}{ns:>10.0}");
        }
        let _ = writeln!(
            out,
            "{:<46}{:>10}{:>10}{:>9}{:>8}  pass",
            "id", "value", "baseline", "ratio", "target"
        );
        for s in self.scenarios() {
            let _ = writeln!(
                out,
                "{:<46}{:>10.1}{:>10.1}{:>9.3}{:>8}  {}",
                s.id,
                s.value,
                s.baseline,
                s.ratio,
                format!("<={}", s.target.value),
                if s.pass { "yes" } else { "NO" }
            );
        }
        out
    }
}
