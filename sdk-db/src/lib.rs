//! prodbox for PostgreSQL (sqlx): a sandboxed request's queries run in that sandbox's own
//! schema, under a role that cannot touch production data.
//!
//! ```no_run
//! use prodbox_db::SandboxPool;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = sqlx::PgPool::connect("postgres://127.0.0.1/shop").await?;
//! let migrations = sqlx::migrate::Migrator::new(std::path::Path::new("migrations")).await?;
//! let pool = SandboxPool::builder(pg).migrations(migrations).build();
//!
//! // Unchanged application code: in production it writes `public.orders`; inside sandbox
//! // pr-42 it writes `sbx_pr_42.orders`.
//! sqlx::query("INSERT INTO orders (item) VALUES ($1)")
//!     .bind("book")
//!     .execute(&pool)
//!     .await?;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../DESIGN.md")]

pub mod connection;
mod context;
pub mod directory;
pub mod doctor;
mod error;
mod exposure;
pub mod names;
mod pool;
mod production;
mod provision;
mod watchdog;

pub use connection::{PoolConnection, Transaction};
pub use error::SandboxDbError;
pub use pool::{DropReport, Janitor, SandboxPool, SandboxPoolBuilder};
pub use production::ProductionPool;
pub use provision::SchemaRecord;
