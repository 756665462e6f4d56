//! The instruments, created once per observer.

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};

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
    pub(crate) command_in_flight: UpDownCounter<i64>,
    pub(crate) command_handler_attempts: Counter<u64>,
    pub(crate) command_retries: Counter<u64>,
    pub(crate) check_executions: Counter<u64>,
    pub(crate) check_duration: Histogram<f64>,
    pub(crate) failures: Counter<u64>,
    pub(crate) readiness_changes: Counter<u64>,
    pub(crate) lifecycle_transitions: Counter<u64>,
    pub(crate) lifecycle_state: Gauge<i64>,
    pub(crate) operation_duration: Histogram<f64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
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
            command_in_flight: meter
                .i64_up_down_counter(semconv::COMMAND_IN_FLIGHT)
                .with_description("Workerkit admitted commands whose handler is running.")
                .with_unit(semconv::UNIT_COMMAND)
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
        }
    }
}
