//! A consumer pauses while its directory is stale, committing nothing, and resumes when it is
//! fresh again.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    Log, Out, Running, committed, consumer_config, eventually, produce, producer, recorder,
};
use prodbox_core::SandboxKey;
use prodbox_core::directory::{Directory, MemoryDirectory, SandboxEntry};
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::kafka::{create_topic, unique_topic};

/// A directory whose freshness the test switches.
#[derive(Clone, Default)]
struct Switchable {
    entries: MemoryDirectory,
    stale: Arc<AtomicBool>,
}

impl Directory for Switchable {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        self.entries.get(key)
    }
    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        self.entries.entries()
    }
    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_directory_pauses_consumption_without_committing() {
    let topic = unique_topic("stale");
    create_topic(&topic, 1).await;
    let directory = Switchable::default();
    directory.stale.store(true, Ordering::SeqCst);
    let group = format!("{topic}-billing");

    let records: Vec<Out> = (0..10).map(|i| Out::new(format!("m{i}"))).collect();
    produce(&producer(), &topic, &records).await;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory.clone())
        .start(&[&topic])
        .await
        .expect("start");
    let log: Log = Arc::default();
    let running = Running::spawn(consumer, recorder(&log, "baseline"));

    // Long enough to fetch and (were it not paused) handle and commit everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing handled while stale"
    );
    assert_eq!(
        committed(&group, &topic, 1).await[&0],
        -1,
        "nothing committed while stale"
    );

    directory.stale.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || log.lock().unwrap().len() == 10).await,
        "every message handled once fresh: {:?}",
        log.lock().unwrap()
    );
    running.stop().await;
    assert_eq!(committed(&group, &topic, 1).await[&0], 10);
}
