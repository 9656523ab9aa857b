//! Provisioning races: two OS processes, and many tasks of one process, provisioning the same
//! new sandbox at once get one schema and no error.
//!
//! The processes are this test binary itself: `two_processes_provision_the_same_sandbox`
//! starts it twice with `PRODBOX_DB_RACE_CHILD` set, filtered to `race_child`, which does the
//! child's part (and returns at once in an ordinary run).

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{catalogue_rows, migrator, orders_in, sandbox, schema_of};
use prodbox_core::FutureExt;
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPoolOptions};

const CHILD: &str = "PRODBOX_DB_RACE_CHILD";
const URL: &str = "PRODBOX_DB_RACE_URL";
const KEY: &str = "PRODBOX_DB_RACE_KEY";
/// Advisory-lock class of the start barrier (the parent holds it; children wait on it).
const BARRIER: i32 = 4242;

/// The child's part: wait at the barrier, provision the sandbox, insert a row tagged with the
/// child's name. Any failure panics, so the process exits non-zero.
#[test]
fn race_child() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let url = std::env::var(URL).expect("database URL");
    let key = std::env::var(KEY).expect("sandbox key");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let baseline = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let pool = SandboxPool::builder(baseline)
            .migrations(migrator("orders").await)
            .build();
        let sb = sandbox(&key);

        // Both children wait here until the parent lets them go together.
        let mut barrier = PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock_shared($1, hashtext($2))")
            .bind(BARRIER)
            .bind(&key)
            .execute(&mut barrier)
            .await
            .unwrap();

        let sandbox_pool = pool.pool_for(&sb).await.expect("provision the sandbox");
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(&name)
            .execute(&sandbox_pool)
            .await
            .expect("insert through the sandbox pool");
        // And through the wrapper, in context.
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(format!("{name}-wrapped"))
            .execute(&pool)
            .in_sandbox(sb)
            .await
            .expect("insert through the SandboxPool");
        barrier.close().await.unwrap();
        println!("child {name} done");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_provision_the_same_sandbox() {
    require_postgres().await;
    let db = TestDatabase::create_with(2).await;
    let key = unique_key("race");

    // Hold the barrier so that both children start provisioning at the same moment.
    let mut barrier = db.admin().await;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(BARRIER)
        .bind(&key)
        .execute(&mut barrier)
        .await
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["child-a", "child-b"]
        .into_iter()
        .map(|name| {
            tokio::process::Command::new(&exe)
                .args(["race_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, name)
                .env(URL, db.url())
                .env(KEY, &key)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();

    // Release the barrier once both children wait on it (or after a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(60);
    let both_waited = loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND NOT granted AND classid = $1::oid",
        )
        .bind(BARRIER as i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
        if waiting >= 2 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    barrier.close().await.unwrap();

    let mut outputs = Vec::new();
    for child in children {
        outputs.push(child.wait_with_output().await.unwrap());
    }
    for output in &outputs {
        assert!(
            output.status.success(),
            "child failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains(" done"));
    }
    assert!(
        both_waited,
        "the children never both reached the start barrier"
    );

    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sbx\\_%'")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(schemas, [schema_of(&key)]);
    assert_eq!(catalogue_rows(db.pool(), &key).await, 1);
    let items: BTreeSet<String> = orders_in(db.pool(), &schema_of(&key))
        .await
        .into_iter()
        .map(|(_, item)| item)
        .collect();
    assert_eq!(
        items,
        ["child-a", "child-a-wrapped", "child-b", "child-b-wrapped"]
            .map(String::from)
            .into()
    );
    // The migrations ran once.
    let migrations: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        common::table(&schema_of(&key), "_sqlx_migrations")
    )))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(migrations, 1);

    SandboxPool::new(db.pool().clone())
        .drop_sandbox(&key.parse().unwrap())
        .await
        .unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_and_pools_race_on_one_new_sandbox() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    let pools: Vec<SandboxPool> = {
        let mut pools = Vec::new();
        for _ in 0..2 {
            pools.push(
                SandboxPool::builder(db.pool().clone())
                    .migrations(migrator("orders").await)
                    .connections_per_sandbox(2)
                    .build(),
            );
        }
        pools
    };
    let key = unique_key("herd");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for n in 0..32 {
        let pool = pools[n % 2].clone();
        let barrier = std::sync::Arc::clone(&barrier);
        let sb = sandbox(&key);
        tasks.push(tokio::spawn(
            async move {
                barrier.wait().await;
                sqlx::query("INSERT INTO orders (item) VALUES ($1)")
                    .bind(format!("task-{n}"))
                    .execute(&pool)
                    .await
            }
            .in_sandbox(sb),
        ));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let rows = orders_in(db.pool(), &schema_of(&key)).await;
    assert_eq!(rows.len(), 32);
    assert_eq!(
        rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=32).collect::<Vec<_>>()
    );
    assert_eq!(catalogue_rows(db.pool(), &key).await, 1);
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sbx\\_%'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(schemas, 1);
    // No production table appeared.
    let public: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(public, 0);

    pools[0].drop_sandbox(&key.parse().unwrap()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_new_sandboxes_provision_concurrently() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .max_active_sandboxes(16)
        .connections_per_sandbox(1)
        .build();
    let keys: Vec<String> = (0..16).map(|_| unique_key("many")).collect();
    let mut tasks = Vec::new();
    for key in &keys {
        let (pool, item) = (pool.clone(), key.clone());
        tasks.push(tokio::spawn(
            async move {
                sqlx::query("INSERT INTO orders (item) VALUES ($1)")
                    .bind(item)
                    .execute(&pool)
                    .await
            }
            .in_sandbox(sandbox(key)),
        ));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for key in &keys {
        assert_eq!(
            orders_in(db.pool(), &schema_of(key)).await,
            [(1, key.clone())]
        );
        assert_eq!(catalogue_rows(db.pool(), key).await, 1);
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_handed_out_survives_eviction() {
    require_postgres().await;
    let db = TestDatabase::create_with(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .max_active_sandboxes(1)
        .connections_per_sandbox(1)
        .build();
    let (a, b) = (unique_key("eva"), unique_key("evb"));
    let a_pool = pool.pool_for(&sandbox(&a)).await.unwrap();
    sqlx::query("SELECT 1").execute(&a_pool).await.unwrap();
    // The holder of `a_pool` is slow for a moment; meanwhile sandbox b needs the only slot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sqlx::query("INSERT INTO orders (item) VALUES ('b')")
        .execute(&pool)
        .in_sandbox(sandbox(&b))
        .await
        .unwrap();
    let after = sqlx::query("INSERT INTO orders (item) VALUES ('a')")
        .execute(&a_pool)
        .await;
    for key in [&a, &b] {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
    after.expect("the pool pool_for returned still works");
}

/// A caller that gives up while its sandbox is being provisioned (a request timeout) neither
/// wedges the sandbox nor keeps its slot: provisioning finishes in a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_during_provisioning_wedges_nothing() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .seed("SELECT pg_sleep(1)")
        .max_active_sandboxes(1)
        .build();
    let (a, b) = (unique_key("cx-a"), unique_key("cx-b"));
    let first = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("INSERT INTO orders (item) VALUES ('early')")
            .execute(&pool)
            .in_sandbox(sandbox(&a)),
    )
    .await;
    assert!(first.is_err(), "the caller gave up");
    // The same sandbox works afterwards, and so does another one in the only slot.
    sqlx::query("INSERT INTO orders (item) VALUES ('later')")
        .execute(&pool)
        .in_sandbox(sandbox(&a))
        .await
        .unwrap();
    assert_eq!(
        orders_in(db.pool(), &schema_of(&a)).await,
        [(1, "later".to_owned())]
    );
    sqlx::query("INSERT INTO orders (item) VALUES ('other')")
        .execute(&pool)
        .in_sandbox(sandbox(&b))
        .await
        .unwrap();
    assert_eq!(catalogue_rows(db.pool(), &a).await, 1);
    for key in [&a, &b] {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}
