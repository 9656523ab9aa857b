//! Trust policy at an ingress, and the one admission decision every protocol layer shares.
//!
//! | policy | use it for | a sandbox context that arrives is |
//! |---|---|---|
//! | [`Accept`](TrustPolicy::accept) | internal hops | taken as sent; optionally only from listed source networks, and stripped from anywhere else |
//! | [`Strip`](TrustPolicy::strip) (default) | public edges without tokens | removed; the request runs as baseline |
//! | [`Signed`](TrustPolicy::signed) | public edges | taken only from a valid signed token; forged, expired or unsigned ones are stripped or rejected as configured |
//!
//! Whatever the policy, a sandbox the directory knows as disabled or expired is refused, and
//! guardrails apply. Every decision is audited (see [`crate::audit`]).
//!
//! # Example
//!
//! ```
//! use prodbox_core::trust::{Admission, Ingress, TrustPolicy};
//!
//! let ingress = Ingress::new(TrustPolicy::accept());
//! let headers = vec![("baggage".to_owned(), b"prodbox.sandbox=pr-42".to_vec())];
//! match ingress.admit(&headers, None) {
//!     Admission::Sandboxed { context, .. } => {
//!         assert_eq!(context.sandbox().map(|s| s.key().as_str()), Some("pr-42"));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // The same request at a public edge is stripped and runs as baseline.
//! let edge = Ingress::new(TrustPolicy::strip());
//! assert!(matches!(edge.admit(&headers, None), Admission::Baseline { strip: true, .. }));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::audit::{AuditEvent, Decision, Direction, Protocol};
use crate::codec::{BaggageError, Carrier, Codec, Extracted};
use crate::context::SandboxContext;
use crate::directory::{Directory, Standing};
use crate::guardrails::{Guardrails, Permit, Throttled};
use crate::sandbox::{Sandbox, SandboxKey};
use crate::token::{TokenError, TokenKeys};

/// What to do with a sandbox context that fails a check at a `Signed` edge or cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Remove it and handle the request as baseline (audited).
    Strip,
    /// Refuse the request with an error that says why (audited).
    Reject,
}

/// Who may set a sandbox context at an ingress.
#[derive(Clone, Debug, Default)]
pub enum TrustPolicy {
    /// Take the context as sent (internal hops).
    Accept {
        /// When set, only from peers in these networks; from anywhere else it is stripped, as is
        /// a request whose peer address is unknown.
        from: Option<Arc<[IpNet]>>,
    },
    /// Remove any sandbox context (untrusted edges; the default).
    #[default]
    Strip,
    /// Take the context only from a valid signed token.
    Signed {
        /// The keys that verify tokens.
        keys: TokenKeys,
        /// What happens to forged, expired or unsigned contexts.
        on_invalid: OnInvalid,
    },
}

impl TrustPolicy {
    /// Accept from anywhere.
    pub fn accept() -> Self {
        Self::Accept { from: None }
    }

    /// Accept only from peers in `networks`, such as `10.0.0.0/8`.
    pub fn accept_from(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self::Accept {
            from: Some(networks.into_iter().collect()),
        }
    }

    /// Strip every sandbox context.
    pub fn strip() -> Self {
        Self::Strip
    }

    /// Accept only signed tokens; strip invalid ones.
    pub fn signed(keys: TokenKeys) -> Self {
        Self::Signed {
            keys,
            on_invalid: OnInvalid::Strip,
        }
    }

    /// Accept only signed tokens; reject requests with invalid ones.
    pub fn signed_rejecting(keys: TokenKeys) -> Self {
        Self::Signed {
            keys,
            on_invalid: OnInvalid::Reject,
        }
    }
}

/// What to do with a valid sandbox the directory does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSandbox {
    /// Let it run: its data is isolated all the same, and routing falls back to baseline code.
    #[default]
    Allow,
    /// Refuse it.
    Refuse,
}

/// Why a request was refused. Each protocol maps the kind to its status (HTTP 400/401/403/429,
/// gRPC `INVALID_ARGUMENT`/`UNAUTHENTICATED`/`PERMISSION_DENIED`/`RESOURCE_EXHAUSTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The sandbox baggage is malformed or ambiguous (strict ingress).
    #[error("malformed sandbox baggage: {0}")]
    Malformed(#[from] BaggageError),
    /// The token is forged, expired, from a retired key, or missing (`Signed`, rejecting).
    #[error("sandbox token refused: {0}")]
    Unauthenticated(String),
    /// The directory's kill switch is on for this sandbox.
    #[error("sandbox {0} is disabled")]
    Disabled(SandboxKey),
    /// The sandbox has expired.
    #[error("sandbox {0} has expired")]
    Expired(SandboxKey),
    /// The directory does not know this sandbox (and is configured to refuse those).
    #[error("sandbox {0} is not registered in the directory")]
    Unknown(SandboxKey),
    /// A guardrail throttled the sandbox.
    #[error(transparent)]
    Throttled(#[from] Throttled),
}

impl Refusal {
    /// A short stable name for audit events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(e) => e.reason(),
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Disabled(_) => "sandbox_disabled",
            Self::Expired(_) => "sandbox_expired",
            Self::Unknown(_) => "sandbox_unknown",
            Self::Throttled(t) => t.reason.as_str(),
        }
    }

    /// For throttling, when to retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(t) => Some(t.retry_after),
            _ => None,
        }
    }
}

/// The outcome of [`Ingress::admit`].
#[derive(Debug)]
pub enum Admission {
    /// Handle as production. `context` carries members that are not ours onward; `strip` says
    /// the caller should remove our carriers from the message (see [`Codec::strip`]).
    Baseline {
        /// Other baggage to keep propagating.
        context: Option<SandboxContext>,
        /// Whether a sandbox context was removed.
        strip: bool,
    },
    /// Handle inside the sandbox. Keep `permit` until the response is complete.
    Sandboxed {
        /// The sandbox context to attach.
        context: SandboxContext,
        /// The guardrail slot, when guardrails are configured.
        permit: Option<Permit>,
    },
    /// Refuse the request.
    Refused(Refusal),
    /// An observe-only ingress ([`Ingress::observe_only`]) decided and audited the message:
    /// handle it as without prodbox, in the context as it is. `sandbox` is the one an acting
    /// ingress would have attached: never the current sandbox (nothing isolates by it), but
    /// prodbox's routing layers audit, as observed, where they would have sent its calls.
    Observed {
        /// The sandbox that would have been attached.
        sandbox: Option<Sandbox>,
    },
}

/// The admission decision for one ingress: codec, trust policy, directory and guardrails.
/// Cheap to clone.
#[derive(Clone)]
pub struct Ingress {
    codec: Codec,
    policy: TrustPolicy,
    directory: Option<Arc<dyn Directory>>,
    guardrails: Option<Guardrails>,
    on_malformed: Option<OnInvalid>,
    unknown: UnknownSandbox,
    protocol: Protocol,
    /// Decide and audit, but change nothing (see [`Ingress::observe_only`]).
    observe: bool,
}

impl fmt::Debug for Ingress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingress")
            .field("policy", &self.policy)
            .field("directory", &self.directory.is_some())
            .field("guardrails", &self.guardrails)
            .field("on_malformed", &self.malformed_action())
            .field("unknown", &self.unknown)
            .field("protocol", &self.protocol)
            .field("observe", &self.observe)
            .finish()
    }
}

impl Ingress {
    /// An ingress with `policy`, the default codec, no directory and no guardrails.
    pub fn new(policy: TrustPolicy) -> Self {
        Self {
            codec: Codec::default(),
            policy,
            directory: None,
            guardrails: None,
            on_malformed: None,
            unknown: UnknownSandbox::Allow,
            protocol: Protocol::Http,
            observe: false,
        }
    }

    crate::plumbing::setters! {
        /// Uses `codec` (limits, aliases, legacy carriers).
        codec(codec: Codec) => codec = codec;

        /// Checks sandboxes against `directory`.
        directory(directory: impl Directory) => directory = Some(Arc::new(directory));

        /// Applies `guardrails` to sandboxed requests.
        guardrails(guardrails: Guardrails) => guardrails = Some(guardrails);

        /// What to do with malformed or ambiguous sandbox baggage.
        ///
        /// The default depends on the policy. At an `Accept` hop the message comes from a service
        /// of ours, and a malformed context there is most likely a sandboxed request gone wrong:
        /// running it as production could write production data, so it is **rejected**. At a
        /// `Strip` or `Signed` edge nothing from outside is trusted anyway, so it is **stripped**.
        on_malformed(action: OnInvalid) => on_malformed = Some(action);
    }

    /// Shorthand for `on_malformed(OnInvalid::Reject)` when `strict`, else `Strip`.
    pub fn strict(self, strict: bool) -> Self {
        self.on_malformed(if strict {
            OnInvalid::Reject
        } else {
            OnInvalid::Strip
        })
    }

    crate::plumbing::setters! {
        /// What to do with valid sandboxes the directory does not know (default: allow).
        unknown_sandboxes(unknown: UnknownSandbox) => unknown = unknown;

        /// The protocol named in audit events (default HTTP).
        protocol(protocol: Protocol) => protocol = protocol;

        /// Observe-only rollout (default off): every message is decided as usual (trust
        /// policy, codec, directory, guardrails) and the decision is audited and counted as
        /// one that *would* have been made (`observed = true` on target `prodbox::audit`, and
        /// `prodbox.sandbox.observed` instead of `prodbox.sandbox.decisions`), but nothing is
        /// acted on: no sandbox is attached, nothing is stripped from the message, nothing is
        /// refused or throttled. The service behaves as it did before prodbox, so a team can
        /// switch prodbox on in production and read what it would do before trusting it.
        /// Guardrails still count what they see (a would-be throttle uses up no more than a
        /// real one); their concurrency slots are given back at once. [`admit`](Self::admit)
        /// answers [`Admission::Observed`] with the sandbox it would have attached; prodbox's
        /// server layers carry it, apart from the sandbox, to its routing layers, which audit
        /// as observed where its calls would have gone and send them to the baseline.
        observe_only(observe: bool) => observe = observe;
    }

    /// The codec in use.
    pub fn codec_ref(&self) -> &Codec {
        &self.codec
    }

    /// The directory in use.
    pub fn directory_ref(&self) -> Option<&Arc<dyn Directory>> {
        self.directory.as_ref()
    }

    fn malformed_action(&self) -> OnInvalid {
        self.on_malformed.unwrap_or(match self.policy {
            TrustPolicy::Accept { .. } => OnInvalid::Reject,
            TrustPolicy::Strip | TrustPolicy::Signed { .. } => OnInvalid::Strip,
        })
    }

    /// Decides what happens to one inbound message; `peer` is the remote address, when known.
    pub fn admit<C: Carrier + ?Sized>(&self, carrier: &C, peer: Option<IpAddr>) -> Admission {
        self.admit_at(carrier, peer, SystemTime::now())
    }

    /// [`admit`](Self::admit) as if `now` were the current time.
    pub fn admit_at<C: Carrier + ?Sized>(
        &self,
        carrier: &C,
        peer: Option<IpAddr>,
        now: SystemTime,
    ) -> Admission {
        let admission = self.decide(carrier, peer, now);
        if self.observe {
            // Decided and audited as observed (see `emit`); acted on not at all.
            let sandbox = match admission {
                Admission::Sandboxed { context, .. } => context.sandbox().cloned(),
                _ => None,
            };
            return Admission::Observed { sandbox };
        }
        admission
    }

    fn decide<C: Carrier + ?Sized>(
        &self,
        carrier: &C,
        peer: Option<IpAddr>,
        now: SystemTime,
    ) -> Admission {
        // A peer outside `Accept`'s networks is an untrusted edge, before anything is read.
        let untrusted_source = match &self.policy {
            TrustPolicy::Accept {
                from: Some(networks),
            } => !peer.is_some_and(|ip| {
                // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
                let ip = ip.to_canonical();
                networks.iter().any(|net| net.contains(&ip))
            }),
            _ => false,
        };
        let extracted = match self.codec.extract(carrier) {
            Ok(extracted) => extracted,
            Err(error) => return self.malformed(carrier, error, untrusted_source),
        };
        if !extracted.claims_anything() {
            return baseline(&extracted, false);
        }
        let claimed = match &self.policy {
            TrustPolicy::Strip => return self.strip(&extracted, "untrusted_ingress", None),
            TrustPolicy::Accept { .. } if untrusted_source => {
                return self.strip(&extracted, "untrusted_source", None);
            }
            TrustPolicy::Accept { .. } => match extracted.sandbox() {
                Some(sandbox) => sandbox,
                // A token alone meant a sandbox, but this hop holds no keys to verify it:
                // running it as production could write production data, so a strict hop
                // refuses (the edge's client layer sends the verified key onward instead).
                None if extracted.token().is_some()
                    && self.malformed_action() == OnInvalid::Reject =>
                {
                    return self.refuse(
                        None,
                        Refusal::Unauthenticated(
                            "a sandbox token reached an internal hop that cannot verify it; \
                             send the verified sandbox key instead"
                                .to_owned(),
                        ),
                    );
                }
                // Only an actor or origin (or a token at a lenient hop): nothing to route on.
                None => return self.strip(&extracted, "no_sandbox_key", None),
            },
            TrustPolicy::Signed { keys, on_invalid } => match self.verify(keys, &extracted, now) {
                Ok(sandbox) => sandbox,
                Err(error) => {
                    let reason = error.reason();
                    return match on_invalid {
                        OnInvalid::Strip => self.strip(&extracted, reason, Some(&error)),
                        OnInvalid::Reject => {
                            let refusal = Refusal::Unauthenticated(error.to_string());
                            self.audit_claim(
                                &extracted,
                                Decision::Rejected,
                                reason,
                                Some(&refusal),
                            );
                            Admission::Refused(refusal)
                        }
                    };
                }
            },
        };
        self.admit_sandbox(claimed, &extracted, now)
    }

    /// Baggage that does not parse. When it mentions nothing of ours, it is no sandbox request:
    /// it runs as baseline with its baggage left alone (and not carried onward). Otherwise the
    /// malformed-policy decides; untrusted sources are always stripped.
    fn malformed<C: Carrier + ?Sized>(
        &self,
        carrier: &C,
        error: BaggageError,
        untrusted_source: bool,
    ) -> Admission {
        let refusal = Refusal::Malformed(error);
        if !self.codec.mentions_ours(carrier) {
            self.audit(
                None,
                Decision::Stripped,
                "baggage_unreadable",
                Some(&refusal),
            );
            return Admission::Baseline {
                context: None,
                strip: false,
            };
        }
        let action = if untrusted_source {
            OnInvalid::Strip
        } else {
            self.malformed_action()
        };
        match action {
            OnInvalid::Reject => self.refuse(None, refusal),
            OnInvalid::Strip => {
                self.audit(None, Decision::Stripped, refusal.reason(), Some(&refusal));
                Admission::Baseline {
                    context: None,
                    strip: true,
                }
            }
        }
    }

    fn verify(
        &self,
        keys: &TokenKeys,
        extracted: &Extracted,
        now: SystemTime,
    ) -> Result<Sandbox, SignedError> {
        let token = extracted.token().ok_or(SignedError::Unsigned)?;
        let sandbox = keys.verify(token, now).map_err(SignedError::Token)?;
        if let Some(plain) = extracted.key()
            && plain != sandbox.key()
        {
            return Err(SignedError::Mismatch);
        }
        // A token admits only the incarnation it was minted for: one the directory no longer
        // has (deleted) or has anew (made again) is refused. (Disabled and expired sandboxes
        // are refused after, whatever the token says.)
        if let Some(directory) = &self.directory {
            let current = match directory.get(sandbox.key()) {
                Some(entry) => entry.is_incarnation_of(&sandbox),
                None => sandbox.created_at().is_none(),
            };
            if !current {
                return Err(SignedError::Token(TokenError::OtherIncarnation(
                    sandbox.key().to_string(),
                )));
            }
        }
        Ok(sandbox)
    }

    fn admit_sandbox(&self, sandbox: Sandbox, extracted: &Extracted, now: SystemTime) -> Admission {
        let key = sandbox.key().clone();
        let sandbox = match &self.directory {
            Some(directory) => match Standing::of(directory.as_ref(), sandbox.clone(), now) {
                Standing::Active { entry: None, .. } if self.unknown == UnknownSandbox::Refuse => {
                    return self.refuse(Some(&sandbox), Refusal::Unknown(key));
                }
                Standing::Active { sandbox, .. } => sandbox,
                Standing::Disabled => return self.refuse(Some(&sandbox), Refusal::Disabled(key)),
                Standing::Expired => return self.refuse(Some(&sandbox), Refusal::Expired(key)),
            },
            None if sandbox.is_expired_at(now) => {
                return self.refuse(Some(&sandbox), Refusal::Expired(key));
            }
            None => sandbox,
        };
        let permit = match &self.guardrails {
            Some(guardrails) => match guardrails.admit(&key) {
                Ok(permit) => Some(permit),
                Err(throttled) => return self.refuse(Some(&sandbox), throttled.into()),
            },
            None => None,
        };
        self.audit(Some(&sandbox), Decision::Accepted, "trusted", None);
        // Behind a `Signed` edge only the token is authenticated: nothing else of ours travels.
        let foreign = match self.policy {
            TrustPolicy::Signed { .. } => extracted.foreign().without_ours(&self.codec),
            _ => extracted.foreign().clone(),
        };
        let context = SandboxContext::new(sandbox)
            .with_foreign(foreign)
            .with_token(extracted.token());
        Admission::Sandboxed { context, permit }
    }

    fn strip(
        &self,
        extracted: &Extracted,
        reason: &str,
        detail: Option<&dyn fmt::Display>,
    ) -> Admission {
        self.audit_claim(extracted, Decision::Stripped, reason, detail);
        // Nothing of ours crosses an untrusted edge, known member or not.
        let foreign = extracted.foreign().without_ours(&self.codec);
        Admission::Baseline {
            context: (!foreign.is_empty()).then(|| SandboxContext::baseline(foreign)),
            strip: true,
        }
    }

    /// Audits a decision about what a message claimed (not yet trusted).
    fn audit_claim(
        &self,
        extracted: &Extracted,
        decision: Decision,
        reason: &str,
        detail: Option<&dyn fmt::Display>,
    ) {
        let who = [
            extracted.key().map(SandboxKey::as_str),
            extracted.actor(),
            extracted.origin(),
        ];
        self.emit(who, decision, reason, detail);
    }

    fn refuse(&self, sandbox: Option<&Sandbox>, refusal: Refusal) -> Admission {
        let decision = match refusal {
            Refusal::Throttled(_) => Decision::Throttled,
            _ => Decision::Rejected,
        };
        self.audit(sandbox, decision, refusal.reason(), Some(&refusal));
        Admission::Refused(refusal)
    }

    fn audit(
        &self,
        sandbox: Option<&Sandbox>,
        decision: Decision,
        reason: &str,
        detail: Option<&dyn fmt::Display>,
    ) {
        let who = [
            sandbox.map(|s| s.key().as_str()),
            sandbox.and_then(Sandbox::actor),
            sandbox.and_then(Sandbox::origin),
        ];
        self.emit(who, decision, reason, detail);
    }

    /// Emits the inbound audit event about `[key, actor, origin]`.
    fn emit(
        &self,
        [sandbox, actor, origin]: [Option<&str>; 3],
        decision: Decision,
        reason: &str,
        detail: Option<&dyn fmt::Display>,
    ) {
        let event = AuditEvent {
            sandbox,
            actor,
            origin,
            protocol: self.protocol,
            direction: Direction::Inbound,
            decision,
            reason,
            detail,
        };
        if self.observe {
            event.emit_observed();
        } else {
            event.emit();
        }
    }
}

fn baseline(extracted: &Extracted, strip: bool) -> Admission {
    let foreign = extracted.foreign();
    Admission::Baseline {
        context: (!foreign.is_empty()).then(|| SandboxContext::baseline(foreign.clone())),
        strip,
    }
}

#[derive(Debug, thiserror::Error)]
enum SignedError {
    #[error("sandbox context is not signed")]
    Unsigned,
    #[error(transparent)]
    Token(TokenError),
    #[error("plain sandbox key disagrees with the signed token")]
    Mismatch,
}

impl SignedError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Token(e) => e.reason(),
            Self::Mismatch => "token_key_mismatch",
        }
    }
}
