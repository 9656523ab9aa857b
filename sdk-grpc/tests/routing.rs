//! `ForkRouter` under the client layer, on real tonic servers on loopback: a sandbox whose
//! directory entry forks `echo` reaches its fork, everything else reaches the baseline, and the
//! fallbacks (inactive sandbox, invalid fork address) are audited.
//!
//! The servers tell themselves apart by name, in the `x-echo-server` response metadata.
//! Audit records are process-global: every test uses sandbox keys of its own.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use prodbox_core::directory::{ForkAddress, MemoryDirectory, SandboxEntry};
use prodbox_core::{FutureExt, Sandbox, SandboxKey, TrustPolicy};
use prodbox_grpc::{
    ForkRouter, PropagateSandbox, PropagateSandboxLayer, SandboxInterceptor, SandboxLayer,
};
use prodbox_testkit::AuditLog;
use prodbox_testkit::echo::Ping;
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::grpc::{EchoService, channel, pings, serve_echo, server_name, uri};
use tower::ServiceBuilder;

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

type Client = EchoClient<PropagateSandbox<ForkRouter>>;

/// What answered a unary call made in `sandbox` (or baseline): (server, sandbox it saw).
async fn who_answers(client: &Client, sandbox: Option<&str>) -> (String, String) {
    let mut client = client.clone();
    let call = async move { client.unary(Ping { id: 1, count: 0 }).await };
    let response = match sandbox {
        Some(k) => call.in_sandbox(Sandbox::new(key(k))).await,
        None => call.await,
    }
    .unwrap();
    let server = server_name(response.metadata());
    (server, response.into_inner().sandbox)
}

struct Setup {
    client: Client,
    directory: MemoryDirectory,
    router: ForkRouter,
}

/// A baseline server, two forks, and a directory naming them; `prefix` keeps keys unique.
async fn setup(prefix: &str) -> Setup {
    let server = || SandboxLayer::new(TrustPolicy::accept());
    let baseline = serve_echo(server(), EchoService::new("baseline")).await;
    let fork_a = serve_echo(server(), EchoService::new("fork-a")).await;
    let fork_b = serve_echo(server(), EchoService::new("fork-b")).await;
    let directory = MemoryDirectory::new();
    let entry = |suffix: &str| SandboxEntry::new(key(&format!("{prefix}-{suffix}")));
    directory.upsert(entry("a").fork("echo", uri(fork_a).parse().expect("a fork address")));
    directory.upsert(entry("b").fork("echo", uri(fork_b).parse().expect("a fork address")));
    directory.upsert(entry("other").fork("billing", uri(fork_a).parse().expect("a fork address")));
    directory.upsert(
        entry("off")
            .fork("echo", uri(fork_a).parse().expect("a fork address"))
            .disabled(true),
    );
    directory.upsert(
        entry("old")
            .fork("echo", uri(fork_a).parse().expect("a fork address"))
            .expires_at(SystemTime::now() - Duration::from_secs(60)),
    );
    directory.upsert(entry("tls").fork(
        "echo",
        "https://127.0.0.1:9".parse().expect("a fork address"),
    ));
    let router = ForkRouter::new("echo", channel(baseline), directory.clone());
    let client = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .service(router.clone()),
    );
    Setup {
        client,
        directory,
        router,
    }
}

/// How many outbound gRPC records for `sandbox` say `decision` for `reason`.
fn audited(audit: &AuditLog, sandbox: &str, decision: &str, reason: &str) -> usize {
    let records: Vec<_> = audit
        .matching("sandbox", sandbox)
        .into_iter()
        .filter(|r| r["decision"] == decision && r["reason"] == reason)
        .collect();
    assert!(
        records
            .iter()
            .all(|r| r["protocol"] == "grpc" && r["direction"] == "outbound"),
        "{records:?}"
    );
    records.len()
}

#[tokio::test]
async fn a_forking_sandbox_reaches_its_fork_and_everything_else_the_baseline() {
    let audit = AuditLog::global();
    let Setup {
        client, directory, ..
    } = setup("rt").await;
    let answers = |server: &str, sandbox: &str| (server.to_owned(), sandbox.to_owned());

    assert_eq!(
        who_answers(&client, Some("rt-a")).await,
        answers("fork-a", "rt-a"),
        "the fork sees the sandbox"
    );
    assert_eq!(
        who_answers(&client, Some("rt-b")).await,
        answers("fork-b", "rt-b")
    );
    assert_eq!(
        who_answers(&client, None).await,
        answers("baseline", ""),
        "baseline"
    );
    // Sandboxes that do not fork `echo`, or are not registered, keep their context on the
    // baseline.
    assert_eq!(
        who_answers(&client, Some("rt-other")).await,
        answers("baseline", "rt-other")
    );
    assert_eq!(
        who_answers(&client, Some("rt-unlisted")).await,
        answers("baseline", "rt-unlisted")
    );
    assert_eq!(audited(&audit, "rt-a", "routed", "fork"), 1);
    assert_eq!(audited(&audit, "rt-other", "routed", "fork"), 0);

    // Streaming calls are routed the same way, and keep the context on the fork.
    let mut stream_client = client.clone();
    let response = async { stream_client.bidi(pings(0, 5)).await }
        .in_sandbox(Sandbox::new(key("rt-a")))
        .await
        .unwrap();
    assert_eq!(server_name(response.metadata()), "fork-a");
    let mut replies = response.into_inner();
    let mut seen = 0;
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(
            (reply.sandbox.as_str(), &reply.per_message[..]),
            ("rt-a", &["rt-a".to_owned()][..])
        );
        seen += 1;
    }
    assert_eq!(seen, 5);

    // The directory decides per call: the kill switch sends the sandbox back to the baseline.
    assert!(directory.set_disabled(&key("rt-b"), true));
    assert_eq!(
        who_answers(&client, Some("rt-b")).await,
        answers("baseline", "rt-b")
    );
    assert_eq!(
        audited(&audit, "rt-b", "fallback", "fallback_fork_inactive"),
        1
    );
}

#[tokio::test]
async fn inactive_sandboxes_and_invalid_fork_addresses_fall_back_audited() {
    let audit = AuditLog::global();
    let Setup { client, .. } = setup("fb").await;
    for (sandbox, reason) in [
        ("fb-off", "fallback_fork_inactive"),
        ("fb-old", "fallback_fork_inactive"),
        ("fb-tls", "fallback_invalid_fork_address"),
    ] {
        // Falling back never drops the context: the call still carries its sandbox.
        assert_eq!(
            who_answers(&client, Some(sandbox)).await,
            ("baseline".to_owned(), sandbox.to_owned()),
            "{sandbox}"
        );
        assert_eq!(audited(&audit, sandbox, "fallback", reason), 1, "{sandbox}");
        assert_eq!(audited(&audit, sandbox, "routed", "fork"), 0, "{sandbox}");
    }
    let bad = audit.matching("sandbox", "fb-tls");
    assert!(
        bad.iter()
            .any(|r| r["detail"].contains("https://127.0.0.1:9")),
        "the detail names the address: {bad:?}"
    );
}

#[tokio::test]
async fn the_router_works_under_the_interceptor_too() {
    let Setup { router, .. } = setup("ri").await;
    let mut client = EchoClient::with_interceptor(router, SandboxInterceptor::new());
    let response = async { client.unary(Ping { id: 1, count: 0 }).await }
        .in_sandbox(Sandbox::new(key("ri-a")))
        .await
        .unwrap();
    assert_eq!(server_name(response.metadata()), "fork-a");
    assert_eq!(response.into_inner().sandbox, "ri-a");
    let response = client.unary(Ping { id: 2, count: 0 }).await.unwrap();
    assert_eq!(server_name(response.metadata()), "baseline");
    assert_eq!(response.into_inner().sandbox, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_mixed_calls_route_correctly() {
    let Setup { client, .. } = setup("mx").await;
    let kinds = [
        (Some("mx-a"), "fork-a"),
        (Some("mx-b"), "fork-b"),
        (Some("mx-other"), "baseline"),
        (Some("mx-off"), "baseline"),
        (Some("mx-bad"), "baseline"),
        (None, "baseline"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200usize {
        let (sandbox, server) = kinds[n % kinds.len()];
        let client = client.clone();
        tasks.spawn(async move {
            let answered = who_answers(&client, sandbox).await;
            (n, sandbox, server, answered)
        });
    }
    let mut servers = BTreeSet::new();
    let mut count = 0;
    while let Some(result) = tasks.join_next().await {
        let (n, sandbox, server, answered) = result.unwrap();
        assert_eq!(
            answered,
            (server.to_owned(), sandbox.unwrap_or("").to_owned()),
            "call {n}"
        );
        servers.insert(answered.0);
        count += 1;
    }
    assert_eq!(count, 200);
    assert_eq!(servers.len(), 3, "{servers:?}");
}

/// A call the router sends to a fork because it is sandboxed carries the sandbox even without
/// the client layer around the router: a fork never takes a routed call for production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_call_carries_its_sandbox_without_the_client_layer() {
    let setup = setup("bare").await;
    let mut client = EchoClient::new(setup.router.clone());
    let reply = async move { client.unary(Ping { id: 1, count: 0 }).await }
        .in_sandbox(Sandbox::new(key("bare-a")))
        .await
        .unwrap();
    assert_eq!(server_name(reply.metadata()), "fork-a");
    assert_eq!(reply.into_inner().sandbox, "bare-a");
}

/// A fork address the router cannot use as plain `http://` (no scheme, or `https` in a build
/// without TLS) falls back to baseline, audited, instead of failing every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_addresses_without_http_fall_back_audited() {
    // An address without a scheme never enters the directory (it would connect nowhere).
    assert!("127.0.0.1:9".parse::<ForkAddress>().is_err());
    let setup = setup("scheme").await;
    setup
        .directory
        .upsert(SandboxEntry::new(key("scheme-tls")).fork(
            "echo",
            "https://127.0.0.1:9".parse().expect("a fork address"),
        ));
    let (server, sandbox) = who_answers(&setup.client, Some("scheme-tls")).await;
    assert_eq!(
        (server.as_str(), sandbox.as_str()),
        ("baseline", "scheme-tls")
    );
    assert!(
        AuditLog::global()
            .matching("sandbox", "scheme-tls")
            .iter()
            .any(|r| r.get("reason").map(String::as_str) == Some("fallback_invalid_fork_address")),
        "an https fork falls back, audited"
    );
}

/// Schemes are case-insensitive: `HTTP://` is a plain-http fork, routed like any other (gRPC
/// used to compare the text and fall back).
#[tokio::test]
async fn an_uppercase_scheme_routes_to_the_fork() {
    let setup = setup("upper").await;
    let fork = serve_echo(
        SandboxLayer::new(TrustPolicy::accept()),
        EchoService::new("fork-upper"),
    )
    .await;
    let address = uri(fork).replacen("http://", "HTTP://", 1);
    setup.directory.upsert(
        SandboxEntry::new(key("upper-a")).fork("echo", address.parse().expect("a fork address")),
    );
    let (server, sandbox) = who_answers(&setup.client, Some("upper-a")).await;
    assert_eq!(
        (server.as_str(), sandbox.as_str()),
        ("fork-upper", "upper-a")
    );
}

/// Behind an observe-only server, the router audits where a call would have gone, as observed,
/// and sends it to the baseline.
#[tokio::test]
async fn an_observed_sandbox_is_audited_where_it_would_go_and_reaches_the_baseline() {
    let audit = AuditLog::global();
    let setup = setup("gobs").await;
    let observed = |k: &str| {
        prodbox_core::plumbing::observe::attach_to(
            &prodbox_core::context::production(),
            Sandbox::new(key(k)),
        )
    };
    for (sandbox, decision, reason) in [
        ("gobs-a", "routed", "fork"),
        ("gobs-off", "fallback", "fallback_fork_inactive"),
    ] {
        let mut client = setup.client.clone();
        let response = async move { client.unary(Ping { id: 1, count: 0 }).await }
            .in_context(observed(sandbox))
            .await
            .unwrap();
        assert_eq!(server_name(response.metadata()), "baseline", "{sandbox}");
        assert_eq!(
            response.into_inner().sandbox,
            "",
            "{sandbox}: no sandbox reached"
        );
        let records: Vec<_> = audit
            .matching("sandbox", sandbox)
            .into_iter()
            .map(|r| {
                (
                    r["decision"].clone(),
                    r["reason"].clone(),
                    r.get("observed").cloned(),
                )
            })
            .collect();
        assert_eq!(
            records,
            [(
                decision.to_owned(),
                reason.to_owned(),
                Some("true".to_owned())
            )],
            "{sandbox}"
        );
    }
}
