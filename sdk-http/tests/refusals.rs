//! Every way `SandboxLayer` refuses a request (400, 401, 403, 429), through real servers on
//! loopback: the status, the `x-prodbox-refusal` header, the body that says why, the audit
//! record, and what the handler sees when the same request is stripped instead. Also the
//! source-network check of `accept_from`, on axum and on plain hyper.
//!
//! Audit records are process-global: every test uses sandbox keys (or refusal reasons) of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::token::TokenKeys;
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Guardrails, Sandbox, SandboxKey, TrustPolicy};
use prodbox_http::SandboxLayer;
use prodbox_testkit::{AuditLog, AuditRecord, serve};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

const SECRET: &[u8] = b"refusal-test-secret-of-32-bytes!";

/// Reports the sandbox the handler runs in and every `baggage` header it received.
async fn report(headers: HeaderMap) -> Json<Value> {
    let sandbox = prodbox_core::current();
    Json(json!({
        "sandbox": sandbox.as_ref().map(|s| s.key().to_string()),
        "actor": sandbox.as_ref().and_then(|s| s.actor().map(str::to_owned)),
        "baggage": baggage_of(&headers),
        "legacy": headers
            .keys()
            .map(|name| name.as_str())
            .filter(|name| name.starts_with("uberctx-") || name.starts_with("ot-baggage-"))
            .collect::<Vec<_>>(),
    }))
}

fn baggage_of(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("baggage")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn app(layer: SandboxLayer) -> Router {
    Router::new().route("/", get(report)).layer(layer)
}

fn key(s: &str) -> SandboxKey {
    s.parse().expect("a valid sandbox key")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    refusal: Option<String>,
    retry_after: Option<String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// The handler ran as baseline and saw no member of ours.
    fn assert_baseline(&self, what: &str) -> Value {
        assert_eq!(self.status, 200, "{what}: {self:?}");
        let seen = self.json();
        assert_eq!(seen["sandbox"], Value::Null, "{what}: {seen}");
        for value in seen["baggage"].as_array().expect("baggage is a list") {
            let value = value
                .as_str()
                .expect("baggage values are strings")
                .to_ascii_lowercase();
            assert!(
                !value.contains("prodbox."),
                "{what}: stripped members reached the handler: {seen}"
            );
        }
        seen
    }

    fn assert_refused(&self, status: u16, reason: &str, says: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(self.refusal.as_deref(), Some(reason), "{what}: {self:?}");
        assert!(self.text.starts_with("prodbox: "), "{what}: {self:?}");
        assert!(
            self.text.contains(says),
            "{what}: body should say {says:?}: {self:?}"
        );
    }
}

async fn send(addr: SocketAddr, path: &str, baggage: &[&[u8]]) -> Reply {
    let headers: Vec<(&str, &[u8])> = baggage.iter().map(|value| ("baggage", *value)).collect();
    send_headers(addr, path, &headers).await
}

async fn send_headers(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).expect("a valid header value");
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the server answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("a visible ASCII header").to_owned())
    };
    let refusal = header("x-prodbox-refusal");
    let retry_after = header("retry-after");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a text body");
    Reply {
        status,
        refusal,
        retry_after,
        text,
    }
}

async fn get_with(addr: SocketAddr, baggage: &str) -> Reply {
    send(addr, "/", &[baggage.as_bytes()]).await
}

async fn get_plain(addr: SocketAddr) -> Reply {
    send(addr, "/", &[]).await
}

/// Records for `sandbox` with `decision` and `reason`.
fn audited(audit: &AuditLog, sandbox: &str, decision: &str, reason: &str) -> Vec<AuditRecord> {
    audit
        .matching("sandbox", sandbox)
        .into_iter()
        .filter(|r| r["decision"] == decision && r["reason"] == reason)
        .collect()
}

fn keys() -> TokenKeys {
    TokenKeys::new()
        .with_key("k1", SECRET)
        .expect("a valid signing key")
}

// ---------------------------------------------------------------------------------------------
// 400: malformed or ambiguous baggage
// ---------------------------------------------------------------------------------------------

struct Malformed {
    name: &'static str,
    headers: Vec<Vec<u8>>,
    /// `x-prodbox-refusal` and the audit reason.
    reason: &'static str,
    /// A phrase of the error in the body.
    says: &'static str,
    /// The baggage headers the handler sees once stripped.
    kept: Vec<String>,
}

fn malformed_cases() -> Vec<Malformed> {
    let many: Vec<String> = (0..64).map(|i| format!("m{i}={i}")).collect();
    let pads: Vec<String> = (0..8)
        .map(|i| format!("p{i}={}", "x".repeat(1100)))
        .collect();
    let mut large: Vec<Vec<u8>> = pads.chunks(2).map(|c| c.join(",").into_bytes()).collect();
    large[0] = format!("prodbox.sandbox=big-1,{}", pads[..2].join(",")).into_bytes();
    assert!(
        large.iter().all(|h| h.len() < 8192),
        "each header alone is within the limit"
    );
    assert!(large.iter().map(Vec::len).sum::<usize>() > 8192);
    vec![
        Malformed {
            name: "uppercase key",
            headers: vec![b"tenant=acme,prodbox.sandbox=PR_1".to_vec()],
            reason: "invalid_sandbox_key",
            says: "invalid sandbox key",
            kept: vec!["tenant=acme".into()],
        },
        Malformed {
            name: "ambiguous in one header",
            headers: vec![b"prodbox.sandbox=amb-a,tenant=acme,prodbox.sandbox=amb-b".to_vec()],
            reason: "ambiguous_sandbox",
            says: "ambiguous prodbox.sandbox",
            kept: vec!["tenant=acme".into()],
        },
        Malformed {
            name: "ambiguous across headers",
            headers: vec![
                b"prodbox.sandbox=amb-c".to_vec(),
                b"other=1, prodbox.sandbox=amb-d".to_vec(),
            ],
            reason: "ambiguous_sandbox",
            says: "ambiguous prodbox.sandbox",
            kept: vec!["other=1".into()],
        },
        Malformed {
            name: "65 members",
            headers: vec![format!("prodbox.sandbox=many-1,{}", many.join(",")).into_bytes()],
            reason: "baggage_too_many_members",
            says: "more than 64 members",
            kept: vec![many.join(",")],
        },
        Malformed {
            name: "over 8192 bytes across four headers",
            headers: large,
            reason: "baggage_too_large",
            says: "the limit is 8192",
            kept: vec![pads.join(",")],
        },
        Malformed {
            name: "member without '='",
            headers: vec![b"prodbox.sandbox=mal-1,tenant=acme,no-equals-sign".to_vec()],
            reason: "baggage_malformed_member",
            says: "missing '='",
            // Nothing can be told apart: every baggage header goes.
            kept: vec![],
        },
        Malformed {
            name: "non-canonical spelling",
            headers: vec![b"Prodbox.Sandbox=nc-1,tenant=acme".to_vec()],
            reason: "baggage_non_canonical_key",
            says: "not canonical",
            kept: vec!["tenant=acme".into()],
        },
        Malformed {
            name: "invalid UTF-8",
            headers: vec![b"tenant=acme,prodbox.sandbox=\xff\xfe".to_vec()],
            reason: "baggage_invalid_utf8",
            says: "not valid UTF-8",
            kept: vec![],
        },
    ]
}

#[tokio::test]
async fn malformed_baggage_is_refused_when_strict_and_stripped_otherwise() {
    let audit = AuditLog::global();
    let accept = TrustPolicy::accept;
    let strip = TrustPolicy::strip;
    let signed = || TrustPolicy::signed(keys());
    let rejecting = [
        (
            "accept, strict",
            serve(app(SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(accept()).strict(true),
            )))
            .await,
        ),
        (
            "accept, default",
            serve(app(SandboxLayer::new(accept()))).await,
        ),
        (
            "strip, strict",
            serve(app(SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(strip()).strict(true),
            )))
            .await,
        ),
    ];
    let stripping = [
        (
            "accept, lenient",
            serve(app(SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(accept()).strict(false),
            )))
            .await,
        ),
        (
            "strip, default",
            serve(app(SandboxLayer::new(strip()))).await,
        ),
        (
            "signed, default",
            serve(app(SandboxLayer::new(signed()))).await,
        ),
    ];
    let cases = malformed_cases();
    for case in &cases {
        let headers: Vec<&[u8]> = case.headers.iter().map(Vec::as_slice).collect();
        for (server, addr) in &rejecting {
            let what = format!("{} at {server}", case.name);
            let reply = send(*addr, "/", &headers).await;
            reply.assert_refused(400, case.reason, case.says, &what);
            assert!(
                reply.text.contains("malformed sandbox baggage"),
                "{what}: {reply:?}"
            );
            assert_eq!(reply.retry_after, None, "{what}");
        }
        for (server, addr) in &stripping {
            let what = format!("{} at {server}", case.name);
            let seen = send(*addr, "/", &headers).await.assert_baseline(&what);
            assert_eq!(
                seen["baggage"],
                json!(case.kept),
                "{what}: foreign members: {seen}"
            );
        }
    }
    // One audit record per decision; no sandbox key can be read from malformed baggage.
    for reason in [
        "invalid_sandbox_key",
        "baggage_too_many_members",
        "baggage_too_large",
    ] {
        let records = audit.matching("reason", reason);
        let count = |decision: &str| records.iter().filter(|r| r["decision"] == decision).count();
        assert_eq!(
            (count("rejected"), count("stripped")),
            (3, 3),
            "{reason}: {records:?}"
        );
        assert!(
            records
                .iter()
                .all(|r| r["sandbox"] == "-" && r["direction"] == "inbound")
        );
        assert!(
            records.iter().all(|r| r["protocol"] == "http"),
            "{records:?}"
        );
    }
    // Other tests refuse ambiguous baggage too: count ours by the values the detail names.
    let ambiguous: Vec<_> = audit
        .matching("reason", "ambiguous_sandbox")
        .into_iter()
        .filter(|r| r["detail"].contains("\"amb-"))
        .collect();
    assert_eq!(ambiguous.len(), 12, "{ambiguous:?}");
    assert!(
        ambiguous.iter().any(|r| r["decision"] == "rejected"
            && r["detail"].contains("amb-a")
            && r["detail"].contains("amb-b")),
        "the detail names both values: {ambiguous:?}"
    );
}

#[tokio::test]
async fn well_formed_baggage_next_to_a_refusal_policy_still_passes() {
    // Strictness is about malformed baggage only: valid contexts and foreign-only baggage pass.
    let addr = serve(app(SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept()).strict(true),
    )))
    .await;
    let seen = get_with(
        addr,
        "tenant=acme, prodbox.sandbox=ok-strict ,prodbox.actor=al%20ice",
    )
    .await;
    assert_eq!(seen.status, 200, "{seen:?}");
    let seen = seen.json();
    assert_eq!(seen["sandbox"], "ok-strict");
    assert_eq!(seen["actor"], "al ice");
    let seen = get_with(addr, "tenant=acme")
        .await
        .assert_baseline("foreign only");
    assert_eq!(seen["baggage"], json!(["tenant=acme"]));
    let seen = get_plain(addr).await.assert_baseline("no baggage");
    assert_eq!(seen["baggage"], json!([]));

    // A valid context at a strip edge is removed, foreign members kept.
    let edge = serve(app(SandboxLayer::new(TrustPolicy::strip()))).await;
    let seen = get_with(edge, "a=1,prodbox.sandbox=edge-1,prodbox.actor=x,b=2")
        .await
        .assert_baseline("strip edge");
    assert_eq!(seen["baggage"], json!(["a=1,b=2"]));
    let audit = AuditLog::global();
    assert_eq!(
        audited(&audit, "edge-1", "stripped", "untrusted_ingress").len(),
        1
    );

    // The legacy carriers are read at an Accept hop, and removed at an edge.
    let legacy: [(&str, &[u8]); 3] = [
        ("uberctx-prodbox.sandbox", b"leg-1"),
        ("ot-baggage-prodbox.actor", b"carol"),
        ("baggage", b"a=1"),
    ];
    let reply = send_headers(addr, "/", &legacy).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        (&reply.json()["sandbox"], &reply.json()["actor"]),
        (&json!("leg-1"), &json!("carol"))
    );
    let seen = send_headers(edge, "/", &legacy)
        .await
        .assert_baseline("legacy at the edge");
    assert_eq!(
        seen["legacy"],
        json!([]),
        "legacy carriers reached the handler: {seen}"
    );
    assert_eq!(seen["baggage"], json!(["a=1"]));
    assert_eq!(
        audited(&audit, "leg-1", "stripped", "untrusted_ingress").len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// 401: tokens at a rejecting Signed edge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rejecting_signed_edge_answers_401_for_forged_expired_and_unsigned_contexts() {
    let audit = AuditLog::global();
    let keys = keys();
    let addr = serve(app(SandboxLayer::new(TrustPolicy::signed_rejecting(
        keys.clone(),
    ))))
    .await;

    let forger = TokenKeys::new()
        .with_key("k1", b"an attacker's secret of 32 bytes")
        .unwrap();
    let forged = forger
        .mint(&Sandbox::new(key("sig-forged")), Duration::from_secs(600))
        .unwrap();
    let reply = get_with(addr, &format!("prodbox.token={forged}")).await;
    reply.assert_refused(
        401,
        "unauthenticated",
        "token signature does not match",
        "forged",
    );
    // The same forgery with the plain key alongside: audited under that key.
    let reply = get_with(
        addr,
        &format!("prodbox.token={forged},prodbox.sandbox=sig-forged"),
    )
    .await;
    reply.assert_refused(
        401,
        "unauthenticated",
        "token signature does not match",
        "forged+key",
    );
    assert_eq!(
        audited(&audit, "sig-forged", "rejected", "token_bad_signature").len(),
        1,
        "{:?}",
        audit.matching("sandbox", "sig-forged")
    );
    // Claims of a token that does not verify are never read.
    assert!(
        audit
            .matching("reason", "token_bad_signature")
            .iter()
            .any(|r| r["sandbox"] == "-" && r["decision"] == "rejected")
    );

    let expired = keys
        .mint_at(
            &Sandbox::new(key("sig-expired")),
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .unwrap();
    let reply = get_with(
        addr,
        &format!("prodbox.sandbox=sig-expired,prodbox.token={expired}"),
    )
    .await;
    reply.assert_refused(401, "unauthenticated", "expired", "expired");
    assert_eq!(
        audited(&audit, "sig-expired", "rejected", "token_expired").len(),
        1
    );

    let reply = get_with(addr, "prodbox.sandbox=sig-unsigned").await;
    reply.assert_refused(401, "unauthenticated", "not signed", "unsigned");
    assert_eq!(
        audited(&audit, "sig-unsigned", "rejected", "unsigned").len(),
        1
    );

    let retired = TokenKeys::new()
        .with_key("k-old", SECRET)
        .unwrap()
        .mint(&Sandbox::new(key("sig-retired")), Duration::from_secs(600))
        .unwrap();
    let reply = get_with(addr, &format!("prodbox.token={retired}")).await;
    reply.assert_refused(
        401,
        "unauthenticated",
        "unknown or retired key",
        "unknown kid",
    );

    // A valid token runs in its sandbox, with the actor from the signed claims.
    let sandbox = Sandbox::builder("sig-valid")
        .unwrap()
        .actor("ci")
        .unwrap()
        .build();
    let token = keys.mint(&sandbox, Duration::from_secs(600)).unwrap();
    let reply = get_with(addr, &format!("tenant=acme,prodbox.token={token}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert_eq!(seen["sandbox"], "sig-valid");
    assert_eq!(seen["actor"], "ci");
    assert_eq!(audited(&audit, "sig-valid", "accepted", "trusted").len(), 1);

    // Plain traffic is not affected by a rejecting edge.
    get_plain(addr).await.assert_baseline("no baggage");
    let seen = get_with(addr, "tenant=acme")
        .await
        .assert_baseline("foreign only");
    assert_eq!(seen["baggage"], json!(["tenant=acme"]));
}

// ---------------------------------------------------------------------------------------------
// 403: the directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_directory_refuses_disabled_expired_and_unknown_sandboxes() {
    let audit = AuditLog::global();
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(key("dir-off")).disabled(true));
    directory.upsert(
        SandboxEntry::new(key("dir-old")).expires_at(SystemTime::now() - Duration::from_secs(60)),
    );
    let mut on = SandboxEntry::new(key("dir-on"));
    on.actor = Some("dir-actor".into());
    directory.upsert(on);

    let allow = serve(app(SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept()).directory(directory.clone()),
    )))
    .await;
    let refuse = serve(app(SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept())
            .directory(directory.clone())
            .unknown_sandboxes(UnknownSandbox::Refuse),
    )))
    .await;

    for addr in [allow, refuse] {
        let reply = get_with(addr, "prodbox.sandbox=dir-off").await;
        reply.assert_refused(
            403,
            "sandbox_disabled",
            "sandbox dir-off is disabled",
            "disabled",
        );
        let reply = get_with(addr, "prodbox.sandbox=dir-old").await;
        reply.assert_refused(
            403,
            "sandbox_expired",
            "sandbox dir-old has expired",
            "expired",
        );
        // A known sandbox runs, completed from its entry.
        let reply = get_with(addr, "prodbox.sandbox=dir-on").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["actor"], "dir-actor");
        get_plain(addr).await.assert_baseline("baseline");
    }
    assert_eq!(
        audited(&audit, "dir-off", "rejected", "sandbox_disabled").len(),
        2
    );
    assert_eq!(
        audited(&audit, "dir-old", "rejected", "sandbox_expired").len(),
        2
    );

    // Unknown sandboxes: allowed by default, refused when configured.
    let reply = get_with(allow, "prodbox.sandbox=dir-unknown").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["sandbox"], "dir-unknown");
    let reply = get_with(refuse, "prodbox.sandbox=dir-unknown").await;
    reply.assert_refused(403, "sandbox_unknown", "not registered", "unknown");
    assert_eq!(
        audited(&audit, "dir-unknown", "rejected", "sandbox_unknown").len(),
        1
    );

    // The kill switch takes effect on the next request, both ways.
    assert!(directory.set_disabled(&key("dir-on"), true));
    let reply = get_with(allow, "prodbox.sandbox=dir-on").await;
    reply.assert_refused(
        403,
        "sandbox_disabled",
        "dir-on is disabled",
        "switched off",
    );
    assert_eq!(
        audited(&audit, "dir-on", "rejected", "sandbox_disabled").len(),
        1
    );
    assert!(directory.set_disabled(&key("dir-on"), false));
    let reply = get_with(allow, "prodbox.sandbox=dir-on").await;
    assert_eq!(reply.status, 200, "switched back on: {reply:?}");

    // Removing the entry makes it unknown.
    assert!(directory.remove(&key("dir-on")));
    let reply = get_with(refuse, "prodbox.sandbox=dir-on").await;
    reply.assert_refused(403, "sandbox_unknown", "not registered", "removed");
}

// ---------------------------------------------------------------------------------------------
// 429: guardrails
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_spares_baseline() {
    let audit = AuditLog::global();
    let guardrails = Guardrails::builder().rate(0.001, 2).build();
    let addr = serve(app(SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept()).guardrails(guardrails),
    )))
    .await;

    for i in 0..2 {
        let reply = get_with(addr, "prodbox.sandbox=rate-1").await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.json()["sandbox"], "rate-1");
    }
    let reply = get_with(addr, "prodbox.sandbox=rate-1").await;
    reply.assert_refused(
        429,
        "rate_limited",
        "rate-1 throttled (rate_limited)",
        "third",
    );
    let retry_after: u64 = reply
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1, "{retry_after}");

    // Baseline traffic never passes through guardrails; other sandboxes have their own budget.
    for _ in 0..5 {
        get_plain(addr).await.assert_baseline("baseline");
        get_with(addr, "tenant=acme")
            .await
            .assert_baseline("foreign only");
    }
    let reply = get_with(addr, "prodbox.sandbox=rate-2").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = get_with(addr, "prodbox.sandbox=rate-1").await;
    assert_eq!(reply.status, 429, "still throttled: {reply:?}");

    assert_eq!(audited(&audit, "rate-1", "accepted", "trusted").len(), 2);
    assert_eq!(
        audited(&audit, "rate-1", "throttled", "rate_limited").len(),
        2
    );
}

#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
    chunks: Arc<Mutex<Option<mpsc::UnboundedReceiver<&'static str>>>>,
}

/// `/hold` answers once released; `/stream` streams chunks from the test, each tagged with the
/// sandbox it was produced in; `/` reports.
fn gated_app(gate: Gate, layer: SandboxLayer) -> Router {
    async fn hold(State(gate): State<Gate>) -> String {
        gate.entered
            .send(())
            .expect("the test waits for the handler");
        gate.release.notified().await;
        let seen = prodbox_core::current().map_or("baseline".to_owned(), |s| s.key().to_string());
        format!("released in {seen}")
    }
    async fn streaming(State(gate): State<Gate>) -> Body {
        let chunks = gate
            .chunks
            .lock()
            .expect("not poisoned")
            .take()
            .expect("one streaming request");
        Body::from_stream(stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            let seen =
                prodbox_core::current().map_or("baseline".to_owned(), |s| s.key().to_string());
            Some((Ok::<_, Infallible>(format!("{chunk}@{seen};")), chunks))
        }))
    }
    Router::new()
        .route("/", get(report))
        .route("/hold", get(hold))
        .route("/stream", get(streaming))
        .with_state(gate)
        .layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_budget_holds_until_the_response_is_done() {
    let audit = AuditLog::global();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
    let gate = Gate {
        entered: entered_tx,
        release: Arc::new(Notify::new()),
        chunks: Arc::new(Mutex::new(Some(chunk_rx))),
    };
    let layer = SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept())
            .guardrails(Guardrails::builder().max_concurrent(1).build()),
    );
    let addr = serve(gated_app(gate.clone(), layer)).await;

    // One request of conc-1 in flight inside its handler.
    let held = tokio::spawn(send(addr, "/hold", &[b"prodbox.sandbox=conc-1"]));
    entered.recv().await.unwrap();

    let reply = get_with(addr, "prodbox.sandbox=conc-1").await;
    reply.assert_refused(
        429,
        "too_many_concurrent",
        "conc-1 throttled",
        "second of conc-1",
    );
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
    let other = get_with(addr, "prodbox.sandbox=conc-2").await;
    assert_eq!(other.status, 200, "another sandbox: {other:?}");
    assert_eq!(other.json()["sandbox"], "conc-2");
    get_plain(addr).await.assert_baseline("baseline");

    gate.release.notify_one();
    let held = held.await.unwrap();
    assert_eq!(
        (held.status, held.text.as_str()),
        (200, "released in conc-1")
    );
    // The slot came back with the response.
    let reply = get_with(addr, "prodbox.sandbox=conc-1").await;
    assert_eq!(reply.status, 200, "admitted again: {reply:?}");
    assert_eq!(reply.json()["sandbox"], "conc-1");

    // A streaming body keeps the slot until it is done, not just until the handler returned.
    chunk_tx.send("one").unwrap();
    let mut response = reqwest::Client::new()
        .get(format!("http://{addr}/stream"))
        .header("baggage", "prodbox.sandbox=conc-3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::new();
    while body.len() < "one@conc-3;".len() {
        let chunk = response.chunk().await.unwrap().expect("first chunk");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(body, "one@conc-3;");
    let reply = get_with(addr, "prodbox.sandbox=conc-3").await;
    reply.assert_refused(
        429,
        "too_many_concurrent",
        "conc-3 throttled",
        "while streaming",
    );

    chunk_tx.send("two").unwrap();
    drop(chunk_tx);
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(body, "one@conc-3;two@conc-3;");
    let reply = get_with(addr, "prodbox.sandbox=conc-3").await;
    assert_eq!(
        reply.status, 200,
        "admitted once the body is done: {reply:?}"
    );

    assert_eq!(
        audited(&audit, "conc-1", "throttled", "too_many_concurrent").len(),
        1
    );
    assert_eq!(
        audited(&audit, "conc-3", "throttled", "too_many_concurrent").len(),
        1
    );
    assert!(audited(&audit, "conc-2", "throttled", "too_many_concurrent").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Source networks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accept_from_checks_the_peer_address_from_connect_info() {
    let audit = AuditLog::global();
    let loopback = serve(app(SandboxLayer::new(TrustPolicy::accept_from([
        "127.0.0.0/8".parse().unwrap(),
    ]))))
    .await;
    let elsewhere = serve(app(SandboxLayer::new(TrustPolicy::accept_from([
        "10.0.0.0/8".parse().unwrap(),
        "::1/128".parse().unwrap(),
    ]))))
    .await;

    let reply = get_with(loopback, "prodbox.sandbox=src-in,tenant=acme").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["sandbox"], "src-in");

    let seen = get_with(
        elsewhere,
        "prodbox.sandbox=src-out,prodbox.actor=eve,tenant=acme",
    )
    .await
    .assert_baseline("untrusted source");
    assert_eq!(seen["baggage"], json!(["tenant=acme"]));

    assert_eq!(audited(&audit, "src-in", "accepted", "trusted").len(), 1);
    let stripped = audited(&audit, "src-out", "stripped", "untrusted_source");
    assert_eq!(
        stripped.len(),
        1,
        "{:?}",
        audit.matching("sandbox", "src-out")
    );
    assert_eq!(stripped[0]["actor"], "eve");
}

mod plain_hyper {
    //! `SandboxLayer` without axum: hyper's http1 connection, hyper-util's Tower glue, and the
    //! peer address inserted as `PeerAddr` per connection.

    use super::*;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use prodbox_http::PeerAddr;
    use tower::util::MapRequestLayer;
    use tower::{ServiceBuilder, service_fn};

    async fn handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let sandbox =
            prodbox_core::current().map_or("baseline".to_owned(), |s| s.key().to_string());
        let baggage = baggage_of(req.headers()).join("|");
        Ok(Response::new(Full::new(Bytes::from(format!(
            "{sandbox} [{baggage}]"
        )))))
    }

    /// Serves `policy` on plain hyper; each request gets `tell_peer` of its connection's peer
    /// address as `PeerAddr`, if any.
    async fn serve_hyper(
        policy: TrustPolicy,
        tell_peer: fn(SocketAddr) -> Option<SocketAddr>,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let service = ServiceBuilder::new()
                    .layer(MapRequestLayer::new(move |mut req: Request<Incoming>| {
                        if let Some(peer) = tell_peer(peer) {
                            req.extensions_mut().insert(PeerAddr(peer));
                        }
                        req
                    }))
                    .layer(SandboxLayer::new(policy.clone()))
                    .service(service_fn(handler));
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                        .await;
                });
            }
        });
        addr
    }

    fn untold(_: SocketAddr) -> Option<SocketAddr> {
        None
    }

    /// What a dual-stack listener (`[::]:port`) reports for an IPv4 client.
    fn v4_mapped(peer: SocketAddr) -> Option<SocketAddr> {
        let std::net::IpAddr::V4(v4) = peer.ip() else {
            return Some(peer);
        };
        Some(SocketAddr::new(v4.to_ipv6_mapped().into(), peer.port()))
    }

    #[tokio::test]
    async fn accept_from_matches_ipv4_clients_of_a_dual_stack_listener() {
        let mapped = serve_hyper(
            TrustPolicy::accept_from(["127.0.0.0/8".parse().unwrap()]),
            v4_mapped,
        )
        .await;
        let reply = get_with(mapped, "prodbox.sandbox=hyp-mapped").await;
        assert_eq!(
            (reply.status, reply.text.as_str()),
            (200, "hyp-mapped [prodbox.sandbox=hyp-mapped]")
        );
    }

    #[tokio::test]
    async fn sandbox_layer_serves_plain_hyper_with_peer_addresses() {
        let audit = AuditLog::global();
        let accept = serve_hyper(TrustPolicy::accept(), untold).await;
        let reply = get_with(accept, "prodbox.sandbox=hyp-1,tenant=acme").await;
        assert_eq!(
            (reply.status, reply.text.as_str()),
            (200, "hyp-1 [prodbox.sandbox=hyp-1,tenant=acme]")
        );
        let reply = get_plain(accept).await;
        assert_eq!((reply.status, reply.text.as_str()), (200, "baseline []"));
        // Refusals answer through hyper too.
        let reply = get_with(accept, "prodbox.sandbox=hyp-a,prodbox.sandbox=hyp-b").await;
        reply.assert_refused(400, "ambiguous_sandbox", "ambiguous", "hyper");
        assert!(reply.text.contains("hyp-a"), "{reply:?}");

        let loopback = || TrustPolicy::accept_from(["127.0.0.0/8".parse().unwrap()]);
        let told = serve_hyper(loopback(), Some).await;
        let reply = get_with(told, "prodbox.sandbox=hyp-peer,tenant=acme").await;
        assert_eq!(
            reply.text,
            "hyp-peer [prodbox.sandbox=hyp-peer,tenant=acme]"
        );
        assert_eq!(audited(&audit, "hyp-peer", "accepted", "trusted").len(), 1);

        // Without the peer address the source is unknown, hence untrusted.
        let unknown = serve_hyper(loopback(), untold).await;
        let reply = get_with(unknown, "prodbox.sandbox=hyp-nopeer,tenant=acme").await;
        assert_eq!(
            (reply.status, reply.text.as_str()),
            (200, "baseline [tenant=acme]")
        );
        assert_eq!(
            audited(&audit, "hyp-nopeer", "stripped", "untrusted_source").len(),
            1
        );

        let ten = serve_hyper(
            TrustPolicy::accept_from(["10.0.0.0/8".parse().unwrap()]),
            Some,
        )
        .await;
        let reply = get_with(ten, "prodbox.sandbox=hyp-ten").await;
        assert_eq!((reply.status, reply.text.as_str()), (200, "baseline []"));
        assert_eq!(
            audited(&audit, "hyp-ten", "stripped", "untrusted_source").len(),
            1
        );
    }
}
