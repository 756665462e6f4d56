//! Status snapshots and their JSON shapes (spec §8.1, §8.2; Go `status_test.go` and the
//! snapshot tests of `worker_test.go`): camelCase keys, optional keys omitted when empty,
//! RFC 3339 timestamps, and snapshots that are independent copies.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::{fake, fake_with};
use workerkit_core::test_util::Step;
use workerkit_core::{LifecycleState, Runtime, Timestamp, WorkerSpec};

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap()
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(keys: &[&'a str]) -> BTreeSet<&'a str> {
    keys.iter().copied().collect()
}

/// Checks an RFC 3339 UTC timestamp as Go writes it (`2026-11-22T19:23:43.207807057Z`:
/// nanoseconds with trailing zeros trimmed) and that it is the time of `at`.
fn assert_rfc3339(value: &Value, at: Timestamp) {
    let text = value.as_str().expect("a timestamp string");
    assert_eq!(text, at.to_string());
    let bytes = text.as_bytes();
    assert!(text.len() >= 20 && text.ends_with('Z'), "{text}");
    for (i, b) in bytes[..19].iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*b, b'-', "{text}"),
            10 => assert_eq!(*b, b'T', "{text}"),
            13 | 16 => assert_eq!(*b, b':', "{text}"),
            _ => assert!(b.is_ascii_digit(), "{text}"),
        }
    }
    let fraction = &text[19..text.len() - 1];
    if !fraction.is_empty() {
        let digits = fraction
            .strip_prefix('.')
            .expect("a fraction starts with '.'");
        assert!(
            (1..=9).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
            "{text}"
        );
        assert!(!digits.ends_with('0'), "trailing zeros are trimmed: {text}");
    }
    // Wall-clock time (paused tokio time does not apply), close to now.
    let age = SystemTime::now()
        .duration_since(at.as_system_time())
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(600), "{text}");
}

#[tokio::test(start_paused = true)]
async fn runtime_status_json_has_camel_case_keys_and_omits_an_empty_transition() {
    let rt = Runtime::builder("rt").build().unwrap();
    let value = to_json(&rt.status());
    assert_eq!(
        value,
        json!({
            "name": "rt",
            "state": "registered",
            "ready": false,
            "inFlight": 0,
            "workers": 0,
            "shuttingDown": false,
            "shutDown": false,
        })
    );

    fake(&rt, "a");
    fake(&rt, "b");
    assert_eq!(rt.status().workers, 2, "tracks the registered worker count");
    rt.start("a").await.unwrap();
    let status = rt.status();
    let value = to_json(&status);
    assert_eq!(
        keys(&value),
        set(&[
            "name",
            "state",
            "ready",
            "inFlight",
            "workers",
            "lastTransition",
            "shuttingDown",
            "shutDown"
        ])
    );
    assert_eq!(value["state"], "running");
    assert_eq!(value["workers"], 2);
    let transition = &value["lastTransition"];
    assert_eq!(keys(transition), set(&["from", "to", "at"]));
    assert_eq!(transition["from"], "starting");
    assert_eq!(transition["to"], "running");
    assert_rfc3339(&transition["at"], status.last_transition.unwrap().at);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_worker_snapshot_omits_every_optional_key() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "a");
    let value = to_json(&rt.worker("a").unwrap());
    assert_eq!(
        value,
        json!({
            "qualifiedName": "rt/a",
            "name": "a",
            "status": {
                "name": "rt/a",
                "localName": "a",
                "state": "registered",
                "ready": false,
                "acceptingWork": false,
                "inFlight": 0,
                "waiting": 0,
                "incarnation": 0,
                "contributesToReadiness": true,
                "failurePolicy": "isolate",
                "restartPolicy": "never",
                "restarts": 0,
                "gaveUp": false,
                "stalled": false,
            },
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_snapshot_shows_description_transition_failure_and_exit() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake_with(&rt, "a", |s| s.description("Sends the invoices"));
    w.on_start(Step::Fail("secret".into()));
    rt.start("a").await.unwrap_err();
    rt.stop("a").await.unwrap();

    let snapshot = rt.worker("a").unwrap();
    let value = to_json(&snapshot);
    assert_eq!(
        keys(&value),
        set(&["qualifiedName", "name", "description", "status"])
    );
    assert_eq!(value["description"], "Sends the invoices");
    let status = &value["status"];
    assert_eq!(
        keys(status),
        set(&[
            "name",
            "localName",
            "state",
            "ready",
            "acceptingWork",
            "inFlight",
            "waiting",
            "incarnation",
            "contributesToReadiness",
            "failurePolicy",
            "lastTransition",
            "lastFailure",
            "lastExit",
            "restartPolicy",
            "restarts",
            "gaveUp",
            "stalled",
        ])
    );
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["incarnation"], 1);
    let s = &snapshot.status;
    assert_eq!(status["lastTransition"]["from"], "stopping");
    assert_eq!(status["lastTransition"]["to"], "stopped");
    assert_rfc3339(
        &status["lastTransition"]["at"],
        s.last_transition.as_ref().unwrap().at,
    );

    let failure = &status["lastFailure"];
    assert_eq!(keys(failure), set(&["code", "message", "at"]));
    assert_eq!(failure["code"], "worker_failed");
    assert_eq!(failure["message"], "worker operation failed");
    assert_rfc3339(&failure["at"], s.last_failure.as_ref().unwrap().at);

    let exit = &status["lastExit"];
    assert_eq!(keys(exit), set(&["incarnation", "reason", "failure", "at"]));
    assert_eq!(exit["incarnation"], 1);
    assert_eq!(exit["reason"], "failed");
    assert_eq!(
        exit["failure"],
        json!({"code": "worker_failed", "message": "worker operation failed"})
    );
    assert_rfc3339(&exit["at"], s.last_exit.as_ref().unwrap().at);
    assert!(!value.to_string().contains("secret"));
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_omits_its_failure() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "a");
    rt.start("a").await.unwrap();
    rt.stop("a").await.unwrap();
    let value = to_json(&rt.worker("a").unwrap().status);
    assert_eq!(
        keys(&value["lastExit"]),
        set(&["incarnation", "reason", "at"])
    );
    assert_eq!(value["lastExit"]["reason"], "stopped");
    assert!(value.get("lastFailure").is_none());
}

#[tokio::test(start_paused = true)]
async fn wire_names_of_states_reasons_and_policies() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake_with(&rt, "w", |s| {
        s.failure_policy(workerkit_core::FailurePolicy::MarkRuntimeUnready)
            .start_timeout(Duration::from_secs(1))
    });
    w.on_start(Step::Hang);
    rt.start("w").await.unwrap_err();
    let value = to_json(&rt.worker("w").unwrap().status);
    assert_eq!(value["state"], "failed");
    assert_eq!(value["failurePolicy"], "mark_runtime_unready");
    assert_eq!(value["lastExit"]["reason"], "start_timed_out");
    assert_eq!(value["lastFailure"]["code"], "deadline_exceeded");
    let states: Vec<Value> = LifecycleState::ALL.iter().map(to_json).collect();
    assert_eq!(
        states,
        [
            "registered",
            "starting",
            "running",
            "draining",
            "stopping",
            "stopped",
            "failed",
            "restarting"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_and_liveness_json() {
    let rt = Runtime::builder("rt").build().unwrap();
    fake(&rt, "main");
    fake_with(&rt, "optional", |s| s.contributes_to_readiness(false));
    rt.start_all().await.unwrap();
    assert_eq!(
        to_json(&rt.readiness()),
        json!({
            "ready": true,
            "reason": "runtime ready",
            "policy": "contributing_workers",
            "items": [
                {"name": "main", "ready": true, "state": "running", "impact": "blocking"},
                {"name": "optional", "ready": true, "state": "running", "impact": "non_blocking"},
            ],
        })
    );
    assert_eq!(
        to_json(&rt.liveness()),
        json!({"live": true, "reasons": []})
    );
}

#[tokio::test(start_paused = true)]
async fn workers_lists_the_same_snapshots_as_worker_in_registration_order() {
    let rt = Runtime::builder("rt").build().unwrap();
    for name in ["zeta", "alpha", "mid"] {
        fake_with(&rt, name, |s| s.description(format!("the {name} worker")));
    }
    rt.start("alpha").await.unwrap();
    let all = rt.workers();
    let names: Vec<_> = all.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    for snapshot in &all {
        assert_eq!(Some(snapshot), rt.worker(&snapshot.name).as_ref());
        assert_eq!(Some(snapshot), rt.worker(&snapshot.qualified_name).as_ref());
        assert_eq!(snapshot.qualified_name, snapshot.status.name);
        assert_eq!(snapshot.name, snapshot.status.local_name);
        assert_eq!(
            snapshot.description.as_deref(),
            Some(format!("the {} worker", snapshot.name).as_str())
        );
    }
}

#[tokio::test(start_paused = true)]
async fn snapshots_are_independent_copies() {
    let rt = Runtime::builder("rt").build().unwrap();
    let w = fake(&rt, "w");
    w.on_start(Step::Fail("boom".into()));
    rt.start("w").await.unwrap_err();

    let mut snapshot = rt.worker("w").unwrap();
    let mut status = rt.status();
    let taken = snapshot.clone();
    let taken_status = status.clone();

    // Mutating a copy does not reach the runtime.
    snapshot.status.last_failure.as_mut().unwrap().code = "changed".into();
    snapshot.status.last_transition = None;
    snapshot.status.state = LifecycleState::Running;
    status.last_transition = None;
    assert_eq!(rt.worker("w").unwrap(), taken);
    assert_eq!(rt.status(), taken_status);

    // And the runtime moving on does not reach a copy taken earlier.
    rt.stop("w").await.unwrap();
    assert_eq!(taken.status.state, LifecycleState::Failed);
    assert_eq!(taken_status.state, LifecycleState::Failed);
    assert_ne!(rt.worker("w").unwrap(), taken);
    assert_eq!(rt.status().state, LifecycleState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_worker_registered_with_a_spec_keeps_its_metadata() {
    let rt = Runtime::builder("billing").build().unwrap();
    let spec = WorkerSpec::new(
        "invoicer",
        workerkit_core::worker_fn(|_ctx| async { Ok(()) }),
    )
    .description("Sends due invoices")
    .contributes_to_readiness(false);
    assert_eq!(spec.name(), "invoicer");
    rt.register(spec).unwrap();
    let snapshot = rt.worker("billing/invoicer").unwrap();
    assert_eq!(snapshot.qualified_name.as_ref(), "billing/invoicer");
    assert_eq!(snapshot.description.as_deref(), Some("Sends due invoices"));
    assert!(!snapshot.status.contributes_to_readiness);
}
