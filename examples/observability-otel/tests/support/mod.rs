//! Helpers of the example's tests.

pub(crate) mod otlp_receiver;
