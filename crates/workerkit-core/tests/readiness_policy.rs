//! Runtime readiness and liveness (spec §2.6, §3.1, §3.2, §6): readiness policies, the lifecycle
//! fallback, failure policies, `readiness()` items and reasons, `liveness()`, and the worker's
//! own readiness and admission signals.

mod support;

use std::sync::{Arc, Mutex};

use support::{fake, fake_with, recorded, recorded_with, spawn, state};
use workerkit_core::error::ContextError;
use workerkit_core::status::ReadinessImpact;
use workerkit_core::test_util::Step;
use workerkit_core::{
    FailurePolicy, LifecycleState, ReadinessPolicy, Runtime, WorkerContext, WorkerSpec, worker_fn,
};

use LifecycleState::{Draining, Failed, Registered, Running, Starting, Stopped};

fn non_contributing(spec: WorkerSpec) -> WorkerSpec {
    spec.contributes_to_readiness(false)
}

// ---- Readiness policies ----

#[tokio::test(start_paused = true)]
async fn zero_workers_is_not_ready() {
    for policy in ReadinessPolicy::ALL {
        let rt = Runtime::builder("rt")
            .readiness_policy(*policy)
            .build()
            .unwrap();
        let status = rt.status();
        assert_eq!(status.state, Registered);
        assert!(!status.ready, "{policy}");
        let readiness = rt.readiness();
        assert!(!readiness.ready);
        assert_eq!(readiness.reason, "runtime not ready: state=registered");
        assert_eq!(readiness.policy, *policy);
        assert!(readiness.items.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn contributing_workers_policy_ignores_non_contributing_readiness() {
    let rt = Runtime::builder("rt").build().unwrap();
    let main = fake(&rt, "main");
    let optional = fake_with(&rt, "optional", |s| {
        non_contributing(s).ready_on_start(false)
    });
    rt.start_all().await.unwrap();
    assert!(!rt.worker("optional").unwrap().status.ready);
    assert!(
        rt.status().ready,
        "an unready optional worker does not block"
    );

    main.context(0).unwrap().set_ready(false).unwrap();
    assert!(!rt.status().ready, "an unready contributing worker blocks");
    main.context(0).unwrap().set_ready(true).unwrap();
    assert!(rt.status().ready);

    // A non-contributing worker in transition is ignored too.
    optional.on_stop(Step::Block);
    let stopping = spawn({
        let rt = rt.clone();
        async move { rt.stop("optional").await }
    });
    optional.entered(2).await;
    assert_eq!(state(&rt, "optional"), LifecycleState::Stopping);
    assert!(rt.status().ready);
    optional.release();
    stopping.await.unwrap().unwrap();
    assert!(rt.status().ready);
}

#[tokio::test(start_paused = true)]
async fn all_workers_policy_needs_every_worker_running_and_ready() {
    let rt = Runtime::builder("rt")
        .readiness_policy(ReadinessPolicy::AllWorkers)
        .build()
        .unwrap();
    fake(&rt, "main");
    let optional = fake_with(&rt, "optional", |s| {
        non_contributing(s).ready_on_start(false)
    });
    rt.start("main").await.unwrap();
    assert!(
        !rt.status().ready,
        "a registered worker blocks under all_workers"
    );
    rt.start("optional").await.unwrap();
    assert!(
        !rt.status().ready,
        "the contribution flag is ignored under all_workers"
    );
    optional.context(0).unwrap().set_ready(true).unwrap();
    assert!(rt.status().ready);
    rt.stop("optional").await.unwrap();
    assert!(
        !rt.status().ready,
        "a stopped worker blocks under all_workers"
    );
    let readiness = rt.readiness();
    assert_eq!(readiness.policy, ReadinessPolicy::AllWorkers);
    assert!(
        readiness
            .items
            .iter()
            .all(|i| i.impact == ReadinessImpact::Blocking)
    );
}

#[tokio::test(start_paused = true)]
async fn with_no_contributing_worker_readiness_falls_back_to_the_lifecycle() {
    // Go RuntimeReadinessFallsBackWhenNoWorkersContribute and
    // RuntimeOptionDefaultsApplyAtRegistration: worker readiness flags do not matter then.
    let rt = Runtime::builder("rt")
        .contributes_to_readiness(false)
        .ready_on_start(false)
        .accepting_work_on_start(false)
        .build()
        .unwrap();
    fake(&rt, "a");
    let b = fake_with(&rt, "b", WorkerSpec::no_start_timeout);
    assert!(!rt.status().ready, "registered: not ready");
    rt.start("a").await.unwrap();
    let a = rt.worker("a").unwrap().status;
    assert!(!a.ready && !a.accepting_work, "runtime defaults applied");
    assert!(rt.status().ready, "running: ready by lifecycle");

    // Any worker in transition makes it unready.
    b.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("b").await }
    });
    b.entered(1).await;
    assert_eq!(state(&rt, "b"), Starting);
    assert!(!rt.status().ready, "starting: not ready");
    b.release();
    starting.await.unwrap().unwrap();
    assert!(rt.status().ready);

    rt.drain("a").await.unwrap();
    assert!(!rt.status().ready, "draining: not ready");
    rt.stop("a").await.unwrap();
    assert!(
        rt.status().ready,
        "b still runs and nothing is in transition"
    );
    rt.stop("b").await.unwrap();
    assert!(!rt.status().ready, "nothing running: not ready");
}

// ---- Failure policies (§6) ----

#[tokio::test(start_paused = true)]
async fn an_isolated_failure_of_a_non_contributing_worker_does_not_block_readiness() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let optional = fake_with(&rt, "optional", non_contributing);
    rt.start_all().await.unwrap();
    optional.context(0).unwrap().report_failure("boom").unwrap();
    let status = rt.status();
    assert_eq!(status.state, Running);
    assert!(status.ready);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn an_isolated_failure_of_a_contributing_worker_blocks_readiness_only() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let other = fake(&rt, "other");
    rt.start_all().await.unwrap();
    other.context(0).unwrap().report_failure("boom").unwrap();
    let status = rt.status();
    assert_eq!(
        status.state, Running,
        "isolate keeps the aggregate while others run"
    );
    assert!(
        !status.ready,
        "a failed contributing worker is not running and ready"
    );
    assert!(rt.liveness().live);
    let main = rt.worker("main").unwrap().status;
    assert!(main.ready && main.accepting_work, "others are unaffected");
}

#[tokio::test(start_paused = true)]
async fn an_isolated_failure_fails_the_aggregate_once_nothing_is_active() {
    // §6 / §11.3 #30: rule 7 of the aggregate.
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let bad = fake(&rt, "bad");
    rt.start_all().await.unwrap();
    bad.context(0).unwrap().report_failure("boom").unwrap();
    assert_eq!(rt.status().state, Running);
    rt.stop("main").await.unwrap();
    assert_eq!(rt.status().state, Failed);
    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert!(
        liveness.reasons.iter().any(|r| r.contains("rt/bad")),
        "{liveness:?}"
    );
    // Stopping the failed worker clears it.
    rt.stop("bad").await.unwrap();
    assert_eq!(rt.status().state, Stopped);
    assert!(rt.liveness().live);
}

#[tokio::test(start_paused = true)]
async fn mark_runtime_unready_forces_unready_even_for_a_non_contributing_worker() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let optional = fake_with(&rt, "optional", |s| {
        non_contributing(s).failure_policy(FailurePolicy::MarkRuntimeUnready)
    });
    rt.start_all().await.unwrap();
    assert!(rt.status().ready);
    optional.context(0).unwrap().report_failure("boom").unwrap();
    let status = rt.status();
    assert_eq!(status.state, Running, "the aggregate state is unchanged");
    assert!(!status.ready);
    assert!(rt.liveness().live, "unready, not dead");
    let main = rt.worker("main").unwrap().status;
    assert!(main.ready && main.accepting_work);

    // Its effect lasts only while the worker is failed.
    rt.stop("optional").await.unwrap();
    assert!(rt.status().ready);
}

#[tokio::test(start_paused = true)]
async fn a_runtime_default_failure_policy_applies_at_registration() {
    let rt = Runtime::builder("rt")
        .failure_policy(FailurePolicy::MarkRuntimeUnready)
        .build()
        .unwrap();
    fake(&rt, "main");
    let optional = fake_with(&rt, "optional", non_contributing);
    let isolated = fake_with(&rt, "isolated", |s| {
        non_contributing(s).failure_policy(FailurePolicy::Isolate)
    });
    rt.start_all().await.unwrap();
    assert_eq!(
        rt.worker("optional").unwrap().status.failure_policy,
        FailurePolicy::MarkRuntimeUnready
    );
    isolated.context(0).unwrap().report_failure("boom").unwrap();
    assert!(rt.status().ready, "the worker's own policy wins");
    optional.context(0).unwrap().report_failure("boom").unwrap();
    assert!(!rt.status().ready);
}

#[tokio::test(start_paused = true)]
async fn fail_runtime_fails_the_aggregate_above_active_states() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    let slow = fake_with(&rt, "slow", WorkerSpec::no_start_timeout);
    let critical = fake_with(&rt, "critical", |s| {
        non_contributing(s).failure_policy(FailurePolicy::FailRuntime)
    });
    rt.start("main").await.unwrap();
    rt.start("critical").await.unwrap();
    critical
        .context(0)
        .unwrap()
        .report_failure("password=hunter2")
        .unwrap();
    let status = rt.status();
    assert_eq!(status.state, Failed, "failed although `main` runs");
    assert!(!status.ready);

    let liveness = rt.liveness();
    assert!(!liveness.live);
    assert_eq!(liveness.reasons[0], "runtime \"rt\" failed");
    assert!(
        liveness.reasons[1..]
            .iter()
            .any(|r| r.contains("rt/critical")
                && r.contains("worker_failed")
                && r.contains("fail_runtime")),
        "{liveness:?}"
    );
    assert!(
        !liveness.reasons.concat().contains("hunter2"),
        "{liveness:?}"
    );

    // Failed wins over starting, too.
    slow.on_start(Step::Block);
    let starting = spawn({
        let rt = rt.clone();
        async move { rt.start("slow").await }
    });
    slow.entered(1).await;
    assert_eq!(rt.status().state, Failed);
    slow.release();
    starting.await.unwrap().unwrap();
    assert_eq!(rt.status().state, Failed);

    // Stopping the failed worker ends its effect.
    rt.stop("critical").await.unwrap();
    assert_eq!(rt.status().state, Running);
    assert!(rt.status().ready);
    assert!(rt.liveness().live);
}

// ---- readiness() and liveness() ----

#[tokio::test(start_paused = true)]
async fn readiness_items_report_each_worker_and_its_impact() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    fake_with(&rt, "optional", non_contributing);
    fake_with(&rt, "unready", |s| {
        non_contributing(s).failure_policy(FailurePolicy::MarkRuntimeUnready)
    });
    fake_with(&rt, "critical", |s| {
        non_contributing(s).failure_policy(FailurePolicy::FailRuntime)
    });
    fake(&rt, "later");
    for name in ["main", "optional", "unready", "critical"] {
        rt.start(name).await.unwrap();
    }
    rt.drain("optional").await.unwrap();

    let readiness = rt.readiness();
    let items: Vec<_> = readiness
        .items
        .iter()
        .map(|i| (i.name.as_ref(), i.ready, i.state, i.impact))
        .collect();
    use ReadinessImpact::{Blocking, NonBlocking};
    assert_eq!(
        items,
        [
            ("main", true, Running, Blocking),
            ("optional", false, Draining, NonBlocking),
            ("unready", true, Running, Blocking),
            ("critical", true, Running, Blocking),
            ("later", false, Registered, Blocking),
        ]
    );
    assert!(!readiness.ready);
    assert_eq!(readiness.reason, "runtime not ready: state=draining");
    assert_eq!(readiness.policy, ReadinessPolicy::ContributingWorkers);
}

#[tokio::test(start_paused = true)]
async fn readiness_reason_says_ready_or_names_the_state() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    assert_eq!(rt.readiness().reason, "runtime not ready: state=registered");
    rt.start("w").await.unwrap();
    let readiness = rt.readiness();
    assert!(readiness.ready);
    assert_eq!(readiness.reason, "runtime ready");
    w.context(0).unwrap().set_ready(false).unwrap();
    assert_eq!(rt.readiness().reason, "runtime not ready: state=running");
    rt.stop("w").await.unwrap();
    assert_eq!(rt.readiness().reason, "runtime not ready: state=stopped");
}

#[tokio::test(start_paused = true)]
async fn a_worker_item_is_ready_only_while_running_and_ready() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    assert!(rt.readiness().items[0].ready);
    w.context(0).unwrap().set_ready(false).unwrap();
    assert!(!rt.readiness().items[0].ready);
    w.context(0).unwrap().set_ready(true).unwrap();
    rt.drain("w").await.unwrap();
    assert!(!rt.readiness().items[0].ready);
}

#[tokio::test(start_paused = true)]
async fn liveness_is_live_unless_the_aggregate_failed() {
    let rt = Runtime::builder("rt").build().unwrap();
    let a = fake(&rt, "a");
    let live = rt.liveness();
    assert!(
        live.live && live.reasons.is_empty(),
        "a fresh runtime is live"
    );
    rt.start("a").await.unwrap();
    assert!(rt.liveness().live);
    rt.drain("a").await.unwrap();
    assert!(rt.liveness().live, "draining is live");
    rt.stop("a").await.unwrap();
    assert!(rt.liveness().live, "stopped is live");
    a.on_start(Step::Fail("boom".into()));
    rt.start("a").await.unwrap_err();
    let dead = rt.liveness();
    assert!(!dead.live);
    assert_eq!(dead.reasons.len(), 2, "{dead:?}");
}

// ---- The aggregate state ----

#[tokio::test(start_paused = true)]
async fn a_mix_of_registered_and_stopped_workers_is_stopped() {
    // Go keeps the previous aggregate (sticky `stopping`, §11.1 #3); Rust says `stopped`.
    let (rt, recorder) = recorded();
    fake(&rt, "a");
    fake(&rt, "b");
    rt.start("a").await.unwrap();
    rt.stop("a").await.unwrap();
    assert_eq!(state(&rt, "b"), Registered);
    let status = rt.status();
    assert_eq!(status.state, Stopped);
    let last = status.last_transition.unwrap();
    assert_eq!((last.from, last.to), (LifecycleState::Stopping, Stopped));
    assert_eq!(
        recorder.briefs().last().map(String::as_str),
        Some("T rt stopping->stopped")
    );
}

#[tokio::test(start_paused = true)]
async fn registering_a_worker_into_a_stopped_runtime_keeps_it_stopped() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "a");
    rt.start("a").await.unwrap();
    rt.stop("a").await.unwrap();
    fake(&rt, "b");
    assert_eq!(rt.status().state, Stopped);
    assert_eq!(rt.status().workers, 2);
}

// ---- The worker's own signals ----

#[tokio::test(start_paused = true)]
async fn ready_on_start_false_keeps_the_worker_unready_until_it_says_so() {
    let (rt, recorder) = recorded();
    let w = fake_with(&rt, "w", |s| s.ready_on_start(false));
    let status = rt.start("w").await.unwrap();
    assert_eq!(status.state, Running);
    assert!(!status.ready);
    assert!(
        status.accepting_work,
        "readiness and admission are separate"
    );
    assert!(!rt.status().ready);
    recorder.clear();

    w.context(0).unwrap().set_ready(true).unwrap();
    assert!(rt.status().ready);
    assert_eq!(recorder.briefs(), ["R rt/w true", "R rt true"]);
    // The same value again: no error and no event.
    w.context(0).unwrap().set_ready(true).unwrap();
    assert_eq!(recorder.briefs().len(), 2);
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn values_set_during_start_survive_the_end_of_the_start() {
    let rt = Runtime::builder("rt").build().unwrap();
    let seen = Seen::default();
    let during = seen.clone();
    // ready_on_start(true) and accepting_work_on_start(true) are the defaults; the worker says
    // otherwise during start, and that wins.
    rt.register(WorkerSpec::new(
        "says_no",
        worker_fn(move |ctx: WorkerContext| {
            let seen = during.clone();
            async move {
                let status = ctx.status().unwrap();
                seen.push(format!(
                    "{} {} {} {}",
                    ctx.name(),
                    ctx.qualified_name(),
                    status.state,
                    ctx.incarnation()
                ));
                ctx.set_ready(false)?;
                ctx.set_accepting_work(false)?;
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.register(
        WorkerSpec::new(
            "says_yes",
            worker_fn(|ctx: WorkerContext| async move {
                ctx.set_ready(true)?;
                ctx.set_accepting_work(true)?;
                Ok(())
            }),
        )
        .ready_on_start(false)
        .accepting_work_on_start(false),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    assert_eq!(seen.get(), ["says_no rt/says_no starting 1"]);
    let no = rt.worker("says_no").unwrap().status;
    assert!(!no.ready && !no.accepting_work);
    let yes = rt.worker("says_yes").unwrap().status;
    assert!(yes.ready && yes.accepting_work);
    assert!(!rt.status().ready);
}

#[tokio::test(start_paused = true)]
async fn values_set_during_an_earlier_start_do_not_carry_over() {
    let rt = Runtime::builder("rt").build().unwrap();
    let first = Arc::new(Mutex::new(true));
    let flag = Arc::clone(&first);
    rt.register(WorkerSpec::new(
        "w",
        worker_fn(move |ctx: WorkerContext| {
            let first = std::mem::replace(&mut *flag.lock().unwrap(), false);
            async move {
                if first {
                    ctx.set_ready(false)?;
                }
                Ok(())
            }
        }),
    ))
    .unwrap();
    rt.start("w").await.unwrap();
    assert!(!rt.worker("w").unwrap().status.ready);
    rt.stop("w").await.unwrap();
    rt.start("w").await.unwrap();
    assert!(
        rt.worker("w").unwrap().status.ready,
        "the second start takes ready_on_start"
    );
}

#[tokio::test(start_paused = true)]
async fn set_ready_true_while_draining_is_ignored() {
    // Rust rule (§11.1 #2): Go returns ErrInvalidWorkerState; here it is Ok and changes nothing.
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    recorder.clear();
    let ctx = w.context(0).unwrap();
    ctx.set_ready(true).unwrap();
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, Draining);
    assert!(!status.ready);
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());
    // False is allowed too (and already the value).
    ctx.set_ready(false).unwrap();
    assert!(recorder.briefs().is_empty());
}

#[tokio::test(start_paused = true)]
async fn set_accepting_work_true_while_draining_is_refused() {
    // Only readiness got the "ignore while draining" rule; admission keeps Go's (§2.2).
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    rt.drain("w").await.unwrap();
    let ctx = w.context(0).unwrap();
    let err = ctx.set_accepting_work(true).unwrap_err();
    assert!(
        matches!(
            &err,
            ContextError::InvalidState { state: Draining, action, .. } if *action == "set accepting work"
        ),
        "{err:?}"
    );
    ctx.set_accepting_work(false).unwrap();
    assert!(!rt.worker("w").unwrap().status.accepting_work);
}

#[tokio::test(start_paused = true)]
async fn set_accepting_work_changes_admission_without_events() {
    let (rt, recorder) = recorded();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    recorder.clear();
    let ctx = w.context(0).unwrap();
    ctx.set_accepting_work(false).unwrap();
    let status = rt.worker("w").unwrap().status;
    assert!(!status.accepting_work);
    assert!(status.ready, "admission does not touch readiness");
    assert!(rt.status().ready);
    ctx.set_accepting_work(true).unwrap();
    assert!(rt.worker("w").unwrap().status.accepting_work);
    assert!(recorder.briefs().is_empty(), "{:?}", recorder.briefs());
}

#[tokio::test(start_paused = true)]
async fn readiness_and_admission_calls_are_refused_when_not_active() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    let ctx = w.context(0).unwrap();
    rt.stop("w").await.unwrap();
    for result in [ctx.set_ready(true), ctx.set_ready(false)] {
        assert!(
            matches!(
                result,
                Err(ContextError::InvalidState { state: Stopped, .. })
            ),
            "{result:?}"
        );
    }
    let err = ctx.set_accepting_work(false).unwrap_err();
    assert_eq!(err.code(), "invalid_worker_state");
    let status = rt.worker("w").unwrap().status;
    assert!(!status.ready && !status.accepting_work);

    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();
    let failed_ctx = w.context(1).unwrap();
    assert!(matches!(
        failed_ctx.set_ready(true),
        Err(ContextError::InvalidState { state: Failed, .. })
    ));
    assert!(!rt.worker("w").unwrap().status.ready);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_unready_while_stopping() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    rt.start("w").await.unwrap();
    w.on_stop(Step::Block);
    let stopping = spawn({
        let rt = rt.clone();
        async move { rt.stop("w").await }
    });
    w.entered(2).await;
    let ctx = w.context(0).unwrap();
    assert!(matches!(
        ctx.set_ready(true),
        Err(ContextError::InvalidState {
            state: LifecycleState::Stopping,
            ..
        })
    ));
    let status = rt.worker("w").unwrap().status;
    assert!(!status.ready && !status.accepting_work);
    assert!(!rt.status().ready);
    w.release();
    stopping.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_worker_defaults_from_the_runtime_are_copied_at_registration() {
    let (rt, _recorder) =
        recorded_with(|b| b.ready_on_start(false).contributes_to_readiness(false));
    fake(&rt, "w");
    let status = rt.start("w").await.unwrap();
    assert!(!status.ready);
    assert!(!status.contributes_to_readiness);
    assert!(status.accepting_work);
}
