//! Attacks on the egress policy found by a hostile review, kept as regression tests: each
//! reached a third party, leaked the context or a credential before its fix (the ones about
//! documented limits say so).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::FutureExt;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::egress::{EgressPolicy, EgressVerdict};
use prodbox_http::egress::GuardedConnector;
use prodbox_http::reqwest::SandboxMiddleware;
use prodbox_http::{EgressPolicyLayer, PropagateSandboxLayer};
use tower::{ServiceBuilder, ServiceExt};

mod common;

use common::{Recorder, Transport, redirector, refused_in, sandbox, tower_client};

fn policy_for_maps(maps_at: SocketAddr) -> EgressPolicy {
    EgressPolicy::new().external("maps", &maps_at.to_string())
}

// ---------------------------------------------------------------------------------------
// A1. The service's own reqwest client (prodbox's SandboxMiddleware) has no egress policy:
// a declared third party receives prodbox.sandbox even when the client is also guarded.
#[tokio::test]
async fn a1_reqwest_middleware_sends_prodbox_baggage_to_a_declared_third_party() {
    let maps = Recorder::default();
    let maps_at = maps.start().await;
    let policy = EgressPolicy::new().external("maps", &maps_at.to_string());
    let inner = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(SandboxMiddleware::new().egress_policy(policy_for_maps(maps_at), None))
        .build();
    let s = sandbox("atk-a1");
    let r = client
        .get(format!("http://{maps_at}/route"))
        .send()
        .in_sandbox(s)
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let seen = maps.last_headers().to_ascii_lowercase();
    assert!(
        !seen.contains("prodbox"),
        "a declared third party received prodbox's context:\n{seen}"
    );
}

// A1b. The same middleware alone: an undeclared provider is reached by a sandboxed call
// (there is no way to give SandboxMiddleware a policy).
#[tokio::test]
async fn a1b_reqwest_middleware_has_no_policy_and_reaches_undeclared() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(SandboxMiddleware::new().egress_policy(EgressPolicy::new(), None))
        .build();
    let _ = client
        .post(format!("http://{at}/charges"))
        .send()
        .in_sandbox(sandbox("atk-a1b"))
        .await;
    assert_eq!(
        provider.calls(),
        0,
        "a sandboxed reqwest call reached an undeclared provider"
    );
}

// ---------------------------------------------------------------------------------------
// A2. GuardedConnector with a directory: sandbox A has its own stub for "payments" (declared
// external). The connector refuses A a new connection, but a pooled one (production's, or
// another sandbox's) carries A's call to the real provider.
#[tokio::test]
async fn a2_guarded_connector_pool_bypasses_a_sandboxs_own_stub() {
    let (provider, stub) = (Recorder::default(), Recorder::default());
    let (at, stub_at) = (provider.start().await, stub.start().await);
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk-a2-own".parse().expect("key")).stub(
        "payments",
        format!("http://{stub_at}").parse().expect("address"),
    ));
    let policy = EgressPolicy::new().external("payments", &at.to_string());
    let connector = GuardedConnector::new(HttpConnector::new(), policy).directory(directory);
    let sdk: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let get = |uri: String| sdk.request(Request::get(uri).body(Body::empty()).expect("request"));
    let own = sandbox("atk-a2-own");

    // Fresh: refused (holds).
    let fresh = get(format!("http://{at}/charges"))
        .in_sandbox(own.clone())
        .await;
    assert!(fresh.is_err());
    assert_eq!(provider.calls(), 0);

    // Production (or any other sandbox) opens a pooled connection to the provider...
    get(format!("http://{at}/charges")).await.expect("baseline");
    assert_eq!(provider.calls(), 1);
    // ...and the sandbox with its own stub rides it to the real provider.
    let again = get(format!("http://{at}/charges")).in_sandbox(own).await;
    assert!(
        again.as_ref().is_err_and(|e| refused_in(e)),
        "sandbox with its own stub reached the provider: {:?}",
        again.map(|r| r.status())
    );
    assert_eq!(
        provider.calls(),
        1,
        "the real provider was charged for the sandbox"
    );
}

// ---------------------------------------------------------------------------------------
// A3. reqwest::guard takes no directory: a sandbox whose own stub replaces "payments"
// reaches the real provider through an SDK's guarded reqwest client.
#[tokio::test]
async fn a3_reqwest_guard_ignores_a_sandboxs_own_stub() {
    let (provider, stub) = (Recorder::default(), Recorder::default());
    let (at, stub_at) = (provider.start().await, stub.start().await);
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk-a3".parse().expect("key")).stub(
        "payments",
        format!("http://{stub_at}").parse().expect("address"),
    ));
    let policy = EgressPolicy::new().external("payments", &at.to_string());
    // The decision the policy makes for this sandbox: stubbed.
    assert!(matches!(
        policy.decide(
            Some(&sandbox("atk-a3")),
            Some(&directory),
            &at.ip().to_string(),
            Some(at.port())
        ),
        EgressVerdict::UnlistedStub { .. }
    ));
    let sdk = prodbox_http::reqwest::guard(
        reqwest::Client::builder(),
        policy,
        Some(Arc::new(directory)),
    )
    .build()
    .expect("client");
    let _ = sdk
        .post(format!("http://{at}/charges"))
        .send()
        .in_sandbox(sandbox("atk-a3"))
        .await;
    assert_eq!(
        provider.calls(),
        0,
        "the real provider was charged for a stubbed sandbox"
    );
}

// ---------------------------------------------------------------------------------------
// A4. A sandbox's own stub service (any URL a sandbox creator names) receives every header
// the service meant for the provider: its live API key.
#[tokio::test]
async fn a4_a_sandboxs_own_stub_receives_the_providers_credentials() {
    let (provider, stub) = (Recorder::default(), Recorder::default());
    let (at, stub_at) = (provider.start().await, stub.start().await);
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk-a4".parse().expect("key")).stub(
        "payments",
        format!("http://{stub_at}").parse().expect("address"),
    ));
    let client = tower_client(
        EgressPolicyLayer::new(
            EgressPolicy::new()
                .external("payments", &at.to_string())
                .stub_services("127.0.0.1"),
        )
        .directory(directory),
    );
    let req = Request::post(format!("http://{at}/v1/charges"))
        .header("authorization", "Bearer sk_live_SECRET")
        .header("cookie", "session=SECRET")
        .body(Body::empty())
        .expect("request");
    client
        .oneshot(req)
        .in_sandbox(sandbox("atk-a4"))
        .await
        .expect("stubbed");
    assert_eq!(provider.calls(), 0);
    let seen = stub.last_headers();
    assert!(
        !seen.contains("SECRET"),
        "the stub service (named by whoever created the sandbox) got the provider's credentials:\n{seen}"
    );
}

// ---------------------------------------------------------------------------------------
// A5. Context loss: a tokio::spawn inside a sandboxed request calls the provider as
// production, through the very client that enforces the policy. Nothing is refused or
// audited (the DB side has require_scope / db_context_changed; egress has nothing).
#[tokio::test]
async fn a5_tokio_spawn_in_a_sandboxed_request_charges_the_provider() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let transport: Transport = Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .layer(EgressPolicyLayer::new(EgressPolicy::new().internal("billing")).require_scope(true))
        .service(transport);
    let handler = async {
        let client = client.clone();
        let uri = format!("http://{at}/charges");
        tokio::spawn(async move {
            let req = Request::post(uri).body(Body::empty()).expect("request");
            client.oneshot(req).await.map(|r| r.status())
        })
        .await
        .expect("join")
    };
    let result = handler.in_sandbox(sandbox("atk-a5")).await;
    assert_eq!(
        provider.calls(),
        0,
        "a spawned task of a sandboxed request reached an undeclared provider: {result:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A6. A declared third party (through an SDK's guarded reqwest client) redirects a sandboxed
// request to one of our internal services: it is followed, and the internal service gets a
// request with no sandbox context, i.e. runs it as production.
#[tokio::test]
async fn a6_third_party_redirect_to_internal_runs_as_production() {
    let internal = Recorder::default();
    let internal_at = internal.start().await;
    let third = redirector(format!("http://{internal_at}/refunds")).await;
    let policy = EgressPolicy::new()
        .external("maps", &third.to_string())
        .internal(&internal_at.to_string());
    let sdk = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
        .build()
        .expect("client");
    let result = sdk
        .post(format!("http://{third}/webhook"))
        .send()
        .in_sandbox(sandbox("atk-a6"))
        .await;
    let reached = internal.calls();
    let seen = internal.last_headers();
    assert!(
        reached == 0 || seen.contains("prodbox.sandbox=atk-a6"),
        "internal service ran a sandboxed request as production (reached={reached}, result={:?}):\n{seen}",
        result.map(|r| r.status())
    );
}

// A6b. The same for a direct Internal call through a guarded SDK client: allowed, but
// nothing puts the context on it.
#[tokio::test]
async fn a6b_guarded_connector_internal_call_carries_no_context() {
    let internal = Recorder::default();
    let at = internal.start().await;
    let policy = EgressPolicy::new().internal(&at.to_string());
    let connector = GuardedConnector::new(HttpConnector::new(), policy);
    let sdk: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let result = sdk
        .request(
            Request::post(format!("http://{at}/x"))
                .body(Body::empty())
                .expect("r"),
        )
        .in_sandbox(sandbox("atk-a6b"))
        .await;
    assert!(
        result.as_ref().is_err_and(|e| refused_in(e)),
        "an internal call from a guarded SDK client (no context) went out: {:?}",
        result.map(|r| r.status())
    );
    assert_eq!(internal.calls(), 0);
}

// ---------------------------------------------------------------------------------------
// A7. The layer decides by the URI; a Host header naming another (undeclared) host goes
// through unchanged, with the context, to the internal host (an ingress/egress gateway that
// routes by Host would forward it).
#[tokio::test]
async fn a7_host_header_mismatch_passes() {
    let internal = Recorder::default();
    let at = internal.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().internal(&at.to_string()),
    ));
    let req = Request::post(format!("http://{at}/v1/charges"))
        .header("host", "api.payments.example")
        .body(Body::empty())
        .expect("request");
    let r = client.oneshot(req).in_sandbox(sandbox("atk-a7")).await;
    let seen = internal.last_headers();
    assert!(
        r.is_err() || !seen.contains("host: api.payments.example"),
        "an undeclared Host went out under an internal URI:\n{seen}"
    );
}

// ---------------------------------------------------------------------------------------
// A8. External: every carrier of ours that the application copied from the inbound request
// must be gone (split baggage, case variants, legacy carriers, token, aliases).
#[tokio::test]
async fn a8_external_strips_every_carrier() {
    let maps = Recorder::default();
    let at = maps.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", &at.to_string()),
    ));
    let req = Request::get(format!("http://{at}/route"))
        .header("Baggage", "tenant=acme,prodbox.sandbox=atk-a8")
        .header("baggage", "PRODBOX.TOKEN=secret;prop=1")
        .header("baggage", "Prodbox.Actor=alice, sd-routing-key=atk-a8")
        .header("ot-baggage-prodbox.sandbox", "atk-a8")
        .header("UBERCTX-PRODBOX.TOKEN", "secret")
        .header("uberctx-okteto-divert", "atk-a8")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("tracestate", "prodbox=atk-a8")
        .body(Body::empty())
        .expect("request");
    let r = client
        .oneshot(req)
        .in_sandbox(sandbox("atk-a8"))
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let seen = maps.last_headers();
    println!("third party saw:\n{seen}");
    let lowered = seen.to_ascii_lowercase();
    assert!(lowered.contains("tenant=acme"), "{seen}");
    for needle in ["prodbox.", "secret", "atk-a8"] {
        let hit = lowered
            .lines()
            .filter(|l| !l.starts_with("tracestate"))
            .any(|l| l.contains(needle));
        assert!(!hit, "{needle} reached the third party:\n{seen}");
    }
}

// A8b. Unparseable baggage that mentions prodbox, sent to a third party.
#[tokio::test]
async fn a8b_external_unparsable_baggage() {
    let maps = Recorder::default();
    let at = maps.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", &at.to_string()),
    ));
    let req = Request::get(format!("http://{at}/route"))
        .header("baggage", "prodbox.sandbox=atk-a8b,=broken,,;;")
        .body(Body::empty())
        .expect("request");
    // Refused by the propagation layer (fail closed) holds; if sent, nothing of ours.
    if let Ok(r) = client.oneshot(req).in_sandbox(sandbox("atk-a8b")).await {
        assert_eq!(r.status(), 200);
        let seen = maps.last_headers();
        assert!(!seen.contains("atk-a8b"), "{seen}");
    }
    assert!(maps.calls() == 0 || !maps.last_headers().contains("atk-a8b"));
}

// ---------------------------------------------------------------------------------------
// A9. Host spelling tricks against a declared external host with a port: all must be refused
// (fail closed) and never reach the undeclared provider on another port.
#[tokio::test]
async fn a9_host_spellings_never_reach_an_undeclared_port() {
    let (maps, provider) = (Recorder::default(), Recorder::default());
    let (maps_at, at) = (maps.start().await, provider.start().await);
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", &maps_at.to_string()),
    ));
    let p = at.port();
    let m = maps_at.port();
    let uris = [
        format!("http://127.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.0.0.1.:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://localhost:{p}/"),
        format!("http://127.0.0.1:{m}@127.0.0.1:{p}/"),
        format!("http://127.0.0.1:{p}/?@127.0.0.1:{m}"),
        format!("http://127.0.0.1:{p}#127.0.0.1:{m}"),
    ];
    for uri in uris {
        let Ok(req) = Request::get(&uri).body(Body::empty()) else {
            continue;
        };
        let r = client
            .clone()
            .oneshot(req)
            .in_sandbox(sandbox("atk-a9"))
            .await;
        assert!(r.is_err(), "{uri} was sent");
    }
    assert_eq!(provider.calls(), 0);
    // The same through the guarded reqwest SDK client.
    let sdk = prodbox_http::reqwest::guard(
        reqwest::Client::builder(),
        EgressPolicy::new().external("maps", &maps_at.to_string()),
        None,
    )
    .build()
    .expect("client");
    for uri in [
        format!("http://127.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://0x7f.1:{p}/"),
        format!("http://127.0.0.1:{m}@127.0.0.1:{p}/"),
        format!("http://127.0.0.1:{m}\\@127.0.0.1:{p}/"),
        format!("http://LOCALHOST.:{p}/"),
    ] {
        let _ = sdk.get(&uri).send().in_sandbox(sandbox("atk-a9")).await;
    }
    assert_eq!(provider.calls(), 0);
}

// A9b. A port-less pattern allows every port of the host: "external 127.0.0.1" lets a
// sandbox reach every local service (documentation).
#[tokio::test]
async fn a9b_portless_pattern_allows_every_port() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", "127.0.0.1"),
    ));
    let req = Request::post(format!("http://{at}/charges"))
        .body(Body::empty())
        .expect("r");
    let _ = client.oneshot(req).in_sandbox(sandbox("atk-a9b")).await;
    // Documented behaviour check only: this shows the port is free.
    assert_eq!(provider.calls(), 1);
}

// ---------------------------------------------------------------------------------------
// A11. Redirects on the guarded reqwest client: third party -> same host other port
// (undeclared), internal -> internal -> undeclared, loops.
#[tokio::test]
async fn a11_redirect_chains() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let ext = redirector(format!("http://{at}/charges")).await;
    let int2 = redirector(format!("http://{at}/charges")).await;
    let int1 = redirector(format!("http://{int2}/hop")).await;
    let policy = EgressPolicy::new()
        .external("maps", &ext.to_string())
        .internal(&int1.to_string())
        .internal(&int2.to_string());
    let sdk = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
        .build()
        .expect("client");
    for start in [ext, int1] {
        let r = sdk
            .post(format!("http://{start}/go"))
            .send()
            .in_sandbox(sandbox("atk-a11"))
            .await;
        assert!(r.is_err(), "{start}");
    }
    assert_eq!(provider.calls(), 0);
}

// A12. Pure decision checks.
#[test]
fn a12_policy_matching() {
    let policy = EgressPolicy::new()
        .internal("*.svc.cluster.local")
        .internal("billing")
        .external("maps", "maps.example.com:443");
    let s = sandbox("atk-a12");
    for (host, port) in [
        ("billing.evil", None),
        ("evilbilling", None),
        ("svc.cluster.local", None),
        ("evil.svc.cluster.local.evil", None),
        ("maps.example.com", Some(80)),
        ("maps.example.com", None),
        ("maps.example.com.evil", Some(443)),
        ("xn--maps-example", Some(443)),
        ("", None),
    ] {
        assert_eq!(
            policy.decide(Some(&s), None, host, port),
            EgressVerdict::Undeclared,
            "{host}:{port:?}"
        );
    }
    assert_eq!(
        policy.decide(Some(&s), None, "BILLING.", None),
        EgressVerdict::Internal
    );
    assert!(matches!(
        policy.decide(Some(&s), None, "MAPS.Example.com.", Some(443)),
        EgressVerdict::External { .. }
    ));
}
