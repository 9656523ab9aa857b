//! `orders`: a tonic service that stores an order through prodbox-db and announces it on Kafka
//! through prodbox-kafka. Unchanged code for production and sandboxes: the layer admits the
//! call's sandbox, the pool picks the schema, the record extension tags the event.

use std::sync::Arc;
use std::time::Duration;

use prodbox_core::TrustPolicy;
use prodbox_core::directory::Directory;
use prodbox_core::trust::UnknownSandbox;
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_grpc::SandboxLayer;
use prodbox_kafka::SandboxProducer;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};

use super::Order;
use super::proto::orders_server::{Orders, OrdersServer};
use super::proto::{CreateOrderReply, CreateOrderRequest};

/// The orders service.
#[derive(Clone)]
pub struct OrdersService {
    pool: SandboxPool,
    producer: SandboxProducer<FutureProducer>,
    topic: Arc<str>,
}

impl std::fmt::Debug for OrdersService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrdersService")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// A producer for the order events: every record it sends carries the current sandbox
/// context (no send site can forget it). Every record goes in a batch of its own: tansu 0.6, the
/// broker of the demo and tests, skips the rest of a batch for a consumer that resumes inside
/// it (see DEVELOPERS.md). With a real Kafka, drop `batch.num.messages`.
pub fn producer(
    kafka: &ClientConfig,
) -> Result<SandboxProducer<FutureProducer>, rdkafka::error::KafkaError> {
    let producer = kafka
        .clone()
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "10000")
        .create()?;
    Ok(SandboxProducer::new(producer))
}

impl OrdersService {
    /// Stores orders with `pool` and announces them on `topic`.
    pub fn new(pool: SandboxPool, producer: SandboxProducer<FutureProducer>, topic: &str) -> Self {
        Self {
            pool,
            producer,
            topic: topic.into(),
        }
    }

    /// The tonic router: the service behind prodbox's server layer. `orders` is an internal
    /// hop: it accepts the sandbox the gateway admitted, refusing sandboxes the directory does
    /// not know, has disabled or has expired.
    pub fn router(
        self,
        directory: impl Directory,
    ) -> Router<tower::layer::util::Stack<SandboxLayer, tower::layer::util::Identity>> {
        tonic::transport::Server::builder()
            .layer(SandboxLayer::from_ingress(
                prodbox_core::Ingress::new(TrustPolicy::accept())
                    .directory(directory)
                    .unknown_sandboxes(UnknownSandbox::Refuse),
            ))
            .add_service(OrdersServer::new(self))
    }
}

/// What a database failure tells the caller: refusals are final, the rest worth a retry.
fn db_status(error: &sqlx::Error) -> Status {
    match SandboxDbError::of(error) {
        Some(refusal @ SandboxDbError::Capacity { .. }) => {
            Status::resource_exhausted(refusal.to_string())
        }
        Some(refusal @ SandboxDbError::Provisioning { .. }) => {
            Status::unavailable(refusal.to_string())
        }
        Some(refusal) => Status::failed_precondition(refusal.to_string()),
        None => Status::unavailable(format!("database: {error}")),
    }
}

#[tonic::async_trait]
impl Orders for OrdersService {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderReply>, Status> {
        let request = request.into_inner();
        let order = Order {
            id: request.id,
            item: request.item,
            amount_cents: request.amount_cents,
        };
        order.validate().map_err(Status::invalid_argument)?;
        // Idempotent: a retried order is stored once and announced again, which billing
        // tolerates (it invoices each order once). The stored order is what is announced; an
        // id reused for a different order is refused.
        let (item, amount_cents): (String, i64) = sqlx::query_as(
            "INSERT INTO orders (id, item, amount_cents) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id
             RETURNING item, amount_cents",
        )
        .bind(&order.id)
        .bind(&order.item)
        .bind(order.amount_cents)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_status(&e))?;
        if (item.as_str(), amount_cents) != (order.item.as_str(), order.amount_cents) {
            return Err(Status::already_exists(format!(
                "order {} exists with other contents",
                order.id
            )));
        }
        let payload = serde_json::to_string(&order).map_err(|e| Status::internal(e.to_string()))?;
        let record = FutureRecord::to(&self.topic)
            .key(&order.id)
            .payload(&payload);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| Status::unavailable(format!("kafka: {e}")))?;
        Ok(Response::new(CreateOrderReply {
            id: order.id,
            sandbox: prodbox_core::current()
                .map(|s| s.key().to_string())
                .unwrap_or_default(),
        }))
    }
}
