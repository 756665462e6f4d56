//! Stress: thousands of concurrent dispatches while another task drains, stops, restarts and
//! cancels, and handlers succeed, fail, panic, overrun their timeout or wait for cancellation.
//!
//! Each dispatch's behaviour comes from a seeded RNG (one stream per dispatch index), so the mix
//! is the same on every run; the interleaving is whatever the two scheduler threads make of it.
//! Afterwards every dispatch must have returned exactly once, every command start must have
//! exactly one end (by dispatch id), nothing may be left in flight or waiting, and the shutdown
//! must leave no worker task behind.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use serde_json::json;
use support::command_tally::{CommandTally, TAG};
use workerkit_core::command::{AdmissionMode, DispatchError, DispatchId, TimeoutMode};
use workerkit_core::observe::CommandOutcome;
use workerkit_core::retry::{Backoff, RetryPolicy};
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LifecycleState, Runtime, WorkerSpec, handler_fn,
    worker_fn,
};

const SEED: u64 = 0x00C0_FFEE_5EED_2024;
const WORKERS: [&str; 4] = ["plain", "capped", "hard", "retry"];
const PER_WORKER: usize = 2_000;
const TOTAL: usize = WORKERS.len() * PER_WORKER;
/// Tasks issuing dispatches concurrently, each a share of the dispatch indices in turn.
const TASKS: usize = 256;
/// Rounds, each on a fresh runtime with its own seed.
const ROUNDS: u64 = 4;
/// One round, on the real clock (a round takes about a second on 2 cores).
const BOUND: Duration = Duration::from_secs(30);

/// SplitMix64: small, seedable, good enough to pick behaviours.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a handler does, chosen per dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Sleeps 0–2 ms, then succeeds.
    Succeed,
    /// Yields, then returns a (retryable) error.
    Fail,
    /// Panics.
    Panic,
    /// Sleeps past its timeout, ignoring cancellation.
    Oversleep,
    /// Waits for cancellation (timeout, cancel by id, or stop), then returns an error.
    AwaitCancel,
}

impl Behaviour {
    fn pick(rng: &mut SplitMix) -> Self {
        match rng.below(1000) {
            0..=499 => Self::Succeed,
            500..=649 => Self::Fail,
            650..=659 => Self::Panic,
            660..=799 => Self::Oversleep,
            _ => Self::AwaitCancel,
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Succeed => 0,
            Self::Fail => 1,
            Self::Panic => 2,
            Self::Oversleep => 3,
            Self::AwaitCancel => 4,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            0 => Self::Succeed,
            1 => Self::Fail,
            2 => Self::Panic,
            3 => Self::Oversleep,
            _ => Self::AwaitCancel,
        }
    }
}

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let expected = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .is_some_and(|s| s.starts_with("expected panic"));
            if !expected {
                default(info);
            }
        }));
    });
}

/// The one command every worker has: does what its payload says.
fn op() -> CommandSpec {
    CommandSpec::new(
        "op",
        handler_fn(|ctx| async move {
            let behaviour = Behaviour::from_code(ctx.request().raw_payload().map_or(0, |p| {
                p.get("b").and_then(serde_json::Value::as_u64).unwrap_or(0)
            }));
            let ms = ctx
                .request()
                .raw_payload()
                .and_then(|p| p.get("ms"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            match behaviour {
                Behaviour::Succeed => {
                    if ms == 0 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Ok(CommandResponse::message("done"))
                }
                Behaviour::Fail => {
                    tokio::task::yield_now().await;
                    Err("expected failure".into())
                }
                Behaviour::Panic => {
                    tokio::task::yield_now().await;
                    panic!("expected panic in a stressed command handler");
                }
                Behaviour::Oversleep => {
                    // Every worker's timeout is at most 8 ms.
                    tokio::time::sleep(Duration::from_millis(10 + ms)).await;
                    Ok(CommandResponse::message("late"))
                }
                Behaviour::AwaitCancel => {
                    ctx.cancelled().await;
                    Err("expected failure after cancellation".into())
                }
            }
        }),
    )
}

fn workers() -> Vec<WorkerSpec> {
    let idle = || worker_fn(|_ctx| async { Ok(()) });
    vec![
        // Stops cancel its commands after a short grace.
        WorkerSpec::new(WORKERS[0], idle())
            .command(op())
            .command_timeout(Duration::from_millis(8))
            .cancel_commands_on_stop(Duration::from_millis(3)),
        // A worker-wide cap with wait admission, and retries.
        WorkerSpec::new(WORKERS[1], idle())
            .command(op())
            .command_timeout(Duration::from_millis(6))
            .command_concurrency(16)
            .command_admission(AdmissionMode::Wait(Duration::from_millis(20)))
            .command_retry(
                RetryPolicy::attempts(3)
                    .unwrap()
                    .backoff(Backoff::constant(Duration::from_millis(1))),
            ),
        // Hard timeouts, a fail-fast cap, and cancellation on stop.
        WorkerSpec::new(WORKERS[2], idle())
            .command(op())
            .command_timeout(Duration::from_millis(5))
            .command_timeout_mode(TimeoutMode::Hard {
                grace: Duration::from_millis(2),
            })
            .command_concurrency(24)
            .cancel_commands_on_stop(Duration::from_millis(2)),
        // A per-command cap with wait admission, and retries within a budget.
        WorkerSpec::new(WORKERS[3], idle())
            .command(
                op().concurrency(8)
                    .admission(AdmissionMode::Wait(Duration::from_millis(15))),
            )
            .command_timeout(Duration::from_millis(8))
            .command_retry(
                RetryPolicy::attempts(2)
                    .unwrap()
                    .total_budget(Duration::from_millis(30))
                    .unwrap(),
            ),
    ]
}

/// How a dispatch returned.
#[derive(Debug)]
enum Got {
    Ok(DispatchId),
    /// Admitted, then failed: the error's code and id.
    Failed(&'static str, DispatchId),
    /// Rejected before admission: the error's code.
    Rejected(&'static str),
}

fn classify(result: Result<workerkit_core::command::CommandResult, DispatchError>) -> Got {
    match result {
        Ok(done) => Got::Ok(done.id),
        Err(err) => match err.dispatch_id() {
            Some(id) => Got::Failed(err.code(), id),
            None => {
                assert!(err.is_rejection(), "neither admitted nor rejected: {err:?}");
                Got::Rejected(err.code())
            }
        },
    }
}

/// The end outcome an admitted dispatch's error code implies.
fn outcome_of(code: &str) -> CommandOutcome {
    match code {
        "command_failed" => CommandOutcome::Failed,
        "command_timed_out" => CommandOutcome::TimedOut,
        "command_panicked" => CommandOutcome::Panicked,
        "command_cancelled" => CommandOutcome::Cancelled,
        other => panic!("unexpected admitted error code {other}"),
    }
}

/// Drains, stops, restarts and cancels until `done`; returns how many operations it ran.
async fn churn(rt: Runtime, seed: u64, done: Arc<AtomicBool>) -> BTreeMap<&'static str, usize> {
    let mut rng = SplitMix::new(seed ^ 0xC4A9_u64);
    let mut ops = BTreeMap::new();
    let pause = |rng: &mut SplitMix| Duration::from_millis(1 + rng.below(4));
    while !done.load(Ordering::SeqCst) {
        let worker = WORKERS[usize::try_from(rng.below(4)).unwrap()];
        let op = match rng.below(20) {
            0..=5 => {
                // Drain, let admitted commands run a little, then restart.
                let _ = rt.drain(worker).await;
                tokio::time::sleep(pause(&mut rng)).await;
                let _ = rt.stop(worker).await;
                let _ = rt.start(worker).await;
                "drain+restart"
            }
            6..=10 => {
                let _ = rt.stop(worker).await;
                tokio::time::sleep(pause(&mut rng)).await;
                let _ = rt.start(worker).await;
                "restart"
            }
            11..=15 => {
                let in_flight = rt.in_flight();
                if in_flight.is_empty() {
                    "cancel (none in flight)"
                } else {
                    // A few at once; each may finish meanwhile (`NotFound` is fine here).
                    for _ in 0..3 {
                        let pick = usize::try_from(rng.below(in_flight.len() as u64)).unwrap();
                        let _ = rt.cancel(in_flight[pick].id);
                    }
                    "cancel"
                }
            }
            16 => {
                let _ = rt.stop_all().await;
                tokio::time::sleep(pause(&mut rng)).await;
                let _ = rt.start_all().await;
                "stop_all+start_all"
            }
            _ => {
                tokio::time::sleep(pause(&mut rng)).await;
                "pause"
            }
        };
        *ops.entry(op).or_insert(0) += 1;
        // Panicking commands fail their worker: bring failed (and stopped) workers back.
        for w in WORKERS {
            let state = rt.worker(w).unwrap().status.state;
            if matches!(state, LifecycleState::Failed | LifecycleState::Stopped) {
                let _ = rt.start(w).await;
            }
        }
        tokio::time::sleep(pause(&mut rng) * 2).await;
    }
    ops
}

/// Restarts workers that a panicking command failed, as soon as they fail, until `done`.
async fn medic(rt: Runtime, done: Arc<AtomicBool>) -> usize {
    let mut watch = rt.subscribe();
    let mut restarts = 0;
    while !done.load(Ordering::SeqCst) {
        let failed: Vec<_> = rt
            .workers()
            .into_iter()
            .filter(|w| w.status.state == LifecycleState::Failed)
            .map(|w| w.qualified_name)
            .collect();
        for w in failed {
            if rt.start(&w).await.is_ok() {
                restarts += 1;
            }
        }
        // Wake on the next change, or now and then to see `done`.
        let _ = tokio::time::timeout(Duration::from_millis(5), watch.changed()).await;
    }
    restarts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_dispatches_survive_lifecycle_churn() {
    quiet_expected_panics();
    let began = std::time::Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let round_outcomes =
            tokio::time::timeout(BOUND, stress_round(round, SEED.wrapping_add(round)))
                .await
                .unwrap_or_else(|_| panic!("stress round {round} hung"));
        for (key, n) in round_outcomes {
            *outcomes.entry(key).or_insert(0) += n;
        }
    }
    // The run exercised what it claims to (over all rounds: a round's mix depends on timing).
    for key in [
        "succeeded",
        "command_failed",
        "command_timed_out",
        "command_panicked",
        "command_cancelled",
        "rejected:invalid_worker_state",
        "rejected:runtime_not_accepting_work",
        "rejected:saturated",
    ] {
        assert!(
            outcomes.get(key).copied().unwrap_or(0) > 0,
            "no {key} in {outcomes:#?}"
        );
    }
    eprintln!(
        "command_stress: {ROUNDS} rounds of {TOTAL} dispatches in {:?}; outcomes {outcomes:?}",
        began.elapsed()
    );
}

/// One round on a fresh runtime: dispatch everything under churn, then check the books.
async fn stress_round(round: u64, seed: u64) -> BTreeMap<String, usize> {
    let began = std::time::Instant::now();
    let tally = CommandTally::new();
    let rt = Runtime::builder("rt")
        .with_observer(tally.clone())
        .build()
        .unwrap();
    for spec in workers() {
        rt.register(spec).unwrap();
    }
    rt.start_all().await.unwrap();

    let run = async {
        let done = Arc::new(AtomicBool::new(false));
        let churner = support::spawn(churn(rt.clone(), seed, Arc::clone(&done)));
        let medic = support::spawn(medic(rt.clone(), Arc::clone(&done)));
        let dispatchers: Vec<_> = (0..TASKS)
            .map(|task| {
                let rt = rt.clone();
                support::spawn(async move {
                    let mut got = Vec::new();
                    for n in (task..TOTAL).step_by(TASKS) {
                        let mut rng = SplitMix::new(seed ^ (n as u64).wrapping_mul(0x2545_F491));
                        let behaviour = Behaviour::pick(&mut rng);
                        let ms = rng.below(3);
                        let request = CommandRequest::new(WORKERS[n % WORKERS.len()], "op")
                            .payload(json!({ "b": behaviour.code(), "ms": ms }))
                            .metadata(TAG, n.to_string());
                        let got_now = classify(rt.dispatch(request).await);
                        if matches!(got_now, Got::Rejected(_)) {
                            // Back off like a client would, so rejections do not spin.
                            tokio::time::sleep(Duration::from_millis(1 + ms)).await;
                        }
                        got.push((n, behaviour, got_now));
                    }
                    got
                })
            })
            .collect();
        let mut results = Vec::with_capacity(TOTAL);
        for task in dispatchers {
            results.extend(task.await.unwrap());
        }
        done.store(true, Ordering::SeqCst);
        let mut ops = churner.await.unwrap();
        ops.insert("medic restarts", medic.await.unwrap());
        (results, ops)
    };
    let (results, ops) = run.await;
    let dispatched = began.elapsed();

    // Every dispatch returned exactly once.
    assert_eq!(results.len(), TOTAL);
    let indices: HashSet<usize> = results.iter().map(|(n, ..)| *n).collect();
    assert_eq!(indices.len(), TOTAL, "a dispatch index returned twice");

    // Every dispatch resolved its worker, so each was observed: one start, one end, per id.
    tally.assert_balanced();
    let seen = tally.snapshot();
    assert_eq!(seen.len(), TOTAL, "every dispatch has exactly one id");
    let by_tag: HashMap<usize, (DispatchId, CommandOutcome, u32)> = seen
        .iter()
        .map(|(id, s)| {
            let tag: usize = s.tag.as_deref().expect("tagged").parse().unwrap();
            (tag, (*id, s.outcome.expect("ended"), s.attempts))
        })
        .collect();
    assert_eq!(by_tag.len(), TOTAL, "two dispatch ids carried the same tag");

    // Each returned outcome matches its end event.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut returned_ids = HashSet::new();
    for (n, behaviour, got) in &results {
        let (id, outcome, attempts) = by_tag[n];
        let key = match got {
            Got::Ok(got_id) => {
                assert_eq!(
                    *got_id, id,
                    "dispatch {n}: result id differs from the event's"
                );
                assert_eq!(outcome, CommandOutcome::Succeeded, "dispatch {n}");
                assert!(
                    matches!(behaviour, Behaviour::Succeed | Behaviour::Oversleep),
                    "dispatch {n}: a {behaviour:?} handler succeeded"
                );
                assert!(returned_ids.insert(id));
                "succeeded".to_owned()
            }
            Got::Failed(code, got_id) => {
                assert_eq!(
                    *got_id, id,
                    "dispatch {n}: result id differs from the event's"
                );
                assert_eq!(outcome, outcome_of(code), "dispatch {n} ({behaviour:?})");
                assert!(attempts >= 1, "dispatch {n}: admitted with no attempt");
                if *code == "command_panicked" {
                    assert_eq!(*behaviour, Behaviour::Panic, "dispatch {n}");
                    assert_eq!(attempts, 1, "dispatch {n}: a panic was retried");
                }
                assert!(returned_ids.insert(id));
                (*code).to_owned()
            }
            Got::Rejected(code) => {
                assert_eq!(outcome, CommandOutcome::Rejected, "dispatch {n}: {code}");
                assert_eq!(attempts, 0, "dispatch {n}: rejected after an attempt");
                // No worker ever stops accepting work while running: a worker on its way from
                // running to failed (a panicking command) rejects as `invalid_worker_state`.
                assert!(
                    matches!(
                        *code,
                        "runtime_not_accepting_work" | "invalid_worker_state" | "saturated"
                    ),
                    "dispatch {n}: unexpected rejection {code}"
                );
                format!("rejected:{code}")
            }
        };
        *outcomes.entry(key).or_insert(0) += 1;
    }
    assert!(
        !seen
            .values()
            .any(|s| s.outcome == Some(CommandOutcome::Abandoned)),
        "no caller dropped a dispatch, yet one was abandoned"
    );
    // Nothing left in flight or waiting.
    tokio::time::timeout(Duration::from_secs(5), rt.wait_all_idle())
        .await
        .expect("wait_all_idle hung");
    let assert_quiet = |when: &str| {
        assert!(rt.in_flight().is_empty(), "{when}: {:?}", rt.in_flight());
        assert_eq!(rt.status().in_flight, 0, "{when}");
        for w in rt.workers() {
            assert_eq!(w.status.in_flight, 0, "{when}: {}", w.qualified_name);
            assert_eq!(w.status.waiting, 0, "{when}: {}", w.qualified_name);
        }
    };
    assert_quiet("after the run");

    let report = tokio::time::timeout(Duration::from_secs(10), rt.shutdown())
        .await
        .expect("shutdown hung")
        .expect("clean shutdown");
    assert_eq!(report.lingering_tasks, 0, "{report:?}");
    assert_eq!(report.abandoned_in_flight, 0, "{report:?}");
    assert_quiet("after shutdown");
    for w in rt.workers() {
        assert_eq!(
            w.status.state,
            LifecycleState::Stopped,
            "{}",
            w.qualified_name
        );
    }
    tally.assert_balanced();
    assert_eq!(tally.len(), TOTAL, "a dispatch was observed after the run");
    eprintln!(
        "command_stress round {round}: {TOTAL} dispatches in {dispatched:?} (total {:?}); \
         outcomes {outcomes:?}; lifecycle ops {ops:?}",
        began.elapsed()
    );
    outcomes
}
