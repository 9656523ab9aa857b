//! Prepared-statement caches and a sandbox schema that differs from production: the same
//! `SELECT * FROM items` alternates between production's two columns and the sandbox's three,
//! through one `SandboxPool`, without "cached plan must not change result type".

mod common;

use common::{migrator, sandbox};
use prodbox_core::FutureExt;
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};
use sqlx::{Column, Executor, Row, SqlSafeStr, Statement};

async fn setup() -> (TestDatabase, SandboxPool) {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    db.pool()
        .execute(
            "CREATE TABLE items (id int, name text);
             INSERT INTO items VALUES (1, 'production-one'), (2, 'production-two'),
                                      (3, 'production-three');",
        )
        .await
        .expect("production items");
    // One baseline connection and one per sandbox: every call reuses a cached statement.
    let baseline = db.new_pool(1).await;
    let pool = SandboxPool::builder(baseline)
        .migrations(migrator("items_sandbox").await)
        .connections_per_sandbox(1)
        .build();
    (db, pool)
}

fn names(row: &sqlx::postgres::PgRow) -> Vec<String> {
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_statement_alternates_between_production_and_a_different_sandbox() {
    let (db, pool) = setup().await;
    let (a, b) = (unique_key("prep"), unique_key("prepb"));

    for round in 0..100 {
        let rows = sqlx::query("SELECT * FROM items ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("baseline, round {round}: {e}"));
        assert_eq!(rows.len(), 3);
        assert_eq!(names(&rows[0]), ["id", "name"]);
        assert_eq!(rows[0].get::<String, _>("name"), "production-one");

        let key = if round % 3 == 0 { &b } else { &a };
        let rows = sqlx::query("SELECT * FROM items ORDER BY id")
            .fetch_all(&pool)
            .in_sandbox(sandbox(key))
            .await
            .unwrap_or_else(|e| panic!("sandbox {key}, round {round}: {e}"));
        assert_eq!(rows.len(), 2);
        assert_eq!(names(&rows[0]), ["id", "name", "extra"]);
        assert_eq!(rows[0].get::<String, _>("name"), "sandbox-one");

        // Other fetch styles, same statement text.
        let row = sqlx::query("SELECT * FROM items ORDER BY id")
            .fetch_one(&pool)
            .in_sandbox(sandbox(key))
            .await
            .unwrap();
        assert_eq!(row.columns().len(), 3);
        let row = sqlx::query("SELECT * FROM items ORDER BY id")
            .fetch_optional(&pool)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.columns().len(), 2);
    }

    // Explicit preparation and description see each side's own columns too.
    let statement = (&pool)
        .prepare("SELECT * FROM items".into_sql_str())
        .await
        .unwrap();
    assert_eq!(statement.columns().len(), 2);
    let statement = async { (&pool).prepare("SELECT * FROM items".into_sql_str()).await }
        .in_sandbox(sandbox(&a))
        .await
        .unwrap();
    assert_eq!(statement.columns().len(), 3);

    // Through transactions as well, alternating on the same connections.
    for _ in 0..20 {
        async {
            let mut tx = pool.begin().await.unwrap();
            let row = sqlx::query("SELECT * FROM items LIMIT 1")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(row.columns().len(), 3);
            tx.commit().await.unwrap();
        }
        .in_sandbox(sandbox(&a))
        .await;
        let mut tx = pool.begin().await.unwrap();
        let row = sqlx::query("SELECT * FROM items LIMIT 1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(row.columns().len(), 2);
        tx.commit().await.unwrap();
    }

    for key in [&a, &b] {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_alternation_keeps_each_side_s_columns() {
    let (db, pool) = setup().await;
    let key = unique_key("prepc");
    let mut tasks = Vec::new();
    for task in 0..8 {
        let pool = pool.clone();
        let sb = sandbox(&key);
        tasks.push(tokio::spawn(async move {
            for round in 0..50 {
                let sandboxed = (task + round) % 2 == 0;
                let query = sqlx::query("SELECT * FROM items").fetch_all(&pool);
                let rows = if sandboxed {
                    query.in_sandbox(sb.clone()).await
                } else {
                    query.await
                }
                .unwrap_or_else(|e| panic!("task {task} round {round}: {e}"));
                let expected = if sandboxed { 3 } else { 2 };
                assert!(rows.iter().all(|r| r.columns().len() == expected));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    db.cleanup().await;
}
