//! Isolation edges and hostile input found in review: nothing of ours crosses an untrusted
//! edge, nothing an application sets can break an outbound header, and configuration or input
//! at the extremes never panics.

use std::time::{Duration, SystemTime};

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use prodbox_core::audit::Protocol;
use prodbox_core::directory::FileDirectory;
use prodbox_core::egress::Egress;
use prodbox_core::token::TokenKeys;
use prodbox_core::{Admission, Codec, ContextExt, Ingress, Sandbox, TrustPolicy};

type Headers = Vec<(String, Vec<u8>)>;

fn header(name: &str, value: &str) -> (String, Vec<u8>) {
    (name.to_owned(), value.as_bytes().to_vec())
}

fn baggage_of(headers: &Headers) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == "baggage")
        .map(|(_, v)| String::from_utf8(v.clone()).expect("utf-8"))
        .collect()
}

fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(key.parse().expect("valid key"))
}

#[test]
fn another_tools_routing_key_never_crosses_an_untrusted_edge() {
    // The edge does not read `sd-routing-key`; a hop behind it does.
    let edge = Ingress::new(TrustPolicy::strip());
    let inner = Ingress::new(TrustPolicy::accept()).codec(Codec::default().alias("sd-routing-key"));
    let mut request: Headers = vec![header("baggage", "sd-routing-key=h-smuggle,tenant=a")];

    let Admission::Baseline { context, strip } = edge.admit(&request, None) else {
        panic!("the edge must run it as baseline");
    };
    assert!(strip);
    let foreign = context.map(|c| c.foreign().as_str().to_owned());
    assert_eq!(foreign.as_deref(), Some("tenant=a"));
    Codec::default().strip(&mut request);
    assert_eq!(baggage_of(&request), ["tenant=a"]);

    // What the edge sends on carries nothing the inner hop would read as a sandbox.
    let mut onward: Headers = Vec::new();
    let cx = Context::new().without_sandbox();
    let cx = prodbox_core::SandboxContext::baseline(
        prodbox_core::plumbing::codec::foreign_members(foreign.as_deref()),
    )
    .attach_to(&cx);
    Egress::new(Protocol::Http)
        .inject_from(&cx, &mut onward)
        .expect("inject");
    assert!(matches!(
        inner.admit(&onward, None),
        Admission::Baseline { .. }
    ));
}

#[test]
fn a_signed_edge_forwards_only_what_the_token_authenticated() {
    let keys = TokenKeys::new().with_key("k1", &[3u8; 32]).expect("key");
    let token = keys
        .mint(&sandbox("h-signed"), Duration::from_secs(60))
        .expect("mint");
    let edge = Ingress::new(TrustPolicy::signed(keys));
    let request: Headers = vec![header(
        "baggage",
        &format!("prodbox.token={token},prodbox.schema=public,okteto-divert=x,tenant=a"),
    )];
    let Admission::Sandboxed { context, .. } = edge.admit(&request, None) else {
        panic!("a valid token is a sandbox");
    };
    assert_eq!(context.foreign().as_str(), "tenant=a");
}

#[test]
fn an_untrusted_peer_is_stripped_even_with_malformed_baggage() {
    let ingress = Ingress::new(TrustPolicy::accept_from(["10.0.0.0/8"
        .parse()
        .expect("network")]));
    let request: Headers = vec![header("baggage", "prodbox.sandbox=PR_1,userId")];
    let peer = Some("1.2.3.4".parse().expect("ip"));
    assert!(matches!(
        ingress.admit(&request, peer),
        Admission::Baseline { strip: true, .. }
    ));
    // From inside the network the same baggage is refused (a broken sandbox request).
    let inside = Some("10.1.2.3".parse().expect("ip"));
    assert!(matches!(
        ingress.admit(&request, inside),
        Admission::Refused(_)
    ));
}

#[test]
fn application_baggage_that_would_break_the_header_is_left_out() {
    let egress = Egress::new(Protocol::Http);
    let mut bad_metadata = opentelemetry::baggage::Baggage::new();
    let _ = bad_metadata.insert_with_metadata("evil", "v", "p\u{7f}");
    let _ = bad_metadata.insert_with_metadata("smuggle", "v", "p,sd-routing-key=x");
    let _ = bad_metadata.insert("tenant", "acme inc");
    let cx = Context::new()
        .with_sandbox(sandbox("h-metadata"))
        .with_baggage(bad_metadata);
    let mut headers: Headers = Vec::new();
    let sent = egress.inject_from(&cx, &mut headers).expect("inject");
    assert_eq!(sent, Some(sandbox("h-metadata")));
    assert_eq!(
        baggage_of(&headers),
        ["prodbox.sandbox=h-metadata,tenant=acme%20inc"]
    );
}

#[test]
fn legacy_carriers_of_ours_never_go_out() {
    let egress = Egress::new(Protocol::Http);
    for cx in [
        Context::new(),
        Context::new().with_sandbox(sandbox("h-legacy")),
    ] {
        let mut headers: Headers = vec![
            header("uberctx-prodbox.sandbox", "pr-9"),
            header("ot-baggage-sd-routing-key", "pr-9"),
            header("uberctx-tenant", "a"),
        ];
        egress.inject_from(&cx, &mut headers).expect("inject");
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"uberctx-prodbox.sandbox"), "{names:?}");
        assert!(!names.contains(&"ot-baggage-sd-routing-key"), "{names:?}");
        assert!(names.contains(&"uberctx-tenant"), "{names:?}");
    }
}

#[test]
fn extreme_token_lifetimes_and_leeways_do_not_panic() {
    let keys = TokenKeys::new().with_key("k1", &[5u8; 32]).expect("key");
    // By default a keyring neither mints nor accepts such a token.
    assert!(keys.mint(&sandbox("h-forever"), Duration::MAX).is_err());
    let keys = keys.max_lifetime(Duration::MAX);
    let forever = keys
        .mint(&sandbox("h-forever"), Duration::MAX)
        .expect("mint");
    // Accepted or refused, but never a panic, whatever the leeway.
    let _ = keys.verify(&forever, SystemTime::now());
    let _ = keys
        .clone()
        .leeway(Duration::MAX)
        .verify(&forever, SystemTime::now());
    let short = keys
        .mint(&sandbox("h-short"), Duration::from_secs(1))
        .expect("mint");
    let _ = keys.leeway(Duration::MAX).verify(&short, SystemTime::now());
}

#[test]
fn a_directory_file_with_a_timestamp_out_of_range_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d.json");
    std::fs::write(
        &path,
        r#"{"sandboxes":[{"key":"a","expires_at":18446744073709551615}]}"#,
    )
    .expect("write");
    let error = FileDirectory::open(&path).expect_err("out of range");
    assert!(error.to_string().contains("out of range"), "{error}");
}
