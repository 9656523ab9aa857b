//! What every shop process shares: its common flags and its start-up (logging, metrics, the
//! database, the sandbox directory).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prodbox_db::directory::PgDirectory;
use sqlx::PgPool;

use super::telemetry::{self, Metrics};

/// Flags every shop service takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The shop's database (production tables in `public`, the sandbox directory, schemas).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Append prodbox audit events to this file as JSON lines.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

/// Flags of the services that use Kafka.
#[derive(Debug, clap::Args)]
pub struct Kafka {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// Topic orders are announced on.
    #[arg(long, default_value = super::ORDER_CREATED)]
    pub topic: String,
}

impl Kafka {
    /// rdkafka settings for these flags.
    pub fn config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka);
        config
    }
}

/// A started service's shared parts.
#[derive(Debug)]
pub struct Started {
    /// The shop's database.
    pub pg: PgPool,
    /// The sandbox directory, synced once.
    pub directory: PgDirectory,
    /// This process's metrics.
    pub metrics: Arc<Metrics>,
}

/// Starts logging and metrics for `service`, connects to the database (running the shop's
/// migrations when `migrate`), and waits for the directory's first sync.
pub async fn start(
    service: &str,
    common: &Common,
    migrate: bool,
) -> Result<Started, Box<dyn std::error::Error>> {
    telemetry::init(service, common.audit_log.as_deref())?;
    // Before anything of prodbox runs: it creates its instruments once.
    let metrics = Metrics::install();
    let pg = PgPool::connect(&common.database_url).await?;
    if migrate {
        super::migrator().await?.run(&pg).await?;
    }
    let directory = PgDirectory::builder(&pg).start();
    directory.synced(Duration::from_secs(10)).await?;
    Ok(Started {
        pg,
        directory,
        metrics,
    })
}
