//! The dispatch pipeline: resolve → observe → admit → limit → attempt (timeout, panic capture,
//! observation scope) → retry → bookkeeping → end.
//!
//! **Architecture invariant:** every admitted dispatch resolves exactly once and ends its
//! observation exactly once: by returning, or — if the caller drops the future — in the drop
//! guard, as `abandoned`. Slots are released before observers see the end.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{CommandResult, DispatchError, LimitScope};
use super::handler::{CancelReason, CommandContext, DispatchShared};
use super::table::{CommandEntry, InFlightSlot};
use super::{AdmissionMode, CommandRequest, CommandResponse, DispatchId, TimeoutMode};
use crate::error::SharedCause;
use crate::failure::{BoxError, Failure, PanicError};
use crate::lifecycle::LifecycleState;
use crate::name::{validate_command_name, validate_worker_name};
use crate::observe::{
    Cause, CommandEndEvent, CommandObservations, CommandOutcome, CommandStartEvent, Observers,
};
use crate::policy::PanicPolicy;
use crate::retry::JitterRng;
use crate::runtime::{Inner, WorkerEntry, ops};
use crate::time::Timestamp;

type Payload = Box<dyn Any + Send>;

/// Runs one dispatch.
///
/// The synchronous stages (resolve, stamp, observe the start, the first admission check) run in
/// [`begin`], so that the request and the rejection errors never live in this future's state:
/// it stays small, and moving it costs little.
pub(crate) async fn dispatch(
    inner: &Arc<Inner>,
    request: CommandRequest,
) -> Result<CommandResult, DispatchError> {
    let began = Instant::now();
    let Begun {
        entry,
        command,
        id,
        started_at,
        observations,
        first,
    } = begin(inner, request, began)?;
    let position = command;
    let command = &entry.commands.sorted[command];
    let end = EndInfo {
        inner,
        worker: &entry.qualified,
        command: &command.name,
        id,
        started_at,
        began,
    };

    // Until admission decides, a dropped future still ends the observation (as `abandoned`).
    let mut admitting = Admitting {
        observations: Some(observations),
        end: &end,
    };
    // Matched once, without intermediate results: each would be another move of the admission.
    let admission = match first {
        First::Admitted(admission) => admission,
        First::Rejected(err) => return Err(admitting.reject(err)),
        // Boxed: the waiting loop's futures would otherwise make every dispatch's future larger.
        First::Wait(request) => {
            match Box::pin(admit(inner, entry, command, *request, id, began)).await {
                Ok(admission) => admission,
                Err(err) => return Err(admitting.reject(Box::new(err))),
            }
        }
    };
    let shard = admission.shard;
    let mut guard = InFlight {
        inner,
        entry,
        shard,
        slot: admission.slot,
        runtime_slot: admission.runtime_slot,
        released: false,
        observations: Some(admitting.take()),
        end: &end,
        attempts: 0,
    };
    // The pipeline's own reference is handed to the first attempt's context, not cloned: a
    // clone and its drop are two atomic writes per dispatch. The rare paths that need the
    // shared state after that (a failed attempt, a retry) take a reference from the in-flight
    // slot, which holds one until the slot is released.
    let mut shared = Some(admission.shared);
    let slot = SlotRef {
        commands: &entry.commands,
        shard,
        slot: guard.slot,
    };
    let incarnation = admission.incarnation;

    let mut rng: Option<JitterRng> = None;
    // The total retry budget runs from the first attempt (time waiting for admission is not
    // part of it).
    let attempts_began = if admission.waited {
        Instant::now()
    } else {
        began
    };
    let (failed, failure, cause) = loop {
        guard.attempts += 1;
        let attempt = guard.attempts;
        let now = if attempt == 1 {
            attempts_began
        } else {
            Instant::now()
        };
        let budget_deadline = command.retry.budget().map(|b| attempts_began + b);
        let deadline = match (command.timeout.map(|t| now + t), budget_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ctx = CommandContext {
            shared: shared.take().unwrap_or_else(|| slot.shared()),
            attempt,
            deadline,
        };
        let observations = guard.observations.as_ref();
        let outcome = match command.timeout_mode {
            // The common mode: the handler is awaited in place (no nested future, so the
            // dispatch's future stays small and its result is moved less).
            TimeoutMode::Cooperative => {
                let scoped = Scoped {
                    future: command.handler.call_dyn(ctx),
                    observations,
                    observers: &inner.observers,
                };
                attempt_outcome(scoped.await, deadline, slot)
            }
            // Boxed: its timers would otherwise make every dispatch's future larger.
            TimeoutMode::Hard { grace } => {
                Box::pin(run_hard(
                    command,
                    ctx,
                    grace,
                    slot,
                    observations,
                    &inner.observers,
                ))
                .await
            }
        };
        let failed = match outcome {
            Ok(response) => {
                // Answered here, not past the loop: the response is moved once, into the result.
                record_duration(inner, entry, command, began);
                let attempts = guard.attempts;
                guard.finish(CommandOutcome::Succeeded, None, None);
                // The shard's own copy of the names: its reference count is not written by
                // dispatches on other threads.
                let target = &entry.commands.shard(shard).targets[position];
                return Ok(CommandResult::new(
                    id,
                    Arc::clone(target),
                    attempts,
                    response,
                ));
            }
            Err(failed) => failed,
        };
        let (failure, cause, panic) = failed.present(entry, command);
        if let Some(observations) = guard.observations.as_ref().filter(|o| !o.is_empty()) {
            let event = crate::observe::AttemptFailure {
                attempt,
                failure: &failure,
                panic,
                cause: cause.as_ref(),
                at: crate::Timestamp::now(),
            };
            for _ in 0..observations.attempt_failed(&event) {
                inner.observers.count_panic();
            }
        }
        record_failure(
            inner,
            entry,
            incarnation,
            &command.name,
            id,
            attempt,
            &failure,
            cause.clone(),
            panic,
        );
        // A timed-out attempt reaches the retry predicate as `AttemptTimedOut` (whose source is
        // the handler's own error, if it returned one), so predicates can tell timeouts apart.
        let timed_out;
        let retry_error: Option<&(dyn std::error::Error + 'static)> = match &failed {
            Attempt::Failed(err) => Some(&**err),
            Attempt::TimedOut(err) => {
                timed_out = super::AttemptTimedOut {
                    source: err.clone(),
                };
                Some(&timed_out)
            }
            Attempt::Panicked(_) | Attempt::Cancelled(..) => None,
        };
        let shared = &*shared.get_or_insert_with(|| slot.shared());
        let delay = retry_error.and_then(|err| {
            if shared.cancel_reason().is_some() {
                return None;
            }
            let rng = rng.get_or_insert_with(JitterRng::from_entropy);
            command
                .retry
                .next_delay(attempt, err, attempts_began.elapsed(), rng)
        });
        match delay {
            None => break (failed, failure, cause),
            Some(delay) => {
                // Boxed: the sleep would otherwise make every dispatch's future larger.
                if let Some(reason) = Box::pin(backoff(delay, shared)).await {
                    break (Attempt::Cancelled(reason, None), Failure::canceled(), None);
                }
            }
        }
    };

    // Failed: the last attempt's failure.
    record_duration(inner, entry, command, began);
    let attempts = guard.attempts;
    let worker = Arc::clone(&entry.qualified);
    let name = Arc::clone(&command.name);
    let shared_cause = cause.clone().map(SharedCause::new);
    let (outcome, err, payload) = match failed {
        Attempt::Failed(failed_cause) => (
            CommandOutcome::Failed,
            DispatchError::Failed {
                id,
                worker,
                command: name,
                attempts,
                failure: failure.clone(),
                cause: shared_cause.unwrap_or_else(|| SharedCause::new(Arc::clone(&failed_cause))),
            },
            None,
        ),
        Attempt::TimedOut(_) => (
            CommandOutcome::TimedOut,
            DispatchError::TimedOut {
                id,
                worker,
                command: name,
                attempts,
                cause: shared_cause,
            },
            None,
        ),
        Attempt::Cancelled(reason, _) => (
            CommandOutcome::Cancelled,
            DispatchError::Cancelled {
                id,
                worker,
                command: name,
                attempts,
                reason,
                cause: shared_cause,
            },
            None,
        ),
        Attempt::Panicked(payload) => (
            CommandOutcome::Panicked,
            DispatchError::Panicked {
                id,
                worker,
                command: name,
                attempts,
                failure: failure.clone(),
            },
            Some(payload),
        ),
    };
    guard.finish(outcome, Some(failure), cause);
    drop(guard);
    if let Some(payload) = payload {
        let propagate =
            inner.lock().workers[entry.idx].config.panic_policy == PanicPolicy::Propagate;
        if propagate {
            std::panic::resume_unwind(payload);
        }
    }
    Err(err)
}

/// Records the dispatch's duration for the `retry_after` hints of its command, if a limit
/// applies to it: only a limit can saturate, and only saturation reads the mean.
fn record_duration(inner: &Inner, entry: &WorkerEntry, command: &CommandEntry, began: Instant) {
    if entry.commands.concurrency.is_some()
        || command.concurrency.is_some()
        || inner.command_limit.is_bounded()
    {
        command.record_duration(began.elapsed());
    }
}

/// What [`begin`] resolved and decided.
struct Begun<'a> {
    /// Borrowed from the registry, which lives as long as the runtime.
    entry: &'a WorkerEntry,
    /// The command's position in `entry.commands.sorted`.
    command: usize,
    id: DispatchId,
    started_at: Timestamp,
    observations: CommandObservations,
    first: First,
}

/// The first admission check's decision.
enum First {
    Admitted(Admission),
    /// Rejected (the error is boxed: it is rare, and it would make the dispatch future larger).
    Rejected(Box<DispatchError>),
    /// Saturated, and the command waits for a slot.
    Wait(Box<CommandRequest>),
}

/// The synchronous stages of a dispatch: stamp, resolve, id, observe the start, first admission
/// check. Errors are the unobserved rejections (bad or unknown target).
fn begin(
    inner: &Inner,
    mut request: CommandRequest,
    began: Instant,
) -> Result<Begun<'_>, DispatchError> {
    // The wall-clock time (the request's stamp, the id's millisecond) is a reading of its own:
    // derived from the monotonic reading, it would go stale across a system suspend (the
    // monotonic clock stops, the wall clock does not) and under a paused test clock.
    let started_at = Timestamp::now();
    let millis = started_at.unix_millis();
    request.stamp(started_at);

    // Resolve. Names are validated only on a miss: a hit is valid by construction. Nothing is
    // observed yet, so caller-supplied strings never become telemetry dimensions.
    let Some(entry) = inner.find_worker(request.worker()).map(|entry| &**entry) else {
        return Err(match validate_worker_name(request.worker()) {
            Err(error) => DispatchError::InvalidTarget {
                error,
                request: Box::new(request),
            },
            Ok(()) => DispatchError::WorkerNotFound {
                worker: request.worker().to_owned(),
                request: Box::new(request),
            },
        });
    };
    // Borrowed, not cloned: a clone would be a write to a cache line that every dispatch to this
    // command shares.
    let Some(position) = entry.commands.position(request.name()) else {
        return Err(match validate_command_name(request.name()) {
            Err(error) => DispatchError::InvalidCommandName {
                error,
                request: Box::new(request),
            },
            Ok(()) => DispatchError::CommandNotFound {
                worker: entry.qualified.to_string(),
                command: request.name().to_owned(),
                request: Box::new(request),
            },
        });
    };
    let command = &entry.commands.sorted[position];
    let id = request
        .preset_id()
        .unwrap_or_else(|| DispatchId::at_millis(millis));

    let observations = if inner.observers.is_empty() {
        CommandObservations::none()
    } else {
        inner.observers.command_start(&CommandStartEvent {
            runtime: Arc::clone(&inner.name),
            worker: Arc::clone(&entry.qualified),
            command: Arc::clone(&command.name),
            dispatch_id: id,
            metadata: request.all_metadata().clone(),
            started_at,
        })
    };

    let mut request = Some(request);
    let first = match check(inner, entry, command, &mut request, id, began, false) {
        Step::Admitted(admission) => First::Admitted(admission),
        Step::Rejected(err) => First::Rejected(Box::new(err)),
        Step::Saturated { scope, limit } if command.admission == AdmissionMode::FailFast => {
            First::Rejected(Box::new(DispatchError::Saturated {
                scope,
                limit,
                retry_after: command.retry_after(),
                request: take(&mut request),
            }))
        }
        Step::Saturated { .. } => First::Wait(take(&mut request)),
    };
    Ok(Begun {
        entry,
        command: position,
        id,
        started_at,
        observations,
        first,
    })
}

fn rejection_message(err: &DispatchError) -> &'static str {
    match err {
        DispatchError::RuntimeNotAccepting { .. } => "runtime not accepting work",
        DispatchError::InvalidWorkerState { .. } => "invalid worker state",
        DispatchError::WorkerNotAccepting { .. } => "worker not accepting work",
        DispatchError::Saturated { .. } => "command concurrency limit reached",
        _ => "command rejected",
    }
}

/// What is needed to end the observation of a dispatch.
struct EndInfo<'a> {
    inner: &'a Inner,
    worker: &'a Arc<str>,
    command: &'a Arc<str>,
    id: DispatchId,
    started_at: Timestamp,
    began: Instant,
}

impl EndInfo<'_> {
    fn finish(
        &self,
        observations: CommandObservations,
        attempts: u32,
        outcome: CommandOutcome,
        failure: Option<Failure>,
        cause: Option<Cause>,
    ) {
        if observations.is_empty() {
            return;
        }
        let event = CommandEndEvent {
            runtime: Arc::clone(&self.inner.name),
            worker: Arc::clone(self.worker),
            command: Arc::clone(self.command),
            dispatch_id: self.id,
            attempts,
            outcome,
            failure,
            cause,
            started_at: self.started_at,
            ended_at: Timestamp::now(),
            duration: self.began.elapsed(),
        };
        for _ in 0..observations.end(&event) {
            self.inner.observers.count_panic();
        }
    }
}

/// The observation of a dispatch waiting for admission. Dropping it with the observation still
/// inside (the caller dropped the dispatch future while it waited for a slot) ends the
/// observation as `abandoned`, with no attempt: every start event gets its end.
struct Admitting<'a> {
    observations: Option<CommandObservations>,
    end: &'a EndInfo<'a>,
}

impl Admitting<'_> {
    /// Ends the observation of a rejected dispatch; returns the rejection.
    #[cold]
    fn reject(&mut self, err: Box<DispatchError>) -> DispatchError {
        let failure = Failure::new(err.code(), rejection_message(&err));
        self.end.finish(
            self.take(),
            0,
            CommandOutcome::Rejected,
            Some(failure),
            None,
        );
        *err
    }

    fn take(&mut self) -> CommandObservations {
        self.observations
            .take()
            .unwrap_or_else(CommandObservations::none)
    }
}

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        if let Some(observations) = self.observations.take() {
            self.end.finish(
                observations,
                0,
                CommandOutcome::Abandoned,
                Some(Failure::canceled()),
                None,
            );
        }
    }
}

/// An admitted dispatch's slots. Dropping it (also when the caller drops the dispatch future)
/// releases them and, if the observation is still open, ends it as `abandoned`.
struct InFlight<'a> {
    inner: &'a Inner,
    entry: &'a WorkerEntry,
    /// The dispatch state shard that holds the slot.
    shard: usize,
    slot: usize,
    runtime_slot: bool,
    released: bool,
    observations: Option<CommandObservations>,
    end: &'a EndInfo<'a>,
    attempts: u32,
}

impl InFlight<'_> {
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        self.entry.commands.release(self.shard, self.slot);
        if self.runtime_slot {
            self.inner.command_limit.release();
        }
    }

    fn finish(&mut self, outcome: CommandOutcome, failure: Option<Failure>, cause: Option<Cause>) {
        self.release();
        if let Some(observations) = self.observations.take() {
            self.end
                .finish(observations, self.attempts, outcome, failure, cause);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.observations.is_some() || !self.released {
            self.finish(CommandOutcome::Abandoned, Some(Failure::canceled()), None);
        }
    }
}

struct Admission {
    /// Whether the dispatch waited for a slot.
    waited: bool,
    shared: Arc<DispatchShared>,
    shard: usize,
    slot: usize,
    runtime_slot: bool,
    incarnation: u64,
}

/// Where an admitted dispatch is registered in flight: its shared state can be taken from
/// there (under the shard's lock) until the slot is released.
#[derive(Clone, Copy)]
struct SlotRef<'a> {
    commands: &'a super::WorkerCommands,
    shard: usize,
    slot: usize,
}

impl SlotRef<'_> {
    /// A reference to the dispatch's shared state.
    fn shared(self) -> Arc<DispatchShared> {
        self.commands
            .slot_shared(self.shard, self.slot)
            .expect("a dispatch is in flight until its slot is released")
    }
}

/// Decrements the waiting count of a worker if the caller stops waiting.
struct Waiting<'a> {
    entry: &'a WorkerEntry,
    active: bool,
}

impl Waiting<'_> {
    fn stop(&mut self) {
        if std::mem::replace(&mut self.active, false) {
            self.entry.commands.leave_waiting();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes the request back out for a rejection (it is only taken on the way out).
fn take(request: &mut Option<CommandRequest>) -> Box<CommandRequest> {
    Box::new(
        request
            .take()
            .unwrap_or_else(|| CommandRequest::new("", "")),
    )
}

/// The outcome of one admission check.
enum Step {
    Admitted(Admission),
    Rejected(DispatchError),
    /// A limit is full (the request stays with the caller).
    Saturated {
        scope: LimitScope,
        limit: usize,
    },
}

/// One admission check: runtime, worker, then limits (runtime, worker, command), under the lock
/// of the calling thread's dispatch shard (the caps are atomic counters, taken only below their
/// limit). `waited`: whether the caller waited.
fn check(
    inner: &Inner,
    entry: &WorkerEntry,
    command: &CommandEntry,
    request: &mut Option<CommandRequest>,
    id: DispatchId,
    began: Instant,
    waited: bool,
) -> Step {
    let (shard, state) = entry.commands.local_shard();
    let mut st = state.lock();
    let (open, state) = inner.admission();
    if !open {
        return Step::Rejected(DispatchError::RuntimeNotAccepting {
            runtime: inner.name.to_string(),
            state,
            request: take(request),
        });
    }
    if st.lifecycle != LifecycleState::Running {
        return Step::Rejected(DispatchError::InvalidWorkerState {
            worker: entry.qualified.to_string(),
            state: st.lifecycle,
            request: take(request),
        });
    }
    if !st.accepting {
        return Step::Rejected(DispatchError::WorkerNotAccepting {
            worker: entry.qualified.to_string(),
            request: take(request),
        });
    }
    // Limits are reported in Go's order (runtime, worker, command), but the runtime slot is only
    // taken once the worker's and the command's limits have room: taking and giving one back
    // would wake the runtime's waiters (this one included) for nothing.
    let runtime_limit = (LimitScope::Runtime, inner.command_limit.max());
    if inner.command_limit.is_full() {
        let (scope, limit) = runtime_limit;
        return Step::Saturated { scope, limit };
    }
    let (worker_counted, command_counted) = match entry.commands.try_take_caps(command) {
        Ok(counted) => counted,
        Err((scope, limit)) => return Step::Saturated { scope, limit },
    };
    let runtime_slot = inner.command_limit.try_acquire();
    if !runtime_slot && inner.command_limit.is_bounded() {
        entry
            .commands
            .give_back(worker_counted, command_counted, command.index);
        let (scope, limit) = runtime_limit;
        return Step::Saturated { scope, limit };
    }
    let (Some(ctx), Some(req)) = (st.ctx.clone(), request.take()) else {
        // Running without a context cannot happen: the context is stored before the worker
        // becomes running. Treat it as not running.
        if runtime_slot {
            inner.command_limit.release();
        }
        entry
            .commands
            .give_back(worker_counted, command_counted, command.index);
        return Step::Rejected(DispatchError::InvalidWorkerState {
            worker: entry.qualified.to_string(),
            state: st.lifecycle,
            request: take(request),
        });
    };
    let shared = Arc::new(DispatchShared::new(id, req, ctx, began));
    let incarnation = st.incarnation;
    let slot = st.insert(InFlightSlot {
        shared: Arc::clone(&shared),
        incarnation,
        command: command.index,
        worker_counted,
        command_counted,
    });
    Step::Admitted(Admission {
        waited,
        shared,
        shard,
        slot,
        runtime_slot,
        incarnation,
    })
}

/// Admission for a command that waits for a slot (`AdmissionMode::Wait`) and found none at
/// once: checks again whenever a slot is released (or the worker's lifecycle or the runtime's
/// admission changes), until admitted, rejected, or the wait expires.
async fn admit(
    inner: &Inner,
    entry: &WorkerEntry,
    command: &CommandEntry,
    request: CommandRequest,
    id: DispatchId,
    began: Instant,
) -> Result<Admission, DispatchError> {
    let wait_until = match command.admission {
        AdmissionMode::FailFast => None,
        AdmissionMode::Wait(d) => Some(Instant::now() + d),
    };
    let mut request = Some(request);
    let mut waiting = Waiting {
        entry,
        active: false,
    };
    // The wake-up registrations cost a lock each: only a dispatch that is about to wait makes
    // them (and then checks again, so no release between check and wait is missed).
    let mut armed = false;
    loop {
        let worker_released = entry.commands.released.notified();
        let runtime_released = inner.command_limit.released();
        tokio::pin!(worker_released);
        tokio::pin!(runtime_released);
        if armed {
            worker_released.as_mut().enable();
            runtime_released.as_mut().enable();
            // Counted as waiting before the check: a release either sees the count (and wakes
            // this dispatch) or the check sees the released slot.
            if !waiting.active {
                entry.commands.enter_waiting();
                waiting.active = true;
            }
        }
        let step = check(inner, entry, command, &mut request, id, began, armed);
        let (scope, limit) = match step {
            Step::Admitted(admission) => {
                waiting.stop();
                return Ok(admission);
            }
            Step::Rejected(err) => {
                waiting.stop();
                return Err(err);
            }
            Step::Saturated { scope, limit } => (scope, limit),
        };
        let expired = wait_until.is_none_or(|until| Instant::now() >= until);
        if expired {
            waiting.stop();
            return Err(DispatchError::Saturated {
                scope,
                limit,
                retry_after: command.retry_after(),
                request: take(&mut request),
            });
        }
        if !armed {
            armed = true;
            continue;
        }
        let until = wait_until.unwrap_or_else(Instant::now);
        tokio::select! {
            () = worker_released => {}
            () = runtime_released => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

/// How one attempt failed.
enum Attempt {
    Failed(Cause),
    TimedOut(Option<Cause>),
    Cancelled(CancelReason, Option<Cause>),
    Panicked(Payload),
}

impl Attempt {
    /// The public failure, private cause and panic flag of this failed attempt.
    fn present(
        &self,
        entry: &WorkerEntry,
        command: &CommandEntry,
    ) -> (Failure, Option<Cause>, bool) {
        match self {
            Self::Failed(err) => (
                Failure::from_error(&**err, Failure::command_failed()),
                Some(Arc::clone(err)),
                false,
            ),
            Self::TimedOut(err) => (Failure::deadline_exceeded(), err.clone(), false),
            Self::Cancelled(_, err) => (Failure::canceled(), err.clone(), false),
            Self::Panicked(payload) => {
                let panic = PanicError::new(
                    format_args!(
                        "handling command {:?} for worker {:?}",
                        &*command.name, &*entry.qualified
                    ),
                    &**payload,
                );
                let failure = panic.failure().clone();
                (failure, Some(Arc::new(panic)), true)
            }
        }
    }
}

/// Records a failed attempt: a failure event, the worker's last command failure (current
/// incarnation only) and, for a panic of the current incarnation while it runs or drains, the
/// worker's failure (spec §2.2 rows 15–17).
#[allow(clippy::too_many_arguments)] // Internal; each argument is a distinct event field.
fn record_failure(
    inner: &Inner,
    entry: &WorkerEntry,
    incarnation: u64,
    command: &Arc<str>,
    id: DispatchId,
    attempt: u32,
    failure: &Failure,
    cause: Option<Cause>,
    panic: bool,
) {
    ops::command_failure(
        inner,
        entry.idx,
        incarnation,
        ops::CommandFailure {
            command: Arc::clone(command),
            id,
            attempt,
            failure: failure.clone(),
            cause,
            panic,
        },
    );
}

/// Runs one attempt in the hard timeout mode: the handler under panic capture, inside the
/// observations' scope, dropped `grace` after its deadline or the dispatch's cancellation.
async fn run_hard(
    command: &CommandEntry,
    ctx: CommandContext,
    grace: Duration,
    slot: SlotRef<'_>,
    observations: Option<&CommandObservations>,
    observers: &Observers,
) -> Result<CommandResponse, Attempt> {
    let deadline = ctx.deadline;
    let shared = Arc::clone(&ctx.shared);
    let mut scoped = Scoped {
        future: command.handler.call_dyn(ctx),
        observations,
        observers,
    };
    match hard_timeout(&mut scoped, deadline, &shared, grace).await {
        Some(handled) => attempt_outcome(handled, deadline, slot),
        None => Err(match shared.cancel_reason() {
            Some(reason) => Attempt::Cancelled(reason, None),
            None => Attempt::TimedOut(None),
        }),
    }
}

/// What a handler that ran to completion (or panicked) means for its attempt.
fn attempt_outcome(
    handled: Handled,
    deadline: Option<Instant>,
    slot: SlotRef<'_>,
) -> Result<CommandResponse, Attempt> {
    match handled {
        Err(payload) => Err(Attempt::Panicked(payload)),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => {
            let err: Cause = Arc::from(err);
            Err(if let Some(reason) = slot.shared().cancel_reason() {
                Attempt::Cancelled(reason, Some(err))
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Attempt::TimedOut(Some(err))
            } else {
                Attempt::Failed(err)
            })
        }
    }
}

/// The hard timeout mode: at the deadline (or the dispatch's cancellation) the handler gets
/// `grace` more, then is dropped (`None`).
async fn hard_timeout(
    scoped: &mut Scoped<'_>,
    deadline: Option<Instant>,
    shared: &DispatchShared,
    grace: Duration,
) -> Option<Handled> {
    tokio::select! {
        biased;
        result = &mut *scoped => Some(result),
        () = signal(deadline, shared) => tokio::time::timeout(grace, scoped).await.ok(),
    }
}

/// Sleeps `delay` before a retry; the dispatch's cancellation ends it early (its reason).
async fn backoff(delay: Duration, shared: &DispatchShared) -> Option<CancelReason> {
    tokio::select! {
        () = tokio::time::sleep(delay) => None,
        reason = shared.cancelled() => Some(reason),
    }
}

/// Completes at the attempt's deadline or when the dispatch is cancelled.
async fn signal(deadline: Option<Instant>, shared: &DispatchShared) {
    match deadline {
        Some(deadline) => {
            tokio::select! {
                _ = shared.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        None => {
            shared.cancelled().await;
        }
    }
}

/// Polls the handler's future inside the observations' scope and under panic capture.
struct Scoped<'a> {
    future: Pin<Box<dyn Future<Output = Result<CommandResponse, BoxError>> + Send + 'a>>,
    observations: Option<&'a CommandObservations>,
    /// Where panics of observation scopes are counted.
    observers: &'a Observers,
}

type Polled = Result<Poll<Result<CommandResponse, BoxError>>, Payload>;

/// A handler's result, or the payload of its panic.
type Handled = Result<Result<CommandResponse, BoxError>, Payload>;

impl Future for Scoped<'_> {
    type Output = Handled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(observations) = this.observations.filter(|o| !o.is_empty()) else {
            // No observation scope (the usual case): one poll under panic capture, its result
            // passed on as is.
            return match std::panic::catch_unwind(AssertUnwindSafe(|| {
                this.future.as_mut().poll(cx)
            })) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
                Err(payload) => Poll::Ready(Err(payload)),
            };
        };
        let mut polled: Option<Polled> = None;
        {
            let future = &mut this.future;
            let mut poll_once = || {
                // At most once per poll, even if an observation's scope calls this twice: a
                // completed future must not be polled again.
                if polled.is_none() {
                    polled = Some(std::panic::catch_unwind(AssertUnwindSafe(|| {
                        future.as_mut().poll(cx)
                    })));
                }
            };
            // An observer that panics in its scope is contained and counted; the handler is
            // still polled exactly once (below, if the scope never did).
            for _ in 0..observations.in_scope(&mut poll_once) {
                this.observers.count_panic();
            }
        }
        let polled = match polled {
            Some(polled) => polled,
            None => std::panic::catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx))),
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Waits until a worker has no command of `incarnation` in flight, or `within` passes; then
/// cancels the ones left (reason: the worker stopped). Returns how many were cancelled.
pub(crate) async fn drain_incarnation(
    entry: &WorkerEntry,
    incarnation: u64,
    within: Duration,
) -> usize {
    let until = Instant::now() + within;
    let busy = || {
        entry.commands.shards().iter().any(|shard| {
            shard
                .lock()
                .in_flight()
                .any(|s| s.incarnation == incarnation)
        })
    };
    loop {
        let released = entry.commands.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        // Counted before the check: a release either sees the count or the check sees it.
        let leave = IdleWait::enter(entry);
        if !busy() {
            return 0;
        }
        let timed_out = tokio::time::timeout_at(until, released).await.is_err();
        drop(leave);
        if timed_out {
            break;
        }
    }
    entry
        .commands
        .shards()
        .iter()
        .map(|shard| {
            shard
                .lock()
                .in_flight()
                .filter(|s| s.incarnation == incarnation)
                .filter(|s| s.shared.cancel(CancelReason::WorkerStopped))
                .count()
        })
        .sum()
}

/// Counts its caller as waiting for a worker's idleness while it lives.
struct IdleWait<'a>(&'a WorkerEntry);

impl<'a> IdleWait<'a> {
    fn enter(entry: &'a WorkerEntry) -> Self {
        entry.commands.enter_idle_wait();
        Self(entry)
    }
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        self.0.commands.leave_idle_wait();
    }
}

/// Waits until a worker has no command in flight.
pub(crate) async fn wait_worker_idle(entry: &WorkerEntry) {
    loop {
        // Most workers are idle: check before registering for a wake-up (which takes the
        // `Notify`'s own lock); the check below, after registering, is what no release can slip
        // past.
        if entry.commands.total() == 0 {
            return;
        }
        let released = entry.commands.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let _leave = IdleWait::enter(entry);
        if entry.commands.total() == 0 {
            return;
        }
        released.await;
    }
}

/// Cancels one in-flight dispatch by id, wherever it runs.
pub(crate) fn cancel(inner: &Inner, id: DispatchId) -> Result<(), super::CancelError> {
    for entry in inner.all_workers() {
        for shard in entry.commands.shards() {
            let st = shard.lock();
            if let Some(slot) = st.in_flight().find(|s| s.shared.id == id) {
                return if slot.shared.cancel(CancelReason::Requested) {
                    Ok(())
                } else {
                    Err(super::CancelError::AlreadyCancelled(id))
                };
            }
        }
    }
    Err(super::CancelError::NotFound(id))
}

/// Every in-flight dispatch.
pub(crate) fn in_flight(inner: &Inner) -> Vec<super::InFlightCommand> {
    let now = Instant::now();
    let mut list = Vec::new();
    for entry in inner.all_workers() {
        let commands = &entry.commands.sorted;
        for shard in entry.commands.shards() {
            let st = shard.lock();
            list.extend(st.in_flight().map(|s| super::InFlightCommand {
                id: s.shared.id,
                worker: Arc::clone(&entry.qualified),
                command: commands.iter().find(|c| c.index == s.command).map_or_else(
                    || Arc::from(s.shared.request.name()),
                    |c| Arc::clone(&c.name),
                ),
                incarnation: s.incarnation,
                age: now.saturating_duration_since(s.shared.started),
                cancelled: s.shared.cancel_reason().is_some(),
            }));
        }
    }
    // Oldest (longest in flight) first. Not by id alone: UUIDv7 ids order by millisecond only,
    // so ids made within one millisecond would list in random order.
    list.sort_by(|a, b| b.age.cmp(&a.age).then_with(|| a.id.cmp(&b.id)));
    list
}
