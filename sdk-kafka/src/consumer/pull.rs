//! The pull lock: one loop at a time pulls a message from rdkafka and takes it in flight, so
//! that messages are taken in the order rdkafka gives them (see `SandboxConsumer::pulling`).
//!
//! Every message takes it, and almost always nobody else holds it: taking and releasing it
//! uncontended is one compare-and-swap and two plain atomic operations (tokio's `Mutex` costs
//! about 80 instructions more per message, in its semaphore's waiter list). Loops that find it
//! held wait on a `Notify`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

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
    #[inline]
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

impl Drop for Pulling<'_> {
    #[inline]
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
