//! Stable twins of the cargo-fuzz targets `baggage_codec` and `token_verify` (`fuzz/`): the
//! same invariant code (`fuzz/invariants/*.rs`, included below), run by `cargo test` on the
//! committed corpus (`fuzz/corpus/<target>/`), on edits of it, and on generated inputs.
//!
//! The fuzz targets themselves need cargo-fuzz (`cargo fuzz run -s none <target>`, which works
//! on the stable toolchain); `docs/SECURITY.md` says how they were run and what they found.

#[path = "../../fuzz/invariants/baggage.rs"]
mod baggage;
#[path = "../../fuzz/invariants/lines.rs"]
mod lines;
#[path = "../../fuzz/invariants/seeds.rs"]
mod seeds;
#[path = "../../fuzz/invariants/token.rs"]
mod token;
#[path = "../../fuzz/invariants/twin.rs"]
mod twin;

use proptest::prelude::*;

use lines::Line;

/// Header names the codec treats specially, and a few it does not.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "baggage",
            "Baggage",
            "BAGGAGE",
            "ot-baggage-prodbox.sandbox",
            "uberctx-prodbox.sandbox",
            "uberctx-prodbox.actor",
            "ot-baggage-prodbox.origin",
            "uberctx-prodbox.token",
            "uberctx-Prodbox.Sandbox",
            "uberctx-sd-routing-key",
            "ot-baggage-x-route",
            "uberctx-prodbox.future",
            "uberctx-prodbox.sandbox-bin",
            "ot-baggage-userid",
            "traceparent",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

/// Values made of the pieces baggage is made of, often enough valid to reach every branch.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        8 => prop::sample::select(vec![
            "prodbox.sandbox", "prodbox.actor", "prodbox.origin", "prodbox.token", "prodbox.x",
            "Prodbox.Sandbox", "sd-routing-key", "X-Route", "okteto-divert", "userId",
            "=", "=", "=", ",", ",", ",", ";", " ", "\t", "%", "%2D", "%3D", "%FF", "%C3%A9",
            "%0A", "%C2%85", "pr-1", "pr-1", "pr-2", "PR", "-", "k", "v", "é", "😀", "\r",
            "v1.k1.", ".", "eyJzYngiOiJwci0xIn0",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..4),
        1 => (1..300usize).prop_map(|n| vec![b'a'; n]),
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

fn header_set() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((header_name(), prop::option::of(header_value())), 1..6)
        .prop_map(|headers: Vec<Line>| lines::render(&headers))
}

#[test]
fn seed_corpus_is_committed() {
    for (target, seeds) in [
        ("baggage_codec", seeds::baggage()),
        ("token_verify", seeds::token()),
        ("kafka_headers", seeds::kafka()),
    ] {
        let committed = twin::corpus(target);
        for (name, bytes) in seeds {
            let file = committed.iter().find(|(n, _)| *n == name);
            assert_eq!(
                file.map(|(_, b)| b),
                Some(&bytes),
                "fuzz/corpus/{target}/{name} is missing or stale: run `cargo test -p \
                 prodbox-core --test fuzz_twins -- --ignored write_seed_corpus`"
            );
        }
    }
}

/// Writes the seed corpus (`fuzz/invariants/seeds.rs`) into `fuzz/corpus/`.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand after changing the seeds"]
fn write_seed_corpus() {
    for (target, seeds) in [
        ("baggage_codec", seeds::baggage()),
        ("token_verify", seeds::token()),
        ("kafka_headers", seeds::kafka()),
    ] {
        let dir = twin::corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
}

#[test]
fn baggage_corpus_holds_the_invariants() {
    let files = twin::run_corpus("baggage_codec", baggage::check);
    assert!(files >= 50, "{files}");
}

#[test]
fn baggage_invariants_hold_on_edited_corpus_inputs() {
    twin::run(2_000, twin::mutated_corpus("baggage_codec", 6), |input| {
        baggage::check(input)
    });
}

#[test]
fn baggage_invariants_hold_on_generated_header_sets() {
    twin::run(3_000, header_set(), |input| baggage::check(input));
}

#[test]
fn baggage_invariants_hold_on_arbitrary_bytes() {
    twin::run(1_000, prop::collection::vec(any::<u8>(), 0..512), |input| {
        baggage::check(input)
    });
}

#[test]
fn token_corpus_holds_the_invariants() {
    let files = twin::run_corpus("token_verify", token::check);
    assert!(files >= 50, "{files}");
}

#[test]
fn token_invariants_hold_on_edited_corpus_inputs() {
    twin::run(1_000, twin::mutated_corpus("token_verify", 4), |input| {
        token::check(input)
    });
}

/// Mode `B`: a valid token with up to eight edits verifies only when it is unchanged.
#[test]
fn edited_valid_tokens_verify_only_when_unchanged() {
    let edits =
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(pick, edits)| {
            let mut input = vec![b'B', pick];
            input.extend(edits);
            input
        });
    twin::run(2_000, edits, |input| token::check(input));
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Mode `C`: claims around the edges (times near now and at the extremes, keys and labels
/// valid and not), signed with the real secret.
#[test]
fn signed_claims_are_checked_after_the_signature() {
    let now = token::NOW_SECS;
    let time = prop_oneof![
        4 => (now - 200..now + 200).prop_map(|t| t.to_string()),
        1 => prop::sample::select(vec![
            "0".to_owned(),
            u64::MAX.to_string(),
            (u64::MAX / 2).to_string(),
            (i64::MAX as u64).to_string(),
            "-1".to_owned(),
            "1.5".to_owned(),
            "1e30".to_owned(),
            "null".to_owned(),
            "\"1800000000\"".to_owned(),
        ]),
    ];
    let string = prop_oneof![
        3 => "[a-z0-9-]{1,8}".prop_map(|s| json_string(&s)),
        1 => "\\PC{0,6}".prop_map(|s| json_string(&s)),
        1 => prop::sample::select(vec![
            "\"PR-1\"".to_owned(),
            "\"\"".to_owned(),
            "\"a\\u0000b\"".to_owned(),
            "null".to_owned(),
            "7".to_owned(),
            format!("\"{}\"", "x".repeat(300)),
        ]),
    ];
    let field = |name: &'static str, value: BoxedStrategy<String>| {
        prop::option::weighted(0.85, value.prop_map(move |v| format!("\"{name}\":{v}")))
    };
    let claims = (
        field("sbx", string.clone().boxed()),
        field("act", string.clone().boxed()),
        field("org", string.boxed()),
        field("iat", time.clone().boxed()),
        field("exp", time.boxed()),
        any::<bool>(),
    )
        .prop_map(|(sbx, act, org, iat, exp, extra)| {
            let mut fields: Vec<String> = [sbx, act, org, iat, exp].into_iter().flatten().collect();
            if extra {
                fields.push("\"extra\":[1,{\"x\":2}]".to_owned());
            }
            format!("C{{{}}}", fields.join(",")).into_bytes()
        });
    twin::run(2_000, claims, |input| token::check(input));
}

/// Mode `A`: strings shaped like tokens, and anything else.
#[test]
fn arbitrary_tokens_verify_only_with_the_real_mac() {
    let tokens = prop_oneof![
        "v1\\.k[019]\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_=+/-]{0,44}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
    .prop_map(|token| {
        let mut input = vec![b'A'];
        input.extend(token);
        input
    });
    twin::run(1_000, tokens, |input| token::check(input));
}

/// Found by fuzzing `token_verify` (`fuzz/corpus/token_verify/regression-C-invalid-utf8-in-
/// unknown-field`): signed claims whose unknown field holds invalid UTF-8 verify, because
/// serde skips unknown fields without checking their strings. Only the key holder can sign such
/// claims, and the fields the verifier reads are checked, so it grants exactly what a
/// well-formed token would; the harness's JSON oracle had to learn it, and this keeps it so.
#[test]
fn signed_claims_with_invalid_utf8_in_an_unknown_field_verify() {
    use base64::Engine as _;
    let input = std::fs::read(
        twin::corpus_dir("token_verify").join("regression-C-invalid-utf8-in-unknown-field"),
    )
    .expect("the regression input is committed");
    token::check(&input);
    let json = input.strip_prefix(b"C").expect("a signed-claims input");
    assert!(
        std::str::from_utf8(json).is_err(),
        "the claims are not UTF-8"
    );
    let signed = format!(
        "v1.k1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    );
    let sandbox = token::verify_checked(&token::sign(&signed, token::SECRET_K1)).expect("verifies");
    assert_eq!(sandbox.key().as_str(), "pr-1");
    assert_eq!(sandbox.actor(), Some("alice"));
}
