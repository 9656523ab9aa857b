//! `prodbox redis`: the sandboxes' Redis keys and ACL users (prodbox-redis), listed, deleted one
//! by one, or collected once the directory no longer has their sandbox.

use std::time::{Duration, SystemTime};

use prodbox_core::SandboxKey;
use prodbox_core::directory::MemoryDirectory;
use prodbox_db::directory::DirectoryStore;
use prodbox_redis::Teardown;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use crate::{Failure, Output, RedisCommand};

/// A connection to `url`, or why not (within 10 s).
pub(crate) async fn connect(url: &str) -> Result<MultiplexedConnection, Failure> {
    let client = redis::Client::open(url)
        .map_err(|e| Failure::Usage(format!("invalid --redis-url: {e}")))?;
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(Failure::Database(format!("cannot connect to Redis: {e}"))),
        Err(_) => Err(Failure::Database(
            "cannot connect to Redis: no answer within 10 s".to_owned(),
        )),
    }
}

fn failed(error: redis::RedisError) -> Failure {
    Failure::Database(format!("Redis error: {error}"))
}

/// Deletes `key`'s Redis user and keys.
pub(crate) async fn drop(
    redis: &mut MultiplexedConnection,
    key: &SandboxKey,
) -> Result<Teardown, Failure> {
    prodbox_redis::teardown(redis, key).await.map_err(failed)
}

fn torn_json(torn: &[(SandboxKey, Teardown)]) -> Value {
    torn.iter()
        .map(|(key, t)| json!({"key": key.as_str(), "keys": t.keys, "user": t.user}))
        .collect()
}

pub(crate) async fn run(
    command: RedisCommand,
    mut redis: MultiplexedConnection,
    pool: Option<PgPool>,
) -> Result<Output, Failure> {
    match command {
        RedisCommand::List => {
            let found = prodbox_redis::sandboxes(&mut redis).await.map_err(failed)?;
            let text = if found.is_empty() {
                "no sandbox has Redis keys or a Redis user".to_owned()
            } else {
                found.iter().map(|k| format!("{k}\n")).collect()
            };
            Ok(Output {
                text,
                json: found.iter().map(|k| json!(k.as_str())).collect(),
            })
        }
        RedisCommand::Drop(crate::Target { key }) => {
            let torn = drop(&mut redis, &key).await?;
            if torn.keys == 0 && !torn.user {
                return Err(Failure::Refused(format!(
                    "sandbox {key} has no Redis keys or user"
                )));
            }
            Ok(Output {
                text: format!("deleted sandbox {key}'s Redis user and {} keys", torn.keys),
                json: torn_json(&[(key, torn)]),
            })
        }
        RedisCommand::Gc { dry_run } => {
            let pool = pool.ok_or_else(|| {
                Failure::Usage("no database: pass --database-url or set DATABASE_URL".to_owned())
            })?;
            // The directory as the database has it now: a complete read, so collection may
            // trust that a sandbox missing from it is gone.
            let directory = MemoryDirectory::new();
            for entry in DirectoryStore::new(pool).list().await? {
                directory.upsert(entry);
            }
            let now = SystemTime::now();
            let torn = if dry_run {
                prodbox_redis::collectable(&mut redis, &directory, now)
                    .await
                    .map_err(failed)?
                    .into_iter()
                    .map(|key| (key, Teardown::default()))
                    .collect()
            } else {
                prodbox_redis::collect_garbage(&mut redis, &directory, now)
                    .await
                    .map_err(failed)?
            };
            let verb = if dry_run { "would delete" } else { "deleted" };
            let mut text: String = torn
                .iter()
                .map(|(key, t)| {
                    if dry_run {
                        format!("{verb} sandbox {key}'s Redis objects\n")
                    } else {
                        format!("{verb} sandbox {key}'s Redis objects ({} keys)\n", t.keys)
                    }
                })
                .collect();
            if torn.is_empty() {
                text = "no sandbox's Redis objects to delete".to_owned();
            }
            Ok(Output {
                text,
                json: torn_json(&torn),
            })
        }
    }
}
