//! When a database call reads the sandbox context: the one rule every way into prodbox-db
//! follows (pools, connections, transactions; every executor method, stream and future).
//!
//! A call's work runs in the context of its **first poll**, where it actually starts. Where
//! prodbox also sees the call being made (every method of prodbox's own executors, and every
//! sqlx method that is not an `async fn`), the context there must agree: a stream or future made
//! in one context and first polled in another is refused with
//! [`SandboxDbError::ContextChanged`], because which of the two it belongs to cannot be known.
//! Once started, the work stays in that context: a stream or future polled again in another
//! (its first rows read in one context, the rest in another) ends with the same error.
//! Pools and connections that serve one context (the production pool, a connection or
//! transaction taken for a sandbox) refuse to be used in any other, at the call and at the
//! first poll, with [`SandboxDbError::WrongContext`]. A pool built with `require_scope` also
//! refuses work that runs in no scope prodbox attached ([`SandboxDbError::NoScope`]): work
//! that lost its request's context (`tokio::spawn`, a thread, a library's worker) then fails
//! instead of running as production. Every refusal is audited.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{TryStreamExt as _, stream};
use prodbox_core::audit::Decision;
use prodbox_core::{Sandbox, SandboxKey};
use sqlx::postgres::PgPool;

use crate::error::SandboxDbError;

/// The context of one call, read where the call is made.
pub(crate) struct Call {
    at_call: Option<Sandbox>,
    /// Whether the pool requires its work to run in a scope prodbox attached.
    require_scope: bool,
}

impl Call {
    /// Reads the context where the call is made, for a pool that requires a scope or not.
    pub(crate) fn now(require_scope: bool) -> Self {
        Self {
            at_call: prodbox_core::current(),
            require_scope,
        }
    }

    /// Refuses work that runs in no scope prodbox attached, where the pool requires one.
    fn scoped(&self) -> Result<(), SandboxDbError> {
        if !self.require_scope || prodbox_core::in_scope() {
            return Ok(());
        }
        let error = SandboxDbError::NoScope;
        error.audit(self.at_call.as_ref(), Decision::Rejected);
        Err(error)
    }

    /// At the first poll: the sandbox the work runs in (`None` for production), if the
    /// context there is the one the call was made in.
    pub(crate) fn start(self) -> Result<Option<Sandbox>, SandboxDbError> {
        self.scoped()?;
        let at_poll = prodbox_core::current();
        if key(self.at_call.as_ref()) == key(at_poll.as_ref()) {
            return Ok(at_poll);
        }
        let error = SandboxDbError::ContextChanged {
            at_call: self.at_call.as_ref().map(|s| s.key().clone()),
            at_poll: at_poll.as_ref().map(|s| s.key().clone()),
        };
        error.audit(
            self.at_call.as_ref().or(at_poll.as_ref()),
            Decision::Rejected,
        );
        Err(error)
    }

    /// At the first poll of work on a pool or connection that serves only `serves` (`None`:
    /// production): whether the context at the call and at the first poll are both that one.
    pub(crate) fn start_serving(
        self,
        serves: Option<&SandboxKey>,
        connection: bool,
    ) -> Result<(), SandboxDbError> {
        self.scoped()?;
        let at_poll = prodbox_core::current();
        for context in [self.at_call.as_ref(), at_poll.as_ref()] {
            if key(context) != serves {
                let error = SandboxDbError::WrongContext {
                    serves: serves.cloned(),
                    context: key(context).cloned(),
                    connection,
                };
                error.audit(context, Decision::Rejected);
                return Err(error);
            }
        }
        Ok(())
    }
}

fn key(sandbox: Option<&Sandbox>) -> Option<&SandboxKey> {
    sandbox.map(Sandbox::key)
}

/// A stream or future of database work that must be polled in the context it was first polled
/// in; see the [module docs](self).
#[pin_project::pin_project]
pub(crate) struct Stay<T> {
    #[pin]
    inner: T,
    /// The sandbox of the first poll (`Some(None)`: production), once polled.
    started: Option<Option<SandboxKey>>,
    ended: bool,
}

impl<T> Stay<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            started: None,
            ended: false,
        }
    }
}

/// Wraps database work in [`Stay`], boxed as sqlx's executors return it.
pub(crate) trait StayExt: Sized {
    fn stayed(self) -> Pin<Box<Stay<Self>>> {
        Box::pin(Stay::new(self))
    }
}

impl<T> StayExt for T {}

/// Records the context of the first poll, or checks that this poll's is the same.
fn stays(started: &mut Option<Option<SandboxKey>>) -> Result<(), sqlx::Error> {
    let Some(expected) = started else {
        *started = Some(prodbox_core::with_current(|s| key(s).cloned()));
        return Ok(());
    };
    if prodbox_core::with_current(|s| key(s) == expected.as_ref()) {
        return Ok(());
    }
    let now = prodbox_core::current();
    let error = SandboxDbError::ContextChanged {
        at_call: expected.clone(),
        at_poll: now.as_ref().map(|s| s.key().clone()),
    };
    error.audit(now.as_ref(), Decision::Rejected);
    Err(error.into())
}

impl<F, T> Future for Stay<F>
where
    F: Future<Output = Result<T, sqlx::Error>>,
{
    type Output = Result<T, sqlx::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        stays(this.started)?;
        this.inner.poll(cx)
    }
}

impl<S, T> Stream for Stay<S>
where
    S: Stream<Item = Result<T, sqlx::Error>>,
{
    type Item = Result<T, sqlx::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Err(error) = stays(this.started) {
            *this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        this.inner.poll_next(cx)
    }
}

/// A pool type whose executor follows the rule (the sandbox pool, the production pool): which
/// pool serves a call once the rule allows it, and how its errors read.
pub(crate) trait GuardedPool: Clone + Send + Sync + 'static {
    /// Whether work outside any scope is refused.
    fn require_scope(&self) -> bool;

    /// At the first poll of `call`: the pool that serves it and the sandbox it serves
    /// (`None`: production), or the refusal.
    fn serve(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<(PgPool, Option<Sandbox>), sqlx::Error>> + Send;

    /// `error`, from a statement run for `sandbox`, as prodbox reports it.
    fn refine(&self, error: sqlx::Error, sandbox: Option<&Sandbox>) -> sqlx::Error;
}

/// The future of one executor call on `guard`: `run` on the pool that serves it.
pub(crate) fn pool_future<'e, G, T, Fut>(
    guard: &G,
    run: impl FnOnce(PgPool) -> Fut + Send + 'e,
) -> BoxFuture<'e, Result<T, sqlx::Error>>
where
    G: GuardedPool,
    Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'e,
    T: Send + 'e,
{
    let (call, guard) = (Call::now(guard.require_scope()), guard.clone());
    async move {
        let (pool, sandbox) = guard.serve(call).await?;
        let result = run(pool).await;
        result.map_err(|error| guard.refine(error, sandbox.as_ref()))
    }
    .stayed()
}

/// The stream of one executor call on `guard`: `run` on the pool that serves it.
pub(crate) fn pool_stream<'e, G, T>(
    guard: &G,
    run: impl FnOnce(PgPool) -> BoxStream<'e, Result<T, sqlx::Error>> + Send + 'e,
) -> BoxStream<'e, Result<T, sqlx::Error>>
where
    G: GuardedPool,
    T: Send + 'e,
{
    let (call, guard) = (Call::now(guard.require_scope()), guard.clone());
    stream::once(async move {
        let (pool, sandbox) = guard.serve(call).await?;
        let items = run(pool).map_err(move |error| guard.refine(error, sandbox.as_ref()));
        Ok::<_, sqlx::Error>(items)
    })
    .try_flatten()
    .stayed()
}

/// Every sqlx executor method of a guarded executor whose lifetime is `$l`, each handing
/// sqlx's own method to the type's guard, which applies the rule at the first poll: `pool`
/// types through [`pool_future`] and [`pool_stream`], `conn` types through their own
/// `guarded` and `guarded_stream`.
macro_rules! guarded_executor_methods {
    ($l:lifetime, $mode:ident) => {
        type Database = Postgres;

        fn fetch_many<'e, 'q: 'e, E>(
            self,
            query: E,
        ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
        where
            $l: 'e,
            E: 'q + Execute<'q, Postgres>,
        {
            $crate::context::guarded_call!(stream, self, $mode, fetch_many(query))
        }

        fn fetch_optional<'e, 'q: 'e, E>(
            self,
            query: E,
        ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
        where
            $l: 'e,
            E: 'q + Execute<'q, Postgres>,
        {
            $crate::context::guarded_call!(future, self, $mode, fetch_optional(query))
        }

        fn prepare_with<'e>(
            self,
            sql: SqlStr,
            parameters: &'e [PgTypeInfo],
        ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
        where
            $l: 'e,
        {
            $crate::context::guarded_call!(future, self, $mode, prepare_with(sql, parameters))
        }

        fn describe<'e>(
            self,
            sql: SqlStr,
        ) -> BoxFuture<'e, Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
        where
            $l: 'e,
        {
            $crate::context::guarded_call!(future, self, $mode, describe(sql))
        }
    };
}
pub(crate) use guarded_executor_methods;

/// One call of sqlx's `$method` through the guard (see [`guarded_executor_methods`]).
macro_rules! guarded_call {
    (stream, $self:ident, pool, $method:ident($($arg:ident),*)) => {
        $crate::context::pool_stream($self, move |pool| (&pool).$method($($arg),*))
    };
    (future, $self:ident, pool, $method:ident($($arg:ident),*)) => {
        $crate::context::pool_future($self, move |pool| async move {
            (&pool).$method($($arg),*).await
        })
    };
    (stream, $self:ident, conn, $method:ident($($arg:ident),*)) => {
        $self.guarded_stream(move |conn| conn.$method($($arg),*))
    };
    (future, $self:ident, conn, $method:ident($($arg:ident),*)) => {
        $self.guarded(move |conn| conn.$method($($arg),*))
    };
}
pub(crate) use guarded_call;
