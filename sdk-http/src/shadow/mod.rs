//! Shadowing (dark launches with real traffic): copies a sample of a service's baseline requests
//! to the sandbox fork that the directory marks as a shadow of the service.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
//! use prodbox_http::ShadowLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Sandbox pr-42 runs a fork of `orders` and shadows the baseline with it.
//! let directory = MemoryDirectory::new();
//! directory.upsert(
//!     SandboxEntry::new("pr-42".parse()?).fork("orders", "http://127.0.0.1:9001".parse()?).shadow("orders"),
//! );
//!
//! // Stands in for the HTTP client: reports where each copy goes and in which sandbox.
//! let (copies, mut arrived) = tokio::sync::mpsc::unbounded_channel();
//! let client = service_fn(move |req: Request<Full<Bytes>>| {
//!     let _ = copies.send(format!("{} {}", req.uri(), req.headers()["baggage"].to_str().unwrap_or("")));
//!     async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
//! });
//!
//! let orders = ServiceBuilder::new()
//!     .layer(ShadowLayer::new("orders", directory).sample(1.0).client(client))
//!     .service(service_fn(|_req: Request<_>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("baseline"))))
//!     }));
//!
//! let request = Request::get("/orders/7").body(Full::new(Bytes::new()))?;
//! let response = orders.oneshot(request).await?;
//! assert_eq!(response.status(), 200); // the caller only ever gets the baseline's response
//! assert_eq!(
//!     arrived.recv().await.as_deref(),
//!     Some("http://127.0.0.1:9001/orders/7 prodbox.sandbox=pr-42"),
//! );
//! # Ok(()) }
//! ```
//!
//! # What is copied
//!
//! A request is copied when, in this order (cheapest first):
//!
//! 1. the [`filter`](ShadowLayer::filter) on method and path accepts it (default: all);
//! 2. it is in the sample: [`sample(rate)`](ShadowLayer::sample) copies every `1/rate`-th
//!    request that passed the filter, counted with one atomic addition (systematic, not random
//!    sampling: a client that alternates two requests at rate 0.5 has only one of them copied);
//! 3. it is a **baseline** request: a request in a sandbox context is never copied (put the
//!    layer *inside* [`SandboxLayer`](crate::SandboxLayer), so that the context is known; in
//!    axum, `.layer(ShadowLayer..)` before `.layer(SandboxLayer..)`);
//! 4. the directory names a shadow: an entry whose
//!    [`shadow_of(service)`](prodbox_core::directory::SandboxEntry::shadow_of) is set, neither
//!    disabled nor expired; of several, the one with the smallest key (so every replica picks the
//!    same). While the directory [`is_stale`](prodbox_core::Directory::is_stale) nothing is copied
//!    (counted as `directory_stale`);
//! 5. its body fits [`max_body`](ShadowLayer::max_body) (default 64 KiB): judged from the size
//!    hint first and then as the body streams; larger requests are not copied (`body_too_large`).
//!
//! The 90 % of requests that are not sampled cost one atomic addition and two enum wrappers
//! (request body, response future); no allocation, no directory lookup.
//!
//! # Never in the baseline's way
//!
//! The layer does not delay the baseline: the request body streams to the inner service as it
//! arrives, and the layer keeps a copy of each frame (a reference-counted `Bytes`, not a byte
//! copy) up to the bound. Once the body has been read to its end *and* the baseline response is
//! known (with a compare hook: its body has streamed to the caller, up to
//! [`compare_body`](ShadowLayer::compare_body) bytes kept), the copy goes into a bounded queue
//! ([`queue`](ShadowLayer::queue), default 64) with `try_send`: when the queue is full the copy is
//! dropped (`queue_full`). A worker task sends at most [`concurrency`](ShadowLayer::concurrency)
//! copies at once (default 16), each within [`timeout`](ShadowLayer::timeout) (default 5 s, else
//! `fork_slow`). A fork that is slow therefore fills the slots, then the queue, and further copies
//! are dropped and counted: the baseline never waits. If the inner service does not read the body
//! to its end, or fails, there is no copy (`body_unread`, `baseline_failed`).
//!
//! The worker starts on the Tokio runtime of the first copy; it ends when the layer and its
//! services are dropped.
//!
//! # Isolation of the copy
//!
//! The copy carries the shadow sandbox's context, written by [`prodbox_core::egress`] like every
//! client writes it (the sandbox completed from its directory entry: actor and origin), so the
//! fork handles it in that sandbox: its writes go to the sandbox's schema, its Kafka messages are
//! tagged. The fork's ingress must trust the `prodbox.sandbox` member from this service (an
//! internal hop: [`TrustPolicy::accept`](prodbox_core::TrustPolicy::accept) or `accept_from`).
//! The URI's scheme and authority become the fork's (path and query stay), `host` is rewritten,
//! hop-by-hop headers and `content-length` are recomputed. The fork's response is read (within
//! the timeout), handed to the compare hook, and dropped: the caller only ever gets the
//! baseline's response, byte for byte.
//!
//! # Hooks
//!
//! * [`scrub`](ShadowLayer::scrub) runs on each copy on the worker, before it leaves
//!   ([`Scrub`]; default [`DefaultScrub`]: removes `authorization`, `cookie`,
//!   `proxy-authorization`; it can also remove more headers and JSON fields at any depth). A
//!   scrub that returns an error drops the copy (`scrub_failed`).
//! * [`compare`](ShadowLayer::compare) receives the baseline's and the fork's [`Observed`]
//!   responses (status, headers, trailers, body up to the bound) and returns a difference
//!   ([`Compare`]; [`DefaultCompare`] compares statuses, `grpc-status` and complete bodies).
//!   Without a compare hook the baseline response body is not teed at all.
//!
//! # Metrics and audit
//!
//! Each sampled copy is counted once in `prodbox.shadow.copies` ([`prodbox_core::metrics`]):
//! `prodbox.shadow.outcome` = `sent` (the fork answered, no difference), `differing` (the compare
//! hook reported one), or `dropped` with `prodbox.shadow.reason` (`queue_full`, `fork_slow`,
//! `body_too_large`, `fork_error`, `body_unread`, `body_error`, `baseline_failed`,
//! `directory_stale`, `invalid_fork_address`, `scrub_failed`, `inject_failed`, `no_runtime`). Each
//! is also an audit event with decision `shadowed` and the same reason (`sent`, `differs` with
//! the difference as detail, or the drop reason), logged at `INFO`: expect one line per copy.
//!
//! # gRPC
//!
//! The same layer works for tonic unary calls: put it in a tonic server's layer stack (inside
//! the sandbox layer). A gRPC request is HTTP/2 with a framed body that ends after the one
//! message; copies of HTTP/2 requests go out over HTTP/2 with prior knowledge (the default
//! client), and [`DefaultCompare`] compares the `grpc-status` trailers. Streaming calls are
//! copied only when the whole request stream fits `max_body` and ends; the fork then receives all
//! messages at once, after the baseline answered, which is not what a bidirectional exchange
//! does: exclude streaming methods with a [`filter`](ShadowLayer::filter).
//!
//! # Client
//!
//! By default copies go out through hyper-util's legacy `Client` (HTTP/1.1, or HTTP/2 with prior
//! knowledge for copies of HTTP/2 requests). [`client`](ShadowLayer::client) takes any Tower
//! service of `Request<Full<Bytes>>` instead (TLS, proxies, a mesh); it is called in the shadow
//! sandbox's context.

mod body;
mod hooks;
mod pending;
mod worker;

pub use body::{RequestBody, ResponseBody};
pub use hooks::{Compare, DefaultCompare, DefaultScrub, Observed, Scrub, ScrubError};
pub use worker::ShadowClient;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use pin_project::pin_project;
use prodbox_core::directory::{Directory, ForkRoute};
use prodbox_core::{Sandbox, SandboxKey};
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

use body::ResponseCapture;
use pending::{Copy, DropReason, Pending, Target, dropped};
use worker::{Sender, Worker};

/// Largest request body copied, by default.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Copies waiting to be sent, at most, by default.
pub const DEFAULT_QUEUE: usize = 64;
/// Copies in flight to the fork at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How long a copy may take, by default (connect, send, read the response).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Response body bytes kept for the compare hook, by default (each side).
pub const DEFAULT_COMPARE_BODY: usize = 64 * 1024;

type Filter = Arc<dyn Fn(&Method, &str) -> bool + Send + Sync>;

/// The configuration: cloned into each service.
#[derive(Clone)]
struct Settings {
    service: String,
    directory: Arc<dyn Directory>,
    /// Added to the sampling accumulator per request, out of 2^32.
    step: u64,
    filter: Option<Filter>,
    max_body: usize,
    queue: usize,
    concurrency: usize,
    timeout: Duration,
    compare_body: usize,
    client: Sender,
    scrub: Arc<dyn Scrub>,
    compare: Option<Arc<dyn Compare>>,
}

/// What every clone of the layer and its services share: the sampling counter, the queue.
#[derive(Default)]
struct State {
    sampled: AtomicU64,
    queue: Mutex<Option<mpsc::Sender<Copy>>>,
}

/// Applies [`Shadow`] to a server. See the [module docs](self).
///
/// Configure it before layering: services share the sampling counter and the queue of the layer
/// they came from.
#[derive(Clone)]
pub struct ShadowLayer {
    settings: Arc<Settings>,
    state: Arc<State>,
}

impl std::fmt::Debug for ShadowLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("ShadowLayer")
            .field("service", &s.service)
            .field("rate", &(s.step as f64 / STEP_ONE as f64))
            .field("filtered", &s.filter.is_some())
            .field("max_body", &s.max_body)
            .field("queue", &s.queue)
            .field("concurrency", &s.concurrency)
            .field("timeout", &s.timeout)
            .field("compare", &s.compare.is_some())
            .finish_non_exhaustive()
    }
}

const STEP_ONE: u64 = 1 << 32;

impl ShadowLayer {
    /// Shadows `service` (this service's name, as forks in the directory name it) with the
    /// shadow `directory` names; samples nothing until [`sample`](Self::sample) is set.
    pub fn new(service: &str, directory: impl Directory) -> Self {
        Self {
            settings: Arc::new(Settings {
                service: service.to_owned(),
                directory: Arc::new(directory),
                step: 0,
                filter: None,
                max_body: DEFAULT_MAX_BODY,
                queue: DEFAULT_QUEUE,
                concurrency: DEFAULT_CONCURRENCY,
                timeout: DEFAULT_TIMEOUT,
                compare_body: DEFAULT_COMPARE_BODY,
                client: Sender::default_client(),
                scrub: Arc::new(DefaultScrub::new()),
                compare: None,
            }),
            state: Arc::default(),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(Arc::make_mut(&mut self.settings));
        self
    }

    /// Copies this fraction of the requests that pass the filter (clamped to `0.0..=1.0`; `NaN`
    /// is `0`): every `1/rate`-th one.
    pub fn sample(self, rate: f64) -> Self {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        // Rounded up, so that rate 0.1 copies exactly the 10th, 20th, ... request.
        let step = (rate * STEP_ONE as f64).ceil() as u64;
        self.with(|s| s.step = step.min(STEP_ONE))
    }

    /// Only requests for which `filter(method, path)` holds are candidates.
    pub fn filter<F>(self, filter: F) -> Self
    where
        F: Fn(&Method, &str) -> bool + Send + Sync + 'static,
    {
        self.with(|s| s.filter = Some(Arc::new(filter)))
    }

    /// Requests with a larger body are not copied (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(self, bytes: usize) -> Self {
        self.with(|s| s.max_body = bytes)
    }

    /// At most `capacity` copies wait to be sent (default [`DEFAULT_QUEUE`]); more are dropped.
    pub fn queue(self, capacity: usize) -> Self {
        self.with(|s| s.queue = capacity.max(1))
    }

    /// At most `copies` are in flight to the fork at once (default [`DEFAULT_CONCURRENCY`]).
    pub fn concurrency(self, copies: usize) -> Self {
        self.with(|s| s.concurrency = copies.max(1))
    }

    /// Each copy must be answered within `timeout` (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.timeout = timeout)
    }

    /// Runs `scrub` on each copy before it leaves (default [`DefaultScrub`]).
    pub fn scrub(self, scrub: impl Scrub) -> Self {
        self.with(|s| s.scrub = Arc::new(scrub))
    }

    /// Compares the baseline's and the fork's responses with `compare`.
    pub fn compare(self, compare: impl Compare) -> Self {
        self.with(|s| s.compare = Some(Arc::new(compare)))
    }

    /// Keeps this many response body bytes of each side for the compare hook (default
    /// [`DEFAULT_COMPARE_BODY`]).
    pub fn compare_body(self, bytes: usize) -> Self {
        self.with(|s| s.compare_body = bytes)
    }

    /// Sends copies with `client` instead of hyper-util's legacy client.
    pub fn client(self, client: impl ShadowClient) -> Self {
        let client = Sender::from_service(client);
        self.with(|s| s.client = client)
    }

    /// Whether this request is in the sample (one atomic addition).
    fn sampled(&self) -> bool {
        let step = self.settings.step;
        if step == 0 {
            return false;
        }
        let before = self.state.sampled.fetch_add(step, Ordering::Relaxed);
        (before >> 32) != (before.wrapping_add(step) >> 32)
    }

    /// The shadow of this service, if any; counts a stale directory.
    fn target(&self) -> Option<Target> {
        let settings = &*self.settings;
        let now = SystemTime::now();
        // A shadow is a fork that would be routed to: the same decision as routing's, with
        // staleness counted once below rather than per entry.
        let (entry, address) = settings
            .directory
            .entries()
            .into_iter()
            .filter(|e| e.shadows.contains(settings.service.as_str()))
            .filter_map(|e| match e.fork_route(&settings.service, now, false) {
                ForkRoute::Fork(address) => Some((e, address)),
                _ => None,
            })
            .min_by(|(a, _), (b, _)| a.key.as_str().cmp(b.key.as_str()))?;
        let sandbox = entry.complete(&Sandbox::new(entry.key.clone()));
        if settings.directory.is_stale() {
            dropped(
                Some(&sandbox),
                DropReason::DirectoryStale,
                &"the directory is stale; no shadow copies on an old view",
            );
            return None;
        }
        Some(Target {
            sandbox,
            scheme: address.scheme().clone(),
            authority: address.authority().clone(),
        })
    }

    /// A pending copy of `req`, if it is to be copied.
    fn select<B: Body>(&self, req: &Request<B>) -> Option<Arc<Pending>> {
        if let Some(filter) = &self.settings.filter
            && !filter(req.method(), req.uri().path())
        {
            return None;
        }
        if !self.sampled() || prodbox_core::current().is_some() {
            return None;
        }
        let target = self.target()?;
        if req.body().size_hint().lower() > self.settings.max_body as u64 {
            dropped(
                Some(&target.sandbox),
                DropReason::BodyTooLarge,
                &format_args!("the body is larger than {} bytes", self.settings.max_body),
            );
            return None;
        }
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = req.method().clone();
        head.uri = req.uri().clone();
        head.version = req.version();
        head.headers = req.headers().clone();
        Some(Pending::new(self.clone(), target, head))
    }

    /// Puts a finished copy into the queue, starting the worker if needed; never waits.
    fn enqueue(&self, copy: Copy) {
        let mut queue = self
            .state
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sender = match queue.as_ref().filter(|q| !q.is_closed()) {
            Some(sender) => sender,
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    let sandbox = copy.target.sandbox;
                    drop(queue);
                    return dropped(
                        Some(&sandbox),
                        DropReason::NoRuntime,
                        &"no Tokio runtime for the shadow worker",
                    );
                };
                let s = &*self.settings;
                let (sender, receiver) = mpsc::channel(s.queue);
                let worker = Arc::new(Worker {
                    client: s.client.clone(),
                    scrub: Arc::clone(&s.scrub),
                    compare: s.compare.clone(),
                    timeout: s.timeout,
                    compare_body: s.compare_body,
                    concurrency: s.concurrency,
                });
                runtime.spawn(worker.run(receiver));
                queue.insert(sender)
            }
        };
        if let Err(error) = sender.try_send(copy) {
            drop(queue);
            let (reason, copy) = match error {
                mpsc::error::TrySendError::Full(copy) => (DropReason::QueueFull, copy),
                mpsc::error::TrySendError::Closed(copy) => (DropReason::NoRuntime, copy),
            };
            dropped(
                Some(&copy.target.sandbox),
                reason,
                &format_args!("shadow queue of {} is full", self.settings.queue),
            );
        }
    }

    /// The sandbox this layer would copy to now, if any (for diagnostics and tests).
    pub fn shadow_sandbox(&self) -> Option<SandboxKey> {
        self.target().map(|t| t.sandbox.key().clone())
    }
}

impl<S> Layer<S> for ShadowLayer {
    type Service = Shadow<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shadow {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that copies a sample of baseline requests to a shadow fork. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Shadow<S> {
    inner: S,
    layer: ShadowLayer,
}

impl<S> Shadow<S> {
    prodbox_core::plumbing::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Shadow<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(pending) = self.layer.select(&req) else {
            return ResponseFuture {
                future: self.inner.call(req.map(RequestBody::plain)),
                pending: None,
            };
        };
        let req = if req.body().is_end_stream() {
            pending.request_body(Bytes::new());
            req.map(RequestBody::plain)
        } else {
            let limit = self.layer.settings.max_body;
            req.map(|body| RequestBody::teed(body, Arc::clone(&pending), limit))
        };
        let compare_body = self
            .layer
            .settings
            .compare
            .is_some()
            .then_some(self.layer.settings.compare_body);
        ResponseFuture {
            future: self.inner.call(req),
            pending: Some(Awaiting {
                pending: Some(pending),
                compare_body,
            }),
        }
    }
}

/// Response future of [`Shadow`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    future: F,
    pending: Option<Awaiting>,
}

/// A copy waiting for the baseline response; dropped unanswered, the copy is abandoned.
#[derive(Debug)]
struct Awaiting {
    pending: Option<Arc<Pending>>,
    /// Response body bytes to keep, when a compare hook wants them.
    compare_body: Option<usize>,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abandon(DropReason::BaselineFailed);
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.future.poll(task) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        // An error drops `Awaiting`, which abandons the copy.
        let (Some(mut awaiting), Ok(response)) = (this.pending.take(), result.as_ref()) else {
            return Poll::Ready(result.map(|r| r.map(ResponseBody::plain)));
        };
        let compare_body = awaiting.compare_body;
        let Some(pending) = awaiting.pending.take() else {
            return Poll::Ready(result.map(|r| r.map(ResponseBody::plain)));
        };
        let status = response.status();
        let Some(limit) = compare_body.filter(|_| !response.body().is_end_stream()) else {
            let mut observed = Observed::new(status);
            if compare_body.is_some() {
                observed.headers = response.headers().clone();
            }
            pending.baseline(observed);
            return Poll::Ready(result.map(|r| r.map(ResponseBody::plain)));
        };
        let capture = ResponseCapture::new(pending, status, response.headers().clone(), limit);
        Poll::Ready(result.map(|r| r.map(|body| ResponseBody::teed(body, capture))))
    }
}
