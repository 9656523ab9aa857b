//! The shop demo's services, as a library: the binaries `gateway`, `orders` and `billing` run
//! them one per process, and the end-to-end soak test runs them in one.
//!
//! ```text
//!  client ──HTTP──▶ gateway ──gRPC──▶ orders ──Kafka `order-created`──▶ billing (baseline)
//!  (token in        (Signed edge,      (Accept,  │                  └──▶ billing fork of pr-42
//!   baggage)         guardrails)        stores    ▼                       (new tax rule)
//!                                       order)  PostgreSQL: `public` for production,
//!                                               one schema per sandbox
//! ```
//!
//! Every service reads the sandbox directory from PostgreSQL ([`PgDirectory`]).
//!
//! [`PgDirectory`]: prodbox_db::directory::PgDirectory

pub mod billing;
pub mod gateway;
pub mod orders;
pub mod payments;
pub mod service;
pub mod telemetry;

use std::path::Path;

use prodbox_db::SandboxPool;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The generated gRPC code of `proto/shop.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("prodbox.shop");
}

/// The topic orders are announced on (the demo adds a per-run suffix).
pub const ORDER_CREATED: &str = "order-created";

/// The shop's migrations (`examples/migrations`): production runs them in `public`, and
/// prodbox-db in every sandbox schema.
pub async fn migrator() -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
}

/// A [`SandboxPool`] over `pg` whose sandbox schemas get the shop's tables. Small, so that a
/// dozen sandboxes in three services fit a default PostgreSQL.
pub async fn sandbox_pool(pg: PgPool) -> Result<SandboxPool, sqlx::migrate::MigrateError> {
    Ok(SandboxPool::builder(pg)
        .migrations(migrator().await?)
        .connections_per_sandbox(1)
        .max_active_sandboxes(16)
        .build())
}

/// An order as it travels on Kafka.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    /// Chosen by the client, so that retries store it once.
    pub id: String,
    /// What was bought.
    pub item: String,
    /// The price.
    pub amount_cents: i64,
}

impl Order {
    /// Checks what the database would otherwise refuse less clearly.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err("order id must be 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'".to_owned());
        }
        if self.item.is_empty() || self.item.len() > 200 {
            return Err("item must be 1 to 200 bytes".to_owned());
        }
        if !(0..=1_000_000_000).contains(&self.amount_cents) {
            return Err("amount_cents must be between 0 and 1e9".to_owned());
        }
        Ok(())
    }
}
