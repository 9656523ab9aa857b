//! Run: `PRODBOX_TOKEN_SECRET=... cargo run -p prodbox-examples --bin gateway -- --database-url postgres://127.0.0.1/shop`
//!
//! The shop's public edge (axum): `POST /orders`. It takes a sandbox only from a token signed
//! with `PRODBOX_TOKEN_SECRET` under `--token-key-id` (mint one with `prodbox token mint`) and
//! strips anything else of ours; each sandbox gets a rate limit. Prints `listening on ADDR`
//! once it serves, with its OpenTelemetry metrics at `GET /metrics`. `--help` lists the flags.

use std::net::SocketAddr;

use clap::Parser;
use prodbox_core::Guardrails;
use prodbox_core::token::TokenKeys;
use prodbox_examples::shop::{self, gateway};
use tonic::transport::Endpoint;

/// The shop's public edge.
#[derive(Parser)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the orders service listens.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    orders_url: String,
    #[command(flatten)]
    common: shop::service::Common,
    /// Key id of the token secret (the secret itself comes from PRODBOX_TOKEN_SECRET).
    #[arg(long, default_value = "demo")]
    token_key_id: String,
    /// Requests per second each sandbox may send.
    #[arg(long, default_value_t = 50.0)]
    sandbox_rate: f64,
    /// Burst each sandbox may send above its rate.
    #[arg(long, default_value_t = 100)]
    sandbox_burst: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = shop::service::start("gateway", &args.common, false).await?;
    let (directory, metrics) = (started.directory, started.metrics);
    let secret = std::env::var("PRODBOX_TOKEN_SECRET")
        .map_err(|_| "set PRODBOX_TOKEN_SECRET to the token secret (at least 32 bytes)")?;
    let keys = TokenKeys::new().with_key(&args.token_key_id, secret.as_bytes())?;
    let orders = Endpoint::from_shared(args.orders_url)?.connect_lazy();
    let guardrails = Guardrails::builder()
        .rate(args.sandbox_rate, args.sandbox_burst)
        .build();
    let router = gateway::router(orders, keys, guardrails, directory).route(
        "/metrics",
        axum::routing::get(move || async move { axum::Json(metrics.snapshot()) }),
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
