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
//! fail fast with [`Throttled`](prodbox_core::guardrails::Throttled) until the breaker half-opens. Baseline calls are never affected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use pin_project::pin_project;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::codec::Codec;
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

/// Applies [`PropagateSandbox`] to a client. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PropagateSandboxLayer {
    egress: Egress,
    guardrails: Option<Guardrails>,
}

impl Default for PropagateSandboxLayer {
    fn default() -> Self {
        Self {
            egress: egress(),
            guardrails: None,
        }
    }
}

impl PropagateSandboxLayer {
    /// A layer with the default codec.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `codec` (limits).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.egress = self.egress.codec(codec);
        self
    }

    /// Also forwards the signed token the sandbox arrived with (off by default: tokens are
    /// bearer credentials, and internal hops trust `prodbox.sandbox` under `Accept`).
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.egress = self.egress.forward_token(forward);
        self
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls.
    pub fn guardrails(mut self, guardrails: Guardrails) -> Self {
        self.guardrails = Some(guardrails);
        self
    }
}

impl<S> Layer<S> for PropagateSandboxLayer {
    type Service = PropagateSandbox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateSandbox {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that writes the current sandbox context into outbound requests.
#[derive(Debug, Clone)]
pub struct PropagateSandbox<S> {
    inner: S,
    layer: PropagateSandboxLayer,
}

impl<S> PropagateSandbox<S> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S) -> Self {
        PropagateSandboxLayer::new().layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PropagateSandbox<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let sandbox = match self.layer.egress.inject(req.headers_mut()) {
            Ok(sandbox) => sandbox,
            Err(error) => return ResponseFuture::failed(error.into()),
        };
        let destination = || {
            req.uri()
                .authority()
                .map_or_else(String::new, |a| a.as_str().to_owned())
        };
        let breaker = match open_call(
            &self.layer.egress,
            self.layer.guardrails.as_ref(),
            sandbox.as_ref(),
            destination,
        ) {
            Ok(breaker) => breaker,
            Err(throttled) => return ResponseFuture::failed(Box::new(throttled)),
        };
        ResponseFuture {
            kind: Kind::Call {
                future: self.inner.call(req),
                breaker,
            },
        }
    }
}

/// Response future of [`PropagateSandbox`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<F> {
    Call {
        #[pin]
        future: F,
        breaker: Option<CallGuard>,
    },
    Failed {
        error: Option<BoxError>,
    },
}

impl<F> ResponseFuture<F> {
    fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Call { future, breaker } => {
                let result = match future.poll(task) {
                    Poll::Ready(result) => result,
                    Poll::Pending => return Poll::Pending,
                };
                let succeeded = matches!(&result, Ok(r) if !r.status().is_server_error());
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
