//! Deleting a sandbox's Redis objects: its ACL user first (which closes its connections, so
//! nothing writes while its keys go), then its keys, by `SCAN` and `UNLINK` in batches so Redis
//! never blocks; and finding the sandboxes whose objects outlived their directory entry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prodbox_core::SandboxKey;
use prodbox_core::directory::Directory;
use prodbox_core::plumbing::metrics::redis_deleted;
pub use prodbox_core::task::Janitor;
use redis::aio::ConnectionLike;
use redis::{RedisError, RedisResult};

use crate::handle::SandboxRedis;
use crate::names;
use crate::rewrite::SCAN_COUNT;

/// What deleting one sandbox's Redis objects removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Teardown {
    /// Keys unlinked.
    pub keys: u64,
    /// Whether its ACL user existed (and was deleted).
    pub user: bool,
}

/// Deletes sandbox `key`'s ACL user and keys over `manager` (a connection whose user may run
/// `ACL DELUSER`, and `SCAN` and `UNLINK` on `sbx:*`). Counted in `prodbox.redis.cleanup`.
pub async fn teardown<C: ConnectionLike + Send>(
    manager: &mut C,
    key: &SandboxKey,
) -> RedisResult<Teardown> {
    // First the tombstone: from now on no replica makes the user again for this incarnation.
    let () = redis::cmd("SET")
        .arg(names::tombstone(key))
        .arg(names::micros(SystemTime::now()))
        .arg("EX")
        .arg(names::TOMBSTONE_SECONDS)
        .query_async(manager)
        .await?;
    let deleted: u64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(names::user(key))
        .query_async(manager)
        .await?;
    redis_deleted("user", deleted);
    let pattern = format!("{}*", names::prefix(key));
    let mut keys = 0;
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(manager)
            .await?;
        if !batch.is_empty() {
            let unlinked: u64 = redis::cmd("UNLINK")
                .arg(&batch)
                .query_async(manager)
                .await?;
            redis_deleted("key", unlinked);
            keys += unlinked;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(Teardown {
        keys,
        user: deleted > 0,
    })
}

/// Every sandbox with an ACL user or a key in this Redis.
pub async fn sandboxes<C: ConnectionLike + Send>(
    manager: &mut C,
) -> RedisResult<BTreeSet<SandboxKey>> {
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(manager).await?;
    let mut found: BTreeSet<SandboxKey> = users
        .iter()
        .filter_map(|user| names::sandbox_of_user(user))
        .collect();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("sbx:{*}:*")
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(manager)
            .await?;
        found.extend(batch.iter().filter_map(|key| names::sandbox_of_key(key)));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(found)
}

/// Every sandbox with objects in this Redis whose directory entry is gone or has expired at
/// `now`. Refuses a directory that has not synced (it would take every sandbox for deleted).
pub async fn collectable<C: ConnectionLike + Send>(
    manager: &mut C,
    directory: &dyn Directory,
    now: SystemTime,
) -> RedisResult<Vec<SandboxKey>> {
    if !directory.is_synced() || directory.is_stale() {
        return Err(RedisError::from((
            redis::ErrorKind::Client,
            "the directory has not synced: no sandbox's Redis objects are deleted",
        )));
    }
    Ok(sandboxes(manager)
        .await?
        .into_iter()
        .filter(|key| {
            directory
                .get(key)
                .is_none_or(|entry| entry.is_expired_at(now))
        })
        .collect())
}

/// Tears down every [`collectable`] sandbox; returns what was deleted, by sandbox.
pub async fn collect_garbage<C: ConnectionLike + Send>(
    manager: &mut C,
    directory: &dyn Directory,
    now: SystemTime,
) -> RedisResult<Vec<(SandboxKey, Teardown)>> {
    let mut torn = Vec::new();
    for key in collectable(manager, directory, now).await? {
        let done = teardown(manager, &key).await?;
        torn.push((key, done));
    }
    Ok(torn)
}

impl<C> SandboxRedis<C> {
    /// Deletes sandbox `key`'s ACL user and keys (see [`teardown`]) and forgets its
    /// connection here.
    pub async fn teardown(&self, key: &SandboxKey) -> RedisResult<Teardown> {
        self.shared.forget(key);
        teardown(&mut self.shared.manager.clone(), key).await
    }

    /// Starts a janitor on the current Tokio runtime that runs [`collect_garbage`] with
    /// `directory` every `interval` (skipping a round while the directory is not synced),
    /// until the returned handle is dropped: a sandbox deleted from the directory, or expired,
    /// loses its Redis objects within an interval.
    pub fn start_janitor(&self, directory: impl Directory, interval: Duration) -> Janitor
    where
        C: Send + Sync + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let directory = Arc::new(directory);
        Janitor::every(interval, move || {
            let (shared, directory) = (Arc::clone(&shared), Arc::clone(&directory));
            async move {
                if !directory.is_synced() || directory.is_stale() {
                    return;
                }
                let mut manager = shared.manager.clone();
                match collect_garbage(&mut manager, &*directory, SystemTime::now()).await {
                    Ok(torn) if !torn.is_empty() => {
                        for (key, _) in &torn {
                            shared.forget(key);
                        }
                        let deleted: Vec<_> = torn.iter().map(|(key, _)| key.as_str()).collect();
                        tracing::info!(target: "prodbox::redis", ?deleted, "janitor deleted the Redis objects of gone sandboxes");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(target: "prodbox::redis", %error, "janitor could not collect sandboxes' Redis objects");
                    }
                }
            }
        })
    }

    /// [`collect_garbage`] over this handle's manager connection, now.
    pub async fn collect_garbage(
        &self,
        directory: &dyn Directory,
    ) -> RedisResult<Vec<(SandboxKey, Teardown)>> {
        let torn = collect_garbage(
            &mut self.shared.manager.clone(),
            directory,
            SystemTime::now(),
        )
        .await?;
        for (key, _) in &torn {
            self.shared.forget(key);
        }
        Ok(torn)
    }
}
