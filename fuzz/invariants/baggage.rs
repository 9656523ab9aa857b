//! Invariants of the baggage codec (`prodbox_core::codec`) and of the ingress decision built on
//! it, over one fuzz input, shared by the cargo-fuzz target `baggage_codec` and its stable
//! proptest twin (`sdk-core/tests/fuzz_twins.rs` includes this file, with `lines.rs` and
//! `token.rs`).
//!
//! An input is a header set in the format of `lines.rs`. Each input is read by three codecs
//! (the default; one with aliases; one without legacy carriers and with small limits), and for
//! each:
//!
//! * never a panic, whatever the bytes;
//! * the sandbox key agrees with a model that finds its carriers without the codec: carriers
//!   that disagree are refused, never resolved by picking one, and an accepted key is what
//!   every carrier says;
//! * what is extracted is valid: a valid key, valid labels, foreign members that parse and are
//!   not ours;
//! * the carrier does not matter: an `http::HeaderMap` of the same headers gives the same result;
//! * round trip: what was extracted, injected into an empty carrier, extracts the same again
//!   (sandbox, token, foreign members), and injecting that once more writes the same bytes; the
//!   same merged into the original message (as an egress that copies headers does) too; the
//!   only failures allowed are the size and member limits;
//! * `mentions_ours` is sound: a message it says nothing about has nothing of ours even once its
//!   unreadable parts are dropped;
//! * stripping leaves nothing of ours;
//! * the ingress: input the codec rejects never yields a sandbox under any policy; `Strip` never
//!   admits one; `Accept` admits exactly the key sent; `Signed` admits only the sandbox of a
//!   token that verifies; nothing of ours crosses an untrusted edge.

use http::{HeaderMap, HeaderName, HeaderValue};
use prodbox_core::codec::{
    ACTOR, BaggageError, Codec, Extracted, KNOWN_ALIASES, Member, ORIGIN, SANDBOX, TOKEN,
    in_namespace,
};
use prodbox_core::{Admission, Ingress, SandboxKey, TrustPolicy};

/// Headers as the `Vec` carrier holds them.
pub(crate) type Headers = Vec<(String, Vec<u8>)>;

/// A codec and the aliases it was configured with.
pub(crate) struct Config {
    pub(crate) codec: Codec,
    aliases: &'static [&'static str],
    legacy: bool,
}

/// The codecs every input goes through.
pub(crate) fn configs() -> Vec<Config> {
    vec![
        Config {
            codec: Codec::default(),
            aliases: &[],
            legacy: true,
        },
        Config {
            codec: Codec::default().alias("sd-routing-key").alias("X-Route"),
            aliases: &["sd-routing-key", "x-route"],
            legacy: true,
        },
        Config {
            codec: Codec::default()
                .legacy_carriers(false)
                .max_bytes(256)
                .max_members(8),
            aliases: &[],
            legacy: false,
        },
    ]
}

/// The headers of one input (a line without `:` is an empty value).
pub(crate) fn headers(data: &[u8]) -> Headers {
    crate::lines::parse(data)
        .into_iter()
        .map(|(name, value)| (name, value.unwrap_or_default()))
        .collect()
}

/// Runs every check for one input.
pub(crate) fn check(data: &[u8]) {
    let headers = headers(data);
    for config in configs() {
        check_codec(&config, &headers);
    }
}

/// Runs every check of one codec on `headers`.
pub(crate) fn check_codec(config: &Config, headers: &Headers) {
    let result = config.codec.extract(headers);
    match &result {
        Ok(extracted) => {
            check_extracted(config, extracted);
            check_round_trip(config, extracted);
            check_merge(config, headers, extracted);
        }
        Err(error) => {
            // Every refusal has a stable reason and a message.
            assert!(!error.reason().is_empty());
            let _ = error.to_string();
        }
    }
    check_claimed_key(config, headers, &result);
    check_carriers_agree(config, headers, &result);
    check_mentions(config, headers, &result);
    check_strip(config, headers, &result);
    check_ingress(config, headers, &result);
}

fn is_known_member(key: &str) -> bool {
    [SANDBOX, ACTOR, ORIGIN, TOKEN]
        .iter()
        .any(|member| key.eq_ignore_ascii_case(member))
}

fn is_limit(error: &BaggageError) -> bool {
    matches!(
        error,
        BaggageError::TooLarge { .. } | BaggageError::TooManyMembers { .. }
    )
}

/// What was extracted is valid.
fn check_extracted(config: &Config, x: &Extracted) {
    if let Some(key) = x.key() {
        assert_eq!(SandboxKey::validate(key.as_str()), Ok(()));
        assert!(x.claims_anything(), "a key was read but nothing claimed");
    } else {
        assert_eq!(
            (x.actor(), x.origin()),
            (None, None),
            "labels without a key"
        );
    }
    for label in [x.actor(), x.origin()].into_iter().flatten() {
        assert!(!label.is_empty() && label.len() <= 256, "{label:?}");
        assert!(!label.chars().any(char::is_control), "{label:?}");
    }
    let foreign = x.foreign();
    assert_eq!(foreign.len(), foreign.iter_raw().count());
    assert_eq!(foreign.is_empty(), foreign.as_str().is_empty());
    for raw in foreign.iter_raw() {
        let member = Member::parse(raw)
            .unwrap_or_else(|reason| panic!("foreign member {raw:?} does not parse: {reason}"));
        assert_eq!(raw, raw.trim_matches([' ', '\t']), "untrimmed member");
        assert!(
            !is_known_member(member.key),
            "a member of ours passed as foreign: {raw:?}"
        );
        assert!(
            !config
                .aliases
                .iter()
                .any(|alias| member.key.eq_ignore_ascii_case(alias)),
            "a configured alias passed as foreign: {raw:?}"
        );
        // Only unknown members of our namespace and other tools' routing keys that this codec
        // does not read pass through as foreign while counting as ours.
        assert!(
            !config.codec.is_ours(member.key)
                || in_namespace(member.key)
                || KNOWN_ALIASES
                    .iter()
                    .any(|alias| member.key.eq_ignore_ascii_case(alias)),
            "{raw:?}"
        );
    }
}

/// Injected into an empty carrier, then extracted: the same sandbox, token and foreign members;
/// injected again: the same bytes.
fn check_round_trip(config: &Config, x: &Extracted) {
    let codec = &config.codec;
    let sandbox = x.sandbox();
    let mut out: Headers = Vec::new();
    if let Err(error) = codec.inject(sandbox.as_ref(), x.token(), x.foreign(), &mut out) {
        assert!(
            is_limit(&error),
            "inject of extracted baggage failed: {error:?}"
        );
        return;
    }
    if sandbox.is_none() && x.token().is_none() && x.foreign().is_empty() {
        assert!(out.is_empty(), "nothing to write, yet {out:?}");
        return;
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, "baggage");
    let written = out[0].1.clone();
    assert!(
        HeaderValue::from_bytes(&written).is_ok(),
        "inject wrote what no HTTP header can hold: {:?}",
        String::from_utf8_lossy(&written)
    );
    let again = codec.extract(&out).unwrap_or_else(|error| {
        panic!(
            "injected baggage {:?} does not extract: {error}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(again.sandbox(), sandbox, "round trip changed the sandbox");
    assert_eq!(again.token(), x.token(), "round trip changed the token");
    assert_eq!(
        again.foreign(),
        x.foreign(),
        "round trip changed foreign members"
    );

    let mut twice: Headers = Vec::new();
    codec
        .inject(
            again.sandbox().as_ref(),
            again.token(),
            again.foreign(),
            &mut twice,
        )
        .expect("re-injecting what was just written and read succeeds");
    assert_eq!(twice, out, "the canonical form is not a fixed point");

    let mut map = HeaderMap::new();
    codec
        .inject(sandbox.as_ref(), x.token(), x.foreign(), &mut map)
        .expect("an HTTP header map holds what the Vec carrier held");
    let values: Vec<&[u8]> = map
        .get_all("baggage")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(values, [written.as_slice()]);
    assert_eq!(codec.extract(&map).ok(), Some(again));
}

/// Merged into the original message (legacy carriers of ours removed first, as egress does):
/// one `baggage` header that extracts to the same sandbox, token and foreign members.
fn check_merge(config: &Config, headers: &Headers, x: &Extracted) {
    let codec = &config.codec;
    let sandbox = x.sandbox();
    if sandbox.is_none() && x.token().is_none() {
        return;
    }
    let mut carrier = headers.clone();
    prodbox_core::plumbing::codec::strip_legacy(codec, &mut carrier);
    if let Err(error) = codec.inject(sandbox.as_ref(), x.token(), x.foreign(), &mut carrier) {
        assert!(
            is_limit(&error),
            "merge into parsed baggage failed: {error:?}"
        );
        return;
    }
    let baggage = carrier
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("baggage"))
        .count();
    assert_eq!(baggage, 1, "{carrier:?}");
    let again = codec
        .extract(&carrier)
        .unwrap_or_else(|error| panic!("merged baggage does not extract: {error} {carrier:?}"));
    assert_eq!(again.sandbox(), sandbox, "merge changed the sandbox");
    assert_eq!(again.token(), x.token(), "merge changed the token");
    assert_eq!(
        again.foreign(),
        x.foreign(),
        "merge changed foreign members"
    );
}

/// Every value that `headers` give the sandbox key, as written, found without the codec:
/// `prodbox.sandbox` and alias members of every `baggage` header, and the legacy carriers of
/// those names.
fn claimed_keys<'a>(config: &Config, headers: &'a Headers) -> Vec<&'a [u8]> {
    let names_key = |key: &str| {
        key == SANDBOX
            || config
                .aliases
                .iter()
                .any(|alias| key.eq_ignore_ascii_case(alias))
    };
    let trim = |b: &'a [u8]| -> &'a [u8] {
        let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
        let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
        match (start, end) {
            (Some(start), Some(end)) => &b[start..=end],
            _ => &[],
        }
    };
    let mut claims = Vec::new();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("baggage") {
            for member in value.split(|&b| b == b',') {
                let pair = member.split(|&b| b == b';').next().unwrap_or_default();
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if std::str::from_utf8(trim(&pair[..eq])).is_ok_and(names_key) {
                    claims.push(trim(&pair[eq + 1..]));
                }
            }
            continue;
        }
        let lower = name.to_ascii_lowercase();
        let legacy_key = ["ot-baggage-", "uberctx-"]
            .iter()
            .find_map(|prefix| lower.strip_prefix(prefix));
        if config.legacy
            && !lower.ends_with("-bin")
            && legacy_key.is_some_and(|key| key == SANDBOX || names_key(key))
        {
            claims.push(trim(value));
        }
    }
    claims
}

/// The sandbox key, checked against a model that does not use the codec: a message whose
/// carriers give the key two different values is refused, never resolved by picking one; and
/// an accepted message's key is what every one of its carriers says.
fn check_claimed_key(config: &Config, headers: &Headers, result: &Result<Extracted, BaggageError>) {
    let claims = claimed_keys(config, headers);
    let decoded: Vec<Option<String>> = claims
        .iter()
        .map(|raw| {
            percent_encoding::percent_decode(raw)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })
        .collect();
    if let Ok(x) = result {
        for (raw, value) in claims.iter().zip(&decoded) {
            assert_eq!(
                value.as_deref(),
                x.key().map(SandboxKey::as_str),
                "accepted key {:?}, yet a carrier says {:?}",
                x.key(),
                String::from_utf8_lossy(raw)
            );
        }
        if !claims.is_empty() {
            assert!(x.key().is_some(), "a key was claimed but none read");
        }
    }
    let mut distinct: Vec<&Option<String>> = decoded.iter().collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > 1 {
        assert!(
            result.is_err(),
            "carriers disagree on the key ({distinct:?}), yet {result:?}"
        );
    }
}

fn header_map(headers: &Headers) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// The same headers in an `http::HeaderMap` decide the same.
fn check_carriers_agree(
    config: &Config,
    headers: &Headers,
    result: &Result<Extracted, BaggageError>,
) {
    let Some(map) = header_map(headers) else {
        return;
    };
    match (result, &config.codec.extract(&map)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "Vec and HeaderMap carriers disagree"),
        (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason(), "{a} / {b}"),
        (a, b) => panic!("Vec and HeaderMap carriers disagree: {a:?} / {b:?}"),
    }
}

fn is_text(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| !((b < 0x20 && b != b'\t') || b == 0x7f))
        && std::str::from_utf8(value).is_ok()
}

/// `headers` less what cannot be read: `baggage` headers keep only their well-formed members
/// (and go when they are not text); other headers stay.
fn readable_part(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter_map(|(name, value)| {
            if !name.eq_ignore_ascii_case("baggage") {
                return Some((name.clone(), value.clone()));
            }
            let text = std::str::from_utf8(value).ok().filter(|_| is_text(value))?;
            let members: Vec<&str> = text
                .split(',')
                .map(|m| m.trim_matches([' ', '\t']))
                .filter(|m| !m.is_empty() && Member::parse(m).is_ok())
                .collect();
            Some((name.clone(), members.join(",").into_bytes()))
        })
        .collect()
}

/// `mentions_ours` (which decides whether malformed baggage concerns a sandbox) is sound.
fn check_mentions(config: &Config, headers: &Headers, result: &Result<Extracted, BaggageError>) {
    let codec = &config.codec;
    let mentions = prodbox_core::plumbing::codec::mentions_ours(codec, headers);
    if let Ok(x) = result
        && x.claims_anything()
    {
        assert!(mentions, "claims something yet mentions nothing of ours");
    }
    if !mentions {
        match codec.extract(&readable_part(headers)) {
            Ok(y) => assert!(
                !y.claims_anything(),
                "mentions nothing of ours, yet its readable part claims {y:?}"
            ),
            Err(error) => assert!(
                is_limit(&error),
                "mentions nothing of ours, yet its readable part is refused: {error:?}"
            ),
        }
    }
}

/// Stripping leaves nothing of ours; stripping parsable baggage keeps the foreign members.
fn check_strip(config: &Config, headers: &Headers, result: &Result<Extracted, BaggageError>) {
    let codec = &config.codec;
    let mut stripped = headers.clone();
    codec.strip(&mut stripped);
    if let Ok(y) = codec.extract(&stripped) {
        assert!(!y.claims_anything(), "strip left {y:?} in {stripped:?}");
    }
    let mut parsable = headers.clone();
    prodbox_core::plumbing::codec::strip_parsable(codec, &mut parsable);
    if let Ok(x) = result {
        let y = codec
            .extract(&parsable)
            .unwrap_or_else(|error| panic!("strip_parsable broke parsed baggage: {error}"));
        assert!(!y.claims_anything(), "strip_parsable left {y:?}");
        assert_eq!(y.foreign(), &x.foreign().without_ours(codec));
    }
}

/// What each trust policy admits.
fn check_ingress(config: &Config, headers: &Headers, result: &Result<Extracted, BaggageError>) {
    let codec = &config.codec;
    let keys = crate::token::keys();
    let now = crate::token::now();
    let mentions = prodbox_core::plumbing::codec::mentions_ours(codec, headers);
    let policies = [
        ("accept", TrustPolicy::accept()),
        ("strip", TrustPolicy::strip()),
        ("signed", TrustPolicy::signed(keys.clone())),
        (
            "signed_rejecting",
            TrustPolicy::signed_rejecting(keys.clone()),
        ),
    ];
    for (name, policy) in policies {
        let admission = Ingress::new(policy)
            .codec(codec.clone())
            .admit_at(headers, None, now);
        match (&admission, result) {
            (Admission::Sandboxed { context, .. }, Ok(x)) => {
                let admitted = context
                    .sandbox()
                    .expect("a sandboxed admission has a sandbox");
                match name {
                    "accept" => {
                        assert_eq!(Some(admitted.key()), x.key());
                        assert_eq!(context.foreign(), x.foreign());
                    }
                    "strip" => panic!("a Strip edge admitted {admitted:?}"),
                    _ => {
                        let token = x
                            .token()
                            .unwrap_or_else(|| panic!("{name} admitted {admitted:?} unsigned"));
                        let verified = keys.verify(token, now).unwrap_or_else(|error| {
                            panic!("{name} admitted {admitted:?} with a refused token: {error}")
                        });
                        assert_eq!(admitted.key(), verified.key());
                        if let Some(plain) = x.key() {
                            assert_eq!(plain, admitted.key(), "plain key and token disagree");
                        }
                        // Only the token is authenticated: nothing else of ours travels.
                        assert_eq!(context.foreign(), &x.foreign().without_ours(codec));
                    }
                }
            }
            (Admission::Sandboxed { context, .. }, Err(error)) => panic!(
                "{name}: rejected input ({error}) yielded sandbox {:?}",
                context.sandbox()
            ),
            (Admission::Baseline { context, .. }, _) => {
                if let Some(context) = context {
                    assert!(context.sandbox().is_none(), "baseline with a sandbox");
                    if name != "accept" {
                        for member in context.foreign().iter() {
                            assert!(
                                !codec.is_ours(member.key),
                                "{name}: {:?} crossed an untrusted edge",
                                member.key
                            );
                        }
                    }
                }
            }
            (Admission::Refused(refusal), _) => assert!(!refusal.reason().is_empty()),
            (Admission::Observed { .. }, _) => panic!("{name}: observed without observe_only"),
        }
        if name == "accept"
            && let Ok(x) = result
            && x.key().is_some()
        {
            assert!(
                matches!(admission, Admission::Sandboxed { .. }),
                "accept did not admit a readable key: {admission:?}"
            );
        }
        if result.is_err() && !mentions {
            assert!(
                matches!(
                    admission,
                    Admission::Baseline {
                        context: None,
                        strip: false
                    }
                ),
                "{name}: unreadable baggage that is not ours must run as baseline untouched: \
                 {admission:?}"
            );
        }
    }
}
