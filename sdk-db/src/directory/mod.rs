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
//! let mut entry = SandboxEntry::new("pr-42".parse()?).fork("billing", "http://10.0.0.5:8080".parse()?);
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

mod cuts;
mod store;
mod table;
mod watch;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prodbox_core::SandboxKey;
use prodbox_core::directory::{
    CutFuture, CutPlace, Directory, MemoryDirectory, PartitionCuts, Range, SandboxEntry, Sighting,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

use cuts::{cut_io, read_cuts, settle_cut};
pub use store::DirectoryStore;
pub use table::{ensure_table, validate_fork};
pub use watch::MAX_READS_PER_SECOND;
use watch::watch;

/// The channel every change to the table is announced on; the payload is the sandbox key, or
/// `*` for "read everything again" (after a `TRUNCATE`).
pub const CHANNEL: &str = "prodbox_directory";

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

/// How long any one database call of a session may take before the session counts as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures a [`PgDirectory`].
#[derive(Debug, Clone)]
pub struct PgDirectoryBuilder {
    options: Arc<PgConnectOptions>,
    heartbeat: Duration,
    staleness_bound: Duration,
    retention: Duration,
}

impl PgDirectoryBuilder {
    prodbox_core::plumbing::setters! {
        /// How often the directory proves its connection alive (default 2 s). A connection silent
        /// for three heartbeats is dropped and reopened.
        heartbeat(interval: Duration) => heartbeat = interval.max(Duration::from_millis(10));

        /// How long the directory may go without hearing from the database before it reports itself
        /// stale (default 10 s).
        staleness_bound(bound: Duration) => staleness_bound = bound;

        /// How long after expiry a row is kept (default 1 hour), so a late request is refused as
        /// expired rather than treated as unknown.
        retention(retention: Duration) => retention = retention;
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

    fn settle_cut<'a>(&'a self, seen: Sighting<'a>) -> CutFuture<'a, Vec<Range>> {
        Box::pin(cut_io(settle_cut(&self.shared.cuts, seen)))
    }
}
