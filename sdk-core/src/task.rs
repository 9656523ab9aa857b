//! Work that runs somewhere else (another task, a blocking thread, an OS thread, a worker of a
//! library) keeping the sandbox context of the code that started it.
//!
//! <div class="warning">
//!
//! The context lives in a thread-local slot that async code re-attaches at every poll. Work that
//! starts anywhere else starts with **no** context and runs as production: `tokio::spawn`,
//! `tokio::task::spawn_blocking`, `std::thread::spawn`, `JoinSet::spawn`, and libraries that
//! call your code from tasks of their own (tower's `Buffer` worker, for one). Use the helpers
//! here instead, and let clippy tell you where you did not: `docs/clippy.toml` is a ready
//! configuration that flags each of those calls.
//!
//! </div>
//!
//! | instead of | use |
//! |---|---|
//! | `tokio::spawn(f)` | [`spawn(f)`](spawn) |
//! | `tokio::task::spawn_blocking(f)` | [`spawn_blocking(f)`](spawn_blocking) |
//! | `std::thread::spawn(f)` | [`spawn_thread(f)`](spawn_thread) |
//! | `std::thread::Builder::new()..spawn(f)`, a thread pool, a callback | `..spawn(`[`carry(f)`](carry)`)` |
//! | `join_set.spawn(f)`, another executor | `join_set.spawn(f.`[`in_current_sandbox()`](crate::FutureExt::in_current_sandbox)`)` |
//! | a tower `Buffer` (its worker calls the service) | `CarryContextLayer` outside it and `AttachContextLayer` inside it (feature `tower`) |
//!
//! # Example
//!
//! ```
//! use prodbox_core::{FutureExt, Sandbox, task};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::new("pr-42".parse()?);
//! let (blocking, thread) = async {
//!     let blocking = task::spawn_blocking(prodbox_core::current).await?;
//!     let thread = task::spawn_thread(prodbox_core::current).join().expect("no panic");
//!     Ok::<_, tokio::task::JoinError>((blocking, thread))
//! }
//! .in_sandbox(sandbox.clone())
//! .await?;
//! assert_eq!(blocking.as_ref(), Some(&sandbox));
//! assert_eq!(thread.as_ref(), Some(&sandbox));
//! # Ok(()) }
//! ```

#[cfg(feature = "tokio")]
use std::future::Future;

use opentelemetry::Context;

#[cfg(feature = "tokio")]
use crate::context::FutureExt as _;

/// `f`, made to run in the current context wherever it is called later: on another thread
/// (scoped ones too), in a thread pool, as a callback.
pub fn carry<F, R>(f: F) -> impl FnOnce() -> R + Send
where
    F: FnOnce() -> R + Send,
{
    let (cx, scoped) = (Context::current(), crate::scope::entered());
    move || {
        let _attached = cx.attach();
        let _scope = scoped.then(crate::scope::enter);
        f()
    }
}

/// Spawns `future` on the current Tokio runtime, keeping the current context (sandbox
/// included). Use it wherever you would use `tokio::spawn` in a service that prodbox guards.
#[cfg(feature = "tokio")]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_sandbox())
}

/// A background task of a prodbox crate that runs a round of work every interval (the
/// janitors of `prodbox-db` and `prodbox-redis`), until this handle is dropped.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct Janitor {
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "tokio")]
impl Janitor {
    /// Runs `round` on the current Tokio runtime every `interval`, the first at once. A round
    /// that runs late delays the next one rather than bunching them up.
    pub fn every<F, R>(interval: std::time::Duration, mut round: F) -> Self
    where
        F: FnMut() -> R + Send + 'static,
        R: Future<Output = ()> + Send,
    {
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                round().await;
            }
        });
        Self { task }
    }
}

#[cfg(feature = "tokio")]
impl Drop for Janitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `f` on Tokio's blocking thread pool, keeping the current context. Use it wherever you
/// would use `tokio::task::spawn_blocking`.
#[cfg(feature = "tokio")]
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(carry(f))
}

/// Starts an OS thread that runs `f` in the current context. Use it wherever you would use
/// `std::thread::spawn`; for a named thread, give [`carry(f)`](carry) to a
/// `std::thread::Builder`.
pub fn spawn_thread<F, T>(f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(carry(f))
}

#[cfg(feature = "tower")]
pub use buffer::{AttachContext, AttachContextLayer, Carried, CarryContext, CarryContextLayer};

/// Layers that carry the context across a tower `Buffer` (or any layer whose worker calls the
/// inner service from a task of its own).
#[cfg(feature = "tower")]
mod buffer {
    use std::task::{Context as TaskContext, Poll};

    use opentelemetry::Context;
    use tower_layer::Layer;
    use tower_service::Service;

    use crate::context::WithSandbox;

    /// A request with the context of the code that sent it.
    #[derive(Debug)]
    pub struct Carried<R> {
        /// The sender's context.
        pub cx: Context,
        /// Whether the sender ran in a production scope (see [`in_scope`](crate::in_scope)).
        pub scoped: bool,
        /// The request.
        pub request: R,
    }

    /// Wraps each request with the caller's context ([`Carried`]); put it **outside** the
    /// buffer, with [`AttachContextLayer`] inside:
    ///
    /// ```
    /// use prodbox_core::task::{AttachContextLayer, CarryContextLayer};
    /// use prodbox_core::{FutureExt, Sandbox};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
    /// let mut service = ServiceBuilder::new()
    ///     .layer(CarryContextLayer::new())
    ///     .buffer(16)
    ///     .layer(AttachContextLayer::new())
    ///     .service_fn(|_request: ()| async {
    ///         Ok::<_, std::convert::Infallible>(prodbox_core::current())
    ///     });
    /// let sandbox = Sandbox::new("pr-42".parse()?);
    /// let seen = async { service.ready().await?.call(()).await }
    ///     .in_sandbox(sandbox.clone())
    ///     .await?;
    /// assert_eq!(seen, Some(sandbox));
    /// # Ok(()) }
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    pub struct CarryContextLayer;

    impl CarryContextLayer {
        /// The layer.
        pub fn new() -> Self {
            Self
        }
    }

    impl<S> Layer<S> for CarryContextLayer {
        type Service = CarryContext<S>;

        fn layer(&self, inner: S) -> CarryContext<S> {
            CarryContext { inner }
        }
    }

    /// See [`CarryContextLayer`].
    #[derive(Debug, Clone)]
    pub struct CarryContext<S> {
        inner: S,
    }

    impl<S> CarryContext<S> {
        crate::plumbing::inner_service_accessors!();
    }

    impl<S, R> Service<R> for CarryContext<S>
    where
        S: Service<Carried<R>>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: R) -> S::Future {
            self.inner.call(Carried {
                cx: Context::current(),
                scoped: crate::scope::entered(),
                request,
            })
        }
    }

    /// Calls the inner service, and polls its response, in the context a [`Carried`] request
    /// brought; put it **inside** the buffer, with [`CarryContextLayer`] outside.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct AttachContextLayer;

    impl AttachContextLayer {
        /// The layer.
        pub fn new() -> Self {
            Self
        }
    }

    impl<S> Layer<S> for AttachContextLayer {
        type Service = AttachContext<S>;

        fn layer(&self, inner: S) -> AttachContext<S> {
            AttachContext { inner }
        }
    }

    /// See [`AttachContextLayer`].
    #[derive(Debug, Clone)]
    pub struct AttachContext<S> {
        inner: S,
    }

    impl<S> AttachContext<S> {
        crate::plumbing::inner_service_accessors!();
    }

    impl<S, R> Service<Carried<R>> for AttachContext<S>
    where
        S: Service<R>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = WithSandbox<S::Future>;

        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, carried: Carried<R>) -> Self::Future {
            // Services may do work in `call` itself, as well as in the future.
            let future = {
                let _attached = carried.cx.clone().attach();
                let _scope = carried.scoped.then(crate::scope::enter);
                self.inner.call(carried.request)
            };
            WithSandbox::new(future, carried.cx, carried.scoped)
        }
    }
}
