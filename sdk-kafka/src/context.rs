//! The rdkafka context of a [`SandboxConsumer`](crate::SandboxConsumer): the service's own
//! [`ConsumerContext`], with prodbox's two needs of rebalances added.

use std::sync::Arc;

use rdkafka::TopicPartitionList;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, DefaultConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;

use crate::cut::Forget;
use crate::in_flight::InFlight;

/// The consumer's rdkafka context: the service's context `C` (rdkafka's default unless the
/// builder was given one), to which every callback is passed on, plus prodbox's work at each
/// rebalance:
///
/// * the cuts a baseline read for a partition stay true only while it holds the partition
///   (see the [consumer docs](crate::consumer)): they are forgotten;
/// * messages of a revoked partition still being handled are no longer committed by this
///   consumer: the partition's new owner delivers them again.
///
/// rdkafka gives `rebalance`, `pre_rebalance` and `post_rebalance` a consumer typed by the
/// context that receives them, which is this one, not `C`: those three of `C` are not called.
/// Everything else is (`log`, `stats`, `error`, OAuth tokens, `commit_callback`, ...); watch
/// assignments with [`SandboxConsumerBuilder::on_rebalance`](crate::SandboxConsumerBuilder::on_rebalance).
pub struct Rebalances<C = DefaultConsumerContext> {
    inner: C,
    forget: Forget,
    in_flight: Arc<InFlight>,
    on_rebalance: Option<Arc<OnRebalance>>,
}

/// A service's rebalance callback.
pub(crate) type OnRebalance = dyn Fn(&Rebalance<'_>) + Send + Sync;

impl<C> Rebalances<C> {
    pub(crate) fn new(
        inner: C,
        forget: Forget,
        in_flight: Arc<InFlight>,
        on_rebalance: Option<Arc<OnRebalance>>,
    ) -> Self {
        Self {
            inner,
            forget,
            in_flight,
            on_rebalance,
        }
    }

    /// The service's own context.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: ClientContext> ClientContext for Rebalances<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.inner.stats(statistics);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.inner.stats_raw(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.inner.generate_oauth_token(oauthbearer_config)
    }
}

impl<C: ConsumerContext> ConsumerContext for Rebalances<C> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.forget.all();
        // What is done with reaches rdkafka before it commits for the revoked partitions.
        self.in_flight.store_due(consumer);
        if let Rebalance::Revoke(partitions) = rebalance {
            self.in_flight.revoke(partitions);
        }
        if let Some(on_rebalance) = &self.on_rebalance {
            on_rebalance(rebalance);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.inner.commit_callback(result, offsets);
    }

    fn main_queue_min_poll_interval(&self) -> Timeout {
        self.inner.main_queue_min_poll_interval()
    }
}
