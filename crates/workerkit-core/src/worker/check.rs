//! Periodic readiness checks.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::failure::{BoxError, PanicError};
use crate::observe::{BoxFuture, CheckEndEvent, CheckOutcome, CheckStartEvent};
use crate::runtime::{Inner, ops};
use crate::status::ExitReason;
use crate::task::CatchUnwind;
use crate::time::Timestamp;
use crate::worker::WorkerContext;

/// Default interval between the end of one check and the start of the next.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Default timeout of one check execution.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

type CheckFn =
    Arc<dyn Fn(WorkerContext) -> BoxFuture<'static, Result<bool, BoxError>> + Send + Sync>;

/// A periodic readiness check, attached with
/// [`WorkerSpec::readiness_check`](crate::WorkerSpec::readiness_check).
///
/// While the worker runs, the check runs once right after the start and then `interval` after
/// each previous execution ended (executions never overlap). `Ok(true)` makes the worker ready;
/// `Ok(false)`, an error or a timeout makes it unready (outcomes `not_ready`, `error`,
/// `timeout`). A positive result while the worker drains is ignored. A panic fails the worker
/// through its panic policy. Every execution emits check start and end events.
///
/// ```
/// use std::time::Duration;
/// use workerkit_core::ReadinessCheck;
///
/// let check = ReadinessCheck::new(|_ctx| async { Ok(true) })
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_secs(1));
/// # let _ = check;
/// ```
#[derive(Clone)]
#[must_use]
pub struct ReadinessCheck {
    check: CheckFn,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ReadinessCheck {
    /// A check from an async closure returning whether the worker is ready.
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn(WorkerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
    {
        Self {
            check: Arc::new(move |ctx| Box::pin(check(ctx))),
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }

    /// Time between the end of one execution and the start of the next (default 10 s). Zero is
    /// a registration error.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Timeout of one execution (default 5 s). Zero is a registration error.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Spawns the check loop of one incarnation; it ends at the incarnation's stop signal.
pub(crate) fn spawn(
    inner: &Arc<Inner>,
    ctx: WorkerContext,
    check: ReadinessCheck,
) -> JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    let tracker = inner.tracker.clone();
    crate::task::spawn(&tracker, async move {
        let token = ctx.token().clone();
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let continues = execute(&inner, &ctx, &check).await;
            drop(inner);
            if !continues {
                return;
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(check.interval) => {}
            }
        }
    })
}

/// Runs one execution; returns whether the loop goes on.
async fn execute(inner: &Inner, ctx: &WorkerContext, check: &ReadinessCheck) -> bool {
    let started_at = Timestamp::now();
    let began = Instant::now();
    inner.observers.check_start(&CheckStartEvent {
        runtime: Arc::clone(&inner.name),
        worker: ctx.qualified_name().into(),
        incarnation: ctx.incarnation(),
        started_at,
    });
    let future = CatchUnwind::new((check.check)(ctx.clone()));
    let outcome = tokio::select! {
        () = ctx.token().cancelled() => Err(CheckOutcome::Canceled),
        result = tokio::time::timeout(check.timeout, future) => match result {
            Err(_) => Err(CheckOutcome::Timeout),
            Ok(Ok(Ok(true))) => Ok(CheckOutcome::Ready),
            Ok(Ok(Ok(false))) => Err(CheckOutcome::NotReady),
            Ok(Ok(Err(_))) => Err(CheckOutcome::Error),
            Ok(Err(payload)) => {
                let panic = PanicError::new(
                    format_args!("checking readiness of worker {:?}", ctx.qualified_name()),
                    &*payload,
                );
                let failure = panic.failure().clone();
                // Fails the incarnation; its panic policy decides whether that escalates.
                let _ = ops::fail(inner, ctx.index(), ctx.incarnation(), ops::Failing {
                    failure,
                    cause: Some(Arc::new(panic)),
                    reason: ExitReason::Panicked,
                    panic: true,
                });
                Err(CheckOutcome::Panic)
            }
        },
    };
    let (outcome, continues) = match outcome {
        Ok(ready) => (ready, ctx.set_ready(true).is_ok()),
        Err(CheckOutcome::Canceled) => (CheckOutcome::Canceled, false),
        Err(CheckOutcome::Panic) => (CheckOutcome::Panic, false),
        Err(other) => (other, ctx.set_ready(false).is_ok()),
    };
    inner.observers.check_end(&CheckEndEvent {
        runtime: Arc::clone(&inner.name),
        worker: ctx.qualified_name().into(),
        incarnation: ctx.incarnation(),
        outcome,
        loop_continues: continues,
        started_at,
        ended_at: Timestamp::now(),
        duration: began.elapsed(),
    });
    continues
}
