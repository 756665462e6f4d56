//! The runtime's state: worker records, the incremental aggregate, and the ordered event queue.
//!
//! Everything here runs under the runtime's state mutex, which is never held across an `.await`
//! or an observer call. Every change goes through [`State::modify`], which keeps the aggregate
//! counters in step, so deriving the runtime's state and readiness is O(1) whatever the number
//! of workers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::task::Signal;
use tokio::task::JoinHandle;

use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::observe::{
    Cause, Event, FailureEvent, Operation, OperationEvent, OperationPhase, ReadinessEvent,
    TransitionEvent,
};
use crate::policy::{FailurePolicy, PanicPolicy, ReadinessPolicy};
use crate::status::{
    CommandFailureRecord, Exit, FailureRecord, ReadinessImpact, ReadinessItem, RuntimeStatus,
    Transition, WorkerSnapshot, WorkerStatus,
};
use crate::time::Timestamp;
use crate::worker::{DynWorker, Factory, ReadinessCheck};

/// A worker's settings, resolved from its spec and the runtime defaults at registration.
#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) stop_timeout: Option<Duration>,
    pub(crate) ready_on_start: bool,
    pub(crate) accepting_work_on_start: bool,
    pub(crate) contributes: bool,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) panic_policy: PanicPolicy,
    /// Restart policy and watchdog; `None` for the common case of neither (kept out of line:
    /// every worker carries its config).
    pub(crate) supervision: Option<Arc<SupervisionConfig>>,
}

/// A worker's supervision settings.
#[derive(Debug)]
pub(crate) struct SupervisionConfig {
    pub(crate) restart: crate::supervise::RestartPolicy,
    pub(crate) watchdog: Option<crate::supervise::Watchdog>,
}

impl WorkerConfig {
    pub(crate) fn restart(&self) -> crate::supervise::RestartPolicy {
        self.supervision
            .as_ref()
            .map_or_else(crate::supervise::RestartPolicy::never, |s| s.restart)
    }

    pub(crate) fn watchdog(&self) -> Option<crate::supervise::Watchdog> {
        self.supervision.as_ref().and_then(|s| s.watchdog)
    }
}

/// A scheduled restart: cancelled by firing `cancel` (drain, stop, shutdown, removal).
pub(crate) struct PendingRestart {
    /// Which scheduling this is: a supervisor task acts only while its generation is pending.
    pub(crate) generation: u64,
    pub(crate) cancel: Signal,
}

/// A worker's supervision bookkeeping, allocated when first needed (most workers never
/// restart nor stall).
#[derive(Default)]
pub(crate) struct Sup(Option<Box<Supervision>>);

impl Sup {
    pub(crate) fn get(&self) -> Option<&Supervision> {
        self.0.as_deref()
    }

    /// The bookkeeping, allocated if need be.
    pub(crate) fn make(&mut self) -> &mut Supervision {
        self.0.get_or_insert_with(Box::default)
    }

    /// The bookkeeping, if it exists.
    pub(crate) fn existing(&mut self) -> Option<&mut Supervision> {
        self.0.as_deref_mut()
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.get().map_or(0, |s| s.restarts)
    }

    pub(crate) fn stalled(&self) -> bool {
        self.get().is_some_and(|s| s.stalled)
    }

    pub(crate) fn pending_generation(&self) -> Option<u64> {
        self.get()
            .and_then(|s| s.pending.as_ref())
            .map(|p| p.generation)
    }

    pub(crate) fn cancel(&mut self) {
        if let Some(sup) = self.existing() {
            sup.cancel();
        }
    }

    pub(crate) fn set_stalled(&mut self, stalled: bool) {
        if stalled {
            self.make().stalled = true;
        } else if let Some(sup) = self.existing() {
            sup.stalled = false;
        }
    }
}

/// The supervision bookkeeping of a worker that has a restart policy or a watchdog.
#[derive(Default)]
pub(crate) struct Supervision {
    /// Restarts so far (monotonic).
    pub(crate) restarts: u64,
    /// The backoff attempt of the next restart, minus one (reset by a healthy run).
    pub(crate) attempt: u32,
    /// When the recent restarts were scheduled (at most `max_restarts` entries).
    pub(crate) window: VecDeque<tokio::time::Instant>,
    pub(crate) next_restart_at: Option<Timestamp>,
    pub(crate) gave_up: bool,
    pub(crate) pending: Option<PendingRestart>,
    pub(crate) generation: u64,
    /// When the current incarnation became running.
    pub(crate) running_since: Option<tokio::time::Instant>,
    pub(crate) stalled: bool,
    /// What the next incarnation is told about its restart.
    pub(crate) info: Option<crate::supervise::SharedRestartInfo>,
    /// The failed incarnation whose `stop` the supervisor ran (a later stop does not run it
    /// again).
    pub(crate) reaped: u64,
}

impl Supervision {
    /// Cancels a pending restart, if any.
    pub(crate) fn cancel(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.cancel.cancel();
        }
        self.next_restart_at = None;
    }
}

/// The child tasks (`WorkerContext::spawn`) of a worker's latest incarnation.
#[derive(Default)]
pub(crate) struct Children {
    pub(crate) incarnation: u64,
    pub(crate) set: tokio::task::JoinSet<()>,
}

/// The parts of a worker that live outside the state lock.
pub(crate) struct WorkerEntry {
    /// The registration index (stable: workers are never reordered).
    pub(crate) idx: usize,
    /// The runtime, weakly (a worker never keeps its runtime alive).
    pub(crate) runtime: std::sync::Weak<super::Inner>,
    /// The runtime's id (for `LOOP_OF`).
    pub(crate) runtime_id: u64,
    pub(crate) local: Arc<str>,
    pub(crate) qualified: Arc<str>,
    /// The worker object. Only lifecycle operations (serialised by the gate) touch it.
    pub(crate) slot: tokio::sync::Mutex<Option<Box<dyn DynWorker>>>,
    pub(crate) factory: Option<Factory>,
    pub(crate) check: Option<ReadinessCheck>,
    /// Notified when an incarnation's exit is recorded (`WorkerRecord::last_exit`).
    pub(crate) exit: tokio::sync::Notify,
    /// How many `wait_exit` calls wait on `exit`: with none, an exit is not notified (a
    /// notification takes the `Notify`'s lock, on a cache line nothing else touches then).
    pub(crate) exit_waiters: std::sync::atomic::AtomicUsize,
    /// The readiness-check task of the current incarnation.
    pub(crate) check_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Commands and their dispatch state.
    pub(crate) commands: crate::command::WorkerCommands,
    /// Heartbeats (`WorkerContext::beat`) of the current incarnation, read by the watchdog.
    pub(crate) beats: std::sync::atomic::AtomicU64,
    /// The current incarnation, for `beat` (a stale context's beats do not count).
    pub(crate) incarnation: std::sync::atomic::AtomicU64,
    /// Child tasks of the latest incarnation (allocated at the first `WorkerContext::spawn`).
    pub(crate) children: std::sync::Mutex<Option<Box<Children>>>,
    /// Set (under `children`'s lock, before the stop signal is checked) when `children` is first
    /// allocated: until then, taking the children skips the lock.
    pub(crate) ever_spawned: std::sync::atomic::AtomicBool,
    /// Set when the worker is removed: lookups skip it.
    pub(crate) removed: std::sync::atomic::AtomicBool,
}

impl WorkerEntry {
    /// Wakes the `wait_exit` calls waiting on this worker (under the state lock, after the exit
    /// was recorded).
    pub(crate) fn notify_exit(&self) {
        if self.exit_waiters.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.exit.notify_waiters();
        }
    }

    /// Takes the child tasks of incarnations up to `incarnation` (to abort and await them).
    pub(crate) fn take_children(&self, incarnation: u64) -> Option<tokio::task::JoinSet<()>> {
        // Sequentially consistent with the store in `WorkerContext::spawn`, which precedes its
        // check of the stop signal: a spawn this load misses sees the signal fired (it was
        // fired before any stop takes the children) and spawns nothing.
        if !self.ever_spawned.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match children.as_mut() {
            Some(children) if children.incarnation <= incarnation && !children.set.is_empty() => {
                Some(std::mem::take(&mut children.set))
            }
            _ => None,
        }
    }
}

/// One worker's live record.
pub(crate) struct WorkerRecord {
    pub(crate) entry: Arc<WorkerEntry>,
    pub(crate) description: Option<Arc<str>>,
    pub(crate) config: WorkerConfig,
    pub(crate) lifecycle: LifecycleState,
    pub(crate) ready: bool,
    pub(crate) accepting: bool,
    pub(crate) incarnation: u64,
    pub(crate) ready_set_during_start: bool,
    pub(crate) accepting_set_during_start: bool,
    pub(crate) failure_reported_during_start: bool,
    /// How a failure reported during start ends the incarnation.
    pub(crate) reported_reason: crate::status::ExitReason,
    /// Whether the failure reported during start was marked permanent.
    pub(crate) reported_permanent: bool,
    /// A panic with no caller under `PanicPolicy::Propagate`: counts as `fail_runtime`.
    pub(crate) escalated: bool,
    pub(crate) last_transition: Option<Transition>,
    pub(crate) last_failure: Option<FailureRecord>,
    pub(crate) last_command_failure: Option<CommandFailureRecord>,
    pub(crate) last_exit: Option<Exit>,
    /// Fires when this incarnation is asked to stop or ends.
    pub(crate) token: Signal,
    /// What was last mirrored into the dispatch state: incarnation, lifecycle, accepting.
    pub(crate) mirrored: (u64, LifecycleState, bool),
    pub(crate) sup: Sup,
    /// Removed from the runtime: kept only so that indices stay stable.
    pub(crate) removed: bool,
    /// Whether the worker has commands (fixed at registration; read here, in the record, not
    /// in the entry's command table, a cache line of its own, on every change).
    pub(crate) has_commands: bool,
}

impl WorkerRecord {
    pub(crate) fn status(&self) -> WorkerStatus {
        WorkerStatus {
            name: Arc::clone(&self.entry.qualified),
            local_name: Arc::clone(&self.entry.local),
            state: self.lifecycle,
            ready: self.ready,
            accepting_work: self.accepting,
            incarnation: self.incarnation,
            contributes_to_readiness: self.config.contributes,
            failure_policy: self.config.failure_policy,
            last_transition: self.last_transition.clone(),
            last_failure: self.last_failure.clone(),
            last_command_failure: self.last_command_failure.clone(),
            last_exit: self.last_exit.clone(),
            in_flight: self.entry.commands.total(),
            waiting: self.entry.commands.waiting(),
            restart_policy: self.config.restart().mode(),
            restarts: self.sup.restarts(),
            next_restart_at: self.sup.get().and_then(|s| s.next_restart_at),
            gave_up: self.sup.get().is_some_and(|s| s.gave_up),
            stalled: self.sup.stalled(),
        }
    }

    pub(crate) fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            qualified_name: Arc::clone(&self.entry.qualified),
            name: Arc::clone(&self.entry.local),
            description: self.description.clone(),
            status: self.status(),
        }
    }

    fn facts(&self) -> Facts {
        if self.removed {
            return Facts::default();
        }
        let failed = self.lifecycle == LifecycleState::Failed;
        Facts {
            present: true,
            fail_liveness: self.sup.stalled()
                && matches!(
                    self.lifecycle,
                    LifecycleState::Running | LifecycleState::Draining
                )
                && self
                    .config
                    .watchdog()
                    .is_some_and(|w| w.action() == crate::supervise::StallAction::FailLiveness),
            state: self.lifecycle,
            fail_runtime: failed
                && (self.escalated || self.config.failure_policy == FailurePolicy::FailRuntime),
            unready_failure: failed
                && self.config.failure_policy == FailurePolicy::MarkRuntimeUnready,
            contributes: self.config.contributes,
            ready_running: self.lifecycle == LifecycleState::Running && self.ready,
        }
    }

    fn impact(&self, policy: ReadinessPolicy) -> ReadinessImpact {
        if policy == ReadinessPolicy::AllWorkers
            || self.config.contributes
            || self.config.failure_policy != FailurePolicy::Isolate
        {
            ReadinessImpact::Blocking
        } else {
            ReadinessImpact::NonBlocking
        }
    }
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Facts {
    /// Not removed (a removed worker counts nowhere).
    present: bool,
    fail_liveness: bool,
    state: LifecycleState,
    fail_runtime: bool,
    unready_failure: bool,
    contributes: bool,
    ready_running: bool,
}

/// Counters over all workers, kept in step by every change.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
struct Aggregate {
    total: usize,
    by_state: [usize; LifecycleState::ALL.len()],
    fail_runtime: usize,
    unready_failure: usize,
    contributing: usize,
    contributing_ready: usize,
    ready_running: usize,
    fail_liveness: usize,
}

impl Aggregate {
    fn apply(&mut self, f: Facts, sign: isize) {
        fn add(n: &mut usize, yes: bool, sign: isize) {
            if yes {
                *n = n.saturating_add_signed(sign);
            }
        }
        if !f.present {
            return;
        }
        add(&mut self.total, true, sign);
        add(&mut self.fail_liveness, f.fail_liveness, sign);
        add(&mut self.by_state[f.state.index()], true, sign);
        add(&mut self.fail_runtime, f.fail_runtime, sign);
        add(&mut self.unready_failure, f.unready_failure, sign);
        add(&mut self.contributing, f.contributes, sign);
        add(
            &mut self.contributing_ready,
            f.contributes && f.ready_running,
            sign,
        );
        add(&mut self.ready_running, f.ready_running, sign);
    }

    /// Moves one worker's counts from `before` to `after`: only the counters that differ
    /// (a change of state or readiness touches one or two of them, not all nine twice).
    fn change(&mut self, before: Facts, after: Facts) {
        fn step(n: &mut usize, before: bool, after: bool) {
            if before != after {
                *n = if after {
                    n.saturating_add(1)
                } else {
                    n.saturating_sub(1)
                };
            }
        }
        if !(before.present && after.present) {
            self.apply(before, -1);
            self.apply(after, 1);
            return;
        }
        if before.state != after.state {
            step(&mut self.by_state[before.state.index()], true, false);
            step(&mut self.by_state[after.state.index()], false, true);
        }
        step(
            &mut self.fail_liveness,
            before.fail_liveness,
            after.fail_liveness,
        );
        step(
            &mut self.fail_runtime,
            before.fail_runtime,
            after.fail_runtime,
        );
        step(
            &mut self.unready_failure,
            before.unready_failure,
            after.unready_failure,
        );
        step(
            &mut self.contributing,
            before.contributes,
            after.contributes,
        );
        step(
            &mut self.contributing_ready,
            before.contributes && before.ready_running,
            after.contributes && after.ready_running,
        );
        step(
            &mut self.ready_running,
            before.ready_running,
            after.ready_running,
        );
    }

    fn count(&self, state: LifecycleState) -> usize {
        self.by_state[state.index()]
    }

    /// The aggregate state (spec §2.6, with the sticky mixed case fixed: a mix of registered and
    /// stopped workers is `stopped`).
    fn state(&self) -> LifecycleState {
        use LifecycleState::*;
        if self.total == 0 {
            Registered
        } else if self.fail_runtime > 0 {
            Failed
        } else if self.count(Starting) > 0 {
            Starting
        } else if self.count(Restarting) > 0 {
            Restarting
        } else if self.count(Draining) > 0 {
            Draining
        } else if self.count(Stopping) > 0 {
            Stopping
        } else if self.count(Running) > 0 {
            Running
        } else if self.count(Failed) > 0 {
            Failed
        } else if self.count(Stopped) > 0 {
            Stopped
        } else {
            Registered
        }
    }

    fn transitional(&self) -> usize {
        use LifecycleState::*;
        self.count(Starting) + self.count(Draining) + self.count(Stopping) + self.count(Restarting)
    }

    fn ready(&self, policy: ReadinessPolicy) -> bool {
        if self.fail_runtime > 0 || self.unready_failure > 0 {
            return false;
        }
        match policy {
            ReadinessPolicy::AllWorkers => {
                self.total > 0
                    && self.transitional() + self.count(LifecycleState::Failed) == 0
                    && self.ready_running == self.total
            }
            ReadinessPolicy::ContributingWorkers => {
                if self.contributing == 0 {
                    self.count(LifecycleState::Running) > 0 && self.transitional() == 0
                } else {
                    self.contributing_ready == self.contributing
                }
            }
        }
    }
}

/// The runtime's whole mutable state.
pub(crate) struct State {
    pub(crate) runtime: Arc<str>,
    pub(crate) policy: ReadinessPolicy,
    pub(crate) workers: Vec<WorkerRecord>,
    aggregate: Aggregate,
    pub(crate) runtime_state: LifecycleState,
    pub(crate) ready: bool,
    pub(crate) last_transition: Option<Transition>,
    /// Command admission closed by stop-all or shutdown.
    pub(crate) admission_closed: bool,
    pub(crate) shutting_down: bool,
    pub(crate) shut_down: bool,
    /// Whether any observer is registered (events are queued only then).
    observed: bool,
    events: VecDeque<Event>,
    next_seq: u64,
    pub(crate) emitting: bool,
    pub(crate) version: u64,
    /// Jitter for restart backoff.
    pub(crate) rng: crate::retry::JitterRng,
}

impl State {
    pub(crate) fn new(runtime: Arc<str>, policy: ReadinessPolicy, observed: bool) -> Self {
        Self {
            observed,
            runtime,
            policy,
            workers: Vec::new(),
            aggregate: Aggregate::default(),
            runtime_state: LifecycleState::Registered,
            ready: false,
            last_transition: None,
            admission_closed: false,
            shutting_down: false,
            shut_down: false,
            events: VecDeque::new(),
            next_seq: 1,
            emitting: false,
            version: 0,
            rng: crate::retry::JitterRng::from_entropy(),
        }
    }

    pub(crate) fn add_worker(&mut self, record: WorkerRecord) -> usize {
        let idx = self.workers.len();
        self.aggregate.apply(record.facts(), 1);
        self.workers.push(record);
        idx
    }

    /// Changes one worker's record, keeping the aggregate counters in step.
    pub(crate) fn modify<R>(&mut self, idx: usize, f: impl FnOnce(&mut WorkerRecord) -> R) -> R {
        let before = self.workers[idx].facts();
        let result = f(&mut self.workers[idx]);
        let rec = &self.workers[idx];
        let after = rec.facts();
        if before != after {
            self.aggregate.change(before, after);
        }
        // Mirror what command admission needs into the worker's dispatch state (lock order:
        // state lock, then dispatch mutex), when it changed.
        // A worker without commands admits none, so it needs no mirror.
        let mirrored = (rec.incarnation, rec.lifecycle, rec.accepting);
        if rec.has_commands && mirrored != rec.mirrored {
            rec.entry
                .commands
                .mirror(mirrored.0, mirrored.1, mirrored.2);
            self.workers[idx].mirrored = mirrored;
        }
        result
    }

    /// Builds events from now on (an event stream subscribed), even without observers.
    pub(crate) fn observe(&mut self) {
        self.observed = true;
    }

    /// The public failure code of a worker's last failure, by qualified name.
    pub(crate) fn last_failure_code(&self, worker: &str) -> Option<String> {
        self.workers
            .iter()
            .find(|rec| !rec.removed && &*rec.entry.qualified == worker)
            .and_then(|rec| rec.last_failure.as_ref())
            .map(|f| f.code.clone())
    }

    fn push(&mut self, make: impl FnOnce(u64) -> Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // With no observer there is nobody to deliver to: keep the numbering, skip the event.
        if self.observed {
            self.events.push_back(make(seq));
        }
    }

    /// The sequence number of the last queued event (0 if none yet).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub(crate) fn events_pending(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn take_events(&mut self) -> VecDeque<Event> {
        std::mem::take(&mut self.events)
    }

    /// Moves a worker to `to`, recording the transition and queueing its event.
    pub(crate) fn transition(&mut self, idx: usize, to: LifecycleState, now: Timestamp) {
        self.transition_with(idx, to, now, |_| {});
    }

    /// [`transition`](Self::transition), with `also` applied to the record in the same change
    /// (one pass over the aggregate and the dispatch mirror instead of two; `also` runs first,
    /// and the transition event reads the record after both).
    pub(crate) fn transition_with(
        &mut self,
        idx: usize,
        to: LifecycleState,
        now: Timestamp,
        also: impl FnOnce(&mut WorkerRecord),
    ) {
        let from = self.workers[idx].lifecycle;
        if from == to {
            self.modify(idx, also);
            return;
        }
        self.modify(idx, |rec| {
            also(rec);
            rec.lifecycle = to;
            rec.last_transition = Some(Transition { from, to, at: now });
        });
        if !self.observed {
            // Nobody to deliver to: keep the numbering, build nothing.
            self.next_seq += 1;
            return;
        }
        let runtime = Arc::clone(&self.runtime);
        let rec = &self.workers[idx];
        let worker = Some(Arc::clone(&rec.entry.qualified));
        let incarnation = rec.incarnation;
        self.push(|seq| {
            Event::Transition(TransitionEvent {
                seq,
                runtime,
                worker,
                incarnation,
                from,
                to,
                at: now,
            })
        });
    }

    /// Sets a worker's readiness, queueing an event if it changed.
    pub(crate) fn set_ready(&mut self, idx: usize, ready: bool, now: Timestamp) {
        if self.workers[idx].ready == ready {
            return;
        }
        self.modify(idx, |rec| rec.ready = ready);
        if !self.observed {
            self.next_seq += 1;
            return;
        }
        let runtime = Arc::clone(&self.runtime);
        let worker = Some(Arc::clone(&self.workers[idx].entry.qualified));
        self.push(|seq| {
            Event::Readiness(ReadinessEvent {
                seq,
                runtime,
                worker,
                ready,
                at: now,
            })
        });
    }

    /// Queues a failure event for a worker.
    #[allow(clippy::too_many_arguments)] // Internal; each argument is a distinct event field.
    pub(crate) fn failure_event(
        &mut self,
        idx: usize,
        incarnation: u64,
        failure: &Failure,
        cause: Option<Cause>,
        panic: bool,
        lifecycle_changed: bool,
        now: Timestamp,
    ) {
        self.failure_event_for(
            idx,
            incarnation,
            failure,
            cause,
            panic,
            lifecycle_changed,
            None,
            now,
        );
    }

    /// Queues a failure event, with the command, dispatch and attempt it belongs to, if any.
    #[allow(clippy::too_many_arguments)] // Internal; each argument is a distinct event field.
    pub(crate) fn failure_event_for(
        &mut self,
        idx: usize,
        incarnation: u64,
        failure: &Failure,
        cause: Option<Cause>,
        panic: bool,
        lifecycle_changed: bool,
        command: Option<(Arc<str>, crate::command::DispatchId, u32)>,
        now: Timestamp,
    ) {
        let runtime = Arc::clone(&self.runtime);
        let worker = Some(Arc::clone(&self.workers[idx].entry.qualified));
        let failure = failure.clone();
        let (command, dispatch_id, attempt) = match command {
            Some((command, id, attempt)) => (Some(command), Some(id), attempt),
            None => (None, None, 0),
        };
        self.push(|seq| {
            Event::Failure(FailureEvent {
                seq,
                runtime,
                worker,
                incarnation,
                failure,
                panic,
                lifecycle_changed,
                command,
                dispatch_id,
                attempt,
                cause,
                at: now,
            })
        });
    }

    /// Queues a supervision event (about worker `idx`, or the runtime when `None`).
    pub(crate) fn supervision_event(
        &mut self,
        idx: Option<usize>,
        kind: crate::observe::SupervisionKind,
        now: Timestamp,
    ) {
        let runtime = Arc::clone(&self.runtime);
        let (worker, incarnation) = match idx {
            Some(idx) => (
                Some(Arc::clone(&self.workers[idx].entry.qualified)),
                self.workers[idx].incarnation,
            ),
            None => (None, 0),
        };
        self.push(|seq| {
            Event::Supervision(crate::observe::SupervisionEvent {
                seq,
                runtime,
                worker,
                incarnation,
                kind,
                at: now,
            })
        });
    }

    pub(crate) fn operation_event(
        &mut self,
        worker: Option<Arc<str>>,
        operation: Operation,
        phase: OperationPhase,
        elapsed: Duration,
    ) {
        let runtime = Arc::clone(&self.runtime);
        let at = Timestamp::now();
        self.push(|seq| {
            Event::Operation(OperationEvent {
                seq,
                runtime,
                worker,
                operation,
                phase,
                at,
                elapsed,
            })
        });
    }

    /// Ends a change: recomputes the aggregate and queues runtime events if it changed.
    /// Returns whether anything observable may have changed (always bumps the version).
    pub(crate) fn commit(&mut self, now: Timestamp) {
        self.version = self.version.wrapping_add(1);
        let state = self.aggregate.state();
        let ready = !self.shutting_down && self.aggregate.ready(self.policy);
        if state != self.runtime_state {
            let from = self.runtime_state;
            self.runtime_state = state;
            self.last_transition = Some(Transition {
                from,
                to: state,
                at: now,
            });
            let runtime = Arc::clone(&self.runtime);
            self.push(|seq| {
                Event::Transition(TransitionEvent {
                    seq,
                    runtime,
                    worker: None,
                    incarnation: 0,
                    from,
                    to: state,
                    at: now,
                })
            });
        }
        if ready != self.ready {
            self.ready = ready;
            let runtime = Arc::clone(&self.runtime);
            self.push(|seq| {
                Event::Readiness(ReadinessEvent {
                    seq,
                    runtime,
                    worker: None,
                    ready,
                    at: now,
                })
            });
        }
    }

    pub(crate) fn runtime_status(&self) -> RuntimeStatus {
        RuntimeStatus {
            name: Arc::clone(&self.runtime),
            state: self.runtime_state,
            ready: self.ready,
            in_flight: 0,
            workers: self.aggregate.total,
            last_transition: self.last_transition.clone(),
            shutting_down: self.shutting_down,
            shut_down: self.shut_down,
        }
    }

    pub(crate) fn readiness_items(&self) -> Vec<ReadinessItem> {
        self.workers
            .iter()
            .filter(|rec| !rec.removed)
            .map(|rec| ReadinessItem {
                name: Arc::clone(&rec.entry.local),
                ready: rec.lifecycle == LifecycleState::Running && rec.ready,
                state: rec.lifecycle,
                impact: rec.impact(self.policy),
            })
            .collect()
    }

    /// Whether the runtime admits commands at all (spec §3.3).
    pub(crate) fn admission_open(&self) -> bool {
        !self.admission_closed
            && !matches!(
                self.runtime_state,
                LifecycleState::Failed | LifecycleState::Stopped | LifecycleState::Registered
            )
    }

    /// Why the runtime is not live (empty when live): the runtime failed, or a worker whose
    /// watchdog action is `fail_liveness` is stalled.
    pub(crate) fn liveness_reasons(&self) -> Vec<String> {
        let mut stalled: Vec<String> = Vec::new();
        if self.aggregate.fail_liveness > 0 {
            stalled = self
                .workers
                .iter()
                .filter(|rec| rec.facts().fail_liveness)
                .map(|rec| {
                    let timeout = rec.config.watchdog().map_or(Duration::ZERO, |w| w.timeout());
                    format!(
                        "worker {:?} stalled (no heartbeat within {timeout:?}; watchdog action fail_liveness)",
                        &*rec.entry.qualified
                    )
                })
                .collect();
        }
        if self.runtime_state != LifecycleState::Failed {
            return stalled;
        }
        let mut reasons: Vec<String> = self
            .workers
            .iter()
            .filter(|rec| rec.lifecycle == LifecycleState::Failed && !rec.removed)
            .map(|rec| {
                let code = rec
                    .last_failure
                    .as_ref()
                    .map_or("worker_failed", |f| f.code.as_str());
                let why = if rec.escalated {
                    "an unhandled panic under panic policy propagate"
                } else {
                    rec.config.failure_policy.as_str()
                };
                format!("worker {:?} failed ({code}; {why})", &*rec.entry.qualified)
            })
            .collect();
        reasons.insert(0, format!("runtime {:?} failed", &*self.runtime));
        reasons.extend(stalled);
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of facts a worker can have.
    fn all_facts() -> Vec<Facts> {
        let mut all = vec![Facts::default()];
        for state in LifecycleState::ALL {
            for bits in 0u8..32 {
                let bit = |n: u8| bits & (1 << n) != 0;
                all.push(Facts {
                    present: true,
                    fail_liveness: bit(0),
                    state,
                    fail_runtime: bit(1),
                    unready_failure: bit(2),
                    contributes: bit(3),
                    ready_running: bit(4),
                });
            }
        }
        all
    }

    /// `change` (only the counters that differ) counts exactly as taking the worker's old
    /// facts out and putting its new ones in, for every pair of facts.
    #[test]
    fn aggregate_change_counts_as_remove_then_add() {
        let all = all_facts();
        let mut start = Aggregate::default();
        // Room below every counter, so that nothing saturates.
        for facts in &all {
            start.apply(*facts, 1);
        }
        for before in &all {
            for after in &all {
                let mut expected = start.clone();
                expected.apply(*before, -1);
                expected.apply(*after, 1);
                let mut changed = start.clone();
                changed.change(*before, *after);
                assert_eq!(changed, expected, "{before:?} -> {after:?}");
            }
        }
    }
}
