//! A sandbox's subscriptions and publications stay in its namespace: production's subscribers
//! never hear a sandbox's messages, and a sandbox hears only its own, under the names it used.

mod common;

use std::time::Duration;

use common::{handle, in_sandbox, raw, sandbox, unique};
use futures_util::StreamExt;
use redis::AsyncCommands;

#[tokio::test]
async fn channels_are_per_sandbox() {
    let redis = handle().await;
    let s = sandbox("pubsub");
    let channel = unique("orders");

    let mut production = redis.pubsub().await.expect("production pubsub");
    production.subscribe(&channel).await.expect("subscribe");
    let mut production = Box::pin(production.into_on_message());

    let sandboxed = in_sandbox(&s, async {
        let mut sub = redis.pubsub().await.expect("sandbox pubsub");
        sub.subscribe(&channel).await.expect("subscribe");
        sub
    })
    .await;
    let mut sandboxed = Box::pin(sandboxed.into_on_message());

    // The sandbox publishes under the shared name: only its own subscriber hears it.
    let heard: i64 = in_sandbox(&s, async {
        redis.clone().publish(&channel, "test order").await
    })
    .await
    .expect("PUBLISH");
    assert_eq!(heard, 1, "one subscriber: the sandbox's own");
    let msg = tokio::time::timeout(Duration::from_secs(5), sandboxed.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(msg.get_channel_name(), channel, "named as subscribed");
    assert_eq!(msg.get_payload::<String>().expect("payload"), "test order");

    // Production publishes: only production hears it.
    let heard: i64 = raw()
        .await
        .publish(&channel, "real order")
        .await
        .expect("PUBLISH");
    assert_eq!(heard, 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), production.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(msg.get_payload::<String>().expect("payload"), "real order");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sandboxed.next())
            .await
            .is_err(),
        "the sandbox heard production"
    );
    redis.teardown(s.key()).await.expect("teardown");
}

#[tokio::test]
async fn a_sandbox_may_not_subscribe_to_production_patterns() {
    let redis = handle().await;
    let s = sandbox("psub");
    in_sandbox(&s, async {
        let mut sub = redis.pubsub().await.expect("sandbox pubsub");
        // The pattern of all its channels is its own...
        sub.psubscribe("*").await.expect("its own channels");
        // ...but a narrower pattern Redis cannot prove is inside the namespace is refused.
        let error = sub.psubscribe("orders.*").await.expect_err("refused");
        assert!(
            matches!(
                prodbox_redis::SandboxRedisError::of(&error),
                Some(prodbox_redis::SandboxRedisError::ServerRefused { .. })
            ),
            "{error}"
        );
    })
    .await;
    redis.teardown(s.key()).await.expect("teardown");
}

/// A subscription opened in one context cannot be used from another: production's opened
/// connection would hand a sandboxed request production's messages.
#[tokio::test]
async fn a_subscription_stays_in_the_context_it_was_opened_in() {
    let redis = handle().await;
    let s = sandbox("psub-moved");
    let mut production = redis.pubsub().await.expect("production pubsub");
    let error = in_sandbox(&s, production.subscribe("orders"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            prodbox_redis::SandboxRedisError::of(&error),
            Some(prodbox_redis::SandboxRedisError::ContextChanged {
                at_call: None,
                at_poll: Some(_)
            })
        ),
        "{error}"
    );
    let mut sandboxed = in_sandbox(&s, redis.pubsub())
        .await
        .expect("sandbox pubsub");
    let error = sandboxed.psubscribe("*").await.expect_err("refused");
    assert!(
        matches!(
            prodbox_redis::SandboxRedisError::of(&error),
            Some(prodbox_redis::SandboxRedisError::ContextChanged {
                at_call: Some(_),
                at_poll: None
            })
        ),
        "{error}"
    );
    redis.teardown(s.key()).await.expect("teardown");
}
