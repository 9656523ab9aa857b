//! Server layer for `tonic::transport::Server::builder().layer(..)`: admits each call's sandbox
//! context and keeps it attached for the whole call, every message of a stream included.
//!
//! # Example
//!
//! ```no_run
//! use prodbox_core::TrustPolicy;
//! use prodbox_grpc::SandboxLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Your generated services: `Routes::new(GreeterServer::new(greeter)).add_service(..)`.
//! let services = tonic::service::Routes::default();
//! tonic::transport::Server::builder()
//!     .layer(SandboxLayer::new(TrustPolicy::accept()))
//!     .add_routes(services)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! In a handler, [`prodbox_core::current()`] is the call's sandbox, for unary and streaming
//! calls alike: the response stream is polled inside the context, so each message produced is
//! too. Tasks the handler spawns keep it only when spawned with [`prodbox_core::spawn`].
//!
//! # Refusals
//!
//! | situation | gRPC status |
//! |---|---|
//! | malformed or ambiguous sandbox metadata, strict | `INVALID_ARGUMENT` |
//! | forged, expired or unsigned token at a rejecting `Signed` edge | `UNAUTHENTICATED` |
//! | sandbox disabled, expired, or unknown when unknown ones are refused | `PERMISSION_DENIED` |
//! | sandbox over its rate or concurrency budget | `RESOURCE_EXHAUSTED` |
//!
//! The message says why (`prodbox: sandbox pr-42 is disabled`); the metadata carries the reason
//! in `x-prodbox-refusal` and, when throttled, the seconds to wait in `retry-after`.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, Response};
use prodbox_core::audit::Protocol;
use prodbox_core::{Ingress, Refusal, TrustPolicy};
use prodbox_http::ServerFlavor;
use prodbox_http::server::{SandboxService, default_peer_ip};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tower_layer::Layer;

/// Answers refusals with gRPC statuses and finds the peer in tonic's connection info.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcFlavor;

impl ServerFlavor for GrpcFlavor {
    fn refusal(&self, refusal: &Refusal) -> Response<Option<Bytes>> {
        let code = match refusal {
            Refusal::Malformed(_) => Code::InvalidArgument,
            Refusal::Unauthenticated(_) => Code::Unauthenticated,
            Refusal::Throttled(_) => Code::ResourceExhausted,
            _ => Code::PermissionDenied,
        };
        let mut response = Status::new(code, format!("prodbox: {refusal}")).into_http::<()>();
        let headers = response.headers_mut();
        headers.insert(
            "x-prodbox-refusal",
            HeaderValue::from_static(refusal.reason()),
        );
        if let Some(wait) = refusal.retry_after() {
            let secs = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0 || wait.is_zero()));
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        // A trailers-only response: the status travels in the headers, the body is empty.
        response.map(|()| None)
    }

    fn peer_ip(&self, extensions: &http::Extensions) -> Option<IpAddr> {
        extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|addr| addr.ip())
            .or_else(|| default_peer_ip(extensions))
    }
}

/// The gRPC server layer; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxLayer {
    inner: prodbox_http::SandboxLayer<GrpcFlavor>,
}

impl SandboxLayer {
    /// A layer with `policy`, the default codec, no directory and no guardrails.
    pub fn new(policy: TrustPolicy) -> Self {
        Self::from_ingress(Ingress::new(policy))
    }

    /// A layer around a fully configured [`Ingress`] (its protocol is set to gRPC).
    pub fn from_ingress(ingress: Ingress) -> Self {
        Self {
            inner: prodbox_http::SandboxLayer::from_ingress(ingress.protocol(Protocol::Grpc))
                .flavor(GrpcFlavor),
        }
    }
}

impl<S> Layer<S> for SandboxLayer {
    type Service = SandboxService<S, GrpcFlavor>;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}
