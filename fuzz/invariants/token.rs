//! Invariants of the token verifier (`prodbox_core::token`) over one fuzz input, shared by the
//! cargo-fuzz target `token_verify` and its stable proptest twin (`sdk-core/tests/fuzz_twins.rs`
//! includes this file).
//!
//! The first byte of an input picks a mode:
//!
//! * `A` (or any byte other than `B` and `C`): the rest (the whole input for other bytes) is a
//!   token as it arrives. Whatever it is, `verify` may accept it only if its signature is the
//!   canonical base64url encoding of the real HMAC of everything before it, under a key id the
//!   keyring holds; and a `Signed` ingress given it as `prodbox.token` may admit only the
//!   sandbox that `verify` grants.
//! * `B`: byte 1 picks one of [`seed_tokens`] (valid at [`now`]); every following 3 bytes are
//!   one edit (replace, insert, delete, truncate, flip a bit, splice another token's part).
//!   The edited token verifies only if it is byte-identical to the original (or, spliced
//!   together, to another of the valid tokens).
//! * `C`: the rest is the claims JSON, signed here with the real secret: what `verify` does
//!   after the signature check (claims parsing, expiry and issue-time arithmetic, key and label
//!   validation) must agree with the claims, and fail only in the documented ways.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use prodbox_core::codec::encode_value;
use prodbox_core::token::{TokenError, TokenKeys};
use prodbox_core::{Admission, Ingress, Sandbox, TrustPolicy};
use sha2::Sha256;

/// The fixed "now" of every check, in Unix seconds (2027-01-15): seeds stay valid forever.
pub(crate) const NOW_SECS: u64 = 1_800_000_000;
/// The active key's secret.
pub(crate) const SECRET_K1: &[u8] = b"prodbox-fuzz-secret-k1-32-bytes!";
/// A verify-only key (the previous one during a rotation).
pub(crate) const SECRET_K0: &[u8] = b"prodbox-fuzz-secret-k0-32-bytes!";
/// A secret the verifier does not hold: tokens signed with it are forgeries.
pub(crate) const SECRET_FORGER: &[u8] = b"not-the-secret-but-32-bytes-long";
/// The default clock-skew leeway of `TokenKeys`.
const LEEWAY_SECS: u64 = 30;
/// The default maximum token lifetime of `TokenKeys`.
const MAX_LIFETIME_SECS: u64 = prodbox_core::limits::DEFAULT_MAX_TOKEN_LIFETIME.as_secs();

/// [`NOW_SECS`] as a time.
pub(crate) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// The verifier's keyring: `k1` mints and verifies, `k0` only verifies.
pub(crate) fn keys() -> TokenKeys {
    TokenKeys::new()
        .with_verify_only_key("k0", SECRET_K0)
        .and_then(|keys| keys.with_key("k1", SECRET_K1))
        .expect("valid fuzz keys")
}

fn secret_of(kid: &str) -> Option<&'static [u8]> {
    match kid {
        "k1" => Some(SECRET_K1),
        "k0" => Some(SECRET_K0),
        _ => None,
    }
}

fn mac(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Signs `signed` (`v1.<kid>.<claims>`) with `secret`, as the minting side does.
pub(crate) fn sign(signed: &str, secret: &[u8]) -> String {
    format!("{signed}.{}", B64.encode(mac(secret, signed.as_bytes())))
}

/// Valid tokens at [`now`]: plain, with actor and origin (percent-worthy characters included),
/// from the verify-only key, a 63-character key, and one that expires in a second.
pub(crate) fn seed_tokens() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let k1 = keys();
        let k0 = TokenKeys::new()
            .with_key("k0", SECRET_K0)
            .expect("valid fuzz key");
        let hour = Duration::from_secs(3600);
        let sandbox = |key: &str| Sandbox::builder(key).expect("valid seed key");
        let full = sandbox("pr-42")
            .actor("alice@example.com, \"the reviewer\"; =%")
            .and_then(|b| b.origin("github.com/prodbox/prodbox/pull/42"))
            .expect("valid seed labels")
            .build();
        let long = "a".repeat(62) + "z";
        [
            k1.mint_at(&sandbox("pr-7").build(), now(), hour),
            k1.mint_at(&full, now(), hour),
            k0.mint_at(&sandbox("dev-bob").build(), now(), hour),
            k1.mint_at(&sandbox(&long).build(), now(), hour),
            k1.mint_at(&sandbox("short").build(), now(), Duration::from_secs(1)),
        ]
        .into_iter()
        .map(|token| token.expect("seed tokens mint"))
        .collect()
    })
}

/// Runs every check for one input.
pub(crate) fn check(data: &[u8]) {
    match data.split_first() {
        Some((b'B', rest)) => check_mutated(rest),
        Some((b'C', rest)) => check_signed_claims(rest),
        Some((b'A', rest)) => check_raw(rest),
        _ => check_raw(data),
    }
}

/// `keys().verify(token, now())`, with the oracle applied to what it accepts.
pub(crate) fn verify_checked(token: &str) -> Result<Sandbox, TokenError> {
    let result = keys().verify(token, now());
    match &result {
        Ok(sandbox) => check_accepted(token, sandbox),
        Err(error) => {
            // Every error has a stable reason and a message.
            assert!(error.reason().starts_with("token_"), "{error:?}");
            let _ = error.to_string();
        }
    }
    result
}

/// An accepted token: four parts, a known key id, a signature that is exactly the canonical
/// encoding of the real MAC, and claims that match the sandbox granted and are in force.
fn check_accepted(token: &str, sandbox: &Sandbox) {
    assert!(
        token.len() <= 1024,
        "accepted a token of {} bytes",
        token.len()
    );
    let (signed, signature) = token
        .rsplit_once('.')
        .expect("an accepted token has a signature part");
    let mut parts = signed.splitn(3, '.');
    let (version, kid, payload) = (parts.next(), parts.next(), parts.next());
    assert_eq!(version, Some("v1"), "accepted {token:?}");
    let kid = kid.expect("an accepted token has a key id");
    let secret = secret_of(kid).unwrap_or_else(|| panic!("accepted unknown key id {kid:?}"));
    assert_eq!(
        signature,
        B64.encode(mac(secret, signed.as_bytes())),
        "accepted a signature that is not the canonical encoding of the MAC: {token:?}"
    );
    let payload = payload.expect("an accepted token has claims");
    let json = B64.decode(payload).expect("accepted claims are base64url");
    check_claims_granted(&claims_json(&json), sandbox);
}

/// Accepted claims as JSON. The verifier skips unknown fields without checking that their strings
/// are UTF-8 (serde's `IgnoredAny`), so accepted claims may hold invalid UTF-8 there (found by
/// fuzzing; `regression-C-invalid-utf8-in-unknown-field`): only the fields it reads must be
/// valid, and they are compared here.
fn claims_json(json: &[u8]) -> serde_json::Value {
    serde_json::from_str(&String::from_utf8_lossy(json)).expect("accepted claims are JSON")
}

/// The sandbox granted for `claims` is exactly what they say, and they are in force at `now`.
fn check_claims_granted(claims: &serde_json::Value, sandbox: &Sandbox) {
    assert_eq!(
        claims.get("sbx").and_then(serde_json::Value::as_str),
        Some(sandbox.key().as_str()),
        "{claims}"
    );
    let label = |name: &str| claims.get(name).and_then(serde_json::Value::as_str);
    assert_eq!(label("act"), sandbox.actor(), "{claims}");
    assert_eq!(label("org"), sandbox.origin(), "{claims}");
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .expect("accepted claims have an expiry");
    let iat = claims
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .expect("accepted claims have an issue time");
    assert!(
        exp.saturating_add(LEEWAY_SECS) > NOW_SECS,
        "accepted an expired token: {claims}"
    );
    assert!(
        iat <= NOW_SECS + LEEWAY_SECS,
        "accepted a token issued in the future: {claims}"
    );
    assert!(
        exp.saturating_sub(iat) <= MAX_LIFETIME_SECS,
        "accepted a token that lives longer than the maximum: {claims}"
    );
    let created = claims.get("crt").and_then(serde_json::Value::as_u64);
    assert_eq!(
        sandbox.created_at(),
        created.map(|micros| UNIX_EPOCH + Duration::from_micros(micros)),
        "the sandbox names exactly the incarnation the claims do: {claims}"
    );
    assert_eq!(
        sandbox.expires_at(),
        Some(UNIX_EPOCH + Duration::from_secs(exp.saturating_add(LEEWAY_SECS))),
        "the sandbox must live exactly as long as the token is accepted: {claims}"
    );
    assert!(!sandbox.is_expired_at(now()));
}

/// A token as it arrives, alone and as the `prodbox.token` member at a `Signed` edge.
fn check_raw(bytes: &[u8]) {
    let token = String::from_utf8_lossy(bytes);
    let verified = verify_checked(&token).ok();
    check_signed_ingress(&token, verified.as_ref());
}

/// A `Signed` ingress admits exactly the sandbox `verify` grants, and nothing for a token it
/// refuses.
fn check_signed_ingress(token: &str, verified: Option<&Sandbox>) {
    let baggage = format!("userId=7,prodbox.token={}", encode_value(token));
    let headers = vec![("baggage".to_owned(), baggage.into_bytes())];
    for policy in [
        TrustPolicy::signed(keys()),
        TrustPolicy::signed_rejecting(keys()),
    ] {
        match Ingress::new(policy).admit_at(&headers, None, now()) {
            Admission::Sandboxed { context, .. } => {
                let admitted = context
                    .sandbox()
                    .expect("a sandboxed admission has a sandbox");
                let verified = verified.unwrap_or_else(|| {
                    panic!("a Signed edge admitted {admitted:?} for a refused token {token:?}")
                });
                assert_eq!(admitted.key(), verified.key());
            }
            Admission::Baseline { context, strip } => {
                assert!(verified.is_none(), "a valid token was stripped: {token:?}");
                assert!(strip, "an unverified token must be stripped");
                if let Some(context) = context {
                    assert!(context.sandbox().is_none());
                }
            }
            Admission::Refused(refusal) => {
                assert!(verified.is_none(), "a valid token was refused: {refusal}");
            }
            Admission::Observed { .. } => panic!("observed without observe_only"),
        }
    }
}

/// One edit of a token, from three fuzz bytes.
fn apply_edit(token: &mut Vec<u8>, edit: &[u8], others: &[String]) {
    let [op, at, byte] = [edit[0], edit[1], edit[2]];
    let len = token.len();
    let at = usize::from(at);
    match op % 7 {
        0 if len > 0 => token[at % len] = byte,
        1 => token.insert(at % (len + 1), byte),
        2 if len > 0 => {
            token.remove(at % len);
        }
        3 => token.truncate(at % (len + 1)),
        4 if len > 0 => token[at % len] ^= 1 << (byte % 8),
        5 => {
            // Splice part `at % 4` of another valid token into this one.
            let other = &others[usize::from(byte) % others.len()];
            let part = at % 4;
            let text = String::from_utf8_lossy(token).into_owned();
            let mut mine: Vec<&str> = text.split('.').collect();
            if let (Some(slot), Some(theirs)) = (mine.get_mut(part), other.split('.').nth(part)) {
                *slot = theirs;
            }
            *token = mine.join(".").into_bytes();
        }
        6 => {
            // Re-encode the signature with its padding or in the standard alphabet: the same
            // bytes, written another way.
            let text = String::from_utf8_lossy(token).into_owned();
            if let Some((signed, signature)) = text.rsplit_once('.')
                && let Ok(raw) = B64.decode(signature)
            {
                let other = if byte % 2 == 0 {
                    base64::engine::general_purpose::URL_SAFE.encode(raw)
                } else {
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
                };
                *token = format!("{signed}.{other}").into_bytes();
            }
        }
        _ => {}
    }
}

/// A valid token with edits verifies only when it is byte-identical to the original.
fn check_mutated(data: &[u8]) {
    let seeds = seed_tokens();
    let Some((&pick, edits)) = data.split_first() else {
        return;
    };
    let original = &seeds[usize::from(pick) % seeds.len()];
    let granted = verify_checked(original).expect("seed tokens are valid at the fixed time");
    let mut token = original.clone().into_bytes();
    for edit in edits.chunks_exact(3) {
        apply_edit(&mut token, edit, seeds);
    }
    let token = String::from_utf8_lossy(&token).into_owned();
    // Edits may splice parts of the other valid tokens in: the result verifies only when it is
    // byte for byte one of them.
    match verify_checked(&token) {
        Ok(sandbox) => {
            let same = seeds
                .iter()
                .find(|seed| **seed == token)
                .unwrap_or_else(|| {
                    panic!("an edited token verified: {token:?} (from {original:?})")
                });
            let granted = if same == original {
                granted
            } else {
                verify_checked(same).expect("seed tokens are valid")
            };
            assert_eq!(sandbox, granted);
        }
        Err(_) => assert!(
            !seeds.contains(&token),
            "a valid token stopped verifying: {token:?}"
        ),
    }
    check_signed_ingress(&token, verify_checked(&token).ok().as_ref());
    // Time alone turns a valid token into an expired or not-yet-valid one.
    let keys = keys();
    let later = now() + Duration::from_secs(10 * 365 * 86_400);
    assert!(matches!(
        keys.verify(original, later),
        Err(TokenError::Expired { .. })
    ));
    let earlier = now() - Duration::from_secs(86_400);
    assert_eq!(keys.verify(original, earlier), Err(TokenError::NotYetValid));
}

/// Claims signed with the real secret: what happens after the signature check.
fn check_signed_claims(json: &[u8]) {
    let signed = format!("v1.k1.{}", B64.encode(json));
    let token = sign(&signed, SECRET_K1);
    match verify_checked(&token) {
        Ok(sandbox) => {
            check_claims_granted(&claims_json(json), &sandbox);
        }
        Err(error) => assert!(
            matches!(
                error,
                TokenError::TooLong { .. }
                    | TokenError::InvalidClaims(_)
                    | TokenError::Expired { .. }
                    | TokenError::NotYetValid
                    | TokenError::LifetimeTooLong { .. }
            ),
            "a correctly signed token was refused as {error:?}"
        ),
    }
    // The same claims under a key the verifier does not hold are a forgery.
    let forged = sign(&signed, SECRET_FORGER);
    assert!(
        verify_checked(&forged).is_err(),
        "a forged token verified: {forged:?}"
    );
    let unknown = sign(&format!("v1.k9.{}", B64.encode(json)), SECRET_K1);
    assert!(
        verify_checked(&unknown).is_err(),
        "a token of an unknown key id verified"
    );
}
