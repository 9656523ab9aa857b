//! Client middleware: writes the current sandbox context into outbound requests.
//!
//! Wrap any Tower HTTP client with it, hyper-util's legacy `Client` included. The context is
//! merged into an existing `baggage` header (the request keeps one header, our members first,
//! then every other member in order) rather than sent twice.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use prodbox_core::{FutureExt, Sandbox};
//! use prodbox_http::PropagateSandboxLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
//! // Stands in for `hyper_util::client::legacy::Client`; echoes the baggage it was sent.
//! let transport = service_fn(|req: Request<String>| async move {
//!     let baggage = req.headers()["baggage"].to_str().unwrap_or_default().to_owned();
//!     Ok::<_, std::convert::Infallible>(Response::new(baggage))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(transport);
//!
//! let request = Request::get("http://billing/invoices")
//!     .header("baggage", "tenant=acme")
//!     .body(String::new())?;
//! let response = client
//!     .oneshot(request)
//!     .in_sandbox(Sandbox::builder("pr-42")?.actor("alice")?.build())
//!     .await?;
//! assert_eq!(response.body(), "prodbox.sandbox=pr-42,prodbox.actor=alice,tenant=acme");
//! # Ok(()) }
//! ```
//!
//! # Failing closed
//!
//! When the request is sandboxed and its context cannot be written (the request already carries
//! baggage that does not parse, or the result would break the size limits), the call fails with
//! [`InjectError`] instead of going out: the next hop would have to strip or refuse it, and a
//! stripped sandboxed request runs as production.
//!
//! # Circuit breaking
//!
//! With [`guardrails`](PropagateSandboxLayer::guardrails), each sandbox has a circuit breaker per
//! destination authority: after the configured consecutive failures (errors or `5xx`), its calls
//! fail fast with [`Throttled`] until the breaker half-opens. Baseline calls are never affected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use pin_project::pin_project;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::egress::Egress;
use prodbox_core::guardrails::{CallGuard, Throttled};
use prodbox_core::{Guardrails, Sandbox};
use tower_layer::Layer;
use tower_service::Service;

/// A boxed error, as Tower middleware that adds its own errors returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use prodbox_core::egress::InjectError;

pub(crate) fn egress() -> Egress {
    Egress::new(Protocol::Http)
}

/// Asks the circuit breaker of a sandboxed call for leave to go out (audited when refused).
pub(crate) fn open_call(
    egress: &Egress,
    guardrails: Option<&Guardrails>,
    sandbox: Option<&Sandbox>,
    destination: impl FnOnce() -> String,
) -> Result<Option<CallGuard>, Throttled> {
    let (Some(guardrails), Some(sandbox)) = (guardrails, sandbox) else {
        return Ok(None);
    };
    match guardrails.outbound(sandbox.key(), &destination()) {
        Ok(guard) => Ok(Some(guard)),
        Err(throttled) => {
            egress.audit(
                sandbox,
                Decision::Throttled,
                throttled.reason.as_str(),
                &throttled,
            );
            Err(throttled)
        }
    }
}

/// Tells the circuit breaker how a call went: an error or a server error is a failure.
pub(crate) fn close_call(breaker: Option<CallGuard>, succeeded: bool) {
    if let Some(breaker) = breaker {
        if succeeded {
            breaker.success();
        } else {
            breaker.failure();
        }
    }
}

/// How a client speaks: what a call that may not go out fails with, how destinations are named
/// for the circuit breakers, and what counts as a failed call.
///
/// [`HttpClientFlavor`] is plain HTTP; `prodbox-grpc` brings one that fails with gRPC statuses
/// and reads `grpc-status`.
pub trait ClientFlavor: Clone {
    /// The protocol named in audit events.
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    /// The error of a sandboxed call whose context could not be written (it was not sent).
    fn not_sent(&self, error: InjectError) -> BoxError {
        Box::new(error)
    }

    /// The error of a sandboxed call an open circuit breaker refused (it was not sent).
    fn throttled(&self, error: Throttled) -> BoxError {
        Box::new(error)
    }

    /// The breaker's name for where `req` goes (default: the URI's authority).
    fn destination<B>(&self, req: &Request<B>) -> String {
        req.uri()
            .authority()
            .map_or_else(String::new, |a| a.as_str().to_owned())
    }

    /// Whether `response` counts as a failure for the breaker (default: a `5xx`).
    fn failed<B>(&self, response: &Response<B>) -> bool {
        response.status().is_server_error()
    }
}

/// Plain HTTP: fails with [`InjectError`] or
/// [`Throttled`], breakers per authority, `5xx` is a
/// failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClientFlavor;

impl ClientFlavor for HttpClientFlavor {}

/// Applies [`PropagateSandbox`] to a client. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PropagateSandboxLayer<F = HttpClientFlavor> {
    egress: Egress,
    guardrails: Option<Guardrails>,
    flavor: F,
}

impl Default for PropagateSandboxLayer {
    fn default() -> Self {
        Self::with_flavor(HttpClientFlavor)
    }
}

impl PropagateSandboxLayer {
    /// A layer with the default codec.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer writing the context as `egress` (codec, token forwarding) does.
    pub fn from_egress(egress: Egress) -> Self {
        Self::with_flavor(HttpClientFlavor).egress(egress)
    }
}

impl<F: ClientFlavor> PropagateSandboxLayer<F> {
    /// A layer speaking `flavor`, with the default codec.
    pub fn with_flavor(flavor: F) -> Self {
        Self {
            egress: Egress::new(flavor.protocol()),
            guardrails: None,
            flavor,
        }
    }

    /// Writes the context as `egress` does (its protocol is the flavor's).
    pub fn egress(mut self, egress: Egress) -> Self {
        self.egress = egress.protocol(self.flavor.protocol());
        self
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls.
    pub fn guardrails(mut self, guardrails: Guardrails) -> Self {
        self.guardrails = Some(guardrails);
        self
    }

    /// The flavor, to adjust.
    pub fn flavor_mut(&mut self) -> &mut F {
        &mut self.flavor
    }
}

impl<S, F: Clone> Layer<S> for PropagateSandboxLayer<F> {
    type Service = PropagateSandbox<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateSandbox {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that writes the current sandbox context into outbound requests.
#[derive(Debug, Clone)]
pub struct PropagateSandbox<S, F = HttpClientFlavor> {
    inner: S,
    layer: PropagateSandboxLayer<F>,
}

impl<S> PropagateSandbox<S> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        PropagateSandboxLayer::new().layer(inner)
    }
}

impl<S, F> PropagateSandbox<S, F> {
    prodbox_core::plumbing::inner_service_accessors!();
}

impl<S, F, ReqBody, ResBody> Service<Request<ReqBody>> for PropagateSandbox<S, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    F: ClientFlavor,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let sandbox = match layer.egress.inject(req.headers_mut()) {
            Ok(sandbox) => sandbox,
            Err(error) => return ResponseFuture::failed(layer.flavor.not_sent(error)),
        };
        let destination = || layer.flavor.destination(&req);
        let breaker = match open_call(
            &layer.egress,
            layer.guardrails.as_ref(),
            sandbox.as_ref(),
            destination,
        ) {
            Ok(breaker) => breaker,
            Err(throttled) => return ResponseFuture::failed(layer.flavor.throttled(throttled)),
        };
        ResponseFuture {
            kind: Kind::Call {
                future: self.inner.call(req),
                breaker,
                flavor: self.layer.flavor.clone(),
            },
        }
    }
}

/// Response future of [`PropagateSandbox`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<Fut, F = HttpClientFlavor> {
    #[pin]
    kind: Kind<Fut, F>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<Fut, F> {
    Call {
        #[pin]
        future: Fut,
        breaker: Option<CallGuard>,
        flavor: F,
    },
    Failed {
        error: Option<BoxError>,
    },
}

impl<Fut, F> ResponseFuture<Fut, F> {
    fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<Fut, F, B, E> Future for ResponseFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    F: ClientFlavor,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Call {
                future,
                breaker,
                flavor,
            } => {
                let result = match future.poll(task) {
                    Poll::Ready(result) => result,
                    Poll::Pending => return Poll::Pending,
                };
                let succeeded = matches!(&result, Ok(r) if !flavor.failed(r));
                close_call(breaker.take(), succeeded);
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
        }
    }
}
