//! Tower middleware that carries prodbox sandbox contexts over HTTP.
//!
//! * [`SandboxLayer`]: the server side, for `axum::Router::layer` or plain hyper: applies the
//!   trust policy, attaches the context for the whole request (streaming bodies included),
//!   audits, and enforces guardrails.
//! * [`PropagateSandboxLayer`]: the client side, for any Tower HTTP client (hyper-util's
//!   `Client`): writes the current context into outbound requests.
//! * [`ForkRoutingLayer`]: sends sandboxed calls to the sandbox's fork of a service.
//! * [`EgressPolicyLayer`]: lets a sandboxed call out only to destinations the egress policy
//!   declares (third parties without the context, stubbed ones answered by their stub).
//! * [`ShadowLayer`] (feature `shadow`): copies a sample of baseline requests to a sandbox's
//!   shadow fork, for dark launches with real traffic.
//! * `reqwest::SandboxMiddleware` (feature `reqwest`): the client side for
//!   `reqwest-middleware`.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use prodbox_core::{Guardrails, Ingress, TrustPolicy};
//! use prodbox_http::{PropagateSandboxLayer, SandboxLayer};
//!
//! // The public edge: only signed tokens may start a sandbox.
//! let keys = prodbox_core::token::TokenKeys::new()
//!     .with_key("2026-11", b"a secret of at least 32 bytes....")
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(
//!         SandboxLayer::from_ingress(
//!             Ingress::new(TrustPolicy::signed(keys))
//!                 .guardrails(Guardrails::builder().rate(50.0, 100).max_concurrent(20).build()),
//!         ),
//!     );
//!
//! // Outbound calls carry the context on.
//! let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<axum::body::Body>();
//! let client = tower::ServiceBuilder::new()
//!     .layer(PropagateSandboxLayer::new())
//!     .service(client);
//! # let _ = (app, client);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unreachable_pub)]

pub mod client;
pub mod egress;
pub mod routing;
pub mod server;

#[cfg(feature = "reqwest")]
pub mod reqwest;
#[cfg(feature = "shadow")]
pub mod shadow;

pub use client::{
    ClientFlavor, HttpClientFlavor, InjectError, PropagateSandbox, PropagateSandboxLayer,
};
pub use egress::{EgressPolicyLayer, EgressPolicyService};
pub use routing::{ForkRouting, ForkRoutingLayer};
pub use server::{HttpFlavor, PeerAddr, SandboxLayer, SandboxService, ServerFlavor};
#[cfg(feature = "shadow")]
pub use shadow::{Shadow, ShadowLayer};
