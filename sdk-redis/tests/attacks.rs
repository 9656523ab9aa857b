//! Attacks found by a hostile review of prodbox-redis, kept as regression tests: each ran
//! against production before its fix. Production keys and sandboxes start with `rev-`.

mod common;

use common::{client, handle, in_sandbox, raw, unique, user_exists};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_redis::{SandboxRedis, SandboxRedisError};
use redis::AsyncCommands;

fn rev_sandbox(what: &str) -> Sandbox {
    Sandbox::new(common::key(&unique(&format!("rev-{what}"))))
}

async fn q(redis: &SandboxRedis, s: &Sandbox, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let mut r = redis.clone();
    in_sandbox(s, async move { cmd.query_async(&mut r).await }).await
}

/// Which refusal `result` is: `refused` (prodbox's), `noperm` (Redis's), `unmapped`,
/// `torn_down`, `no_scope`, `ok`, or `error` (another, on the sandbox's own keys).
fn outcome(result: &redis::RedisResult<redis::Value>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => match SandboxRedisError::of(e) {
            Some(SandboxRedisError::Refused { .. }) => "refused",
            Some(SandboxRedisError::ServerRefused { .. }) => "noperm",
            Some(SandboxRedisError::Unmapped { .. }) => "unmapped",
            Some(SandboxRedisError::TornDown { .. }) => "torn_down",
            Some(SandboxRedisError::NoScope) => "no_scope",
            _ => "error",
        },
    }
}

async fn production_key(what: &str) -> String {
    let key = format!("{}:user:42", unique(&format!("rev-{what}")));
    let () = raw().await.set(&key, "real customer").await.expect("seed");
    key
}

async fn assert_untouched(key: &str) {
    let mut prod = raw().await;
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut prod)
        .await
        .expect("TYPE");
    let value: Option<String> = if kind == "string" {
        prod.get(key).await.expect("GET")
    } else {
        None
    };
    let _: i64 = prod.del(key).await.expect("cleanup");
    assert_eq!(
        value.as_deref(),
        Some("real customer"),
        "{key} is now a {kind}"
    );
}

/// GEORADIUS ... STORE <ns> STORE <production>: Redis 7.0's key spec (and ACL check) sees the
/// first STORE, the command stores into the last. Refused by prodbox, and to the user (scripts).
#[tokio::test]
async fn georadius_with_a_second_store_never_writes_production() {
    let redis = handle().await;
    let s = rev_sandbox("geo");
    let victim = production_key("geo").await;
    let _ = q(
        &redis,
        &s,
        &["GEOADD", "src", "13.361389", "38.115556", "Palermo"],
    )
    .await;
    let direct = q(
        &redis,
        &s,
        &[
            "GEORADIUS",
            "src",
            "15",
            "37",
            "200",
            "km",
            "STORE",
            "mine",
            "STORE",
            &victim,
        ],
    )
    .await;
    assert_eq!(outcome(&direct), "refused");
    let by_member = q(
        &redis,
        &s,
        &[
            "GEORADIUSBYMEMBER",
            "src",
            "Palermo",
            "10",
            "km",
            "STOREDIST",
            "mine",
            "STOREDIST",
            &victim,
        ],
    )
    .await;
    assert_eq!(outcome(&by_member), "refused");
    let script = "return redis.call('GEORADIUS', KEYS[1], 15, 37, 200, 'km', 'STORE', KEYS[2], 'STORE', ARGV[1])";
    let scripted = q(&redis, &s, &["EVAL", script, "2", "src", "mine", &victim]).await;
    assert_eq!(outcome(&scripted), "noperm");
    // GEOSEARCHSTORE, its successor, stays inside.
    let search = q(
        &redis,
        &s,
        &[
            "GEOSEARCHSTORE",
            "mine",
            "src",
            "FROMLONLAT",
            "15",
            "37",
            "BYRADIUS",
            "200",
            "km",
        ],
    )
    .await;
    assert_eq!(outcome(&search), "ok");
    redis.teardown(s.key()).await.expect("teardown");
    assert_untouched(&victim).await;
}

/// A script runs as the sandbox's user: it may not run SCAN, PUBSUB CHANNELS/NUMSUB or COPY,
/// whose confinement is the handle's rewrite alone (the handle runs them over the manager).
#[tokio::test]
async fn scripts_cannot_list_production_or_copy_out_of_the_database() {
    let redis = handle().await;
    let s = rev_sandbox("scripts");
    let secret = production_key("scanvictim").await;
    let channel = format!("{}:orders", unique("rev-chanvictim"));
    let mut sub = client().get_async_pubsub().await.expect("pubsub");
    sub.subscribe(&channel).await.expect("subscribe");
    let scan = "return redis.call('SCAN', '0', 'MATCH', ARGV[1], 'COUNT', 100000)";
    for args in [
        vec!["EVAL", scan, "0", "rev-scanvictim*"],
        vec![
            "EVAL",
            "return redis.call('PUBSUB', 'CHANNELS', ARGV[1])",
            "0",
            "rev-chanvictim*",
        ],
        vec![
            "EVAL",
            "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])",
            "0",
            &channel,
        ],
        vec![
            "EVAL",
            "return redis.call('COPY', KEYS[1], KEYS[2], 'DB', '9', 'REPLACE')",
            "2",
            "mine",
            "mine",
        ],
    ] {
        let result = q(&redis, &s, &args).await;
        assert_eq!(outcome(&result), "noperm", "{args:?}: {result:?}");
    }
    // The same through the handle: namespaced, over the manager's connection.
    let () = in_sandbox(&s, async { redis.clone().set("mine", 1).await })
        .await
        .expect("SET");
    let copied = q(&redis, &s, &["COPY", "mine", "theirs"]).await;
    assert_eq!(outcome(&copied), "ok");
    let numsub = q(&redis, &s, &["PUBSUB", "NUMSUB", &channel])
        .await
        .expect("NUMSUB");
    assert!(format!("{numsub:?}").contains("int(0)"), "{numsub:?}");
    drop(sub);
    redis.teardown(s.key()).await.expect("teardown");
    assert_untouched(&secret).await;
}

/// Scripts can be refused altogether: one runs to its end with the whole server waiting.
#[tokio::test]
async fn scripts_can_be_refused_to_sandboxes() {
    let redis = SandboxRedis::builder(client(), common::SECRET)
        .allow_scripts(false)
        .build()
        .await
        .expect("handle");
    let s = rev_sandbox("noscripts");
    for args in [
        vec!["EVAL", "return 1", "0"],
        vec!["SCRIPT", "LOAD", "return 1"],
        vec!["FCALL", "f", "0"],
    ] {
        assert_eq!(outcome(&q(&redis, &s, &args).await), "refused", "{args:?}");
    }
    assert_eq!(outcome(&q(&redis, &s, &["SET", "k", "v"]).await), "ok");
    redis.teardown(s.key()).await.expect("teardown");
}

/// numkeys = usize::MAX: refused, not a panic in the request's task.
#[tokio::test]
async fn a_huge_number_of_keys_is_refused_not_a_panic() {
    let redis = handle().await;
    let s = rev_sandbox("numkeys");
    for args in [
        vec!["EVAL", "return 1", "18446744073709551615", "a", "b"],
        vec!["ZUNIONSTORE", "d", "18446744073709551615", "a", "b"],
        vec!["LMPOP", "18446744073709551615", "a", "LEFT"],
        vec!["EVAL", "return 1", "9223372036854775807", "a"],
    ] {
        let (r, s2) = (redis.clone(), s.clone());
        let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let joined = tokio::spawn(async move {
            let views: Vec<&str> = owned.iter().map(String::as_str).collect();
            outcome(&q(&r, &s2, &views).await)
        })
        .await
        .unwrap_or_else(|panic| panic!("{args:?} panicked: {panic}"));
        assert_eq!(joined, "unmapped", "{args:?}");
    }
    redis.teardown(s.key()).await.expect("teardown");
}

/// With `require_scope`, work that lost its request's context (`tokio::spawn`, a future made
/// in a sandbox and awaited elsewhere) is refused instead of running as production.
#[tokio::test]
async fn lost_context_is_refused_with_require_scope() {
    let redis = SandboxRedis::builder(client(), common::SECRET)
        .require_scope(true)
        .build()
        .await
        .expect("handle");
    let s = rev_sandbox("spawn");
    let victim = production_key("spawnvictim").await;
    let (r, v) = (redis.clone(), victim.clone());
    let spawned = async move {
        tokio::spawn(async move { r.clone().set::<_, _, ()>(&v, "written by a sandbox").await })
            .await
            .expect("task")
    }
    .in_sandbox(s.clone())
    .await;
    let error = spawned.expect_err("refused");
    assert!(
        matches!(
            SandboxRedisError::of(&error),
            Some(SandboxRedisError::NoScope)
        ),
        "{error}"
    );
    // A future made inside the sandbox, awaited outside any scope.
    let mut r = redis.clone();
    let made_inside = {
        let _guard = prodbox_core::context::SandboxContext::new(s.clone())
            .attach_to(&opentelemetry::Context::current())
            .attach();
        r.set::<_, _, ()>(&victim, "written by a sandbox")
    };
    let error = made_inside.await.expect_err("refused");
    assert!(
        matches!(
            SandboxRedisError::of(&error),
            Some(SandboxRedisError::NoScope)
        ),
        "{error}"
    );
    // Carried work and production's own scoped work still run.
    let carried = async {
        let r = redis.clone();
        prodbox_core::spawn(async move { r.clone().set::<_, _, ()>("k", 1).await })
            .await
            .expect("task")
    }
    .in_sandbox(s.clone())
    .await;
    assert!(carried.is_ok(), "{carried:?}");
    let own: redis::RedisResult<Option<String>> = async { redis.clone().get(&victim).await }
        .in_production()
        .await;
    assert_eq!(
        own.expect("production's read").as_deref(),
        Some("real customer")
    );
    redis.teardown(s.key()).await.expect("teardown");
    assert_untouched(&victim).await;
}

/// After teardown, a replica still serving the sandbox does not make its user and keys again;
/// a newer incarnation of the same key does.
#[tokio::test]
async fn a_torn_down_sandbox_is_not_made_again() {
    let (redis, other) = (handle().await, handle().await);
    let s = rev_sandbox("zombie");
    assert_eq!(outcome(&q(&redis, &s, &["SET", "k", "1"]).await), "ok");
    assert_eq!(outcome(&q(&other, &s, &["SET", "k2", "1"]).await), "ok");
    redis.teardown(s.key()).await.expect("teardown");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(outcome(&q(&other, &s, &["SET", "k3", "1"]).await));
    }
    assert!(seen.contains(&"torn_down"), "{seen:?}");
    assert!(!seen.contains(&"ok"), "{seen:?}");
    assert!(!user_exists(s.key()).await);
    assert!(
        common::keys_under(&prodbox_redis::names::prefix(s.key()))
            .await
            .is_empty()
    );
    // A new incarnation (created after the teardown) is a new sandbox.
    let newer = Sandbox::builder(s.key().as_str())
        .expect("key")
        .created_at(std::time::SystemTime::now() + std::time::Duration::from_secs(1))
        .build();
    assert_eq!(outcome(&q(&other, &newer, &["SET", "k", "1"]).await), "ok");
    redis.teardown(s.key()).await.expect("teardown");
}

/// MULTI alone would leave the sandbox's shared connection in a transaction: refused; an
/// atomic pipeline is the way.
#[tokio::test]
async fn a_lone_multi_is_refused() {
    let redis = handle().await;
    let s = rev_sandbox("multi");
    assert_eq!(outcome(&q(&redis, &s, &["SET", "k", "v"]).await), "ok");
    for cmd in ["MULTI", "EXEC", "DISCARD", "WATCH"] {
        let args = if cmd == "WATCH" {
            vec![cmd, "k"]
        } else {
            vec![cmd]
        };
        assert_eq!(outcome(&q(&redis, &s, &args).await), "refused", "{cmd}");
    }
    let got = q(&redis, &s, &["GET", "k"]).await.expect("GET");
    assert_eq!(got, redis::Value::BulkString(b"v".to_vec()));
    let mut r = redis.clone();
    let (a, b): (String, String) = in_sandbox(&s, async {
        redis::pipe()
            .atomic()
            .set("a", "1")
            .ignore()
            .get("k")
            .get("a")
            .query_async(&mut r)
            .await
    })
    .await
    .expect("atomic pipeline");
    assert_eq!((a.as_str(), b.as_str()), ("v", "1"));
    redis.teardown(s.key()).await.expect("teardown");
}

/// SCRIPT EXISTS (which scripts production loaded) and RESTORE (a payload Redis may not check)
/// are refused.
#[tokio::test]
async fn script_exists_and_restore_are_refused() {
    let redis = handle().await;
    let s = rev_sandbox("minor");
    assert_eq!(
        outcome(
            &q(
                &redis,
                &s,
                &[
                    "SCRIPT",
                    "EXISTS",
                    "0123456789abcdef0123456789abcdef01234567"
                ]
            )
            .await
        ),
        "refused"
    );
    assert_eq!(outcome(&q(&redis, &s, &["SET", "src", "v"]).await), "ok");
    let dump = in_sandbox(&s, async {
        let mut r = redis.clone();
        redis::cmd("DUMP")
            .arg("src")
            .query_async::<Vec<u8>>(&mut r)
            .await
    })
    .await
    .expect("DUMP");
    let mut restore = redis::cmd("RESTORE");
    restore.arg("dst").arg(0).arg(dump);
    let mut r = redis.clone();
    let restored = in_sandbox(&s, async move {
        restore.query_async::<redis::Value>(&mut r).await
    })
    .await;
    assert_eq!(outcome(&restored), "refused");
    redis.teardown(s.key()).await.expect("teardown");
}

// Found by a second review.

/// A manager on another database would list, copy and tear down in the wrong one: refused.
#[tokio::test]
async fn a_manager_on_another_database_is_refused() {
    let error = SandboxRedis::builder(
        redis::Client::open("redis://127.0.0.1:6379/9").expect("url"),
        common::SECRET,
    )
    .manager(client())
    .build()
    .await
    .expect_err("refused");
    assert_eq!(
        error.kind(),
        redis::ErrorKind::InvalidClientConfig,
        "{error}"
    );
}

/// SCAN's COUNT is the manager's work over production's keyspace: clamped to one step of
/// 1000, so a sandbox's SCAN never walks everything in one call.
#[tokio::test]
async fn a_sandboxs_scan_walks_at_most_a_thousand_keys_per_call() {
    let redis = handle().await;
    let s = rev_sandbox("count");
    let mut r = redis.clone();
    in_sandbox(&s, async {
        let mut pipe = redis::pipe();
        for i in 0..1500 {
            pipe.set(format!("k{i}"), i).ignore();
        }
        pipe.query_async::<()>(&mut r).await
    })
    .await
    .expect("seed");
    let reply = q(&redis, &s, &["SCAN", "0", "COUNT", "1000000000"])
        .await
        .expect("SCAN");
    let redis::Value::Array(parts) = reply else {
        panic!("{reply:?}")
    };
    assert_ne!(
        parts[0],
        redis::Value::BulkString(b"0".to_vec()),
        "walked the whole keyspace in one call"
    );
    assert_eq!(
        outcome(&q(&redis, &s, &["SCAN", "0", "COUNT", "many"]).await),
        "refused"
    );
    redis.teardown(s.key()).await.expect("teardown");
}

/// Long glob patterns crash Redis before 7.2.6 (CVE-2024-31228): refused wherever a sandbox
/// can send one.
#[tokio::test]
async fn long_glob_patterns_are_refused() {
    let redis = handle().await;
    let s = rev_sandbox("glob");
    let pattern = "a*".repeat(200) + "b";
    for args in [
        vec!["KEYS", pattern.as_str()],
        vec!["SCAN", "0", "MATCH", &pattern],
        vec!["HSCAN", "h", "0", "MATCH", &pattern],
        vec!["SSCAN", "s", "0", "match", &pattern],
        vec!["ZSCAN", "z", "0", "MATCH", &pattern],
        vec!["PUBSUB", "CHANNELS", &pattern],
    ] {
        assert_eq!(
            outcome(&q(&redis, &s, &args).await),
            "refused",
            "{}",
            args[0]
        );
    }
    let error = in_sandbox(&s, async {
        let mut sub = redis.pubsub().await.expect("pubsub");
        sub.psubscribe(&pattern).await
    })
    .await
    .expect_err("refused");
    assert!(
        matches!(
            SandboxRedisError::of(&error),
            Some(SandboxRedisError::Refused { .. })
        ),
        "{error}"
    );
    // A short pattern still works.
    assert_eq!(outcome(&q(&redis, &s, &["KEYS", "a*"]).await), "ok");
    redis.teardown(s.key()).await.expect("teardown");
}

/// A first command racing the sandbox's teardown on another replica never leaves the user
/// made again under the tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_racing_a_teardown_does_not_remake_the_sandbox() {
    let (a, b) = (handle().await, handle().await);
    for _ in 0..60 {
        let s = rev_sandbox("race");
        let _ = tokio::join!(q(&a, &s, &["SET", "k", "v"]), b.teardown(s.key()));
        assert!(!user_exists(s.key()).await, "{} was made again", s.key());
        // Whatever the first command left is gone with a second teardown.
        b.teardown(s.key()).await.expect("teardown");
    }
}
