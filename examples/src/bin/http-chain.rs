//! Run: `bash scripts/demo.sh` (or `cargo run -p prodbox-examples --bin http-chain -- --orders 10`)
//!
//! A gateway (public edge, signed tokens only) calls `orders`, which calls `billing`. Sandbox
//! `pr-42` has a fork of billing with a new tax rule, registered in the directory; sandbox
//! `pr-7` forks nothing; sandbox `pr-9` is disabled by its kill switch. Every service runs on
//! loopback. Billing "stores" invoices in a ledger keyed by the sandbox it runs in (an
//! in-memory stand-in for per-sandbox database schemas until prodbox-db lands).
//!
//! The demo sends baseline orders, orders signed for each sandbox and orders with forged
//! tokens, prints who handled what, and exits 0 only if isolation held.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::token::TokenKeys;
use prodbox_core::{Sandbox, TrustPolicy};
use prodbox_http::{
    ForkRouting, ForkRoutingLayer, PropagateSandbox, PropagateSandboxLayer, SandboxLayer,
};
use prodbox_testkit::{AuditLog, serve};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

type HttpClient = ForkRouting<PropagateSandbox<Client<HttpConnector, Body>>>;

/// Invoices by the schema they were written to: `public` or `sandbox_<key>`.
type Ledger = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

fn client(directory: &MemoryDirectory, billing: SocketAddr) -> HttpClient {
    let transport = Client::builder(TokioExecutor::new()).build_http::<Body>();
    ServiceBuilder::new()
        .layer(ForkRoutingLayer::new(directory.clone()).service_at(&billing.to_string(), "billing"))
        .layer(PropagateSandboxLayer::new())
        .service(transport)
}

async fn post_json(client: &HttpClient, url: String) -> Result<(StatusCode, Value), String> {
    let request = axum::http::Request::post(url)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = client
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Billing: writes the invoice to the ledger of the sandbox it runs in.
fn billing(version: &'static str, tax_percent: u64, ledger: Ledger) -> Router {
    let handler = move |Path(order): Path<u64>| {
        let ledger = Arc::clone(&ledger);
        async move {
            let schema = prodbox_core::current()
                .map_or("public".to_owned(), |s| format!("sandbox_{}", s.key()));
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(schema.clone())
                .or_default()
                .push(order);
            Json(json!({ "billing": version, "schema": schema, "total": 100 + tax_percent }))
        }
    };
    Router::new()
        .route("/invoices/{order}", post(handler))
        .layer(SandboxLayer::new(TrustPolicy::accept()))
}

/// Orders (and the gateway): forward the order to the next service.
fn forwarder(next: String, client: HttpClient, layer: SandboxLayer) -> Router {
    async fn forward(
        State((next, client)): State<(String, HttpClient)>,
        Path(order): Path<u64>,
    ) -> (StatusCode, Json<Value>) {
        match post_json(&client, format!("{next}/{order}")).await {
            Ok((status, body)) => (status, Json(body)),
            Err(error) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": error }))),
        }
    }
    Router::new()
        .route("/{order}", post(forward))
        .with_state((next, client))
        .layer(layer)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Baseline,
    Signed(&'static str),
    Forged,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let per_kind: u64 = std::env::args()
        .skip_while(|a| a != "--orders")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let audit = AuditLog::global();

    let secret = b"demo-signing-secret-of-32-bytes!";
    let keys = TokenKeys::new()
        .with_key("demo-1", secret)
        .expect("valid demo key");
    let ledger: Ledger = Ledger::default();
    let billing_v1 = serve(billing("billing-v1", 20, Arc::clone(&ledger))).await;
    let billing_fork = serve(billing(
        "billing-pr-42 (new tax rule)",
        7,
        Arc::clone(&ledger),
    ))
    .await;

    let directory = MemoryDirectory::new();
    let hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    directory.upsert(
        SandboxEntry::new("pr-42".parse().expect("valid key"))
            .fork(
                "billing",
                format!("http://{billing_fork}")
                    .parse()
                    .expect("a fork address"),
            )
            .expires_at(hour),
    );
    directory.upsert(SandboxEntry::new("pr-7".parse().expect("valid key")).expires_at(hour));
    directory.upsert(SandboxEntry::new("pr-9".parse().expect("valid key")).disabled(true));

    let orders = serve(forwarder(
        format!("http://{billing_v1}/invoices"),
        client(&directory, billing_v1),
        SandboxLayer::new(TrustPolicy::accept()),
    ))
    .await;
    let gateway = serve(forwarder(
        format!("http://{orders}"),
        client(&directory, billing_v1),
        // The edge takes sandboxes only from signed tokens and checks the kill switch.
        SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::signed(keys.clone()))
                .directory(directory.clone()),
        ),
    ))
    .await;

    let forger = TokenKeys::new()
        .with_key("demo-1", b"an-attacker-guessing-the-secret!")
        .expect("valid key");
    let mint = |keys: &TokenKeys, key: &str| {
        let sandbox = Sandbox::builder(key)
            .expect("valid key")
            .actor("alice")
            .expect("valid actor")
            .build();
        keys.mint(&sandbox, Duration::from_secs(600)).expect("mint")
    };
    let http = reqwest::Client::new();
    let mut plan = Vec::new();
    let mut id = 0;
    for kind in [
        Kind::Baseline,
        Kind::Signed("pr-42"),
        Kind::Signed("pr-7"),
        Kind::Signed("pr-9"),
        Kind::Forged,
    ] {
        for _ in 0..per_kind {
            id += 1;
            plan.push((id, kind));
        }
    }
    let mut handled: BTreeMap<(Kind, String), u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for (order, kind) in &plan {
        let mut request = http.post(format!("http://{gateway}/{order}"));
        match kind {
            Kind::Baseline => {}
            Kind::Signed(key) => {
                request = request.header("baggage", format!("prodbox.token={}", mint(&keys, key)));
            }
            Kind::Forged => {
                request = request.header(
                    "baggage",
                    format!("prodbox.token={}", mint(&forger, "pr-42")),
                );
            }
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures.push(format!("order {order}: {error}"));
                continue;
            }
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let outcome = if status.is_success() {
            body["billing"].as_str().unwrap_or("?").to_owned()
        } else {
            format!("refused {}", status.as_u16())
        };
        *handled.entry((*kind, outcome)).or_default() += 1;
    }

    println!(
        "\nprodbox demo: gateway (signed tokens) -> orders -> billing, {} orders\n",
        plan.len()
    );
    println!("{:<22} {:<34} {:>6}", "order kind", "handled by", "count");
    for ((kind, outcome), count) in &handled {
        println!("{:<22} {:<34} {:>6}", describe(*kind), outcome, count);
    }
    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("\n{:<22} {:>6}", "ledger schema", "rows");
    for (schema, rows) in &ledger {
        println!("{:<22} {:>6}", schema, rows.len());
    }
    println!(
        "\n{:<10} {:<10} {:<28} {:>6}",
        "sandbox", "decision", "reason", "events"
    );
    let mut events: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for record in audit.all() {
        let field = |name: &str| record.get(name).cloned().unwrap_or_default();
        *events
            .entry((field("sandbox"), field("decision"), field("reason")))
            .or_default() += 1;
    }
    for ((sandbox, decision, reason), count) in &events {
        println!("{sandbox:<10} {decision:<10} {reason:<28} {count:>6}");
    }

    // Isolation held when: production got exactly the baseline and forged orders; each sandbox
    // its own; pr-42 billed by its fork; pr-9 refused; nothing failed.
    let rows = |schema: &str| ledger.get(schema).map_or(0, Vec::len) as u64;
    let count = |kind: Kind, outcome: &str| {
        handled
            .get(&(kind, outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let checks = [
        (
            "production rows = baseline + forged orders",
            rows("public") == 2 * per_kind,
        ),
        (
            "pr-42 rows only in its schema",
            rows("sandbox_pr-42") == per_kind,
        ),
        (
            "pr-7 rows only in its schema",
            rows("sandbox_pr-7") == per_kind,
        ),
        (
            "pr-42 billed by its fork",
            count(Kind::Signed("pr-42"), "billing-pr-42 (new tax rule)") == per_kind,
        ),
        (
            "pr-7 billed by baseline code",
            count(Kind::Signed("pr-7"), "billing-v1") == per_kind,
        ),
        (
            "disabled pr-9 refused",
            count(Kind::Signed("pr-9"), "refused 403") == per_kind && rows("sandbox_pr-9") == 0,
        ),
        (
            "forged tokens ran as baseline",
            count(Kind::Forged, "billing-v1") == per_kind,
        ),
        ("no request failed", failures.is_empty()),
    ];
    println!();
    let mut held = true;
    for (check, ok) in checks {
        println!("[{}] {check}", if ok { " ok " } else { "FAIL" });
        held &= ok;
    }
    for failure in &failures {
        println!("  {failure}");
    }
    if held {
        println!("\nisolation held");
        std::process::ExitCode::SUCCESS
    } else {
        println!("\nisolation did NOT hold");
        std::process::ExitCode::FAILURE
    }
}

fn describe(kind: Kind) -> String {
    match kind {
        Kind::Baseline => "baseline".to_owned(),
        Kind::Signed(key) => format!("signed {key}"),
        Kind::Forged => "forged token".to_owned(),
    }
}
