//! Hostile SQL run by a sandboxed request, one statement per call, on a production database
//! as prodbox requires it (nothing granted to `PUBLIC`), next to another sandbox. After every
//! statement, production (rows, sequence, objects, large objects, roles) and the other sandbox
//! are compared with what they were: no row of the table may show a change. The printed table
//! is the one in docs/SECURITY.md (`cargo test -p prodbox-db --test hostile_sql -- --nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{migrator, sandbox, schema_of};
use prodbox_core::{FutureExt, Sandbox};
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::pg::{TestDatabase, require_postgres, unique_key};
use sqlx::{AssertSqlSafe, Executor, PgPool};

/// Everything of production and of sandbox B that a statement could change.
async fn fingerprint(admin: &PgPool, b_schema: &str) -> String {
    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(id || ':' || item || ':' || amount, ',' ORDER BY id) FROM public.orders),
            (SELECT last_value::text FROM public.orders_id_seq),
            (SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' ||
                               coalesce(c.relacl::text, ''), ',' ORDER BY 1)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
               AND n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE 'pg\\_toast%'
               AND (n.nspname NOT LIKE 'sbx\\_%' OR n.nspname = '{b_schema}')),
            (SELECT string_agg(nspname || ':' || coalesce(nspacl::text, ''), ',' ORDER BY 1)
             FROM pg_namespace WHERE nspname NOT LIKE 'sbx\\_%' OR nspname = '{b_schema}'),
            (SELECT string_agg(p.oid::regprocedure::text || ':' || md5(p.prosrc), ',' ORDER BY 1)
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND (n.nspname NOT LIKE 'sbx\\_%' OR n.nspname = '{b_schema}')),
            (SELECT string_agg(tgname, ',' ORDER BY 1) FROM pg_trigger WHERE NOT tgisinternal),
            (SELECT string_agg(m.oid || ':' || md5(lo_get(m.oid)), ',' ORDER BY 1)
             FROM pg_largeobject_metadata m JOIN pg_roles r ON r.oid = m.lomowner
             WHERE r.rolname NOT LIKE 'sbxr\\_%'),
            (SELECT string_agg(rolname || ':' || rolsuper || rolcreaterole || rolcreatedb ||
                               rolbypassrls, ',' ORDER BY 1)
             FROM pg_roles WHERE rolname NOT LIKE 'sbxr\\_%'),
            (SELECT string_agg(key || ':' || disabled, ',' ORDER BY 1) FROM prodbox.sandboxes),
            (SELECT string_agg(key || ':' || role_name, ',' ORDER BY 1)
             FROM prodbox.sandbox_schemas),
            (SELECT string_agg(id || ':' || item, ',' ORDER BY id) FROM {b_schema}.orders),
            (SELECT string_agg(coalesce(setconfig::text, ''), ',')
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
             WHERE d.datname = current_database())
        )"
    )))
    .fetch_one(admin)
    .await
    .unwrap()
}

/// What a statement is expected to come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Refused,
    Allowed,
}

/// What it came to: refused (with prodbox's reason or Postgres's SQLSTATE and message) or
/// allowed.
fn outcome(result: &Result<(), sqlx::Error>) -> (Expect, String) {
    match result {
        Ok(()) => (Expect::Allowed, "allowed".to_owned()),
        Err(error) => {
            let text = match SandboxDbError::of(error) {
                Some(SandboxDbError::ProductionAccessRefused { message, .. }) => {
                    format!("`db_production_access_refused` ({message})")
                }
                Some(refusal) => format!("`{}`", refusal.reason()),
                None => match error.as_database_error() {
                    Some(db) => format!(
                        "{} {}",
                        db.code().unwrap_or_default(),
                        db.message().replace('|', "/")
                    ),
                    None => error.to_string(),
                },
            };
            (Expect::Refused, format!("refused: {text}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_from_a_sandbox_changes_neither_production_nor_another_sandbox() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    migrator("orders").await.run(db.pool()).await.unwrap();
    let production_lo: i64 = {
        db.pool()
            .execute(
                "INSERT INTO orders (item, amount) VALUES ('p1', 10), ('p2', 20);
                 CREATE FUNCTION public.report() RETURNS bigint LANGUAGE sql
                     AS 'SELECT count(*) FROM public.orders';
                 CREATE FUNCTION public.answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
                 CREATE TABLE public.customers (id int, card text);
                 INSERT INTO public.customers VALUES (1, '4111-1111');",
            )
            .await
            .unwrap();
        sqlx::query_scalar("SELECT lo_from_bytea(0, 'production secret')::bigint")
            .fetch_one(db.pool())
            .await
            .unwrap()
    };
    prodbox_db::directory::ensure_table(db.pool())
        .await
        .unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .connections_per_sandbox(1)
        .build();
    let (a, b): (Sandbox, Sandbox) = (sandbox(&unique_key("hsa")), sandbox(&unique_key("hsb")));
    for sb in [&a, &b] {
        sqlx::query("INSERT INTO orders (item) VALUES ('own')")
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .unwrap();
    }
    let b_schema = schema_of(b.key().as_str());
    let login: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(db.pool())
        .await
        .unwrap();

    use Expect::{Allowed, Refused};
    let b_orders = format!("{b_schema}.orders");
    #[rustfmt::skip]
    let statements: Vec<(&str, String, Expect)> = vec![
        ("write production", "INSERT INTO public.orders (item) VALUES ('leak')".into(), Refused),
        ("write production", "UPDATE public.orders SET amount = 0".into(), Refused),
        ("write production", "DELETE FROM public.orders".into(), Refused),
        ("write production", "TRUNCATE public.orders".into(), Refused),
        ("read production", "SELECT * FROM public.customers".into(), Refused),
        ("read production", "CREATE TABLE stolen AS SELECT * FROM public.customers".into(), Refused),
        ("read production", "SELECT * FROM public.orders FOR UPDATE".into(), Refused),
        ("read production", "SELECT public.report()".into(), Refused),
        ("COPY", "COPY public.customers TO '/tmp/prodbox-stolen'".into(), Refused),
        ("COPY", "COPY public.orders FROM PROGRAM 'true'".into(), Refused),
        ("sequence", "SELECT nextval('public.orders_id_seq')".into(), Refused),
        ("sequence", "SELECT setval('public.orders_id_seq', 1000000)".into(), Refused),
        ("DDL on production", "ALTER TABLE public.orders ADD COLUMN planted int".into(), Refused),
        ("DDL on production", "DROP TABLE public.orders".into(), Refused),
        ("DDL on production", "CREATE INDEX ON public.orders (amount)".into(), Refused),
        ("DDL on production", "COMMENT ON TABLE public.orders IS 'owned'".into(), Refused),
        ("DDL on production", "DO $$ BEGIN LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE; END $$".into(), Refused),
        ("trigger on production", "CREATE FUNCTION spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; CREATE TRIGGER spy BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION spy()".into(), Refused),
        ("grants", "GRANT SELECT ON public.customers TO PUBLIC".into(), Refused),
        ("grants", "ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT ON TABLES TO PUBLIC".into(), Refused),
        ("CREATE on production schemas", "CREATE TABLE public.planted (id int)".into(), Refused),
        ("CREATE on production schemas", "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT 1::text'".into(), Refused),
        ("CREATE on the database", format!("CREATE SCHEMA {login}"), Refused),
        ("CREATE on the database", "CREATE EXTENSION IF NOT EXISTS dblink".into(), Refused),
        ("leave the role", "RESET ROLE; INSERT INTO public.orders (item) VALUES ('reset')".into(), Refused),
        ("leave the role", format!("SET ROLE {login}"), Refused),
        ("leave the role", format!("SET SESSION AUTHORIZATION {login}"), Refused),
        ("leave the role", "SET ROLE pg_read_all_data".into(), Refused),
        ("leave the role", format!("GRANT {login} TO CURRENT_USER"), Refused),
        ("ALTER ROLE on itself", "ALTER ROLE CURRENT_USER SUPERUSER".into(), Refused),
        ("ALTER ROLE on itself", "ALTER ROLE CURRENT_USER CREATEROLE BYPASSRLS".into(), Refused),
        ("ALTER ROLE on itself", "ALTER ROLE CURRENT_USER CONNECTION LIMIT -1".into(), Refused),
        ("ALTER ROLE on itself", "ALTER ROLE CURRENT_USER SET search_path = public".into(), Allowed),
        ("depend on production", "CREATE VIEW spy AS SELECT item FROM public.orders".into(), Refused),
        ("depend on production", "CREATE MATERIALIZED VIEW spy AS SELECT item FROM public.orders WITH NO DATA".into(), Refused),
        ("depend on production", "CREATE TEMP VIEW spy AS SELECT item FROM public.orders".into(), Refused),
        ("depend on production", "CREATE TABLE pinned (o public.orders)".into(), Refused),
        ("depend on production", "CREATE FUNCTION pinned() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM public.orders; END".into(), Refused),
        ("depend on production", "CREATE TABLE pinned (n int DEFAULT public.answer())".into(), Refused),
        ("DO blocks", "DO $$ BEGIN DELETE FROM public.orders; END $$".into(), Refused),
        ("DO blocks", "DO $$ BEGIN EXECUTE 'TRUNCATE public.customers'; END $$".into(), Refused),
        ("superuser settings", "SET session_replication_role = replica".into(), Refused),
        ("superuser settings", "SET lo_compat_privileges = on".into(), Refused),
        ("superuser settings", "ALTER SYSTEM SET lo_compat_privileges = on".into(), Refused),
        ("server files", "SELECT pg_read_file('/etc/passwd')".into(), Refused),
        ("other sessions", format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{login}'"), Refused),
        ("large objects", format!("SELECT lo_get({production_lo})"), Refused),
        ("large objects", format!("SELECT lo_put({production_lo}, 0, 'x')"), Refused),
        ("large objects", format!("SELECT lo_unlink({production_lo})"), Refused),
        ("large objects", "SELECT lo_create(0)".into(), Allowed),
        ("prodbox's catalogue", "SELECT role_password FROM prodbox.sandbox_schemas".into(), Refused),
        ("prodbox's catalogue", "UPDATE prodbox.sandboxes SET disabled = false".into(), Refused),
        ("prodbox's catalogue", "INSERT INTO prodbox.provisioning VALUES ('x')".into(), Refused),
        ("system catalogue", "SELECT rolpassword FROM pg_authid".into(), Refused),
        ("system catalogue", "UPDATE pg_catalog.pg_class SET relname = 'x' WHERE relname = 'orders'".into(), Refused),
        ("system catalogue", "SELECT count(*) FROM pg_class".into(), Allowed),
        ("system catalogue", "SELECT prosrc FROM pg_proc WHERE proname = 'report'".into(), Allowed),
        ("another sandbox", format!("SELECT * FROM {b_orders}"), Refused),
        ("another sandbox", format!("INSERT INTO {b_orders} (item) VALUES ('from a')"), Refused),
        ("another sandbox", format!("DROP SCHEMA {b_schema} CASCADE"), Refused),
        ("another sandbox", format!("SET search_path TO {b_schema}; DELETE FROM orders"), Refused),
        ("NOTIFY", "SELECT pg_notify('prodbox_directory', '*')".into(), Allowed),
        ("NOTIFY", "NOTIFY production_events, 'spoofed'".into(), Allowed),
        ("advisory locks", "SELECT pg_advisory_xact_lock(42)".into(), Allowed),
        ("own schema", "CREATE TABLE scratch (id int); DROP TABLE scratch".into(), Allowed),
    ];

    let mut table = String::from("| kind | statement | outcome |\n|---|---|---|\n");
    let mut wrong = Vec::new();
    for (kind, sql, expect) in &statements {
        let before = fingerprint(db.pool(), &b_schema).await;
        let result = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .in_sandbox(a.clone())
            .await
            .map(drop);
        let after = fingerprint(db.pool(), &b_schema).await;
        let (got, text) = outcome(&result);
        let changed = before != after;
        table.push_str(&format!(
            "| {kind} | `{}` | {text}{} |\n",
            sql.replace('|', "/"),
            if changed { " **CHANGED**" } else { "" }
        ));
        if changed {
            wrong.push(format!(
                "{sql}: changed production or sandbox B:\n  {before}\n  {after}"
            ));
        }
        if got != *expect {
            wrong.push(format!("{sql}: expected {expect:?}, got {text}"));
        }
    }
    println!("{table}");
    println!("{} statements", statements.len());
    for sb in [&a, &b] {
        pool.drop_sandbox(sb.key()).await.unwrap();
    }
    db.cleanup().await;
    assert!(statements.len() >= 40);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
