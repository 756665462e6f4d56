//! Test helpers (feature `test-util`): a recording observer and a scriptable fake worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::failure::BoxError;
use crate::observe::{
    CheckEndEvent, CheckStartEvent, CommandEndEvent, CommandObservation, CommandStartEvent,
    FailureEvent, Observer, OperationEvent, ReadinessEvent, TransitionEvent,
};
use crate::worker::{Worker, WorkerContext};

/// One recorded event.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Recorded {
    /// A transition.
    Transition(TransitionEvent),
    /// A readiness change.
    Readiness(ReadinessEvent),
    /// A failure.
    Failure(FailureEvent),
    /// A lifecycle operation phase.
    Operation(OperationEvent),
    /// A check start.
    CheckStart(CheckStartEvent),
    /// A check end.
    CheckEnd(CheckEndEvent),
    /// A dispatch to a resolved command began.
    CommandStart(CommandStartEvent),
    /// A dispatch ended (exactly one per [`Recorded::CommandStart`]).
    CommandEnd(CommandEndEvent),
    /// A supervision event.
    Supervision(crate::observe::SupervisionEvent),
}

impl Recorded {
    /// A compact text form for assertions: `T rt/a registered->starting`, `T rt registered->
    /// starting` (runtime), `R rt/a true`, `F rt/a worker_failed`, `F! rt/a panic` (panic),
    /// `O start started`, `C rt/a ready`, `S rt/a/cmd` (command start), `E rt/a/cmd succeeded`
    /// (command end, with its outcome), `U rt/a restart_scheduled` (supervision).
    #[must_use]
    pub fn brief(&self) -> String {
        fn who(worker: Option<&Arc<str>>, runtime: &str) -> String {
            worker.map_or_else(|| runtime.to_owned(), ToString::to_string)
        }
        match self {
            Self::Transition(e) => format!(
                "T {} {}->{}",
                who(e.worker.as_ref(), &e.runtime),
                e.from,
                e.to
            ),
            Self::Readiness(e) => format!("R {} {}", who(e.worker.as_ref(), &e.runtime), e.ready),
            Self::Failure(e) => format!(
                "F{} {} {}",
                if e.panic { "!" } else { "" },
                who(e.worker.as_ref(), &e.runtime),
                e.failure.code()
            ),
            Self::Operation(e) => {
                let phase = match &e.phase {
                    crate::observe::OperationPhase::Started => "started".to_owned(),
                    crate::observe::OperationPhase::Succeeded => "succeeded".to_owned(),
                    crate::observe::OperationPhase::Failed(f) => format!("failed:{}", f.code()),
                };
                format!("O {} {phase}", e.operation)
            }
            Self::CheckStart(e) => format!("C {} start", e.worker),
            Self::CheckEnd(e) => format!("C {} {}", e.worker, e.outcome.as_str()),
            Self::CommandStart(e) => format!("S {}/{}", e.worker, e.command),
            Self::CommandEnd(e) => format!("E {}/{} {}", e.worker, e.command, e.outcome.as_str()),
            Self::Supervision(e) => {
                format!("U {} {}", who(e.worker.as_ref(), &e.runtime), e.kind.name())
            }
        }
    }
}

/// An observer that records every event, for assertions.
#[derive(Debug, Default, Clone)]
pub struct RecordingObserver {
    events: Arc<Mutex<Vec<Recorded>>>,
    changed: Arc<Notify>,
}

impl RecordingObserver {
    /// A new, empty recorder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, event: Recorded) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
        self.changed.notify_waiters();
    }

    /// Every event so far.
    #[must_use]
    pub fn events(&self) -> Vec<Recorded> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// [`Recorded::brief`] of every event except operation and check events.
    #[must_use]
    pub fn briefs(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Recorded::Transition(_)
                        | Recorded::Readiness(_)
                        | Recorded::Failure(_)
                        | Recorded::Supervision(_)
                )
            })
            .map(Recorded::brief)
            .collect()
    }

    /// [`Recorded::brief`] of every event.
    #[must_use]
    pub fn all_briefs(&self) -> Vec<String> {
        self.events().iter().map(Recorded::brief).collect()
    }

    /// Only the failure events.
    #[must_use]
    pub fn failures(&self) -> Vec<FailureEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Recorded::Failure(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    /// Only the command start events.
    #[must_use]
    pub fn command_starts(&self) -> Vec<CommandStartEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Recorded::CommandStart(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Only the command end events.
    #[must_use]
    pub fn command_ends(&self) -> Vec<CommandEndEvent> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Recorded::CommandEnd(end) => Some(end),
                _ => None,
            })
            .collect()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Waits until `predicate` holds for the recorded events.
    pub async fn wait_until(&self, mut predicate: impl FnMut(&[Recorded]) -> bool) {
        loop {
            let notified = self.changed.notified();
            if predicate(&self.events()) {
                return;
            }
            notified.await;
        }
    }
}

impl Observer for RecordingObserver {
    fn on_transition(&self, event: &TransitionEvent) {
        self.push(Recorded::Transition(event.clone()));
    }
    fn on_readiness(&self, event: &ReadinessEvent) {
        self.push(Recorded::Readiness(event.clone()));
    }
    fn on_failure(&self, event: &FailureEvent) {
        self.push(Recorded::Failure(event.clone()));
    }
    fn on_operation(&self, event: &OperationEvent) {
        self.push(Recorded::Operation(event.clone()));
    }
    fn on_check_start(&self, event: &CheckStartEvent) {
        self.push(Recorded::CheckStart(event.clone()));
    }
    fn on_supervision(&self, event: &crate::observe::SupervisionEvent) {
        self.push(Recorded::Supervision(event.clone()));
    }
    fn on_check_end(&self, event: &CheckEndEvent) {
        self.push(Recorded::CheckEnd(event.clone()));
    }
    fn on_command_start(&self, event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        self.push(Recorded::CommandStart(event.clone()));
        Some(Box::new(RecordedCommand {
            recorder: self.clone(),
        }))
    }
}

/// The observation a [`RecordingObserver`] returns for each dispatch: records its end.
#[derive(Debug)]
struct RecordedCommand {
    recorder: RecordingObserver,
}

impl CommandObservation for RecordedCommand {
    fn end(self: Box<Self>, event: &CommandEndEvent) {
        self.recorder.push(Recorded::CommandEnd(event.clone()));
    }
}

/// What a [`FakeWorker`] does on its next start or stop.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Step {
    /// Succeed. This is the default.
    #[default]
    Succeed,
    /// Fail with an error whose (private) text is the string.
    Fail(String),
    /// Panic with the string.
    Panic(String),
    /// Wait until [`FakeControl::release`] is called, then succeed.
    Block,
    /// Never finish (until the runtime drops the future at its timeout).
    Hang,
}

#[derive(Debug, Default)]
struct Script {
    starts: Mutex<VecDeque<Step>>,
    stops: Mutex<VecDeque<Step>>,
    start_calls: AtomicUsize,
    stop_calls: AtomicUsize,
    entered: watch::Sender<usize>,
    release: Notify,
    contexts: Mutex<Vec<WorkerContext>>,
}

/// A scriptable worker for tests: queue what its next starts and stops do, and watch its calls
/// through a [`FakeControl`].
#[derive(Debug)]
pub struct FakeWorker {
    script: Arc<Script>,
}

/// Controls and inspects a [`FakeWorker`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeControl {
    script: Arc<Script>,
}

impl FakeWorker {
    /// A fake worker that succeeds unless scripted otherwise, and its control.
    #[must_use]
    pub fn new() -> (Self, FakeControl) {
        let script = Arc::new(Script::default());
        (
            Self {
                script: Arc::clone(&script),
            },
            FakeControl { script },
        )
    }
}

fn pop(queue: &Mutex<VecDeque<Step>>) -> Step {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop_front()
        .unwrap_or_default()
}

async fn perform(script: &Script, step: Step) -> Result<(), BoxError> {
    script.entered.send_modify(|n| *n += 1);
    match step {
        Step::Succeed => Ok(()),
        Step::Fail(text) => Err(text.into()),
        Step::Panic(text) => panic!("{text}"),
        Step::Block => {
            script.release.notified().await;
            Ok(())
        }
        Step::Hang => std::future::pending().await,
    }
}

impl Worker for FakeWorker {
    async fn start(&mut self, ctx: WorkerContext) -> Result<(), BoxError> {
        self.script.start_calls.fetch_add(1, Ordering::SeqCst);
        self.script
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ctx);
        let step = pop(&self.script.starts);
        perform(&self.script, step).await
    }

    async fn stop(&mut self, _ctx: WorkerContext) -> Result<(), BoxError> {
        self.script.stop_calls.fetch_add(1, Ordering::SeqCst);
        let step = pop(&self.script.stops);
        perform(&self.script, step).await
    }
}

impl FakeControl {
    /// Queues what a coming start does.
    pub fn on_start(&self, step: Step) -> &Self {
        self.script
            .starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(step);
        self
    }

    /// Queues what a coming stop does.
    pub fn on_stop(&self, step: Step) -> &Self {
        self.script
            .stops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(step);
        self
    }

    /// Releases one blocked start or stop (or the next one to block).
    pub fn release(&self) {
        self.script.release.notify_one();
    }

    /// How many times start was called.
    #[must_use]
    pub fn starts(&self) -> usize {
        self.script.start_calls.load(Ordering::SeqCst)
    }

    /// How many times stop was called.
    #[must_use]
    pub fn stops(&self) -> usize {
        self.script.stop_calls.load(Ordering::SeqCst)
    }

    /// Waits until start or stop has been entered `n` times in all.
    pub async fn entered(&self, n: usize) {
        let mut rx = self.script.entered.subscribe();
        let _ = rx.wait_for(|entered| *entered >= n).await;
    }

    /// The context passed to the `n`th start (0-based), if there was one.
    #[must_use]
    pub fn context(&self, n: usize) -> Option<WorkerContext> {
        self.script
            .contexts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(n)
            .cloned()
    }
}
