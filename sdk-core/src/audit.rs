//! Audit events: one `tracing` event on target `prodbox::audit` per decision about a sandbox.
//!
//! Every event has these fields, so a log pipeline can index them:
//!
//! | field | meaning |
//! |---|---|
//! | `sandbox` | the sandbox key, or `-` when none could be read |
//! | `actor`, `origin` | who started the sandbox and for what, or `-` |
//! | `protocol` | `http`, `grpc`, `kafka`, `db`, `redis` |
//! | `direction` | `inbound` or `outbound` |
//! | `decision` | `accepted`, `stripped`, `rejected`, `throttled`, `routed`, `fallback`, `skipped`, `dead_lettered`, `shadowed` |
//! | `reason` | a short stable name such as `untrusted_ingress`, `token_expired`, `rate_limited` |
//! | `detail` | a human sentence, when there is more to say |
//!
//! Every event is also counted in the `prodbox.sandbox.decisions` metric ([`crate::metrics`]).
//!
//! `accepted`, `routed`, `skipped` and `shadowed` are logged at `INFO`, everything else at `WARN`. Route them with an
//! `EnvFilter` directive such as `prodbox::audit=info`.

use std::fmt;

use crate::sandbox::{Sandbox, SandboxKey};

/// The protocol a decision was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP (axum, hyper, reqwest).
    Http,
    /// gRPC (tonic).
    Grpc,
    /// Kafka.
    Kafka,
    /// Database.
    Db,
    /// Redis.
    Redis,
}

impl Protocol {
    /// The name used in audit fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Kafka => "kafka",
            Protocol::Db => "db",
            Protocol::Redis => "redis",
        }
    }
}

/// Whether the context came in or went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Read at an ingress.
    Inbound,
    /// Written on an outbound call.
    Outbound,
}

impl Direction {
    /// The name used in audit fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What prodbox decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// The sandbox context was taken as is.
    Accepted,
    /// The sandbox context was removed and the message handled as baseline.
    Stripped,
    /// The message was refused.
    Rejected,
    /// The message was refused by a guardrail (rate, concurrency, circuit breaker).
    Throttled,
    /// An outbound call was sent to a sandbox fork.
    Routed,
    /// An outbound call of a sandbox that forks its destination went to baseline code instead
    /// (the fork is inactive or its address is invalid); the call keeps its sandbox context.
    Fallback,
    /// A message was left to another consumer (Kafka): its offset is committed all the same.
    Skipped,
    /// A message went to the dead-letter topic with the reason.
    DeadLettered,
    /// A copy of a baseline request was sent to a sandbox's shadow fork (reason `sent`, or
    /// `differs` when the compare hook found a difference), or dropped (the reason says why).
    Shadowed,
}

impl Decision {
    /// The name used in audit fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accepted => "accepted",
            Decision::Stripped => "stripped",
            Decision::Rejected => "rejected",
            Decision::Throttled => "throttled",
            Decision::Routed => "routed",
            Decision::Fallback => "fallback",
            Decision::Skipped => "skipped",
            Decision::DeadLettered => "dead_lettered",
            Decision::Shadowed => "shadowed",
        }
    }
}

/// One `prodbox::audit` event of `$event` at `$level`, with its fields (and any `$extra`
/// ones), and `$message` formatted with the decision and the reason.
macro_rules! audit_event {
    ($event:expr, $level:expr, $($extra:ident = $value:expr,)* $message:literal) => {{
        let event = $event;
        let detail = event.detail.map(tracing::field::display);
        tracing::event!(
            target: "prodbox::audit",
            $level,
            sandbox = event.sandbox.unwrap_or("-"),
            actor = event.actor.unwrap_or("-"),
            origin = event.origin.unwrap_or("-"),
            protocol = event.protocol.as_str(),
            direction = event.direction.as_str(),
            decision = event.decision.as_str(),
            reason = event.reason,
            detail,
            $($extra = $value,)*
            $message,
            event.decision.as_str(),
            event.reason,
        )
    }};
}

/// One audit record; [`emit`](AuditEvent::emit) writes it.
#[derive(Clone, Copy)]
pub struct AuditEvent<'a> {
    /// The sandbox key, if one could be read.
    pub sandbox: Option<&'a str>,
    /// Who started the sandbox.
    pub actor: Option<&'a str>,
    /// The PR or dev session.
    pub origin: Option<&'a str>,
    /// Where.
    pub protocol: Protocol,
    /// Which way.
    pub direction: Direction,
    /// What was decided.
    pub decision: Decision,
    /// Why, as a short stable name.
    pub reason: &'a str,
    /// Why, as a sentence.
    pub detail: Option<&'a dyn fmt::Display>,
}

impl<'a> AuditEvent<'a> {
    /// An event about `sandbox` (its key, actor and origin; `None` for none), without detail.
    pub fn about(
        sandbox: Option<&'a Sandbox>,
        protocol: Protocol,
        direction: Direction,
        decision: Decision,
        reason: &'a str,
    ) -> Self {
        Self {
            sandbox: sandbox.map(|s| s.key().as_str()),
            actor: sandbox.and_then(Sandbox::actor),
            origin: sandbox.and_then(Sandbox::origin),
            protocol,
            direction,
            decision,
            reason,
            detail: None,
        }
    }

    /// With `detail`.
    pub fn detail(mut self, detail: &'a dyn fmt::Display) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Names sandbox `key` when the event names none (the sandbox an error names, when the
    /// task had none).
    pub fn or_key(mut self, key: Option<&'a SandboxKey>) -> Self {
        self.sandbox = self.sandbox.or(key.map(SandboxKey::as_str));
        self
    }

    /// Writes the event on target `prodbox::audit`, and counts it in
    /// `prodbox.sandbox.decisions`.
    pub fn emit(&self) {
        self.count(1);
        self.log();
    }

    /// Adds `n` such events to `prodbox.sandbox.decisions` (a busy consumer's skips are
    /// counted once a second).
    pub(crate) fn count(&self, n: u64) {
        let labels = [
            self.protocol.as_str(),
            self.direction.as_str(),
            self.decision.as_str(),
        ];
        crate::metrics::decisions(labels, self.reason, self.sandbox, n);
    }

    /// Writes and counts the event as a decision prodbox would have made but did not act on
    /// (an observe-only ingress): on target `prodbox::audit` with `observed = true`, at `INFO`
    /// whatever the decision, and counted in `prodbox.sandbox.observed`, not in
    /// `prodbox.sandbox.decisions`.
    pub(crate) fn emit_observed(&self) {
        let labels = [
            self.protocol.as_str(),
            self.direction.as_str(),
            self.decision.as_str(),
        ];
        crate::metrics::observed(labels, self.reason, self.sandbox);
        audit_event!(
            self,
            tracing::Level::INFO,
            observed = true,
            "prodbox would have {} ({}); observe-only, nothing changed"
        );
    }

    /// Writes the event, uncounted.
    pub(crate) fn log(&self) {
        match self.decision {
            Decision::Accepted | Decision::Routed | Decision::Skipped | Decision::Shadowed => {
                audit_event!(self, tracing::Level::INFO, "prodbox {} {}")
            }
            _ => audit_event!(self, tracing::Level::WARN, "prodbox {} {}"),
        }
    }
}
