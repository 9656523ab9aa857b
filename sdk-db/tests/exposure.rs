//! Production databases as they are really configured: grants to `PUBLIC` (which every sandbox
//! role is a member of, like every role) that give a sandbox a way into production. For each,
//! the attack a sandboxed request makes through it, and what must happen: the sandbox is
//! refused (typed, audited) and production is unchanged. Also when the grant is added while the
//! sandbox lives.

#![allow(clippy::unwrap_used)]

mod common;

use common::{migrator, orders_in, production, sandbox};
use prodbox_core::FutureExt;
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::AuditLog;
use prodbox_testkit::pg::{TestDatabase, schema_exists, unique_key};
use sqlx::{AssertSqlSafe, Executor};

/// What production looks like: its rows, its sequence, its schemas and functions.
async fn state(db: &TestDatabase) -> (Vec<(i64, String)>, i64, Vec<i32>, Vec<String>) {
    let amounts: Vec<i32> = sqlx::query_scalar("SELECT amount FROM public.orders ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let sequence: i64 = sqlx::query_scalar("SELECT last_value FROM public.orders_id_seq")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let objects: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT LIKE 'sbx\\_%' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'prodbox')
         UNION ALL
         SELECT 'schema ' || nspname FROM pg_namespace
         WHERE nspname NOT LIKE 'sbx\\_%' AND nspname <> 'prodbox'
         UNION ALL
         SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
         ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    (
        orders_in(db.pool(), "public").await,
        sequence,
        amounts,
        objects,
    )
}

/// One grant and the attack that uses it.
struct Exposure {
    name: &'static str,
    grant: &'static str,
    attack: &'static str,
}

const EXPOSURES: &[Exposure] = &[
    Exposure {
        name: "column UPDATE granted to PUBLIC",
        grant: "GRANT UPDATE (amount) ON public.orders TO PUBLIC",
        attack: "UPDATE public.orders SET amount = 0",
    },
    Exposure {
        name: "a sequence granted to PUBLIC",
        grant: "GRANT USAGE, UPDATE ON SEQUENCE public.orders_id_seq TO PUBLIC",
        attack: "SELECT setval('public.orders_id_seq', 1000000)",
    },
    Exposure {
        name: "SELECT granted to PUBLIC",
        grant: "GRANT SELECT ON public.orders TO PUBLIC",
        attack: "CREATE TABLE stolen AS SELECT * FROM public.orders",
    },
    Exposure {
        name: "column SELECT granted to PUBLIC",
        grant: "GRANT SELECT (item) ON public.orders TO PUBLIC",
        attack: "CREATE TABLE stolen AS SELECT item FROM public.orders",
    },
    Exposure {
        name: "TRIGGER granted to PUBLIC",
        grant: "GRANT TRIGGER ON public.orders TO PUBLIC",
        attack: "CREATE FUNCTION spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
                 CREATE TRIGGER spy BEFORE INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION spy()",
    },
    Exposure {
        name: "CREATE on the public schema granted to PUBLIC (the default before PostgreSQL 15)",
        grant: "GRANT CREATE ON SCHEMA public TO PUBLIC",
        attack: "CREATE TABLE public.planted (id int)",
    },
    Exposure {
        name: "CREATE on the database granted to PUBLIC",
        grant: "DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO PUBLIC', current_database()); END $$",
        // Production's search path starts with "$user": a schema named after its login
        // shadows `public` for every unqualified name production uses.
        attack: "CREATE SCHEMA postgres; CREATE TABLE postgres.orders (id bigint, item text, amount int)",
    },
    Exposure {
        name: "a SECURITY DEFINER function executable by PUBLIC (the default for functions)",
        grant: "CREATE FUNCTION public.wipe() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM public.orders'",
        attack: "SELECT public.wipe()",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_exposes_production_refuses_the_sandbox() {
    let audit = AuditLog::global();
    let mut wrong = Vec::new();
    let mut table =
        String::from("| grant on production | the sandbox's attack | outcome |\n|---|---|---|\n");
    for exposure in EXPOSURES {
        let db = production(3).await;
        db.pool().execute(exposure.grant).await.unwrap();
        let before = state(&db).await;
        let pool = SandboxPool::builder(db.pool().clone())
            .migrations(migrator("orders").await)
            .build();
        let key = unique_key("exp");
        let result = sqlx::raw_sql(AssertSqlSafe(exposure.attack))
            .execute(&pool)
            .in_sandbox(sandbox(&key))
            .await;
        let reason = result
            .as_ref()
            .err()
            .and_then(SandboxDbError::of)
            .map(SandboxDbError::reason);
        table.push_str(&format!(
            "| {} (`{}`) | `{}` | {} |\n",
            exposure.name,
            exposure.grant.replace('|', "/"),
            exposure
                .attack
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            match &result {
                Err(error) => match SandboxDbError::of(error) {
                    Some(SandboxDbError::ProductionExposed { findings, .. }) => format!(
                        "sandbox refused: `db_production_exposed` ({})",
                        findings.join("; ").replace(db.name(), "<database>")
                    ),
                    _ => format!("refused: {error}"),
                },
                Ok(_) => "**ran**".to_owned(),
            }
        ));
        if reason != Some("db_production_exposed") {
            wrong.push(format!("{}: {result:?}", exposure.name));
        }
        let after = state(&db).await;
        if after != before {
            wrong.push(format!(
                "{}: production changed: {before:?} -> {after:?}",
                exposure.name
            ));
        }
        // Refused before anything was made, and audited.
        if schema_exists(db.pool(), &common::schema_of(&key)).await {
            wrong.push(format!("{}: the sandbox schema was kept", exposure.name));
        }
        let audited = audit
            .matching("sandbox", &key)
            .iter()
            .any(|r| r.get("reason").map(String::as_str) == Some("db_production_exposed"));
        if !audited {
            wrong.push(format!("{}: not audited", exposure.name));
        }
        let _ = pool.drop_sandbox(&common::parse_key(&key)).await;
        db.cleanup().await;
    }
    println!("{table}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_added_while_the_sandbox_lives_refuses_it_from_the_next_pool_on() {
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("late");
    let sb = sandbox(&key);
    sqlx::query("INSERT INTO orders (item) VALUES ('own')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();

    // A later production migration grants what it should not.
    db.pool()
        .execute("GRANT SELECT ON public.orders TO PUBLIC")
        .await
        .unwrap();
    // Another process (or this one after a restart) opens the sandbox's pool: refused.
    let other = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let read: Result<Vec<String>, _> = sqlx::query_scalar("SELECT item FROM public.orders")
        .fetch_all(&other)
        .in_sandbox(sb.clone())
        .await;
    let reason = read
        .as_ref()
        .err()
        .and_then(SandboxDbError::of)
        .map(SandboxDbError::reason);
    let _ = pool.drop_sandbox(sb.key()).await;
    db.cleanup().await;
    assert_eq!(reason, Some("db_production_exposed"), "{read:?}");
}
