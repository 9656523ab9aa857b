//! Helpers shared by this crate's integration tests (each test file includes what it uses).

#![allow(dead_code)]

use std::path::PathBuf;

use prodbox_core::{Sandbox, SandboxKey};
use prodbox_db::SandboxDbError;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

/// `tests/migrations/<name>`.
pub(crate) fn migrations_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("migrations")
        .join(name)
}

/// The sqlx migrator of `tests/migrations/<name>`.
pub(crate) async fn migrator(name: &str) -> Migrator {
    let dir = migrations_dir(name);
    Migrator::new(dir.as_path())
        .await
        .unwrap_or_else(|e| panic!("reading migrations {}: {e}", dir.display()))
}

/// A sandbox with only `key`.
pub(crate) fn sandbox(key: &str) -> Sandbox {
    Sandbox::new(parse_key(key))
}

pub(crate) fn parse_key(key: &str) -> SandboxKey {
    key.parse()
        .unwrap_or_else(|e| panic!("test key {key:?} is invalid: {e}"))
}

/// The schema of sandbox `key`.
pub(crate) fn schema_of(key: &str) -> String {
    prodbox_db::names::schema_name(&parse_key(key))
}

/// The role of sandbox `key` in `db`.
pub(crate) fn role_of(db: &prodbox_testkit::pg::TestDatabase, key: &str) -> String {
    prodbox_db::names::role_name(db.name(), &parse_key(key))
}

/// `schema.table` with both names quoted.
pub(crate) fn table(schema: &str, table: &str) -> String {
    format!(
        "{}.{}",
        prodbox_testkit::pg::quote(schema),
        prodbox_testkit::pg::quote(table)
    )
}

/// Items of `schema.orders`, ordered by id: `(id, item)`.
pub(crate) async fn orders_in(admin: &PgPool, schema: &str) -> Vec<(i64, String)> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT id, item FROM {} ORDER BY id",
        table(schema, "orders")
    )))
    .fetch_all(admin)
    .await
    .unwrap_or_else(|e| panic!("reading {schema}.orders: {e}"))
    .into_iter()
    .map(|row| (row.get::<i64, _>(0), row.get::<String, _>(1)))
    .collect()
}

/// How many catalogue rows record `key`.
pub(crate) async fn catalogue_rows(admin: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM prodbox.sandbox_schemas WHERE key = $1")
        .bind(key)
        .fetch_one(admin)
        .await
        .expect("read the catalogue")
}

/// The prodbox error in `error`, or a panic that shows what came instead.
pub(crate) fn prodbox_error(error: &sqlx::Error) -> &SandboxDbError {
    SandboxDbError::of(error).unwrap_or_else(|| panic!("expected a prodbox error, got {error:?}"))
}

/// Asserts that `error` is prodbox's typed refusal of a statement that reached production
/// (`ProductionAccessRefused`); `what` says what was tried.
pub(crate) fn assert_access_refused(error: &sqlx::Error, what: &str) {
    assert!(
        matches!(
            prodbox_error(error),
            SandboxDbError::ProductionAccessRefused { .. }
        ),
        "{what}: {error}"
    );
}

/// Asserts that `error` is prodbox's refusal of an exposed sandbox (`ProductionExposed`).
pub(crate) fn assert_exposed(error: &sqlx::Error, what: &str) {
    assert!(
        matches!(
            prodbox_error(error),
            SandboxDbError::ProductionExposed { .. }
        ),
        "{what}: {error}"
    );
}

/// A production database with `orders` migrated and `rows` orders in it (`p1` for 10, `p2`
/// for 20, ...).
pub(crate) async fn production(rows: usize) -> prodbox_testkit::pg::TestDatabase {
    use sqlx::Executor as _;
    prodbox_testkit::pg::require_postgres().await;
    let db = prodbox_testkit::pg::TestDatabase::create_with(5).await;
    migrator("orders")
        .await
        .run(db.pool())
        .await
        .expect("migrate production");
    let values: Vec<String> = (1..=rows)
        .map(|n| format!("('p{n}', {})", n * 10))
        .collect();
    db.pool()
        .execute(AssertSqlSafe(format!(
            "INSERT INTO orders (item, amount) VALUES {}",
            values.join(", ")
        )))
        .await
        .expect("seed production");
    db
}

/// A sandbox pool on `db` whose sandboxes get the `orders` migrations.
pub(crate) async fn sandbox_pool(
    db: &prodbox_testkit::pg::TestDatabase,
) -> prodbox_db::SandboxPool {
    prodbox_db::SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build()
}

/// Runs `sql` on `db` as its owner (production).
pub(crate) async fn admin(db: &prodbox_testkit::pg::TestDatabase, sql: &str) {
    use sqlx::Executor as _;
    db.pool()
        .execute(AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `sql` (one simple-query round trip, one connection) in sandbox `key` of `pool`.
pub(crate) async fn in_sandbox(
    pool: &prodbox_db::SandboxPool,
    key: &str,
    sql: &str,
) -> Result<(), sqlx::Error> {
    use prodbox_core::FutureExt as _;
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .in_sandbox(sandbox(key))
        .await
        .map(drop)
}
