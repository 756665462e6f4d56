//! Worker-owned commands: registration, discovery, requests and responses.
//!
//! A worker owns named commands ([`CommandSpec`], registered with
//! [`WorkerSpec::command`](crate::WorkerSpec::command)); the runtime admits, limits, times out,
//! retries and observes each [`Runtime::dispatch`](crate::Runtime::dispatch), and answers every
//! admitted command exactly once.
//!
//! Payloads are JSON. An absent payload (`None`) and a JSON `null` (`Some(Value::Null)`) are
//! different requests; [`CommandRequest::json`] and [`CommandRequest::json_opt`] decode into your
//! own `serde` types, with a typed [`PayloadError`] for bad input.

mod error;
mod handler;
mod id;
pub(crate) mod pipeline;
mod table;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use error::{
    AttemptTimedOut, CancelError, CommandResult, DispatchError, InFlightCommand, LimitScope,
    RUNTIME_NOT_ACCEPTING_RETRY_AFTER,
};
pub use handler::{
    CancelReason, CommandContext, CommandHandler, HandlerFn, JsonHandler, handler_fn, json_handler,
};
pub use id::{DispatchId, ParseDispatchIdError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
pub(crate) use table::{CommandEntry, RuntimeLimit, WorkerCommands};

use crate::failure;
use crate::retry::RetryPolicy;
use crate::time::Timestamp;

/// String metadata carried by a request, e.g. a W3C `traceparent` copied from an HTTP request.
/// Observers can read it; the runtime never interprets it.
pub type Metadata = BTreeMap<String, String>;

/// A request to run a worker's command.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct CommandRequest {
    id: Option<DispatchId>,
    worker: Cow<'static, str>,
    name: Cow<'static, str>,
    payload: Option<Value>,
    /// Boxed, and absent until the first entry: most requests have none, and an empty map still
    /// costs its size in every move of the request and a walk when it is dropped.
    metadata: Option<Box<Metadata>>,
    requested_at: Option<Timestamp>,
}

impl CommandRequest {
    /// A request for command `name` of `worker` (local or qualified name), with no payload.
    ///
    /// Both names take a `&'static str` (kept as is, without allocating: the usual case of
    /// names written in the code) or an owned `String` (e.g. names read from a request body).
    pub fn new(worker: impl Into<Cow<'static, str>>, name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            id: None,
            worker: worker.into(),
            name: name.into(),
            payload: None,
            metadata: None,
            requested_at: None,
        }
    }

    /// Sets the JSON payload (`Value::Null` is a payload, different from none).
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// Sets the payload from any `Serialize` value.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Encode`] if the value cannot be represented as JSON.
    pub fn json_payload<T: Serialize>(self, value: &T) -> Result<Self, PayloadError> {
        let value = serde_json::to_value(value).map_err(|e| PayloadError::Encode(e.to_string()))?;
        Ok(self.payload(value))
    }

    /// Sets an optional payload as is (`None` = absent).
    pub fn maybe_payload(mut self, payload: Option<Value>) -> Self {
        self.payload = payload;
        self
    }

    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    /// Sets the dispatch id up front (default: a new [`DispatchId`] at dispatch), so a caller
    /// that runs the dispatch in the background can list or cancel it by that id. Ids should be
    /// unique: use [`DispatchId::new`].
    pub fn with_id(mut self, id: DispatchId) -> Self {
        self.id = Some(id);
        self
    }

    /// The id set with [`with_id`](Self::with_id), if any.
    #[must_use]
    pub fn preset_id(&self) -> Option<DispatchId> {
        self.id
    }

    /// Sets when the request was made (default: when it is dispatched).
    pub fn requested_at(mut self, at: Timestamp) -> Self {
        self.requested_at = Some(at);
        self
    }

    /// The target worker, as given (local or qualified; the handler's
    /// [`CommandContext::worker`] has the registration-owned names).
    #[must_use]
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The command name, as given.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The payload: `None` when absent, `Some(Value::Null)` for an explicit `null`.
    #[must_use]
    pub fn raw_payload(&self) -> Option<&Value> {
        self.payload.as_ref()
    }

    /// All metadata.
    #[must_use]
    pub fn all_metadata(&self) -> &Metadata {
        static EMPTY: Metadata = Metadata::new();
        self.metadata.as_deref().unwrap_or(&EMPTY)
    }

    /// One metadata value.
    #[must_use]
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.all_metadata().get(key).map(String::as_str)
    }

    /// When the request was made (set at dispatch if the caller did not).
    #[must_use]
    pub fn requested_at_time(&self) -> Option<Timestamp> {
        self.requested_at
    }

    pub(crate) fn stamp(&mut self, now: Timestamp) {
        self.requested_at.get_or_insert(now);
    }

    /// Decodes the payload into `T`.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Missing`] when there is no payload, [`PayloadError::Invalid`] when it does
    /// not decode. Both are permanent (never retried) and present publicly as `invalid_payload`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        match &self.payload {
            None => Err(PayloadError::Missing),
            Some(value) => T::deserialize(value).map_err(|e| PayloadError::Invalid(e.to_string())),
        }
    }

    /// Decodes an optional payload: `Ok(None)` when absent.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Invalid`] when present but not decodable.
    pub fn json_opt<T: DeserializeOwned>(&self) -> Result<Option<T>, PayloadError> {
        match &self.payload {
            None => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| PayloadError::Invalid(e.to_string())),
        }
    }
}

/// A payload that could not be decoded or encoded.
///
/// Returned from a handler (with `?`), it is never retried and presents publicly as
/// `invalid_payload` / `payload_encoding_failed` with a safe message; the serde detail stays
/// private.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The command needs a payload and none was sent.
    #[error("payload required")]
    Missing,
    /// The payload does not decode into the expected type (the serde message, private).
    #[error("invalid payload: {0}")]
    Invalid(String),
    /// A value could not be encoded as JSON.
    #[error("payload encoding failed: {0}")]
    Encode(String),
}

impl PayloadError {
    /// The stable code: `invalid_payload` or `payload_encoding_failed`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing | Self::Invalid(_) => "invalid_payload",
            Self::Encode(_) => "payload_encoding_failed",
        }
    }

    /// The public presentation: a stable code and a safe message.
    #[must_use]
    pub fn failure(&self) -> failure::Failure {
        match self {
            Self::Missing => failure::Failure::new("invalid_payload", "payload required"),
            Self::Invalid(_) => failure::Failure::new("invalid_payload", "invalid payload"),
            Self::Encode(_) => {
                failure::Failure::new("payload_encoding_failed", "payload encoding failed")
            }
        }
    }
}

/// What a command returns: an optional message and an optional JSON payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CommandResponse {
    /// A short human message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A JSON payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl CommandResponse {
    /// An empty response.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// A response with a message.
    #[must_use]
    pub fn message(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            payload: None,
        }
    }

    /// A response with a JSON payload.
    #[must_use]
    pub fn payload(payload: Value) -> Self {
        Self {
            message: None,
            payload: Some(payload),
        }
    }

    /// A response whose payload is any `Serialize` value.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Encode`] if the value cannot be represented as JSON.
    pub fn json<T: Serialize>(value: &T) -> Result<Self, PayloadError> {
        serde_json::to_value(value)
            .map(Self::payload)
            .map_err(|e| PayloadError::Encode(e.to_string()))
    }

    /// Adds a message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Sets the payload (or clears it with `None`).
    #[must_use]
    pub fn with_payload(mut self, payload: Option<Value>) -> Self {
        self.payload = payload;
        self
    }

    /// Decodes the payload into `T`.
    ///
    /// # Errors
    ///
    /// [`PayloadError::Missing`] or [`PayloadError::Invalid`].
    pub fn json_payload<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        match &self.payload {
            None => Err(PayloadError::Missing),
            Some(value) => T::deserialize(value).map_err(|e| PayloadError::Invalid(e.to_string())),
        }
    }
}

/// What happens when a concurrency limit is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmissionMode {
    /// Reject at once with `Saturated` (the Go behaviour). This is the default.
    #[default]
    FailFast,
    /// Wait up to this long for a slot, then reject with `Saturated`.
    Wait(Duration),
}

/// How a command's per-attempt timeout is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutMode {
    /// At the deadline the handler's [`CommandContext::cancelled`] fires and the runtime waits
    /// for the handler to return, so it can clean up. This is the default.
    #[default]
    Cooperative,
    /// As `Cooperative`, but if the handler has not returned `grace` after the deadline, its
    /// future is dropped.
    Hard {
        /// How long after the deadline the handler may still run.
        grace: Duration,
    },
}

/// A key/value attribute of a command, for discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribute {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A command's discovery metadata, in the Go JSON shape (note the snake_case `payload_kind`).
///
/// `{"worker":"rt/w","name":"sync","description"?,"payload_kind"?,"dangerous"?,"idempotent"?,
/// "attributes"?:[{"key","value"}]}`; fields after `name` are omitted when empty or false.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CommandInfo {
    /// The qualified worker name.
    pub worker: Arc<str>,
    /// The command name.
    pub name: Arc<str>,
    /// A human description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What the payload is, for humans and tools (advisory).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub payload_kind: String,
    /// Whether the command is dangerous (advisory).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dangerous: bool,
    /// Whether the command is idempotent (advisory; it does not enable retry).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
    /// Extra attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}

/// A command a worker owns: its name, discovery metadata, handler, and overrides of the worker's
/// command settings (timeout, retry, concurrency, admission).
#[must_use]
pub struct CommandSpec {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) payload_kind: String,
    pub(crate) dangerous: bool,
    pub(crate) idempotent: bool,
    pub(crate) attributes: Vec<Attribute>,
    pub(crate) handler: Arc<dyn handler::DynHandler>,
    pub(crate) settings: CommandOverrides,
}

/// A worker's overrides of the runtime's command defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkerCommandOverrides {
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) timeout_mode: Option<TimeoutMode>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) admission: Option<AdmissionMode>,
    pub(crate) cancel_on_stop: Option<Duration>,
}

/// Per-command overrides of command settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommandOverrides {
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) timeout_mode: Option<TimeoutMode>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) admission: Option<AdmissionMode>,
}

impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSpec")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("payload_kind", &self.payload_kind)
            .field("dangerous", &self.dangerous)
            .field("idempotent", &self.idempotent)
            .field("attributes", &self.attributes)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CommandSpec {
    /// A command named `name` (validated at registration) handled by `handler`.
    pub fn new(name: impl Into<String>, handler: impl CommandHandler) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            payload_kind: String::new(),
            dangerous: false,
            idempotent: false,
            attributes: Vec::new(),
            handler: Arc::new(handler),
            settings: CommandOverrides::default(),
        }
    }

    /// A human description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// What the payload is (advisory).
    pub fn payload_kind(mut self, kind: impl Into<String>) -> Self {
        self.payload_kind = kind.into();
        self
    }

    /// Marks the command dangerous (advisory).
    pub fn dangerous(mut self, dangerous: bool) -> Self {
        self.dangerous = dangerous;
        self
    }

    /// Marks the command idempotent (advisory; retry is configured separately).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Adds a discovery attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push(Attribute {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Per-attempt timeout for this command (zero is a registration error).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(Some(timeout));
        self
    }

    /// No per-attempt timeout for this command.
    pub fn no_timeout(mut self) -> Self {
        self.settings.timeout = Some(None);
        self
    }

    /// How the timeout is enforced.
    pub fn timeout_mode(mut self, mode: TimeoutMode) -> Self {
        self.settings.timeout_mode = Some(mode);
        self
    }

    /// Retry policy for this command.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = Some(policy);
        self
    }

    /// At most `limit` concurrent executions of this command (zero is a registration error).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.settings.concurrency = Some(limit);
        self
    }

    /// What happens when a limit is full, for this command.
    pub fn admission(mut self, mode: AdmissionMode) -> Self {
        self.settings.admission = Some(mode);
        self
    }

    /// The command's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Resolves a worker's commands and command settings at registration.
pub(crate) fn build_table(
    qualified: &Arc<str>,
    specs: Vec<CommandSpec>,
    worker: &WorkerCommandOverrides,
    defaults: &crate::runtime::Defaults,
) -> Result<WorkerCommands, crate::error::RegisterError> {
    use crate::error::RegisterError;
    let zero = |setting: &'static str| RegisterError::ZeroDuration {
        worker: qualified.to_string(),
        setting,
    };
    let worker_timeout = worker.timeout.unwrap_or(defaults.command_timeout);
    if worker_timeout.is_some_and(|t| t.is_zero()) {
        return Err(zero("command_timeout"));
    }
    let worker_concurrency = worker.concurrency.or(defaults.worker_command_concurrency);
    if worker_concurrency == Some(0) {
        return Err(zero("command_concurrency"));
    }
    if worker.cancel_on_stop.is_some_and(|g| g.is_zero()) {
        return Err(zero("cancel_commands_on_stop"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        crate::name::validate_command_name(&spec.name).map_err(|error| {
            RegisterError::InvalidCommandName {
                worker: qualified.to_string(),
                error,
            }
        })?;
        if !seen.insert(spec.name.clone()) {
            return Err(RegisterError::CommandAlreadyRegistered {
                worker: qualified.to_string(),
                command: spec.name,
            });
        }
        let timeout = spec.settings.timeout.unwrap_or(worker_timeout);
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(zero("command timeout"));
        }
        if spec.settings.concurrency == Some(0) {
            return Err(zero("command concurrency"));
        }
        let name: Arc<str> = spec.name.into();
        entries.push(Arc::new(CommandEntry {
            info: CommandInfo {
                worker: Arc::clone(qualified),
                name: Arc::clone(&name),
                description: spec.description,
                payload_kind: spec.payload_kind,
                dangerous: spec.dangerous,
                idempotent: spec.idempotent,
                attributes: spec.attributes,
            },
            name,
            index,
            handler: spec.handler,
            timeout,
            timeout_mode: spec
                .settings
                .timeout_mode
                .or(worker.timeout_mode)
                .unwrap_or(defaults.command_timeout_mode),
            retry: spec
                .settings
                .retry
                .or_else(|| worker.retry.clone())
                .unwrap_or_else(|| defaults.command_retry.clone()),
            concurrency: spec.settings.concurrency,
            admission: spec
                .settings
                .admission
                .or(worker.admission)
                .unwrap_or(defaults.command_admission),
            mean_nanos: std::sync::atomic::AtomicU64::new(0),
        }));
    }
    Ok(WorkerCommands::new(
        qualified,
        entries,
        worker_concurrency,
        worker.cancel_on_stop,
    ))
}
