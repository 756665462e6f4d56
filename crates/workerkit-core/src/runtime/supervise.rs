//! Supervised restart and the heartbeat watchdog: the decisions (under the state lock) and the
//! tasks that carry them out (never under a lock).
//!
//! A failed incarnation of a worker with a restart policy becomes `restarting` and gets one
//! supervisor task, which
//!
//! 1. wins the lifecycle gate and stops the failed incarnation (its `stop`, its readiness check,
//!    its child tasks), so that at most one incarnation is ever live;
//! 2. waits out the backoff on tokio's clock, with no gate and no lock held;
//! 3. wins the gate again and starts a new incarnation (from the factory, if any).
//!
//! Each scheduling has a generation and a cancel signal. Drain, stop, shutdown and removal
//! cancel it under the state lock; the task checks its generation under the state lock before
//! each step, so a cancelled or superseded task never touches the worker again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ops::{self, Deadline};
use super::state::{PendingRestart, State};
use super::{Inner, LIFECYCLE_OF};
use crate::failure::Failure;
use crate::lifecycle::LifecycleState;
use crate::observe::SupervisionKind;
use crate::status::ExitReason;
use crate::supervise::StallAction;
use crate::task::Signal;
use crate::time::Timestamp;

/// What happens to a failed incarnation.
pub(crate) enum Decision {
    /// Restart after `delay`.
    Restart { attempt: u32, delay: Duration },
    /// Stay failed: the policy gave up (`why`).
    GiveUp(&'static str),
    /// Stay failed: no restart policy applies.
    Fail,
}

impl Decision {
    /// The state the worker moves to.
    pub(crate) fn state(&self) -> LifecycleState {
        match self {
            Self::Restart { .. } => LifecycleState::Restarting,
            Self::GiveUp(_) | Self::Fail => LifecycleState::Failed,
        }
    }
}

/// A scheduled restart, handed to [`spawn`] once the state lock is released.
pub(crate) struct Plan {
    idx: usize,
    generation: u64,
    incarnation: u64,
    cancel: Signal,
    due: Instant,
}

/// Decides the fate of worker `idx`'s failed current incarnation (under the state lock).
///
/// `restartable`: the failure happened where a restart may follow (a running incarnation, or
/// the start of a restart), and nothing forbids it (an escalated panic, a `cancel` stall).
/// `permanent`: the failure's error was marked permanent.
pub(crate) fn decide(st: &mut State, idx: usize, restartable: bool, permanent: bool) -> Decision {
    let policy = st.workers[idx].config.restart();
    if !restartable || st.shutting_down || st.shut_down || !policy.restarts(false) {
        return Decision::Fail;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        // Nowhere to schedule the restart (a context call from outside tokio).
        return Decision::Fail;
    }
    if !policy.restarts(permanent) {
        return Decision::GiveUp("permanent");
    }
    let now = Instant::now();
    let sup = st.workers[idx].sup.make();
    if let Some(intensity) = policy.intensity_bound() {
        while sup
            .window
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= intensity.window())
        {
            sup.window.pop_front();
        }
        let max = usize::try_from(intensity.max_restarts()).unwrap_or(usize::MAX);
        if sup.window.len() >= max {
            return Decision::GiveUp("intensity");
        }
        sup.window.push_back(now);
    }
    let healthy = sup
        .running_since
        .is_some_and(|since| now.saturating_duration_since(since) >= policy.healthy_after());
    if healthy {
        sup.attempt = 0;
    }
    sup.attempt = sup.attempt.saturating_add(1);
    let attempt = sup.attempt;
    let delay = policy.backoff_schedule().delay(attempt, &mut st.rng);
    Decision::Restart { attempt, delay }
}

/// Records a decision taken by [`decide`] once the worker has moved to `decision.state()` and
/// its failure is recorded: schedules the restart or marks the give-up, with its event.
pub(crate) fn apply(
    st: &mut State,
    idx: usize,
    decision: &Decision,
    reason: ExitReason,
    failure: Option<&Failure>,
    now: Timestamp,
) -> Option<Plan> {
    match *decision {
        Decision::Fail => None,
        Decision::GiveUp(why) => {
            let restarts = st.workers[idx].sup.restarts();
            st.modify(idx, |rec| {
                let sup = rec.sup.make();
                sup.gave_up = true;
                sup.next_restart_at = None;
            });
            st.supervision_event(
                Some(idx),
                SupervisionKind::GaveUp {
                    restarts,
                    reason,
                    failure: failure.cloned(),
                    why,
                },
                now,
            );
            None
        }
        Decision::Restart { attempt, delay } => {
            let due_at = now.plus(delay);
            let cancel = Signal::new();
            let (generation, incarnation) = st.modify(idx, |rec| {
                let sup = rec.sup.make();
                sup.generation += 1;
                sup.next_restart_at = Some(due_at);
                sup.pending = Some(PendingRestart {
                    generation: sup.generation,
                    cancel: cancel.clone(),
                });
                (sup.generation, rec.incarnation)
            });
            st.supervision_event(
                Some(idx),
                SupervisionKind::RestartScheduled {
                    attempt,
                    delay,
                    due: due_at,
                    reason,
                    failure: failure.cloned(),
                },
                now,
            );
            Some(Plan {
                idx,
                generation,
                incarnation,
                cancel,
                due: Instant::now() + delay,
            })
        }
    }
}

/// Cancels worker `idx`'s pending restart, if any, with its event (under the state lock).
pub(crate) fn cancel(st: &mut State, idx: usize, now: Timestamp) {
    if st.workers[idx].sup.pending_generation().is_none() {
        return;
    }
    st.modify(idx, |rec| rec.sup.cancel());
    st.supervision_event(Some(idx), SupervisionKind::RestartCancelled, now);
}

/// Starts the supervisor task of a scheduled restart (after the state lock is released).
pub(crate) fn spawn(inner: &Inner, plan: Option<Plan>) {
    let Some(plan) = plan else { return };
    let Some(inner) = inner.me.upgrade() else {
        return;
    };
    let id = inner.id;
    let tracker = inner.ops_tracker.clone();
    crate::task::spawn(&tracker, LIFECYCLE_OF.scope(id, supervise(inner, plan)));
}

/// Whether `plan` is still the worker's pending restart.
fn pending(inner: &Inner, plan: &Plan) -> bool {
    let st = inner.lock();
    let rec = &st.workers[plan.idx];
    rec.lifecycle == LifecycleState::Restarting
        && rec.sup.pending_generation() == Some(plan.generation)
        && !st.shutting_down
        && !st.shut_down
}

/// Wins the lifecycle gate, unless the restart is cancelled first.
async fn gate(inner: &Inner, plan: &Plan) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permit = tokio::select! {
        biased;
        () = plan.cancel.cancelled() => return None,
        permit = Arc::clone(&inner.gate).acquire_owned() => permit.ok()?,
    };
    pending(inner, plan).then_some(permit)
}

/// The supervisor task of one scheduled restart.
async fn supervise(inner: Arc<Inner>, plan: Plan) {
    let mut timer = Deadline::default();
    let Some(permit) = gate(&inner, &plan).await else {
        return;
    };
    ops::reap(&inner, plan.idx, plan.incarnation, &mut timer).await;
    let (inner, _permit) = if plan.due > Instant::now() {
        // Wait out the backoff with the gate released, holding the runtime only weakly: a
        // runtime dropped meanwhile (without a shutdown) is not kept alive to restart a worker.
        drop(permit);
        let weak = Arc::downgrade(&inner);
        drop(inner);
        tokio::select! {
            biased;
            () = plan.cancel.cancelled() => return,
            () = tokio::time::sleep_until(plan.due) => {}
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let Some(permit) = gate(&inner, &plan).await else {
            return;
        };
        (inner, permit)
    } else {
        // No backoff left (a zero delay): start at once, in the same hold of the gate (a timer
        // would round up to the next millisecond).
        if !pending(&inner, &plan) {
            return;
        }
        (inner, permit)
    };
    // The outcome is in the worker's status and events; a failed start schedules the next
    // restart itself (or gives up). A panic has no caller to resume on: under `Propagate` it
    // escalated already.
    let _ = ops::start(&inner, plan.idx, &mut timer, Some(plan.generation)).await;
}

/// Starts the watchdog of a running incarnation (when the worker has one).
pub(crate) fn watch(
    inner: &Inner,
    idx: usize,
    entry: &Arc<super::WorkerEntry>,
    incarnation: u64,
    token: Signal,
    watchdog: crate::supervise::Watchdog,
) {
    let Some(inner) = inner.me.upgrade() else {
        return;
    };
    let weak = Arc::downgrade(&inner);
    let entry = Arc::clone(entry);
    let tracker = inner.tracker.clone();
    drop(inner);
    crate::task::spawn(&tracker, async move {
        let half = (watchdog.timeout() / 2).max(Duration::from_micros(500));
        let mut last = entry.beats.load(std::sync::atomic::Ordering::Relaxed);
        let mut quiet = 0_u32;
        let mut stalled = false;
        let mut tick = tokio::time::interval_at(Instant::now() + half, half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let beats = entry.beats.load(std::sync::atomic::Ordering::Relaxed);
            if beats != last {
                last = beats;
                quiet = 0;
                if stalled {
                    stalled = false;
                    let Some(inner) = weak.upgrade() else { return };
                    ops::stall_cleared(&inner, idx, incarnation);
                }
                continue;
            }
            quiet = quiet.saturating_add(1);
            // Two quiet half-periods in a row: no beat for at least one timeout, found within
            // one and a half.
            if quiet >= 2 && !stalled {
                stalled = true;
                let Some(inner) = weak.upgrade() else { return };
                ops::stalled(&inner, idx, incarnation, watchdog);
                if matches!(
                    watchdog.action(),
                    StallAction::Cancel | StallAction::Restart
                ) {
                    return;
                }
            }
        }
    });
}
