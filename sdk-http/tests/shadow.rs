//! `ShadowLayer` between real servers on loopback: a baseline `orders` service whose sampled
//! requests are copied to a fork in a shadow sandbox. Copies arrive in the shadow sandbox, their
//! database writes land in its schema, callers get byte-identical responses, a slow fork never
//! slows the baseline, scrubbed data never leaves, and every copy is counted.
//!
//! Audit records and metrics are process-global: every test uses sandbox keys of its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::TrustPolicy;
use prodbox_core::audit::Protocol;
use prodbox_core::directory::{ForkAddress, MemoryDirectory, SandboxEntry};
use prodbox_http::SandboxLayer;
use prodbox_http::shadow::{DefaultCompare, DefaultScrub, ShadowLayer};
use prodbox_testkit::directory::Switchable;
use prodbox_testkit::metrics::Metrics;
use prodbox_testkit::pg::unique_key;
use prodbox_testkit::{AuditLog, serve};
use tower::ServiceBuilder;

/// What a fork received.
#[derive(Debug, Clone)]
struct Received {
    sandbox: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Received>>>;

fn received(log: &Log) -> Vec<Received> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The `orders` handler of baseline and fork: answers with a body derived from the request
/// (and, for the fork, tagged so that differences show).
async fn orders(
    State((log, tag, delay)): State<(Log, &'static str, Duration)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    tokio::time::sleep(delay).await;
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Received {
            sandbox: prodbox_core::current().map(|s| s.key().to_string()),
            headers,
            body: body.clone(),
        });
    let mut out = HeaderMap::new();
    out.insert("x-order", "ok".parse().expect("a valid header value"));
    (
        StatusCode::CREATED,
        out,
        format!("{tag}{} bytes", body.len()),
    )
}

/// A service answering `/orders` (POST) and `/health` (GET), behind `SandboxLayer`, with
/// `shadow` inside it when given.
async fn service(
    tag: &'static str,
    delay: Duration,
    shadow: Option<ShadowLayer>,
) -> (SocketAddr, Log) {
    let log = Log::default();
    let router = Router::new()
        .route("/orders", post(orders))
        .route("/health", get(|| async { "up" }))
        .with_state((Arc::clone(&log), tag, delay));
    let router = match shadow {
        Some(shadow) => router.layer(shadow),
        None => router,
    };
    let addr = serve(router.layer(SandboxLayer::new(TrustPolicy::accept()))).await;
    (addr, log)
}

fn shadowing(key: &str, fork: SocketAddr) -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new(key.parse().expect("a valid key"))
            .fork(
                "orders",
                format!("http://{fork}").parse().expect("a fork address"),
            )
            .shadow("orders"),
    );
    directory
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Status, headers without `date`, and body bytes of one response.
type Seen = (StatusCode, Vec<(String, Vec<u8>)>, Bytes);

async fn call(addr: SocketAddr, n: usize) -> Seen {
    let body = format!(r#"{{"item":"book-{n}","email":"user{n}@example.com","qty":{n}}}"#);
    let request = axum::http::Request::post(format!("http://{addr}/orders"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer secret")
        .header("cookie", "session=s3cret")
        .header("x-user-email", "user@example.com")
        .body(Body::from(body))
        .expect("a valid request");
    let response = client().request(request).await.expect("baseline answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a body").to_bytes();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    (parts.status, headers, body)
}

/// Waits up to 10 s for `condition`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn copies(key: &str, outcome: &str) -> u64 {
    Metrics::global().sum(
        "prodbox.shadow.copies",
        &[
            ("prodbox.sandbox", key),
            ("prodbox.shadow.outcome", outcome),
        ],
    )
}

fn drops(key: &str, reason: &str) -> u64 {
    Metrics::global().sum(
        "prodbox.shadow.copies",
        &[
            ("prodbox.sandbox", key),
            ("prodbox.shadow.outcome", "dropped"),
            ("prodbox.shadow.reason", reason),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_arrive_at_the_fork_in_the_shadow_sandbox_and_are_counted() {
    Metrics::global();
    let audit = AuditLog::global();
    let key = unique_key("shadow-arrive");
    let (fork, fork_log) = service("fork:", Duration::ZERO, None).await;
    let layer = ShadowLayer::new("orders", shadowing(&key, fork)).sample(0.5);
    let (baseline, baseline_log) = service("", Duration::ZERO, Some(layer)).await;

    for n in 0..10 {
        let (status, _, _) = call(baseline, n).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    eventually("5 copies sent", || copies(&key, "sent") == 5).await;

    // Every other request, in the shadow sandbox; the baseline handled all ten as production.
    let at_fork = received(&fork_log);
    assert_eq!(at_fork.len(), 5);
    for copy in &at_fork {
        assert_eq!(copy.sandbox.as_deref(), Some(key.as_str()));
        assert_eq!(copy.headers["baggage"], format!("prodbox.sandbox={key}"));
    }
    // Copies travel concurrently: compare as sets.
    let mut bodies: Vec<_> = at_fork.iter().map(|c| c.body.clone()).collect();
    let mut expected: Vec<_> = [1, 3, 5, 7, 9]
        .iter()
        .map(|n| received(&baseline_log)[*n].body.clone())
        .collect();
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected, "the 2nd, 4th, ... request, bodies intact");
    assert!(received(&baseline_log).iter().all(|r| r.sandbox.is_none()));

    assert_eq!(copies(&key, "dropped"), 0);
    let events = audit.matching("sandbox", &key);
    let shadowed = events
        .iter()
        .filter(|e| e.get("decision").map(String::as_str) == Some("shadowed"))
        .count();
    assert_eq!(shadowed, 5, "one audit event per copy: {events:?}");
    // The fork admitted each copy at its ingress.
    let accepted = events
        .iter()
        .filter(|e| e.get("decision").map(String::as_str) == Some("accepted"))
        .count();
    assert_eq!(accepted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_get_byte_identical_responses_with_and_without_shadowing() {
    Metrics::global();
    let key = unique_key("shadow-identical");
    let (fork, _) = service("fork:", Duration::ZERO, None).await;
    let layer = ShadowLayer::new("orders", shadowing(&key, fork))
        .sample(1.0)
        .compare(DefaultCompare);
    let (shadowed, _) = service("", Duration::ZERO, Some(layer)).await;
    let (plain, _) = service("", Duration::ZERO, None).await;

    for n in 0..20 {
        assert_eq!(call(shadowed, n).await, call(plain, n).await, "request {n}");
    }
    // The fork answers differently ("fork:" prefix): every copy differs, none is dropped.
    eventually("20 copies compared", || copies(&key, "differing") == 20).await;
    assert_eq!(copies(&key, "sent"), 0);
    assert_eq!(copies(&key, "dropped"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fork_never_slows_the_baseline_and_drops_are_counted() {
    Metrics::global();
    let key = unique_key("shadow-slow");
    let (fork, _) = service("fork:", Duration::from_secs(5), None).await;
    let layer = ShadowLayer::new("orders", shadowing(&key, fork))
        .sample(1.0)
        .queue(2)
        .concurrency(1)
        .timeout(Duration::from_millis(300));
    let (baseline, _) = service("", Duration::ZERO, Some(layer)).await;

    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        let (status, _, _) = call(baseline, n).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, StatusCode::CREATED);
    }
    // Not a benchmark: waiting on the fork once would take 5 s.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest baseline call {slowest:?}"
    );

    // One in flight, one held by the worker waiting for a slot, two queued: the rest are
    // dropped at once, and those sent time out.
    eventually("every copy accounted for", || copies(&key, "dropped") == 20).await;
    assert_eq!(drops(&key, "fork_slow") + drops(&key, "queue_full"), 20);
    assert!(
        drops(&key, "queue_full") >= 10,
        "{}",
        drops(&key, "queue_full")
    );
    assert!(drops(&key, "fork_slow") >= 1);
    assert_eq!(copies(&key, "sent"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrubbed_headers_and_body_fields_never_reach_the_fork() {
    Metrics::global();
    let key = unique_key("shadow-scrub");
    let (fork, fork_log) = service("fork:", Duration::ZERO, None).await;
    let layer = ShadowLayer::new("orders", shadowing(&key, fork))
        .sample(1.0)
        .scrub(
            DefaultScrub::new()
                .header("x-user-email".parse().expect("a header name"))
                .json_field("email"),
        );
    let (baseline, baseline_log) = service("", Duration::ZERO, Some(layer)).await;

    for n in 0..3 {
        call(baseline, n).await;
    }
    eventually("3 copies sent", || copies(&key, "sent") == 3).await;

    // The baseline got everything; the fork none of it.
    assert!(
        received(&baseline_log)
            .iter()
            .all(|r| r.headers.contains_key("authorization"))
    );
    for copy in received(&fork_log) {
        for header in ["authorization", "cookie", "x-user-email"] {
            assert!(
                !copy.headers.contains_key(header),
                "{header} reached the fork"
            );
        }
        let body: serde_json::Value = serde_json::from_slice(&copy.body).expect("JSON");
        assert!(body.get("email").is_none(), "{body}");
        assert!(!String::from_utf8_lossy(&copy.body).contains("example.com"));
        assert!(body.get("item").is_some(), "other fields stay: {body}");
        assert_eq!(
            copy.headers["content-length"],
            copy.body.len().to_string(),
            "content-length matches the scrubbed body"
        );
    }

    // A scrub that cannot do its job drops the copy.
    let key = unique_key("shadow-scrub-refused");
    let layer = ShadowLayer::new("orders", shadowing(&key, fork))
        .sample(1.0)
        .scrub(DefaultScrub::new().json_field("email"));
    let router = Router::new().route("/orders", post(|body: Bytes| async move { body }));
    let baseline = serve(router.layer(layer)).await;
    let request = axum::http::Request::post(format!("http://{baseline}/orders"))
        .body(Body::from("email=user@example.com"))
        .expect("a valid request");
    client().request(request).await.expect("baseline answered");
    eventually("the copy dropped", || drops(&key, "scrub_failed") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_baseline_requests_that_fit_are_copied() {
    Metrics::global();
    let key = unique_key("shadow-select");
    let (fork, fork_log) = service("fork:", Duration::ZERO, None).await;
    let layer = ShadowLayer::new("orders", shadowing(&key, fork))
        .sample(1.0)
        .max_body(64)
        .filter(|method, path| method == "POST" && path == "/orders");
    let (baseline, _) = service("", Duration::ZERO, Some(layer)).await;
    let http = client();

    // Filtered out: not a candidate, not counted.
    let health = axum::http::Request::get(format!("http://{baseline}/health"))
        .body(Body::empty())
        .expect("a valid request");
    http.request(health).await.expect("baseline answered");

    // Too large: by its content-length, and streamed without one.
    let large = || Body::from(vec![b'x'; 100]);
    let request = axum::http::Request::post(format!("http://{baseline}/orders"))
        .body(large())
        .expect("a valid request");
    http.request(request).await.expect("baseline answered");
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&[b'y'; 30]))),
    );
    let request = axum::http::Request::post(format!("http://{baseline}/orders"))
        .body(Body::from_stream(stream))
        .expect("a valid request");
    let response = http.request(request).await.expect("baseline answered");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert_eq!(body, "120 bytes", "the baseline got the whole body");

    // A sandboxed request is not a baseline request.
    let request = axum::http::Request::post(format!("http://{baseline}/orders"))
        .header("baggage", "prodbox.sandbox=pr-other")
        .body(Body::from("{}"))
        .expect("a valid request");
    http.request(request).await.expect("baseline answered");

    // One that fits.
    call(baseline, 1).await;
    eventually("1 copy sent", || copies(&key, "sent") == 1).await;
    assert_eq!(drops(&key, "body_too_large"), 2);
    assert_eq!(copies(&key, "dropped"), 2);
    assert_eq!(received(&fork_log).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_shadows_and_unrelated_forks_receive_nothing() {
    Metrics::global();
    let key = unique_key("shadow-inactive");
    let (fork, fork_log) = service("fork:", Duration::ZERO, None).await;
    let directory = shadowing(&key, fork);
    // A fork that does not shadow, and another sandbox shadowing another service.
    let other = unique_key("shadow-fork-only");
    directory.upsert(SandboxEntry::new(other.parse().expect("a valid key")).fork(
        "orders",
        "http://127.0.0.1:1".parse().expect("a fork address"),
    ));
    let layer = ShadowLayer::new("orders", directory.clone()).sample(1.0);
    assert_eq!(
        layer.shadow_sandbox().map(|k| k.to_string()),
        Some(key.clone())
    );
    let (baseline, _) = service("", Duration::ZERO, Some(layer.clone())).await;

    directory.set_disabled(&key.parse().expect("a valid key"), true);
    assert_eq!(layer.shadow_sandbox(), None);
    for n in 0..3 {
        call(baseline, n).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received(&fork_log).is_empty());
    assert_eq!(copies(&key, "sent") + copies(&key, "dropped"), 0);
    assert_eq!(copies(&other, "sent") + copies(&other, "dropped"), 0);
}

/// Copies that cannot be sent, or whose request never completes, are dropped, counted under
/// their reason and audited; the baseline answers as always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_that_cannot_be_made_or_sent_are_dropped_with_their_reason() {
    Metrics::global();
    let audit = AuditLog::global();
    let mut expected = Vec::new();

    // fork_error: nothing listens at the fork's address (bound for the whole test, so no
    // other test's server can take the port; connecting to it is refused).
    let reserved = tokio::net::TcpSocket::new_v4().expect("a socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a free port");
    let closed = reserved.local_addr().expect("its address");
    let key = unique_key("shadow-fork-error");
    let layer = ShadowLayer::new("orders", shadowing(&key, closed)).sample(1.0);
    let (baseline, _) = service("", Duration::ZERO, Some(layer)).await;
    assert_eq!(call(baseline, 1).await.0, StatusCode::CREATED);
    eventually("fork_error", || drops(&key, "fork_error") == 1).await;
    expected.push((key, "fork_error"));

    // invalid_fork_address: an address that is no URI cannot enter the directory at all.
    assert!("not an address".parse::<ForkAddress>().is_err());

    // directory_stale: no copies on an old view of the directory.
    let key = unique_key("shadow-stale");
    let (fork, fork_log) = service("fork:", Duration::ZERO, None).await;
    let layer = ShadowLayer::new("orders", Switchable::stale(shadowing(&key, fork))).sample(1.0);
    let (baseline, _) = service("", Duration::ZERO, Some(layer)).await;
    assert_eq!(call(baseline, 3).await.0, StatusCode::CREATED);
    eventually("directory_stale", || drops(&key, "directory_stale") == 1).await;
    expected.push((key, "directory_stale"));

    // body_unread: the baseline answered without reading the request body (405 here).
    let key = unique_key("shadow-unread");
    let layer = ShadowLayer::new("orders", shadowing(&key, fork)).sample(1.0);
    let (baseline, _) = service("", Duration::ZERO, Some(layer)).await;
    let request = axum::http::Request::post(format!("http://{baseline}/health"))
        .body(Body::from("{}"))
        .expect("a valid request");
    let response = client().request(request).await.expect("baseline answered");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    eventually("body_unread", || drops(&key, "body_unread") == 1).await;
    expected.push((key, "body_unread"));

    // baseline_failed: the baseline's handler panicked; there is no answer to compare with.
    let key = unique_key("shadow-baseline-failed");
    let layer = ShadowLayer::new("orders", shadowing(&key, fork)).sample(1.0);
    let router = Router::new()
        .route(
            "/orders",
            post(|body: Bytes| async move {
                assert!(body.is_empty(), "the baseline fails on purpose");
                "unreachable"
            }),
        )
        .layer(layer)
        .layer(SandboxLayer::new(TrustPolicy::accept()));
    let baseline = serve(router).await;
    assert!(
        call_raw(baseline).await.is_err(),
        "the connection died with the handler"
    );
    eventually("baseline_failed", || drops(&key, "baseline_failed") == 1).await;
    expected.push((key, "baseline_failed"));

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(received(&fork_log).is_empty(), "no copy reached the fork");
    for (key, reason) in expected {
        let events = audit.matching("sandbox", &key);
        assert!(
            events.iter().any(|e| {
                e.get("decision").map(String::as_str) == Some("shadowed")
                    && e.get("reason").map(String::as_str) == Some(reason)
            }),
            "{reason} audited: {events:?}"
        );
        assert_eq!(copies(&key, "sent"), 0, "{reason}");
    }
}

/// A POST of a small body, without reading the answer's body.
async fn call_raw(addr: SocketAddr) -> Result<StatusCode, hyper_util::client::legacy::Error> {
    let request = axum::http::Request::post(format!("http://{addr}/orders"))
        .body(Body::from("{}"))
        .expect("a valid request");
    client().request(request).await.map(|r| r.status())
}

mod database {
    //! The fork writes through `prodbox_db::SandboxPool`: copies land in the shadow sandbox's
    //! schema, the baseline's writes in `public`.

    use super::*;
    use prodbox_db::SandboxPool;
    use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres};
    use sqlx::migrate::Migrator;

    async fn migrator() -> Migrator {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/migrations/shadow");
        Migrator::new(dir.as_path())
            .await
            .expect("the shadow test migrations")
    }

    async fn insert(State(pool): State<SandboxPool>, body: Bytes) -> StatusCode {
        match sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(String::from_utf8_lossy(&body).into_owned())
            .execute(&pool)
            .await
        {
            Ok(_) => StatusCode::CREATED,
            Err(error) => {
                eprintln!("insert failed: {error}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    async fn orders_service(pool: SandboxPool, shadow: Option<ShadowLayer>) -> SocketAddr {
        let router = Router::new()
            .route("/orders", post(insert))
            .with_state(pool);
        let router = match shadow {
            Some(shadow) => router.layer(shadow),
            None => router,
        };
        serve(router.layer(SandboxLayer::new(TrustPolicy::accept()))).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_forks_writes_land_in_the_shadow_sandboxs_schema() {
        Metrics::global();
        require_postgres().await;
        let db = TestDatabase::create().await;
        migrator()
            .await
            .run(db.pool())
            .await
            .expect("migrate public");
        let pool = SandboxPool::builder(db.pool().clone())
            .migrations(migrator().await)
            .build();

        let key = unique_key("shadow-db");
        let fork = orders_service(pool.clone(), None).await;
        let layer = ShadowLayer::new("orders", shadowing(&key, fork)).sample(0.5);
        let baseline = orders_service(pool.clone(), Some(layer)).await;

        for n in 0..6 {
            let request = axum::http::Request::post(format!("http://{baseline}/orders"))
                .body(Body::from(format!("book-{n}")))
                .expect("a valid request");
            let response = client().request(request).await.expect("baseline answered");
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        eventually("3 copies sent", || copies(&key, "sent") == 3).await;

        let schema = prodbox_db::names::schema_name(&key.parse().expect("a valid key"));
        assert_eq!(count_rows(db.pool(), "public", "orders").await, 6);
        assert_eq!(count_rows(db.pool(), &schema, "orders").await, 3);
        let items: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT item FROM {}.orders ORDER BY item",
            prodbox_testkit::pg::quote(&schema)
        )))
        .fetch_all(db.pool())
        .await
        .expect("the shadow's rows");
        assert_eq!(items, ["book-1", "book-3", "book-5"]);
        drop(pool);
        db.cleanup().await;
    }
}

mod grpc {
    //! A tonic unary call is copied like any HTTP/2 request.

    use super::*;
    use prodbox_testkit::echo::Ping;
    use prodbox_testkit::echo::echo_client::EchoClient;
    use prodbox_testkit::grpc::{EchoService, channel, serve_echo};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unary_calls_are_shadowed_over_http2() {
        Metrics::global();
        let audit = AuditLog::global();
        let key = unique_key("shadow-grpc");
        let fork_service = EchoService::new("fork");
        let fork = serve_echo(
            SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(TrustPolicy::accept()).protocol(Protocol::Grpc),
            ),
            fork_service.clone(),
        )
        .await;
        let directory = MemoryDirectory::new();
        directory.upsert(
            SandboxEntry::new(key.parse().expect("a valid key"))
                .fork(
                    "echo",
                    format!("http://{fork}").parse().expect("a fork address"),
                )
                .shadow("echo"),
        );
        let layers = ServiceBuilder::new()
            .layer(SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(TrustPolicy::accept()).protocol(Protocol::Grpc),
            ))
            .layer(
                ShadowLayer::new("echo", directory)
                    .sample(1.0)
                    .compare(DefaultCompare),
            )
            .into_inner();
        let baseline_service = EchoService::new("baseline");
        let baseline = serve_echo(layers, baseline_service.clone()).await;

        let mut client = EchoClient::new(channel(baseline));
        let seen = client
            .unary(Ping { id: 7, count: 0 })
            .await
            .expect("baseline answered")
            .into_inner();
        assert_eq!(seen.sandbox, "", "the caller got the baseline's answer");
        eventually("the copy answered", || {
            copies(&key, "sent") + copies(&key, "differing") == 1
        })
        .await;
        assert_eq!(fork_service.calls(), 1);
        assert_eq!(baseline_service.calls(), 1);
        let accepted: Vec<_> = audit
            .matching("sandbox", &key)
            .into_iter()
            .filter(|e| e.get("decision").map(String::as_str) == Some("accepted"))
            .collect();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0]["protocol"], "grpc");
    }
}
