//! prodbox for Kafka (rdkafka): producer injection and a consumer filter that loses nothing.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until its issue
//! ("Kafka: producer injection and a consumer filter that loses nothing") is done.
