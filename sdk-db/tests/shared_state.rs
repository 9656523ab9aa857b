//! Server-side state every session of the database shares, and what a sandbox can do with it:
//! migrations and seed SQL that try to leave the sandbox's role, advisory locks that stall
//! other sessions, the number of connections a sandbox's role may hold.

mod common;

use std::time::Duration;

use common::{migrator, orders_in, role_of, sandbox};
use prodbox_core::FutureExt;
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};
use sqlx::Executor;

/// The advisory-lock class prodbox used for provisioning (`"prod"`).
const PRODBOX_LOCK_CLASS: i32 = 0x7072_6f64;

async fn production() -> TestDatabase {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    migrator("orders")
        .await
        .run(db.pool())
        .await
        .expect("migrate production");
    db.pool()
        .execute("INSERT INTO orders (item) VALUES ('p1'), ('p2')")
        .await
        .expect("seed production");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_seed_sql_cannot_leave_the_sandbox_role() {
    let db = production().await;
    let before = orders_in(db.pool(), "public").await;

    let escaping = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("escaping").await)
        .build();
    let key = unique_key("escm");
    let migrated = sqlx::query("SELECT 1")
        .execute(&escaping)
        .in_sandbox(sandbox(&key))
        .await;
    assert!(migrated.is_err(), "the escaping migration was accepted");
    assert_eq!(orders_in(db.pool(), "public").await, before);

    let seeding = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .seed("RESET ROLE; DELETE FROM public.orders")
        .build();
    let key = unique_key("escs");
    let seeded = sqlx::query("SELECT 1")
        .execute(&seeding)
        .in_sandbox(sandbox(&key))
        .await;
    assert!(seeded.is_err(), "the escaping seed was accepted");
    assert_eq!(orders_in(db.pool(), "public").await, before);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_holding_prodbox_advisory_locks_does_not_stall_provisioning() {
    let db = production().await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .connections_per_sandbox(1)
        .build();
    let (holder, next) = (unique_key("lockh"), unique_key("lockn"));
    // The holder takes every lock prodbox's provisioning and directory used, for the rest of
    // its session (its pooled connection stays open).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_lock({PRODBOX_LOCK_CLASS}, 0);
         SELECT pg_advisory_lock({PRODBOX_LOCK_CLASS}, hashtext('{next}'));"
    )))
    .execute(&pool)
    .in_sandbox(sandbox(&holder))
    .await
    .expect("a sandbox may take advisory locks");

    // Another sandbox is provisioned all the same (another process, so nothing is cached).
    let other = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let provisioned = tokio::time::timeout(
        Duration::from_secs(60),
        sqlx::query("INSERT INTO orders (item) VALUES ('next')")
            .execute(&other)
            .in_sandbox(sandbox(&next)),
    )
    .await;
    let _ = pool.drop_sandbox(&common::parse_key(&holder)).await;
    let _ = other.drop_sandbox(&common::parse_key(&next)).await;
    db.cleanup().await;
    let provisioned = provisioned.expect("provisioning stalled behind a sandbox's advisory lock");
    provisioned.expect("provisioning failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_role_has_a_connection_limit() {
    let db = production().await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("conn");
    sqlx::query("SELECT 1")
        .execute(&pool)
        .in_sandbox(sandbox(&key))
        .await
        .unwrap();
    let limit: i32 = sqlx::query_scalar("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
        .bind(role_of(&key))
        .fetch_one(db.pool())
        .await
        .unwrap();
    pool.drop_sandbox(&common::parse_key(&key)).await.unwrap();
    db.cleanup().await;
    assert!((1..=64).contains(&limit), "connection limit {limit}");
}
