//! Run: `cargo run -p prodbox-examples --bin billing -- --database-url postgres://127.0.0.1/shop`
//! (add `--sandbox pr-42` to run the sandbox's fork with the new tax rule)
//!
//! The shop's billing service: a Kafka consumer writing one invoice per order. The baseline
//! skips orders of sandboxes that fork billing; a fork takes only its sandbox's orders. It
//! serves `GET /healthz` (version and counts) and `GET /metrics` (OpenTelemetry) and prints `listening on ADDR` once consuming.
//! `--help` lists the flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::routing::get;
use clap::Parser;
use prodbox_core::SandboxKey;
use prodbox_db::directory::PgDirectory;
use prodbox_examples::shop::{self, billing};
use rdkafka::ClientConfig;
use serde_json::json;

/// The shop's billing consumer.
#[derive(Parser)]
struct Args {
    /// Address of the health endpoint (a fork registers it in the directory).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The shop's database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Topic orders are announced on.
    #[arg(long, default_value = shop::ORDER_CREATED)]
    topic: String,
    /// Consumer group of the baseline (a fork derives its own from it).
    #[arg(long, default_value = "billing")]
    group: String,
    /// Run as this sandbox's fork (billing v2) instead of the baseline (billing v1).
    #[arg(long)]
    sandbox: Option<SandboxKey>,
    /// The fork's tax rule, in percent.
    #[arg(long, default_value_t = 25, requires = "sandbox")]
    tax_percent: i64,
    /// Append prodbox audit events to this file as JSON lines.
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let version = match args.sandbox {
        Some(sandbox) => billing::Version::Fork {
            sandbox,
            tax_percent: args.tax_percent,
        },
        None => billing::Version::Baseline,
    };
    shop::telemetry::init(&version.name(), args.audit_log.as_deref())?;
    let metrics = shop::telemetry::Metrics::install();
    let pg = sqlx::PgPool::connect(&args.database_url).await?;
    shop::migrator().await?.run(&pg).await?;
    let directory = PgDirectory::builder(&pg).start();
    directory.synced(Duration::from_secs(10)).await?;
    let mut kafka = ClientConfig::new();
    kafka
        .set("bootstrap.servers", &args.kafka)
        .set("auto.commit.interval.ms", "200");
    let consumer = billing::start(&kafka, &args.group, &args.topic, directory, &version).await?;
    let stats = Arc::new(billing::Stats::default());

    let health = {
        let stats = Arc::clone(&stats);
        let name = version.name();
        axum::Router::new()
            .route(
                "/healthz",
                get(move || async move {
                    axum::Json(json!({
                        "version": name,
                        "invoiced": stats.invoiced.load(Ordering::Relaxed),
                        "retries": stats.retries.load(Ordering::Relaxed),
                    }))
                }),
            )
            .route(
                "/metrics",
                get(move || async move { axum::Json(metrics.snapshot()) }),
            )
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, health).await;
    });
    let pool = shop::sandbox_pool(pg).await?;
    billing::run(consumer, pool, version, stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
