//! What a hostile or careless sandboxed request can do to production through Redis: each
//! command of the table in docs/SECURITY.md, run inside a sandbox through the application's
//! handle, and again (the server's own line) logged in as the sandbox's user directly, as a
//! rewrite that missed a key would be. Production's keys and channels stay as they were.

mod common;

use common::{as_user, handle, in_sandbox, raw, sandbox, setup, unique};
use prodbox_core::Sandbox;
use prodbox_redis::{SandboxRedis, SandboxRedisError};
use redis::AsyncCommands;

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// prodbox refused it before sending (typed `Refused`).
    Refused,
    /// Redis refused it to the sandbox's user (typed `ServerRefused`, or `NOPERM` on a direct
    /// connection).
    Noperm,
    /// It ran, on the sandbox's own keys or channels only.
    Confined,
}

async fn run(redis: &SandboxRedis, s: &Sandbox, args: &[String]) -> (Outcome, String) {
    let mut cmd = redis::cmd(&args[0]);
    for arg in &args[1..] {
        cmd.arg(arg);
    }
    let mut r = redis.clone();
    let result: redis::RedisResult<redis::Value> = in_sandbox(s, cmd.query_async(&mut r)).await;
    match result {
        Ok(value) => (Outcome::Confined, format!("{value:?}")),
        Err(error) => match SandboxRedisError::of(&error) {
            Some(SandboxRedisError::Refused { .. }) => (Outcome::Refused, error.to_string()),
            Some(SandboxRedisError::ServerRefused { .. }) => (Outcome::Noperm, error.to_string()),
            // Any other error ran on the sandbox's keys (WRONGTYPE, no such key...).
            _ => (Outcome::Confined, error.to_string()),
        },
    }
}

fn line(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

#[tokio::test]
async fn hostile_commands_never_reach_production() {
    let _ = prodbox_testkit::AuditLog::global();
    let redis = handle().await;
    let s = sandbox("hostile");
    let base = unique("victim");
    let prod_key = format!("{base}:user:42");
    let prod_list = format!("{base}:list");
    let mut prod = raw().await;
    let () = prod.set(&prod_key, "real customer").await.expect("seed");
    let _: i64 = prod.rpush(&prod_list, &[3, 1, 2]).await.expect("seed");
    let () = prod.set(format!("{base}:weight_1"), 1).await.expect("seed");
    // The sandbox's own list, under the same name.
    in_sandbox(&s, async {
        let mut r = redis.clone();
        let _: i64 = r.rpush(&prod_list, &[3, 1, 2]).await.expect("RPUSH");
        let () = r.set("mine", "x").await.expect("SET");
    })
    .await;

    use Outcome::*;
    let get_prod = format!("return redis.call('GET', '{prod_key}')");
    let set_prod = format!("return redis.call('SET', '{prod_key}', 'test')");
    let del_prod = format!("return redis.call('DEL', '{prod_key}')");
    let cases: Vec<(Vec<String>, Outcome)> = vec![
        (line(&["FLUSHALL"]), Refused),
        (line(&["FLUSHDB", "ASYNC"]), Refused),
        (
            line(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &prod_key]),
            Confined,
        ),
        (line(&["EVAL", &get_prod, "0"]), Noperm),
        (line(&["EVAL", &set_prod, "0"]), Noperm),
        (line(&["EVAL_RO", &get_prod, "0"]), Noperm),
        (line(&["EVAL", &del_prod, "1", "mine"]), Noperm),
        (
            line(&[
                "FUNCTION",
                "LOAD",
                "#!lua name=evil\nredis.register_function('f', function() return 1 end)",
            ]),
            Refused,
        ),
        (line(&["SCRIPT", "FLUSH"]), Refused),
        (line(&["RENAME", "mine", &prod_key]), Confined),
        (line(&["COPY", "mine", &prod_key, "DB", "1"]), Refused),
        (line(&["MOVE", "mine", "1"]), Refused),
        (line(&["KEYS", "*"]), Confined),
        (line(&["SCAN", "0"]), Confined),
        (
            line(&["SCAN", "0", "MATCH", "*", "COUNT", "100000"]),
            Confined,
        ),
        (line(&["RANDOMKEY"]), Refused),
        (line(&["DBSIZE"]), Confined),
        (
            line(&["MIGRATE", "127.0.0.1", "6390", &prod_key, "0", "1000"]),
            Refused,
        ),
        (line(&["SELECT", "1"]), Refused),
        (line(&["SWAPDB", "0", "1"]), Refused),
        (line(&["CLIENT", "KILL", "TYPE", "normal"]), Refused),
        (line(&["CLIENT", "LIST"]), Refused),
        (line(&["OBJECT", "ENCODING", &prod_key]), Confined),
        (
            line(&["SORT", &prod_list, "BY", &format!("{base}:weight_*")]),
            Refused,
        ),
        (
            line(&["SORT", &prod_list, "GET", &format!("{base}:user:*")]),
            Refused,
        ),
        (line(&["SORT", &prod_list, "STORE", &prod_key]), Confined),
        (line(&["CONFIG", "SET", "maxmemory", "1"]), Refused),
        (line(&["DEBUG", "SLEEP", "0"]), Refused),
        (line(&["AUTH", "default", "nopass"]), Refused),
        (line(&["HELLO", "3", "AUTH", "default", "nopass"]), Refused),
        (line(&["RESET"]), Refused),
        (line(&["INFO", "keyspace"]), Refused),
        (line(&["SHUTDOWN", "NOSAVE"]), Refused),
        (
            line(&["ACL", "SETUSER", "evil", "on", "nopass", "~*", "+@all"]),
            Refused,
        ),
        (
            line(&["PUBLISH", &format!("{base}:orders"), "fake order"]),
            Confined,
        ),
        (line(&["SUBSCRIBE", &format!("{base}:orders")]), Refused),
        (line(&["BITOP", "OR", &prod_key, "mine"]), Confined),
        (line(&["MEMORY", "USAGE", &prod_key]), Confined),
    ];
    assert!(cases.len() >= 25);
    let mut table =
        String::from("| command (in a sandbox, through the handle) | what happened |\n|---|---|\n");
    let mut wrong = Vec::new();
    for (args, expected) in &cases {
        let (outcome, said) = run(&redis, &s, args).await;
        let shown = args.join(" ").replace(&base, "v").replace('\n', " ");
        table.push_str(&format!(
            "| `{shown}` | {outcome:?}: {} |\n",
            said.replace('|', "/").chars().take(120).collect::<String>()
        ));
        if outcome != *expected {
            wrong.push(format!(
                "{shown}: expected {expected:?}, got {outcome:?} ({said})"
            ));
        }
        // After every command: production's keys are as they were.
        let value: Option<String> = prod.get(&prod_key).await.expect("GET");
        assert_eq!(value.as_deref(), Some("real customer"), "after {shown}");
        let list: Vec<i64> = prod.lrange(&prod_list, 0, -1).await.expect("LRANGE");
        assert_eq!(list, [3, 1, 2], "after {shown}");
    }
    println!("{table}");
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Every refusal, prodbox's or Redis's, was audited about the sandbox.
    let events = prodbox_testkit::AuditLog::global().matching("sandbox", s.key().as_str());
    let count = |reason: &str| {
        events
            .iter()
            .filter(|e| e.get("reason").map(String::as_str) == Some(reason))
            .filter(|e| e.get("protocol").map(String::as_str) == Some("redis"))
            .filter(|e| e.get("decision").map(String::as_str) == Some("rejected"))
            .count()
    };
    let expected = |outcome: Outcome| cases.iter().filter(|(_, o)| *o == outcome).count();
    assert_eq!(
        count("redis_command_refused"),
        expected(Refused),
        "{events:#?}"
    );
    assert_eq!(count("redis_noperm"), expected(Noperm), "{events:#?}");

    // The listings a sandbox got named only its own keys.
    let (_, keys) = run(&redis, &s, &line(&["KEYS", "*"])).await;
    assert!(
        !keys.contains("real customer") && !keys.contains("weight"),
        "{keys}"
    );

    redis.teardown(s.key()).await.expect("teardown");
    let _: i64 = prod
        .del(&[prod_key, prod_list, format!("{base}:weight_1")])
        .await
        .expect("cleanup");
}

/// The server's own line: logged in as the sandbox's user, as a rewrite that missed a key
/// would send, production's keys and the dangerous commands are refused by Redis itself.
#[tokio::test]
async fn the_sandbox_user_itself_cannot_reach_production() {
    let (redis, s, base) = setup("direct").await;
    let prod_key = format!("{base}:user:42");
    let mut prod = raw().await;
    let () = prod.set(&prod_key, "real customer").await.expect("seed");
    // The first command makes the user.
    in_sandbox(&s, async {
        let () = redis.clone().set("warm", 1).await.expect("SET");
    })
    .await;
    let mut direct = as_user(s.key())
        .await
        .expect("log in as the sandbox's user");
    let cases: Vec<Vec<String>> = vec![
        line(&["GET", &prod_key]),
        line(&["SET", &prod_key, "test"]),
        line(&["DEL", &prod_key]),
        line(&[
            "RENAME",
            &format!("{}warm", prodbox_redis::names::prefix(s.key())),
            &prod_key,
        ]),
        line(&["KEYS", "*"]),
        line(&["DBSIZE"]),
        line(&["RANDOMKEY"]),
        line(&["FLUSHALL"]),
        line(&["FLUSHDB"]),
        line(&["CONFIG", "GET", "*"]),
        line(&["CLIENT", "KILL", "TYPE", "normal"]),
        line(&["CLIENT", "LIST"]),
        line(&["INFO"]),
        line(&["SELECT", "1"]),
        line(&["SWAPDB", "0", "1"]),
        line(&["MOVE", &prod_key, "1"]),
        line(&["ACL", "SETUSER", "evil", "on", "nopass", "~*", "+@all"]),
        line(&["ACL", "LIST"]),
        line(&["PUBLISH", "orders", "x"]),
        line(&["SCRIPT", "FLUSH"]),
        line(&["FUNCTION", "FLUSH"]),
        line(&["SAVE"]),
        line(&["MONITOR"]),
        line(&["SHUTDOWN", "NOSAVE"]),
        line(&["SORT", &prod_key]),
        line(&["SCAN", "0"]),
        line(&["PUBSUB", "CHANNELS"]),
        line(&["COPY", &prod_key, "x", "DB", "1"]),
        line(&["GEORADIUS", "x", "0", "0", "1", "m", "STORE", &prod_key]),
        line(&["RESTORE", &prod_key, "0", "x"]),
        line(&["SCRIPT", "EXISTS", "x"]),
        line(&["WATCH", &prod_key]),
    ];
    for args in cases {
        let mut cmd = redis::cmd(&args[0]);
        for arg in &args[1..] {
            cmd.arg(arg);
        }
        let result: redis::RedisResult<redis::Value> = cmd.query_async(&mut direct).await;
        let error = result.expect_err(&format!("{args:?} must be refused"));
        assert_eq!(error.code(), Some("NOPERM"), "{args:?}: {error}");
    }
    let value: Option<String> = prod.get(&prod_key).await.expect("GET");
    assert_eq!(value.as_deref(), Some("real customer"));
    redis.teardown(s.key()).await.expect("teardown");
    let _: i64 = prod.del(&prod_key).await.expect("cleanup");
}
