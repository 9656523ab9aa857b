//! The per-sandbox throttle on a real broker: a sandbox over its rate has its messages delayed
//! (and audited as throttled), never dropped; untagged messages are not throttled.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Log, Out, Running, assert_zero_lag, consumer_config, ends, eventually, produce, recorder,
};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Guardrails, Sandbox, SandboxKey};
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{create_topic, unique_topic};

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_sandbox_is_delayed_not_dropped() {
    let audit = AuditLog::global();
    let topic = unique_topic("throttle");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    // A sandbox that does not fork billing: the baseline handles its messages, throttled.
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(key("th-a")));
    let records: Vec<Out> = (0..12u32)
        .map(|i| Out::new(i.to_string()).sandbox((i % 2 == 0).then(|| Sandbox::new(key("th-a")))))
        .collect();
    let landed = produce(&common::producer(), &topic, &records).await;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory)
        .guardrails(Guardrails::builder().rate(20.0, 1).build())
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let run = Running::spawn(consumer, recorder(&log, "baseline"));
    let all: BTreeSet<String> = records.iter().map(|r| r.payload.clone()).collect();
    let handled =
        || -> BTreeSet<String> { log.lock().unwrap().iter().map(|e| e.1.clone()).collect() };
    assert!(
        eventually(Duration::from_secs(30), || handled() == all).await,
        "not everything was handled in time"
    );
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
    run.stop().await;
    assert_eq!(handled(), all);

    let throttled = audit
        .matching("sandbox", "th-a")
        .into_iter()
        .filter(|r| {
            r.get("decision").map(String::as_str) == Some("throttled")
                && r.get("reason").map(String::as_str) == Some("rate_limited")
                && r.get("protocol").map(String::as_str) == Some("kafka")
        })
        .count();
    assert!(throttled > 0, "no throttle was audited");
    // Only sandboxed messages are throttled.
    let baseline_throttled = audit
        .matching("decision", "throttled")
        .into_iter()
        .filter(|r| r.get("sandbox").map(String::as_str) == Some("-"))
        .count();
    assert_eq!(baseline_throttled, 0);
}
