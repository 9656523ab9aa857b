//! Fail closed: a sandbox can neither write nor read production tables, a sandbox whose role
//! could write production is refused, and a failed provisioning fails the call (never falling
//! back to production) and is retried by the next one.

mod common;

use std::time::Duration;

use common::{
    catalogue_rows, migrator, orders_in, prodbox_error, production, role_of, sandbox, schema_of,
};
use prodbox_core::FutureExt;
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::AuditLog;
use prodbox_testkit::pg::{TestDatabase, count_rows, role_exists, schema_exists, unique_key};
use sqlx::Executor;

async fn production_sequence(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM public.orders_id_seq")
        .fetch_one(db.pool())
        .await
        .expect("read the production sequence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_access_to_production_is_refused_and_audited() {
    let audit = AuditLog::global();
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("ref");
    let sb = sandbox(&key);
    // The sandbox works for its own tables.
    sqlx::query("INSERT INTO orders (item) VALUES ('own')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    let before = orders_in(db.pool(), "public").await;
    let sequence = production_sequence(&db).await;

    let statements = [
        "INSERT INTO public.orders (item) VALUES ('leak')",
        "UPDATE public.orders SET amount = 42",
        "DELETE FROM public.orders",
        "TRUNCATE public.orders",
        "SELECT * FROM public.orders",
        "SELECT nextval('public.orders_id_seq')",
        "CREATE TABLE public.planted (id int)",
        "INSERT INTO prodbox.sandbox_schemas (key, schema_name, role_name) VALUES ('x', 'y', 'z')",
    ];
    for sql in statements {
        let error = sqlx::query(sql)
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .expect_err(sql);
        match prodbox_error(&error) {
            SandboxDbError::ProductionAccessRefused { sandbox, message } => {
                assert_eq!(sandbox, sb.key(), "{sql}");
                assert!(message.contains("permission denied"), "{sql}: {message}");
            }
            other => panic!("{sql}: expected ProductionAccessRefused, got {other:?}"),
        }
        assert_eq!(
            prodbox_error(&error).reason(),
            "db_production_access_refused"
        );
        assert!(error.to_string().contains("production"), "{error}");
    }
    // The read path (`fetch_*`) is refused the same way.
    let error = sqlx::query("SELECT item FROM public.orders")
        .fetch_all(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        prodbox_error(&error),
        SandboxDbError::ProductionAccessRefused { .. }
    ));
    let error = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM public.orders")
        .fetch_one(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        prodbox_error(&error),
        SandboxDbError::ProductionAccessRefused { .. }
    ));

    // Production is exactly as it was; the sandbox kept its own row.
    assert_eq!(orders_in(db.pool(), "public").await, before);
    assert_eq!(production_sequence(&db).await, sequence);
    assert!(!schema_exists(db.pool(), "planted").await);
    assert_eq!(catalogue_rows(db.pool(), "x").await, 0);
    assert_eq!(
        orders_in(db.pool(), &schema_of(&key)).await,
        [(1, "own".to_owned())]
    );

    // Each refusal was audited as a db decision.
    let records = audit.matching("sandbox", &key);
    let refusals: Vec<_> = records
        .iter()
        .filter(|r| r.get("reason").map(String::as_str) == Some("db_production_access_refused"))
        .collect();
    assert_eq!(refusals.len(), statements.len() + 2, "{records:#?}");
    for record in refusals {
        assert_eq!(record.get("protocol").map(String::as_str), Some("db"));
        assert_eq!(record.get("decision").map(String::as_str), Some("rejected"));
        assert!(
            record
                .get("detail")
                .is_some_and(|d| d.contains("permission denied")),
            "{record:?}"
        );
    }

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_access_from_a_sandboxed_transaction_is_refused() {
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("reftx");
    let sb = sandbox(&key);
    let before = orders_in(db.pool(), "public").await;

    async {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('own')")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Postgres refuses (insufficient_privilege); the transaction is aborted.
        let error = sqlx::query("INSERT INTO public.orders (item) VALUES ('leak')")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert_eq!(
            prodbox_error(&error).reason(),
            "db_production_access_refused"
        );
        drop(tx);

        let mut conn = pool.acquire().await.unwrap();
        let error = sqlx::query("DELETE FROM public.orders")
            .execute(&mut *conn)
            .await
            .unwrap_err();
        assert_eq!(
            prodbox_error(&error).reason(),
            "db_production_access_refused"
        );
    }
    .in_sandbox(sb.clone())
    .await;

    assert_eq!(orders_in(db.pool(), "public").await, before);
    assert!(orders_in(db.pool(), &schema_of(&key)).await.is_empty());
    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_access_from_a_sandboxed_transaction_is_a_typed_refusal() {
    let audit = AuditLog::global();
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("reftt");
    let sb = sandbox(&key);
    let error = async {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO public.orders (item) VALUES ('leak')")
            .execute(&mut *tx)
            .await
            .unwrap_err()
    }
    .in_sandbox(sb.clone())
    .await;
    let refused = matches!(
        SandboxDbError::of(&error),
        Some(SandboxDbError::ProductionAccessRefused { .. })
    );
    let audited = audit
        .matching("sandbox", &key)
        .iter()
        .any(|r| r.get("reason").map(String::as_str) == Some("db_production_access_refused"));
    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
    assert!(refused, "untyped: {error:?}");
    assert!(audited, "not audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_leave_its_role() {
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .connections_per_sandbox(1)
        .build();
    let key = unique_key("esc");
    let sb = sandbox(&key);
    let before = count_rows(db.pool(), "public", "orders").await;
    let escaped = sqlx::raw_sql("RESET ROLE; INSERT INTO public.orders (item) VALUES ('escaped')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await;
    let after = count_rows(db.pool(), "public", "orders").await;
    // The role change also outlives the call on the sandbox's pooled connection.
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    pool.drop_sandbox(sb.key()).await.unwrap();
    let role = role_of(&db, &key);
    db.cleanup().await;
    assert!(
        escaped.is_err() && after == before && user == role,
        "RESET ROLE allowed: {}; production rows {before} -> {after}; the sandbox's next \
         call ran as {user:?}",
        escaped.is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_could_write_production_is_refused_until_the_grant_goes() {
    let audit = AuditLog::global();
    let db = production(3).await;
    db.pool()
        .execute("CREATE TABLE public.leaky (id int); GRANT INSERT ON public.leaky TO PUBLIC")
        .await
        .unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("leak");
    let sb = sandbox(&key);

    for sql in [
        "INSERT INTO orders (item) VALUES ('own')",
        "INSERT INTO public.leaky VALUES (1)",
        "INSERT INTO leaky VALUES (1)",
    ] {
        let error = sqlx::query(sql)
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .expect_err(sql);
        match prodbox_error(&error) {
            SandboxDbError::ProductionExposed { sandbox, findings } => {
                assert_eq!(sandbox, sb.key());
                assert_eq!(
                    findings,
                    &[
                        "table public.leaky: INSERT (REVOKE ALL ON public.leaky FROM PUBLIC)"
                            .to_owned()
                    ]
                );
            }
            other => panic!("{sql}: expected ProductionExposed, got {other:?}"),
        }
    }
    // `begin` and `acquire` fail the same way: nothing falls back to production.
    let error = async { pool.begin().await }
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        prodbox_error(&error),
        SandboxDbError::ProductionExposed { .. }
    ));
    let error = async { pool.acquire().await }
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        prodbox_error(&error),
        SandboxDbError::ProductionExposed { .. }
    ));

    assert_eq!(count_rows(db.pool(), "public", "leaky").await, 0);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 3);
    // Nothing half-made is left behind.
    assert!(!schema_exists(db.pool(), &schema_of(&key)).await);
    assert!(!role_exists(&role_of(&db, &key)).await);
    assert_eq!(catalogue_rows(db.pool(), &key).await, 0);
    let audited = audit.matching("sandbox", &key);
    assert!(
        audited.iter().any(|r| {
            r.get("protocol").map(String::as_str) == Some("db")
                && r.get("decision").map(String::as_str) == Some("rejected")
                && r.get("detail").is_some_and(|d| d.contains("public.leaky"))
        }),
        "{audited:#?}"
    );

    // Once the grant is revoked, the next call provisions the sandbox.
    db.pool()
        .execute("REVOKE INSERT ON public.leaky FROM PUBLIC")
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('own')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    assert_eq!(
        orders_in(db.pool(), &schema_of(&key)).await,
        [(1, "own".to_owned())]
    );
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 3);

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_fails_the_call_and_leaves_production_untouched() {
    let db = production(3).await;
    let before = orders_in(db.pool(), "public").await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("broken").await)
        .build();
    let key = unique_key("brk");
    let sb = sandbox(&key);

    for attempt in 0..2 {
        let error = sqlx::query("INSERT INTO orders (item) VALUES ('sandboxed')")
            .execute(&pool)
            .in_sandbox(sb.clone())
            .await
            .expect_err("provisioning must fail");
        match prodbox_error(&error) {
            SandboxDbError::Provisioning { sandbox, source } => {
                assert_eq!(sandbox, sb.key());
                assert!(
                    matches!(source, sqlx::Error::Migrate(_)),
                    "attempt {attempt}: {source:?}"
                );
            }
            other => panic!("attempt {attempt}: expected Provisioning, got {other:?}"),
        }
        // Each attempt starts clean: nothing of the failed one is left.
        assert!(!schema_exists(db.pool(), &schema_of(&key)).await);
        assert!(!role_exists(&role_of(&db, &key)).await);
        assert_eq!(catalogue_rows(db.pool(), &key).await, 0);
    }
    let error = async { pool.begin().await }
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(
        prodbox_error(&error),
        SandboxDbError::Provisioning { .. }
    ));
    assert_eq!(pool.active_sandboxes(), 0);

    // Production is untouched: no row of the migration, none of the sandboxed call.
    assert_eq!(orders_in(db.pool(), "public").await, before);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_provisioning_is_retried_by_the_next_call() {
    let db = production(3).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("gated").await)
        .acquire_timeout(Duration::from_secs(30))
        .build();
    let key = unique_key("gate");
    let sb = sandbox(&key);

    let error = sqlx::query("INSERT INTO orders (item) VALUES ('first')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    let SandboxDbError::Provisioning { source, .. } = prodbox_error(&error) else {
        panic!("expected Provisioning, got {error:?}");
    };
    assert!(source.to_string().contains("gate closed"), "{source}");
    assert!(!schema_exists(db.pool(), &schema_of(&key)).await);

    // Fix the cause; the same pool tries again on the next call, which succeeds. (The
    // migration runs on a new session of the sandbox's role, which sees the setting.)
    db.pool()
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" SET prodbox.gate = 'open'",
            db.name()
        )))
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('second')")
        .execute(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    assert_eq!(
        orders_in(db.pool(), &schema_of(&key)).await,
        [(1, "second".to_owned())]
    );
    assert_eq!(catalogue_rows(db.pool(), &key).await, 1);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 3);

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_read_production_tables_granted_to_public() {
    let db = production(3).await;
    db.pool()
        .execute("GRANT SELECT ON public.orders TO PUBLIC")
        .await
        .unwrap();
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("read");
    let sb = sandbox(&key);
    let read: Result<Vec<String>, _> = sqlx::query_scalar("SELECT item FROM public.orders")
        .fetch_all(&pool)
        .in_sandbox(sb.clone())
        .await;
    let _ = pool.drop_sandbox(sb.key()).await;
    db.cleanup().await;
    assert!(read.is_err(), "the sandbox read production rows: {read:?}");
}
