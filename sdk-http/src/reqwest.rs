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
use reqwest_middleware::{Middleware, Next, Result};

use crate::client::Injector;

/// Writes the current sandbox context into each request; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct SandboxMiddleware {
    injector: Injector,
}

impl SandboxMiddleware {
    /// A middleware with the default codec.
    pub fn new() -> Self {
        Self::default()
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
        self.injector
            .inject(req.headers_mut())
            .map_err(|e| reqwest_middleware::Error::Middleware(e.into()))?;
        next.run(req, extensions).await
    }
}
