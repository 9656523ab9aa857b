//! The adopted service keeps a sandbox's signups, its welcome emails and its reads away from
//! production's, across HTTP, PostgreSQL and Kafka; checked from outside the service, as its
//! operators would, against the real database and broker.

mod common;

use std::time::Duration;

use prodbox_core::SandboxKey;
use prodbox_core::directory::SandboxEntry;
use prodbox_db::directory::DirectoryStore;
use prodbox_db::names;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::{AssertSqlSafe, PgPool};

/// Rows of `table` in `schema`, read as the database's owner (not through the service).
async fn rows(pg: &PgPool, schema: &str, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM \"{schema}\".{table}");
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pg)
        .await
        .unwrap()
}

/// The welcome emails sent in `schema`, in order.
async fn welcomed(pg: &PgPool, schema: &str) -> String {
    let sql = format!(
        "SELECT coalesce(string_agg(email, ' ' ORDER BY email), '') FROM \"{schema}\".welcome_emails"
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pg)
        .await
        .unwrap()
}

/// Every record of `topic`, as `(payload, baggage header)`, read by a plain rdkafka consumer:
/// `expected` of them, and no more within two seconds.
async fn records(brokers: &str, topic: &str, expected: usize) -> Vec<(String, Option<String>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the records within 30 s")
            .unwrap();
        let baggage = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == "baggage")
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        seen.push((payload, baggage));
    }
    let more = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    assert!(
        more.is_err(),
        "a record more than the {expected} sent: {seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_never_reaches_production_data() {
    let started = common::start().await;
    let pg = PgPool::connect(&started.config.database_url).await.unwrap();
    let key: SandboxKey = format!("pr-{}", std::process::id()).parse().unwrap();
    let sandbox = Some(format!("prodbox.sandbox={key}"));
    let sandbox = sandbox.as_deref();
    let schema = names::schema_name(&key);
    // The sandbox's role is the cluster's: dropped at the end, passed or failed.
    started.drop_role_at_end(names::role_name(&started.database, &key));

    // Unknown to the directory yet: refused, and nothing is written (no row here, no record
    // on Kafka: the topic holds exactly the three signups below).
    let (status, _) = started.sign_up("eve@example.com", sandbox).await;
    assert_eq!(status, 403, "an unknown sandbox is refused");
    assert_eq!(rows(&pg, "public", "signups").await, 0);

    DirectoryStore::new(pg.clone())
        .create(&SandboxEntry::new(key.clone()))
        .await
        .unwrap();
    let known = common::eventually(Duration::from_secs(10), || async {
        started.get("/signups", sandbox).await.0 == 200
    })
    .await;
    assert!(known, "the service learns of the sandbox");

    assert_eq!(started.sign_up("ada@example.com", None).await.0, 201);
    assert_eq!(started.sign_up("bob@example.com", sandbox).await.0, 201);
    assert_eq!(started.sign_up("cy@example.com", sandbox).await.0, 201);

    // Written where each belongs; each side reads only its own.
    assert_eq!(rows(&pg, "public", "signups").await, 1);
    assert_eq!(rows(&pg, &schema, "signups").await, 2);
    assert_eq!(started.get("/signups", None).await, (200, "1".into()));
    assert_eq!(started.get("/signups", sandbox).await, (200, "2".into()));

    // The announcements carry the sandbox on Kafka...
    let mut announced = records(&started.config.brokers, &started.config.topic, 3).await;
    announced.sort();
    let tagged: Vec<bool> = announced
        .iter()
        .map(|(_, baggage)| baggage.as_deref().is_some_and(|b| b.contains(key.as_str())))
        .collect();
    assert!(announced[0].0.contains("ada"), "{announced:?}");
    assert_eq!(tagged, [false, true, true], "{announced:?}");

    // ...and the baseline consumer sends each welcome email inside its sandbox.
    // (By address: ids are per schema, so a sandbox's email written to production would
    // collide with production's id 1 and be dropped as a duplicate, unseen by a count.)
    let both = common::eventually(Duration::from_secs(30), || async {
        welcomed(&pg, &schema).await == "bob@example.com cy@example.com"
            && welcomed(&pg, "public").await == "ada@example.com"
    })
    .await;
    assert!(both, "each welcome email sent on its own side");
    // No late production write of a sandbox's email either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(welcomed(&pg, "public").await, "ada@example.com");
    assert_eq!(started.get("/welcomes", sandbox).await, (200, "2".into()));
    assert_eq!(started.get("/welcomes", None).await, (200, "1".into()));

    pg.close().await;
    started.stop();
}
