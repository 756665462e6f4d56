//! Supervision cost (issue 7): restart latency and the heartbeat.
//!
//! - `supervise/restart_latency_vs_respawn`: the time from a crash of a running worker to its
//!   next incarnation running. The worker is a `LoopWorker` with restart policy `on_failure`,
//!   no backoff (`Backoff::none()`) and no intensity bound; each incarnation's loop signals that
//!   it runs (a `Notify`), waits for the crash signal and panics. The baseline, in the same run:
//!   a plain tokio task that signals that it runs, waits for the crash signal and panics; a
//!   supervising task awaits its `JoinHandle`, sees the panic and spawns the next one. Both are
//!   timed alike, per restart, from the crash signal to the next incarnation's "running" signal
//!   (no sleeps anywhere). Between two restarts of the runtime's worker the driver also waits,
//!   untimed, until the worker's status says `running` again, so every crash hits a running
//!   incarnation (a crash while the restart's start is still finishing would take another path).
//!   Both run on a two-thread tokio runtime (as `lifecycle.rs` does), driven from a task on one
//!   of its worker threads. The panics are silenced (a panic hook that ignores this bench's
//!   payload); the unwinding itself is paid by both sides.
//! - `supervise/beat_vs_fetch_add`: `WorkerContext::beat()` on the context of a real worker's
//!   start, against `AtomicU64::fetch_add(1, Relaxed)` on an `Arc`'d atomic, in the same loop
//!   shape (the receiver `black_box`ed on every iteration), on the main thread.
//!
//! Output: criterion's report for the timed scenarios, then our own medians over interleaved
//! batches, also written as compact JSON to `$WORKERKIT_BENCH_REPORT_DIR/supervise.json` (default
//! `<workspace>/target/bench-report`).
//!
//! `WORKERKIT_BENCH_QUICK=1` shortens everything. Without `--bench` (as `cargo test --benches`
//! runs it), or with criterion's `--test`, `--list` or `--profile-time`, no report is written;
//! without `--bench` every scenario runs a few times as a smoke test.

mod common;

use common::{CpuTicks, Scenario, Target, round};
use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tokio::sync::Notify;
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::RestartPolicy;
use workerkit_core::{LifecycleState, LoopWorker, Runtime, WorkerContext, WorkerSpec, worker_fn};

const RUNTIME: &str = "bench";
/// The restarting worker.
const CRASHER: &str = "crasher";
/// The worker whose context beats.
const BEATER: &str = "beater";

/// Issue number of every scenario in this report.
const ISSUE: u32 = 7;

fn main() {
    let quick = std::env::var("WORKERKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .any(|arg| arg == name || arg.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
    };
    silence_crashes();
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
    let path = common::write_report("supervise.json", &measured.scenarios());
    println!("wrote {}", path.display());
}

// ---- Scenarios ----

/// The panic payload of every crash in this bench.
#[derive(Debug)]
struct Crash;

/// Keeps the default panic hook for every panic but this bench's crashes: printing thousands of
/// panic messages would time the terminal, not the restart.
fn silence_crashes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Crash>().is_none() {
            default(info);
        }
    }));
}

/// What a driver and the incarnations of one crashing worker (or plain task) share.
#[derive(Debug, Default)]
struct Signals {
    /// Notified by each incarnation once it runs.
    running: Notify,
    /// Notified by the driver: the running incarnation crashes.
    crash: Notify,
    /// Set before the last crash signal: the plain supervisor stops respawning.
    done: AtomicBool,
}

/// One incarnation of either side: says it runs, waits for the crash signal, panics.
async fn incarnation(signals: &Signals, stop: impl Future<Output = ()>) {
    signals.running.notify_one();
    tokio::select! {
        () = signals.crash.notified() => {}
        () = stop => return,
    }
    if signals.done.load(Ordering::Relaxed) {
        return;
    }
    std::panic::panic_any(Crash);
}

/// The runtime's worker: a loop that crashes on request, restarted with no backoff and no
/// intensity bound.
fn crasher(signals: &Arc<Signals>) -> WorkerSpec {
    let signals = Arc::clone(signals);
    let worker = LoopWorker::new(move |ctx| {
        let signals = Arc::clone(&signals);
        async move {
            incarnation(&signals, ctx.stop_requested()).await;
            Ok(())
        }
    });
    WorkerSpec::new(CRASHER, worker).restart(
        RestartPolicy::on_failure()
            .backoff(Backoff::none())
            .unbounded(),
    )
}

/// The baseline: a plain task per incarnation, respawned by a supervising task that awaits its
/// `JoinHandle` and sees the panic.
#[allow(clippy::disallowed_methods)] // The baseline is plain `tokio::spawn` by definition.
async fn plain_supervisor(signals: Arc<Signals>) {
    loop {
        let task = {
            let signals = Arc::clone(&signals);
            tokio::spawn(async move { incarnation(&signals, std::future::pending()).await })
        };
        match task.await {
            Err(err) if err.is_panic() => {}
            _ => return,
        }
    }
}

/// Which side of the restart scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Plain,
    Runtime,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain_task_respawn",
            Self::Runtime => "runtime_restart",
        }
    }
}

/// A runtime whose worker crashes on request, and a plain supervised task that does.
#[derive(Clone, Debug)]
struct Crashers {
    runtime: Runtime,
    worker: Arc<Signals>,
    plain: Arc<Signals>,
}

impl Crashers {
    /// Builds and starts both, on the current tokio runtime (from a task on it: the plain
    /// supervisor is spawned here).
    #[allow(clippy::disallowed_methods)] // The plain supervisor is a plain task.
    async fn new(beater: WorkerSpec) -> Self {
        let runtime = Runtime::builder(RUNTIME).build().expect("runtime builds");
        let worker = Arc::new(Signals::default());
        runtime.register(crasher(&worker)).expect("register");
        runtime.register(beater).expect("register");
        runtime.start_all().await.expect("start_all");
        worker.running.notified().await;
        let plain = Arc::new(Signals::default());
        tokio::spawn(plain_supervisor(Arc::clone(&plain)));
        plain.running.notified().await;
        let crashers = Self {
            runtime,
            worker,
            plain,
        };
        // Both work, and have made their first-use allocations, before anything is measured.
        crashers.restarts(Side::Plain, 10).await;
        crashers.restarts(Side::Runtime, 10).await;
        crashers
    }

    /// Crashes `side`'s running incarnation `n` times; returns the time from each crash signal
    /// to the next incarnation's "running" signal, summed.
    async fn restarts(&self, side: Side, n: u64) -> Duration {
        let signals = match side {
            Side::Plain => &self.plain,
            Side::Runtime => &self.worker,
        };
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let started = Instant::now();
            signals.crash.notify_one();
            signals.running.notified().await;
            total += started.elapsed();
            if side == Side::Runtime {
                // Untimed: the restart's start has finished and the incarnation is running. The
                // change feed is subscribed to only here: while it has a subscriber, every state
                // change also notifies it, which the timed restarts should not pay.
                self.runtime
                    .subscribe()
                    .wait_until(|rt| {
                        rt.worker(CRASHER)
                            .is_some_and(|w| w.status.state == LifecycleState::Running)
                    })
                    .await;
            }
        }
        total
    }

    async fn shutdown(self) {
        self.plain.done.store(true, Ordering::Relaxed);
        self.plain.crash.notify_one();
        self.runtime.shutdown().await.expect("shutdown");
    }
}

/// A worker whose start hands its context out, for the heartbeat scenario.
fn beater(slot: &Arc<Mutex<Option<WorkerContext>>>) -> WorkerSpec {
    let slot = Arc::clone(slot);
    WorkerSpec::new(
        BEATER,
        worker_fn(move |ctx| {
            *slot.lock().expect("context slot") = Some(ctx);
            async { Ok(()) }
        }),
    )
}

/// The heartbeat scenario's two operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Beat {
    FetchAdd,
    Context,
}

impl Beat {
    fn name(self) -> &'static str {
        match self {
            Self::FetchAdd => "atomic_fetch_add",
            Self::Context => "context_beat",
        }
    }
}

/// What the scenarios run against.
#[derive(Debug)]
struct Bench {
    /// Two worker threads, as the other benches' multi-thread runtimes.
    tokio: tokio::runtime::Runtime,
    crashers: Crashers,
    /// The context of the beater's incarnation (kept: a clone of what its start got).
    ctx: WorkerContext,
    counter: Arc<AtomicU64>,
}

impl Bench {
    fn new() -> Self {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let slot = Arc::new(Mutex::new(None));
        let spec = beater(&slot);
        let crashers = tokio
            .block_on(tokio.spawn(Crashers::new(spec)))
            .expect("set-up");
        let ctx = slot
            .lock()
            .expect("context slot")
            .take()
            .expect("the beater started");
        Self {
            tokio,
            crashers,
            ctx,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `n` restarts of `side`, from a task on a worker thread of the two-thread runtime.
    fn restarts(&self, side: Side, n: u64) -> Duration {
        let crashers = self.crashers.clone();
        let task = self
            .tokio
            .spawn(async move { crashers.restarts(side, n).await });
        self.tokio.block_on(task).expect("bench task")
    }

    /// `n` heartbeats of kind `op`, on this thread.
    fn beats(&self, op: Beat, n: u64) -> Duration {
        let started = Instant::now();
        match op {
            Beat::FetchAdd => {
                for _ in 0..n {
                    black_box(&self.counter).fetch_add(1, Ordering::Relaxed);
                }
            }
            Beat::Context => {
                for _ in 0..n {
                    black_box(&self.ctx).beat();
                }
            }
        }
        started.elapsed()
    }

    fn shutdown(self) {
        let crashers = self.crashers;
        self.tokio
            .block_on(self.tokio.spawn(crashers.shutdown()))
            .expect("shutdown");
    }
}

/// Without `--bench`: every scenario a few times, to show the bench still works.
fn smoke(bench: &Bench) {
    let n = 20;
    let mut line = format!("supervise bench smoke (n={n}):");
    for side in [Side::Plain, Side::Runtime] {
        let elapsed = bench.restarts(side, n);
        let _ = write!(line, " {} {:.0} ns,", side.name(), ns_per(elapsed, n));
    }
    for op in [Beat::FetchAdd, Beat::Context] {
        let elapsed = bench.beats(op, 1000 * n);
        let _ = write!(line, " {} {:.2} ns,", op.name(), ns_per(elapsed, 1000 * n));
    }
    let restarts = bench
        .crashers
        .runtime
        .worker(CRASHER)
        .map_or(0, |w| w.status.restarts);
    let _ = write!(line, " {restarts} restarts in all");
    println!("{line}");
}

// ---- Criterion ----

fn criterion_benches(criterion: &mut Criterion, bench: &Bench) {
    let mut group = criterion.benchmark_group("supervise");
    group.throughput(Throughput::Elements(1));
    for side in [Side::Plain, Side::Runtime] {
        group.bench_function(side.name(), |b| {
            b.iter_custom(|iters| bench.restarts(side, iters));
        });
    }
    for op in [Beat::FetchAdd, Beat::Context] {
        group.bench_function(op.name(), |b| {
            b.iter_custom(|iters| bench.beats(op, iters));
        });
    }
    group.finish();
}

// ---- Our own measurement ----

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Interleaved rounds of batches.
    reps: usize,
    /// Restarts per batch.
    restarts: u64,
    /// Heartbeats per batch.
    beats: u64,
}

impl Plan {
    const QUICK: Self = Self {
        reps: 9,
        restarts: 200,
        beats: 1_000_000,
    };
    const NORMAL: Self = Self {
        reps: 31,
        restarts: 500,
        beats: 5_000_000,
    };
}

/// The medians of one run, in ns per operation.
#[derive(Debug)]
struct Measured {
    plan: Plan,
    plain_restart: f64,
    runtime_restart: f64,
    /// The fastest batch of each (diagnostic: the floor, with the least interference).
    plain_restart_min: f64,
    runtime_restart_min: f64,
    fetch_add: f64,
    beat: f64,
    /// Restarts of the worker over the whole run (criterion's included).
    total_restarts: u64,
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

fn minimum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn ns_per(duration: Duration, n: u64) -> f64 {
    duration.as_nanos() as f64 / n as f64
}

fn measure(bench: &Bench, plan: &Plan) -> Measured {
    let (mut plain, mut runtime) = (Vec::new(), Vec::new());
    let (mut fetch_add, mut beat) = (Vec::new(), Vec::new());
    for round in 0..plan.reps {
        // Alternate which goes first, so that drift within a round affects both sides alike.
        let sides = if round % 2 == 0 {
            [Side::Plain, Side::Runtime]
        } else {
            [Side::Runtime, Side::Plain]
        };
        for side in sides {
            let ns = ns_per(bench.restarts(side, plan.restarts), plan.restarts);
            match side {
                Side::Plain => plain.push(ns),
                Side::Runtime => runtime.push(ns),
            }
        }
        let ops = if round % 2 == 0 {
            [Beat::FetchAdd, Beat::Context]
        } else {
            [Beat::Context, Beat::FetchAdd]
        };
        for op in ops {
            let ns = ns_per(bench.beats(op, plan.beats), plan.beats);
            match op {
                Beat::FetchAdd => fetch_add.push(ns),
                Beat::Context => beat.push(ns),
            }
        }
    }
    Measured {
        plan: *plan,
        plain_restart_min: minimum(&plain),
        runtime_restart_min: minimum(&runtime),
        plain_restart: median(plain),
        runtime_restart: median(runtime),
        fetch_add: median(fetch_add),
        beat: median(beat),
        total_restarts: bench
            .crashers
            .runtime
            .worker(CRASHER)
            .map_or(0, |w| w.status.restarts),
    }
}

/// A scenario whose ratio `value / baseline` must be at most `max`.
fn scenario(id: &'static str, value: f64, baseline: f64, decimals: i32, max: f64) -> Scenario {
    let (value, baseline) = (round(value, decimals), round(baseline, decimals));
    let ratio = round(value / baseline, 4);
    Scenario {
        id,
        issue: ISSUE,
        value,
        baseline,
        unit: "ns",
        ratio,
        target: Target {
            op: "<=",
            value: max,
        },
        pass: ratio.is_finite() && ratio <= max,
    }
}

impl Measured {
    fn scenarios(&self) -> Vec<Scenario> {
        vec![
            scenario(
                "supervise/restart_latency_vs_respawn",
                self.runtime_restart,
                self.plain_restart,
                1,
                3.0,
            ),
            // A heartbeat takes about a nanosecond: two decimals keep the ratio meaningful.
            scenario(
                "supervise/beat_vs_fetch_add",
                self.beat,
                self.fetch_add,
                2,
                2.0,
            ),
        ]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "\nsupervise: medians of {} interleaved batches ({} restarts, {} beats per batch)",
            p.reps, p.restarts, p.beats
        );
        let _ = writeln!(
            out,
            "  {:<28}{:>12.0} ns per restart (fastest batch {:.0})",
            Side::Plain.name(),
            self.plain_restart,
            self.plain_restart_min
        );
        let _ = writeln!(
            out,
            "  {:<28}{:>12.0} ns per restart (fastest batch {:.0}); {} restarts in all",
            Side::Runtime.name(),
            self.runtime_restart,
            self.runtime_restart_min,
            self.total_restarts
        );
        let _ = writeln!(
            out,
            "  {:<28}{:>12.2} ns per beat",
            Beat::FetchAdd.name(),
            self.fetch_add
        );
        let _ = writeln!(
            out,
            "  {:<28}{:>12.2} ns per beat",
            Beat::Context.name(),
            self.beat
        );
        let _ = writeln!(
            out,
            "{:<40}{:>12}{:>12}{:>9}{:>8}  pass",
            "id", "value", "baseline", "ratio", "target"
        );
        for s in self.scenarios() {
            let _ = writeln!(
                out,
                "{:<40}{:>12}{:>12}{:>9.3}{:>8}  {}",
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
