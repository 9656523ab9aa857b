//! The sandbox directory kept in PostgreSQL: a table every service reads, changed through
//! [`DirectoryStore`] (or the `prodbox` command-line tool), with `LISTEN`/`NOTIFY` carrying
//! each change to every [`PgDirectory`] at once. No server of our own, no polling.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use prodbox_core::directory::{Directory, SandboxEntry};
//! use prodbox_db::directory::{DirectoryStore, PgDirectory};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = sqlx::PgPool::connect("postgres://127.0.0.1/shop").await?;
//!
//! // Every service: a live view, synced once before anything relies on it.
//! let directory = PgDirectory::builder(&pg).start();
//! directory.synced(Duration::from_secs(10)).await?;
//!
//! // An operator (or `prodbox sandbox create`): visible to every service within a second.
//! let store = DirectoryStore::new(pg.clone());
//! let mut entry = SandboxEntry::new("pr-42".parse()?).fork("billing", "http://10.0.0.5:8080");
//! entry.expires_at = Some(SystemTime::now() + Duration::from_secs(2 * 3600));
//! store.create(&entry).await?;
//! # Ok(()) }
//! ```
//!
//! # Freshness
//!
//! A directory is *fresh* while its listening connection is alive: a heartbeat it sends to
//! itself every [`heartbeat`](PgDirectoryBuilder::heartbeat) (2 s) proves that, so a
//! half-open connection is noticed too. When the connection fails, it reconnects with
//! backoff (100 ms doubling to 5 s) and reads the whole table again, since notifications sent
//! meanwhile are lost. If it has not heard from the database for the
//! [`staleness bound`](PgDirectoryBuilder::staleness_bound) (10 s by default), it reports
//! [`is_stale`](Directory::is_stale) until it has resynced:
//!
//! - lookups keep answering from the last snapshot, and expiry is still checked against the
//!   clock, so an expired sandbox is refused on time whatever the connection does;
//! - routing layers send sandboxed requests to baseline code (with their context: their data
//!   stays in the sandbox's schema);
//! - the Kafka consumer filter pauses, without committing, until the directory is fresh.
//!
//! # Expiry
//!
//! Ingress and the Kafka filter refuse a sandbox the moment its `expires_at` passes, from the
//! snapshot. The rows themselves are deleted by the directories that watch the table, a
//! [`retention`](PgDirectoryBuilder::retention) (1 hour) after they expired; until then a late
//! request is refused as *expired* rather than seen as unknown. No separate cleaner runs. Every
//! directory purges, so the shortest retention configured anywhere in the fleet wins: set it
//! the same everywhere.
//!
//! A sandbox that is deleted or purged becomes *unknown*. An ingress that allows unknown
//! sandboxes (the default of [`Ingress`](prodbox_core::Ingress)) runs it again, isolated but
//! with its schema provisioned anew; where the directory is the source of truth, configure
//! `unknown_sandboxes(UnknownSandbox::Refuse)`, as the shop demo does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prodbox_core::directory::{
    CutFuture, CutPlace, Directory, DirectoryError, ForkAddress, MemoryDirectory, PartitionCuts,
    Range, SandboxEntry, cuts,
};
use prodbox_core::{Sandbox, SandboxKey};

use crate::provision::{ensure_ddl, secs, time};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::task::JoinHandle;

/// The channel every change to the table is announced on; the payload is the sandbox key, or
/// `*` for "read everything again" (after a `TRUNCATE`).
pub const CHANNEL: &str = "prodbox_directory";

/// How long creating the table waits for another process doing the same.
const DDL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the table, its triggers and every column are in place.
const DDL_READY: &str = "
SELECT EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_notify' AND tgrelid = to_regclass('prodbox.sandboxes'))
   AND EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_truncate' AND tgrelid = to_regclass('prodbox.sandboxes'))
   AND EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'prodbox' AND table_name = 'sandboxes'
                 AND column_name = 'shadows')
   AND to_regclass('prodbox.kafka_cuts') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'sandboxes_cuts_gone' AND tgrelid = to_regclass('prodbox.sandboxes'))";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS prodbox.sandboxes (
    key text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    actor text,
    origin text,
    forks jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(forks) = 'object'),
    shadows jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(shadows) = 'array'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE prodbox.sandboxes ADD COLUMN IF NOT EXISTS
    shadows jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(shadows) = 'array');
CREATE OR REPLACE FUNCTION prodbox.sandboxes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('prodbox_directory', OLD.key);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.key <> OLD.key) THEN
        PERFORM pg_notify('prodbox_directory', NEW.key);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_notify
    AFTER INSERT OR UPDATE OR DELETE ON prodbox.sandboxes
    FOR EACH ROW EXECUTE FUNCTION prodbox.sandboxes_notify();
CREATE OR REPLACE FUNCTION prodbox.sandboxes_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('prodbox_directory', '*');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_truncate
    AFTER TRUNCATE ON prodbox.sandboxes
    FOR EACH STATEMENT EXECUTE FUNCTION prodbox.sandboxes_notify_all();
-- The Kafka cuts (prodbox_core::directory::cuts): per baseline group, topic, partition and
-- sandbox, the offsets each incarnation's fork handles. Written by baseline consumers only.
CREATE TABLE IF NOT EXISTS prodbox.kafka_cuts (
    grp text NOT NULL,
    topic text NOT NULL,
    part integer NOT NULL,
    sandbox text NOT NULL,
    incarnations bigint[] NOT NULL DEFAULT '{}',
    starts bigint[] NOT NULL DEFAULT '{}',
    ends bigint[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, topic, part, sandbox),
    CHECK (cardinality(incarnations) = cardinality(starts)
           AND cardinality(starts) = cardinality(ends))
);
-- A gone sandbox's cuts are kept a retention after it went (its fork may still be draining
-- records the baseline gave it), not after their last change: its going stamps them.
CREATE OR REPLACE FUNCTION prodbox.kafka_cuts_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE prodbox.kafka_cuts SET updated_at = now();
    ELSE
        UPDATE prodbox.kafka_cuts SET updated_at = now() WHERE sandbox = OLD.key;
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sandboxes_cuts_gone
    AFTER DELETE ON prodbox.sandboxes
    FOR EACH ROW EXECUTE FUNCTION prodbox.kafka_cuts_gone();
CREATE OR REPLACE TRIGGER sandboxes_cuts_all_gone
    AFTER TRUNCATE ON prodbox.sandboxes
    FOR EACH STATEMENT EXECUTE FUNCTION prodbox.kafka_cuts_gone();
"#;

const COLUMNS: &str = "key, actor, origin, forks::text AS forks, shadows::text AS shadows,
    extract(epoch FROM created_at)::float8 AS created,
    extract(epoch FROM expires_at)::float8 AS expires,
    disabled";

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A sandbox with this key is already registered.
    #[error("sandbox {0} already exists")]
    AlreadyExists(SandboxKey),
    /// No sandbox with this key is registered.
    #[error("sandbox {0} does not exist")]
    NotFound(SandboxKey),
    /// The entry is not valid (a fork address that is not an `http://` or `https://` URL, a
    /// service name or label with characters that cannot travel in baggage).
    #[error("invalid sandbox entry: {0}")]
    Invalid(String),
    /// The first sync did not finish in time.
    #[error("the directory did not sync within {0:?}")]
    NotSynced(Duration),
    /// The database failed.
    #[error("directory database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Creates the directory table, its notify trigger and the `prodbox` schema if missing.
/// Idempotent and safe when several processes race.
pub async fn ensure_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    ensure_ddl(&mut conn, DDL_READY, DDL, DDL_TIMEOUT).await
}

/// Checks what the table's constraints do not: labels that can travel in baggage and fork
/// addresses a router can use.
fn validate(entry: &SandboxEntry) -> Result<(), StoreError> {
    let mut builder =
        Sandbox::builder(entry.key.as_str()).map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(actor) = &entry.actor {
        builder = builder
            .actor(actor)
            .map_err(|e| StoreError::Invalid(format!("actor: {e}")))?;
    }
    if let Some(origin) = &entry.origin {
        builder = builder
            .origin(origin)
            .map_err(|e| StoreError::Invalid(format!("origin: {e}")))?;
    }
    drop(builder);
    for service in entry.forks.keys() {
        validate_service(service)?;
    }
    if let Some(service) = entry.shadows.iter().find(|s| !entry.forks.contains_key(*s)) {
        return Err(StoreError::Invalid(format!(
            "shadows {service} but has no fork of it: add --forks {service}=URL"
        )));
    }
    Ok(())
}

/// A service name (`billing`, `orders.v2`) and a fork address (`http://host[:port]` or
/// `https://host[:port]`, as [`ForkAddress`] parses it).
pub fn validate_fork(service: &str, address: &str) -> Result<ForkAddress, StoreError> {
    validate_service(service)?;
    address
        .parse()
        .map_err(|e: prodbox_core::directory::InvalidForkAddress| {
            StoreError::Invalid(e.to_string())
        })
}

fn validate_service(service: &str) -> Result<(), StoreError> {
    let service_ok = !service.is_empty()
        && service.len() <= 63
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !service_ok {
        return Err(StoreError::Invalid(format!(
            "service name {service:?}: use 1 to 63 of a-z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

fn entry_of(row: &PgRow) -> Result<SandboxEntry, String> {
    let key: String = row.try_get("key").map_err(|e| e.to_string())?;
    let key: SandboxKey = key.parse().map_err(|e| format!("key {key:?}: {e}"))?;
    let mut problems = Vec::new();
    let mut json = |column: &str| -> Option<String> {
        row.try_get::<String, _>(column)
            .map_err(|e| problems.push(format!("{column}: {e}")))
            .ok()
    };
    let forks = json("forks");
    let shadows = json("shadows");
    let mut entry = SandboxEntry::new(key);
    match forks.map(|f| serde_json::from_str::<BTreeMap<String, ForkAddress>>(&f)) {
        Some(Ok(forks)) => entry.forks = forks,
        Some(Err(e)) => problems.push(format!("forks: {e}")),
        None => {}
    }
    match shadows.map(|s| serde_json::from_str::<BTreeSet<String>>(&s)) {
        Some(Ok(shadows)) => entry.shadows = shadows,
        Some(Err(e)) => problems.push(format!("shadows: {e}")),
        None => {}
    }
    match (row.try_get("actor"), row.try_get("origin")) {
        (Ok(actor), Ok(origin)) => (entry.actor, entry.origin) = (actor, origin),
        (Err(e), _) | (_, Err(e)) => problems.push(e.to_string()),
    }
    match row.try_get::<f64, _>("created") {
        Ok(created) => entry.created_at = Some(time(created)),
        Err(e) => problems.push(e.to_string()),
    }
    match row.try_get::<Option<f64>, _>("expires") {
        Ok(expires) => entry.expires_at = expires.map(time),
        Err(e) => problems.push(e.to_string()),
    }
    match row.try_get::<bool, _>("disabled") {
        Ok(disabled) => entry.disabled = disabled,
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = validate(&entry) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        // A row edited by hand into something prodbox would not write. Forgetting it could
        // admit the sandbox as unknown; keeping its bad address could route to it. So it
        // stays, refused everywhere: disabled, with no forks, shadows or labels.
        tracing::warn!(
            target: "prodbox::directory",
            sandbox = %entry.key,
            problems = %problems.join("; "),
            "invalid directory row: the sandbox is treated as disabled until it is fixed"
        );
        entry.disabled = true;
        entry.forks.clear();
        entry.shadows.clear();
        entry.actor = None;
        entry.origin = None;
    }
    Ok(entry)
}

fn entries_of(rows: &[PgRow]) -> Vec<SandboxEntry> {
    rows.iter()
        .filter_map(|row| match entry_of(row) {
            Ok(entry) => Some(entry),
            Err(error) => {
                // Only a key that is not a sandbox key gets here (the table's check refuses
                // those): nothing could ever name that sandbox.
                tracing::warn!(target: "prodbox::directory", %error, "ignoring a directory row without a valid key");
                None
            }
        })
        .collect()
}

/// Reads and changes the directory table: what the `prodbox` tool and test harnesses use.
/// Every change is announced to every [`PgDirectory`] by the table's trigger.
#[derive(Clone, Debug)]
pub struct DirectoryStore {
    pool: PgPool,
    table: Arc<tokio::sync::OnceCell<()>>,
}

impl DirectoryStore {
    /// A store on `pool`. The table is created on first use.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: Arc::default(),
        }
    }

    async fn ready(&self) -> Result<(), sqlx::Error> {
        self.table
            .get_or_try_init(|| ensure_table(&self.pool))
            .await
            .map(drop)
    }

    /// Registers a new sandbox. `created_at` is the database's clock, whatever the entry says.
    /// An expired entry of the same key (kept for its retention) is replaced; a live one is
    /// [`AlreadyExists`](StoreError::AlreadyExists).
    pub async fn create(&self, entry: &SandboxEntry) -> Result<SandboxEntry, StoreError> {
        validate(entry)?;
        self.ready().await?;
        let json = |v: Result<String, serde_json::Error>| {
            v.map_err(|e| StoreError::Invalid(e.to_string()))
        };
        let forks = json(serde_json::to_string(&entry.forks))?;
        let shadows = json(serde_json::to_string(&entry.shadows))?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO prodbox.sandboxes (key, actor, origin, forks, expires_at, disabled, shadows)
             VALUES ($1, $2, $3, $4::jsonb, to_timestamp($5), $6, $7::jsonb)
             ON CONFLICT (key) DO UPDATE SET
                 actor = EXCLUDED.actor, origin = EXCLUDED.origin, forks = EXCLUDED.forks,
                 shadows = EXCLUDED.shadows, created_at = now(), expires_at = EXCLUDED.expires_at,
                 disabled = EXCLUDED.disabled, updated_at = now()
             WHERE sandboxes.expires_at <= now()
             RETURNING {COLUMNS}"
        )))
        .bind(entry.key.as_str())
        .bind(entry.actor.as_deref())
        .bind(entry.origin.as_deref())
        .bind(forks)
        .bind(entry.expires_at.map(secs))
        .bind(entry.disabled)
        .bind(shadows)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => entry_of(&row).map_err(StoreError::Invalid),
            None => Err(StoreError::AlreadyExists(entry.key.clone())),
        }
    }

    /// The entry for `key`.
    pub async fn get(&self, key: &SandboxKey) -> Result<Option<SandboxEntry>, StoreError> {
        self.ready().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes WHERE key = $1"
        )))
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| entry_of(&row).map_err(StoreError::Invalid))
            .transpose()
    }

    /// Every entry (expired ones included), by key.
    pub async fn list(&self) -> Result<Vec<SandboxEntry>, StoreError> {
        self.ready().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes ORDER BY key"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(entries_of(&rows))
    }

    /// Sets `key`'s expiry (`None`: never).
    pub async fn set_expiry(
        &self,
        key: &SandboxKey,
        expires_at: Option<SystemTime>,
    ) -> Result<SandboxEntry, StoreError> {
        self.update(key, "expires_at = to_timestamp($2)", |q| {
            q.bind(expires_at.map(secs))
        })
        .await
    }

    /// Flips `key`'s kill switch.
    pub async fn set_disabled(
        &self,
        key: &SandboxKey,
        disabled: bool,
    ) -> Result<SandboxEntry, StoreError> {
        self.update(key, "disabled = $2", |q| q.bind(disabled))
            .await
    }

    async fn update<'q>(
        &self,
        key: &'q SandboxKey,
        set: &str,
        bind: impl FnOnce(
            sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<SandboxEntry, StoreError> {
        self.ready().await?;
        let sql = format!(
            "UPDATE prodbox.sandboxes SET {set}, updated_at = now() WHERE key = $1 RETURNING {COLUMNS}"
        );
        let query = bind(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key.as_str()));
        match query.fetch_optional(&self.pool).await? {
            Some(row) => entry_of(&row).map_err(StoreError::Invalid),
            None => Err(StoreError::NotFound(key.clone())),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &SandboxKey) -> Result<bool, StoreError> {
        self.ready().await?;
        let done = sqlx::query("DELETE FROM prodbox.sandboxes WHERE key = $1")
            .bind(key.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes rows that expired more than `retention` ago; returns how many.
    pub async fn purge_expired(&self, retention: Duration) -> Result<u64, StoreError> {
        self.ready().await?;
        let done = sqlx::query(
            "DELETE FROM prodbox.sandboxes
             WHERE expires_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        // A gone sandbox's cuts outlive it by the retention too (its going stamped them): a
        // fork still draining its records reads them.
        sqlx::query(
            "DELETE FROM prodbox.kafka_cuts c
             WHERE updated_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM prodbox.sandboxes s WHERE s.key = c.sandbox)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Configures a [`PgDirectory`].
#[derive(Debug, Clone)]
pub struct PgDirectoryBuilder {
    options: Arc<PgConnectOptions>,
    heartbeat: Duration,
    staleness_bound: Duration,
    retention: Duration,
}

impl PgDirectoryBuilder {
    /// How often the directory proves its connection alive (default 2 s). A connection silent
    /// for three heartbeats is dropped and reopened.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// How long the directory may go without hearing from the database before it reports
    /// itself stale (default 10 s).
    pub fn staleness_bound(mut self, bound: Duration) -> Self {
        self.staleness_bound = bound;
        self
    }

    /// How long after expiry a row is kept (default 1 hour), so a late request is refused as
    /// expired rather than treated as unknown.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Starts watching on the current Tokio runtime and returns at once; the first sync
    /// happens in the background ([`PgDirectory::synced`] waits for it). Watching stops when
    /// the last clone of the directory is dropped.
    pub fn start(self) -> PgDirectory {
        let shared = Arc::new(Shared {
            entries: MemoryDirectory::new(),
            synced: AtomicBool::new(false),
            synced_notify: tokio::sync::Notify::new(),
            started: Instant::now(),
            heard_ms: AtomicU64::new(0),
            heard_ever: AtomicBool::new(false),
            staleness_bound: self.staleness_bound,
            reads: AtomicU64::new(0),
            cuts: PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(IO_TIMEOUT)
                .connect_lazy_with(self.options.as_ref().clone()),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(watch(Arc::downgrade(&shared), self));
        if let Ok(mut slot) = shared.task.lock() {
            *slot = Some(task);
        }
        PgDirectory { shared }
    }
}

struct Shared {
    entries: MemoryDirectory,
    synced: AtomicBool,
    synced_notify: tokio::sync::Notify,
    started: Instant,
    /// Milliseconds after `started` when the database was last heard from.
    heard_ms: AtomicU64,
    heard_ever: AtomicBool,
    staleness_bound: Duration,
    /// Reads of the table (whole, or rows) since the start.
    reads: AtomicU64,
    /// For the Kafka cuts, opened on first use (only Kafka consumers need it).
    cuts: PgPool,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn heard(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms, Ordering::Release);
        self.heard_ever.store(true, Ordering::Release);
    }

    fn silence(&self) -> Option<Duration> {
        if !self.heard_ever.load(Ordering::Acquire) {
            return None;
        }
        let heard = Duration::from_millis(self.heard_ms.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(heard))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let task = match self.task.get_mut() {
            Ok(task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// A live view of the directory table, kept current by `LISTEN`/`NOTIFY`. Lookups read an
/// in-memory snapshot and never wait on the database. Cheap to clone; see the
/// [module docs](self) for freshness and expiry.
#[derive(Clone)]
pub struct PgDirectory {
    shared: Arc<Shared>,
}

impl fmt::Debug for PgDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDirectory")
            .field("entries", &self.shared.entries.entries().len())
            .field("synced", &self.is_synced())
            .field("stale", &self.is_stale())
            .finish()
    }
}

impl PgDirectory {
    /// A directory on the database `pool` connects to. It opens a small pool of its own (one
    /// listening connection, one for reads and heartbeats), so the application's pool loses
    /// nothing.
    pub fn builder(pool: &PgPool) -> PgDirectoryBuilder {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name("prodbox-directory");
        PgDirectoryBuilder {
            options: Arc::new(options),
            heartbeat: Duration::from_secs(2),
            staleness_bound: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
        }
    }

    /// Waits for the first full sync, at most `timeout`.
    pub async fn synced(&self, timeout: Duration) -> Result<(), StoreError> {
        let wait = async {
            loop {
                let notified = self.shared.synced_notify.notified();
                if self.is_synced() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| StoreError::NotSynced(timeout))
    }

    /// How many times this directory has read the table (whole, or some rows) since it started:
    /// what notifications cost. Whatever arrives on the channel (any session may `NOTIFY` it),
    /// at most [`MAX_READS_PER_SECOND`] reads a second follow.
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }

    /// How long since the database was last heard from (`None` before the first contact).
    pub fn silence(&self) -> Option<Duration> {
        self.shared.silence()
    }
}

impl Directory for PgDirectory {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        self.shared.entries.get(key)
    }

    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        self.shared.entries.entries()
    }

    fn generation(&self) -> Option<u64> {
        self.shared.entries.generation()
    }

    fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    fn is_stale(&self) -> bool {
        self.shared
            .silence()
            .is_none_or(|silence| silence > self.shared.staleness_bound)
    }

    fn cut_ranges<'a>(&'a self, place: &'a CutPlace) -> CutFuture<'a, PartitionCuts> {
        Box::pin(cut_io(read_cuts(&self.shared.cuts, place)))
    }

    fn settle_cut<'a>(
        &'a self,
        place: &'a CutPlace,
        sandbox: &'a SandboxKey,
        forking: Option<i64>,
        offset: i64,
    ) -> CutFuture<'a, Vec<Range>> {
        Box::pin(cut_io(settle_cut(
            &self.shared.cuts,
            place,
            sandbox,
            forking,
            offset,
        )))
    }
}

/// Bounds a cut read or write by [`IO_TIMEOUT`]: the baseline waiting on it holds a partition.
async fn cut_io<T>(
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DirectoryError> {
    match tokio::time::timeout(IO_TIMEOUT, call).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(error)) => Err(DirectoryError::Cuts(error.to_string())),
        Err(_) => Err(DirectoryError::Cuts(format!(
            "no answer within {IO_TIMEOUT:?}"
        ))),
    }
}

/// One row's ranges.
fn ranges_of(row: &PgRow) -> Result<Vec<Range>, sqlx::Error> {
    let incarnations: Vec<i64> = row.try_get("incarnations")?;
    let starts: Vec<i64> = row.try_get("starts")?;
    let ends: Vec<Option<i64>> = row.try_get("ends")?;
    Ok(incarnations
        .into_iter()
        .zip(starts)
        .zip(ends)
        .map(|((incarnation, start), end)| Range {
            incarnation,
            start,
            end,
        })
        .collect())
}

/// Every sandbox's ranges recorded in the partition `place`.
async fn read_cuts(pool: &PgPool, place: &CutPlace) -> Result<PartitionCuts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT sandbox, incarnations, starts, ends FROM prodbox.kafka_cuts
         WHERE grp = $1 AND topic = $2 AND part = $3",
    )
    .bind(&place.group)
    .bind(&place.topic)
    .bind(place.partition)
    .fetch_all(pool)
    .await?;
    let mut cuts = PartitionCuts::with_capacity(rows.len());
    for row in &rows {
        let sandbox: String = row.try_get("sandbox")?;
        // Keys are checked before they are written; a row that is not one names no sandbox.
        if let Ok(sandbox) = sandbox.parse::<SandboxKey>() {
            cuts.insert(sandbox, ranges_of(row)?);
        }
    }
    Ok(cuts)
}

/// Records what the baseline saw at `offset` ([`cuts::settled`]) under the row's lock, so that
/// of two baselines racing over a partition the first to commit wins and the second is handed
/// its ranges. Nothing is written when nothing changes.
async fn settle_cut(
    pool: &PgPool,
    place: &CutPlace,
    sandbox: &SandboxKey,
    forking: Option<i64>,
    offset: i64,
) -> Result<Vec<Range>, sqlx::Error> {
    const WHERE: &str = "WHERE grp = $1 AND topic = $2 AND part = $3 AND sandbox = $4";
    let mut tx = pool.begin().await?;
    if forking.is_some() {
        // A row to lock, for the first range of this sandbox here.
        sqlx::query(
            "INSERT INTO prodbox.kafka_cuts (grp, topic, part, sandbox) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(&place.group)
        .bind(&place.topic)
        .bind(place.partition)
        .bind(sandbox.as_str())
        .execute(&mut *tx)
        .await?;
    }
    let locked = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT incarnations, starts, ends FROM prodbox.kafka_cuts {WHERE} FOR UPDATE"
    )))
    .bind(&place.group)
    .bind(&place.topic)
    .bind(place.partition)
    .bind(sandbox.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let locked = locked
        .as_ref()
        .map(ranges_of)
        .transpose()?
        .unwrap_or_default();
    let ranges = cuts::settled(&locked, forking, offset);
    if ranges != locked {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE prodbox.kafka_cuts SET incarnations = $5, starts = $6, ends = $7,
                    updated_at = now() {WHERE}"
        )))
        .bind(&place.group)
        .bind(&place.topic)
        .bind(place.partition)
        .bind(sandbox.as_str())
        .bind(ranges.iter().map(|r| r.incarnation).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.start).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.end).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ranges)
}

/// Why one listening session ended.
enum Ended {
    /// The last clone of the directory is gone.
    Dropped,
    /// The connection failed; reconnect.
    Lost(String),
}

async fn watch(shared: Weak<Shared>, config: PgDirectoryBuilder) {
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

/// How long any one database call of a session may take before the session counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Reads the whole table into the snapshot.
async fn full_sync(shared: &Weak<Shared>, pool: &PgPool) -> Result<(), Ended> {
    if let Some(shared) = shared.upgrade() {
        shared.reads.fetch_add(1, Ordering::Relaxed);
    }
    let rows = io(
        "reading the directory",
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes"
        )))
        .fetch_all(pool),
    )
    .await?;
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
        if let Some(shared) = shared.upgrade() {
            shared.reads.fetch_add(1, Ordering::Relaxed);
        }
        let rows = io(
            "reading directory entries",
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM prodbox.sandboxes WHERE key = ANY($1)"
            )))
            .bind(&keys)
            .fetch_all(pool),
        )
        .await?;
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
