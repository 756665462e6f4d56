//! The instruments, created once per observer.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, ObservableUpDownCounter};
use opentelemetry::{Key, KeyValue, StringValue, Value};

use crate::observer::FastHasher;

use crate::semconv;

/// Histogram bucket boundaries for durations in seconds, from 1 ms to 1 min (the SDK's default
/// boundaries are meant for milliseconds and would put every dispatch in the first bucket).
pub(crate) fn duration_boundaries() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// Every instrument the observer records.
#[derive(Debug)]
pub(crate) struct Instruments {
    pub(crate) command_dispatches: Counter<u64>,
    pub(crate) command_duration: Histogram<f64>,
    /// Reports [`InFlight`]'s counters when metrics are collected (kept alive here).
    pub(crate) _command_in_flight: ObservableUpDownCounter<i64>,
    pub(crate) command_handler_attempts: Counter<u64>,
    pub(crate) command_retries: Counter<u64>,
    pub(crate) check_executions: Counter<u64>,
    pub(crate) check_duration: Histogram<f64>,
    pub(crate) failures: Counter<u64>,
    pub(crate) readiness_changes: Counter<u64>,
    pub(crate) lifecycle_transitions: Counter<u64>,
    pub(crate) lifecycle_state: Gauge<i64>,
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) worker_restarts: Counter<u64>,
    pub(crate) worker_give_ups: Counter<u64>,
    pub(crate) worker_stalls: Counter<u64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, in_flight: &Arc<InFlight>) -> Self {
        let registry = Arc::clone(in_flight);
        Self {
            command_dispatches: meter
                .u64_counter(semconv::COMMAND_DISPATCHES)
                .with_description("Workerkit command dispatch results.")
                .build(),
            command_duration: meter
                .f64_histogram(semconv::COMMAND_DURATION)
                .with_description("Workerkit command dispatch duration in seconds.")
                .with_unit(semconv::UNIT_SECONDS)
                .with_boundaries(duration_boundaries())
                .build(),
            _command_in_flight: meter
                .i64_observable_up_down_counter(semconv::COMMAND_IN_FLIGHT)
                .with_description("Workerkit admitted commands whose handler is running.")
                .with_unit(semconv::UNIT_COMMAND)
                .with_callback(move |observer| {
                    for (attrs, value) in registry.snapshot() {
                        observer.observe(value, &attrs);
                    }
                })
                .build(),
            command_handler_attempts: meter
                .u64_counter(semconv::COMMAND_HANDLER_ATTEMPTS)
                .with_description("Workerkit command handler attempts run.")
                .with_unit(semconv::UNIT_ATTEMPT)
                .build(),
            command_retries: meter
                .u64_counter(semconv::COMMAND_RETRIES)
                .with_description("Workerkit command retries (handler attempts after the first).")
                .with_unit(semconv::UNIT_RETRY)
                .build(),
            check_executions: meter
                .u64_counter(semconv::CHECK_EXECUTIONS)
                .with_description("Workerkit managed check-loop execution results.")
                .build(),
            check_duration: meter
                .f64_histogram(semconv::CHECK_DURATION)
                .with_description("Workerkit managed check-loop execution duration in seconds.")
                .with_unit(semconv::UNIT_SECONDS)
                .with_boundaries(duration_boundaries())
                .build(),
            failures: meter
                .u64_counter(semconv::FAILURES)
                .with_description("Workerkit runtime-observed worker and command failures.")
                .build(),
            readiness_changes: meter
                .u64_counter(semconv::READINESS_CHANGES)
                .with_description("Workerkit worker and runtime readiness changes.")
                .build(),
            lifecycle_transitions: meter
                .u64_counter(semconv::LIFECYCLE_TRANSITIONS)
                .with_description("Workerkit worker and runtime lifecycle transitions.")
                .build(),
            lifecycle_state: meter
                .i64_gauge(semconv::LIFECYCLE_STATE_GAUGE)
                .with_description(
                    "Workerkit lifecycle state: 1 for the current state, 0 for a state left.",
                )
                .with_unit(semconv::UNIT_ONE)
                .build(),
            operation_duration: meter
                .f64_histogram(semconv::OPERATION_DURATION)
                .with_description("Workerkit lifecycle operation duration in seconds.")
                .with_unit(semconv::UNIT_SECONDS)
                .with_boundaries(duration_boundaries())
                .build(),
            worker_restarts: meter
                .u64_counter(semconv::WORKER_RESTARTS)
                .with_description("Workerkit supervised worker restarts made.")
                .with_unit(semconv::UNIT_RESTART)
                .build(),
            worker_give_ups: meter
                .u64_counter(semconv::WORKER_GIVE_UPS)
                .with_description(
                    "Workerkit restart policies that gave up (the worker stays failed).",
                )
                .with_unit(semconv::UNIT_GIVE_UP)
                .build(),
            worker_stalls: meter
                .u64_counter(semconv::WORKER_STALLS)
                .with_description("Workerkit heartbeat watchdog stalls.")
                .with_unit(semconv::UNIT_STALL)
                .build(),
        }
    }
}

/// One command's in-flight count, with its metric attributes.
#[derive(Debug)]
pub(crate) struct InFlightCount {
    pub(crate) count: AtomicI64,
    /// `workerkit.runtime`, `workerkit.worker`, `workerkit.command`.
    pub(crate) attrs: [KeyValue; 3],
    /// The registration-owned names, kept so that their addresses (the key) stay unique.
    names: [Arc<str>; 3],
}

type Names = (usize, usize, usize);

/// The in-flight counters of every command seen, by the addresses of its registration-owned
/// names (runtime, worker, command): an atomic per command instead of two recordings per
/// dispatch, read by the observable instrument's callback at collection.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    counts: RwLock<HashMap<Names, Arc<InFlightCount>, BuildHasherDefault<FastHasher>>>,
}

impl InFlight {
    /// The counter of one command (created at its first dispatch).
    pub(crate) fn count(
        &self,
        runtime: &Arc<str>,
        worker: &Arc<str>,
        command: &Arc<str>,
    ) -> Arc<InFlightCount> {
        let key = (
            Arc::as_ptr(runtime).cast::<u8>() as usize,
            Arc::as_ptr(worker).cast::<u8>() as usize,
            Arc::as_ptr(command).cast::<u8>() as usize,
        );
        if let Some(count) = self
            .counts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(count);
        }
        let mut counts = self.counts.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counts.entry(key).or_insert_with(|| {
            let string = |name: &Arc<str>| Value::String(StringValue::from(Arc::clone(name)));
            Arc::new(InFlightCount {
                count: AtomicI64::new(0),
                attrs: [
                    KeyValue::new(Key::from_static_str(semconv::RUNTIME), string(runtime)),
                    KeyValue::new(Key::from_static_str(semconv::WORKER), string(worker)),
                    KeyValue::new(Key::from_static_str(semconv::COMMAND), string(command)),
                ],
                names: [Arc::clone(runtime), Arc::clone(worker), Arc::clone(command)],
            })
        }))
    }

    /// Every command's count, summed by names (a runtime rebuilt with the same names reports
    /// one point).
    fn snapshot(&self) -> Vec<(Vec<KeyValue>, i64)> {
        let counts = self.counts.read().unwrap_or_else(PoisonError::into_inner);
        let mut by_names: BTreeMap<[&str; 3], (&[KeyValue; 3], i64)> = BTreeMap::new();
        for count in counts.values() {
            let names = [&*count.names[0], &*count.names[1], &*count.names[2]];
            by_names.entry(names).or_insert((&count.attrs, 0)).1 +=
                count.count.load(Ordering::Relaxed);
        }
        by_names
            .into_values()
            .map(|(attrs, value)| (attrs.to_vec(), value))
            .collect()
    }
}
