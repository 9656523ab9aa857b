//! Attacks on the egress policy found by a second hostile review, kept as regression tests
//! (`b*`: each worked before its fix; `h*`: checks that held).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prodbox_core::FutureExt;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::egress::{EgressPolicy, Stub};
use prodbox_http::EgressPolicyLayer;
use prodbox_http::client::BoxError;
use prodbox_http::egress::GuardedConnector;
use prodbox_http::reqwest::{SandboxMiddleware, redirect_policy};
use prodbox_testkit::AuditLog;
use tower::{Service, ServiceExt};

mod common;

use common::{Recorder, redirector, refused_in, sandbox, tower_client};

/// An HTTP/2 (h2c, prior knowledge) service on loopback that counts requests.
async fn h2_server(calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"charged",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    at
}

/// A connector with some latency (DNS + TLS handshake in real life).
fn slow_connector() -> impl Service<
    Uri,
    Response = TokioIo<tokio::net::TcpStream>,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|uri: Uri| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        HttpConnector::new().call(uri).await.map_err(BoxError::from)
    })
}

// ---------------------------------------------------------------------------------------
// HELD (B1). HTTP/2 on an SDK's hyper-util client through GuardedConnector: while production's
// connection to an undeclared provider is being established, a sandboxed call to the same
// destination does not ask the connector (hyper-util's HTTP/2 "connecting lock"); it waits
// in the pool for production's connection. hyper-util checks `is_open` (poison) when a waiter
// receives it (Checkout::poll_waiter -> CheckedOutClosedValue), so the sandboxed call retries,
// reaches the connector, and is refused.
#[tokio::test]
async fn b1_h2_waiter_rides_productions_connection_to_undeclared_provider() {
    let calls = Arc::new(AtomicUsize::new(0));
    let at = h2_server(calls.clone()).await;
    let policy = EgressPolicy::new().external("maps", "maps.example.com");
    let connector = GuardedConnector::new(slow_connector(), policy);
    let sdk: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let uri = format!("http://{at}/charges");

    // Production's charge: opens (slowly) a connection to the provider.
    let production = tokio::spawn({
        let (sdk, uri) = (sdk.clone(), uri.clone());
        async move {
            sdk.request(Request::post(uri).body(Full::default()).expect("r"))
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile, a sandboxed charge to the same provider.
    let sandboxed = sdk
        .request(Request::post(uri).body(Full::default()).expect("r"))
        .in_sandbox(sandbox("atk2-b1"))
        .await;
    production.await.expect("join").expect("production's call");
    let sandboxed_ok = sandboxed.is_ok();
    println!("B1 sandboxed: {:?}", sandboxed.as_ref().map(|r| r.status()));
    assert!(
        sandboxed.as_ref().is_err_and(|e| refused_in(e)),
        "sandboxed call was sent: {:?}",
        sandboxed.map(|r| r.status())
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the provider was reached for the sandbox too (sandboxed ok: {sandboxed_ok})"
    );
}

// HELD (B1b). Same, with a directory: a sandbox that has its own stub of a declared external
// provider waits for another (allowed) sandbox's connection and reaches the real provider.
#[tokio::test]
async fn b1b_h2_waiter_with_own_stub_rides_another_sandboxs_connection() {
    let calls = Arc::new(AtomicUsize::new(0));
    let at = h2_server(calls.clone()).await;
    let stub = Recorder::default();
    let stub_at = stub.start().await;
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("atk2-b1b-own".parse().expect("key")).stub(
            "payments",
            format!("http://{stub_at}").parse().expect("address"),
        ),
    );
    let policy = EgressPolicy::new().external("payments", &at.to_string());
    let connector = GuardedConnector::new(slow_connector(), policy).directory(directory);
    let sdk: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let uri = format!("http://{at}/charges");
    let other = tokio::spawn({
        let (sdk, uri) = (sdk.clone(), uri.clone());
        async move {
            sdk.request(Request::post(uri).body(Full::default()).expect("r"))
                .await
                .map(|r| r.status())
        }
        .in_sandbox(sandbox("atk2-b1b-other"))
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let own = sdk
        .request(Request::post(uri).body(Full::default()).expect("r"))
        .in_sandbox(sandbox("atk2-b1b-own"))
        .await;
    other.await.expect("join").expect("allowed sandbox's call");
    assert!(
        own.as_ref().is_err_and(|e| refused_in(e)),
        "a sandbox with its own stub reached the real provider: {:?}",
        own.map(|r| r.status())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// B2. The service's own reqwest client, set up as documented (SandboxMiddleware with the
// policy, redirect_policy on the client): a sandboxed call to a declared third party runs
// below the middleware in a context *without* the sandbox, so the redirect policy sees a
// production request and follows the third party's redirect anywhere: here to an
// undeclared payment provider.
#[tokio::test]
async fn b2_middleware_external_path_blinds_the_redirect_policy() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let third = redirector(format!("http://{at}/charges")).await;
    let policy = EgressPolicy::new().external("maps", &third.to_string());
    let inner = reqwest::Client::builder()
        .redirect(redirect_policy(policy.clone(), None))
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(SandboxMiddleware::new().egress_policy(policy, None))
        .build();
    let r = client
        .post(format!("http://{third}/webhook"))
        .send()
        .in_sandbox(sandbox("atk2-b2"))
        .await;
    assert_eq!(
        provider.calls(),
        0,
        "a third party's redirect took a sandboxed request to an undeclared provider: {:?}",
        r.map(|r| r.status())
    );
}

// B2b. The same redirect into one of our (internal) services: the request arrives without
// any context and runs as production's (A6, through the service's own client).
#[tokio::test]
async fn b2b_middleware_external_redirect_into_internal_runs_as_production() {
    let internal = Recorder::default();
    let internal_at = internal.start().await;
    let third = redirector(format!("http://{internal_at}/refunds")).await;
    let policy = EgressPolicy::new()
        .external("maps", &third.to_string())
        .internal(&internal_at.to_string());
    let inner = reqwest::Client::builder()
        .redirect(redirect_policy(policy.clone(), None))
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(SandboxMiddleware::new().egress_policy(policy, None))
        .build();
    let _ = client
        .post(format!("http://{third}/webhook"))
        .send()
        .in_sandbox(sandbox("atk2-b2b"))
        .await;
    let seen = internal.last_headers();
    assert!(
        internal.calls() == 0 || seen.contains("prodbox.sandbox=atk2-b2b"),
        "internal service ran a sandboxed request as production:\n{seen}"
    );
}

// B2c. And the A1 set-up (guard() + the middleware on the service's own client): the
// connector guard is blind too on the external path (it reads the same context).
#[tokio::test]
async fn b2c_middleware_external_path_blinds_the_connect_guard() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let third = redirector(format!("http://{at}/charges")).await;
    let policy = EgressPolicy::new().external("maps", &third.to_string());
    let inner = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy.clone(), None)
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(SandboxMiddleware::new().egress_policy(policy, None))
        .build();
    let _ = client
        .post(format!("http://{third}/webhook"))
        .send()
        .in_sandbox(sandbox("atk2-b2c"))
        .await;
    assert_eq!(provider.calls(), 0, "redirect followed past guard()");
}

// ---------------------------------------------------------------------------------------
// B3. Stub Forward: the credentials denylist (Authorization, Proxy-Authorization, Cookie,
// x-api-key) misses the provider's key in other common places: the query string
// (`?api_key=`, `?key=`), and headers such as `x-goog-api-key`, `api-key` (Azure),
// `x-auth-token`, `private-token` (GitLab), `x-amz-security-token`.
#[tokio::test]
async fn b3_stub_service_receives_credentials_outside_the_denylist() {
    let (provider, stub) = (Recorder::default(), Recorder::default());
    let (at, stub_at) = (provider.start().await, stub.start().await);
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk2-b3".parse().expect("key")).stub(
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
        .header("x-goog-api-key", "GOOG_SECRET")
        .header("api-key", "AZURE_SECRET")
        .header("x-auth-token", "AUTH_TOKEN_SECRET")
        .header("private-token", "GITLAB_SECRET")
        .header("x-amz-security-token", "AMZ_SECRET")
        .body(Body::empty())
        .expect("request");
    client
        .oneshot(req)
        .in_sandbox(sandbox("atk2-b3"))
        .await
        .expect("stubbed");
    assert_eq!(provider.calls(), 0);
    let seen = stub.last_headers();
    println!("stub saw headers:\n{seen}");
    assert!(
        !seen.contains("SECRET"),
        "the sandbox's stub service got the provider's credentials:\n{seen}"
    );
}

// B3b. The query string reaches the stub service (path and query kept by design).
#[tokio::test]
async fn b3b_stub_service_receives_query_string_key() {
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let stub_at = prodbox_testkit::serve(axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: http::Uri| {
            let seen = seen.clone();
            async move {
                *seen.lock().expect("lock") = uri.to_string();
                "stubbed"
            }
        }
    }))
    .await;
    let provider = Recorder::default();
    let at = provider.start().await;
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk2-b3b".parse().expect("key")).stub(
        "maps",
        format!("http://{stub_at}").parse().expect("address"),
    ));
    let client = tower_client(
        EgressPolicyLayer::new(EgressPolicy::new().external("maps", &at.to_string()))
            .directory(directory),
    );
    let req = Request::get(format!("http://{at}/maps/api/geocode?key=AIza_SECRET"))
        .body(Body::empty())
        .expect("request");
    // The stub's address is not a listed stub service: refused, nothing sent anywhere.
    let refused = client
        .oneshot(req)
        .in_sandbox(sandbox("atk2-b3b"))
        .await
        .expect_err("refused");
    assert!(refused_in(&*refused), "{refused:?}");
    let uri = seen.lock().expect("lock").clone();
    assert!(
        !uri.contains("SECRET"),
        "the sandbox's stub service got the key in the query: {uri}"
    );
    assert_eq!(provider.calls(), 0);
}

// ---------------------------------------------------------------------------------------
// B4. A7's Host check exists only in the Tower layer: the reqwest middleware sends a
// sandboxed request to an internal URI with a Host header naming another host.
#[tokio::test]
async fn b4_middleware_internal_host_header_mismatch_passes() {
    let internal = Recorder::default();
    let at = internal.start().await;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            SandboxMiddleware::new()
                .egress_policy(EgressPolicy::new().internal(&at.to_string()), None),
        )
        .build();
    let r = client
        .post(format!("http://{at}/v1/charges"))
        .header("host", "api.payments.example")
        .send()
        .in_sandbox(sandbox("atk2-b4"))
        .await;
    let seen = internal.last_headers();
    assert!(
        r.is_err() || !seen.contains("host: api.payments.example"),
        "an undeclared Host went out under an internal URI (reqwest middleware):\n{seen}"
    );
}

// B5. Two Host headers: the layer checks only the first.
#[tokio::test]
async fn b5_layer_checks_only_the_first_host_header() {
    let internal = Recorder::default();
    let at = internal.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().internal(&at.to_string()),
    ));
    let req = Request::post(format!("http://{at}/v1/charges"))
        .header("host", at.to_string())
        .header("host", "api.payments.example")
        .body(Body::empty())
        .expect("request");
    let r = client.oneshot(req).in_sandbox(sandbox("atk2-b5")).await;
    let seen = internal.last_headers();
    println!("internal saw:\n{seen}");
    assert!(
        r.is_err() || !seen.contains("api.payments.example"),
        "a second, undeclared Host went out:\n{seen}"
    );
}

// B6. SECURITY.md: "A sandboxed request whose Host header names another authority than its
// URI is refused". Only Internal verdicts are checked: an external one goes.
#[tokio::test]
async fn b6_external_host_header_mismatch_is_not_refused() {
    let maps = Recorder::default();
    let at = maps.start().await;
    let client = tower_client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", &at.to_string()),
    ));
    let req = Request::get(format!("http://{at}/route"))
        .header("host", "billing.internal")
        .body(Body::empty())
        .expect("request");
    let r = client.oneshot(req).in_sandbox(sandbox("atk2-b6")).await;
    assert!(
        r.is_err(),
        "sent to a third party with Host naming another authority (docs say refused)"
    );
}

// ---------------------------------------------------------------------------------------
// B7. Audit: a guarded SDK client's refusal of a *declared* internal destination is audited
// as `egress_undeclared` (every EgressRefused has that reason).
#[tokio::test]
async fn b7_audit_reason_of_a_declared_destination_refused() {
    let audit = AuditLog::global();
    let internal = Recorder::default();
    let at = internal.start().await;
    let connector = GuardedConnector::new(
        HttpConnector::new(),
        EgressPolicy::new().internal(&at.to_string()),
    );
    let sdk: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let r = sdk
        .request(
            Request::get(format!("http://{at}/x"))
                .body(Body::empty())
                .expect("r"),
        )
        .in_sandbox(sandbox("atk2-b7"))
        .await;
    assert!(r.is_err());
    let events = audit.matching("sandbox", "atk2-b7");
    println!("{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.get("reason").map(String::as_str) != Some("egress_undeclared")),
        "a declared destination refused by a guarded client is audited as undeclared: {events:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Checks that should hold (not findings if they pass).

// H1. Concurrency: many sandboxed + production calls through one guarded hyper client
// (HTTP/1, with pool): no sandboxed call reaches the undeclared provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_concurrent_h1_calls_through_guarded_connector() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let policy = EgressPolicy::new().external("maps", "maps.example.com");
    let connector = GuardedConnector::new(HttpConnector::new(), policy);
    let sdk: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let sdk = sdk.clone();
        let uri = format!("http://{at}/charges");
        tasks.push(tokio::spawn(async move {
            let call = sdk.request(Request::post(uri).body(Body::empty()).expect("r"));
            if i % 2 == 0 {
                (true, call.in_sandbox(sandbox("atk2-h1")).await.is_ok())
            } else {
                (false, call.await.is_ok())
            }
        }));
    }
    let mut sandboxed_sent = 0;
    let mut production_ok = 0;
    for t in tasks {
        let (sandboxed, ok) = t.await.expect("join");
        if sandboxed && ok {
            sandboxed_sent += 1;
        }
        if !sandboxed && ok {
            production_ok += 1;
        }
    }
    assert_eq!(sandboxed_sent, 0);
    assert_eq!(provider.calls(), production_ok);
}

// H2. Stub Forward through reqwest middleware + redirect_policy, the stub redirecting to the
// real provider: refused.
#[tokio::test]
async fn h2_stub_forward_redirecting_to_provider_is_refused() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let stub_at = redirector(format!("http://{at}/charges")).await;
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("atk2-h2".parse().expect("key")).stub(
        "payments",
        format!("http://{stub_at}").parse().expect("address"),
    ));
    let directory: Arc<dyn prodbox_core::directory::Directory> = Arc::new(directory);
    let policy = EgressPolicy::new().external("payments", &at.to_string());
    let inner = reqwest::Client::builder()
        .redirect(redirect_policy(policy.clone(), Some(directory.clone())))
        .build()
        .expect("client");
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(SandboxMiddleware::new().egress_policy(policy, Some(directory)))
        .build();
    let _ = client
        .post(format!("http://{at}/charges"))
        .send()
        .in_sandbox(sandbox("atk2-h2"))
        .await;
    assert_eq!(provider.calls(), 0);
}

// H3. Explicit default port vs a port-ful pattern, in both clients: http://host:80 and
// http://host are the same destination.
#[test]
fn h3_explicit_default_port() {
    let policy = EgressPolicy::new().external("maps", "maps.example.com:80");
    let s = sandbox("atk2-h3");
    assert!(matches!(
        policy.decide(Some(&s), None, "maps.example.com", Some(80)),
        prodbox_core::egress::EgressVerdict::External { .. }
    ));
    let _ = Stub::respond(200, "text/plain", "x");
}
