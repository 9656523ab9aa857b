//! Stable twin of the cargo-fuzz target `kafka_headers` (`fuzz/`): the same invariant code
//! (`fuzz/invariants/kafka.rs`, included below), run by `cargo test` on the committed corpus
//! (`fuzz/corpus/kafka_headers/`), on edits of it, and on generated header sets. rdkafka
//! `OwnedHeaders` only: no broker.

#[path = "../../fuzz/invariants/kafka.rs"]
mod kafka;
#[path = "../../fuzz/invariants/lines.rs"]
mod lines;
#[path = "../../fuzz/invariants/twin.rs"]
mod twin;

use proptest::prelude::*;

use lines::Line;

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "baggage",
            "Baggage",
            "uberctx-prodbox.sandbox",
            "ot-baggage-prodbox.actor",
            "uberctx-sd-routing-key",
            "uberctx-prodbox.token",
            "content-type",
            "baggage\u{0}x",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._-]{1,10}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        8 => prop::sample::select(vec![
            "prodbox.sandbox=", "prodbox.actor=", "prodbox.token=", "prodbox.x=",
            "PRODBOX.SANDBOX=", "sd-routing-key=", "fork-a", "plain-b", "off-c", "old-d",
            "later-f", "ghost-e", "userId=7", "=", ",", ",", ";p", " ", "%", "%2D", "%FF",
            "\r", "\u{0}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(fragment, 0..12).prop_map(|parts| parts.concat())
}

#[test]
fn kafka_corpus_holds_the_invariants() {
    let files = twin::run_corpus("kafka_headers", kafka::check);
    assert!(files >= 25, "{files}");
}

#[test]
fn kafka_invariants_hold_on_edited_corpus_inputs() {
    twin::run(1_500, twin::mutated_corpus("kafka_headers", 6), |input| {
        kafka::check(input)
    });
}

#[test]
fn kafka_invariants_hold_on_generated_header_sets() {
    let headers = prop::collection::vec(
        (header_name(), prop::option::weighted(0.9, header_value())),
        0..20,
    )
    .prop_map(|headers: Vec<Line>| lines::render(&headers));
    twin::run(1_500, headers, |input| kafka::check(input));
}
