//! Server middleware: admits the sandbox context of each inbound request and keeps it attached
//! while the request is handled and while its response body streams.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use prodbox_core::TrustPolicy;
//! use prodbox_http::SandboxLayer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // An internal service: sandbox contexts from other services are trusted.
//! let app = Router::new()
//!     .route("/", get(|| async {
//!         prodbox_core::current().map_or("baseline".to_owned(), |s| s.key().to_string())
//!     }))
//!     .layer(SandboxLayer::new(TrustPolicy::accept()));
//!
//! let request = http::Request::get("/")
//!     .header("baggage", "prodbox.sandbox=pr-42")
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
//! assert_eq!(body, "pr-42");
//! # }
//! ```
//!
//! # What it answers
//!
//! | situation | response |
//! |---|---|
//! | malformed or ambiguous sandbox baggage, strict | `400` with the reason |
//! | forged, expired or unsigned token at a rejecting `Signed` edge | `401` with the reason |
//! | sandbox disabled, expired, or unknown when unknown ones are refused | `403` with the reason |
//! | sandbox over its rate or concurrency budget | `429` with `Retry-After` |
//!
//! Stripped contexts are removed from the request's headers before the handler sees them, so
//! nothing downstream can pick them up.
//!
//! # Spans
//!
//! A sandboxed request runs inside a span named `sandbox` with fields `sandbox`, `actor` and
//! `origin`. The layer also records `sandbox` on the span that is current when it is called:
//! declare `sandbox = tracing::field::Empty` in your request span (for example in
//! `tower_http::trace::TraceLayer::make_span_with`) to get it there.
//!
//! # Peer addresses
//!
//! [`TrustPolicy::accept_from`](prodbox_core::TrustPolicy::accept_from) needs the peer address.
//! The layer reads a [`PeerAddr`] request extension and, with the `axum` feature, axum's
//! `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info`). Requests whose
//! peer is unknown are treated as untrusted.

mod body;

pub use body::ResponseBody;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use opentelemetry::Context;
use pin_project::pin_project;
use prodbox_core::{Admission, Ingress, Refusal, Sandbox, SandboxContext, TrustPolicy};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use body::Scope;

/// The peer address of a request, for servers that are not axum: insert it as a request
/// extension per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// How a server speaks: how it answers a refusal and where it finds the peer address.
///
/// [`HttpFlavor`] answers with HTTP statuses; `prodbox-grpc` brings one that answers with gRPC
/// statuses. Implement it to answer in your API's error format.
pub trait ServerFlavor: Clone {
    /// The response for `refusal`; the body, if any, becomes the response body.
    fn refusal(&self, refusal: &Refusal) -> Response<Option<Bytes>>;

    /// The peer's address: by default from a [`PeerAddr`] extension and, with the `axum`
    /// feature, axum's `ConnectInfo<SocketAddr>`.
    fn peer_ip(&self, extensions: &http::Extensions) -> Option<IpAddr> {
        default_peer_ip(extensions)
    }
}

/// The plain HTTP answers: `400`, `401`, `403`, `429` with `Retry-After`, a plain-text body
/// that says why, and the reason in `x-prodbox-refusal`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpFlavor;

impl ServerFlavor for HttpFlavor {
    fn refusal(&self, refusal: &Refusal) -> Response<Option<Bytes>> {
        let status = match refusal {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        let mut response = Response::new(Some(Bytes::from(format!("prodbox: {refusal}\n"))));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(wait) = refusal.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        headers.insert(
            "x-prodbox-refusal",
            HeaderValue::from_static(refusal.reason()),
        );
        response
    }
}

/// Applies [`SandboxService`] to a service. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxLayer<F = HttpFlavor> {
    ingress: Ingress,
    flavor: F,
}

impl SandboxLayer {
    /// A layer with `policy`, the default codec, no directory and no guardrails.
    pub fn new(policy: TrustPolicy) -> Self {
        Self::from_ingress(Ingress::new(policy))
    }

    /// A layer around a fully configured [`Ingress`].
    pub fn from_ingress(ingress: Ingress) -> Self {
        Self {
            ingress,
            flavor: HttpFlavor,
        }
    }
}

impl<F> SandboxLayer<F> {
    /// Answers refusals (and finds peers) the way `flavor` does.
    pub fn flavor<G: ServerFlavor>(self, flavor: G) -> SandboxLayer<G> {
        SandboxLayer {
            ingress: self.ingress,
            flavor,
        }
    }
}

impl<S, F: Clone> Layer<S> for SandboxLayer<F> {
    type Service = SandboxService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        SandboxService {
            inner,
            ingress: self.ingress.clone(),
            flavor: self.flavor.clone(),
        }
    }
}

/// Middleware that admits each request's sandbox context; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxService<S, F = HttpFlavor> {
    inner: S,
    ingress: Ingress,
    flavor: F,
}

impl<S> SandboxService<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: TrustPolicy) -> Self {
        SandboxLayer::new(policy).layer(inner)
    }
}

impl<S, F> SandboxService<S, F> {
    prodbox_core::plumbing::inner_service_accessors!();
}

impl<S, F, ReqBody, ResBody> Service<Request<ReqBody>> for SandboxService<S, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    F: ServerFlavor,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match self
            .ingress
            .admit(req.headers(), self.flavor.peer_ip(req.extensions()))
        {
            Admission::Baseline { mut context, strip } => {
                if strip {
                    let codec = self.ingress.codec_ref();
                    codec.strip(req.headers_mut());
                    // Malformed baggage is refused whole by the codec; once our members are
                    // gone, the other members may well parse, and they travel on.
                    if context.is_none()
                        && let Ok(rest) = codec.extract(req.headers())
                        && !rest.foreign().is_empty()
                    {
                        context = Some(SandboxContext::baseline(rest.foreign().clone()));
                    }
                }
                match context {
                    // The common case, no baggage at all.
                    None => self.call_as_production(req, None),
                    Some(context) => {
                        let cx = Context::map_current(|cx| context.attach_to(cx));
                        let scope = Scope {
                            cx,
                            span: Span::none(),
                            permit: None,
                        };
                        self.call_in(scope, req)
                    }
                }
            }
            Admission::Sandboxed { context, permit } => {
                let cx = Context::map_current(|cx| context.attach_to(cx));
                let span = match context.sandbox() {
                    Some(sandbox) => {
                        req.extensions_mut().insert(sandbox.clone());
                        sandbox_span(sandbox)
                    }
                    None => Span::none(),
                };
                self.call_in(Scope { cx, span, permit }, req)
            }
            Admission::Refused(refusal) => ResponseFuture {
                kind: Kind::Refused {
                    response: Some(self.flavor.refusal(&refusal)),
                },
            },
            // Production work, exactly as without the layer (the current context kept as it
            // is); only routing layers read the observed sandbox, to audit where they would
            // have sent its calls.
            Admission::Observed { sandbox } => {
                let observed = sandbox.map(|sandbox| {
                    prodbox_core::plumbing::observe::attach_to(&Context::current(), sandbox)
                });
                self.call_as_production(req, observed)
            }
        }
    }
}

impl<S, F> SandboxService<S, F> {
    /// Production work, in a scope prodbox recognises (pools that require one refuse work
    /// that lost its context); with `observed`, the current context and an observed sandbox,
    /// attached too.
    fn call_as_production<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        observed: Option<Context>,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let future = {
            let _scope = prodbox_core::plumbing::scope::enter();
            let _observed = observed.clone().map(Context::attach);
            self.inner.call(req)
        };
        ResponseFuture {
            kind: Kind::Production { future, observed },
        }
    }

    fn call_in<ReqBody, ResBody>(
        &mut self,
        scope: Scope,
        req: Request<ReqBody>,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        // Services may do work in `call` itself (axum builds the handler future there).
        let future = {
            let _cx = scope.cx.clone().attach();
            let _span = scope.span.enter();
            self.inner.call(req)
        };
        ResponseFuture {
            kind: Kind::Inner {
                future,
                scope: Some(scope),
            },
        }
    }
}

fn sandbox_span(sandbox: &Sandbox) -> Span {
    let key = sandbox.key().as_str();
    Span::current().record("sandbox", key);
    tracing::info_span!(
        "sandbox",
        sandbox = key,
        actor = sandbox.actor().unwrap_or("-"),
        origin = sandbox.origin().unwrap_or("-"),
    )
}

/// The peer address from a [`PeerAddr`] extension or, with the `axum` feature, axum's
/// `ConnectInfo<SocketAddr>`.
pub fn default_peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    None
}

/// `Retry-After` takes whole seconds: round up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0 || wait.is_zero()))
}

/// Response future of [`SandboxService`].
#[pin_project]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<F> {
    /// Production work: polled in a production scope, with an observe-only ingress's
    /// observed sandbox when it has one.
    Production {
        #[pin]
        future: F,
        observed: Option<Context>,
    },
    Inner {
        #[pin]
        future: F,
        scope: Option<Scope>,
    },
    Refused {
        response: Option<Response<Option<Bytes>>>,
    },
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Production { future, observed } => {
                let _scope = prodbox_core::plumbing::scope::enter();
                let _observed = observed.clone().map(Context::attach);
                future
                    .poll(task)
                    .map(|r| r.map(|res| res.map(ResponseBody::production)))
            }
            KindProj::Inner { future, scope } => {
                let response = {
                    let Some(active) = scope.as_ref() else {
                        return Poll::Pending;
                    };
                    let _cx = active.cx.clone().attach();
                    let _span = active.span.enter();
                    match future.poll(task) {
                        Poll::Ready(response) => response,
                        Poll::Pending => return Poll::Pending,
                    }
                };
                let Some(scope) = scope.take() else {
                    return Poll::Pending;
                };
                Poll::Ready(
                    response.map(|res| res.map(|body| ResponseBody::in_context(body, scope))),
                )
            }
            KindProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(ResponseBody::refusal))),
                None => Poll::Pending,
            },
        }
    }
}
