//! Fuzzes the token verifier: arbitrary tokens, edits of valid ones, and arbitrary claims
//! signed with the real secret; see `../invariants/token.rs` for the modes and invariants.
#![no_main]

#[path = "../invariants/token.rs"]
mod token;

libfuzzer_sys::fuzz_target!(|data: &[u8]| token::check(data));
