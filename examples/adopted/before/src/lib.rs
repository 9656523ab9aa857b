//! `signups`: a small service as a team runs it before adopting prodbox. `POST /signups`
//! stores a signup in PostgreSQL and announces it on Kafka; the service's own consumer of
//! that topic sends each new user a welcome email (here: writes it to `welcome_emails`).

use std::error::Error;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Where the service finds its database and broker.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub brokers: String,
    pub topic: String,
    pub group: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signup {
    pub email: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Announced {
    id: i64,
    email: String,
}

#[derive(Clone)]
struct App {
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
}

/// The running service: its HTTP server and its consumer, stopped when dropped.
pub struct Service {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Migrates the database, makes the topic if missing, and serves on `listener`.
pub async fn start(config: &Config, listener: TcpListener) -> Result<Service, BoxError> {
    let pool = PgPool::connect(&config.database_url).await?;
    sqlx::migrate!().run(&pool).await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &config.brokers);
    create_topic(&kafka, &config.topic).await?;

    let producer: FutureProducer = kafka.create()?;
    let app = App {
        pool: pool.clone(),
        producer,
        topic: config.topic.clone(),
    };
    let router = Router::new()
        .route("/signups", post(sign_up).get(count_signups))
        .route("/welcomes", get(count_welcomes))
        .with_state(app);

    let consumer: StreamConsumer = kafka
        .clone()
        .set("group.id", &config.group)
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&config.topic])?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let welcomer = tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let payload = message.payload().unwrap_or_default();
            if welcome(&pool, payload).await.is_ok() {
                let _ = consumer.commit_message(&message, CommitMode::Async);
            }
        }
    });
    Ok(Service {
        tasks: vec![server, welcomer],
    })
}

async fn sign_up(
    State(app): State<App>,
    Json(signup): Json<Signup>,
) -> Result<(StatusCode, Json<i64>), (StatusCode, String)> {
    let id: i64 = sqlx::query_scalar("INSERT INTO signups (email) VALUES ($1) RETURNING id")
        .bind(&signup.email)
        .fetch_one(&app.pool)
        .await
        .map_err(internal)?;
    let payload = serde_json::to_string(&Announced {
        id,
        email: signup.email,
    })
    .map_err(internal)?;
    let key = id.to_string();
    let record = FutureRecord::to(&app.topic).key(&key).payload(&payload);
    app.producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| internal(e))?;
    Ok((StatusCode::CREATED, Json(id)))
}

async fn count_signups(State(app): State<App>) -> Result<Json<i64>, (StatusCode, String)> {
    count(&app.pool, "SELECT count(*) FROM signups").await
}

async fn count_welcomes(State(app): State<App>) -> Result<Json<i64>, (StatusCode, String)> {
    count(&app.pool, "SELECT count(*) FROM welcome_emails").await
}

async fn count(pool: &PgPool, sql: &'static str) -> Result<Json<i64>, (StatusCode, String)> {
    let n = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .map_err(internal)?;
    Ok(Json(n))
}

/// Sends the welcome email of one announced signup (once).
async fn welcome(pool: &PgPool, payload: &[u8]) -> Result<(), BoxError> {
    let signup: Announced = serde_json::from_slice(payload)?;
    sqlx::query(
        "INSERT INTO welcome_emails (signup_id, email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(signup.id)
    .bind(&signup.email)
    .execute(pool)
    .await?;
    Ok(())
}

async fn create_topic(kafka: &ClientConfig, topic: &str) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let topics = [NewTopic::new(topic, 1, TopicReplication::Fixed(1))];
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating topic {name}: {code}").into()),
        }
    }
    Ok(())
}

fn internal(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}
