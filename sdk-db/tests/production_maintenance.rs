//! What production's own routine work meets of a sandbox living in its database: `ANALYZE`
//! (and autovacuum, `REINDEX`, `CLUSTER`) evaluating a sandbox's index expressions, a restored
//! dump evaluating its constraints, the janitor dropping it, and `DROP ROLE` on production's
//! roles. None of it may run a sandbox's code or be blocked by a sandbox (a hostile review's
//! findings; each doc comment says why and how bad).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    admin, assert_access_refused, assert_exposed, in_sandbox, migrator, parse_key, production,
    role_of, sandbox_pool,
};
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, quote, schema_exists, unique_key};
use sqlx::{AssertSqlSafe, Executor};

/// A sandbox's DDL that production's own work would run the code of: refused as it runs (the
/// event trigger, typed and audited), or made (then what follows must still hold).
/// Returns whether it was made.
fn refused_or_made(made: Result<(), sqlx::Error>, what: &str) -> bool {
    let Err(error) = made else {
        return true;
    };
    assert_access_refused(&error, what);
    false
}

/// HIGH (shared server state, unbounded; production's sessions). A sandbox may index its own
/// table on an expression calling its own function (the event trigger and the exposure check
/// see only dependencies on its own schema). `ANALYZE` evaluates index expressions (and
/// extended statistics on expressions) for its sample rows, in whatever session runs it:
/// autovacuum's workers (on by default in every production cluster, and triggered by the
/// sandbox itself inserting rows), or production's own maintenance (`ANALYZE`, `vacuumdb
/// --analyze`, `VACUUM FULL`, `REINDEX`, `CLUSTER`). PostgreSQL runs the function as the table's
/// owner (the sandbox role) in a security-restricted operation, but:
///
/// - it runs in production's session, not one of the sandbox's registered backends, with
///   `statement_timeout` 0 (autovacuum and maintenance set it so): the watchdog never sees it,
///   and the statement bound does not hold. A `pg_sleep` loop keeps an autovacuum worker (3 in
///   all by default) busy forever, and keeps `ANALYZE`'s snapshot, holding back the xmin
///   horizon of the whole cluster: production's dead tuples are never vacuumed again;
/// - a session-level advisory lock it takes stays with *production's* session after
///   `ANALYZE` returns (production's job-queue key, sqlx's migration lock), where no watchdog
///   ends it ("advisory locks: the watchdog ends a sandbox session holding one");
/// - a manual `ANALYZE` stuck in it holds its lock on the sandbox's table: the janitor's `DROP`
///   (no lock timeout) waits behind it, and with it every later drop.
///
/// Fix: refuse, in the event trigger and the exposure check, indexes (expressions and
/// predicates, exclusion constraints), extended statistics and partition keys whose
/// expressions depend on any function, operator, domain or cast that is not the system's
/// (only built-in immutable functions may appear there); document that production's
/// maintenance otherwise runs sandbox code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_analyze_never_runs_a_sandboxs_code_in_productions_session() {
    let db = production(2).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .statement_bound(Duration::from_secs(2))
        .build();
    let key = unique_key("r9an");
    let made = in_sandbox(
        &pool,
        &key,
        "CREATE TABLE ran (who text, timeout text, pid int);
         CREATE FUNCTION note() RETURNS void LANGUAGE plpgsql VOLATILE
             SET search_path FROM CURRENT AS $$
         BEGIN
             -- Outside the sandbox's own sessions only: production's job-queue lock, kept.
             IF session_user <> current_user THEN
                 PERFORM pg_advisory_lock(4242);
             END IF;
             INSERT INTO ran VALUES (session_user, current_setting('statement_timeout'),
                                     pg_backend_pid());
         END $$;
         CREATE FUNCTION trap(int) RETURNS int LANGUAGE plpgsql IMMUTABLE
             SET search_path FROM CURRENT AS $$
         BEGIN
             PERFORM note();
             RETURN $1;
         END $$;
         CREATE TABLE bait (n int);
         INSERT INTO bait SELECT 1;
         CREATE INDEX bait_trap ON bait (trap(n));
         DELETE FROM ran;",
    )
    .await;
    let made = refused_or_made(made, "an index on the sandbox's own function");

    // Production's routine maintenance (what autovacuum and `vacuumdb --analyze` run), on a
    // connection of its own that goes on serving production afterwards.
    let mut maintenance = db.admin().await;
    let started = Instant::now();
    maintenance.execute("ANALYZE").await.expect("ANALYZE");
    let analyze_took = started.elapsed();
    let production_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut maintenance)
        .await
        .unwrap();
    // Longer than the statement bound: a watchdog would have acted by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let locks_held_by_production: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
    )
    .bind(production_pid)
    .fetch_one(db.pool())
    .await
    .unwrap();
    // Refused as one statement batch, nothing of it was made: nothing could run.
    let runs: Vec<(String, String, i32)> = if made {
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT who, timeout, pid FROM {}.ran",
            quote(&common::schema_of(&key))
        )))
        .fetch_all(db.pool())
        .await
        .unwrap()
    } else {
        Vec::new()
    };
    let role = role_of(&db, &key);
    let outside: Vec<&(String, String, i32)> =
        runs.iter().filter(|(who, _, _)| *who != role).collect();
    let _ = sqlx::Connection::close(maintenance).await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    eprintln!(
        "ANALYZE took {analyze_took:?}; the sandbox's code ran in: {runs:?}; advisory locks \
         production's session {production_pid} still holds: {locks_held_by_production}"
    );
    assert!(
        outside.is_empty(),
        "production's ANALYZE ran the sandbox's own function in production's session \
         (session_user, statement_timeout, pid): {outside:?}"
    );
    assert_eq!(
        locks_held_by_production, 0,
        "the sandbox's code left production's session holding an advisory lock, past the bound"
    );
}

/// MEDIUM (a sandbox outlives its expiry and deletion; also a plain bug for services whose
/// migrations use identity columns or range types). The janitor drops a schema's objects in
/// batches, one statement per kind (`DROP SEQUENCE .. CASCADE`, `DROP TABLE ..`, `DROP ROUTINE
/// ..`), each in the order the aggregate happens to produce. An object that another one of the
/// schema *requires* (an internal dependency) cannot be dropped on its own, even with
/// `CASCADE`: the sequence of an identity column (`cannot drop sequence .. because column id of
/// table .. requires it`), the constructor functions of a range type (`cannot drop function
/// r(integer,integer) because type r requires it`). The batch fails, `drop_objects` returns the
/// error, and so does every later try: `drop_sandbox`, `prodbox db drop` and the janitor fail
/// forever (`DropReport::failed`), the schema, its data and its role stay, and a new
/// incarnation of the key (which drops the old schema first) can never be provisioned.
/// One `CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY)` from a sandbox is enough.
///
/// Fix: leave out of the batches what has an internal (`'i'`) dependency on another object
/// (`pg_depend.deptype = 'i'`: identity sequences, range constructors, ...), which goes with
/// its owner; or drop relations and types before routines and sequences; and test every kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_make_itself_undroppable() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let cases = [
        (
            "identity column",
            "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY, x text)",
        ),
        ("range type", "CREATE TYPE r AS RANGE (subtype = int)"),
    ];
    let mut failures = Vec::new();
    for (what, sql) in cases {
        let key = unique_key("r9dr");
        in_sandbox(&pool, &key, sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let dropped = pool.drop_sandbox(&parse_key(&key)).await;
        let schema_left = schema_exists(db.pool(), &common::schema_of(&key)).await;
        eprintln!("{what}: drop_sandbox: {dropped:?}; schema left: {schema_left}");
        if dropped.is_err() || schema_left {
            failures.push(format!("{what}: {dropped:?}"));
            // Clean up by hand for the test database's cleanup.
            let _ = db
                .pool()
                .execute(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote(&common::schema_of(&key))
                )))
                .await;
        }
    }
    db.cleanup().await;
    assert!(
        failures.is_empty(),
        "a sandbox made objects that its drop cannot drop: {failures:?}"
    );
}

/// HIGH (runs a sandbox's code as the superuser, in the conditions of routine operations). The
/// sandbox's schema lives in production's database, so every `pg_dump` of that database (a
/// backup, a copy for staging, a move to another server) holds it. A dump makes a table's
/// `CHECK` constraints with the table (before the data) and loads rows with `COPY`, as
/// whoever restores it, usually a superuser: a `CHECK` (likewise a domain's, or a stored
/// generated column's expression) calling the sandbox's own function runs that function as the
/// superuser, no security-restricted operation, no `SECURITY DEFINER` needed. Here it plants
/// a table in `public` (it may as well `ALTER ROLE <its role> SUPERUSER`, which the restored
/// database's cluster shares, `COPY .. TO PROGRAM`, or read every row restored before it).
/// Neither the event trigger nor the exposure check looks at what a sandbox's objects call
/// of its own.
///
/// Fix: refuse (event trigger and exposure check) constraints, domains, defaults and generated
/// columns of a sandbox that call anything but the system's functions and operators; and
/// document that dumps of a database with sandboxes must leave them out (`pg_dump
/// --exclude-schema 'sbx_*'`) or be restored by no superuser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_dump_of_production_never_runs_a_sandboxs_code_as_the_superuser() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r9dump");
    let made = in_sandbox(
        &pool,
        &key,
        "CREATE FUNCTION fine(int) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             IF current_setting('is_superuser') = 'on' THEN
                 EXECUTE 'CREATE TABLE IF NOT EXISTS public.planted_by_a_sandbox (who text)';
                 EXECUTE 'INSERT INTO public.planted_by_a_sandbox VALUES (current_user)';
             END IF;
             RETURN true;
         END $$;
         CREATE TABLE guarded (n int CHECK (fine(n)));
         INSERT INTO guarded VALUES (1);",
    )
    .await;
    let _ = refused_or_made(made, "a CHECK calling the sandbox's own function");
    let copy = TestDatabase::create_with(2).await;
    let dump = std::process::Command::new("pg_dump")
        .arg(db.url())
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut restore = std::process::Command::new("psql")
        .args(["-q", "-X", copy.url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    {
        use std::io::Write;
        restore
            .stdin
            .take()
            .unwrap()
            .write_all(&dump.stdout)
            .expect("feed the dump");
    }
    restore.wait().expect("psql");
    let planted: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public.planted_by_a_sandbox')::text")
            .fetch_one(copy.pool())
            .await
            .unwrap();
    let by: Vec<String> = if planted.is_some() {
        sqlx::query_scalar("SELECT who FROM public.planted_by_a_sandbox")
            .fetch_all(copy.pool())
            .await
            .unwrap()
    } else {
        Vec::new()
    };
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    copy.cleanup().await;
    db.cleanup().await;
    assert!(
        planted.is_none(),
        "restoring a dump of production ran the sandbox's function as {by:?}: it planted \
         public.planted_by_a_sandbox"
    );
}

/// LOW (production's lasting state: its DDL on roles fails). The event trigger and the exposure
/// check read `pg_depend` only. A grant of a sandbox's own table to one of production's roles,
/// a policy naming one, or `ALTER DEFAULT PRIVILEGES .. TO` one records a *shared* dependency
/// (`pg_shdepend`): production's `DROP ROLE` then fails (`role .. cannot be dropped because some
/// objects depend on it: privileges for table sbx_...`) for as long as the sandbox lives, like
/// the dependencies the trigger refuses. (`DROP OWNED BY` in the database clears it.)
///
/// Fix: refuse, in the event trigger and the exposure check, a sandbox's grants, policies and
/// default privileges naming any role but its own, `PUBLIC` and other sandboxes' roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_keep_production_from_dropping_its_roles() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r9role");
    let production_role = format!("r9_reporting_{}", key.replace('-', "_"));
    admin(&db, &format!("CREATE ROLE {}", quote(&production_role))).await;
    let granted = in_sandbox(
        &pool,
        &key,
        &format!("GRANT SELECT ON orders TO {}", quote(&production_role)),
    )
    .await;
    let dropped = db
        .pool()
        .execute(AssertSqlSafe(format!(
            "DROP ROLE {}",
            quote(&production_role)
        )))
        .await
        .map(drop);
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    drop_role(&production_role).await;
    eprintln!("sandbox's grant: {granted:?}; production's DROP ROLE: {dropped:?}");
    dropped.expect("production's DROP ROLE failed because of a sandbox's grant");
}

/// Where provisioning is no superuser (no event trigger), the exposure check finds what the
/// trigger refuses: an index on the sandbox's own function and a grant to a production role
/// refuse the sandbox from the next pool a process opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_event_trigger_the_check_finds_code_production_would_run_and_foreign_grants() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let production_role = format!("r9_audit_{}", std::process::id());
    admin(&db, &format!("CREATE ROLE {}", quote(&production_role))).await;
    let mut found = Vec::new();
    for (what, sql) in [
        (
            "an index on its own function",
            "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
             CREATE TABLE t (n int); CREATE INDEX ON t (f(n))"
                .to_owned(),
        ),
        (
            "a grant to a production role",
            format!("GRANT SELECT ON orders TO {}", quote(&production_role)),
        ),
    ] {
        let key = unique_key("r9nt");
        in_sandbox(&pool, &key, "SELECT 1")
            .await
            .expect("provision");
        db.pool()
            .execute("DROP EVENT TRIGGER prodbox_sandbox_ddl_v1")
            .await
            .unwrap();
        in_sandbox(&pool, &key, &sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: made without a trigger: {e}"));
        // Another process opens the sandbox's pool: the check runs there.
        let opened = in_sandbox(&sandbox_pool(&db).await, &key, "SELECT 1").await;
        let _ = pool.drop_sandbox(&parse_key(&key)).await;
        found.push((what, opened));
    }
    db.cleanup().await;
    drop_role(&production_role).await;
    for (what, opened) in found {
        let error = opened.expect_err(what);
        assert_exposed(&error, what);
    }
}

/// Drops the cluster-wide role `name`, once its database is gone.
async fn drop_role(name: &str) {
    let mut admin = prodbox_testkit::pg::admin_connection().await;
    let _ = admin
        .execute(AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {}",
            quote(name)
        )))
        .await;
}

/// Every way to hang the sandbox's own code on what production's work evaluates is refused as
/// it is made (the event trigger), not only `CREATE INDEX` and `CREATE TABLE .. CHECK`: each
/// statement is tried in a sandbox that has a function of its own and a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_to_attach_a_sandboxs_code_to_what_production_evaluates_is_refused() {
    let db = production(2).await;
    let pool = sandbox_pool(&db).await;
    let key = unique_key("r9all");
    in_sandbox(
        &pool,
        &key,
        "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1';
         CREATE FUNCTION ok(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION diff(float8, float8) RETURNS float8 LANGUAGE sql IMMUTABLE
             AS 'SELECT $1 - $2';
         CREATE TABLE t (n int);
         CREATE DOMAIN d AS int;",
    )
    .await
    .expect("a function and a table of its own");
    let attempts = [
        "CREATE INDEX ON t (f(n))",
        "CREATE INDEX ON t (n) WHERE ok(n)",
        "ALTER TABLE t ADD CONSTRAINT c CHECK (ok(n))",
        "ALTER TABLE t ADD CONSTRAINT c CHECK (ok(n)) NOT VALID",
        "ALTER TABLE t ALTER COLUMN n SET DEFAULT f(1)",
        "ALTER TABLE t ADD COLUMN g int GENERATED ALWAYS AS (f(n)) STORED",
        "ALTER DOMAIN d ADD CONSTRAINT c CHECK (ok(VALUE))",
        "CREATE DOMAIN d2 AS int CHECK (ok(VALUE))",
        "CREATE STATISTICS s ON (f(n)), n FROM t",
        "CREATE TABLE p (n int) PARTITION BY RANGE (f(n))",
        "CREATE TYPE r AS RANGE (subtype = float8, subtype_diff = diff)",
        "CREATE TABLE x (n int, EXCLUDE USING btree (f(n) WITH =))",
        "CREATE MATERIALIZED VIEW m AS SELECT n FROM t; CREATE INDEX ON m (f(n))",
    ];
    let mut made = Vec::new();
    for sql in attempts {
        match in_sandbox(&pool, &key, sql).await {
            Ok(()) => made.push(sql),
            Err(error) => assert_access_refused(&error, sql),
        }
    }
    // `CREATE INDEX CONCURRENTLY` runs outside a transaction block, statement by statement.
    let concurrently = in_sandbox(&pool, &key, "CREATE INDEX CONCURRENTLY ci ON t (f(n))").await;
    let _ = pool.drop_sandbox(&parse_key(&key)).await;
    db.cleanup().await;
    assert!(made.is_empty(), "made: {made:?}");
    let error = concurrently.expect_err("CREATE INDEX CONCURRENTLY on its own function was made");
    assert_access_refused(&error, "CREATE INDEX CONCURRENTLY");
}
