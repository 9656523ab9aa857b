//! Why a consumer could not start or stopped: the one error type of the consumer and its cut.

use prodbox_core::SandboxKey;
use rdkafka::error::KafkaError;

/// Why the consumer could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// rdkafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A sandbox consumer's sandbox is not in the directory.
    #[error("sandbox {0} is not in the directory: register it before starting its consumer")]
    UnknownSandbox(SandboxKey),
    /// An earlier `run` of this consumer stopped while holding a message it had not handled
    /// (a sandbox's message waiting for a fresh directory) and rdkafka refused to rewind to
    /// it: this consumer's position is past that message, so it must not run again. A new
    /// consumer of the same group starts from the committed offset, which is before the
    /// message.
    #[error(
        "this consumer stopped holding an unhandled message at {0}; start a new consumer of the group"
    )]
    StoppedHoldingMessage(String),
    /// The directory had not synced once within the builder's
    /// [`sync_timeout`](crate::SandboxConsumerBuilder::sync_timeout): a consumer that cannot
    /// tell which messages are a sandbox's does not start.
    #[error("the directory did not sync within {waited:?}: is its database reachable?")]
    DirectoryNotSynced {
        /// How long `start` waited.
        waited: std::time::Duration,
    },
    /// [`observe_only`](crate::SandboxConsumerBuilder::observe_only) was asked of a sandbox's
    /// consumer: a fork handles nothing but its sandbox's messages, so it has no production
    /// behaviour to keep while it observes. Deploy forks once the baseline acts.
    #[error("a sandbox's consumer cannot observe only: only the baseline's can")]
    ObserveOnlyFork,
    /// A sandbox consumer's directory keeps no cuts (a file directory): nothing could tell it
    /// which of its sandbox's records are its own.
    #[error("sandbox consumer: {0}")]
    Directory(#[from] prodbox_core::directory::DirectoryError),
}
