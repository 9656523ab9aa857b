//! Routing middleware: sends a sandboxed request to the sandbox's fork of the destination
//! service, when the directory says it has one (in-app routing for teams without a mesh).
//!
//! The destination's service name comes from the request URI: by default the first DNS label of
//! the host (`http://billing:8080/..` and `http://billing.prod.svc.cluster.local/..` are both
//! `billing`), or an explicit authority map. A fork address replaces the URI's scheme and
//! authority; path and query stay.
//!
//! Where a call goes is decided by [`fork_route`], the same
//! decision gRPC routing makes: it may fall back to the baseline service (a disabled or expired
//! sandbox, a stale directory), and that fallback is audited. It never weakens data isolation:
//! the request still carries its sandbox context, so the baseline service isolates its effects.
//! Fork addresses are `http://` or `https://` (checked where they enter the directory).
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use prodbox_core::{FutureExt, Sandbox, directory::{MemoryDirectory, SandboxEntry}};
//! use prodbox_http::ForkRoutingLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = MemoryDirectory::new();
//! directory.upsert(SandboxEntry::new("pr-42".parse()?).fork("billing", "http://127.0.0.1:9001".parse()?));
//!
//! // Echoes where the request would go.
//! let transport = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.uri().to_string()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ForkRoutingLayer::new(directory))
//!     .service(transport);
//!
//! let request = || Request::get("http://billing:8080/invoices?id=7").body(()).unwrap();
//! let routed = client.clone().oneshot(request())
//!     .in_sandbox(Sandbox::new("pr-42".parse()?)).await?;
//! assert_eq!(routed.body(), "http://127.0.0.1:9001/invoices?id=7");
//!
//! let baseline = client.oneshot(request()).await?;
//! assert_eq!(baseline.body(), "http://billing:8080/invoices?id=7");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use http::uri::Parts;
use http::{HeaderValue, Request, Uri, header};
use prodbox_core::Sandbox;
use prodbox_core::audit::Decision;
use prodbox_core::directory::{Directory, ForkAddress, ForkRoute, fork_route};
use prodbox_core::plumbing::observe;
use tower_layer::Layer;
use tower_service::Service;

/// Applies [`ForkRouting`] to a client. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ForkRoutingLayer {
    directory: Arc<dyn Directory>,
    services: Arc<HashMap<String, String>>,
}

impl ForkRoutingLayer {
    /// Routes by `directory`.
    pub fn new(directory: impl Directory) -> Self {
        Self {
            directory: Arc::new(directory),
            services: Arc::new(HashMap::new()),
        }
    }

    /// Requests to `authority` (such as `10.0.0.9:8080`) are calls to `service`.
    pub fn service_at(mut self, authority: &str, service: &str) -> Self {
        Arc::make_mut(&mut self.services)
            .insert(authority.to_ascii_lowercase(), service.to_owned());
        self
    }
}

impl<S> Layer<S> for ForkRoutingLayer {
    type Service = ForkRouting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForkRouting {
            inner,
            layer: self.clone(),
        }
    }
}

/// Middleware that routes sandboxed requests to forks. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ForkRouting<S> {
    inner: S,
    layer: ForkRoutingLayer,
}

impl<S> ForkRouting<S> {
    /// Wraps `inner`, routing by `directory`.
    pub fn new(inner: S, directory: impl Directory) -> Self {
        ForkRoutingLayer::new(directory).layer(inner)
    }

    prodbox_core::plumbing::inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for ForkRouting<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(sandbox) = prodbox_core::current() {
            self.layer.route(&sandbox, &mut req);
        } else if let Some(sandbox) = prodbox_core::plumbing::observe::current() {
            self.layer.observe(&sandbox, &req);
        }
        self.inner.call(req)
    }
}

impl ForkRoutingLayer {
    fn service_of<'a>(&'a self, uri: &'a Uri) -> Option<&'a str> {
        let authority = uri.authority()?;
        if let Some(service) = self.services.get(&authority.as_str().to_ascii_lowercase()) {
            return Some(service);
        }
        let host = authority.host();
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return None;
        }
        host.split('.').next()
    }

    /// The service `req` calls and where `sandbox`'s call to it goes; `None`: a service the
    /// layer cannot name.
    fn decide<B>(&self, sandbox: &Sandbox, req: &Request<B>) -> Option<(String, ForkRoute)> {
        let service = self.service_of(req.uri())?.to_owned();
        let route = fork_route(&*self.directory, sandbox.key(), &service, SystemTime::now());
        Some((service, route))
    }

    /// Audits, as observed, where `sandbox`'s call would have gone; `req` goes unchanged.
    fn observe<B>(&self, sandbox: &Sandbox, req: &Request<B>) {
        let egress = crate::client::egress();
        match self.decide(sandbox, req) {
            None | Some((_, ForkRoute::Baseline)) => {}
            // As `route` does: audited only when the request can be pointed at the fork.
            Some((service, ForkRoute::Fork(fork))) => {
                if let Some(uri) = forked_uri(req.uri(), &fork) {
                    observe::audit(
                        &egress,
                        sandbox,
                        Decision::Routed,
                        "fork",
                        &format_args!("{service} would be routed to {uri}"),
                    );
                }
            }
            Some((service, ForkRoute::Fallback(why))) => observe::audit(
                &egress,
                sandbox,
                Decision::Fallback,
                why.reason(),
                &format_args!("{why}; {service} would not be routed to its fork"),
            ),
        }
    }

    fn route<B>(&self, sandbox: &Sandbox, req: &mut Request<B>) {
        let Some((service, route)) = self.decide(sandbox, req) else {
            return;
        };
        let fork = match route {
            ForkRoute::Baseline => return,
            ForkRoute::Fork(fork) => fork,
            ForkRoute::Fallback(why) => {
                return crate::client::egress().audit(
                    sandbox,
                    Decision::Fallback,
                    why.reason(),
                    &format_args!("{why}; {service} not routed to its fork"),
                );
            }
        };
        if point_at(req, &fork) {
            crate::client::egress().audit(
                sandbox,
                Decision::Routed,
                "fork",
                &format_args!("{service} routed to {}", req.uri()),
            );
        }
    }
}

/// Points `req` at `address` (a fork, a stub service): its scheme and authority replace the
/// URI's, path and query stay, and a `Host` header follows. Returns whether it could.
pub(crate) fn point_at<B>(req: &mut Request<B>, address: &ForkAddress) -> bool {
    let Some(uri) = forked_uri(req.uri(), address) else {
        return false;
    };
    *req.uri_mut() = uri;
    if req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(address.authority().as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    true
}

/// `uri` pointed at `address`, when it can be.
fn forked_uri(uri: &Uri, address: &ForkAddress) -> Option<Uri> {
    let mut parts = Parts::default();
    parts.scheme = Some(address.scheme().clone());
    parts.authority = Some(address.authority().clone());
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prodbox_core::directory::MemoryDirectory;

    #[test]
    fn service_names_come_from_the_first_label_or_the_map() {
        let layer =
            ForkRoutingLayer::new(MemoryDirectory::new()).service_at("10.0.0.9:8080", "billing");
        let name = |uri: &str| layer.service_of(&uri.parse().unwrap()).map(str::to_owned);
        assert_eq!(name("http://billing:8080/x").as_deref(), Some("billing"));
        assert_eq!(
            name("http://billing.prod.svc.cluster.local/x").as_deref(),
            Some("billing")
        );
        assert_eq!(name("http://10.0.0.9:8080/x").as_deref(), Some("billing"));
        assert_eq!(name("http://10.0.0.10:8080/x"), None);
        assert_eq!(name("/relative"), None);
    }

    #[test]
    fn a_stale_directory_routes_to_baseline() {
        use prodbox_core::directory::SandboxEntry;
        let directory = MemoryDirectory::new();
        directory.upsert(SandboxEntry::new("pr-42".parse().unwrap()).fork(
            "billing",
            "http://127.0.0.1:9001".parse().expect("a fork address"),
        ));
        let sandbox = prodbox_core::Sandbox::new("pr-42".parse().unwrap());
        let request = || {
            Request::get("http://billing:8080/invoices")
                .body(())
                .unwrap()
        };

        let mut fresh = request();
        ForkRoutingLayer::new(directory.clone()).route(&sandbox, &mut fresh);
        assert_eq!(fresh.uri(), "http://127.0.0.1:9001/invoices");

        let mut stale = request();
        ForkRoutingLayer::new(prodbox_testkit::directory::Switchable::stale(directory))
            .route(&sandbox, &mut stale);
        assert_eq!(stale.uri(), "http://billing:8080/invoices");
    }
}
