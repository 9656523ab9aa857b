//! `SandboxProducer` on a real broker: every send of every producer kind carries the current
//! context, so no send site can forget it; outside a sandbox, sandbox members a record's own
//! headers carry are removed; sends that lost their context are refused when a scope is
//! required; a record whose context cannot be written is not sent.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prodbox_core::{FutureExt, Sandbox};
use prodbox_kafka::SandboxProducer;
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{client_config, create_topic, read_topic, unique_topic};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;

fn sandbox() -> Sandbox {
    Sandbox::builder("pp-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .build()
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// A send site that knows nothing of prodbox: it only names the producer and the record.
async fn send_an_order(producer: &SandboxProducer<FutureProducer>, topic: &str, id: &str) {
    producer
        .send(
            FutureRecord::<str, str>::to(topic).key(id).payload(id),
            TIMEOUT,
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_producer_tags_every_send_with_the_current_context() {
    let topic = unique_topic("producer-kinds");
    create_topic(&topic, 1).await;
    let future: SandboxProducer<FutureProducer> =
        SandboxProducer::new(client_config().create().unwrap());
    let base: SandboxProducer<BaseProducer> =
        SandboxProducer::new(client_config().create().unwrap());
    let threaded: SandboxProducer<ThreadedProducer<_>> =
        SandboxProducer::new(client_config().create().unwrap());
    async {
        send_an_order(&future, &topic, "future-send").await;
        future
            .send_result(FutureRecord::<str, str>::to(&topic).payload("future-send-result"))
            .map_err(|(error, _)| error)
            .unwrap()
            .await
            .unwrap()
            .map_err(|(error, _)| error)
            .unwrap();
        base.send(BaseRecord::<str, str>::to(&topic).payload("base"))
            .map_err(|(error, _)| error)
            .unwrap();
        threaded
            .send(BaseRecord::<str, str>::to(&topic).payload("threaded"))
            .map_err(|(error, _)| error)
            .unwrap();
    }
    .in_sandbox(sandbox())
    .await;
    // The `Producer` trait passes through: flushing waits for the deliveries.
    base.flush(TIMEOUT).unwrap();
    threaded.flush(TIMEOUT).unwrap();
    // And production's send, the same code outside any sandbox: untagged.
    send_an_order(&future, &topic, "production").await;

    let records = read_topic(&topic, 1, 5, Duration::from_secs(15)).await;
    let mut seen: Vec<(String, Option<String>)> = records
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.payload).into_owned(),
                r.header("baggage"),
            )
        })
        .collect();
    seen.sort();
    let tagged = Some("prodbox.sandbox=pp-42,prodbox.actor=alice".to_owned());
    assert_eq!(
        seen,
        [
            ("base".to_owned(), tagged.clone()),
            ("future-send".to_owned(), tagged.clone()),
            ("future-send-result".to_owned(), tagged.clone()),
            ("production".to_owned(), None),
            ("threaded".to_owned(), tagged),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_sandbox_a_records_own_sandbox_members_are_removed() {
    let topic = unique_topic("producer-strip");
    create_topic(&topic, 1).await;
    let producer: SandboxProducer<FutureProducer> =
        SandboxProducer::new(client_config().create().unwrap());
    // A handler copied the incoming message's headers onto its follow-up, in production.
    let copied = OwnedHeaders::new()
        .insert(Header {
            key: "baggage",
            value: Some("prodbox.sandbox=pp-old,userId=7"),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    producer
        .send(
            FutureRecord::<str, str>::to(&topic)
                .payload("copied")
                .headers(copied),
            TIMEOUT,
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    let records = read_topic(&topic, 1, 1, Duration::from_secs(10)).await;
    assert_eq!(records[0].header("baggage").as_deref(), Some("userId=7"));
    assert_eq!(
        records[0].header("content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_scope_required_work_that_lost_its_context_cannot_send() {
    let audit = AuditLog::global();
    let topic = unique_topic("producer-scope");
    create_topic(&topic, 1).await;
    let producer: SandboxProducer<FutureProducer> =
        SandboxProducer::new(client_config().create().unwrap()).require_scope();
    // A sandboxed request spawns its follow-up with plain `tokio::spawn`: the context is
    // lost, and the record would go out as production's.
    let spawned = async {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic).payload("lost"),
                    TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        })
        .await
        .unwrap()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        spawned.unwrap_err(),
        KafkaError::MessageProduction(RDKafkaErrorCode::State)
    );
    assert!(
        audit
            .all()
            .iter()
            .any(|r| r.get("reason").map(String::as_str) == Some("kafka_no_scope"))
    );
    // In a scope, sandboxed or production, sends go.
    send_an_order(&producer, &topic, "in-sandbox")
        .in_sandbox(sandbox())
        .await;
    send_an_order(&producer, &topic, "in-production")
        .in_production()
        .await;
    let records = read_topic(&topic, 1, 2, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 2);
}

#[tokio::test]
async fn a_record_whose_context_cannot_be_written_is_not_sent() {
    let producer: SandboxProducer<FutureProducer> =
        SandboxProducer::new(client_config().create().unwrap());
    let unwritable = OwnedHeaders::new().insert(Header {
        key: "baggage",
        value: Some("not a member"),
    });
    let (error, record) = async {
        producer
            .send_result(
                FutureRecord::<str, str>::to("never-created")
                    .payload("p")
                    .headers(unwritable.clone()),
            )
            .map(|_| ())
            .unwrap_err()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::BadMessage)
    );
    assert_eq!(record.payload, Some("p"), "the record comes back");
    let (error, message) = async {
        producer
            .send(
                FutureRecord::<str, str>::to("never-created")
                    .payload("p")
                    .headers(unwritable),
                TIMEOUT,
            )
            .await
            .unwrap_err()
    }
    .in_sandbox(sandbox())
    .await;
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::BadMessage)
    );
    assert_eq!(
        rdkafka::message::Message::payload(&message),
        Some(&b"p"[..])
    );
}
