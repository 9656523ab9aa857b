//! The committed seed corpus, written out: `fuzz/corpus/<target>/<name>` holds exactly these
//! bytes. `cargo test -p prodbox-core --test fuzz_twins -- --ignored write_seed_corpus` writes
//! them (tokens are minted, so they are made here rather than by hand), and the twin test
//! `seed_corpus_is_committed` checks the files still match.
//!
//! Inputs found by fuzzing are kept next to them as `regression-*` files, which no code writes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use prodbox_core::Sandbox;
use prodbox_core::codec::encode_value;
use prodbox_core::token::TokenKeys;

use crate::token::{NOW_SECS, SECRET_FORGER, SECRET_K0, SECRET_K1, keys, now, seed_tokens, sign};

/// One seed: its file name and bytes.
pub(crate) type Seed = (String, Vec<u8>);

fn seed(name: &str, bytes: impl Into<Vec<u8>>) -> Seed {
    (name.to_owned(), bytes.into())
}

/// Tokens that must be refused, by name.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let hour = Duration::from_secs(3600);
    let sandbox = Sandbox::new("pr-42".parse().expect("valid key"));
    let forger = TokenKeys::new()
        .with_key("k1", SECRET_FORGER)
        .expect("valid key");
    let unknown = TokenKeys::new()
        .with_key("k9", SECRET_K1)
        .expect("valid key");
    let valid = seed_tokens()[1].clone();
    let (signed, signature) = valid.rsplit_once('.').expect("a token");
    let other = &seed_tokens()[0];
    let parts: Vec<&str> = valid.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let raw_signature = B64.decode(signature).expect("base64url");
    vec![
        (
            "forged",
            forger.mint_at(&sandbox, now(), hour).expect("mints"),
        ),
        (
            "expired",
            keys()
                .mint_at(&sandbox, now() - 2 * hour, Duration::from_secs(60))
                .expect("mints"),
        ),
        (
            "not-yet-valid",
            keys().mint_at(&sandbox, now() + hour, hour).expect("mints"),
        ),
        (
            "unknown-key-id",
            unknown.mint_at(&sandbox, now(), hour).expect("mints"),
        ),
        ("truncated", valid[..valid.len() / 2].to_owned()),
        ("no-signature", signed.to_owned()),
        ("empty-signature", format!("{signed}.")),
        (
            "padded-signature",
            format!(
                "{signed}.{}",
                base64::engine::general_purpose::URL_SAFE.encode(&raw_signature)
            ),
        ),
        (
            "standard-alphabet",
            format!(
                "{signed}.{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(&raw_signature)
            ),
        ),
        ("version-2", valid.replacen("v1.", "v2.", 1)),
        ("five-parts", format!("{valid}.AAAA")),
        (
            "spliced-claims",
            format!("v1.k1.{}.{}", other_parts[2], parts[3]),
        ),
        (
            "k0-claims-k1-signature",
            sign(&format!("v1.k0.{}", parts[2]), SECRET_K1),
        ),
        ("too-long", format!("{valid}{}", "A".repeat(1100))),
        ("empty", String::new()),
        ("dots", "...".to_owned()),
    ]
}

/// Seeds of `baggage_codec`: header sets in the `lines.rs` format.
pub(crate) fn baggage() -> Vec<Seed> {
    let token = &seed_tokens()[1];
    let mut seeds = vec![
        seed("plain", "baggage: prodbox.sandbox=pr-42\n"),
        seed(
            "multi-header",
            "baggage: userId=42, prodbox.sandbox=pr-42\n\
             baggage: prodbox.actor=alice%40example.com;p=1\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n",
        ),
        seed(
            "percent-encoding",
            "baggage: prodbox.sandbox=pr-42,prodbox.actor=J%C3%BCrgen%20%3D%2C%3B%25,\
             prodbox.origin=github.com%2Fprodbox%2Fpull%2F42\n",
        ),
        seed("percent-encoded-key", "baggage: prodbox.sandbox=pr%2D42\n"),
        seed(
            "properties",
            "baggage: k1=v1;prop1=1;prop2, prodbox.sandbox=pr-1 ; ttl=60 , k2 = v=2 ;x;y=\n",
        ),
        seed(
            "ows-tabs",
            "baggage: \t prodbox.sandbox\t=\tpr-1\t;\tp ,\t, ,\n",
        ),
        seed(
            "foreign-values",
            "baggage: note=a=b=c, name=J\u{fc}rgen, emoji=\u{1f600}, q=\"x\", e=\n",
        ),
        seed(
            "aliases",
            "baggage: sd-routing-key=pr-5, okteto-divert=dev-x, X-Route=pr-5\n",
        ),
        seed(
            "alias-and-sandbox-disagree",
            "baggage: prodbox.sandbox=pr-1,sd-routing-key=pr-2\n",
        ),
        seed(
            "legacy-carriers",
            "ot-baggage-prodbox.sandbox: pr-9\n\
             uberctx-prodbox.actor: bob\n\
             Uberctx-Prodbox.Origin: PR-9\n\
             uberctx-userid: 7\n\
             baggage: userId=1\n",
        ),
        seed(
            "legacy-carriers-disagree",
            "uberctx-prodbox.sandbox: pr-1\not-baggage-prodbox.sandbox: pr-2\n",
        ),
        seed(
            "legacy-agrees-with-baggage",
            "baggage: prodbox.sandbox=pr-3\n\
             uberctx-prodbox.sandbox: pr-3\n\
             UBERCTX-PRODBOX.SANDBOX: pr-3\n\
             uberctx-sd-routing-key: pr-3\n",
        ),
        seed(
            "legacy-percent-encoded",
            "uberctx-prodbox.sandbox: pr-4\nuberctx-prodbox.actor: a%20b\n",
        ),
        seed(
            "legacy-alias",
            "ot-baggage-sd-routing-key: pr-6\not-baggage-mirrord-session: m-1\n",
        ),
        seed(
            "binary-metadata",
            "uberctx-prodbox.sandbox-bin: cHItMQ==\nbaggage: a=1\n",
        ),
        seed("non-canonical", "baggage: Prodbox.Sandbox=pr-1\n"),
        seed(
            "unknown-member-of-ours",
            "baggage: prodbox.future=1,prodbox.sandbox=pr-1,PRODBOX.other=2\n",
        ),
        seed(
            "header-name-case",
            "BAGGAGE: prodbox.sandbox=pr-1\nBaggage: a=1\n",
        ),
        seed(
            "duplicate-same",
            "baggage: prodbox.sandbox=pr-1,prodbox.sandbox=pr-1\nbaggage: prodbox.sandbox=pr%2D1\n",
        ),
        seed(
            "duplicate-different",
            "baggage: prodbox.sandbox=pr-1\nbaggage: prodbox.sandbox=pr-2\n",
        ),
        seed("empty-members", "baggage: \nbaggage: ,,, \t ,\n"),
        seed("missing-equals", "baggage: prodbox.sandbox\n"),
        seed("empty-key", "baggage: =v,prodbox.sandbox=pr-1\n"),
        seed("key-not-token", "baggage: a b=c,prodbox.sandbox=pr-1\n"),
        seed("invalid-key-uppercase", "baggage: prodbox.sandbox=PR-42\n"),
        seed("invalid-key-hyphen", "baggage: prodbox.sandbox=-a\n"),
        seed(
            "invalid-key-too-long",
            format!("baggage: prodbox.sandbox={}\n", "a".repeat(64)),
        ),
        seed(
            "longest-key",
            format!("baggage: prodbox.sandbox={}\n", "z".repeat(63)),
        ),
        seed(
            "invalid-key-injection",
            "baggage: prodbox.sandbox=x%27%3B%20drop\n",
        ),
        seed("control-cr", b"baggage: prodbox.sandbox=pr-1\r\n".to_vec()),
        seed(
            "control-nul",
            b"baggage: a=b\x00,prodbox.sandbox=pr-1\n".to_vec(),
        ),
        seed("control-del", b"baggage: a=b\x7f\n".to_vec()),
        seed(
            "control-in-label",
            "baggage: prodbox.actor=a%0Ab,prodbox.sandbox=pr-1\n",
        ),
        seed(
            "control-c1-in-label",
            "baggage: prodbox.actor=a%C2%85b,prodbox.sandbox=pr-1\n",
        ),
        seed(
            "invalid-utf8",
            b"baggage: a=\xff\xfe,prodbox.sandbox=pr-1\n".to_vec(),
        ),
        seed(
            "invalid-percent-utf8",
            "baggage: prodbox.actor=%FF,prodbox.sandbox=pr-1\n",
        ),
        seed(
            "foreign-invalid-percent",
            "baggage: a=%FF%,prodbox.sandbox=pr-1\n",
        ),
        seed(
            "label-too-long",
            format!(
                "baggage: prodbox.sandbox=pr-1,prodbox.actor={}\n",
                "x".repeat(257)
            ),
        ),
        seed(
            "label-longest-encoded",
            format!(
                "baggage: prodbox.sandbox=pr-1,prodbox.origin={}\n",
                "%3D".repeat(256)
            ),
        ),
        seed(
            "empty-label",
            "baggage: prodbox.sandbox=pr-1,prodbox.actor=\n",
        ),
        seed(
            "labels-without-key",
            "baggage: prodbox.actor=alice,prodbox.origin=pr-1\n",
        ),
        seed("oversized", format!("baggage: big={}\n", "v".repeat(8200))),
        seed(
            "oversized-across-headers",
            format!(
                "baggage: a={}\nbaggage: prodbox.sandbox=pr-1\nbaggage: b={}\n",
                "v".repeat(4090),
                "w".repeat(4090)
            ),
        ),
        seed(
            "too-many-members",
            format!(
                "baggage: prodbox.sandbox=pr-1,{}\n",
                (0..64)
                    .map(|i| format!("m{i}={i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        seed(
            "at-the-limits",
            format!(
                "baggage: prodbox.sandbox=pr-1,{}\n",
                (0..63)
                    .map(|i| format!("m{i}={i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        seed("token-only", format!("baggage: prodbox.token={token}\n")),
        seed(
            "token-and-key",
            format!("baggage: prodbox.sandbox=pr-42,prodbox.token={token},userId=1\n"),
        ),
        seed(
            "token-and-other-key",
            format!("baggage: prodbox.sandbox=pr-7,prodbox.token={token}\n"),
        ),
        seed(
            "token-percent-encoded",
            format!("baggage: prodbox.token={}\n", encode_value(token)),
        ),
        seed("token-legacy", format!("uberctx-prodbox.token: {token}\n")),
        seed("token-garbage", "baggage: prodbox.token=v1.k1.x.y\n"),
    ];
    for (name, bad) in bad_tokens().into_iter().take(4) {
        seeds.push(seed(
            &format!("token-{name}"),
            format!("baggage: prodbox.token={bad},a=1\n"),
        ));
    }
    seeds
}

/// Seeds of `token_verify`: `A` raw tokens, `B` edits of valid ones, `C` signed claims.
pub(crate) fn token() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (i, token) in seed_tokens().iter().enumerate() {
        seeds.push(seed(&format!("A-valid-{i}"), format!("A{token}")));
    }
    for (name, token) in bad_tokens() {
        seeds.push(seed(&format!("A-{name}"), format!("A{token}")));
    }
    // Edits: [token index, (op, position, byte)*]; ops as in `token.rs`'s `apply_edit`.
    let edits: [(&str, &[u8]); 9] = [
        ("B-unchanged", &[0]),
        ("B-replace", &[1, 0, 40, b'A']),
        ("B-insert", &[2, 1, 3, b'.']),
        ("B-delete", &[3, 2, 200, 0]),
        ("B-truncate", &[4, 3, 100, 0]),
        ("B-flip-bit", &[0, 4, 255, 0]),
        ("B-splice-claims", &[1, 5, 2, 0]),
        ("B-reencode-signature", &[1, 6, 0, 0, 6, 0, 1]),
        ("B-two-edits-that-cancel", &[0, 1, 0, b'x', 2, 0, 0]),
    ];
    for (name, bytes) in edits {
        let mut data = b"B".to_vec();
        data.extend_from_slice(bytes);
        seeds.push(seed(name, data));
    }
    let t = NOW_SECS;
    let claims = [
        (
            "C-valid",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":{}}}"#, t + 3600),
        ),
        (
            "C-valid-labels",
            format!(
                r#"{{"sbx":"pr-1","act":"alice","org":"PR 1","iat":{t},"exp":{}}}"#,
                t + 60
            ),
        ),
        (
            "C-null-labels",
            format!(
                r#"{{"sbx":"pr-1","act":null,"org":null,"iat":{t},"exp":{}}}"#,
                t + 60
            ),
        ),
        (
            "C-unknown-field",
            format!(
                r#"{{"sbx":"pr-1","iat":{t},"exp":{},"admin":true}}"#,
                t + 60
            ),
        ),
        (
            "C-escaped-key",
            format!(r#"{{"sbx":"\u0070r-1","iat":{t},"exp":{}}}"#, t + 60),
        ),
        (
            "C-expired",
            format!(r#"{{"sbx":"pr-1","iat":{},"exp":{}}}"#, t - 100, t - 31),
        ),
        (
            "C-in-leeway",
            format!(r#"{{"sbx":"pr-1","iat":{},"exp":{}}}"#, t - 100, t - 29),
        ),
        (
            "C-future",
            format!(r#"{{"sbx":"pr-1","iat":{},"exp":{}}}"#, t + 31, t + 60),
        ),
        (
            "C-exp-max",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":{}}}"#, u64::MAX),
        ),
        (
            "C-exp-beyond-time",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":{}}}"#, u64::MAX / 2),
        ),
        ("C-exp-zero", r#"{"sbx":"pr-1","iat":0,"exp":0}"#.to_owned()),
        (
            "C-exp-negative",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":-1}}"#),
        ),
        (
            "C-exp-float",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":1.9e9}}"#),
        ),
        (
            "C-exp-too-big",
            format!(r#"{{"sbx":"pr-1","iat":{t},"exp":1e400}}"#),
        ),
        (
            "C-missing-key",
            format!(r#"{{"iat":{t},"exp":{}}}"#, t + 60),
        ),
        (
            "C-invalid-key",
            format!(r#"{{"sbx":"PR-1","iat":{t},"exp":{}}}"#, t + 60),
        ),
        (
            "C-control-label",
            format!(
                r#"{{"sbx":"pr-1","act":"a\u0000b","iat":{t},"exp":{}}}"#,
                t + 60
            ),
        ),
        (
            "C-empty-label",
            format!(r#"{{"sbx":"pr-1","org":"","iat":{t},"exp":{}}}"#, t + 60),
        ),
        (
            "C-long-label",
            format!(
                r#"{{"sbx":"pr-1","act":"{}","iat":{t},"exp":{}}}"#,
                "y".repeat(300),
                t + 60
            ),
        ),
        (
            "C-duplicate-field",
            format!(
                r#"{{"sbx":"pr-1","sbx":"pr-2","iat":{t},"exp":{}}}"#,
                t + 60
            ),
        ),
        ("C-not-json", "not json".to_owned()),
        ("C-array", "[1,2,3]".to_owned()),
        ("C-empty", String::new()),
    ];
    for (name, json) in claims {
        seeds.push(seed(name, format!("C{json}")));
    }
    // The verify-only key mints nothing, but its tokens verify.
    let k0 = TokenKeys::new()
        .with_key("k0", SECRET_K0)
        .expect("valid key");
    let rotated = k0
        .mint_at(
            &Sandbox::new("rot-1".parse().expect("valid key")),
            now(),
            Duration::from_secs(600),
        )
        .expect("mints");
    seeds.push(seed("A-rotated-key", format!("A{rotated}")));
    seeds
}

/// Seeds of `kafka_headers`: rdkafka header sets (a line without `:` is a null value).
pub(crate) fn kafka() -> Vec<Seed> {
    let mut seeds = vec![
        seed("no-sandbox", "content-type: application/json\n"),
        seed("baseline-foreign", "baggage: userId=7,tenant=acme\n"),
        seed("forked", "baggage: prodbox.sandbox=fork-a\n"),
        seed(
            "forked-with-foreign",
            "baggage: prodbox.sandbox=fork-a,userId=7;p=1\nbaggage: tenant=acme\n",
        ),
        seed(
            "not-forking-this-service",
            "baggage: prodbox.sandbox=plain-b\n",
        ),
        seed("disabled", "baggage: prodbox.sandbox=off-c\n"),
        seed("expired", "baggage: prodbox.sandbox=old-d\n"),
        seed("expires-later", "baggage: prodbox.sandbox=later-f\n"),
        seed(
            "unregistered",
            "baggage: prodbox.sandbox=ghost-e,prodbox.actor=eve\n",
        ),
        seed("alias", "baggage: sd-routing-key=fork-a\n"),
        seed(
            "alias-disagrees",
            "baggage: sd-routing-key=fork-a,prodbox.sandbox=plain-b\n",
        ),
        seed(
            "legacy",
            "uberctx-prodbox.sandbox: fork-a\not-baggage-prodbox.actor: bob\n",
        ),
        seed(
            "legacy-null-value",
            "uberctx-prodbox.sandbox\nbaggage: a=1\n",
        ),
        seed("null-baggage", "baggage\n"),
        seed("empty-baggage", "baggage:\n"),
        seed(
            "malformed-ours",
            "baggage: prodbox.sandbox=fork-a,prodbox.sandbox=plain-b\n",
        ),
        seed("malformed-not-ours", "baggage: this is not baggage\n"),
        seed(
            "malformed-invalid-utf8",
            b"baggage: prodbox.sandbox=fork-a,x=\xff\n".to_vec(),
        ),
        seed(
            "control-character",
            b"baggage: prodbox.sandbox=fork-a\r\n".to_vec(),
        ),
        seed("non-canonical", "baggage: PRODBOX.SANDBOX=fork-a\n"),
        seed("invalid-key", "baggage: prodbox.sandbox=Fork-A\n"),
        seed(
            "nul-in-name",
            b"baggage\x00junk: prodbox.sandbox=fork-a\nbaggage: a=1\n".to_vec(),
        ),
        seed("nul-in-value", b"baggage: a=\x00\n".to_vec()),
        seed(
            "token-only",
            format!("baggage: prodbox.token={}\n", seed_tokens()[0]),
        ),
        seed(
            "header-name-case",
            "Baggage: prodbox.sandbox=later-f\nBAGGAGE: x=1\n",
        ),
        seed(
            "oversized",
            format!("baggage: prodbox.sandbox=fork-a,big={}\n", "v".repeat(8200)),
        ),
        seed(
            "relay-at-the-limit",
            format!(
                "baggage: prodbox.sandbox=ghost-e,{}\n",
                (0..63)
                    .map(|i| format!("m{i}={i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    ];
    // 16 headers fit the filter's inline snapshot; 17 spill.
    for count in [16, 17, 40] {
        let mut text = String::new();
        for i in 0..count - 1 {
            text.push_str(&format!("x-header-{i}: {i}\n"));
        }
        text.push_str("baggage: prodbox.sandbox=fork-a\n");
        seeds.push(seed(&format!("{count}-headers"), text));
    }
    seeds
}
