//! Garbage collection by the directory. Its own test binary, and one test: it deletes every
//! sandbox in this Redis that its directory lacks, so no other test may have sandboxes while
//! it runs (cargo runs test binaries one after another).

mod common;

use std::time::{Duration, SystemTime};

use common::{handle, in_sandbox, keys_under, raw, sandbox, user_exists};
use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
use prodbox_redis::collect_garbage;
use redis::AsyncCommands;

#[tokio::test]
async fn garbage_collection_deletes_only_sandboxes_the_directory_no_longer_has() {
    // Before anything of prodbox runs: its instruments are made on first use.
    let metrics = prodbox_testkit::metrics::Metrics::global();
    let deleted =
        |item: &str| metrics.sum("prodbox.redis.cleanup", &[("prodbox.redis.item", item)]);
    // A directory that has not synced deletes nothing.
    let unsynced = prodbox_testkit::directory::Switchable::stale(MemoryDirectory::new());
    let before = prodbox_redis::sandboxes(&mut raw().await)
        .await
        .expect("list");
    collect_garbage(&mut raw().await, &unsynced, SystemTime::now())
        .await
        .expect_err("refused");
    assert_eq!(
        prodbox_redis::sandboxes(&mut raw().await)
            .await
            .expect("list"),
        before
    );

    let redis = handle().await;
    let (live, gone, expired) = (
        sandbox("gc-live"),
        sandbox("gc-gone"),
        sandbox("gc-expired"),
    );
    for s in [&live, &gone, &expired] {
        in_sandbox(s, async {
            let () = redis.clone().set("k", 1).await.expect("SET");
        })
        .await;
    }
    // Keys of a sandbox whose user is gone (made by a replica, say) are found too.
    let orphan = common::key(&common::unique("gc-orphan"));
    let () = raw()
        .await
        .set(format!("{}k", prodbox_redis::names::prefix(&orphan)), 1)
        .await
        .expect("SET");

    let directory = MemoryDirectory::new();
    directory.upsert(SandboxEntry::new(live.key().clone()));
    let mut old = SandboxEntry::new(expired.key().clone());
    old.expires_at = Some(SystemTime::now() - Duration::from_secs(1));
    directory.upsert(old);
    let torn = collect_garbage(&mut raw().await, &directory, SystemTime::now())
        .await
        .expect("gc");
    let torn: Vec<_> = torn.into_iter().map(|(k, t)| (k, t.keys, t.user)).collect();
    for (s, user) in [(gone.key(), true), (expired.key(), true), (&orphan, false)] {
        assert!(torn.contains(&(s.clone(), 1, user)), "{s} in {torn:?}");
        assert!(!user_exists(s).await);
    }
    assert!(!torn.iter().any(|(k, ..)| k == live.key()));
    // Counted: the keys and users of the three, and of any sandbox an earlier run left.
    assert!(deleted("key") >= 3, "{}", deleted("key"));
    assert!(deleted("user") >= 2, "{}", deleted("user"));
    assert!(user_exists(live.key()).await);
    assert_eq!(
        keys_under(&prodbox_redis::names::prefix(live.key()))
            .await
            .len(),
        1
    );

    // The janitor does the same on a schedule: a sandbox deleted from the directory loses its
    // objects within an interval; the live one keeps them.
    let _janitor = redis.start_janitor(directory.clone(), Duration::from_millis(100));
    let late = sandbox("gc-late");
    directory.upsert(SandboxEntry::new(late.key().clone()));
    in_sandbox(&late, async {
        let () = redis.clone().set("k", 1).await.expect("SET");
    })
    .await;
    directory.remove(late.key());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while user_exists(late.key()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the janitor left {}",
            late.key()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        keys_under(&prodbox_redis::names::prefix(late.key()))
            .await
            .is_empty()
    );
    assert!(user_exists(live.key()).await);
    redis.teardown(live.key()).await.expect("teardown");
}
