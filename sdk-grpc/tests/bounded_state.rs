//! `ForkRouter`'s cache of fork channels stays bounded under a flood of sandboxes (issue #8).
//!
//! The cache is private; each cached channel keeps one Tokio task alive (tonic's buffer worker,
//! spawned when the channel is made, ended when its last clone drops), so the runtime's count of
//! alive tasks counts the cache. No call is sent: routing happens when the call is made, and the
//! calls are dropped unsent.

use std::time::Duration;

use opentelemetry::Context;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxContext, SandboxKey};
use prodbox_grpc::ForkRouter;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tower_service::Service;

fn key(i: usize) -> SandboxKey {
    format!("grpc-flood-{i}").parse().expect("a valid key")
}

/// Makes (and drops, unsent) one call in sandbox `i`.
fn route(router: &mut ForkRouter, i: usize) {
    let cx = SandboxContext::new(Sandbox::new(key(i))).attach_to(&Context::current());
    let _guard = cx.attach();
    drop(router.call(http::Request::new(Body::empty())));
}

/// Lets the runtime finish the workers of dropped channels, then counts alive tasks.
async fn alive_tasks() -> usize {
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "current_thread")]
async fn fork_channels_stay_bounded_under_a_flood_of_sandboxes() {
    // Nothing listens on the discard port; nothing is ever sent there.
    let baseline = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let directory = MemoryDirectory::new();
    let mut router = ForkRouter::new("echo", baseline, directory.clone());
    let start = alive_tasks().await;

    // 100,000 distinct sandboxes the directory does not know: no channel at all.
    for i in 0..100_000 {
        route(&mut router, i);
    }
    assert_eq!(
        alive_tasks().await,
        start,
        "unknown sandboxes opened channels"
    );

    // 100 registered sandboxes with forks of their own: one channel each (the measure works).
    let address = |i: usize| format!("http://127.0.0.1:{}", 20_000 + i);
    for i in 0..100 {
        directory.upsert(
            SandboxEntry::new(key(i)).fork("echo", address(i).parse().expect("a fork address")),
        );
        route(&mut router, i);
        route(&mut router, i);
    }
    assert_eq!(
        alive_tasks().await,
        start + 100,
        "one channel per fork address"
    );

    // 2,000 more, each registered, routed, then deleted (sandboxes come and go): past 256
    // channels, those no sandbox lists any more are closed.
    for i in 100..2_100 {
        directory.upsert(
            SandboxEntry::new(key(i)).fork("echo", address(i).parse().expect("a fork address")),
        );
        route(&mut router, i);
        directory.remove(&key(i));
    }
    let cached = alive_tasks().await - start;
    assert!(cached <= 256, "{cached} fork channels cached");

    // When the sandboxes stay registered, the cache holds what they list (the first 100 and
    // these 300): the bound is the number of fork addresses in the directory, which the operator
    // controls, not the number of sandboxes that call.
    for i in 2_100..2_400 {
        directory.upsert(
            SandboxEntry::new(key(i)).fork("echo", address(i).parse().expect("a fork address")),
        );
        route(&mut router, i);
    }
    let cached = alive_tasks().await - start;
    assert!(
        (400..=400 + 256).contains(&cached),
        "{cached} fork channels cached for 400 listed addresses"
    );
}
