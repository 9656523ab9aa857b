//! Admission decisions at an ingress: trust policies, tokens, directory, guardrails, malformed
//! baggage, and the audit record of each decision.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prodbox_core::audit::Protocol;
use prodbox_core::codec::BaggageError;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::guardrails::ThrottleReason;
use prodbox_core::token::TokenKeys;
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Admission, Guardrails, Ingress, OnInvalid, Refusal, Sandbox, TrustPolicy};
use prodbox_testkit::{AuditLog, AuditRecord};

type Headers = Vec<(String, Vec<u8>)>;

const SECRET: [u8; 32] = [7u8; 32];
const OTHER_SECRET: [u8; 32] = [9u8; 32];

fn baggage(value: &str) -> Headers {
    vec![("baggage".to_owned(), value.as_bytes().to_vec())]
}

fn keys() -> TokenKeys {
    TokenKeys::new().with_key("k1", &SECRET).expect("valid key")
}

fn sandbox(key: &str) -> Sandbox {
    Sandbox::builder(key).expect("valid key").build()
}

fn token_for(keys: &TokenKeys, sandbox: &Sandbox) -> String {
    keys.mint(sandbox, Duration::from_secs(3600)).expect("mint")
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("valid IP"))
}

/// Installs the audit capture before anything is decided.
fn audit() -> AuditLog {
    AuditLog::global()
}

/// The audit records of sandbox `key`: exactly one, with the given decision and reason, made
/// inbound on `protocol`.
fn assert_audited(key: &str, decision: &str, reason: &str, protocol: &str) -> AuditRecord {
    let records = AuditLog::global().matching("sandbox", key);
    assert_eq!(records.len(), 1, "audit records for {key}: {records:?}");
    let record = records.into_iter().next().expect("one record");
    let field = |name: &str| record.get(name).map(String::as_str);
    assert_eq!(field("decision"), Some(decision), "{record:?}");
    assert_eq!(field("reason"), Some(reason), "{record:?}");
    assert_eq!(field("protocol"), Some(protocol), "{record:?}");
    assert_eq!(field("direction"), Some("inbound"), "{record:?}");
    record
}

/// Records without a readable sandbox key (`sandbox = "-"`), told apart by a unique string in
/// their detail.
fn audited_with_detail(needle: &str) -> Vec<AuditRecord> {
    AuditLog::global()
        .all()
        .into_iter()
        .filter(|r| r.get("detail").is_some_and(|d| d.contains(needle)))
        .collect()
}

fn expect_sandboxed(admission: Admission) -> (prodbox_core::SandboxContext, bool) {
    match admission {
        Admission::Sandboxed { context, permit } => (context, permit.is_some()),
        other => panic!("expected Sandboxed, got {other:?}"),
    }
}

fn expect_refused(admission: Admission) -> Refusal {
    match admission {
        Admission::Refused(refusal) => refusal,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// `(foreign members of the context, strip)` of a baseline admission.
fn expect_baseline(admission: Admission) -> (Option<String>, bool) {
    match admission {
        Admission::Baseline { context, strip } => {
            if let Some(context) = &context {
                assert!(
                    context.sandbox().is_none(),
                    "baseline with a sandbox: {context:?}"
                );
            }
            (context.map(|c| c.foreign().as_str().to_owned()), strip)
        }
        other => panic!("expected Baseline, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Accept

#[test]
fn accept_takes_the_context_as_sent_and_keeps_foreign_members() {
    audit();
    let headers = baggage(
        "userId=7, prodbox.sandbox=t-accept-any,prodbox.actor=alice%40example.com;p=1, tenant=acme;x",
    );
    let ingress = Ingress::new(TrustPolicy::accept());
    let (context, permit) = expect_sandboxed(ingress.admit(&headers, None));
    assert!(!permit, "no guardrails configured");
    let sb = context.sandbox().expect("sandbox");
    assert_eq!(sb.key().as_str(), "t-accept-any");
    assert_eq!(sb.actor(), Some("alice@example.com"));
    assert_eq!(context.foreign().as_str(), "userId=7,tenant=acme;x");
    assert_eq!(context.token(), None);

    let record = assert_audited("t-accept-any", "accepted", "trusted", "http");
    assert_eq!(
        record.get("actor").map(String::as_str),
        Some("alice@example.com")
    );
}

#[test]
fn accept_names_the_configured_protocol_in_audits() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept()).protocol(Protocol::Grpc);
    expect_sandboxed(ingress.admit(&baggage("prodbox.sandbox=t-accept-grpc"), None));
    assert_audited("t-accept-grpc", "accepted", "trusted", "grpc");
}

#[test]
fn accept_from_listed_networks_only() {
    audit();
    let net: ipnet::IpNet = "10.0.0.0/8".parse().expect("network");
    let ingress = Ingress::new(TrustPolicy::accept_from([net]));

    let (context, _) = expect_sandboxed(ingress.admit(
        &baggage("prodbox.sandbox=t-from-inside,a=1"),
        ip("10.1.2.3"),
    ));
    assert_eq!(context.foreign().as_str(), "a=1");
    assert_audited("t-from-inside", "accepted", "trusted", "http");

    for (key, peer) in [
        ("t-from-outside", ip("192.168.1.1")),
        ("t-from-just-outside", ip("11.0.0.0")),
        ("t-from-v6", ip("fd00::1")),
        ("t-from-unknown", None),
    ] {
        let headers = baggage(&format!("a=1,prodbox.sandbox={key},b=2"));
        let (foreign, strip) = expect_baseline(ingress.admit(&headers, peer));
        assert!(strip, "{key}");
        assert_eq!(foreign.as_deref(), Some("a=1,b=2"), "{key}");
        assert_audited(key, "stripped", "untrusted_source", "http");
    }
}

#[test]
fn accept_without_a_key_has_nothing_to_route_on() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept());
    let (foreign, strip) =
        expect_baseline(ingress.admit(&baggage("prodbox.actor=t-no-key-actor,a=1"), None));
    assert!(strip);
    assert_eq!(foreign.as_deref(), Some("a=1"));
    // Only this test produces this reason in the process-wide log.
    let records = AuditLog::global().matching("reason", "no_sandbox_key");
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["decision"], "stripped", "{r:?}");
    assert_eq!(r["sandbox"], "-", "{r:?}");
    assert_eq!(r["protocol"], "http", "{r:?}");
    assert_eq!(r["direction"], "inbound", "{r:?}");
}

#[test]
fn a_token_alone_at_an_internal_hop_is_refused_not_run_as_production() {
    audit();
    let sandbox = Sandbox::builder("t-token-alone").unwrap().build();
    let token = keys().mint(&sandbox, Duration::from_secs(60)).unwrap();
    let headers = baggage(&format!("prodbox.token={token},a=1"));
    match Ingress::new(TrustPolicy::accept()).admit(&headers, None) {
        Admission::Refused(Refusal::Unauthenticated(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    // (A lenient hop strips it, as any claim it cannot route: `no_sandbox_key`, whose audit
    // record another test counts.)
}

#[test]
fn baggage_without_our_members_is_plain_baseline() {
    audit();
    for policy in [
        TrustPolicy::accept(),
        TrustPolicy::strip(),
        TrustPolicy::signed(keys()),
    ] {
        let ingress = Ingress::new(policy);
        let (foreign, strip) = expect_baseline(ingress.admit(&baggage("userId=7,k=v=w"), None));
        assert!(!strip);
        assert_eq!(foreign.as_deref(), Some("userId=7,k=v=w"));
        let (foreign, strip) = expect_baseline(ingress.admit(&Headers::new(), None));
        assert!(!strip);
        assert_eq!(foreign, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Strip

#[test]
fn strip_removes_the_context_and_keeps_foreign_members() {
    audit();
    let ingress = Ingress::new(TrustPolicy::strip());
    let headers = baggage("userId=7,prodbox.sandbox=t-strip,prodbox.actor=mallory,tenant=acme");
    let (foreign, strip) = expect_baseline(ingress.admit(&headers, ip("10.0.0.1")));
    assert!(strip);
    assert_eq!(foreign.as_deref(), Some("userId=7,tenant=acme"));
    let record = assert_audited("t-strip", "stripped", "untrusted_ingress", "http");
    assert_eq!(record.get("actor").map(String::as_str), Some("mallory"));
}

#[test]
fn strip_is_the_default_policy() {
    audit();
    let ingress = Ingress::new(TrustPolicy::default());
    let (_, strip) = expect_baseline(ingress.admit(&baggage("prodbox.sandbox=t-default"), None));
    assert!(strip);
    assert_audited("t-default", "stripped", "untrusted_ingress", "http");
}

// ---------------------------------------------------------------------------------------------
// Signed

#[test]
fn signed_accepts_a_valid_token() {
    audit();
    let keys = keys();
    let sb = Sandbox::builder("t-signed-ok")
        .expect("key")
        .actor("alice")
        .expect("actor")
        .origin("pr-1")
        .expect("origin")
        .build();
    let token = token_for(&keys, &sb);
    let headers = baggage(&format!("userId=7,prodbox.token={token}"));

    for (policy, key) in [
        (TrustPolicy::signed(keys.clone()), "t-signed-ok"),
        (TrustPolicy::signed_rejecting(keys.clone()), "t-signed-ok"),
    ] {
        let (context, _) = expect_sandboxed(Ingress::new(policy).admit(&headers, None));
        let got = context.sandbox().expect("sandbox");
        assert_eq!(got.key().as_str(), key);
        assert_eq!(got.actor(), Some("alice"));
        assert_eq!(got.origin(), Some("pr-1"));
        let expires = got.expires_at().expect("the token's expiry");
        assert!(expires > SystemTime::now() + Duration::from_secs(3500));
        assert_eq!(context.token(), Some(token.as_str()));
        assert_eq!(context.foreign().as_str(), "userId=7");
    }
    let records = AuditLog::global().matching("sandbox", "t-signed-ok");
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| {
        r.get("decision").map(String::as_str) == Some("accepted")
            && r.get("actor").map(String::as_str) == Some("alice")
            && r.get("direction").map(String::as_str) == Some("inbound")
            && r.get("protocol").map(String::as_str) == Some("http")
    }));
}

#[test]
fn signed_accepts_a_token_with_an_agreeing_plain_key() {
    audit();
    let keys = keys();
    let token = token_for(&keys, &sandbox("t-signed-agree"));
    let headers = baggage(&format!(
        "prodbox.sandbox=t-signed-agree,prodbox.token={token}"
    ));
    let (context, _) =
        expect_sandboxed(Ingress::new(TrustPolicy::signed(keys)).admit(&headers, None));
    assert_eq!(
        context.sandbox().map(|s| s.key().as_str()),
        Some("t-signed-agree")
    );
    assert_audited("t-signed-agree", "accepted", "trusted", "http");
}

/// One failing signed context, at a stripping and at a rejecting edge.
fn signed_failure(
    headers_for: impl Fn(&str) -> Headers,
    verifier: TokenKeys,
    now: SystemTime,
    key_strip: &str,
    key_reject: &str,
    reason: &str,
) {
    audit();
    let stripping = Ingress::new(TrustPolicy::signed(verifier.clone()));
    let (foreign, strip) = expect_baseline(stripping.admit_at(&headers_for(key_strip), None, now));
    assert!(strip, "{reason}");
    assert_eq!(foreign.as_deref(), Some("userId=7"), "{reason}");
    assert_audited(key_strip, "stripped", reason, "http");

    let rejecting = Ingress::new(TrustPolicy::signed_rejecting(verifier));
    let refusal = expect_refused(rejecting.admit_at(&headers_for(key_reject), None, now));
    assert!(
        matches!(refusal, Refusal::Unauthenticated(_)),
        "{reason}: {refusal:?}"
    );
    assert_eq!(refusal.reason(), "unauthenticated");
    assert_eq!(refusal.retry_after(), None);
    assert_audited(key_reject, "rejected", reason, "http");
}

#[test]
fn signed_refuses_a_forged_token() {
    let forger = TokenKeys::new().with_key("k1", &OTHER_SECRET).expect("key");
    signed_failure(
        |key| {
            let token = token_for(&forger, &sandbox(key));
            baggage(&format!(
                "userId=7,prodbox.sandbox={key},prodbox.token={token}"
            ))
        },
        keys(),
        SystemTime::now(),
        "t-forged-strip",
        "t-forged-reject",
        "token_bad_signature",
    );
}

#[test]
fn signed_refuses_an_expired_token() {
    let keys = keys();
    let minted_at = SystemTime::now();
    let mint = keys.clone();
    signed_failure(
        move |key| {
            let token = mint
                .mint_at(&sandbox(key), minted_at, Duration::from_secs(60))
                .expect("mint");
            baggage(&format!(
                "userId=7,prodbox.sandbox={key},prodbox.token={token}"
            ))
        },
        keys,
        // Past the 60 s lifetime and the 30 s leeway.
        minted_at + Duration::from_secs(3600),
        "t-expired-strip",
        "t-expired-reject",
        "token_expired",
    );
}

#[test]
fn signed_expired_token_message_says_why() {
    let keys = keys();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let token = keys
        .mint_at(&sandbox("t-expired-msg"), now, Duration::from_secs(60))
        .expect("mint");
    let headers = baggage(&format!("prodbox.token={token}"));
    let ingress = Ingress::new(TrustPolicy::signed_rejecting(keys));
    expect_sandboxed(ingress.admit_at(&headers, None, now + Duration::from_secs(59)));
    let refusal = expect_refused(ingress.admit_at(&headers, None, now + Duration::from_secs(600)));
    let Refusal::Unauthenticated(message) = &refusal else {
        panic!("{refusal:?}")
    };
    assert!(message.contains("expired"), "{message}");
}

/// `TokenKeys` tolerates 30 s of clock skew on expiry, and `verify` accepts a token 10 s past
/// its expiry. The ingress must not then refuse the request outright: at a stripping `signed`
/// edge a token 10 s past expiry would be refused while one an hour past expiry is merely
/// stripped and served as baseline.
#[test]
fn signed_token_within_the_expiry_leeway_is_not_refused() {
    audit();
    let keys = keys();
    let minted = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let token = keys
        .mint_at(&sandbox("t-leeway"), minted, Duration::from_secs(60))
        .expect("mint");
    let at = minted + Duration::from_secs(70);
    assert!(
        keys.verify(&token, at).is_ok(),
        "within the leeway, the token verifies"
    );

    let headers = baggage(&format!("prodbox.token={token}"));
    let ingress = Ingress::new(TrustPolicy::signed(keys));
    let well_past = ingress.admit_at(&headers, None, minted + Duration::from_secs(3600));
    assert!(
        matches!(well_past, Admission::Baseline { strip: true, .. }),
        "{well_past:?}"
    );

    let admission = ingress.admit_at(&headers, None, at);
    assert!(
        matches!(admission, Admission::Sandboxed { .. }),
        "a token the keyring accepts (within leeway) was not admitted: {admission:?}"
    );
}

#[test]
fn signed_refuses_an_unsigned_plain_key() {
    signed_failure(
        |key| baggage(&format!("userId=7,prodbox.sandbox={key}")),
        keys(),
        SystemTime::now(),
        "t-unsigned-strip",
        "t-unsigned-reject",
        "unsigned",
    );
}

#[test]
fn signed_refuses_a_token_whose_key_disagrees_with_the_plain_key() {
    let keys = keys();
    let mint = keys.clone();
    signed_failure(
        move |key| {
            let token = token_for(&mint, &sandbox("t-mismatch-signed"));
            baggage(&format!(
                "userId=7,prodbox.sandbox={key},prodbox.token={token}"
            ))
        },
        keys,
        SystemTime::now(),
        "t-mismatch-strip",
        "t-mismatch-reject",
        "token_key_mismatch",
    );
}

#[test]
fn signed_refuses_a_token_from_a_retired_key() {
    let old = keys();
    let rotated = old
        .clone()
        .with_key("k2", &OTHER_SECRET)
        .expect("key")
        .retire("k1");
    signed_failure(
        move |key| {
            let token = token_for(&old, &sandbox(key));
            baggage(&format!(
                "userId=7,prodbox.sandbox={key},prodbox.token={token}"
            ))
        },
        rotated,
        SystemTime::now(),
        "t-retired-strip",
        "t-retired-reject",
        "token_unknown_key",
    );
}

#[test]
fn signed_accepts_a_token_from_a_verify_only_key_during_rotation() {
    audit();
    let old = keys();
    let rotating = TokenKeys::new()
        .with_key("k2", &OTHER_SECRET)
        .expect("key")
        .with_verify_only_key("k1", &SECRET)
        .expect("key");
    let token = token_for(&old, &sandbox("t-rotation"));
    let ingress = Ingress::new(TrustPolicy::signed_rejecting(rotating));
    expect_sandboxed(ingress.admit(&baggage(&format!("prodbox.token={token}")), None));
    assert_audited("t-rotation", "accepted", "trusted", "http");
}

// ---------------------------------------------------------------------------------------------
// Directory

#[test]
fn directory_disabled_sandbox_is_refused() {
    audit();
    let directory = MemoryDirectory::new();
    let key = "t-dir-disabled".parse().expect("key");
    directory.upsert(SandboxEntry::new(key).disabled(true));
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);
    let refusal = expect_refused(ingress.admit(&baggage("prodbox.sandbox=t-dir-disabled"), None));
    assert!(
        matches!(&refusal, Refusal::Disabled(k) if k.as_str() == "t-dir-disabled"),
        "{refusal:?}"
    );
    assert_audited("t-dir-disabled", "rejected", "sandbox_disabled", "http");
}

#[test]
fn directory_kill_switch_applies_to_signed_tokens_too() {
    audit();
    let keys = keys();
    let directory = MemoryDirectory::new();
    let key = "t-dir-killed".parse().expect("key");
    directory.upsert(SandboxEntry::new(key));
    let ingress = Ingress::new(TrustPolicy::signed(keys.clone())).directory(directory.clone());
    let token = token_for(&keys, &sandbox("t-dir-killed"));
    let headers = baggage(&format!("prodbox.token={token}"));
    expect_sandboxed(ingress.admit(&headers, None));

    assert!(directory.set_disabled(&"t-dir-killed".parse().expect("key"), true));
    let refusal = expect_refused(ingress.admit(&headers, None));
    assert!(matches!(refusal, Refusal::Disabled(_)), "{refusal:?}");
    let records = AuditLog::global().matching("sandbox", "t-dir-killed");
    let decisions: Vec<_> = records
        .iter()
        .map(|r| (r["decision"].as_str(), r["reason"].as_str()))
        .collect();
    assert_eq!(
        decisions,
        [("accepted", "trusted"), ("rejected", "sandbox_disabled")]
    );
}

#[test]
fn directory_expired_sandbox_is_refused() {
    audit();
    let now = SystemTime::now();
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("t-dir-expired".parse().expect("key"))
            .expires_at(now - Duration::from_secs(60)),
    );
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);
    let refusal = expect_refused(ingress.admit(&baggage("prodbox.sandbox=t-dir-expired"), None));
    assert!(
        matches!(&refusal, Refusal::Expired(k) if k.as_str() == "t-dir-expired"),
        "{refusal:?}"
    );
    assert_audited("t-dir-expired", "rejected", "sandbox_expired", "http");
}

#[test]
fn directory_entry_expires_at_admit_time() {
    audit();
    let now = SystemTime::now();
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("t-dir-later".parse().expect("key"))
            .expires_at(now + Duration::from_secs(60)),
    );
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);
    let headers = baggage("prodbox.sandbox=t-dir-later");
    let (context, _) = expect_sandboxed(ingress.admit_at(&headers, None, now));
    assert_eq!(
        context.sandbox().and_then(Sandbox::expires_at),
        Some(now + Duration::from_secs(60)),
        "the entry's expiry is carried by the sandbox"
    );
    let refusal = expect_refused(ingress.admit_at(&headers, None, now + Duration::from_secs(61)));
    assert!(matches!(refusal, Refusal::Expired(_)), "{refusal:?}");
}

#[test]
fn directory_unknown_sandbox_refused_when_configured() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept())
        .directory(MemoryDirectory::new())
        .unknown_sandboxes(UnknownSandbox::Refuse);
    let refusal = expect_refused(ingress.admit(&baggage("prodbox.sandbox=t-dir-unknown"), None));
    assert!(
        matches!(&refusal, Refusal::Unknown(k) if k.as_str() == "t-dir-unknown"),
        "{refusal:?}"
    );
    assert_audited("t-dir-unknown", "rejected", "sandbox_unknown", "http");
}

#[test]
fn directory_unknown_sandbox_allowed_by_default_and_known_one_completed() {
    audit();
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new("t-dir-known".parse().expect("key"));
    entry.actor = Some("bob".to_owned());
    entry.origin = Some("pr-9".to_owned());
    directory.upsert(entry);
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);

    expect_sandboxed(ingress.admit(&baggage("prodbox.sandbox=t-dir-allowed"), None));
    assert_audited("t-dir-allowed", "accepted", "trusted", "http");

    let (context, _) = expect_sandboxed(ingress.admit(
        &baggage("prodbox.sandbox=t-dir-known,prodbox.actor=alice"),
        None,
    ));
    let sb = context.sandbox().expect("sandbox");
    assert_eq!(sb.actor(), Some("alice"), "the message's actor wins");
    assert_eq!(sb.origin(), Some("pr-9"), "completed from the directory");
    let record = assert_audited("t-dir-known", "accepted", "trusted", "http");
    assert_eq!(record.get("origin").map(String::as_str), Some("pr-9"));
}

// ---------------------------------------------------------------------------------------------
// Guardrails

#[test]
fn guardrails_throttle_a_second_concurrent_request() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept())
        .guardrails(Guardrails::builder().max_concurrent(1).build());
    let headers = baggage("prodbox.sandbox=t-guard");

    let first = ingress.admit(&headers, None);
    let Admission::Sandboxed {
        permit: Some(permit),
        ..
    } = first
    else {
        panic!("expected Sandboxed with a permit, got {first:?}")
    };

    let refusal = expect_refused(ingress.admit(&headers, None));
    let Refusal::Throttled(throttled) = &refusal else {
        panic!("{refusal:?}")
    };
    assert_eq!(throttled.reason, ThrottleReason::TooManyConcurrent);
    assert_eq!(throttled.sandbox.as_str(), "t-guard");
    assert!(refusal.retry_after().is_some());
    assert_eq!(refusal.reason(), "too_many_concurrent");

    // Another sandbox has its own budget.
    expect_sandboxed(ingress.admit(&baggage("prodbox.sandbox=t-guard-other"), None));

    drop(permit);
    let (_, has_permit) = expect_sandboxed(ingress.admit(&headers, None));
    assert!(has_permit);

    let records = AuditLog::global().matching("sandbox", "t-guard");
    let decisions: Vec<_> = records
        .iter()
        .map(|r| (r["decision"].as_str(), r["reason"].as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("accepted", "trusted"),
            ("throttled", "too_many_concurrent"),
            ("accepted", "trusted"),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r["protocol"] == "http" && r["direction"] == "inbound")
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed baggage

/// Ambiguous baggage naming two unique keys, so the audit record (which has no sandbox key)
/// can be found by its detail.
fn ambiguous(tag: &str) -> Headers {
    vec![
        (
            "baggage".to_owned(),
            format!("a=1,prodbox.sandbox={tag}-a").into_bytes(),
        ),
        (
            "baggage".to_owned(),
            format!("prodbox.sandbox={tag}-b").into_bytes(),
        ),
    ]
}

fn assert_malformed_audit(tag: &str, decision: &str) {
    let records = audited_with_detail(&format!("{tag}-b"));
    assert_eq!(records.len(), 1, "{tag}: {records:?}");
    let r = &records[0];
    assert_eq!(r["decision"], decision, "{r:?}");
    assert_eq!(r["reason"], "ambiguous_sandbox", "{r:?}");
    assert_eq!(r["protocol"], "http", "{r:?}");
    assert_eq!(r["direction"], "inbound", "{r:?}");
    assert_eq!(r["sandbox"], "-", "{r:?}");
}

fn expect_malformed(admission: Admission) {
    let refusal = expect_refused(admission);
    assert!(
        matches!(
            refusal,
            Refusal::Malformed(BaggageError::Ambiguous {
                member: "prodbox.sandbox",
                ..
            })
        ),
        "{refusal:?}"
    );
    assert_eq!(refusal.reason(), "ambiguous_sandbox");
}

#[test]
fn malformed_at_accept_is_rejected_by_default() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept());
    expect_malformed(ingress.admit(&ambiguous("t-mal-accept"), None));
    assert_malformed_audit("t-mal-accept", "rejected");
}

#[test]
fn malformed_at_strip_is_stripped_by_default() {
    audit();
    let ingress = Ingress::new(TrustPolicy::strip());
    let (foreign, strip) = expect_baseline(ingress.admit(&ambiguous("t-mal-strip"), None));
    assert!(strip);
    assert_eq!(foreign, None, "nothing of an unparseable baggage is kept");
    assert_malformed_audit("t-mal-strip", "stripped");
}

#[test]
fn malformed_at_signed_is_stripped_by_default() {
    audit();
    let ingress = Ingress::new(TrustPolicy::signed_rejecting(keys()));
    let (_, strip) = expect_baseline(ingress.admit(&ambiguous("t-mal-signed"), None));
    assert!(strip);
    assert_malformed_audit("t-mal-signed", "stripped");
}

#[test]
fn malformed_handling_can_be_overridden() {
    audit();
    let lenient = Ingress::new(TrustPolicy::accept()).strict(false);
    let (foreign, strip) = expect_baseline(lenient.admit(&ambiguous("t-mal-lenient"), None));
    assert!(strip);
    assert_eq!(foreign, None);
    assert_malformed_audit("t-mal-lenient", "stripped");

    let strict = Ingress::new(TrustPolicy::strip()).strict(true);
    expect_malformed(strict.admit(&ambiguous("t-mal-strict"), None));
    assert_malformed_audit("t-mal-strict", "rejected");

    let rejecting = Ingress::new(TrustPolicy::signed(keys())).on_malformed(OnInvalid::Reject);
    expect_malformed(rejecting.admit(&ambiguous("t-mal-on-malformed"), None));
    assert_malformed_audit("t-mal-on-malformed", "rejected");
}

#[test]
fn malformed_kinds_map_to_their_reasons() {
    let ingress = Ingress::new(TrustPolicy::accept());
    for (value, reason) in [
        (
            &b"prodbox.sandbox=pr-1\r\nx"[..],
            "baggage_control_character",
        ),
        (b"prodbox.sandbox=\xff", "baggage_invalid_utf8"),
        (b"prodbox.sandbox=pr-1,oops", "baggage_malformed_member"),
        (b"Prodbox.Sandbox=pr-1", "baggage_non_canonical_key"),
        (b"prodbox.actor=%FF", "baggage_invalid_percent_encoding"),
        (b"prodbox.sandbox=PR-1", "invalid_sandbox_key"),
        (b"prodbox.actor=%0A", "invalid_label"),
    ] {
        let headers: Headers = vec![("baggage".to_owned(), value.to_vec())];
        let refusal = expect_refused(ingress.admit(&headers, None));
        assert!(matches!(refusal, Refusal::Malformed(_)), "{refusal:?}");
        assert_eq!(refusal.reason(), reason);
    }
    let huge: Headers = vec![(
        "baggage".to_owned(),
        format!("prodbox.sandbox=pr-1,a={}", "x".repeat(9000)).into_bytes(),
    )];
    assert_eq!(
        expect_refused(ingress.admit(&huge, None)).reason(),
        "baggage_too_large"
    );

    // Malformed baggage that mentions nothing of ours is no sandbox request: baseline traffic
    // is never refused for it, and its headers are left alone.
    for unrelated in [
        b"a=1,oops".to_vec(),
        format!("a={}", "x".repeat(9000)).into_bytes(),
        (0..65)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes(),
    ] {
        let headers: Headers = vec![("baggage".to_owned(), unrelated)];
        let (context, strip) = expect_baseline(ingress.admit(&headers, None));
        assert!(context.is_none());
        assert!(!strip);
    }
}

#[test]
fn ingress_uses_its_codec() {
    audit();
    let ingress = Ingress::new(TrustPolicy::accept())
        .codec(prodbox_core::Codec::default().alias("sd-routing-key"));
    let (context, _) =
        expect_sandboxed(ingress.admit(&baggage("sd-routing-key=t-codec-alias,a=1"), None));
    assert_eq!(context.foreign().as_str(), "a=1");
    assert_audited("t-codec-alias", "accepted", "trusted", "http");

    let headers: Headers = vec![(
        "uberctx-prodbox.sandbox".to_owned(),
        b"t-codec-legacy".to_vec(),
    )];
    let legacy_off = Ingress::new(TrustPolicy::accept())
        .codec(prodbox_core::Codec::default().legacy_carriers(false));
    let (_, strip) = expect_baseline(legacy_off.admit(&headers, None));
    assert!(!strip, "a carrier the codec does not read is not a claim");
    assert!(
        AuditLog::global()
            .matching("sandbox", "t-codec-legacy")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Our namespace at untrusted edges

/// "Every member name in this namespace is ours: stripped at an untrusted edge" (`NAMESPACE`).
/// `Codec::strip` removes `prodbox.future` from the message, but the baseline context handed
/// to the application must not carry it onward either: it would be re-injected on every
/// outbound call, forwarding an untrusted member of our namespace past the edge.
#[test]
fn untrusted_edges_do_not_forward_unknown_members_of_our_namespace() {
    audit();
    let net: ipnet::IpNet = "10.0.0.0/8".parse().expect("network");
    let mut forwarded = Vec::new();
    for (name, ingress, key) in [
        ("strip", Ingress::new(TrustPolicy::strip()), "t-ns-strip"),
        (
            "signed",
            Ingress::new(TrustPolicy::signed(keys())),
            "t-ns-signed",
        ),
        (
            "accept_from, outside",
            Ingress::new(TrustPolicy::accept_from([net])),
            "t-ns-outside",
        ),
    ] {
        let headers = baggage(&format!("userId=7,prodbox.future=x,prodbox.sandbox={key}"));
        let (foreign, strip) = expect_baseline(ingress.admit(&headers, ip("192.168.0.1")));
        assert!(strip, "{name}");
        if foreign.as_deref() != Some("userId=7") {
            forwarded.push(format!("{name}: context carries {foreign:?} onward"));
        }
    }
    assert!(forwarded.is_empty(), "{}", forwarded.join("\n"));
}

/// The same member in a legacy carrier is not even reported as a claim, so a `Strip` edge
/// tells the caller there is nothing to strip and the header passes the edge untouched.
#[test]
fn strip_edge_reports_legacy_carriers_of_our_namespace_as_strippable() {
    audit();
    let headers: Headers = vec![("uberctx-prodbox.future".to_owned(), b"x".to_vec())];
    let admission = Ingress::new(TrustPolicy::strip()).admit(&headers, None);
    assert!(
        matches!(admission, Admission::Baseline { strip: true, .. }),
        "{admission:?}"
    );
}

// Tokens: a verifier-side maximum lifetime, and binding to the sandbox's incarnation.

#[test]
fn a_token_living_longer_than_the_verifiers_maximum_is_refused() {
    audit();
    let keys = keys();
    let now = SystemTime::now();
    // The CLI used to mint for up to 366 days; a stolen one would admit for a year.
    let year = Duration::from_secs(366 * 24 * 3600);
    // Minted by a keyring that allows it (as the old CLI did); verified with the default.
    let lenient = keys.clone().max_lifetime(Duration::MAX);
    let minted = |key: &str| lenient.mint_at(&sandbox(key), now, year).expect("mint");
    let reason = keys
        .verify(&minted("t-long"), now)
        .map(|s| s.key().to_string())
        .unwrap_err()
        .reason();
    assert_eq!(reason, "token_lifetime_too_long");
    signed_failure(
        |key| {
            baggage(&format!(
                "prodbox.sandbox={key},prodbox.token={},userId=7",
                minted(key)
            ))
        },
        keys.clone(),
        now,
        "t-long-strip",
        "t-long-reject",
        "token_lifetime_too_long",
    );
}

#[test]
fn a_token_minted_for_an_earlier_sandbox_of_the_same_key_is_refused() {
    audit();
    let keys = keys();
    let now = SystemTime::now();
    // pr-42 was deleted and made again (by the directory, just now); the token was minted
    // for neither incarnation in particular.
    let old_token = keys
        .mint_at(
            &sandbox("t-reborn"),
            now - Duration::from_secs(600),
            Duration::from_secs(3600),
        )
        .expect("mint");
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new("t-reborn".parse().expect("key"));
    entry.created_at = Some(now - Duration::from_secs(5));
    directory.upsert(entry);
    let edge = Ingress::new(TrustPolicy::signed(keys.clone())).directory(directory);
    let headers = baggage(&format!(
        "prodbox.sandbox=t-reborn,prodbox.token={old_token},userId=7"
    ));
    let (foreign, strip) = expect_baseline(edge.admit_at(&headers, None, now));
    assert!(strip);
    assert_eq!(foreign.as_deref(), Some("userId=7"));
    assert_audited("t-reborn", "stripped", "token_other_incarnation", "http");
}

#[test]
fn a_token_minted_for_the_current_incarnation_admits_it_and_no_later_one() {
    audit();
    let keys = keys();
    let now = SystemTime::now();
    let key = "t-incarnation";
    // The directory keeps creation times to the microsecond (PostgreSQL's precision).
    let created = UNIX_EPOCH
        + Duration::from_micros(
            u64::try_from(
                (now - Duration::from_secs(60))
                    .duration_since(UNIX_EPOCH)
                    .expect("after 1970")
                    .as_micros(),
            )
            .expect("fits"),
        );
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new(key.parse().expect("key"));
    entry.created_at = Some(created);
    directory.upsert(entry.clone());
    let edge = Ingress::new(TrustPolicy::signed(keys.clone())).directory(directory.clone());
    let bound = Sandbox::builder(key)
        .expect("key")
        .created_at(created)
        .build();
    let token = keys
        .mint_at(&bound, now, Duration::from_secs(600))
        .expect("mint");
    let headers = baggage(&format!("prodbox.sandbox={key},prodbox.token={token}"));
    let (context, _) = expect_sandboxed(edge.admit_at(&headers, None, now));
    assert_eq!(
        context.sandbox().and_then(Sandbox::created_at),
        Some(created)
    );

    // Deleted and made again a microsecond later: the token no longer admits.
    entry.created_at = Some(created + Duration::from_micros(1));
    directory.upsert(entry);
    let (_, strip) = expect_baseline(edge.admit_at(&headers, None, now));
    assert!(strip);
    let reasons: Vec<_> = AuditLog::global()
        .matching("sandbox", key)
        .iter()
        .map(|r| r["reason"].clone())
        .collect();
    assert_eq!(reasons, ["trusted", "token_other_incarnation"]);

    // Without a directory, nothing is known of incarnations: the signature decides.
    let plain = Ingress::new(TrustPolicy::signed(keys));
    expect_sandboxed(plain.admit_at(&headers, None, now));
}

#[test]
fn the_maximum_lifetime_is_the_keyrings_to_set_and_minting_keeps_to_it() {
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let strict = keys().max_lifetime(hour);
    let reason = |r: Result<String, prodbox_core::token::TokenError>| r.unwrap_err().reason();
    assert_eq!(
        reason(strict.mint_at(&sandbox("t-max"), now, 2 * hour)),
        "token_lifetime_too_long"
    );
    let two_hours = keys()
        .mint_at(&sandbox("t-max"), now, 2 * hour)
        .expect("within the default");
    assert_eq!(
        strict.verify(&two_hours, now).unwrap_err().reason(),
        "token_lifetime_too_long"
    );
    assert!(
        strict
            .verify(
                &strict.mint_at(&sandbox("t-max"), now, hour).expect("mint"),
                now
            )
            .is_ok()
    );
    // The default is a day.
    assert_eq!(
        reason(keys().mint_at(&sandbox("t-max"), now, 25 * hour)),
        "token_lifetime_too_long"
    );
}

#[test]
fn a_token_for_an_incarnation_the_directory_no_longer_has_is_refused() {
    audit();
    let keys = keys();
    let now = SystemTime::now();
    let bound = Sandbox::builder("t-deleted")
        .expect("key")
        .created_at(now - Duration::from_secs(60))
        .build();
    let token = keys
        .mint_at(&bound, now, Duration::from_secs(600))
        .expect("mint");
    // The sandbox was deleted: the directory has no entry (unknown sandboxes are allowed by
    // default, but this token named an incarnation that is gone).
    let edge = Ingress::new(TrustPolicy::signed(keys.clone())).directory(MemoryDirectory::new());
    let headers = baggage(&format!(
        "prodbox.sandbox=t-deleted,prodbox.token={token},userId=7"
    ));
    let (_, strip) = expect_baseline(edge.admit_at(&headers, None, now));
    assert!(strip);
    assert_audited("t-deleted", "stripped", "token_other_incarnation", "http");
}

#[test]
fn an_admitted_sandbox_names_the_incarnation_its_directory_entry_has() {
    audit();
    let created = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new("t-named".parse().expect("key"));
    entry.created_at = Some(created);
    entry.actor = Some("alice".to_owned());
    directory.upsert(entry);
    let ingress = Ingress::new(TrustPolicy::accept()).directory(directory);
    for _ in 0..2 {
        let (context, _) =
            expect_sandboxed(ingress.admit(&baggage("prodbox.sandbox=t-named"), None));
        let sandbox = context.sandbox().expect("a sandbox");
        assert_eq!(sandbox.created_at(), Some(created));
        assert_eq!(sandbox.actor(), Some("alice"));
    }
}
