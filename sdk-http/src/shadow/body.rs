//! The body wrappers: they forward every frame untouched and keep a copy (of a sampled request's
//! body, of the baseline response for the compare hook) up to a bound.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

use super::hooks::Observed;
use super::pending::{DropReason, Pending};

/// The `Body` of a wrapper with fields `inner` and `capture`: every frame forwarded untouched,
/// and teed into the capture (see [`poll_teed`]).
macro_rules! teed_body {
    ($wrapper:ident) => {
        impl<B: Body<Data = Bytes>> Body for $wrapper<B> {
            type Data = Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: Pin<&mut Self>,
                task: &mut TaskContext<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
                let this = self.project();
                poll_teed(this.inner, this.capture, task)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.inner.size_hint()
            }
        }
    };
}

/// The request body the inner service sees: the original body, teed into the shadow copy when
/// the request was sampled.
#[pin_project]
#[derive(Debug)]
pub struct RequestBody<B> {
    #[pin]
    inner: B,
    capture: Option<RequestCapture>,
}

#[derive(Debug)]
struct RequestCapture {
    pending: Option<Arc<Pending>>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
}

impl<B> RequestBody<B> {
    pub(super) fn plain(inner: B) -> Self {
        Self {
            inner,
            capture: None,
        }
    }

    pub(super) fn teed(inner: B, pending: Arc<Pending>, limit: usize) -> Self {
        Self {
            inner,
            capture: Some(RequestCapture {
                pending: Some(pending),
                chunks: Vec::new(),
                len: 0,
                limit,
            }),
        }
    }
}

impl RequestCapture {
    fn data(&mut self, data: &Bytes) {
        match self.len.checked_add(data.len()) {
            Some(len) if len <= self.limit => {
                self.len = len;
                if !data.is_empty() {
                    self.chunks.push(data.clone());
                }
            }
            _ => self.fail(DropReason::BodyTooLarge),
        }
    }

    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.request_body(concat(std::mem::take(&mut self.chunks), self.len));
        }
    }

    fn fail(&mut self, reason: DropReason) {
        self.chunks = Vec::new();
        if let Some(pending) = self.pending.take() {
            pending.abandon(reason);
        }
    }
}

impl Drop for RequestCapture {
    fn drop(&mut self) {
        self.fail(DropReason::BodyUnread);
    }
}

fn concat(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(len);
            for chunk in chunks {
                out.extend_from_slice(&chunk);
            }
            out.freeze()
        }
    }
}

teed_body!(RequestBody);

/// What a body wrapper keeps of the frames it forwards.
trait Capture {
    fn data(&mut self, data: &Bytes);
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    /// The body ended: whole (`complete`) or with an error.
    fn end(&mut self, complete: bool);
    /// Whether the copy has been handed over (or given up), so nothing more is kept.
    fn is_done(&self) -> bool;
}

impl Capture for RequestCapture {
    fn data(&mut self, data: &Bytes) {
        RequestCapture::data(self, data);
    }
    fn end(&mut self, complete: bool) {
        if complete {
            self.finish();
        } else {
            self.fail(DropReason::BodyError);
        }
    }
    fn is_done(&self) -> bool {
        self.pending.is_none()
    }
}

/// Polls `inner` for a frame, forwards it untouched and lets `capture` keep what it needs;
/// the capture is dropped once it is done with.
fn poll_teed<B: Body<Data = Bytes>, C: Capture>(
    mut inner: Pin<&mut B>,
    capture: &mut Option<C>,
    task: &mut TaskContext<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    let polled = inner.as_mut().poll_frame(task);
    if let Some(kept) = capture.as_mut() {
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    kept.data(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    kept.trailers(trailers);
                }
                if inner.is_end_stream() {
                    kept.end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => kept.end(false),
            Poll::Ready(None) => kept.end(true),
            Poll::Pending => {}
        }
        if kept.is_done() {
            *capture = None;
        }
    }
    polled
}

/// The response body the caller gets: the baseline's, untouched; teed for the compare hook when
/// the request was copied and a compare hook is set.
#[pin_project]
#[derive(Debug)]
pub struct ResponseBody<B> {
    #[pin]
    inner: B,
    capture: Option<ResponseCapture>,
}

#[derive(Debug)]
pub(super) struct ResponseCapture {
    pending: Option<Arc<Pending>>,
    observed: Observed,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
}

impl ResponseCapture {
    pub(super) fn new(
        pending: Arc<Pending>,
        status: StatusCode,
        headers: HeaderMap,
        limit: usize,
    ) -> Self {
        let mut observed = Observed::new(status);
        observed.headers = headers;
        Self {
            pending: Some(pending),
            observed,
            chunks: Vec::new(),
            len: 0,
            limit,
        }
    }

    fn data(&mut self, data: &Bytes) {
        let room = self.limit.saturating_sub(self.len);
        if data.len() > room {
            self.observed.truncated = true;
        }
        let kept = data.slice(..data.len().min(room));
        self.len += kept.len();
        if !kept.is_empty() {
            self.chunks.push(kept);
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(pending) = self.pending.take() {
            let mut observed = std::mem::replace(&mut self.observed, Observed::new(StatusCode::OK));
            observed.truncated |= !complete;
            observed.body = concat(std::mem::take(&mut self.chunks), self.len);
            pending.baseline(observed);
        }
    }
}

impl Capture for ResponseCapture {
    fn data(&mut self, data: &Bytes) {
        ResponseCapture::data(self, data);
    }
    fn trailers(&mut self, trailers: &HeaderMap) {
        self.observed.trailers = Some(trailers.clone());
    }
    fn end(&mut self, complete: bool) {
        self.finish(complete);
    }
    fn is_done(&self) -> bool {
        self.pending.is_none()
    }
}

impl Drop for ResponseCapture {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn plain(inner: B) -> Self {
        Self {
            inner,
            capture: None,
        }
    }

    pub(super) fn teed(inner: B, capture: ResponseCapture) -> Self {
        Self {
            inner,
            capture: Some(capture),
        }
    }
}

teed_body!(ResponseBody);
