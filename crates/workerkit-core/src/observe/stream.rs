//! The event stream: every lifecycle transition, in order, to any number of subscribers, with
//! bounded memory (see [`Runtime::events`](crate::Runtime::events)).

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::LifecycleState;
use crate::time::Timestamp;

/// How many transitions the stream buffers for its slowest subscriber; one that falls further
/// behind skips the oldest and counts them in [`EventStream::lagged`].
pub const EVENT_STREAM_CAPACITY: usize = 1024;

/// One lifecycle transition, as the event stream delivers it (camelCase JSON, as the status
/// types).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StreamEvent {
    /// The event's sequence number (shared with the observers' events: gaps are other events).
    pub seq: u64,
    /// The runtime's name.
    pub runtime: Arc<str>,
    /// The qualified worker name; absent for the runtime's own aggregate state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<Arc<str>>,
    /// The worker's incarnation (0 for the runtime).
    pub incarnation: u64,
    /// The state left.
    pub from: LifecycleState,
    /// The state entered.
    pub to: LifecycleState,
    /// Why, where known: the public failure code of a transition to `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// A subscription to a runtime's transitions, from the moment it was taken. Bounded: a
/// subscriber that falls more than [`EVENT_STREAM_CAPACITY`] transitions behind misses the
/// oldest ones, which [`lagged`](Self::lagged) counts, rather than growing memory.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<StreamEvent>,
    lagged: u64,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<StreamEvent>) -> Self {
        Self { rx, lagged: 0 }
    }

    /// The next transition, in order; `None` once the runtime is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a transition is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => self.lagged += missed,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many transitions this subscriber missed because it fell behind.
    #[must_use]
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}
