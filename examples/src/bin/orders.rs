//! Run: `cargo run -p prodbox-examples --bin orders -- --database-url postgres://127.0.0.1/shop`
//!
//! The shop's `orders` service (tonic): stores each order through prodbox-db and announces it
//! on Kafka through prodbox-kafka. Prints `listening on ADDR` once it serves; its
//! OpenTelemetry metrics are at `GET /metrics` on `--admin-listen`. `--help` lists
//! the flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use prodbox_db::directory::PgDirectory;
use prodbox_examples::shop::{self, orders};
use rdkafka::ClientConfig;
use tonic::transport::server::TcpIncoming;

/// The shop's orders service.
#[derive(Parser)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The shop's database (production tables in `public`, the sandbox directory, schemas).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Topic to announce orders on.
    #[arg(long, default_value = shop::ORDER_CREATED)]
    topic: String,
    /// Address of the admin endpoint (`GET /metrics`, `GET /healthz`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Append prodbox audit events to this file as JSON lines.
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    shop::telemetry::init("orders", args.audit_log.as_deref())?;
    let metrics = shop::telemetry::Metrics::install();
    let admin = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || async move { axum::Json(metrics.snapshot()) }),
        );
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen).await?;
    tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin).await;
    });
    let pg = sqlx::PgPool::connect(&args.database_url).await?;
    shop::migrator().await?.run(&pg).await?;
    let directory = PgDirectory::builder(&pg).start();
    directory.synced(Duration::from_secs(10)).await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &args.kafka);
    let service = orders::OrdersService::new(
        shop::sandbox_pool(pg).await?,
        orders::producer(&kafka)?,
        &args.topic,
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    service
        .router(directory)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
