//! Routing on a real broker: one baseline and two sandbox consumers share a 3-partition topic
//! of 10,000 mixed messages; each message is handled by exactly the consumers that should
//! handle it, in the right context, and every group's lag ends at zero.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{
    Log, Loop, Out, Running, assert_zero_lag, consumer_config, ends, eventually, produce, recorder,
};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_kafka::{Role, SandboxConsumer, SandboxRecordExt};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{create_topic, unique_topic};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const MESSAGES: u32 = 10_000;
const PARTITIONS: i32 = 3;
const FORK: &str = "rt-fork";
const OTHER: &str = "rt-other";

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// Message `i`'s sandbox: none, the one that forks billing, or the one that does not.
fn sandbox_of(i: u32) -> Option<&'static str> {
    match i % 3 {
        0 => None,
        1 => Some(FORK),
        _ => Some(OTHER),
    }
}

/// Which consumers must handle message `i`.
fn handlers_of(i: u32) -> &'static [&'static str] {
    match sandbox_of(i) {
        None => &["baseline"],
        Some(FORK) => &["fork"],
        // A sandbox that does not fork billing: the baseline handles it (in its context); the
        // sandbox's own consumer of billing has no range of it (it forks shipping).
        Some(_) => &["baseline"],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_reaches_exactly_its_consumers_and_lag_ends_at_zero() {
    routing(Loop::Run).await;
}

/// The same table through the service's own loop: deliveries from `stream`, eight handled at
/// once and finishing out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_reaches_exactly_its_consumers_in_the_services_own_loop() {
    routing(Loop::Own).await;
}

async fn routing(kind: Loop) {
    let audit = AuditLog::global();
    let topic = unique_topic("routing");
    create_topic(&topic, PARTITIONS).await;
    let group = format!("{topic}-billing");

    let directory = MemoryDirectory::new();
    let created = SystemTime::now() - Duration::from_secs(60);
    let mut fork = SandboxEntry::new(key(FORK)).fork(
        "billing",
        "http://billing-fork".parse().expect("a fork address"),
    );
    fork.created_at = Some(created);
    directory.upsert(fork);
    let mut other = SandboxEntry::new(key(OTHER)).fork(
        "shipping",
        "http://shipping-fork".parse().expect("a fork address"),
    );
    other.created_at = Some(created);
    directory.upsert(other);

    let records: Vec<Out> = (0..MESSAGES)
        .map(|i| {
            let mut out =
                Out::new(i.to_string()).sandbox(sandbox_of(i).map(|k| Sandbox::new(key(k))));
            // Some records carry headers of their own, which must not disturb routing.
            if i % 5 == 0 {
                out = out.headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "content-type",
                            value: Some("text/plain"),
                        })
                        .insert(Header {
                            key: "baggage",
                            value: Some("userId=7"),
                        }),
                );
            }
            out
        })
        .collect();
    let producer = common::producer();
    // Half before the consumers start, half while they run.
    let half = records.len() / 2;
    let mut landed = produce(&producer, &topic, &records[..half]).await;

    let log: Log = Arc::default();
    let mut runs = Vec::new();
    let mut groups = Vec::new();
    for (name, role) in [
        ("baseline", Role::baseline("billing")),
        ("fork", Role::sandbox(key(FORK))),
        ("other", Role::sandbox(key(OTHER))),
    ] {
        let consumer = SandboxConsumer::builder(consumer_config(), &group, role)
            .directory(directory.clone())
            .start(&[&topic])
            .await
            .unwrap();
        groups.push(consumer.group().to_owned());
        runs.push(Running::spawn_in(kind, consumer, recorder(&log, name)));
    }
    landed.extend(produce(&producer, &topic, &records[half..]).await);
    let ends = ends(&landed);

    let expected: BTreeSet<(&str, u32)> = (0..MESSAGES)
        .flat_map(|i| handlers_of(i).iter().map(move |h| (*h, i)))
        .collect();
    let done = eventually(Duration::from_secs(90), || {
        let log = log.lock().unwrap();
        let seen: BTreeSet<(&str, u32)> = log
            .iter()
            .map(|(name, payload, _)| (*name, payload.parse().unwrap()))
            .collect();
        expected.is_subset(&seen)
    })
    .await;

    // Lag returns to zero while the consumers still run (skipped messages count as done)...
    if done {
        assert_zero_lag(&groups, &topic, PARTITIONS, &ends).await;
    }
    for run in runs {
        run.stop().await;
    }

    let log = log.lock().unwrap().clone();
    let mut wrong = Vec::new();
    let mut handled: BTreeMap<(&str, u32), usize> = BTreeMap::new();
    for (name, payload, sandbox) in &log {
        let i: u32 = payload.parse().unwrap();
        *handled.entry((*name, i)).or_default() += 1;
        if !handlers_of(i).contains(name) {
            wrong.push(format!("{name} handled {i} ({sandbox:?})"));
        } else if sandbox.as_deref() != sandbox_of(i) {
            wrong.push(format!(
                "{name} handled {i} in context {sandbox:?}, expected {:?}",
                sandbox_of(i)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong deliveries, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !handled.contains_key(e))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "never handled (first 10): {missing:?}; handled {} of {}",
        handled.len(),
        expected.len()
    );
    let redelivered = handled.values().filter(|n| **n > 1).count();
    println!(
        "{} deliveries for {} (consumer, message) pairs; {redelivered} redelivered",
        log.len(),
        expected.len()
    );

    // ...and stays zero after every consumer committed on shutdown.
    assert_zero_lag(&groups, &topic, PARTITIONS, &ends).await;

    // Every skip is audited: the baseline's skips of the fork's messages, with the sandbox
    // and where the message was.
    let forked = audit
        .matching("sandbox", FORK)
        .into_iter()
        .filter(|r| {
            r.get("decision").map(String::as_str) == Some("skipped")
                && r.get("reason").map(String::as_str) == Some("forked")
                && r.get("protocol").map(String::as_str) == Some("kafka")
                && r.get("detail").is_some_and(|d| d.starts_with(&topic))
        })
        .count();
    let fork_messages = (0..MESSAGES)
        .filter(|i| sandbox_of(*i) == Some(FORK))
        .count();
    assert!(
        forked >= fork_messages,
        "{forked} skip events for {fork_messages} messages"
    );
}

/// The handler "runs with the message's context attached": that holds for the future it
/// returns, and for the closure's own body too, which `run` calls inside the context. A
/// handler that builds its outbound record before its first `.await`, the way
/// `move |m| producer.send(record(m).with_sandbox_context()?, t)` does, must tag a sandbox's
/// follow-up message, or it is taken for production downstream. (The baseline handles a
/// sandbox that forks nothing, in its context.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_closure_body_runs_in_the_message_context() {
    let consumer = baseline_of(
        "routing-closure",
        "rt-closure",
        &[Out::new("0").sandbox(Some(Sandbox::new(key("rt-closure"))))],
    )
    .await;
    // (sandbox in the closure body, baggage of a record built there, sandbox in the future)
    type Seen = Vec<(Option<String>, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let run = Running::spawn(consumer, {
        let seen = Arc::clone(&seen);
        move |_message| {
            let in_body = common::current_key();
            let record = FutureRecord::<str, str>::to("follow-up")
                .payload("x")
                .with_sandbox_context()
                .unwrap();
            let baggage = record.headers.as_ref().and_then(|h| {
                rdkafka::message::Headers::iter(h)
                    .find(|h| h.key == "baggage")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push((in_body, baggage, common::current_key()));
                Ok::<_, Infallible>(())
            }
        }
    });
    assert!(eventually(Duration::from_secs(30), || !seen.lock().unwrap().is_empty()).await);
    run.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        (
            Some("rt-closure".to_owned()),
            Some("prodbox.sandbox=rt-closure".to_owned()),
            Some("rt-closure".to_owned())
        )
    );
}

/// A handler that leaves its context attached on the thread (a guard forgotten, or held across
/// an await) does not hand it to the next message: a production message after a sandbox's,
/// handled in the same poll of the loop, still runs as production, body and future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_left_attached_by_a_handler_does_not_reach_the_next_message() {
    use rdkafka::Message as _;
    let sandboxed = |payload: &str| Out::new(payload).sandbox(Some(Sandbox::new(key("rt-leak"))));
    let consumer = baseline_of(
        "routing-leak",
        "rt-leak",
        &[sandboxed("0"), Out::new("1"), sandboxed("2"), Out::new("3")],
    )
    .await;
    // (payload, sandbox in the closure body, sandbox in the future)
    type Seen = Vec<(String, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let run = Running::spawn(consumer, {
        let seen = Arc::clone(&seen);
        move |message| {
            let payload =
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let in_body = common::current_key();
            // Careless: the sandbox's context stays attached on this thread for good.
            std::mem::forget(opentelemetry::Context::current().attach());
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push((payload, in_body, common::current_key()));
                Ok::<_, Infallible>(())
            }
        }
    });
    assert!(eventually(Duration::from_secs(30), || seen.lock().unwrap().len() >= 4).await);
    run.stop().await;
    let seen = seen.lock().unwrap().clone();
    let sandbox = || Some("rt-leak".to_owned());
    assert_eq!(
        seen,
        [
            ("0".to_owned(), sandbox(), sandbox()),
            ("1".to_owned(), None, None),
            ("2".to_owned(), sandbox(), sandbox()),
            ("3".to_owned(), None, None),
        ]
    );
}

/// A baseline billing consumer of a new topic holding `records`, with a directory that knows
/// sandbox `sandbox` (made a minute ago, forking nothing: the baseline handles its records, in
/// its context).
async fn baseline_of(topic: &str, sandbox: &str, records: &[Out]) -> SandboxConsumer {
    let topic = unique_topic(topic);
    create_topic(&topic, 1).await;
    let directory = MemoryDirectory::new();
    let mut entry = SandboxEntry::new(key(sandbox));
    entry.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(entry);
    produce(&common::producer(), &topic, records).await;
    SandboxConsumer::builder(
        consumer_config(),
        &format!("{topic}-g"),
        Role::baseline("billing"),
    )
    .directory(directory)
    .start(&[&topic])
    .await
    .unwrap()
}
