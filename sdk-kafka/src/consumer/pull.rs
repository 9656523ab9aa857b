//! The pull lock: one loop at a time pulls a message from rdkafka and takes it in flight, so
//! that messages are taken in the order rdkafka gives them (see `SandboxConsumer::pulling`).
//!
//! Every message takes it, and almost always nobody else holds it: taking and releasing it
//! uncontended is one compare-and-swap and two plain atomic operations (tokio's `Mutex` costs
//! about 80 instructions more per message, in its semaphore's waiter list). Loops that find it
//! held wait on a `Notify`.
//!
//! prodbox's own loop (`run`) keeps it from one message to the next while nobody waits for it
//! and its handler runs without waiting ([`Turn`]): a busy loop then takes it once, not once a
//! message.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(super) struct PullLock {
    held: AtomicBool,
    /// Loops waiting for it: its release wakes one only when there are any.
    waiting: AtomicUsize,
    released: Notify,
}

/// The lock, held until dropped.
pub(super) struct Pulling<'a>(&'a PullLock);

impl PullLock {
    /// The lock, if nobody holds it.
    pub(super) fn try_lock(&self) -> Option<Pulling<'_>> {
        self.held
            .compare_exchange(false, true, SeqCst, SeqCst)
            .ok()
            .map(|_| Pulling(self))
    }

    /// The lock, once it is free. Cancel safe.
    pub(super) async fn lock(&self) -> Pulling<'_> {
        if let Some(pulling) = self.try_lock() {
            return pulling;
        }
        // Counted before trying again (all in one order, `SeqCst`): either the holder's
        // release sees the count and wakes a waiter, or this loop's next try sees the release.
        self.waiting.fetch_add(1, SeqCst);
        let _counted = Counted(&self.waiting);
        loop {
            // A wake-up sent before the wait is kept for it (`notify_one` stores a permit), and
            // one sent to a waiter that is then dropped goes to the next (tokio forwards it).
            let released = self.released.notified();
            if let Some(pulling) = self.try_lock() {
                return pulling;
            }
            released.await;
        }
    }
}

/// The lock a loop keeps between messages, if it does (see [`Turn::keep`]).
#[derive(Default)]
pub(super) struct Turn<'a> {
    /// Whether the loop may keep it: only one that gives it back whenever it would wait (as
    /// `run` does, see [`Turn::until_pending`]). A loop the service drives (a stream between
    /// two polls) might hold it for as long as the service likes.
    keeps: bool,
    kept: Option<Pulling<'a>>,
}

impl<'a> Turn<'a> {
    /// A turn for a loop that gives it back whenever it would wait.
    pub(super) fn kept() -> Self {
        Self {
            keeps: true,
            kept: None,
        }
    }

    /// The lock, if this loop kept it.
    pub(super) fn take(&mut self) -> Option<Pulling<'a>> {
        self.kept.take()
    }

    /// Keeps `pulling` for the loop's next message, when the loop keeps it and no other loop
    /// waits for it (one that starts waiting later gets it at this loop's next message, or
    /// when it waits); gives it back otherwise.
    pub(super) fn keep(&mut self, pulling: Pulling<'a>) {
        // A plain read: a waiter counted just now is seen at the next message.
        if self.keeps && pulling.0.waiting.load(Relaxed) == 0 {
            self.kept = Some(pulling);
        }
    }

    /// Gives the lock back, if kept.
    pub(super) fn give_back(&mut self) {
        self.kept = None;
    }

    /// `work`, giving the lock back the first time it is pending: a loop never keeps it while
    /// it waits (another loop, or `work` itself, may be waiting for it).
    pub(super) async fn until_pending<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            let polled = work.as_mut().poll(cx);
            if polled.is_pending() {
                self.kept = None;
            }
            polled
        })
        .await
    }
}

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        let lock = self.0;
        lock.held.store(false, SeqCst);
        if lock.waiting.load(SeqCst) > 0 {
            lock.released.notify_one();
        }
    }
}

/// A waiter counted while it waits (and no longer if its wait is dropped).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_one_holds_it() {
        let lock = PullLock::default();
        let held = lock.try_lock().expect("free");
        assert!(lock.try_lock().is_none());
        drop(held);
        assert!(lock.try_lock().is_some());
    }

    /// Many tasks on several threads, each holding it briefly: never two at once, and every
    /// waiter gets it (a lost wake-up would hang the test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_are_woken_and_excluded() {
        let lock = Arc::new(PullLock::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (lock, inside) = (Arc::clone(&lock), Arc::clone(&inside));
            tasks.push(tokio::spawn(async move {
                for i in 0..500 {
                    let _pulling = lock.lock().await;
                    assert_eq!(inside.fetch_add(1, SeqCst), 0, "two holders at once");
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                    inside.fetch_sub(1, SeqCst);
                }
            }));
        }
        let all = async {
            for task in tasks {
                task.await.expect("no holder panicked");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("every waiter got the lock");
    }

    /// A loop keeps the lock only while nobody waits for it, and never where only some loops
    /// may (a stream between two polls).
    #[tokio::test]
    async fn a_turn_is_kept_only_while_nobody_waits() {
        let lock = PullLock::default();
        let mut turn = Turn::default();
        turn.keep(lock.try_lock().expect("free"));
        assert!(
            turn.take().is_none(),
            "a loop that may not keep it gave it back"
        );
        let mut turn = Turn::kept();
        turn.keep(lock.try_lock().expect("free"));
        assert!(lock.try_lock().is_none(), "kept");
        let waiter = lock.lock();
        tokio::pin!(waiter);
        assert!(futures_util::poll!(waiter.as_mut()).is_pending());
        let kept = turn.take().expect("kept");
        turn.keep(kept);
        assert!(turn.take().is_none(), "given back to the waiter");
        let _pulling = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter has it");
    }

    /// Work that waits gives the kept lock back at once (it may itself be waiting for it);
    /// work that does not leaves it kept.
    #[tokio::test]
    async fn work_that_waits_gives_the_turn_back() {
        let lock = PullLock::default();
        let mut turn = Turn::kept();
        turn.keep(lock.try_lock().expect("free"));
        turn.until_pending(async {}).await;
        assert!(lock.try_lock().is_none(), "still kept");
        let waiting = turn.until_pending(async {
            // Another loop pulling while this work waits.
            let _pulling = lock.lock().await;
        });
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the lock was given back when the work waited");
        assert!(turn.take().is_none());
        assert!(lock.try_lock().is_some(), "free");
    }

    /// A waiter dropped mid-wait leaves no count behind, and does not keep the next from it.
    #[tokio::test]
    async fn a_dropped_wait_is_uncounted() {
        let lock = PullLock::default();
        let held = lock.try_lock().expect("free");
        {
            let wait = lock.lock();
            tokio::pin!(wait);
            assert!(futures_util::poll!(wait.as_mut()).is_pending());
            assert_eq!(lock.waiting.load(SeqCst), 1);
        }
        assert_eq!(lock.waiting.load(SeqCst), 0);
        drop(held);
        let _pulling = tokio::time::timeout(Duration::from_secs(5), lock.lock())
            .await
            .expect("free again");
    }
}
