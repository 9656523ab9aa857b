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
//! Where a call goes is decided by [`fork_route`], the same
//! decision HTTP routing makes. It may fall back to the baseline channel (no fork, sandbox
//! disabled or expired, a stale directory, or an `https://` fork: this build has no TLS; all
//! but the first are audited). It never weakens data isolation: the call still carries its sandbox context, and
//! a call routed to a fork gets the context written into its metadata by the router itself, so
//! a fork never takes it for production even without the client layer. Fork channels are opened
//! lazily, once per address; past 256, those no sandbox lists any more are closed.
//!
//! # Example
//!
//! ```no_run
//! use prodbox_core::directory::{MemoryDirectory, SandboxEntry};
//! use prodbox_grpc::{ForkRouter, PropagateSandboxLayer};
//! use tower::ServiceBuilder;
//!
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = MemoryDirectory::new();
//! directory.upsert(SandboxEntry::new("pr-42".parse()?).fork("billing", "http://127.0.0.1:9101".parse()?));
//!
//! let baseline = tonic::transport::Endpoint::from_static("http://billing:50051").connect_lazy();
//! let channel = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(ForkRouter::new("billing", baseline, directory));
//! // A generated client's `new(channel)` takes it as this does.
//! let client = tonic::client::Grpc::new(channel);
//! # let _ = client;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use http::Request;
use prodbox_core::Sandbox;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::directory::{Directory, Fallback, ForkAddress, ForkRoute, fork_route};
use prodbox_core::egress::Egress;
use prodbox_core::plumbing::observe;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::client::BoxError;
use tower::util::Oneshot;
use tower_service::Service;

/// Fork channels one router keeps before closing those no sandbox lists any more.
const MAX_FORK_CHANNELS: usize = 256;

/// Sends each call over the baseline channel or the current sandbox's fork; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct ForkRouter {
    service: Arc<str>,
    baseline: Channel,
    directory: Arc<dyn Directory>,
    forks: Arc<Mutex<HashMap<ForkAddress, Channel>>>,
    egress: Egress,
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

    /// Where `sandbox`'s call goes: `Ok(None)` to the baseline, `Ok(Some)` to the fork at that
    /// address, `Err` back to the baseline for a reason to audit.
    fn decide(&self, sandbox: &Sandbox) -> Result<Option<ForkAddress>, (Fallback, String)> {
        match fork_route(
            &*self.directory,
            sandbox.key(),
            &self.service,
            SystemTime::now(),
        ) {
            ForkRoute::Baseline => Ok(None),
            // Plain http only: tonic is built here without TLS.
            ForkRoute::Fork(address) if address.is_https() => Err((
                Fallback::Unreachable,
                format!(
                    "{address} of {}: https, and this build has no TLS",
                    self.service
                ),
            )),
            ForkRoute::Fork(address) => Ok(Some(address)),
            ForkRoute::Fallback(why) => {
                let detail = format!("{why}; {} not routed to its fork", self.service);
                Err((why, detail))
            }
        }
    }

    fn channel_for(&self, sandbox: &Sandbox) -> Option<Channel> {
        match self.decide(sandbox) {
            Ok(fork) => fork.map(|address| self.channel_to(&address)),
            Err((why, detail)) => {
                self.egress
                    .audit(sandbox, Decision::Fallback, why.reason(), &detail);
                None
            }
        }
    }

    /// Audits, as observed, where `sandbox`'s call would have gone (it goes to the baseline).
    fn observe(&self, sandbox: &Sandbox) {
        match self.decide(sandbox) {
            Ok(None) => {}
            Ok(Some(address)) => observe::audit(
                &self.egress,
                sandbox,
                Decision::Routed,
                "fork",
                &format_args!("{} would be routed to its fork at {address}", self.service),
            ),
            Err((why, detail)) => observe::audit(
                &self.egress,
                sandbox,
                Decision::Fallback,
                why.reason(),
                &format_args!("would be: {detail}"),
            ),
        }
    }

    /// The channel to `address`, opened lazily once per address.
    fn channel_to(&self, address: &ForkAddress) -> Channel {
        let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = forks.get(address) {
            return channel.clone();
        }
        // Bounded: past the cap, channels to addresses no sandbox lists any more are closed.
        if forks.len() >= MAX_FORK_CHANNELS {
            let listed: std::collections::HashSet<ForkAddress> = self
                .directory
                .entries()
                .iter()
                .filter_map(|e| e.fork_of(&self.service).cloned())
                .collect();
            forks.retain(|address, _| listed.contains(address));
        }
        let channel = Endpoint::from(address.to_uri()).connect_lazy();
        forks.insert(address.clone(), channel.clone());
        channel
    }
}

impl Service<Request<Body>> for ForkRouter {
    type Response = <Channel as Service<Request<Body>>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is chosen per call; its readiness is awaited in the call's future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let current = prodbox_core::current();
        if current.is_none()
            && let Some(sandbox) = observe::current()
        {
            self.observe(&sandbox);
        }
        let fork = current.and_then(|sandbox| {
            let channel = self.channel_for(&sandbox)?;
            self.egress.audit(
                &sandbox,
                Decision::Routed,
                "fork",
                &format_args!("{} routed to its fork", self.service),
            );
            Some(channel)
        });
        let channel = match fork {
            Some(channel) => {
                // A call routed because it is sandboxed must tell the fork so, with or without
                // the client layer around this router (writing twice merges to one header).
                if let Err(error) = self.egress.inject(req.headers_mut()) {
                    let status = Status::new(Code::FailedPrecondition, format!("prodbox: {error}"));
                    return Box::pin(async move { Err(Box::new(status) as BoxError) });
                }
                channel
            }
            None => self.baseline.clone(),
        };
        let call = Oneshot::new(channel, req);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}
