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
//! use tonic::service::interceptor::InterceptedService;
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//!
//! // The simple case: an interceptor (a generated client's `with_interceptor` does the same).
//! let intercepted = InterceptedService::new(channel.clone(), SandboxInterceptor::new());
//! let client = tonic::client::Grpc::new(intercepted);
//!
//! // The layer wraps the channel from outside: a channel's internals run on a background task,
//! // where the caller's context is not. Give the result to a generated client's `new`.
//! let channel = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(channel);
//! let layered = tonic::client::Grpc::new(channel);
//! # let _ = (client, layered);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use http::{Request, Response};
use prodbox_core::Guardrails;
use prodbox_core::audit::Protocol;
use prodbox_core::egress::{Egress, InjectError};
use prodbox_core::guardrails::Throttled;
use prodbox_http::ClientFlavor;
use tonic::service::Interceptor;
use tonic::{Code, Status};
use tower_layer::Layer;

use crate::metadata::MetadataCarrier;

/// A boxed error, as tonic's generated clients accept from a transport.
pub use prodbox_http::client::BoxError;

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

    /// An interceptor writing the context as `egress` (codec, token forwarding) does.
    pub fn from_egress(egress: Egress) -> Self {
        Self {
            egress: egress.protocol(Protocol::Grpc),
        }
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

/// The gRPC way for the shared client layer: calls that may not go out fail with a gRPC status
/// (`FAILED_PRECONDITION` when the context cannot be written, `RESOURCE_EXHAUSTED` when a
/// breaker is open), a trailers-only `grpc-status` of `UNAVAILABLE`, `INTERNAL`, `UNKNOWN` or
/// `DEADLINE_EXCEEDED` counts as a failure, and destinations are named as
/// [`PropagateSandboxLayer::destination`] says.
#[derive(Debug, Clone, Default)]
pub struct GrpcClientFlavor {
    destination: Option<Arc<str>>,
}

impl ClientFlavor for GrpcClientFlavor {
    fn protocol(&self) -> Protocol {
        Protocol::Grpc
    }

    fn not_sent(&self, error: InjectError) -> BoxError {
        Box::new(refused(&error))
    }

    fn throttled(&self, error: Throttled) -> BoxError {
        Box::new(Status::new(
            Code::ResourceExhausted,
            format!("prodbox: {error}"),
        ))
    }

    fn destination<B>(&self, req: &Request<B>) -> String {
        // Clients built with `new` send a path-only URI (the channel adds its address later, on
        // its own task): then the gRPC service in the path names the destination.
        match (&self.destination, req.uri().authority()) {
            (Some(name), _) => name.to_string(),
            (None, Some(authority)) => authority.as_str().to_owned(),
            (None, None) => grpc_service(req.uri().path()).to_owned(),
        }
    }

    fn failed<B>(&self, response: &Response<B>) -> bool {
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
}

/// `package.Service` of a gRPC path `/package.Service/Method`.
fn grpc_service(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

/// Middleware that writes the current sandbox context into each call's metadata: the shared
/// client layer of `prodbox-http`, speaking gRPC.
pub type PropagateSandbox<S> = prodbox_http::PropagateSandbox<S, GrpcClientFlavor>;

/// Response future of [`PropagateSandbox`].
pub type ResponseFuture<F> = prodbox_http::client::ResponseFuture<F, GrpcClientFlavor>;

/// Applies [`PropagateSandbox`] to a gRPC transport such as `Channel`; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct PropagateSandboxLayer {
    inner: prodbox_http::PropagateSandboxLayer<GrpcClientFlavor>,
}

impl Default for PropagateSandboxLayer {
    fn default() -> Self {
        Self {
            inner: prodbox_http::PropagateSandboxLayer::with_flavor(GrpcClientFlavor::default()),
        }
    }
}

impl PropagateSandboxLayer {
    /// A layer with the default codec.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(
        self,
        f: impl FnOnce(
            prodbox_http::PropagateSandboxLayer<GrpcClientFlavor>,
        ) -> prodbox_http::PropagateSandboxLayer<GrpcClientFlavor>,
    ) -> Self {
        Self {
            inner: f(self.inner),
        }
    }

    /// A layer writing the context as `egress` (codec, token forwarding) does.
    pub fn from_egress(egress: Egress) -> Self {
        Self::default().map(|l| l.egress(egress))
    }

    /// Names the destination of the channel this layer wraps, for the circuit breakers.
    pub fn destination(mut self, name: &str) -> Self {
        self.inner.flavor_mut().destination = Some(Arc::from(name));
        self
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls, per destination: the
    /// name given to [`destination`](Self::destination), else the URI's authority when the
    /// client sets one (`with_origin`), else the gRPC service of the call's path (so servers of
    /// one service behind different channels share a breaker unless named). A call counts as
    /// failed on a transport error, an HTTP `5xx`, or a trailers-only status of `UNAVAILABLE`,
    /// `INTERNAL`, `UNKNOWN` or `DEADLINE_EXCEEDED`; statuses sent in trailers after a response
    /// has started are not seen.
    pub fn guardrails(self, guardrails: Guardrails) -> Self {
        self.map(|l| l.guardrails(guardrails))
    }
}

impl<S> Layer<S> for PropagateSandboxLayer {
    type Service = PropagateSandbox<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
