//! A chain on loopback: axum service A (HTTP) calls tonic service B through a client with
//! `PropagateSandboxLayer` around a `Channel`; B calls tonic service C through a client with
//! `SandboxInterceptor`; C reports the sandbox and the `baggage` metadata it saw.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use prodbox_core::TrustPolicy;
use prodbox_grpc::{PropagateSandbox, PropagateSandboxLayer, SandboxInterceptor, SandboxLayer};
use prodbox_testkit::echo::Ping;
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::grpc::{EchoService, baggage_entries, channel, serve_echo, server_name};
use prodbox_testkit::{AuditLog, serve};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tower::ServiceBuilder;

type LayeredClient = EchoClient<PropagateSandbox<Channel>>;

/// A: `GET /echo/{n}` calls B's `Unary` with id `n` and answers with what came back.
fn service_a(b: LayeredClient) -> Router {
    async fn call_b(
        State(mut b): State<LayeredClient>,
        Path(n): Path<u64>,
    ) -> Result<Json<Value>, (StatusCode, String)> {
        let response = b
            .unary(Ping { id: n, count: 0 })
            .await
            .map_err(|status| (StatusCode::BAD_GATEWAY, format!("{status:?}")))?;
        let replied_by = server_name(response.metadata());
        let seen = response.into_inner();
        Ok(Json(json!({
            "id": seen.id,
            "sandbox": seen.sandbox,
            "baggage": baggage_entries(&seen),
            "replied_by": replied_by,
        })))
    }
    Router::new()
        .route("/echo/{n}", get(call_b))
        .with_state(b)
        .layer(prodbox_http::SandboxLayer::new(TrustPolicy::accept()))
}

async fn chain() -> SocketAddr {
    let c = serve_echo(
        SandboxLayer::new(TrustPolicy::accept()),
        EchoService::new("c"),
    )
    .await;
    let to_c = EchoClient::with_interceptor(channel(c), SandboxInterceptor::new());
    let b = serve_echo(
        SandboxLayer::new(TrustPolicy::accept()),
        EchoService::new("b").forward_to(to_c),
    )
    .await;
    let to_b = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .service(channel(b)),
    );
    serve(service_a(to_b)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_mixed_calls_see_no_cross_talk() {
    let audit = AuditLog::global();
    let a = chain().await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        // Every 11th call is baseline; the others cycle through sbx-0 .. sbx-9.
        let sandbox = (n % 11 != 10).then(|| format!("sbx-{}", n % 11));
        let mut baggage = String::new();
        if let Some(key) = &sandbox {
            baggage.push_str(&format!("prodbox.sandbox={key},"));
        }
        baggage.push_str(&format!("req={n}"));
        let request = client
            .get(format!("http://{a}/echo/{n}"))
            .header("baggage", baggage);
        tasks.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 200, "call {n}: {text}");
            let seen: Value = serde_json::from_str(&text).unwrap();
            (n, sandbox, seen)
        });
    }
    let (mut sandboxed, mut baseline) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (n, expected, seen) = result.unwrap();
        assert_eq!(seen["id"], n, "call {n}: {seen}");
        assert_eq!(seen["replied_by"], "b", "call {n}: {seen}");
        assert_eq!(
            seen["sandbox"].as_str().unwrap(),
            expected.as_deref().unwrap_or(""),
            "call {n} reached C in the wrong sandbox: {seen}"
        );
        let entries = seen["baggage"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "call {n}: one baggage entry: {seen}");
        let members: Vec<&str> = entries[0].as_str().unwrap().split(',').collect();
        // The unrelated member crosses both hops, and only this call's.
        let req = format!("req={n}");
        assert!(members.contains(&req.as_str()), "call {n}: {seen}");
        assert_eq!(
            members.iter().filter(|m| m.starts_with("req=")).count(),
            1,
            "call {n}: {seen}"
        );
        match expected {
            Some(key) => {
                let ours = format!("prodbox.sandbox={key}");
                assert_eq!(members[0], ours, "call {n}: ours first: {seen}");
                assert_eq!(
                    members.iter().filter(|m| m.starts_with("prodbox.")).count(),
                    1,
                    "call {n}: {seen}"
                );
                sandboxed += 1;
            }
            None => {
                assert!(
                    members.iter().all(|m| !m.starts_with("prodbox.")),
                    "call {n}: {seen}"
                );
                baseline += 1;
            }
        }
    }
    assert_eq!((sandboxed, baseline), (910, 90));

    // A admitted the sandbox over HTTP, B and C over gRPC.
    let records = audit.matching("sandbox", "sbx-3");
    let accepted = |protocol: &str| {
        records
            .iter()
            .filter(|r| {
                r["protocol"] == protocol && r["decision"] == "accepted" && r["reason"] == "trusted"
            })
            .count()
    };
    assert!(accepted("http") >= 91, "{records:?}");
    assert!(accepted("grpc") >= 2 * 91, "{records:?}");
}
