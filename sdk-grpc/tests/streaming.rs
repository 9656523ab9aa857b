//! All four kinds of call keep the sandbox context for every message, through the client
//! interceptor and through the client layer, on a real tonic server on loopback; the bidi
//! handler's per-message tasks (spawned with `prodbox_core::spawn`) keep it too, and streams of
//! different sandboxes multiplexed on one channel never see each other's.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use prodbox_core::{FutureExt, Sandbox, TrustPolicy};
use prodbox_grpc::{PropagateSandboxLayer, SandboxInterceptor, SandboxLayer};
use prodbox_testkit::echo::echo_client::EchoClient;
use prodbox_testkit::echo::{Ping, Seen};
use prodbox_testkit::grpc::{EchoService, baggage_entries, channel, pings, serve_echo};
use tonic::codegen::{Body, Bytes, StdError};
use tonic::transport::Channel;
use tower::ServiceBuilder;

fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(key.parse().unwrap())
}

async fn server() -> Channel {
    let addr = serve_echo(
        SandboxLayer::new(TrustPolicy::accept()),
        EchoService::new("streaming"),
    )
    .await;
    channel(addr)
}

fn intercepted(
    channel: Channel,
) -> EchoClient<tonic::service::interceptor::InterceptedService<Channel, SandboxInterceptor>> {
    EchoClient::with_interceptor(channel, SandboxInterceptor::new())
}

fn layered(channel: Channel) -> EchoClient<prodbox_grpc::PropagateSandbox<Channel>> {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .service(channel),
    )
}

/// The `baggage` metadata a handler should have seen for a call in `expected`.
fn expected_baggage(expected: &str) -> Vec<String> {
    if expected.is_empty() {
        Vec::new()
    } else {
        vec![format!("prodbox.sandbox={expected}")]
    }
}

fn check(seen: &Seen, expected: &str, what: &str) {
    assert_eq!(seen.sandbox, expected, "{what}: {seen:?}");
    assert_eq!(
        baggage_entries(seen),
        expected_baggage(expected),
        "{what}: {seen:?}"
    );
}

/// Makes one call of each kind and checks every message reports `expected` ("" for baseline).
async fn all_kinds<T>(mut client: EchoClient<T>, expected: &str, via: &str)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let seen = client
        .unary(Ping { id: 7, count: 0 })
        .await
        .unwrap()
        .into_inner();
    check(&seen, expected, &format!("{via}: unary"));

    let mut stream = client
        .server_stream(Ping { id: 8, count: 5 })
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(seen) = stream.message().await.unwrap() {
        check(&seen, expected, &format!("{via}: server stream message"));
        ids.push(seen.id);
    }
    assert_eq!(ids, [0, 1, 2, 3, 4], "{via}: server stream");

    let seen = client
        .client_stream(pings(0, 5))
        .await
        .unwrap()
        .into_inner();
    check(&seen, expected, &format!("{via}: client stream"));
    assert_eq!(seen.id, 5, "{via}: client stream: {seen:?}");
    assert_eq!(
        seen.per_message,
        vec![expected.to_owned(); 5],
        "{via}: client stream, per message"
    );

    let mut replies = client.bidi(pings(100, 5)).await.unwrap().into_inner();
    let mut ids = BTreeSet::new();
    while let Some(seen) = replies.message().await.unwrap() {
        // `sandbox`: the task spawned for the message; `per_message`: the reader task.
        check(&seen, expected, &format!("{via}: bidi message"));
        assert_eq!(seen.per_message, [expected], "{via}: bidi reader: {seen:?}");
        ids.insert(seen.id);
    }
    assert_eq!(
        ids,
        (100..105).collect(),
        "{via}: every bidi message answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_keeps_the_sandbox_for_every_message() {
    let channel = server().await;
    all_kinds(intercepted(channel.clone()), "stream-i", "interceptor")
        .in_sandbox(sandbox("stream-i"))
        .await;
    all_kinds(layered(channel.clone()), "stream-l", "layer")
        .in_sandbox(sandbox("stream-l"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_baseline_call_stays_baseline() {
    let channel = server().await;
    all_kinds(intercepted(channel.clone()), "", "interceptor").await;
    all_kinds(layered(channel.clone()), "", "layer").await;
    // A sandboxed call on the same connection first does not leak into baseline calls after it.
    all_kinds(layered(channel.clone()), "stream-before", "layer")
        .in_sandbox(sandbox("stream-before"))
        .await;
    all_kinds(
        layered(channel.clone()),
        "",
        "layer, after a sandboxed call",
    )
    .await;
    all_kinds(
        intercepted(channel),
        "",
        "interceptor, after a sandboxed call",
    )
    .await;
}

/// Runs one bidi stream of `count` messages and returns every reply.
async fn bidi<T>(mut client: EchoClient<T>, first: u64, count: u64) -> Vec<Seen>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut replies = client.bidi(pings(first, count)).await.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(seen) = replies.message().await.unwrap() {
        all.push(seen);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bidi_streams_of_two_sandboxes_on_one_channel_never_cross() {
    const MESSAGES: u64 = 50;
    let channel = server().await;
    let mut tasks = tokio::task::JoinSet::new();
    // Two sandboxes and baseline, each through the interceptor and through the layer, all
    // multiplexed on the one HTTP/2 connection of `channel`, all at once.
    for (i, expected) in ["bidi-a", "bidi-b", ""].into_iter().enumerate() {
        for via in ["interceptor", "layer"] {
            let first = (i as u64 * 2 + u64::from(via == "layer")) * 1000;
            let channel = channel.clone();
            let call = async move {
                let replies = match via {
                    "interceptor" => bidi(intercepted(channel), first, MESSAGES).await,
                    _ => bidi(layered(channel), first, MESSAGES).await,
                };
                (expected, via, first, replies)
            };
            if expected.is_empty() {
                tasks.spawn(call);
            } else {
                tasks.spawn(call.in_sandbox(sandbox(expected)));
            }
        }
    }
    let mut streams = 0;
    while let Some(result) = tasks.join_next().await {
        let (expected, via, first, replies) = result.unwrap();
        let what = format!("{via} stream of {expected:?}");
        let ids: BTreeSet<u64> = replies.iter().map(|seen| seen.id).collect();
        assert_eq!(ids, (first..first + MESSAGES).collect(), "{what}");
        for seen in &replies {
            check(seen, expected, &what);
            assert_eq!(seen.per_message, [expected], "{what}: {seen:?}");
        }
        streams += 1;
    }
    assert_eq!(streams, 6);
}
