//! A worker's command table and its dispatch state: the per-worker admission point.
//!
//! **Architecture invariant:** admission, limits and in-flight bookkeeping of a worker's
//! commands happen under the lock of one of that worker's dispatch shards (and the worker's
//! atomic counters) only — never under the runtime's state lock — so dispatch to different
//! workers never contends, dispatch to one worker from different threads rarely does, and the
//! hot path takes no runtime-wide lock. The runtime's state lock may take the dispatch shards'
//! locks (to mirror lifecycle changes); the reverse never happens.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::error::CommandTarget;
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
    /// Whether the dispatch counts against the worker's cap (`WorkerCommands::current`).
    pub(crate) worker_counted: bool,
    /// Whether it counts against its command's cap (`WorkerCommands::per_command`).
    pub(crate) command_counted: bool,
}

/// The dispatch state of one shard of a worker: a mirror of the worker's lifecycle (every shard
/// holds the same, written under every shard's lock at once) and the in-flight slots of the
/// dispatches admitted through this shard.
pub(crate) struct DispatchState {
    pub(crate) incarnation: u64,
    pub(crate) lifecycle: LifecycleState,
    pub(crate) accepting: bool,
    /// The running incarnation's context (without deadline), handed to its commands. Each shard
    /// has its own allocation, so that the reference counts of dispatches on different threads
    /// live on different cache lines.
    pub(crate) ctx: Option<Arc<ShardContext>>,
    slots: Vec<Option<InFlightSlot>>,
    free: Vec<usize>,
    /// In flight through this shard, across every incarnation.
    pub(crate) total: usize,
}

impl DispatchState {
    fn new() -> Self {
        Self {
            incarnation: 0,
            lifecycle: LifecycleState::Registered,
            accepting: false,
            ctx: None,
            slots: Vec::new(),
            free: Vec::new(),
            total: 0,
        }
    }

    /// Registers an admitted dispatch; returns its slot.
    pub(crate) fn insert(&mut self, slot: InFlightSlot) -> usize {
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

    /// Every dispatch in flight through this shard.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &InFlightSlot> {
        self.slots.iter().flatten()
    }

    /// Mirrors a lifecycle change (the counters are reset by [`WorkerCommands::mirror`]).
    fn mirror(&mut self, incarnation: u64, lifecycle: LifecycleState, accepting: bool) {
        self.incarnation = incarnation;
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

/// A shard's copy of the running incarnation's context, on cache lines of its own: every
/// dispatch through the shard writes its reference count, and an allocation that shared a
/// line with another shard's hot data (the allocator places the copies, made one after the
/// other, side by side with the shards' name copies) would bounce that line between threads.
#[repr(align(128))]
pub(crate) struct ShardContext(pub(crate) WorkerContext);

/// One shard of a worker's dispatch state, on cache lines of its own.
#[repr(align(128))]
pub(crate) struct Shard {
    state: Mutex<DispatchState>,
    /// This shard's own copies of the worker and command names of each command (by position
    /// in `WorkerCommands::sorted`), for the dispatch results: their reference counts are
    /// written by every dispatch, so each shard has its own allocations.
    pub(crate) targets: Box<[Arc<CommandTarget>]>,
}

impl Shard {
    /// Locks the shard. Never held across `.await`, user code or observer calls.
    pub(crate) fn lock(&self) -> MutexGuard<'_, DispatchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How many shards a worker with commands has: about two per core (a power of two), so that
/// threads dispatching to one worker at once rarely share one.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .saturating_mul(2)
            .next_power_of_two()
            .min(64)
    })
}

/// The calling thread's shard hint: threads are numbered in the order they first dispatch.
fn thread_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HINT.with(|hint| {
        let mut value = hint.get();
        if value == usize::MAX {
            value = NEXT.fetch_add(1, Ordering::Relaxed);
            hint.set(value);
        }
        value
    })
}

/// A result's names: one allocation (the names themselves are shared).
fn target(worker: &Arc<str>, name: &Arc<str>) -> Arc<CommandTarget> {
    Arc::new(CommandTarget {
        worker: Arc::clone(worker),
        name: Arc::clone(name),
    })
}

/// Makes copies of shared values whose reference counts are on cache lines of their own: the
/// copies of different shards are written by different threads, and allocations made one after
/// the other often share a line (a result's `Arc<CommandTarget>` is 48 bytes). A copy that lands on a
/// line (pair) already used is kept aside, so that the next one lands elsewhere; the ones kept
/// aside are freed at the end.
#[derive(Default)]
struct Spread {
    lines: Vec<usize>,
    aside: Vec<Box<dyn std::any::Any>>,
}

impl Spread {
    /// The size of the unit of false sharing: adjacent-line prefetching pairs 64-byte lines.
    const LINE: usize = 128;

    fn copies<T: ?Sized + 'static>(&mut self, n: usize, make: impl Fn() -> Arc<T>) -> Vec<Arc<T>> {
        let mut copies = Vec::with_capacity(n);
        // Bounded: if the allocator keeps handing out used lines, accept them.
        let mut tries = 64 * n;
        while copies.len() < n {
            let copy = make();
            let data = Arc::as_ptr(&copy).cast::<u8>().addr();
            // The reference counts precede the data.
            let first = data.saturating_sub(2 * size_of::<usize>()) / Self::LINE;
            let last = (data + size_of_val(&*copy)) / Self::LINE;
            if tries > 0 && (first..=last).any(|line| self.lines.contains(&line)) {
                tries -= 1;
                self.aside.push(Box::new(copy));
                continue;
            }
            self.lines.extend(first..=last);
            copies.push(copy);
        }
        copies
    }
}

/// A worker's commands and dispatch state.
///
/// The dispatch state is sharded: a dispatch registers in flight in the shard of its thread and
/// releases its slot there, so dispatches to one worker from different threads take different
/// locks. What must be exact across shards is atomic: the caps' counters (only kept for the caps
/// that exist), the waiting counts. A lifecycle change is written into every shard under every
/// shard's lock at once, so a dispatch either was admitted before it (and is in flight, counted)
/// or sees it.
pub(crate) struct WorkerCommands {
    /// Positions in `sorted`, by name.
    pub(crate) by_name: HashMap<Arc<str>, usize, crate::name::NameHash>,
    /// Sorted by name, for discovery.
    pub(crate) sorted: Vec<Arc<CommandEntry>>,
    /// The worker-wide concurrency cap.
    pub(crate) concurrency: Option<usize>,
    /// Cancel in-flight commands this long after a stop begins.
    pub(crate) cancel_on_stop: Option<Duration>,
    shards: Box<[Shard]>,
    /// In flight for the current incarnation (what the worker's cap counts; only kept when the
    /// worker has a cap). Changed under the lock of the dispatch's shard only, and reset under
    /// every shard's lock.
    current: AtomicUsize,
    /// Per command (by `CommandEntry::index`), in flight for the current incarnation (only kept
    /// for commands with a cap).
    per_command: Box<[AtomicUsize]>,
    /// Waiting for a slot.
    waiting: AtomicUsize,
    /// Waiting for the worker (or an incarnation) to become idle.
    idle_waiters: AtomicUsize,
    /// Notified whenever a slot is released (waiters for capacity, idle waiters).
    pub(crate) released: Notify,
}

impl WorkerCommands {
    pub(crate) fn new(
        worker: &Arc<str>,
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
        // A worker without commands never dispatches: one shard is enough for its status.
        let shards = if sorted.is_empty() { 1 } else { shard_count() };
        if shards == 1 {
            // Nothing to spread: one shard shares the worker's own allocations.
            return Self {
                by_name,
                shards: Box::new([Shard {
                    state: Mutex::new(DispatchState::new()),
                    targets: sorted.iter().map(|c| target(worker, &c.name)).collect(),
                }]),
                sorted,
                concurrency,
                cancel_on_stop,
                current: AtomicUsize::new(0),
                per_command: (0..count).map(|_| AtomicUsize::new(0)).collect(),
                waiting: AtomicUsize::new(0),
                idle_waiters: AtomicUsize::new(0),
                released: Notify::new(),
            };
        }
        let mut spread = Spread::default();
        let mut targets: Vec<Vec<Arc<CommandTarget>>> = sorted
            .iter()
            .map(|c| spread.copies(shards, || target(worker, &c.name)))
            .collect();
        let shards = (0..shards)
            .map(|_| Shard {
                state: Mutex::new(DispatchState::new()),
                targets: targets
                    .iter_mut()
                    .zip(&sorted)
                    .map(|(copies, c)| copies.pop().unwrap_or_else(|| target(worker, &c.name)))
                    .collect(),
            })
            .collect();
        Self {
            by_name,
            sorted,
            concurrency,
            cancel_on_stop,
            shards,
            current: AtomicUsize::new(0),
            per_command: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            waiting: AtomicUsize::new(0),
            idle_waiters: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    /// The position in `sorted` of the command named `name`. A worker has few commands: up to
    /// eight are found by comparing names in place, without hashing.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        if self.sorted.len() <= 8 {
            return self
                .sorted
                .iter()
                .position(|c| crate::name::same_name(&c.name, name));
        }
        self.by_name.get(name).copied()
    }

    /// The calling thread's shard, and its index.
    pub(crate) fn local_shard(&self) -> (usize, &Shard) {
        let index = thread_hint() & (self.shards.len() - 1);
        (index, &self.shards[index])
    }

    /// The shard at `index` (from [`local_shard`](Self::local_shard)).
    pub(crate) fn shard(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    /// Every shard.
    pub(crate) fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Commands in flight, across every incarnation.
    pub(crate) fn total(&self) -> usize {
        // A worker without commands never has one in flight: no lock to take.
        if self.sorted.is_empty() {
            return 0;
        }
        self.shards.iter().map(|shard| shard.lock().total).sum()
    }

    /// Dispatches waiting for a slot.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Counts the caller as waiting for a slot. Call before the admission check that precedes
    /// the wait: a release either sees the count (and wakes) or the check sees the release.
    pub(crate) fn enter_waiting(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn leave_waiting(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts the caller as waiting for idleness, before it checks: a release either sees the
    /// count (and wakes) or the check sees the release.
    pub(crate) fn enter_idle_wait(&self) {
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn leave_idle_wait(&self) {
        self.idle_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stores the context the running incarnation's commands get (one copy per shard).
    pub(crate) fn set_context(&self, ctx: &WorkerContext) {
        for shard in &self.shards {
            shard.lock().ctx = Some(Arc::new(ShardContext(ctx.clone())));
        }
    }

    /// Takes a slot of the worker's cap and of `command`'s, if they exist; the caller holds the
    /// lock of its shard and has checked the lifecycle. On `Err`, nothing was taken. Returns
    /// which counters were taken.
    pub(crate) fn try_take_caps(
        &self,
        command: &CommandEntry,
    ) -> Result<(bool, bool), (super::LimitScope, usize)> {
        // Full caps are found by loads first: a dispatch that took the worker's slot and then
        // found its command's cap full would give the slot back and wake the waiters, itself
        // included, again and again. Only a race between these loads and the takes below does.
        if let Some(max) = self
            .concurrency
            .filter(|&max| self.current.load(Ordering::SeqCst) >= max)
        {
            return Err((super::LimitScope::Worker, max));
        }
        if let Some(max) = command
            .concurrency
            .filter(|&max| self.per_command[command.index].load(Ordering::SeqCst) >= max)
        {
            return Err((super::LimitScope::Command, max));
        }
        let take = |counter: &AtomicUsize, max: usize| {
            counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        };
        let worker = match self.concurrency {
            Some(max) if !take(&self.current, max) => {
                return Err((super::LimitScope::Worker, max));
            }
            Some(_) => true,
            None => false,
        };
        let counted = match command.concurrency {
            Some(max) if !take(&self.per_command[command.index], max) => {
                if worker {
                    self.give_back(true, false, command.index);
                }
                return Err((super::LimitScope::Command, max));
            }
            Some(_) => true,
            None => false,
        };
        Ok((worker, counted))
    }

    /// Gives back what [`try_take_caps`](Self::try_take_caps) took, without a dispatch (a later
    /// limit was full), waking waiters that may have seen the slot taken.
    pub(crate) fn give_back(&self, worker: bool, command: bool, index: usize) {
        if worker {
            self.current.fetch_sub(1, Ordering::SeqCst);
        }
        if command {
            self.per_command[index].fetch_sub(1, Ordering::SeqCst);
        }
        if (worker || command) && self.waiting.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// The shared state of the dispatch in slot `position` of shard `index`, if it is there.
    pub(crate) fn slot_shared(&self, index: usize, position: usize) -> Option<Arc<DispatchShared>> {
        let st = self.shards[index].lock();
        let slot = st.slots.get(position)?.as_ref()?;
        Some(Arc::clone(&slot.shared))
    }

    /// Releases a dispatch's slot in shard `index`, and wakes whoever waits for capacity or
    /// idleness.
    pub(crate) fn release(&self, index: usize, position: usize) {
        // Dropped after the lock: it may be the last reference to the dispatch's shared state.
        let slot = {
            let mut st = self.shards[index].lock();
            let Some(slot) = st.slots.get_mut(position).and_then(Option::take) else {
                return;
            };
            // Under the shard's lock: a new incarnation resets the counters under every
            // shard's lock, so an older incarnation's slot is never taken off the new counts.
            if slot.incarnation == st.incarnation {
                if slot.worker_counted {
                    self.current.fetch_sub(1, Ordering::SeqCst);
                }
                if slot.command_counted {
                    self.per_command[slot.command].fetch_sub(1, Ordering::SeqCst);
                }
            }
            st.total -= 1;
            st.free.push(position);
            slot
        };
        drop(slot);
        if self.waiting.load(Ordering::SeqCst) > 0 || self.idle_waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// Mirrors a lifecycle change into every shard at once (a new incarnation starts with empty
    /// caps: older commands keep running but no longer count against them), and wakes
    /// dispatches waiting for a slot so they re-check admission at once (a worker that drains or
    /// stops can never admit them; without the wake they would wait out their whole admission
    /// wait).
    pub(crate) fn mirror(&self, incarnation: u64, lifecycle: LifecycleState, accepting: bool) {
        {
            let mut guards: Vec<_> = self.shards.iter().map(Shard::lock).collect();
            if guards
                .first()
                .is_some_and(|st| st.incarnation != incarnation)
            {
                self.current.store(0, Ordering::SeqCst);
                for n in &self.per_command {
                    n.store(0, Ordering::SeqCst);
                }
            }
            for st in &mut guards {
                st.mirror(incarnation, lifecycle, accepting);
            }
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
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
    current: AtomicUsize,
    released: Notify,
}

impl RuntimeLimit {
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self {
            max,
            current: AtomicUsize::new(0),
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
