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

use prodbox_core::egress::Egress;

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
