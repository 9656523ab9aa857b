//! Client side: an [`Interceptor`] for the simple case, and a Tower layer that wraps a
//! `Channel` (or any gRPC transport) and adds per-sandbox circuit breaking.
//!
//! Both write the current sandbox context into the call's metadata with the one core codec,
//! merging into `baggage` metadata the call already has. Binary (`-bin`) metadata is never
//! touched. When a sandboxed call's context cannot be written (its own `baggage` metadata does
//! not parse, say), the call fails with `FAILED_PRECONDITION` instead of going out: the next hop
//! would strip or refuse it, and a stripped sandboxed call runs as production.
//!
//! # Example
//!
//! ```no_run
//! use prodbox_grpc::{PropagateSandboxLayer, SandboxInterceptor};
//! use prodbox_testkit::echo::echo_client::EchoClient;
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//!
//! // The simple case: an interceptor.
//! let client = EchoClient::with_interceptor(channel.clone(), SandboxInterceptor::new());
//!
//! // The layer wraps the channel from outside: a channel's internals run on a background task,
//! // where the caller's context is not.
//! let channel = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(channel);
//! let client = EchoClient::new(channel);
//! # let _ = client;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use pin_project::pin_project;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::codec::Codec;
use prodbox_core::egress::{Egress, InjectError};
use prodbox_core::guardrails::CallGuard;
use prodbox_core::{Guardrails, Sandbox};
use tonic::service::Interceptor;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::metadata::MetadataCarrier;

/// A boxed error, as tonic's generated clients accept from a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn egress() -> Egress {
    Egress::new(Protocol::Grpc)
}

fn refused(error: &InjectError) -> Status {
    Status::new(Code::FailedPrecondition, format!("prodbox: {error}"))
}

/// Writes the current sandbox context into each call's metadata; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxInterceptor {
    egress: Egress,
}

impl Default for SandboxInterceptor {
    fn default() -> Self {
        Self { egress: egress() }
    }
}

impl SandboxInterceptor {
    /// An interceptor with the default codec.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `codec` (limits).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.egress = self.egress.codec(codec);
        self
    }

    /// Also forwards the signed token the sandbox arrived with.
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.egress = self.egress.forward_token(forward);
        self
    }
}

impl Interceptor for SandboxInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.egress
            .inject(&mut MetadataCarrier(request.metadata_mut()))
            .map_err(|e| refused(&e))?;
        Ok(request)
    }
}

/// Applies [`PropagateSandbox`] to a gRPC transport such as `Channel`; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct PropagateSandboxLayer {
    egress: Egress,
    guardrails: Option<Guardrails>,
    destination: Option<std::sync::Arc<str>>,
}

impl Default for PropagateSandboxLayer {
    fn default() -> Self {
        Self {
            egress: egress(),
            guardrails: None,
            destination: None,
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

    /// Also forwards the signed token the sandbox arrived with.
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.egress = self.egress.forward_token(forward);
        self
    }

    /// Names the destination of the channel this layer wraps, for the circuit breakers.
    pub fn destination(mut self, name: &str) -> Self {
        self.destination = Some(std::sync::Arc::from(name));
        self
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls, per destination: the
    /// name given to [`destination`](Self::destination), else the URI's authority when the
    /// client sets one (`with_origin`), else the gRPC service of the call's path (so servers of
    /// one service behind different channels share a breaker unless named). A call counts as failed on a transport error, an HTTP `5xx`, or a
    /// trailers-only status of `UNAVAILABLE`, `INTERNAL`, `UNKNOWN` or `DEADLINE_EXCEEDED`;
    /// statuses sent in trailers after a response has started are not seen.
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

/// Middleware that writes the current sandbox context into each call's metadata.
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
        let egress = &self.layer.egress;
        let sandbox = match egress.inject(req.headers_mut()) {
            Ok(sandbox) => sandbox,
            Err(error) => return ResponseFuture::failed(refused(&error)),
        };
        let breaker = match (&self.layer.guardrails, &sandbox) {
            (Some(guardrails), Some(sandbox)) => {
                match open_breaker(
                    egress,
                    guardrails,
                    sandbox,
                    self.layer.destination.as_deref(),
                    &req,
                ) {
                    Ok(guard) => Some(guard),
                    Err(status) => return ResponseFuture::failed(status),
                }
            }
            _ => None,
        };
        ResponseFuture {
            kind: Kind::Call {
                future: self.inner.call(req),
                breaker,
            },
        }
    }
}

fn open_breaker<B>(
    egress: &Egress,
    guardrails: &Guardrails,
    sandbox: &Sandbox,
    named: Option<&str>,
    req: &Request<B>,
) -> Result<CallGuard, Status> {
    // Clients built with `new` send a path-only URI (the channel adds its address later, on
    // its own task): then the gRPC service in the path names the destination.
    let destination = match (named, req.uri().authority()) {
        (Some(name), _) => name,
        (None, Some(authority)) => authority.as_str(),
        (None, None) => grpc_service(req.uri().path()),
    };
    guardrails
        .outbound(sandbox.key(), destination)
        .map_err(|throttled| {
            egress.audit(
                sandbox,
                Decision::Throttled,
                throttled.reason.as_str(),
                &throttled,
            );
            Status::new(Code::ResourceExhausted, format!("prodbox: {throttled}"))
        })
}

/// `package.Service` of a gRPC path `/package.Service/Method`.
fn grpc_service(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
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
        status: Option<Status>,
    },
}

impl<F> ResponseFuture<F> {
    fn failed(status: Status) -> Self {
        Self {
            kind: Kind::Failed {
                status: Some(status),
            },
        }
    }
}

/// Whether a response shows the server side failing (for the circuit breaker).
fn failed<B>(response: &Response<B>) -> bool {
    if response.status().is_server_error() {
        return true;
    }
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32);
    matches!(
        code,
        Some(Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded)
    )
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
                if let Some(breaker) = breaker.take() {
                    match &result {
                        Ok(response) if !failed(response) => breaker.success(),
                        _ => breaker.failure(),
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Failed { status } => match status.take() {
                Some(status) => Poll::Ready(Err(Box::new(status))),
                None => Poll::Pending,
            },
        }
    }
}
