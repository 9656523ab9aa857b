//! How long a request's sandbox context lasts on the server: until its response body ends.
//! [`ResponseBody`] polls a sandboxed body inside the context (a streaming body keeps it, and
//! the guardrail slot is held until it ends), a production body inside a production scope, and
//! carries the text of a refusal.
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context;
use pin_project::pin_project;
use prodbox_core::guardrails::Permit;
use tracing::Span;

/// The response body of [`SandboxService`](super::SandboxService): the inner body, polled inside
/// the request's sandbox context (so a streaming body keeps it), or the text of a refusal.
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    /// A production response: polled in a production scope.
    Production {
        #[pin]
        inner: B,
    },
    InContext {
        #[pin]
        inner: B,
        scope: Option<Scope>,
    },
    Refusal {
        text: Option<Bytes>,
    },
}

/// What a sandboxed response holds until its body is done.
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) cx: Context,
    pub(crate) span: Span,
    /// The guardrail slot: released when the body ends or is dropped.
    #[expect(dead_code, reason = "held only for its Drop")]
    pub(crate) permit: Option<Permit>,
}

impl<B> ResponseBody<B> {
    pub(crate) fn production(inner: B) -> Self {
        Self {
            kind: Kind::Production { inner },
        }
    }

    pub(crate) fn in_context(inner: B, scope: Scope) -> Self {
        Self {
            kind: Kind::InContext {
                inner,
                scope: Some(scope),
            },
        }
    }

    pub(crate) fn refusal(text: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Refusal {
                text: text.filter(|t| !t.is_empty()),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        task: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Production { inner } => {
                let _scope = prodbox_core::plumbing::scope::enter();
                inner.poll_frame(task)
            }
            KindProj::InContext { inner, scope } => {
                let Some(active) = scope.as_ref() else {
                    return inner.poll_frame(task);
                };
                let _cx = active.cx.clone().attach();
                let _span = active.span.enter();
                let polled = inner.poll_frame(task);
                if matches!(polled, Poll::Ready(None)) {
                    drop(_span);
                    // Done: give the concurrency slot back now, not when hyper drops the body.
                    *scope = None;
                }
                polled
            }
            KindProj::Refusal { text } => {
                Poll::Ready(text.take().map(|t| Ok(Frame::data(B::Data::from(t)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Production { inner } | Kind::InContext { inner, .. } => inner.is_end_stream(),
            Kind::Refusal { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Production { inner } | Kind::InContext { inner, .. } => inner.size_hint(),
            Kind::Refusal { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
