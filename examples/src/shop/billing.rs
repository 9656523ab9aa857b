//! `billing`: a Kafka consumer that writes an invoice per order. Two versions run side by side:
//! the baseline (`billing v1`, 20 % tax), and a sandbox's fork with changed code (`billing v2`,
//! a new tax rule) that takes only its sandbox's orders. Orders of sandboxes that do not fork
//! billing are billed by the baseline, inside their sandbox: the invoice lands in the
//! sandbox's schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prodbox_core::SandboxKey;
use prodbox_core::directory::Directory;
use prodbox_db::SandboxPool;
use prodbox_kafka::{ConsumerError, Role, SandboxConsumer};
use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Message};

use super::Order;
use super::payments::Payments;

/// Which billing code runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// Production code: 20 % tax.
    Baseline,
    /// The fork of `sandbox`, with a new tax rule.
    Fork {
        /// The sandbox whose orders it takes.
        sandbox: SandboxKey,
        /// Its tax, in percent.
        tax_percent: i64,
    },
}

impl Version {
    /// The name written into each invoice's `billed_by`.
    pub fn name(&self) -> String {
        match self {
            Self::Baseline => "billing v1".to_owned(),
            Self::Fork { sandbox, .. } => format!("billing v2 (fork of {sandbox})"),
        }
    }

    fn tax_percent(&self) -> i64 {
        match self {
            Self::Baseline => 20,
            Self::Fork { tax_percent, .. } => *tax_percent,
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::Baseline => Role::baseline("billing"),
            Self::Fork { sandbox, .. } => Role::sandbox(sandbox.clone()),
        }
    }
}

/// Counts what one billing process did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Invoices written (a redelivered order is written once and counted once).
    pub invoiced: AtomicU64,
    /// Handler failures that were retried.
    pub retries: AtomicU64,
}

/// Starts a billing consumer of `topic` in consumer group `group` (a fork uses its own group,
/// derived from it).
pub async fn start(
    kafka: &ClientConfig,
    group: &str,
    topic: &str,
    directory: impl Directory,
    version: &Version,
) -> Result<SandboxConsumer, ConsumerError> {
    SandboxConsumer::builder(kafka.clone(), group, version.role())
        .directory(directory)
        .dead_letter_topic(&format!("{topic}.dead-letter"))
        // A broken payload is retried for about half a minute, then dead-lettered: long enough
        // to ride out a database restart, short enough not to block the partition for good.
        .retry_backoff(Duration::from_millis(50), Duration::from_secs(2))
        .max_attempts(20)
        .start(&[topic])
        .await
}

/// Bills every order `consumer` hands over until `shutdown` completes, charging each through
/// `payments` when given (see [`super::payments`]).
pub async fn run(
    consumer: SandboxConsumer,
    pool: SandboxPool,
    payments: Option<Payments>,
    version: Version,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsumerError> {
    let billed_by: Arc<str> = version.name().into();
    let tax_percent = version.tax_percent();
    consumer
        .run(
            move |message: &BorrowedMessage<'_>| {
                // Decoded before the `async` block: the message is only borrowed.
                let order = decode(message);
                let pool = pool.clone();
                let payments = payments.clone();
                let billed_by = Arc::clone(&billed_by);
                let stats = Arc::clone(&stats);
                async move {
                    let result = match order {
                        Ok(order) => {
                            invoice(&pool, payments.as_ref(), &order, &billed_by, tax_percent).await
                        }
                        Err(error) => Err(error),
                    };
                    match &result {
                        Ok(true) => {
                            stats.invoiced.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(_) => {
                            stats.retries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    result.map(drop)
                }
            },
            shutdown,
        )
        .await
}

/// The order an order message carries, validated.
fn decode(message: &BorrowedMessage<'_>) -> Result<Order, String> {
    let order: Order = serde_json::from_slice(message.payload().unwrap_or_default())
        .map_err(|e| format!("invalid order payload: {e}"))?;
    order.validate()?;
    Ok(order)
}

/// Charges for one order and writes its invoice, once: returns whether it was new. Runs
/// inside the message's sandbox context (the consumer attaches it), so the pool picks the
/// schema and the egress policy keeps a sandbox's charge away from the real provider.
async fn invoice(
    pool: &SandboxPool,
    payments: Option<&Payments>,
    order: &Order,
    billed_by: &str,
    tax_percent: i64,
) -> Result<bool, String> {
    let tax = order.amount_cents * tax_percent / 100;
    // Charged first (the provider charges an order once): an invoice is never written for
    // money that did not move.
    if let Some(payments) = payments {
        payments.charge(&order.id, order.amount_cents + tax).await?;
    }
    let done = sqlx::query(
        "INSERT INTO invoices (order_id, amount_cents, tax_cents, billed_by)
         VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&order.id)
    .bind(order.amount_cents + tax)
    .bind(tax)
    .bind(billed_by)
    .execute(pool)
    .await
    .map_err(|e| format!("database: {e}"))?;
    Ok(done.rows_affected() == 1)
}
