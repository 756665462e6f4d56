//! Command registration, discovery, payloads, results, errors, ids, in-flight listing,
//! cancellation by id and idle waits (spec §4.1–§4.5, §8.3; Go `runtime_test.go` discovery and
//! dispatch tests, `command_test.go` `CommandInfoJSON`, `options_test.go`
//! `WithCommandSpecValidation`, `status_test.go` `StatusInFlightTracksRunningCommand`).

mod command_support;
mod support;

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use command_support::{
    DropFlag, Gate, command, counting, dispatch_in_background, failing, gated, idle, ok_handler,
    plain, quiet_expected_panics, start_with,
};
use serde_json::{Value, json};
use support::{recorded, spawn, within};
use workerkit_core::command::{
    CancelError, CommandInfo, DispatchError, DispatchId, PayloadError, json_handler,
};
use workerkit_core::error::{BuildError, RegisterError};
use workerkit_core::failure::{BoxError, with_failure};
use workerkit_core::observe::CommandOutcome;
use workerkit_core::retry::RetryPolicy;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, LifecycleState, PanicPolicy, Runtime, Timestamp,
    WorkerSpec, handler_fn,
};

// ---- discovery (§4.2, §8.3) ------------------------------------------------------------------

#[tokio::test]
async fn commands_returns_sorted_discovery_for_local_and_qualified_worker_names() {
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    rt.register(
        idle("w")
            .command(command("sync", counting(&calls)))
            .command(command("alpha", counting(&calls)))
            .command(command("queue/drain", counting(&calls)))
            .command(command("Zeta".to_lowercase().as_str(), counting(&calls))),
    )
    .unwrap();

    let local = rt.commands("w").expect("registered worker");
    let names: Vec<&str> = local.iter().map(|c| &*c.name).collect();
    // Byte-wise order: "queue/drain" sorts before "sync".
    assert_eq!(names, ["alpha", "queue/drain", "sync", "zeta"]);
    assert!(local.iter().all(|c| &*c.worker == "rt/w"));
    assert_eq!(rt.commands("rt/w"), Some(local));
    assert_eq!(rt.commands("missing"), None);
    assert_eq!(rt.commands("other/w"), None, "another runtime's worker");
    assert_eq!(
        rt.commands("Not A Name"),
        None,
        "lenient: invalid names miss"
    );
    // Discovery never executes a command.
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn commands_preserves_and_clones_metadata() {
    let rt = plain();
    rt.register(
        idle("w").command(
            command("sync", ok_handler())
                .description("Refresh the cache")
                .payload_kind("cache_refresh")
                .dangerous(true)
                .idempotent(true)
                .attribute("scope", "cache")
                .attribute("tier", "gold"),
        ),
    )
    .unwrap();

    let mut first = rt.commands("w").unwrap();
    let info = &first[0];
    assert_eq!(info.description, "Refresh the cache");
    assert_eq!(info.payload_kind, "cache_refresh");
    assert!(info.dangerous);
    assert!(info.idempotent);
    let attributes: Vec<(&str, &str)> = info
        .attributes
        .iter()
        .map(|a| (a.key.as_str(), a.value.as_str()))
        .collect();
    assert_eq!(attributes, [("scope", "cache"), ("tier", "gold")]);

    // What a caller does with its copy never reaches the runtime.
    first[0].attributes.clear();
    first[0].description.push_str(" (edited)");
    let second = rt.commands("w").unwrap();
    assert_eq!(second[0].attributes.len(), 2);
    assert_eq!(second[0].description, "Refresh the cache");
}

#[tokio::test]
async fn commands_returns_an_empty_list_for_a_worker_without_commands() {
    let rt = plain();
    rt.register(idle("bare")).unwrap();
    assert_eq!(rt.commands("bare"), Some(Vec::new()));
    assert_eq!(rt.commands("rt/bare"), Some(Vec::new()));
}

#[tokio::test]
async fn all_commands_lists_workers_in_registration_order_each_sorted() {
    let rt = plain();
    rt.register(
        idle("zz")
            .command(command("b", ok_handler()))
            .command(command("a", ok_handler())),
    )
    .unwrap();
    rt.register(idle("bare")).unwrap();
    rt.register(idle("aa").command(command("a", ok_handler())))
        .unwrap();
    let all: Vec<String> = rt
        .all_commands()
        .iter()
        .map(|c| format!("{}:{}", c.worker, c.name))
        .collect();
    // The same command name on two workers is fine: commands are worker-local.
    assert_eq!(all, ["rt/zz:a", "rt/zz:b", "rt/aa:a"]);
}

fn only_command(rt: &Runtime) -> CommandInfo {
    rt.all_commands().remove(0)
}

#[tokio::test]
async fn command_info_json_has_the_exact_full_and_minimal_forms() {
    let rt = Runtime::builder("runtime").build().unwrap();
    rt.register(
        idle("worker").command(
            command("sync", ok_handler())
                .description("Refresh")
                .payload_kind("cache_refresh")
                .dangerous(true)
                .idempotent(true)
                .attribute("scope", "cache"),
        ),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&only_command(&rt)).unwrap(),
        r#"{"worker":"runtime/worker","name":"sync","description":"Refresh","payload_kind":"cache_refresh","dangerous":true,"idempotent":true,"attributes":[{"key":"scope","value":"cache"}]}"#
    );

    let rt = Runtime::builder("runtime").build().unwrap();
    rt.register(idle("worker").command(command("sync", ok_handler())))
        .unwrap();
    assert_eq!(
        serde_json::to_string(&only_command(&rt)).unwrap(),
        r#"{"worker":"runtime/worker","name":"sync"}"#
    );
}

// ---- registration validation (Go `WithCommandSpecValidation`) --------------------------------

#[tokio::test]
async fn command_specs_are_validated_at_registration() {
    let rt = plain();

    for bad in ["", "Sync", "a//b", "/a", "a/", " a", "a b", "a.b"] {
        let err = rt
            .register(idle("w").command(command(bad, ok_handler())))
            .unwrap_err();
        assert!(
            matches!(err, RegisterError::InvalidCommandName { .. }),
            "{bad:?}: {err:?}"
        );
        assert_eq!(err.code(), "invalid_command_name");
    }

    let err = rt
        .register(
            idle("w")
                .command(command("sync", ok_handler()))
                .command(command("sync", ok_handler())),
        )
        .unwrap_err();
    let RegisterError::CommandAlreadyRegistered {
        worker,
        command: name,
    } = &err
    else {
        panic!("expected CommandAlreadyRegistered, got {err:?}");
    };
    assert_eq!((worker.as_str(), name.as_str()), ("rt/w", "sync"));
    assert_eq!(err.code(), "command_already_registered");
    assert_eq!(err.to_string(), "command already registered: rt/w/sync");

    let zero_settings: Vec<(&str, WorkerSpec)> = vec![
        (
            "command timeout",
            idle("w").command(command("c", ok_handler()).timeout(Duration::ZERO)),
        ),
        (
            "command concurrency",
            idle("w").command(command("c", ok_handler()).concurrency(0)),
        ),
        (
            "command_timeout",
            idle("w")
                .command_timeout(Duration::ZERO)
                .command(command("c", ok_handler())),
        ),
        (
            "command_concurrency",
            idle("w")
                .command_concurrency(0)
                .command(command("c", ok_handler())),
        ),
        (
            "cancel_commands_on_stop",
            idle("w")
                .cancel_commands_on_stop(Duration::ZERO)
                .command(command("c", ok_handler())),
        ),
    ];
    for (expected, spec) in zero_settings {
        let err = rt.register(spec).unwrap_err();
        let RegisterError::ZeroDuration { setting, .. } = &err else {
            panic!("{expected}: expected ZeroDuration, got {err:?}");
        };
        assert_eq!(*setting, expected);
        assert_eq!(err.code(), "invalid_config");
    }

    // Nothing was registered by the failed attempts; a valid spec still registers.
    assert!(rt.worker("w").is_none());
    assert_eq!(rt.commands("w"), None);
    rt.register(idle("w").command(command("c", ok_handler())))
        .unwrap();
    assert_eq!(rt.commands("w").unwrap().len(), 1);
}

#[tokio::test]
async fn a_worker_without_a_timeout_may_still_give_one_command_a_timeout() {
    // A per-command `no_timeout` overrides a worker timeout and vice versa; neither is zero.
    let rt = plain();
    rt.register(
        idle("w")
            .no_command_timeout()
            .command(command("a", ok_handler()).timeout(Duration::from_secs(1)))
            .command(command("b", ok_handler()).no_timeout()),
    )
    .unwrap();
    assert_eq!(rt.commands("w").unwrap().len(), 2);
}

#[test]
fn zero_runtime_command_settings_are_build_errors() {
    for (expected, builder) in [
        (
            "command_timeout",
            Runtime::builder("rt").command_timeout(Duration::ZERO),
        ),
        (
            "command_concurrency",
            Runtime::builder("rt").command_concurrency(0),
        ),
        (
            "worker_command_concurrency",
            Runtime::builder("rt").worker_command_concurrency(0),
        ),
    ] {
        let err = builder.build().unwrap_err();
        let BuildError::ZeroDuration { setting } = err else {
            panic!("{expected}: expected ZeroDuration, got {err:?}");
        };
        assert_eq!(setting, expected);
    }
}

// ---- requests and results (§4.3) -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dispatch_sets_requested_at_when_absent_and_preserves_a_provided_value() {
    let seen: Arc<Mutex<Vec<Option<Timestamp>>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        handler_fn(move |ctx| {
            seen.lock().unwrap().push(ctx.request().requested_at_time());
            async { Ok(CommandResponse::empty()) }
        })
    };
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", handler))).await;

    let before = Timestamp::now();
    rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
    let after = Timestamp::now();
    let provided = Timestamp::from(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    rt.dispatch(CommandRequest::new("w", "c").requested_at(provided))
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let stamped = seen[0].expect("stamped at dispatch");
    assert!(before <= stamped && stamped <= after, "{stamped:?}");
    assert_eq!(seen[1], Some(provided));
}

#[tokio::test(start_paused = true)]
async fn a_rejected_request_comes_back_as_it_was_sent() {
    let rt = plain();
    rt.register(idle("w").command(command("c", ok_handler())))
        .unwrap();
    let provided = Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_secs(42));
    let request = CommandRequest::new("w", "c")
        .payload(json!({"n": 1}))
        .metadata("traceparent", "00-abc-def-01")
        .requested_at(provided);
    let err = rt.dispatch(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), "runtime_not_accepting_work");
    assert!(err.is_rejection());
    assert_eq!(err.dispatch_id(), None, "a rejection has no dispatch id");
    // Handed back exactly as sent (the dispatch time was provided), so it can be dispatched
    // again unchanged.
    let expected = CommandRequest::new("w", "c")
        .payload(json!({"n": 1}))
        .metadata("traceparent", "00-abc-def-01")
        .requested_at(provided);
    assert_eq!(err.request(), Some(&expected));
    let back = err.into_request().unwrap();
    assert_eq!(back, expected);
    assert_eq!(back.raw_payload(), request.raw_payload());

    rt.start_all().await.unwrap();
    let out = rt.dispatch(back).await.unwrap();
    assert_eq!(&**out.worker(), "rt/w");
}

#[tokio::test(start_paused = true)]
async fn a_qualified_target_resolves_and_results_carry_registration_owned_names() {
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        handler_fn(move |ctx| {
            seen.lock().unwrap().push((
                ctx.worker().qualified_name().to_owned(),
                ctx.request().name().to_owned(),
            ));
            async { Ok(CommandResponse::message("done")) }
        })
    };
    let rt = plain();
    start_with(&rt, idle("w").command(command("queue/drain", handler))).await;

    let local = rt
        .dispatch(CommandRequest::new("w", "queue/drain"))
        .await
        .unwrap();
    let qualified = rt
        .dispatch(CommandRequest::new("rt/w", "queue/drain"))
        .await
        .unwrap();
    for result in [&local, &qualified] {
        assert_eq!(&**result.worker(), "rt/w");
        assert_eq!(&**result.name(), "queue/drain");
        assert_eq!(result.attempts, 1);
        assert_eq!(result.result, CommandResponse::message("done"));
    }
    // The handler's worker context has the registration-owned (qualified) name whichever form
    // the caller used; `request().worker()` stays as the caller sent it.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("rt/w".to_owned(), "queue/drain".to_owned()),
            ("rt/w".to_owned(), "queue/drain".to_owned())
        ]
    );
    let err = rt
        .dispatch(CommandRequest::new("other/w", "queue/drain"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "worker_not_found");
}

#[tokio::test(start_paused = true)]
async fn metadata_reaches_the_handler() {
    let handler = handler_fn(|ctx| {
        let trace = ctx
            .request()
            .metadata_value("traceparent")
            .map(str::to_owned);
        let all = ctx.request().all_metadata().len();
        async move { Ok(CommandResponse::message(format!("{trace:?}/{all}"))) }
    });
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let out = rt
        .dispatch(
            CommandRequest::new("w", "c")
                .metadata("traceparent", "00-abc")
                .metadata("tenant", "t1"),
        )
        .await
        .unwrap();
    assert_eq!(out.result.message.as_deref(), Some("Some(\"00-abc\")/2"));
}

#[tokio::test(start_paused = true)]
async fn command_result_serializes_its_id_as_a_string_and_omits_empty_response_fields() {
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("c", ok_handler()))
            .command(command(
                "empty",
                handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
            )),
    )
    .await;
    let out = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
    let value = serde_json::to_value(&out).unwrap();
    assert_eq!(
        value,
        json!({"id": out.id.to_string(), "worker": "rt/w", "name": "c", "result": {"message": "ok"}})
    );
    let out = rt
        .dispatch(CommandRequest::new("w", "empty"))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&out).unwrap()["result"], json!({}));
}

// ---- payloads (§4.5; Rust: JSON payloads) ----------------------------------------------------

fn describe_payload() -> impl workerkit_core::command::CommandHandler {
    handler_fn(|ctx| {
        let described = match ctx.request().raw_payload() {
            None => "absent".to_owned(),
            Some(Value::Null) => "null".to_owned(),
            Some(other) => format!("value {other}"),
        };
        async move { Ok(CommandResponse::message(described)) }
    })
}

#[tokio::test(start_paused = true)]
async fn absent_and_null_payloads_reach_the_handler_differently() {
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", describe_payload()))).await;
    let message = |out: workerkit_core::command::CommandResult| out.result.message.unwrap();

    let absent = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
    let null = rt
        .dispatch(CommandRequest::new("w", "c").payload(Value::Null))
        .await
        .unwrap();
    let cleared = rt
        .dispatch(
            CommandRequest::new("w", "c")
                .payload(json!(1))
                .maybe_payload(None),
        )
        .await
        .unwrap();
    let typed = rt
        .dispatch(
            CommandRequest::new("w", "c")
                .json_payload(&vec![1, 2])
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(message(absent), "absent");
    assert_eq!(message(null), "null");
    assert_eq!(message(cleared), "absent");
    assert_eq!(message(typed), "value [1,2]");
}

#[derive(Debug, serde::Deserialize, serde::Serialize, PartialEq)]
struct Resize {
    size: u32,
}

#[test]
fn request_json_decodes_and_tells_missing_from_invalid() {
    let absent = CommandRequest::new("w", "c");
    assert_eq!(absent.json::<Resize>(), Err(PayloadError::Missing));
    assert_eq!(absent.json_opt::<Resize>(), Ok(None));

    let good = CommandRequest::new("w", "c").payload(json!({"size": 3}));
    assert_eq!(good.json::<Resize>(), Ok(Resize { size: 3 }));
    assert_eq!(good.json_opt::<Resize>(), Ok(Some(Resize { size: 3 })));

    let bad = CommandRequest::new("w", "c").payload(json!({"size": "big"}));
    let err = bad.json::<Resize>().unwrap_err();
    assert!(matches!(err, PayloadError::Invalid(_)), "{err:?}");
    assert_eq!(err.code(), "invalid_payload");
    // The public face never carries the serde detail.
    assert_eq!(err.failure().message(), "invalid payload");
    assert!(bad.json_opt::<Resize>().is_err());

    // `null` is a payload: it decodes into `Option` as `None`, and fails for a struct.
    let null = CommandRequest::new("w", "c").payload(Value::Null);
    assert_eq!(null.json::<Option<Resize>>(), Ok(None));
    assert!(matches!(
        null.json::<Resize>(),
        Err(PayloadError::Invalid(_))
    ));
    assert_eq!(
        PayloadError::Missing.failure().message(),
        "payload required"
    );
    assert_eq!(
        CommandResponse::payload(json!({"size": 9}))
            .json_payload::<Resize>()
            .unwrap(),
        Resize { size: 9 }
    );
    assert_eq!(
        CommandResponse::empty().json_payload::<Resize>(),
        Err(PayloadError::Missing)
    );
}

#[tokio::test(start_paused = true)]
async fn json_handler_decodes_typed_input_and_encodes_typed_output() {
    let handler = json_handler(|ctx, input: Resize| async move {
        Ok::<_, std::io::Error>(json!({"resized_to": input.size * 2, "attempt": ctx.attempt()}))
    });
    let optional = json_handler(|_ctx, input: Option<Resize>| async move {
        Ok::<_, BoxError>(input.map_or(0, |r| r.size))
    });
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("resize", handler))
            .command(command("maybe", optional)),
    )
    .await;

    let out = rt
        .dispatch(
            CommandRequest::new("w", "resize")
                .json_payload(&Resize { size: 21 })
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        out.result.payload,
        Some(json!({"resized_to": 42, "attempt": 1}))
    );
    assert_eq!(out.result.message, None);

    // An absent payload decodes as `null`, so an `Option` input accepts it.
    let absent = rt
        .dispatch(CommandRequest::new("w", "maybe"))
        .await
        .unwrap();
    assert_eq!(absent.result.payload, Some(json!(0)));
    let present = rt
        .dispatch(CommandRequest::new("w", "maybe").payload(json!({"size": 5})))
        .await
        .unwrap();
    assert_eq!(present.result.payload, Some(json!(5)));
}

#[tokio::test(start_paused = true)]
async fn json_handler_bad_payload_is_a_permanent_invalid_payload_failure_not_a_panic() {
    quiet_expected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        json_handler(move |_ctx, input: Resize| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(input.size) }
        })
    };
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            // Even with retries configured, a bad payload is never retried.
            .command_retry(RetryPolicy::attempts(5).unwrap())
            .command(command("resize", handler)),
    )
    .await;

    for (request, message) in [
        (
            CommandRequest::new("w", "resize").payload(json!({"size": "secret-detail"})),
            "invalid payload",
        ),
        // Absent, for a type that does not accept `null`.
        (CommandRequest::new("w", "resize"), "payload required"),
        (
            CommandRequest::new("w", "resize").payload(json!([1, 2])),
            "invalid payload",
        ),
    ] {
        let err = rt.dispatch(request).await.unwrap_err();
        let DispatchError::Failed {
            attempts, failure, ..
        } = &err
        else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(err.code(), "command_failed");
        assert_eq!(*attempts, 1, "never retried");
        assert_eq!(failure.code(), "invalid_payload");
        assert_eq!(failure.message(), message);
        assert!(!err.to_string().contains("secret-detail"), "{err}");
        let source = err.source().expect("the private cause");
        assert!(
            source.downcast_ref::<PayloadError>().is_some()
                || source
                    .source()
                    .and_then(|s| s.downcast_ref::<PayloadError>())
                    .is_some(),
            "the cause is the PayloadError: {source:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the closure never ran");
    // A bad payload is a command failure: the worker keeps running, nothing panicked.
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Running);
    assert_eq!(
        status.last_command_failure.as_ref().unwrap().code,
        "invalid_payload"
    );
    assert!(recorder.failures().iter().all(|f| !f.panic));
    assert_eq!(
        recorder.failures().len(),
        3,
        "one failure event per attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn json_handler_output_that_cannot_be_encoded_is_payload_encoding_failed() {
    let handler = json_handler(|_ctx, _input: Option<Value>| async move {
        // JSON object keys must be strings: a map keyed by tuples cannot be encoded.
        let mut map = HashMap::new();
        map.insert((1_u8, 2_u8), "x");
        Ok::<_, BoxError>(map)
    });
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command_retry(RetryPolicy::attempts(3).unwrap())
            .command(command("c", handler)),
    )
    .await;
    let err = rt
        .dispatch(CommandRequest::new("w", "c"))
        .await
        .unwrap_err();
    let DispatchError::Failed {
        attempts, failure, ..
    } = &err
    else {
        panic!("expected Failed, got {err:?}");
    };
    assert_eq!(err.code(), "command_failed");
    assert_eq!(failure.code(), "payload_encoding_failed");
    assert_eq!(*attempts, 1, "an encoding failure is permanent");
}

#[tokio::test(start_paused = true)]
async fn json_handler_errors_keep_their_public_face_and_private_text() {
    let handler = json_handler(|_ctx, _input: Option<Value>| async move {
        Err::<Value, BoxError>(with_failure(
            std::io::Error::other("db password=hunter2 rejected"),
            "upstream_unavailable",
            "upstream unavailable",
        ))
    });
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let err = rt
        .dispatch(CommandRequest::new("w", "c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "command_failed");
    assert_eq!(err.failure().unwrap().code(), "upstream_unavailable");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let chain = command_support::source_chain(&err);
    assert!(
        chain.iter().any(|s| s.contains("hunter2")),
        "the private cause stays reachable through source(): {chain:?}"
    );
}

// ---- handler errors and panics (rows 15–17) --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_handler_error_is_a_command_failure_not_a_worker_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(command("c", failing("token=abc123 exploded", &calls))),
    )
    .await;
    recorder.clear();

    let err = rt
        .dispatch(CommandRequest::new("w", "c"))
        .await
        .unwrap_err();
    let DispatchError::Failed {
        id,
        worker,
        command: name,
        attempts,
        failure,
        ..
    } = &err
    else {
        panic!("expected Failed, got {err:?}");
    };
    assert_eq!((&**worker, &**name, *attempts), ("rt/w", "c", 1));
    assert_eq!(failure.code(), "command_failed");
    assert_eq!(err.code(), "command_failed");
    assert!(!err.is_rejection());
    assert_eq!(err.dispatch_id(), Some(*id));
    assert!(!err.to_string().contains("abc123"), "{err}");
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("token=abc123 exploded"),
        "the handler's own error is the source"
    );

    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Running);
    assert!(status.ready);
    assert!(status.last_failure.is_none());
    let record = status.last_command_failure.expect("recorded");
    assert_eq!(
        (record.command.as_str(), record.code.as_str()),
        ("c", "command_failed")
    );

    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    let event = &failures[0];
    assert_eq!(event.command.as_deref(), Some("c"));
    assert_eq!(event.dispatch_id, Some(*id));
    assert_eq!(event.attempt, 1);
    assert!(!event.panic);
    assert!(!event.lifecycle_changed);
    // No lifecycle change at all.
    assert!(recorder.briefs().iter().all(|b| b.starts_with("F ")));
}

#[tokio::test(start_paused = true)]
async fn command_panic_under_recover_fails_the_worker_and_returns_an_error() {
    quiet_expected_panics();
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w").command(command(
            "p",
            handler_fn(|_ctx| async { panic!("expected panic: secret=hunter2") }),
        )),
    )
    .await;
    recorder.clear();

    let err = rt
        .dispatch(CommandRequest::new("w", "p"))
        .await
        .unwrap_err();
    let DispatchError::Panicked {
        id,
        attempts,
        failure,
        ..
    } = &err
    else {
        panic!("expected Panicked, got {err:?}");
    };
    assert_eq!(err.code(), "command_panicked");
    assert_eq!(*attempts, 1);
    assert_eq!(failure.code(), "panic");
    assert_eq!(
        failure.message(),
        "recovered panic during handling command \"p\" for worker \"rt/w\""
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Failed);
    assert!(!status.ready);
    assert_eq!(status.last_failure.as_ref().unwrap().code, "panic");
    assert_eq!(status.last_command_failure.as_ref().unwrap().code, "panic");
    assert_eq!(
        status.last_exit.as_ref().map(|e| e.reason),
        Some(workerkit_core::ExitReason::Panicked)
    );

    let failures = recorder.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].panic);
    assert!(failures[0].lifecycle_changed);
    assert_eq!(failures[0].attempt, 1);
    assert_eq!(failures[0].dispatch_id, Some(*id));
    let end = recorder.command_ends().pop().expect("an end event");
    assert_eq!(end.outcome, CommandOutcome::Panicked);
    assert_eq!(end.failure.as_ref().map(|f| f.code()), Some("panic"));

    // Row 15 order: T, R, F(panic), RT..., then the command's end.
    let briefs: Vec<String> = recorder
        .all_briefs()
        .into_iter()
        .filter(|b| !b.starts_with('O') && !b.starts_with('S'))
        .collect();
    assert_eq!(
        briefs[..3],
        ["T rt/w running->failed", "R rt/w false", "F! rt/w panic"]
    );
    assert_eq!(briefs.last().map(String::as_str), Some("E rt/w/p panicked"));

    // The failed worker's commands are rejected; a restart admits again.
    let err = rt
        .dispatch(CommandRequest::new("w", "p"))
        .await
        .unwrap_err();
    assert!(err.is_rejection(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn propagate_resumes_a_handler_panic_in_the_dispatch_caller_after_the_end_event() {
    quiet_expected_panics();
    let (rt, recorder) = recorded();
    rt.register(idle("other")).unwrap();
    start_with(
        &rt,
        idle("w")
            .panic_policy(PanicPolicy::Propagate)
            .command(command(
                "p",
                handler_fn(|_ctx| async { panic!("expected panic: resumed") }),
            )),
    )
    .await;

    let rt2 = rt.clone();
    let joined = spawn(async move { rt2.dispatch(CommandRequest::new("w", "p")).await }).await;
    let payload = joined.expect_err("the panic is resumed").into_panic();
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("expected panic: resumed"),
        "the original payload"
    );
    // The bookkeeping and the end event happened before the panic was resumed.
    let end = recorder.command_ends().pop().expect("an end event");
    assert_eq!(end.outcome, CommandOutcome::Panicked);
    assert_eq!(rt.in_flight().len(), 0);
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Failed);
    assert_eq!(status.in_flight, 0);
    // Resumed in the caller, so it does not escalate to the runtime: with another worker
    // running, the runtime stays running and live.
    assert_eq!(rt.status().state, LifecycleState::Running);
    assert!(rt.liveness().live);
}

// ---- dispatch ids (§11.2 #18) ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dispatch_ids_are_uuid_v7_strings_unique_and_visible_to_the_handler() {
    let handler = handler_fn(|ctx| {
        let id = ctx.id().to_string();
        async move { Ok(CommandResponse::message(id)) }
    });
    let (rt, recorder) = recorded();
    start_with(&rt, idle("w").command(command("c", handler))).await;

    let mut ids = std::collections::HashSet::new();
    for _ in 0..200 {
        let out = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
        let text = out.id.to_string();
        assert_eq!(out.result.message.as_deref(), Some(text.as_str()));
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "version nibble: {text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        assert_eq!(text.parse::<DispatchId>().unwrap(), out.id);
        assert!(ids.insert(out.id), "duplicate id {text}");
    }
    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!(starts.len(), 200);
    for (start, end) in starts.iter().zip(&ends) {
        assert_eq!(start.dispatch_id, end.dispatch_id);
        assert!(ids.contains(&start.dispatch_id));
    }
}

// ---- status, in-flight listing, cancel by id -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn status_in_flight_tracks_a_running_command() {
    let gate = Gate::new();
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", gated(&gate)))).await;
    assert_eq!(rt.status().in_flight, 0);

    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    assert_eq!(rt.status().in_flight, 1);
    assert_eq!(rt.worker("w").unwrap().status.in_flight, 1);
    let json = serde_json::to_value(rt.status()).unwrap();
    assert_eq!(json["inFlight"], 1);

    gate.release(1);
    within(task).await.unwrap().unwrap();
    assert_eq!(rt.status().in_flight, 0);
    assert_eq!(rt.worker("w").unwrap().status.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn in_flight_lists_commands_oldest_first_with_ages_on_the_tokio_clock() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("a")
            .no_command_timeout()
            .command(command("slow", gated(&gate))),
    )
    .await;
    start_with(
        &rt,
        idle("b")
            .no_command_timeout()
            .command(command("slower", gated(&gate))),
    )
    .await;
    assert!(rt.in_flight().is_empty());

    let first = dispatch_in_background(&rt, "a", "slow");
    gate.arrived(1).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let second = dispatch_in_background(&rt, "b", "slower");
    gate.arrived(2).await;
    tokio::time::advance(Duration::from_secs(1)).await;

    let listed = rt.in_flight();
    assert_eq!(listed.len(), 2);
    let summary: Vec<(&str, &str, u64, Duration, bool)> = listed
        .iter()
        .map(|c| (&*c.worker, &*c.command, c.incarnation, c.age, c.cancelled))
        .collect();
    assert_eq!(
        summary,
        [
            ("rt/a", "slow", 1, Duration::from_secs(6), false),
            ("rt/b", "slower", 1, Duration::from_secs(1), false),
        ]
    );
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!(
        json,
        json!({
            "id": listed[0].id.to_string(),
            "worker": "rt/a",
            "command": "slow",
            "incarnation": 1,
            "age": 6.0,
            "cancelled": false
        })
    );

    gate.release(2);
    let first = within(first).await.unwrap().unwrap();
    let second = within(second).await.unwrap().unwrap();
    assert_eq!(listed[0].id, first.id);
    assert_eq!(listed[1].id, second.id);
    assert!(rt.in_flight().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancel_by_id_fires_the_handlers_cancellation_and_types_the_result() {
    let cleaned = Arc::new(AtomicBool::new(false));
    let gate = Gate::new();
    let handler = {
        let cleaned = Arc::clone(&cleaned);
        let gate = gate.clone();
        handler_fn(move |ctx| {
            let cleaned = Arc::clone(&cleaned);
            let gate = gate.clone();
            async move {
                gate.pass().await;
                ctx.cancelled().await;
                assert!(ctx.is_cancelled());
                // Cleanup after cancellation still runs (cooperative).
                tokio::time::sleep(Duration::from_secs(1)).await;
                cleaned.store(true, Ordering::SeqCst);
                Err::<CommandResponse, BoxError>("stopped early".into())
            }
        })
    };
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", handler)),
    )
    .await;

    let task = dispatch_in_background(&rt, "w", "c");
    gate.release(1);
    gate.arrived(1).await;
    let id = rt.in_flight()[0].id;

    assert_eq!(rt.cancel(id), Ok(()));
    let err = rt.cancel(id).unwrap_err();
    assert_eq!(err, CancelError::AlreadyCancelled(id));
    assert_eq!(err.code(), "already_cancelled");
    support::settle().await;
    // Still finishing its cleanup, and listed as cancelled meanwhile.
    let listed = rt.in_flight();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].cancelled);

    let err = within(task).await.unwrap().unwrap_err();
    let DispatchError::Cancelled {
        id: got,
        reason,
        attempts,
        ..
    } = &err
    else {
        panic!("expected Cancelled, got {err:?}");
    };
    assert_eq!(*got, id);
    assert_eq!(*reason, workerkit_core::command::CancelReason::Requested);
    assert_eq!(*attempts, 1);
    assert_eq!(err.code(), "command_cancelled");
    assert_eq!(
        err.failure().map(|f| f.code().to_owned()).as_deref(),
        Some("canceled")
    );
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("stopped early"),
        "the handler's own error is kept as the cause"
    );
    assert!(cleaned.load(Ordering::SeqCst));
    let end = recorder.command_ends().pop().unwrap();
    assert_eq!(end.outcome, CommandOutcome::Cancelled);

    let err = rt.cancel(id).unwrap_err();
    assert_eq!(err, CancelError::NotFound(id));
    assert_eq!(err.code(), "dispatch_not_found");
    let unknown = DispatchId::new();
    assert_eq!(rt.cancel(unknown), Err(CancelError::NotFound(unknown)));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_handler_that_still_succeeds_returns_its_success() {
    // Cancellation is a request: a handler that finishes its work anyway is not turned into a
    // failure (the real outcome is never hidden).
    let gate = Gate::new();
    let handler = {
        let gate = gate.clone();
        handler_fn(move |_ctx| {
            let gate = gate.clone();
            async move {
                gate.pass().await;
                Ok(CommandResponse::message("finished anyway"))
            }
        })
    };
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    rt.cancel(rt.in_flight()[0].id).unwrap();
    gate.release(1);
    let out = within(task).await.unwrap().unwrap();
    assert_eq!(out.result.message.as_deref(), Some("finished anyway"));
}

// ---- idle waits (§11.2 #13: by notification) -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn wait_idle_and_wait_all_idle_wait_while_busy_and_return_when_done() {
    let gate = Gate::new();
    let rt = plain();
    start_with(
        &rt,
        idle("a")
            .no_command_timeout()
            .command(command("c", gated(&gate))),
    )
    .await;
    start_with(&rt, idle("b").command(command("c", ok_handler()))).await;

    // Idle at once when nothing runs.
    within(rt.wait_idle("a")).await.unwrap();
    within(rt.wait_all_idle()).await;

    let task = dispatch_in_background(&rt, "a", "c");
    gate.arrived(1).await;

    // Busy: both time out (Go: both return the context error while busy).
    assert!(
        tokio::time::timeout(Duration::from_secs(10), rt.wait_idle("a"))
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(10), rt.wait_all_idle())
            .await
            .is_err()
    );
    // Another worker is idle.
    within(rt.wait_idle("rt/b")).await.unwrap();

    let rt2 = rt.clone();
    let idle_a = spawn(async move { rt2.wait_idle("a").await });
    let rt3 = rt.clone();
    let idle_all = spawn(async move { rt3.wait_all_idle().await });
    support::settle().await;
    assert!(!idle_a.is_finished() && !idle_all.is_finished());

    let before = tokio::time::Instant::now();
    gate.release(1);
    within(idle_a).await.unwrap().unwrap();
    within(idle_all).await.unwrap();
    // Woken by notification, not by a polling interval: no time passed.
    assert_eq!(before.elapsed(), Duration::ZERO);
    within(task).await.unwrap().unwrap();

    assert_eq!(
        rt.wait_idle("missing").await.unwrap_err().code(),
        "worker_not_found"
    );
    assert_eq!(
        rt.wait_idle("Bad Name").await.unwrap_err().code(),
        "invalid_name"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_dispatch_drops_the_handler_releases_its_slot_and_ends_abandoned() {
    let dropped = Arc::new(AtomicBool::new(false));
    let gate = Gate::new();
    let handler = {
        let dropped = Arc::clone(&dropped);
        let gate = gate.clone();
        handler_fn(move |_ctx| {
            let flag = DropFlag(Arc::clone(&dropped));
            let gate = gate.clone();
            async move {
                let _flag = flag;
                gate.pass().await;
                Ok(CommandResponse::empty())
            }
        })
    };
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .command_concurrency(1)
            .command(command("c", handler)),
    )
    .await;

    let task = dispatch_in_background(&rt, "w", "c");
    gate.arrived(1).await;
    task.abort();
    assert!(within(task).await.unwrap_err().is_cancelled());

    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler future was dropped"
    );
    assert!(rt.in_flight().is_empty());
    assert_eq!(rt.status().in_flight, 0);
    let end = recorder.command_ends().pop().expect("an end event");
    assert_eq!(end.outcome, CommandOutcome::Abandoned);
    assert_eq!(end.attempts, 1);
    assert_eq!(end.failure.as_ref().map(|f| f.code()), Some("canceled"));
    // The slot is free again (the worker's cap is 1).
    gate.release(1);
    within(rt.dispatch(CommandRequest::new("w", "c")))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn many_workers_and_commands_dispatch_independently() {
    let rt = plain();
    for w in ["a", "b", "c"] {
        rt.register(
            idle(w)
                .command(command("one", describe_payload()))
                .command(command("two", ok_handler())),
        )
        .unwrap();
    }
    rt.start_all().await.unwrap();
    for w in ["a", "b", "c"] {
        let out = rt
            .dispatch(CommandRequest::new(w, "one").payload(json!(w)))
            .await
            .unwrap();
        assert_eq!(out.result.message, Some(format!("value \"{w}\"")));
        assert_eq!(&**out.worker(), format!("rt/{w}"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_can_report_its_worker_failed_through_its_context() {
    // Go §4.4: a handler that decides the worker is unhealthy calls `report_failure`.
    let handler = handler_fn(|ctx| async move {
        ctx.worker()
            .report_failure(with_failure(
                std::io::Error::other("disk gone"),
                "disk_failed",
                "disk failed",
            ))
            .map_err(BoxError::from)?;
        Ok(CommandResponse::message("reported"))
    });
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", handler))).await;
    let out = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
    assert_eq!(out.result.message.as_deref(), Some("reported"));
    let status = rt.worker("w").unwrap().status;
    assert_eq!(status.state, LifecycleState::Failed);
    assert_eq!(status.last_failure.unwrap().code, "disk_failed");
    assert!(status.last_command_failure.is_none());
}

#[tokio::test(start_paused = true)]
async fn command_spec_debug_and_name_are_available() {
    let spec = CommandSpec::new("sync", ok_handler()).description("d");
    assert_eq!(spec.name(), "sync");
    assert!(format!("{spec:?}").contains("sync"));
    let rt = plain();
    start_with(&rt, idle("w").command(spec)).await;
    assert!(rt.dispatch(CommandRequest::new("w", "sync")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_preset_dispatch_id_is_used_everywhere_and_can_cancel_a_background_dispatch() {
    let (rt, recorder) = recorded();
    start_with(
        &rt,
        idle("w")
            .no_command_timeout()
            .command(command("c", command_support::until_cancelled())),
    )
    .await;
    let id = DispatchId::new();
    let task = command_support::dispatch_request_in_background(
        &rt,
        CommandRequest::new("w", "c").with_id(id),
    );
    support::settle().await;
    // The caller knows the id before the dispatch returns: list it, cancel it.
    assert_eq!(rt.in_flight()[0].id, id);
    rt.cancel(id).unwrap();
    let err = within(task).await.unwrap().unwrap_err();
    assert_eq!(err.dispatch_id(), Some(id));
    assert_eq!(recorder.command_starts()[0].dispatch_id, id);
    assert_eq!(recorder.command_ends()[0].dispatch_id, id);
}
