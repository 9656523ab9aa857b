//! Three axum services on loopback, A (public edge, `Signed`) to B to C (both `Accept`), calling
//! through hyper-util and reqwest. C reports what it saw.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prodbox_core::token::TokenKeys;
use prodbox_core::{Sandbox, TrustPolicy};
use prodbox_http::reqwest::SandboxMiddleware;
use prodbox_http::{PropagateSandboxLayer, SandboxLayer};
use prodbox_testkit::serve;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

const SECRET: &[u8] = b"chain-test-secret-of-32-bytes-ok";

type HyperClient = prodbox_http::PropagateSandbox<
    Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
>;

fn hyper_client() -> HyperClient {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http::<Body>();
    ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .service(client)
}

fn reqwest_client() -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(SandboxMiddleware::new())
        .build()
}

async fn get_text(client: &HyperClient, url: String) -> String {
    let request = Request::get(url).body(Body::empty()).unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// C: reports the sandbox it runs in and the baggage it received.
fn service_c() -> Router {
    async fn whoami(headers: HeaderMap) -> Json<Value> {
        tokio::task::yield_now().await;
        let sandbox = prodbox_core::current();
        Json(json!({
            "sandbox": sandbox.as_ref().map(|s| s.key().to_string()),
            "actor": sandbox.as_ref().and_then(|s| s.actor().map(str::to_owned)),
            "baggage": headers.get("baggage").map(|v| v.to_str().unwrap().to_owned()),
            "baggage_headers": headers.get_all("baggage").iter().count(),
        }))
    }
    // A body that streams after the handler returned: each chunk reports the sandbox it is
    // produced in.
    async fn streaming() -> Body {
        let chunks = stream::unfold(0, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let seen =
                prodbox_core::current().map_or("baseline".to_owned(), |s| s.key().to_string());
            Some((Ok::<_, Infallible>(format!("{seen};")), i + 1))
        });
        Body::from_stream(chunks)
    }
    async fn spawned() -> String {
        let kept = prodbox_core::spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            prodbox_core::current()
        });
        let lost = tokio::spawn(async { prodbox_core::current() });
        let show = |s: Option<Sandbox>| s.map_or("baseline".to_owned(), |s| s.key().to_string());
        format!(
            "helper={} tokio={}",
            show(kept.await.unwrap()),
            show(lost.await.unwrap())
        )
    }
    Router::new()
        .route("/whoami", get(whoami))
        .route("/stream", get(streaming))
        .route("/spawned", get(spawned))
        .layer(SandboxLayer::new(TrustPolicy::accept()))
}

#[derive(Clone)]
struct Next {
    base: String,
    hyper: HyperClient,
    reqwest: reqwest_middleware::ClientWithMiddleware,
}

/// A and B: forward `/{via}/{path}` to the next service, via hyper-util or reqwest; B spawns
/// the call onto another task with the helper for `/spawn/...`.
fn forwarder(next: Next, policy: TrustPolicy) -> Router {
    async fn forward(
        State(next): State<Next>,
        Path((via, path)): Path<(String, String)>,
    ) -> (StatusCode, String) {
        let url = format!("{}/{path}", next.base);
        let body = match via.as_str() {
            "hyper" => get_text(&next.hyper, url).await,
            "reqwest" => next
                .reqwest
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "spawn" => {
                let client = next.hyper.clone();
                prodbox_core::spawn(async move { get_text(&client, url).await })
                    .await
                    .unwrap()
            }
            _ => return (StatusCode::NOT_FOUND, String::new()),
        };
        (StatusCode::OK, body)
    }
    Router::new()
        .route("/{via}/{*path}", get(forward))
        .with_state(next)
        .layer(SandboxLayer::new(policy))
}

struct Chain {
    a: SocketAddr,
}

async fn chain(edge_policy: TrustPolicy) -> Chain {
    let c = serve(service_c()).await;
    // B forwards to C; A's paths name B's route: /{via_a}/{via_b}/whoami.
    let next_c = Next {
        base: format!("http://{c}"),
        hyper: hyper_client(),
        reqwest: reqwest_client(),
    };
    let b = serve(forwarder(next_c, TrustPolicy::accept())).await;
    let next_b = Next {
        base: format!("http://{b}"),
        hyper: hyper_client(),
        reqwest: reqwest_client(),
    };
    let a = serve(forwarder(next_b, edge_policy)).await;
    Chain { a }
}

fn keys() -> TokenKeys {
    TokenKeys::new().with_key("k1", SECRET).unwrap()
}

fn token_for(keys: &TokenKeys, key: &str) -> String {
    let sandbox = Sandbox::builder(key).unwrap().actor("ci").unwrap().build();
    keys.mint(&sandbox, Duration::from_secs(600)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_mixed_requests_see_no_cross_talk() {
    let keys = keys();
    let chain = chain(TrustPolicy::signed(keys.clone())).await;
    let tokens: Vec<(String, String)> = (0..10)
        .map(|i| {
            let key = format!("sbx-{i}");
            let token = token_for(&keys, &key);
            (key, token)
        })
        .collect();
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000usize {
        // Every 11th request is baseline; the rest cycle through the 10 sandboxes. Hops
        // alternate between hyper-util and reqwest.
        let sandbox = (n % 11 != 10).then(|| tokens[n % 11].clone());
        let via_a = if n % 2 == 0 { "hyper" } else { "reqwest" };
        let via_b = if n % 3 == 0 { "hyper" } else { "reqwest" };
        let url = format!("http://{}/{via_a}/{via_b}/whoami", chain.a);
        let client = client.clone();
        tasks.spawn(async move {
            let mut baggage = format!("req={n}");
            if let Some((_, token)) = &sandbox {
                baggage.push_str(&format!(",prodbox.token={token}"));
            }
            let response = client
                .get(url)
                .header("baggage", baggage)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let seen: Value = response.json().await.unwrap();
            (n, sandbox.map(|(key, _)| key), seen)
        });
    }
    let mut sandboxed = 0;
    let mut baseline = 0;
    while let Some(result) = tasks.join_next().await {
        let (n, expected, seen) = result.unwrap();
        assert_eq!(
            seen["sandbox"].as_str(),
            expected.as_deref(),
            "request {n} reached C in the wrong sandbox: {seen}"
        );
        let baggage = seen["baggage"].as_str().unwrap();
        // The unrelated member survives both hops, and only this request's.
        assert!(
            baggage.split(',').any(|m| m == format!("req={n}")),
            "request {n}: {baggage}"
        );
        assert_eq!(seen["baggage_headers"], 1, "merged, never duplicated");
        assert!(
            !baggage.contains("prodbox.token"),
            "tokens are not forwarded by default"
        );
        match expected {
            Some(_) => {
                assert_eq!(seen["actor"], "ci");
                sandboxed += 1;
            }
            None => {
                assert!(!baggage.contains("prodbox."), "{baggage}");
                baseline += 1;
            }
        }
    }
    assert_eq!((sandboxed, baseline), (910, 90));
}

#[tokio::test]
async fn forged_unsigned_and_expired_contexts_never_reach_c_as_sandboxes() {
    let keys = keys();
    let chain = chain(TrustPolicy::signed(keys.clone())).await;
    let forger = TokenKeys::new()
        .with_key("k1", b"attacker-secret-also-32-bytes-ok")
        .unwrap();
    let expired = keys
        .clone()
        .leeway(Duration::ZERO)
        .mint_at(
            &Sandbox::new("forged-3".parse().unwrap()),
            std::time::SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .unwrap();
    let attempts = [
        format!("prodbox.token={}", token_for(&forger, "forged-1")),
        "prodbox.sandbox=forged-2".to_owned(),
        format!("prodbox.token={expired}"),
        format!(
            "prodbox.token={},prodbox.sandbox=forged-4",
            token_for(&keys, "real-4")
        ),
    ];
    let audit = prodbox_testkit::AuditLog::global();
    let client = reqwest::Client::new();
    for (i, baggage) in attempts.iter().enumerate() {
        for via in ["hyper/hyper", "reqwest/reqwest"] {
            let url = format!("http://{}/{via}/whoami", chain.a);
            let response = client
                .get(&url)
                .header("baggage", baggage)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let seen: Value = response.json().await.unwrap();
            assert_eq!(seen["sandbox"], Value::Null, "attempt {i}: {seen}");
            assert!(
                seen["baggage"].is_null(),
                "attempt {i}: stripped at the edge: {seen}"
            );
        }
    }
    // Claims inside a token that does not verify are never read, not even for the audit log.
    let forged = audit.matching("reason", "token_bad_signature");
    assert!(
        forged
            .iter()
            .any(|r| r["decision"] == "stripped" && r["sandbox"] == "-"),
        "{forged:?}"
    );
    for (key, reason) in [("forged-2", "unsigned"), ("forged-4", "token_key_mismatch")] {
        let records = audit.matching("sandbox", key);
        assert!(
            records
                .iter()
                .any(|r| r["decision"] == "stripped" && r["reason"] == reason),
            "{key}: {records:?}"
        );
    }
    assert!(!audit.matching("reason", "token_expired").is_empty());
}

#[tokio::test]
async fn context_survives_streaming_bodies_and_spawned_tasks() {
    let keys = keys();
    let chain = chain(TrustPolicy::signed(keys.clone())).await;
    let token = token_for(&keys, "stream-1");
    let client = reqwest::Client::new();
    let fetch = |path: &str| {
        client
            .get(format!("http://{}/{path}", chain.a))
            .header("baggage", format!("prodbox.token={token}"))
            .send()
    };
    let body = fetch("hyper/reqwest/stream")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "stream-1;stream-1;stream-1;");

    // The plain tokio::spawn loses the context; the helper keeps it. B also spawns its call.
    let body = fetch("spawn/hyper/spawned")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "helper=stream-1 tokio=baseline");

    let baseline = client
        .get(format!("http://{}/hyper/hyper/stream", chain.a))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(baseline, "baseline;baseline;baseline;");
}
