//! The runtime: registration, lifecycle operations, status and events.

mod builder;
pub(crate) mod ops;
mod registry;
mod state;
pub(crate) mod supervise;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

pub(crate) use builder::Defaults;
pub use builder::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_OBSERVER_FLUSH_TIMEOUT, DEFAULT_SHUTDOWN_REPORT_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_START_TIMEOUT, DEFAULT_STOP_GRACE, DEFAULT_STOP_TIMEOUT,
    RuntimeBuilder,
};
pub(crate) use state::{State, WorkerEntry, WorkerRecord};

use crate::error::{LifecycleError, RegisterError, ShutdownError, ShutdownReport};
use crate::lifecycle::LifecycleState;
use crate::name::{validate_qualified_worker_name, validate_worker_local_name};
use crate::observe::{Observer, Observers, Operation};
use crate::status::{Exit, Liveness, Readiness, RuntimeStatus, WorkerSnapshot, WorkerStatus};
use crate::time::Timestamp;
use crate::worker::{TimeoutSetting, WorkerSource, WorkerSpec};
use builder::Settings;
use state::WorkerConfig;

tokio::task_local! {
    /// The id of the runtime whose lifecycle operation this task is running.
    static LIFECYCLE_OF: u64;
    /// `(runtime id, worker index)` of the loop task running in this task: a stop of that worker
    /// waits for this task, so this task must not wait for such a stop.
    pub(crate) static LOOP_OF: (u64, usize);
}

static NEXT_RUNTIME_ID: AtomicU64 = AtomicU64::new(1);

/// The shared core behind every [`Runtime`] clone and [`WorkerContext`](crate::WorkerContext).
pub(crate) struct Inner {
    /// This runtime, weakly (for the tasks it spawns from calls that only borrow it).
    pub(crate) me: std::sync::Weak<Self>,
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) defaults: Defaults,
    pub(crate) settings: Settings,
    state: Mutex<State>,
    /// The lifecycle gate: one permit, held for a whole lifecycle operation.
    pub(crate) gate: Arc<Semaphore>,
    pub(crate) observers: Observers,
    /// Bumped on every committed change.
    changes: watch::Sender<u64>,
    /// The sequence number of the last event delivered to observers.
    delivered: watch::Sender<u64>,
    /// Workers by local name, readable without any lock (for dispatch).
    registry: registry::Registry,
    /// Command admission, mirrored from the state at every commit: bit 7 set = open, low bits =
    /// the aggregate state's index.
    admission: std::sync::atomic::AtomicU8,
    /// The runtime-wide command concurrency limit.
    pub(crate) command_limit: crate::command::RuntimeLimit,
    /// Tasks of workers: loops, readiness checks, `WorkerContext::spawn`. Shutdown waits for them.
    pub(crate) tracker: TaskTracker,
    /// Tasks running lifecycle operations.
    pub(crate) ops_tracker: TaskTracker,
    /// Fired by [`Runtime::force_shutdown`]: a shutdown stops waiting for in-flight commands.
    pub(crate) force: crate::task::Signal,
    /// The stop signal of every worker that has never started (shared: it is never handed to
    /// a context, and every start gives its incarnation a new one).
    pub(crate) unstarted: crate::task::Signal,
    /// The event stream's sender ([`Runtime::events`]).
    pub(crate) stream: tokio::sync::broadcast::Sender<crate::observe::StreamEvent>,
}

impl Inner {
    /// Locks the state. The lock is never held across `.await` or observer calls, and no code
    /// under it can panic on user input, so a poisoned lock is still consistent: use it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one state change: `f` mutates under the lock, then the aggregate is recomputed, the
    /// change feed bumped and the queued events delivered (after unlocking).
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut State, Timestamp) -> R) -> (R, u64) {
        let now = Timestamp::now();
        let (result, seq, version, pending) = {
            let mut st = self.lock();
            let result = f(&mut st, now);
            st.commit(now);
            let open = st.admission_open();
            let word =
                u8::try_from(st.runtime_state.index()).unwrap_or(0) | if open { 0x80 } else { 0 };
            // Written only here, under the state lock: a plain load reads the last store, and
            // the store (a locked write) is skipped when nothing changed, as in most changes.
            let before = self.admission.load(Ordering::Relaxed);
            if before != word {
                self.admission.store(word, Ordering::SeqCst);
            }
            if before & 0x80 != 0 && !open {
                // Admission just closed: dispatches waiting for a slot can never be admitted
                // now; wake them to be rejected at once.
                for rec in &st.workers {
                    // A worker without commands has no dispatch waiting.
                    if rec.has_commands {
                        rec.entry.commands.wake_waiters();
                    }
                }
            }
            (result, st.last_seq(), st.version, st.events_pending() > 0)
        };
        if self.changes.receiver_count() > 0 {
            self.changes.send_replace(version);
        }
        if pending {
            self.flush_events();
        }
        (result, seq)
    }

    /// Delivers queued events in order. Exactly one thread delivers at a time; a call that finds
    /// another delivering returns at once, and the deliverer picks its events up.
    pub(crate) fn flush_events(&self) {
        {
            let mut st = self.lock();
            if st.emitting || st.events_pending() == 0 {
                return;
            }
            st.emitting = true;
        }
        /// Hands the delivery role back if delivery unwinds. On the normal path the loop below
        /// hands it back under the same lock hold that found the queue empty: resetting it again
        /// afterwards could clear the flag of a thread that has taken the role meanwhile, and
        /// let two threads deliver at once, out of order.
        struct Reset<'a>(&'a Inner);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.lock().emitting = false;
                }
            }
        }
        let _reset = Reset(self);
        loop {
            let batch = {
                let mut st = self.lock();
                let batch = st.take_events();
                if batch.is_empty() {
                    st.emitting = false;
                    break;
                }
                batch
            };
            let mut last = 0;
            for event in &batch {
                if !self.observers.is_empty() {
                    self.observers.emit(event);
                }
                if let crate::observe::Event::Transition(t) = event {
                    self.stream_transition(t);
                }
                last = event.seq();
            }
            self.delivered.send_replace(last);
        }
    }

    /// Sends a transition to the event stream's subscribers, if there are any.
    fn stream_transition(&self, t: &crate::observe::TransitionEvent) {
        if self.stream.receiver_count() == 0 {
            return;
        }
        let reason = match (&t.worker, t.to) {
            (Some(worker), LifecycleState::Failed | LifecycleState::Restarting) => {
                self.lock().last_failure_code(worker)
            }
            _ => None,
        };
        let _ = self.stream.send(crate::observe::StreamEvent {
            seq: t.seq,
            runtime: Arc::clone(&t.runtime),
            worker: t.worker.clone(),
            incarnation: t.incarnation,
            from: t.from,
            to: t.to,
            reason,
            at: t.at,
        });
    }

    /// Waits until every event up to `seq` has been delivered.
    ///
    /// Bounded by the observer flush timeout: an observer that blocks (against its contract)
    /// delays lifecycle operations by at most that much when another thread is delivering.
    pub(crate) async fn delivered(&self, seq: u64) {
        if self.observers.is_empty() {
            return;
        }
        let mut rx = self.delivered.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail; it can only time out.
        let _ = tokio::time::timeout(
            self.settings.observer_flush_timeout,
            rx.wait_for(|delivered| *delivered >= seq),
        )
        .await;
    }

    /// Whether the runtime admits commands, and its aggregate state.
    pub(crate) fn admission(&self) -> (bool, LifecycleState) {
        let word = self.admission.load(Ordering::SeqCst);
        let state = LifecycleState::ALL
            .get(usize::from(word & 0x7F))
            .copied()
            .unwrap_or_default();
        (word & 0x80 != 0, state)
    }

    /// Looks a worker up by local or qualified name without any lock, and without writing
    /// to shared memory (no reference count is touched: the entry is borrowed).
    pub(crate) fn find_worker(&self, name: &str) -> Option<&Arc<WorkerEntry>> {
        let local = match name.split_once('/') {
            Some((rt, local)) if rt == &*self.name => local,
            Some(_) => return None,
            None => name,
        };
        self.registry.get(local)
    }

    /// Every worker, in registration order (removed ones included: they may still have
    /// commands to wait for; they have none to list).
    pub(crate) fn all_workers(&self) -> Vec<Arc<WorkerEntry>> {
        self.lock()
            .workers
            .iter()
            .map(|rec| Arc::clone(&rec.entry))
            .collect()
    }

    /// Commands in flight across the runtime: the sum of the workers' counts (there is no
    /// runtime-wide counter, so dispatch touches no shared cache line for it).
    pub(crate) fn in_flight(&self) -> usize {
        // Lock order: state, then each dispatch shard. No allocation.
        self.lock()
            .workers
            .iter()
            .map(|rec| rec.entry.commands.total())
            .sum()
    }

    /// Waits until no command is in flight anywhere in the runtime (by notification): each
    /// worker in turn, then once more over all of them, until a pass finds every one idle.
    pub(crate) async fn wait_all_idle(&self) {
        loop {
            // A worker without commands never has one in flight: only the others are waited
            // for (a shutdown of many plain workers would otherwise visit every entry twice).
            let workers: Vec<Arc<WorkerEntry>> = self
                .lock()
                .workers
                .iter()
                .filter(|rec| rec.has_commands)
                .map(|rec| Arc::clone(&rec.entry))
                .collect();
            for entry in &workers {
                crate::command::pipeline::wait_worker_idle(entry).await;
            }
            if workers.iter().all(|entry| entry.commands.total() == 0) {
                return;
            }
        }
    }

    pub(crate) fn qualified(&self, local: &str) -> String {
        format!("{}/{local}", self.name)
    }

    /// Strict name resolution: validates, then looks up (local or `runtime/worker`).
    pub(crate) fn resolve(&self, name: &str) -> Result<usize, LifecycleError> {
        if name.contains('/') {
            validate_qualified_worker_name(name)?;
        } else {
            validate_worker_local_name(name)?;
        }
        self.lookup(name)
            .ok_or_else(|| LifecycleError::WorkerNotFound {
                worker: if name.contains('/') {
                    name.to_owned()
                } else {
                    self.qualified(name)
                },
            })
    }

    /// Lenient lookup for reads: invalid names simply miss.
    fn lookup(&self, name: &str) -> Option<usize> {
        self.find_worker(name).map(|entry| entry.idx)
    }
}

/// A handle to a worker runtime. Cheap to clone; every clone controls the same runtime, and
/// dropping a clone stops nothing.
///
/// See the [crate docs](crate) for a tour.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.inner.name)
            .field("status", &self.status())
            .finish()
    }
}

/// Options for one [`Runtime::shutdown_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownOptions {
    /// Budget of the drain and idle-wait phases.
    pub timeout: Duration,
    /// Budget the stop phase always gets, even after `timeout` ran out.
    pub stop_grace: Duration,
}

impl ShutdownOptions {
    /// Options with the given budgets.
    #[must_use]
    pub fn new(timeout: Duration, stop_grace: Duration) -> Self {
        Self {
            timeout,
            stop_grace,
        }
    }
}

impl Runtime {
    /// Starts building a runtime named `name`.
    pub fn builder(name: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::new(name.into())
    }

    pub(crate) fn from_parts(
        name: String,
        defaults: Defaults,
        settings: Settings,
        observers: Vec<Arc<dyn Observer>>,
    ) -> Self {
        let name: Arc<str> = name.into();
        let command_concurrency = settings.command_concurrency;
        let mut state = State::new(
            Arc::clone(&name),
            settings.readiness_policy,
            !observers.is_empty(),
        );
        if let Some(seed) = settings.jitter_seed {
            state.rng = crate::retry::JitterRng::seeded(seed);
        }
        Self {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                id: NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed),
                name,
                defaults,
                settings,
                state: Mutex::new(state),
                gate: Arc::new(Semaphore::new(1)),
                observers: Observers::new(observers),
                changes: watch::Sender::new(0),
                delivered: watch::Sender::new(0),
                registry: registry::Registry::new(),
                admission: std::sync::atomic::AtomicU8::new(0),
                command_limit: crate::command::RuntimeLimit::new(command_concurrency),
                tracker: TaskTracker::new(),
                ops_tracker: TaskTracker::new(),
                force: crate::task::Signal::new(),
                unstarted: crate::task::Signal::new(),
                stream: tokio::sync::broadcast::Sender::new(crate::observe::EVENT_STREAM_CAPACITY),
            }),
        }
    }

    /// The runtime's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Registers a worker. Registration stays open after start (a worker added to a running
    /// runtime is `registered` until started) and closes when a shutdown begins.
    ///
    /// Not gated: it never waits for a lifecycle operation. A worker registered while
    /// [`start_all`](Self::start_all) runs is not started by it.
    ///
    /// # Errors
    ///
    /// [`RegisterError::InvalidName`], [`RegisterError::AlreadyRegistered`],
    /// [`RegisterError::ZeroDuration`], [`RegisterError::ShuttingDown`].
    pub fn register(&self, spec: WorkerSpec) -> Result<(), RegisterError> {
        validate_worker_local_name(&spec.name)?;
        let inner = &*self.inner;
        let qualified = inner.qualified(&spec.name);
        let d = &inner.defaults;
        let o = &spec.overrides;
        let timeout = |setting: TimeoutSetting, default: Option<Duration>, what| match setting {
            TimeoutSetting::Inherit => Ok(default),
            TimeoutSetting::Never => Ok(None),
            TimeoutSetting::After(t) if t.is_zero() => Err(RegisterError::ZeroDuration {
                worker: qualified.clone(),
                setting: what,
            }),
            TimeoutSetting::After(t) => Ok(Some(t)),
        };
        let has_check = spec.readiness_check.is_some();
        if let Some(check) = &spec.readiness_check {
            for (setting, value) in [
                ("readiness_check.interval", check.interval),
                ("readiness_check.timeout", check.timeout),
            ] {
                if value.is_zero() {
                    return Err(RegisterError::ZeroDuration {
                        worker: qualified,
                        setting,
                    });
                }
            }
        }
        let config = WorkerConfig {
            start_timeout: timeout(o.start_timeout, d.start_timeout, "start_timeout")?,
            stop_timeout: timeout(o.stop_timeout, d.stop_timeout, "stop_timeout")?,
            // With a readiness check, the check decides readiness.
            ready_on_start: o.ready_on_start.unwrap_or(d.ready_on_start) && !has_check,
            accepting_work_on_start: o
                .accepting_work_on_start
                .unwrap_or(d.accepting_work_on_start),
            contributes: o.contributes_to_readiness.unwrap_or(d.contributes),
            failure_policy: o.failure_policy.unwrap_or(d.failure_policy),
            panic_policy: o.panic_policy.unwrap_or(d.panic_policy),
            supervision: {
                let restart = o.restart.unwrap_or(d.restart);
                (restart.mode() != crate::supervise::RestartMode::Never || o.watchdog.is_some())
                    .then(|| {
                        Arc::new(state::SupervisionConfig {
                            restart,
                            watchdog: o.watchdog,
                        })
                    })
            },
        };
        if config.watchdog().map(|w| w.action()) == Some(crate::supervise::StallAction::Restart)
            && config.restart().mode() == crate::supervise::RestartMode::Never
        {
            return Err(RegisterError::Supervision {
                worker: qualified,
                error: crate::supervise::SupervisionError::RestartActionWithoutPolicy,
            });
        }
        let qualified_arc: Arc<str> = qualified.clone().into();
        let commands = crate::command::build_table(
            &qualified_arc,
            spec.commands,
            &spec.command_overrides,
            &inner.defaults,
        )?;
        let (slot, factory) = match spec.source {
            WorkerSource::Instance(worker) => (Some(worker), None),
            WorkerSource::Factory(factory) => (None, Some(factory)),
        };
        let local: Arc<str> = spec.name.into();
        let description = spec.description.map(Into::into);
        let check = spec.readiness_check;
        let (result, _) = inner.mutate(move |st, _now| {
            if st.shutting_down || st.shut_down {
                return Err(RegisterError::ShuttingDown {
                    runtime: inner.name.to_string(),
                });
            }
            if inner.find_worker(&local).is_some() {
                return Err(RegisterError::AlreadyRegistered { worker: qualified });
            }
            let entry = Arc::new(WorkerEntry {
                idx: st.workers.len(),
                runtime: inner.me.clone(),
                runtime_id: inner.id,
                commands,
                qualified: qualified_arc,
                local: Arc::clone(&local),
                slot: tokio::sync::Mutex::new(slot),
                factory,
                check,
                exit: tokio::sync::Notify::new(),
                exit_waiters: std::sync::atomic::AtomicUsize::new(0),
                check_task: Mutex::new(None),
                beats: std::sync::atomic::AtomicU64::new(0),
                incarnation: std::sync::atomic::AtomicU64::new(0),
                children: Mutex::default(),
                ever_spawned: AtomicBool::new(false),
                removed: std::sync::atomic::AtomicBool::new(false),
            });
            let record = WorkerRecord {
                entry: Arc::clone(&entry),
                description,
                config,
                lifecycle: LifecycleState::Registered,
                ready: false,
                accepting: false,
                incarnation: 0,
                ready_set_during_start: false,
                accepting_set_during_start: false,
                failure_reported_during_start: false,
                reported_reason: crate::status::ExitReason::Failed,
                reported_permanent: false,
                escalated: false,
                last_transition: None,
                last_failure: None,
                last_command_failure: None,
                last_exit: None,
                token: inner.unstarted.clone(),
                mirrored: (0, LifecycleState::Registered, false),
                sup: state::Sup::default(),
                removed: false,
                has_commands: !entry.commands.by_name.is_empty(),
            };
            st.add_worker(record);
            // Under the state lock: registry insertions are serialised.
            inner.registry.insert(entry);
            Ok(())
        });
        result
    }

    /// The runtime's aggregate status.
    #[must_use]
    pub fn status(&self) -> RuntimeStatus {
        let mut status = self.inner.lock().runtime_status();
        status.in_flight = self.inner.in_flight();
        status
    }

    /// Runs a worker's command: resolve → observe → admit → limit → attempts (timeout, panic
    /// capture) with retry → end. See `docs/commands.md` for the full order.
    ///
    /// Not gated: dispatch runs concurrently with lifecycle operations, and takes no
    /// runtime-wide lock on its way (admission happens under the target worker's own mutex).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for admission stops the wait and ends its observation
    /// as `abandoned` with no attempt. Dropping it after admission drops the handler's future,
    /// releases its slots, and ends its observation as `abandoned`: every observed dispatch ends
    /// exactly once either way.
    ///
    /// # Errors
    ///
    /// Rejections ([`DispatchError::is_rejection`]) hand the request back; admitted dispatches
    /// fail with [`DispatchError::Failed`],
    /// [`TimedOut`](crate::command::DispatchError::TimedOut),
    /// [`Panicked`](crate::command::DispatchError::Panicked) or
    /// [`Cancelled`](crate::command::DispatchError::Cancelled), whose
    /// `code()` never depends on the handler's own error. Under
    /// [`PanicPolicy::Propagate`](crate::PanicPolicy::Propagate) a handler's panic is resumed here
    /// after its bookkeeping and end event.
    ///
    /// [`DispatchError::is_rejection`]: crate::command::DispatchError::is_rejection
    /// [`DispatchError::Failed`]: crate::command::DispatchError::Failed
    // Not an `async fn`: it returns the pipeline's future itself, so awaiting a dispatch does
    // not poll (and move the request and the pipeline's state through) a wrapping future.
    pub fn dispatch(
        &self,
        request: crate::command::CommandRequest,
    ) -> impl Future<Output = Result<crate::command::CommandResult, crate::command::DispatchError>>
    + Send
    + '_ {
        crate::command::pipeline::dispatch(&self.inner, request)
    }

    /// A worker's commands, sorted by name; `None` for an unknown worker (lenient lookup, like
    /// [`worker`](Self::worker)). A worker without commands gives an empty list.
    #[must_use]
    pub fn commands(&self, worker: &str) -> Option<Vec<crate::command::CommandInfo>> {
        self.inner
            .find_worker(worker)
            .map(|entry| entry.commands.infos())
    }

    /// Every worker's commands, by worker in registration order, each sorted by name.
    #[must_use]
    pub fn all_commands(&self) -> Vec<crate::command::CommandInfo> {
        self.inner
            .all_workers()
            .iter()
            .filter(|entry| !entry.removed.load(Ordering::Acquire))
            .flat_map(|entry| entry.commands.infos())
            .collect()
    }

    /// The commands in flight, oldest (longest in flight) first; ties by dispatch id.
    #[must_use]
    pub fn in_flight(&self) -> Vec<crate::command::InFlightCommand> {
        crate::command::pipeline::in_flight(&self.inner)
    }

    /// Cancels an in-flight command by its dispatch id: its handler's
    /// [`CommandContext::cancelled`](crate::command::CommandContext::cancelled) fires, and its
    /// caller gets [`DispatchError::Cancelled`](crate::command::DispatchError::Cancelled) (unless
    /// the handler still succeeds).
    ///
    /// # Errors
    ///
    /// [`CancelError::NotFound`](crate::command::CancelError::NotFound) if no such command is in
    /// flight, [`CancelError::AlreadyCancelled`](crate::command::CancelError::AlreadyCancelled).
    pub fn cancel(
        &self,
        id: crate::command::DispatchId,
    ) -> Result<(), crate::command::CancelError> {
        crate::command::pipeline::cancel(&self.inner, id)
    }

    /// Waits until the worker has no command in flight (of any incarnation), by notification.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`] or [`LifecycleError::WorkerNotFound`].
    pub async fn wait_idle(&self, worker: &str) -> Result<(), LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        let entry = Arc::clone(&self.inner.lock().workers[idx].entry);
        crate::command::pipeline::wait_worker_idle(&entry).await;
        Ok(())
    }

    /// Waits until no command is in flight anywhere in the runtime, by notification.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_all_idle(&self) {
        self.inner.wait_all_idle().await;
    }

    /// Every worker, in registration order.
    #[must_use]
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        self.inner
            .lock()
            .workers
            .iter()
            .filter(|rec| !rec.removed)
            .map(WorkerRecord::snapshot)
            .collect()
    }

    /// One worker, by local or qualified name. Lenient: an invalid name is simply not found.
    #[must_use]
    pub fn worker(&self, name: &str) -> Option<WorkerSnapshot> {
        let idx = self.inner.lookup(name)?;
        self.inner
            .lock()
            .workers
            .get(idx)
            .map(WorkerRecord::snapshot)
    }

    /// Readiness with one item per worker, for readiness probes. Never calls worker code.
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let st = self.inner.lock();
        let reason = if st.ready {
            "runtime ready".to_owned()
        } else if st.shut_down {
            format!("runtime not ready: state={} (shut down)", st.runtime_state)
        } else if st.shutting_down {
            format!(
                "runtime not ready: state={} (shutting down)",
                st.runtime_state
            )
        } else {
            format!("runtime not ready: state={}", st.runtime_state)
        };
        Readiness {
            ready: st.ready,
            reason,
            policy: st.policy,
            items: st.readiness_items(),
        }
    }

    /// Liveness, for liveness probes: not live only when the runtime's aggregate state is
    /// `failed` (a `fail_runtime` failure, an escalated panic, or every worker failed with none
    /// active), or when a running worker whose watchdog action is
    /// [`fail_liveness`](crate::supervise::StallAction::FailLiveness) is stalled. A `restarting`
    /// worker never fails liveness. Reasons name the workers and their public codes.
    #[must_use]
    pub fn liveness(&self) -> Liveness {
        let reasons = self.inner.lock().liveness_reasons();
        Liveness {
            live: reasons.is_empty(),
            reasons,
        }
    }

    /// Every lifecycle transition from now on, in order (`seq`), for any number of subscribers,
    /// with bounded memory: a subscriber more than
    /// [`EVENT_STREAM_CAPACITY`](crate::observe::EVENT_STREAM_CAPACITY) transitions behind
    /// skips the oldest and counts them ([`EventStream::lagged`](crate::observe::EventStream::lagged)).
    #[must_use]
    pub fn events(&self) -> crate::observe::EventStream {
        let rx = self.inner.stream.subscribe();
        self.inner.lock().observe();
        crate::observe::EventStream::new(rx)
    }

    /// A change feed: wakes on every committed change of any status.
    #[must_use]
    pub fn subscribe(&self) -> StatusWatch {
        StatusWatch {
            runtime: self.clone(),
            rx: self.inner.changes.subscribe(),
        }
    }

    /// How many observer callbacks panicked (each was contained).
    #[must_use]
    pub fn observer_panics(&self) -> u64 {
        self.inner.observers.panics()
    }

    /// Waits for the end of a worker's current incarnation and returns how it ended.
    ///
    /// If the worker is not running (registered, stopped or failed), returns its last exit at
    /// once, or, if it never started, waits for its first incarnation to end. Any number of
    /// waiters see the same [`Exit`]; a panicked worker resolves them with
    /// [`ExitReason::Panicked`](crate::status::ExitReason::Panicked).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future only stops waiting.
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`] or [`LifecycleError::WorkerNotFound`].
    pub async fn wait_exit(&self, worker: &str) -> Result<Exit, LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        let (entry, target) = {
            let st = self.inner.lock();
            let rec = &st.workers[idx];
            let target = if rec.lifecycle.is_active() || rec.incarnation == 0 {
                rec.incarnation.max(1)
            } else {
                rec.incarnation
            };
            (Arc::clone(&rec.entry), target)
        };
        /// Counts this call among the worker's exit waiters while it waits (see
        /// `WorkerEntry::notify_exit`): counted before it checks, under the state lock, for an
        /// exit that an exit recorded after that check will then notify.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        entry
            .exit_waiters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _waiting = Waiting(&entry.exit_waiters);
        loop {
            let exited = entry.exit.notified();
            tokio::pin!(exited);
            exited.as_mut().enable();
            let last = self.inner.lock().workers[idx].last_exit.clone();
            if let Some(exit) = last.filter(|e| e.incarnation >= target) {
                return Ok(exit);
            }
            exited.await;
        }
    }

    /// Refuses calls that would deadlock: from inside a lifecycle operation of this runtime, or
    /// from a worker's own loop task when the operation would stop or start that worker (which
    /// waits for the loop to end; `stops`: the worker index, or `usize::MAX` for every worker).
    /// Also refuses calls outside tokio.
    fn check_callable(
        &self,
        operation: Operation,
        stops: Option<usize>,
    ) -> Result<(), LifecycleError> {
        let id = self.inner.id;
        if LIFECYCLE_OF
            .try_with(|current| *current == id)
            .unwrap_or(false)
        {
            return Err(LifecycleError::Reentrant { operation });
        }
        if let Some(target) = stops {
            let own_loop = LOOP_OF
                .try_with(|(rt, idx)| *rt == id && (target == usize::MAX || *idx == target))
                .unwrap_or(false);
            if own_loop {
                return Err(LifecycleError::Reentrant { operation });
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LifecycleError::NoAsyncRuntime { operation });
        }
        Ok(())
    }

    /// Runs a lifecycle operation: refuses reentrant calls, waits for the gate in the caller's
    /// future (so dropping it before the gate is won does nothing), then runs `body` to
    /// completion in a tracked task (so dropping it afterwards does not leave a half-done
    /// transition).
    async fn gated<T, F, Fut>(
        &self,
        operation: Operation,
        stops: Option<usize>,
        body: F,
    ) -> Result<T, LifecycleError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, LifecycleError>> + Send + 'static,
    {
        self.check_callable(operation, stops)?;
        let permit = Arc::clone(&self.inner.gate)
            .acquire_owned()
            .await
            .map_err(|_| LifecycleError::Interrupted { operation })?;
        let inner = Arc::clone(&self.inner);
        let id = inner.id;
        let task = crate::task::spawn(
            &self.inner.ops_tracker,
            LIFECYCLE_OF.scope(id, async move {
                let _permit = permit;
                body(inner).await
            }),
        );
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(LifecycleError::Interrupted { operation }),
        }
    }

    /// Starts one worker (local or qualified name) and returns its status.
    ///
    /// Allowed from `registered`, `stopped` and `failed`. The start runs under the worker's start
    /// timeout; a failure, timeout or panic leaves the worker `failed`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits for the lifecycle gate cancels the operation; once the
    /// gate is won the start runs to completion in the background.
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`], [`WorkerNotFound`](LifecycleError::WorkerNotFound),
    /// [`InvalidState`](LifecycleError::InvalidState), [`StartFailed`](LifecycleError::StartFailed),
    /// [`Reentrant`](LifecycleError::Reentrant), [`ShutDown`](LifecycleError::ShutDown).
    /// Under [`PanicPolicy::Propagate`](crate::PanicPolicy::Propagate) a panic in the worker's
    /// start is resumed here after the bookkeeping.
    pub async fn start(&self, worker: &str) -> Result<WorkerStatus, LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        self.gated(Operation::Start, Some(idx), move |inner| async move {
            ops::single(&inner, Operation::Start, idx).await
        })
        .await
    }

    /// Drains one worker: it becomes `draining`, unready and closed to new commands; it keeps
    /// running, admitted commands finish, and its `stop` is not called. Draining a draining
    /// worker is a no-op.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`], [`WorkerNotFound`](LifecycleError::WorkerNotFound),
    /// [`InvalidState`](LifecycleError::InvalidState) unless running or draining,
    /// [`Reentrant`](LifecycleError::Reentrant).
    pub async fn drain(&self, worker: &str) -> Result<WorkerStatus, LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        self.gated(Operation::Drain, None, move |inner| async move {
            ops::single(&inner, Operation::Drain, idx).await
        })
        .await
    }

    /// Stops one worker: its stop signal fires, then its `stop` runs under the stop timeout.
    /// Allowed from `running`, `draining`, `failed` and `restarting` (the pending restart is
    /// cancelled, and the failed incarnation's `stop` runs).
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`], [`WorkerNotFound`](LifecycleError::WorkerNotFound),
    /// [`InvalidState`](LifecycleError::InvalidState), [`StopFailed`](LifecycleError::StopFailed),
    /// [`Reentrant`](LifecycleError::Reentrant).
    pub async fn stop(&self, worker: &str) -> Result<WorkerStatus, LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        self.gated(Operation::Stop, Some(idx), move |inner| async move {
            ops::single(&inner, Operation::Stop, idx).await
        })
        .await
    }

    /// Starts every worker that is `registered`, `stopped` or `failed`, in registration order,
    /// in one hold of the lifecycle gate. Running workers are skipped. Fail-fast with no
    /// rollback: the first failure is returned and later workers are not started.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// The first worker's [`LifecycleError`], or [`Reentrant`](LifecycleError::Reentrant) /
    /// [`ShutDown`](LifecycleError::ShutDown).
    pub async fn start_all(&self) -> Result<(), LifecycleError> {
        self.gated(Operation::StartAll, Some(usize::MAX), |inner| async move {
            ops::start_all(&inner).await
        })
        .await
    }

    /// Drains every running worker, in registration order (not an atomic cutoff: later workers
    /// accept commands until their turn).
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`Reentrant`](LifecycleError::Reentrant).
    pub async fn drain_all(&self) -> Result<(), LifecycleError> {
        self.gated(Operation::DrainAll, None, |inner| async move {
            ops::drain_all(&inner);
            Ok(())
        })
        .await
    }

    /// Stops every `running`, `draining` or `failed` worker in reverse registration order. Command
    /// admission is closed for the whole call. Every worker is tried; errors are collected.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// One worker's [`StopFailed`](LifecycleError::StopFailed), or
    /// [`Multiple`](LifecycleError::Multiple) for several.
    pub async fn stop_all(&self) -> Result<(), LifecycleError> {
        self.gated(Operation::StopAll, Some(usize::MAX), |inner| async move {
            ops::stop_all(&inner).await
        })
        .await
    }

    /// Removes a worker that is `registered`, `stopped` or `failed` and has no command in
    /// flight, and returns its last snapshot. Its name can be registered again at once; its
    /// instance (and a factory's) is dropped. Stop a running worker first.
    ///
    /// # Cancel safety
    ///
    /// As for [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`LifecycleError::InvalidName`], [`WorkerNotFound`](LifecycleError::WorkerNotFound),
    /// [`InvalidState`](LifecycleError::InvalidState) when the worker is active or restarting,
    /// [`WorkerBusy`](LifecycleError::WorkerBusy), [`Reentrant`](LifecycleError::Reentrant).
    pub async fn remove(&self, worker: &str) -> Result<WorkerSnapshot, LifecycleError> {
        let idx = self.inner.resolve(worker)?;
        self.gated(Operation::Remove, Some(idx), move |inner| async move {
            ops::remove(&inner, idx).await
        })
        .await
    }

    /// Graceful shutdown with the configured budgets; see [`shutdown_with`](Self::shutdown_with).
    ///
    /// # Errors
    ///
    /// As [`shutdown_with`](Self::shutdown_with).
    pub async fn shutdown(&self) -> Result<ShutdownReport, ShutdownError> {
        let options = ShutdownOptions::new(
            self.inner.settings.shutdown_timeout,
            self.inner.settings.stop_grace,
        );
        self.shutdown_with(options).await
    }

    /// Graceful shutdown:
    ///
    /// 1. readiness goes false and command admission and registration close, at once;
    /// 2. running workers drain, in registration order;
    /// 3. in-flight commands are awaited by notification, within `options.timeout`;
    /// 4. workers stop in reverse registration order, each within its stop timeout, all within
    ///    what is left of `options.timeout`, but never less than `options.stop_grace` — so a
    ///    budget spent waiting still stops every worker;
    /// 5. observers' shutdown hooks are awaited (flush), within the observer flush timeout.
    ///
    /// After a shutdown the runtime is terminal: [`start`](Self::start) returns
    /// [`LifecycleError::ShutDown`]. Calling `shutdown` again stops anything left.
    ///
    /// # Cancel safety
    ///
    /// A shutdown is committed once called: readiness goes false and admission and registration
    /// close at once, even if the caller stops waiting before the lifecycle gate is won (call
    /// `shutdown` again to carry it out). Once the gate is won, the shutdown runs to completion
    /// in the background.
    ///
    /// # Errors
    ///
    /// [`ShutdownError::Incomplete`] names every worker that did not stop cleanly and says
    /// whether the budget ran out; it carries the [`ShutdownReport`].
    pub async fn shutdown_with(
        &self,
        options: ShutdownOptions,
    ) -> Result<ShutdownReport, ShutdownError> {
        self.check_callable(Operation::Shutdown, Some(usize::MAX))?;
        // Readiness goes false and registration closes now, before waiting for the gate (a slow
        // start may hold it): the shutdown has been asked for.
        self.inner.mutate(|st, now| {
            st.shutting_down = true;
            st.admission_closed = true;
            // Pending restarts are cancelled at once: no incarnation starts once a shutdown was
            // asked for (the workers stay `restarting` until the shutdown drains them).
            for idx in 0..st.workers.len() {
                supervise::cancel(st, idx, now);
            }
        });
        self.gated(
            Operation::Shutdown,
            Some(usize::MAX),
            move |inner| async move { Ok(ops::shutdown(&inner, options).await) },
        )
        .await?
    }
}

/// A change feed over a runtime's status; see [`Runtime::subscribe`].
#[derive(Debug)]
pub struct StatusWatch {
    runtime: Runtime,
    rx: watch::Receiver<u64>,
}

impl StatusWatch {
    /// Waits for the next committed change.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        // The sender lives as long as the runtime this watch holds.
        let _ = self.rx.changed().await;
    }

    /// Waits until `predicate` holds for the runtime, checking now and after every change.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait_until(&mut self, mut predicate: impl FnMut(&Runtime) -> bool) {
        loop {
            self.rx.borrow_and_update();
            if predicate(&self.runtime) {
                return;
            }
            let _ = self.rx.changed().await;
        }
    }

    /// The runtime this feed watches.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
