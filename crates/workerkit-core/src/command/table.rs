//! A worker's command table and its dispatch state: the per-worker admission point.
//!
//! **Architecture invariant:** admission, limits and in-flight bookkeeping of a worker's
//! commands happen under that worker's dispatch mutex only — never under the runtime's state
//! lock — so dispatch to different workers never contends, and the hot path takes no
//! runtime-wide lock. The runtime's state lock may take a dispatch mutex (to mirror lifecycle
//! changes); the reverse never happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::handler::{DispatchShared, DynHandler};
use super::{AdmissionMode, CommandInfo, TimeoutMode};
use crate::lifecycle::LifecycleState;
use crate::retry::RetryPolicy;
use crate::worker::WorkerContext;

/// One registered command, with its settings resolved at registration.
pub(crate) struct CommandEntry {
    pub(crate) name: Arc<str>,
    pub(crate) index: usize,
    pub(crate) info: CommandInfo,
    pub(crate) handler: Arc<dyn DynHandler>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) timeout_mode: TimeoutMode,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: Option<usize>,
    pub(crate) admission: AdmissionMode,
    /// Exponentially weighted mean duration, in nanoseconds, for `retry_after` hints.
    pub(crate) mean_nanos: AtomicU64,
}

impl CommandEntry {
    pub(crate) fn record_duration(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let old = self.mean_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.mean_nanos.store(new, Ordering::Relaxed);
    }

    /// A hint for when a saturated caller might retry: about one mean duration, within bounds.
    pub(crate) fn retry_after(&self) -> Duration {
        let mean = Duration::from_nanos(self.mean_nanos.load(Ordering::Relaxed));
        mean.clamp(Duration::from_millis(10), Duration::from_secs(60))
    }
}

/// A dispatch admitted and registered in flight.
pub(crate) struct InFlightSlot {
    pub(crate) shared: Arc<DispatchShared>,
    pub(crate) incarnation: u64,
    pub(crate) command: usize,
}

/// The mutable dispatch state of one worker.
pub(crate) struct DispatchState {
    pub(crate) incarnation: u64,
    pub(crate) lifecycle: LifecycleState,
    pub(crate) accepting: bool,
    /// The running incarnation's context (without deadline), handed to its commands.
    pub(crate) ctx: Option<Arc<WorkerContext>>,
    /// In flight for the current incarnation (what the worker's cap counts).
    pub(crate) current: usize,
    /// Per command, in flight for the current incarnation.
    pub(crate) per_command: Vec<usize>,
    /// Waiting for a slot.
    pub(crate) waiting: usize,
    /// Waiting for the worker (or an incarnation) to become idle.
    pub(crate) idle_waiters: usize,
    slots: Vec<Option<InFlightSlot>>,
    free: Vec<usize>,
    /// In flight across every incarnation.
    pub(crate) total: usize,
}

impl DispatchState {
    /// Registers an admitted dispatch; returns its slot.
    pub(crate) fn insert(&mut self, slot: InFlightSlot) -> usize {
        if slot.incarnation == self.incarnation {
            self.current += 1;
            self.per_command[slot.command] += 1;
        }
        self.total += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    /// Releases a dispatch's slot.
    pub(crate) fn remove(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        if slot.incarnation == self.incarnation {
            self.current = self.current.saturating_sub(1);
            if let Some(n) = self.per_command.get_mut(slot.command) {
                *n = n.saturating_sub(1);
            }
        }
        self.total = self.total.saturating_sub(1);
        self.free.push(index);
    }

    /// Every dispatch in flight.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &InFlightSlot> {
        self.slots.iter().flatten()
    }

    /// Mirrors a lifecycle change; a new incarnation starts with empty limits (older commands
    /// keep running but no longer count against the caps).
    pub(crate) fn mirror(&mut self, incarnation: u64, lifecycle: LifecycleState, accepting: bool) {
        if incarnation != self.incarnation {
            self.incarnation = incarnation;
            self.current = 0;
            self.per_command.iter_mut().for_each(|n| *n = 0);
        }
        self.lifecycle = lifecycle;
        self.accepting = accepting;
        if lifecycle != LifecycleState::Running && lifecycle != LifecycleState::Draining {
            // Stopping, stopped or failed: handlers keep their own clone; new ones get none.
            if !matches!(lifecycle, LifecycleState::Starting) {
                self.ctx = None;
            }
        }
    }
}

/// A worker's commands and dispatch state.
pub(crate) struct WorkerCommands {
    /// Positions in `sorted`, by name.
    pub(crate) by_name: HashMap<Arc<str>, usize, crate::name::NameHash>,
    /// Sorted by name, for discovery.
    pub(crate) sorted: Vec<Arc<CommandEntry>>,
    /// The worker-wide concurrency cap.
    pub(crate) concurrency: Option<usize>,
    /// Cancel in-flight commands this long after a stop begins.
    pub(crate) cancel_on_stop: Option<Duration>,
    state: Mutex<DispatchState>,
    /// Notified whenever a slot is released (waiters for capacity, idle waiters).
    pub(crate) released: Notify,
}

impl WorkerCommands {
    pub(crate) fn new(
        commands: Vec<Arc<CommandEntry>>,
        concurrency: Option<usize>,
        cancel_on_stop: Option<Duration>,
    ) -> Self {
        let mut sorted = commands;
        sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let by_name = sorted
            .iter()
            .enumerate()
            .map(|(position, c)| (Arc::clone(&c.name), position))
            .collect();
        let count = sorted.iter().map(|c| c.index + 1).max().unwrap_or(0);
        Self {
            by_name,
            sorted,
            concurrency,
            cancel_on_stop,
            state: Mutex::new(DispatchState {
                incarnation: 0,
                lifecycle: LifecycleState::Registered,
                accepting: false,
                ctx: None,
                current: 0,
                per_command: vec![0; count],
                waiting: 0,
                idle_waiters: 0,
                slots: Vec::new(),
                free: Vec::new(),
                total: 0,
            }),
            released: Notify::new(),
        }
    }

    /// Locks the dispatch state. Never held across `.await`, user code or observer calls.
    pub(crate) fn lock(&self) -> MutexGuard<'_, DispatchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mirrors a lifecycle change into the dispatch state, and wakes dispatches waiting for a
    /// slot so they re-check admission at once (a worker that drains or stops can never admit
    /// them; without the wake they would wait out their whole admission wait).
    pub(crate) fn mirror(&self, incarnation: u64, lifecycle: LifecycleState, accepting: bool) {
        let waiting = {
            let mut st = self.lock();
            st.mirror(incarnation, lifecycle, accepting);
            st.waiting > 0
        };
        if waiting {
            self.released.notify_waiters();
        }
    }

    /// Wakes dispatches waiting for a slot so they re-check admission (the runtime's admission
    /// closed).
    pub(crate) fn wake_waiters(&self) {
        self.released.notify_waiters();
    }

    /// Discovery metadata, sorted by name.
    pub(crate) fn infos(&self) -> Vec<CommandInfo> {
        self.sorted.iter().map(|c| c.info.clone()).collect()
    }
}

/// The runtime-wide command concurrency limit (a counter; unbounded when `max` is `None`).
pub(crate) struct RuntimeLimit {
    max: Option<usize>,
    current: std::sync::atomic::AtomicUsize,
    released: Notify,
}

impl RuntimeLimit {
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self {
            max,
            current: std::sync::atomic::AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    pub(crate) fn is_bounded(&self) -> bool {
        self.max.is_some()
    }

    pub(crate) fn max(&self) -> usize {
        self.max.unwrap_or(usize::MAX)
    }

    /// Whether the limit is bounded and full right now.
    pub(crate) fn is_full(&self) -> bool {
        self.max
            .is_some_and(|max| self.current.load(Ordering::Acquire) >= max)
    }

    /// Takes a slot if the limit is bounded and not full. `false` when unbounded (no slot to
    /// take) or full: tell them apart with [`is_bounded`](Self::is_bounded).
    pub(crate) fn try_acquire(&self) -> bool {
        let Some(max) = self.max else { return false };
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release(&self) {
        self.current.fetch_sub(1, Ordering::AcqRel);
        self.released.notify_waiters();
    }

    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }
}
