//! Producer side: one line makes a plain rdkafka record carry the current sandbox context.
//!
//! ```no_run
//! use prodbox_kafka::SandboxRecordExt;
//! use rdkafka::producer::{FutureProducer, FutureRecord};
//!
//! # async fn run(producer: FutureProducer) -> Result<(), Box<dyn std::error::Error>> {
//! let record = FutureRecord::to("order-created")
//!     .key("order-7")
//!     .payload("{\"id\":7}")
//!     .with_sandbox_context()?; // the one line
//! producer.send(record, std::time::Duration::from_secs(5)).await.map_err(|(e, _)| e)?;
//! # Ok(()) }
//! ```
//!
//! The context goes into the record's `baggage` header with the one core codec, merged with the
//! record's own headers (which are kept, in order). A sandboxed record whose context cannot be
//! written fails with [`InjectError`] instead of being sent: a consumer would have to
//! dead-letter it, or worse, take it for production.

use prodbox_core::audit::Protocol;
use prodbox_core::egress::{Egress, InjectError};
use rdkafka::message::{OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, FutureRecord};
use rdkafka::util::IntoOpaque;

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
