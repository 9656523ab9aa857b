//! The HTTP `SandboxLayer` end to end under a flood of distinct sandbox keys (issue #8): 10,000
//! requests, each in a sandbox of its own, through a real axum server on loopback with a
//! directory that allows unknown sandboxes and guardrails tracking at most 500 sandboxes. Every
//! request is answered (in its sandbox, or refused for capacity), the guardrails never track
//! more than their bound (read by the handler while each request is in flight), and the
//! directory stays as registered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures_util::StreamExt;
use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Guardrails, TrustPolicy};
use prodbox_http::SandboxLayer;
use prodbox_testkit::serve;

const REQUESTS: usize = 10_000;
const MAX_TRACKED: usize = 500;

#[derive(Clone)]
struct Seen {
    guardrails: Guardrails,
    most_tracked: Arc<AtomicUsize>,
}

/// Answers with the sandbox the request runs in, and records how many sandboxes the guardrails
/// track while it is in flight.
async fn handler(State(seen): State<Seen>) -> String {
    seen.most_tracked
        .fetch_max(seen.guardrails.tracked(), Ordering::Relaxed);
    prodbox_core::current().map_or_else(|| "baseline".to_owned(), |s| s.key().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sandbox_keys_keeps_server_state_bounded() {
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("registered".parse().expect("key"))
            .fork("a", "http://a".parse().expect("a fork address")),
    );
    let guardrails = Guardrails::builder()
        .rate(100.0, 2)
        .max_concurrent(2)
        .max_tracked(MAX_TRACKED)
        .build();
    let seen = Seen {
        guardrails: guardrails.clone(),
        most_tracked: Arc::new(AtomicUsize::new(0)),
    };
    let layer = SandboxLayer::from_ingress(
        prodbox_core::Ingress::new(TrustPolicy::accept())
            .directory(directory.clone())
            .unknown_sandboxes(UnknownSandbox::Allow)
            .guardrails(guardrails.clone()),
    );
    let app = Router::new()
        .route("/", get(handler))
        .with_state(seen.clone())
        .layer(layer);
    let addr = serve(app).await;
    let url = format!("http://{addr}/");
    let client = reqwest::Client::new();

    let outcomes: Vec<(usize, u16, String, Option<String>)> =
        futures_util::stream::iter(0..REQUESTS)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let response = client
                        .get(&url)
                        .header(
                            "baggage",
                            format!("prodbox.sandbox=http-flood-{i},userId={i}"),
                        )
                        .send()
                        .await
                        .expect("the server answers");
                    let status = response.status().as_u16();
                    let refusal = response
                        .headers()
                        .get("x-prodbox-refusal")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = response.text().await.expect("a body");
                    (i, status, body, refusal)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;

    let mut refused = 0;
    for (i, status, body, refusal) in &outcomes {
        match status {
            200 => assert_eq!(body, &format!("http-flood-{i}"), "ran in another sandbox"),
            429 => {
                assert_eq!(refusal.as_deref(), Some("guardrail_capacity"), "{body}");
                refused += 1;
            }
            other => panic!("request {i}: {other} {body}"),
        }
    }
    assert_eq!(outcomes.len(), REQUESTS);
    let most = seen.most_tracked.load(Ordering::Relaxed);
    println!(
        "{REQUESTS} requests in distinct sandboxes: {} answered, {refused} refused for \
         capacity; at most {most} sandboxes tracked",
        REQUESTS - refused
    );
    assert!(
        most <= MAX_TRACKED,
        "{most} sandboxes tracked during a request"
    );
    assert!(guardrails.tracked() <= MAX_TRACKED);
    assert!(refused < REQUESTS / 2, "{refused} refused");
    assert_eq!(
        directory.entries().len(),
        1,
        "the layer wrote to the directory"
    );
}
