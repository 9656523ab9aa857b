//! Egress policy middleware: a sandboxed call leaves only for a destination the
//! [`EgressPolicy`] declares; a third party gets it without prodbox's baggage, a stubbed one
//! is answered by its stub, and an undeclared one is refused ([`EgressRefused`], audited).
//! Production's calls pass untouched.
//!
//! Put it *inside* [`PropagateSandboxLayer`](crate::PropagateSandboxLayer) (nearer the
//! transport), so it sees the request as it would leave, and *outside*
//! [`ForkRoutingLayer`](crate::ForkRoutingLayer) when both are used: it then decides on the
//! service's own address (`billing`), before a sandbox's call is pointed at the fork's
//! (otherwise declare the forks' addresses internal).
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use prodbox_core::egress::{EgressPolicy, Stub};
//! use prodbox_core::{FutureExt, Sandbox};
//! use prodbox_http::{EgressPolicyLayer, PropagateSandboxLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
//! let policy = EgressPolicy::new()
//!     .internal("billing")
//!     .stub("payments", "api.payments.example", Stub::respond(200, "text/plain", "stubbed"));
//! // Stands in for hyper-util's client: answers with where the request went.
//! let transport = service_fn(|req: Request<Full<bytes::Bytes>>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::from(req.uri().to_string())))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .layer(EgressPolicyLayer::new(policy))
//!     .service(transport);
//! let call = |uri: &str| client.clone().oneshot(Request::get(uri).body(Full::default()).unwrap());
//! let sandbox = Sandbox::new("pr-42".parse()?);
//!
//! let charged = call("https://api.payments.example/charges").in_sandbox(sandbox.clone()).await?;
//! assert_eq!(charged.into_body().collect().await?.to_bytes(), "stubbed");
//! let refused = call("https://evil.example/").in_sandbox(sandbox).await;
//! assert!(refused.is_err());
//! // Production's calls are not looked at.
//! assert!(call("https://evil.example/").await.is_ok());
//! # Ok(()) }
//! ```
//!
//! # What it covers
//!
//! Every request that passes through this layer. Clients it does not wrap (a third-party
//! SDK's own, reqwest's redirects) it does not see; clients on other stacks and raw sockets
//! neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{Either, Full};
use opentelemetry::Context;
use opentelemetry::context::{FutureExt as _, WithContext};
use pin_project::pin_project;
use prodbox_core::audit::{Decision, Protocol};
use prodbox_core::codec::Codec;
use prodbox_core::context::SandboxContext;
use prodbox_core::directory::Directory;
use prodbox_core::egress::{Egress, EgressPolicy, EgressRefused, EgressVerdict, Stub};
use prodbox_core::{ContextExt, Sandbox};
use tower_layer::Layer;
use tower_service::Service;

use crate::client::BoxError;

/// Applies [`EgressPolicyService`] to a client. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct EgressPolicyLayer {
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
    codec: Codec,
    egress: Egress,
    require_scope: bool,
}

impl EgressPolicyLayer {
    /// Enforces `policy`.
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            policy,
            directory: None,
            codec: Codec::default(),
            egress: Egress::new(Protocol::Http),
            require_scope: false,
        }
    }

    /// Takes each sandbox's own stubs from `directory` (`prodbox sandbox create --stub`).
    pub fn directory(mut self, directory: impl Directory) -> Self {
        self.directory = Some(Arc::new(directory));
        self
    }

    /// Strips prodbox's members for third parties as `codec` reads them (its aliases).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Refuses calls made in no prodbox scope ([`OutOfScope`], audited): work that lost its
    /// request's context (`tokio::spawn` without `prodbox_core::spawn`), which would otherwise
    /// call out as production's. Off by default; prodbox's server layers and Kafka consumer
    /// give every request a scope, and the service runs its own background work with
    /// `prodbox_core::FutureExt::in_production`.
    pub fn require_scope(mut self, require: bool) -> Self {
        self.require_scope = require;
        self
    }
}

impl<S> Layer<S> for EgressPolicyLayer {
    type Service = EgressPolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EgressPolicyService::new(inner, self.clone())
    }
}

/// Middleware that enforces an [`EgressPolicy`] on sandboxed calls.
#[derive(Debug, Clone)]
pub struct EgressPolicyService<S> {
    inner: S,
    // Shared: clients are cloned per request, and the codecs are not small.
    layer: Arc<EgressPolicyLayer>,
}

impl<S> EgressPolicyService<S> {
    /// Wraps `inner` with `layer`'s policy.
    pub fn new(inner: S, layer: EgressPolicyLayer) -> Self {
        Self {
            inner,
            layer: Arc::new(layer),
        }
    }

    prodbox_core::plumbing::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EgressPolicyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<EgressBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // One context read, without cloning the sandbox: production's calls and internal ones
        // (the common case) go on at once.
        let layer = &self.layer;
        let verdict = with_egress_sandbox(|sandbox| {
            let uri = req.uri();
            sandbox.map(|sandbox| {
                let host = host_of(uri);
                let port = layer.policy.names_ports().then(|| port_of(uri)).flatten();
                let directory = layer.directory.as_deref();
                layer.policy.decide(Some(sandbox), directory, host, port)
            })
        });
        let verdict = match verdict {
            None if layer.require_scope && !prodbox_core::in_scope() => {
                return ResponseFuture::failed(Box::new(OutOfScope::refused()));
            }
            None | Some(EgressVerdict::Baseline) => {
                return ResponseFuture::inner(self.inner.call(req));
            }
            Some(EgressVerdict::Internal) if host_agrees(req.headers(), authority(req.uri())) => {
                return ResponseFuture::inner(self.inner.call(req));
            }
            Some(verdict) => verdict,
        };
        // The rarer ways (third parties, stubs, refusals) audit, so they take the sandbox.
        let Some(sandbox) = egress_sandbox() else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let destination = || authority(req.uri()).unwrap_or("(no host)").to_owned();
        if !host_agrees(req.headers(), authority(req.uri())) {
            return ResponseFuture::refused(refuse(&sandbox, destination(), HOST_MISMATCH));
        }
        let audit = |decision, reason: &str, detail: &dyn std::fmt::Display| {
            self.layer.egress.audit(&sandbox, decision, reason, detail);
        };
        let kind = match verdict {
            EgressVerdict::Baseline | EgressVerdict::Internal => {
                return ResponseFuture::inner(self.inner.call(req));
            }
            EgressVerdict::External { name } => {
                // Without prodbox's members, sent from a context without the sandbox, so that
                // nothing below (a propagator) adds them back; what still decides for the
                // sandbox below (a redirect policy, a guarded connector) finds it as `Outside`.
                self.layer.codec.strip(req.headers_mut());
                audit(Decision::Routed, "egress_external", &name);
                let cx = outside(&sandbox);
                // Layers below write headers in `call`, before any poll: call in it too.
                let future = {
                    let _outside = cx.clone().attach();
                    self.inner.call(req)
                };
                Kind::Outside {
                    future: Box::pin(future.with_context(cx)),
                }
            }
            EgressVerdict::Stubbed { name, stub } => {
                audit(Decision::Routed, "egress_stubbed", &name);
                match stub {
                    Stub::Respond {
                        status,
                        content_type,
                        body,
                    } => Kind::Ready {
                        result: Some(Box::new(Ok(stub_response(status, &content_type, body)))),
                    },
                    Stub::Forward(address) => {
                        keep_stub_headers(req.headers_mut());
                        if !crate::routing::point_at(&mut req, &address) {
                            // Never sent to the real destination instead.
                            let to = address.to_uri().to_string();
                            return ResponseFuture::refused(refuse(&sandbox, to, STUB_URI));
                        }
                        return ResponseFuture::inner(self.inner.call(req));
                    }
                }
            }
            EgressVerdict::UnlistedStub { .. } => {
                return ResponseFuture::refused(refuse(&sandbox, destination(), STUB_ADDRESS));
            }
            EgressVerdict::Undeclared => {
                return ResponseFuture::refused(refuse(&sandbox, destination(), UNDECLARED));
            }
        };
        ResponseFuture { kind }
    }
}

/// Whether `headers` hold at most one `Host`, naming `authority`: a gateway that routes by
/// `Host` (by the first, or the last) would otherwise take the call elsewhere than the policy
/// looked at.
pub(crate) fn host_agrees(headers: &http::HeaderMap, authority: Option<&str>) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => true,
        (Some(_), Some(_)) => false,
        (Some(host), None) => {
            authority.is_some_and(|a| host.to_str().is_ok_and(|host| host.eq_ignore_ascii_case(a)))
        }
    }
}

fn authority(uri: &Uri) -> Option<&str> {
    uri.authority().map(http::uri::Authority::as_str)
}

/// The sandbox a call is made for, kept beside a context that no longer carries it (a call to
/// a third party goes out without the sandbox, but a redirect policy or a connector below must
/// still decide for it). No propagator writes it.
#[derive(Debug, Clone)]
struct Outside(Sandbox);

/// The current context without `sandbox` (its foreign members kept), marked `Outside`.
pub(crate) fn outside(sandbox: &Sandbox) -> Context {
    let cx = Context::current();
    let foreign = SandboxContext::outbound_foreign(&cx).into_owned();
    SandboxContext::baseline(foreign)
        .attach_to(&cx)
        .with_value(Outside(sandbox.clone()))
}

/// Calls `f` with the sandbox the current call is made for: the context's, or the one a call
/// to a third party set aside (`Outside`).
fn with_egress_sandbox<R>(f: impl FnOnce(Option<&Sandbox>) -> R) -> R {
    Context::map_current(|cx| {
        f(cx.sandbox()
            .or_else(|| cx.get::<Outside>().map(|outside| &outside.0)))
    })
}

/// The sandbox the current call is made for (see [`with_egress_sandbox`]).
pub(crate) fn egress_sandbox() -> Option<Sandbox> {
    with_egress_sandbox(|sandbox| sandbox.cloned())
}

/// A call made in no prodbox scope, on a layer that requires one
/// ([`EgressPolicyLayer::require_scope`]): work that lost its request's context.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "prodbox refused an outbound call made in no prodbox scope (work that lost its request's context)"
)]
pub struct OutOfScope;

impl OutOfScope {
    fn refused() -> Self {
        Egress::new(Protocol::Http).audit_unscoped(Decision::Rejected, "no_scope", &OutOfScope);
        OutOfScope
    }
}

fn stub_response<B>(status: u16, content_type: &str, body: Bytes) -> Response<EgressBody<B>> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Response future of [`EgressPolicyService`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F, B> {
    #[pin]
    kind: Kind<F, B>,
}

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    fn refused(refused: EgressRefused) -> Self {
        Self::failed(Box::new(refused))
    }

    fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Ready {
                result: Some(Box::new(Err(error))),
            },
        }
    }
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<F, B> {
    Inner {
        #[pin]
        future: F,
    },
    // Boxed, as the refusals and stub answers: the rare ways keep every call's future small.
    Outside {
        future: Pin<Box<WithContext<F>>>,
    },
    Ready {
        result: Option<Box<Result<Response<EgressBody<B>>, BoxError>>>,
    },
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<EgressBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = |result: Result<Response<B>, E>| {
            result.map(|r| r.map(Either::Left)).map_err(Into::into)
        };
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(task).map(inner),
            KindProj::Outside { future } => future.as_mut().poll(task).map(inner),
            KindProj::Ready { result } => match result.take() {
                Some(result) => Poll::Ready(*result),
                None => Poll::Pending,
            },
        }
    }
}

/// The body of a response through [`EgressPolicyService`]: the destination's (`Left`), or a
/// configured stub answer's (`Right`).
pub type EgressBody<B> = Either<B, Full<Bytes>>;

/// The decision for a call to `host`/`port` in the current task, with its sandbox: what the
/// reqwest middleware, the redirect policy and the connectors all ask.
#[cfg(any(feature = "reqwest", feature = "connector"))]
pub(crate) fn decide(
    policy: &EgressPolicy,
    directory: Option<&dyn Directory>,
    host: &str,
    port: Option<u16>,
) -> (Option<Sandbox>, EgressVerdict) {
    let sandbox = egress_sandbox();
    let verdict = policy.decide(sandbox.as_ref(), directory, host, port);
    (sandbox, verdict)
}

/// Why a call was refused: its audit reason and a sentence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Why(&'static str, &'static str);

pub(crate) const UNDECLARED: Why =
    Why("egress_undeclared", "the egress policy does not declare it");
pub(crate) const HOST_MISMATCH: Why = Why(
    "egress_host_mismatch",
    "its Host header does not name the URI's authority (or there are several)",
);
pub(crate) const STUB_ADDRESS: Why = Why(
    "egress_stub_address",
    "the sandbox's own stub is at an address the egress policy does not list as a stub service",
);
pub(crate) const STUB_URI: Why = Why(
    "egress_stub_address",
    "its stub's address makes no URI with the request's path",
);
#[cfg(any(feature = "reqwest", feature = "connector"))]
pub(crate) const GUARDED_CLIENT: Why = Why(
    "egress_guarded_client",
    "a guarded client reaches only third parties declared external for sandboxes",
);
#[cfg(feature = "reqwest")]
pub(crate) const REDIRECT: Why = Why(
    "egress_redirect",
    "a redirect of a sandboxed request may lead only from our services to our services, or from a third party to a third party",
);

/// Refuses `sandbox`'s call to `destination` (audited) for `why`.
pub(crate) fn refuse(sandbox: &Sandbox, destination: String, why: Why) -> EgressRefused {
    let refused = EgressRefused {
        sandbox: sandbox.key().clone(),
        destination,
        reason: why.0,
        why: why.1,
    };
    Egress::new(Protocol::Http).audit(sandbox, Decision::Rejected, refused.reason(), &refused);
    refused
}

/// Whether a guarded client may pool its connections to `host`/`port`: only to a third party
/// declared external, and only when no sandbox can have a stub of its own for it (no
/// directory): any other connection, production's included, could carry a sandboxed call past
/// the connector, so it serves one request.
#[cfg(feature = "connector")]
pub(crate) fn pooled(
    policy: &EgressPolicy,
    directory: bool,
    host: &str,
    port: Option<u16>,
) -> bool {
    !directory && policy.is_external(host, port)
}

/// The only headers a stub service gets: what describes the request's body and the caller,
/// and the context. Anything else (credentials in whatever header a provider reads them
/// from) stays behind.
const STUB_HEADERS: [header::HeaderName; 12] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    header::HOST,
    header::HeaderName::from_static("baggage"),
    header::HeaderName::from_static("traceparent"),
    header::HeaderName::from_static("tracestate"),
];

/// Keeps only [`STUB_HEADERS`] in `headers`.
pub(crate) fn keep_stub_headers(headers: &mut http::HeaderMap) {
    let dropped: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| !STUB_HEADERS.contains(name))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// `uri`'s host, as `Uri::host` gives it (an IPv6 literal with its brackets), in a few
/// instructions: `Authority::host` scans the whole authority char by char, and this runs on
/// every sandboxed call.
pub(crate) fn host_of(uri: &Uri) -> &str {
    let Some(authority) = uri.authority() else {
        return "";
    };
    let authority = authority.as_str();
    // Byte searches (`Authority::host` and `str::rsplit_once` cost several times more, on
    // every sandboxed call); userinfo is rare, and `contains` on bytes is a memchr.
    let host = if authority.as_bytes().contains(&b'@') {
        let at = authority
            .bytes()
            .rposition(|b| b == b'@')
            .map_or(0, |at| at + 1);
        &authority[at..]
    } else {
        authority
    };
    if host.starts_with('[') {
        return host
            .bytes()
            .position(|b| b == b']')
            .map_or(host, |end| &host[..=end]);
    }
    host.bytes()
        .rposition(|b| b == b':')
        .map_or(host, |colon| &host[..colon])
}

/// `uri`'s port, or its scheme's.
pub(crate) fn port_of(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// A connector (for hyper-util's legacy client, or any client that connects by `Uri`) that
/// opens no connection for a sandboxed call to a destination the policy does not let
/// sandboxes reach directly: give it to a third-party SDK's client, which prodbox's layers do
/// not wrap.
///
/// A connection production opens to such a destination is used for that one request only:
/// pooled, a sandboxed call to the same destination would reuse it without asking the
/// connector. Connections to internal and external destinations are pooled as usual.
///
/// ```
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use hyper_util::rt::TokioExecutor;
/// use prodbox_core::egress::EgressPolicy;
/// use prodbox_http::egress::GuardedConnector;
///
/// let policy = EgressPolicy::new().external("maps", "maps.example.com");
/// let connector = GuardedConnector::new(HttpConnector::new(), policy);
/// let sdk_client: Client<_, String> = Client::builder(TokioExecutor::new()).build(connector);
/// # let _ = sdk_client;
/// ```
#[cfg(feature = "connector")]
#[derive(Debug, Clone)]
pub struct GuardedConnector<C> {
    inner: C,
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
}

#[cfg(feature = "connector")]
impl<C> GuardedConnector<C> {
    /// Guards `inner` with `policy`.
    pub fn new(inner: C, policy: EgressPolicy) -> Self {
        Self {
            inner,
            policy,
            directory: None,
        }
    }

    /// Reads each sandbox's own stubs from `directory` (a stubbed destination is never
    /// connected to for that sandbox).
    pub fn directory(mut self, directory: impl Directory) -> Self {
        self.directory = Some(Arc::new(directory));
        self
    }
}

#[cfg(feature = "connector")]
impl<C> Service<Uri> for GuardedConnector<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = connector::Guarded<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_owned();
        let port = port_of(&uri);
        let (sandbox, verdict) = decide(&self.policy, self.directory.as_deref(), &host, port);
        if let Some(sandbox) = &sandbox
            && !matches!(verdict, EgressVerdict::External { .. })
        {
            // Internal services too: an SDK's client carries no context, so the service would
            // run the sandbox's call as production's.
            let destination = uri.authority().map_or(host, |a| a.to_string());
            let refused = refuse(sandbox, destination, GUARDED_CLIENT);
            return Box::pin(std::future::ready(Err(Box::new(refused) as BoxError)));
        }
        let single_use = !pooled(&self.policy, self.directory.is_some(), &host, port);
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await.map_err(Into::into)?;
            Ok(connector::Guarded { io, single_use })
        })
    }
}

#[cfg(feature = "connector")]
mod connector {
    //! The connection a [`GuardedConnector`](super::GuardedConnector) hands out.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::rt::{Read, ReadBufCursor, Write};
    use hyper_util::client::legacy::connect::{Connected, Connection};

    /// A connection, kept out of the pool when `single_use`.
    #[pin_project::pin_project]
    #[derive(Debug)]
    pub struct Guarded<T> {
        #[pin]
        pub(super) io: T,
        pub(super) single_use: bool,
    }

    impl<T: Connection> Connection for Guarded<T> {
        fn connected(&self) -> Connected {
            let connected = self.io.connected();
            if self.single_use {
                connected.poison();
            }
            connected
        }
    }

    impl<T: Read> Read for Guarded<T> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.project().io.poll_read(cx, buf)
        }
    }

    impl<T: Write> Write for Guarded<T> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.project().io.poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().io.poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.project().io.poll_shutdown(cx)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.project().io.poll_write_vectored(cx, bufs)
        }
    }
}

#[cfg(feature = "connector")]
pub use connector::Guarded;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_reads_what_uri_host_reads() {
        for uri in [
            "http://billing/x",
            "http://billing:8080/x",
            "http://user:pw@billing:8080/x",
            "http://[::1]:9000/x",
            "http://[::1]/x",
            "https://API.example.com./x",
            "http://127.0.0.1:1@127.0.0.1:2/",
            "/relative",
        ] {
            let uri: Uri = uri.parse().expect(uri);
            assert_eq!(host_of(&uri), uri.host().unwrap_or_default(), "{uri}");
        }
    }
}
