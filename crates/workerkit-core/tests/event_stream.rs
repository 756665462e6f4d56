//! `Runtime::events`: every transition in order, bounded, with a lag counter.

use workerkit_core::failure::BoxError;
use workerkit_core::observe::EVENT_STREAM_CAPACITY;
use workerkit_core::{LifecycleState, Runtime, WorkerSpec, worker_fn};

fn runtime() -> Runtime {
    let rt = Runtime::builder("ev").build().unwrap();
    rt.register(WorkerSpec::new("a", worker_fn(|_| async { Ok(()) })))
        .unwrap();
    rt.register(WorkerSpec::new(
        "broken",
        worker_fn(|_| async { Err::<(), BoxError>("no".into()) }),
    ))
    .unwrap();
    rt
}

#[tokio::test(start_paused = true)]
async fn subscribers_get_every_transition_in_order_with_reasons() {
    let rt = runtime();
    let mut first = rt.events();
    let mut second = rt.events();
    rt.start("a").await.unwrap();
    assert!(rt.start("broken").await.is_err());
    rt.stop("a").await.unwrap();

    let mut seen = Vec::new();
    let mut last_seq = 0;
    while seen.len() < 6 {
        let event = first.recv().await.expect("open");
        assert!(event.seq > last_seq, "in order");
        last_seq = event.seq;
        seen.push((
            event.worker.as_deref().map(str::to_owned),
            event.from,
            event.to,
            event.reason.clone(),
        ));
    }
    use LifecycleState::*;
    let worker = |name: &str| Some(format!("ev/{name}"));
    let expected = [
        (worker("a"), Registered, Starting, None),
        (None, Registered, Starting, None),
        (worker("a"), Starting, Running, None),
        (None, Starting, Running, None),
        (worker("broken"), Registered, Starting, None),
        (None, Running, Starting, None),
    ];
    assert_eq!(seen, expected);
    // The failed start comes with its public code as the reason.
    let mut failed = None;
    while let Some(event) = first.recv().await {
        if event.to == Failed && event.worker.is_some() {
            failed = Some(event);
            break;
        }
    }
    let failed = failed.expect("a failed transition");
    assert_eq!(
        failed.reason.as_deref(),
        Some("worker_failed"),
        "{failed:?}"
    );
    // JSON in the status types' casing.
    let json = serde_json::to_value(&failed).unwrap();
    assert_eq!(json["worker"], "ev/broken");
    assert_eq!(json["to"], "failed");
    assert!(json["at"].is_string() && json["seq"].is_number());

    // A second subscriber sees the same sequence.
    let event = second.recv().await.unwrap();
    assert_eq!(event.worker.as_deref(), Some("ev/a"));
    assert_eq!(event.to, Starting);
    assert_eq!(first.lagged(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_lags_instead_of_growing_memory() {
    let rt = runtime();
    let mut stream = rt.events();
    // Each start/stop pair is 8 transitions (worker and runtime, four each).
    let pairs = EVENT_STREAM_CAPACITY / 8 + 50;
    for _ in 0..pairs {
        rt.start("a").await.unwrap();
        rt.stop("a").await.unwrap();
    }
    let first = stream.recv().await.expect("open");
    assert!(stream.lagged() > 0, "the oldest were skipped");
    assert!(first.seq > 1, "{first:?}");
    // Everything after the skip still arrives, in order.
    let mut received = 1;
    let mut last = first.seq;
    while received < EVENT_STREAM_CAPACITY {
        let event = stream.recv().await.unwrap();
        assert!(event.seq > last);
        last = event.seq;
        received += 1;
    }
    assert_eq!(
        stream.lagged() + EVENT_STREAM_CAPACITY as u64,
        (pairs * 8) as u64,
        "every transition is either received or counted as missed"
    );
}

#[tokio::test(start_paused = true)]
async fn the_stream_ends_when_the_runtime_is_gone() {
    let rt = runtime();
    let mut stream = rt.events();
    drop(rt);
    assert!(stream.recv().await.is_none());
}
