//! Kafka messages processed, skipped and dead-lettered, per role, as OpenTelemetry metrics.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Log, Out, Running, consumer_config, eventually, produce, producer, recorder};
use prodbox_core::Sandbox;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::kafka::{create_topic, unique_topic};
use prodbox_testkit::metrics::Metrics;
use rdkafka::message::{Message, OwnedHeaders};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_outcomes_are_counted_per_role() {
    let metrics = Metrics::global();
    let topic = unique_topic("metrics");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    create_topic(&format!("{group}.dead-letter"), 1).await;
    let directory = MemoryDirectory::new();
    let mut fork = SandboxEntry::new("mk-fork".parse().unwrap()).fork(
        "billing",
        "http://127.0.0.1:1".parse().expect("a fork address"),
    );
    fork.created_at = Some(std::time::SystemTime::now() - Duration::from_secs(60));
    directory.upsert(fork);

    let sandbox = |key: &str| Some(Sandbox::new(key.parse().unwrap()));
    let mut records: Vec<Out> = (0..4).map(|i| Out::new(format!("plain-{i}"))).collect();
    records.extend((0..3).map(|i| Out::new(format!("forked-{i}")).sandbox(sandbox("mk-fork"))));
    records.extend((0..2).map(|i| Out::new(format!("other-{i}")).sandbox(sandbox("mk-other"))));
    records.push(
        Out::new("poison")
            .headers(OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "baggage",
                value: Some("prodbox.sandbox=NOT_A_KEY"),
            }))
            .raw(),
    );
    produce(&producer(), &topic, &records).await;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory)
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let running = Running::spawn(consumer, recorder(&log, "baseline"));
    let count = |outcome: &str| {
        metrics.sum(
            "prodbox.kafka.messages",
            &[
                ("messaging.system", "kafka"),
                ("messaging.destination.name", &topic),
                ("prodbox.kafka.role", "baseline"),
                ("prodbox.kafka.outcome", outcome),
            ],
        )
    };
    // Each skip is an audit decision too, tallied by the consumer and counted once a second.
    let skips = || {
        metrics.sum(
            "prodbox.sandbox.decisions",
            &[
                ("prodbox.protocol", "kafka"),
                ("prodbox.decision", "skipped"),
                ("prodbox.reason", "forked"),
                ("prodbox.sandbox", "mk-fork"),
            ],
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || count("processed") == 6
            && count("skipped") == 3
            && count("dead_lettered") == 1
            && skips() == 3)
        .await,
        "processed {}, skipped {}, dead-lettered {}, skip decisions {}",
        count("processed"),
        count("skipped"),
        count("dead_lettered"),
        skips()
    );
    running.stop().await;
    assert_eq!(log.lock().unwrap().len(), 6);
}

/// Messages processed reach the metric while a later message keeps failing: the counts are
/// not held back by the retries (a loop that tallied them until its next message would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_messages_are_counted_while_a_later_one_retries() {
    let metrics = Metrics::global();
    let topic = unique_topic("metrics-retry");
    create_topic(&topic, 1).await;
    let records: Vec<Out> = (0..6).map(|i| Out::new(format!("{i}"))).collect();
    produce(&producer(), &topic, &records).await;
    let consumer = SandboxConsumer::builder(
        consumer_config(),
        &format!("{topic}-billing"),
        Role::baseline("billing"),
    )
    .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
    .start(&[&topic])
    .await
    .unwrap();
    let running = Running::spawn(consumer, |message| async move {
        // The last one fails for ever.
        if message.payload() == Some(b"5".as_slice()) {
            Err("failing")
        } else {
            Ok(())
        }
    });
    let processed = || {
        metrics.sum(
            "prodbox.kafka.messages",
            &[
                ("messaging.system", "kafka"),
                ("messaging.destination.name", &topic),
                ("prodbox.kafka.role", "baseline"),
                ("prodbox.kafka.outcome", "processed"),
            ],
        )
    };
    let counted = eventually(Duration::from_secs(20), || processed() == 5).await;
    let seen = processed();
    running.stop().await;
    assert!(
        counted,
        "{seen} of 5 processed counted while the sixth retried"
    );
}
