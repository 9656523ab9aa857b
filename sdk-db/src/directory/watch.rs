//! The `LISTEN`/`NOTIFY` watcher behind a [`PgDirectory`](super::PgDirectory): one session at a
//! time, reconnecting with backoff, coalescing notifications into bounded reads, and proving
//! the connection alive (and purging expired rows) with heartbeats.

use std::future::Future;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prodbox_core::SandboxKey;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::task::JoinHandle;

use super::store::DirectoryStore;
use super::table::{COLUMNS, ensure_table, entries_of, entry_of};
use super::{CHANNEL, IO_TIMEOUT, PgDirectoryBuilder, Shared};

/// Why one listening session ended.
enum Ended {
    /// The last clone of the directory is gone.
    Dropped,
    /// The connection failed; reconnect.
    Lost(String),
}

pub(super) async fn watch(shared: Weak<Shared>, config: PgDirectoryBuilder) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match session(&shared, &config).await {
            Ended::Dropped => return,
            Ended::Lost(error) => {
                tracing::warn!(
                    target: "prodbox::directory",
                    %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "directory connection lost; reconnecting and resyncing"
                );
            }
        }
        // A session that ran for a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if shared.strong_count() == 0 {
            return;
        }
    }
}

/// A heartbeat channel unique to this directory instance.
fn heartbeat_channel() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("prodbox_directory_hb_{:016x}", hasher.finish())
}

/// Runs `call` with [`IO_TIMEOUT`]; a timeout or an error ends the session.
async fn io<T>(what: &str, call: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, Ended> {
    match tokio::time::timeout(IO_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Ended::Lost(format!("{what}: {e}"))),
        Err(_) => Err(Ended::Lost(format!(
            "{what}: no answer within {IO_TIMEOUT:?}"
        ))),
    }
}

/// Reads rows of the directory table (`filter`, bound to `keys` when given), counted as one
/// read.
async fn read_rows(
    shared: &Weak<Shared>,
    pool: &PgPool,
    filter: &str,
    keys: Option<&[&str]>,
) -> Result<Vec<PgRow>, Ended> {
    if let Some(shared) = shared.upgrade() {
        shared.reads.fetch_add(1, Ordering::Relaxed);
    }
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM prodbox.sandboxes {filter}"
    )));
    let query = match keys {
        Some(keys) => query.bind(keys),
        None => query,
    };
    io("reading the directory", query.fetch_all(pool)).await
}

/// Reads the whole table into the snapshot.
async fn full_sync(shared: &Weak<Shared>, pool: &PgPool) -> Result<(), Ended> {
    let rows = read_rows(shared, pool, "", None).await?;
    let shared = shared.upgrade().ok_or(Ended::Dropped)?;
    shared.entries.replace_all(entries_of(&rows));
    shared.heard();
    if !shared.synced.swap(true, Ordering::AcqRel) {
        tracing::info!(target: "prodbox::directory", sandboxes = rows.len(), "directory synced");
    }
    shared.synced_notify.notify_waiters();
    Ok(())
}

async fn session(shared: &Weak<Shared>, config: &PgDirectoryBuilder) -> Ended {
    // A pool per session: connections a dead session leaves hanging (a half-open socket, a
    // pending UNLISTEN) cannot starve the next one.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(IO_TIMEOUT)
        .connect_lazy_with(config.options.as_ref().clone());
    match session_on(shared, config, &pool).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    }
}

async fn session_on(
    shared: &Weak<Shared>,
    config: &PgDirectoryBuilder,
    pool: &PgPool,
) -> Result<std::convert::Infallible, Ended> {
    io("creating the directory table", ensure_table(pool)).await?;
    let mut listener = io("listening", PgListener::connect_with(pool)).await?;
    let heartbeat = heartbeat_channel();
    // Listen first, then read: a change between the two is both read and announced.
    io(
        "listening",
        listener.listen_all([CHANNEL, heartbeat.as_str()]),
    )
    .await?;
    full_sync(shared, pool).await?;
    let mut last_full_sync = Instant::now();

    let beats = tokio::spawn(heartbeats(
        pool.clone(),
        heartbeat,
        config.heartbeat,
        config.retention,
    ));
    let _beats = AbortOnDrop(beats);
    let dead_after = config.heartbeat.saturating_mul(3);
    // Notifications are gathered, and read from the table together at most every
    // `READ_INTERVAL`: any session may NOTIFY the channel, and a flood of them must not turn
    // into a flood of reads.
    let mut pending = Pending::default();
    let mut next_read = Instant::now();
    loop {
        let wait = if pending.is_empty() {
            dead_after
        } else {
            next_read.saturating_duration_since(Instant::now())
        };
        match tokio::time::timeout(wait, listener.try_recv()).await {
            // Silent for three heartbeats: the connection is as good as dead. Dropping the
            // listener mid-read is fine, it is never used again.
            Err(_) if pending.is_empty() => {
                return Err(Ended::Lost(format!("no heartbeat for {dead_after:?}")));
            }
            // Time to read what was gathered.
            Err(_) => {}
            Ok(Err(e)) => return Err(Ended::Lost(e.to_string())),
            Ok(Ok(None)) => return Err(Ended::Lost("listening connection closed".to_owned())),
            Ok(Ok(Some(notification))) => {
                shared.upgrade().ok_or(Ended::Dropped)?.heard();
                pending.add(&notification);
                while let Some(notification) = listener.next_buffered() {
                    pending.add(&notification);
                }
                // A backstop against changes no notification announced (triggers disabled by
                // hand, replication with `session_replication_role = replica`).
                if last_full_sync.elapsed() >= FULL_SYNC_EVERY {
                    pending.all = true;
                }
                if pending.is_empty() || Instant::now() < next_read {
                    continue;
                }
            }
        }
        let gathered = std::mem::take(&mut pending);
        next_read = Instant::now() + READ_INTERVAL;
        if gathered.all || gathered.keys.len() > MAX_KEYS_PER_READ {
            full_sync(shared, pool).await?;
            last_full_sync = Instant::now();
            continue;
        }
        let keys: Vec<&str> = gathered.keys.iter().map(SandboxKey::as_str).collect();
        let rows = read_rows(shared, pool, "WHERE key = ANY($1)", Some(&keys)).await?;
        let shared = shared.upgrade().ok_or(Ended::Dropped)?;
        let mut found = std::collections::BTreeSet::new();
        for row in &rows {
            match entry_of(row) {
                Ok(entry) => {
                    found.insert(entry.key.clone());
                    shared.entries.upsert(entry);
                }
                Err(error) => {
                    tracing::warn!(target: "prodbox::directory", %error, "ignoring a directory row without a valid key");
                }
            }
        }
        for key in gathered.keys.difference(&found) {
            shared.entries.remove(key);
        }
        tracing::debug!(target: "prodbox::directory", entries = gathered.keys.len(), "directory entries reloaded");
    }
}

/// At most this many reads of the table a second follow notifications.
pub const MAX_READS_PER_SECOND: u64 = 10;
const READ_INTERVAL: Duration = Duration::from_millis(1000 / MAX_READS_PER_SECOND);
/// More keys than this gathered at once are read as the whole table.
const MAX_KEYS_PER_READ: usize = 256;

/// Notifications gathered since the last read: keys to read again, or everything.
#[derive(Default)]
struct Pending {
    all: bool,
    keys: std::collections::BTreeSet<SandboxKey>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    fn add(&mut self, notification: &sqlx::postgres::PgNotification) {
        if notification.channel() != CHANNEL || self.all {
            return;
        }
        if notification.payload() == "*" {
            self.all = true;
            self.keys.clear();
            return;
        }
        match notification.payload().parse::<SandboxKey>() {
            // Past the bound, the whole table is read anyway: stop collecting.
            Ok(key) if self.keys.len() > MAX_KEYS_PER_READ => {
                drop(key);
                self.all = true;
                self.keys.clear();
            }
            Ok(key) => {
                self.keys.insert(key);
            }
            Err(_) => {
                tracing::debug!(target: "prodbox::directory", payload = notification.payload(), "ignoring a notification that names no valid sandbox");
            }
        }
    }
}

/// How often a session reads the whole table again, whatever the notifications say.
const FULL_SYNC_EVERY: Duration = Duration::from_secs(300);

/// Proves the listening connection alive, and deletes rows past their retention (any
/// directory may: the delete is idempotent) at most once a minute, or every half retention
/// when that is shorter.
async fn heartbeats(pool: PgPool, channel: String, interval: Duration, retention: Duration) {
    let store = DirectoryStore::new(pool.clone());
    let purge_every = (retention / 2).clamp(interval, Duration::from_secs(60).max(interval));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge: Option<Instant> = None;
    let mut purge_warned = false;
    loop {
        ticker.tick().await;
        let beat = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool);
        match tokio::time::timeout(interval.max(Duration::from_secs(1)), beat).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(target: "prodbox::directory", %error, "heartbeat failed");
                continue;
            }
            Err(_) => {
                tracing::debug!(target: "prodbox::directory", "heartbeat timed out");
                continue;
            }
        }
        if last_purge.is_none_or(|at| at.elapsed() >= purge_every) {
            last_purge = Some(Instant::now());
            match tokio::time::timeout(IO_TIMEOUT, store.purge_expired(retention)).await {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(purged)) => {
                    tracing::info!(target: "prodbox::directory", purged, "deleted expired directory rows");
                }
                // Most likely a service role without DELETE on the table: say so once.
                Ok(Err(error)) if !purge_warned => {
                    purge_warned = true;
                    tracing::warn!(target: "prodbox::directory", %error, "cannot delete expired directory rows (grant DELETE on prodbox.sandboxes, or leave it to a service that has it)");
                }
                Ok(Err(_)) => {}
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
