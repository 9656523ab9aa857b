//! prodbox for Kafka (rdkafka): producers tag records with the current sandbox context, and
//! consumers hand each message to exactly the consumer that should handle it, losing nothing.
//!
//! * [`SandboxProducer`]: a producer through which every record carries the current context
//!   (or [`SandboxRecordExt::with_sandbox_context`], one line on a `FutureRecord` or
//!   `BaseRecord`);
//! * [`SandboxConsumer`]: a `StreamConsumer` with a [`Role`], in the service's own loop
//!   ([`SandboxConsumer::recv`]) or in prodbox's ([`SandboxConsumer::run`]): a sandbox consumer (a fork)
//!   takes only its own sandbox's messages, from the offsets where the baseline consumer,
//!   which handles everything else, recorded the cut in the directory (see the
//!   [consumer docs](consumer)); malformed sandbox headers go to a dead-letter topic;
//! * [`Filter`]: the decision alone, for consumers of your own.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unreachable_pub)]

pub mod consumer;
mod context;
mod cut;
mod error;
mod filter;
mod headers;
mod in_flight;
pub mod producer;
mod shutdown;
mod tally;
mod verdict;
mod verdict_memory;

pub use consumer::{ConsumerError, Delivery, Rebalances, SandboxConsumer, SandboxConsumerBuilder};
pub use filter::{Filter, Role};
pub use headers::HeaderReader;
pub use producer::{SandboxProducer, SandboxRecordExt, inject_headers};
pub use verdict::Verdict;
