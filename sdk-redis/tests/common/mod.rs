//! What the Redis tests share: the real server on 127.0.0.1:6379, a handle over it, sandboxes
//! with keys no other test uses, and a way to log in as a sandbox's user directly.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};

use prodbox_core::{FutureExt, Sandbox, SandboxKey};
use prodbox_redis::SandboxRedis;
use redis::aio::MultiplexedConnection;

pub const URL: &str = "redis://127.0.0.1:6379/";
pub const SECRET: &[u8] = b"prodbox-redis tests: a secret shared by every replica";

pub fn client() -> redis::Client {
    redis::Client::open(URL).expect("redis url")
}

/// A handle over the real Redis (see scripts/test.sh, which starts it when it is down).
pub async fn handle() -> SandboxRedis {
    SandboxRedis::builder(client(), SECRET)
        .build()
        .await
        .expect("Redis 7 on 127.0.0.1:6379 (bash scripts/test.sh starts it)")
}

/// The service's own connection, as the default user.
pub async fn raw() -> MultiplexedConnection {
    client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// A name no other test (or earlier run) uses: `<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn key(name: &str) -> SandboxKey {
    name.parse()
        .unwrap_or_else(|e| panic!("test key {name:?} is invalid: {e}"))
}

/// A sandbox whose key no other test uses.
pub fn sandbox(what: &str) -> Sandbox {
    Sandbox::new(key(&unique(what)))
}

/// Runs `work` inside `sandbox`.
pub async fn in_sandbox<F: Future>(sandbox: &Sandbox, work: F) -> F::Output {
    work.in_sandbox(sandbox.clone()).await
}

/// A connection logged in as `key`'s user itself: what a rewrite that missed a key would send
/// on. The user must exist (the handle makes it on the sandbox's first command).
pub async fn as_user(key: &SandboxKey) -> redis::RedisResult<MultiplexedConnection> {
    let info = client().get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_username(prodbox_redis::names::user(key))
        .set_password(prodbox_redis::plumbing::password(SECRET, key));
    redis::Client::open(info.set_redis_settings(settings))?
        .get_multiplexed_async_connection()
        .await
}

/// Every key whose name starts with `prefix`, by the default user.
pub async fn keys_under(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut raw().await)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

/// Whether `key`'s ACL user exists.
pub async fn user_exists(key: &SandboxKey) -> bool {
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut raw().await)
        .await
        .expect("ACL USERS");
    users.contains(&prodbox_redis::names::user(key))
}

/// A handle, a sandbox and a production key prefix of their own, for a test about `what`.
pub async fn setup(what: &str) -> (SandboxRedis, Sandbox, String) {
    (handle().await, sandbox(what), unique(what))
}

/// The sandbox's keys whose application name starts with `base`.
pub async fn sandbox_keys(s: &Sandbox, base: &str) -> Vec<String> {
    keys_under(&format!("{}{base}", prodbox_redis::names::prefix(s.key()))).await
}
