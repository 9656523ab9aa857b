//! Every way the gRPC server layer refuses a call, through real tonic servers on loopback: the
//! status code, the message that says why, the `x-prodbox-refusal` (and `retry-after`)
//! metadata, the audit record (protocol `grpc`), and that the handler was never reached. Also
//! the client side failing closed: malformed outbound baggage and an open circuit breaker stop
//! a sandboxed call before it leaves the process.
//!
//! Audit records are process-global: every test uses sandbox keys (or refusal reasons) of its own.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::token::TokenKeys;
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{FutureExt, Guardrails, Sandbox, SandboxKey, TrustPolicy};
use prodbox_grpc::{PropagateSandboxLayer, SandboxInterceptor, SandboxLayer};
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::echo::{Ping, Seen};
use prodbox_testkit::grpc::{EchoService, baggage_entries, channel, serve_echo, uri};
use prodbox_testkit::{AuditLog, AuditRecord};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tower::ServiceBuilder;
use tower::layer::util::Identity;

const SECRET: &[u8] = b"grpc-refusal-secret-of-32-bytes!";

fn key(s: &str) -> SandboxKey {
    s.parse().expect("a valid sandbox key")
}

/// A plain tonic client, no prodbox: metadata is set by hand.
fn plain(addr: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::new(channel(addr))
}

fn with_baggage<T>(message: T, baggage: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for value in baggage {
        let value = MetadataValue::try_from(*value).expect("ASCII metadata");
        request.metadata_mut().append("baggage", value);
    }
    request
}

async fn unary(addr: SocketAddr, baggage: &[&str]) -> Result<Seen, Status> {
    plain(addr)
        .unary(with_baggage(Ping { id: 1, count: 0 }, baggage))
        .await
        .map(tonic::Response::into_inner)
}

fn refused<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) -> Status {
    match result {
        Ok(reply) => panic!("{what}: expected a refusal, got {reply:?}"),
        Err(status) => status,
    }
}

/// `status` has `code`, a message that says why, and `reason` in `x-prodbox-refusal`.
fn assert_refused(status: &Status, code: Code, reason: &str, says: &str, what: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().starts_with("prodbox: "),
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains(says),
        "{what}: the message should say {says:?}: {status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("x-prodbox-refusal")
            .and_then(|v| v.to_str().ok()),
        Some(reason),
        "{what}: {status:?}"
    );
}

/// Records for `sandbox` with `decision` and `reason`, all on gRPC.
fn audited(audit: &AuditLog, sandbox: &str, decision: &str, reason: &str) -> Vec<AuditRecord> {
    let records: Vec<AuditRecord> = audit
        .matching("sandbox", sandbox)
        .into_iter()
        .filter(|r| r["decision"] == decision && r["reason"] == reason)
        .collect();
    assert!(
        records.iter().all(|r| r["protocol"] == "grpc"),
        "{records:?}"
    );
    records
}

// ---------------------------------------------------------------------------------------------
// INVALID_ARGUMENT: malformed sandbox metadata at a strict server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_metadata_at_a_strict_server_is_invalid_argument() {
    let audit = AuditLog::global();
    let echo = EchoService::new("strict");
    let strict = serve_echo(
        SandboxLayer::from_ingress(prodbox_core::Ingress::new(TrustPolicy::accept()).strict(true)),
        echo.clone(),
    )
    .await;
    let baggage = ["tenant=acme,prodbox.sandbox=PR_1"];
    let status = refused(unary(strict, &baggage).await, "unary");
    assert_refused(
        &status,
        Code::InvalidArgument,
        "invalid_sandbox_key",
        "invalid sandbox key",
        "unary",
    );
    assert!(
        status.message().contains("malformed sandbox baggage"),
        "{status:?}"
    );
    assert!(status.metadata().get("retry-after").is_none());
    // Streaming calls are refused the same way, before the handler runs.
    let status = refused(
        plain(strict)
            .server_stream(with_baggage(Ping { id: 1, count: 3 }, &baggage))
            .await,
        "server stream",
    );
    assert_refused(
        &status,
        Code::InvalidArgument,
        "invalid_sandbox_key",
        "invalid sandbox key",
        "server stream",
    );
    // Ambiguous contexts too.
    let status = refused(
        unary(
            strict,
            &["prodbox.sandbox=grpc-amb-a", "prodbox.sandbox=grpc-amb-b"],
        )
        .await,
        "ambiguous",
    );
    assert_refused(
        &status,
        Code::InvalidArgument,
        "ambiguous_sandbox",
        "ambiguous prodbox.sandbox",
        "ambiguous",
    );
    assert_eq!(echo.calls(), 0, "the handler was never reached");

    // Valid contexts pass the strict server.
    let seen = unary(strict, &["prodbox.sandbox=grpc-strict-ok"])
        .await
        .expect("a valid context passes");
    assert_eq!(seen.sandbox, "grpc-strict-ok");

    // The same metadata at a lenient server is stripped: baseline, foreign members kept.
    let lenient = serve_echo(
        SandboxLayer::from_ingress(prodbox_core::Ingress::new(TrustPolicy::accept()).strict(false)),
        EchoService::new("lenient"),
    )
    .await;
    let seen = unary(lenient, &baggage)
        .await
        .expect("stripped, not refused");
    assert_eq!(seen.sandbox, "");
    assert_eq!(baggage_entries(&seen), ["tenant=acme"]);

    let records: Vec<_> = audit
        .matching("reason", "invalid_sandbox_key")
        .into_iter()
        .filter(|r| r["protocol"] == "grpc")
        .collect();
    let count = |decision: &str| records.iter().filter(|r| r["decision"] == decision).count();
    assert_eq!(
        (count("rejected"), count("stripped")),
        (2, 1),
        "{records:?}"
    );
    assert!(records.iter().all(|r| r["direction"] == "inbound"));
}

#[tokio::test]
async fn malformed_metadata_that_mentions_nothing_of_ours_is_never_refused() {
    let echo = EchoService::new("strict-foreign");
    let strict = serve_echo(
        SandboxLayer::from_ingress(prodbox_core::Ingress::new(TrustPolicy::accept()).strict(true)),
        echo.clone(),
    )
    .await;
    // Someone else's broken baggage is no sandbox request: baseline, not INVALID_ARGUMENT.
    let seen = unary(strict, &["tenant=acme,no-equals-sign"])
        .await
        .expect("baseline traffic is never refused for baggage that is not ours");
    assert_eq!(seen.sandbox, "");
    assert_eq!(echo.calls(), 1);
}

#[tokio::test]
async fn contexts_from_untrusted_edges_and_sources_are_stripped_before_the_handler() {
    let audit = AuditLog::global();
    // A public edge: the context is removed, the other members kept.
    let edge = serve_echo(
        SandboxLayer::new(TrustPolicy::strip()),
        EchoService::new("edge"),
    )
    .await;
    let seen = plain(edge)
        .unary({
            let mut request = with_baggage(
                Ping { id: 1, count: 0 },
                &["a=1,prodbox.sandbox=grpc-edge,prodbox.actor=x,b=2"],
            );
            request.metadata_mut().insert(
                "uberctx-prodbox.sandbox",
                MetadataValue::from_static("grpc-edge"),
            );
            request
        })
        .await
        .expect("stripped, not refused")
        .into_inner();
    assert_eq!(seen.sandbox, "");
    assert_eq!(baggage_entries(&seen), ["a=1,b=2"]);
    assert!(!audited(&audit, "grpc-edge", "stripped", "untrusted_ingress").is_empty());

    // `accept_from` finds the peer address in tonic's connection info: loopback is trusted,
    let trusted = serve_echo(
        SandboxLayer::new(TrustPolicy::accept_from(["127.0.0.0/8"
            .parse()
            .expect("a network")])),
        EchoService::new("trusted"),
    )
    .await;
    let seen = unary(trusted, &["prodbox.sandbox=grpc-from-lo,b=2"])
        .await
        .unwrap();
    assert_eq!(seen.sandbox, "grpc-from-lo");
    // ... and a peer outside the networks is stripped.
    let elsewhere = serve_echo(
        SandboxLayer::new(TrustPolicy::accept_from(["10.0.0.0/8"
            .parse()
            .expect("a network")])),
        EchoService::new("elsewhere"),
    )
    .await;
    let seen = unary(elsewhere, &["prodbox.sandbox=grpc-from-far,b=2"])
        .await
        .expect("stripped, not refused");
    assert_eq!(seen.sandbox, "");
    assert_eq!(baggage_entries(&seen), ["b=2"]);
    assert_eq!(
        audited(&audit, "grpc-from-far", "stripped", "untrusted_source").len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// RESOURCE_EXHAUSTED: guardrails
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_throttled_sandbox_is_resource_exhausted_with_retry_after() {
    let audit = AuditLog::global();
    let echo = EchoService::new("rated");
    let addr = serve_echo(
        SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::accept())
                .guardrails(Guardrails::builder().rate(0.001, 1).build()),
        ),
        echo.clone(),
    )
    .await;
    let first = unary(addr, &["prodbox.sandbox=grpc-rate-1"])
        .await
        .expect("the first call is within the burst");
    assert_eq!(first.sandbox, "grpc-rate-1");
    let status = refused(
        unary(addr, &["prodbox.sandbox=grpc-rate-1"]).await,
        "second call",
    );
    assert_refused(
        &status,
        Code::ResourceExhausted,
        "rate_limited",
        "sandbox grpc-rate-1 throttled (rate_limited)",
        "second call",
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    // One token per 1,000 s: the wait is about that long.
    assert!((900..=1000).contains(&retry_after), "{retry_after}");
    assert_eq!(
        echo.calls(),
        1,
        "the refused call never reached the handler"
    );

    // Other sandboxes and baseline are not throttled.
    let other = unary(addr, &["prodbox.sandbox=grpc-rate-2"]).await.unwrap();
    assert_eq!(other.sandbox, "grpc-rate-2");
    for _ in 0..3 {
        assert_eq!(unary(addr, &[]).await.unwrap().sandbox, "");
    }
    assert_eq!(
        audited(&audit, "grpc-rate-1", "throttled", "rate_limited").len(),
        1
    );
}

/// A unary call in `sandbox`, retried while it is throttled: the server lets go of a stream's
/// slot once it has dropped the stream, which the client cannot observe.
async fn admitted_eventually(addr: SocketAddr, sandbox: &str) -> Seen {
    let baggage = format!("prodbox.sandbox={sandbox}");
    for _ in 0..500 {
        match unary(addr, &[&baggage]).await {
            Ok(seen) => return seen,
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("{sandbox}: {status:?}"),
        }
    }
    panic!("{sandbox}: the concurrency slot was never released");
}

#[tokio::test]
async fn a_streaming_call_holds_its_concurrency_slot_until_it_ends() {
    let echo = EchoService::new("concurrency");
    let addr = serve_echo(
        SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::accept())
                .guardrails(Guardrails::builder().max_concurrent(1).build()),
        ),
        echo.clone(),
    )
    .await;
    // An open bidi stream holds the sandbox's only slot.
    let (tx, rx) = mpsc::channel(4);
    let mut open = plain(addr)
        .bidi(with_baggage(
            ReceiverStream::new(rx),
            &["prodbox.sandbox=grpc-conc-1"],
        ))
        .await
        .expect("the first stream is admitted")
        .into_inner();
    tx.send(Ping { id: 1, count: 0 }).await.unwrap();
    let reply = open.message().await.unwrap().expect("a reply");
    assert_eq!(reply.sandbox, "grpc-conc-1");

    let status = refused(
        unary(addr, &["prodbox.sandbox=grpc-conc-1"]).await,
        "while the stream is open",
    );
    assert_refused(
        &status,
        Code::ResourceExhausted,
        "too_many_concurrent",
        "too_many_concurrent",
        "while the stream is open",
    );
    assert!(status.metadata().get("retry-after").is_some());
    assert!(unary(addr, &["prodbox.sandbox=grpc-conc-2"]).await.is_ok());

    // A stream the client walks away from half-way (dropping both halves) gives its slot
    // back too.
    drop((open, tx));
    let seen = admitted_eventually(addr, "grpc-conc-1").await;
    assert_eq!(seen.sandbox, "grpc-conc-1");
    let (tx, rx) = mpsc::channel(4);
    let mut open = plain(addr)
        .bidi(with_baggage(
            ReceiverStream::new(rx),
            &["prodbox.sandbox=grpc-conc-1"],
        ))
        .await
        .expect("the slot is free again")
        .into_inner();
    tx.send(Ping { id: 2, count: 0 }).await.unwrap();
    assert!(open.message().await.unwrap().is_some());

    // Once the stream has ended, the slot comes back (the server lets go of it once it has
    // sent the end of the stream: wait for that, without assuming how long it takes).
    drop(tx);
    while open.message().await.unwrap().is_some() {}
    let seen = admitted_eventually(addr, "grpc-conc-1").await;
    assert_eq!(seen.sandbox, "grpc-conc-1");
}

// ---------------------------------------------------------------------------------------------
// PERMISSION_DENIED: the directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn disabled_expired_and_unknown_sandboxes_are_permission_denied() {
    let audit = AuditLog::global();
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(key("grpc-off")).disabled(true));
    directory.upsert(
        SandboxEntry::new(key("grpc-old")).expires_at(SystemTime::now() - Duration::from_secs(60)),
    );
    directory.upsert(SandboxEntry::new(key("grpc-on")));
    let echo = EchoService::new("directory");
    let addr = serve_echo(
        SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::accept()).directory(directory.clone()),
        ),
        echo.clone(),
    )
    .await;

    let status = refused(unary(addr, &["prodbox.sandbox=grpc-off"]).await, "disabled");
    assert_refused(
        &status,
        Code::PermissionDenied,
        "sandbox_disabled",
        "sandbox grpc-off is disabled",
        "disabled",
    );
    let status = refused(
        plain(addr)
            .bidi(with_baggage(
                tokio_stream::iter([Ping { id: 1, count: 0 }]),
                &["prodbox.sandbox=grpc-off"],
            ))
            .await,
        "disabled, bidi",
    );
    assert_refused(
        &status,
        Code::PermissionDenied,
        "sandbox_disabled",
        "is disabled",
        "disabled, bidi",
    );
    let status = refused(unary(addr, &["prodbox.sandbox=grpc-old"]).await, "expired");
    assert_refused(
        &status,
        Code::PermissionDenied,
        "sandbox_expired",
        "sandbox grpc-old has expired",
        "expired",
    );
    assert_eq!(echo.calls(), 0);

    // A registered, active sandbox runs; the kill switch stops it from the next call on.
    let seen = unary(addr, &["prodbox.sandbox=grpc-on"]).await.unwrap();
    assert_eq!(seen.sandbox, "grpc-on");
    assert!(directory.set_disabled(&key("grpc-on"), true));
    let status = refused(
        unary(addr, &["prodbox.sandbox=grpc-on"]).await,
        "kill switch",
    );
    assert_refused(
        &status,
        Code::PermissionDenied,
        "sandbox_disabled",
        "sandbox grpc-on is disabled",
        "kill switch",
    );
    // Unknown sandboxes are allowed by default; baseline is untouched.
    assert_eq!(
        unary(addr, &["prodbox.sandbox=grpc-unlisted"])
            .await
            .unwrap()
            .sandbox,
        "grpc-unlisted"
    );
    assert_eq!(unary(addr, &[]).await.unwrap().sandbox, "");
    assert_eq!(echo.calls(), 3);

    // ... unless the server refuses them.
    let closed = serve_echo(
        SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::accept())
                .directory(directory.clone())
                .unknown_sandboxes(UnknownSandbox::Refuse),
        ),
        EchoService::new("closed"),
    )
    .await;
    let status = refused(
        unary(closed, &["prodbox.sandbox=grpc-unknown"]).await,
        "unknown",
    );
    assert_refused(
        &status,
        Code::PermissionDenied,
        "sandbox_unknown",
        "sandbox grpc-unknown is not registered",
        "unknown",
    );

    for (sandbox, reason, count) in [
        ("grpc-off", "sandbox_disabled", 2),
        ("grpc-old", "sandbox_expired", 1),
        ("grpc-on", "sandbox_disabled", 1),
        ("grpc-unknown", "sandbox_unknown", 1),
    ] {
        assert_eq!(
            audited(&audit, sandbox, "rejected", reason).len(),
            count,
            "{sandbox}"
        );
    }
    assert_eq!(audited(&audit, "grpc-on", "accepted", "trusted").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// UNAUTHENTICATED: tokens at a rejecting Signed server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rejecting_signed_server_is_unauthenticated_for_bad_tokens() {
    let audit = AuditLog::global();
    let keys = TokenKeys::new().with_key("k1", SECRET).unwrap();
    let echo = EchoService::new("signed");
    let addr = serve_echo(
        SandboxLayer::new(TrustPolicy::signed_rejecting(keys.clone())),
        echo.clone(),
    )
    .await;

    let forger = TokenKeys::new()
        .with_key("k1", b"another secret, also of 32 bytes")
        .unwrap();
    let forged = forger
        .mint(&Sandbox::new(key("grpc-forged")), Duration::from_secs(600))
        .unwrap();
    let status = refused(
        unary(addr, &[&format!("prodbox.token={forged}")]).await,
        "forged",
    );
    assert_refused(
        &status,
        Code::Unauthenticated,
        "unauthenticated",
        "sandbox token refused",
        "forged",
    );
    assert!(status.message().contains("signature"), "{status:?}");

    let expired = keys
        .clone()
        .leeway(Duration::ZERO)
        .mint_at(
            &Sandbox::new(key("grpc-expired-token")),
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .unwrap();
    let status = refused(
        unary(addr, &[&format!("prodbox.token={expired}")]).await,
        "expired token",
    );
    assert_refused(
        &status,
        Code::Unauthenticated,
        "unauthenticated",
        "expired",
        "expired token",
    );

    let status = refused(
        unary(addr, &["prodbox.sandbox=grpc-unsigned"]).await,
        "unsigned",
    );
    assert_refused(
        &status,
        Code::Unauthenticated,
        "unauthenticated",
        "not signed",
        "unsigned",
    );
    assert_eq!(echo.calls(), 0);

    // A valid token is admitted and the handler runs in its sandbox.
    let sandbox = Sandbox::builder("grpc-signed")
        .unwrap()
        .actor("ci")
        .unwrap()
        .build();
    let token = keys.mint(&sandbox, Duration::from_secs(600)).unwrap();
    let seen = unary(addr, &[&format!("tenant=acme,prodbox.token={token}")])
        .await
        .expect("a valid token is admitted");
    assert_eq!(seen.sandbox, "grpc-signed");
    assert_eq!(echo.calls(), 1);
    // Baseline calls are untouched.
    assert_eq!(unary(addr, &["tenant=acme"]).await.unwrap().sandbox, "");

    let bad: Vec<_> = audit
        .matching("reason", "token_bad_signature")
        .into_iter()
        .filter(|r| r["protocol"] == "grpc")
        .collect();
    assert!(
        bad.iter()
            .any(|r| r["decision"] == "rejected" && r["sandbox"] == "-"),
        "{bad:?}"
    );
    assert_eq!(
        audited(&audit, "grpc-unsigned", "rejected", "unsigned").len(),
        1
    );
    let accepted = audited(&audit, "grpc-signed", "accepted", "trusted");
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["actor"], "ci");
}

// ---------------------------------------------------------------------------------------------
// Client side: fail closed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_sandboxed_call_with_malformed_outbound_baggage_never_leaves() {
    let audit = AuditLog::global();
    // No prodbox on the server: it counts what arrives as sent.
    let echo = EchoService::new("counting");
    let addr = serve_echo(Identity::new(), echo.clone()).await;
    let malformed = "tenant=acme,no-equals-sign";

    let mut intercepted = EchoClient::with_interceptor(channel(addr), SandboxInterceptor::new());
    let mut layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .service(channel(addr)),
    );
    let status = refused(
        async {
            intercepted
                .unary(with_baggage(Ping { id: 1, count: 0 }, &[malformed]))
                .await
        }
        .in_sandbox(Sandbox::new(key("grpc-closed-i")))
        .await,
        "interceptor",
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().starts_with("prodbox: ")
            && status.message().contains("grpc-closed-i")
            && status.message().contains("malformed"),
        "{status:?}"
    );
    let status = refused(
        async {
            layered
                .unary(with_baggage(Ping { id: 1, count: 0 }, &[malformed]))
                .await
        }
        .in_sandbox(Sandbox::new(key("grpc-closed-l")))
        .await,
        "layer",
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().starts_with("prodbox: ")
            && status.message().contains("grpc-closed-l")
            && status.message().contains("malformed"),
        "{status:?}"
    );
    // Streaming calls too.
    let status = refused(
        async {
            layered
                .server_stream(with_baggage(Ping { id: 1, count: 2 }, &[malformed]))
                .await
        }
        .in_sandbox(Sandbox::new(key("grpc-closed-l")))
        .await,
        "layer, server stream",
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(echo.calls(), 0, "no sandboxed call reached the server");

    for sandbox in ["grpc-closed-i", "grpc-closed-l"] {
        let records = audited(&audit, sandbox, "rejected", "baggage_malformed_member");
        assert!(!records.is_empty(), "{sandbox}");
        assert!(records.iter().all(|r| r["direction"] == "outbound"));
    }

    // A baseline call is not at risk: its baggage is the application's, and goes out as is.
    let seen = intercepted
        .unary(with_baggage(Ping { id: 2, count: 0 }, &[malformed]))
        .await
        .expect("baseline calls go out")
        .into_inner();
    assert_eq!(baggage_entries(&seen), [malformed]);
    let seen = layered
        .unary(with_baggage(Ping { id: 3, count: 0 }, &[malformed]))
        .await
        .expect("baseline calls go out")
        .into_inner();
    assert_eq!(baggage_entries(&seen), [malformed]);
    assert_eq!(echo.calls(), 2);
}

#[tokio::test]
async fn an_open_circuit_breaker_stops_sandboxed_calls_only() {
    let audit = AuditLog::global();
    let echo = EchoService::new("down").fail_with(Code::Unavailable);
    let addr = serve_echo(SandboxLayer::new(TrustPolicy::accept()), echo.clone()).await;
    let client = EchoClient::new(
        ServiceBuilder::new()
            .layer(
                PropagateSandboxLayer::new().guardrails(
                    Guardrails::builder()
                        .circuit_breaker(2, Duration::from_secs(3600))
                        .build(),
                ),
            )
            .service(channel(addr)),
    );
    let call = |id: u64| {
        let mut client = client.clone();
        async move { client.unary(Ping { id, count: 0 }).await }
    };
    let sandbox = || Sandbox::new(key("grpc-breaker"));
    for id in 1..=2 {
        let status = refused(call(id).in_sandbox(sandbox()).await, "failing call");
        assert_eq!(status.code(), Code::Unavailable, "call {id}: {status:?}");
        assert!(status.message().contains("fails on purpose"), "{status:?}");
    }
    assert_eq!(echo.calls(), 2);

    let status = refused(call(3).in_sandbox(sandbox()).await, "open breaker");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("prodbox: ")
            && status.message().contains("grpc-breaker")
            && status.message().contains("circuit_open"),
        "{status:?}"
    );
    assert_eq!(echo.calls(), 2, "the third call never reached the server");

    // Baseline calls and other sandboxes still reach it.
    let status = refused(call(4).await, "baseline");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(echo.calls(), 3);
    let status = refused(
        call(5)
            .in_sandbox(Sandbox::new(key("grpc-breaker-other")))
            .await,
        "other sandbox",
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(echo.calls(), 4);

    let records = audited(&audit, "grpc-breaker", "throttled", "circuit_open");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["direction"], "outbound");
}

/// Two servers, one failing, called by one sandbox through clients sharing one layer (and so
/// one set of guardrails); `origin` gives the clients their server's URI as origin.
/// Returns whether the healthy server was still reached once the failing one's breaker opened.
/// How the client stack tells its destination apart.
#[derive(Clone, Copy)]
enum Naming {
    /// `EchoClient::with_origin`: the URI carries the authority.
    Origin,
    /// `PropagateSandboxLayer::destination`: the layer around each channel names it.
    Layer,
    /// Neither: both servers run the same gRPC service, which is all the layer can see.
    Nothing,
}

async fn healthy_destination_reached_after_another_opens(sandbox: &str, naming: Naming) -> bool {
    let down = EchoService::new("down").fail_with(Code::Unavailable);
    let up = EchoService::new("up");
    let down_addr = serve_echo(SandboxLayer::new(TrustPolicy::accept()), down.clone()).await;
    let up_addr = serve_echo(SandboxLayer::new(TrustPolicy::accept()), up.clone()).await;
    let layer = PropagateSandboxLayer::new().guardrails(
        Guardrails::builder()
            .circuit_breaker(2, Duration::from_secs(3600))
            .build(),
    );
    let client = |addr, name: &str| {
        let layer = match naming {
            Naming::Layer => layer.clone().destination(name),
            Naming::Origin | Naming::Nothing => layer.clone(),
        };
        let service = ServiceBuilder::new().layer(layer).service(channel(addr));
        match naming {
            Naming::Origin => {
                EchoClient::with_origin(service, uri(addr).parse().expect("a valid URI"))
            }
            Naming::Layer | Naming::Nothing => EchoClient::new(service),
        }
    };
    let (down_client, up_client) = (client(down_addr, "down"), client(up_addr, "up"));
    for id in 1..=3 {
        let mut down_client = down_client.clone();
        let _ = async move { down_client.unary(Ping { id, count: 0 }).await }
            .in_sandbox(Sandbox::new(key(sandbox)))
            .await;
    }
    assert_eq!(down.calls(), 2, "the breaker for the failing server opened");
    let mut up_client = up_client.clone();
    let reply = async move { up_client.unary(Ping { id: 4, count: 0 }).await }
        .in_sandbox(Sandbox::new(key(sandbox)))
        .await;
    match reply {
        Ok(seen) => {
            assert_eq!(seen.into_inner().sandbox, sandbox);
            assert_eq!(up.calls(), 1);
            true
        }
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("circuit_open"), "{status:?}");
            assert_eq!(up.calls(), 0);
            false
        }
    }
}

#[tokio::test]
async fn the_circuit_breaker_is_per_destination_named_by_the_layer() {
    assert!(
        healthy_destination_reached_after_another_opens("grpc-breaker-layer", Naming::Layer).await,
        "a healthy destination must not be behind another destination's open breaker"
    );
}

#[tokio::test]
async fn the_circuit_breaker_is_per_destination_for_clients_with_an_origin() {
    assert!(
        healthy_destination_reached_after_another_opens("grpc-breaker-origin", Naming::Origin)
            .await
    );
}

#[tokio::test]
async fn without_a_name_servers_of_the_same_service_share_a_breaker() {
    // Documented: with neither an origin nor a layer name, the gRPC service is the destination.
    assert!(
        !healthy_destination_reached_after_another_opens("grpc-breaker-shared", Naming::Nothing)
            .await
    );
}
