//! Helpers shared by the broker tests: producing, running consumers, reading lag and topics.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prodbox_core::{FutureExt, Sandbox};
use prodbox_kafka::{SandboxConsumer, SandboxRecordExt};
use prodbox_testkit::kafka::client_config;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Broker calls made from tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// rdkafka settings for consumers under test: stored offsets are committed every 200 ms, so a
/// running consumer's lag is visible soon.
pub(crate) fn consumer_config() -> ClientConfig {
    let mut config = client_config();
    config.set("auto.commit.interval.ms", "200");
    config
}

pub(crate) fn producer() -> FutureProducer {
    client_config()
        .set("linger.ms", "5")
        .create()
        .expect("a producer")
}

/// A producer that sends every record in a record batch of its own.
///
/// Tests that resume a group from a committed offset use it: tansu 0.6 answers a fetch from an
/// offset inside a record batch with the batches that *start* at or after it, so the rest of
/// that batch is skipped by every consumer that resumes there (its `fetch` keeps the stored
/// batches whose base offset is `>=` the requested offset).
pub(crate) fn unbatched_producer() -> FutureProducer {
    client_config()
        .set("batch.num.messages", "1")
        .create()
        .expect("a producer")
}

/// One record to produce: payload, explicit partition, raw headers, and the sandbox whose
/// context it is produced in (through `with_sandbox_context`).
#[derive(Clone, Default)]
pub(crate) struct Out {
    pub(crate) payload: String,
    pub(crate) partition: Option<i32>,
    pub(crate) headers: Option<OwnedHeaders>,
    pub(crate) sandbox: Option<Sandbox>,
    /// Sent as it is, without `with_sandbox_context` (which would clean up its headers).
    pub(crate) raw: bool,
}

impl Out {
    pub(crate) fn new(payload: impl Into<String>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    pub(crate) fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub(crate) fn headers(mut self, headers: OwnedHeaders) -> Self {
        self.headers = Some(headers);
        self
    }

    pub(crate) fn sandbox(mut self, sandbox: Option<Sandbox>) -> Self {
        self.sandbox = sandbox;
        self
    }

    pub(crate) fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
}

/// Produces every record (each with `with_sandbox_context`, inside its sandbox when it has
/// one, unless it is `raw`), all in flight at once; returns where each landed: `(partition, offset)`.
pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[Out],
) -> Vec<(i32, i64)> {
    let mut deliveries = Vec::with_capacity(records.len());
    for out in records {
        // Enqueued in the record's context; the delivery is awaited later, all at once.
        #[allow(clippy::async_yields_async)]
        let enqueue = async {
            let mut record = FutureRecord::<str, str>::to(topic)
                .key(&out.payload)
                .payload(&out.payload);
            record.partition = out.partition;
            record.headers = out.headers.clone();
            if !out.raw {
                record = record.with_sandbox_context().expect("context written");
            }
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => return delivery,
                    Err((error, back)) => {
                        // Queue full: let deliveries drain.
                        eprintln!("enqueue failed ({error}); retrying");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        record = back;
                    }
                }
            }
        };
        let delivery = match &out.sandbox {
            Some(sandbox) => enqueue.in_sandbox(sandbox.clone()).await,
            None => enqueue.await,
        };
        deliveries.push(delivery);
    }
    let mut landed = Vec::with_capacity(records.len());
    for delivery in deliveries {
        let delivered = delivery
            .await
            .expect("delivery not cancelled")
            .expect("delivered");
        landed.push((delivered.partition, delivered.offset));
    }
    landed
}

/// A consumer running in a task until [`Running::stop`] (which lets `run` commit) or
/// [`Running::kill`] (which aborts it mid-stream).
pub(crate) struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub(crate) fn spawn<F, Fut, E>(consumer: SandboxConsumer, handler: F) -> Self
    where
        F: FnMut(OwnedMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            consumer
                .run(handler, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("consumer run failed");
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Shuts the consumer down the orderly way and waits for its final commit.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("consumer stopped within 30 s")
            .expect("consumer task did not panic");
    }

    /// Aborts the consumer wherever it is, as a crash would: no final commit by `run`.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The payload as text.
pub(crate) fn payload(message: &OwnedMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

/// The current sandbox's key, as a handler sees it.
pub(crate) fn current_key() -> Option<String> {
    prodbox_core::current().map(|s| s.key().to_string())
}

/// Calls `check` every 100 ms until it is true or `limit` has passed; returns whether it was.
pub(crate) async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where each partition ends, from the delivery reports of everything produced to a topic:
/// the offset after the last record, by partition.
///
/// The broker's own high watermark is not used: tansu 0.6 answers `ListOffsets(latest)` with
/// the base offset of the newest record batch plus one, not the offset after its last record.
pub(crate) fn ends<'a>(landed: impl IntoIterator<Item = &'a (i32, i64)>) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (partition, offset) in landed {
        let end = ends.entry(*partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

/// `group`'s committed offset on each partition of `topic` (-1 where it has none).
pub(crate) async fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = client_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("an offset reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&topic, partition);
        }
        let committed = reader
            .committed_offsets(list, TIMEOUT)
            .expect("committed offsets");
        (0..partitions)
            .map(|partition| {
                let offset = match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => offset,
                    _ => -1,
                };
                (partition, offset)
            })
            .collect()
    })
    .await
    .expect("offset reader did not panic")
}

/// Waits (30 s at most) until every group's committed offset is the end of every partition of
/// `topic` (see [`ends`]; a partition nothing was produced to ends at 0, and a group without a
/// committed offset there does not lag); panics with the last view otherwise.
pub(crate) async fn assert_zero_lag(
    groups: &[impl AsRef<str>],
    topic: &str,
    partitions: i32,
    ends: &BTreeMap<i32, i64>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for group in groups {
        let group = group.as_ref();
        loop {
            let committed = committed(group, topic, partitions).await;
            let lagging: Vec<(i32, i64, i64)> = (0..partitions)
                .map(|p| (p, committed[&p], ends.get(&p).copied().unwrap_or(0)))
                .filter(|(_, committed, end)| committed != end && !(*end == 0 && *committed < 0))
                .collect();
            if lagging.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group {group} lags on {topic}: (partition, committed, end) {lagging:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The last value of header `name`, as text.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// Reads partition 0..`partitions` of `topic` from the beginning with a plain consumer (no
/// group commits) until `count` records arrived or `limit` passed.
pub(crate) async fn read_topic(
    topic: &str,
    partitions: i32,
    count: usize,
    limit: Duration,
) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = client_config()
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("a reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("partition");
        }
        reader.assign(&list).expect("assigned");
        let mut records = Vec::new();
        let deadline = Instant::now() + limit;
        while records.len() < count && Instant::now() < deadline {
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("a record");
            let headers = message
                .headers()
                .map(|headers| {
                    (0..headers.count())
                        .map(|i| headers.get(i))
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        records
    })
    .await
    .expect("reader did not panic")
}

/// What handlers saw: (consumer, payload, sandbox in context), in order.
pub(crate) type Log = Arc<Mutex<Vec<(&'static str, String, Option<String>)>>>;

/// A handler that records each message it is given under `name` and succeeds. It reads the
/// context inside the handler's future, where `run` attaches it.
pub(crate) fn recorder(
    log: &Log,
    name: &'static str,
) -> impl FnMut(OwnedMessage) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Infallible>> + Send>>
+ Send
+ 'static {
    let log = Arc::clone(log);
    move |message| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            log.lock()
                .unwrap()
                .push((name, payload(&message), current_key()));
            Ok(())
        })
    }
}
