//! The consumer filter's cost: header extraction plus the decision per message (against
//! iterating the same headers with no prodbox), and consumer throughput on the test broker:
//! a baseline `SandboxConsumer` that skips half the topic against a raw `StreamConsumer`
//! reading the same topic in the same run, twice: small messages librdkafka has already
//! fetched (CPU-bound), and 1 KiB messages over 3 partitions, fetched while they are consumed.
//!
//! Run: `cargo bench -p prodbox-kafka --bench kafka` (the throughput part needs the tansu
//! broker on 127.0.0.1:9092, which `prodbox_testkit::kafka::ensure_broker` starts if missing).

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use futures_util::StreamExt;
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_kafka::{Filter, Role, SandboxConsumer, SandboxRecordExt};
use prodbox_testkit::kafka::{client_config, create_topic, unique_topic};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;

/// The topic the throughput benches read: how many messages over how many partitions, and
/// how large each payload is.
#[derive(Clone, Copy)]
struct Shape {
    /// The benchmark's name suffix.
    name: &'static str,
    messages: usize,
    partitions: i32,
    payload: usize,
}

/// Small messages on one partition, which librdkafka has mostly fetched by the first one: what
/// each consumer spends per message, CPU-bound. One partition: with several, librdkafka starts fetching them one
/// after another, ~250 ms apart on tansu, and that start-up latency (the same for both
/// consumers) would be most of what is measured.
const PREFETCHED: Shape = Shape {
    name: "",
    messages: 20_000,
    partitions: 1,
    payload: 0,
};

/// Closer to a service reading a busy topic: 1 KiB payloads over 3 partitions, 60 MiB in all,
/// so the broker's fetches are part of the measured time (rdkafka's prefetch, 64 MiB by
/// default, is not ahead of the consumer from the start).
const FETCHED: Shape = Shape {
    name: "_3p_1kib",
    messages: 60_000,
    partitions: 3,
    payload: 1024,
};

fn directory() -> MemoryDirectory {
    let directory = MemoryDirectory::new();
    directory.upsert(
        SandboxEntry::new("pr-42".parse().unwrap())
            .fork("billing", "http://fork".parse().expect("a fork address")),
    );
    directory.upsert(
        SandboxEntry::new("pr-7".parse().unwrap())
            .fork("shipping", "http://fork".parse().expect("a fork address")),
    );
    directory
}

fn plain_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        })
}

fn with_baggage(baggage: &str) -> OwnedHeaders {
    plain_headers().insert(Header {
        key: "baggage",
        value: Some(baggage),
    })
}

fn decision(c: &mut Criterion) {
    let filter = Filter::new(Role::baseline("billing"), directory());
    let now = SystemTime::now();
    let mut group = c.benchmark_group("filter_per_message");
    // For comparison: reading the same kind of headers with no prodbox at all.
    let plain = plain_headers();
    group.bench_function("iterate_headers_no_prodbox", |b| {
        b.iter(|| {
            let headers = black_box(&plain);
            let mut bytes = 0;
            for i in 0..headers.count() {
                let header = headers.get(i);
                bytes += header.key.len() + header.value.map_or(0, <[u8]>::len);
            }
            black_box(bytes)
        })
    });
    for (name, headers) in [
        ("decide_untagged", plain_headers()),
        (
            "decide_forked_skip",
            with_baggage("prodbox.sandbox=pr-42,prodbox.actor=alice,userId=7"),
        ),
        (
            "decide_process_in_context",
            with_baggage("prodbox.sandbox=pr-7,prodbox.actor=alice,userId=7"),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(filter.decide(Some(black_box(&headers)), now)))
        });
    }
    // Every header new: a fourth member differs per message, over more headers than the
    // filter's and the codec's memories hold, so each decision is made afresh (a producer that
    // puts a request id into baggage).
    let distinct: Vec<OwnedHeaders> = (0..4096)
        .map(|n| {
            with_baggage(&format!(
                "prodbox.sandbox=pr-42,prodbox.actor=alice,userId=7,req={n}"
            ))
        })
        .collect();
    let mut next = 0;
    group.bench_function("decide_forked_skip_every_header_new", |b| {
        b.iter(|| {
            next = (next + 1) % distinct.len();
            black_box(filter.decide(Some(black_box(&distinct[next])), now))
        })
    });
    group.finish();
}

/// The payload of partition `p`'s last message: when a consumer has seen all of them, it has
/// gone through the whole topic (each partition is read in order).
fn last(p: i32) -> String {
    format!("last-{p}")
}

/// Produces the throughput topic: message `i` to partition `i % partitions`; every other round
/// (half the messages) tagged for `pr-42`, which forks billing, so the baseline skips them; the
/// first and the last message of each partition untagged, so both consumers start and end on a
/// message they handle.
async fn produce_topic(topic: &str, shape: Shape) {
    let producer: FutureProducer = client_config().set("linger.ms", "5").create().unwrap();
    let sandbox = Sandbox::builder("pr-42")
        .unwrap()
        .actor("alice")
        .unwrap()
        .build();
    let partitions = shape.partitions as usize;
    let mut deliveries = Vec::with_capacity(shape.messages);
    for i in 0..shape.messages {
        let partition = (i % partitions) as i32;
        let payload = if i + partitions >= shape.messages {
            last(partition)
        } else if shape.payload == 0 {
            format!("{{\"order\":{i},\"amount\":42}}")
        } else {
            let mut payload = format!("{{\"order\":{i},\"amount\":42,\"note\":\"");
            while payload.len() + 2 < shape.payload {
                payload.push('x');
            }
            payload.push_str("\"}");
            payload
        };
        let tagged =
            i >= partitions && i + partitions < shape.messages && (i / partitions) % 2 == 1;
        // Enqueued in the record's context; the delivery is awaited later, all at once.
        #[allow(clippy::async_yields_async)]
        let enqueue = async {
            let mut record = FutureRecord::<str, str>::to(topic)
                .partition(partition)
                .key(&payload)
                .payload(&payload)
                .headers(plain_headers())
                .with_sandbox_context()
                .unwrap();
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => return delivery,
                    // Queue full: let deliveries drain.
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        };
        deliveries.push(if tagged {
            enqueue.in_sandbox(sandbox.clone()).await
        } else {
            enqueue.await
        });
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
}

/// Tells `perf` to start or stop sampling (see [`count`]).
fn perf_ctl(what: &str) {
    if let Ok(ctl) = std::env::var("PERF_CTL") {
        std::fs::write(ctl, format!("{what}\n")).unwrap();
    }
}

/// Shared by a handler and the bench: when the first message was seen, which last messages
/// were, and a signal once they all were.
struct Progress {
    partitions: usize,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    lasts: Mutex<Vec<String>>,
    done: Notify,
}

impl Progress {
    fn new(shape: Shape) -> Self {
        Self {
            partitions: shape.partitions as usize,
            first: Mutex::default(),
            last: Mutex::default(),
            lasts: Mutex::default(),
            done: Notify::new(),
        }
    }

    /// Records one message; returns whether it was the last one needed.
    fn saw(&self, payload: &[u8]) -> bool {
        self.first.lock().unwrap().get_or_insert_with(|| {
            perf_ctl("enable");
            Instant::now()
        });
        if !payload.starts_with(b"last-") {
            return false;
        }
        let mut lasts = self.lasts.lock().unwrap();
        let payload = String::from_utf8_lossy(payload).into_owned();
        if !lasts.contains(&payload) {
            lasts.push(payload);
        }
        let done = lasts.len() == self.partitions;
        if done {
            perf_ctl("disable");
            *self.last.lock().unwrap() = Some(Instant::now());
        }
        done
    }

    /// From the first message to the last.
    fn elapsed(&self) -> Duration {
        let first = self.first.lock().unwrap().unwrap();
        self.last.lock().unwrap().unwrap() - first
    }
}

/// How a throughput iteration consumes the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A raw `StreamConsumer`: `store` each offset after handling (what an at-least-once
    /// service must do, with the settings `SandboxConsumer` uses), `baggage` read from every
    /// message's headers (the floor any consumer that decides by a header pays: librdkafka
    /// parses a message's headers on first access).
    Raw { store: bool, baggage: bool },
    /// A baseline `SandboxConsumer` in prodbox's loop (`run`).
    Runner,
    /// The same in a service's own loop (`stream`, `in_context`, `done`).
    OwnLoop,
}

impl Kind {
    const ALL: [(&'static str, Kind); 6] = [
        (
            "raw_stream_consumer",
            Kind::Raw {
                store: false,
                baggage: false,
            },
        ),
        (
            "raw_stream_consumer_storing_offsets",
            Kind::Raw {
                store: true,
                baggage: false,
            },
        ),
        (
            "raw_stream_consumer_reading_baggage",
            Kind::Raw {
                store: false,
                baggage: true,
            },
        ),
        (
            "raw_stream_consumer_reading_baggage_storing_offsets",
            Kind::Raw {
                store: true,
                baggage: true,
            },
        ),
        ("sandbox_consumer_baseline_50pct_skipped", Kind::Runner),
        ("sandbox_consumer_own_loop_50pct_skipped", Kind::OwnLoop),
    ];
}

/// A baseline `SandboxConsumer` of `topic` in consumer group `group`.
async fn baseline(topic: &str, group: &str, directory: &MemoryDirectory) -> SandboxConsumer {
    SandboxConsumer::builder(client_config(), group, Role::baseline("billing"))
        .directory(directory.clone())
        .start(&[topic])
        .await
        .unwrap()
}

/// What the floor does with each message beyond the payload: finds its `baggage` header (the
/// floor any consumer that decides by a header pays: librdkafka parses a message's headers on
/// first access).
fn read_baggage(message: &BorrowedMessage<'_>) {
    black_box(message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == "baggage")
            .and_then(|header| header.value)
    }));
}

/// A new consumer group of `kind` reads all of `topic`; returns the time from the first
/// message it was given to the last (the group join is not timed).
///
/// Every kind consumes in a task of its own, on one of the runtime's worker threads: the same
/// kind of thread for all. glibc serves each thread from an arena of its own, and what
/// librdkafka's per-message allocations cost there (its header parse `calloc`s a buffer)
/// depends on the arena and its history, by a few hundred instructions a message; when the
/// floor and the own loop ran in `block_on`'s thread and `run` on a worker, that alone put
/// `run` ahead of the own loop.
async fn consume(
    kind: Kind,
    topic: &str,
    group: &str,
    directory: &MemoryDirectory,
    shape: Shape,
) -> Duration {
    let (topic, group, directory) = (topic.to_owned(), group.to_owned(), directory.clone());
    tokio::spawn(async move { consume_in_task(kind, &topic, &group, &directory, shape).await })
        .await
        .unwrap()
}

async fn consume_in_task(
    kind: Kind,
    topic: &str,
    group: &str,
    directory: &MemoryDirectory,
    shape: Shape,
) -> Duration {
    let progress = Arc::new(Progress::new(shape));
    match kind {
        Kind::Raw { store, baggage } => {
            let mut config = client_config();
            config
                .set("group.id", group)
                .set("auto.offset.reset", "earliest");
            if store {
                config
                    .set("enable.auto.commit", "true")
                    .set("enable.auto.offset.store", "false");
            }
            let consumer: StreamConsumer = config.create().unwrap();
            consumer.subscribe(&[topic]).unwrap();
            loop {
                let message = consumer.recv().await.unwrap();
                if baggage {
                    read_baggage(&message);
                }
                let done = progress.saw(black_box(message.payload().unwrap_or_default()));
                if store {
                    consumer.store_offset_from_message(&message).unwrap();
                }
                if done {
                    break;
                }
            }
        }
        Kind::Runner => {
            let consumer = baseline(topic, group, directory).await;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn({
                let progress = Arc::clone(&progress);
                async move {
                    consumer
                        .run(
                            move |message: &BorrowedMessage<'_>| {
                                if progress.saw(black_box(message.payload().unwrap_or_default())) {
                                    progress.done.notify_one();
                                }
                                std::future::ready(Ok::<_, std::convert::Infallible>(()))
                            },
                            async move {
                                let _ = stopped.await;
                            },
                        )
                        .await
                        .unwrap();
                }
            });
            progress.done.notified().await;
            let _ = stop.send(());
            run.await.unwrap();
        }
        Kind::OwnLoop => {
            let consumer = baseline(topic, group, directory).await;
            let mut messages = consumer.stream();
            while let Some(delivery) = messages.next().await {
                let delivery = delivery.unwrap();
                let done = delivery
                    .in_context(async {
                        progress.saw(black_box(delivery.payload().unwrap_or_default()))
                    })
                    .await;
                delivery.done();
                if done {
                    break;
                }
            }
        }
    }
    progress.elapsed()
}

/// Each iteration: a new consumer group reads the whole topic; timed from the first message
/// either consumer is given to the last (the group join is not timed).
fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `PRODBOX_KAFKA_BENCH_CPU_ONLY=1`: the prefetched topic only.
    let cpu_only = std::env::var_os("PRODBOX_KAFKA_BENCH_CPU_ONLY").is_some();
    for shape in [PREFETCHED, FETCHED] {
        if cpu_only && shape.payload > 0 {
            continue;
        }
        throughput_of(c, &rt, shape);
    }
}

fn throughput_of(c: &mut Criterion, rt: &tokio::runtime::Runtime, shape: Shape) {
    let topic = unique_topic("bench-throughput");
    rt.block_on(async {
        create_topic(&topic, shape.partitions).await;
        produce_topic(&topic, shape).await;
    });
    let directory = directory();

    let mut group = c.benchmark_group(format!("consumer_throughput{}", shape.name));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(shape.messages as u64));
    let next_group = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (name, kind) in Kind::ALL {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (topic, directory, next_group) = (&topic, &directory, &next_group);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let n = next_group.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        total +=
                            consume(kind, topic, &format!("{topic}-g{n}"), directory, shape).await;
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

/// `PRODBOX_KAFKA_COUNT=<name>` (a name of [`Kind::ALL`], `interleaved`, or `none`; `paired`
/// is [`paired`]): produces
/// the prefetched topic and reads it once with that consumer, for instruction counts with
/// callgrind: `PRODBOX_KAFKA_COUNT=<name> valgrind --tool=callgrind <bench binary>`.
/// `PRODBOX_KAFKA_COUNT_MESSAGES=<n>` sets the topic's size (default 20,000). A count taken with
/// `--toggle-collect='kafka::consume::*'` still holds each consumer's fixed costs (creating it,
/// joining the group): its instructions per message are the difference between two sizes'
/// counts, divided by the difference in messages.
///
/// `PRODBOX_KAFKA_COUNT_ROUNDS=<n>` reads the topic `n` times, a new group each time, printing
/// each round's time (first message to last). `interleaved` reads it with the floor, `run` and
/// the own loop in turn, `n` rounds (10 by default), and prints each one's median, mean and
/// minimum: a same-run comparison in which the machine's noise falls on all three alike.
/// `PERF_CTL=<fifo>` writes `enable` to the fifo at each round's first message and `disable`
/// at its last, for `perf record --control=fifo:<fifo> -D -1`: samples of the timed part only.
fn count(name: &str) {
    let shape = Shape {
        messages: env_number("PRODBOX_KAFKA_COUNT_MESSAGES").unwrap_or(PREFETCHED.messages),
        ..PREFETCHED
    };
    let rounds = env_number("PRODBOX_KAFKA_COUNT_ROUNDS");
    let kinds: Vec<(&str, Kind)> = match name {
        "interleaved" => vec![Kind::ALL[2], Kind::ALL[4], Kind::ALL[5]],
        "none" => Vec::new(),
        _ => match Kind::ALL.iter().find(|(n, _)| *n == name) {
            Some(kind) => vec![*kind],
            None => {
                panic!("PRODBOX_KAFKA_COUNT names a consumer of Kind::ALL, interleaved or none")
            }
        },
    };
    let rounds = rounds.unwrap_or(if kinds.len() > 1 { 10 } else { 1 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topic = unique_topic("bench-count");
    let mut times = vec![Vec::new(); kinds.len()];
    rt.block_on(async {
        create_topic(&topic, shape.partitions).await;
        produce_topic(&topic, shape).await;
        for round in 0..rounds {
            for (i, (name, kind)) in kinds.iter().enumerate() {
                let group = format!("{topic}-g{round}-{i}");
                let took = consume(*kind, &topic, &group, &directory(), shape).await;
                if rounds > 1 && kinds.len() == 1 {
                    eprintln!("{name} round {round}: {:.2} ms", took.as_secs_f64() * 1e3);
                }
                times[i].push(took.as_secs_f64() * 1e3);
            }
        }
    });
    if kinds.len() > 1 {
        // Each round's time against the first consumer's in the same round: the machine's
        // noise, which drifts over seconds, falls on both alike.
        for ((name, _), own) in kinds.iter().zip(&times).skip(1) {
            let mut ratios: Vec<f64> = own.iter().zip(&times[0]).map(|(t, f)| f / t).collect();
            ratios.sort_by(f64::total_cmp);
            eprintln!(
                "{name}: median ratio to {} {:.3} (rounds' quartiles {:.3} to {:.3})",
                kinds[0].0,
                ratios[ratios.len() / 2],
                ratios[ratios.len() / 4],
                ratios[ratios.len() * 3 / 4]
            );
        }
        for ((name, _), times) in kinds.iter().zip(&mut times) {
            times.sort_by(f64::total_cmp);
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            eprintln!(
                "{name}: median {:.2} ms, mean {mean:.2} ms, min {:.2} ms",
                times[times.len() / 2],
                times[0]
            );
        }
    }
}

/// `PRODBOX_KAFKA_COUNT=paired`: the floor, `run` and the own loop read one topic in turns of
/// `PRODBOX_KAFKA_CHUNK` offsets (1,000 by default), `PRODBOX_KAFKA_CHUNKS` turns each (60 by
/// default), all on one thread. Each turn is timed from the first message its consumer works
/// on to the first past the turn (`run` and the own loop skip half the offsets themselves),
/// and scored in offsets a second. Prints the median and quartiles of each turn's score against the
/// floor's turn just before it. A turn takes about half a millisecond: the machine's noise,
/// which on a shared VM changes from one round of 20,000 messages to the next, falls on a
/// turn and the next alike.
fn paired() {
    let chunk = env_number("PRODBOX_KAFKA_CHUNK").unwrap_or(1_000);
    let chunks = env_number("PRODBOX_KAFKA_CHUNKS").unwrap_or(60);
    // A first turn untimed (the group joins, and librdkafka's first fetch), and one more at
    // the end: a turn ends at the first message past it.
    let shape = Shape {
        messages: chunk * (chunks + 2),
        ..PREFETCHED
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = unique_topic("bench-paired");
    let directory = directory();
    let turns = rt.block_on(async {
        create_topic(&topic, shape.partitions).await;
        produce_topic(&topic, shape).await;
        let mut config = client_config();
        config
            .set("group.id", format!("{topic}-floor"))
            .set("auto.offset.reset", "earliest");
        let floor: StreamConsumer = config.create().unwrap();
        floor.subscribe(&[&topic]).unwrap();
        let runner = baseline(&topic, &format!("{topic}-run"), &directory).await;
        let own = baseline(&topic, &format!("{topic}-own"), &directory).await;
        let mut own = own.stream();
        // The same work in each: the payload read, and a lock taken (as `Progress::saw` does).
        let work = Arc::new(Mutex::new(0u64));
        let saw = |work: &Mutex<u64>, payload: &[u8]| {
            black_box(payload);
            *work.lock().unwrap() += 1;
        };

        // `run`'s handler times its turns and, at the first message past one, waits for its
        // next turn (untimed).
        let (turn_done, mut turns_done) = tokio::sync::mpsc::unbounded_channel::<Turn>();
        let next_turn = Arc::new(Notify::new());
        let handler = {
            let (work, next_turn) = (Arc::clone(&work), Arc::clone(&next_turn));
            let mut turn = Turn::new(chunk);
            move |message: &BorrowedMessage<'_>| {
                if turn.saw(message.offset()) {
                    saw(&work, message.payload().unwrap_or_default());
                    return futures_util::future::Either::Left(std::future::ready(Ok(())));
                }
                turn_done.send(turn.next()).unwrap();
                saw(&work, message.payload().unwrap_or_default());
                let next_turn = Arc::clone(&next_turn);
                futures_util::future::Either::Right(async move {
                    next_turn.notified().await;
                    Ok::<_, std::convert::Infallible>(())
                })
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            runner
                .run(handler, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });

        let mut turns: [Vec<Turn>; 3] = Default::default();
        let (mut floor_turn, mut own_turn) = (Turn::new(chunk), Turn::new(chunk));
        // The own loop's first message past its turn, handled at the start of the next.
        let mut held_over = None;
        for at in 0..=chunks {
            // The floor: a raw consumer reading each message's `baggage`.
            let floor_done = loop {
                let message = floor.recv().await.unwrap();
                if !floor_turn.saw(message.offset()) {
                    break floor_turn.next();
                }
                read_baggage(&message);
                saw(&work, message.payload().unwrap_or_default());
            };
            // `run`: given its turn (it starts its first on its own, at this task's first
            // wait), and timed by its handler.
            if at > 0 {
                next_turn.notify_one();
            }
            let run_done = turns_done.recv().await.unwrap();
            // The own loop.
            let own_done = loop {
                let delivery = match held_over.take() {
                    Some(delivery) => delivery,
                    None => own.next().await.unwrap().unwrap(),
                };
                if !own_turn.saw(delivery.offset()) {
                    held_over = Some(delivery);
                    break own_turn.next();
                }
                delivery
                    .in_context(async { saw(&work, delivery.payload().unwrap_or_default()) })
                    .await;
                delivery.done();
            };
            if at > 0 {
                for (turns, done) in turns.iter_mut().zip([floor_done, run_done, own_done]) {
                    turns.push(done);
                }
            }
        }
        drop(held_over);
        let _ = stop.send(());
        next_turn.notify_one();
        running.await.unwrap();
        turns
    });
    for (name, at) in [("run", 1), ("own loop", 2)] {
        let mut ratios: Vec<f64> = turns[at]
            .iter()
            .zip(&turns[0])
            .map(|(turn, floor)| turn.rate() / floor.rate())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        eprintln!(
            "{name}: median ratio to the floor {:.3} (turns' quartiles {:.3} to {:.3}, {n} turns of {chunk} offsets)",
            ratios[n / 2],
            ratios[n / 4],
            ratios[n * 3 / 4]
        );
    }
    for (name, turns) in ["floor", "run", "own loop"].iter().zip(&turns) {
        let mut rates: Vec<f64> = turns.iter().map(Turn::rate).collect();
        rates.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: median {:.0} ns an offset, best {:.0} ns",
            1e9 / rates[rates.len() / 2],
            1e9 / rates[rates.len() - 1]
        );
    }
}

/// A consumer's turn in [`paired`]: the offsets it covers, the first message it worked on
/// in it, and the first message past it (the clock is read at those two only).
#[derive(Clone, Copy, Debug)]
struct Turn {
    end: i64,
    chunk: i64,
    first: Option<(i64, Instant)>,
    past: Option<(i64, Instant)>,
}

impl Turn {
    fn new(chunk: usize) -> Self {
        let chunk = i64::try_from(chunk).unwrap();
        Self {
            end: chunk,
            chunk,
            first: None,
            past: None,
        }
    }

    /// Notes a message at `offset`, before it is worked on: `false` when it is past the turn.
    fn saw(&mut self, offset: i64) -> bool {
        if offset < self.end {
            if self.first.is_none() {
                self.first = Some((offset, Instant::now()));
            }
            return true;
        }
        self.past = Some((offset, Instant::now()));
        false
    }

    /// This turn, as done; starts the next.
    fn next(&mut self) -> Self {
        let done = *self;
        *self = Self {
            end: self.end + self.chunk,
            chunk: self.chunk,
            first: None,
            past: None,
        };
        done
    }

    /// Offsets a second, from the first message worked on to the first past the turn.
    fn rate(&self) -> f64 {
        let (Some((o0, t0)), Some((o1, t1))) = (self.first, self.past) else {
            return f64::NAN;
        };
        (o1 - o0) as f64 / (t1 - t0).as_secs_f64()
    }
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|n| n.parse().ok())
}

criterion_group!(benches, decision, throughput);

fn main() {
    if let Ok(name) = std::env::var("PRODBOX_KAFKA_COUNT") {
        if name == "paired" {
            paired();
            return;
        }
        count(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
