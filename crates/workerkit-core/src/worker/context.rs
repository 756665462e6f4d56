//! `WorkerContext`: a worker's handle on its own incarnation.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::task::Signal;
use tokio::time::Instant;

use crate::error::ContextError;
use crate::failure::{BoxError, Failure};
use crate::runtime::{Inner, ops};
use crate::status::{ExitReason, WorkerStatus};

/// A worker's handle on one incarnation: its names, its stop signal, and the calls by which it
/// reports readiness and failures.
///
/// Each start of a worker is a new incarnation with a new context. A context kept from an earlier
/// incarnation is *stale*: its calls return [`ContextError::Stale`] and change nothing. Calls on a
/// context never wait for lifecycle operations.
#[derive(Clone)]
pub struct WorkerContext {
    /// The worker's entry, which also holds the runtime, weakly: every context of a worker
    /// shares its entry's reference counts, not the runtime's (which all workers would share).
    entry: Arc<crate::runtime::WorkerEntry>,
    incarnation: u64,
    token: Signal,
    deadline: Option<Instant>,
    restart: Option<crate::supervise::SharedRestartInfo>,
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("worker", &self.entry.qualified)
            .field("incarnation", &self.incarnation)
            .field("stop_requested", &self.token.is_cancelled())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl WorkerContext {
    pub(crate) fn new(
        entry: &Arc<crate::runtime::WorkerEntry>,
        incarnation: u64,
        token: Signal,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            entry: Arc::clone(entry),
            incarnation,
            token,
            deadline,
            restart: None,
        }
    }

    pub(crate) fn with_restart(
        mut self,
        info: Option<crate::supervise::SharedRestartInfo>,
    ) -> Self {
        self.restart = info;
        self
    }

    pub(crate) fn without_deadline(&self) -> Self {
        Self {
            deadline: None,
            ..self.clone()
        }
    }

    pub(crate) fn runtime(&self) -> Result<Arc<Inner>, ContextError> {
        self.entry
            .runtime
            .upgrade()
            .ok_or_else(|| ContextError::RuntimeGone {
                worker: self.entry.qualified.to_string(),
            })
    }

    /// `(runtime id, worker index)`, the key of [`LOOP_OF`](crate::runtime::LOOP_OF) for this
    /// worker's loop; `None` once the runtime is gone.
    pub(crate) fn loop_key(&self) -> Option<(u64, usize)> {
        (self.entry.runtime.strong_count() > 0).then_some((self.entry.runtime_id, self.entry.idx))
    }

    pub(crate) fn index(&self) -> usize {
        self.entry.idx
    }

    pub(crate) fn token(&self) -> &Signal {
        &self.token
    }

    /// A handle to the runtime, e.g. for a command handler that reports on other workers.
    /// `None` once the runtime is gone. Lifecycle operations called through it from inside this
    /// worker's `start` or `stop` are refused with `LifecycleError::Reentrant`.
    #[must_use]
    pub fn runtime_handle(&self) -> Option<crate::Runtime> {
        self.entry
            .runtime
            .upgrade()
            .map(|inner| crate::Runtime { inner })
    }

    /// The worker's local name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.entry.local
    }

    /// The worker's qualified name, `runtime/worker`.
    #[must_use]
    pub fn qualified_name(&self) -> &str {
        &self.entry.qualified
    }

    /// For an incarnation started by the restart policy: the restart attempt, the restart count
    /// and how the previous incarnation ended. `None` for a requested start.
    #[must_use]
    pub fn restart(&self) -> Option<&crate::supervise::RestartInfo> {
        self.restart.as_deref()
    }

    /// A heartbeat for the worker's [`Watchdog`](crate::supervise::Watchdog): one relaxed
    /// counter increment (no clock read, no wake-up). Call it from the worker's loop at least
    /// once per watchdog timeout. Without a watchdog it does nothing useful and costs as little.
    ///
    /// Only the current incarnation's beats count: a stale context (a previous incarnation's
    /// loop that outlived its stop) cannot hide a stall of the new one.
    #[inline]
    pub fn beat(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.entry.incarnation.load(Relaxed) == self.incarnation {
            self.entry.beats.fetch_add(1, Relaxed);
        }
    }

    /// This incarnation's number: 1 for the first start, then 2, 3, ...
    #[must_use]
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The deadline of the `start` or `stop` call this context was passed to, if it has one.
    /// The runtime drops the call's future at that instant.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether this incarnation has been asked to stop (or has ended).
    #[must_use]
    pub fn is_stop_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when this incarnation is asked to stop, or ends by failure.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub fn stop_requested(&self) -> impl Future<Output = ()> + Send + '_ {
        self.token.cancelled()
    }

    /// An owned stop signal, to move into tasks the worker spawns.
    #[must_use]
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal {
            token: self.token.clone(),
        }
    }

    /// Spawns `future` as a child task of this incarnation: it is dropped as soon as the
    /// incarnation is asked to stop (or ends by failure), and the runtime aborts and awaits it
    /// when the incarnation ends (before a stop returns, and before a restart starts the next
    /// incarnation), so no child outlives its incarnation. Its output is discarded; a panic in
    /// it is contained and does not affect the worker.
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        let task = async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = future => {}
            }
        };
        let Some(inner) = self.entry.runtime.upgrade() else {
            return;
        };
        let mut children = self
            .entry
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let children = children.get_or_insert_with(|| {
            // Before the stop signal is checked below (see `WorkerEntry::take_children`).
            self.entry
                .ever_spawned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            Box::default()
        });
        // Finished children leave the set now, so a worker that spawns many short tasks does
        // not keep their results.
        while children.set.try_join_next().is_some() {}
        if children.incarnation < self.incarnation {
            // The first child of a new incarnation; an older set still here was never reaped
            // (dropping a `JoinSet` aborts its tasks).
            children.incarnation = self.incarnation;
            children.set = tokio::task::JoinSet::new();
        }
        if children.incarnation == self.incarnation && !self.token.is_cancelled() {
            crate::task::spawn_into(&mut children.set, &inner.tracker, task);
        }
    }

    /// Sets whether the worker is ready.
    ///
    /// Allowed while starting (the value then survives the end of the start), running and
    /// draining. While draining, `true` is ignored: a worker that is draining stays unready, and
    /// saying otherwise is not an error.
    ///
    /// # Errors
    ///
    /// [`ContextError::Stale`] for an earlier incarnation's context;
    /// [`ContextError::InvalidState`] when the worker is stopping, stopped or failed.
    pub fn set_ready(&self, ready: bool) -> Result<(), ContextError> {
        let inner = self.runtime()?;
        ops::set_ready(&inner, self.entry.idx, self.incarnation, ready)
    }

    /// Sets whether the runtime may admit commands to this worker. Emits no event; the value is
    /// visible in status.
    ///
    /// # Errors
    ///
    /// [`ContextError::Stale`]; [`ContextError::InvalidState`] unless starting or running (or
    /// draining, for `false`).
    pub fn set_accepting_work(&self, accepting: bool) -> Result<(), ContextError> {
        let inner = self.runtime()?;
        ops::set_accepting(&inner, self.entry.idx, self.incarnation, accepting)
    }

    /// Reports that the worker failed.
    ///
    /// Running or draining: the worker becomes `failed` (its failure policy applies) and its
    /// stop signal fires. Starting: it is recorded, and the start ends `failed`. Stopping: it is
    /// recorded and the stop goes on. The error's public face comes from
    /// [`with_failure`](crate::failure::with_failure), or is the generic `worker_failed`; its text
    /// stays private.
    ///
    /// # Errors
    ///
    /// [`ContextError::Stale`]; [`ContextError::InvalidState`] when registered, stopped or
    /// already failed.
    pub fn report_failure(&self, error: impl Into<BoxError>) -> Result<(), ContextError> {
        let error: BoxError = error.into();
        let failure = Failure::from_error(&*error, Failure::worker_failed());
        let inner = self.runtime()?;
        ops::fail(
            &inner,
            self.entry.idx,
            self.incarnation,
            ops::Failing {
                failure,
                cause: Some(Arc::from(error)),
                reason: ExitReason::Failed,
                panic: false,
            },
        )
    }

    /// The worker's live status (of whatever incarnation is current).
    #[must_use]
    pub fn status(&self) -> Option<WorkerStatus> {
        let inner = self.entry.runtime.upgrade()?;
        let st = inner.lock();
        st.workers
            .get(self.entry.idx)
            .map(crate::runtime::WorkerRecord::status)
    }
}

/// An owned, clonable stop signal of one incarnation; see [`WorkerContext::stop_signal`].
#[derive(Clone, Debug)]
pub struct StopSignal {
    token: Signal,
}

impl StopSignal {
    /// Whether the stop was requested.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the stop is requested.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }
}
