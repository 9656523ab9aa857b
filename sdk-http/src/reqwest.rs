//! A [`reqwest_middleware`] middleware that writes the current sandbox context into outbound
//! requests, with the same merge and fail-closed rules as the Tower client layer.
//!
//! # Example
//!
//! ```no_run
//! use prodbox_http::reqwest::SandboxMiddleware;
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(SandboxMiddleware::new())
//!     .build();
//! # let _ = client;
//! ```

use http::Extensions;
use prodbox_core::Guardrails;
use prodbox_core::audit::Protocol;
use reqwest_middleware::{Middleware, Next, Result};

use std::sync::Arc;

use opentelemetry::context::FutureExt as _;
use prodbox_core::Sandbox;
use prodbox_core::audit::Decision;
use prodbox_core::directory::Directory;
use prodbox_core::egress::{Egress, EgressPolicy, EgressRefused, EgressVerdict, Stub};

use crate::client::{close_call, egress, open_call};
use crate::egress::{GUARDED_CLIENT, HOST_MISMATCH, REDIRECT, STUB_ADDRESS, STUB_URI, UNDECLARED};

/// Writes the current sandbox context into each request; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxMiddleware {
    egress: Egress,
    policy: Option<(EgressPolicy, Option<Arc<dyn Directory>>)>,
    guardrails: Option<Guardrails>,
}

impl Default for SandboxMiddleware {
    fn default() -> Self {
        Self {
            egress: egress(),
            policy: None,
            guardrails: None,
        }
    }
}

impl SandboxMiddleware {
    /// A middleware with the default codec.
    pub fn new() -> Self {
        Self::default()
    }

    /// A middleware writing the context as `egress` (codec, token forwarding) does.
    pub fn from_egress(egress: Egress) -> Self {
        Self {
            egress: egress.protocol(Protocol::Http),
            policy: None,
            guardrails: None,
        }
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls, per destination
    /// authority, as the Tower client layer does.
    pub fn guardrails(mut self, guardrails: Guardrails) -> Self {
        self.guardrails = Some(guardrails);
        self
    }

    /// Enforces `policy` on sandboxed calls as [`EgressPolicyLayer`](crate::EgressPolicyLayer)
    /// does (each sandbox's own stubs from `directory`): give the client
    /// [`redirect_policy`] too, as reqwest follows redirects below any middleware.
    pub fn egress_policy(
        mut self,
        policy: EgressPolicy,
        directory: Option<Arc<dyn Directory>>,
    ) -> Self {
        self.policy = Some((policy, directory));
        self
    }

    /// The policy's verdict for `req`, for a sandboxed call under a policy.
    fn verdict(&self, req: &reqwest::Request) -> Option<(Sandbox, EgressVerdict)> {
        let (policy, directory) = self.policy.as_ref()?;
        let url = req.url();
        let (sandbox, verdict) = crate::egress::decide(
            policy,
            directory.as_deref(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default(),
        );
        Some((sandbox?, verdict))
    }
}

#[async_trait::async_trait]
impl Middleware for SandboxMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response> {
        let refused = |e: EgressRefused| reqwest_middleware::Error::Middleware(e.into());
        let destination = |req: &reqwest::Request| {
            req.url()[url::Position::BeforeHost..url::Position::AfterPort].to_owned()
        };
        if let Some((sandbox, verdict)) = self.verdict(&req) {
            if !crate::egress::host_agrees(req.headers(), Some(&destination(&req))) {
                let to = destination(&req);
                return Err(refused(crate::egress::refuse(&sandbox, to, HOST_MISMATCH)));
            }
            match verdict {
                EgressVerdict::Baseline | EgressVerdict::Internal => {}
                EgressVerdict::External { name } => {
                    // Without prodbox's members, from a context without the sandbox (set
                    // aside for the redirect policy and connector guard below).
                    self.egress.strip(req.headers_mut());
                    self.egress
                        .audit(&sandbox, Decision::Routed, "egress_external", &name);
                    let outside = crate::egress::outside(&sandbox);
                    return next.run(req, extensions).with_context(outside).await;
                }
                EgressVerdict::Stubbed { name, stub } => {
                    self.egress
                        .audit(&sandbox, Decision::Routed, "egress_stubbed", &name);
                    match stub {
                        Stub::Respond {
                            status,
                            content_type,
                            body,
                        } => {
                            let response = http::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, &*content_type)
                                .body(body)
                                .map_err(|e| reqwest_middleware::Error::Middleware(e.into()))?;
                            return Ok(response.into());
                        }
                        Stub::Forward(address) => {
                            crate::egress::keep_stub_headers(req.headers_mut());
                            let url = req.url_mut();
                            let moved = url.set_scheme(address.scheme().as_str()).is_ok()
                                && url.set_host(Some(address.authority().host())).is_ok()
                                && url.set_port(address.authority().port_u16()).is_ok();
                            if !moved {
                                let to = address.to_uri().to_string();
                                return Err(refused(crate::egress::refuse(&sandbox, to, STUB_URI)));
                            }
                        }
                    }
                }
                EgressVerdict::UnlistedStub { .. } => {
                    let to = destination(&req);
                    return Err(refused(crate::egress::refuse(&sandbox, to, STUB_ADDRESS)));
                }
                EgressVerdict::Undeclared => {
                    let to = destination(&req);
                    return Err(refused(crate::egress::refuse(&sandbox, to, UNDECLARED)));
                }
            }
        }
        let sandbox = self
            .egress
            .inject(req.headers_mut())
            .map_err(|e| reqwest_middleware::Error::Middleware(e.into()))?;
        let breaker = open_call(
            &self.egress,
            self.guardrails.as_ref(),
            sandbox.as_ref(),
            || destination(&req),
        )
        .map_err(|throttled| reqwest_middleware::Error::Middleware(throttled.into()))?;
        let result = next.run(req, extensions).await;
        close_call(
            breaker,
            matches!(&result, Ok(r) if !r.status().is_server_error()),
        );
        result
    }
}

/// reqwest's redirect policy under an egress policy: a sandboxed request follows a redirect
/// only to an internal destination, or from third party to third party (a request that went
/// out without prodbox's baggage); anything else ends it with [`EgressRefused`], audited, as
/// reqwest follows redirects below any middleware. Production's requests follow up to 10
/// redirects, as reqwest's default policy does.
///
/// [`EgressRefused`]: prodbox_core::egress::EgressRefused
pub fn redirect_policy(
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > 10 {
            return attempt.error("too many redirects");
        }
        let verdict_of = |url: &url::Url| {
            crate::egress::decide(
                &policy,
                directory.as_deref(),
                url.host_str().unwrap_or_default(),
                url.port_or_known_default(),
            )
        };
        let (sandbox, verdict) = verdict_of(attempt.url());
        let Some(sandbox) = sandbox else {
            return attempt.follow();
        };
        let all_external = || {
            attempt
                .previous()
                .iter()
                .all(|url| matches!(verdict_of(url).1, EgressVerdict::External { .. }))
        };
        let any_external = || {
            attempt
                .previous()
                .iter()
                .any(|url| matches!(verdict_of(url).1, EgressVerdict::External { .. }))
        };
        match verdict {
            // Back from a third party, a request left without its context: it may not come
            // in again, where a service would run it as production's.
            EgressVerdict::Internal if !any_external() => attempt.follow(),
            EgressVerdict::External { .. } if all_external() => attempt.follow(),
            _ => {
                let destination =
                    attempt.url()[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
                let refused = crate::egress::refuse(&sandbox, destination, REDIRECT);
                attempt.error(refused)
            }
        }
    })
}

/// Guards a reqwest client a third-party SDK uses, which prodbox's middleware does not wrap:
/// its redirects follow [`redirect_policy`], and it opens no connection for a sandboxed call
/// except to a third party the policy declares external ([`ConnectGuardLayer`]: the client
/// carries no context, so even our own services would take the call for production's). It
/// keeps no idle connections (`pool_max_idle_per_host(0)`): a pooled connection would carry a
/// sandboxed call past the connector, and reqwest gives a connector no way to keep one
/// connection out of its pool. Call it last on the builder: a later `redirect` or
/// `pool_max_idle_per_host` undoes it. With a `directory`, a sandbox whose entry names its
/// own stub of a destination is refused that destination too.
///
/// ```no_run
/// use prodbox_core::egress::EgressPolicy;
///
/// let policy = EgressPolicy::new().external("maps", "maps.example.com");
/// let sdk_client = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy, None)
///     .build()
///     .expect("client");
/// # let _ = sdk_client;
/// ```
pub fn guard(
    builder: reqwest::ClientBuilder,
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
) -> reqwest::ClientBuilder {
    builder
        .redirect(redirect_policy(policy.clone(), directory.clone()))
        .connector_layer(ConnectGuardLayer { policy, directory })
        .pool_max_idle_per_host(0)
}

/// A reqwest connector layer that opens no connection for a sandboxed call to a destination
/// the egress policy does not let sandboxes reach; see [`guard`].
#[derive(Debug, Clone)]
pub struct ConnectGuardLayer {
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
}

impl<S> tower_layer::Layer<S> for ConnectGuardLayer {
    type Service = ConnectGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectGuard {
            inner,
            policy: self.policy.clone(),
            directory: self.directory.clone(),
        }
    }
}

/// The service of [`ConnectGuardLayer`].
#[derive(Debug, Clone)]
pub struct ConnectGuard<S> {
    inner: S,
    policy: EgressPolicy,
    directory: Option<Arc<dyn Directory>>,
}

impl<S, R> tower_service::Service<R> for ConnectGuard<S>
where
    S: tower_service::Service<R, Error = crate::client::BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    R: std::fmt::Debug,
{
    type Response = S::Response;
    type Error = crate::client::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<S::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(sandbox) = crate::egress::egress_sandbox() {
            // reqwest names the destination only in its connect request's `Debug` form
            // (`Unnameable(http://host:port/)`); when it cannot be read, nothing is opened.
            let uri = destination_of(&format!("{request:?}"));
            let allowed = uri.as_ref().is_some_and(|uri| {
                let (_, verdict) = crate::egress::decide(
                    &self.policy,
                    self.directory.as_deref(),
                    uri.host().unwrap_or_default(),
                    crate::egress::port_of(uri),
                );
                matches!(verdict, EgressVerdict::External { .. })
            });
            if !allowed {
                let destination = uri
                    .and_then(|uri| uri.authority().map(ToString::to_string))
                    .unwrap_or_else(|| "(unreadable)".to_owned());
                let refused = crate::egress::refuse(&sandbox, destination, GUARDED_CLIENT);
                return Box::pin(std::future::ready(Err(Box::new(refused) as _)));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The URI inside reqwest's connect request's `Debug` form.
fn destination_of(debugged: &str) -> Option<http::Uri> {
    let start = debugged.find('(')? + 1;
    let end = debugged.rfind(')')?;
    debugged.get(start..end)?.parse().ok()
}
