//! What a hostile sandbox could do to production other than read or write its rows, each
//! tried and refused: objects that make production's DDL fail, locks held while busy, settings
//! and memberships that outlive the role's reset, another sandbox's grants refusing everyone,
//! an older incarnation wiping a newer one, and a sandbox too big for the janitor.

mod common;

use std::time::{Duration, SystemTime};

use common::{admin, in_sandbox, migrator, production, role_of, sandbox, sandbox_pool, schema_of};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::pg::{quote, schema_exists, unique_key};
use sqlx::{AssertSqlSafe, Executor};

/// Objects that depend on production's tables and types (a view, a function whose body is
/// parsed at creation, a table of production's row type, a materialized view) would make
/// production's own migrations fail (`cannot alter type of a column used by a view`, `cannot
/// drop table orders because other objects depend on it`). A sandbox may not make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_make_objects_production_depends_on() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("dep");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    let attempts = [
        "CREATE VIEW v AS SELECT id, item FROM public.orders",
        "CREATE MATERIALIZED VIEW mv AS SELECT item FROM public.orders WITH NO DATA",
        "CREATE TABLE rowtype (o public.orders)",
        "CREATE TEMP VIEW tv AS SELECT item FROM public.orders",
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM public.orders; END",
    ];
    let mut made = Vec::new();
    for sql in attempts {
        if in_sandbox(&pool, &key, sql).await.is_ok() {
            made.push(sql);
        }
    }
    // Production's migration runs whatever the sandbox tried.
    let migrated = db
        .pool()
        .execute("ALTER TABLE orders ALTER COLUMN item TYPE varchar(200)")
        .await;
    let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
    db.cleanup().await;
    let blocking: Vec<&str> = made
        .into_iter()
        .filter(|sql| sql.contains("public.orders"))
        .collect();
    assert!(
        blocking.is_empty(),
        "a sandbox made objects on production's tables: {blocking:?}"
    );
    migrated.expect("production's migration failed because of a sandbox");
}

/// Where provisioning runs as no superuser there is no event trigger to stop such an object
/// being made: the check finds it, and the sandbox is refused from its next recorded use on,
/// naming it; dropping the sandbox frees production's DDL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_event_trigger_a_dependency_on_production_refuses_the_sandbox() {
    let db = production(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        // A use is recorded, and the check run, every 2 s.
        .default_ttl(Duration::from_secs(8))
        .build();
    let key = unique_key("noguard");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    admin(&db, "DROP EVENT TRIGGER prodbox_sandbox_ddl_v1").await;
    in_sandbox(
        &pool,
        &key,
        "CREATE VIEW v AS SELECT id, item FROM public.orders",
    )
    .await
    .expect("made, with no trigger to stop it");
    let mut refused = None;
    for _ in 0..300 {
        if let Err(error) = in_sandbox(&pool, &key, "SELECT 1").await {
            refused = Some(error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocked = db
        .pool()
        .execute("ALTER TABLE orders ALTER COLUMN item TYPE varchar(300)")
        .await;
    let dropped = pool.drop_sandbox(&common::parse_key(&key)).await;
    let migrated = db
        .pool()
        .execute("ALTER TABLE orders ALTER COLUMN item TYPE varchar(300)")
        .await;
    db.cleanup().await;
    let refused = refused.expect("the sandbox was never refused");
    match common::prodbox_error(&refused) {
        SandboxDbError::ProductionExposed { findings, .. } => assert!(
            findings
                .iter()
                .any(|f| f.contains("depends on") && f.contains("orders")),
            "{findings:?}"
        ),
        other => panic!("refused for something else: {other}"),
    }
    assert!(blocked.is_err(), "the view did not block production's DDL");
    dropped.expect("the sandbox dropped");
    migrated.expect("production's DDL ran once the sandbox was dropped");
}

/// A session that keeps running short statements while it holds a session advisory lock is
/// ended once it has held it past the bound, as an idle one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_holding_an_advisory_lock_is_ended_past_the_bound() {
    let db = production(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .statement_bound(Duration::from_secs(1))
        .build();
    let key = unique_key("busy");
    let mut conn = async { pool.acquire().await }
        .in_sandbox(sandbox(&key))
        .await
        .unwrap();
    async {
        sqlx::query("SELECT pg_advisory_lock(44)")
            .execute(&mut *conn)
            .await
    }
    .in_sandbox(sandbox(&key))
    .await
    .unwrap();
    // Production wants the lock while the sandbox's session keeps busy for up to 30 s.
    let production = {
        let prod = db.pool().clone();
        tokio::spawn(async move {
            sqlx::query("SELECT pg_advisory_lock(44)")
                .execute(&prod)
                .await
                .map(drop)
        })
    };
    let mut busy = Ok(());
    for _ in 0..150 {
        busy = async {
            sqlx::query("SELECT pg_sleep(0.2)")
                .execute(&mut *conn)
                .await
        }
        .in_sandbox(sandbox(&key))
        .await
        .map(drop);
        if busy.is_err() {
            break;
        }
    }
    let taken = tokio::time::timeout(Duration::from_secs(30), production).await;
    drop(conn);
    let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
    db.cleanup().await;
    assert!(
        busy.is_err(),
        "the busy session holding the lock ran its whole course"
    );
    taken
        .expect("production never got the lock")
        .unwrap()
        .unwrap();
}

/// Provisioning, migrations included, takes no advisory lock as the sandbox's role: it works
/// where the operator revoked advisory locks from PUBLIC (and a sandbox holding sqlx's
/// migration lock stalls nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_works_without_advisory_locks() {
    let db = production(2).await;
    admin(
        &db,
        "REVOKE EXECUTE ON FUNCTION pg_advisory_lock(bigint), pg_advisory_unlock(bigint),
                pg_try_advisory_lock(bigint), pg_advisory_xact_lock(bigint) FROM PUBLIC",
    )
    .await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("noadv");
    let provisioned = in_sandbox(&pool, &key, "INSERT INTO orders (item) VALUES ('s')").await;
    let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
    db.cleanup().await;
    provisioned.expect("provisioning needed an advisory lock");
}

/// Settings a sandbox gives its own role for this database (`ALTER ROLE .. IN DATABASE ..
/// SET`, which outranks the role's own settings) do not reach its later sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_a_sandbox_gives_its_role_do_not_reach_its_sessions() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("sets");
    in_sandbox(
        &pool,
        &key,
        &format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {} SET search_path = public;
             ALTER ROLE CURRENT_USER IN DATABASE {} SET statement_timeout = 0;
             ALTER ROLE CURRENT_USER SET work_mem = '1GB'",
            quote(db.name()),
            quote(db.name())
        ),
    )
    .await
    .expect("a role may set its own defaults");
    // Another process opens the sandbox's pool: its sessions start as a sandbox's must.
    let other = sandbox_pool(&db).await;
    let seen: (String, String) = sqlx::query_as(
        "SELECT current_setting('search_path'), current_setting('statement_timeout')",
    )
    .fetch_one(&other)
    .in_sandbox(sandbox(&key))
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
         WHERE r.rolname = $1",
    )
    .bind(role_of(&db, &key))
    .fetch_one(db.pool())
    .await
    .unwrap();
    let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
    db.cleanup().await;
    assert_eq!(seen.0, schema_of(&key));
    assert_ne!(seen.1, "0");
    // Only the role's own settings (search path and bounds), none per database.
    assert_eq!(left, 1, "settings per database left on the role");
}

/// A role granted to a sandbox's role (by mistake, or by a production role with ADMIN) would
/// let it `SET ROLE` to it: the grant is taken back, and until then the sandbox is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_granted_to_a_sandbox_role_are_taken_back() {
    let db = production(2).await;
    let reader = format!("prod_reader_{}", prodbox_testkit::pg::run_id());
    admin(&db, &format!("DROP ROLE IF EXISTS {reader}")).await;
    admin(&db, &format!("CREATE ROLE {reader} NOLOGIN")).await;
    admin(&db, &format!("GRANT SELECT ON orders TO {reader}")).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("memb");
    in_sandbox(&pool, &key, "SELECT 1")
        .await
        .expect("provision");
    admin(
        &db,
        &format!("GRANT {reader} TO {}", quote(&role_of(&db, &key))),
    )
    .await;
    // Another process opens the sandbox's pool: the membership is gone.
    let other = sandbox_pool(&db).await;
    let read = in_sandbox(
        &other,
        &key,
        &format!("SET ROLE {reader}; SELECT * FROM public.orders"),
    )
    .await;
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
         WHERE r.rolname = $1",
    )
    .bind(role_of(&db, &key))
    .fetch_one(db.pool())
    .await
    .unwrap();
    let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
    db.cleanup().await;
    let mut admin_conn = prodbox_testkit::pg::admin_connection().await;
    let _ = admin_conn
        .execute(AssertSqlSafe(format!("DROP ROLE IF EXISTS {reader}")))
        .await;
    assert!(read.is_err(), "the sandbox read production as {reader}");
    assert_eq!(members, 0, "the membership stayed");
}

/// What one sandbox grants to PUBLIC in its own schema (a table, a SECURITY DEFINER
/// function) is no production exposure of the others: they are not refused for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sandboxs_grants_do_not_refuse_a_sandbox() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let (noisy, quiet) = (unique_key("noisy"), unique_key("quiet"));
    in_sandbox(
        &pool,
        &noisy,
        "GRANT SELECT ON orders TO PUBLIC;
         CREATE FUNCTION leak() RETURNS bigint LANGUAGE sql SECURITY DEFINER
             AS 'SELECT count(*) FROM orders';
         GRANT EXECUTE ON FUNCTION leak() TO PUBLIC",
    )
    .await
    .expect("a sandbox may share its own objects");
    let used = in_sandbox(&pool, &quiet, "SELECT count(*) FROM orders").await;
    let _ = pool.drop_sandbox(&common::parse_key(&noisy)).await;
    let _ = pool.drop_sandbox(&common::parse_key(&quiet)).await;
    db.cleanup().await;
    used.expect("a sandbox was refused for another sandbox's grants");
}

/// A process whose directory still holds a sandbox's earlier incarnation (it was deleted and
/// made again, and this process has not heard yet) never drops the newer one's schema: it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_incarnation_never_drops_a_newer_one() {
    let db = production(2).await;
    let key = unique_key("older");
    let created = SystemTime::now();
    let older = Sandbox::builder(&key).unwrap().created_at(created).build();
    let newer = Sandbox::builder(&key)
        .unwrap()
        .created_at(created + Duration::from_secs(60))
        .build();
    let (current, behind) = (sandbox_pool(&db).await, sandbox_pool(&db).await);
    sqlx::query("INSERT INTO orders (item) VALUES ('newer')")
        .execute(&current)
        .in_sandbox(newer.clone())
        .await
        .unwrap();
    let stale = sqlx::query("SELECT 1")
        .execute(&behind)
        .in_sandbox(older)
        .await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT item FROM orders")
        .fetch_all(&sandbox_pool(&db).await)
        .in_sandbox(newer.clone())
        .await
        .unwrap();
    let _ = current.drop_sandbox(newer.key()).await;
    db.cleanup().await;
    assert!(
        matches!(
            common::prodbox_error(&stale.expect_err("the older incarnation was served")),
            SandboxDbError::StaleIncarnation { .. }
        ),
        "refused, typed"
    );
    assert_eq!(kept, ["newer"], "the newer incarnation's rows went");
}

/// A sandbox with more objects than one transaction can lock (here 8,000 tables: `DROP
/// SCHEMA .. CASCADE` runs out of shared memory) is dropped all the same, and one sandbox that
/// cannot be dropped does not keep the janitor from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_drops_a_huge_sandbox_and_goes_on_past_a_failure() {
    let db = production(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .default_ttl(Duration::from_secs(3600))
        .build();
    let (huge, small) = (unique_key("huge"), unique_key("small"));
    for chunk in 0..32 {
        in_sandbox(
            &pool,
            &huge,
            &format!(
                "DO $$ BEGIN FOR i IN {}..{} LOOP
                     EXECUTE format('CREATE TABLE t%s (id int)', i);
                 END LOOP; END $$",
                chunk * 250,
                chunk * 250 + 249
            ),
        )
        .await
        .expect("tables made, 250 at a time");
    }
    in_sandbox(&pool, &small, "SELECT 1")
        .await
        .expect("provision");
    let later = SystemTime::now() + Duration::from_secs(7200);
    let dropped = pool.drop_expired(later).await;
    let huge_left = schema_exists(db.pool(), &schema_of(&huge)).await;
    let small_left = schema_exists(db.pool(), &schema_of(&small)).await;
    db.cleanup().await;
    let dropped = dropped.expect("the janitor's listing");
    assert!(!small_left, "the small sandbox was not dropped");
    assert!(!huge_left, "the huge sandbox was not dropped ({dropped:?})");
}
