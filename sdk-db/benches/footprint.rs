//! What active sandboxes hold: client memory and server connections at 100 active sandboxes,
//! against the same process with none.
//!
//! Run: `cargo bench -p prodbox-db --bench footprint` (PostgreSQL on 127.0.0.1:5432).

#![allow(clippy::unwrap_used, missing_docs)]

use std::borrow::Cow;

use prodbox_core::{FutureExt, Sandbox};
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, unique_key};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// The figure; lowered (and said so) when the server allows fewer connections.
const WANTED: usize = 100;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn server_connections(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(db.name())
        .fetch_one(&mut db.admin().await)
        .await
        .unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: only measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = TestDatabase::create_with(2).await;
        let max: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(db.pool())
            .await
            .unwrap();
        let in_use: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity")
            .fetch_one(db.pool())
            .await
            .unwrap();
        let room = max.parse::<usize>().unwrap_or(100).saturating_sub(in_use as usize + 10);
        let sandboxes = WANTED.min(room);
        if sandboxes < WANTED {
            println!(
                "server max_connections is {max} with {in_use} in use: measuring {sandboxes} active sandboxes, not {WANTED}"
            );
        }
        let migrator = Migrator::with_migrations(vec![Migration::new(
            1,
            Cow::Borrowed("items"),
            MigrationType::Simple,
            AssertSqlSafe("CREATE TABLE items (id bigserial PRIMARY KEY, name text)".to_owned())
                .into_sql_str(),
            false,
        )]);
        let pool = SandboxPool::builder(db.new_pool(2).await)
            .migrations(migrator)
            .max_active_sandboxes(sandboxes)
            .connections_per_sandbox(1)
            .build();
        let keys: Vec<Sandbox> = (0..sandboxes)
            .map(|i| Sandbox::new(unique_key(&format!("fp{i}")).parse().unwrap()))
            .collect();
        // Provision all first (provisioning uses connections of its own, closed after).
        for sandbox in &keys {
            pool.pool_for(sandbox).await.unwrap();
        }
        let (rss_before, conns_before) = (rss_kib(), server_connections(&db).await);
        for sandbox in &keys {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO items (name) VALUES ('x')")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            .in_sandbox(sandbox.clone())
            .await;
        }
        let (rss_after, conns_after) = (rss_kib(), server_connections(&db).await);
        println!(
            "active sandboxes: {} (pools {}), sandbox connections held: {}",
            sandboxes,
            pool.active_sandboxes(),
            pool.sandbox_connections()
        );
        println!(
            "server connections on the database: {conns_before} -> {conns_after} (+{} for {sandboxes} sandboxes)",
            conns_after - conns_before
        );
        println!(
            "client RSS: {rss_before} KiB -> {rss_after} KiB (+{} KiB, {:.1} KiB per active sandbox)",
            rss_after.saturating_sub(rss_before),
            rss_after.saturating_sub(rss_before) as f64 / sandboxes as f64
        );
        for sandbox in &keys {
            pool.drop_sandbox(sandbox.key()).await.unwrap();
        }
        db.cleanup().await;
    });
}
