//! A sandbox's keys are its own: through one application handle, sandboxes and production
//! interleave, each sees only its own keys, and production's are never touched.

mod common;

use std::collections::BTreeMap;

use common::{handle, in_sandbox, keys_under, raw, sandbox, sandbox_keys, setup, unique};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_redis::{SandboxRedis, SandboxRedisError};
use redis::AsyncCommands;

/// The keys one worker writes, under application names that every worker shares.
async fn work(mut redis: SandboxRedis, tag: String, base: String, rounds: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for round in 0..rounds {
        let value = format!("{tag}-{round}");
        let () = redis
            .set(format!("{base}:user"), &value)
            .await
            .expect("SET");
        let _: i64 = redis.incr(format!("{base}:count"), 1).await.expect("INCR");
        let () = redis
            .hset(format!("{base}:hash"), "owner", &value)
            .await
            .expect("HSET");
        let _: i64 = redis
            .rpush(format!("{base}:list"), &value)
            .await
            .expect("RPUSH");
        let () = redis::pipe()
            .atomic()
            .set(format!("{base}:a"), &value)
            .set(format!("{base}:b"), &value)
            .query_async(&mut redis)
            .await
            .expect("MULTI/EXEC");
        let (a, b): (String, String) = redis
            .mget(&[format!("{base}:a"), format!("{base}:b")])
            .await
            .expect("MGET");
        let user: String = redis.get(format!("{base}:user")).await.expect("GET");
        assert_eq!(
            (a.as_str(), b.as_str(), user.as_str()),
            (value.as_str(), value.as_str(), value.as_str()),
            "{tag} reads its own writes"
        );
        seen.push(user);
        tokio::task::yield_now().await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sandboxes_and_production_interleave_through_one_handle() {
    let redis = handle().await;
    let base = unique("shop");
    // Production's keys, under the same names the sandboxes use.
    let mut prod = raw().await;
    let () = prod
        .set(format!("{base}:user"), "production")
        .await
        .expect("seed");
    let () = prod
        .hset(format!("{base}:hash"), "owner", "production")
        .await
        .expect("seed");
    let production_before = snapshot(&base).await;

    let sandboxes: Vec<Sandbox> = (0..20).map(|_| sandbox("iso")).collect();
    let rounds = 15;
    let mut tasks = Vec::new();
    for (i, s) in sandboxes.iter().enumerate() {
        let work = work(redis.clone(), format!("sbx{i}"), base.clone(), rounds);
        tasks.push(tokio::spawn(work.in_sandbox(s.clone())));
        // Production traffic between the sandboxes', through the same handle.
        let mut baseline = redis.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut read = Vec::new();
            for _ in 0..rounds {
                let n: i64 = baseline
                    .incr(format!("{base}:traffic"), 1)
                    .await
                    .expect("INCR");
                let user: String = baseline.get(format!("{base}:user")).await.expect("GET");
                read.push(format!("{user}-{n}"));
            }
            read
        }));
    }
    let mut production_reads = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let seen = task.await.expect("task");
        if i % 2 == 0 {
            assert_eq!(seen.len(), rounds);
            assert!(
                seen.iter()
                    .all(|v| v.starts_with(&format!("sbx{}-", i / 2))),
                "{seen:?}"
            );
        } else {
            assert!(
                seen.iter().all(|v| v.starts_with("production-")),
                "{seen:?}"
            );
            production_reads += seen.len();
        }
    }
    assert_eq!(production_reads, 20 * rounds);
    // Production's reads through the handle see production's data.
    let mut baseline = redis.clone();
    let user: String = baseline.get(format!("{base}:user")).await.expect("GET");
    assert_eq!(user, "production");

    // Production's keys are exactly as they were, but for its own traffic's counter.
    let mut after = snapshot(&base).await;
    assert_eq!(
        after.remove(&format!("{base}:traffic")),
        Some((20 * rounds).to_string())
    );
    assert_eq!(after, production_before);
    // Each sandbox's keys are under its own prefix, with its own values.
    for (i, s) in sandboxes.iter().enumerate() {
        let prefix = prodbox_redis::names::prefix(s.key());
        let keys = keys_under(&format!("{prefix}{base}")).await;
        assert_eq!(keys.len(), 6, "{keys:?}");
        let user: String = prod.get(format!("{prefix}{base}:user")).await.expect("GET");
        assert_eq!(user, format!("sbx{i}-{}", rounds - 1));
        let count: i64 = prod
            .get(format!("{prefix}{base}:count"))
            .await
            .expect("GET");
        assert_eq!(count, rounds as i64);
        redis.teardown(s.key()).await.expect("teardown");
    }
    let _: i64 = prod
        .del(&[
            format!("{base}:user"),
            format!("{base}:hash"),
            format!("{base}:traffic"),
        ])
        .await
        .expect("cleanup");
}

/// Production's keys under `base`, with their values.
async fn snapshot(base: &str) -> BTreeMap<String, String> {
    let mut prod = raw().await;
    let mut all = BTreeMap::new();
    for key in keys_under(base).await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut prod)
            .await
            .expect("TYPE");
        let value = match kind.as_str() {
            "string" => prod.get(&key).await.expect("GET"),
            "hash" => format!(
                "{:?}",
                prod.hgetall::<_, BTreeMap<String, String>>(&key)
                    .await
                    .expect("HGETALL")
            ),
            other => other.to_owned(),
        };
        all.insert(key, value);
    }
    all
}

#[tokio::test]
async fn replies_name_keys_as_the_application_did() {
    let redis = handle().await;
    let s = sandbox("replies");
    let mut prod = raw().await;
    let base = unique("names");
    // A production key the sandbox's listings must never show.
    let () = prod
        .set(format!("{base}:prod-only"), "x")
        .await
        .expect("seed");
    in_sandbox(&s, async {
        let mut r = redis.clone();
        let () = r.set(format!("{base}:a"), 1).await.expect("SET");
        let () = r.set(format!("{base}:b"), 2).await.expect("SET");
        let _: i64 = r.rpush(format!("{base}:q"), "job").await.expect("RPUSH");

        let mut keys: Vec<String> = r.keys(format!("{base}:*")).await.expect("KEYS");
        keys.sort();
        assert_eq!(
            keys,
            [
                format!("{base}:a"),
                format!("{base}:b"),
                format!("{base}:q")
            ]
        );

        let mut scanned: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            // SCAN without MATCH: still only the sandbox's keys.
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .query_async(&mut r)
                .await
                .expect("SCAN");
            scanned.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        scanned.sort();
        assert_eq!(
            scanned, keys,
            "SCAN lists the sandbox's keys, without the prefix"
        );
        let dbsize: i64 = redis::cmd("DBSIZE")
            .query_async(&mut r)
            .await
            .expect("DBSIZE");
        assert_eq!(dbsize, 3);

        let popped: (String, String) = r.blpop(format!("{base}:q"), 1.0).await.expect("BLPOP");
        assert_eq!(popped, (format!("{base}:q"), "job".to_owned()));

        let id: String = r
            .xadd(format!("{base}:s"), "*", &[("f", "v")])
            .await
            .expect("XADD");
        let read: redis::Value = redis::cmd("XREAD")
            .arg("STREAMS")
            .arg(format!("{base}:s"))
            .arg("0")
            .query_async(&mut r)
            .await
            .expect("XREAD");
        let text = format!("{read:?}");
        assert!(text.contains(&id) && !text.contains("sbx:"), "{text}");

        let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("news")
            .query_async(&mut r)
            .await
            .expect("NUMSUB");
        assert_eq!(numsub, [("news".to_owned(), 0)]);
    })
    .await;
    redis.teardown(s.key()).await.expect("teardown");
    let _: i64 = prod
        .del(format!("{base}:prod-only"))
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_future_made_in_one_context_and_awaited_in_another_is_refused() {
    let (redis, s, base) = setup("moved").await;
    let mut r = redis.clone();
    let mut cmd = redis::cmd("SET");
    cmd.arg(format!("{base}:k")).arg("v");

    // Made in production, awaited in the sandbox.
    let made_outside = redis::aio::ConnectionLike::req_packed_command(&mut r, &cmd);
    let error = in_sandbox(&s, made_outside).await.expect_err("refused");
    assert!(
        matches!(
            SandboxRedisError::of(&error),
            Some(SandboxRedisError::ContextChanged { at_call: None, .. })
        ),
        "{error}"
    );

    // Made in the sandbox, awaited in production.
    let mut r2 = redis.clone();
    let made_inside = {
        let _guard = prodbox_core::context::SandboxContext::new(s.clone())
            .attach_to(&opentelemetry::Context::current())
            .attach();
        redis::aio::ConnectionLike::req_packed_command(&mut r2, &cmd)
    };
    let error = made_inside.await.expect_err("refused");
    assert!(
        matches!(
            SandboxRedisError::of(&error),
            Some(SandboxRedisError::ContextChanged {
                at_call: Some(_),
                at_poll: None
            })
        ),
        "{error}"
    );

    // Neither wrote anywhere.
    assert!(keys_under(&base).await.is_empty());
    assert!(sandbox_keys(&s, &base).await.is_empty());
    redis.teardown(s.key()).await.expect("teardown");
}

#[tokio::test]
async fn spawned_work_keeps_its_sandbox_only_when_carried() {
    let (redis, s, base) = setup("spawned").await;
    in_sandbox(&s, async {
        let mut carried = redis.clone();
        let k = format!("{base}:carried");
        prodbox_core::spawn(async move {
            let () = carried.set(k, "v").await.expect("SET");
        })
        .await
        .expect("task");
    })
    .await;
    let prefix = prodbox_redis::names::prefix(s.key());
    assert_eq!(
        keys_under(&format!("{prefix}{base}")).await,
        [format!("{prefix}{base}:carried")]
    );
    assert!(
        keys_under(&base).await.is_empty(),
        "nothing reached production"
    );
    redis.teardown(s.key()).await.expect("teardown");
}

#[tokio::test]
async fn a_pipeline_with_one_refused_command_sends_nothing() {
    let (redis, s, base) = setup("pipe").await;
    let error = in_sandbox(&s, async {
        let mut r = redis.clone();
        redis::pipe()
            .set(format!("{base}:first"), 1)
            .cmd("FLUSHALL")
            .query_async::<()>(&mut r)
            .await
            .expect_err("refused")
    })
    .await;
    assert!(
        matches!(SandboxRedisError::of(&error), Some(SandboxRedisError::Refused { command, .. }) if command == "flushall"),
        "{error}"
    );
    assert!(sandbox_keys(&s, &base).await.is_empty());
    redis.teardown(s.key()).await.expect("teardown");
}
