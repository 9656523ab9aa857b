//! Routing sandboxed calls to the sandbox's fork of a gRPC service.
//!
//! # Why not `prodbox_http::ForkRoutingLayer`
//!
//! The HTTP routing layer rewrites the request URI. A tonic `Channel` does not connect where the
//! URI says: it is bound to its `Endpoint`, and sends every call over its own connections. So
//! routing a gRPC call means choosing a *channel*, which is what [`ForkRouter`] does: it holds
//! the baseline channel of one service and opens (lazily, once per address) a channel to each
//! fork the directory names for that service.
//!
//! Routing may fall back to the baseline channel (no fork, sandbox disabled or expired, or a
//! fork address that does not parse; the last two are audited). It never weakens data
//! isolation: the call still carries its sandbox context.
//!
//! # Example
//!
//! ```no_run
//! use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
//! use prodbox_grpc::{ForkRouter, PropagateSandboxLayer};
//! use prodbox_testkit::echo::echo_client::EchoClient;
//! use tower::ServiceBuilder;
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = MemoryDirectory::new();
//! directory.upsert(SandboxEntry::new("pr-42".parse()?).fork("billing", "http://127.0.0.1:9101"));
//!
//! let baseline = tonic::transport::Endpoint::from_static("http://billing:50051").connect_lazy();
//! let channel = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(ForkRouter::new("billing", baseline, directory));
//! let client = EchoClient::new(channel);
//! # let _ = client;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use http::Request;
use prodbox_core::Sandbox;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::directory::Directory;
use prodbox_core::egress::Egress;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::util::Oneshot;
use tower_service::Service;

/// Sends each call over the baseline channel or the current sandbox's fork; see the
/// [module docs](self).
#[derive(Clone)]
pub struct ForkRouter {
    service: Arc<str>,
    baseline: Channel,
    directory: Arc<dyn Directory>,
    forks: Arc<Mutex<HashMap<String, Channel>>>,
    egress: Egress,
}

impl std::fmt::Debug for ForkRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkRouter")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ForkRouter {
    /// Routes calls to `service` (its name in the directory's fork lists), whose baseline
    /// listens behind `baseline`.
    pub fn new(service: &str, baseline: Channel, directory: impl Directory) -> Self {
        Self {
            service: Arc::from(service),
            baseline,
            directory: Arc::new(directory),
            forks: Arc::new(Mutex::new(HashMap::new())),
            egress: Egress::new(Protocol::Grpc),
        }
    }

    fn channel_for(&self, sandbox: &Sandbox) -> Option<Channel> {
        let entry = self.directory.get(sandbox.key())?;
        let address = entry.fork_of(&self.service)?;
        if entry.disabled || entry.is_expired_at(SystemTime::now()) {
            self.egress.audit(
                sandbox,
                Decision::Fallback,
                "fallback_fork_inactive",
                &format_args!(
                    "sandbox is disabled or expired; {} not routed to its fork",
                    self.service
                ),
            );
            return None;
        }
        let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = forks.get(address) {
            return Some(channel.clone());
        }
        match Endpoint::from_shared(address.to_owned()) {
            Ok(endpoint) => {
                let channel = endpoint.connect_lazy();
                forks.insert(address.to_owned(), channel.clone());
                Some(channel)
            }
            Err(error) => {
                self.egress.audit(
                    sandbox,
                    Decision::Fallback,
                    "fallback_invalid_fork_address",
                    &format_args!("fork address {address:?} of {}: {error}", self.service),
                );
                None
            }
        }
    }
}

impl Service<Request<Body>> for ForkRouter {
    type Response = <Channel as Service<Request<Body>>>::Response;
    type Error = <Channel as Service<Request<Body>>>::Error;
    type Future = Oneshot<Channel, Request<Body>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is chosen per call; its readiness is awaited in the call's future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fork = prodbox_core::current().and_then(|sandbox| {
            let channel = self.channel_for(&sandbox)?;
            self.egress.audit(
                &sandbox,
                Decision::Routed,
                "fork",
                &format_args!("{} routed to its fork", self.service),
            );
            Some(channel)
        });
        Oneshot::new(fork.unwrap_or_else(|| self.baseline.clone()), req)
    }
}
