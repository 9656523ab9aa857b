//! The service's own loop on a real broker: deliveries finishing out of order never let a
//! commit pass one not done, skips included; the service's `ConsumerContext` is called;
//! a `recv` dropped part way loses nothing; giving up on a delivery dead-letters it; a topic
//! created after the consumer started is read within seconds; a directory that never syncs
//! fails `start` in time; work runs in its message's context, never the loop's. (The routing
//! and cut tables run in this loop too: `routing.rs`, `cut.rs`.)

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{Log, Out, Running, committed, consumer_config, eventually, produce, producer};
use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};
use prodbox_core::{Sandbox, SandboxKey};
use prodbox_kafka::consumer::DEAD_LETTER_REASON;
use prodbox_kafka::{ConsumerError, Role, SandboxConsumer};
use prodbox_testkit::AuditLog;
use prodbox_testkit::directory::Switchable;
use prodbox_testkit::kafka::{create_topic, read_topic, unique_topic};
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

fn payload_of(message: &impl Message) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

/// Billing's baseline consumer of `topic` (group `<topic>-g`), deciding by `directory`.
async fn billing_baseline(topic: &str, directory: impl Directory) -> SandboxConsumer {
    SandboxConsumer::builder(
        consumer_config(),
        &format!("{topic}-g"),
        Role::baseline("billing"),
    )
    .directory(directory)
    .start(&[topic])
    .await
    .unwrap()
}

/// The committed offset of partition 0 (`None`: nothing committed yet).
async fn committed_at(group: &str, topic: &str) -> Option<i64> {
    committed(group, topic, 1).await.get(&0).copied()
}

/// The committed offset of partition 0 once it is `end`, or the last one seen within 10 s.
async fn committed_once_at(group: &str, topic: &str, end: i64) -> Option<i64> {
    let mut reached = None;
    for _ in 0..50 {
        reached = committed_at(group, topic).await;
        if reached == Some(end) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_commit_passes_a_delivery_not_done_whatever_finishes_first() {
    let topic = unique_topic("own-order");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-billing");
    let directory = MemoryDirectory::new();
    let mut fork = SandboxEntry::new(key("ol-fork"))
        .fork("billing", "http://fork".parse().expect("a fork address"));
    fork.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(fork);
    // Production's m0, m2, m4; the fork's f1, f3, which the baseline skips (and stores).
    let fork_sandbox = Some(Sandbox::new(key("ol-fork")));
    let records = [
        Out::new("m0"),
        Out::new("f1").sandbox(fork_sandbox.clone()),
        Out::new("m2"),
        Out::new("f3").sandbox(fork_sandbox),
        Out::new("m4"),
    ];
    let landed = produce(&producer(), &topic, &records).await;
    let end = landed.last().unwrap().1 + 1;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory)
        .start(&[&topic])
        .await
        .unwrap();
    let m0 = consumer.recv().await.unwrap();
    let m2 = consumer.recv().await.unwrap();
    let m4 = consumer.recv().await.unwrap();
    assert_eq!(
        [payload_of(&*m0), payload_of(&*m2), payload_of(&*m4)],
        ["m0", "m2", "m4"]
    );
    // Everything after m0 is done with (two handled, two skipped): m0 is not.
    m4.done();
    m2.done();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = committed_at(&group, &topic).await;
    assert!(
        held.is_none_or(|offset| offset <= landed[0].1),
        "committed {held:?} while m0 (offset {}) was not done",
        landed[0].1
    );
    m0.done();
    // The loop goes on (and waits, with nothing left to read): what is done reaches rdkafka.
    let idle = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    assert!(idle.is_err(), "nothing more to read");
    let reached = committed_once_at(&group, &topic, end).await;
    assert_eq!(reached, Some(end), "everything done: committed to the end");
}

/// Counts the callbacks rdkafka makes on a service's own context.
#[derive(Clone, Default)]
struct Counting {
    stats: Arc<AtomicUsize>,
    commits: Arc<AtomicUsize>,
}

impl ClientContext for Counting {
    fn stats_raw(&self, _: &[u8]) {
        self.stats.fetch_add(1, Ordering::Relaxed);
    }
}

impl ConsumerContext for Counting {
    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if result.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_own_consumer_context_is_called() {
    let topic = unique_topic("own-context");
    create_topic(&topic, 1).await;
    produce(&producer(), &topic, &[Out::new("m0")]).await;
    let context = Counting::default();
    let rebalances = Arc::new(AtomicUsize::new(0));
    let mut config = consumer_config();
    config.set("statistics.interval.ms", "100");
    let consumer =
        SandboxConsumer::builder(config, &format!("{topic}-g"), Role::baseline("billing"))
            .context(context.clone())
            .on_rebalance({
                let rebalances = Arc::clone(&rebalances);
                move |rebalance| {
                    if matches!(rebalance, Rebalance::Assign(_)) {
                        rebalances.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .start(&[&topic])
            .await
            .unwrap();
    assert!(Arc::ptr_eq(&consumer.context().commits, &context.commits));
    let m0 = consumer.recv().await.unwrap();
    assert_eq!(payload_of(&*m0), "m0");
    m0.done();
    // rdkafka serves callbacks while the consumer is polled: poll on for a few commit rounds.
    let polled = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
    assert!(polled.is_err(), "nothing more to read");
    assert!(
        eventually(Duration::from_secs(1), || {
            context.commits.load(Ordering::Relaxed) > 0 && context.stats.load(Ordering::Relaxed) > 0
        })
        .await,
        "commit_callback {} and stats {} calls",
        context.commits.load(Ordering::Relaxed),
        context.stats.load(Ordering::Relaxed)
    );
    assert!(
        rebalances.load(Ordering::Relaxed) > 0,
        "on_rebalance called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recv_dropped_part_way_loses_nothing() {
    let topic = unique_topic("own-cancel");
    create_topic(&topic, 1).await;
    let directory = Switchable::default();
    directory.set_stale(true);
    let sandbox = Some(Sandbox::new(key("ol-cancel")));
    produce(
        &producer(),
        &topic,
        &[Out::new("s0").sandbox(sandbox.clone()), Out::new("m1")],
    )
    .await;
    let consumer = billing_baseline(&topic, directory.clone()).await;
    // The sandbox's message waits for a fresh directory; the caller gives up meanwhile.
    let waited = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
    assert!(waited.is_err(), "held while the directory is stale");
    directory.set_stale(false);
    let again = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .expect("the held message comes again")
        .unwrap();
    assert_eq!(payload_of(&*again), "s0");
    assert_eq!(again.sandbox().map(|s| s.key().as_str()), Some("ol-cancel"));
    again.done();
    let next = consumer.recv().await.unwrap();
    assert_eq!(payload_of(&*next), "m1");
    assert!(next.sandbox().is_none());
    next.done();
}

/// What work run by `in_context` sees.
#[derive(Debug, PartialEq)]
struct Seen {
    sandbox: Option<String>,
    in_scope: bool,
    /// The `baggage` a record sent from it would carry.
    baggage: Option<String>,
    /// Whether it runs under a span (the loop's, here).
    in_span: bool,
    /// Whether a thread of its own, given the work's OpenTelemetry context by hand (not by
    /// prodbox's helpers), is still in a scope.
    in_scope_given_the_context: bool,
}

fn seen_here() -> Seen {
    use opentelemetry::trace::TraceContextExt as _;

    let headers = prodbox_kafka::inject_headers(None).unwrap();
    let baggage = rdkafka::message::Headers::iter(&headers)
        .find(|header| header.key == "baggage")
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned());
    let cx = opentelemetry::Context::current();
    let in_span = cx.span().span_context().is_valid();
    let in_scope_given_the_context = std::thread::spawn(move || {
        let _cx = cx.attach();
        prodbox_core::in_scope()
    })
    .join()
    .unwrap();
    Seen {
        sandbox: prodbox_core::current().map(|s| s.key().to_string()),
        in_scope: prodbox_core::in_scope(),
        baggage,
        in_span,
        in_scope_given_the_context,
    }
}

/// The loop itself runs in another sandbox's context, with a member of someone else's and a
/// span (a careless service started it from a sandboxed request): each message's work runs
/// in the message's context alone, production's with no sandbox and in a scope, and so does
/// what it starts, with prodbox's helpers or by handing the OpenTelemetry context on itself.
/// Nothing of the loop's context reaches a record the work sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_runs_in_its_messages_context_never_the_loops() {
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use prodbox_core::{ContextExt as _, FutureExt as _};

    let topic = unique_topic("own-context");
    create_topic(&topic, 1).await;
    let sandbox = Some(Sandbox::new(key("ol-message")));
    produce(
        &producer(),
        &topic,
        &[Out::new("s0").sandbox(sandbox), Out::new("m1")],
    )
    .await;
    let consumer = SandboxConsumer::builder(
        consumer_config(),
        &format!("{topic}-g"),
        Role::baseline("billing"),
    )
    .directory(MemoryDirectory::new())
    .start(&[&topic])
    .await
    .unwrap();
    let span = SpanContext::new(
        TraceId::from(7_u128),
        SpanId::from(7_u64),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    let the_loops = opentelemetry::Context::new()
        .with_baggage([opentelemetry::KeyValue::new("loopOnly", "1")])
        .with_remote_span_context(span)
        .with_sandbox(Sandbox::new(key("ol-loop")));
    let seen = async {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let delivery = consumer.recv().await.unwrap();
            // Built outside, run inside: only what runs when it is polled is in the context.
            let work = async {
                let spawned = prodbox_core::spawn(async { seen_here() });
                let blocking = prodbox_core::spawn_blocking(seen_here);
                [seen_here(), spawned.await.unwrap(), blocking.await.unwrap()]
            };
            let inside = delivery.in_context(work).await;
            seen.push((payload_of(&*delivery), inside));
            delivery.done();
        }
        seen
    }
    .in_context(the_loops);
    let seen = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("both messages delivered");
    let (payload, sandboxed) = &seen[0];
    assert_eq!(payload, "s0");
    for seen in sandboxed {
        assert_eq!(seen.sandbox.as_deref(), Some("ol-message"), "{seen:?}");
        assert!(seen.in_scope && seen.in_scope_given_the_context, "{seen:?}");
        assert!(!seen.in_span, "{seen:?}");
        let baggage = seen.baggage.as_deref().unwrap_or_default();
        assert!(baggage.contains("ol-message"), "{seen:?}");
        assert!(!baggage.contains("loopOnly"), "{seen:?}");
    }
    let (payload, production) = &seen[1];
    assert_eq!(payload, "m1");
    for seen in production {
        let expected = Seen {
            sandbox: None,
            in_scope: true,
            baggage: None,
            in_span: false,
            in_scope_given_the_context: true,
        };
        assert_eq!(seen, &expected, "production's work");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_given_up_is_dead_lettered_and_committed_past() {
    let audit = AuditLog::global();
    let topic = unique_topic("own-dead");
    create_topic(&topic, 1).await;
    let dead = format!("{topic}.dead");
    create_topic(&dead, 1).await;
    let group = format!("{topic}-g");
    let landed = produce(&producer(), &topic, &[Out::new("bad")]).await;
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .dead_letter_topic(&dead)
        .start(&[&topic])
        .await
        .unwrap();
    let bad = consumer.recv().await.unwrap();
    bad.dead_letter("the order does not parse").await;
    let letters = read_topic(&dead, 1, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header(DEAD_LETTER_REASON).as_deref(),
        Some("the order does not parse")
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            audit.all().iter().any(|r| {
                r.get("reason").map(String::as_str) == Some("abandoned")
                    && r.get("detail").is_some_and(|d| d.starts_with(&topic))
            })
        })
        .await
    );
    // The loop stops: it commits what is done.
    consumer.commit(CommitMode::Sync).unwrap();
    let end = landed[0].1 + 1;
    let reached = committed_once_at(&group, &topic, end).await;
    assert_eq!(reached, Some(end));
}

/// The README's by-hand steps start the services before anyone made their topic: a consumer
/// subscribed to a missing topic reads it within seconds of its creation (librdkafka's own
/// metadata refresh is 5 minutes), in both loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_start_is_read_within_seconds() {
    let topic = unique_topic("own-late");
    let log: Log = Arc::default();
    let baseline = |group: String| {
        let topic = topic.clone();
        async move {
            SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
                .start(&[&topic])
                .await
                .unwrap()
        }
    };
    let running = Running::spawn(
        baseline(format!("{topic}-run")).await,
        common::recorder(&log, "run"),
    );
    let own = baseline(format!("{topic}-own")).await;
    let seen_by_own: Arc<Mutex<Option<Instant>>> = Arc::default();
    let own_loop = tokio::spawn({
        let seen = Arc::clone(&seen_by_own);
        async move {
            loop {
                // rdkafka reports the missing topic as an error until it exists.
                if let Ok(delivery) = own.recv().await {
                    *seen.lock().unwrap() = Some(Instant::now());
                    delivery.done();
                    return;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    create_topic(&topic, 1).await;
    let created = Instant::now();
    produce(&producer(), &topic, &[Out::new("late")]).await;
    let both = eventually(Duration::from_secs(10), || {
        !log.lock().unwrap().is_empty() && seen_by_own.lock().unwrap().is_some()
    })
    .await;
    assert!(
        both,
        "within 10 s of the topic's creation: run saw {:?}, own loop {:?}",
        log.lock().unwrap(),
        seen_by_own.lock().unwrap()
    );
    println!("read {:?} after the topic was created", created.elapsed());
    running.stop().await;
    own_loop.abort();
}

/// A directory that never syncs (its database unreachable from the start).
#[derive(Debug)]
struct NeverSynced;

impl Directory for NeverSynced {
    fn get(&self, _: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        None
    }

    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        Vec::new()
    }

    fn is_synced(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn start_gives_up_on_a_directory_that_never_syncs() {
    let started = Instant::now();
    let error = SandboxConsumer::builder(consumer_config(), "never", Role::baseline("billing"))
        .directory(NeverSynced)
        .sync_timeout(Duration::from_millis(300))
        .start(&["never"])
        .await
        .expect_err("no directory, no consumer");
    assert!(
        matches!(error, ConsumerError::DirectoryNotSynced { waited } if waited == Duration::from_millis(300)),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A loop keeps the decision it made last for a header it keeps seeing (every message of a
/// test run carries the same one): a sandbox disabled meanwhile is still skipped from its
/// very next message, in either loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_disabled_mid_stream_is_skipped_from_its_next_message_by_a_loop_that_remembers_its_header()
 {
    for kind in [common::Loop::Run, common::Loop::Own] {
        let entry = SandboxEntry::new(key("ol-memo"));
        nothing_of_a_sandbox_is_handled_once_it_ends(kind, entry, |directory| async move {
            assert!(directory.set_disabled(&key("ol-memo"), true));
        })
        .await;
    }
}

/// As above, for a sandbox that expires mid-stream: the clock changes, not the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_expiring_mid_stream_is_skipped_from_its_next_message_by_a_loop_that_remembers_its_header()
 {
    for kind in [common::Loop::Run, common::Loop::Own] {
        let expires = SystemTime::now() + Duration::from_secs(8);
        let mut entry = SandboxEntry::new(key("ol-memo-exp"));
        entry.expires_at = Some(expires);
        nothing_of_a_sandbox_is_handled_once_it_ends(kind, entry, |directory| async move {
            let generation = directory.generation();
            while SystemTime::now() < expires + Duration::from_millis(500) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                directory.generation(),
                generation,
                "the directory did not change"
            );
        })
        .await;
    }
}

/// A baseline loop of `kind` handles six messages of `entry`'s sandbox (which forks nothing,
/// so the baseline handles them in its context; within 7 s), then `end` ends the sandbox:
/// none of its four messages after that is handled, and production's next one is.
async fn nothing_of_a_sandbox_is_handled_once_it_ends<F, Fut>(
    kind: common::Loop,
    entry: SandboxEntry,
    end: F,
) where
    F: FnOnce(MemoryDirectory) -> Fut,
    Fut: Future<Output = ()>,
{
    let topic = unique_topic("own-memo");
    create_topic(&topic, 1).await;
    let sandbox = entry.key.clone();
    let directory = MemoryDirectory::new();
    directory.upsert(entry);
    let consumer = billing_baseline(&topic, directory.clone()).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let running = common::Running::spawn_in(kind, consumer, {
        let handled = Arc::clone(&handled);
        move |message: rdkafka::message::OwnedMessage| {
            handled.lock().unwrap().push(payload_of(&message));
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }
    });
    let tagged = |payload: &str| Out::new(payload).sandbox(Some(Sandbox::new(sandbox.clone())));
    let before: Vec<Out> = (0..6).map(|i| tagged(&format!("a{i}"))).collect();
    produce(&producer(), &topic, &before).await;
    assert!(
        eventually(Duration::from_secs(7), || handled.lock().unwrap().len()
            == 6)
        .await,
        "{kind:?}: the sandbox's first messages handled: {:?}",
        handled.lock().unwrap()
    );

    end(directory).await;
    let mut after: Vec<Out> = (0..4).map(|i| tagged(&format!("b{i}"))).collect();
    after.push(Out::new("end"));
    produce(&producer(), &topic, &after).await;
    assert!(
        eventually(Duration::from_secs(30), || {
            handled.lock().unwrap().iter().any(|p| p == "end")
        })
        .await,
        "{kind:?}: production's message after them handled"
    );
    running.stop().await;
    let handled = handled.lock().unwrap().clone();
    assert!(
        !handled.iter().any(|p| p.starts_with('b')),
        "{kind:?}: the ended sandbox's messages were handled: {handled:?}"
    );
}
