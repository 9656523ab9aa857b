//! The egress policy against real HTTP services on loopback: a "payment provider" that counts
//! what reaches it, an internal service, and a stub service. Sandboxed calls reach only what the
//! policy declares, third parties never see prodbox's baggage, stubs answer instead of the
//! provider, and production's calls are untouched.
//!
//! Audit records are process-global: every test uses sandbox keys of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::egress::{EgressPolicy, EgressRefused, Stub};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_http::client::BoxError;
use prodbox_http::{EgressPolicyLayer, PropagateSandboxLayer};
use prodbox_testkit::{AuditLog, serve};
use tower::{ServiceBuilder, ServiceExt};

/// A service that counts its calls and answers with the `baggage` it was sent.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(&self) -> SocketAddr {
        async fn record(State(r): State<Recorder>, headers: HeaderMap) -> String {
            r.calls.fetch_add(1, Ordering::SeqCst);
            let baggage = headers
                .get_all("baggage")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(";");
            r.seen.lock().expect("lock").push(baggage.clone());
            baggage
        }
        serve(
            Router::new()
                .route("/{*path}", any(record))
                .with_state(self.clone()),
        )
        .await
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> String {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

type Transport = Client<HttpConnector, Body>;

fn client(
    layer: EgressPolicyLayer,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<prodbox_http::egress::EgressBody<hyper::body::Incoming>>,
    Error = BoxError,
> + Clone {
    let transport: Transport = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .layer(layer)
        .service(transport)
}

async fn call<C>(
    client: &C,
    uri: String,
    sandbox: Option<&Sandbox>,
) -> Result<(u16, String), BoxError>
where
    C: tower::Service<
            Request<Body>,
            Response = http::Response<prodbox_http::egress::EgressBody<hyper::body::Incoming>>,
            Error = BoxError,
        > + Clone,
{
    let request = Request::get(uri)
        .header("baggage", "tenant=acme")
        .body(Body::empty())
        .expect("request");
    let sent = client.clone().oneshot(request);
    let response = match sandbox {
        Some(s) => sent.in_sandbox(s.clone()).await?,
        None => sent.await?,
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(key.parse().expect("key"))
}

#[tokio::test]
async fn an_undeclared_destination_is_refused_for_sandboxes_only() {
    let audit = AuditLog::global();
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = client(EgressPolicyLayer::new(
        EgressPolicy::new().internal("billing"),
    ));
    let s = sandbox("egress-undeclared");

    let error = call(&client, format!("http://{at}/charges"), Some(&s))
        .await
        .expect_err("refused");
    let refused = error.downcast_ref::<EgressRefused>().expect("typed");
    assert_eq!(refused.destination, at.to_string());
    assert_eq!(provider.calls(), 0, "the provider was reached");
    let events = audit.matching("sandbox", "egress-undeclared");
    assert!(
        events.iter().any(
            |e| e.get("reason").map(String::as_str) == Some("egress_undeclared")
                && e.get("decision").map(String::as_str) == Some("rejected")
        ),
        "{events:?}"
    );

    // Production's call goes out, baggage untouched.
    let (status, seen) = call(&client, format!("http://{at}/charges"), None)
        .await
        .expect("baseline");
    assert_eq!((status, seen.as_str()), (200, "tenant=acme"));
    assert_eq!(provider.calls(), 1);
}

#[tokio::test]
async fn a_third_party_never_sees_prodbox_baggage() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = client(EgressPolicyLayer::new(
        EgressPolicy::new().external("maps", &at.to_string()),
    ));
    let s = Sandbox::builder("egress-external")
        .expect("key")
        .actor("alice")
        .expect("actor")
        .build();
    let (status, seen) = call(&client, format!("http://{at}/route"), Some(&s))
        .await
        .expect("sent");
    assert_eq!(status, 200);
    assert_eq!(
        seen, "tenant=acme",
        "only the application's own members went out"
    );
    assert_eq!(provider.calls(), 1);
}

#[tokio::test]
async fn internal_services_get_the_context() {
    let internal = Recorder::default();
    let at = internal.start().await;
    let client = client(EgressPolicyLayer::new(
        EgressPolicy::new().internal(&at.to_string()),
    ));
    let s = sandbox("egress-internal");
    let (_, seen) = call(&client, format!("http://{at}/x"), Some(&s))
        .await
        .expect("sent");
    assert!(
        seen.starts_with("prodbox.sandbox=egress-internal"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_stub_answers_instead_of_the_provider() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = client(EgressPolicyLayer::new(EgressPolicy::new().stub(
        "payments",
        &at.to_string(),
        Stub::respond(201, "application/json", r#"{"charge":"stubbed"}"#),
    )));
    let s = sandbox("egress-stub");
    let (status, body) = call(&client, format!("http://{at}/charges"), Some(&s))
        .await
        .expect("stubbed");
    assert_eq!((status, body.as_str()), (201, r#"{"charge":"stubbed"}"#));
    assert_eq!(provider.calls(), 0);
    // Production is charged for real.
    call(&client, format!("http://{at}/charges"), None)
        .await
        .expect("baseline");
    assert_eq!(provider.calls(), 1);
}

/// A sandbox's own stub from the directory (`prodbox sandbox create --stub payments=URL`):
/// its calls go to that stub service, with the context; other sandboxes keep the policy's
/// answer.
#[tokio::test]
async fn a_sandboxs_own_stub_service_gets_its_calls() {
    let (provider, stub) = (Recorder::default(), Recorder::default());
    let (at, stub_at) = (provider.start().await, stub.start().await);
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("egress-own-stub".parse().expect("key")).stub(
            "payments",
            format!("http://{stub_at}").parse().expect("address"),
        ),
    );
    let client = client(
        EgressPolicyLayer::new(EgressPolicy::new().external("payments", &at.to_string()))
            .directory(directory),
    );
    let own = sandbox("egress-own-stub");
    call(&client, format!("http://{at}/charges?id=7"), Some(&own))
        .await
        .expect("stubbed");
    assert_eq!((stub.calls(), provider.calls()), (1, 0));
    assert!(
        stub.last().starts_with("prodbox.sandbox=egress-own-stub"),
        "{}",
        stub.last()
    );

    let other = sandbox("egress-other");
    call(&client, format!("http://{at}/charges"), Some(&other))
        .await
        .expect("external");
    assert_eq!((stub.calls(), provider.calls()), (1, 1));
    assert_eq!(provider.last(), "tenant=acme");
}

/// With the policy layer outside the propagation layer (the wrong way round), a third party
/// still gets no prodbox baggage: the call below it runs without the sandbox.
#[tokio::test]
async fn a_third_party_gets_no_context_whatever_the_layer_order() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let transport: Transport = Client::builder(TokioExecutor::new()).build_http();
    let reversed = ServiceBuilder::new()
        .layer(EgressPolicyLayer::new(
            EgressPolicy::new().external("maps", &at.to_string()),
        ))
        .layer(PropagateSandboxLayer::new())
        .service(transport);
    let s = sandbox("egress-reversed");
    let request = Request::get(format!("http://{at}/route"))
        .header("baggage", "tenant=acme")
        .body(Body::empty())
        .expect("request");
    let response = reversed.oneshot(request).in_sandbox(s).await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(provider.last(), "tenant=acme");
}
