//! Observe-only rollout (`Ingress::observe_only`), through a real server on loopback: every
//! request is decided and audited as it would be, and none is acted on. The same requests
//! through the same layer without observe-only are the control: there they are sandboxed,
//! refused and throttled.
//!
//! Audit records and metrics are process-global: the sandbox keys are this file's own.

use std::net::SocketAddr;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Guardrails, Ingress, TrustPolicy};
use prodbox_http::SandboxLayer;
use prodbox_testkit::metrics::Metrics;
use prodbox_testkit::{AuditLog, serve};

/// What the handler saw: its sandbox (or `production`) and the `baggage` header it got.
async fn report(headers: HeaderMap) -> String {
    let sandbox = prodbox_core::current().map_or("production".to_owned(), |s| s.key().to_string());
    let baggage = headers
        .get("baggage")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    format!("{sandbox}|{baggage}")
}

async fn server(observe: bool) -> SocketAddr {
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("obs-on".parse().expect("a key")));
    let mut off = SandboxEntry::new("obs-off".parse().expect("a key"));
    off.disabled = true;
    directory.upsert(off);
    let ingress = Ingress::new(TrustPolicy::accept())
        .directory(directory)
        // One request a second per sandbox, no burst beyond it.
        .guardrails(Guardrails::builder().rate(1.0, 1).build())
        .observe_only(observe);
    serve(
        Router::new()
            .route("/", get(report))
            .layer(SandboxLayer::from_ingress(ingress)),
    )
    .await
}

async fn get_with(addr: SocketAddr, baggage: &str) -> (u16, String) {
    get_path(addr, "/", baggage).await
}

#[tokio::test]
async fn observe_only_decides_and_audits_everything_and_changes_nothing() {
    let audit = AuditLog::global();
    let metrics = Metrics::global();
    let on = "prodbox.sandbox=obs-on";
    let off = "prodbox.sandbox=obs-off";
    let malformed = "prodbox.sandbox=NOT-A-KEY";

    // The control: the same layer acting on its decisions.
    let acting = server(false).await;
    assert_eq!(get_with(acting, on).await, (200, format!("obs-on|{on}")));
    assert_eq!(
        get_with(acting, on).await.0,
        429,
        "throttled past one a second"
    );
    assert_eq!(get_with(acting, off).await.0, 403);
    assert_eq!(get_with(acting, malformed).await.0, 400);

    let observed_before = |decision: &str, reason: &str| {
        metrics.sum(
            "prodbox.sandbox.observed",
            &[("prodbox.decision", decision), ("prodbox.reason", reason)],
        )
    };
    let (accepted, throttled, disabled) = (
        observed_before("accepted", "trusted"),
        observed_before("throttled", "rate_limited"),
        observed_before("rejected", "sandbox_disabled"),
    );
    let decided_before = metrics.sum(
        "prodbox.sandbox.decisions",
        &[("prodbox.sandbox", "obs-on")],
    );

    // Observe-only: production's behaviour for every request, the message untouched.
    let observing = server(true).await;
    assert_eq!(
        get_with(observing, on).await,
        (200, format!("production|{on}"))
    );
    assert_eq!(
        get_with(observing, on).await,
        (200, format!("production|{on}")),
        "would be throttled, and is not"
    );
    assert_eq!(
        get_with(observing, off).await,
        (200, format!("production|{off}"))
    );
    assert_eq!(
        get_with(observing, malformed).await,
        (200, format!("production|{malformed}"))
    );

    // What it would have done, audited and counted as observed.
    let observed = audit.matching("observed", "true");
    let would = |sandbox: &str, decision: &str, reason: &str| {
        observed.iter().any(|r| {
            r.get("sandbox").map(String::as_str) == Some(sandbox)
                && r.get("decision").map(String::as_str) == Some(decision)
                && r.get("reason").map(String::as_str) == Some(reason)
        })
    };
    assert!(would("obs-on", "accepted", "trusted"), "{observed:#?}");
    assert!(
        would("obs-on", "throttled", "rate_limited"),
        "{observed:#?}"
    );
    assert!(
        would("obs-off", "rejected", "sandbox_disabled"),
        "{observed:#?}"
    );
    assert!(
        would("-", "rejected", "invalid_sandbox_key"),
        "{observed:#?}"
    );
    assert!(observed_before("accepted", "trusted") > accepted);
    assert!(observed_before("throttled", "rate_limited") > throttled);
    assert!(observed_before("rejected", "sandbox_disabled") > disabled);
    // None of it counts as a decision made.
    assert_eq!(
        metrics.sum(
            "prodbox.sandbox.decisions",
            &[("prodbox.sandbox", "obs-on")]
        ),
        decided_before
    );
}

/// A service that answers with its name.
async fn named(name: &'static str) -> SocketAddr {
    serve(Router::new().route("/", get(move || async move { name }))).await
}

/// A front server, observing or acting, whose handler calls `billing` (baseline at
/// `baseline`) through a routing client, and answers with the name of the billing that
/// answered.
async fn front(observe: bool, directory: MemoryDirectory, baseline: SocketAddr) -> SocketAddr {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use prodbox_http::{ForkRoutingLayer, PropagateSandboxLayer};
    use tower::{ServiceBuilder, ServiceExt};

    let client = ServiceBuilder::new()
        .layer(
            ForkRoutingLayer::new(directory.clone()).service_at(&baseline.to_string(), "billing"),
        )
        .layer(PropagateSandboxLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<Body>());
    let call_billing = move || {
        let client = client.clone();
        async move {
            let request = axum::http::Request::get(format!("http://{baseline}/"))
                .body(Body::empty())
                .expect("a request");
            let response = client.oneshot(request).await.expect("billing answers");
            let body = response.into_body().collect().await.expect("a body");
            String::from_utf8_lossy(&body.to_bytes()).into_owned()
        }
    };
    // The same call made production's on purpose: never routed, so never reported.
    let call_as_production = {
        let call_billing = call_billing.clone();
        move || prodbox_core::FutureExt::in_production(call_billing())
    };
    let ingress = Ingress::new(TrustPolicy::accept())
        .directory(directory)
        .observe_only(observe);
    serve(
        Router::new()
            .route("/", get(call_billing))
            .route("/production", get(call_as_production))
            .layer(SandboxLayer::from_ingress(ingress)),
    )
    .await
}

/// `path` on `addr` with `baggage`.
async fn get_path(addr: SocketAddr, path: &str, baggage: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("baggage", baggage)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

#[tokio::test]
async fn an_observing_server_audits_where_its_calls_would_be_routed_and_sends_them_to_baseline() {
    // Installed before any of prodbox's instruments is made (they bind to the provider of
    // their first use), as every test of this binary does.
    let _metrics = Metrics::global();
    let audit = AuditLog::global();
    let baseline = named("baseline").await;
    let fork = named("fork").await;
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("obs-route".parse().expect("a key")).fork(
        "billing",
        format!("http://{fork}").parse().expect("a fork address"),
    ));
    let baggage = "prodbox.sandbox=obs-route";

    // The control: acting, the call goes to the fork.
    let acting = front(false, directory.clone(), baseline).await;
    assert_eq!(get_with(acting, baggage).await, (200, "fork".to_owned()));

    let observing = front(true, directory, baseline).await;
    assert_eq!(
        get_with(observing, baggage).await,
        (200, "baseline".to_owned())
    );
    let would_route: Vec<_> = audit
        .matching("observed", "true")
        .into_iter()
        .filter(|r| {
            r.get("sandbox").map(String::as_str) == Some("obs-route")
                && r.get("direction").map(String::as_str) == Some("outbound")
        })
        .map(|r| (r.get("decision").cloned(), r.get("reason").cloned()))
        .collect();
    assert_eq!(
        would_route,
        [(Some("routed".to_owned()), Some("fork".to_owned()))],
        "one observed routing, none acted on"
    );

    // Made production's on purpose inside the observed request: nothing to report.
    assert_eq!(
        get_path(observing, "/production", baggage).await,
        (200, "baseline".to_owned())
    );
    let reported = audit
        .matching("observed", "true")
        .into_iter()
        .filter(|r| {
            r.get("sandbox").map(String::as_str) == Some("obs-route")
                && r.get("direction").map(String::as_str) == Some("outbound")
        })
        .count();
    assert_eq!(reported, 1, "no observed routing for in_production work");
}

/// An observe-only layer inside an acting one (one route observing under a service that
/// acts) leaves the sandbox the outer layer attached: it changes nothing, not even that.
#[tokio::test]
async fn an_observing_layer_inside_an_acting_one_keeps_the_sandbox() {
    let _metrics = Metrics::global();
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new("obs-nested".parse().expect("a key")));
    let observing = Ingress::new(TrustPolicy::accept())
        .directory(directory.clone())
        .observe_only(true);
    let acting = Ingress::new(TrustPolicy::accept()).directory(directory);
    let addr = serve(
        Router::new()
            .route("/", get(report))
            .layer(SandboxLayer::from_ingress(observing))
            .layer(SandboxLayer::from_ingress(acting)),
    )
    .await;
    let baggage = "prodbox.sandbox=obs-nested";
    assert_eq!(
        get_with(addr, baggage).await,
        (200, format!("obs-nested|{baggage}"))
    );
}
