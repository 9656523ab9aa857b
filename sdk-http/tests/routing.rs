//! `ForkRoutingLayer` against two real servers on loopback, "baseline billing" and "fork
//! billing": sandboxed calls reach the sandbox's fork with their context, everything else reaches
//! baseline, and fallbacks are audited.
//!
//! Audit records are process-global: every test uses sandbox keys of its own.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Uri};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::directory::{ForkAddress, MemoryDirectory, SandboxEntry};
use prodbox_core::{FutureExt, Sandbox, SandboxKey, TrustPolicy};
use prodbox_http::{
    ForkRouting, ForkRoutingLayer, PropagateSandbox, PropagateSandboxLayer, SandboxLayer,
};
use prodbox_testkit::{AuditLog, AuditRecord, serve};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

type RoutingClient = ForkRouting<PropagateSandbox<Client<HttpConnector, Body>>>;

/// A billing service that answers with its name, the sandbox it runs in, and what it received.
async fn billing(name: &'static str) -> SocketAddr {
    async fn whoami(State(name): State<&'static str>, uri: Uri, headers: HeaderMap) -> Json<Value> {
        let header = |n: &str| {
            headers
                .get(n)
                .map(|v| v.to_str().expect("a visible ASCII header").to_owned())
        };
        Json(json!({
            "name": name,
            "sandbox": prodbox_core::current().map(|s| s.key().to_string()),
            "baggage": headers.get_all("baggage").iter().map(|v| v.to_str().expect("a visible ASCII header")).collect::<Vec<_>>(),
            "host": header("host"),
            "uri": uri.to_string(),
        }))
    }
    serve(
        Router::new()
            .route("/{*path}", get(whoami))
            .with_state(name)
            .layer(SandboxLayer::new(TrustPolicy::accept())),
    )
    .await
}

struct Billing {
    baseline: SocketAddr,
    fork: SocketAddr,
    directory: MemoryDirectory,
    client: RoutingClient,
}

impl Billing {
    async fn start() -> Self {
        let baseline = billing("baseline").await;
        let fork = billing("fork").await;
        let directory = MemoryDirectory::new();
        let transport = Client::builder(TokioExecutor::new()).build_http::<Body>();
        let client = ServiceBuilder::new()
            .layer(
                ForkRoutingLayer::new(directory.clone())
                    .service_at(&baseline.to_string(), "billing"),
            )
            .layer(PropagateSandboxLayer::new())
            .service(transport);
        Self {
            baseline,
            fork,
            directory,
            client,
        }
    }

    fn fork_url(&self) -> String {
        format!("http://{}", self.fork)
    }

    /// Registers `key` with a fork of billing at `address`.
    fn register(&self, key: &str, address: &str) {
        self.directory.upsert(
            SandboxEntry::new(sandbox_key(key))
                .fork("billing", address.parse().expect("a fork address")),
        );
    }

    /// Calls baseline billing's `path`, in `sandbox` if given, with extra `headers`.
    async fn call_with(
        &self,
        path: &str,
        sandbox: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut request = Request::get(format!("http://{}{path}", self.baseline));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let call = self
            .client
            .clone()
            .oneshot(request.body(Body::empty()).expect("a valid request"));
        let response = match sandbox {
            Some(key) => call.in_sandbox(Sandbox::new(sandbox_key(key))).await,
            None => call.await,
        }
        .expect("the call succeeds");
        assert_eq!(response.status(), 200);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a complete body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    async fn call(&self, sandbox: Option<&str>) -> Value {
        self.call_with("/invoices?id=7", sandbox, &[]).await
    }
}

fn sandbox_key(key: &str) -> SandboxKey {
    key.parse().expect("a valid sandbox key")
}

/// Routing records of `sandbox` with `reason`: `routed` to a fork, or `fallback` to baseline.
fn routed(audit: &AuditLog, sandbox: &str, reason: &str) -> Vec<AuditRecord> {
    let decision = if reason.starts_with("fallback_") {
        "fallback"
    } else {
        "routed"
    };
    audit
        .matching("sandbox", sandbox)
        .into_iter()
        .filter(|r| r["decision"] == decision && r["reason"] == reason)
        .collect()
}

#[tokio::test]
async fn a_sandbox_with_a_fork_reaches_it_and_everything_else_reaches_baseline() {
    let audit = AuditLog::global();
    let billing = Billing::start().await;
    billing.register("pr-42", &billing.fork_url());
    // Registered, but forks another service only.
    billing
        .directory
        .upsert(SandboxEntry::new(sandbox_key("rt-orders")).fork(
            "orders",
            billing.fork_url().parse().expect("a fork address"),
        ));

    let seen = billing.call(Some("pr-42")).await;
    assert_eq!(seen["name"], "fork", "{seen}");
    assert_eq!(
        seen["sandbox"], "pr-42",
        "the fork runs in the sandbox: {seen}"
    );
    assert_eq!(seen["baggage"], json!(["prodbox.sandbox=pr-42"]), "{seen}");
    assert_eq!(seen["uri"], "/invoices?id=7", "path and query stay: {seen}");
    assert_eq!(seen["host"], billing.fork.to_string(), "{seen}");

    let seen = billing.call(None).await;
    assert_eq!(
        (&seen["name"], &seen["sandbox"]),
        (&json!("baseline"), &Value::Null),
        "{seen}"
    );
    assert_eq!(seen["baggage"], json!([]), "{seen}");

    // No fork of billing, or not registered at all: baseline code, still in the sandbox.
    for key in ["rt-orders", "rt-unknown"] {
        let seen = billing.call(Some(key)).await;
        assert_eq!(seen["name"], "baseline", "{key}: {seen}");
        assert_eq!(seen["sandbox"], key, "{key}: {seen}");
    }

    // An explicit Host header follows the request to the fork.
    let seen = billing
        .call_with("/invoices", Some("pr-42"), &[("host", "billing.internal")])
        .await;
    assert_eq!(
        (&seen["name"], &seen["host"]),
        (&json!("fork"), &json!(billing.fork.to_string()))
    );
    let seen = billing
        .call_with("/invoices", None, &[("host", "billing.internal")])
        .await;
    assert_eq!(
        (&seen["name"], &seen["host"]),
        (&json!("baseline"), &json!("billing.internal"))
    );

    // Existing baggage travels to the fork, merged.
    let seen = billing
        .call_with("/invoices", Some("pr-42"), &[("baggage", "tenant=acme")])
        .await;
    assert_eq!(
        seen["baggage"],
        json!(["prodbox.sandbox=pr-42,tenant=acme"]),
        "{seen}"
    );

    let records = routed(&audit, "pr-42", "fork");
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[0]["direction"], "outbound");
    assert!(
        records[0]["detail"].contains(&billing.fork.to_string()),
        "{records:?}"
    );
    let outbound = |key: &str| {
        let records = audit.matching("sandbox", key);
        records
            .into_iter()
            .filter(|r| r["direction"] == "outbound")
            .count()
    };
    assert_eq!(
        outbound("rt-orders"),
        0,
        "nothing to route, nothing audited"
    );
    assert_eq!(
        outbound("rt-unknown"),
        0,
        "nothing to route, nothing audited"
    );
}

#[tokio::test]
async fn an_inactive_sandbox_falls_back_to_baseline_and_is_audited() {
    let audit = AuditLog::global();
    let billing = Billing::start().await;
    billing.register("rt-switch", &billing.fork_url());
    billing.directory.upsert(
        SandboxEntry::new(sandbox_key("rt-expired"))
            .fork(
                "billing",
                billing.fork_url().parse().expect("a fork address"),
            )
            .expires_at(SystemTime::now() - Duration::from_secs(60)),
    );

    assert_eq!(billing.call(Some("rt-switch")).await["name"], "fork");
    assert!(
        billing
            .directory
            .set_disabled(&sandbox_key("rt-switch"), true)
    );
    let seen = billing.call(Some("rt-switch")).await;
    assert_eq!(seen["name"], "baseline", "{seen}");
    // Falling back never drops the context: baseline isolates the sandbox's effects.
    assert_eq!(seen["sandbox"], "rt-switch", "{seen}");
    assert_eq!(
        routed(&audit, "rt-switch", "fallback_fork_inactive").len(),
        1
    );

    assert!(
        billing
            .directory
            .set_disabled(&sandbox_key("rt-switch"), false)
    );
    assert_eq!(
        billing.call(Some("rt-switch")).await["name"],
        "fork",
        "switched back on"
    );
    assert_eq!(routed(&audit, "rt-switch", "fork").len(), 2);

    let seen = billing.call(Some("rt-expired")).await;
    assert_eq!(
        (&seen["name"], &seen["sandbox"]),
        (&json!("baseline"), &json!("rt-expired"))
    );
    assert_eq!(
        routed(&audit, "rt-expired", "fallback_fork_inactive").len(),
        1
    );
    assert!(routed(&audit, "rt-expired", "fork").is_empty());

    // Removed from the directory: no fork any more, nothing to audit.
    assert!(billing.directory.remove(&sandbox_key("rt-switch")));
    assert_eq!(billing.call(Some("rt-switch")).await["name"], "baseline");
    assert_eq!(
        routed(&audit, "rt-switch", "fallback_fork_inactive").len(),
        1
    );
}

/// Fork addresses are checked where they enter the directory, so routing never meets one it
/// cannot use (it used to fall back, audited, per call; a path was silently dropped).
#[test]
fn an_invalid_fork_address_never_enters_the_directory() {
    for address in [
        "not an address",
        "127.0.0.1:9001",
        "/billing",
        "http://127.0.0.1:9001/billing",
        "http://user@127.0.0.1:9001",
    ] {
        assert!(address.parse::<ForkAddress>().is_err(), "{address:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_mixed_calls_route_correctly() {
    let billing = std::sync::Arc::new(Billing::start().await);
    billing.register("mix-fork-1", &billing.fork_url());
    billing.register("mix-fork-2", &billing.fork_url());
    billing
        .directory
        .upsert(SandboxEntry::new(sandbox_key("mix-nofork")).fork(
            "orders",
            "http://127.0.0.1:9".parse().expect("a fork address"),
        ));
    let kinds: [(Option<&str>, &str); 5] = [
        (None, "baseline"),
        (Some("mix-fork-1"), "fork"),
        (Some("mix-nofork"), "baseline"),
        (Some("mix-fork-2"), "fork"),
        (Some("mix-unknown"), "baseline"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200usize {
        let (sandbox, expected) = kinds[n % kinds.len()];
        let billing = std::sync::Arc::clone(&billing);
        tasks.spawn(async move {
            let tag = format!("req={n}");
            let seen = billing
                .call_with(
                    &format!("/invoices?n={n}"),
                    sandbox,
                    &[("baggage", tag.as_str())],
                )
                .await;
            (n, sandbox, expected, seen)
        });
    }
    let mut by_name = std::collections::BTreeMap::<String, usize>::new();
    while let Some(result) = tasks.join_next().await {
        let (n, sandbox, expected, seen) = result.unwrap();
        assert_eq!(seen["name"], expected, "call {n} in {sandbox:?}: {seen}");
        assert_eq!(seen["sandbox"].as_str(), sandbox, "call {n}: {seen}");
        assert_eq!(seen["uri"], format!("/invoices?n={n}"), "call {n}: {seen}");
        let baggage = seen["baggage"][0].as_str().unwrap();
        assert!(
            baggage.ends_with(&format!("req={n}")),
            "call {n}: {baggage}"
        );
        assert_eq!(
            seen["baggage"].as_array().unwrap().len(),
            1,
            "call {n}: {seen}"
        );
        *by_name.entry(expected.to_owned()).or_default() += 1;
    }
    assert_eq!(by_name["fork"], 80);
    assert_eq!(by_name["baseline"], 120);
}
