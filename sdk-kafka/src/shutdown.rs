//! Waiting that gives way to shutdown: every pause of the consumer loop (retries, throttling,
//! a stale directory) and of the cut's probes ends as soon as the consumer is told to stop.

use std::future::{Future, Pending};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

/// Waits `wait`, unless `shutdown` completes first (then `false`).
pub(crate) async fn pause<S: Future<Output = ()>>(
    wait: Duration,
    shutdown: &mut Pin<&mut S>,
) -> bool {
    tokio::select! {
        biased;
        () = shutdown.as_mut() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Checks between two polls of a shutdown future that has not woken its waker: one that
/// completes without waking anybody is still seen.
const POLL_AT_LEAST_EVERY: u32 = 64;

/// A loop's shutdown future, checked before every message. It is polled again only once it
/// has woken the waker it was last polled with (one atomic load per message, where polling
/// a oneshot receiver or a cancellation token costs tens of instructions), and at least every
/// [`POLL_AT_LEAST_EVERY`] checks, for a future that completes without waking anybody. Never
/// polled again once complete.
pub(crate) struct Shutdown<'s, S> {
    future: Pin<&'s mut S>,
    /// `None`: the future never completes ([`Shutdown::never`]).
    woken: Option<Arc<Woken>>,
    /// Checks left before the next poll, unless woken first (0: the next check polls; the
    /// future was never polled here, or was lent out since, or is complete).
    quiet: u32,
    complete: bool,
}

struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

impl Shutdown<'static, Pending<()>> {
    /// A shutdown that never comes: the service's own loop, which stops by dropping it.
    pub(crate) fn never() -> Self {
        Self {
            // Zero-sized: leaking it allocates nothing.
            future: Pin::new(Box::leak(Box::new(std::future::pending()))),
            woken: None,
            quiet: u32::MAX,
            complete: false,
        }
    }
}

impl<'s, S: Future<Output = ()>> Shutdown<'s, S> {
    pub(crate) fn new(future: Pin<&'s mut S>) -> Self {
        Self {
            future,
            woken: Some(Arc::new(Woken(AtomicBool::new(false)))),
            quiet: 0,
            complete: false,
        }
    }

    /// Whether shutdown has come.
    #[inline]
    pub(crate) fn has_come(&mut self) -> bool {
        if self.quiet > 0
            && !self
                .woken
                .as_ref()
                .is_some_and(|w| w.0.load(Ordering::Acquire))
        {
            self.quiet -= 1;
            return false;
        }
        self.poll()
    }

    fn poll(&mut self) -> bool {
        if self.complete {
            return true;
        }
        let Some(woken) = &self.woken else {
            self.quiet = u32::MAX;
            return false;
        };
        // Cleared before the poll: a wake-up during it is kept for the next check.
        woken.0.store(false, Ordering::Release);
        let waker = Waker::from(Arc::clone(woken));
        self.complete = self
            .future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_ready();
        // Complete: never polled again, nor lent out; pending: quiet until it wakes.
        self.quiet = if self.complete {
            0
        } else {
            POLL_AT_LEAST_EVERY - 1
        };
        self.complete
    }

    /// The future, to wait on beside something else: whoever polls it next gives it another
    /// waker, so the next check polls it again.
    pub(crate) fn future(&mut self) -> &mut Pin<&'s mut S> {
        self.quiet = 0;
        &mut self.future
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    use super::*;

    /// Counts its polls; complete once `stop` is set; keeps the waker it was last polled with.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        stop: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    /// A future over a [`Probe`].
    struct Polling<'a>(&'a Probe);

    impl Future for Polling<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
            let probe = self.0;
            probe.polls.fetch_add(1, Ordering::SeqCst);
            if probe.stop.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *probe.waker.lock().expect("not poisoned") = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polled_again_only_once_woken() {
        let probe = Probe::default();
        let mut polling = Polling(&probe);
        let mut shutdown = Shutdown::new(Pin::new(&mut polling));
        assert!(!shutdown.has_come());
        for _ in 0..10 {
            assert!(!shutdown.has_come());
        }
        assert_eq!(
            probe.polls.load(Ordering::SeqCst),
            1,
            "not polled while not woken"
        );
        probe.stop.store(true, Ordering::SeqCst);
        probe
            .waker
            .lock()
            .expect("not poisoned")
            .take()
            .expect("a waker")
            .wake();
        assert!(shutdown.has_come());
        assert!(
            shutdown.has_come(),
            "still come, without polling a complete future"
        );
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    /// A future that completes without waking anybody is still seen, within 64 checks.
    #[test]
    fn a_future_that_never_wakes_is_polled_now_and_then() {
        let probe = Probe::default();
        let mut polling = Polling(&probe);
        let mut shutdown = Shutdown::new(Pin::new(&mut polling));
        assert!(!shutdown.has_come());
        probe.stop.store(true, Ordering::SeqCst);
        let checks = (1..=POLL_AT_LEAST_EVERY).find(|_| shutdown.has_come());
        assert!(checks.is_some(), "seen within {POLL_AT_LEAST_EVERY} checks");
    }

    /// Polled elsewhere (with another waker), it is polled again at the next check.
    #[test]
    fn lent_out_it_is_polled_again() {
        let probe = Probe::default();
        let mut polling = Polling(&probe);
        let mut shutdown = Shutdown::new(Pin::new(&mut polling));
        assert!(!shutdown.has_come());
        // Polled by someone else, it wakes them, not the watcher.
        let elsewhere = shutdown
            .future()
            .as_mut()
            .poll(&mut std::task::Context::from_waker(Waker::noop()));
        assert!(elsewhere.is_pending());
        probe.stop.store(true, Ordering::SeqCst);
        assert!(shutdown.has_come(), "polled at the next check");
    }
}
