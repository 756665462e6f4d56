//! Command dispatch cost (issue 4).
//!
//! A runtime with one worker (a `worker_fn` whose start returns at once) owning a trivial
//! command (`handler_fn(|_ctx| trivial())`, where `trivial` returns `CommandResponse::empty()`),
//! no observers, default settings: a 30 s command timeout in the cooperative mode, where the
//! pipeline only computes the deadline and awaits the handler directly, so no timer is armed.
//! Every scenario runs the same `trivial` work, in the same run:
//!
//! - `direct_call`: `trivial().await`, the handler's work called directly (the baseline);
//! - `runtime_dispatch`: `runtime.dispatch(CommandRequest::new("w", "noop"))`, building the
//!   request included (a caller has to);
//! - `kameo_ask`: an `ask` round trip to a kameo actor whose message handler runs `trivial`;
//! - diagnostics, not scenarios of the issue: a dispatch by qualified name (`bench/w`, which
//!   needs no canonicalisation of the worker name), a minimal hand-written actor (a tokio `mpsc`
//!   request carrying a `oneshot` reply: the floor of any ask round trip), the single-task
//!   operations again on the two-thread runtime, and the scaling of 8 tasks that each dispatch
//!   to a worker of their own (what is shared runtime-wide, without the contention on one
//!   worker's admission state).
//!
//! Single-task scenarios run on a current-thread tokio runtime, in batches, interleaved so that
//! drift affects them alike; the reported ns per operation is the median over batches. There an
//! actor ask is a same-thread round trip, its best case: on the two-thread runtime the actor's
//! task may be stolen by the other thread, and each ask then costs a cross-thread wake-up whose
//! price depends on what else the machine runs (those numbers are printed as a diagnostic).
//!
//! Scaling runs the same loop in 1 and in 8 concurrent `tokio::spawn`ed tasks on a two-thread
//! runtime (throughput of 8 tasks / throughput of 1 task), for the dispatch and for the direct
//! call, each pair adjacent in time and the operations alternating.
//!
//! This binary runs on the system allocator. Heap use per dispatch (the issue's "allocations per
//! dispatch", `dispatch/heap_bytes_vs_actor_ask`) is measured by `dispatch_heap.rs`, a binary of
//! its own: its counting allocator updates one global atomic on every allocation and free, which
//! would serialise the scaling scenario's threads and charge the dispatch (which allocates) a
//! cost the direct call (which does not) never pays.
//!
//! Output: criterion's report for the timed scenarios, then our own medians, also written as
//! compact JSON to `$WORKERKIT_BENCH_REPORT_DIR/dispatch.json` (default
//! `<workspace>/target/bench-report`).
//!
//! `WORKERKIT_BENCH_QUICK=1` shortens everything. Without `--bench` (as `cargo test --benches`
//! runs it), or with criterion's `--test`, `--list` or `--profile-time`, no report is written;
//! without `--bench` every scenario runs a few times as a smoke test.

mod common;

use common::{CpuTicks, Scenario, Target, round};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use kameo::actor::{Actor, ActorRef};
use kameo::message::{Context, Message};
use tokio::sync::{mpsc, oneshot};
use workerkit_core::failure::BoxError;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

const RUNTIME: &str = "bench";
const WORKER: &str = "w";
const QUALIFIED_WORKER: &str = "bench/w";
const COMMAND: &str = "noop";
/// Concurrent tasks of the scaling scenario.
const TASKS: usize = 8;
/// One worker per task, for the diagnostic of the scaling scenario.
const SPREAD: [&str; TASKS] = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"];

/// The issue's budget for the time a dispatch adds to its handler, in ns at the median.
const ADDED_BUDGET_NS: f64 = 1000.0;
/// Below this scaling of the direct call, the run had no second core to scale onto (other
/// processes used it), and the scaling scenario cannot pass.
const MIN_BASELINE_SCALING: f64 = 1.5;

/// Issue number of every scenario in this report.
const ISSUE: u32 = 4;

fn main() {
    let quick = std::env::var("WORKERKIT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .any(|arg| arg == name || arg.strip_prefix(name).is_some_and(|v| v.starts_with('=')))
    };
    let bench = Bench::new();

    if !flag("--bench") {
        smoke(&bench);
        bench.shutdown();
        return;
    }

    let cpu_before = CpuTicks::read();
    let mut criterion = common::criterion(quick);
    let plan = if quick { Plan::QUICK } else { Plan::NORMAL };
    criterion_benches(&mut criterion, &bench, plan.k);
    criterion.final_summary();
    // `--profile-time` (for profilers) skips criterion's analysis: skip ours as well.
    if flag("--test") || flag("--list") || flag("--profile-time") {
        bench.shutdown();
        return;
    }

    let measured = measure(&bench, &plan);
    bench.shutdown();
    print!("{}", measured.table());
    common::print_load_note(cpu_before);
    let path = common::write_report("dispatch.json", &measured.scenarios());
    println!("wrote {}", path.display());
}

// ---- Scenarios ----

/// The trivial work of every scenario: the dispatched command's handler, the direct call and
/// the actors' message handlers.
async fn trivial() -> Result<CommandResponse, BoxError> {
    Ok(CommandResponse::empty())
}

/// A kameo actor whose messages run [`trivial`].
#[derive(Debug)]
struct TrivialActor;

impl Actor for TrivialActor {
    type Args = Self;
    type Error = Infallible;

    async fn on_start(args: Self::Args, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(args)
    }
}

/// Runs [`trivial`] and replies with its result.
#[derive(Debug)]
struct Run;

impl Message<Run> for TrivialActor {
    type Reply = Result<CommandResponse, BoxError>;

    async fn handle(&mut self, _: Run, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        trivial().await
    }
}

/// A request to the hand-written actor: where to send the reply.
type Reply = oneshot::Sender<Result<CommandResponse, BoxError>>;

/// One kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Direct,
    Dispatch,
    DispatchQualified,
    KameoAsk,
    MpscAsk,
    /// Dispatch to the worker of the task (`SPREAD`), for the scaling diagnostic.
    DispatchSpread,
}

impl Op {
    /// The single-task operations, in measurement order.
    const SINGLE: [Self; 5] = [
        Self::Direct,
        Self::Dispatch,
        Self::DispatchQualified,
        Self::KameoAsk,
        Self::MpscAsk,
    ];
    /// The single-task operations measured again on the two-thread runtime (diagnostic).
    const MULTI: [Self; 3] = [Self::Dispatch, Self::KameoAsk, Self::MpscAsk];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct_call",
            Self::Dispatch => "runtime_dispatch",
            Self::DispatchQualified => "runtime_dispatch_qualified",
            Self::KameoAsk => "kameo_ask",
            Self::MpscAsk => "mpsc_oneshot_ask",
            Self::DispatchSpread => "runtime_dispatch_per_task_worker",
        }
    }
}

/// What the scenarios run against, on one tokio runtime.
#[derive(Clone, Debug)]
struct Ops {
    runtime: Runtime,
    actor: ActorRef<TrivialActor>,
    /// The minimal hand-written actor: requests carry their reply channel.
    mpsc: mpsc::Sender<Reply>,
}

impl Ops {
    /// Builds and starts the runtime (the worker with the command and its probe, and the
    /// workers of the scaling diagnostic) and spawns the actors, on the current tokio runtime.
    #[allow(clippy::disallowed_methods)] // The hand-written actor is a plain task.
    async fn new() -> Self {
        let runtime = Runtime::builder(RUNTIME).build().expect("runtime builds");
        let spec = WorkerSpec::new(WORKER, worker_fn(|_ctx| async { Ok(()) }))
            .command(CommandSpec::new(COMMAND, handler_fn(|_ctx| trivial())));
        runtime.register(spec).expect("register");
        for name in SPREAD {
            let spec = WorkerSpec::new(name, worker_fn(|_ctx| async { Ok(()) }))
                .command(CommandSpec::new(COMMAND, handler_fn(|_ctx| trivial())));
            runtime.register(spec).expect("register");
        }
        runtime.start_all().await.expect("start_all");
        let actor = TrivialActor::spawn(TrivialActor);
        let (mpsc, mut requests) = mpsc::channel::<Reply>(64);
        tokio::spawn(async move {
            while let Some(reply) = requests.recv().await {
                let _ = reply.send(trivial().await);
            }
        });
        let ops = Self {
            runtime,
            actor,
            mpsc,
        };
        // Every operation works, and has made its first-use allocations, before anything is
        // measured.
        for op in Op::SINGLE {
            ops.run(op, 10, 0).await;
        }
        for task in 0..TASKS {
            ops.run(Op::DispatchSpread, 10, task).await;
        }
        ops
    }

    async fn shutdown(self) {
        self.actor.kill();
        self.actor.wait_for_shutdown().await;
        self.runtime.shutdown().await.expect("shutdown");
    }

    /// Runs `op` `n` times in this task, the `task`-th of its batch; returns the elapsed time.
    async fn run(&self, op: Op, n: u64, task: usize) -> Duration {
        let started = Instant::now();
        match op {
            Op::Direct => {
                for _ in 0..n {
                    let result = black_box(trivial()).await;
                    black_box(result.expect("trivial"));
                }
            }
            Op::Dispatch | Op::DispatchQualified | Op::DispatchSpread => {
                let worker = match op {
                    Op::DispatchQualified => QUALIFIED_WORKER,
                    Op::DispatchSpread => SPREAD[task % TASKS],
                    _ => WORKER,
                };
                for _ in 0..n {
                    let result = self
                        .runtime
                        .dispatch(CommandRequest::new(worker, COMMAND))
                        .await;
                    black_box(result.expect("dispatch"));
                }
            }
            Op::KameoAsk => {
                for _ in 0..n {
                    let result = self.actor.ask(Run).await;
                    black_box(result.expect("kameo ask"));
                }
            }
            Op::MpscAsk => {
                for _ in 0..n {
                    let (reply, response) = oneshot::channel();
                    self.mpsc.send(reply).await.expect("mpsc actor runs");
                    let result = response.await.expect("mpsc actor replies");
                    black_box(result.expect("trivial"));
                }
            }
        }
        started.elapsed()
    }

    /// Runs `op` `k` times in each of `tasks` concurrent tasks; returns the time from the first
    /// spawn until every task has finished.
    #[allow(clippy::disallowed_methods)] // Plain tasks of the bench, not runtime-owned work.
    async fn concurrent(&self, op: Op, tasks: usize, k: u64) -> Duration {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let ops = self.clone();
                tokio::spawn(async move { ops.run(op, k, task).await })
            })
            .collect();
        for handle in handles {
            handle.await.expect("bench task");
        }
        started.elapsed()
    }

    /// Size of the future `Runtime::dispatch` returns, which the caller's future embeds and
    /// which is moved around whole (diagnostic).
    fn dispatch_future_size(&self) -> usize {
        let future = self.runtime.dispatch(CommandRequest::new(WORKER, COMMAND));
        std::mem::size_of_val(&future)
    }
}

/// The two tokio runtimes, each with its own [`Ops`].
#[derive(Debug)]
struct Bench {
    /// Current-thread: the single-task scenarios.
    single: tokio::runtime::Runtime,
    single_ops: Ops,
    /// Two worker threads (the machine has two cores): the scaling scenario.
    multi: tokio::runtime::Runtime,
    multi_ops: Ops,
}

impl Bench {
    fn new() -> Self {
        let single = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let single_ops = single.block_on(Ops::new());
        let multi_ops = multi.block_on(multi.spawn(Ops::new())).expect("set-up");
        Self {
            single,
            single_ops,
            multi,
            multi_ops,
        }
    }

    /// Runs `f(ops)` as a task on the current-thread runtime.
    fn on_single<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce(Ops) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let task = self.single.spawn(f(self.single_ops.clone()));
        self.single.block_on(task).expect("bench task")
    }

    /// Runs `f(ops)` as a task on a worker thread of the two-thread runtime.
    fn on_multi<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce(Ops) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let task = self.multi.spawn(f(self.multi_ops.clone()));
        self.multi.block_on(task).expect("bench task")
    }

    fn shutdown(self) {
        self.single.block_on(self.single_ops.shutdown());
        self.multi
            .block_on(self.multi.spawn(self.multi_ops.shutdown()))
            .expect("shutdown");
    }
}

/// Without `--bench`: every scenario a few times, to show the bench still works.
fn smoke(bench: &Bench) {
    let n = 100;
    let mut line = format!("dispatch bench smoke (n={n}):");
    for op in Op::SINGLE {
        let elapsed = bench.on_single(|ops| async move { ops.run(op, n, 0).await });
        let _ = write!(line, " {} {:.0} ns,", op.name(), ns_per(elapsed, n));
    }
    for tasks in [1, TASKS] {
        let elapsed =
            bench.on_multi(|ops| async move { ops.concurrent(Op::Dispatch, tasks, n).await });
        let _ = write!(line, " {tasks} dispatching tasks {elapsed:?},");
    }
    println!("{line}");
}

// ---- Criterion ----

fn criterion_benches(criterion: &mut Criterion, bench: &Bench, k: u64) {
    let mut group = criterion.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(1));
    for op in Op::SINGLE {
        group.bench_function(op.name(), |b| {
            b.iter_custom(|iters| {
                bench.on_single(|ops| async move { ops.run(op, iters, 0).await })
            });
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("dispatch_scaling");
    for op in [Op::Dispatch, Op::DispatchSpread] {
        for tasks in [1, TASKS] {
            group.throughput(Throughput::Elements(tasks as u64 * k));
            group.bench_with_input(BenchmarkId::new(op.name(), tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| {
                    bench.on_multi(|ops| async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += ops.concurrent(op, tasks, k).await;
                        }
                        total
                    })
                });
            });
        }
    }
    group.finish();
}

// ---- Our own measurement ----

/// How much to measure.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Interleaved rounds of single-task batches.
    reps: usize,
    /// Operations per single-task batch (the direct call gets `DIRECT_FACTOR` times more).
    batch: u64,
    /// Rounds of the scaling scenario.
    scaling_reps: usize,
    /// Dispatches per task in the scaling scenario.
    k: u64,
}

/// The direct call takes nanoseconds: its batches are this much longer, so that they last long
/// enough to time.
const DIRECT_FACTOR: u64 = 100;

impl Plan {
    const QUICK: Self = Self {
        reps: 9,
        batch: 5_000,
        scaling_reps: 9,
        // Rounds of a few ms: at 2,000 dispatches per task a round lasted under a millisecond,
        // and one late wake-up of the second thread could halve a round's scaling.
        k: 10_000,
    };
    const NORMAL: Self = Self {
        reps: 41,
        batch: 20_000,
        scaling_reps: 21,
        k: 20_000,
    };
}

/// Throughput scaling of one operation from 1 to `TASKS` concurrent tasks.
#[derive(Clone, Copy, Debug)]
struct Scaling {
    /// Operations per task.
    k: u64,
    /// Median ns per operation with one task, and with `TASKS` tasks (over all of them).
    one_ns: f64,
    many_ns: f64,
    /// Median over rounds of (throughput with `TASKS` tasks) / (throughput with one task).
    factor: f64,
}

/// The medians of one run.
#[derive(Debug)]
struct Measured {
    plan: Plan,
    /// Median ns per operation on the current-thread runtime, by `Op::SINGLE` index.
    single: [f64; Op::SINGLE.len()],
    /// The same on the two-thread runtime, by `Op::MULTI` index (diagnostic).
    multi: [f64; Op::MULTI.len()],
    dispatch_scaling: Scaling,
    direct_scaling: Scaling,
    /// Diagnostic: each task dispatches to a worker of its own.
    spread_scaling: Scaling,
    /// Bytes of the future `Runtime::dispatch` returns.
    future_size: usize,
}

impl Measured {
    /// Median ns per `op` in one task on the current-thread runtime.
    fn ns(&self, op: Op) -> f64 {
        let index = Op::SINGLE.iter().position(|o| *o == op).expect("listed");
        self.single[index]
    }
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

/// Medians over `reps` rounds of what `run_round` returns (ns per operation, for a list of
/// operations).
fn batch_medians<const N: usize>(reps: usize, mut run_round: impl FnMut() -> [f64; N]) -> [f64; N] {
    let mut samples: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for _ in 0..reps {
        for (values, value) in samples.iter_mut().zip(run_round()) {
            values.push(value);
        }
    }
    samples.map(median)
}

/// One round of batches of `ops`, in one task; ns per operation in `ops` order.
async fn batch_round<const N: usize>(ops: Ops, list: [Op; N], batch: u64) -> [f64; N] {
    let mut round = [0.0; N];
    for (value, op) in round.iter_mut().zip(list) {
        let n = if op == Op::Direct {
            batch * DIRECT_FACTOR
        } else {
            batch
        };
        *value = ns_per(ops.run(op, n, 0).await, n);
    }
    round
}

/// One round of the scaling scenario for `op`: ns per operation with one task, then with
/// `TASKS` tasks, adjacent in time.
fn scaling_round(bench: &Bench, op: Op, k: u64) -> (f64, f64) {
    let (one, many) = bench.on_multi(|ops| async move {
        let one = ops.concurrent(op, 1, k).await;
        let many = ops.concurrent(op, TASKS, k).await;
        (one, many)
    });
    (ns_per(one, k), ns_per(many, TASKS as u64 * k))
}

fn scaling_of(k: u64, rounds: &[(f64, f64)]) -> Scaling {
    Scaling {
        k,
        one_ns: median(rounds.iter().map(|r| r.0).collect()),
        many_ns: median(rounds.iter().map(|r| r.1).collect()),
        // Throughput is the inverse of the time per operation.
        factor: median(rounds.iter().map(|r| r.0 / r.1).collect()),
    }
}

fn measure(bench: &Bench, plan: &Plan) -> Measured {
    let batch = plan.batch;
    let single = batch_medians(plan.reps, || {
        bench.on_single(|ops| batch_round(ops, Op::SINGLE, batch))
    });
    let multi = batch_medians(plan.reps.div_ceil(2), || {
        bench.on_multi(|ops| batch_round(ops, Op::MULTI, batch))
    });

    // Scaling. The direct call runs as many times more calls per task as it is faster than a
    // dispatch, so that its tasks run about as long as the dispatching ones: a few µs of direct
    // calls would time little but the spawning of the tasks and the waking of the second
    // thread. The operations alternate, so that load from other processes affects them alike.
    let (direct_ns, dispatch_ns) = (single[0].max(0.1), single[1]);
    let direct_k = plan.k * ((dispatch_ns / direct_ns).round() as u64).max(1);
    let (mut dispatch, mut direct, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.scaling_reps {
        dispatch.push(scaling_round(bench, Op::Dispatch, plan.k));
        direct.push(scaling_round(bench, Op::Direct, direct_k));
        spread.push(scaling_round(bench, Op::DispatchSpread, plan.k));
    }

    Measured {
        plan: *plan,
        single,
        multi,
        dispatch_scaling: scaling_of(plan.k, &dispatch),
        direct_scaling: scaling_of(direct_k, &direct),
        spread_scaling: scaling_of(plan.k, &spread),
        future_size: bench.single_ops.dispatch_future_size(),
    }
}

/// A scenario whose ratio `value / baseline` must be `op` (`<=` or `>=`) `bound`.
fn scenario(
    id: &'static str,
    (value, baseline): (f64, f64),
    unit: &'static str,
    op: &'static str,
    bound: f64,
) -> Scenario {
    let decimals = if unit == "x" { 3 } else { 1 };
    let (value, baseline) = (round(value, decimals), round(baseline, decimals));
    let ratio = round(value / baseline, 4);
    let pass = ratio.is_finite()
        && match op {
            "<=" => ratio <= bound,
            ">=" => ratio >= bound,
            _ => unreachable!("unknown target op {op}"),
        };
    Scenario {
        id,
        issue: ISSUE,
        value,
        baseline,
        unit,
        ratio,
        target: Target { op, value: bound },
        pass,
    }
}

impl Measured {
    /// Whether the direct call scaled enough for the scaling scenario to mean anything.
    fn had_two_cores(&self) -> bool {
        self.direct_scaling.factor >= MIN_BASELINE_SCALING
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let dispatch = self.ns(Op::Dispatch);
        let mut scaling = scenario(
            "dispatch/scaling_8_tasks",
            (self.dispatch_scaling.factor, self.direct_scaling.factor),
            "x",
            ">=",
            0.75,
        );
        // Without a second core neither scales, and their ratio says nothing about contention
        // in the dispatch path: such a run cannot pass.
        scaling.pass &= self.had_two_cores();
        vec![
            // The issue's target is absolute (under 1 µs added at the median), so this
            // scenario's baseline is that budget, not a measurement: the ratio is the fraction
            // of the budget used. Both medians are in the printed table.
            scenario(
                "dispatch/added_ns",
                (dispatch - self.ns(Op::Direct), ADDED_BUDGET_NS),
                "ns",
                "<=",
                1.0,
            ),
            scaling,
            scenario(
                "dispatch/vs_actor_ask",
                (self.ns(Op::KameoAsk), dispatch),
                "ns",
                ">=",
                2.0,
            ),
        ]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.plan;
        let _ = writeln!(
            out,
            "\ndispatch: ns per operation in one task, medians of {} batches of {} ({} for the \
             direct call); current-thread runtime (two-thread runtime, diagnostic)",
            p.reps,
            p.batch,
            p.batch * DIRECT_FACTOR
        );
        let direct = self.ns(Op::Direct);
        for op in Op::SINGLE {
            let ns = self.ns(op);
            let added = if op == Op::Direct {
                String::new()
            } else {
                format!("{:+.1} vs direct", ns - direct)
            };
            let multi = Op::MULTI
                .iter()
                .position(|o| *o == op)
                .map_or_else(String::new, |i| format!("({:.1} ns)", self.multi[i]));
            let _ = writeln!(out, "  {:<34}{ns:>8.1} ns {multi:>12}  {added}", op.name());
        }
        let _ = writeln!(
            out,
            "scaling from 1 to {TASKS} tasks on 2 worker threads, medians of {} rounds:",
            p.scaling_reps
        );
        for (op, s) in [
            (Op::Dispatch, &self.dispatch_scaling),
            (Op::Direct, &self.direct_scaling),
            (Op::DispatchSpread, &self.spread_scaling),
        ] {
            let _ = writeln!(
                out,
                "  {:<34}{:>6.2}x  ({} per task; {:.1} ns per op with 1 task, {:.1} with \
                 {TASKS})",
                op.name(),
                s.factor,
                s.k,
                s.one_ns,
                s.many_ns
            );
        }
        if !self.had_two_cores() {
            let _ = writeln!(
                out,
                "  the direct call scaled less than {MIN_BASELINE_SCALING}x: other processes \
                 used the second core, so the scaling scenario fails as unmeasurable"
            );
        }
        let _ = writeln!(
            out,
            "the future of Runtime::dispatch: {} bytes",
            self.future_size
        );
        let _ = writeln!(
            out,
            "{:<34}{:>10}{:>10}{:>9}{:>8}  pass",
            "id", "value", "baseline", "ratio", "target"
        );
        for s in self.scenarios() {
            let _ = writeln!(
                out,
                "{:<34}{:>10}{:>10}{:>9.3}{:>8}  {}",
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
