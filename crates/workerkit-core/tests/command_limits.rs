//! Command concurrency limits and admission modes (spec §4.6 "Concurrency", Go
//! `DispatchCommandConcurrencyLimits`) and the Rust additions of §11.2 #11 (wait-with-deadline
//! admission per worker and per command, per-command caps, the `waiting` count, `retry_after`)
//! and #12 (per-incarnation accounting).

mod command_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use command_support::{
    Gate, command, dispatch_in_background, gated, idle, ok_handler, plain, start_with,
};
use support::{spawn, within};
use tokio::time::Instant;
use workerkit_core::command::{AdmissionMode, CommandHandler, DispatchError, LimitScope};
use workerkit_core::{CommandRequest, CommandResponse, Runtime, handler_fn};

fn req(worker: &'static str, name: &'static str) -> CommandRequest {
    CommandRequest::new(worker, name)
}

/// The scope and limit of a `Saturated` rejection (panics on anything else).
fn saturated(err: &DispatchError) -> (LimitScope, usize) {
    match err {
        DispatchError::Saturated { scope, limit, .. } => (*scope, *limit),
        other => panic!("expected Saturated, got {other:?}"),
    }
}

fn wait(secs: u64) -> AdmissionMode {
    AdmissionMode::Wait(Duration::from_secs(secs))
}

// ---- fail-fast caps (the Go behaviour, plus per-command caps) --------------------------------

#[tokio::test(start_paused = true)]
async fn a_runtime_cap_saturates_across_workers() {
    let gate = Gate::new();
    let rt = Runtime::builder("rt")
        .command_concurrency(1)
        .build()
        .unwrap();
    start_with(&rt, idle("a").command(command("c", gated(&gate)))).await;
    start_with(&rt, idle("b").command(command("c", ok_handler()))).await;

    let first = dispatch_in_background(&rt, "a", "c");
    gate.arrived(1).await;
    let err = rt.dispatch(req("b", "c")).await.unwrap_err();
    assert_eq!(saturated(&err), (LimitScope::Runtime, 1));
    assert_eq!(err.code(), "saturated");
    assert_eq!(
        err.to_string(),
        "runtime command concurrency limit reached: limit=1"
    );
    assert!(err.is_rejection());
    assert!(err.retry_after().is_some());

    gate.release(1);
    within(first).await.unwrap().unwrap();
    assert!(rt.dispatch(req("b", "c")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_worker_cap_saturates_only_that_worker() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("a")
            .command_concurrency(1)
            .command(command("slow", gated(&gate)))
            .command(command("fast", ok_handler())),
    )
    .await;
    start_with(&rt, idle("b").command(command("fast", ok_handler()))).await;

    let first = dispatch_in_background(&rt, "a", "slow");
    gate.arrived(1).await;
    // The worker cap covers every command of the worker.
    let err = rt.dispatch(req("a", "fast")).await.unwrap_err();
    assert_eq!(saturated(&err), (LimitScope::Worker, 1));
    assert_eq!(
        err.to_string(),
        "worker command concurrency limit reached: limit=1"
    );
    assert!(rt.dispatch(req("b", "fast")).await.is_ok());

    gate.release(1);
    within(first).await.unwrap().unwrap();
    assert!(rt.dispatch(req("a", "fast")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_per_command_cap_saturates_only_that_command() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("capped", gated(&gate)).concurrency(2))
            .command(command("free", gated(&gate))),
    )
    .await;

    let a = dispatch_in_background(&rt, "w", "capped");
    let b = dispatch_in_background(&rt, "w", "capped");
    gate.arrived(2).await;
    let err = rt.dispatch(req("w", "capped")).await.unwrap_err();
    assert_eq!(saturated(&err), (LimitScope::Command, 2));
    assert_eq!(
        err.to_string(),
        "command concurrency limit reached: limit=2"
    );
    let c = dispatch_in_background(&rt, "w", "free");
    gate.arrived(3).await;

    gate.release(3);
    for task in [a, b, c] {
        within(task).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn limits_are_checked_runtime_then_worker_then_command() {
    let gate = Gate::new();
    let build = |runtime_cap: Option<usize>| {
        let builder = Runtime::builder("rt");
        match runtime_cap {
            Some(n) => builder.command_concurrency(n),
            None => builder,
        }
        .build()
        .unwrap()
    };
    for (runtime_cap, worker_cap, expected) in [
        (Some(1), Some(1), LimitScope::Runtime),
        (None, Some(1), LimitScope::Worker),
        (None, None, LimitScope::Command),
    ] {
        let rt = build(runtime_cap);
        let spec = idle("w").command(command("c", gated(&gate)).concurrency(1));
        let spec = match worker_cap {
            Some(n) => spec.command_concurrency(n),
            None => spec,
        };
        start_with(&rt, spec).await;
        let before = gate.count();
        let first = dispatch_in_background(&rt, "w", "c");
        gate.arrived(before + 1).await;
        let err = rt.dispatch(req("w", "c")).await.unwrap_err();
        assert_eq!(saturated(&err).0, expected);
        gate.release(1);
        within(first).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_builder_sets_a_default_worker_cap_and_workers_override_it() {
    let gate = Gate::new();
    let rt = Runtime::builder("rt")
        .worker_command_concurrency(1)
        .build()
        .unwrap();
    start_with(&rt, idle("default").command(command("c", gated(&gate)))).await;
    start_with(
        &rt,
        idle("wide")
            .command_concurrency(2)
            .command(command("c", gated(&gate))),
    )
    .await;

    let d1 = dispatch_in_background(&rt, "default", "c");
    let w1 = dispatch_in_background(&rt, "wide", "c");
    let w2 = dispatch_in_background(&rt, "wide", "c");
    gate.arrived(3).await;
    assert_eq!(
        saturated(&rt.dispatch(req("default", "c")).await.unwrap_err()),
        (LimitScope::Worker, 1)
    );
    assert_eq!(
        saturated(&rt.dispatch(req("wide", "c")).await.unwrap_err()),
        (LimitScope::Worker, 2)
    );
    gate.release(3);
    for task in [d1, w1, w2] {
        within(task).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_never_overshoot_under_concurrent_dispatch() {
    // Real threads, explicit synchronisation: the check and the increment are atomic.
    let gate = Gate::new();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let handler = |gate: &Gate| {
        let gate = gate.clone();
        let running = Arc::clone(&running);
        let peak = Arc::clone(&peak);
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                gate.pass().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(CommandResponse::empty())
            }
        })
    };
    let rt = Runtime::builder("rt")
        .command_concurrency(5)
        .build()
        .unwrap();
    for w in ["a", "b", "c", "d"] {
        rt.register(
            idle(w)
                .command_concurrency(2)
                .command(command("c", handler(&gate))),
        )
        .unwrap();
    }
    rt.start_all().await.unwrap();

    let tasks: Vec<_> = (0..64)
        .map(|i| dispatch_in_background(&rt, ["a", "b", "c", "d"][i % 4], "c"))
        .collect();
    // Every dispatch either got a slot (and waits at the gate) or was rejected: wait until the
    // rejected ones are done and the admitted ones arrived.
    gate.arrived(5).await;
    let mut admitted = Vec::new();
    let mut rejected = 0;
    for task in tasks {
        if task.is_finished() {
            let err = task.await.unwrap().unwrap_err();
            assert!(matches!(err, DispatchError::Saturated { .. }), "{err:?}");
            rejected += 1;
        } else {
            admitted.push(task);
        }
    }
    // A task may still be on its way to a rejection: let the admitted ones through and count.
    gate.release(64);
    let mut ok = 0;
    for task in admitted {
        match within(task).await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => {
                assert!(matches!(err, DispatchError::Saturated { .. }), "{err:?}");
                rejected += 1;
            }
        }
    }
    assert_eq!(ok + rejected, 64);
    assert!(ok >= 5, "at least the runtime cap was admitted: {ok}");
    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(rt.status().in_flight, 0);
}

// ---- wait-with-deadline admission (§11.2 #11) -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_waiting_dispatch_is_admitted_when_a_slot_frees_and_counts_as_waiting() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(wait(30))
            .command(command("c", gated(&gate))),
    )
    .await;

    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let second = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    let status = rt.worker("w").unwrap().status;
    assert_eq!((status.in_flight, status.waiting), (1, 1));
    assert_eq!(
        serde_json::to_value(&status).unwrap()["waiting"],
        serde_json::json!(1)
    );
    assert!(!second.is_finished());

    let before = Instant::now();
    gate.release(1);
    within(first).await.unwrap().unwrap();
    gate.arrived(2).await;
    // Admitted by notification as soon as the slot was released: no time passed.
    assert_eq!(before.elapsed(), Duration::ZERO);
    let status = rt.worker("w").unwrap().status;
    assert_eq!((status.in_flight, status.waiting), (1, 0));
    gate.release(1);
    within(second).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiting_dispatch_is_rejected_as_saturated_when_its_wait_runs_out() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(wait(5))
            .command(command("c", gated(&gate))),
    )
    .await;
    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;

    let before = Instant::now();
    let err = within(rt.dispatch(req("w", "c"))).await.unwrap_err();
    assert_eq!(before.elapsed(), Duration::from_secs(5));
    assert_eq!(saturated(&err), (LimitScope::Worker, 1));
    assert!(err.retry_after().is_some());
    assert_eq!(rt.worker("w").unwrap().status.waiting, 0);
    assert_eq!(
        gate.count(),
        1,
        "the handler never ran for the rejected dispatch"
    );

    gate.release(1);
    within(first).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn admission_mode_is_set_per_command_per_worker_and_by_runtime_default() {
    let gate = Gate::new();
    let rt = Runtime::builder("rt")
        .command_admission(wait(7))
        .no_command_timeout()
        .build()
        .unwrap();
    start_with(
        &rt,
        idle("w")
            .command_admission(AdmissionMode::FailFast)
            .command(command("fast", gated(&gate)).concurrency(1))
            .command(
                command("patient", gated(&gate))
                    .concurrency(1)
                    .admission(wait(3)),
            ),
    )
    .await;
    start_with(
        &rt,
        idle("inherits").command(command("c", gated(&gate)).concurrency(1)),
    )
    .await;
    let busy = [
        dispatch_in_background(&rt, "w", "fast"),
        dispatch_in_background(&rt, "w", "patient"),
        dispatch_in_background(&rt, "inherits", "c"),
    ];
    gate.arrived(3).await;

    for (worker, name, expected) in [
        ("w", "fast", Duration::ZERO),
        ("w", "patient", Duration::from_secs(3)),
        ("inherits", "c", Duration::from_secs(7)),
    ] {
        let before = Instant::now();
        let err = within(rt.dispatch(req(worker, name))).await.unwrap_err();
        assert_eq!(saturated(&err).0, LimitScope::Command, "{worker}/{name}");
        assert_eq!(before.elapsed(), expected, "{worker}/{name}");
    }
    gate.release(3);
    for task in busy {
        within(task).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_on_the_runtime_cap_is_woken_by_a_release_on_another_worker() {
    let gate = Gate::new();
    let rt = Runtime::builder("rt")
        .command_concurrency(1)
        .command_admission(wait(30))
        .no_command_timeout()
        .build()
        .unwrap();
    start_with(&rt, idle("a").command(command("c", gated(&gate)))).await;
    start_with(&rt, idle("b").command(command("c", ok_handler()))).await;
    let first = dispatch_in_background(&rt, "a", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "b", "c");
    support::settle().await;
    assert_eq!(rt.worker("b").unwrap().status.waiting, 1);
    assert!(!waiter.is_finished());

    let before = Instant::now();
    gate.release(1);
    within(first).await.unwrap().unwrap();
    within(waiter).await.unwrap().unwrap();
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_stops_counting_as_waiting_and_takes_no_slot() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(wait(30))
            .command(command("c", gated(&gate))),
    )
    .await;
    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    assert_eq!(rt.worker("w").unwrap().status.waiting, 1);

    waiter.abort();
    assert!(within(waiter).await.unwrap_err().is_cancelled());
    assert_eq!(rt.worker("w").unwrap().status.waiting, 0);
    gate.release(1);
    within(first).await.unwrap().unwrap();
    assert_eq!(rt.status().in_flight, 0);
    // The slot is free for the next caller.
    gate.release(1);
    within(rt.dispatch(req("w", "c"))).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn several_waiters_are_all_admitted_as_slots_free() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(2)
            .command_admission(wait(60))
            .command(command("c", gated(&gate))),
    )
    .await;
    let tasks: Vec<_> = (0..6)
        .map(|_| dispatch_in_background(&rt, "w", "c"))
        .collect();
    gate.arrived(2).await;
    support::settle().await;
    assert_eq!(rt.worker("w").unwrap().status.waiting, 4);
    for n in [3, 4, 5, 6] {
        gate.release(1);
        gate.arrived(n).await;
        let status = rt.worker("w").unwrap().status;
        assert!(status.in_flight <= 2, "{status:?}");
    }
    gate.release(2);
    for task in tasks {
        within(task).await.unwrap().unwrap();
    }
    assert_eq!(rt.worker("w").unwrap().status.waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_rejected_promptly_when_its_worker_drains() {
    // A dispatch waiting for a slot of a worker that then drains (or stops) can never be
    // admitted: it is rejected as soon as the worker's admission closes, not when its wait
    // runs out.
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(wait(30))
            .command(command("c", gated(&gate))),
    )
    .await;
    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "w", "c");
    support::settle().await;

    let before = Instant::now();
    rt.drain("w").await.unwrap();
    let err = within(waiter).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "invalid_worker_state");
    assert!(
        before.elapsed() < Duration::from_secs(30),
        "rejected after {:?}",
        before.elapsed()
    );
    assert_eq!(rt.worker("w").unwrap().status.waiting, 0);
    gate.release(1);
    within(first).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_rejected_promptly_when_runtime_admission_closes() {
    let gate = Gate::new();
    let rt = Runtime::builder("rt")
        .no_command_timeout()
        .stop_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    start_with(
        &rt,
        idle("w")
            .command_concurrency(1)
            .command_admission(wait(30))
            .command(command("c", gated(&gate))),
    )
    .await;
    // Stop-all stops in reverse order: `slow` first, and its stop blocks, so `w` stays running
    // while the runtime's admission is closed.
    let slow = support::fake_with(&rt, "slow", |s| s);
    rt.start("slow").await.unwrap();
    slow.on_stop(workerkit_core::test_util::Step::Block);
    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "w", "c");
    support::settle().await;

    let before = Instant::now();
    let rt2 = rt.clone();
    let stopping = spawn(async move { rt2.stop_all().await });
    slow.entered(2).await;
    let err = within(waiter).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "runtime_not_accepting_work");
    assert!(
        before.elapsed() < Duration::from_secs(30),
        "rejected after {:?}",
        before.elapsed()
    );
    slow.release();
    gate.release(1);
    within(first).await.unwrap().unwrap();
    within(stopping).await.unwrap().unwrap();
}

// ---- retry-after hints ---------------------------------------------------------------------------

fn sleeping(gate: &Gate) -> impl CommandHandler {
    let gate = gate.clone();
    handler_fn(move |ctx| {
        let gate = gate.clone();
        async move {
            let secs: u64 = ctx.request().json().unwrap_or(0);
            if secs == 0 {
                gate.pass().await;
            } else {
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Ok(CommandResponse::empty())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn retry_after_follows_the_commands_typical_duration_within_bounds() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", sleeping(&gate)).concurrency(1)),
    )
    .await;
    let saturate = |rt: &Runtime| {
        let rt = rt.clone();
        let gate = gate.clone();
        async move {
            let count = gate.count();
            let busy = dispatch_in_background(&rt, "w", "c");
            gate.arrived(count + 1).await;
            let hint = rt
                .dispatch(req("w", "c"))
                .await
                .unwrap_err()
                .retry_after()
                .expect("a hint");
            gate.release(1);
            within(busy).await.unwrap().unwrap();
            hint
        }
    };

    // No history yet: the lower bound.
    assert_eq!(saturate(&rt).await, Duration::from_millis(10));

    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", sleeping(&gate)).concurrency(1)),
    )
    .await;
    rt.dispatch(req("w", "c").payload(serde_json::json!(2)))
        .await
        .unwrap();
    let hint = saturate(&rt).await;
    assert!(
        hint >= Duration::from_secs(2) && hint <= Duration::from_millis(2_010),
        "{hint:?}"
    );

    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", sleeping(&gate)).concurrency(1)),
    )
    .await;
    rt.dispatch(req("w", "c").payload(serde_json::json!(600)))
        .await
        .unwrap();
    assert_eq!(
        saturate(&rt).await,
        Duration::from_secs(60),
        "the upper bound"
    );
}

// ---- per-incarnation accounting (§11.2 #12) ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn old_incarnation_commands_do_not_count_against_the_new_incarnations_caps() {
    // Go counts old-generation commands against the new generation's caps (§4.8). Rust (the NEW
    // rule, §11.2 #12): caps are per incarnation; in-flight counts and idle waits still see
    // every incarnation.
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command(command("c", gated(&gate)).concurrency(1)),
    )
    .await;
    let old = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();

    let new = dispatch_in_background(&rt, "w", "c");
    gate.arrived(2).await;
    let status = rt.worker("w").unwrap().status;
    assert_eq!((status.incarnation, status.in_flight), (2, 2));
    let mut incarnations: Vec<u64> = rt.in_flight().iter().map(|c| c.incarnation).collect();
    incarnations.sort_unstable();
    assert_eq!(incarnations, [1, 2]);
    // The new incarnation's own command fills its caps.
    assert!(matches!(
        rt.dispatch(req("w", "c")).await.unwrap_err(),
        DispatchError::Saturated {
            scope: LimitScope::Worker,
            ..
        }
    ));

    // The old command finishing frees nothing of the new incarnation's caps (the gate lets
    // waiters through in arrival order, so the old one goes first).
    gate.release(1);
    within(old).await.unwrap().unwrap();
    let still: Vec<u64> = rt.in_flight().iter().map(|c| c.incarnation).collect();
    assert_eq!(still, [2]);
    assert_eq!(rt.worker("w").unwrap().status.in_flight, 1);
    assert!(matches!(
        rt.dispatch(req("w", "c")).await.unwrap_err(),
        DispatchError::Saturated { .. }
    ));

    gate.release(1);
    within(new).await.unwrap().unwrap();
    within(rt.wait_idle("w")).await.unwrap();
    gate.release(1);
    within(rt.dispatch(req("w", "c"))).await.unwrap();
    assert!(rt.in_flight().is_empty());
}
