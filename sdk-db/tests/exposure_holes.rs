//! Holes a hostile review found in the database isolation's own machinery (the event trigger
//! and the exposure check): a temporary view that hijacks the trigger's superuser, objects the
//! trigger or the check did not look at, one sandbox's grants refusing the others, and an
//! extension's view refusing every sandbox. Each test asserts what the design promises,
//! against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    admin, assert_exposed, in_sandbox, orders_in, parse_key, production, sandbox, sandbox_pool,
    schema_of,
};
use prodbox_core::FutureExt;
use prodbox_db::SandboxDbError;
use prodbox_testkit::pg::{TestDatabase, quote, unique_key};
use sqlx::Executor;

async fn amounts(db: &TestDatabase) -> Vec<i32> {
    sqlx::query_scalar("SELECT amount FROM public.orders ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// CRITICAL. The event trigger's function `prodbox.sandbox_ddl_guard_v1` is `SECURITY DEFINER`
/// (owned by the provisioning superuser) with `SET search_path = pg_catalog`, and so is
/// `prodbox.foreign_dependencies_v1`, which it calls. With `pg_temp` not named in the path,
/// PostgreSQL searches the session's temporary schema *first* for relations, so the unqualified
/// `pg_namespace`, `pg_roles`, `pg_depend`, `pg_class` ... in their bodies resolve to a sandbox's
/// own temporary view of that name. A function called from that view runs as the current user:
/// the superuser. Any DDL of the sandbox session (the `CREATE TEMP VIEW` itself already fires
/// it) then runs the sandbox's code as superuser: it reads and writes production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_view_shadowing_the_catalogue_never_runs_sandbox_code_as_the_triggers_superuser() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5su");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    let schema = quote(&schema_of(&key));
    let attack = format!(
        "CREATE TABLE stolen (item text, ran_as text);
         CREATE FUNCTION evil() RETURNS boolean LANGUAGE plpgsql AS $f$
         BEGIN
             IF current_user <> session_user AND NOT EXISTS (SELECT 1 FROM {schema}.stolen) THEN
                 INSERT INTO {schema}.stolen SELECT item, current_user::text FROM public.orders;
                 UPDATE public.orders SET amount = 666;
             END IF;
             RETURN true;
         END $f$;
         CREATE TEMP VIEW pg_namespace AS SELECT * FROM pg_catalog.pg_namespace WHERE evil();"
    );
    let ran = in_sandbox(&pool, &key, &attack).await;
    // What the sandbox can now read back, as itself, from its own table.
    let stolen: Vec<(String, String)> = sqlx::query_as("SELECT item, ran_as FROM stolen")
        .fetch_all(&pool)
        .in_sandbox(sandbox(&key))
        .await
        .unwrap_or_default();
    let after = amounts(&db).await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    eprintln!("attack: {ran:?}; stolen by the sandbox: {stolen:?}; production amounts: {after:?}");
    assert!(
        stolen.is_empty(),
        "a sandbox read production's rows through the event trigger: {stolen:?}"
    );
    assert_eq!(
        after,
        vec![10, 20],
        "a sandbox wrote production's rows through the event trigger"
    );
}

/// MEDIUM. With the event trigger in place (superuser provisioning), objects that depend on
/// production's are said to be refused as they are made. The trigger looks at the commands'
/// objects and, for relations only, their rules, defaults, constraints, triggers and policies:
/// a domain's `CHECK` constraint (its `conrelid` is 0) and a composite type's columns (the
/// dependency is the type's `pg_class` row, not its `pg_type` row) are not looked at. So
/// `CREATE DOMAIN .. CHECK (public.f(VALUE))` and `CREATE TYPE .. AS (o public.orders)` are
/// made, and production's `DROP FUNCTION`, `DROP TABLE orders` and a rewriting
/// `ALTER TABLE orders ALTER COLUMN .. TYPE` fail
/// until the sandbox is dropped (the exposure check refuses it later, but does not free them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_trigger_refuses_domain_checks_and_composite_types_on_production() {
    let db = production(2).await;
    admin(
        &db,
        "CREATE FUNCTION public.positive(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0'",
    )
    .await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5dom");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    let attempts = [
        "CREATE DOMAIN pos AS int CHECK (public.positive(VALUE))",
        "CREATE TYPE wrapped AS (o public.orders)",
    ];
    let mut made = Vec::new();
    for sql in attempts {
        if in_sandbox(&pool, &key, sql).await.is_ok() {
            made.push(sql);
        }
    }
    // A migration that rewrites the table (checks users of its row type), and a DROP TABLE
    // (rolled back).
    let altered = db
        .pool()
        .execute("ALTER TABLE orders ALTER COLUMN amount TYPE bigint")
        .await;
    let mut tx = db.pool().begin().await.unwrap();
    let dropped_table = tx.execute("DROP TABLE public.orders").await.map(drop);
    drop(tx);
    let dropped_fn = db
        .pool()
        .execute("DROP FUNCTION public.positive(int)")
        .await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    eprintln!(
        "made: {made:?}; ALTER TABLE: {altered:?}; DROP TABLE: {dropped_table:?}; DROP FUNCTION: {dropped_fn:?}"
    );
    assert!(
        made.is_empty(),
        "the event trigger let a sandbox make objects on production's: {made:?}"
    );
    altered.expect("production's ALTER TABLE failed because of a sandbox");
    dropped_table.expect("production's DROP TABLE failed because of a sandbox");
    dropped_fn.expect("production's DROP FUNCTION failed because of a sandbox");
}

/// MEDIUM (where provisioning is no superuser, so no event trigger: the documented fallback).
/// The exposure check lists the dependencies of the sandbox schema's relations, routines,
/// types and constraints only. A cast (no schema at all), an operator and an extended
/// statistics object (in the sandbox's schema, but `pg_operator` / `pg_statistic_ext`) that
/// depend on production's type and function are never found: the sandbox is never refused,
/// and production's `DROP TABLE` / `DROP FUNCTION` fail for as long as the sandbox lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_event_trigger_the_check_finds_casts_operators_and_statistics_on_production() {
    let db = production(2).await;
    admin(
        &db,
        "CREATE FUNCTION public.plus(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + $2'",
    )
    .await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5cast");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    admin(&db, "DROP EVENT TRIGGER prodbox_sandbox_ddl_v1").await;
    in_sandbox(
        &pool,
        &key,
        "CREATE TYPE mine AS (x int);
         CREATE CAST (public.orders AS mine) WITH INOUT;
         CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = public.plus);
         CREATE TABLE t (n int);
         CREATE STATISTICS s ON (public.plus(n, n)), n FROM t;",
    )
    .await
    .expect("made, with no trigger to stop them");
    // Another process opens the sandbox's pool: the check runs there (and restrict).
    let other = sandbox_pool(&db).await;
    let opened = in_sandbox(&other, &key, "SELECT 1").await;
    let refused = match &opened {
        Err(error) => matches!(
            SandboxDbError::of(error),
            Some(SandboxDbError::ProductionExposed { .. })
        ),
        Ok(()) => false,
    };
    let mut tx = db.pool().begin().await.unwrap();
    let drop_table = tx.execute("DROP TABLE public.orders").await.map(drop);
    drop(tx); // rolled back
    let drop_fn = db
        .pool()
        .execute("DROP FUNCTION public.plus(int, int)")
        .await
        .map(drop);
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    eprintln!(
        "fresh pool: {opened:?}; production DROP TABLE: {drop_table:?}; DROP FUNCTION: {drop_fn:?}"
    );
    assert!(
        refused || (drop_table.is_ok() && drop_fn.is_ok()),
        "objects depending on production's were neither found by the exposure check nor harmless"
    );
}

/// MEDIUM (cross-sandbox denial of service). "Other sandboxes' schemas are not production: what a
/// sandbox grants of its own refuses no one else" holds for tables, sequences and `SECURITY
/// DEFINER` functions, but the `CREATE`-on-schema part of the check does not skip sandboxes'
/// schemas. One sandbox's `GRANT CREATE ON SCHEMA <its own> TO PUBLIC` refuses every other
/// sandbox of the database (`db_production_exposed`) until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sandbox_granting_create_on_its_schema_to_public_refuses_no_other_sandbox() {
    let b = after_another_sandbox_granted(
        "r5a",
        "DO $$ BEGIN EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO PUBLIC', current_schema()); END $$",
    )
    .await;
    b.expect("sandbox B was refused because of what sandbox A granted of its own");
}

/// MEDIUM (cross-sandbox denial of service), the same through large objects: the check flags
/// every large object granted to `PUBLIC`, whoever owns it. A sandbox may `lo_create` (allowed,
/// per the hostile-SQL table) and grant its own large object to `PUBLIC`: every sandbox of the
/// database is refused until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sandbox_granting_its_own_large_object_to_public_refuses_no_other_sandbox() {
    let b = after_another_sandbox_granted(
        "r5la",
        "DO $$ DECLARE o oid := lo_create(0);
         BEGIN EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO PUBLIC', o); END $$",
    )
    .await;
    b.expect("sandbox B was refused because of a large object sandbox A owns");
}

/// Opens sandbox B, has sandbox A run `grant` (sharing something of its own), then opens B in
/// another pool (another process): what B gets.
async fn after_another_sandbox_granted(prefix: &str, grant: &str) -> Result<(), sqlx::Error> {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let (a, b) = (unique_key(prefix), unique_key(&format!("{prefix}b")));
    in_sandbox(&pool, &b, "SELECT 1")
        .await
        .expect("provision B");
    in_sandbox(&pool, &a, grant)
        .await
        .expect("A shares its own");
    let b_again = in_sandbox(&sandbox_pool(&db).await, &b, "SELECT 1").await;
    let _ = pool.drop_sandbox(&parse_key(&a)).await;
    let _ = pool.drop_sandbox(&parse_key(&b)).await;
    db.cleanup().await;
    if let Err(error) = &b_again {
        eprintln!("B: {:?}", SandboxDbError::of(error));
    }
    b_again
}

/// LOW (false positive). `CREATE EXTENSION pg_stat_statements`, in most production databases,
/// makes views `public.pg_stat_statements{,_info}` with `SELECT` granted to `PUBLIC` by the
/// extension's own script. The table part of the check skips neither extension members nor
/// anything else: every sandbox of such a database is refused. (What the view shows a
/// non-privileged role is statistics of others' statements with their text hidden.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_statements_in_production_refuses_no_sandbox() {
    let db = production(2).await;
    admin(&db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5pss");
    let opened = in_sandbox(&pool, &key, "SELECT 1").await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    if let Err(error) = &opened {
        eprintln!("refused: {:?}", SandboxDbError::of(error));
    }
    opened.expect("a sandbox was refused for an extension's own view");
}

/// USAGE on a foreign-data wrapper lets a sandbox make a server of its own, reaching wherever
/// it names, over a connection no watchdog sees: a sandbox is refused while PUBLIC has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_on_a_foreign_data_wrapper_refuses_the_sandbox() {
    let db = production(2).await;
    admin(
        &db,
        "CREATE FOREIGN DATA WRAPPER prodbox_test_fdw; \
         GRANT USAGE ON FOREIGN DATA WRAPPER prodbox_test_fdw TO PUBLIC",
    )
    .await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5fdw");
    let opened = in_sandbox(&pool, &key, "SELECT 1").await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    let error = opened.expect_err("a sandbox could make foreign servers");
    assert_exposed(&error, "USAGE on a foreign-data wrapper");
}

/// A control that the usual production-read attack is still refused, so
/// that the tests above fail for their own reason and not the harness's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_read_of_production_is_still_refused() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r5ctl");
    let read = in_sandbox(&pool, &key, "CREATE TABLE s AS SELECT * FROM public.orders").await;
    let rows = orders_in(db.pool(), "public").await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    assert!(read.is_err());
    assert_eq!(rows.len(), 2);
}
