//! `gateway`: the public edge (axum). It takes a sandbox only from a valid signed token
//! (`Signed` trust; anything else of ours is stripped, so the request runs as production),
//! applies each sandbox's guardrail (a runaway test gets 429s, baseline traffic nothing), and
//! calls `orders` over gRPC with the context propagated.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use prodbox_core::directory::Directory;
use prodbox_core::token::TokenKeys;
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Guardrails, TrustPolicy};
use prodbox_grpc::{PropagateSandbox, PropagateSandboxLayer};
use prodbox_http::SandboxLayer;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tower::Layer;

use super::Order;
use super::proto::CreateOrderRequest;
use super::proto::orders_client::OrdersClient;

type Orders = OrdersClient<PropagateSandbox<Channel>>;

/// The gateway's router: `POST /orders` (JSON [`Order`]) and `GET /healthz`.
pub fn router(
    orders: Channel,
    keys: TokenKeys,
    guardrails: Guardrails,
    directory: impl Directory,
) -> Router {
    let orders = OrdersClient::new(PropagateSandboxLayer::new().layer(orders));
    Router::new()
        .route("/orders", post(create_order))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(orders)
        .layer(SandboxLayer::from_ingress(
            prodbox_core::Ingress::new(TrustPolicy::signed(keys))
                .directory(directory)
                .guardrails(guardrails)
                .unknown_sandboxes(UnknownSandbox::Refuse),
        ))
}

async fn create_order(
    State(orders): State<Orders>,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<Value>), (StatusCode, String)> {
    order
        .validate()
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let request = CreateOrderRequest {
        id: order.id,
        item: order.item,
        amount_cents: order.amount_cents,
    };
    match orders.clone().create_order(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Ok((
                StatusCode::CREATED,
                Json(json!({"id": reply.id, "sandbox": reply.sandbox})),
            ))
        }
        Err(status) => {
            let code = match status.code() {
                Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
                Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                Code::PermissionDenied | Code::FailedPrecondition => StatusCode::FORBIDDEN,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::AlreadyExists => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err((code, format!("orders: {}", status.message())))
        }
    }
}
