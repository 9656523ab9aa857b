//! Sandboxed queries against the same queries on the plain pool, in the same run; the
//! `SET LOCAL` alternative for comparison; provisioning a 20-table schema.
//!
//! Run: `cargo bench -p prodbox-db --bench db` (PostgreSQL on 127.0.0.1:5432).

#![allow(clippy::unwrap_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::Context;
use prodbox_core::{Sandbox, SandboxContext};
use prodbox_db::SandboxPool;
use prodbox_db::names::{role_name, schema_name};
use prodbox_testkit::pg::TestDatabase;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Executor, SqlSafeStr};

const ITEMS: &str =
    "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, n int NOT NULL);
                     CREATE INDEX items_n ON items (n);
                     INSERT INTO items (name, n) SELECT 'seed', g FROM generate_series(1, 1000) g;";

fn migrator(sql: String) -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("schema"),
        MigrationType::Simple,
        AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
}

fn twenty_tables() -> String {
    (0..20)
        .map(|i| {
            format!(
                "CREATE TABLE t{i} (id bigserial PRIMARY KEY, parent bigint REFERENCES items (id),
                 name text NOT NULL DEFAULT '', amount numeric(12, 2), created timestamptz DEFAULT now());
                 CREATE INDEX t{i}_parent ON t{i} (parent);"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn queries(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, plain, pool, sandbox) = rt.block_on(async {
        let db = TestDatabase::create_with(4).await;
        migrator(ITEMS.to_owned()).run(db.pool()).await.unwrap();
        let plain = db.new_pool(4).await;
        let pool = SandboxPool::builder(db.new_pool(4).await)
            .migrations(migrator(ITEMS.to_owned()))
            .connections_per_sandbox(4)
            .build();
        let sandbox = Sandbox::new(prodbox_testkit::pg::unique_key("bench").parse().unwrap());
        // Provision now: the benchmark measures steady-state queries.
        pool.pool_for(&sandbox).await.unwrap();
        (db, plain, pool, sandbox)
    });
    let (role, schema) = (
        role_name(db.name(), sandbox.key()),
        schema_name(sandbox.key()),
    );
    let set_local = format!("SET LOCAL ROLE \"{role}\"; SET LOCAL search_path TO \"{schema}\"");

    let mut group = c.benchmark_group("insert_one_row");
    group.bench_function("plain_pool", |b| {
        b.to_async(&rt).iter(|| async {
            sqlx::query("INSERT INTO items (name, n) VALUES ($1, $2)")
                .bind("x")
                .bind(black_box(7))
                .execute(&plain)
                .await
                .unwrap()
        })
    });
    let cx = SandboxContext::new(sandbox.clone()).attach_to(&Context::new());
    group.bench_function("sandbox_pool", |b| {
        b.to_async(&rt).iter(|| {
            let pool = pool.clone();
            prodbox_core::FutureExt::in_context(
                async move {
                    sqlx::query("INSERT INTO items (name, n) VALUES ($1, $2)")
                        .bind("x")
                        .bind(black_box(7))
                        .execute(&pool)
                        .await
                        .unwrap()
                },
                cx.clone(),
            )
        })
    });
    group.bench_function("set_local_transaction", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tx = plain.begin().await.unwrap();
            tx.execute(sqlx::raw_sql(AssertSqlSafe(set_local.clone())))
                .await
                .unwrap();
            sqlx::query("INSERT INTO items (name, n) VALUES ($1, $2)")
                .bind("x")
                .bind(black_box(7))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group("select_by_index");
    group.bench_function("plain_pool", |b| {
        b.to_async(&rt).iter(|| async {
            sqlx::query("SELECT id, name FROM items WHERE n = $1")
                .bind(black_box(500))
                .fetch_all(&plain)
                .await
                .unwrap()
        })
    });
    group.bench_function("sandbox_pool", |b| {
        b.to_async(&rt).iter(|| {
            let pool = pool.clone();
            prodbox_core::FutureExt::in_context(
                async move {
                    sqlx::query("SELECT id, name FROM items WHERE n = $1")
                        .bind(black_box(500))
                        .fetch_all(&pool)
                        .await
                        .unwrap()
                },
                cx.clone(),
            )
        })
    });
    group.bench_function("set_local_transaction", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tx = plain.begin().await.unwrap();
            tx.execute(sqlx::raw_sql(AssertSqlSafe(set_local.clone())))
                .await
                .unwrap();
            let rows = sqlx::query("SELECT id, name FROM items WHERE n = $1")
                .bind(black_box(500))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            rows
        })
    });
    group.finish();

    // Issue #16's target: plain and sandboxed, alternated three times in one run (each name's
    // median is one "run"), so that drift on a noisy machine hits both alike.
    let mut group = c.benchmark_group("alternated_select_by_id");
    for round in 1..=3 {
        group.bench_function(format!("plain_pool/{round}"), |b| {
            b.to_async(&rt).iter(|| async {
                sqlx::query_scalar::<_, String>("SELECT name FROM items WHERE id = $1")
                    .bind(black_box(500_i64))
                    .fetch_one(&plain)
                    .await
                    .unwrap()
            })
        });
        group.bench_function(format!("sandbox_pool/{round}"), |b| {
            b.to_async(&rt).iter(|| {
                let pool = pool.clone();
                prodbox_core::FutureExt::in_context(
                    async move {
                        sqlx::query_scalar::<_, String>("SELECT name FROM items WHERE id = $1")
                            .bind(black_box(500_i64))
                            .fetch_one(&pool)
                            .await
                            .unwrap()
                    },
                    cx.clone(),
                )
            })
        });
    }
    group.finish();

    // What a process pays to open a provisioned sandbox's pool: the row lock, the role made a
    // sandbox role again and the exposure check (issue #17 asks for its cost), on this
    // database and on one with a thousand more production tables and functions.
    let mut group = c.benchmark_group("open_provisioned_sandbox");
    group.sample_size(20);
    let big = rt.block_on(async {
        let big = TestDatabase::create_with(2).await;
        big.pool()
            .execute(AssertSqlSafe(
                (0..1000)
                    .map(|i| {
                        format!(
                            "CREATE TABLE p{i} (id bigserial PRIMARY KEY, v text);
                             CREATE FUNCTION f{i}() RETURNS int LANGUAGE sql AS 'SELECT {i}';"
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
            .await
            .unwrap();
        let pool = SandboxPool::new(big.new_pool(2).await);
        pool.pool_for(&sandbox).await.unwrap();
        big
    });
    for (name, options) in [
        ("21_tables", db.connect_options()),
        ("1021_tables_1000_functions", big.connect_options()),
    ] {
        let baseline = rt.block_on(async {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .unwrap()
        });
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let (baseline, sandbox) = (baseline.clone(), sandbox.clone());
                async move {
                    // A new process's pool: nothing of the sandbox cached.
                    let pool = SandboxPool::new(baseline);
                    pool.pool_for(&sandbox).await.unwrap()
                }
            })
        });
    }
    group.finish();
    rt.block_on(async {
        SandboxPool::new(big.new_pool(2).await)
            .drop_sandbox(sandbox.key())
            .await
            .unwrap();
        big.cleanup().await;
    });

    let mut group = c.benchmark_group("provision_20_tables");
    group.sample_size(10);
    let provisioning = rt.block_on(async {
        SandboxPool::builder(db.new_pool(2).await)
            .migrations(migrator(format!("{ITEMS}\n{}", twenty_tables())))
            .build()
    });
    group.bench_function("first_use", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let provisioning = provisioning.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let sandbox =
                        Sandbox::new(prodbox_testkit::pg::unique_key("prov").parse().unwrap());
                    let start = Instant::now();
                    provisioning.pool_for(&sandbox).await.unwrap();
                    total += start.elapsed();
                    provisioning.drop_sandbox(sandbox.key()).await.unwrap();
                }
                total
            }
        })
    });
    group.finish();

    rt.block_on(async {
        pool.drop_sandbox(sandbox.key()).await.unwrap();
        plain.close().await;
        pool.baseline().close().await;
        db.cleanup().await;
    });
}

criterion_group!(benches, queries);
criterion_main!(benches);
