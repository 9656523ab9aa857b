//! A real Kafka-protocol broker for tests: tansu on 127.0.0.1:9092, started when missing; and
//! what tests read back from it: a group's committed offsets, where a topic ends, its records.
//!
//! # Where a topic ends
//!
//! Not from the broker's high watermark: tansu 0.6 answers `ListOffsets(latest)` with the base
//! offset of the newest record batch plus one, not the offset after its last record. Tests take
//! the ends from the delivery reports of what they produced ([`ends`]) or, when the records
//! were produced elsewhere (a service under test), by reading the topic ([`topic_ends`]).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Where the test broker listens.
pub const BOOTSTRAP: &str = "127.0.0.1:9092";

/// Makes sure a broker listens on [`BOOTSTRAP`]: starts `tansu` (installed by
/// `scripts/test.sh`) when nothing does, and waits for it.
pub fn ensure_broker() -> String {
    if TcpStream::connect(BOOTSTRAP).is_ok() {
        return BOOTSTRAP.to_owned();
    }
    // Another test binary may be starting it at the same moment; a second one fails to bind
    // and exits, which is fine.
    let spawned = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            "tcp://127.0.0.1:9092",
            "--advertised-listener-url",
            "tcp://127.0.0.1:9092",
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = spawned {
        panic!(
            "no Kafka broker on {BOOTSTRAP} and `tansu` could not start ({error}); run `bash scripts/test.sh`, which installs it"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(BOOTSTRAP).is_ok() {
            return BOOTSTRAP.to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tansu did not listen on {BOOTSTRAP} within 15 s");
}

/// rdkafka settings for the test broker.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", ensure_broker())
        .set("session.timeout.ms", "6000")
        .set("message.timeout.ms", "10000");
    config
}

/// A topic name no other test or run uses.
pub fn unique_topic(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `topic` with `partitions` partitions (tansu does not create topics by itself).
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        client_config().create().expect("an admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics answered");
    for result in results {
        if let Err((name, code)) = result {
            panic!("creating topic {name} failed: {code}");
        }
    }
}

/// Broker calls made by these helpers.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where each partition ends, from the delivery reports of everything produced to a topic
/// (`(partition, offset)` of each record): the offset after the last record, by partition.
pub fn ends<'a>(landed: impl IntoIterator<Item = &'a (i32, i64)>) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (partition, offset) in landed {
        let end = ends.entry(*partition).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

/// `group`'s committed offset on each partition of `topic` (-1 where it has none).
pub async fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
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
/// `topic` (from [`ends`] or [`topic_ends`]; a partition missing there ends at 0, and a group
/// without a committed offset on an empty partition does not lag); panics with the last view
/// otherwise.
pub async fn assert_zero_lag(
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
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its payload (empty when it has none).
    pub payload: Vec<u8>,
    /// Its headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

/// When a [`read`] stops.
enum Until {
    /// This many records arrived.
    Count(usize),
    /// Every partition reported its end and nothing new arrived for this long.
    Quiet(Duration),
}

/// Reads partition 0..`partitions` of `topic` from the beginning with a plain consumer (no
/// group commits) until `count` records arrived or `limit` passed.
pub async fn read_topic(
    topic: &str,
    partitions: i32,
    count: usize,
    limit: Duration,
) -> Vec<Record> {
    read(topic, partitions, Until::Count(count), limit).await
}

/// Reads all of `topic` (partitions 0..`partitions`, from the beginning, with a plain consumer
/// making no group commits): until every partition has reported its end and no record came for
/// `quiet`. Call it once nothing produces to the topic any more. Panics if that takes longer
/// than `limit`.
pub async fn read_all(
    topic: &str,
    partitions: i32,
    quiet: Duration,
    limit: Duration,
) -> Vec<Record> {
    read(topic, partitions, Until::Quiet(quiet), limit).await
}

/// Where each partition of `topic` ends (the offset after its last record; partitions without
/// records are missing), by reading it all with [`read_all`]: for topics the test did not
/// produce to itself (see the [module docs](self)). Call it once nothing produces to the topic
/// any more.
pub async fn topic_ends(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let records = read_all(
        topic,
        partitions,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    let landed: Vec<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    ends(&landed)
}

async fn read(topic: &str, partitions: i32, until: Until, limit: Duration) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = client_config()
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("a reader");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("partition");
        }
        reader.assign(&list).expect("assigned");
        let mut records = Vec::new();
        // Partitions whose end was reported after their last record.
        let mut at_end = std::collections::BTreeSet::new();
        let started = Instant::now();
        let mut last_record = started;
        loop {
            let now = Instant::now();
            match until {
                Until::Count(count) if records.len() >= count || now >= started + limit => break,
                Until::Quiet(quiet) => {
                    let all_ended = at_end.len() == usize::try_from(partitions).unwrap_or(0);
                    if all_ended && now.duration_since(last_record) >= quiet {
                        break;
                    }
                    assert!(
                        now < started + limit,
                        "reading {topic} did not reach its end within {limit:?} ({} records, \
                         partitions at their end: {at_end:?})",
                        records.len()
                    );
                }
                Until::Count(_) => {}
            }
            let Some(message) = reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(partition)) => {
                    at_end.insert(partition);
                    continue;
                }
                Err(error) => panic!("reading {topic}: {error}"),
            };
            at_end.remove(&message.partition());
            last_record = Instant::now();
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
