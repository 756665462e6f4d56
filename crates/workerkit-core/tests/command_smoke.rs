//! Smoke tests of command dispatch.

mod support;

use std::time::Duration;

use serde_json::json;
use workerkit_core::command::{DispatchError, LimitScope};
use workerkit_core::test_util::RecordingObserver;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

fn echo_worker() -> WorkerSpec {
    WorkerSpec::new("w", worker_fn(|_ctx| async { Ok(()) }))
        .command(CommandSpec::new(
            "echo",
            handler_fn(|ctx| async move {
                let payload = ctx.request().raw_payload().cloned();
                Ok(
                    CommandResponse::message(format!("attempt {}", ctx.attempt()))
                        .with_payload(payload),
                )
            }),
        ))
        .command(
            CommandSpec::new(
                "slow",
                handler_fn(|ctx| async move {
                    ctx.cancelled().await;
                    Err("gave up".into())
                }),
            )
            .timeout(Duration::from_secs(1))
            .concurrency(1),
        )
}

#[tokio::test(start_paused = true)]
async fn dispatch_runs_the_handler_and_distinguishes_null_from_absent() {
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap();
    rt.register(echo_worker()).unwrap();
    rt.start_all().await.unwrap();

    let with_null = rt
        .dispatch(CommandRequest::new("w", "echo").payload(json!(null)))
        .await
        .unwrap();
    assert_eq!(with_null.result.payload, Some(json!(null)));
    let absent = rt.dispatch(CommandRequest::new("w", "echo")).await.unwrap();
    assert_eq!(absent.result.payload, None);
    assert_eq!(absent.result.message.as_deref(), Some("attempt 1"));
    assert_eq!(&**absent.worker(), "rt/w");
    assert_ne!(absent.id, with_null.id);
}

#[tokio::test(start_paused = true)]
async fn rejections_hand_the_request_back_and_timeouts_are_typed() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(echo_worker()).unwrap();
    let err = rt
        .dispatch(CommandRequest::new("w", "echo").metadata("traceparent", "00-abc"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "runtime_not_accepting_work");
    let request = err.into_request().unwrap();
    assert_eq!(request.metadata_value("traceparent"), Some("00-abc"));

    rt.start_all().await.unwrap();
    let err = rt
        .dispatch(CommandRequest::new("nope", "echo"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "worker_not_found");
    let err = rt
        .dispatch(CommandRequest::new("W", "echo"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_target");
    let err = rt
        .dispatch(CommandRequest::new("w", "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_not_found");

    let rt2 = rt.clone();
    let first = support::spawn(async move { rt2.dispatch(CommandRequest::new("w", "slow")).await });
    tokio::task::yield_now().await;
    while rt.in_flight().is_empty() {
        tokio::task::yield_now().await;
    }
    let err = rt
        .dispatch(CommandRequest::new("w", "slow"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DispatchError::Saturated {
            scope: LimitScope::Command,
            limit: 1,
            ..
        }
    ));
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "command_timed_out");
    assert!(rt.in_flight().is_empty());
    assert_eq!(rt.status().in_flight, 0);
}
