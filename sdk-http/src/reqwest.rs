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

use prodbox_core::directory::Directory;
use prodbox_core::egress::{Egress, EgressPolicy, EgressVerdict};

use crate::client::{close_call, egress, open_call};

/// Writes the current sandbox context into each request; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SandboxMiddleware {
    egress: Egress,
    guardrails: Option<Guardrails>,
}

impl Default for SandboxMiddleware {
    fn default() -> Self {
        Self {
            egress: egress(),
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
            guardrails: None,
        }
    }

    /// Applies the circuit breakers of `guardrails` to sandboxed calls, per destination
    /// authority, as the Tower client layer does.
    pub fn guardrails(mut self, guardrails: Guardrails) -> Self {
        self.guardrails = Some(guardrails);
        self
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
        let sandbox = self
            .egress
            .inject(req.headers_mut())
            .map_err(|e| reqwest_middleware::Error::Middleware(e.into()))?;
        let destination =
            || req.url()[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
        let breaker = open_call(
            &self.egress,
            self.guardrails.as_ref(),
            sandbox.as_ref(),
            destination,
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
        match verdict {
            EgressVerdict::Internal => attempt.follow(),
            EgressVerdict::External { .. } if all_external() => attempt.follow(),
            _ => {
                let destination =
                    attempt.url()[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
                let refused = crate::egress::refuse(
                    &sandbox,
                    destination,
                    "a redirect of a sandboxed request may lead only to an internal service, or from a third party to a third party",
                );
                attempt.error(refused)
            }
        }
    })
}

/// Guards a reqwest client a third-party SDK uses, which prodbox's middleware does not wrap:
/// its redirects follow [`redirect_policy`], and it opens no connection for a sandboxed call
/// to a destination the policy does not let sandboxes reach ([`ConnectGuardLayer`]). It keeps
/// no idle connections (`pool_max_idle_per_host(0)`): a pooled connection would carry a
/// sandboxed call past the connector, and reqwest gives a connector no way to keep one
/// connection out of the pool.
///
/// ```no_run
/// use prodbox_core::egress::EgressPolicy;
///
/// let policy = EgressPolicy::new().external("maps", "maps.example.com");
/// let sdk_client = prodbox_http::reqwest::guard(reqwest::Client::builder(), policy)
///     .build()
///     .expect("client");
/// # let _ = sdk_client;
/// ```
pub fn guard(builder: reqwest::ClientBuilder, policy: EgressPolicy) -> reqwest::ClientBuilder {
    builder
        .redirect(redirect_policy(policy.clone(), None))
        .connector_layer(ConnectGuardLayer { policy })
        .pool_max_idle_per_host(0)
}

/// A reqwest connector layer that opens no connection for a sandboxed call to a destination
/// the egress policy does not let sandboxes reach; see [`guard`].
#[derive(Debug, Clone)]
pub struct ConnectGuardLayer {
    policy: EgressPolicy,
}

impl<S> tower_layer::Layer<S> for ConnectGuardLayer {
    type Service = ConnectGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectGuard {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`ConnectGuardLayer`].
#[derive(Debug, Clone)]
pub struct ConnectGuard<S> {
    inner: S,
    policy: EgressPolicy,
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
        if let Some(sandbox) = prodbox_core::current() {
            // reqwest names the destination only in its connect request's `Debug` form
            // (`Unnameable(http://host:port/)`); when it cannot be read, nothing is opened.
            let uri = destination_of(&format!("{request:?}"));
            let allowed = uri.as_ref().is_some_and(|uri| {
                let (_, verdict) = crate::egress::decide(
                    &self.policy,
                    None,
                    uri.host().unwrap_or_default(),
                    crate::egress::port_of(uri),
                );
                matches!(
                    verdict,
                    EgressVerdict::Internal | EgressVerdict::External { .. }
                )
            });
            if !allowed {
                let destination = uri
                    .and_then(|uri| uri.authority().map(ToString::to_string))
                    .unwrap_or_else(|| "(unreadable)".to_owned());
                let refused = crate::egress::refuse(
                    &sandbox,
                    destination,
                    "the egress policy does not let sandboxes connect to it",
                );
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
