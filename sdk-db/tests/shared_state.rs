//! Server-side state every session of the database shares, and what a sandbox can do with it:
//! migrations and seed SQL that try to leave the sandbox's role, advisory locks that stall
//! other sessions, the number of connections a sandbox's role may hold.

mod common;

use std::time::Duration;

use common::{migrator, orders_in, production, role_of, sandbox};
use prodbox_core::FutureExt;
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::unique_key;

/// The advisory-lock class prodbox used for provisioning (`"prod"`).
const PRODBOX_LOCK_CLASS: i32 = 0x7072_6f64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_seed_sql_cannot_leave_the_sandbox_role() {
    let db = production(2).await;
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
    let db = production(2).await;
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
    let db = production(2).await;
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
        .bind(role_of(&db, &key))
        .fetch_one(db.pool())
        .await
        .unwrap();
    pool.drop_sandbox(&common::parse_key(&key)).await.unwrap();
    db.cleanup().await;
    assert!((1..=64).contains(&limit), "connection limit {limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_directory_notifications_costs_a_bounded_number_of_reads() {
    use prodbox_core::Directory;
    use prodbox_core::directory::SandboxEntry;
    use prodbox_db::directory::{DirectoryStore, PgDirectory};

    let db = production(2).await;
    let directory = PgDirectory::builder(db.pool()).start();
    directory.synced(Duration::from_secs(10)).await.unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("flood");
    let started = std::time::Instant::now();
    let reads_before = directory.reads();

    // 100,000 notifications on the directory's channel, sent by a sandboxed request: distinct
    // keys in one statement (Postgres folds identical ones in a transaction), and `*` (reread
    // everything) in transactions of their own.
    sqlx::query(
        "SELECT pg_notify('prodbox_directory', 'flood-' || g) FROM generate_series(1, 99990) g",
    )
    .execute(&pool)
    .in_sandbox(sandbox(&key))
    .await
    .unwrap();
    for _ in 0..10 {
        sqlx::query("SELECT pg_notify('prodbox_directory', '*')")
            .execute(&pool)
            .in_sandbox(sandbox(&key))
            .await
            .unwrap();
    }
    // A real change after the flood still arrives (so the flood has been read through).
    let store = DirectoryStore::new(db.pool().clone());
    let real: prodbox_core::SandboxKey = unique_key("real").parse().unwrap();
    store
        .create(&SandboxEntry::new(real.clone()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while directory.get(&real).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the real change never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reads = directory.reads() - reads_before;
    let seconds = started.elapsed().as_secs() + 1;
    pool.drop_sandbox(&common::parse_key(&key)).await.unwrap();
    drop(directory);
    db.cleanup().await;
    assert!(
        reads <= 10 * seconds + 2,
        "{reads} directory reads in {seconds} s for 100,000 notifications"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_set_away_its_statement_bound() {
    let db = production(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .statement_bound(Duration::from_secs(1))
        .build();
    let key = unique_key("bound");

    // A statement that would run for ten minutes, with the role's timeout set away.
    let slept = tokio::time::timeout(
        Duration::from_secs(60),
        sqlx::raw_sql("SET statement_timeout = 0; SELECT pg_sleep(600)")
            .execute(&pool)
            .in_sandbox(sandbox(&key)),
    )
    .await
    .expect("the sandbox's statement ran past its bound");
    assert!(slept.is_err(), "{slept:?}");

    // A session-level advisory lock left behind by a sandboxed request: production's next
    // take of the same lock gets it once the bound has passed.
    sqlx::query("SELECT pg_advisory_lock(42)")
        .execute(&pool)
        .in_sandbox(sandbox(&key))
        .await
        .unwrap();
    let taken = tokio::time::timeout(
        Duration::from_secs(60),
        sqlx::query("SELECT pg_advisory_lock(42)").execute(db.pool()),
    )
    .await
    .expect("production waited on a sandbox's advisory lock past the bound");
    taken.unwrap();
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(db.pool())
        .await
        .unwrap();
    pool.drop_sandbox(&common::parse_key(&key)).await.unwrap();
    db.cleanup().await;
}
