//! The bodies of lifecycle operations (run while holding the gate) and of the state changes a
//! worker makes through its context.
//!
//! **Architecture invariant:** this module and `state.rs` are the only writers of lifecycle
//! state. Single-worker and bulk operations run only while holding the lifecycle gate;
//! context calls (`set_ready`, `report_failure`, ...) take the state lock only.

use std::any::Any;
use std::future::Future as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, ShutdownOptions};
use crate::error::{ContextError, LifecycleError, ShutdownError, ShutdownReport, Unfinished};
use crate::failure::{BoxError, Failure, PanicError};
use crate::lifecycle::LifecycleState;
use crate::observe::{Cause, Operation, OperationPhase};
use crate::policy::PanicPolicy;
use crate::status::{Exit, ExitReason, FailureRecord, WorkerStatus};
use crate::task::{CatchUnwind, Signal};
use crate::time::Timestamp;
use crate::worker::{WorkerContext, check};

type Payload = Box<dyn Any + Send>;

/// The least time a worker's stop gets within a shutdown, even after its budget ran out.
const STOP_FLOOR: Duration = Duration::from_millis(100);

/// How a guarded call into worker code ended.
enum Outcome {
    Ok,
    Err(BoxError),
    TimedOut,
    Panicked(Payload),
}

/// A deadline timer reused across the workers of a bulk operation: re-arming one registered
/// timer is much cheaper than registering (and waking the timer driver for) one per worker.
#[derive(Default)]
pub(super) struct Deadline {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    fn arm(&mut self, at: Instant) -> std::pin::Pin<&mut tokio::time::Sleep> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        sleep.as_mut()
    }
}

/// Worker code that, whenever it waits, first spawns the loops batched by a bulk start
/// (`worker::batched_loops`): a worker's start may wait for an earlier worker's loop.
struct FlushOnWait<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for FlushOnWait<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let poll = std::pin::Pin::new(&mut self.0).poll(cx);
        if poll.is_pending() {
            crate::worker::flush_loops();
        }
        poll
    }
}

/// Runs worker code under panic capture and an optional deadline (the future is dropped then).
/// Worker code that finishes at its first poll never arms the timer. `first_polled` runs right
/// after the first poll, whatever it returned.
async fn guarded<F>(
    deadline: Option<Instant>,
    timer: &mut Deadline,
    future: F,
    first_polled: impl FnOnce(),
) -> Outcome
where
    F: std::future::Future<Output = Result<(), BoxError>> + Unpin,
{
    let mut future = CatchUnwind::new(FlushOnWait(future));
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            std::task::Poll::Ready(result) => Some(result),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    first_polled();
    let result = match (first, deadline) {
        (Some(result), _) => Some(result),
        (None, None) => Some((&mut future).await),
        (None, Some(deadline)) => {
            let sleep = timer.arm(deadline);
            tokio::select! {
                biased;
                result = &mut future => Some(result),
                () = sleep => None,
            }
        }
    };
    // Dropping worker code can panic too (a `Drop` impl, e.g. of a future dropped at its
    // deadline): that is a panic of the worker, whatever happened before.
    if let Err(payload) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(future)))
    {
        return Outcome::Panicked(payload);
    }
    match result {
        None => Outcome::TimedOut,
        Some(Ok(Ok(()))) => Outcome::Ok,
        Some(Ok(Err(err))) => Outcome::Err(err),
        Some(Err(payload)) => Outcome::Panicked(payload),
    }
}

/// The public failure, private cause and exit reason of a failed outcome. Projection runs
/// before any lock is taken: user error methods may call back into the runtime.
fn classify(
    outcome: &Outcome,
    operation: impl std::fmt::Display,
    timeout_reason: ExitReason,
) -> (Failure, Option<Cause>, ExitReason, bool) {
    match outcome {
        Outcome::Ok => unreachable_ok(),
        Outcome::Err(err) => (
            Failure::from_error(&**err, Failure::worker_failed()),
            None,
            ExitReason::Failed,
            false,
        ),
        Outcome::TimedOut => (Failure::deadline_exceeded(), None, timeout_reason, false),
        Outcome::Panicked(payload) => {
            let panic = PanicError::new(operation, &**payload);
            let failure = panic.failure().clone();
            (failure, Some(Arc::new(panic)), ExitReason::Panicked, true)
        }
    }
}

fn unreachable_ok() -> (Failure, Option<Cause>, ExitReason, bool) {
    (Failure::worker_failed(), None, ExitReason::Failed, false)
}

/// Takes the private cause out of an `Err` outcome.
fn take_cause(outcome: Outcome, cause: Option<Cause>) -> (Option<Cause>, Option<Payload>) {
    match outcome {
        Outcome::Err(err) => (Some(Arc::from(err)), None),
        Outcome::Panicked(payload) => (cause, Some(payload)),
        Outcome::Ok | Outcome::TimedOut => (cause, None),
    }
}

fn invalid_state(
    inner: &Inner,
    idx: usize,
    st: &super::State,
    operation: Operation,
) -> LifecycleError {
    let _ = inner;
    LifecycleError::InvalidState {
        worker: st.workers[idx].entry.qualified.to_string(),
        state: st.workers[idx].lifecycle,
        operation,
    }
}

/// A single-worker operation with its operation events; resumes a propagated panic after them.
pub(super) async fn single(
    inner: &Arc<Inner>,
    operation: Operation,
    idx: usize,
) -> Result<WorkerStatus, LifecycleError> {
    let began = Instant::now();
    let worker = Some(Arc::clone(&inner.lock().workers[idx].entry.qualified));
    operation_event(
        inner,
        worker.clone(),
        operation,
        OperationPhase::Started,
        began,
    );
    let mut timer = Deadline::default();
    let (result, payload) = match operation {
        Operation::Start => start(inner, idx, &mut timer, None).await,
        Operation::Stop => {
            let (result, payload) = stop(inner, idx, None, Instant::now(), &mut timer).await;
            (result.map(|_| ()), payload)
        }
        _ => (drain(inner, idx), None),
    };
    let result = result.map(|()| inner.lock().workers[idx].status());
    let phase = match &result {
        Ok(_) => OperationPhase::Succeeded,
        Err(err) => OperationPhase::Failed(public_failure(err)),
    };
    let seq = operation_event(inner, worker, operation, phase, began);
    inner.delivered(seq).await;
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
    result
}

fn public_failure(err: &LifecycleError) -> Failure {
    err.failure()
        .cloned()
        .unwrap_or_else(|| Failure::new(err.code(), err.code().replace('_', " ")))
}

fn operation_event(
    inner: &Inner,
    worker: Option<Arc<str>>,
    operation: Operation,
    phase: OperationPhase,
    began: Instant,
) -> u64 {
    let (_, seq) = inner.mutate(|st, _| {
        st.operation_event(worker, operation, phase, began.elapsed());
    });
    seq
}

/// Starts one worker (gate held). Returns the panic payload to resume under `Propagate`.
///
/// `restart`: the generation of the pending restart this start carries out (from
/// `restarting`), or `None` for a requested start (from `registered`, `stopped` or `failed`).
pub(super) async fn start(
    inner: &Arc<Inner>,
    idx: usize,
    timer: &mut Deadline,
    restart: Option<u64>,
) -> (Result<(), LifecycleError>, Option<Payload>) {
    let (begin, _) = inner.mutate(|st, now| {
        if st.shut_down {
            return Err(LifecycleError::ShutDown {
                runtime: inner.name.to_string(),
            });
        }
        let rec = &st.workers[idx];
        let startable = match restart {
            None => rec.lifecycle.can_start() && !rec.removed,
            Some(generation) => {
                rec.lifecycle == LifecycleState::Restarting
                    && rec.sup.pending_generation() == Some(generation)
                    && !st.shutting_down
            }
        };
        if !startable {
            return Err(invalid_state(inner, idx, st, Operation::Start));
        }
        st.transition_with(idx, LifecycleState::Starting, now, |rec| {
            rec.incarnation += 1;
            rec.accepting = false;
            rec.ready_set_during_start = false;
            rec.accepting_set_during_start = false;
            rec.failure_reported_during_start = false;
            rec.escalated = false;
            rec.token = crate::task::Signal::new();
            if restart.is_some() {
                let previous = rec.last_exit.clone();
                let sup = rec.sup.make();
                sup.pending = None;
                sup.next_restart_at = None;
                sup.running_since = None;
                sup.stalled = false;
                sup.restarts += 1;
                sup.info = previous.map(|previous| {
                    Arc::new(crate::supervise::RestartInfo {
                        attempt: sup.attempt,
                        restarts: sup.restarts,
                        previous,
                    })
                });
            } else if let Some(sup) = rec.sup.existing() {
                // A requested start begins supervision afresh (the restart count stays).
                sup.cancel();
                sup.running_since = None;
                sup.stalled = false;
                sup.gave_up = false;
                sup.info = None;
                sup.attempt = 0;
                sup.window.clear();
            }
        });
        st.set_ready(idx, false, now);
        let rec = &st.workers[idx];
        rec.entry
            .incarnation
            .store(rec.incarnation, std::sync::atomic::Ordering::Relaxed);
        if let Some(sup) = st.workers[idx].sup.get().filter(|_| restart.is_some()) {
            let kind = crate::observe::SupervisionKind::Restarted {
                restarts: sup.restarts,
                attempt: sup.attempt,
            };
            st.supervision_event(Some(idx), kind, now);
        }
        let rec = &st.workers[idx];
        Ok((
            Arc::clone(&rec.entry),
            rec.incarnation,
            rec.token.clone(),
            rec.config.clone(),
            rec.sup.get().and_then(|s| s.info.clone()),
            rec.has_commands,
        ))
    });
    let (entry, incarnation, token, config, info, has_commands) = match begin {
        Ok(begin) => begin,
        Err(err) => return (Err(err), None),
    };
    // Children of earlier incarnations never outlive them into this one.
    shut_down_children(&entry, incarnation - 1).await;
    let deadline = config.start_timeout.map(|t| Instant::now() + t);
    let ctx = WorkerContext::new(&entry, incarnation, token.clone(), deadline).with_restart(info);

    let outcome = {
        let mut slot = entry.slot.lock().await;
        let mut made = Outcome::Ok;
        if let (Some(_), Some(previous)) = (&entry.factory, slot.as_mut()) {
            // The previous incarnation failed and was never stopped (a stop, or a restart's
            // supervisor, drops the instance): stop it first, so that its tasks (a loop) have
            // ended before the new instance starts: at most one live incarnation. Its outcome
            // is the old incarnation's business; the start goes on either way.
            let stopped = Signal::new();
            stopped.cancel();
            let stop_deadline = config.stop_timeout.map(|t| Instant::now() + t);
            let old = WorkerContext::new(&entry, incarnation - 1, stopped, stop_deadline);
            let _ = guarded(stop_deadline, timer, previous.stop_dyn(old), || {}).await;
        }
        if let Some(factory) = &entry.factory {
            // The factory, and dropping the previous instance, are worker code: catch panics.
            let replaced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                *slot = Some(factory());
            }));
            if let Err(payload) = replaced {
                made = Outcome::Panicked(payload);
            }
        }
        match (made, slot.as_mut()) {
            (Outcome::Ok, Some(worker)) => match worker.as_loop_worker() {
                Some(worker) => {
                    let start = std::pin::pin!(crate::Worker::start(worker, ctx.clone()));
                    guarded(deadline, timer, start, || {}).await
                }
                None => guarded(deadline, timer, worker.start_dyn(ctx.clone()), || {}).await,
            },
            (Outcome::Ok, None) => Outcome::Err("worker instance unavailable".into()),
            (other, _) => other,
        }
    };

    if matches!(outcome, Outcome::Ok) {
        // Commands admitted by this incarnation get its context (set before it can be running).
        if has_commands {
            entry.commands.set_context(&ctx.without_deadline());
        }
        let (result, _) = inner.mutate(|st, now| {
            let rec = &st.workers[idx];
            if rec.incarnation != incarnation || rec.lifecycle != LifecycleState::Starting {
                return (Err(invalid_state(inner, idx, st, Operation::Start)), None);
            }
            if rec.failure_reported_during_start {
                // Row 3: the worker reported a failure during its start; it ends failed, with
                // that failure (already observed, so no second failure event).
                let failure = rec
                    .last_failure
                    .as_ref()
                    .map_or_else(Failure::worker_failed, |f| {
                        Failure::new(f.code.clone(), f.message.clone())
                    });
                let reason = rec.reported_reason;
                let permanent = rec.reported_permanent;
                let restartable = restart.is_some() && !rec.escalated;
                let exit = Exit {
                    incarnation,
                    reason,
                    failure: Some(failure.clone()),
                    at: now,
                };
                st.modify(idx, |rec| {
                    rec.accepting = false;
                    rec.last_exit = Some(exit.clone());
                });
                let decision = super::supervise::decide(st, idx, restartable, permanent);
                st.transition(idx, decision.state(), now);
                st.set_ready(idx, false, now);
                let plan = super::supervise::apply(st, idx, &decision, reason, Some(&failure), now);
                st.workers[idx].entry.notify_exit();
                return (
                    Err(LifecycleError::StartFailed {
                        worker: st.workers[idx].entry.qualified.to_string(),
                        failure,
                        reason,
                        cause: None,
                    }),
                    plan,
                );
            }
            let ready = if rec.ready_set_during_start {
                rec.ready
            } else {
                rec.config.ready_on_start
            };
            let accepting = if rec.accepting_set_during_start {
                rec.accepting
            } else {
                rec.config.accepting_work_on_start
            };
            st.transition_with(idx, LifecycleState::Running, now, |rec| {
                rec.accepting = accepting;
                rec.last_failure = None;
                if rec.config.supervision.is_some() {
                    rec.sup.make().running_since = Some(Instant::now());
                }
            });
            st.set_ready(idx, ready, now);
            (Ok(()), None)
        });
        let (result, plan) = result;
        super::supervise::spawn(inner, plan);
        if result.is_err() {
            token.cancel();
        } else {
            if let Some(check) = &entry.check {
                let handle = check::spawn(inner, ctx.without_deadline(), check.clone());
                if let Ok(mut slot) = entry.check_task.lock() {
                    *slot = Some(handle);
                }
            }
            if let Some(watchdog) = config.watchdog() {
                super::supervise::watch(inner, idx, &entry, incarnation, token, watchdog);
            }
        }
        return (result, None);
    }

    let (failure, cause, reason, panic) = classify(
        &outcome,
        format_args!("starting worker {:?}", &*entry.qualified),
        ExitReason::StartTimedOut,
    );
    let (cause, payload) = take_cause(outcome, cause);
    token.cancel();
    let permanent = cause
        .as_deref()
        .is_some_and(|err| crate::retry::is_permanent(err));
    // A panic in a restart's start has no caller to resume on: under `Propagate` it escalates.
    let escalate = panic && restart.is_some() && config.panic_policy == PanicPolicy::Propagate;
    let (result, _) = inner.mutate(|st, now| {
        let reported = st.workers[idx].failure_reported_during_start;
        let exit = Exit {
            incarnation,
            reason,
            failure: Some(failure.clone()),
            at: now,
        };
        st.modify(idx, |rec| {
            rec.accepting = false;
            if !reported {
                rec.last_failure = Some(FailureRecord::new(&failure, now));
            }
            rec.last_exit = Some(exit.clone());
            rec.escalated |= escalate;
        });
        let restartable = restart.is_some() && !st.workers[idx].escalated;
        let decision = super::supervise::decide(st, idx, restartable, permanent);
        st.transition(idx, decision.state(), now);
        st.set_ready(idx, false, now);
        // One failure event per start failure; a panic is always reported (it is news even
        // after a failure the worker reported itself).
        if !reported || panic {
            st.failure_event(idx, incarnation, &failure, cause.clone(), panic, true, now);
        }
        let plan = super::supervise::apply(st, idx, &decision, reason, Some(&failure), now);
        st.workers[idx].entry.notify_exit();
        (
            Err(LifecycleError::StartFailed {
                worker: st.workers[idx].entry.qualified.to_string(),
                failure: failure.clone(),
                reason,
                cause: cause.clone().map(crate::error::SharedCause::new),
            }),
            plan,
        )
    });
    let (result, plan) = result;
    super::supervise::spawn(inner, plan);
    let payload = payload.filter(|_| config.panic_policy == PanicPolicy::Propagate && !escalate);
    (result, payload)
}

/// Aborts and awaits the child tasks (`WorkerContext::spawn`) of incarnations up to
/// `incarnation`.
pub(super) async fn shut_down_children(entry: &super::WorkerEntry, incarnation: u64) {
    if let Some(mut children) = entry.take_children(incarnation) {
        children.shutdown().await;
    }
}

/// Stops a failed incarnation before its restart (gate held; the worker stays `restarting`):
/// its `stop` runs under the stop timeout (a failure there is observed, and the restart goes
/// on: the next start finds out whether the worker can run), then its readiness check and its
/// child tasks are awaited.
pub(super) async fn reap(inner: &Arc<Inner>, idx: usize, incarnation: u64, timer: &mut Deadline) {
    let (entry, token, config) = {
        let st = inner.lock();
        let rec = &st.workers[idx];
        (
            Arc::clone(&rec.entry),
            rec.token.clone(),
            rec.config.clone(),
        )
    };
    token.cancel();
    let check_task = entry
        .check_task
        .lock()
        .ok()
        .and_then(|mut slot| slot.take());
    if let Some(task) = check_task {
        let _ = task.await;
    }
    let deadline = config.stop_timeout.map(|t| Instant::now() + t);
    let ctx = WorkerContext::new(&entry, incarnation, token, deadline);
    let outcome = {
        let mut slot = entry.slot.lock().await;
        let outcome = match slot.as_mut() {
            Some(worker) => guarded(deadline, timer, worker.stop_dyn(ctx), || {}).await,
            None => Outcome::Ok,
        };
        if matches!(outcome, Outcome::Ok) && entry.factory.is_some() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| *slot = None)) {
                Ok(()) => outcome,
                Err(payload) => Outcome::Panicked(payload),
            }
        } else {
            outcome
        }
    };
    shut_down_children(&entry, incarnation).await;
    if matches!(outcome, Outcome::Ok) {
        inner.mutate(|st, _| {
            if st.workers[idx].incarnation == incarnation {
                st.workers[idx].sup.make().reaped = incarnation;
            }
        });
        return;
    }
    let (failure, cause, _, panic) = classify(
        &outcome,
        format_args!("stopping failed worker {:?}", &*entry.qualified),
        ExitReason::Failed,
    );
    let (cause, _) = take_cause(outcome, cause);
    inner.mutate(|st, now| {
        st.failure_event(idx, incarnation, &failure, cause, panic, false, now);
    });
}

/// Drains one worker (gate held). Never calls worker code.
pub(super) fn drain(inner: &Arc<Inner>, idx: usize) -> Result<(), LifecycleError> {
    inner.mutate(|st, now| drain_locked(inner, st, idx, now)).0
}

/// The state change of a drain, under the state lock.
fn drain_locked(
    inner: &Inner,
    st: &mut super::State,
    idx: usize,
    now: Timestamp,
) -> Result<(), LifecycleError> {
    match st.workers[idx].lifecycle {
        LifecycleState::Running => {
            st.transition_with(idx, LifecycleState::Draining, now, |rec| {
                rec.accepting = false;
            });
            st.set_ready(idx, false, now);
            Ok(())
        }
        LifecycleState::Restarting => {
            // Its pending restart is cancelled; with no incarnation left to drain it waits,
            // draining, for a stop (which stops the failed incarnation).
            super::supervise::cancel(st, idx, now);
            st.transition_with(idx, LifecycleState::Draining, now, |rec| {
                rec.accepting = false;
            });
            st.set_ready(idx, false, now);
            Ok(())
        }
        LifecycleState::Draining => {
            st.set_ready(idx, false, now);
            st.modify(idx, |rec| rec.accepting = false);
            Ok(())
        }
        _ => Err(invalid_state(inner, idx, st, Operation::Drain)),
    }
}

/// Stops one worker (gate held), within its stop timeout and, if given, `budget` (measured at
/// `now`). Returns the worker's qualified name when it stopped.
pub(super) async fn stop(
    inner: &Arc<Inner>,
    idx: usize,
    budget: Option<Duration>,
    now: Instant,
    timer: &mut Deadline,
) -> (Result<Arc<str>, LifecycleError>, Option<Payload>) {
    let (begin, _) = inner.mutate(|st, now| {
        if !st.workers[idx].lifecycle.can_stop() {
            return Err(invalid_state(inner, idx, st, Operation::Stop));
        }
        super::supervise::cancel(st, idx, now);
        st.transition_with(idx, LifecycleState::Stopping, now, |rec| {
            rec.accepting = false;
            rec.sup.set_stalled(false);
        });
        st.set_ready(idx, false, now);
        let rec = &st.workers[idx];
        // Fired quietly: its waiters wake once the worker's stop has been polled (or at the
        // first wait before it, below). A loop worker joins its idle loop inline at that first
        // poll, and the loop's task, never woken, is not handed back and forth with this one.
        rec.token.fire_quietly();
        // The supervisor already stopped this (failed) incarnation before its restart was
        // cancelled: its `stop` is not called twice.
        let reaped = rec.sup.get().is_some_and(|s| s.reaped == rec.incarnation);
        Ok((
            Arc::clone(&rec.entry),
            rec.incarnation,
            rec.token.clone(),
            rec.config.clone(),
            reaped,
        ))
    });
    let (entry, incarnation, token, config, reaped) = match begin {
        Ok(begin) => begin,
        Err(err) => return (Err(err), None),
    };
    let mut wake = WakeOnce(Some(token.clone()));
    let mut budget = budget;
    let mut now = now;
    if let Some(grace) = entry.commands.cancel_on_stop {
        wake.now();
        // Admitted commands of this incarnation get `grace` to finish (never more than the
        // budget of a shutdown); the rest are cancelled. The grace spent comes out of the
        // budget left for the worker's own stop.
        let grace = budget.map_or(grace, |b| grace.min(b));
        let graced = Instant::now();
        crate::command::pipeline::drain_incarnation(&entry, incarnation, grace).await;
        budget = budget.map(|b| b.saturating_sub(graced.elapsed()).max(STOP_FLOOR));
        now = Instant::now();
    }
    // The worker's own stop is timed from here, after its commands' grace, and its context's
    // deadline says the same.
    let limit = match (config.stop_timeout, budget) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Only a worker with a readiness check has a check task.
    let check_task = entry
        .check
        .as_ref()
        .and_then(|_| entry.check_task.lock().ok())
        .and_then(|mut slot| slot.take());
    if let Some(task) = check_task {
        // The check loop watches the stop signal, which has fired; it ends promptly.
        wake.now();
        let _ = task.await;
        now = Instant::now();
    }
    let deadline = limit.map(|t| now + t);
    let ctx = WorkerContext::new(&entry, incarnation, token, deadline);
    let outcome = {
        let mut slot = entry.slot.lock().await;
        let outcome = match slot.as_mut() {
            Some(worker) if !reaped => match worker.as_loop_worker() {
                Some(worker) => {
                    let stop = std::pin::pin!(crate::Worker::stop(worker, ctx));
                    guarded(deadline, timer, stop, || wake.now()).await
                }
                None => guarded(deadline, timer, worker.stop_dyn(ctx), || wake.now()).await,
            },
            _ => Outcome::Ok,
        };
        wake.now();
        if matches!(outcome, Outcome::Ok) && entry.factory.is_some() {
            // A factory worker's instance is done once it stopped; the next start makes anew.
            // Dropping it is worker code: a panic there is a panic of the stop.
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                *slot = None;
            }));
            if let Err(payload) = dropped {
                Outcome::Panicked(payload)
            } else {
                outcome
            }
        } else {
            outcome
        }
    };
    // The incarnation has ended: its child tasks go with it.
    shut_down_children(&entry, incarnation).await;

    if matches!(outcome, Outcome::Ok) {
        inner.mutate(|st, now| {
            st.transition(idx, LifecycleState::Stopped, now);
            publish_exit_once(st, idx, incarnation, ExitReason::Stopped, None, now);
        });
        return (Ok(Arc::clone(&entry.qualified)), None);
    }
    let (failure, cause, reason, panic) = classify(
        &outcome,
        format_args!("stopping worker {:?}", &*entry.qualified),
        ExitReason::Failed,
    );
    let (cause, payload) = take_cause(outcome, cause);
    let (result, _) = inner.mutate(|st, now| {
        st.modify(idx, |rec| {
            rec.last_failure = Some(FailureRecord::new(&failure, now))
        });
        st.transition(idx, LifecycleState::Failed, now);
        st.failure_event(idx, incarnation, &failure, cause.clone(), panic, true, now);
        publish_exit_once(st, idx, incarnation, reason, Some(failure.clone()), now);
        Err(LifecycleError::StopFailed {
            worker: st.workers[idx].entry.qualified.to_string(),
            failure: failure.clone(),
            cause: cause.clone().map(crate::error::SharedCause::new),
        })
    });
    let payload = payload.filter(|_| config.panic_policy == PanicPolicy::Propagate);
    (result, payload)
}

/// Wakes the waiters of a quietly fired stop signal ([`Signal::fire_quietly`]) once: at the
/// first call of `now`, or when dropped.
struct WakeOnce(Option<Signal>);

impl WakeOnce {
    fn now(&mut self) {
        if let Some(signal) = self.0.take() {
            signal.wake_waiters();
        }
    }
}

impl Drop for WakeOnce {
    fn drop(&mut self) {
        self.now();
    }
}

/// Publishes an exit for `incarnation` unless one was already published for it.
fn publish_exit_once(
    st: &mut super::State,
    idx: usize,
    incarnation: u64,
    reason: ExitReason,
    failure: Option<Failure>,
    now: Timestamp,
) {
    let done = st.workers[idx]
        .last_exit
        .as_ref()
        .is_some_and(|e| e.incarnation == incarnation);
    if done {
        return;
    }
    let exit = Exit {
        incarnation,
        reason,
        failure,
        at: now,
    };
    st.modify(idx, |rec| rec.last_exit = Some(exit.clone()));
    st.workers[idx].entry.notify_exit();
}

/// Every worker's state, in registration order. Sized up front: growing a vector of 10,000
/// entries reallocates it a dozen times, and with glibc's allocator every allocation of a KiB
/// or more first consolidates all the small chunks freed so far (`malloc_consolidate`).
fn snapshot_states(inner: &Inner) -> Vec<(usize, LifecycleState)> {
    let st = inner.lock();
    let mut states = Vec::with_capacity(st.workers.len());
    states.extend(
        st.workers
            .iter()
            .enumerate()
            .filter(|(_, rec)| !rec.removed)
            .map(|(idx, rec)| (idx, rec.lifecycle)),
    );
    states
}

/// Removes a worker that is not active (gate held): registered, stopped or failed, with no
/// command in flight. Its name is free again at once; its record stays as a tombstone so that
/// indices (held by contexts and tasks) stay valid.
pub(super) async fn remove(
    inner: &Arc<Inner>,
    idx: usize,
) -> Result<crate::status::WorkerSnapshot, LifecycleError> {
    let began = Instant::now();
    let worker = Some(Arc::clone(&inner.lock().workers[idx].entry.qualified));
    operation_event(
        inner,
        worker.clone(),
        Operation::Remove,
        OperationPhase::Started,
        began,
    );
    let (result, _) = inner.mutate(|st, _| {
        let rec = &st.workers[idx];
        if rec.removed
            || !matches!(
                rec.lifecycle,
                LifecycleState::Registered | LifecycleState::Stopped | LifecycleState::Failed
            )
        {
            return Err(invalid_state(inner, idx, st, Operation::Remove));
        }
        let in_flight = rec.entry.commands.total();
        if in_flight > 0 {
            return Err(LifecycleError::WorkerBusy {
                worker: rec.entry.qualified.to_string(),
                in_flight,
            });
        }
        let snapshot = rec.snapshot();
        st.modify(idx, |rec| {
            rec.removed = true;
            rec.sup.cancel();
            rec.last_failure = None;
        });
        // Under the state lock, as registrations are: a registration of the same name after
        // this sees it gone.
        st.workers[idx]
            .entry
            .removed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(snapshot)
    });
    let entry = Arc::clone(&inner.lock().workers[idx].entry);
    if result.is_ok() {
        // Whatever the worker left behind goes now: its instance and its child tasks.
        let instance = entry.slot.lock().await.take();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(instance))).is_err() {
            inner.observers.count_panic();
        }
        let last = inner.lock().workers[idx].incarnation;
        shut_down_children(&entry, last).await;
    }
    let phase = match &result {
        Ok(_) => OperationPhase::Succeeded,
        Err(err) => OperationPhase::Failed(public_failure(err)),
    };
    let seq = operation_event(inner, worker, Operation::Remove, phase, began);
    inner.delivered(seq).await;
    result
}

async fn bulk<F, Fut>(
    inner: &Arc<Inner>,
    operation: Operation,
    body: F,
) -> Result<(), LifecycleError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (Result<(), LifecycleError>, Option<Payload>)>,
{
    let began = Instant::now();
    operation_event(inner, None, operation, OperationPhase::Started, began);
    let (result, payload) = body().await;
    let phase = match &result {
        Ok(()) => OperationPhase::Succeeded,
        Err(err) => OperationPhase::Failed(public_failure(err)),
    };
    let seq = operation_event(inner, None, operation, phase, began);
    inner.delivered(seq).await;
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
    result
}

/// Starts every startable worker in registration order; fail-fast, no rollback.
pub(super) async fn start_all(inner: &Arc<Inner>) -> Result<(), LifecycleError> {
    bulk(inner, Operation::StartAll, || async {
        if inner.lock().shut_down {
            let err = LifecycleError::ShutDown {
                runtime: inner.name.to_string(),
            };
            return (Err(err), None);
        }
        let mut timer = Deadline::default();
        // Loop tasks are spawned in batches (when a start waits, and at the end), not one by
        // one between starts: see `worker::batched_loops`.
        crate::worker::batched_loops(async {
            for (idx, state) in snapshot_states(inner) {
                match state {
                    // Running, or on its way back.
                    LifecycleState::Running | LifecycleState::Restarting => {}
                    s if s.can_start() => {
                        let (result, payload) = start(inner, idx, &mut timer, None).await;
                        if let Err(err) = result {
                            return (Err(err), payload);
                        }
                    }
                    _ => {
                        let err = {
                            let st = inner.lock();
                            invalid_state(inner, idx, &st, Operation::Start)
                        };
                        return (Err(err), None);
                    }
                }
            }
            (Ok(()), None)
        })
        .await
    })
    .await
}

/// Workers drained per hold of the state lock by `drain_all`: amortises the lock, the clock
/// read and the publication of a commit, while bounding how long readers wait for the lock.
const DRAIN_CHUNK: usize = 64;

/// Drains every running worker in registration order, a chunk of workers per hold of the state
/// lock. Each worker's drain is still committed on its own, in order, so the events (the
/// worker's transition and readiness, then the runtime's when they change) come exactly as if
/// each worker were drained alone; the chunk shares one timestamp.
pub(super) fn drain_all(inner: &Arc<Inner>) {
    let mut running = snapshot_states(inner);
    running.retain(|&(_, state)| {
        matches!(state, LifecycleState::Running | LifecycleState::Restarting)
    });
    let running: Vec<usize> = running.into_iter().map(|(idx, _)| idx).collect();
    for chunk in running.chunks(DRAIN_CHUNK) {
        inner.mutate(|st, now| {
            for &idx in chunk {
                // Drained under the gate: a worker running in the snapshot may have failed
                // since (context calls are not gated); it is then skipped, as before.
                if drain_locked(inner, st, idx, now).is_ok() {
                    st.commit(now);
                }
            }
        });
    }
}

/// Stops every stoppable worker in reverse registration order; every one is tried.
async fn stop_every(
    inner: &Arc<Inner>,
    deadline: Option<Instant>,
) -> (Vec<Arc<str>>, Vec<LifecycleError>, Option<Payload>) {
    let states = snapshot_states(inner);
    let mut stopped = Vec::with_capacity(states.len());
    let mut errors = Vec::new();
    let mut first_payload = None;
    let mut timer = Deadline::default();
    // The tasks of loops joined inline by their stops go together at the end.
    crate::worker::deferred_loop_wakes(states.len(), async {
        for (idx, state) in states.into_iter().rev() {
            if !state.can_stop() {
                continue;
            }
            // Every worker gets at least a short floor, even once the stop phase's budget is
            // spent, so one hung worker does not fail every worker stopped after it.
            let now = Instant::now();
            let budget = deadline.map(|d| d.saturating_duration_since(now).max(STOP_FLOOR));
            let (result, payload) = stop(inner, idx, budget, now, &mut timer).await;
            match result {
                Ok(name) => stopped.push(name),
                Err(err) => errors.push(err),
            }
            if first_payload.is_none() {
                first_payload = payload;
            }
        }
    })
    .await;
    (stopped, errors, first_payload)
}

fn join_errors(mut errors: Vec<LifecycleError>) -> Result<(), LifecycleError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(LifecycleError::Multiple { errors }),
    }
}

/// Stops everything with command admission closed for the call.
pub(super) async fn stop_all(inner: &Arc<Inner>) -> Result<(), LifecycleError> {
    bulk(inner, Operation::StopAll, || async {
        let (previous, _) = inner.mutate(|st, _| std::mem::replace(&mut st.admission_closed, true));
        let (_, errors, payload) = stop_every(inner, None).await;
        inner.mutate(|st, _| {
            if !st.shutting_down {
                st.admission_closed = previous;
            }
        });
        (join_errors(errors), payload)
    })
    .await
}

/// Graceful shutdown (gate held): close, drain, wait idle, stop, flush observers.
pub(super) async fn shutdown(
    inner: &Arc<Inner>,
    options: ShutdownOptions,
) -> Result<ShutdownReport, ShutdownError> {
    let began = Instant::now();
    let deadline = began + options.timeout;
    operation_event(
        inner,
        None,
        Operation::Shutdown,
        OperationPhase::Started,
        began,
    );
    inner.mutate(|st, _| {
        st.shutting_down = true;
        st.admission_closed = true;
    });
    drain_all(inner);

    let stopping = std::sync::atomic::AtomicBool::new(false);
    let phases = async {
        // A forced shutdown (`Runtime::force_shutdown`) stops waiting for in-flight commands at
        // once.
        let idle = tokio::select! {
            biased;
            () = inner.force.cancelled() => inner.in_flight() == 0,
            waited = tokio::time::timeout_at(deadline, inner.wait_all_idle()) => waited.is_ok(),
        };
        let abandoned = if idle { 0 } else { inner.in_flight() };
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let stop_deadline = if inner.force.is_cancelled() {
            Instant::now() + options.stop_grace
        } else {
            deadline.max(Instant::now() + options.stop_grace)
        };
        let stopped = stop_every(inner, Some(stop_deadline)).await;
        (idle, abandoned, stop_deadline, stopped)
    };
    tokio::pin!(phases);
    // While the shutdown runs longer than the report interval, say what it still waits for.
    let interval = inner.settings.shutdown_report_interval;
    let mut report = tokio::time::interval_at(began + interval, interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (idle, abandoned, stop_deadline, (stopped, errors, payload)) = loop {
        tokio::select! {
            biased;
            out = &mut phases => break out,
            _ = report.tick() => {
                let stopping = stopping.load(std::sync::atomic::Ordering::Relaxed);
                shutdown_waiting(inner, began.elapsed(), stopping);
            }
        }
    };
    inner.mutate(|st, _| st.shut_down = true);
    // Every worker task (loops, checks, `WorkerContext::spawn`) should be gone once its worker
    // stopped; wait for stragglers within what is left of the stop budget, and report the rest.
    inner.tracker.close();
    let _ = tokio::time::timeout_at(stop_deadline, inner.tracker.wait()).await;
    let lingering = inner.tracker.len();

    let unfinished: Vec<Unfinished> = errors
        .iter()
        .map(|err| Unfinished {
            worker: err.worker().unwrap_or_default().to_owned(),
            state: LifecycleState::Failed,
            failure: public_failure(err),
        })
        .collect();
    let report = ShutdownReport {
        stopped,
        abandoned_in_flight: abandoned,
        deadline_exceeded: !idle,
        lingering_tasks: lingering,
        elapsed: began.elapsed(),
    };
    let result = if unfinished.is_empty() && idle {
        Ok(report)
    } else {
        Err(ShutdownError::Incomplete { unfinished, report })
    };
    let phase = match &result {
        Ok(_) => OperationPhase::Succeeded,
        Err(err) => OperationPhase::Failed(Failure::new(err.code(), "shutdown incomplete")),
    };
    let seq = operation_event(inner, None, Operation::Shutdown, phase, began);
    inner.delivered(seq).await;
    let _ = tokio::time::timeout(
        inner.settings.observer_flush_timeout,
        inner.observers.shutdown(),
    )
    .await;
    if let Some(payload) = payload {
        std::panic::resume_unwind(payload);
    }
    result
}

/// Reports what a long shutdown still waits for: workers not yet stopped (in stop order) and
/// commands in flight.
fn shutdown_waiting(inner: &Inner, elapsed: Duration, stopping: bool) {
    let mut commands = crate::command::pipeline::in_flight(inner);
    let in_flight = commands.len();
    commands.truncate(crate::observe::SHUTDOWN_REPORT_COMMANDS);
    inner.mutate(|st, now| {
        let workers: Vec<Arc<str>> = st
            .workers
            .iter()
            .rev()
            .filter(|rec| {
                !rec.removed
                    && (rec.lifecycle.is_active() || rec.lifecycle == LifecycleState::Restarting)
            })
            .map(|rec| Arc::clone(&rec.entry.qualified))
            .collect();
        let kind = crate::observe::SupervisionKind::ShutdownWaiting {
            elapsed,
            workers,
            in_flight,
            commands,
            phase: if stopping { "stopping" } else { "draining" },
        };
        st.supervision_event(None, kind, now);
    });
}

// ---- Calls a worker makes through its context (not gated). ----

fn check_current(st: &super::State, idx: usize, incarnation: u64) -> Result<(), ContextError> {
    let rec = &st.workers[idx];
    if rec.incarnation != incarnation {
        return Err(ContextError::Stale {
            worker: rec.entry.qualified.to_string(),
            incarnation,
            current: rec.incarnation,
        });
    }
    Ok(())
}

fn context_state_error(st: &super::State, idx: usize, action: &'static str) -> ContextError {
    let rec = &st.workers[idx];
    ContextError::InvalidState {
        worker: rec.entry.qualified.to_string(),
        state: rec.lifecycle,
        action,
    }
}

/// `WorkerContext::set_ready`. While draining, `true` is ignored (never a failure).
pub(crate) fn set_ready(
    inner: &Inner,
    idx: usize,
    incarnation: u64,
    ready: bool,
) -> Result<(), ContextError> {
    inner
        .mutate(|st, now| {
            check_current(st, idx, incarnation)?;
            match st.workers[idx].lifecycle {
                LifecycleState::Starting => {
                    st.modify(idx, |rec| rec.ready_set_during_start = true);
                    st.set_ready(idx, ready, now);
                    Ok(())
                }
                LifecycleState::Running => {
                    st.set_ready(idx, ready, now);
                    Ok(())
                }
                LifecycleState::Draining => {
                    if !ready {
                        st.set_ready(idx, false, now);
                    }
                    Ok(())
                }
                _ => Err(context_state_error(st, idx, "set ready")),
            }
        })
        .0
}

/// `WorkerContext::set_accepting_work`. Emits no event (admission is visible in status).
pub(crate) fn set_accepting(
    inner: &Inner,
    idx: usize,
    incarnation: u64,
    accepting: bool,
) -> Result<(), ContextError> {
    inner
        .mutate(|st, _| {
            check_current(st, idx, incarnation)?;
            match st.workers[idx].lifecycle {
                LifecycleState::Starting => {
                    st.modify(idx, |rec| {
                        rec.accepting_set_during_start = true;
                        rec.accepting = accepting;
                    });
                    Ok(())
                }
                LifecycleState::Running => {
                    st.modify(idx, |rec| rec.accepting = accepting);
                    Ok(())
                }
                LifecycleState::Draining if !accepting => Ok(()),
                _ => Err(context_state_error(st, idx, "set accepting work")),
            }
        })
        .0
}

/// A failure of the current incarnation, reported by the worker or found by the runtime (an
/// unexpected loop exit, a panic in a loop or a readiness check).
pub(crate) struct Failing {
    pub(crate) failure: Failure,
    pub(crate) cause: Option<Cause>,
    pub(crate) reason: ExitReason,
    pub(crate) panic: bool,
}

/// Fails the worker's current incarnation (rows 6, 13 and 14 of the transition table).
pub(crate) fn fail(
    inner: &Inner,
    idx: usize,
    incarnation: u64,
    failing: Failing,
) -> Result<(), ContextError> {
    fail_with(inner, idx, incarnation, failing, true)
}

/// [`fail`]; `restartable`: whether the restart policy may restart the incarnation.
fn fail_with(
    inner: &Inner,
    idx: usize,
    incarnation: u64,
    failing: Failing,
    restartable: bool,
) -> Result<(), ContextError> {
    let Failing {
        failure,
        cause,
        reason,
        panic,
    } = failing;
    let permanent = cause
        .as_deref()
        .is_some_and(|err| crate::retry::is_permanent(err));
    let (result, _) = inner.mutate(|st, now| {
        (|| {
            check_current(st, idx, incarnation)?;
            if exit_published(st, idx, incarnation) {
                // This incarnation has already ended (failed, or is restarting): a late report
                // never overwrites what came after.
                return Err(context_state_error(st, idx, "report failure"));
            }
            // A panic with no caller to resume on escalates under `Propagate`.
            let escalate = panic && st.workers[idx].config.panic_policy == PanicPolicy::Propagate;
            let record = FailureRecord::new(&failure, now);
            match st.workers[idx].lifecycle {
                LifecycleState::Starting => {
                    st.modify(idx, |rec| {
                        rec.last_failure = Some(record);
                        rec.accepting = false;
                        rec.ready_set_during_start = false;
                        rec.accepting_set_during_start = false;
                        rec.failure_reported_during_start = true;
                        rec.reported_reason = reason;
                        rec.reported_permanent = permanent;
                        rec.escalated |= escalate;
                    });
                    st.set_ready(idx, false, now);
                    st.failure_event(idx, incarnation, &failure, cause, panic, false, now);
                    st.workers[idx].token.cancel();
                    Ok(None)
                }
                LifecycleState::Running | LifecycleState::Draining => {
                    // A draining worker is winding down on request: it is not restarted.
                    let restartable = restartable
                        && !escalate
                        && st.workers[idx].lifecycle == LifecycleState::Running;
                    let decision = super::supervise::decide(st, idx, restartable, permanent);
                    // Transition first: command admission (mirrored on every change, under the
                    // worker's own mutex) must never see a running worker that does not accept
                    // work on its way to failed.
                    st.transition(idx, decision.state(), now);
                    st.modify(idx, |rec| {
                        rec.last_failure = Some(record);
                        rec.accepting = false;
                        rec.escalated = escalate;
                        rec.sup.set_stalled(false);
                    });
                    st.set_ready(idx, false, now);
                    st.failure_event(idx, incarnation, &failure, cause, panic, true, now);
                    publish_exit_once(st, idx, incarnation, reason, Some(failure.clone()), now);
                    let plan =
                        super::supervise::apply(st, idx, &decision, reason, Some(&failure), now);
                    st.workers[idx].token.cancel();
                    Ok(plan)
                }
                LifecycleState::Stopping => {
                    st.modify(idx, |rec| {
                        rec.last_failure = Some(record);
                        rec.escalated |= escalate;
                    });
                    st.failure_event(idx, incarnation, &failure, cause, panic, false, now);
                    Ok(None)
                }
                _ => Err(context_state_error(st, idx, "report failure")),
            }
        })()
    });
    result.map(|plan| super::supervise::spawn(inner, plan))
}

/// Whether the exit of `incarnation` has been published (it failed, or stopped).
fn exit_published(st: &super::State, idx: usize, incarnation: u64) -> bool {
    st.workers[idx]
        .last_exit
        .as_ref()
        .is_some_and(|e| e.incarnation == incarnation)
}

/// The watchdog found worker `idx`'s `incarnation` stalled.
pub(super) fn stalled(
    inner: &Inner,
    idx: usize,
    incarnation: u64,
    watchdog: crate::supervise::Watchdog,
) {
    use crate::supervise::StallAction;
    let (live, _) = inner.mutate(|st, now| {
        let rec = &st.workers[idx];
        if rec.incarnation != incarnation
            || !matches!(
                rec.lifecycle,
                LifecycleState::Running | LifecycleState::Draining
            )
        {
            return false;
        }
        st.modify(idx, |rec| rec.sup.set_stalled(true));
        st.supervision_event(
            Some(idx),
            crate::observe::SupervisionKind::Stalled {
                timeout: watchdog.timeout(),
                action: watchdog.action(),
            },
            now,
        );
        true
    });
    if !live {
        return;
    }
    let restartable = match watchdog.action() {
        StallAction::Cancel => false,
        StallAction::Restart => true,
        _ => return,
    };
    let failing = Failing {
        failure: Failure::new(
            crate::failure::code::STALLED,
            "worker stalled: no heartbeat within the watchdog timeout",
        ),
        cause: None,
        reason: ExitReason::Stalled,
        panic: false,
    };
    let _ = fail_with(inner, idx, incarnation, failing, restartable);
}

/// Beats came again after a stall.
pub(super) fn stall_cleared(inner: &Inner, idx: usize, incarnation: u64) {
    inner.mutate(|st, now| {
        let rec = &st.workers[idx];
        if rec.incarnation != incarnation || !rec.sup.stalled() {
            return;
        }
        st.modify(idx, |rec| rec.sup.set_stalled(false));
        st.supervision_event(
            Some(idx),
            crate::observe::SupervisionKind::StallCleared,
            now,
        );
    });
}

/// Observes a failure without changing the worker (a loop worker's cleanup failure).
pub(crate) fn observe_failure(inner: &Inner, idx: usize, incarnation: u64, failing: Failing) {
    let escalate = failing.panic;
    inner.mutate(|st, now| {
        if escalate
            && st.workers[idx].config.panic_policy == PanicPolicy::Propagate
            && st.workers[idx].incarnation == incarnation
            && st.workers[idx].lifecycle == LifecycleState::Failed
        {
            st.modify(idx, |rec| rec.escalated = true);
        }
        st.failure_event(
            idx,
            incarnation,
            &failing.failure,
            failing.cause,
            failing.panic,
            false,
            now,
        );
    });
}

/// A failed command attempt.
pub(crate) struct CommandFailure {
    pub(crate) command: Arc<str>,
    pub(crate) id: crate::command::DispatchId,
    pub(crate) attempt: u32,
    pub(crate) failure: Failure,
    pub(crate) cause: Option<Cause>,
    pub(crate) panic: bool,
}

/// Records a failed command attempt (spec §2.2 rows 15–17): a failure event with the command,
/// dispatch and attempt; the worker's last command failure if the attempt belongs to its current
/// incarnation; and, for a panic of the current incarnation while it runs or drains, the
/// worker's failure (its panic policy applies: `propagate` escalates nothing here, the panic is
/// resumed in the dispatch caller).
pub(crate) fn command_failure(inner: &Inner, idx: usize, incarnation: u64, failed: CommandFailure) {
    let CommandFailure {
        command,
        id,
        attempt,
        failure,
        cause,
        panic,
    } = failed;
    let (plan, _) = inner.mutate(|st, now| {
        let current = st.workers[idx].incarnation == incarnation;
        if current {
            let record = crate::status::CommandFailureRecord {
                command: command.to_string(),
                code: failure.code().to_owned(),
                message: failure.message().to_owned(),
                at: now,
            };
            st.modify(idx, |rec| rec.last_command_failure = Some(record));
        }
        let fails_worker = panic
            && current
            && !exit_published(st, idx, incarnation)
            && matches!(
                st.workers[idx].lifecycle,
                LifecycleState::Running | LifecycleState::Draining
            );
        let decision = if fails_worker {
            let restartable = st.workers[idx].lifecycle == LifecycleState::Running;
            super::supervise::decide(st, idx, restartable, false)
        } else {
            super::supervise::Decision::Fail
        };
        if fails_worker {
            // Transition first, as in `fail`: admission never sees running-but-not-accepting.
            st.transition(idx, decision.state(), now);
            st.modify(idx, |rec| {
                rec.last_failure = Some(FailureRecord::new(&failure, now));
                rec.accepting = false;
                rec.sup.set_stalled(false);
            });
            st.set_ready(idx, false, now);
        }
        st.failure_event_for(
            idx,
            incarnation,
            &failure,
            cause,
            panic,
            fails_worker,
            Some((command, id, attempt)),
            now,
        );
        if !fails_worker {
            return None;
        }
        publish_exit_once(
            st,
            idx,
            incarnation,
            ExitReason::Panicked,
            Some(failure.clone()),
            now,
        );
        let plan = super::supervise::apply(
            st,
            idx,
            &decision,
            ExitReason::Panicked,
            Some(&failure),
            now,
        );
        st.workers[idx].token.cancel();
        plan
    });
    super::supervise::spawn(inner, plan);
}
