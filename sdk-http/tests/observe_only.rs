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
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("baggage", baggage)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
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
