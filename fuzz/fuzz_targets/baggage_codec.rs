//! Fuzzes the baggage codec and the ingress decision over arbitrary header sets: see
//! `../invariants/baggage.rs` for the input format and every invariant checked.
#![no_main]

#[path = "../invariants/baggage.rs"]
mod baggage;
#[path = "../invariants/lines.rs"]
#[allow(dead_code)]
mod lines;
#[path = "../invariants/token.rs"]
#[allow(dead_code)]
mod token;

libfuzzer_sys::fuzz_target!(|data: &[u8]| baggage::check(data));
