//! Command observation (spec §7.1–§7.3): one start and exactly one end per dispatch to a
//! resolved command, the observation's scope around every handler poll, metadata, panic
//! containment, ordering, and private causes (Go `RecordingObserverSupportsConcurrentDispatches`,
//! `DispatchObservationRequiresRegisteredTarget`, `CommandFailureKeepsArbitraryCauseOutOfOperationalData`,
//! `WithObserverNilAndSafeObserverWrapping`, MultiObserver reverse end order).

mod command_support;
mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use command_support::{
    Gate, command, dispatch_in_background, dispatch_request_in_background, failing, gated, idle,
    ok_handler, quiet_expected_panics, start_with,
};
use support::{recorded, within};
use workerkit_core::command::{AdmissionMode, DispatchId};
use workerkit_core::failure::BoxError;
use workerkit_core::observe::{
    CommandEndEvent, CommandObservation, CommandOutcome, CommandStartEvent,
};
use workerkit_core::test_util::RecordingObserver;
use workerkit_core::{CommandRequest, CommandResponse, Observer, Runtime, handler_fn};

fn req() -> CommandRequest {
    CommandRequest::new("w", "c")
}

// ---- a configurable test observer ----------------------------------------------------------------

thread_local! {
    /// The observation scopes the current thread is inside, outermost first.
    static SCOPES: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

fn current_scopes() -> Vec<&'static str> {
    SCOPES.with(|s| s.borrow().clone())
}

/// Where a [`Probe`] panics on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum PanicAt {
    #[default]
    Nowhere,
    Start,
    ScopeBeforePoll,
    ScopeAfterPoll,
    End,
}

/// What a [`Probe`] saw.
#[derive(Debug, Default)]
struct Seen {
    log: Mutex<Vec<String>>,
    ends: Mutex<HashMap<DispatchId, usize>>,
    outcomes: Mutex<Vec<(CommandOutcome, u32)>>,
    dropped_without_end: AtomicUsize,
    /// For each end: whether the dispatch was already gone from `in_flight()`.
    released_before_end: Mutex<Vec<bool>>,
}

/// An observer that names its scope, logs starts and ends, counts ends per dispatch, and
/// panics where it is told to.
struct Probe {
    name: &'static str,
    panic_at: PanicAt,
    poll_twice: bool,
    seen: Arc<Seen>,
    runtime: Arc<OnceLock<Runtime>>,
}

impl Probe {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            panic_at: PanicAt::Nowhere,
            poll_twice: false,
            seen: Arc::default(),
            runtime: Arc::default(),
        }
    }

    fn panicking(mut self, at: PanicAt) -> Self {
        self.panic_at = at;
        self
    }
}

impl Observer for Probe {
    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        self.seen.log.lock().unwrap().push(format!(
            "{} start {}/{}",
            self.name, event.worker, event.command
        ));
        if self.panic_at == PanicAt::Start {
            panic!("expected panic: observer start");
        }
        Some(Box::new(ProbeObservation {
            name: self.name,
            panic_at: self.panic_at,
            poll_twice: self.poll_twice,
            seen: Arc::clone(&self.seen),
            runtime: Arc::clone(&self.runtime),
            ended: AtomicBool::new(false),
        }))
    }
}

struct ProbeObservation {
    name: &'static str,
    panic_at: PanicAt,
    poll_twice: bool,
    seen: Arc<Seen>,
    runtime: Arc<OnceLock<Runtime>>,
    ended: AtomicBool,
}

impl CommandObservation for ProbeObservation {
    fn in_scope(&self, poll: &mut dyn FnMut()) {
        if self.panic_at == PanicAt::ScopeBeforePoll {
            panic!("expected panic: observer scope before poll");
        }
        SCOPES.with(|s| s.borrow_mut().push(self.name));
        poll();
        if self.poll_twice {
            poll();
        }
        SCOPES.with(|s| s.borrow_mut().pop());
        if self.panic_at == PanicAt::ScopeAfterPoll {
            panic!("expected panic: observer scope after poll");
        }
    }

    fn end(self: Box<Self>, event: &CommandEndEvent) {
        self.ended.store(true, Ordering::SeqCst);
        let seen = &self.seen;
        seen.log.lock().unwrap().push(format!(
            "{} end {}/{} {}",
            self.name,
            event.worker,
            event.command,
            event.outcome.as_str()
        ));
        *seen
            .ends
            .lock()
            .unwrap()
            .entry(event.dispatch_id)
            .or_default() += 1;
        seen.outcomes
            .lock()
            .unwrap()
            .push((event.outcome, event.attempts));
        if let Some(rt) = self.runtime.get() {
            let gone = rt.in_flight().iter().all(|c| c.id != event.dispatch_id);
            seen.released_before_end.lock().unwrap().push(gone);
        }
        if self.panic_at == PanicAt::End {
            panic!("expected panic: observer end");
        }
    }
}

impl Drop for ProbeObservation {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::SeqCst) {
            self.seen.dropped_without_end.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn runtime_with(probes: Vec<Probe>) -> (Runtime, Vec<Arc<Seen>>) {
    let mut builder = Runtime::builder("rt");
    let mut seen = Vec::new();
    let mut cells = Vec::new();
    for probe in probes {
        seen.push(Arc::clone(&probe.seen));
        cells.push(Arc::clone(&probe.runtime));
        builder = builder.with_observer(probe);
    }
    let rt = builder.build().unwrap();
    for cell in cells {
        let _ = cell.set(rt.clone());
    }
    (rt, seen)
}

// ---- start and end ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_outcome_gets_one_start_and_exactly_one_end_with_the_same_id() {
    quiet_expected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    rt.register(idle("other")).unwrap();
    start_with(
        &rt,
        idle("w")
            .command(command("ok", ok_handler()))
            .command(command("fail", failing("x", &calls)))
            .command(
                command("slow", command_support::until_cancelled()).timeout(Duration::from_secs(1)),
            )
            .command(command(
                "boom",
                handler_fn(|_ctx| async { panic!("expected panic: boom") }),
            )),
    )
    .await;
    recorder.clear();

    let mut ids = Vec::new();
    for name in ["ok", "fail", "slow", "boom"] {
        let result = rt.dispatch(CommandRequest::new("w", name)).await;
        ids.push(match result {
            Ok(out) => out.id,
            Err(err) => err.dispatch_id().expect("admitted"),
        });
    }
    // The worker failed with the panic: the next one is rejected at admission.
    rt.dispatch(CommandRequest::new("w", "ok"))
        .await
        .unwrap_err();

    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!((starts.len(), ends.len()), (5, 5));
    for (start, end) in starts.iter().zip(&ends) {
        assert_eq!(start.dispatch_id, end.dispatch_id);
        assert_eq!((&*start.worker, &*start.runtime), ("rt/w", "rt"));
        assert_eq!(start.command, end.command);
        assert_eq!(start.started_at, end.started_at);
        assert!(end.ended_at >= end.started_at);
    }
    assert_eq!(
        ids,
        starts[..4]
            .iter()
            .map(|s| s.dispatch_id)
            .collect::<Vec<_>>()
    );
    let summary: Vec<(CommandOutcome, u32, Option<String>)> = ends
        .iter()
        .map(|e| {
            (
                e.outcome,
                e.attempts,
                e.failure.as_ref().map(|f| f.code().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (CommandOutcome::Succeeded, 1, None),
            (CommandOutcome::Failed, 1, Some("command_failed".into())),
            (
                CommandOutcome::TimedOut,
                1,
                Some("deadline_exceeded".into())
            ),
            (CommandOutcome::Panicked, 1, Some("panic".into())),
            (
                CommandOutcome::Rejected,
                0,
                Some("invalid_worker_state".into())
            ),
        ]
    );
    assert_eq!(ends[2].duration, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn dispatch_observation_requires_a_registered_target() {
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .command_concurrency(1)
            .command(command("c", ok_handler())),
    )
    .await;
    rt.register(idle("stopped").command(command("c", ok_handler())))
        .unwrap();
    recorder.clear();

    for (worker, name) in [
        ("Bad Worker", "c"),
        ("missing", "c"),
        ("w", "Bad Name"),
        ("w", "missing"),
        ("other-runtime/w", "c"),
    ] {
        let err = rt
            .dispatch(CommandRequest::new(worker, name))
            .await
            .unwrap_err();
        assert!(err.is_rejection());
    }
    assert!(
        recorder.command_starts().is_empty() && recorder.command_ends().is_empty(),
        "caller-supplied strings never become telemetry: {:?}",
        recorder.all_briefs()
    );

    // A known command rejected at admission: one start, one end, 0 attempts, canonical names.
    let err = rt
        .dispatch(CommandRequest::new("rt/stopped", "c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_worker_state");
    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!((starts.len(), ends.len()), (1, 1));
    assert_eq!(
        (&*starts[0].worker, &*starts[0].command),
        ("rt/stopped", "c")
    );
    assert_eq!(ends[0].attempts, 0);
    assert_eq!(ends[0].outcome, CommandOutcome::Rejected);
    assert_eq!(
        ends[0].failure.as_ref().map(|f| (f.code(), f.message())),
        Some(("invalid_worker_state", "invalid worker state"))
    );
    assert!(ends[0].cause.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_saturated_rejection_is_observed_as_rejected() {
    let gate = Gate::new();
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(command("c", gated(&gate)).concurrency(1)),
    )
    .await;
    let busy = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    rt.dispatch(req()).await.unwrap_err();
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!((end.outcome, end.attempts), (CommandOutcome::Rejected, 0));
    assert_eq!(end.failure.unwrap().code(), "saturated");
    gate.release(1);
    within(busy).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn metadata_reaches_observers_at_start() {
    let (rt, recorder) = recorded();
    start_with(&rt, idle("w").command(command("c", ok_handler()))).await;
    rt.dispatch(
        req()
            .metadata(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .metadata("tenant", "acme"),
    )
    .await
    .unwrap();
    let start = recorder.command_starts().pop().unwrap();
    assert_eq!(
        start.metadata.get("traceparent").map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(
        start.metadata.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(start.metadata.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_start_is_observed_before_admission_and_the_end_after_slots_are_released() {
    let gate = Gate::new();
    let (rt, seen) = runtime_with(vec![Probe::new("p")]);
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(AdmissionMode::Wait(Duration::from_secs(30)))
            .command(command("c", gated(&gate))),
    )
    .await;
    let first = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    // Both started (the second is still waiting for a slot), neither ended.
    assert_eq!(
        *seen[0].log.lock().unwrap(),
        ["p start rt/w/c", "p start rt/w/c"]
    );

    gate.release(2);
    within(first).await.unwrap().unwrap();
    within(waiter).await.unwrap().unwrap();
    assert_eq!(*seen[0].released_before_end.lock().unwrap(), [true, true]);
    assert_eq!(rt.status().in_flight, 0);
}

// ---- scope ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn in_scope_wraps_every_poll_of_the_handler_first_observer_outermost() {
    let seen_in_handler: Arc<Mutex<Vec<Vec<&'static str>>>> = Arc::default();
    let handler = {
        let seen_in_handler = Arc::clone(&seen_in_handler);
        handler_fn(move |_ctx| {
            let seen_in_handler = Arc::clone(&seen_in_handler);
            async move {
                seen_in_handler.lock().unwrap().push(current_scopes());
                tokio::task::yield_now().await;
                seen_in_handler.lock().unwrap().push(current_scopes());
                tokio::time::sleep(Duration::from_secs(1)).await;
                seen_in_handler.lock().unwrap().push(current_scopes());
                Ok(CommandResponse::empty())
            }
        })
    };
    let (rt, seen) = runtime_with(vec![Probe::new("outer"), Probe::new("inner")]);
    start_with(&rt, idle("w").command(command("c", handler))).await;

    assert!(current_scopes().is_empty());
    rt.dispatch(req()).await.unwrap();
    assert!(
        current_scopes().is_empty(),
        "no scope leaks out of the dispatch"
    );
    assert_eq!(
        *seen_in_handler.lock().unwrap(),
        vec![vec!["outer", "inner"]; 3],
        "in scope at every poll"
    );
    // Ends run in reverse order of the observers.
    let log: Vec<String> = seen
        .iter()
        .flat_map(|s| s.log.lock().unwrap().clone())
        .collect();
    assert_eq!(
        log,
        [
            "outer start rt/w/c",
            "outer end rt/w/c succeeded",
            "inner start rt/w/c",
            "inner end rt/w/c succeeded"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn observations_end_in_reverse_observer_order() {
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    struct Ordered(&'static str, Arc<Mutex<Vec<&'static str>>>);
    struct OrderedObservation(&'static str, Arc<Mutex<Vec<&'static str>>>);
    impl Observer for Ordered {
        fn on_command_start(&self, _e: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
            self.1.lock().unwrap().push(self.0);
            Some(Box::new(OrderedObservation(self.0, Arc::clone(&self.1))))
        }
    }
    impl CommandObservation for OrderedObservation {
        fn end(self: Box<Self>, _e: &CommandEndEvent) {
            self.1.lock().unwrap().push(self.0);
        }
    }
    let rt = Runtime::builder("rt")
        .with_observer(Ordered("a", Arc::clone(&order)))
        .with_observer(Ordered("b", Arc::clone(&order)))
        .with_observer(Ordered("c", Arc::clone(&order)))
        .build()
        .unwrap();
    start_with(&rt, idle("w").command(command("c", ok_handler()))).await;
    rt.dispatch(req()).await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "c", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn an_observer_that_polls_twice_in_its_scope_cannot_break_the_handler() {
    // A buggy `in_scope` that calls `poll` twice must not poll a finished handler again (which
    // would look like a handler panic and fail the worker).
    quiet_expected_panics();
    let mut probe = Probe::new("twice");
    probe.poll_twice = true;
    let (rt, seen) = runtime_with(vec![probe]);
    start_with(&rt, idle("w").command(command("c", ok_handler()))).await;
    let out = rt.dispatch(req()).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("ok"));
    assert_eq!(
        rt.worker("w").unwrap().status.state,
        workerkit_core::LifecycleState::Running
    );
    assert_eq!(
        *seen[0].outcomes.lock().unwrap(),
        [(CommandOutcome::Succeeded, 1)]
    );
}

// ---- panics in observers are contained -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn observer_panics_in_start_scope_and_end_are_contained_and_counted() {
    quiet_expected_panics();
    for at in [
        PanicAt::Start,
        PanicAt::ScopeBeforePoll,
        PanicAt::ScopeAfterPoll,
        PanicAt::End,
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let (rt, seen) = runtime_with(vec![
            Probe::new("healthy-first"),
            Probe::new("panicky").panicking(at),
            Probe::new("healthy-last"),
        ]);
        start_with(
            &rt,
            idle("w").command(command("c", command_support::counting(&calls))),
        )
        .await;

        let out = rt.dispatch(req()).await;
        assert!(out.is_ok(), "{at:?}: {out:?}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{at:?}: the handler ran once"
        );
        assert_eq!(
            rt.worker("w").unwrap().status.state,
            workerkit_core::LifecycleState::Running,
            "{at:?}: an observer's panic is not the worker's"
        );
        assert!(rt.observer_panics() >= 1, "{at:?}");
        // The healthy observers saw a complete, successful dispatch.
        for healthy in [&seen[0], &seen[2]] {
            assert_eq!(
                *healthy.outcomes.lock().unwrap(),
                [(CommandOutcome::Succeeded, 1)],
                "{at:?}"
            );
        }
        // A panicking start gives no observation; every other one ends exactly once.
        let expected_ends = usize::from(at != PanicAt::Start);
        assert_eq!(seen[1].ends.lock().unwrap().len(), expected_ends, "{at:?}");
        assert_eq!(
            seen[1].dropped_without_end.load(Ordering::SeqCst),
            0,
            "{at:?}"
        );
        assert!(current_scopes().is_empty(), "{at:?}: scope stack unwound");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_break_a_failing_dispatch() {
    quiet_expected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, seen) = runtime_with(vec![Probe::new("p").panicking(PanicAt::End)]);
    start_with(&rt, idle("w").command(command("c", failing("x", &calls)))).await;
    let err = rt.dispatch(req()).await.unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert_eq!(rt.observer_panics(), 1);
    assert_eq!(
        *seen[0].outcomes.lock().unwrap(),
        [(CommandOutcome::Failed, 1)]
    );
}

// ---- exactly once, including abandoned dispatches -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_abandoned_admitted_dispatch_ends_exactly_once_as_abandoned() {
    let gate = Gate::new();
    let (rt, seen) = runtime_with(vec![Probe::new("p")]);
    start_with(&rt, idle("w").command(command("c", gated(&gate)))).await;
    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    task.abort();
    assert!(within(task).await.unwrap_err().is_cancelled());

    assert_eq!(
        *seen[0].outcomes.lock().unwrap(),
        [(CommandOutcome::Abandoned, 1)]
    );
    assert!(seen[0].ends.lock().unwrap().values().all(|n| *n == 1));
    assert_eq!(seen[0].dropped_without_end.load(Ordering::SeqCst), 0);
    assert_eq!(*seen[0].released_before_end.lock().unwrap(), [true]);
}

#[tokio::test(start_paused = true)]
async fn a_dispatch_dropped_while_waiting_for_a_slot_still_ends_its_observation() {
    // The observer contract: every started observation ends exactly once. A caller that gives
    // up while its dispatch waits for a slot (`AdmissionMode::Wait`) abandons it before
    // admission: 0 attempts.
    let gate = Gate::new();
    let (rt, seen) = runtime_with(vec![Probe::new("p")]);
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command_concurrency(1)
            .command_admission(AdmissionMode::Wait(Duration::from_secs(30)))
            .command(command("c", gated(&gate))),
    )
    .await;
    let busy = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    let waiter = dispatch_in_background(&rt, "w", "c");
    support::settle().await;
    assert_eq!(rt.worker("w").unwrap().status.waiting, 1);
    waiter.abort();
    assert!(within(waiter).await.unwrap_err().is_cancelled());

    assert_eq!(seen[0].dropped_without_end.load(Ordering::SeqCst), 0);
    assert_eq!(
        *seen[0].outcomes.lock().unwrap(),
        [(CommandOutcome::Abandoned, 0)]
    );
    gate.release(1);
    within(busy).await.unwrap().unwrap();
    assert_eq!(seen[0].outcomes.lock().unwrap().len(), 2);
    assert_eq!(seen[0].dropped_without_end.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_observer_supports_concurrent_dispatches() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap();
    start_with(&rt, idle("w").command(command("c", ok_handler()))).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| dispatch_request_in_background(&rt, req().metadata("n", i.to_string())))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        ids.insert(within(task).await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 32);
    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!((starts.len(), ends.len()), (32, 32));
    let started: std::collections::HashSet<_> = starts.iter().map(|s| s.dispatch_id).collect();
    let ended: std::collections::HashSet<_> = ends.iter().map(|e| e.dispatch_id).collect();
    assert_eq!(started, ids);
    assert_eq!(ended, ids);
    assert!(ends.iter().all(|e| e.outcome == CommandOutcome::Succeeded));
}

// ---- failure events and private causes -------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn command_failure_keeps_an_arbitrary_cause_out_of_operational_data() {
    const SECRET: &str = "password=hunter2";
    let handler = handler_fn(|_ctx| async {
        Err::<CommandResponse, BoxError>(format!("db rejected {SECRET}").into())
    });
    let (rt, recorder) = recorded();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let err = rt.dispatch(req()).await.unwrap_err();

    // The caller's error: the public parts are safe, the source is the real error.
    assert!(!err.to_string().contains(SECRET));
    assert!(!format!("{:?}", err.failure()).contains(SECRET));
    assert!(
        command_support::source_chain(&err)
            .iter()
            .any(|s| s.contains(SECRET))
    );
    // Status and snapshot JSON.
    let status = rt.worker("w").unwrap();
    let record = status.status.last_command_failure.clone().unwrap();
    assert_eq!(
        (record.code.as_str(), record.message.as_str()),
        ("command_failed", "command failed")
    );
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    assert!(
        !serde_json::to_string(&rt.status())
            .unwrap()
            .contains(SECRET)
    );
    // The failure event's public face; the cause is there for observers that need it.
    let failure = recorder.failures().pop().unwrap();
    assert_eq!(failure.failure.code(), "command_failed");
    assert!(!failure.failure.message().contains(SECRET));
    assert!(failure.cause.unwrap().to_string().contains(SECRET));
    // The end event's public face.
    let end = recorder.command_ends().pop().unwrap();
    let public = end.failure.unwrap();
    assert_eq!(
        (public.code(), public.message()),
        ("command_failed", "command failed")
    );
    assert!(end.cause.unwrap().to_string().contains(SECRET));
}

#[tokio::test(start_paused = true)]
async fn a_failure_event_is_delivered_before_the_end_of_its_dispatch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .command_retry(workerkit_core::retry::RetryPolicy::attempts(2).unwrap())
            .command(command("c", failing("x", &calls))),
    )
    .await;
    recorder.clear();
    let err = rt.dispatch(req()).await.unwrap_err();
    let id = err.dispatch_id().unwrap();
    let briefs: Vec<String> = recorder
        .all_briefs()
        .into_iter()
        .filter(|b| !b.starts_with('O'))
        .collect();
    assert_eq!(
        briefs,
        [
            "S rt/w/c",
            "F rt/w command_failed",
            "F rt/w command_failed",
            "E rt/w/c failed"
        ]
    );
    let attempts: Vec<(u32, Option<DispatchId>)> = recorder
        .failures()
        .iter()
        .map(|f| (f.attempt, f.dispatch_id))
        .collect();
    assert_eq!(attempts, [(1, Some(id)), (2, Some(id))]);
}

#[tokio::test(start_paused = true)]
async fn end_events_measure_the_whole_dispatch_on_the_tokio_clock() {
    let handler = handler_fn(|_ctx| async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        Ok(CommandResponse::empty())
    });
    let (rt, recorder) = recorded();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    rt.dispatch(req()).await.unwrap();
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!(end.duration, Duration::from_millis(1_500));
    assert_eq!(end.worker.as_ref(), "rt/w");
}
