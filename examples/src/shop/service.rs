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
    /// Partitions of the topic, when the service creates it.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
}

impl Kafka {
    /// rdkafka settings for these flags.
    pub fn config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka);
        config
    }

    /// Makes sure `topics` exist before the service uses them, creating those that do not
    /// (with `--partitions` partitions; a dead-letter topic with one), and says which it made.
    /// Brokers that create topics on first use need none of this; tansu, the demo's, does not.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), rdkafka::error::KafkaError> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        use rdkafka::types::RDKafkaErrorCode;

        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|topic| {
                let partitions = if topic.ends_with(".dead-letter") {
                    1
                } else {
                    self.partitions
                };
                NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            })
            .collect();
        let options =
            AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(topic) => println!("topic {topic}: created"),
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    println!("topic {topic}: exists");
                }
                Err((_, code)) => return Err(rdkafka::error::KafkaError::AdminOp(code)),
            }
        }
        Ok(())
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
