//! The smallest workerkit program: one worker, start, status, graceful shutdown.
//!
//! Run with: `cargo run -p example-basic`

fn main() {}
