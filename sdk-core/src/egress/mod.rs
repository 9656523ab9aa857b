//! Writing the current sandbox context into outbound messages, for every protocol.
//!
//! The rules every client integration follows (HTTP, gRPC, Kafka producers):
//!
//! * the **context decides our members**: a sandboxed call carries its sandbox; a baseline call
//!   carries none, even when the application copied `prodbox.*` members from an inbound message;
//! * other baggage members (from the inbound message or added through the OpenTelemetry API)
//!   travel on, merged into one `baggage` header with what the message already has;
//! * **fail closed**: when a sandboxed message's context cannot be written (its existing baggage
//!   does not parse, or the result breaks the limits), [`Egress::inject`] fails and the message
//!   must not be sent: the next hop would strip or refuse it, and a stripped sandboxed message
//!   runs as production.
//!
//! # Example
//!
//! ```
//! use prodbox_core::{FutureExt, Sandbox, audit::Protocol, egress::Egress};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let egress = Egress::new(Protocol::Kafka);
//! let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
//! async { egress.inject(&mut headers) }
//!     .in_sandbox(Sandbox::new("pr-42".parse()?))
//!     .await?;
//! assert_eq!(headers, [("baggage".to_owned(), b"prodbox.sandbox=pr-42".to_vec())]);
//! # Ok(()) }
//! ```

mod policy;

pub use policy::{EgressPolicy, EgressRefused, EgressVerdict, Stub};

use std::fmt;

use opentelemetry::Context;

use crate::audit::{AuditEvent, Decision, Direction, Protocol};
use crate::codec::{BAGGAGE, BaggageError, CarrierMut, Codec};
use crate::context::SandboxContext;
use crate::sandbox::{Sandbox, SandboxKey};

/// The sandbox context could not be written into an outbound message; it must not be sent.
#[derive(Debug, thiserror::Error)]
#[error("prodbox refused to send sandboxed message for {sandbox}: {source}")]
pub struct InjectError {
    /// The sandbox of the message.
    pub sandbox: SandboxKey,
    /// Why the baggage could not be written.
    #[source]
    pub source: Box<BaggageError>,
}

/// Writes the current context into outbound messages of one protocol. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Egress {
    codec: Codec,
    forward_token: bool,
    protocol: Protocol,
}

impl Egress {
    /// Egress for `protocol` with the default codec, not forwarding tokens.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            codec: Codec::default(),
            forward_token: false,
            protocol,
        }
    }

    crate::plumbing::setters! {
        /// Uses `codec` (limits).
        codec(codec: Codec) => codec = codec;

        /// Names `protocol` in audit events (a layer speaking another protocol sets it).
        protocol(protocol: Protocol) => protocol = protocol;

        /// Also forwards the signed token the sandbox arrived with (off by default: tokens are
        /// bearer credentials, and internal hops trust `prodbox.sandbox` under `Accept`).
        forward_token(forward: bool) => forward_token = forward;
    }

    /// Removes every prodbox member and carrier from `carrier`, as this egress's codec reads
    /// them (for a message to a third party).
    pub fn strip<C: CarrierMut + ?Sized>(&self, carrier: &mut C) -> bool {
        self.codec.strip(carrier)
    }

    /// Writes the current context into `carrier`; returns the sandbox, if the message is
    /// sandboxed. See the [module docs](self) for the rules.
    pub fn inject<C: CarrierMut + ?Sized>(
        &self,
        carrier: &mut C,
    ) -> Result<Option<Sandbox>, InjectError> {
        Context::map_current(|cx| self.inject_from(cx, carrier))
    }

    /// Writes the context `cx` into `carrier`.
    pub fn inject_from<C: CarrierMut + ?Sized>(
        &self,
        cx: &Context,
        carrier: &mut C,
    ) -> Result<Option<Sandbox>, InjectError> {
        let (context, foreign) = SandboxContext::outbound(cx);
        let sandbox = context.and_then(SandboxContext::sandbox);
        // Output is one canonical form: legacy carriers of ours never go out.
        let mut stripped = self.codec.strip_legacy(carrier);
        if sandbox.is_none() {
            if carrier.get_all(BAGGAGE).next().is_some() {
                stripped |= self.codec.strip_parsable(carrier);
            }
            if stripped {
                self.audit_unscoped(
                    Decision::Stripped,
                    "baseline_egress",
                    &"the message is baseline; sandbox members the application set were removed",
                );
            }
            if foreign.is_empty() {
                return Ok(None);
            }
        }
        let token = context
            .and_then(SandboxContext::token)
            .filter(|_| self.forward_token);
        match self.codec.inject(sandbox, token, &foreign, carrier) {
            Ok(()) => Ok(sandbox.cloned()),
            Err(source) => match sandbox {
                Some(sandbox) => {
                    self.audit(sandbox, Decision::Rejected, source.reason(), &source);
                    Err(InjectError {
                        sandbox: sandbox.key().clone(),
                        source: Box::new(source),
                    })
                }
                // A baseline message only loses the other members; it is not at risk.
                None => {
                    self.audit_unscoped(Decision::Stripped, source.reason(), &source);
                    Ok(None)
                }
            },
        }
    }

    /// Audits an outbound decision about a message of no sandbox (a baseline message, or work
    /// that lost its context).
    pub fn audit_unscoped(&self, decision: Decision, reason: &str, detail: &dyn fmt::Display) {
        self.emit(None, decision, reason, detail);
    }

    /// Audits an outbound decision about `sandbox` on this protocol.
    pub fn audit(
        &self,
        sandbox: &Sandbox,
        decision: Decision,
        reason: &str,
        detail: &dyn fmt::Display,
    ) {
        self.emit(Some(sandbox), decision, reason, detail);
    }

    fn emit(
        &self,
        sandbox: Option<&Sandbox>,
        decision: Decision,
        reason: &str,
        detail: &dyn fmt::Display,
    ) {
        self.event(sandbox, decision, reason, detail).emit();
    }

    /// The outbound audit event of a decision about `sandbox`'s message on this protocol.
    pub(crate) fn event<'a>(
        &self,
        sandbox: Option<&'a Sandbox>,
        decision: Decision,
        reason: &'a str,
        detail: &'a dyn fmt::Display,
    ) -> AuditEvent<'a> {
        AuditEvent {
            sandbox: sandbox.map(|s| s.key().as_str()),
            actor: sandbox.and_then(Sandbox::actor),
            origin: sandbox.and_then(Sandbox::origin),
            protocol: self.protocol,
            direction: Direction::Outbound,
            decision,
            reason,
            detail: Some(detail),
        }
    }
}
