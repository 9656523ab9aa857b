//! prodbox for gRPC (tonic): carry the sandbox context through unary and streaming calls.
//!
//! * [`SandboxLayer`]: the server layer for `Server::builder().layer(..)`, with the trust
//!   policy, audit and guardrails of `prodbox-http`, answering refusals with gRPC statuses;
//! * [`SandboxInterceptor`]: the client side for the simple case;
//! * [`PropagateSandboxLayer`]: the client side as a Tower layer around a `Channel`, with
//!   per-sandbox circuit breaking;
//! * [`ForkRouter`]: sends sandboxed calls to the sandbox's fork of a service.
//!
//! The context is W3C `baggage` metadata written by the one core codec, so services in other
//! languages that propagate OpenTelemetry baggage carry it too.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unreachable_pub)]

pub mod client;
mod metadata;
pub mod routing;
pub mod server;

pub use client::{GrpcClientFlavor, PropagateSandbox, PropagateSandboxLayer, SandboxInterceptor};
pub use metadata::MetadataCarrier;
pub use routing::ForkRouter;
pub use server::{GrpcFlavor, SandboxLayer};
