//! Connections and transactions that serve only the context they were taken for.
//!
//! [`SandboxPool::begin`](crate::SandboxPool::begin) and
//! [`acquire`](crate::SandboxPool::acquire) (and the same methods of
//! [`ProductionPool`](crate::ProductionPool)) return these instead of sqlx's own types. They are
//! used the same way (`.execute(&mut *tx)`, `tx.commit()`), but remember which sandbox they
//! were taken for, or production, and refuse to run statements for any other context
//! ([`SandboxDbError::WrongContext`](crate::SandboxDbError::WrongContext)): a production
//! transaction kept across a sandboxed request cannot write production data for it, and a
//! sandbox's connection cannot carry production rows into the sandbox. Statements a sandbox's
//! role may not run come back as
//! [`SandboxDbError::ProductionAccessRefused`](crate::SandboxDbError::ProductionAccessRefused),
//! audited, as on the pool.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{TryFutureExt as _, TryStreamExt as _, stream};
use prodbox_core::Sandbox;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres, SqlStr};

use crate::context::{Call, StayExt as _};
use crate::error::refine;

/// A sqlx connection (a pooled connection or a transaction) that runs statements only for the
/// context it serves. `&mut GuardedConnection` is a sqlx [`Executor`]; reach it with
/// `&mut *conn` or `&mut *tx`, as with sqlx's own types.
pub struct GuardedConnection<C> {
    conn: C,
    serves: Option<Sandbox>,
    require_scope: bool,
}

impl<C> fmt::Debug for GuardedConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedConnection")
            .field("serves", &self.serves.as_ref().map(Sandbox::key))
            .finish_non_exhaustive()
    }
}

impl<C: DerefMut<Target = PgConnection>> GuardedConnection<C> {
    /// The sandbox this connection serves, or `None` for production.
    pub fn serves(&self) -> Option<&Sandbox> {
        self.serves.as_ref()
    }

    /// The sqlx connection itself, for code that needs a `&mut PgConnection`: nothing guards
    /// what runs on it. When the current context is not the one this connection serves, taking
    /// it is audited (`stripped`, reason `db_unguarded`, with `why`).
    pub fn unguarded(&mut self, why: &'static str) -> &mut PgConnection {
        let current = prodbox_core::current();
        if current.as_ref().map(Sandbox::key) != self.serves.as_ref().map(Sandbox::key) {
            crate::error::audit_unguarded(current.as_ref(), why);
        }
        &mut self.conn
    }

    /// At the first poll of a statement on this connection: whether the context at the call
    /// and at the first poll are the one it serves, and that sandbox has not expired since.
    fn start(call: Call, serves: Option<&Sandbox>) -> Result<(), sqlx::Error> {
        call.start_serving(serves.map(Sandbox::key), true)?;
        if let Some(sandbox) = serves
            && sandbox.is_expired_at(std::time::SystemTime::now())
        {
            let error = crate::SandboxDbError::Expired(sandbox.key().clone());
            error.audit(Some(sandbox), prodbox_core::audit::Decision::Rejected);
            return Err(error.into());
        }
        Ok(())
    }
}

impl<'c, C> Executor<'c> for &'c mut GuardedConnection<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    crate::context::guarded_executor_methods!('c, conn);
}

impl<C: DerefMut<Target = PgConnection> + Send> GuardedConnection<C> {
    /// At the first poll, once [`start`](Self::start) allows it: `run` on the connection.
    /// Its errors are left to the caller to refine.
    fn serve<'c, 'e, T, Fut>(
        &'c mut self,
        run: impl FnOnce(&'c mut PgConnection) -> Fut + Send + 'e,
    ) -> impl Future<Output = Result<T, sqlx::Error>> + Send + 'e
    where
        'c: 'e,
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'e,
    {
        let call = Call::now(self.require_scope);
        let serves = self.serves.clone();
        let conn: &'c mut PgConnection = &mut self.conn;
        async move {
            Self::start(call, serves.as_ref())?;
            run(conn).await
        }
    }

    /// The future of one executor call: `run` on the connection, its refusals refined.
    fn guarded<'c, 'e, T, Fut>(
        &'c mut self,
        run: impl FnOnce(&'c mut PgConnection) -> Fut + Send + 'e,
    ) -> BoxFuture<'e, Result<T, sqlx::Error>>
    where
        'c: 'e,
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'e,
        T: Send + 'e,
    {
        let serves = self.serves.clone();
        self.serve(run)
            .map_err(move |error| refine(error, serves.as_ref()))
            .stayed()
    }

    /// The stream of one executor call: `run` on the connection, its refusals refined.
    fn guarded_stream<'c, 'e, T>(
        &'c mut self,
        run: impl FnOnce(&'c mut PgConnection) -> BoxStream<'e, Result<T, sqlx::Error>> + Send + 'e,
    ) -> BoxStream<'e, Result<T, sqlx::Error>>
    where
        'c: 'e,
        T: Send + 'e,
    {
        let serves = self.serves.clone();
        stream::once(self.serve(move |conn| async move { Ok(run(conn)) }))
            .try_flatten()
            .map_err(move |error| refine(error, serves.as_ref()))
            .stayed()
    }
}

/// A connection taken from a [`SandboxPool`](crate::SandboxPool) or a
/// [`ProductionPool`](crate::ProductionPool), serving only the context it was taken in; see the
/// [module docs](self). Goes back to its pool when dropped.
#[derive(Debug)]
pub struct PoolConnection {
    inner: GuardedConnection<sqlx::pool::PoolConnection<Postgres>>,
}

impl PoolConnection {
    pub(crate) fn new(
        conn: sqlx::pool::PoolConnection<Postgres>,
        serves: Option<Sandbox>,
        require_scope: bool,
    ) -> Self {
        Self {
            inner: GuardedConnection {
                conn,
                serves,
                require_scope,
            },
        }
    }

    /// Starts a transaction on this connection, in the context it serves.
    pub fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_>, sqlx::Error>> + Send {
        let call = Call::now(self.inner.require_scope);
        let (serves, require_scope) = (self.inner.serves.clone(), self.inner.require_scope);
        let conn = &mut *self.inner.conn;
        async move {
            GuardedConnection::<sqlx::pool::PoolConnection<Postgres>>::start(
                call,
                serves.as_ref(),
            )?;
            let tx = sqlx::Connection::begin(conn)
                .await
                .map_err(|error| refine(error, serves.as_ref()))?;
            Ok(Transaction::new(tx, serves, require_scope))
        }
    }
}

impl Deref for PoolConnection {
    type Target = GuardedConnection<sqlx::pool::PoolConnection<Postgres>>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for PoolConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// A transaction begun on a [`SandboxPool`](crate::SandboxPool), a
/// [`ProductionPool`](crate::ProductionPool) or one of their connections, serving only the
/// context it was begun in; see the [module docs](self). Rolled back if dropped uncommitted.
#[derive(Debug)]
pub struct Transaction<'c> {
    inner: GuardedConnection<sqlx::Transaction<'c, Postgres>>,
}

impl<'c> Transaction<'c> {
    pub(crate) fn new(
        tx: sqlx::Transaction<'c, Postgres>,
        serves: Option<Sandbox>,
        require_scope: bool,
    ) -> Self {
        Self {
            inner: GuardedConnection {
                conn: tx,
                serves,
                require_scope,
            },
        }
    }

    /// Commits the transaction, in the context it serves only: committed from anywhere else,
    /// it is refused and rolled back.
    pub fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
        let call = Call::now(self.inner.require_scope);
        async move {
            let serves = self.inner.serves;
            GuardedConnection::<sqlx::Transaction<'c, Postgres>>::start(call, serves.as_ref())?;
            self.inner
                .conn
                .commit()
                .map_err(|error| refine(error, serves.as_ref()))
                .await
        }
    }

    /// Rolls the transaction back (from any context: undoing is always safe).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.conn.rollback().await
    }

    /// Starts a nested transaction (a savepoint), in the context this one serves.
    pub fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_>, sqlx::Error>> + Send {
        let call = Call::now(self.inner.require_scope);
        let (serves, require_scope) = (self.inner.serves.clone(), self.inner.require_scope);
        let tx = &mut self.inner.conn;
        async move {
            GuardedConnection::<sqlx::Transaction<'c, Postgres>>::start(call, serves.as_ref())?;
            let nested = sqlx::Acquire::begin(tx)
                .await
                .map_err(|error| refine(error, serves.as_ref()))?;
            Ok(Transaction::new(nested, serves, require_scope))
        }
    }
}

impl<'c> Deref for Transaction<'c> {
    type Target = GuardedConnection<sqlx::Transaction<'c, Postgres>>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}
