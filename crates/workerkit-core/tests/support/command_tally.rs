//! A command observer that tallies start and end events per dispatch id (`command_stress`,
//! `race_commands`): every start must be ended exactly once, by the observation it opened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use workerkit_core::Observer;
use workerkit_core::command::DispatchId;
use workerkit_core::observe::{
    CommandEndEvent, CommandObservation, CommandOutcome, CommandStartEvent,
};

/// The metadata key whose value names a dispatch in the tally (see [`CommandTally::by_tag`]).
pub(crate) const TAG: &str = "tag";

/// What one dispatch id was seen doing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    /// `CommandStartEvent`s with this id.
    pub(crate) starts: u32,
    /// `CommandObservation::end` calls with this id.
    pub(crate) ends: u32,
    /// The outcome of the last end.
    pub(crate) outcome: Option<CommandOutcome>,
    /// The attempts of the last end.
    pub(crate) attempts: u32,
    /// The request's `tag` metadata.
    pub(crate) tag: Option<String>,
    /// The qualified worker of the start event.
    pub(crate) worker: String,
}

/// Counts command starts and ends by dispatch id.
#[derive(Clone, Debug, Default)]
pub(crate) struct CommandTally {
    seen: Arc<Mutex<HashMap<DispatchId, Seen>>>,
    /// Ends whose event named another id than the start that opened the observation.
    mismatched: Arc<AtomicU64>,
}

impl CommandTally {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DispatchId, Seen>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every dispatch seen so far.
    pub(crate) fn snapshot(&self) -> HashMap<DispatchId, Seen> {
        self.lock().clone()
    }

    /// One dispatch.
    pub(crate) fn get(&self, id: DispatchId) -> Option<Seen> {
        self.lock().get(&id).cloned()
    }

    /// The dispatches whose request carried `tag` metadata equal to `tag`.
    pub(crate) fn by_tag(&self, tag: &str) -> Vec<(DispatchId, Seen)> {
        self.lock()
            .iter()
            .filter(|(_, seen)| seen.tag.as_deref() == Some(tag))
            .map(|(id, seen)| (*id, seen.clone()))
            .collect()
    }

    /// How many dispatches were seen.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// How many ends named another id than their start.
    pub(crate) fn mismatched(&self) -> u64 {
        self.mismatched.load(Ordering::SeqCst)
    }

    /// Every dispatch seen was started once and ended once, by its own observation.
    pub(crate) fn assert_balanced(&self) {
        assert_eq!(self.mismatched(), 0, "an end event named another dispatch");
        let seen = self.lock();
        let bad: Vec<_> = seen
            .iter()
            .filter(|(_, s)| s.starts != 1 || s.ends != 1)
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} dispatches not started and ended exactly once: {bad:#?}",
            bad.len(),
            seen.len()
        );
    }
}

impl Observer for CommandTally {
    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        let mut seen = self.lock();
        let entry = seen.entry(event.dispatch_id).or_default();
        entry.starts += 1;
        entry.tag = event.metadata.get(TAG).cloned();
        entry.worker = event.worker.to_string();
        Some(Box::new(Observation {
            id: event.dispatch_id,
            tally: self.clone(),
        }))
    }
}

struct Observation {
    id: DispatchId,
    tally: CommandTally,
}

impl CommandObservation for Observation {
    fn end(self: Box<Self>, event: &CommandEndEvent) {
        if event.dispatch_id != self.id {
            self.tally.mismatched.fetch_add(1, Ordering::SeqCst);
        }
        let mut seen = self.tally.lock();
        let entry = seen.entry(self.id).or_default();
        entry.ends += 1;
        entry.outcome = Some(event.outcome);
        entry.attempts = event.attempts;
    }
}
