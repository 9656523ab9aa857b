//! The service started against the machine's PostgreSQL and Kafka-protocol broker, with a
//! database and a topic of its own.

#![allow(dead_code)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use signups::{Config, Service};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub struct Started {
    pub service: Service,
    pub base: String,
    pub config: Config,
    pub database: String,
    admin_url: String,
}

/// `ADMIN_DATABASE_URL` (a superuser's) makes the database; `KAFKA_BROKERS` is the broker.
pub async fn start() -> Started {
    let admin_url = std::env::var("ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let database = format!("signups_{}_{nanos}", std::process::id());
    let mut admin = PgConnection::connect(&admin_url).await.expect("PostgreSQL");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .expect("database made");
    let (prefix, _) = admin_url.rsplit_once('/').expect("a database URL");
    let config = Config {
        database_url: format!("{prefix}/{database}"),
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic: format!("{database}-signup-created"),
        group: format!("{database}-signups"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = signups::start(&config, listener)
        .await
        .expect("service started");
    Started {
        service,
        base,
        config,
        database,
        admin_url,
    }
}

impl Started {
    /// Stops the service and drops its database.
    pub async fn stop(self) {
        drop(self.service);
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    pub async fn get(&self, path: &str, baggage: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(baggage) = baggage {
            request = request.header("baggage", baggage);
        }
        let response = request.send().await.expect("an answer");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn sign_up(&self, email: &str, baggage: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/signups", self.base))
            .json(&serde_json::json!({ "email": email }));
        if let Some(baggage) = baggage {
            request = request.header("baggage", baggage);
        }
        let response = request.send().await.expect("an answer");
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// Whether `check` turns true within `limit`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Drops `role` from the cluster (roles outlive the databases they were made for).
pub async fn drop_role(role: &str) {
    let admin_url = std::env::var("ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    let drop = format!("DROP ROLE IF EXISTS \"{role}\"");
    sqlx::raw_sql(AssertSqlSafe(drop))
        .execute(&mut admin)
        .await
        .unwrap();
}
