//! A production pool that refuses to serve sandboxed work.
//!
//! ```no_run
//! use prodbox_core::{FutureExt, Sandbox};
//! use prodbox_db::{ProductionPool, SandboxDbError};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A pool the service uses only for production work (a reporting replica, say).
//! let reports = ProductionPool::new(sqlx::PgPool::connect("postgres://127.0.0.1/shop").await?);
//!
//! // Production work runs as usual.
//! sqlx::query("SELECT count(*) FROM orders").fetch_one(&reports).await?;
//!
//! // A sandboxed request that reaches for it is refused, and the refusal is audited.
//! let error = sqlx::query("DELETE FROM orders")
//!     .execute(&reports)
//!     .in_sandbox(Sandbox::new("pr-42".parse()?))
//!     .await
//!     .unwrap_err();
//! assert!(matches!(SandboxDbError::of(&error), Some(SandboxDbError::WrongContext { .. })));
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use prodbox_core::Sandbox;
use sqlx::postgres::{PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres, SqlStr};

use crate::connection::{PoolConnection, Transaction};
use crate::context::{Call, GuardedPool};

/// A `PgPool` for production work only: it refuses, with
/// [`SandboxDbError::WrongContext`](crate::SandboxDbError::WrongContext) and an audit event, any
/// call made or first polled in a sandbox's context. [`SandboxPool::baseline`] is one; wrap
/// every other pool the service holds in one too. Cheap to clone.
///
/// [`SandboxPool::baseline`]: crate::SandboxPool::baseline
#[derive(Clone)]
pub struct ProductionPool {
    pool: PgPool,
    require_scope: bool,
}

impl fmt::Debug for ProductionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProductionPool")
            .field("size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl ProductionPool {
    /// Guards `pool`. Keep no other handle on it: a `PgPool` clone is not guarded.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            require_scope: false,
        }
    }

    /// Also refuses work that runs in no scope prodbox attached (see
    /// [`SandboxPoolBuilder::require_scope`](crate::SandboxPoolBuilder::require_scope)).
    pub fn require_scope(mut self, require: bool) -> Self {
        self.require_scope = require;
        self
    }

    /// The sqlx pool itself, for work that must run as production whatever the context (a
    /// cleanup started by a sandboxed request, migrations at start-up): nothing guards what runs
    /// on it. Taking it in a sandbox's context is audited (`stripped`, reason `db_unguarded`,
    /// with `why`). Outside a sandbox, nothing is recorded.
    pub fn unguarded(&self, why: &'static str) -> &PgPool {
        if let Some(sandbox) = prodbox_core::current() {
            crate::error::audit_unguarded(Some(&sandbox), why);
        }
        &self.pool
    }

    /// Connections open in the pool.
    pub fn size(&self) -> u32 {
        self.pool.size()
    }

    /// Idle connections in the pool.
    pub fn num_idle(&self) -> usize {
        self.pool.num_idle()
    }

    /// Closes the pool (see `PgPool::close`).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction for production work; it refuses sandboxed statements, as the pool
    /// does.
    pub fn begin(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static>, sqlx::Error>> + Send + 'static {
        let (call, pool) = (Call::now(self.require_scope), self.pool.clone());
        let require_scope = self.require_scope;
        async move {
            call.start_serving(None, false)?;
            Ok(Transaction::new(pool.begin().await?, None, require_scope))
        }
    }

    /// Takes a connection for production work; it refuses sandboxed statements, as the pool
    /// does.
    pub fn acquire(
        &self,
    ) -> impl Future<Output = Result<PoolConnection, sqlx::Error>> + Send + 'static {
        let (call, pool) = (Call::now(self.require_scope), self.pool.clone());
        let require_scope = self.require_scope;
        async move {
            call.start_serving(None, false)?;
            Ok(PoolConnection::new(
                pool.acquire().await?,
                None,
                require_scope,
            ))
        }
    }
}

impl<'p> Executor<'p> for &ProductionPool {
    crate::context::guarded_executor_methods!('p, pool);
}

impl GuardedPool for ProductionPool {
    fn require_scope(&self) -> bool {
        self.require_scope
    }

    async fn serve(&self, call: Call) -> Result<(PgPool, Option<Sandbox>), sqlx::Error> {
        call.start_serving(None, false)?;
        Ok((self.pool.clone(), None))
    }

    /// Production's errors are sqlx's own: there is no sandbox's role to refuse.
    fn refine(&self, error: sqlx::Error, _: Option<&Sandbox>) -> sqlx::Error {
        error
    }
}
