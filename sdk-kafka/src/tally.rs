//! The consumer's message counts (`prodbox.kafka.messages`): tallied with one atomic add per
//! message and handed to the OpenTelemetry counter once a second, and when the consumer is
//! dropped. Per message, the counter's attributes cost more than the rest of a skip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prodbox_core::plumbing::metrics::{self, KafkaOutcome};

/// How often tallies reach the counter.
const FLUSH: Duration = Duration::from_secs(1);

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
}

impl Counts {
    fn flush(&self) {
        let Some(topic) = &self.topic else { return };
        for (outcome, count) in OUTCOMES.into_iter().zip(&self.by_outcome) {
            let n = count.swap(0, Ordering::Relaxed);
            if n > 0 {
                metrics::kafka_messages(topic, self.role, outcome, n);
            }
        }
    }
}

impl Tally {
    /// Counts for a consumer in `role` of `topic`, when it reads only that one.
    pub(crate) fn new(topic: Option<&str>, role: &'static str) -> Self {
        let counts = Arc::new(Counts {
            topic: topic.map(Into::into),
            role,
            by_outcome: Default::default(),
        });
        let flusher = counts.topic.is_some().then(|| {
            let counts = Arc::clone(&counts);
            prodbox_core::spawn(async move {
                let mut every = tokio::time::interval(FLUSH);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
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

impl Drop for Tally {
    fn drop(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        self.counts.flush();
    }
}
