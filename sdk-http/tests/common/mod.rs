//! What the egress tests share: services on loopback that record what reached them, and the
//! checks on refusals.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;
use prodbox_core::Sandbox;
use prodbox_core::egress::EgressRefused;
use prodbox_http::client::BoxError;
use prodbox_http::{EgressPolicyLayer, PropagateSandboxLayer};
use prodbox_testkit::serve;

/// A service that counts its calls, keeps every request's headers, and answers with the
/// `baggage` it was sent.
#[derive(Clone, Default)]
pub struct Recorder {
    calls: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Recorder {
    pub async fn start(&self) -> SocketAddr {
        async fn record(State(r): State<Recorder>, headers: HeaderMap) -> String {
            r.calls.fetch_add(1, Ordering::SeqCst);
            let baggage = headers
                .get_all("baggage")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
                .join(";");
            let dump = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join("\n");
            r.seen.lock().expect("lock").push((baggage.clone(), dump));
            baggage
        }
        serve(
            Router::new()
                .route("/", any(record))
                .route("/{*path}", any(record))
                .with_state(self.clone()),
        )
        .await
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The last request's `baggage` (its headers joined by `;`).
    pub fn last(&self) -> String {
        self.last_of(|(baggage, _)| baggage)
    }

    /// The last request's headers, one `name: value` a line.
    pub fn last_headers(&self) -> String {
        self.last_of(|(_, dump)| dump)
    }

    fn last_of(&self, part: impl Fn(&(String, String)) -> &String) -> String {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .map(|seen| part(seen).clone())
            .unwrap_or_default()
    }
}

/// A service of ours that redirects every request to `to`.
pub async fn redirector(to: String) -> SocketAddr {
    serve(Router::new().route(
        "/{*path}",
        any(move || {
            let to = to.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    ))
    .await
}

/// Whether `error`'s chain holds an [`EgressRefused`].
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<EgressRefused>().is_some() {
            return true;
        }
        next = e.source();
    }
    false
}

pub fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(key.parse().expect("key"))
}

/// hyper-util's client.
pub type Transport =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// hyper-util's client under prodbox's client layer and `layer`, in that order.
pub fn tower_client(
    layer: EgressPolicyLayer,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<prodbox_http::egress::EgressBody<hyper::body::Incoming>>,
    Error = BoxError,
> + Clone
+ Send
+ 'static {
    let transport: Transport =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    tower::ServiceBuilder::new()
        .layer(PropagateSandboxLayer::new())
        .layer(layer)
        .service(transport)
}
