//! One sampled request on its way to becoming a copy: it waits for the request body (read by the
//! inner service) and the baseline response, then goes into the queue.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, Scheme};
use prodbox_core::Sandbox;
use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::plumbing::metrics::{self, ShadowOutcome};

use super::ShadowLayer;
use super::hooks::Observed;

/// Why a copy was not sent or not answered: the `prodbox.shadow.reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full (the fork is slow, or too many copies at once).
    QueueFull,
    /// The fork did not answer within the timeout.
    ForkSlow,
    /// The request body was larger than `max_body`.
    BodyTooLarge,
    /// The fork could not be reached, or its response failed.
    ForkError,
    /// The inner service did not read the request body to its end.
    BodyUnread,
    /// Reading the request body failed.
    BodyError,
    /// The baseline failed or was cancelled before it answered.
    BaselineFailed,
    /// The directory is stale: no shadowing on an old view.
    DirectoryStale,
    /// The shadow's address is not `scheme://host[:port]`.
    InvalidForkAddress,
    /// The scrub hook refused the copy.
    ScrubFailed,
    /// The shadow sandbox's context could not be written into the copy.
    InjectFailed,
    /// No Tokio runtime to run the shadow worker on.
    NoRuntime,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ForkSlow => "fork_slow",
            Self::BodyTooLarge => "body_too_large",
            Self::ForkError => "fork_error",
            Self::BodyUnread => "body_unread",
            Self::BodyError => "body_error",
            Self::BaselineFailed => "baseline_failed",
            Self::DirectoryStale => "directory_stale",
            Self::InvalidForkAddress => "invalid_fork_address",
            Self::ScrubFailed => "scrub_failed",
            Self::InjectFailed => "inject_failed",
            Self::NoRuntime => "no_runtime",
        }
    }
}

/// Where copies go: the shadow sandbox and its fork's address.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) sandbox: Sandbox,
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
}

/// A copy ready to leave.
#[derive(Debug)]
pub(crate) struct Copy {
    pub(crate) target: Target,
    pub(crate) head: Parts,
    pub(crate) body: Bytes,
    pub(crate) baseline: Observed,
}

#[derive(Debug)]
struct Draft {
    target: Target,
    head: Parts,
    body: Option<Bytes>,
    baseline: Option<Observed>,
}

/// A sampled request waiting for its body and the baseline response.
pub(crate) struct Pending {
    layer: ShadowLayer,
    draft: Mutex<Option<Draft>>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    pub(crate) fn new(layer: ShadowLayer, target: Target, head: Parts) -> Arc<Self> {
        Arc::new(Self {
            layer,
            draft: Mutex::new(Some(Draft {
                target,
                head,
                body: None,
                baseline: None,
            })),
        })
    }

    // Nothing panics while the lock is held; a poisoned lock still holds a consistent draft.
    fn lock(&self) -> MutexGuard<'_, Option<Draft>> {
        self.draft.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request body was read to its end.
    pub(crate) fn request_body(&self, body: Bytes) {
        self.fill(|draft| draft.body = Some(body));
    }

    /// The baseline response is known (with its body, when a compare hook wants it).
    pub(crate) fn baseline(&self, observed: Observed) {
        self.fill(|draft| draft.baseline = Some(observed));
    }

    fn fill(&self, f: impl FnOnce(&mut Draft)) {
        let ready = {
            let mut guard = self.lock();
            let Some(draft) = guard.as_mut() else {
                return;
            };
            f(draft);
            if draft.body.is_some() && draft.baseline.is_some() {
                guard.take()
            } else {
                None
            }
        };
        if let Some(Draft {
            target,
            head,
            body: Some(body),
            baseline: Some(baseline),
        }) = ready
        {
            self.layer.enqueue(Copy {
                target,
                head,
                body,
                baseline,
            });
        }
    }

    /// The copy will not be made; counted once.
    pub(crate) fn abandon(&self, reason: DropReason) {
        let draft = self.lock().take();
        if let Some(draft) = draft {
            dropped(Some(&draft.target.sandbox), reason, &reason.as_str());
        }
    }
}

/// Counts and audits a dropped copy.
pub(crate) fn dropped(sandbox: Option<&Sandbox>, reason: DropReason, detail: &dyn fmt::Display) {
    record(sandbox, ShadowOutcome::Dropped, reason.as_str(), detail);
}

/// Counts one copy (`prodbox.shadow.copies`) and audits it (decision `shadowed`).
pub(crate) fn record(
    sandbox: Option<&Sandbox>,
    outcome: ShadowOutcome,
    reason: &str,
    detail: &dyn fmt::Display,
) {
    let key = sandbox.map(|s| s.key().as_str());
    let drop_reason = matches!(outcome, ShadowOutcome::Dropped).then_some(reason);
    metrics::shadow_copy(key, outcome, drop_reason);
    AuditEvent {
        sandbox: key,
        actor: sandbox.and_then(Sandbox::actor),
        origin: sandbox.and_then(Sandbox::origin),
        protocol: Protocol::Http,
        direction: Direction::Outbound,
        decision: Decision::Shadowed,
        reason,
        detail: Some(detail),
    }
    .emit();
}
