//! [`SandboxPool`]: which pool serves a call (the sandbox's own, opened and bounded per
//! process, or production's), and the limits on sandboxes' pools; the context rule it applies
//! lives in `context`, provisioning in `provision`.
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use std::future::Future;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use prodbox_core::audit::Decision;
pub use prodbox_core::task::Janitor;
use prodbox_core::{Sandbox, SandboxKey};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres, SqlStr};
use tokio::sync::OnceCell;

use crate::connection::{PoolConnection, Transaction};
use crate::context::{Call, GuardedPool};
use crate::error::SandboxDbError;
use crate::production::ProductionPool;
use crate::provision::{Provisioner, SchemaRecord};
use crate::watchdog::Watchdog;

/// A pool of a sandbox that has been idle this long may give its slot to another sandbox.
const EVICTABLE_AFTER: Duration = Duration::from_millis(20);
/// How often a sandbox waiting for a slot looks again.
const SLOT_POLL: Duration = Duration::from_millis(5);

/// Builds a [`SandboxPool`].
#[derive(Clone)]
pub struct SandboxPoolBuilder {
    baseline: PgPool,
    migrator: Option<Arc<Migrator>>,
    seed: Option<Arc<str>>,
    connections_per_sandbox: u32,
    max_active_sandboxes: usize,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    default_ttl: Duration,
    role_connection_limit: u32,
    statement_bound: Duration,
    require_scope: bool,
}

impl fmt::Debug for SandboxPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxPoolBuilder")
            .field("migrations", &self.migrator.is_some())
            .field("seed", &self.seed.is_some())
            .field("connections_per_sandbox", &self.connections_per_sandbox)
            .field("max_active_sandboxes", &self.max_active_sandboxes)
            .finish_non_exhaustive()
    }
}

impl SandboxPoolBuilder {
    /// Provisions each sandbox by running these migrations into its schema (the preferred way:
    /// the sandbox gets exactly the service's schema, with its own sequences).
    pub fn migrations(mut self, mut migrator: Migrator) -> Self {
        // Without sqlx's database-wide advisory lock: each sandbox's migrations table is its
        // own and provisioning holds the sandbox's lock, while that advisory lock is one any
        // session (a sandbox's, production's own migration) may hold, and one the operator may
        // have revoked from PUBLIC.
        migrator.set_locking(false);
        self.migrator = Some(Arc::new(migrator));
        self
    }

    prodbox_core::plumbing::setters! {
        /// SQL run in each new sandbox schema after the migrations (seed data).
        seed(sql: &str) => seed = Some(Arc::from(sql));

        /// Connections each active sandbox may hold (default 2).
        connections_per_sandbox(connections: u32) => connections_per_sandbox = connections.max(1);

        /// Sandboxes with a pool at once (default 16). With `connections_per_sandbox`, this bounds
        /// the connections sandboxes can take: past it, a sandbox waits for an idle one's slot up
        /// to the acquire timeout, then fails with [`SandboxDbError::Capacity`].
        max_active_sandboxes(sandboxes: usize) => max_active_sandboxes = sandboxes.max(1);

        /// Closes a sandbox's idle connections after this long (default 60 s).
        idle_timeout(timeout: Duration) => idle_timeout = timeout;

        /// How long a sandboxed call waits for a slot or a connection (default 30 s).
        acquire_timeout(timeout: Duration) => acquire_timeout = timeout;

        /// Expiry recorded for sandboxes that carry none (default 24 h after last use).
        default_ttl(ttl: Duration) => default_ttl = ttl;

        /// `CONNECTION LIMIT` of each sandbox's role (default 16): the connections all processes
        /// together may hold for one sandbox. Each process holds at most `connections_per_sandbox`.
        role_connection_limit(connections: u32) => role_connection_limit = connections.max(1);

        /// Refuses database work that runs in no scope prodbox attached (`SandboxDbError::NoScope`,
        /// audited), on this pool, its production pool and their connections. Off by default. With
        /// it on, work that lost its request's context (`tokio::spawn`, a thread, a library's
        /// worker) fails instead of running as production, whatever it was doing for a sandbox;
        /// prodbox's server layers and Kafka consumer give every request and message a scope, and
        /// the service runs its own background work with `prodbox_core::FutureExt::in_production`.
        require_scope(require: bool) => require_scope = require;

        /// How long a sandbox's statement may run, or its transaction stay open (default 30 s). The
        /// sandbox's role has it as its `statement_timeout` and
        /// `idle_in_transaction_session_timeout`, and since a session may change those, a watchdog
        /// in each process ends any of its sandbox backends that runs past it, or that sits idle
        /// holding an advisory lock (audited, `db_statement_bound`).
        statement_bound(bound: Duration) => statement_bound = bound.max(Duration::from_millis(1));
    }

    /// Finishes the pool.
    pub fn build(self) -> SandboxPool {
        let provisioner = Provisioner {
            options: self.baseline.connect_options(),
            migrator: self.migrator,
            seed: self.seed,
            default_ttl: self.default_ttl,
            connection_limit: self.role_connection_limit,
            statement_bound: self.statement_bound,
            lock_timeout: self.acquire_timeout,
            database: Arc::default(),
        };
        SandboxPool {
            inner: Arc::new(Inner {
                baseline: ProductionPool::new(self.baseline.clone())
                    .require_scope(self.require_scope),
                require_scope: self.require_scope,
                pool: self.baseline,
                provisioner,
                connections_per_sandbox: self.connections_per_sandbox,
                max_active: self.max_active_sandboxes,
                idle_timeout: self.idle_timeout,
                acquire_timeout: self.acquire_timeout,
                touch_every: (self.default_ttl / 4).min(Duration::from_secs(60)),
                statement_bound: self.statement_bound,
                watchdog: Arc::new(Watchdog::new()),
                active: Mutex::new(HashMap::default()),
            }),
        }
    }
}

/// A `PgPool` that sends each sandboxed call to that sandbox's own schema; see the
/// [crate docs](crate). Cheap to clone.
#[derive(Clone)]
pub struct SandboxPool {
    inner: Arc<Inner>,
}

struct Inner {
    require_scope: bool,
    /// The production pool, guarded, as handed out by `baseline()`.
    baseline: ProductionPool,
    /// The same pool, for production work this pool has already decided on.
    pool: PgPool,
    provisioner: Provisioner,
    connections_per_sandbox: u32,
    max_active: usize,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    touch_every: Duration,
    statement_bound: Duration,
    /// Ends sandbox backends of this process that break the statement bound.
    watchdog: Arc<Watchdog>,
    /// Looked up on every sandboxed call; keys come from admitted sandboxes, so foldhash's
    /// speed is worth more than SipHash's flood resistance (the map is bounded anyway).
    active: Mutex<HashMap<SandboxKey, Arc<Slot>, foldhash::fast::RandomState>>,
}

/// A sandbox's pool, created once (provisioning included) by whichever call needs it first.
struct Slot {
    /// The incarnation the pool was opened for, when the sandbox named one.
    incarnation: Option<i64>,
    pool: OnceCell<PgPool>,
    last_used: Mutex<Instant>,
    /// When this process last told the catalogue the sandbox is in use.
    recorded_use: Mutex<Instant>,
}

impl Slot {
    /// Whether this slot's pool may serve `sandbox`: the same incarnation, or `sandbox` names
    /// none.
    fn serves(&self, sandbox: &Sandbox) -> bool {
        match crate::provision::incarnation_of(sandbox) {
            Some(incarnation) => self.incarnation == Some(incarnation),
            None => true,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for SandboxPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxPool")
            .field("active_sandboxes", &self.active_sandboxes())
            .finish_non_exhaustive()
    }
}

impl SandboxPool {
    /// Wraps `baseline` with default settings (no migrations: sandbox schemas start empty).
    pub fn new(baseline: PgPool) -> Self {
        Self::builder(baseline).build()
    }

    /// Starts configuring a pool around `baseline`.
    pub fn builder(baseline: PgPool) -> SandboxPoolBuilder {
        SandboxPoolBuilder {
            baseline,
            migrator: None,
            seed: None,
            connections_per_sandbox: 2,
            max_active_sandboxes: 16,
            idle_timeout: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(30),
            default_ttl: Duration::from_secs(24 * 3600),
            role_connection_limit: 16,
            statement_bound: Duration::from_secs(30),
            require_scope: false,
        }
    }

    /// The production pool. It refuses sandboxed work (see [`ProductionPool`]); for work that
    /// must run as production whatever the context, use
    /// [`ProductionPool::unguarded`].
    pub fn baseline(&self) -> &ProductionPool {
        &self.inner.baseline
    }

    /// How many sandboxes hold a pool in this process.
    pub fn active_sandboxes(&self) -> usize {
        lock(&self.inner.active).len()
    }

    /// Connections held by sandbox pools in this process.
    pub fn sandbox_connections(&self) -> u32 {
        lock(&self.inner.active)
            .values()
            .filter_map(|slot| slot.pool.get())
            .map(PgPool::size)
            .sum()
    }

    /// Starts a transaction in the current context: on the sandbox's pool, or with no sandbox,
    /// the production pool. The transaction serves only that context (see [`Transaction`]).
    pub fn begin(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static>, sqlx::Error>> + Send + 'static {
        let (call, this) = (Call::now(self.inner.require_scope), self.clone());
        async move {
            let sandbox = call.start()?;
            let pool = this.pool_of(sandbox.as_ref()).await?;
            let tx = pool
                .begin()
                .await
                .map_err(|error| this.refine(error, sandbox.as_ref()))?;
            Ok(Transaction::new(tx, sandbox, this.inner.require_scope))
        }
    }

    /// Takes a connection in the current context: from the sandbox's pool, or with no sandbox,
    /// the production pool. The connection serves only that context (see [`PoolConnection`]).
    pub fn acquire(
        &self,
    ) -> impl Future<Output = Result<PoolConnection, sqlx::Error>> + Send + 'static {
        let (call, this) = (Call::now(self.inner.require_scope), self.clone());
        async move {
            let sandbox = call.start()?;
            let pool = this.pool_of(sandbox.as_ref()).await?;
            let conn = pool
                .acquire()
                .await
                .map_err(|error| this.refine(error, sandbox.as_ref()))?;
            Ok(PoolConnection::new(conn, sandbox, this.inner.require_scope))
        }
    }

    /// The sqlx pool of `sandbox`, provisioning its schema on first use. It is not guarded:
    /// whatever uses it runs in that sandbox's schema as its role (never in production), in any
    /// context. For tools and tests; applications use the `SandboxPool` itself. Asked for in
    /// another sandbox's context, it is refused (`WrongContext`).
    pub async fn pool_for(&self, sandbox: &Sandbox) -> Result<PgPool, sqlx::Error> {
        // Not for another sandbox's request: it would hand that request this one's data.
        if let Some(other) =
            prodbox_core::with_current(|s| s.filter(|s| s.key() != sandbox.key()).cloned())
        {
            let error = SandboxDbError::WrongContext {
                serves: Some(sandbox.key().clone()),
                context: Some(other.key().clone()),
                connection: false,
            };
            error.audit(Some(&other), Decision::Rejected);
            return Err(error.into());
        }
        if let Some(pool) = self.open_pool(sandbox)? {
            return Ok(pool);
        }
        let slot = self.slot(sandbox).await?;
        let result = match slot.pool.get() {
            Some(pool) => Ok(pool.clone()),
            None => self.provision_in_task(sandbox, &slot).await,
        };
        match result {
            Ok(pool) => {
                let now = Instant::now();
                *lock(&slot.last_used) = now;
                // A sandbox in use must not expire under its users: record use now and then.
                let due = {
                    let mut recorded = lock(&slot.recorded_use);
                    let due = now.duration_since(*recorded) >= self.inner.touch_every;
                    if due {
                        *recorded = now;
                    }
                    due
                };
                if due {
                    match self.inner.provisioner.touch(sandbox).await {
                        Ok(()) => {}
                        // Production gained a grant that exposes it: refused from now on.
                        Err(error @ SandboxDbError::ProductionExposed { .. }) => {
                            self.forget(sandbox.key());
                            error.audit(Some(sandbox), Decision::Rejected);
                            return Err(error.into());
                        }
                        Err(error) => {
                            tracing::warn!(target: "prodbox::db", sandbox = %sandbox.key(), %error, "could not record sandbox use");
                        }
                    }
                }
                Ok(pool)
            }
            Err(error) => {
                error.audit(Some(sandbox), Decision::Rejected);
                Err(error.into())
            }
        }
    }

    /// The pool of `sandbox` when it is open and nothing else is due (no provisioning, no use
    /// to record): every call but a sandbox's first, without a future of its own. An expired
    /// sandbox is refused here.
    fn open_pool(&self, sandbox: &Sandbox) -> Result<Option<PgPool>, sqlx::Error> {
        if sandbox.is_expired_at(SystemTime::now()) {
            let error = SandboxDbError::Expired(sandbox.key().clone());
            error.audit(Some(sandbox), Decision::Rejected);
            return Err(error.into());
        }
        let Some(slot) = lock(&self.inner.active).get(sandbox.key()).cloned() else {
            return Ok(None);
        };
        if !slot.serves(sandbox) {
            return Ok(None);
        }
        let Some(pool) = slot.pool.get() else {
            return Ok(None);
        };
        let now = Instant::now();
        if now.duration_since(*lock(&slot.recorded_use)) >= self.inner.touch_every {
            return Ok(None);
        }
        *lock(&slot.last_used) = now;
        Ok(Some(pool.clone()))
    }

    /// Fills `slot` (provisioning the sandbox) in a task of its own: a caller that gives up
    /// half-way (a request timeout) must not leave a half-made schema, or a slot nobody fills.
    /// A failed slot is forgotten, so that the next call starts from scratch.
    async fn provision_in_task(
        &self,
        sandbox: &Sandbox,
        slot: &Arc<Slot>,
    ) -> Result<PgPool, SandboxDbError> {
        let (this, owned, slot) = (self.clone(), sandbox.clone(), Arc::clone(slot));
        let task = tokio::spawn(async move {
            let result = slot
                .pool
                .get_or_try_init(|| this.open(&owned))
                .await
                .cloned();
            if result.is_err() {
                let mut active = lock(&this.inner.active);
                if active
                    .get(owned.key())
                    .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    active.remove(owned.key());
                }
            }
            result
        });
        task.await.unwrap_or_else(|_| {
            Err(SandboxDbError::Provisioning {
                sandbox: sandbox.key().clone(),
                source: sqlx::Error::WorkerCrashed,
            })
        })
    }

    /// A slot for `sandbox`: its own, a free one, or one an idle sandbox gives up. Waits up to
    /// the acquire timeout.
    async fn slot(&self, sandbox: &Sandbox) -> Result<Arc<Slot>, sqlx::Error> {
        let deadline = Instant::now() + self.inner.acquire_timeout;
        loop {
            let evicted = {
                let mut active = lock(&self.inner.active);
                match active.get(sandbox.key()) {
                    Some(slot) if slot.serves(sandbox) => return Ok(Arc::clone(slot)),
                    Some(slot)
                        if slot.incarnation.is_some_and(|open| {
                            crate::provision::incarnation_of(sandbox).is_some_and(|i| i < open)
                        }) =>
                    {
                        let error = SandboxDbError::StaleIncarnation {
                            sandbox: sandbox.key().clone(),
                        };
                        error.audit(Some(sandbox), Decision::Rejected);
                        return Err(error.into());
                    }
                    // Opened for an earlier incarnation: this one opens its own (provisioning
                    // drops the old schema). Whoever still holds the old pool keeps it.
                    Some(_) => {
                        active.remove(sandbox.key());
                    }
                    None => {}
                }
                let evicted = if active.len() >= self.inner.max_active {
                    let now = Instant::now();
                    let victim = active
                        .iter()
                        .filter(|(_, slot)| {
                            slot.pool.get().is_some_and(|pool| {
                                pool.size() as usize == pool.num_idle()
                                    && now.duration_since(*lock(&slot.last_used)) >= EVICTABLE_AFTER
                            })
                        })
                        .min_by_key(|(_, slot)| *lock(&slot.last_used))
                        .map(|(key, _)| key.clone());
                    victim.and_then(|key| active.remove(&key))
                } else {
                    None
                };
                if active.len() < self.inner.max_active {
                    let slot = Arc::new(Slot {
                        incarnation: crate::provision::incarnation_of(sandbox),
                        pool: OnceCell::new(),
                        last_used: Mutex::new(Instant::now()),
                        recorded_use: Mutex::new(Instant::now()),
                    });
                    active.insert(sandbox.key().clone(), Arc::clone(&slot));
                    // The evicted pool is not closed: a caller may still hold it. Its
                    // connections close as its last handle goes, or idle out.
                    drop(evicted);
                    return Ok(slot);
                }
                active.len()
            };
            if Instant::now() >= deadline {
                let error = SandboxDbError::Capacity {
                    sandbox: sandbox.key().clone(),
                    active: evicted,
                };
                error.audit(Some(sandbox), Decision::Throttled);
                return Err(error.into());
            }
            tokio::time::sleep(SLOT_POLL).await;
        }
    }

    /// Provisions `sandbox` and opens its pool: every connection logs in as the sandbox's own
    /// role, whose sessions start with only its schema on the search path.
    async fn open(&self, sandbox: &Sandbox) -> Result<PgPool, SandboxDbError> {
        let credentials = self.inner.provisioner.ensure(sandbox).await?;
        let bound = self.inner.statement_bound.as_millis().max(1).to_string();
        // Also as the session's start-up settings, which outrank any default a sandbox could
        // give its role between two resets (`ALTER ROLE CURRENT_USER IN DATABASE .. SET`).
        let options = (*self.inner.provisioner.options)
            .clone()
            .username(&credentials.role)
            .password(&credentials.password)
            .options([
                // Schema names are `[a-z0-9_]`: no quoting, so it reads back as it is.
                (
                    "search_path",
                    crate::names::schema_name(sandbox.key()).as_str(),
                ),
                ("statement_timeout", bound.as_str()),
                ("idle_in_transaction_session_timeout", bound.as_str()),
            ]);
        self.inner
            .watchdog
            .start(&self.inner.pool, self.inner.statement_bound);
        Ok(PgPoolOptions::new()
            .max_connections(self.inner.connections_per_sandbox)
            .min_connections(0)
            .idle_timeout(self.inner.idle_timeout)
            .acquire_timeout(self.inner.acquire_timeout)
            .after_connect(self.inner.watchdog.registrar(sandbox.clone()))
            .connect_lazy_with(options))
    }

    /// Forgets this process's pool for `key` (without closing it under whoever still holds
    /// it): the next call opens a new one, re-provisioning if the sandbox was dropped.
    fn forget(&self, key: &SandboxKey) {
        lock(&self.inner.active).remove(key);
    }

    /// Drops `key`'s schema and role, closing this process's pool for it first. Returns whether
    /// the sandbox was recorded.
    pub async fn drop_sandbox(&self, key: &SandboxKey) -> Result<bool, sqlx::Error> {
        self.drop_if(key, None).await
    }

    async fn drop_if(
        &self,
        key: &SandboxKey,
        only_if_expired_by: Option<SystemTime>,
    ) -> Result<bool, sqlx::Error> {
        let close_local = || {
            let slot = lock(&self.inner.active).remove(key);
            slot.and_then(|s| s.pool.get().cloned())
        };
        if only_if_expired_by.is_none()
            && let Some(pool) = close_local()
        {
            pool.close().await;
        }
        let dropped = self
            .inner
            .provisioner
            .drop_sandbox(key, only_if_expired_by)
            .await?;
        // The janitor's drop is decided under the lock: only then does this process's pool go.
        if dropped
            && only_if_expired_by.is_some()
            && let Some(pool) = close_local()
        {
            pool.close().await;
        }
        Ok(dropped)
    }

    /// Every recorded sandbox schema.
    pub async fn schemas(&self) -> Result<Vec<SchemaRecord>, sqlx::Error> {
        self.inner.provisioner.list().await
    }

    /// Drops every sandbox whose schema expired by `now`. One that cannot be dropped is
    /// reported and tried again next time; it does not keep the others from going. Fails only
    /// when the expired sandboxes cannot be listed.
    pub async fn drop_expired(&self, now: SystemTime) -> Result<DropReport, sqlx::Error> {
        let mut report = DropReport::default();
        for key in self.inner.provisioner.expired(now).await? {
            match self.drop_if(&key, Some(now)).await {
                Ok(true) => report.dropped.push(key),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(target: "prodbox::db", sandbox = %key, %error, "could not drop an expired sandbox; trying again next time");
                    report.failed.push((key, error));
                }
            }
        }
        Ok(report)
    }

    /// Starts a janitor on the current Tokio runtime that drops expired sandboxes every
    /// `interval`, until the returned handle is dropped.
    pub fn start_janitor(&self, interval: Duration) -> Janitor {
        let pool = self.clone();
        Janitor::every(interval, move || {
            let pool = pool.clone();
            async move {
                match pool.drop_expired(SystemTime::now()).await {
                    Ok(report) if !report.dropped.is_empty() => {
                        let dropped = report.dropped;
                        tracing::info!(target: "prodbox::db", ?dropped, "janitor dropped expired sandbox schemas");
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(target: "prodbox::db", %error, "janitor could not drop expired sandbox schemas");
                    }
                }
            }
        })
    }

    /// `error` from a call made for `sandbox`, typed (see [`crate::error::refine`]); when it
    /// shows that the sandbox's pool is of no further use, the pool is forgotten.
    fn refine_error(&self, error: sqlx::Error, sandbox: Option<&Sandbox>) -> sqlx::Error {
        let Some(sandbox) = sandbox else {
            return error;
        };
        // Signs that the sandbox was dropped elsewhere (schema, table or role gone) or its
        // pool cannot connect: open a fresh pool next time, which re-provisions if needed.
        // (A missing table alone, 42P01, is usually the application's own mistake and says
        // nothing about the sandbox; a timeout is load. Neither throws the pool away.)
        let gone = match &error {
            sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("3F000" | "28000" | "28P01"))
            }
            sqlx::Error::PoolClosed => true,
            _ => false,
        };
        if gone {
            self.forget(sandbox.key());
        }
        crate::error::refine(error, Some(sandbox))
    }
}

/// What [`SandboxPool::drop_expired`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct DropReport {
    /// The sandboxes dropped.
    pub dropped: Vec<SandboxKey>,
    /// The sandboxes that could not be dropped (tried again next time), with why.
    pub failed: Vec<(SandboxKey, sqlx::Error)>,
}

/// Every method reads the context twice, by the rule of the crate docs ("When the context is read"): where it is called,
/// and at the first poll of its work, which runs in the sandbox of that poll.
impl<'p> Executor<'p> for &SandboxPool {
    crate::context::guarded_executor_methods!('p, pool);
}

impl GuardedPool for SandboxPool {
    fn require_scope(&self) -> bool {
        self.inner.require_scope
    }

    async fn serve(&self, call: Call) -> Result<(PgPool, Option<Sandbox>), sqlx::Error> {
        let sandbox = call.start()?;
        Ok((self.pool_of(sandbox.as_ref()).await?, sandbox))
    }

    fn refine(&self, error: sqlx::Error, sandbox: Option<&Sandbox>) -> sqlx::Error {
        self.refine_error(error, sandbox)
    }
}

impl SandboxPool {
    /// The pool for `sandbox` (`None`: production). Open pools are returned at once; opening
    /// one is a boxed future owning what it needs, as the executor's streams must be `Send` for
    /// every lifetime, which borrowed captures cannot promise.
    async fn pool_of(&self, sandbox: Option<&Sandbox>) -> Result<PgPool, sqlx::Error> {
        let Some(sandbox) = sandbox else {
            return Ok(self.inner.pool.clone());
        };
        if let Some(pool) = self.open_pool(sandbox)? {
            return Ok(pool);
        }
        let (this, sandbox) = (self.clone(), sandbox.clone());
        let opening: BoxFuture<'static, _> = Box::pin(async move { this.pool_for(&sandbox).await });
        opening.await
    }
}
