//! The service started against the machine's PostgreSQL and Kafka-protocol broker, with a
//! database and a topic of its own, both cleaned up when the test ends, failed or not.

#![allow(dead_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use signups::{Config, Service};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub struct Started {
    service: Option<Service>,
    pub base: String,
    pub config: Config,
    pub database: String,
    admin_url: String,
    /// Cluster-wide roles to drop with the database.
    roles: Mutex<Vec<String>>,
}

fn admin_url() -> String {
    std::env::var("ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `ADMIN_DATABASE_URL` (a superuser's) makes the database; `KAFKA_BROKERS` is the broker.
pub async fn start() -> Started {
    let admin_url = admin_url();
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
    let mut started = Started {
        service: None,
        base,
        config,
        database,
        admin_url,
        roles: Mutex::default(),
    };
    started.service = Some(
        signups::start(&started.config, listener)
            .await
            .expect("service started"),
    );
    started
}

impl Started {
    /// Stops the service and drops its database (as dropping it does).
    pub fn stop(self) {}

    /// Drops `role` too when the test ends.
    pub fn drop_role_at_end(&self, role: String) {
        self.roles.lock().unwrap().push(role);
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

/// The service stops, then its database and roles go, whether the test passed or panicked
/// (on a thread of its own: a test's runtime may be unwinding).
impl Drop for Started {
    fn drop(&mut self) {
        drop(self.service.take());
        let admin_url = self.admin_url.clone();
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )];
        let roles = std::mem::take(&mut *self.roles.lock().unwrap_or_else(|p| p.into_inner()));
        statements.extend(
            roles
                .iter()
                .map(|role| format!("DROP ROLE IF EXISTS \"{role}\"")),
        );
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let Ok(mut admin) = PgConnection::connect(&admin_url).await else {
                    eprintln!("cleanup: PostgreSQL unreachable");
                    return;
                };
                for statement in statements {
                    if let Err(error) = sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                        .execute(&mut admin)
                        .await
                    {
                        eprintln!("cleanup: {statement}: {error}");
                    }
                }
            });
        });
        let _ = cleanup.join();
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
