//! Review of the dispatch speed-ups (commits ac697c6..c305a1a): the contract of
//! `docs/commands.md` checked where those commits changed the code.
//!
//! - Timestamps and ids: `requested_at` and the id's millisecond come from a wall-clock reading
//!   of each dispatch (a per-thread wall-clock anchor tried for speed went stale under a paused
//!   test clock: the two tests that found it are kept).
//! - Name lookup: in-place comparison (`name::same_name`), the registry's custom hasher, and a
//!   scan of the sorted list for workers with up to eight commands.
//! - The pipeline: the first attempt's context takes the pipeline's reference to the dispatch
//!   state and later paths take one from the in-flight slot (`SlotRef::shared`, which
//!   `.expect`s the slot to be there); the success path answers from inside the attempt loop;
//!   the handler is polled on a direct path without observers.
//! - `CommandResult`'s JSON shape.

mod command_support;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use command_support::{
    DropFlag, Gate, attempts, attempts_of, command, gated, idle, plain, quiet_expected_panics,
    start_with, until_cancelled,
};
use serde_json::json;
use support::{settle, spawn, within};
use workerkit_core::command::{
    CancelReason, CommandHandler, CommandResult, DispatchError, DispatchId, TimeoutMode,
};
use workerkit_core::failure::BoxError;
use workerkit_core::observe::CommandOutcome;
use workerkit_core::retry::Backoff;
use workerkit_core::test_util::RecordingObserver;
use workerkit_core::{CommandRequest, CommandResponse, Runtime, Timestamp, handler_fn};

// ---- helpers ---------------------------------------------------------------------------------

/// The Unix millisecond a UUIDv7 dispatch id carries in its top 48 bits.
fn id_millis(id: DispatchId) -> u128 {
    id.as_u128() >> 80
}

fn unix_millis(at: Timestamp) -> u128 {
    at.as_system_time()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis()
}

/// A handler that records the request's `requested_at` and answers `ok`.
fn stamp_recorder(seen: &Arc<Mutex<Vec<Timestamp>>>) -> impl CommandHandler {
    let seen = Arc::clone(seen);
    handler_fn(move |ctx| {
        seen.lock()
            .unwrap()
            .push(ctx.request().requested_at_time().expect("stamped"));
        async { Ok(CommandResponse::message("ok")) }
    })
}

/// Busy-waits until `d` of real (monotonic) time has passed. Not a sleep of the test's clock:
/// the point is that the wall clock moves on while tokio's test clock stays paused.
fn let_real_time_pass(d: Duration) {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Nothing in flight anywhere, and the worker `w` counts none.
fn assert_quiet(rt: &Runtime, when: &str) {
    assert!(rt.in_flight().is_empty(), "{when}: {:?}", rt.in_flight());
    assert_eq!(rt.status().in_flight, 0, "{when}");
    if let Some(w) = rt.worker("w") {
        assert_eq!(w.status.in_flight, 0, "{when}");
        assert_eq!(w.status.waiting, 0, "{when}");
    }
}

/// A handler that never returns and ignores its cancellation; sets `dropped` when its future
/// is dropped.
fn stubborn(dropped: &Arc<AtomicBool>) -> impl CommandHandler {
    let dropped = Arc::clone(dropped);
    handler_fn(move |_ctx| {
        let flag = DropFlag(Arc::clone(&dropped));
        async move {
            let _flag = flag;
            std::future::pending::<Result<CommandResponse, BoxError>>().await
        }
    })
}

/// A handler that fails every attempt at once, counting calls.
fn always_failing(calls: &Arc<AtomicUsize>) -> impl CommandHandler {
    let calls = Arc::clone(calls);
    handler_fn(move |_ctx| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<CommandResponse, BoxError>("nope".into()) }
    })
}

// ---- timestamps and ids ------------------------------------------------------------------------

/// A test that dispatches on the real clock and then pauses tokio's clock still gets real
/// wall-clock stamps: `requested_at` and the id's millisecond are never earlier than a reading
/// taken before the dispatch. (A wall time derived from the monotonic reading froze here at the
/// moment of the pause, found by review; the stamp is now a reading of its own.)
///
/// Each round runs on a fresh current-thread runtime on this test's thread, hence several
/// rounds: a per-thread cache of the clock would show up in some of them.
#[test]
fn pausing_the_clock_after_real_dispatches_does_not_freeze_requested_at_or_id_millis() {
    let mut stale = Vec::new();
    for round in 0..5 {
        let tokio_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio_rt.block_on(async {
            let seen: Arc<Mutex<Vec<Timestamp>>> = Arc::default();
            let rt = plain();
            start_with(&rt, idle("w").command(command("c", stamp_recorder(&seen)))).await;
            // On the real clock (these would have anchored a per-thread clock cache).
            for _ in 0..8 {
                rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
            }
            tokio::time::pause();
            let_real_time_pass(Duration::from_millis(5));
            let before = Timestamp::now();
            let before_id = DispatchId::new();
            let result = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
            let stamped = *seen.lock().unwrap().last().unwrap();
            if stamped < before || id_millis(result.id) < id_millis(before_id) {
                let lag = before
                    .as_system_time()
                    .duration_since(stamped.as_system_time())
                    .unwrap_or_default();
                stale.push(format!(
                    "round {round}: requested_at {lag:?} before a reading taken before the \
                     dispatch; id ms {} < {} of an id made before it",
                    id_millis(result.id),
                    id_millis(before_id),
                ));
            }
        });
    }
    assert!(stale.is_empty(), "{stale:#?}");
}

/// Same, with a paused clock advanced by microseconds: the stamp follows the wall clock, not
/// the test clock.
#[test]
fn advancing_a_paused_clock_by_microseconds_does_not_freeze_requested_at() {
    let mut stale = Vec::new();
    for round in 0..5 {
        let tokio_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio_rt.block_on(async {
            let seen: Arc<Mutex<Vec<Timestamp>>> = Arc::default();
            let rt = plain();
            start_with(&rt, idle("w").command(command("c", stamp_recorder(&seen)))).await;
            for _ in 0..8 {
                rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
            }
            tokio::time::pause();
            for step in 0..4 {
                let_real_time_pass(Duration::from_millis(2));
                tokio::time::advance(Duration::from_micros(50)).await;
                let before = Timestamp::now();
                rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
                let stamped = *seen.lock().unwrap().last().unwrap();
                if stamped < before {
                    stale.push(format!(
                        "round {round} step {step}: {stamped:?} < {before:?}"
                    ));
                }
            }
        });
    }
    assert!(stale.is_empty(), "{stale:#?}");
}

/// With a clock paused from the start (the usual `start_paused` test), stamps and ids are real
/// wall-clock time, whatever the test clock says.
#[tokio::test(start_paused = true)]
async fn a_clock_paused_from_the_start_stamps_real_wall_clock_time() {
    let seen: Arc<Mutex<Vec<Timestamp>>> = Arc::default();
    let rt = plain();
    start_with(&rt, idle("w").command(command("c", stamp_recorder(&seen)))).await;
    for step in 0..200_u32 {
        match step % 4 {
            0 => tokio::time::advance(Duration::from_secs(3600)).await,
            1 => tokio::time::advance(Duration::from_micros(300)).await,
            _ => {}
        }
        let before = Timestamp::now();
        let before_id = DispatchId::new();
        let result = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
        let after = Timestamp::now();
        let stamped = *seen.lock().unwrap().last().unwrap();
        assert!(before <= stamped, "step {step}: {stamped:?} < {before:?}");
        assert!(
            stamped <= after,
            "step {step}: {stamped:?} > {after:?} (the test clock is ahead of the wall clock)"
        );
        assert!(id_millis(result.id) >= id_millis(before_id), "step {step}");
        assert!(id_millis(result.id) <= unix_millis(after), "step {step}");
    }
}

/// On the real clock, from several threads at once: every stamp lies between readings taken
/// around its dispatch (with a millisecond of slack), every id carries its
/// dispatch's millisecond, and ids are unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // The dispatching tasks must run on several threads.
async fn stamps_and_ids_follow_the_wall_clock_on_every_thread() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 3_000;
    let rt = plain();
    rt.register(idle("w").command(command(
        "c",
        handler_fn(|ctx| {
            let at = ctx.request().requested_at_time().expect("stamped");
            async move { Ok(CommandResponse::empty().with_payload(Some(json!(at)))) }
        }),
    )))
    .unwrap();
    rt.start_all().await.unwrap();
    let slack = Duration::from_millis(1);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(PER_TASK);
                for i in 0..PER_TASK {
                    let before = SystemTime::now();
                    let result = rt.dispatch(CommandRequest::new("w", "c")).await.unwrap();
                    let after = SystemTime::now();
                    let stamped =
                        parse_rfc3339(result.result.payload.as_ref().unwrap().as_str().unwrap());
                    assert!(before <= stamped, "dispatch {i}: {stamped:?} < {before:?}");
                    assert!(
                        stamped <= after + slack,
                        "dispatch {i}: {stamped:?} > {after:?}"
                    );
                    let ms = id_millis(result.id);
                    let before_ms = before.duration_since(UNIX_EPOCH).unwrap().as_millis();
                    let after_ms = (after + slack)
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_millis();
                    assert!(
                        before_ms <= ms && ms <= after_ms,
                        "dispatch {i}: id ms {ms}"
                    );
                    ids.push(result.id);
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    assert_eq!(all.len(), TASKS * PER_TASK);
    assert_quiet(&rt, "after the dispatches");
}

/// Parses the RFC 3339 form `Timestamp` serializes to (`YYYY-MM-DDTHH:MM:SS[.fffffffff]Z`).
fn parse_rfc3339(s: &str) -> SystemTime {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let mut d = date.split('-').map(|p| p.parse::<i64>().unwrap());
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().unwrap());
    let (hh, mm, ss) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().unwrap()
    };
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).unwrap();
    UNIX_EPOCH + Duration::new(days * 86_400 + hh * 3600 + mm * 60 + ss, nanos)
}

/// With observers the start is a reading of its own: `requested_at` is the start event's
/// `started_at`, and no end precedes its start, on every outcome.
#[tokio::test(start_paused = true)]
async fn with_observers_requested_at_is_started_at_and_ended_at_never_precedes_it() {
    quiet_expected_panics();
    let seen: Arc<Mutex<Vec<Timestamp>>> = Arc::default();
    let recorder = RecordingObserver::new();
    let rt = Runtime::builder("rt")
        .with_observer(recorder.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    start_with(
        &rt,
        idle("w")
            .command(command("ok", stamp_recorder(&seen)))
            .command(command("fail", always_failing(&calls)).retry(attempts(3)))
            .command(command("hang", until_cancelled()).timeout(Duration::from_millis(1_500))),
    )
    .await;
    for step in 0..50_u32 {
        if step % 5 == 0 {
            tokio::time::advance(Duration::from_micros(700)).await;
        }
        rt.dispatch(CommandRequest::new("w", "ok")).await.unwrap();
        let _ = rt.dispatch(CommandRequest::new("w", "fail")).await;
    }
    let _ = rt.dispatch(CommandRequest::new("w", "hang")).await;
    let starts = recorder.command_starts();
    let ends = recorder.command_ends();
    assert_eq!(starts.len(), 101);
    assert_eq!(ends.len(), 101);
    for (start, end) in starts.iter().zip(&ends) {
        assert_eq!(start.dispatch_id, end.dispatch_id);
        assert_eq!(start.started_at, end.started_at);
        assert!(end.ended_at >= end.started_at, "{end:?}");
        assert_eq!(
            id_millis(start.dispatch_id),
            unix_millis(start.started_at),
            "the id carries the start's millisecond"
        );
    }
    let stamps = seen.lock().unwrap().clone();
    let ok_starts: Vec<_> = starts
        .iter()
        .filter(|s| &*s.command == "ok")
        .map(|s| s.started_at)
        .collect();
    assert_eq!(stamps, ok_starts);
}

// ---- name lookup -------------------------------------------------------------------------------

/// A valid command name of `len` bytes (1..=255): segments of a fixed alphabet joined by `/`,
/// so that names of neighbouring lengths share their prefixes.
fn command_name(len: usize) -> String {
    const TEMPLATE: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut name = String::with_capacity(len);
    let mut segment = 0;
    while name.len() < len {
        // A `/` every 11 bytes, never first, last or doubled.
        if segment == 10 && name.len() + 1 < len {
            name.push('/');
            segment = 0;
        } else {
            name.push(char::from(TEMPLATE[name.len() % TEMPLATE.len()]));
            segment += 1;
        }
    }
    name
}

/// Probes near `name`: every byte changed (to another valid byte, to an uppercase one, to a
/// multibyte character of the same byte length), truncations, extensions, and multibyte
/// look-alikes.
fn near_misses(name: &str) -> Vec<String> {
    let bytes = name.as_bytes();
    let mut probes = Vec::new();
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        probes.push(String::from_utf8(changed).unwrap());
        let mut upper = bytes.to_vec();
        upper[i] = upper[i].to_ascii_uppercase();
        probes.push(String::from_utf8(upper).unwrap());
        if i + 1 < bytes.len() && name.is_char_boundary(i) && name.is_char_boundary(i + 2) {
            // Two bytes replaced by one two-byte character: same length, different bytes.
            probes.push(format!("{}é{}", &name[..i], &name[i + 2..]));
        }
    }
    for cut in 1..bytes.len() {
        probes.push(name[..cut].to_owned());
    }
    probes.push(format!("{name}a"));
    probes.push(format!("{name}/a"));
    probes.push(format!("{name}é"));
    probes.push(format!("é{name}"));
    probes.push(format!(" {name}"));
    probes.push(format!("{name}\0"));
    probes.push("ü".repeat(name.len().div_ceil(2)));
    probes
}

/// A handler that answers with `name`, so a test sees which handler ran.
fn answers(name: &str) -> impl CommandHandler {
    let name = name.to_owned();
    handler_fn(move |_ctx| {
        let name = name.clone();
        async move { Ok(CommandResponse::message(name)) }
    })
}

/// Dispatches `probe` to `worker`; asserts it resolves iff it is in `registered`, and then to
/// exactly that command.
async fn check_command_probe(
    rt: &Runtime,
    worker: &'static str,
    registered: &BTreeSet<String>,
    probe: String,
) {
    let result = rt
        .dispatch(CommandRequest::new(worker, probe.clone()))
        .await;
    if registered.contains(&probe) {
        let result = result.unwrap_or_else(|err| panic!("{worker}: {probe:?} missed: {err}"));
        assert_eq!(&**result.name(), probe, "{worker}");
        assert_eq!(result.result.message.as_deref(), Some(probe.as_str()));
        assert_eq!(&**result.worker(), format!("rt/{worker}"));
    } else {
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{worker}: {probe:?} hit"));
        assert!(
            matches!(
                err,
                DispatchError::CommandNotFound { .. } | DispatchError::InvalidCommandName { .. }
            ),
            "{worker}: {probe:?}: {err:?}"
        );
    }
}

/// Every valid command length 1..=255, on a worker with all of them (found by the hash map), on
/// workers with eight and nine of them (the scan's limit and one past it) and on a worker with
/// one: each name finds its own command, and no near miss finds any.
#[tokio::test(start_paused = true)]
async fn command_names_of_every_length_find_exactly_their_command() {
    let all: Vec<String> = (1..=255).map(command_name).collect();
    for name in &all {
        workerkit_core::name::validate_command_name(name).expect("a valid name");
    }
    let groups: [(&'static str, Vec<String>); 5] = [
        ("all", all.clone()),
        ("eight", all[100..108].to_vec()),
        ("nine", all[7..16].to_vec()),
        ("one", vec![all[0].clone()]),
        (
            "long",
            all[247..].iter().chain(&all[..3]).cloned().collect(),
        ),
    ];
    let rt = plain();
    for (worker, names) in &groups {
        let mut spec = idle(worker);
        for name in names {
            spec = spec.command(command(name, answers(name)));
        }
        rt.register(spec).unwrap();
    }
    rt.start_all().await.unwrap();
    for (worker, names) in &groups {
        let registered: BTreeSet<String> = names.iter().cloned().collect();
        for name in names {
            check_command_probe(&rt, worker, &registered, name.clone()).await;
        }
        // Near misses of the registered names, and the other groups' names.
        for name in names.iter().step_by(if names.len() > 16 { 7 } else { 1 }) {
            for probe in near_misses(name) {
                check_command_probe(&rt, worker, &registered, probe).await;
            }
        }
        for probe in all.iter().step_by(3) {
            check_command_probe(&rt, worker, &registered, probe.clone()).await;
        }
    }
    assert_quiet(&rt, "after the probes");
}

/// A valid worker local name of `len` bytes (1..=63), sharing its prefix with the others.
fn worker_name(len: usize) -> String {
    const TEMPLATE: &[u8] = b"w0123456789-_abcdefghijklmnopqrstuvwxyz";
    (0..len)
        .map(|i| char::from(TEMPLATE[i % TEMPLATE.len()]))
        .collect()
}

/// Dispatches command `id` to `probe`; asserts it resolves iff `probe` names a registered worker
/// (local or `rt/`-qualified), and then to exactly that worker.
async fn check_worker_probe(rt: &Runtime, registered: &BTreeSet<String>, probe: String) {
    let local = probe.strip_prefix("rt/").unwrap_or(&probe).to_owned();
    let expected = (!local.contains('/') && registered.contains(&local)).then_some(local);
    let result = rt.dispatch(CommandRequest::new(probe.clone(), "id")).await;
    match expected {
        Some(local) => {
            let result = result.unwrap_or_else(|err| panic!("{probe:?} missed: {err}"));
            assert_eq!(result.result.message.as_deref(), Some(local.as_str()));
            assert_eq!(&**result.worker(), format!("rt/{local}"));
            assert_eq!(&**result.name(), "id");
        }
        None => {
            let err = result.err().unwrap_or_else(|| panic!("{probe:?} hit"));
            assert!(
                matches!(
                    err,
                    DispatchError::WorkerNotFound { .. } | DispatchError::InvalidTarget { .. }
                ),
                "{probe:?}: {err:?}"
            );
        }
    }
}

/// Workers with local names of every length 1..=63 (and more, so the registry grows through
/// several tables): each local and qualified name finds its own worker, and no near miss (a
/// byte changed, truncated, extended, multibyte, another runtime's prefix) finds any.
#[tokio::test(start_paused = true)]
async fn worker_names_of_every_length_find_exactly_their_worker() {
    let mut names: Vec<String> = (1..=63).map(worker_name).collect();
    // Same lengths, different last bytes: hash neighbours that share all but one word.
    names.extend((1..=40).map(|len| format!("{}z", worker_name(len - 1))));
    names.sort();
    names.dedup();
    let rt = plain();
    for name in &names {
        rt.register(idle(name).command(command("id", answers(name))))
            .unwrap();
    }
    rt.start_all().await.unwrap();
    let registered: BTreeSet<String> = names.iter().cloned().collect();
    for name in &names {
        check_worker_probe(&rt, &registered, name.clone()).await;
        check_worker_probe(&rt, &registered, format!("rt/{name}")).await;
        for probe in near_misses(name) {
            check_worker_probe(&rt, &registered, probe.clone()).await;
            check_worker_probe(&rt, &registered, format!("rt/{probe}")).await;
        }
        for other in ["rs", "r", "rtt", "RT", "rté"] {
            check_worker_probe(&rt, &registered, format!("{other}/{name}")).await;
        }
        check_worker_probe(&rt, &registered, format!("rt/{name}/id")).await;
        check_worker_probe(&rt, &registered, format!("{name}/rt")).await;
    }
}

/// A worker removed and registered again under the same name: lookups skip the tombstone and
/// find the new registration.
#[tokio::test(start_paused = true)]
async fn a_re_registered_worker_is_found_past_its_tombstone() {
    let rt = plain();
    start_with(&rt, idle("w").command(command("id", answers("first")))).await;
    rt.stop("w").await.unwrap();
    rt.remove("w").await.unwrap();
    assert!(matches!(
        rt.dispatch(CommandRequest::new("w", "id")).await,
        Err(DispatchError::WorkerNotFound { .. })
    ));
    rt.register(idle("w").command(command("id", answers("second"))))
        .unwrap();
    rt.start("w").await.unwrap();
    for target in ["w", "rt/w"] {
        let result = rt
            .dispatch(CommandRequest::new(target, "id"))
            .await
            .unwrap();
        assert_eq!(result.result.message.as_deref(), Some("second"));
    }
}

// ---- results -----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_command_result_serializes_as_id_worker_name_result_only() {
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("queue/drain", answers("done")))
            .command(
                command("retried", {
                    handler_fn(|ctx| async move {
                        if ctx.attempt() < 2 {
                            Err::<CommandResponse, BoxError>("again".into())
                        } else {
                            Ok(CommandResponse::empty().with_payload(Some(json!({"n": 1}))))
                        }
                    })
                })
                .retry(attempts(2)),
            ),
    )
    .await;
    let id = DispatchId::new();
    let result = rt
        .dispatch(CommandRequest::new("rt/w", "queue/drain").with_id(id))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&result).unwrap(),
        json!({"id": id.to_string(), "worker": "rt/w", "name": "queue/drain",
               "result": {"message": "done"}})
    );
    let text = serde_json::to_string(&result).unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"id":"{id}","worker":"rt/w","name":"queue/drain","result":{{"message":"done"}}}}"#
        )
    );
    let retried = rt
        .dispatch(CommandRequest::new(
            String::from("w"),
            String::from("retried"),
        ))
        .await
        .unwrap();
    assert_eq!(retried.attempts, 2);
    assert_eq!(
        serde_json::to_value(&retried).unwrap(),
        json!({"id": retried.id.to_string(), "worker": "rt/w", "name": "retried",
               "result": {"payload": {"n": 1}}})
    );
    // Clones compare equal; results of other commands do not.
    assert_eq!(result.clone(), result);
    assert_ne!(result, retried);
    assert!(format!("{result:?}").contains("\"queue/drain\""));
}

/// Results made on many threads (each shard has its own copy of the names) all carry the
/// registered names of the command that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // The dispatching tasks must run on several threads.
async fn results_from_every_shard_carry_the_names_of_their_command() {
    let rt = plain();
    let names = ["a", "b/c", "d-e_f", "ghijklmnop", "q/r/s"];
    let mut spec = idle("w");
    for name in names {
        spec = spec.command(command(name, answers(name)));
    }
    rt.register(spec).unwrap();
    rt.start_all().await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let rt = rt.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    let name = names[(t + i) % names.len()];
                    let result: CommandResult =
                        rt.dispatch(CommandRequest::new("w", name)).await.unwrap();
                    assert_eq!(&**result.name(), name);
                    assert_eq!(&**result.worker(), "rt/w");
                    assert_eq!(result.result.message.as_deref(), Some(name));
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_quiet(&rt, "after the dispatches");
}

// ---- the in-flight slot, cancellation, drops ----------------------------------------------------

/// The listing shows the preset id, the registered command name and the age on the tokio clock,
/// for a dispatch in its handler and one in its retry backoff; both leave the listing when done.
#[tokio::test(start_paused = true)]
async fn in_flight_lists_id_command_and_age() {
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .command(command("held/here", gated(&gate)))
            .command(
                command("backing-off", always_failing(&calls))
                    .retry(attempts(2).backoff(Backoff::constant(Duration::from_secs(100)))),
            ),
    )
    .await;
    let held = DispatchId::new();
    let backing = DispatchId::new();
    let rt2 = rt.clone();
    let first = spawn(async move {
        rt2.dispatch(CommandRequest::new("w", "held/here").with_id(held))
            .await
    });
    gate.arrived(1).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    let rt3 = rt.clone();
    let second = spawn(async move {
        rt3.dispatch(CommandRequest::new("rt/w", "backing-off").with_id(backing))
            .await
    });
    settle().await;
    tokio::time::advance(Duration::from_secs(4)).await;
    let listed = rt.in_flight();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].id, held);
    assert_eq!(&*listed[0].command, "held/here");
    assert_eq!(&*listed[0].worker, "rt/w");
    assert_eq!(listed[0].age, Duration::from_secs(7));
    assert!(!listed[0].cancelled);
    assert_eq!(listed[1].id, backing);
    assert_eq!(&*listed[1].command, "backing-off");
    assert_eq!(listed[1].age, Duration::from_secs(4));
    assert_eq!(rt.status().in_flight, 2);
    gate.release(1);
    within(first).await.unwrap().unwrap();
    rt.cancel(backing).unwrap();
    assert!(rt.in_flight().iter().all(|c| c.id != held));
    let err = within(second).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::Requested,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_quiet(&rt, "after both");
}

/// Hard mode with retries, a handler that ignores its cancellation: every attempt is dropped
/// after its grace and retried; the dispatch times out after the last, and the slot is released.
/// The later attempts take their dispatch state from the in-flight slot.
#[tokio::test(start_paused = true)]
async fn hard_timeouts_with_retries_drop_every_attempt_and_release_the_slot() {
    let dropped = Arc::new(AtomicBool::new(false));
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(
            command("c", stubborn(&dropped))
                .timeout(Duration::from_secs(1))
                .timeout_mode(TimeoutMode::Hard {
                    grace: Duration::from_secs(1),
                })
                .retry(attempts(3).backoff(Backoff::constant(Duration::from_secs(1)))),
        ),
    )
    .await;
    let before = tokio::time::Instant::now();
    let err = within(rt.dispatch(CommandRequest::new("w", "c")))
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::TimedOut { .. }), "{err:?}");
    assert_eq!(attempts_of(&err), 3);
    assert_eq!(before.elapsed(), Duration::from_secs(8));
    assert!(dropped.load(Ordering::SeqCst));
    assert_quiet(&rt, "after the timeout");
}

/// A cancel by id while a hard-mode attempt is in its grace, on the second attempt: the
/// dispatch ends as cancelled, not retried.
#[tokio::test(start_paused = true)]
async fn a_cancel_in_the_grace_of_a_retried_hard_attempt_ends_the_dispatch() {
    let dropped = Arc::new(AtomicBool::new(false));
    let rt = plain();
    start_with(
        &rt,
        idle("w").command(
            command("c", stubborn(&dropped))
                .timeout(Duration::from_secs(1))
                .timeout_mode(TimeoutMode::Hard {
                    grace: Duration::from_secs(5),
                })
                .retry(attempts(3).backoff(Backoff::constant(Duration::from_secs(1)))),
        ),
    )
    .await;
    let id = DispatchId::new();
    let rt2 = rt.clone();
    let task = spawn(async move {
        rt2.dispatch(CommandRequest::new("w", "c").with_id(id))
            .await
    });
    // Attempt 1: deadline at 1 s, dropped at 6 s; backoff to 7 s; attempt 2's deadline at 8 s.
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    rt.cancel(id).unwrap();
    let err = within(task).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::Requested,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_quiet(&rt, "after the cancel");
}

/// `cancel_commands_on_stop`: a stop while a dispatch waits in its retry backoff, and one while
/// its handler runs (it fails after the cancellation: classified through the slot's state) -
/// both end as cancelled by the stop, without another attempt.
#[tokio::test(start_paused = true)]
async fn a_stop_that_cancels_commands_ends_dispatches_in_backoff_and_in_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    start_with(
        &rt,
        idle("w")
            .cancel_commands_on_stop(Duration::from_secs(1))
            .command(
                command("backoff", always_failing(&calls))
                    .retry(attempts(5).backoff(Backoff::constant(Duration::from_secs(60)))),
            )
            .command(
                command("running", until_cancelled())
                    .timeout(Duration::from_secs(600))
                    .retry(attempts(5)),
            ),
    )
    .await;
    let a = command_support::dispatch_in_background(&rt, "w", "backoff");
    let b = command_support::dispatch_in_background(&rt, "w", "running");
    settle().await;
    assert_eq!(rt.in_flight().len(), 2);
    within(rt.stop("w")).await.unwrap();
    for (task, n) in [(a, 1), (b, 1)] {
        let err = within(task).await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                DispatchError::Cancelled {
                    reason: CancelReason::WorkerStopped,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(attempts_of(&err), n);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_quiet(&rt, "after the stop");
}

/// The caller drops its future in the middle of a retry (in the backoff, and in a later
/// attempt's handler), without observers: the slots are released, nothing stays listed, and the
/// worker stops without waiting for anything.
#[tokio::test(start_paused = true)]
async fn a_caller_dropping_its_dispatch_mid_retry_releases_everything() {
    let dropped = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = plain();
    let second_attempt_hangs = {
        let calls = Arc::clone(&calls);
        let dropped = Arc::clone(&dropped);
        handler_fn(move |ctx| {
            calls.fetch_add(1, Ordering::SeqCst);
            let flag = DropFlag(Arc::clone(&dropped));
            async move {
                let _flag = flag;
                if ctx.attempt() == 1 {
                    return Err::<CommandResponse, BoxError>("first".into());
                }
                std::future::pending().await
            }
        })
    };
    start_with(
        &rt,
        idle("w")
            .command(
                command("c", second_attempt_hangs)
                    .concurrency(1)
                    .retry(attempts(3).backoff(Backoff::constant(Duration::from_secs(10)))),
            )
            .command_concurrency(2),
    )
    .await;
    for drop_after in [Duration::from_secs(5), Duration::from_secs(15)] {
        dropped.store(false, Ordering::SeqCst);
        let dispatch = rt.dispatch(CommandRequest::new("w", "c"));
        let outcome = tokio::time::timeout(drop_after, dispatch).await;
        assert!(outcome.is_err(), "still running when dropped");
        assert!(dropped.load(Ordering::SeqCst));
        assert_quiet(&rt, "after the drop");
        // The command's cap of one is free again.
        let again = rt.dispatch(CommandRequest::new("w", "c"));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), again)
                .await
                .is_err()
        );
        assert_quiet(&rt, "after the second drop");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1 + 2 + 1 + 1);
    let before = tokio::time::Instant::now();
    within(rt.stop("w")).await.unwrap();
    assert_eq!(before.elapsed(), Duration::ZERO, "no command to wait for");
}

/// A handler that panics on a retried command (panics are never retried), and one that fails
/// after cancelling its own dispatch: each resolves once, and the slots are released.
#[tokio::test(start_paused = true)]
async fn panics_and_self_cancels_resolve_once_and_release_the_slot() {
    quiet_expected_panics();
    let rt = plain();
    let self_cancel = {
        let rt = rt.clone();
        handler_fn(move |ctx| {
            rt.cancel(ctx.id()).unwrap();
            async { Err::<CommandResponse, BoxError>("cancelled myself".into()) }
        })
    };
    start_with(
        &rt,
        idle("w")
            .command(
                command(
                    "panics",
                    handler_fn(|_ctx| async { panic!("expected panic in a retried command") }),
                )
                .retry(attempts(3)),
            )
            .command(command("self-cancel", self_cancel).retry(attempts(3))),
    )
    .await;
    let err = rt
        .dispatch(CommandRequest::new("w", "panics"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DispatchError::Panicked { attempts: 1, .. }),
        "{err:?}"
    );
    assert_quiet(&rt, "after the panic");
    // The worker may have failed on the panic (panic policy); restart it if so.
    if rt.worker("w").unwrap().status.state != workerkit_core::LifecycleState::Running {
        let _ = rt.stop("w").await;
        rt.start("w").await.unwrap();
    }
    let err = rt
        .dispatch(CommandRequest::new("w", "self-cancel"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DispatchError::Cancelled {
                reason: CancelReason::Requested,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_quiet(&rt, "after the self-cancel");
}

/// Without observers (the direct poll path), on several threads: dispatches that succeed, fail
/// and retry, time out in hard mode, are cancelled by id, are dropped by their callers at
/// random points, and a stop that cancels the rest, then a restart. Nothing panics, every
/// awaited dispatch resolves once, and nothing is left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // The racing tasks must run on several threads.
async fn observerless_dispatches_race_cancels_drops_and_a_stop_without_leaking_a_slot() {
    quiet_expected_panics();
    for round in 0..20_u64 {
        let rt = plain();
        let flaky = handler_fn(|ctx| async move {
            tokio::task::yield_now().await;
            if ctx.attempt() < 3 {
                Err::<CommandResponse, BoxError>("flaky".into())
            } else {
                Ok(CommandResponse::message("ok"))
            }
        });
        start_with(
            &rt,
            idle("w")
                .cancel_commands_on_stop(Duration::from_millis(5))
                .command(
                    command("flaky", flaky)
                        .retry(attempts(4).backoff(Backoff::constant(Duration::from_micros(200)))),
                )
                .command(
                    command("hang", until_cancelled())
                        .timeout(Duration::from_millis(2))
                        .retry(attempts(2)),
                )
                .command(
                    command("hard", handler_fn(|_ctx| std::future::pending()))
                        .timeout(Duration::from_millis(1))
                        .timeout_mode(TimeoutMode::Hard {
                            grace: Duration::from_millis(1),
                        })
                        .retry(attempts(2)),
                )
                .command(command(
                    "quick",
                    handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
                )),
        )
        .await;
        let names = ["flaky", "hang", "hard", "quick"];
        let resolved = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..48_u64 {
            let rt = rt.clone();
            let resolved = Arc::clone(&resolved);
            let name = names[usize::try_from((i + round) % 4).unwrap()];
            let id = DispatchId::new();
            let task = tokio::spawn(async move {
                let result = rt
                    .dispatch(CommandRequest::new("w", name).with_id(id))
                    .await;
                resolved.fetch_add(1, Ordering::SeqCst);
                match (&result, name) {
                    (Ok(r), _) => assert_eq!(&**r.name(), name),
                    (Err(err), _) => assert!(
                        matches!(
                            err,
                            DispatchError::Failed { .. }
                                | DispatchError::TimedOut { .. }
                                | DispatchError::Cancelled { .. }
                                | DispatchError::InvalidWorkerState { .. }
                                | DispatchError::RuntimeNotAccepting { .. }
                        ),
                        "{name}: {err:?}"
                    ),
                }
            });
            tasks.push((id, task));
        }
        for _ in 0..(round % 5) {
            tokio::task::yield_now().await;
        }
        for (n, (id, task)) in tasks.iter().enumerate() {
            match (n as u64 + round) % 6 {
                0 => task.abort(),
                1 => {
                    let _ = rt.cancel(*id);
                }
                _ => {}
            }
        }
        if round % 2 == 0 {
            within(rt.stop("w")).await.unwrap();
        }
        for (_, task) in tasks {
            match within(task).await {
                Ok(()) => {}
                Err(err) if err.is_cancelled() => {}
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
        assert_quiet(&rt, &format!("round {round}"));
        if round % 2 == 0 {
            rt.start("w").await.unwrap();
            rt.dispatch(CommandRequest::new("w", "quick"))
                .await
                .unwrap();
        }
        within(rt.shutdown()).await.unwrap();
    }
}

/// With a recording observer, the same kind of race: every start has exactly one end, with the
/// same id, and the outcomes are ones the contract allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // The racing tasks must run on several threads.
async fn observed_dispatches_racing_drops_and_cancels_end_exactly_once() {
    for round in 0..20_u64 {
        let recorder = RecordingObserver::new();
        let rt = Runtime::builder("rt")
            .with_observer(recorder.clone())
            .build()
            .unwrap();
        start_with(
            &rt,
            idle("w")
                .cancel_commands_on_stop(Duration::from_millis(5))
                .command(
                    command(
                        "retry",
                        handler_fn(|ctx| async move {
                            tokio::task::yield_now().await;
                            if ctx.attempt() < 2 {
                                Err::<CommandResponse, BoxError>("again".into())
                            } else {
                                Ok(CommandResponse::empty())
                            }
                        }),
                    )
                    .retry(attempts(3).backoff(Backoff::constant(Duration::from_micros(300)))),
                )
                .command(command("hang", until_cancelled()).timeout(Duration::from_millis(3))),
        )
        .await;
        let mut tasks = Vec::new();
        for i in 0..32_u64 {
            let rt = rt.clone();
            let id = DispatchId::new();
            let name = if (i + round) % 2 == 0 {
                "retry"
            } else {
                "hang"
            };
            tasks.push((
                id,
                tokio::spawn(async move {
                    let _ = rt
                        .dispatch(CommandRequest::new("w", name).with_id(id))
                        .await;
                }),
            ));
        }
        tokio::task::yield_now().await;
        for (n, (id, task)) in tasks.iter().enumerate() {
            match (n as u64 + round) % 5 {
                0 => task.abort(),
                1 => {
                    let _ = rt.cancel(*id);
                }
                _ => {}
            }
        }
        if round % 3 == 0 {
            within(rt.stop("w")).await.unwrap();
        }
        for (_, task) in tasks {
            let _ = within(task).await;
        }
        assert_quiet(&rt, &format!("round {round}"));
        let starts = recorder.command_starts();
        let ends = recorder.command_ends();
        // A task aborted before its first poll never began its dispatch: no start, no end.
        assert!(starts.len() <= 32, "round {round}");
        assert_eq!(ends.len(), starts.len(), "round {round}");
        let start_ids: BTreeSet<_> = starts.iter().map(|s| s.dispatch_id).collect();
        let end_ids: BTreeSet<_> = ends.iter().map(|e| e.dispatch_id).collect();
        assert_eq!(start_ids, end_ids, "round {round}");
        for end in &ends {
            assert!(end.ended_at >= end.started_at, "round {round}: {end:?}");
            assert!(
                matches!(
                    end.outcome,
                    CommandOutcome::Succeeded
                        | CommandOutcome::Failed
                        | CommandOutcome::TimedOut
                        | CommandOutcome::Cancelled
                        | CommandOutcome::Abandoned
                        | CommandOutcome::Rejected
                ),
                "round {round}: {end:?}"
            );
        }
        within(rt.shutdown()).await.unwrap();
    }
}

/// `CommandRequest::new` keeps `&'static str` and owned names alike; a rejection hands the
/// request back equal to what was sent, metadata included (boxed and absent until the first
/// entry: an empty map and no map are the same request).
#[tokio::test(start_paused = true)]
async fn requests_with_borrowed_and_owned_names_and_metadata_round_trip() {
    let rt = plain();
    rt.register(idle("w").command(command("c", answers("c"))))
        .unwrap();
    let at = Timestamp::from(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    for request in [
        CommandRequest::new("w", "c").requested_at(at),
        CommandRequest::new(String::from("w"), String::from("c")).requested_at(at),
        CommandRequest::new("w", String::from("c"))
            .metadata("k", "v")
            .requested_at(at),
    ] {
        let err = rt.dispatch(request.clone()).await.unwrap_err();
        assert_eq!(err.request(), Some(&request));
        assert_eq!(
            err.request().unwrap().metadata_value("k"),
            request.metadata_value("k")
        );
    }
    assert!(CommandRequest::new("w", "c").all_metadata().is_empty());
    assert_eq!(
        CommandRequest::new("w", "c"),
        CommandRequest::new(String::from("w"), String::from("c"))
    );
    rt.start_all().await.unwrap();
    let result = rt
        .dispatch(CommandRequest::new(String::from("rt/w"), "c"))
        .await
        .unwrap();
    assert_eq!(&**result.worker(), "rt/w");
}
