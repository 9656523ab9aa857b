//! Where a sandboxed call may go: the egress policy, one decision for every client (prodbox's
//! HTTP layer and reqwest middleware, the guarded connector, the redirect policy).
//!
//! See [`EgressPolicy`] for the rules.

use std::sync::Arc;

use bytes::Bytes;

use crate::directory::{Directory, ForkAddress};
use crate::sandbox::{Sandbox, SandboxKey};

/// How a sandboxed call to a stubbed destination is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stub {
    /// With this response, without any network call.
    Respond {
        /// The status code.
        status: u16,
        /// The `content-type` header.
        content_type: Arc<str>,
        /// The body.
        body: Bytes,
    },
    /// By the stub service at this address (the request's path and query kept; the sandbox
    /// context goes along, so the stub can tell sandboxes apart).
    Forward(ForkAddress),
}

impl Stub {
    /// A fixed response.
    pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self::Respond {
            status,
            content_type: Arc::from(content_type),
            body: body.into(),
        }
    }
}

/// What a destination is to sandboxed calls.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Internal,
    External,
    Stubbed(Stub),
}

/// A host pattern: `billing`, `billing:8080`, `*.svc.cluster.local` (any subdomain).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// Lowercase; for a wildcard, the suffix with its leading dot.
    host: Box<str>,
    wildcard: bool,
    port: Option<u16>,
}

impl Pattern {
    fn parse(pattern: &str) -> Self {
        let pattern = pattern.trim().to_ascii_lowercase();
        let (host, port) = match pattern.rsplit_once(':') {
            // Not an IPv6 literal's colon: a port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                match port.parse() {
                    Ok(port) => (host.to_owned(), Some(port)),
                    Err(_) => (pattern.clone(), None),
                }
            }
            _ => (pattern.clone(), None),
        };
        let host = host.trim_end_matches('.');
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => Self {
                host: suffix.into(),
                wildcard: true,
                port,
            },
            _ => Self {
                host: host.into(),
                wildcard: false,
                port,
            },
        }
    }

    /// Whether `host` (lowercase, no trailing dot) and `port` match.
    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() && host.ends_with(&*self.host)
        } else {
            *self.host == *host
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: Arc<str>,
    pattern: Pattern,
    kind: Kind,
}

/// The egress policy: which destinations sandboxed calls may reach, and how. Cheap to clone.
///
/// Each destination a service calls is declared once, by host (`billing`, `billing:8080`,
/// `*.svc.cluster.local`; a pattern without a port matches every port, `*.x` matches the
/// subdomains of `x` but not `x` itself, and hosts are compared as ASCII text: an IP address
/// spelled otherwise, or a Unicode name, matches nothing, and is refused):
///
/// * **internal**: one of our services; the sandbox context goes along and fork routing
///   applies;
/// * **external**, allowed for sandboxes: a third party a test may really call (a sandbox
///   provider's API); the call goes out without any prodbox baggage or token;
/// * **stubbed**: a sandboxed call is answered by a stub instead, a configured response or a
///   stub service's address, and never reaches the destination; the sandbox's directory entry
///   may name its own stub for a destination (`prodbox sandbox create --stub payments=URL`).
///
/// For a sandboxed call, a destination not declared is refused ([`EgressRefused`], audited):
/// fail closed. Production calls are never looked at.
///
/// ```
/// use prodbox_core::egress::{EgressPolicy, EgressVerdict, Stub};
/// use prodbox_core::Sandbox;
///
/// let policy = EgressPolicy::new()
///     .internal("*.svc.cluster.local")
///     .internal("billing")
///     .external("maps", "maps.example.com")
///     .stub("payments", "api.payments.example", Stub::respond(200, "application/json", r#"{"id":"stub"}"#));
/// let sandbox = Sandbox::new("pr-42".parse().unwrap());
///
/// assert!(matches!(policy.decide(Some(&sandbox), None, "billing", Some(8080)), EgressVerdict::Internal));
/// assert!(matches!(policy.decide(Some(&sandbox), None, "api.payments.example", None), EgressVerdict::Stubbed { .. }));
/// assert!(matches!(policy.decide(Some(&sandbox), None, "evil.example", None), EgressVerdict::Undeclared));
/// // Production's calls go wherever they go.
/// assert!(matches!(policy.decide(None, None, "evil.example", None), EgressVerdict::Baseline));
/// ```
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// First match wins, in the order declared.
    rules: Arc<Vec<Rule>>,
    /// Whether any rule names a port (kept: asked on every call).
    names_ports: bool,
    /// Where sandboxes' own stubs (from the directory) may be.
    stub_services: Arc<Vec<Pattern>>,
}

/// Where one sandboxed call goes, by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressVerdict {
    /// The call is production's: the policy does not apply.
    Baseline,
    /// One of our services: the context goes along.
    Internal,
    /// A third party sandboxes may call: the call goes without prodbox baggage or token.
    External {
        /// The destination's declared name.
        name: Arc<str>,
    },
    /// Answered by `stub` instead.
    Stubbed {
        /// The destination's declared name.
        name: Arc<str>,
        /// The stub (the sandbox's own, from its directory entry, when it names one).
        stub: Stub,
    },
    /// Not declared: refused.
    Undeclared,
    /// The sandbox's own stub of destination `name` is at an address the policy does not list
    /// as a stub service ([`EgressPolicy::stub_services`]): refused, as the address is
    /// whatever the sandbox's creator named.
    UnlistedStub {
        /// The destination's declared name.
        name: Arc<str>,
    },
}

/// A sandboxed call to a destination the egress policy does not declare (or may not be
/// reached this way): it was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prodbox refused sandbox {sandbox}'s call to {destination}: {why}")]
pub struct EgressRefused {
    /// The sandbox.
    pub sandbox: SandboxKey,
    /// The destination, `host[:port]`.
    pub destination: String,
    /// The audit reason: `egress_undeclared`, `egress_guarded_client`, `egress_redirect`,
    /// `egress_stub_address` or `egress_host_mismatch`.
    pub reason: &'static str,
    /// Why, as a sentence.
    pub why: &'static str,
}

impl EgressRefused {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl EgressPolicy {
    /// A policy that declares nothing: every sandboxed call is refused until its destination
    /// is declared.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, name: &str, pattern: &str, kind: Kind) -> Self {
        let pattern = Pattern::parse(pattern);
        self.names_ports |= pattern.port.is_some();
        Arc::make_mut(&mut self.rules).push(Rule {
            name: Arc::from(name),
            pattern,
            kind,
        });
        self
    }

    /// Lets sandboxes' own stubs (`prodbox sandbox create --stub NAME=URL`) be at hosts
    /// matching `pattern` (our stub services). A sandbox's stub anywhere else is refused: its
    /// address is whatever the sandbox's creator named, and it would receive what the
    /// application meant for the third party. None is listed by default.
    pub fn stub_services(mut self, pattern: &str) -> Self {
        Arc::make_mut(&mut self.stub_services).push(Pattern::parse(pattern));
        self
    }

    /// Declares `pattern` (`host`, `host:port` or `*.domain`) one of our services.
    pub fn internal(self, pattern: &str) -> Self {
        self.with(pattern, pattern, Kind::Internal)
    }

    /// Declares `pattern` a third party named `name` that sandboxes may call (without the
    /// context).
    pub fn external(self, name: &str, pattern: &str) -> Self {
        self.with(name, pattern, Kind::External)
    }

    /// Declares `pattern` a third party named `name` whose sandboxed calls `stub` answers.
    pub fn stub(self, name: &str, pattern: &str, stub: Stub) -> Self {
        self.with(name, pattern, Kind::Stubbed(stub))
    }

    /// Where a call to `host`/`port` goes for `sandbox` (`None`: production's, never
    /// affected), with the sandbox's own stubs from `directory`.
    pub fn decide(
        &self,
        sandbox: Option<&Sandbox>,
        directory: Option<&dyn Directory>,
        host: &str,
        port: Option<u16>,
    ) -> EgressVerdict {
        let Some(sandbox) = sandbox else {
            return EgressVerdict::Baseline;
        };
        // One pass over the name decides whether it needs normalising (the common case:
        // already lowercase, no trailing dot), as this runs on every sandboxed call.
        let lowered;
        let host = if host.ends_with('.') || host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.trim_end_matches('.').to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let Some(rule) = self.rules.iter().find(|r| r.pattern.matches(host, port)) else {
            return EgressVerdict::Undeclared;
        };
        if rule.kind == Kind::Internal {
            return EgressVerdict::Internal;
        }
        let own_stub = directory
            .and_then(|d| d.get(sandbox.key()))
            .and_then(|entry| entry.stubs.get(&*rule.name).cloned());
        match (own_stub, &rule.kind) {
            (Some(address), _) if !self.lists_stub_service(&address) => {
                EgressVerdict::UnlistedStub {
                    name: Arc::clone(&rule.name),
                }
            }
            (Some(address), _) => EgressVerdict::Stubbed {
                name: Arc::clone(&rule.name),
                stub: Stub::Forward(address),
            },
            (None, Kind::Stubbed(stub)) => EgressVerdict::Stubbed {
                name: Arc::clone(&rule.name),
                stub: stub.clone(),
            },
            (None, _) => EgressVerdict::External {
                name: Arc::clone(&rule.name),
            },
        }
    }

    /// Whether `host`/`port` is declared a third party sandboxes may call (its first matching
    /// rule is `external`; a sandbox's own stub from the directory aside).
    pub fn is_external(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| r.pattern.matches(&host, port))
            .is_some_and(|r| r.kind == Kind::External)
    }

    fn lists_stub_service(&self, address: &ForkAddress) -> bool {
        let authority = address.authority();
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        let port = authority.port_u16().or(if address.is_https() {
            Some(443)
        } else {
            Some(80)
        });
        self.stub_services.iter().any(|p| p.matches(&host, port))
    }

    /// Whether any declared pattern names a port: if none does, callers need not work out a
    /// call's port (it costs more than the rest of the decision).
    pub fn names_ports(&self) -> bool {
        self.names_ports
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{MemoryDirectory, SandboxEntry};

    fn sandbox() -> Sandbox {
        Sandbox::new("pr-42".parse().expect("key"))
    }

    #[test]
    fn patterns_match_hosts_ports_and_subdomains() {
        let p = Pattern::parse("*.svc.cluster.local");
        assert!(p.matches("billing.prod.svc.cluster.local", Some(80)));
        assert!(
            !p.matches("svc.cluster.local", None),
            "the suffix itself is not a subdomain"
        );
        assert!(!p.matches("evilsvc.cluster.local", None));
        let p = Pattern::parse("Billing:8080");
        assert!(p.matches("billing", Some(8080)));
        assert!(!p.matches("billing", Some(8081)));
        assert!(!p.matches("billing", None));
        let p = Pattern::parse("api.example.com.");
        assert!(p.matches("api.example.com", Some(443)));
        assert!(!p.matches("api.example.com.evil", None));
        let p = Pattern::parse("[::1]:9000");
        assert!(p.matches("[::1]", Some(9000)));
        let p = Pattern::parse("127.0.0.1");
        assert!(p.matches("127.0.0.1", Some(1)));
    }

    #[test]
    fn first_match_wins_and_undeclared_is_refused() {
        let policy = EgressPolicy::new()
            .stub(
                "payments",
                "pay.example",
                Stub::respond(200, "text/plain", "ok"),
            )
            .external("all-example", "*.example")
            .internal("billing");
        let s = sandbox();
        assert!(matches!(
            policy.decide(Some(&s), None, "PAY.example.", None),
            EgressVerdict::Stubbed { .. }
        ));
        assert!(matches!(
            policy.decide(Some(&s), None, "maps.example", None),
            EgressVerdict::External { .. }
        ));
        assert_eq!(
            policy.decide(Some(&s), None, "billing", Some(80)),
            EgressVerdict::Internal
        );
        assert_eq!(
            policy.decide(Some(&s), None, "billing.evil", None),
            EgressVerdict::Undeclared
        );
        assert_eq!(
            EgressPolicy::new().decide(Some(&s), None, "billing", None),
            EgressVerdict::Undeclared
        );
        assert_eq!(
            policy.decide(None, None, "anything", None),
            EgressVerdict::Baseline
        );
    }

    #[test]
    fn a_sandboxs_own_stub_replaces_the_declared_answer() {
        let policy = EgressPolicy::new()
            .external("payments", "pay.example")
            .internal("billing")
            .stub_services("127.0.0.1");
        let directory = MemoryDirectory::new();
        let address: ForkAddress = "http://127.0.0.1:9999".parse().expect("address");
        directory.upsert(
            SandboxEntry::new("pr-42".parse().expect("key"))
                .stub("payments", address.clone())
                .stub("billing", address.clone()),
        );
        let s = sandbox();
        assert_eq!(
            policy.decide(Some(&s), Some(&directory), "pay.example", None),
            EgressVerdict::Stubbed {
                name: Arc::from("payments"),
                stub: Stub::Forward(address)
            }
        );
        // Internal services are forked, not stubbed.
        assert_eq!(
            policy.decide(Some(&s), Some(&directory), "billing", None),
            EgressVerdict::Internal
        );
        // A sandbox's stub at an address the policy does not list: refused.
        let unlisted = EgressPolicy::new().external("payments", "pay.example");
        assert!(matches!(
            unlisted.decide(Some(&s), Some(&directory), "pay.example", None),
            EgressVerdict::UnlistedStub { .. }
        ));
        // Another sandbox keeps the declared answer.
        let other = Sandbox::new("pr-7".parse().expect("key"));
        assert!(matches!(
            policy.decide(Some(&other), Some(&directory), "pay.example", None),
            EgressVerdict::External { .. }
        ));
    }
}
