//! Pools and connections that serve one context refuse every other: the production pool
//! (`SandboxPool::baseline()`) refuses sandboxed work, and a connection or transaction keeps
//! serving only the context it was taken in, whoever holds it later.

mod common;

use common::{migrator, orders_in, sandbox, schema_of};
use futures_util::TryStreamExt;
use prodbox_core::{FutureExt, Sandbox};
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::AuditLog;
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};
use sqlx::{Executor, SqlSafeStr};

const INSERT: &str = "INSERT INTO orders (item) VALUES ('guarded') RETURNING id";

async fn production() -> (TestDatabase, SandboxPool) {
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
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    (db, pool)
}

/// The reason of the prodbox refusal in `result`, or what came instead.
fn refusal<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Ok(value) => format!("ran: {value:?}"),
        Err(error) => match SandboxDbError::of(&error) {
            Some(refusal) => refusal.reason().to_owned(),
            None => format!("failed: {error}"),
        },
    }
}

fn refusals_of(audit: &AuditLog, sandbox: &Sandbox, reason: &str) -> usize {
    audit
        .matching("sandbox", sandbox.key().as_str())
        .iter()
        .filter(|r| r.get("reason").map(String::as_str) == Some(reason))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_pool_refuses_sandboxed_work_by_every_method() {
    let audit = AuditLog::global();
    let (db, pool) = production().await;
    let sb = sandbox(&unique_key("gprod"));
    let before = orders_in(db.pool(), "public").await;
    let baseline = pool.baseline();

    let outcomes = [
        refusal(
            sqlx::query(INSERT)
                .execute(baseline)
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            sqlx::raw_sql("TRUNCATE orders")
                .fetch_all(baseline)
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            sqlx::raw_sql(INSERT)
                .fetch(baseline)
                .try_collect::<Vec<_>>()
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
                .fetch_one(baseline)
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            baseline
                .prepare("SELECT * FROM orders".into_sql_str())
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            async { baseline.begin().await }
                .in_sandbox(sb.clone())
                .await,
        ),
        refusal(
            async { baseline.acquire().await }
                .in_sandbox(sb.clone())
                .await,
        ),
        // Made outside, first polled inside: refused too.
        refusal({
            let stream = sqlx::raw_sql(INSERT).fetch(baseline);
            stream.try_collect::<Vec<_>>().in_sandbox(sb.clone()).await
        }),
    ];
    assert_eq!(
        outcomes.each_ref().map(|o| o == "db_wrong_context"),
        [true; 8],
        "{outcomes:#?}"
    );
    assert_eq!(refusals_of(&audit, &sb, "db_wrong_context"), outcomes.len());
    assert_eq!(orders_in(db.pool(), "public").await, before);

    // Outside any sandbox, the production pool is an ordinary pool.
    sqlx::query(INSERT).execute(baseline).await.unwrap();
    assert_eq!(orders_in(db.pool(), "public").await.len(), before.len() + 1);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_transaction_or_connection_refuses_a_sandboxed_statement() {
    let (db, pool) = production().await;
    let sb = sandbox(&unique_key("gtx"));
    let before = orders_in(db.pool(), "public").await;

    // Begun for production, then used by a sandboxed request (kept across requests, say).
    let mut tx = pool.begin().await.unwrap();
    let used = sqlx::query(INSERT)
        .execute(&mut *tx)
        .in_sandbox(sb.clone())
        .await;
    assert_eq!(refusal(used), "db_wrong_context");
    tx.commit().await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let used = sqlx::raw_sql("DELETE FROM orders")
        .fetch_all(&mut *conn)
        .in_sandbox(sb.clone())
        .await;
    assert_eq!(refusal(used), "db_wrong_context");
    drop(conn);

    assert_eq!(orders_in(db.pool(), "public").await, before);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_transaction_serves_only_its_sandbox() {
    let (db, pool) = production().await;
    let (a, b) = (sandbox(&unique_key("gta")), sandbox(&unique_key("gtb")));
    for sb in [&a, &b] {
        sqlx::query(INSERT)
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .unwrap();
    }
    let before = [
        orders_in(db.pool(), "public").await,
        orders_in(db.pool(), &schema_of(a.key().as_str())).await,
        orders_in(db.pool(), &schema_of(b.key().as_str())).await,
    ];

    let mut tx = async { pool.begin().await }
        .in_sandbox(a.clone())
        .await
        .unwrap();
    // Another sandbox, and production, may not write through it.
    let by_b = sqlx::query(INSERT)
        .execute(&mut *tx)
        .in_sandbox(b.clone())
        .await;
    assert_eq!(refusal(by_b), "db_wrong_context");
    let by_production = sqlx::query(INSERT).execute(&mut *tx).await;
    assert_eq!(refusal(by_production), "db_wrong_context");
    // Its own sandbox may.
    sqlx::query(INSERT)
        .execute(&mut *tx)
        .in_sandbox(a.clone())
        .await
        .unwrap();
    async { tx.commit().await }
        .in_sandbox(a.clone())
        .await
        .unwrap();

    let after = [
        orders_in(db.pool(), "public").await,
        orders_in(db.pool(), &schema_of(a.key().as_str())).await,
        orders_in(db.pool(), &schema_of(b.key().as_str())).await,
    ];
    assert_eq!(after[0], before[0], "production unchanged");
    assert_eq!(after[1].len(), before[1].len() + 1, "one more row in A");
    assert_eq!(after[2], before[2], "B unchanged");
    for sb in [&a, &b] {
        pool.drop_sandbox(sb.key()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_only_in_its_own_context() {
    let (db, pool) = production().await;
    let (a, b) = (sandbox(&unique_key("gca")), sandbox(&unique_key("gcb")));
    let before = orders_in(db.pool(), "public").await;

    // A's transaction, committed from B's context: refused, and rolled back.
    let mut tx = async { pool.begin().await }
        .in_sandbox(a.clone())
        .await
        .unwrap();
    async { sqlx::query(INSERT).execute(&mut *tx).await }
        .in_sandbox(a.clone())
        .await
        .unwrap();
    let committed = async { tx.commit().await }.in_sandbox(b.clone()).await;
    assert_eq!(refusal(committed), "db_wrong_context");
    assert!(
        orders_in(db.pool(), &schema_of(a.key().as_str()))
            .await
            .is_empty()
    );

    // A production transaction, committed from a sandbox's context: refused.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(INSERT).execute(&mut *tx).await.unwrap();
    let committed = async { tx.commit().await }.in_sandbox(a.clone()).await;
    assert_eq!(refusal(committed), "db_wrong_context");
    assert_eq!(orders_in(db.pool(), "public").await, before);

    for sb in [&a, &b] {
        pool.drop_sandbox(sb.key()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sandboxs_pool_is_not_handed_to_a_sandboxed_request() {
    let (db, pool) = production().await;
    let (a, b) = (sandbox(&unique_key("gpa")), sandbox(&unique_key("gpb")));
    pool.pool_for(&b).await.unwrap();
    let taken = async { pool.pool_for(&b).await.map(drop) }
        .in_sandbox(a.clone())
        .await;
    assert_eq!(refusal(taken), "db_wrong_context");
    // Its own is.
    async { pool.pool_for(&a).await.map(drop) }
        .in_sandbox(a.clone())
        .await
        .unwrap();
    for sb in [&a, &b] {
        pool.drop_sandbox(sb.key()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_a_sandbox_that_expired_since_refuses_statements() {
    let (db, pool) = production().await;
    let key = unique_key("gexp");
    let expiring = Sandbox::builder(&key)
        .unwrap()
        .expires_at(std::time::SystemTime::now() + std::time::Duration::from_secs(2))
        .build();
    let mut tx = async { pool.begin().await }
        .in_sandbox(expiring.clone())
        .await
        .unwrap();
    while !expiring.is_expired_at(std::time::SystemTime::now()) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let used = async { sqlx::query(INSERT).execute(&mut *tx).await }
        .in_sandbox(expiring.clone())
        .await;
    assert_eq!(refusal(used), "sandbox_expired");
    drop(tx);
    pool.drop_sandbox(expiring.key()).await.unwrap();
    db.cleanup().await;
}
