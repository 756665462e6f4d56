//! Restarting one worker thousands of times costs nothing per restart (issue 7): no growth of
//! live heap bytes, of live tokio tasks, or of the worker's status snapshot, and exactly one
//! `RestartScheduled` and one `Restarted` event per restart.
//!
//! The worker is a `LoopWorker` restarted with no backoff. Each incarnation spawns one child task
//! (`WorkerContext::spawn`, which never ends by itself: it must be reaped with its incarnation),
//! says which incarnation is parked, and fails as soon as the test lets it. The test lets
//! incarnation `k` fail, then waits by notification for the `k`-th restart and for incarnation
//! `k + 1` to park, so it checks the events after every restart, and it measures at quiescent
//! points: after a warm-up of `warm_up` restarts and at the end, both with the worker running and
//! its loop parked. Growth between the two must be bounded by a small constant, so anything kept
//! per restart (an intensity window that is never pruned, child-task sets, event queues, ...)
//! fails it.
//!
//! Live heap bytes are counted by a global allocator (the `cap` crate, as the benches do), which
//! counts every thread of this test binary: the tests take turns (`SERIAL`).

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cap::Cap;
use tokio::sync::watch;
use workerkit_core::observe::{Observer, SupervisionEvent, SupervisionKind};
use workerkit_core::retry::Backoff;
use workerkit_core::supervise::{Intensity, RestartPolicy};
use workerkit_core::{LifecycleState, LoopWorker, Runtime, WorkerSpec};

/// Counts live heap bytes (the workspace forbids the `unsafe` of a `GlobalAlloc` of our own).
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// The allocator counts the whole process: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const WORKER: &str = "w";

/// Live bytes the heap may grow by between the warm-up point and the end, whatever the number
/// of restarts in between: a leak of one byte per restart over 9,000 restarts exceeds it.
const GROWTH_BOUND: i64 = 4096;

/// How long (on paused time) a restart may take before the test gives up on it.
const STALL: Duration = Duration::from_secs(60);

/// Supervision events by kind.
#[derive(Debug, Default)]
struct Counts {
    scheduled: AtomicU64,
    restarted: AtomicU64,
    /// Any other supervision event (a cancelled restart, a give-up, ...): none is expected.
    other: AtomicU64,
}

impl Counts {
    fn get(&self) -> (u64, u64, u64) {
        (
            self.scheduled.load(Ordering::Relaxed),
            self.restarted.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
struct Counter(Arc<Counts>);

impl Observer for Counter {
    fn on_supervision(&self, event: &SupervisionEvent) {
        let counter = match event.kind {
            SupervisionKind::RestartScheduled { .. } => &self.0.scheduled,
            SupervisionKind::Restarted { .. } => &self.0.restarted,
            _ => &self.0.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker: each incarnation spawns a child that never ends, reports that it is parked
/// (`parked` = its incarnation), and fails once `allowed` reaches its incarnation.
fn failing_worker(allowed: &watch::Receiver<u64>, parked: &Arc<watch::Sender<u64>>) -> LoopWorker {
    let (allowed, parked) = (allowed.clone(), Arc::clone(parked));
    LoopWorker::new(move |ctx| {
        let (mut allowed, parked) = (allowed.clone(), Arc::clone(&parked));
        async move {
            let me = ctx.incarnation();
            ctx.spawn(std::future::pending());
            parked.send_replace(me);
            tokio::select! {
                released = allowed.wait_for(|n| *n >= me) => {
                    released.expect("the test holds the sender");
                }
                () = ctx.stop_requested() => return Ok(()),
            }
            Err("fails at once".into())
        }
    })
}

/// What is measured at a quiescent point.
#[derive(Debug)]
struct Point {
    restarts: u64,
    live_bytes: usize,
    alive_tasks: usize,
    /// The worker's status snapshot as JSON, with every run of digits replaced by `0`.
    shape: String,
    json_len: usize,
}

/// `text` with every run of ASCII digits replaced by one `0`.
fn without_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('0');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Restarts the worker `total` times under `policy`, measuring after `warm_up` restarts and at
/// the end; asserts that nothing grew.
async fn restart_many(policy: RestartPolicy, warm_up: u64, total: u64) {
    let counts = Arc::new(Counts::default());
    let runtime = Runtime::builder("mem")
        .with_observer(Counter(Arc::clone(&counts)))
        .build()
        .expect("runtime builds");
    let (allow, allowed) = watch::channel(0_u64);
    let (parked, mut parked_rx) = watch::channel(0_u64);
    let parked = Arc::new(parked);
    runtime
        .register(WorkerSpec::new(WORKER, failing_worker(&allowed, &parked)).restart(policy))
        .expect("register");
    runtime.start_all().await.expect("start_all");
    let mut changes = runtime.subscribe();
    let tokio = tokio::runtime::Handle::current();

    let mut points = Vec::new();
    for k in 1..=total {
        // Incarnation `k` fails; wait for the `k`-th restart, and for incarnation `k + 1` to run
        // its loop up to where it parks.
        allow.send_replace(k);
        let restarted = async {
            changes
                .wait_until(|_| counts.restarted.load(Ordering::Relaxed) >= k)
                .await;
            parked_rx
                .wait_for(|incarnation| *incarnation == k + 1)
                .await
                .map(|_| ())
        };
        // On paused time a restart that never comes fails here at once instead of hanging: with
        // nothing else to do, the clock jumps to the timeout.
        tokio::time::timeout(STALL, restarted)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "restart {k} did not happen; status: {:?}; events: {:?}",
                    runtime.worker(WORKER).map(|w| w.status),
                    counts.get()
                )
            })
            .expect("the worker holds the sender");
        assert_eq!(
            counts.get(),
            (k, k, 0),
            "restart {k}: (RestartScheduled, Restarted, other) supervision events"
        );
        if k == warm_up || k == total {
            let live_bytes = ALLOCATOR.allocated();
            let alive_tasks = tokio.metrics().num_alive_tasks();
            let snapshot = runtime.worker(WORKER).expect("registered");
            assert_eq!(snapshot.status.state, LifecycleState::Running);
            assert_eq!(snapshot.status.restarts, k);
            assert_eq!(snapshot.status.incarnation, k + 1);
            assert!(!snapshot.status.gave_up);
            let json = serde_json::to_string(&snapshot).expect("snapshot serialises");
            points.push(Point {
                restarts: k,
                live_bytes,
                alive_tasks,
                shape: without_digits(&json),
                json_len: json.len(),
            });
        }
    }
    runtime.shutdown().await.expect("shutdown");

    let [warm, end] = &points[..] else {
        panic!("expected two measuring points, got {points:?}");
    };
    let growth = end.live_bytes as i64 - warm.live_bytes as i64;
    println!(
        "after {} restarts: {} live bytes, {} tasks, status {} B; after {}: {} live bytes \
         ({growth:+}), {} tasks, status {} B",
        warm.restarts,
        warm.live_bytes,
        warm.alive_tasks,
        warm.json_len,
        end.restarts,
        end.live_bytes,
        end.alive_tasks,
        end.json_len,
    );
    assert!(
        growth <= GROWTH_BOUND,
        "live heap grew by {growth} bytes over {} restarts (bound {GROWTH_BOUND}): about {:.1} \
         bytes per restart",
        end.restarts - warm.restarts,
        growth as f64 / (end.restarts - warm.restarts) as f64
    );
    assert_eq!(
        end.alive_tasks, warm.alive_tasks,
        "live tokio tasks after {} and after {} restarts",
        warm.restarts, end.restarts
    );
    // The loop and its child: nothing of an earlier incarnation is left.
    assert_eq!(end.alive_tasks, 2, "tasks of the running incarnation");
    assert_eq!(
        end.shape, warm.shape,
        "the status snapshot changed shape (not only digits)"
    );
}

/// A current-thread tokio runtime on paused time.
fn paused_tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

#[test]
fn ten_thousand_unbounded_restarts_hold_no_growth() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::none())
        .unbounded();
    paused_tokio().block_on(restart_many(policy, 1_000, 10_000));
}

/// With an intensity bound the window must be pruned as restarts age out of it: restarts 1 ms
/// apart in a 10 ms window keep about ten entries, far below the bound of 100.
#[test]
fn bounded_intensity_window_holds_no_growth() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let intensity = Intensity::new(100, Duration::from_millis(10)).expect("valid intensity");
    let policy = RestartPolicy::on_failure()
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .intensity(intensity);
    paused_tokio().block_on(restart_many(policy, 300, 3_000));
}
