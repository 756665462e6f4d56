//! Dispatch under contention: many tasks on one worker, and the lock-free worker registry.
//!
//! The hot path writes as little shared memory as it can (the registry is read without a lock,
//! the worker's entry is borrowed, not reference-counted); these tests pin the guarantees that
//! must hold regardless: exact counts afterwards, limits never exceeded, and every registered
//! worker found while registration grows the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use workerkit_core::command::AdmissionMode;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

const TASKS: usize = 8;
const PER_TASK: usize = 1000;

/// Counts handlers running at once and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(name: &str) -> WorkerSpec {
    WorkerSpec::new(name, worker_fn(|_ctx| async { Ok(()) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // The test's own dispatching tasks.
async fn eight_tasks_on_one_worker_leave_exact_counts_and_respect_limits() {
    const WORKER_LIMIT: usize = 3;
    const RUNTIME_LIMIT: usize = 5;
    let rt = Runtime::builder("rt")
        .command_concurrency(RUNTIME_LIMIT)
        .build()
        .unwrap();
    let worker_gauge = Arc::new(Gauge::default());
    let all_gauge = Arc::new(Gauge::default());
    let (w, all) = (Arc::clone(&worker_gauge), Arc::clone(&all_gauge));
    rt.register(
        worker("w")
            .command_concurrency(WORKER_LIMIT)
            .command_admission(AdmissionMode::Wait(Duration::from_secs(30)))
            .command(CommandSpec::new(
                "work",
                handler_fn(move |_ctx| {
                    let (w, all) = (Arc::clone(&w), Arc::clone(&all));
                    async move {
                        w.enter();
                        all.enter();
                        tokio::task::yield_now().await;
                        all.leave();
                        w.leave();
                        Ok(CommandResponse::empty())
                    }
                }),
            ))
            // Never saturates: counts every admitted dispatch exactly.
            .command(CommandSpec::new(
                "noop",
                handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
            )),
    )
    .unwrap();
    let all = Arc::clone(&all_gauge);
    rt.register(
        worker("other")
            .command_admission(AdmissionMode::Wait(Duration::from_secs(30)))
            .command(CommandSpec::new(
                "work",
                handler_fn(move |_ctx| {
                    let all = Arc::clone(&all);
                    async move {
                        all.enter();
                        tokio::task::yield_now().await;
                        all.leave();
                        Ok(CommandResponse::empty())
                    }
                }),
            )),
    )
    .unwrap();
    rt.start_all().await.unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for i in 0..PER_TASK {
                    // Mostly the same worker; every third dispatch is a plain no-op, every
                    // fifth goes to the other worker (sharing the runtime limit).
                    let (worker, command) = match (task + i) % 15 {
                        0 | 5 | 10 => ("w", "noop"),
                        3 | 9 | 12 => ("other", "work"),
                        _ => ("w", "work"),
                    };
                    let result = rt.dispatch(CommandRequest::new(worker, command)).await;
                    assert_eq!(result.expect("dispatch").attempts, 1);
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("dispatching tasks finish")
            .expect("no task panics");
    }

    assert_eq!(total, TASKS * PER_TASK);
    assert!(worker_gauge.max.load(Ordering::SeqCst) <= WORKER_LIMIT);
    assert!(all_gauge.max.load(Ordering::SeqCst) <= RUNTIME_LIMIT);
    assert_eq!(worker_gauge.now.load(Ordering::SeqCst), 0);
    assert_eq!(rt.status().in_flight, 0);
    assert!(rt.in_flight().is_empty());
    for name in ["w", "other"] {
        let status = rt.worker(name).unwrap().status;
        assert_eq!((status.in_flight, status.waiting), (0, 0), "{name}");
    }
    rt.shutdown().await.unwrap();
}

#[test]
fn every_registered_worker_is_found_by_local_and_qualified_name() {
    let rt = Runtime::builder("rt").build().unwrap();
    // Enough workers to grow the registry several times.
    for i in 0..1500 {
        rt.register(worker(&format!("w{i}")).command(CommandSpec::new(
            format!("c{i}"),
            handler_fn(|_ctx| async { Ok(CommandResponse::empty()) }),
        )))
        .unwrap();
    }
    for i in 0..1500 {
        let commands = rt.commands(&format!("w{i}")).expect("local name");
        assert_eq!(&*commands[0].name, format!("c{i}").as_str());
        assert!(rt.commands(&format!("rt/w{i}")).is_some(), "qualified w{i}");
    }
    for missing in ["w1500", "x", "", "other/w1", "rt/", "rt/x"] {
        assert!(rt.commands(missing).is_none(), "{missing:?}");
    }
    assert_eq!(
        rt.register(worker("w7")).unwrap_err().code(),
        "worker_already_registered"
    );
}

#[test]
fn lookups_racing_registration_always_find_earlier_workers() {
    let rt = Runtime::builder("rt").build().unwrap();
    rt.register(worker("first")).unwrap();
    let registered = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (rt, registered, done) = (rt.clone(), Arc::clone(&registered), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut checks = 0_u64;
                while !done.load(Ordering::SeqCst) {
                    // Every worker registered before this load must be found.
                    let n = registered.load(Ordering::SeqCst);
                    assert!(rt.commands("first").is_some());
                    if n > 0 {
                        let last = format!("w{}", n - 1);
                        assert!(rt.commands(&last).is_some(), "{last} lost");
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for i in 0..3000 {
        rt.register(worker(&format!("w{i}"))).unwrap();
        registered.store(i + 1, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        assert!(reader.join().expect("reader") > 0);
    }
}

#[test]
fn commands_admitted_on_different_threads_are_listed_cancelled_and_drained_alike() {
    // Each thread registers its dispatches in the worker's dispatch shard of that thread: the
    // listing, cancel-by-id, the counts and drain must see all of them.
    const THREADS: usize = 4;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Runtime::builder("rt").build().unwrap();
    let arrived = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    let seen = Arc::clone(&arrived);
    rt.register(worker("w").command(CommandSpec::new(
        "block",
        handler_fn(move |ctx| {
            let seen = Arc::clone(&seen);
            async move {
                seen.0.fetch_add(1, Ordering::SeqCst);
                seen.1.notify_waiters();
                ctx.cancelled().await;
                Ok(CommandResponse::empty())
            }
        }),
    )))
    .unwrap();
    control.block_on(rt.start_all()).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(rt.dispatch(CommandRequest::new("w", "block")))
                    .map(|result| result.attempts)
                    .map_err(|err| err.code())
            })
        })
        .collect();
    control.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = arrived.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if arrived.0.load(Ordering::SeqCst) == THREADS {
                    break;
                }
                notified.await;
            }
        })
        .await
        .expect("every dispatch runs");
    });

    let listed = rt.in_flight();
    assert_eq!(listed.len(), THREADS);
    assert_eq!(rt.status().in_flight, THREADS);
    assert_eq!(rt.worker("w").unwrap().status.in_flight, THREADS);
    // Drain rejects new dispatches at once, from any thread.
    control.block_on(rt.drain("w")).unwrap();
    let err = control
        .block_on(rt.dispatch(CommandRequest::new("w", "block")))
        .unwrap_err();
    assert!(err.is_rejection(), "{err:?}");
    assert_eq!(err.code(), "invalid_worker_state");
    for command in &listed {
        rt.cancel(command.id).unwrap();
        // Already cancelled, or already ended (its thread runs it on at once).
        let again = rt.cancel(command.id).unwrap_err().code();
        assert!(
            matches!(again, "already_cancelled" | "dispatch_not_found"),
            "{again}"
        );
    }
    for thread in threads {
        assert_eq!(thread.join().expect("thread"), Ok(1));
    }
    assert!(rt.in_flight().is_empty());
    assert_eq!(rt.status().in_flight, 0);
    control.block_on(rt.shutdown()).unwrap();
}
