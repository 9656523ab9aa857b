//! A sandbox connection whose backend dies (`pg_terminate_backend`) loses its transaction, the
//! pool recovers, and the replacement connection is the sandbox's again (role and search path),
//! never production's.

mod common;

use common::{migrator, orders_in, role_of, sandbox, schema_of};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres, unique_key};
use sqlx::Row;
use sqlx::postgres::PgPool;

async fn setup() -> (TestDatabase, SandboxPool) {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    let production = migrator("orders").await;
    production.run(db.pool()).await.expect("migrate production");
    sqlx::query("INSERT INTO orders (item) VALUES ('production')")
        .execute(db.pool())
        .await
        .expect("seed production");
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        // One connection: the replacement must be a new connection of the same pool.
        .connections_per_sandbox(1)
        .build();
    (db, pool)
}

async fn terminate(admin: &PgPool, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .expect("pg_terminate_backend");
    assert!(killed, "backend {pid} was not terminated");
}

/// `(pid, current_user, search_path)` of the connection a sandboxed call gets.
async fn session(pool: &SandboxPool, sb: &Sandbox) -> (i32, String, String) {
    let row =
        sqlx::query("SELECT pg_backend_pid(), current_user::text, current_setting('search_path')")
            .fetch_one(pool)
            .in_sandbox(sb.clone())
            .await
            .expect("sandboxed session query");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_backend_mid_transaction_loses_it_and_the_pool_recovers() {
    let (db, pool) = setup().await;
    let key = unique_key("kill");
    let sb = sandbox(&key);
    sqlx::query("INSERT INTO orders (item) VALUES ('kept')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();

    let pid = async {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('lost')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        terminate(db.pool(), pid).await;

        let error = sqlx::query("INSERT INTO orders (item) VALUES ('after kill')")
            .execute(&mut *tx)
            .await
            .expect_err("the transaction's backend is gone");
        eprintln!("in the killed transaction: {error}");
        assert!(tx.commit().await.is_err(), "a dead transaction committed");
        pid
    }
    .in_sandbox(sb.clone())
    .await;

    // Nothing of the transaction was committed, anywhere.
    let items: Vec<String> = orders_in(db.pool(), &schema_of(&key))
        .await
        .into_iter()
        .map(|(_, item)| item)
        .collect();
    assert_eq!(items, ["kept"]);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 1);

    // The pool recovers: the next call works, on a new backend, still as the sandbox.
    sqlx::query("INSERT INTO orders (item) VALUES ('recovered')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    let (new_pid, user, path) = session(&pool, &sb).await;
    assert_ne!(new_pid, pid);
    assert_eq!(user, role_of(&db, &key));
    assert_eq!(path, schema_of(&key));
    // A transaction on the replacement connection is the sandbox's too.
    async {
        let mut tx = pool.begin().await.unwrap();
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(user, role_of(&db, &key));
        sqlx::query("INSERT INTO orders (item) VALUES ('in new tx')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    .in_sandbox(sb.clone())
    .await;

    let items: Vec<String> = orders_in(db.pool(), &schema_of(&key))
        .await
        .into_iter()
        .map(|(_, item)| item)
        .collect();
    assert_eq!(items, ["kept", "recovered", "in new tx"]);
    let production: Vec<String> = sqlx::query_scalar("SELECT item FROM public.orders")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(production, ["production"]);
    // Baseline calls are unaffected.
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(user, "postgres");

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_idle_pooled_connection_is_recovered_transparently() {
    let (db, pool) = setup().await;
    let key = unique_key("idle");
    let sb = sandbox(&key);
    let (pid, _, _) = session(&pool, &sb).await;
    terminate(db.pool(), pid).await;

    // The pool notices the dead connection and opens a new one, set up for the sandbox.
    for n in 0..3 {
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(format!("after-{n}"))
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .unwrap_or_else(|e| panic!("call {n} after the kill: {e}"));
    }
    let (new_pid, user, path) = session(&pool, &sb).await;
    assert_ne!(new_pid, pid);
    assert_eq!(user, role_of(&db, &key));
    assert_eq!(path, schema_of(&key));
    assert_eq!(orders_in(db.pool(), &schema_of(&key)).await.len(), 3);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 1);

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_statement_fails_the_call_only() {
    let (db, pool) = setup().await;
    let key = unique_key("stmt");
    let sb = sandbox(&key);
    let (pid, _, _) = session(&pool, &sb).await;

    // A long statement on the sandbox's only connection, killed from outside while it runs.
    let running = tokio::spawn({
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT pg_sleep(60)")
                .execute(&pool)
                .await
                .map(drop)
        }
        .in_sandbox(sb.clone())
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%')",
        )
        .bind(pid)
        .fetch_one(db.pool())
        .await
        .unwrap();
        if active {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_sleep never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    terminate(db.pool(), pid).await;
    let error = running
        .await
        .unwrap()
        .expect_err("the statement's backend is gone");
    eprintln!("killed statement: {error}");

    let (new_pid, user, path) = session(&pool, &sb).await;
    assert_ne!(new_pid, pid);
    assert_eq!(user, role_of(&db, &key));
    assert_eq!(path, schema_of(&key));

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}
