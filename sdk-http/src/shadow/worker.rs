//! The shadow worker: takes copies from the bounded queue and sends them, a bounded number at a
//! time, each in the shadow sandbox's context, within the timeout.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Parts as UriParts, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use prodbox_core::audit::Protocol;
use prodbox_core::egress::Egress;
use prodbox_core::plumbing::metrics::ShadowOutcome;
use prodbox_core::{FutureExt, SandboxContext};
use tokio::sync::{Semaphore, mpsc};
use tower_service::Service;

use super::hooks::{Compare, Observed, Scrub};
use super::pending::{Copy, DropReason, dropped, record};
use crate::client::BoxError;

/// The fork's response, its body boxed.
pub(crate) type ForkResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

type SendFuture = Pin<Box<dyn Future<Output = Result<ForkResponse, BoxError>> + Send>>;

/// Sends one copy: a type-erased Tower client.
#[derive(Clone)]
pub(crate) struct Sender(Arc<dyn Fn(Request<Full<Bytes>>) -> SendFuture + Send + Sync>);

/// A Tower client that can send shadow copies: implemented for every service that takes a
/// `Request<Full<Bytes>>` and answers with a body of `Bytes` (hyper-util's client, a
/// `tower::ServiceBuilder` stack over it, and so on). See [`ShadowLayer::client`].
///
/// [`ShadowLayer::client`]: super::ShadowLayer::client
pub trait ShadowClient:
    Service<
        Request<Full<Bytes>>,
        Response = Response<Self::Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The response body.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<C, B> ShadowClient for C
where
    C: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
}

impl Sender {
    pub(crate) fn from_service(client: impl ShadowClient) -> Self {
        Self(Arc::new(move |req| {
            let mut client = client.clone();
            Box::pin(async move {
                poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                let response = client.call(req).await.map_err(Into::into)?;
                Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
            })
        }))
    }

    /// hyper-util's legacy client: HTTP/1.1, and HTTP/2 with prior knowledge for copies of
    /// HTTP/2 requests (gRPC).
    pub(crate) fn default_client() -> Self {
        let http1 = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let (http1, http2) = (Self::from_service(http1), Self::from_service(http2));
        Self(Arc::new(move |req| {
            if req.version() == Version::HTTP_2 {
                (http2.0)(req)
            } else {
                (http1.0)(req)
            }
        }))
    }

    fn send(&self, req: Request<Full<Bytes>>) -> SendFuture {
        (self.0)(req)
    }
}

/// What the worker needs, fixed when it starts.
pub(crate) struct Worker {
    pub(crate) client: Sender,
    pub(crate) scrub: Arc<dyn Scrub>,
    pub(crate) compare: Option<Arc<dyn Compare>>,
    pub(crate) timeout: Duration,
    pub(crate) compare_body: usize,
    pub(crate) concurrency: usize,
}

impl Worker {
    /// Sends what arrives on `queue` until every sender is gone.
    pub(crate) async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Copy>) {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        while let Some(copy) = queue.recv().await {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let worker = Arc::clone(&self);
            tokio::spawn(async move {
                worker.send(copy).await;
                drop(slot);
            });
        }
    }

    async fn send(&self, copy: Copy) {
        let Copy {
            target,
            mut head,
            mut body,
            baseline,
        } = copy;
        let sandbox = &target.sandbox;
        if let Err(error) = self.scrub.scrub(&mut head, &mut body) {
            return dropped(Some(sandbox), DropReason::ScrubFailed, &error);
        }

        // To the fork: its scheme and authority, the request's path and query.
        let mut uri = UriParts::default();
        uri.scheme = Some(target.scheme.clone());
        uri.authority = Some(target.authority.clone());
        uri.path_and_query = Some(
            head.uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        head.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(error) => return dropped(Some(sandbox), DropReason::InvalidForkAddress, &error),
        };
        for hop in [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::CONTENT_LENGTH,
        ] {
            head.headers.remove(hop);
        }
        head.headers.remove("keep-alive");
        head.headers.remove("proxy-connection");
        if head.version != Version::HTTP_2 {
            head.version = Version::HTTP_11;
            if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
                head.headers.insert(header::HOST, host);
            }
        }

        // The shadow sandbox's context, written the way every client writes it.
        let cx = SandboxContext::new(sandbox.clone()).attach_to(&Context::new());
        if let Err(error) = Egress::new(Protocol::Http).inject_from(&cx, &mut head.headers) {
            return dropped(Some(sandbox), DropReason::InjectFailed, &error);
        }

        let request = Request::from_parts(head, Full::new(body));
        let exchange = async {
            let response = self.client.send(request).await?;
            observe(response, self.compare_body).await
        };
        let shadow = match tokio::time::timeout(self.timeout, exchange.in_context(cx)).await {
            Err(_) => {
                return dropped(
                    Some(sandbox),
                    DropReason::ForkSlow,
                    &format_args!("the fork did not answer within {:?}", self.timeout),
                );
            }
            Ok(Err(error)) => return dropped(Some(sandbox), DropReason::ForkError, &error),
            Ok(Ok(shadow)) => shadow,
        };
        match self
            .compare
            .as_ref()
            .and_then(|c| c.compare(&baseline, &shadow))
        {
            Some(difference) => record(
                Some(sandbox),
                ShadowOutcome::Differing,
                "differs",
                &difference,
            ),
            None => record(
                Some(sandbox),
                ShadowOutcome::Sent,
                "sent",
                &format_args!("copy answered with {}", shadow.status.as_u16()),
            ),
        }
    }
}

/// Reads the fork's response to its end, keeping `limit` bytes of body.
async fn observe(response: ForkResponse, limit: usize) -> Result<Observed, BoxError> {
    let (parts, mut body) = response.into_parts();
    let mut observed = Observed::new(parts.status);
    observed.headers = parts.headers;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                let room = limit.saturating_sub(kept.len());
                if data.len() > room {
                    observed.truncated = true;
                }
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    observed.trailers = Some(trailers);
                }
            }
        }
    }
    observed.body = Bytes::from(kept);
    Ok(observed)
}
