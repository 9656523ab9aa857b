//! Fuzzes the Kafka header path: `Filter::decide` over rdkafka headers for every consumer of a
//! service, and relaying through `inject_headers`; see `../invariants/kafka.rs`.
#![no_main]

#[path = "../invariants/kafka.rs"]
mod kafka;
#[path = "../invariants/lines.rs"]
#[allow(dead_code)]
mod lines;

libfuzzer_sys::fuzz_target!(|data: &[u8]| kafka::check(data));
