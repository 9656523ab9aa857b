//! Run: `cargo run -p prodbox-examples --bin billing -- --database-url postgres://127.0.0.1/shop`
//! (add `--sandbox pr-42` to run the sandbox's fork with the new tax rule)
//!
//! The shop's billing service: a Kafka consumer writing one invoice per order. The baseline
//! skips orders of sandboxes that fork billing; a fork takes only its sandbox's orders. It
//! serves `GET /healthz` (version and counts) and `GET /metrics` (OpenTelemetry) and prints `listening on ADDR` once consuming.
//! `--help` lists the flags.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::routing::get;
use clap::Parser;
use prodbox_core::SandboxKey;
use prodbox_examples::shop::{self, billing};
use serde_json::json;

/// The shop's billing consumer.
#[derive(Parser)]
struct Args {
    /// Address of the health endpoint (a fork registers it in the directory).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[command(flatten)]
    common: shop::service::Common,
    #[command(flatten)]
    kafka: shop::service::Kafka,
    /// Consumer group of the baseline (a fork derives its own from it).
    #[arg(long, default_value = "billing")]
    group: String,
    /// Run as this sandbox's fork (billing v2) instead of the baseline (billing v1).
    #[arg(long)]
    sandbox: Option<SandboxKey>,
    /// The fork's tax rule, in percent.
    #[arg(long, default_value_t = 25, requires = "sandbox")]
    tax_percent: i64,
    /// The payment provider charged for each invoice (sandboxes' charges are stubbed by the
    /// egress policy, or go to their own stub service from the directory).
    #[arg(long)]
    payments: Option<SocketAddr>,
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
    let started = shop::service::start(&version.name(), &args.common, true).await?;
    let (pg, metrics) = (started.pg, started.metrics);
    let mut kafka = args.kafka.config();
    kafka.set("auto.commit.interval.ms", "200");
    let payments = args
        .payments
        .map(|address| shop::payments::Payments::new(address, started.directory.clone()));
    args.kafka
        .ensure_topics(&[
            &args.kafka.topic,
            &format!("{}.dead-letter", args.kafka.topic),
        ])
        .await?;
    let consumer = billing::start(
        &kafka,
        &args.group,
        &args.kafka.topic,
        started.directory,
        &version,
    )
    .await?;
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
    billing::run(consumer, pool, payments, version, stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
