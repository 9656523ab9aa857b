//! A sandbox's Redis objects are made on first use and deleted with it (teardown; garbage
//! collection is `gc.rs`), and recovery when its user vanishes under a live connection
//! (as after a Redis restart).

mod common;

use common::{handle, in_sandbox, keys_under, raw, sandbox, user_exists};
use prodbox_redis::SandboxRedisError;
use redis::AsyncCommands;

#[tokio::test]
async fn first_use_makes_the_user_and_teardown_leaves_nothing() {
    let redis = handle().await;
    let s = sandbox("life");
    assert!(!user_exists(s.key()).await);
    assert_eq!(redis.active_sandboxes(), 0);
    in_sandbox(&s, async {
        let mut r = redis.clone();
        for i in 0..2500 {
            let () = r.set(format!("k{i}"), i).await.expect("SET");
        }
    })
    .await;
    assert!(user_exists(s.key()).await);
    assert_eq!(redis.active_sandboxes(), 1);
    let prefix = prodbox_redis::names::prefix(s.key());
    assert_eq!(keys_under(&prefix).await.len(), 2500);

    let done = redis.teardown(s.key()).await.expect("teardown");
    assert_eq!((done.keys, done.user), (2500, true));
    assert!(keys_under(&prefix).await.is_empty());
    assert!(!user_exists(s.key()).await);
    assert_eq!(redis.active_sandboxes(), 0);
    // Again: nothing left to delete.
    let again = redis.teardown(s.key()).await.expect("teardown");
    assert_eq!((again.keys, again.user), (0, false));
}

/// The user deleted and its connections killed under a live handle (what a Redis restart does
/// to users that are not in an ACL file): the failed command is an error, never run
/// elsewhere, and the next one makes the user again.
#[tokio::test]
async fn a_vanished_user_is_made_again_on_the_next_command() {
    let redis = handle().await;
    let s = sandbox("restart");
    in_sandbox(&s, async {
        let () = redis.clone().set("k", "before").await.expect("SET");
    })
    .await;
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(prodbox_redis::names::user(s.key()))
        .query_async(&mut raw().await)
        .await
        .expect("DELUSER");
    let mut recovered = false;
    for _ in 0..3 {
        let result: redis::RedisResult<String> =
            in_sandbox(&s, async { redis.clone().get("k").await }).await;
        match result {
            Ok(value) => {
                assert_eq!(value, "before");
                recovered = true;
                break;
            }
            Err(error) => assert!(
                SandboxRedisError::of(&error).is_none() || error.is_io_error(),
                "{error}"
            ),
        }
    }
    assert!(recovered, "the sandbox works again");
    assert!(user_exists(s.key()).await);
    redis.teardown(s.key()).await.expect("teardown");
}

/// Two replicas with the same secret share one sandbox: each makes the user on its first use
/// (the same rules, the same password), and neither breaks the other's connection.
#[tokio::test]
async fn replicas_sharing_the_secret_share_a_sandbox() {
    let (a, b) = (handle().await, handle().await);
    let s = sandbox("replicas");
    for round in 0..5 {
        for (name, replica) in [("a", &a), ("b", &b)] {
            let value = format!("{name}{round}");
            in_sandbox(&s, async {
                let () = replica.clone().set("shared", &value).await.expect("SET");
                let read: String = replica.clone().get("shared").await.expect("GET");
                assert_eq!(read, value);
            })
            .await;
        }
    }
    a.teardown(s.key()).await.expect("teardown");
}

/// Past `max_active_sandboxes`, the least recently used sandbox's connection is closed; its
/// next command opens a new one.
#[tokio::test]
async fn active_sandboxes_are_bounded() {
    let redis = prodbox_redis::SandboxRedis::builder(common::client(), common::SECRET)
        .max_active_sandboxes(3)
        .build()
        .await
        .expect("handle");
    let sandboxes: Vec<_> = (0..6).map(|_| sandbox("bounded")).collect();
    for s in &sandboxes {
        in_sandbox(s, async {
            let () = redis.clone().set("k", 1).await.expect("SET");
        })
        .await;
        assert!(redis.active_sandboxes() <= 3);
    }
    for s in &sandboxes {
        let read: i64 = in_sandbox(s, async { redis.clone().get("k").await })
            .await
            .expect("GET after eviction");
        assert_eq!(read, 1);
        redis.teardown(s.key()).await.expect("teardown");
    }
}

/// A handle on another database: the sandbox's user may select only that one, and its keys
/// land there.
#[tokio::test]
async fn a_handle_on_another_database_keeps_its_sandboxes_there() {
    let client = redis::Client::open("redis://127.0.0.1:6379/3").expect("url");
    let redis = prodbox_redis::SandboxRedis::builder(client.clone(), common::SECRET)
        .build()
        .await
        .expect("handle");
    let s = sandbox("db3");
    in_sandbox(&s, async {
        let () = redis.clone().set("k", "three").await.expect("SET");
    })
    .await;
    let mut db3 = client
        .get_multiplexed_async_connection()
        .await
        .expect("db 3");
    let key = format!("{}k", prodbox_redis::names::prefix(s.key()));
    let value: String = db3.get(&key).await.expect("GET");
    assert_eq!(value, "three");
    let in_db0: Option<String> = raw().await.get(&key).await.expect("GET");
    assert_eq!(in_db0, None);
    let mut direct = common::as_user(s.key()).await.expect("log in");
    for db in ["0", "4"] {
        let error = redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut direct)
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Some("NOPERM"), "SELECT {db}: {error}");
    }
    // Teardown deletes where the keys are: through a manager on the same database.
    prodbox_redis::teardown(&mut db3, s.key())
        .await
        .expect("teardown");
    let gone: Option<String> = db3.get(&key).await.expect("GET");
    assert_eq!(gone, None);
}

#[tokio::test]
async fn a_short_secret_is_refused() {
    let error = prodbox_redis::SandboxRedis::builder(common::client(), b"short".to_vec())
        .build()
        .await
        .expect_err("refused");
    assert_eq!(
        error.kind(),
        redis::ErrorKind::InvalidClientConfig,
        "{error}"
    );
}
