//! The one place where the runtime spawns tasks, and the panic-catching future wrapper.
//!
//! Every task goes onto the runtime's [`TaskTracker`], so shutdown can account for all of them.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Spawns `future` onto the current tokio runtime, tracked by `tracker`.
#[allow(clippy::disallowed_methods)] // The single sanctioned spawn site.
pub(crate) fn spawn<F>(tracker: &TaskTracker, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracker.track_future(future))
}

/// Spawns `future` into `set` (aborted when the set is shut down or dropped), tracked by
/// `tracker`.
#[allow(clippy::disallowed_methods)] // The sanctioned spawn site for child tasks.
pub(crate) fn spawn_into<F>(set: &mut tokio::task::JoinSet<()>, tracker: &TaskTracker, future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    set.spawn(tracker.track_future(future));
}

/// A future that resolves to `Err(payload)` instead of unwinding when the inner future panics.
///
/// The inner future is `Unpin` (worker code reaches the runtime as boxed futures), so no extra
/// allocation is made.
pub(crate) struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future + Unpin> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { inner: future }
    }
}

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.inner);
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// A one-shot stop signal: cheap to clone (one `Arc`), fired once, awaited by any number.
///
/// Lighter than a `CancellationToken` (no tree of children, no lock on clone or drop), which
/// matters because every worker context carries one.
#[derive(Clone, Debug, Default)]
pub(crate) struct Signal(std::sync::Arc<SignalInner>);

#[derive(Debug, Default)]
struct SignalInner {
    fired: std::sync::atomic::AtomicBool,
    /// How many [`Signal::cancelled`] futures wait: with none, firing the signal does not touch
    /// the `Notify` (its lock and cache line). A waiter counts itself in before it checks
    /// `fired`, a firer sets `fired` before it reads the count (both sequentially consistent):
    /// either the waiter sees the signal fired, or the firer sees the waiter and wakes it.
    waiters: std::sync::atomic::AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (once; later calls do nothing).
    pub(crate) fn cancel(&self) {
        if !self.0.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.wake_waiters();
        }
    }

    /// Fires the signal without waking its waiters yet: whoever fires it this way must call
    /// [`wake_waiters`](Self::wake_waiters) afterwards. A waiter that checks the signal sees it
    /// fired at once; one already waiting wakes at `wake_waiters`. Lets a stop join a loop that
    /// waits on this signal inline, before the wake-up would schedule the loop's task.
    pub(crate) fn fire_quietly(&self) {
        self.0
            .fired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Wakes everything waiting on the signal (after [`fire_quietly`](Self::fire_quietly)).
    pub(crate) fn wake_waiters(&self) {
        if self.0.waiters.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.0.notify.notify_waiters();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.fired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Completes once the signal has fired.
    pub(crate) async fn cancelled(&self) {
        /// Counts a waiter in while it waits (see `SignalInner::waiters`).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if self.is_cancelled() {
            return;
        }
        self.0
            .waiters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _waiting = Waiting(&self.0.waiters);
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.fired.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            // Every poll checks the signal first: one fired quietly (by a stop about to poll
            // this future inline) completes it at that poll, without a wake-up.
            std::future::poll_fn(|cx| {
                if self.0.fired.load(std::sync::atomic::Ordering::SeqCst) {
                    return std::task::Poll::Ready(());
                }
                notified.as_mut().poll(cx)
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::disallowed_methods)] // The waiter needs a task of its own, on another thread.
    async fn a_waiter_never_misses_the_signal_fired_from_another_thread() {
        for round in 0..2_000 {
            let signal = Signal::new();
            let waiting = signal.clone();
            let waiter = tokio::spawn(async move { waiting.cancelled().await });
            if round % 2 == 0 {
                signal.cancel();
            } else {
                signal.fire_quietly();
                tokio::task::yield_now().await;
                signal.wake_waiters();
            }
            // A guard against a lost wake-up (which would hang), not a wait for progress.
            tokio::time::timeout(Duration::from_secs(30), waiter)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter was never woken"))
                .expect("waiter task");
            assert_eq!(signal.0.waiters.load(Ordering::SeqCst), 0, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_dropped_waiter_counts_itself_out() {
        let signal = Signal::new();
        let mut first = Box::pin(signal.cancelled());
        let mut second = Box::pin(signal.cancelled());
        assert!(futures_poll(&mut first).is_pending());
        assert!(futures_poll(&mut second).is_pending());
        assert_eq!(signal.0.waiters.load(Ordering::SeqCst), 2);
        drop(first);
        assert_eq!(signal.0.waiters.load(Ordering::SeqCst), 1);
        signal.cancel();
        assert!(futures_poll(&mut second).is_ready());
        assert_eq!(signal.0.waiters.load(Ordering::SeqCst), 0);
        // Once fired, a new waiter returns at once without counting itself in.
        assert!(futures_poll(&mut Box::pin(signal.cancelled())).is_ready());
        assert_eq!(signal.0.waiters.load(Ordering::SeqCst), 0);
    }

    fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(future).poll(&mut cx)
    }
}
