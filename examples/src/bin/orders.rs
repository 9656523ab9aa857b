//! Run: `cargo run -p prodbox-examples --bin orders -- --database-url postgres://127.0.0.1/shop`
//!
//! The shop's `orders` service (tonic): stores each order through prodbox-db and announces it
//! on Kafka through prodbox-kafka. Prints `listening on ADDR` once it serves; its
//! OpenTelemetry metrics are at `GET /metrics` on `--admin-listen`. `--help` lists
//! the flags.

use std::net::SocketAddr;

use clap::Parser;
use prodbox_examples::shop::{self, orders};
use tonic::transport::server::TcpIncoming;

/// The shop's orders service.
#[derive(Parser)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    common: shop::service::Common,
    #[command(flatten)]
    kafka: shop::service::Kafka,
    /// Address of the admin endpoint (`GET /metrics`, `GET /healthz`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = shop::service::start("orders", &args.common, true).await?;
    let metrics = started.metrics;
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
    args.kafka.ensure_topics(&[&args.kafka.topic]).await?;
    let service = orders::OrdersService::new(
        shop::sandbox_pool(started.pg).await?,
        orders::producer(&args.kafka.config())?,
        &args.kafka.topic,
    );
    let directory = started.directory;
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
