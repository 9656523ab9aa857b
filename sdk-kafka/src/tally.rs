//! The consumer's message counts (`prodbox.kafka.messages`) and its skips' audit counts
//! (`prodbox.sandbox.decisions`): tallied per message (an atomic add; a short list for skips)
//! and handed to the OpenTelemetry counters once a second, and when the consumer is dropped.
//! Per message, a counter's attributes cost more than the rest of a skip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prodbox_core::SandboxKey;
use prodbox_core::audit::Decision;
use prodbox_core::plumbing::audit;
use prodbox_core::plumbing::metrics::{self, KafkaOutcome};
use smallvec::SmallVec;

use crate::consumer::event;

/// How often tallies reach the counter.
const FLUSH: Duration = Duration::from_secs(1);

/// Distinct skips (reason and sandbox) tallied between two flushes; others are counted as
/// they come.
const SKIP_KINDS: usize = 32;

const OUTCOMES: [KafkaOutcome; 3] = [
    KafkaOutcome::Processed,
    KafkaOutcome::Skipped,
    KafkaOutcome::DeadLettered,
];

pub(crate) struct Tally {
    counts: Arc<Counts>,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

struct Counts {
    /// The one topic every message is of; `None`: each message is counted as it comes.
    topic: Option<Box<str>>,
    role: &'static str,
    by_outcome: [AtomicU64; 3],
    skips: Mutex<Vec<Skips>>,
    /// Flushes so far: a loop that sees it move hands its skips over (see [`LocalSkips`]).
    flushes: AtomicU64,
}

/// Skips of one reason and sandbox since the last flush.
struct Skips {
    reason: &'static str,
    sandbox: Option<SandboxKey>,
    n: u64,
}

impl Counts {
    fn flush(&self) {
        let Some(topic) = &self.topic else { return };
        let skips = std::mem::take(&mut *self.skips());
        for skip in &skips {
            audit::count(
                &event(skip.sandbox.as_ref(), Decision::Skipped, skip.reason, None),
                skip.n,
            );
        }
        // The skips tallied are the skipped messages not counted one by one.
        let tallied: u64 = skips.iter().map(|skip| skip.n).sum();
        for (outcome, count) in OUTCOMES.into_iter().zip(&self.by_outcome) {
            let mut n = count.swap(0, Ordering::Relaxed);
            if outcome == KafkaOutcome::Skipped {
                n += tallied;
            }
            if n > 0 {
                metrics::kafka_messages(topic, self.role, outcome, n);
            }
        }
    }

    fn skips(&self) -> std::sync::MutexGuard<'_, Vec<Skips>> {
        self.skips.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tally {
    /// Counts for a consumer in `role` of `topic`, when it reads only that one.
    pub(crate) fn new(topic: Option<&str>, role: &'static str) -> Self {
        let counts = Arc::new(Counts {
            topic: topic.map(Into::into),
            role,
            by_outcome: Default::default(),
            skips: Mutex::default(),
            flushes: AtomicU64::new(0),
        });
        let flusher = counts.topic.is_some().then(|| {
            let counts = Arc::clone(&counts);
            prodbox_core::spawn(async move {
                let mut every = tokio::time::interval(FLUSH);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    counts.flushes.fetch_add(1, Ordering::Relaxed);
                    counts.flush();
                }
            })
        });
        Self { counts, flusher }
    }

    /// Counts one message, of `topic()`.
    pub(crate) fn count<'t>(&self, outcome: KafkaOutcome, topic: impl FnOnce() -> &'t str) {
        if self.counts.topic.is_none() {
            metrics::kafka_message(topic(), self.counts.role, outcome);
            return;
        }
        let at = match outcome {
            KafkaOutcome::Skipped => 1,
            KafkaOutcome::DeadLettered => 2,
            _ => 0,
        };
        self.counts.by_outcome[at].fetch_add(1, Ordering::Relaxed);
    }
}

impl Tally {
    /// Tallies `n` skips of one kind (the consumer reads one topic).
    fn add_skips(&self, reason: &'static str, sandbox: Option<&SandboxKey>, n: u64) {
        let mut skips = self.counts.skips();
        if let Some(skip) = skips.iter_mut().find(|skip| skip.is(reason, sandbox)) {
            skip.n += n;
        } else if skips.len() < SKIP_KINDS {
            skips.push(Skips {
                reason,
                sandbox: sandbox.cloned(),
                n,
            });
        } else {
            drop(skips);
            audit::count(&event(sandbox, Decision::Skipped, reason, None), n);
            self.counts.by_outcome[1].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A tally of the skips of one loop.
    pub(crate) fn local(&self) -> LocalSkips<'_> {
        LocalSkips {
            tally: self,
            kinds: SmallVec::new(),
            n: 0,
            flushes: self.counts.flushes.load(Ordering::Relaxed),
        }
    }
}

impl Skips {
    fn is(&self, reason: &'static str, sandbox: Option<&SandboxKey>) -> bool {
        std::ptr::eq(self.reason, reason) && self.sandbox.as_ref() == sandbox
    }
}

/// Skips in a loop's hand, added to its consumer's [`Tally`] in batches (under its lock):
/// every [`LOCAL_BATCH`] skips, when a kind more comes than it holds, before the loop waits
/// ([`flush`](Self::flush)), at its next message once the tally was flushed since
/// ([`tick`](Self::tick)), and when it is dropped. A skip costs no atomic operation here.
pub(crate) struct LocalSkips<'t> {
    tally: &'t Tally,
    kinds: SmallVec<[Skips; LOCAL_KINDS]>,
    n: u32,
    /// The tally's flushes when this last handed its skips over.
    flushes: u64,
}

/// Kinds of skip a loop holds at once.
const LOCAL_KINDS: usize = 4;

/// Skips a loop holds at most.
const LOCAL_BATCH: u32 = 64;

impl LocalSkips<'_> {
    /// Audits and counts a skipped message (`detail` names it, `topic()` is its topic) for
    /// `reason`, of `sandbox`'s: logged now, counted with the rest (as it comes, when the
    /// consumer reads more than one topic).
    pub(crate) fn skip<'m>(
        &mut self,
        reason: &'static str,
        sandbox: Option<&SandboxKey>,
        detail: &dyn std::fmt::Display,
        topic: impl FnOnce() -> &'m str,
    ) {
        let event = event(sandbox, Decision::Skipped, reason, Some(detail));
        audit::log(&event);
        if self.tally.counts.topic.is_none() {
            audit::count(&event, 1);
            self.tally.count(KafkaOutcome::Skipped, topic);
            return;
        }
        match self.kinds.iter_mut().find(|skip| skip.is(reason, sandbox)) {
            Some(skip) => skip.n += 1,
            None => {
                if self.kinds.len() == LOCAL_KINDS {
                    self.flush();
                }
                self.kinds.push(Skips {
                    reason,
                    sandbox: sandbox.cloned(),
                    n: 1,
                });
            }
        }
        self.n += 1;
        if self.n >= LOCAL_BATCH {
            self.flush();
        } else {
            self.tick();
        }
    }

    /// Hands the skips over if the tally was flushed since they last were: skips reach the
    /// counters within about a second however busy the loop is.
    pub(crate) fn tick(&mut self) {
        if self.n > 0 && self.tally.counts.flushes.load(Ordering::Relaxed) != self.flushes {
            self.flush();
        }
    }

    /// Adds what this loop holds to the consumer's tally.
    pub(crate) fn flush(&mut self) {
        for skip in self.kinds.drain(..) {
            self.tally
                .add_skips(skip.reason, skip.sandbox.as_ref(), skip.n);
        }
        self.n = 0;
        self.flushes = self.tally.counts.flushes.load(Ordering::Relaxed);
    }
}

impl Drop for LocalSkips<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        self.counts.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skips the consumer's tally holds: tallied by kind, or counted one by one.
    fn tallied(tally: &Tally) -> u64 {
        let by_kind: u64 = tally.counts.skips().iter().map(|skip| skip.n).sum();
        by_kind + tally.counts.by_outcome[1].load(Ordering::Relaxed)
    }

    fn key(n: usize) -> SandboxKey {
        format!("pr-{n}").parse().expect("a key")
    }

    /// (A current-thread runtime the test never yields to: the flusher does not run.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_loops_skips_all_reach_the_tally() {
        let tally = Tally::new(Some("t"), "baseline");
        let mut local = tally.local();
        let skip = |local: &mut LocalSkips<'_>, key: Option<&SandboxKey>| {
            local.skip("forked", key, &"t/0@1", || "t");
        };
        for _ in 0..LOCAL_BATCH - 1 {
            skip(&mut local, Some(&key(1)));
        }
        assert_eq!(tallied(&tally), 0, "held by the loop");
        skip(&mut local, Some(&key(1)));
        assert_eq!(tallied(&tally), 64, "handed over at {LOCAL_BATCH}");
        skip(&mut local, None);
        local.tick();
        assert_eq!(tallied(&tally), 64, "not before the tally is flushed");
        tally.counts.flushes.fetch_add(1, Ordering::Relaxed);
        local.tick();
        assert_eq!(
            tallied(&tally),
            65,
            "handed over once the tally was flushed"
        );
        // More kinds than a loop holds, then the loop ends: none lost.
        for n in 0..10 {
            skip(&mut local, Some(&key(n)));
        }
        drop(local);
        assert_eq!(tallied(&tally), 75);
        // More kinds than the tally lists: counted one by one, none lost.
        let mut local = tally.local();
        for n in 0..2 * SKIP_KINDS {
            skip(&mut local, Some(&key(100 + n)));
        }
        drop(local);
        assert_eq!(tallied(&tally), 75 + 2 * SKIP_KINDS as u64);
    }
}
