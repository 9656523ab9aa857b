//! The consumer filter end to end against a real broker, in its smallest form.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_kafka::{Role, SandboxConsumer, SandboxRecordExt};
use prodbox_testkit::kafka::{client_config, create_topic, unique_topic};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_and_sandbox_consumers_split_a_topic() {
    let topic = unique_topic("smoke");
    create_topic(&topic, 3).await;
    let directory = MemoryDirectory::new();
    let created = SystemTime::now() - Duration::from_secs(60);
    let mut entry = SandboxEntry::new("smoke-a".parse().unwrap())
        .fork("billing", "http://fork".parse().expect("a fork address"));
    entry.created_at = Some(created);
    directory.upsert(entry);

    let producer: FutureProducer = client_config().create().unwrap();
    for i in 0..20u32 {
        let payload = i.to_string();
        let send = async {
            let record = FutureRecord::<str, str>::to(&topic)
                .key(&payload)
                .payload(&payload)
                .with_sandbox_context()
                .unwrap();
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap();
        };
        if i.is_multiple_of(2) {
            send.in_sandbox(Sandbox::new("smoke-a".parse().unwrap()))
                .await;
        } else {
            send.await;
        }
    }

    // (consumer:payload, sandbox seen by the handler, whether it ran in a prodbox scope)
    type Seen = Vec<(String, Option<String>, bool)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut runs = Vec::new();
    for (name, role) in [
        ("baseline", Role::baseline("billing")),
        ("sandbox", Role::sandbox("smoke-a".parse().unwrap())),
    ] {
        let consumer = SandboxConsumer::builder(client_config(), &format!("{topic}-billing"), role)
            .directory(directory.clone())
            .start(&[&topic])
            .await
            .unwrap();
        let seen = Arc::clone(&seen);
        runs.push(tokio::spawn(async move {
            let deadline = tokio::time::sleep(Duration::from_secs(20));
            consumer
                .run(
                    move |message: &rdkafka::message::BorrowedMessage<'_>| {
                        let seen = Arc::clone(&seen);
                        // Borrowed: read before the `async` block.
                        let payload =
                            String::from_utf8_lossy(message.payload().unwrap_or_default())
                                .into_owned();
                        async move {
                            seen.lock().unwrap().push((
                                format!("{name}:{payload}"),
                                prodbox_core::current().map(|s| s.key().to_string()),
                                prodbox_core::in_scope(),
                            ));
                            Ok::<_, std::convert::Infallible>(())
                        }
                    },
                    deadline,
                )
                .await
                .unwrap();
        }));
    }
    let start = std::time::Instant::now();
    while seen.lock().unwrap().len() < 20 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    println!("{seen:?}");
    assert_eq!(seen.len(), 20, "{seen:?}");
    for (who, sandbox, scoped) in &seen {
        // Production messages too: a pool that requires a scope serves their handlers.
        assert!(scoped, "{who} ran in no scope");
        let n: u32 = who.split(':').nth(1).unwrap().parse().unwrap();
        if n.is_multiple_of(2) {
            assert!(who.starts_with("sandbox:"), "{who}");
            assert_eq!(sandbox.as_deref(), Some("smoke-a"));
        } else {
            assert!(who.starts_with("baseline:"), "{who}");
            assert_eq!(sandbox, &None);
        }
    }
    for run in runs {
        run.abort();
    }
}
