//! Command handlers and the context each attempt runs with.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{CommandRequest, CommandResponse, DispatchId};
use crate::failure::BoxError;
use crate::observe::BoxFuture;
use crate::worker::WorkerContext;

/// Handles one command. Usually made from a closure with [`handler_fn`].
///
/// The handler runs once per attempt; a returned error may be retried by the command's retry
/// policy (unless marked [`permanent`](crate::retry::permanent)); a panic is caught, never
/// retried, and fails the worker through its panic policy.
pub trait CommandHandler: Send + Sync + 'static {
    /// Runs one attempt.
    fn call(
        &self,
        ctx: CommandContext,
    ) -> impl Future<Output = Result<CommandResponse, BoxError>> + Send;
}

pub(crate) trait DynHandler: Send + Sync + 'static {
    fn call_dyn(&self, ctx: CommandContext) -> BoxFuture<'_, Result<CommandResponse, BoxError>>;
}

impl<H: CommandHandler> DynHandler for H {
    fn call_dyn(&self, ctx: CommandContext) -> BoxFuture<'_, Result<CommandResponse, BoxError>> {
        // The future borrows the handler: the dispatch that polls it borrows the worker's
        // command table, which lives as long as the runtime, so no `Arc` is cloned per call.
        Box::pin(self.call(ctx))
    }
}

/// A handler made from a closure; see [`handler_fn`].
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

/// Makes a handler from an async closure.
///
/// ```
/// use workerkit_core::command::{handler_fn, CommandResponse};
///
/// let handler = handler_fn(|ctx| async move {
///     let n: u64 = ctx.request().json()?;
///     Ok(CommandResponse::message(format!("got {n}")))
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(CommandContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CommandResponse, BoxError>> + Send + 'static,
{
    HandlerFn { f }
}

impl<F, Fut> CommandHandler for HandlerFn<F>
where
    F: Fn(CommandContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CommandResponse, BoxError>> + Send + 'static,
{
    fn call(
        &self,
        ctx: CommandContext,
    ) -> impl Future<Output = Result<CommandResponse, BoxError>> + Send {
        (self.f)(ctx)
    }
}

/// A handler taking and returning `serde` types; see [`json_handler`].
pub struct JsonHandler<F, In> {
    f: F,
    _input: std::marker::PhantomData<fn(In)>,
}

impl<F, In> fmt::Debug for JsonHandler<F, In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonHandler").finish_non_exhaustive()
    }
}

/// Makes a handler that decodes the payload into `In` and encodes its `Out` as the response
/// payload. An absent payload decodes as JSON `null` (so `In = Option<T>` accepts it); a payload
/// that does not decode fails with a permanent `invalid_payload` error, never a panic.
///
/// ```
/// use workerkit_core::command::json_handler;
///
/// #[derive(serde::Deserialize)]
/// struct Resize { size: u32 }
///
/// let handler = json_handler(|_ctx, input: Resize| async move {
///     Ok::<_, std::io::Error>(serde_json::json!({ "resized_to": input.size }))
/// });
/// # let _ = handler;
/// ```
pub fn json_handler<F, Fut, In, Out, E>(f: F) -> JsonHandler<F, In>
where
    F: Fn(CommandContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, E>> + Send + 'static,
    In: serde::de::DeserializeOwned + Send + 'static,
    Out: serde::Serialize,
    E: Into<BoxError>,
{
    JsonHandler {
        f,
        _input: std::marker::PhantomData,
    }
}

impl<F, Fut, In, Out, E> CommandHandler for JsonHandler<F, In>
where
    F: Fn(CommandContext, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, E>> + Send + 'static,
    In: serde::de::DeserializeOwned + Send + 'static,
    Out: serde::Serialize,
    E: Into<BoxError>,
{
    async fn call(&self, ctx: CommandContext) -> Result<CommandResponse, BoxError> {
        let input: In = match ctx.request().raw_payload() {
            // An absent payload is `null` to types that accept it (`Option<T>`, `()`), and
            // "payload required" to the others.
            None => In::deserialize(serde_json::Value::Null)
                .map_err(|_| super::PayloadError::Missing)?,
            Some(value) => {
                In::deserialize(value).map_err(|e| super::PayloadError::Invalid(e.to_string()))?
            }
        };
        let output = (self.f)(ctx, input).await.map_err(Into::into)?;
        Ok(CommandResponse::json(&output)?)
    }
}

/// Why a dispatch was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CancelReason {
    /// Cancelled by its dispatch id ([`Runtime::cancel`](crate::Runtime::cancel)).
    Requested,
    /// Its worker incarnation stopped and the stop cancels in-flight commands.
    WorkerStopped,
}

impl CancelReason {
    /// The wire name (`requested`, `worker_stopped`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::WorkerStopped => "worker_stopped",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Requested),
            2 => Some(Self::WorkerStopped),
            _ => None,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Requested => 1,
            Self::WorkerStopped => 2,
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Per-dispatch state shared by the pipeline, the handler's context and the in-flight registry.
pub(crate) struct DispatchShared {
    pub(crate) id: DispatchId,
    pub(crate) request: CommandRequest,
    pub(crate) worker: Arc<super::table::ShardContext>,
    pub(crate) started: Instant,
    cancel: AtomicU8,
    notify: Notify,
}

impl DispatchShared {
    pub(crate) fn new(
        id: DispatchId,
        request: CommandRequest,
        worker: Arc<super::table::ShardContext>,
        started: Instant,
    ) -> Self {
        Self {
            id,
            request,
            worker,
            started,
            cancel: AtomicU8::new(0),
            notify: Notify::new(),
        }
    }

    /// Cancels the dispatch; the first reason wins. Returns whether this call cancelled it.
    pub(crate) fn cancel(&self, reason: CancelReason) -> bool {
        let won = self
            .cancel
            .compare_exchange(0, reason.as_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.notify.notify_waiters();
        }
        won
    }

    pub(crate) fn cancel_reason(&self) -> Option<CancelReason> {
        CancelReason::from_u8(self.cancel.load(Ordering::Acquire))
    }

    pub(crate) async fn cancelled(&self) -> CancelReason {
        loop {
            let notified = self.notify.notified();
            if let Some(reason) = self.cancel_reason() {
                return reason;
            }
            notified.await;
        }
    }
}

/// The context of one command attempt: the request, the dispatch id, the attempt number, the
/// worker's context, and cancellation.
#[derive(Clone)]
pub struct CommandContext {
    pub(crate) shared: Arc<DispatchShared>,
    pub(crate) attempt: u32,
    pub(crate) deadline: Option<Instant>,
}

impl fmt::Debug for CommandContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandContext")
            .field("id", &self.shared.id)
            .field("command", &self.shared.request.name())
            .field("attempt", &self.attempt)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl CommandContext {
    /// The request.
    pub fn request(&self) -> &CommandRequest {
        &self.shared.request
    }

    /// The dispatch id.
    #[must_use]
    pub fn id(&self) -> DispatchId {
        self.shared.id
    }

    /// The attempt number, 1 for the first.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The context of the worker incarnation that admitted the command (for `report_failure`,
    /// `set_ready`, ...).
    #[must_use]
    pub fn worker(&self) -> &WorkerContext {
        &self.shared.worker.0
    }

    /// This attempt's deadline, if it has a timeout.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the dispatch was cancelled (by id or by its worker's stop) or the attempt's
    /// deadline passed.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel_reason().is_some() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when the dispatch is cancelled or the attempt's deadline passes: stop work and
    /// clean up. Under the cooperative timeout mode the runtime waits for the handler to return.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn cancelled(&self) {
        match self.deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = self.shared.cancelled() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => {
                self.shared.cancelled().await;
            }
        }
    }
}
