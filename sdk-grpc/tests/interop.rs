//! Interop with services that know nothing of prodbox: a plain tonic client that writes the
//! W3C `baggage` metadata by hand, as any OpenTelemetry service in another language would, is
//! understood by the server layer; binary (`-bin`) metadata is never read; and the client side
//! merges its context into `baggage` metadata the call already has, in one entry.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use prodbox_core::{FutureExt, Sandbox, TrustPolicy};
use prodbox_grpc::{PropagateSandboxLayer, SandboxInterceptor, SandboxLayer};
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::echo::{Ping, Seen};
use prodbox_testkit::grpc::{EchoService, baggage_entries, channel, serve_echo};
use tonic::metadata::{MetadataMap, MetadataValue};
use tower::ServiceBuilder;
use tower::layer::util::Identity;

/// A handler that reports (S), and B forwarding to C (both `Accept`), B's client to C with the
/// interceptor.
struct Servers {
    s: SocketAddr,
    b: SocketAddr,
}

async fn servers() -> Servers {
    let s = serve_echo(
        SandboxLayer::new(TrustPolicy::accept()),
        EchoService::new("s"),
    )
    .await;
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
    Servers { s, b }
}

/// A plain tonic client call, no prodbox, with `metadata` set by hand.
async fn plain_call(addr: SocketAddr, metadata: impl FnOnce(&mut MetadataMap)) -> Seen {
    let mut request = tonic::Request::new(Ping { id: 1, count: 0 });
    metadata(request.metadata_mut());
    EchoClient::new(channel(addr))
        .unary(request)
        .await
        .unwrap()
        .into_inner()
}

async fn with_baggage(addr: SocketAddr, baggage: &[&str]) -> Seen {
    plain_call(addr, |metadata| {
        for value in baggage {
            metadata.append("baggage", MetadataValue::try_from(*value).unwrap());
        }
    })
    .await
}

#[tokio::test]
async fn hand_written_baggage_is_understood_and_foreign_members_travel_on() {
    let servers = servers().await;
    let sent = "prodbox.sandbox=pr-1,tenant=acme%20inc;p=1";
    let seen = with_baggage(servers.s, &[sent]).await;
    assert_eq!(seen.sandbox, "pr-1");
    assert_eq!(
        baggage_entries(&seen),
        [sent],
        "the handler sees it as sent"
    );

    // At the next hop: our member first, the foreign one byte for byte, one entry.
    let seen = with_baggage(servers.b, &[sent]).await;
    assert_eq!(seen.sandbox, "pr-1");
    assert_eq!(baggage_entries(&seen), [sent]);

    // Whitespace and order as other implementations write them.
    let seen = with_baggage(servers.b, &["tenant=acme%20inc;p=1 , prodbox.sandbox=pr-1"]).await;
    assert_eq!(seen.sandbox, "pr-1");
    assert_eq!(baggage_entries(&seen), [sent]);

    // Baggage without a sandbox: baseline, the foreign members still travel.
    let seen = with_baggage(servers.b, &["tenant=acme%20inc;p=1,user=7"]).await;
    assert_eq!(seen.sandbox, "");
    assert_eq!(baggage_entries(&seen), ["tenant=acme%20inc;p=1,user=7"]);
}

#[tokio::test]
async fn two_baggage_entries_are_read_as_one_list() {
    let servers = servers().await;
    let sent = ["tenant=acme", "prodbox.sandbox=pr-2,x=1"];
    let seen = with_baggage(servers.s, &sent).await;
    assert_eq!(seen.sandbox, "pr-2");
    assert_eq!(baggage_entries(&seen), sent);
    // The next hop gets one entry, ours first, the others in order.
    let seen = with_baggage(servers.b, &sent).await;
    assert_eq!(seen.sandbox, "pr-2");
    assert_eq!(
        baggage_entries(&seen),
        ["prodbox.sandbox=pr-2,tenant=acme,x=1"]
    );
}

#[tokio::test]
async fn binary_metadata_is_never_read() {
    let servers = servers().await;
    // The default server is strict at an `Accept` hop: were these read, they would be
    // contexts (or refusals for their invalid bytes).
    for value in [&b"prodbox.sandbox=evil-bin"[..], &b"\xff\x00\r\n"[..]] {
        let seen = plain_call(servers.s, |metadata| {
            metadata.append_bin("baggage-bin", MetadataValue::from_bytes(value));
            metadata.append_bin(
                "uberctx-prodbox.sandbox-bin",
                MetadataValue::from_bytes(value),
            );
            metadata.append_bin(
                "ot-baggage-prodbox.sandbox-bin",
                MetadataValue::from_bytes(value),
            );
        })
        .await;
        assert_eq!(seen.sandbox, "", "{value:?}");
        assert!(seen.baggage.is_empty(), "{seen:?}");
    }
    // Next to a text context they do not make it ambiguous.
    let seen = plain_call(servers.s, |metadata| {
        metadata.append(
            "baggage",
            MetadataValue::from_static("prodbox.sandbox=pr-3"),
        );
        metadata.append_bin(
            "baggage-bin",
            MetadataValue::from_bytes(b"prodbox.sandbox=evil-bin"),
        );
        metadata.append_bin(
            "uberctx-prodbox.sandbox-bin",
            MetadataValue::from_bytes(b"evil-bin"),
        );
    })
    .await;
    assert_eq!(seen.sandbox, "pr-3");
    // While the text legacy carrier is read.
    let seen = plain_call(servers.s, |metadata| {
        metadata.append(
            "uberctx-prodbox.sandbox",
            MetadataValue::from_static("pr-4"),
        );
    })
    .await;
    assert_eq!(seen.sandbox, "pr-4");
}

type Sent = Vec<String>;

/// What a server without prodbox receives as `baggage` when a call with `existing` entries goes
/// out through the interceptor and through the layer, in `sandbox` (or baseline).
async fn outbound(raw: SocketAddr, sandbox: Option<&str>, existing: &[&str]) -> [Sent; 2] {
    let request = || {
        let mut request = tonic::Request::new(Ping { id: 1, count: 0 });
        for value in existing {
            request
                .metadata_mut()
                .append("baggage", MetadataValue::try_from(*value).unwrap());
        }
        request
    };
    let mut intercepted = EchoClient::with_interceptor(channel(raw), SandboxInterceptor::new());
    let mut layered = EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .service(channel(raw)),
    );
    let calls = async {
        let a = intercepted.unary(request()).await.unwrap().into_inner();
        let b = layered.unary(request()).await.unwrap().into_inner();
        [a, b]
    };
    let seen = match sandbox {
        Some(key) => calls.in_sandbox(Sandbox::new(key.parse().unwrap())).await,
        None => calls.await,
    };
    seen.map(|seen| {
        baggage_entries(&seen)
            .into_iter()
            .map(str::to_owned)
            .collect()
    })
}

#[tokio::test]
async fn existing_outbound_baggage_is_merged_into_one_entry() {
    let raw = serve_echo(Identity::new(), EchoService::new("raw")).await;
    let cases: [(Option<&str>, &[&str], &[&str]); 7] = [
        (Some("pr-m"), &[], &["prodbox.sandbox=pr-m"]),
        (
            Some("pr-m"),
            &["a=1,b=2"],
            &["prodbox.sandbox=pr-m,a=1,b=2"],
        ),
        (
            Some("pr-m"),
            &["a=1", "b=2;p=1,c=3"],
            &["prodbox.sandbox=pr-m,a=1,b=2;p=1,c=3"],
        ),
        // A stale member of ours copied by the application is replaced, not repeated.
        (
            Some("pr-m"),
            &["a=1,prodbox.sandbox=stale", "prodbox.sandbox=stale-2,b=2"],
            &["prodbox.sandbox=pr-m,a=1,b=2"],
        ),
        // Baseline: nothing of ours goes out; with nothing to write, the application's entries
        // are left exactly as they were.
        (None, &["a=1", "b=2"], &["a=1", "b=2"]),
        (None, &["a=1,prodbox.sandbox=stale"], &["a=1"]),
        (None, &["a=1", "prodbox.sandbox=stale,b=2"], &["a=1,b=2"]),
    ];
    for (sandbox, existing, expected) in cases {
        let [intercepted, layered] = outbound(raw, sandbox, existing).await;
        let what = format!("{sandbox:?} with {existing:?}");
        assert_eq!(intercepted, expected, "interceptor: {what}");
        assert_eq!(layered, expected, "layer: {what}");
    }
    // Baseline without any baggage: none is added.
    let [intercepted, layered] = outbound(raw, None, &[]).await;
    assert!(intercepted.is_empty() && layered.is_empty());
}
