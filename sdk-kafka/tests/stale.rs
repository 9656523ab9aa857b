//! While its directory is stale, a consumer holds a sandbox's messages (committing nothing
//! past them) and resumes when it is fresh again; production messages before them go on.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Log, Out, Running, committed, consumer_config, eventually, produce, producer, recorder,
    unbatched_producer,
};
use prodbox_core::Sandbox;
use prodbox_kafka::{Role, SandboxConsumer};
use prodbox_testkit::directory::Switchable;
use prodbox_testkit::kafka::{create_topic, unique_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_directory_holds_sandbox_messages_not_production_ones() {
    let topic = unique_topic("stale");
    create_topic(&topic, 1).await;
    let directory = Switchable::default();
    directory.set_stale(true);
    let group = format!("{topic}-billing");

    // Five production messages, then a sandbox's, then five more production ones.
    let mut records: Vec<Out> = (0..5).map(|i| Out::new(format!("m{i}"))).collect();
    records.push(Out::new("tagged").sandbox(Some(Sandbox::new("st-a".parse().unwrap()))));
    records.extend((5..10).map(|i| Out::new(format!("m{i}"))));
    produce(&producer(), &topic, &records).await;

    let consumer = SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
        .directory(directory.clone())
        .start(&[&topic])
        .await
        .expect("start");
    let log: Log = Arc::default();
    let running = Running::spawn(consumer, recorder(&log, "baseline"));

    // The messages before the sandbox's are handled; the partition waits at the sandbox's.
    assert!(
        eventually(Duration::from_secs(20), || log.lock().unwrap().len() == 5).await,
        "production messages go on while stale: {:?}",
        log.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log.lock().unwrap().len(),
        5,
        "held at the sandbox's message"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            committed_now(&group, &topic) <= 5
        })
        .await
    );

    directory.set_stale(false);
    assert!(
        eventually(Duration::from_secs(20), || log.lock().unwrap().len() == 11).await,
        "every message handled once fresh: {:?}",
        log.lock().unwrap()
    );
    let tagged: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, payload, _)| payload == "tagged")
        .map(|(_, _, sandbox)| sandbox.clone())
        .collect();
    assert_eq!(tagged, vec![Some("st-a".to_owned())]);
    running.stop().await;
    assert_eq!(committed(&group, &topic, 1).await[&0], 11);
}

/// The group's committed offset on partition 0, read synchronously for `eventually`.
fn committed_now(group: &str, topic: &str) -> i64 {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| runtime.block_on(committed(group, topic, 1)))[&0]
}

/// Shut down while holding a sandbox's message, the consumer rewinds to it: the next run of
/// the same consumer starts with that message, and nothing is committed past it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_at_shutdown_comes_first_in_the_next_run() {
    let topic = unique_topic("stale-rerun");
    create_topic(&topic, 1).await;
    let directory = Switchable::default();
    directory.set_stale(true);
    let group = format!("{topic}-billing");
    let mut records: Vec<Out> = (0..3).map(|i| Out::new(format!("m{i}"))).collect();
    records.push(Out::new("tagged").sandbox(Some(Sandbox::new("st-b".parse().unwrap()))));
    records.extend((3..6).map(|i| Out::new(format!("m{i}"))));
    // One record per batch: tansu 0.6 cannot fetch from inside a batch (see `common`).
    produce(&unbatched_producer(), &topic, &records).await;

    let consumer = Arc::new(
        SandboxConsumer::builder(consumer_config(), &group, Role::baseline("billing"))
            .directory(directory.clone())
            .start(&[&topic])
            .await
            .expect("start"),
    );
    let log: Log = Arc::default();
    let run = |consumer: Arc<SandboxConsumer>, log: Log| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut record = recorder(&log, "baseline");
        let task = tokio::spawn(async move {
            consumer
                .run(move |message| record(message.detach()), async move {
                    let _ = stopped.await;
                })
                .await
        });
        (stop, task)
    };

    let (stop, first) = run(Arc::clone(&consumer), Arc::clone(&log));
    assert!(eventually(Duration::from_secs(20), || log.lock().unwrap().len() == 3).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(committed(&group, &topic, 1).await[&0], 3);

    directory.set_stale(false);
    let (stop, second) = run(Arc::clone(&consumer), Arc::clone(&log));
    assert!(
        eventually(Duration::from_secs(20), || log.lock().unwrap().len() == 7).await,
        "every message handled, the held one included: {:?}",
        log.lock().unwrap()
    );
    stop.send(()).unwrap();
    second.await.unwrap().unwrap();
    let payloads: Vec<String> = log.lock().unwrap().iter().map(|e| e.1.clone()).collect();
    assert_eq!(payloads, ["m0", "m1", "m2", "tagged", "m3", "m4", "m5"]);
    assert_eq!(committed(&group, &topic, 1).await[&0], 7);
}
