//! Delivery on a real broker: a consumer killed mid-stream loses nothing, a failing handler is
//! retried and never committed past (and shutdown ends its retries, the next run starting with
//! it), and `max_attempts` dead-letters a message that keeps failing.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Log, Out, Running, assert_zero_lag, committed, consumer_config, ends, eventually, payload,
    produce, read_topic, recorder, unbatched_producer,
};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_kafka::consumer::{DEAD_LETTER_REASON, DEAD_LETTER_SOURCE};
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::AuditLog;
use prodbox_testkit::kafka::{create_topic, unique_topic};
use tokio::sync::Notify;

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// Untagged messages, every fourth one of a sandbox that forks billing (the baseline skips
/// those, and their offsets must be stored too).
fn records(range: std::ops::Range<u32>) -> Vec<Out> {
    range
        .map(|i| {
            Out::new(i.to_string()).sandbox((i % 4 == 3).then(|| Sandbox::new(key("rs-fork"))))
        })
        .collect()
}

fn fork_directory() -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new(key("rs-fork"))
            .fork("billing", "http://fork".parse().expect("a fork address")),
    );
    directory
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_nothing() {
    killed_mid_stream(common::unbatched_producer()).await;
}

/// The same with ordinary record batches: the new consumer resumes inside a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "broker bug (tansu 0.6): a fetch from an offset inside a record batch skips the rest of that batch; should pass against Apache Kafka"]
async fn a_consumer_killed_mid_stream_loses_nothing_with_batches() {
    killed_mid_stream(common::producer()).await;
}

async fn killed_mid_stream(producer: rdkafka::producer::FutureProducer) {
    const FIRST: u32 = 1500;
    const TOTAL: u32 = 3000;
    // The message the first consumer is handling when it dies.
    const STUCK: u32 = 700;
    let topic = unique_topic("restart-kill");
    create_topic(&topic, 3).await;
    let group = format!("{topic}-billing");
    let mut landed = produce(&producer, &topic, &records(0..FIRST)).await;
    let stuck_at = landed[STUCK as usize];

    // The first consumer hangs in its handler on STUCK (say, a call that never returns).
    let log: Log = Arc::default();
    let reached = Arc::new(Notify::new());
    let first = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(fork_directory())
        .start(&[&topic])
        .await
        .unwrap();
    let first = Running::spawn(first, {
        let log = Arc::clone(&log);
        let reached = Arc::clone(&reached);
        move |message| {
            let log = Arc::clone(&log);
            let reached = Arc::clone(&reached);
            async move {
                let payload = payload(&message);
                if payload == STUCK.to_string() {
                    reached.notify_one();
                    std::future::pending::<()>().await;
                }
                log.lock().unwrap().push(("first", payload, None));
                Ok::<_, std::convert::Infallible>(())
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .expect("the first consumer reached the stuck message");
    // Give the background commits time to run: they must not pass the message in progress.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = committed(&group, &topic, 3).await;
    assert!(
        before_kill[&stuck_at.0] <= stuck_at.1,
        "offset {} of partition {} was committed past ({before_kill:?}) while its handler ran",
        stuck_at.1,
        stuck_at.0
    );
    first.kill().await;
    let handled_first = log.lock().unwrap().len();
    assert!(handled_first > 0 && handled_first < FIRST as usize);

    // More messages arrive while no consumer runs; then a new one starts in the same group.
    landed.extend(produce(&producer, &topic, &records(FIRST..TOTAL)).await);
    let second = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(fork_directory())
        .start(&[&topic])
        .await
        .unwrap();
    let second = Running::spawn(second, recorder(&log, "second"));
    let expected: BTreeSet<String> = (0..TOTAL)
        .filter(|i| i % 4 != 3)
        .map(|i| i.to_string())
        .collect();
    let all_handled = || {
        let log = log.lock().unwrap();
        let seen: BTreeSet<String> = log.iter().map(|(_, p, _)| p.clone()).collect();
        expected.is_subset(&seen)
    };
    assert!(
        eventually(Duration::from_secs(60), all_handled).await,
        "not everything was handled in time"
    );
    assert_zero_lag(&[&group], &topic, 3, &ends(&landed)).await;
    second.stop().await;

    let log = log.lock().unwrap().clone();
    let seen: BTreeSet<String> = log.iter().map(|(_, p, _)| p.clone()).collect();
    let missing: Vec<_> = expected.difference(&seen).take(10).collect();
    assert!(missing.is_empty(), "lost (first 10): {missing:?}");
    // Skipped messages are never handed to the handler, before or after the restart.
    let forked: Vec<_> = log
        .iter()
        .filter(|(_, p, _)| p.parse::<u32>().unwrap() % 4 == 3)
        .collect();
    assert!(forked.is_empty(), "{forked:?}");
    // The message in progress at the crash is redelivered to the new consumer.
    assert!(
        log.iter()
            .any(|(who, p, _)| *who == "second" && *p == STUCK.to_string()),
        "message {STUCK} was not redelivered"
    );
    let redelivered = log.len() - seen.len();
    println!(
        "first consumer handled {handled_first}; {} deliveries in all, {redelivered} redelivered",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_retried_and_never_committed_past() {
    const TOTAL: u32 = 50;
    // Fails until released by the test.
    const BLOCKED: u32 = 10;
    // Fails twice, then succeeds by itself.
    const FLAKY: u32 = 30;
    let topic = unique_topic("restart-retry");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let landed = produce(&common::producer(), &topic, &records(0..TOTAL)).await;
    let blocked_offset = landed[BLOCKED as usize].1;

    // (payload, attempt, succeeded)
    type Attempts = Arc<Mutex<Vec<(u32, u32, bool)>>>;
    let attempts: Attempts = Arc::default();
    let release = Arc::new(AtomicBool::new(false));
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(fork_directory())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .start(&[&topic])
        .await
        .unwrap();
    let run = Running::spawn(consumer, {
        let attempts = Arc::clone(&attempts);
        let release = Arc::clone(&release);
        move |message| {
            let attempts = Arc::clone(&attempts);
            let release = Arc::clone(&release);
            async move {
                let id: u32 = payload(&message).parse().unwrap();
                let mut attempts = attempts.lock().unwrap();
                let attempt = 1 + attempts
                    .iter()
                    .filter(|(i, _, done)| *i == id && !done)
                    .count() as u32;
                let ok = match id {
                    BLOCKED => release.load(Ordering::SeqCst),
                    FLAKY => attempt > 2,
                    _ => true,
                };
                attempts.push((id, attempt, ok));
                if ok {
                    Ok(())
                } else {
                    Err(format!("attempt {attempt} of {id} failed"))
                }
            }
        }
    });

    let failures_of = |id: u32| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _, ok)| *i == id && !ok)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(30), || failures_of(BLOCKED) >= 4).await,
        "the failing message was not retried"
    );
    // Several background commits later, nothing at or past the failing message is committed,
    // and nothing after it was handled.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let committed_while_failing = committed(&group, &topic, 1).await[&0];
    assert!(
        committed_while_failing <= blocked_offset,
        "committed {committed_while_failing} past failing offset {blocked_offset}"
    );
    assert_eq!(
        committed_while_failing, blocked_offset,
        "the messages before the failing one are committed"
    );
    assert!(
        attempts
            .lock()
            .unwrap()
            .iter()
            .all(|(i, _, _)| *i <= BLOCKED),
        "a message after the failing one was handled first"
    );

    release.store(true, Ordering::SeqCst);
    let done = || {
        let attempts = attempts.lock().unwrap();
        let ok: BTreeSet<u32> = attempts
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(i, _, _)| *i)
            .collect();
        (0..TOTAL).filter(|i| i % 4 != 3).all(|i| ok.contains(&i))
    };
    assert!(eventually(Duration::from_secs(30), done).await);
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
    run.stop().await;

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(failures_of(FLAKY), 2, "{attempts:?}");
    // In the one partition, handling follows offsets: nothing after a failing message is
    // handled before it succeeded.
    let mut succeeded = Vec::new();
    for (id, _, ok) in &attempts {
        if *ok {
            succeeded.push(*id);
        }
    }
    let mut sorted = succeeded.clone();
    sorted.sort_unstable();
    assert_eq!(succeeded, sorted, "handled out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_retries_and_the_next_run_starts_with_the_failing_message() {
    let topic = unique_topic("restart-shutdown");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let records: Vec<Out> = (0..3).map(|i| Out::new(i.to_string())).collect();
    // One record per batch: the next run resumes inside what would be a batch (see `common`).
    produce(&unbatched_producer(), &topic, &records).await;
    let consumer = Arc::new(
        SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
            // Far longer than the test: after a failure, only shutdown can end the wait.
            .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
            .start(&[&topic])
            .await
            .unwrap(),
    );
    // (payload, succeeded)
    let handled: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let failing = Arc::new(AtomicBool::new(true));
    let handler = || {
        let handled = Arc::clone(&handled);
        let failing = Arc::clone(&failing);
        move |message: rdkafka::message::OwnedMessage| {
            let handled = Arc::clone(&handled);
            let failing = Arc::clone(&failing);
            async move {
                let id = payload(&message);
                let ok = id != "1" || !failing.load(Ordering::SeqCst);
                handled.lock().unwrap().push((id.clone(), ok));
                if ok {
                    Ok(())
                } else {
                    Err(format!("{id} failed"))
                }
            }
        }
    };

    let first = Running::spawn(Arc::clone(&consumer), handler());
    let failed_once = || handled.lock().unwrap().contains(&("1".to_owned(), false));
    assert!(eventually(Duration::from_secs(30), failed_once).await);
    // Returns although message 1 waits an hour for its next attempt (`stop` allows 30 s).
    first.stop().await;
    assert_eq!(
        committed(&group, &topic, 1).await[&0],
        1,
        "not past message 1"
    );

    failing.store(false, Ordering::SeqCst);
    let second = Running::spawn(Arc::clone(&consumer), handler());
    assert!(
        eventually(Duration::from_secs(30), || handled.lock().unwrap().len()
            == 4)
        .await
    );
    second.stop().await;
    let handled: Vec<(String, bool)> = handled.lock().unwrap().clone();
    let expected: Vec<(String, bool)> = [("0", true), ("1", false), ("1", true), ("2", true)]
        .map(|(id, ok)| (id.to_owned(), ok))
        .to_vec();
    assert_eq!(handled, expected);
    assert_eq!(committed(&group, &topic, 1).await[&0], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_dead_letters_a_message_that_keeps_failing() {
    let audit = AuditLog::global();
    let topic = unique_topic("restart-dlq");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let dead_letters = format!("{group}.dead-letter");
    create_topic(&dead_letters, 1).await;
    // The poison message is produced in a sandbox that does not fork billing: the baseline
    // handles it (and fails) in that sandbox's context.
    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(key("rs-dl")));
    let records: Vec<Out> = (0..10u32)
        .map(|i| Out::new(i.to_string()).sandbox((i == 3).then(|| Sandbox::new(key("rs-dl")))))
        .collect();
    let landed = produce(&common::producer(), &topic, &records).await;

    let attempts: Arc<Mutex<BTreeMap<u32, u32>>> = Arc::default();
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_attempts(2)
        .start(&[&topic])
        .await
        .unwrap();
    let run = Running::spawn(consumer, {
        let attempts = Arc::clone(&attempts);
        move |message| {
            let attempts = Arc::clone(&attempts);
            async move {
                let id: u32 = payload(&message).parse().unwrap();
                *attempts.lock().unwrap().entry(id).or_default() += 1;
                if id == 3 {
                    Err("the database said no")
                } else {
                    Ok(())
                }
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(30), || attempts.lock().unwrap().len()
            == 10)
        .await,
        "{:?}",
        attempts.lock().unwrap()
    );
    // Dead-lettered, the message is committed past like any other.
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
    run.stop().await;
    assert_eq!(attempts.lock().unwrap()[&3], 2);
    assert!(
        attempts
            .lock()
            .unwrap()
            .iter()
            .all(|(id, n)| *id == 3 || *n == 1)
    );

    let dead = read_topic(&dead_letters, 1, 2, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = &dead[0];
    assert_eq!(record.payload, b"3");
    let reason = record.header(DEAD_LETTER_REASON).unwrap();
    assert!(
        reason.contains("handler failed 2 times") && reason.contains("the database said no"),
        "{reason}"
    );
    assert_eq!(
        record.header(DEAD_LETTER_SOURCE).unwrap(),
        format!("{topic}/0/{}", landed[3].1)
    );
    // The original headers travel with it.
    assert_eq!(
        record.header("baggage").as_deref(),
        Some("prodbox.sandbox=rs-dl")
    );

    let audited = audit.matching("sandbox", "rs-dl");
    assert!(
        audited.iter().any(|r| {
            r.get("decision").map(String::as_str) == Some("dead_lettered")
                && r.get("reason").map(String::as_str) == Some("handler_failed")
                && r.get("protocol").map(String::as_str) == Some("kafka")
        }),
        "{audited:?}"
    );
}

/// A handler that keeps failing for longer than `max.poll.interval.ms` (6 s here) while `run`
/// retries it: librdkafka leaves the group meanwhile; `run` keeps polling through the error, the
/// consumer rejoins, and every message is handled (at least once). Records go one per batch:
/// resuming inside a batch hits tansu 0.6's fetch bug (see `unbatched_producer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_longer_than_the_poll_interval_do_not_stop_the_consumer() {
    let topic = unique_topic("restart-poll-interval");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let records: Vec<Out> = (0..3u32).map(|i| Out::new(i.to_string())).collect();
    let landed = produce(&common::unbatched_producer(), &topic, &records).await;
    let mut config = consumer_config();
    config.set("max.poll.interval.ms", "6000");
    let consumer = SandboxConsumer::builder(config, &group, Role::baseline("billing"))
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(500))
        .start(&[&topic])
        .await
        .unwrap();
    let log: Log = Arc::default();
    let started = std::time::Instant::now();
    let handler = {
        let log = Arc::clone(&log);
        move |message: &rdkafka::message::BorrowedMessage<'_>| {
            let log = Arc::clone(&log);
            let payload = payload(message);
            async move {
                // Message 1's downstream is down for 9 s.
                if payload == "1" && started.elapsed() < Duration::from_secs(9) {
                    return Err("downstream unavailable");
                }
                log.lock().unwrap().push(("baseline", payload, None));
                Ok(())
            }
        }
    };
    let all: BTreeSet<String> = (0..3).map(|i: u32| i.to_string()).collect();
    let done = {
        let log = Arc::clone(&log);
        async move {
            assert!(
                eventually(Duration::from_secs(40), || {
                    let seen: BTreeSet<String> =
                        log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
                    seen == all
                })
                .await,
                "not everything was handled in time"
            );
        }
    };
    let result = consumer.run(handler, done).await;
    assert!(result.is_ok(), "run stopped: {result:?}");
    let seen: BTreeSet<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_zero_lag(&[&group], &topic, 1, &ends(&landed)).await;
}
