//! Compile-time checks of the public API's auto traits: the observer and its builder are
//! `Send + Sync + Clone + 'static`, and the observer is a workerkit `Observer`. A regression here
//! fails to compile.

use workerkit_core::Observer;
use workerkit_tracing::{TracingObserver, TracingObserverBuilder};

const fn shared<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
const fn observer<T: Observer>() {}

const _: () = {
    shared::<TracingObserver>();
    shared::<TracingObserverBuilder>();
    observer::<TracingObserver>();
};

#[test]
fn auto_traits_hold() {
    // The checks are the `const` block above; this test exists so the file shows up in runs.
    let _ = TracingObserver::new();
}
