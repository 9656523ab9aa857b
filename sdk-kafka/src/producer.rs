//! Producer side: every record carries the current sandbox context.
//!
//! Wrap the producer where it is built, and no send site can forget the context:
//!
//! ```no_run
//! use prodbox_kafka::SandboxProducer;
//! use rdkafka::ClientConfig;
//! use rdkafka::producer::{FutureProducer, FutureRecord};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer: SandboxProducer<FutureProducer> =
//!     SandboxProducer::new(ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092").create()?);
//! let record = FutureRecord::to("order-created").key("order-7").payload("{\"id\":7}");
//! producer.send(record, std::time::Duration::from_secs(5)).await.map_err(|(e, _)| e)?;
//! # Ok(()) }
//! ```
//!
//! [`SandboxProducer`] wraps a [`FutureProducer`], [`BaseProducer`] or [`ThreadedProducer`]
//! with their own `send` signatures, and rdkafka's [`Producer`] trait (flush, transactions).
//! Or tag records one by one with [`SandboxRecordExt::with_sandbox_context`].
//!
//! The context goes into the record's `baggage` header with the one core codec, merged with the
//! record's own headers (which are kept, in order); outside any sandbox, sandbox members the
//! record's own headers carry are removed. A sandboxed record whose context cannot be written
//! is not sent: a consumer would have to dead-letter it, or worse, take it for production.
//! [`SandboxRecordExt`] says why with [`InjectError`]; [`SandboxProducer`] fails the send with
//! rdkafka's `MessageProduction(BadMessage)` (audited with the reason), so that send sites keep
//! rdkafka's error type.

use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::egress::{Egress, InjectError};
use rdkafka::client::Client;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryFuture, FutureProducer, FutureRecord, Partitioner, Producer,
    ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::{AsyncRuntime, IntoOpaque, Timeout};
use rdkafka::{ClientContext, TopicPartitionList};

use crate::headers::HeaderList;

/// Writes the current context into `headers` (the record's own headers are kept).
pub fn inject_headers(headers: Option<&OwnedHeaders>) -> Result<OwnedHeaders, InjectError> {
    let mut list = HeaderList::from_headers(headers);
    Egress::new(Protocol::Kafka).inject(&mut list)?;
    Ok(list.into_headers())
}

/// Adds the current sandbox context to rdkafka records.
pub trait SandboxRecordExt: Sized {
    /// This record with the current context in its `baggage` header.
    fn with_sandbox_context(self) -> Result<Self, InjectError>;
}

impl<K: ToBytes + ?Sized, P: ToBytes + ?Sized> SandboxRecordExt for FutureRecord<'_, K, P> {
    fn with_sandbox_context(mut self) -> Result<Self, InjectError> {
        let headers = inject_headers(self.headers.as_ref())?;
        self.headers = Some(headers);
        Ok(self)
    }
}

impl<K: ToBytes + ?Sized, P: ToBytes + ?Sized, D: IntoOpaque> SandboxRecordExt
    for BaseRecord<'_, K, P, D>
{
    fn with_sandbox_context(mut self) -> Result<Self, InjectError> {
        let headers = inject_headers(self.headers.as_ref())?;
        self.headers = Some(headers);
        Ok(self)
    }
}

/// A producer through which every record carries the current context: `P` is a
/// [`FutureProducer`], [`BaseProducer`] or [`ThreadedProducer`], whose `send` methods it has,
/// with the same signatures. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxProducer<P> {
    inner: P,
    require_scope: bool,
}

impl<P> SandboxProducer<P> {
    /// Wraps `producer`.
    pub fn new(producer: P) -> Self {
        Self {
            inner: producer,
            require_scope: false,
        }
    }

    /// Refuses sends from work that runs in no scope prodbox recognises
    /// ([`prodbox_core::in_scope`]): work that lost its context (a `tokio::spawn`, a thread)
    /// would send its records as production's. Refused sends fail with
    /// `MessageProduction(State)` and are audited (`kafka_no_scope`).
    pub fn require_scope(mut self) -> Self {
        self.require_scope = true;
        self
    }

    /// Writes the current context into `headers`; on failure, the error a send fails with.
    fn tag(&self, headers: &mut Option<OwnedHeaders>) -> Result<(), KafkaError> {
        if self.require_scope && !prodbox_core::in_scope() {
            AuditEvent {
                sandbox: None,
                actor: None,
                origin: None,
                protocol: Protocol::Kafka,
                direction: Direction::Outbound,
                decision: Decision::Rejected,
                reason: "kafka_no_scope",
                detail: Some(&"a record was sent from work outside any request scope"),
            }
            .emit();
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::State));
        }
        match inject_headers(headers.as_ref()) {
            Ok(tagged) => {
                *headers = Some(tagged);
                Ok(())
            }
            // Audited where the context was refused.
            Err(_) => Err(KafkaError::MessageProduction(RDKafkaErrorCode::BadMessage)),
        }
    }
}

impl<C: ClientContext + 'static, R: AsyncRuntime> SandboxProducer<FutureProducer<C, R>> {
    /// [`FutureProducer::send`], with the current context.
    pub async fn send<K, P, T>(
        &self,
        mut record: FutureRecord<'_, K, P>,
        queue_timeout: T,
    ) -> rdkafka::producer::future_producer::OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        if let Err(error) = self.tag(&mut record.headers) {
            return Err((error, unsent(record)));
        }
        self.inner.send(record, queue_timeout).await
    }

    /// [`FutureProducer::send_result`], with the current context.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K, P>(
        &self,
        mut record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        if let Err(error) = self.tag(&mut record.headers) {
            return Err((error, record));
        }
        self.inner.send_result(record)
    }

    /// [`FutureProducer::poll`].
    pub fn poll<T: Into<Timeout>>(&self, timeout: T) {
        self.inner.poll(timeout);
    }
}

/// `send` and `poll` of the producers that take a `BaseRecord`, which have the same signatures.
macro_rules! base_record_producer {
    ($producer:ident, $($bound:tt)*) => {
        impl<C: ProducerContext<Part> $($bound)*, Part: Partitioner>
            SandboxProducer<$producer<C, Part>>
        {
            #[doc = concat!("[`", stringify!($producer), "::send`], with the current context.")]
            #[allow(clippy::result_large_err)]
            pub fn send<'a, K, P>(
                &self,
                mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
            ) -> BaseSent<'a, K, P, C::DeliveryOpaque>
            where
                K: ToBytes + ?Sized,
                P: ToBytes + ?Sized,
            {
                if let Err(error) = self.tag(&mut record.headers) {
                    return Err((error, record));
                }
                self.inner.send(record)
            }

            #[doc = concat!("[`", stringify!($producer), "::poll`].")]
            pub fn poll<T: Into<Timeout>>(&self, timeout: T) {
                self.inner.poll(timeout);
            }
        }
    };
}

base_record_producer!(BaseProducer,);
base_record_producer!(ThreadedProducer, + 'static);

/// What `BaseProducer::send` and `ThreadedProducer::send` return: an unsent record comes back.
type BaseSent<'a, K, P, D> = Result<(), (KafkaError, BaseRecord<'a, K, P, D>)>;

/// The record a [`FutureProducer::send`] gives back when it is not sent, as rdkafka builds it.
fn unsent<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
    record: FutureRecord<'_, K, P>,
) -> OwnedMessage {
    OwnedMessage::new(
        record.payload.map(|p| p.to_bytes().to_vec()),
        record.key.map(|k| k.to_bytes().to_vec()),
        record.topic.to_owned(),
        record
            .timestamp
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition.unwrap_or(-1),
        0,
        record.headers,
    )
}

/// rdkafka's producer methods other than `send` (flushing, transactions), passed through.
impl<C, Part, P> Producer<C, Part> for SandboxProducer<P>
where
    P: Producer<C, Part>,
    C: ProducerContext<Part>,
    Part: Partitioner,
{
    fn client(&self) -> &Client<C> {
        self.inner.client()
    }

    fn in_flight_count(&self) -> i32 {
        self.inner.in_flight_count()
    }

    fn flush<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.inner.flush(timeout)
    }

    fn purge(&self, flags: PurgeConfig) {
        self.inner.purge(flags);
    }

    fn init_transactions<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.inner.init_transactions(timeout)
    }

    fn begin_transaction(&self) -> KafkaResult<()> {
        self.inner.begin_transaction()
    }

    fn send_offsets_to_transaction<T: Into<Timeout>>(
        &self,
        offsets: &TopicPartitionList,
        cgm: &ConsumerGroupMetadata,
        timeout: T,
    ) -> KafkaResult<()> {
        self.inner
            .send_offsets_to_transaction(offsets, cgm, timeout)
    }

    fn commit_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.inner.commit_transaction(timeout)
    }

    fn abort_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.inner.abort_transaction(timeout)
    }
}
