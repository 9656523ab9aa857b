//! The payment provider billing charges for every invoice, and the client it charges through.
//!
//! The provider stands for a real third party (a card processor): a charge that reaches it is
//! money moved. Billing's client goes through prodbox's egress policy, which declares the
//! provider *stubbed*: production's charges reach it, a sandbox's never do. A sandbox's own
//! stub service, named in its directory entry (`prodbox sandbox create --stub
//! payments=URL`), answers that sandbox's charges; the others get the policy's stub answer.
//! The same [`Provider`] serves as such a stub service, recording who it charged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prodbox_core::directory::Directory;
use prodbox_core::egress::{EgressPolicy, Stub};
use prodbox_http::{
    EgressPolicyLayer, EgressPolicyService, PropagateSandbox, PropagateSandboxLayer,
};
use tower::{ServiceBuilder, ServiceExt};

/// One charge a provider received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// The order charged for (a charge is made once per order).
    pub order_id: String,
    /// The amount.
    pub amount_cents: i64,
    /// The `baggage` the request arrived with (empty for none).
    pub baggage: String,
}

impl Charge {
    /// The sandbox the charge was made for, by its baggage.
    pub fn sandbox(&self) -> Option<&str> {
        self.baggage
            .split(',')
            .find_map(|member| member.trim().strip_prefix("prodbox.sandbox="))
            .map(|value| value.split(';').next().unwrap_or(value))
    }
}

/// A payment provider: records every charge, once per order.
#[derive(Debug, Clone, Default)]
pub struct Provider {
    charges: Arc<Mutex<BTreeMap<String, Charge>>>,
}

#[derive(serde::Deserialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: i64,
}

impl Provider {
    /// Serves `POST /charges` on a free port of 127.0.0.1 until the runtime ends; returns the
    /// address.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        async fn charge(
            State(provider): State<Provider>,
            headers: HeaderMap,
            Json(request): Json<ChargeRequest>,
        ) -> Json<serde_json::Value> {
            let baggage = headers
                .get_all("baggage")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            provider
                .lock()
                .entry(request.order_id.clone())
                .or_insert(Charge {
                    order_id: request.order_id,
                    amount_cents: request.amount_cents,
                    baggage,
                });
            Json(serde_json::json!({"status": "charged"}))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/charges", post(charge))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(address)
    }

    /// Every charge received, by order.
    pub fn charges(&self) -> BTreeMap<String, Charge> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Charge>> {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Transport = Client<HttpConnector, Full<bytes::Bytes>>;

/// Billing's client of the provider, under the egress policy.
#[derive(Debug, Clone)]
pub struct Payments {
    client: PropagateSandbox<EgressPolicyService<Transport>>,
    url: String,
}

/// The stub answer a sandbox's charge gets when the sandbox names no stub service of its own.
pub const STUB_ANSWER: &str = r#"{"status":"stubbed"}"#;

impl Payments {
    /// Charges through the provider at `address`, declared stubbed for sandboxes; each
    /// sandbox's own stub service comes from `directory`.
    pub fn new(address: SocketAddr, directory: impl Directory) -> Self {
        let policy = EgressPolicy::new()
            .stub(
                "payments",
                &address.to_string(),
                Stub::respond(200, "application/json", STUB_ANSWER),
            )
            // The demo's stub services run on this machine.
            .stub_services("127.0.0.1");
        let transport: Transport = Client::builder(TokioExecutor::new()).build_http();
        let client = ServiceBuilder::new()
            .layer(PropagateSandboxLayer::new())
            .layer(EgressPolicyLayer::new(policy).directory(directory))
            .service(transport);
        Self {
            client,
            url: format!("http://{address}/charges"),
        }
    }

    /// Charges `amount_cents` for `order_id` (the provider charges an order once, so a
    /// redelivered order is not charged twice).
    pub async fn charge(&self, order_id: &str, amount_cents: i64) -> Result<(), String> {
        let body = serde_json::json!({"order_id": order_id, "amount_cents": amount_cents});
        let request = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .body(Full::from(body.to_string()))
            .map_err(|e| format!("payment request: {e}"))?;
        let response = self
            .client
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| format!("payment: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if !status.is_success() {
            return Err(format!("payment: the provider answered {status}"));
        }
        Ok(())
    }
}
