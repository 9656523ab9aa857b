//! Attacks from hostile reviews of the own loop, in-flight tracking, rebalances, the producer
//! and `run` loops sharing a consumer, kept as tests: each was tried and refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Out, committed, consumer_config, eventually, produce, unbatched_producer};
use prodbox_core::directory::MemoryDirectory;
use prodbox_core::{FutureExt, Sandbox, SandboxKey};
use prodbox_kafka::{Filter, Role, SandboxConsumer, Verdict, inject_headers};
use prodbox_testkit::kafka::{create_topic, unique_topic};
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

fn key(s: &str) -> SandboxKey {
    s.parse().unwrap()
}

/// Records every offset rdkafka commits for partition 0.
#[derive(Clone, Default)]
struct Commits(Arc<Mutex<Vec<i64>>>);
impl ClientContext for Commits {}
impl ConsumerContext for Commits {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_ok() {
            for e in offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    self.0.lock().unwrap().push(o);
                }
            }
        }
    }
}

/// Attack 1: two tasks call `recv` concurrently; offset 0 is held undone for the whole test;
/// a second group member joins, and during A's revoke the *other* task keeps taking messages.
/// Those are taken after `in_flight.revoke` forgot offset 0, into a fresh tenure, so their
/// `done` stores offsets past 0, which librdkafka commits on unassign.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_window_commits_past_an_undone_delivery() {
    let topic = unique_topic("atk-revoke");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-g");
    let records: Vec<Out> = (0..400).map(|i| Out::new(format!("m{i}"))).collect();
    produce(&unbatched_producer(), &topic, &records).await;

    let commits = Commits::default();
    let revoking = Arc::new(AtomicBool::new(false));
    let taken_while_revoking = Arc::new(AtomicUsize::new(0));
    let mut config = consumer_config();
    config
        .set("max.partition.fetch.bytes", "2000")
        .set("queued.min.messages", "5");
    let a = Arc::new(
        SandboxConsumer::builder(config.clone(), &group, Role::baseline("billing"))
            .context(commits.clone())
            .on_rebalance({
                let revoking = Arc::clone(&revoking);
                move |r| {
                    eprintln!("A rebalance: {r:?}");
                    if matches!(r, Rebalance::Revoke(_)) {
                        revoking.store(true, Ordering::SeqCst);
                        // A service's callback that takes a moment (logging, metrics flush).
                        std::thread::sleep(Duration::from_millis(1500));
                        revoking.store(false, Ordering::SeqCst);
                    }
                }
            })
            .start(&[&topic])
            .await
            .unwrap(),
    );
    let held_offset = Arc::new(AtomicI64::new(-1));
    let mut tasks = Vec::new();
    for t in 0..2 {
        let a = Arc::clone(&a);
        let held_offset = Arc::clone(&held_offset);
        let revoking = Arc::clone(&revoking);
        let taken = Arc::clone(&taken_while_revoking);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok(d) = a.recv().await else { continue };
                if revoking.load(Ordering::SeqCst) {
                    taken.fetch_add(1, Ordering::SeqCst);
                }
                if d.offset() == 0 {
                    eprintln!("task {t} got offset 0 (sandbox {:?})", d.sandbox());
                }
                if d.offset() == 0 {
                    held_offset.store(0, Ordering::SeqCst);
                    held.push(d); // never done
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                d.done();
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A second member joins: A's partition is revoked (eager protocol).
    let b = SandboxConsumer::builder(config, &group, Role::baseline("billing"))
        .start(&[&topic])
        .await
        .unwrap();
    let b_task = tokio::spawn(async move {
        let mut keep = Vec::new();
        for _ in 0..1000 {
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), b.recv()).await {
                eprintln!("B got {}", d.offset());
                keep.push(d); // never done: B stores nothing
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    let group_committed = committed(&group, &topic, 1).await;
    let seen = commits.0.lock().unwrap().clone();
    eprintln!(
        "held offset {}, taken during revoke {}, A committed {:?}, group committed {:?}",
        held_offset.load(Ordering::SeqCst),
        taken_while_revoking.load(Ordering::SeqCst),
        seen,
        group_committed
    );
    for t in tasks {
        t.abort();
    }
    b_task.abort();
    assert_eq!(
        held_offset.load(Ordering::SeqCst),
        0,
        "offset 0 held undone"
    );
    assert!(
        seen.iter().all(|&o| o <= 0) && group_committed[&0] <= 0,
        "a commit passed offset 0, never done: A committed {seen:?}, group at {group_committed:?}"
    );
}

fn hdrs(list: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
    list.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header { key: k, value: *v })
    })
}

fn show(h: &OwnedHeaders) -> Vec<(String, Option<String>)> {
    h.iter()
        .map(|h| {
            (
                h.key.to_owned(),
                h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect()
}

/// What a baseline consumer would do with `h`: the sandbox it runs it in (`Some("")`: production),
/// or `None` when it does not run it (dead letter/skip).
fn baseline_runs_as(h: &OwnedHeaders) -> Option<String> {
    let directory = MemoryDirectory::new();
    let mut evil = prodbox_core::directory::SandboxEntry::new(key("evil"));
    evil.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(evil);
    let mut good = prodbox_core::directory::SandboxEntry::new(key("good"));
    good.created_at = Some(SystemTime::now() - Duration::from_secs(60));
    directory.upsert(good);
    let filter = Filter::new(Role::baseline("billing"), directory);
    match filter.decide(Some(h), SystemTime::now()) {
        Verdict::Process(cx) => Some(
            cx.and_then(|c| c.sandbox().map(|s| s.key().to_string()))
                .unwrap_or_default(),
        ),
        Verdict::Cut { context, .. } => context.sandbox().map(|s| s.key().to_string()),
        Verdict::Skip { .. } | Verdict::DeadLetter(_) => None,
    }
}

/// One header: name and value.
type Raw = (&'static str, Option<&'static [u8]>);

const HOSTILE: &[&[Raw]] = &[
    &[("baggage", Some(b"prodbox.sandbox=evil"))],
    &[("Baggage", Some(b"prodbox.sandbox=evil"))],
    &[
        ("BAGGAGE", Some(b"a=1")),
        ("baggage", Some(b"prodbox.sandbox=evil")),
    ],
    &[
        ("baggage", None),
        ("baggage", Some(b"prodbox.sandbox=evil")),
    ],
    &[
        ("baggage", Some(b"")),
        ("baggage", Some(b"prodbox.sandbox=evil")),
    ],
    &[("ot-baggage-prodbox.sandbox", Some(b"evil"))],
    &[("OT-Baggage-Prodbox.Sandbox", Some(b"evil"))],
    &[("uberctx-prodbox.sandbox", Some(b"evil"))],
    &[
        ("baggage", Some(b"x=1")),
        ("uberctx-prodbox.sandbox", Some(b"evil")),
    ],
    &[("baggage", Some(b" prodbox.sandbox = evil ;p=1, other=2"))],
    &[("baggage", Some(b"prodbox.sandbox=evil,=broken"))],
    &[("baggage", Some(b"prodbox.sandbox=evil\xff"))],
    &[
        ("baggage", Some(b"prodbox.sandbox=evil")),
        ("baggage", Some(b"prodbox.sandbox=evil")),
    ],
    &[("baggage", Some(b"prodbox.sandbox=%65vil"))],
    &[(
        "baggage",
        Some(b"prodbox.actor=mallory,prodbox.sandbox=evil"),
    )],
];

/// Attack 3a: a production send (no sandbox context) whose own headers claim sandbox `evil`.
#[test]
fn production_send_with_hostile_headers_never_runs_as_a_sandbox() {
    let mut failures = Vec::new();
    for (i, case) in HOSTILE.iter().enumerate() {
        let input = hdrs(case);
        let out = match std::panic::catch_unwind(|| inject_headers(Some(&input))) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                eprintln!("case {i}: refused {e}");
                continue;
            }
            Err(_) => {
                failures.push(format!("case {i}: inject panicked"));
                continue;
            }
        };
        let runs = baseline_runs_as(&out);
        eprintln!(
            "case {i}: {:?} -> {:?} -> consumer runs as {runs:?}",
            show(&input),
            show(&out)
        );
        if runs.as_deref().is_some_and(|s| !s.is_empty()) {
            failures.push(format!(
                "case {i}: production send runs as sandbox {runs:?}: {:?}",
                show(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack 3b: a send inside sandbox `good` whose own headers claim `evil`: must run as `good`.
#[tokio::test]
async fn sandbox_send_with_hostile_headers_runs_as_its_own_sandbox() {
    let mut failures = Vec::new();
    for (i, case) in HOSTILE.iter().enumerate() {
        let input = hdrs(case);
        let out = async { inject_headers(Some(&input)) }
            .in_sandbox(Sandbox::new(key("good")))
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                eprintln!("case {i}: refused {e}");
                continue;
            }
        };
        let runs = baseline_runs_as(&out);
        eprintln!(
            "case {i}: {:?} -> {:?} -> {runs:?}",
            show(&input),
            show(&out)
        );
        if runs.as_deref() != Some("good") {
            failures.push(format!(
                "case {i}: sandboxed send runs as {runs:?}: {:?}",
                show(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack 1b: four tasks `recv` concurrently and finish in random order; one delivery in the
/// middle is held undone; no committed offset may pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_recv_random_finish_never_commits_past_the_held_one() {
    let topic = unique_topic("atk-conc");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-g");
    let records: Vec<Out> = (0..300).map(|i| Out::new(format!("m{i}"))).collect();
    let landed = produce(&common::producer(), &topic, &records).await;
    let hold = landed[137].1;
    let commits = Commits::default();
    let a = Arc::new(
        SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
            .context(commits.clone())
            .start(&[&topic])
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let a = Arc::clone(&a);
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            let mut n = t;
            loop {
                let Ok(d) = a.recv().await else { continue };
                if d.offset() == hold {
                    held.push(d);
                    continue;
                }
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                tokio::time::sleep(Duration::from_micros(n >> 54)).await;
                d.done();
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seen = commits.0.lock().unwrap().clone();
    for t in tasks {
        t.abort();
    }
    eprintln!("held {hold}, commits {seen:?}");
    assert!(
        seen.iter().all(|&o| o <= hold),
        "commit passed held {hold}: {seen:?}"
    );
    assert!(
        seen.contains(&hold),
        "commits reached the held offset: {seen:?}"
    );
}

/// Attack 1c: a `recv` holding a sandbox message (stale directory) is dropped after another
/// task's poll served a revoke of that partition: the rewind `seek`s a partition no longer
/// assigned. Does the consumer refuse to consume for ever (StoppedHoldingMessage)?
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recv_dropped_after_its_partition_was_revoked_does_not_brick_the_consumer() {
    use prodbox_testkit::directory::Switchable;
    let topic = unique_topic("atk-brick");
    create_topic(&topic, 1).await;
    let group = format!("{topic}-g");
    produce(
        &common::producer(),
        &topic,
        &[Out::new("s0").sandbox(Some(Sandbox::new(key("atk-brick"))))],
    )
    .await;
    let directory = Switchable::default();
    let revoked = Arc::new(AtomicBool::new(false));
    let a = Arc::new(
        SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
            .directory(directory.clone())
            .on_rebalance({
                let revoked = Arc::clone(&revoked);
                move |r| {
                    eprintln!("A rebalance {r:?}");
                    if matches!(r, Rebalance::Revoke(_)) {
                        revoked.store(true, Ordering::SeqCst);
                    }
                }
            })
            .start(&[&topic])
            .await
            .unwrap(),
    );
    directory.set_stale(true);
    let holder = {
        let a = Arc::clone(&a);
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(8), a.recv()).await;
            eprintln!("holder timed out: {}", r.is_err());
        })
    };
    let poller = {
        let a = Arc::clone(&a);
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .start(&[&topic])
        .await
        .unwrap();
    let b_task = tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), b.recv()).await {
                keep.push(d);
            }
        }
    });
    holder.await.unwrap();
    poller.abort();
    eprintln!(
        "revoked before the drop: {}",
        revoked.load(Ordering::SeqCst)
    );
    directory.set_stale(false);
    let after = tokio::time::timeout(Duration::from_secs(3), a.recv()).await;
    b_task.abort();
    let failed = matches!(
        after,
        Ok(Err(prodbox_kafka::ConsumerError::StoppedHoldingMessage(_)))
    );
    assert!(
        !failed,
        "consumer bricked: {:?}",
        after
            .as_ref()
            .map(|r| r.as_ref().err().map(ToString::to_string))
    );
}

/// A consumer of a new one-partition topic holding `n` records `"0"`, `"1"`, ..., shared as
/// an `Arc` by the loops of a test.
async fn shared_consumer(
    prefix: &str,
    n: usize,
    producer: &rdkafka::producer::FutureProducer,
) -> Arc<SandboxConsumer> {
    let topic = unique_topic(prefix);
    create_topic(&topic, 1).await;
    let records: Vec<Out> = (0..n).map(|i| Out::new(format!("{i}"))).collect();
    produce(producer, &topic, &records).await;
    let group = format!("{topic}-g");
    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .start(&[&topic])
        .await
        .unwrap();
    Arc::new(consumer)
}

// The tests below come from a change taken back (68c5c28) and its review: `run` kept the
// pull lock from one message to the next, giving it back when its handler's future was
// pending. Its handler's synchronous part then ran under the lock: a handler that blocks its
// thread, or takes a message from its own consumer synchronously, held every other loop back,
// and two loops no longer shared the messages. The first test, and the nested test's `.await`
// form, fail on a lock kept even while the handler waits.

/// Two `run` loops share a consumer, and the first loop's handler waits, on its first message,
/// until the second loop has handled one: the second must get messages meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_loop_waiting_in_its_handler_holds_no_other_loop_back() {
    const N: usize = 40;
    let consumer = shared_consumer("atk-turn-wait", N, &common::producer()).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let by_second = Arc::new(tokio::sync::Notify::new());
    let first_waits = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };

    let first = tokio::spawn({
        let (consumer, handled) = (Arc::clone(&consumer), Arc::clone(&handled));
        let (by_second, first_waits) = (Arc::clone(&by_second), Arc::clone(&first_waits));
        let stopped = stopping(stopped.clone());
        async move {
            let mut waited = false;
            consumer
                .run(
                    move |_| {
                        let wait = !std::mem::replace(&mut waited, true);
                        let (handled, by_second) = (Arc::clone(&handled), Arc::clone(&by_second));
                        let first_waits = Arc::clone(&first_waits);
                        async move {
                            if wait {
                                let second_handled = by_second.notified();
                                first_waits.notify_one();
                                second_handled.await;
                            }
                            handled.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(())
                        }
                    },
                    stopped,
                )
                .await
                .unwrap();
        }
    });
    // The second loop starts once the first waits in its handler.
    tokio::time::timeout(Duration::from_secs(30), first_waits.notified())
        .await
        .expect("the first loop got a message");
    let second = tokio::spawn({
        let (consumer, handled) = (Arc::clone(&consumer), Arc::clone(&handled));
        let stopped = stopping(stopped.clone());
        async move {
            consumer
                .run(
                    move |_| {
                        handled.fetch_add(1, Ordering::SeqCst);
                        by_second.notify_one();
                        std::future::ready(Ok::<_, std::convert::Infallible>(()))
                    },
                    stopped,
                )
                .await
                .unwrap();
        }
    });
    let done = eventually(Duration::from_secs(30), || {
        handled.load(Ordering::SeqCst) >= N
    })
    .await;
    stop.send(true).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        first.await.unwrap();
        second.await.unwrap();
    })
    .await;
    assert!(
        done && stopped.is_ok(),
        "{} of {N} handled (the waiting loop held the other back); stopped: {}",
        handled.load(Ordering::SeqCst),
        stopped.is_ok()
    );
}

/// A `run` handler that blocks its thread (a blocking client, CPU-bound work): the service's
/// `recv` on another worker still gets messages meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_handler_that_blocks_its_thread_holds_no_other_loop_back() {
    let consumer = shared_consumer("atk-turn-block", 20, &common::producer()).await;
    let blocking = Arc::new(AtomicBool::new(false));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let (consumer, blocking) = (Arc::clone(&consumer), Arc::clone(&blocking));
        async move {
            let mut first = true;
            consumer
                .run(
                    move |_| {
                        if std::mem::replace(&mut first, false) {
                            blocking.store(true, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_secs(4));
                        }
                        std::future::ready(Ok::<_, std::convert::Infallible>(()))
                    },
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )
                .await
                .unwrap();
        }
    });
    assert!(eventually(Duration::from_secs(30), || blocking.load(Ordering::SeqCst)).await);
    // Well within the handler's 4 s.
    let got = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    let got = match got {
        Ok(Ok(delivery)) => {
            delivery.done();
            true
        }
        _ => false,
    };
    stop.send(true).unwrap();
    running.await.unwrap();
    assert!(
        got,
        "recv got nothing while run's handler blocked its thread"
    );
}

/// A `run` handler that takes a message from its own consumer, waiting for it: with `.await`,
/// and synchronously (`block_in_place`). Neither may wait for the loop that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_handler_may_take_a_message_from_its_own_consumer() {
    for blocking in [false, true] {
        const N: usize = 10;
        let consumer = shared_consumer("atk-turn-nested", N, &common::producer()).await;
        let handled = Arc::new(AtomicUsize::new(0));
        let nested_got = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let (inner, handled) = (Arc::clone(&consumer), Arc::clone(&handled));
            let nested_got = Arc::clone(&nested_got);
            async move {
                let mut nested = false;
                consumer
                    .run(
                        move |_| {
                            let nest = !std::mem::replace(&mut nested, true);
                            let recv = {
                                let (inner, handled) = (Arc::clone(&inner), Arc::clone(&handled));
                                let nested_got = Arc::clone(&nested_got);
                                async move {
                                    // Bounded: a handler stuck for ever would also keep
                                    // the test's runtime from shutting down.
                                    let recv =
                                        tokio::time::timeout(Duration::from_secs(10), inner.recv());
                                    if let Ok(Ok(delivery)) = recv.await {
                                        delivery.done();
                                        handled.fetch_add(1, Ordering::SeqCst);
                                        nested_got.store(true, Ordering::SeqCst);
                                    }
                                }
                            };
                            let recv = match (nest, blocking) {
                                (true, true) => {
                                    tokio::task::block_in_place(|| {
                                        tokio::runtime::Handle::current().block_on(recv);
                                    });
                                    None
                                }
                                (true, false) => Some(recv),
                                (false, _) => None,
                            };
                            let handled = Arc::clone(&handled);
                            async move {
                                if let Some(recv) = recv {
                                    recv.await;
                                }
                                handled.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(())
                            }
                        },
                        async move {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .unwrap();
            }
        });
        let done = eventually(Duration::from_secs(30), || {
            handled.load(Ordering::SeqCst) >= N
        })
        .await;
        let _ = stop.send(());
        let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
        assert!(
            done && stopped.is_ok() && nested_got.load(Ordering::SeqCst),
            "blocking {blocking}: {} of {N} handled; the handler's own recv got one: {}; \
             stopped: {}",
            handled.load(Ordering::SeqCst),
            nested_got.load(Ordering::SeqCst),
            stopped.is_ok()
        );
    }
}

/// Two `run` loops share a consumer, with handlers that work synchronously (5 ms each, no
/// await): both loops get a fair part of the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_run_loops_with_synchronous_handlers_share_the_messages() {
    const N: usize = 300;
    let consumer = shared_consumer("atk-turn-share", N, &common::producer()).await;
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for (i, count) in counts.iter().enumerate() {
        if i == 1 {
            // The second loop starts once the first is busy.
            let first = Arc::clone(&counts[0]);
            assert!(
                eventually(Duration::from_secs(30), || first.load(Ordering::SeqCst)
                    >= 5)
                .await
            );
        }
        let (consumer, count) = (Arc::clone(&consumer), Arc::clone(count));
        let mut stopped = stopped.clone();
        loops.push(tokio::spawn(async move {
            consumer
                .run(
                    move |_| {
                        std::thread::sleep(Duration::from_millis(5));
                        count.fetch_add(1, Ordering::SeqCst);
                        std::future::ready(Ok::<_, std::convert::Infallible>(()))
                    },
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )
                .await
                .unwrap();
        }));
    }
    let total = || counts[0].load(Ordering::SeqCst) + counts[1].load(Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(60), || total() >= N).await);
    stop.send(true).unwrap();
    for running in loops {
        running.await.unwrap();
    }
    let (a, b) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert!(
        a.min(b) >= N / 5,
        "one loop handled nearly all: {a} and {b}"
    );
}

/// A `run` handler that panics: the panic ends the loop's task, and the message it held comes
/// again to the next loop of the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_handler_leaves_its_message_to_come_again() {
    // One record per batch: the rewind lands inside no batch (see `unbatched_producer`).
    let consumer = shared_consumer("atk-turn-panic", 5, &unbatched_producer()).await;
    let running = tokio::spawn({
        let consumer = Arc::clone(&consumer);
        async move {
            let mut n = 0;
            consumer
                .run(
                    move |_| {
                        n += 1;
                        assert!(n < 3, "the handler panics on its third message");
                        std::future::ready(Ok::<_, std::convert::Infallible>(()))
                    },
                    std::future::pending::<()>(),
                )
                .await
                .unwrap();
        }
    });
    assert!(running.await.is_err(), "the handler panicked");
    let again = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("recv gets a message")
        .unwrap();
    assert_eq!(
        again.payload(),
        Some(b"2".as_slice()),
        "the message it held comes again"
    );
    again.done();
}
