//! The client side against real servers on loopback: `PropagateSandboxLayer` over hyper-util's
//! legacy client and `reqwest::SandboxMiddleware` write, merge and refuse to write the sandbox
//! context; the circuit breaker; token forwarding from a `Signed` ingress.
//!
//! Audit records are process-global: every test uses sandbox keys of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::guardrails::{ThrottleReason, Throttled};
use prodbox_core::token::TokenKeys;
use prodbox_core::{FutureExt, Guardrails, Sandbox, TrustPolicy};
use prodbox_http::client::BoxError;
use prodbox_http::reqwest::SandboxMiddleware;
use prodbox_http::{InjectError, PropagateSandbox, PropagateSandboxLayer, SandboxLayer};
use prodbox_testkit::{AuditLog, AuditRecord, serve};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

type HyperClient = PropagateSandbox<Client<HttpConnector, Body>>;

fn transport() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http::<Body>()
}

fn hyper_client(layer: PropagateSandboxLayer) -> HyperClient {
    ServiceBuilder::new().layer(layer).service(transport())
}

fn reqwest_client() -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(SandboxMiddleware::new())
        .build()
}

fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(key.parse().expect("a valid sandbox key"))
}

fn baggage_of(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("baggage")
        .iter()
        .map(|v| v.to_str().expect("a visible ASCII header").to_owned())
        .collect()
}

/// A server that counts the requests it received: `/echo` returns the `baggage` headers as
/// sent, `/fail` answers 500, and `/decoded` (behind an `Accept` ingress) reports the sandbox
/// it runs in.
#[derive(Clone)]
struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Echo {
    async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        async fn echo(State(hits): State<Arc<AtomicUsize>>, headers: HeaderMap) -> Json<Value> {
            hits.fetch_add(1, Ordering::SeqCst);
            Json(json!({ "baggage": baggage_of(&headers) }))
        }
        async fn fail(State(hits): State<Arc<AtomicUsize>>) -> StatusCode {
            hits.fetch_add(1, Ordering::SeqCst);
            StatusCode::INTERNAL_SERVER_ERROR
        }
        async fn decoded() -> Json<Value> {
            let sandbox = prodbox_core::current();
            Json(json!({
                "sandbox": sandbox.as_ref().map(|s| s.key().to_string()),
                "actor": sandbox.as_ref().and_then(|s| s.actor().map(str::to_owned)),
            }))
        }
        let decoding = Router::new()
            .route("/decoded", get(decoded))
            .layer(SandboxLayer::new(TrustPolicy::accept()));
        let router = Router::new()
            .route("/echo", get(echo))
            .route("/fail", get(fail))
            .with_state(Arc::clone(&hits))
            .merge(decoding);
        let addr = serve(router).await;
        Self { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn request(url: &str, baggage: &[&str]) -> Request<Body> {
    let mut builder = Request::get(url);
    for value in baggage {
        builder = builder.header("baggage", *value);
    }
    builder.body(Body::empty()).expect("a valid request")
}

async fn json_of(response: axum::http::Response<hyper::body::Incoming>) -> Value {
    assert_eq!(response.status(), 200);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a complete body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// Calls `/echo` through `client`, in `sandbox` if given; returns the baggage headers received.
async fn echoed(
    client: &HyperClient,
    echo: &Echo,
    baggage: &[&str],
    sandbox: Option<Sandbox>,
) -> Value {
    let call = client.clone().oneshot(request(&echo.url("/echo"), baggage));
    let response = match sandbox {
        Some(sandbox) => call.in_sandbox(sandbox).await,
        None => call.await,
    };
    json_of(response.expect("the call succeeds")).await["baggage"].clone()
}

fn audited(audit: &AuditLog, sandbox: &str, decision: &str, reason: &str) -> Vec<AuditRecord> {
    audit
        .matching("sandbox", sandbox)
        .into_iter()
        .filter(|r| r["decision"] == decision && r["reason"] == reason)
        .collect()
}

fn inject_error(error: &BoxError) -> &InjectError {
    error
        .downcast_ref::<InjectError>()
        .unwrap_or_else(|| panic!("not an InjectError: {error:?}"))
}

#[tokio::test]
async fn hyper_client_writes_the_sandbox_and_nothing_else() {
    let echo = Echo::start().await;
    let client = hyper_client(PropagateSandboxLayer::new());

    assert_eq!(
        echoed(&client, &echo, &[], None).await,
        json!([]),
        "baseline: no header"
    );
    assert_eq!(
        echoed(&client, &echo, &["tenant=acme"], None).await,
        json!(["tenant=acme"]),
        "baseline: the caller's header as it was"
    );

    let actor = Sandbox::builder("cl-actor")
        .unwrap()
        .actor("alice smith=ops")
        .unwrap()
        .build();
    assert_eq!(
        echoed(&client, &echo, &[], Some(actor.clone())).await,
        json!(["prodbox.sandbox=cl-actor,prodbox.actor=alice%20smith%3Dops"])
    );
    assert_eq!(
        echoed(&client, &echo, &[], Some(sandbox("cl-bare"))).await,
        json!(["prodbox.sandbox=cl-bare"])
    );

    // An ingress decodes what the client wrote back to the same actor.
    let response = client
        .clone()
        .oneshot(request(&echo.url("/decoded"), &[]))
        .in_sandbox(actor)
        .await
        .unwrap();
    let seen = json_of(response).await;
    assert_eq!(
        seen,
        json!({"sandbox": "cl-actor", "actor": "alice smith=ops"})
    );
    assert_eq!(echo.hits(), 4);
}

#[tokio::test]
async fn hyper_client_merges_into_the_existing_header() {
    let echo = Echo::start().await;
    let client = hyper_client(PropagateSandboxLayer::new());
    let bob = Sandbox::builder("cl-merge")
        .unwrap()
        .actor("bob")
        .unwrap()
        .build();

    assert_eq!(
        echoed(
            &client,
            &echo,
            &["tenant=acme;p=1, prodbox.sandbox=old, other=x"],
            Some(bob.clone())
        )
        .await,
        json!(["prodbox.sandbox=cl-merge,prodbox.actor=bob,tenant=acme;p=1,other=x"])
    );
    // Across several headers; stale members of ours the sandbox does not set are dropped too.
    assert_eq!(
        echoed(
            &client,
            &echo,
            &[
                "tenant=acme;p=1",
                "prodbox.actor=mallory, other=x,prodbox.token=stale"
            ],
            Some(sandbox("cl-merge-2")),
        )
        .await,
        json!(["prodbox.sandbox=cl-merge-2,tenant=acme;p=1,other=x"])
    );
}

#[tokio::test]
async fn hyper_client_fails_closed_when_the_context_cannot_be_written() {
    let audit = AuditLog::global();
    let echo = Echo::start().await;
    let client = hyper_client(PropagateSandboxLayer::new());

    let error = client
        .clone()
        .oneshot(request(&echo.url("/echo"), &["tenant=acme, broken"]))
        .in_sandbox(sandbox("cl-bad"))
        .await
        .unwrap_err();
    let inject = inject_error(&error);
    assert_eq!(inject.sandbox.as_str(), "cl-bad");
    assert_eq!(inject.source.reason(), "baggage_malformed_member");
    assert!(error.to_string().contains("cl-bad"), "{error}");
    assert_eq!(
        echo.hits(),
        0,
        "a request that cannot carry its sandbox never goes out"
    );
    assert_eq!(
        audited(&audit, "cl-bad", "rejected", "baggage_malformed_member").len(),
        1,
        "{:?}",
        audit.matching("sandbox", "cl-bad")
    );
    let record = &audited(&audit, "cl-bad", "rejected", "baggage_malformed_member")[0];
    assert_eq!(record["direction"], "outbound");

    // Adding our members would break the member limit: refused as well.
    let full: Vec<String> = (0..64).map(|i| format!("m{i}={i}")).collect();
    let error = client
        .clone()
        .oneshot(request(&echo.url("/echo"), &[&full.join(",")]))
        .in_sandbox(sandbox("cl-full"))
        .await
        .unwrap_err();
    assert_eq!(
        inject_error(&error).source.reason(),
        "baggage_too_many_members"
    );
    assert_eq!(echo.hits(), 0);

    // Baseline requests go out untouched.
    assert_eq!(
        echoed(&client, &echo, &["tenant=acme, broken"], None).await,
        json!(["tenant=acme, broken"])
    );
    assert_eq!(
        echoed(&client, &echo, &[&full.join(",")], None).await,
        json!([full.join(",")])
    );
    assert_eq!(echo.hits(), 2);
}

#[tokio::test]
async fn the_circuit_breaker_opens_per_sandbox_and_destination() {
    let audit = AuditLog::global();
    let failing = Echo::start().await;
    let healthy = Echo::start().await;
    let client = hyper_client(
        PropagateSandboxLayer::new().guardrails(
            Guardrails::builder()
                .circuit_breaker(3, Duration::from_secs(3600))
                .build(),
        ),
    );
    let call = |url: String, sandbox: Option<Sandbox>| {
        let call = client.clone().oneshot(request(&url, &[]));
        async move {
            match sandbox {
                Some(sandbox) => call.in_sandbox(sandbox).await,
                None => call.await,
            }
        }
    };

    for i in 1..=3 {
        let response = call(failing.url("/fail"), Some(sandbox("cb-1")))
            .await
            .unwrap();
        assert_eq!(response.status(), 500, "call {i}");
        assert_eq!(failing.hits(), i);
    }
    let error = call(failing.url("/fail"), Some(sandbox("cb-1")))
        .await
        .unwrap_err();
    let throttled = error
        .downcast_ref::<Throttled>()
        .unwrap_or_else(|| panic!("not Throttled: {error:?}"));
    assert_eq!(throttled.reason, ThrottleReason::CircuitOpen);
    assert_eq!(throttled.sandbox.as_str(), "cb-1");
    assert!(
        throttled.retry_after > Duration::from_secs(3000),
        "{throttled:?}"
    );
    assert_eq!(
        failing.hits(),
        3,
        "the open breaker fails fast without calling"
    );

    // Baseline calls and other sandboxes still reach the failing server.
    let response = call(failing.url("/fail"), None).await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(failing.hits(), 4);
    let response = call(failing.url("/fail"), Some(sandbox("cb-2")))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(failing.hits(), 5);
    // The breaker is per destination: the same sandbox still reaches another server.
    let response = call(healthy.url("/echo"), Some(sandbox("cb-1")))
        .await
        .unwrap();
    assert_eq!(
        json_of(response).await["baggage"],
        json!(["prodbox.sandbox=cb-1"])
    );

    let error = call(failing.url("/fail"), Some(sandbox("cb-1")))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<Throttled>().is_some(), "{error:?}");
    assert_eq!(failing.hits(), 5);
    assert_eq!(
        audited(&audit, "cb-1", "throttled", "circuit_open").len(),
        2
    );
    assert!(audited(&audit, "cb-2", "throttled", "circuit_open").is_empty());
}

#[tokio::test]
async fn reqwest_middleware_writes_merges_and_fails_closed_alike() {
    let audit = AuditLog::global();
    let echo = Echo::start().await;
    let client = reqwest_client();
    let echoed = |baggage: &'static [&'static str], sandbox: Option<Sandbox>| {
        let mut builder = client.get(echo.url("/echo"));
        for value in baggage {
            builder = builder.header("baggage", *value);
        }
        async move {
            let response = match sandbox {
                Some(sandbox) => builder.send().in_sandbox(sandbox).await,
                None => builder.send().await,
            }?;
            assert_eq!(response.status(), 200);
            let seen: Value = response.json().await?;
            Ok::<_, reqwest_middleware::Error>(seen["baggage"].clone())
        }
    };

    assert_eq!(echoed(&[], None).await.unwrap(), json!([]));
    let actor = Sandbox::builder("rq-actor")
        .unwrap()
        .actor("alice smith=ops")
        .unwrap()
        .build();
    assert_eq!(
        echoed(&[], Some(actor)).await.unwrap(),
        json!(["prodbox.sandbox=rq-actor,prodbox.actor=alice%20smith%3Dops"])
    );
    let bob = Sandbox::builder("rq-merge")
        .unwrap()
        .actor("bob")
        .unwrap()
        .build();
    assert_eq!(
        echoed(
            &["tenant=acme;p=1, prodbox.sandbox=old", "other=x"],
            Some(bob)
        )
        .await
        .unwrap(),
        json!(["prodbox.sandbox=rq-merge,prodbox.actor=bob,tenant=acme;p=1,other=x"])
    );
    assert_eq!(echo.hits(), 3);

    let error = echoed(&["tenant=acme, broken"], Some(sandbox("rq-bad")))
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("not a middleware error: {error:?}");
    };
    let inject = error
        .downcast_ref::<InjectError>()
        .unwrap_or_else(|| panic!("not an InjectError: {error:?}"));
    assert_eq!(inject.sandbox.as_str(), "rq-bad");
    assert_eq!(echo.hits(), 3, "never sent");
    assert_eq!(
        audited(&audit, "rq-bad", "rejected", "baggage_malformed_member").len(),
        1
    );

    assert_eq!(
        echoed(&["tenant=acme, broken"], None).await.unwrap(),
        json!(["tenant=acme, broken"])
    );
    assert_eq!(echo.hits(), 4);
}

/// A `Signed` ingress whose handler calls `/seen` on a downstream `Signed` service through two
/// clients, one forwarding the token; reports both answers.
#[tokio::test]
async fn forward_token_carries_the_signed_token_onward() {
    let keys = TokenKeys::new()
        .with_key("k1", b"client-test-secret-of-32-bytes!!")
        .unwrap();

    async fn seen(headers: HeaderMap) -> Json<Value> {
        Json(json!({
            "sandbox": prodbox_core::current().map(|s| s.key().to_string()),
            "baggage": baggage_of(&headers),
        }))
    }
    let downstream = serve(
        Router::new()
            .route("/seen", get(seen))
            .route("/raw", get(seen))
            .layer(SandboxLayer::new(TrustPolicy::signed(keys.clone()))),
    )
    .await;
    let raw = Echo::start().await;

    #[derive(Clone)]
    struct Clients {
        forwarding: HyperClient,
        plain: HyperClient,
        downstream: SocketAddr,
        raw: String,
    }
    async fn call(client: &HyperClient, url: String) -> Value {
        let response = client.clone().oneshot(request(&url, &[])).await.unwrap();
        json_of(response).await
    }
    async fn ingress(State(clients): State<Clients>) -> Json<Value> {
        let url = format!("http://{}/seen", clients.downstream);
        Json(json!({
            "forwarding": call(&clients.forwarding, url.clone()).await,
            "plain": call(&clients.plain, url).await,
            "raw_forwarding": call(&clients.forwarding, clients.raw.clone()).await["baggage"],
            "raw_plain": call(&clients.plain, clients.raw.clone()).await["baggage"],
        }))
    }
    let clients = Clients {
        forwarding: hyper_client(PropagateSandboxLayer::from_egress(
            prodbox_core::egress::Egress::new(prodbox_core::audit::Protocol::Http)
                .forward_token(true),
        )),
        plain: hyper_client(PropagateSandboxLayer::new()),
        downstream,
        raw: raw.url("/echo"),
    };
    let edge = serve(
        Router::new()
            .route("/", get(ingress))
            .with_state(clients)
            .layer(SandboxLayer::new(TrustPolicy::signed(keys.clone()))),
    )
    .await;

    let sandbox = Sandbox::builder("fw-1")
        .unwrap()
        .actor("ci")
        .unwrap()
        .build();
    let token = keys.mint(&sandbox, Duration::from_secs(600)).unwrap();
    let seen: Value = reqwest::Client::new()
        .get(format!("http://{edge}/"))
        .header("baggage", format!("tenant=acme,prodbox.token={token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(
        seen["raw_forwarding"],
        json!([format!(
            "prodbox.sandbox=fw-1,prodbox.actor=ci,prodbox.token={token},tenant=acme"
        )]),
        "{seen}"
    );
    assert_eq!(
        seen["raw_plain"],
        json!(["prodbox.sandbox=fw-1,prodbox.actor=ci,tenant=acme"]),
        "{seen}"
    );
    // The next Signed service accepts the forwarded token; without it the context is stripped.
    assert_eq!(seen["forwarding"]["sandbox"], "fw-1", "{seen}");
    assert_eq!(seen["plain"]["sandbox"], Value::Null, "{seen}");
    assert_eq!(seen["plain"]["baggage"], json!(["tenant=acme"]), "{seen}");
}

/// The context decides our members: a baseline call (here, work a sandboxed handler started
/// as production) never carries prodbox members, even when the application copied them from
/// the inbound request. Other members stay.
#[tokio::test]
async fn baseline_calls_never_carry_copied_sandbox_members() {
    use opentelemetry::Context;
    use prodbox_core::ContextExt;

    let echo = Echo::start().await;
    let client = hyper_client(PropagateSandboxLayer::new());
    let copied = ["prodbox.sandbox=cl-copied,tenant=acme", "prodbox.actor=bob"];
    let baseline = client
        .clone()
        .oneshot(request(&echo.url("/echo"), &copied))
        .in_context(
            Context::current()
                .with_sandbox(sandbox("cl-copied"))
                .without_sandbox(),
        );
    let sent = json_of(baseline.await.expect("the call succeeds")).await["baggage"].clone();
    assert_eq!(sent, json!(["tenant=acme"]));

    // The same call in the sandbox writes it.
    let sent = echoed(&client, &echo, &copied, Some(sandbox("cl-copied"))).await;
    assert_eq!(sent, json!(["prodbox.sandbox=cl-copied,tenant=acme"]));
}

/// A lenient ingress that strips malformed sandbox baggage still carries the other members to
/// the next hop, as it does for a well-formed context it strips.
#[tokio::test]
async fn a_lenient_strip_keeps_other_members_travelling() {
    let echo = Echo::start().await;
    let client = hyper_client(PropagateSandboxLayer::new());
    let next = echo.url("/echo");
    let front = Router::new()
        .route(
            "/",
            get(move || {
                let client = client.clone();
                let next = next.clone();
                async move {
                    let response = client
                        .oneshot(request(&next, &[]))
                        .await
                        .expect("the call succeeds");
                    Json(json_of(response).await)
                }
            }),
        )
        .layer(SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::accept()).strict(false),
        ));
    let front = serve(front).await;
    for baggage in [
        "tenant=acme,prodbox.sandbox=PR_1",
        "tenant=acme,prodbox.sandbox=a,prodbox.sandbox=b",
    ] {
        let seen: Value = reqwest::Client::new()
            .get(format!("http://{front}/"))
            .header("baggage", baggage)
            .send()
            .await
            .expect("the call succeeds")
            .json()
            .await
            .expect("a JSON body");
        assert_eq!(seen["baggage"], json!(["tenant=acme"]), "{baggage}");
    }
}
