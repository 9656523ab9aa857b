//! Poison headers on a real broker: malformed, oversized, conflicting and non-UTF-8 sandbox
//! headers go to the dead-letter topic with the reason, are audited, are never handled, and
//! the consumer's lag returns to zero.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{
    Log, Out, Running, assert_zero_lag, consumer_config, ends, eventually, produce, read_topic,
    recorder,
};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_kafka::consumer::{DEAD_LETTER_REASON, DEAD_LETTER_SOURCE};
use prodbox_kafka::{ConsumerError, Role, SandboxConsumer};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{create_topic, unique_topic};
use rdkafka::message::{Header, OwnedHeaders};

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// A poison record: its payload, its raw headers, the audit reason and a part of the
/// dead-letter reason header.
struct Poison {
    payload: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    reason: &'static str,
    says: &'static str,
}

fn poisons() -> Vec<Poison> {
    let big = |name: &str| format!("{name}={}", "x".repeat(4100)).into_bytes();
    vec![
        Poison {
            payload: "poison-malformed",
            headers: vec![("baggage", b"prodbox.sandbox=PR_1".to_vec())],
            reason: "invalid_sandbox_key",
            says: "invalid sandbox key",
        },
        Poison {
            payload: "poison-member",
            headers: vec![("baggage", b"userId=7,prodbox.sandbox".to_vec())],
            reason: "baggage_malformed_member",
            says: "member 1 is malformed",
        },
        // Each header under the limit, together over it.
        Poison {
            payload: "poison-oversized",
            headers: vec![("baggage", big("prodbox.actor")), ("baggage", big("b"))],
            reason: "baggage_too_large",
            says: "the limit is 8192",
        },
        Poison {
            payload: "poison-conflicting",
            headers: vec![
                ("baggage", b"prodbox.sandbox=pz-a".to_vec()),
                ("baggage", b"prodbox.sandbox=pz-b".to_vec()),
            ],
            reason: "ambiguous_sandbox",
            says: "ambiguous prodbox.sandbox",
        },
        Poison {
            payload: "poison-conflicting-legacy",
            headers: vec![
                ("baggage", b"prodbox.sandbox=pz-a".to_vec()),
                ("uberctx-prodbox.sandbox", b"pz-b".to_vec()),
            ],
            reason: "ambiguous_sandbox",
            says: "ambiguous prodbox.sandbox",
        },
        Poison {
            payload: "poison-utf8",
            headers: vec![("baggage", b"prodbox.sandbox=pz-\xff\xfe".to_vec())],
            reason: "baggage_invalid_utf8",
            says: "not valid UTF-8",
        },
        Poison {
            payload: "poison-control",
            headers: vec![("baggage", b"prodbox.sandbox=pz-a\r\nx: y".to_vec())],
            reason: "baggage_control_character",
            says: "control character",
        },
    ]
}

fn owned(headers: &[(&str, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

/// Good records around the poison: untagged, and of a sandbox that does not fork billing.
fn mixed(poisons: &[Poison]) -> Vec<Out> {
    let mut records = Vec::new();
    for (n, poison) in poisons.iter().enumerate() {
        for i in 0..4 {
            let sandbox = (i % 2 == 1).then(|| Sandbox::new(key("pz-a")));
            records.push(Out::new(format!("good-{n}-{i}")).sandbox(sandbox));
        }
        records.push(
            Out::new(poison.payload)
                .headers(owned(&poison.headers))
                .raw(),
        );
    }
    records
}

fn directory() -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new(key("pz-a")).fork(
        "shipping",
        "http://shipping".parse().expect("a fork address"),
    );
    entry.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(entry);
    directory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_headers_are_dead_lettered_audited_and_never_handled() {
    let audit = AuditLog::global();
    let topic = unique_topic("poison");
    create_topic(&topic, 2).await;
    let group = format!("{topic}-billing");
    // The default dead-letter topic; tansu does not create it by itself.
    let dead_letters = format!("{group}.dead-letter");
    create_topic(&dead_letters, 1).await;

    let poisons = poisons();
    let records = mixed(&poisons);
    let landed = produce(&common::producer(), &topic, &records).await;
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory())
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let run = Running::spawn(consumer, recorder(&log, "baseline"));

    let good: BTreeSet<String> = records
        .iter()
        .filter(|r| !r.raw)
        .map(|r| r.payload.clone())
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || {
            let seen: BTreeSet<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
            seen.is_superset(&good)
        })
        .await,
        "not everything was handled in time"
    );
    assert_zero_lag(&[&group], &topic, 2, &ends(&landed)).await;
    run.stop().await;

    // Never handled; everything else was, in its context.
    let log = log.lock().unwrap().clone();
    let handled: BTreeSet<String> = log.iter().map(|e| e.1.clone()).collect();
    assert_eq!(handled, good);
    for (_, payload, sandbox) in &log {
        let i: u32 = payload.rsplit('-').next().unwrap().parse().unwrap();
        let expected = (i % 2 == 1).then_some("pz-a");
        assert_eq!(sandbox.as_deref(), expected, "{payload}");
    }

    // In the dead-letter topic, once each, with the reason, the source, the payload, the key
    // and the original headers.
    let dead = read_topic(&dead_letters, 1, poisons.len() + 1, Duration::from_secs(3)).await;
    assert_eq!(
        dead.len(),
        poisons.len(),
        "{:?}",
        dead.iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect::<Vec<_>>()
    );
    for poison in &poisons {
        let record = dead
            .iter()
            .find(|r| r.payload == poison.payload.as_bytes())
            .unwrap_or_else(|| panic!("{} not dead-lettered", poison.payload));
        let reason = record.header(DEAD_LETTER_REASON).unwrap();
        assert!(
            reason.contains(poison.says),
            "{}: reason {reason:?}",
            poison.payload
        );
        let index = records
            .iter()
            .position(|r| r.payload == poison.payload)
            .unwrap();
        let (partition, offset) = landed[index];
        assert_eq!(
            record.header(DEAD_LETTER_SOURCE).unwrap(),
            format!("{topic}/{partition}/{offset}")
        );
        assert_eq!(record.key.as_deref(), Some(poison.payload.as_bytes()));
        let original: Vec<(String, Option<Vec<u8>>)> = poison
            .headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some(v.clone())))
            .collect();
        assert_eq!(
            record.headers[..original.len()],
            original[..],
            "{}",
            poison.payload
        );
        assert_eq!(record.headers.len(), original.len() + 2);
    }

    // Audited, one event per poison record at least (this binary's other test dead-letters
    // too, so count at least).
    let audited = audit.matching("decision", "dead_lettered");
    for poison in &poisons {
        let count = audited
            .iter()
            .filter(|r| {
                r.get("reason").map(String::as_str) == Some(poison.reason)
                    && r.get("protocol").map(String::as_str) == Some("kafka")
                    && r.get("direction").map(String::as_str) == Some("inbound")
                    && r.get("sandbox").map(String::as_str) == Some("-")
            })
            .count();
        let expected = poisons.iter().filter(|p| p.reason == poison.reason).count();
        assert!(
            count >= expected,
            "{}: {count} audit events, expected {expected}: {audited:?}",
            poison.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Sandbox consumers leave malformed sandbox headers to the baseline consumer, which
/// dead-letters each once: a sandbox consumer's dead-letter topic stays empty, it never handles
/// a poison message, and its lag still returns to zero.
async fn a_sandbox_consumer_leaves_poison_to_the_baseline() {
    let topic = unique_topic("poison-sandbox");
    create_topic(&topic, 1).await;
    let dead_letters = unique_topic("poison-custom-dlt");
    create_topic(&dead_letters, 1).await;
    let group = format!("{topic}-billing");
    // The baseline's: it dead-letters the poison, and the fork waits for it to pass.
    create_topic(&format!("{group}.dead-letter"), 1).await;

    let poisons = poisons();
    let records = mixed(&poisons);
    let landed = produce(&common::producer(), &topic, &records).await;
    // pz-a forks billing here, and the baseline runs: a fork handles its sandbox's records
    // once the baseline has given them to it.
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new(key("pz-a"))
        .fork("billing", "http://billing".parse().expect("a fork address"));
    entry.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(entry);
    let baseline = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory.clone())
        .start(&[&topic])
        .await
        .unwrap();
    let baseline = Running::spawn(baseline, recorder(&Log::default(), "baseline"));
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::sandbox(key("pz-a")))
        .directory(directory)
        .dead_letter_topic(&dead_letters)
        .start(&[&topic])
        .await
        .unwrap();
    let fork_group = consumer.group().to_owned();
    let log: Log = Arc::default();
    let run = Running::spawn(consumer, recorder(&log, "sandbox"));
    let own: BTreeSet<String> = records
        .iter()
        .filter(|r| r.sandbox.is_some())
        .map(|r| r.payload.clone())
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || {
            let seen: BTreeSet<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
            seen.is_superset(&own)
        })
        .await,
        "not everything was handled in time"
    );
    assert_zero_lag(&[fork_group], &topic, 1, &ends(&landed)).await;
    run.stop().await;
    baseline.stop().await;
    let handled: BTreeSet<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
    assert_eq!(handled, own);

    let dead = read_topic(&dead_letters, 1, poisons.len() + 1, Duration::from_secs(3)).await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
}

/// The dead-letter producer is created when the consumer starts: settings only a producer
/// checks are refused there, before any message is read, never at the first poison message
/// (which then could not be dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_the_dead_letter_producer_refuses_fail_at_start() {
    let topic = unique_topic("poison-no-producer");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let mut config = consumer_config();
    // A consumer ignores these; a producer refuses them (idempotence needs `acks=all`).
    config.set("enable.idempotence", "true").set("acks", "1");
    let started = SandboxConsumer::builder(config, &group, Role::baseline("billing"))
        .directory(directory())
        .start(&[&topic])
        .await;
    let Err(error) = started else {
        panic!("the consumer started with settings its dead-letter producer refuses");
    };
    assert!(matches!(error, ConsumerError::Kafka(_)), "{error}");
}
