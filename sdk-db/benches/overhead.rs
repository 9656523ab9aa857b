//! The client-side work a sandboxed query adds to the same query on the plain pool, counted in
//! instructions (repeatable where timings on a shared VM are not). Each run sets up the same
//! database, warms up, then runs `n` point selects on one pool; run it under callgrind for
//! `n = 0` and `n = N` for each pool, and divide the differences by `N`:
//!
//! ```sh
//! cargo bench -p prodbox-db --bench overhead --no-run
//! for arm in plain baseline sandbox; do for n in 0 2000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/overhead-<hash> $arm $n 2>&1 | grep Collected
//! done; done
//! ```
//!
//! Run without arguments (as `cargo bench` does), it does nothing.

#![allow(clippy::unwrap_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;

use prodbox_core::{ContextExt, FutureExt, Sandbox};
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::TestDatabase;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

const ITEMS: &str = "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
                     INSERT INTO items (name) SELECT 'seed' FROM generate_series(1, 1000);";
const WARM_UP: usize = 200;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(which), Some(n)) = (args.next(), args.next()) else {
        return;
    };
    if !["plain", "baseline", "sandbox"].contains(&which.as_str()) {
        panic!("expected plain, baseline or sandbox, got {which}");
    }
    let n: usize = n.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let migrator = || {
            Migrator::with_migrations(vec![Migration::new(
                1,
                Cow::Borrowed("items"),
                MigrationType::Simple,
                AssertSqlSafe(ITEMS).into_sql_str(),
                false,
            )])
        };
        let db = TestDatabase::create_with(2).await;
        migrator().run(db.pool()).await.unwrap();
        let plain = db.new_pool(2).await;
        let pool = SandboxPool::builder(db.new_pool(2).await)
            .migrations(migrator())
            .connections_per_sandbox(2)
            .build();
        let sandbox = Sandbox::new(prodbox_testkit::pg::unique_key("ovh").parse().unwrap());
        // Every arm runs inside a context built once, as a request's is: production's (empty)
        // for `plain` (a `PgPool`) and `baseline` (the `SandboxPool` with no sandbox), the
        // sandbox's for `sandbox`.
        let cx = match which.as_str() {
            "sandbox" => opentelemetry::Context::new().with_sandbox(sandbox.clone()),
            _ => opentelemetry::Context::new(),
        };
        // Provisioned in every arm, so that the set-up is the same.
        pool.pool_for(&sandbox).await.unwrap();
        let run = |count: usize| {
            let (plain, pool, cx, which) = (plain.clone(), pool.clone(), cx.clone(), which.clone());
            async move {
                for i in 0..count {
                    let query =
                        sqlx::query_scalar::<_, String>("SELECT name FROM items WHERE id = $1")
                            .bind(black_box(1 + (i % 1000) as i64));
                    let name = if which == "plain" {
                        query.fetch_one(&plain).in_context(cx.clone()).await
                    } else {
                        query.fetch_one(&pool).in_context(cx.clone()).await
                    };
                    black_box(name.unwrap());
                }
            }
        };
        run(WARM_UP).await;
        run(n).await;
        pool.drop_sandbox(sandbox.key()).await.unwrap();
        db.cleanup().await;
    });
}
