//! The core of prodbox: test in production with request-level isolation.
//!
//! A test request carries a **sandbox context** (a routing key plus who started it and for which
//! PR or session) as W3C `baggage`. This crate holds what every protocol integration shares:
//!
//! * [`Sandbox`] and [`SandboxKey`]: the validated model;
//! * [`codec`]: the one strict baggage codec, over a small [`Carrier`] trait;
//! * [`trust`]: who may set a sandbox at an ingress ([`TrustPolicy`]), and the one admission
//!   decision ([`Ingress`]) every protocol layer makes;
//! * [`egress`]: the one way every client writes the context into outbound messages;
//! * [`token`]: signed, expiring tokens for public edges;
//! * [`context`]: the sandbox in process on [`opentelemetry::Context`], across `.await`;
//! * [`task`]: spawned tasks, blocking work, threads and library workers that keep it;
//! * [`directory`]: which sandboxes exist, what they fork, the kill switch;
//! * [`guardrails`]: per-sandbox rate, concurrency and circuit breaking;
//! * [`audit`]: one `tracing` event per decision.
//!
//! # Example
//!
//! ```
//! use prodbox_core::{Ingress, TrustPolicy, Admission, context::FutureExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ingress = Ingress::new(TrustPolicy::accept());
//! let headers = vec![("baggage".to_owned(), b"prodbox.sandbox=pr-42,userId=7".to_vec())];
//! let Admission::Sandboxed { context, .. } = ingress.admit(&headers, None) else { panic!() };
//! let cx = context.attach_to(&opentelemetry::Context::current());
//!
//! let seen = async { prodbox_core::current() }.in_context(cx).await;
//! assert_eq!(seen.unwrap().key().as_str(), "pr-42");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
mod cache;
pub mod codec;
pub mod context;
pub mod directory;
pub mod egress;
pub mod guardrails;
mod hash;
pub mod limits;
pub mod metrics;
#[doc(hidden)]
pub mod plumbing;
mod sandbox;
mod scope;
pub mod task;
pub mod token;
pub mod trust;

pub use codec::{Carrier, CarrierMut, Codec};
pub use context::{ContextExt, FutureExt, SandboxContext, current, in_scope, with_current};
pub use directory::Directory;
pub use guardrails::Guardrails;
pub use sandbox::{KeyError, LabelError, Sandbox, SandboxBuilder, SandboxKey};
#[cfg(feature = "tokio")]
pub use task::{spawn, spawn_blocking};
pub use trust::{Admission, Ingress, OnInvalid, Refusal, TrustPolicy};
