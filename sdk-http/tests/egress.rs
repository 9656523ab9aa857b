//! The egress policy against real HTTP services on loopback: a "payment provider" that counts
//! what reaches it, an internal service, and a stub service. Sandboxed calls reach only what the
//! policy declares, third parties never see prodbox's baggage, stubs answer instead of the
//! provider, and production's calls are untouched.
//!
//! Audit records are process-global: every test uses sandbox keys of its own.

use std::net::SocketAddr;

use axum::body::Body;
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
use prodbox_testkit::AuditLog;
use tower::{ServiceBuilder, ServiceExt};

mod common;

use common::{Recorder, Transport, redirector, refused_in, sandbox, tower_client};

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

#[tokio::test]
async fn an_undeclared_destination_is_refused_for_sandboxes_only() {
    let audit = AuditLog::global();
    let provider = Recorder::default();
    let at = provider.start().await;
    let client = tower_client(EgressPolicyLayer::new(
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
    let client = tower_client(EgressPolicyLayer::new(
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
    let client = tower_client(EgressPolicyLayer::new(
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
    let client = tower_client(EgressPolicyLayer::new(EgressPolicy::new().stub(
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
    let client = tower_client(
        EgressPolicyLayer::new(
            EgressPolicy::new()
                .external("payments", &at.to_string())
                .stub_services("127.0.0.1"),
        )
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

/// reqwest follows redirects below any middleware: an internal service that redirects a
/// sandboxed request to a third party (undeclared, or declared and so never meant to see the
/// context) ends the request; production's requests follow.
#[tokio::test]
async fn a_redirect_to_a_third_party_ends_a_sandboxed_request() {
    let provider = Recorder::default();
    let at = provider.start().await;
    let internal = redirector(format!("http://{at}/charges")).await;
    for policy in [
        EgressPolicy::new().internal(&internal.to_string()),
        EgressPolicy::new()
            .internal(&internal.to_string())
            .external("payments", &at.to_string()),
    ] {
        let client = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
            .build()
            .expect("client");
        let s = sandbox("egress-redirect");
        let error = client
            .get(format!("http://{internal}/pay"))
            .send()
            .in_sandbox(s)
            .await
            .expect_err("refused");
        assert!(refused_in(&error), "{error:?}");
        assert_eq!(provider.calls(), 0, "the provider was reached");
    }
    let client = prodbox_http::reqwest::guard(
        reqwest::Client::builder(),
        EgressPolicy::new().internal(&internal.to_string()),
        None,
    )
    .build()
    .expect("client");
    let response = client
        .get(format!("http://{internal}/pay"))
        .send()
        .await
        .expect("followed");
    assert_eq!(response.status(), 200);
    assert_eq!(provider.calls(), 1);
}

/// A provider sandboxes may not reach, a declared third party ("maps"), and the policy.
async fn provider_and_maps() -> (Recorder, SocketAddr, Recorder, SocketAddr, EgressPolicy) {
    let (provider, maps) = (Recorder::default(), Recorder::default());
    let (at, maps_at) = (provider.start().await, maps.start().await);
    let policy = EgressPolicy::new().external("maps", &maps_at.to_string());
    (provider, at, maps, maps_at, policy)
}

/// A third-party SDK's own hyper client, built on the guarded connector: a sandboxed call to a
/// destination sandboxes may not reach opens no connection, even right after production opened
/// one to it (that connection is not pooled); declared third parties work.
#[tokio::test]
async fn an_sdk_client_on_the_guarded_connector_refuses_sandboxed_calls() {
    let (provider, at, maps, maps_at, policy) = provider_and_maps().await;
    let connector = prodbox_http::egress::GuardedConnector::new(HttpConnector::new(), policy);
    let sdk: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let get = |uri: String| sdk.request(Request::get(uri).body(Body::empty()).expect("request"));
    let s = sandbox("egress-sdk");

    // Production first: its connection to the provider must not serve the sandbox after it.
    assert_eq!(
        get(format!("http://{at}/charges"))
            .await
            .expect("baseline")
            .status(),
        200
    );
    let error = get(format!("http://{at}/charges"))
        .in_sandbox(s.clone())
        .await
        .expect_err("refused");
    assert!(refused_in(&error), "{error:?}");
    assert_eq!(provider.calls(), 1);
    // Again, production after production: each opens its own connection, and both work.
    assert_eq!(
        get(format!("http://{at}/charges"))
            .await
            .expect("baseline")
            .status(),
        200
    );
    assert_eq!(provider.calls(), 2);

    // A declared third party: sandboxed calls connect (and may reuse production's).
    assert_eq!(
        get(format!("http://{maps_at}/route"))
            .await
            .expect("baseline")
            .status(),
        200
    );
    let ok = get(format!("http://{maps_at}/route"))
        .in_sandbox(s)
        .await
        .expect("allowed");
    assert_eq!(ok.status(), 200);
    assert_eq!(maps.calls(), 2);
}

/// The same SDK on reqwest, guarded: no connection for a sandboxed call, and none kept idle for
/// one to reuse.
#[tokio::test]
async fn an_sdk_reqwest_client_guarded_refuses_sandboxed_calls() {
    let (provider, at, maps, maps_at, policy) = provider_and_maps().await;
    let sdk = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
        .build()
        .expect("client");
    let s = sandbox("egress-sdk-reqwest");
    assert_eq!(
        sdk.get(format!("http://{at}/charges"))
            .send()
            .await
            .expect("baseline")
            .status(),
        200
    );
    let error = sdk
        .get(format!("http://{at}/charges"))
        .send()
        .in_sandbox(s.clone())
        .await
        .expect_err("refused");
    assert!(refused_in(&error), "{error:?}");
    assert_eq!(provider.calls(), 1);
    let ok = sdk
        .get(format!("http://{maps_at}/route"))
        .send()
        .in_sandbox(s)
        .await
        .expect("allowed");
    assert_eq!(ok.status(), 200);
    assert_eq!(maps.calls(), 1);
}
