//! A real Kafka-protocol broker for tests: tansu on 127.0.0.1:9092, started when missing.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

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
