//! Every sandboxed row lands in its sandbox's schema; production sees only baseline writes; no
//! session state reaches the baseline pool.
//!
//! Pool sizes: the baseline `PgPool` has at most 5 connections, and the `SandboxPool` lets at
//! most 5 sandboxes hold a pool of 1 connection each (`max_active_sandboxes(5)`,
//! `connections_per_sandbox(1)`). Sandbox pools are separate from the baseline pool, so the
//! steady-state total is 5 + 5 (plus one short-lived provisioning connection per sandbox being
//! created): "a pool of 5 connections" holds for the baseline pool and for the sandbox pools
//! each, and the test checks both bounds while the traffic runs.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{migrator, orders_in, sandbox, schema_of, table};
use prodbox_core::FutureExt;
use prodbox_db::SandboxPool;
use prodbox_testkit::pg::{TestDatabase, count_rows, require_postgres, unique_key};
use sqlx::{AssertSqlSafe, Row};

const SANDBOXES: usize = 50;
const REQUESTS: usize = 200;
const BASELINE_TASKS: usize = 10;
const BASELINE_REQUESTS: usize = 100;
const PRODUCTION_SEED: i64 = 7;

/// Production: the orders migration applied to `public`, plus a few rows.
async fn production(db: &TestDatabase) {
    migrator("orders")
        .await
        .run(db.pool())
        .await
        .expect("migrate production");
    for n in 0..PRODUCTION_SEED {
        sqlx::query("INSERT INTO orders (item, amount) VALUES ('seed', $1)")
            .bind(n as i32)
            .execute(db.pool())
            .await
            .expect("seed production");
    }
}

async fn production_sequence(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM public.orders_id_seq")
        .fetch_one(db.pool())
        .await
        .expect("read the production sequence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sandboxes_interleaved_with_baseline_land_in_their_own_schemas() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    production(&db).await;
    let production_before = count_rows(db.pool(), "public", "orders").await;
    let sequence_before = production_sequence(&db).await;

    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .max_active_sandboxes(5)
        .connections_per_sandbox(1)
        // 50 sandboxes take turns on 5 slots: never let a waiting one give up.
        .acquire_timeout(Duration::from_secs(300))
        .build();
    let keys: Vec<String> = (0..SANDBOXES).map(|_| unique_key("iso")).collect();

    // Watch the bounds while the traffic runs.
    let done = Arc::new(AtomicBool::new(false));
    let peak_active = Arc::new(AtomicUsize::new(0));
    let peak_sandbox_connections = Arc::new(AtomicUsize::new(0));
    let peak_baseline = Arc::new(AtomicUsize::new(0));
    let monitor = tokio::spawn({
        let (pool, done) = (pool.clone(), Arc::clone(&done));
        let (active, conns, base) = (
            Arc::clone(&peak_active),
            Arc::clone(&peak_sandbox_connections),
            Arc::clone(&peak_baseline),
        );
        async move {
            while !done.load(Ordering::Relaxed) {
                active.fetch_max(pool.active_sandboxes(), Ordering::Relaxed);
                conns.fetch_max(pool.sandbox_connections() as usize, Ordering::Relaxed);
                base.fetch_max(pool.baseline().size() as usize, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let mut tasks = Vec::new();
    for key in &keys {
        let sb = sandbox(key);
        let (pool, key) = (pool.clone(), key.clone());
        let sandboxed = async move {
            for n in 0..REQUESTS {
                sqlx::query("INSERT INTO orders (item, amount) VALUES ($1, $2)")
                    .bind(&key)
                    .bind(n as i32)
                    .execute(&pool)
                    .await
                    .map_err(|e| format!("sandbox {key} request {n}: {e}"))?;
            }
            Ok::<_, String>(())
        };
        tasks.push(tokio::spawn(sandboxed.in_sandbox(sb)));
    }
    for task in 0..BASELINE_TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..BASELINE_REQUESTS {
                sqlx::query("INSERT INTO orders (item, amount) VALUES ('baseline', $1)")
                    .bind(n as i32)
                    .execute(&pool)
                    .await
                    .map_err(|e| format!("baseline task {task} request {n}: {e}"))?;
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        if let Err(error) = task.await.expect("task panicked") {
            failures.push(error);
        }
    }
    done.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");

    assert!(
        peak_active.load(Ordering::Relaxed) <= 5,
        "more than 5 sandbox pools at once"
    );
    assert!(
        peak_sandbox_connections.load(Ordering::Relaxed) <= 5,
        "sandbox pools held {} connections",
        peak_sandbox_connections.load(Ordering::Relaxed)
    );
    assert!(peak_baseline.load(Ordering::Relaxed) <= 5);

    // Each sandbox schema holds exactly its own 200 rows, numbered by its own sequence.
    let admin = db.pool();
    let mut sandbox_rows = 0;
    for key in &keys {
        let rows = orders_in(admin, &schema_of(key)).await;
        assert_eq!(rows.len(), REQUESTS, "rows in {}", schema_of(key));
        let foreign: Vec<_> = rows.iter().filter(|(_, item)| item != key).collect();
        assert!(
            foreign.is_empty(),
            "{} holds other rows: {foreign:?}",
            schema_of(key)
        );
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            (1..=REQUESTS as i64).collect::<Vec<_>>(),
            "ids of {key}"
        );
        sandbox_rows += rows.len();
    }
    assert_eq!(sandbox_rows, SANDBOXES * REQUESTS);

    // Production changed by the baseline writes only, and only they advanced its sequence.
    let baseline_writes = (BASELINE_TASKS * BASELINE_REQUESTS) as i64;
    assert_eq!(
        count_rows(admin, "public", "orders").await,
        production_before + baseline_writes
    );
    let items: Vec<String> = sqlx::query_scalar("SELECT DISTINCT item FROM public.orders")
        .fetch_all(admin)
        .await
        .unwrap();
    assert_eq!(
        items.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["baseline".to_owned(), "seed".to_owned()])
    );
    assert_eq!(
        production_sequence(&db).await,
        sequence_before + baseline_writes
    );

    // The database holds exactly the 50 sandbox schemas, each recorded once.
    let schemas: BTreeSet<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sbx\\_%'")
            .fetch_all(admin)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(schemas, keys.iter().map(|k| schema_of(k)).collect());
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM prodbox.sandbox_schemas")
        .fetch_one(admin)
        .await
        .unwrap();
    assert_eq!(recorded, SANDBOXES as i64);

    for key in &keys {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn begin_and_acquire_inside_a_sandbox_use_its_schema() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    production(&db).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .connections_per_sandbox(1)
        .build();
    let key = unique_key("tx");
    let sb = sandbox(&key);

    // A committed transaction, a rolled-back one, and a connection taken with `acquire`:
    // each serves the sandbox it was taken in.
    async {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('committed')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // Postgres shows the name unquoted, as it needs no quotes.
        assert_eq!(path, schema_of(&key));
        let user: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(user, common::role_of(&db, &key));
        tx.commit().await.unwrap();

        // A rolled-back one leaves nothing.
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('rolled-back')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('acquired')")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    .in_sandbox(sb.clone())
    .await;

    // Right after, with no sandbox, the same calls reach production.
    sqlx::query("INSERT INTO orders (item) VALUES ('after-sandbox')")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('baseline-tx')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let sandboxed: Vec<String> = orders_in(db.pool(), &schema_of(&key))
        .await
        .into_iter()
        .map(|(_, item)| item)
        .collect();
    assert_eq!(sandboxed, ["committed", "acquired"]);
    let production: Vec<String> =
        sqlx::query_scalar("SELECT item FROM public.orders WHERE item <> 'seed' ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(production, ["after-sandbox", "baseline-tx"]);

    // Reads inside the sandbox see only the sandbox.
    let seen: Vec<String> = sqlx::query_scalar("SELECT item FROM orders ORDER BY id")
        .fetch_all(&pool)
        .in_sandbox(sb.clone())
        .await
        .unwrap();
    assert_eq!(seen, ["committed", "acquired"]);

    pool.drop_sandbox(sb.key()).await.unwrap();
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_context_decides_per_call_in_one_task() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    production(&db).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let (a, b) = (unique_key("pa"), unique_key("pb"));
    for _ in 0..30 {
        let insert = |item: String| sqlx::query("INSERT INTO orders (item) VALUES ($1)").bind(item);
        insert(a.clone())
            .execute(&pool)
            .in_sandbox(sandbox(&a))
            .await
            .unwrap();
        insert("baseline".to_owned()).execute(&pool).await.unwrap();
        insert(b.clone())
            .execute(&pool)
            .in_sandbox(sandbox(&b))
            .await
            .unwrap();
        // A task spawned with prodbox's helper (inside the sandboxed future) keeps the sandbox.
        let (pool2, a2) = (pool.clone(), a.clone());
        async move { prodbox_core::spawn(async move { insert(a2).execute(&pool2).await }).await }
            .in_sandbox(sandbox(&a))
            .await
            .unwrap()
            .unwrap();
    }
    let items = |schema: String| {
        let admin = db.pool().clone();
        async move {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT item, count(*) FROM {} GROUP BY item",
                table(&schema, "orders")
            )))
            .fetch_all(&admin)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1)))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(items(schema_of(&a)).await, [(a.clone(), 60)]);
    assert_eq!(items(schema_of(&b)).await, [(b.clone(), 30)]);
    let mut production = items("public".to_owned()).await;
    production.sort();
    assert_eq!(
        production,
        [
            ("baseline".to_owned(), 30),
            ("seed".to_owned(), PRODUCTION_SEED)
        ]
    );

    for key in [&a, &b] {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn baseline_connections_keep_production_session_after_heavy_sandbox_use() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    production(&db).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .max_active_sandboxes(3)
        .connections_per_sandbox(2)
        .build();
    let keys: Vec<String> = (0..6).map(|_| unique_key("lk")).collect();

    // Heavy sandboxed use of every kind, interleaved with baseline calls on the same pool.
    let mut tasks = Vec::new();
    for key in &keys {
        let sb = sandbox(key);
        let (sandboxed, key) = (pool.clone(), key.clone());
        let work = async move {
            let pool = sandboxed;
            for n in 0..20 {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("INSERT INTO orders (item) VALUES ($1)")
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if n % 2 == 0 {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("SELECT count(*) FROM orders")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                drop(conn);
                sqlx::query("SELECT * FROM orders WHERE item = $1")
                    .bind(&key)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            }
        };
        tasks.push(tokio::spawn(work.in_sandbox(sb)));
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                sqlx::query("INSERT INTO orders (item) VALUES ('baseline')")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Every baseline connection, held at once so that each one is checked, is production's.
    let baseline = pool
        .baseline()
        .unguarded("the test inspects every production connection");
    let mut held = Vec::new();
    for _ in 0..baseline.options().get_max_connections() {
        held.push(baseline.acquire().await.unwrap());
    }
    let mut pids = BTreeSet::new();
    for conn in &mut held {
        let row = sqlx::query(
            "SELECT current_setting('search_path'), current_user::text, session_user::text,
                    pg_backend_pid()",
        )
        .fetch_one(&mut **conn)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>(0), "\"$user\", public");
        assert_eq!(row.get::<String, _>(1), "postgres");
        assert_eq!(row.get::<String, _>(2), "postgres");
        pids.insert(row.get::<i32, _>(3));
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(path, "\"$user\", public");
    }
    assert_eq!(pids.len(), held.len());
    drop(held);

    // And through the SandboxPool with no sandbox in context.
    let mut conn = pool.acquire().await.unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(user, "postgres");
    drop(conn);

    let rows = orders_in(db.pool(), "public").await;
    assert_eq!(
        rows.iter().filter(|(_, item)| item == "baseline").count(),
        6 * 20
    );
    assert!(
        rows.iter()
            .all(|(_, item)| item == "baseline" || item == "seed")
    );
    for key in &keys {
        assert_eq!(orders_in(db.pool(), &schema_of(key)).await.len(), 10);
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_sandbox_bound_a_new_sandbox_waits_then_fails_without_fallback() {
    let audit = prodbox_testkit::AuditLog::global();
    require_postgres().await;
    let db = TestDatabase::create_with(2).await;
    production(&db).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .max_active_sandboxes(1)
        .connections_per_sandbox(1)
        .acquire_timeout(Duration::from_millis(300))
        .build();
    let (busy, waiting) = (unique_key("busy"), unique_key("wait"));

    // The only slot is busy: its connection is checked out.
    let held = async { pool.acquire().await }
        .in_sandbox(sandbox(&busy))
        .await
        .unwrap();
    let error = sqlx::query("INSERT INTO orders (item) VALUES ('overflow')")
        .execute(&pool)
        .in_sandbox(sandbox(&waiting))
        .await
        .unwrap_err();
    match common::prodbox_error(&error) {
        prodbox_db::SandboxDbError::Capacity { sandbox, active } => {
            assert_eq!(sandbox.as_str(), waiting);
            assert_eq!(*active, 1);
        }
        other => panic!("expected Capacity, got {other:?}"),
    }
    assert!(
        audit
            .matching("sandbox", &waiting)
            .iter()
            .any(
                |r| r.get("decision").map(String::as_str) == Some("throttled")
                    && r.get("reason").map(String::as_str) == Some("db_capacity")
                    && r.get("protocol").map(String::as_str) == Some("db")
            ),
        "{:#?}",
        audit.matching("sandbox", &waiting)
    );
    // Nothing fell back to production, and the waiting sandbox was never provisioned.
    assert_eq!(
        count_rows(db.pool(), "public", "orders").await,
        PRODUCTION_SEED
    );
    assert!(!prodbox_testkit::pg::schema_exists(db.pool(), &schema_of(&waiting)).await);
    assert_eq!(pool.active_sandboxes(), 1);
    assert!(pool.sandbox_connections() <= 1);

    // Once the busy sandbox is idle, the waiting one takes its slot.
    drop(held);
    sqlx::query("INSERT INTO orders (item) VALUES ('in turn')")
        .execute(&pool)
        .in_sandbox(sandbox(&waiting))
        .await
        .unwrap();
    assert_eq!(pool.active_sandboxes(), 1);
    assert_eq!(orders_in(db.pool(), &schema_of(&waiting)).await.len(), 1);

    for key in [&busy, &waiting] {
        pool.drop_sandbox(&key.parse().unwrap()).await.unwrap();
    }
    db.cleanup().await;
}
