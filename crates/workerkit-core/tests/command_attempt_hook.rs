//! `CommandObservation::attempt_failed`: once per failed attempt, on the dispatching task,
//! before the retry and before the dispatch ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use workerkit_core::failure::BoxError;
use workerkit_core::observe::{
    AttemptFailure, CommandEndEvent, CommandObservation, CommandStartEvent, Observer,
};
use workerkit_core::retry::RetryPolicy;
use workerkit_core::{CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec};

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

struct Recorder(Arc<Log>);
struct Observation(Arc<Log>);

impl Observer for Recorder {
    fn on_command_start(&self, _event: &CommandStartEvent) -> Option<Box<dyn CommandObservation>> {
        Some(Box::new(Observation(Arc::clone(&self.0))))
    }
}

impl CommandObservation for Observation {
    fn attempt_failed(&self, failure: &AttemptFailure<'_>) {
        self.0.0.lock().unwrap().push(format!(
            "failed attempt={} code={} panic={} cause={}",
            failure.attempt,
            failure.failure.code(),
            failure.panic,
            failure.cause.is_some()
        ));
    }

    fn end(self: Box<Self>, event: &CommandEndEvent) {
        self.0
            .0
            .lock()
            .unwrap()
            .push(format!("end attempts={}", event.attempts));
    }
}

#[tokio::test(start_paused = true)]
async fn every_failed_attempt_is_reported_once_before_the_end() {
    let log = Arc::new(Log::default());
    let rt = Runtime::builder("hook")
        .with_observer(Recorder(Arc::clone(&log)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    rt.register(
        WorkerSpec::new("w", workerkit_core::worker_fn(|_| async { Ok(()) }))
            .command_retry(RetryPolicy::attempts(3).unwrap())
            .command(CommandSpec::new(
                "flaky",
                workerkit_core::handler_fn(move |_ctx| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        if n < 3 {
                            Err::<CommandResponse, BoxError>("not yet".into())
                        } else {
                            Ok(CommandResponse::empty())
                        }
                    }
                }),
            )),
    )
    .unwrap();
    rt.start_all().await.unwrap();
    rt.dispatch(CommandRequest::new("w", "flaky"))
        .await
        .unwrap();
    assert_eq!(
        *log.0.lock().unwrap(),
        [
            "failed attempt=1 code=command_failed panic=false cause=true",
            "failed attempt=2 code=command_failed panic=false cause=true",
            "end attempts=3",
        ]
    );
}
