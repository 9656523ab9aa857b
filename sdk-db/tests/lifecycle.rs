//! The catalogue, `drop_sandbox`, `drop_expired` and the janitor.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use common::{catalogue_rows, migrator, orders_in, prodbox_error, role_of, sandbox, schema_of};
use prodbox_core::{FutureExt, Sandbox, SandboxKey};
use prodbox_db::{SandboxDbError, SandboxPool};
use prodbox_testkit::AuditLog;
use prodbox_testkit::pg::{
    TestDatabase, count_rows, require_postgres, role_exists, schema_exists, unique_key,
};

async fn setup() -> (TestDatabase, SandboxPool) {
    setup_with(Duration::from_secs(30)).await
}

async fn setup_with(acquire_timeout: Duration) -> (TestDatabase, SandboxPool) {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    migrator("orders")
        .await
        .run(db.pool())
        .await
        .expect("migrate production");
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .default_ttl(Duration::from_secs(3600))
        .acquire_timeout(acquire_timeout)
        .build();
    (db, pool)
}

async fn insert(pool: &SandboxPool, sb: &Sandbox, item: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO orders (item) VALUES ($1)")
        .bind(item)
        .execute(pool)
        .in_sandbox(sb.clone())
        .await
        .map(drop)
}

fn key(key: &str) -> SandboxKey {
    key.parse().expect("valid test key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_sandbox_removes_schema_role_and_record_and_the_next_call_reprovisions() {
    let (db, pool) = setup().await;
    let k = unique_key("drop");
    let sb = sandbox(&k);
    insert(&pool, &sb, "before").await.unwrap();
    insert(&pool, &sb, "before").await.unwrap();
    assert!(schema_exists(db.pool(), &schema_of(&k)).await);
    assert!(role_exists(&role_of(&db, &k)).await);
    assert_eq!(catalogue_rows(db.pool(), &k).await, 1);
    assert_eq!(pool.active_sandboxes(), 1);

    assert!(pool.drop_sandbox(sb.key()).await.unwrap());
    assert!(!schema_exists(db.pool(), &schema_of(&k)).await);
    assert!(!role_exists(&role_of(&db, &k)).await);
    assert_eq!(catalogue_rows(db.pool(), &k).await, 0);
    assert_eq!(pool.active_sandboxes(), 0);
    // Dropping again finds nothing.
    assert!(!pool.drop_sandbox(sb.key()).await.unwrap());

    // The next call provisions a fresh, empty schema (its sequence starts again).
    insert(&pool, &sb, "after").await.unwrap();
    assert_eq!(
        orders_in(db.pool(), &schema_of(&k)).await,
        [(1, "after".to_owned())]
    );
    assert!(role_exists(&role_of(&db, &k)).await);
    assert_eq!(catalogue_rows(db.pool(), &k).await, 1);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 0);

    assert!(pool.drop_sandbox(sb.key()).await.unwrap());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_lists_creation_last_use_and_expiry() {
    let (db, pool) = setup().await;
    let started = SystemTime::now();
    let (a, b) = (unique_key("lsa"), unique_key("lsb"));
    let a_expiry = SystemTime::now() + Duration::from_secs(7 * 24 * 3600);
    let sa = Sandbox::builder(&a).unwrap().expires_at(a_expiry).build();
    let sb = sandbox(&b);
    insert(&pool, &sa, "a").await.unwrap();
    insert(&pool, &sb, "b").await.unwrap();
    let provisioned = SystemTime::now();

    let records = pool.schemas().await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        {
            let mut keys = vec![a.as_str(), b.as_str()];
            keys.sort();
            keys
        }
    );
    // Database and test share a clock; allow for its precision (microseconds) and some skew.
    let slack = Duration::from_secs(5);
    let near = |t: SystemTime, expected: SystemTime| {
        let diff = t.duration_since(expected).unwrap_or_else(|e| e.duration());
        diff <= slack
    };
    for record in &records {
        assert_eq!(record.schema, schema_of(record.key.as_str()));
        assert_eq!(record.role, role_of(&db, record.key.as_str()));
        assert!(record.created_at + slack >= started, "{record:?}");
        assert!(record.created_at <= provisioned + slack, "{record:?}");
        assert!(record.last_used_at >= record.created_at, "{record:?}");
    }
    let ra = records.iter().find(|r| r.key.as_str() == a).unwrap();
    let rb = records.iter().find(|r| r.key.as_str() == b).unwrap();
    // The sandbox's own expiry, or `default_ttl` (1 h) after its last use.
    assert!(near(ra.expires_at.unwrap(), a_expiry), "{ra:?}");
    let default_expiry = rb.expires_at.unwrap();
    assert!(
        default_expiry + slack >= started + Duration::from_secs(3600)
            && default_expiry <= provisioned + Duration::from_secs(3600) + slack,
        "{rb:?}"
    );

    // Another process (here: another pool) opening the sandbox records a later use.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .default_ttl(Duration::from_secs(3600))
        .build();
    insert(&other, &sb, "b again").await.unwrap();
    let records = other.schemas().await.unwrap();
    let rb2 = records.iter().find(|r| r.key.as_str() == b).unwrap();
    assert_eq!(rb2.created_at, rb.created_at);
    assert!(rb2.last_used_at > rb.last_used_at, "{rb:?} then {rb2:?}");
    assert!(rb2.expires_at >= rb.expires_at);

    for k in [&a, &b] {
        pool.drop_sandbox(&key(k)).await.unwrap();
    }
    assert!(pool.schemas().await.unwrap().is_empty());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_expired_drops_exactly_the_expired_sandboxes() {
    let (db, pool) = setup().await;
    let now = SystemTime::now();
    // A pool refuses a sandbox that has already expired, so these expire in 10 minutes and
    // the janitor's "now" is an hour ahead.
    let soon = now + Duration::from_secs(600);
    let later = now + Duration::from_secs(24 * 3600);
    let expiring: Vec<String> = (0..3).map(|_| unique_key("exp")).collect();
    let lasting: Vec<String> = (0..2).map(|_| unique_key("live")).collect();
    for k in &expiring {
        let sb = Sandbox::builder(k).unwrap().expires_at(soon).build();
        insert(&pool, &sb, k).await.unwrap();
    }
    for k in &lasting {
        let sb = Sandbox::builder(k).unwrap().expires_at(later).build();
        insert(&pool, &sb, k).await.unwrap();
    }

    // Nothing has expired yet.
    assert!(
        pool.drop_expired(SystemTime::now())
            .await
            .unwrap()
            .dropped
            .is_empty()
    );

    let dropped = pool
        .drop_expired(now + Duration::from_secs(3600))
        .await
        .unwrap()
        .dropped;
    let dropped: BTreeSet<String> = dropped.iter().map(|k| k.as_str().to_owned()).collect();
    assert_eq!(dropped, expiring.iter().cloned().collect());
    for k in &expiring {
        assert!(!schema_exists(db.pool(), &schema_of(k)).await, "{k}");
        assert!(!role_exists(&role_of(&db, k)).await, "{k}");
        assert_eq!(catalogue_rows(db.pool(), k).await, 0);
    }
    for k in &lasting {
        assert!(schema_exists(db.pool(), &schema_of(k)).await, "{k}");
        assert!(role_exists(&role_of(&db, k)).await, "{k}");
        assert_eq!(orders_in(db.pool(), &schema_of(k)).await.len(), 1);
    }
    let remaining: BTreeSet<String> = pool
        .schemas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key.as_str().to_owned())
        .collect();
    assert_eq!(remaining, lasting.iter().cloned().collect());
    // A second pass has nothing left to drop.
    assert!(
        pool.drop_expired(now + Duration::from_secs(3600))
            .await
            .unwrap()
            .dropped
            .is_empty()
    );
    // The lasting sandboxes keep working.
    for k in &lasting {
        let sb = Sandbox::builder(k).unwrap().expires_at(later).build();
        insert(&pool, &sb, "again").await.unwrap();
        assert!(pool.drop_sandbox(sb.key()).await.unwrap());
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_drops_an_expired_sandbox() {
    let (db, pool) = setup().await;
    let (old, live) = (unique_key("old"), unique_key("keep"));
    insert(&pool, &sandbox(&old), "old").await.unwrap();
    insert(&pool, &sandbox(&live), "live").await.unwrap();
    // Expire one in the catalogue, as time passing would.
    sqlx::query(
        "UPDATE prodbox.sandbox_schemas SET expires_at = now() - interval '1 minute'
         WHERE key = $1",
    )
    .bind(&old)
    .execute(db.pool())
    .await
    .unwrap();

    let janitor = pool.start_janitor(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(60);
    while schema_exists(db.pool(), &schema_of(&old)).await {
        assert!(
            Instant::now() < deadline,
            "the janitor did not drop {old} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait for the janitor's drop to finish (role, then catalogue row) before stopping it:
    // stopped mid-drop, it would leave the rest to its next round, which never comes.
    while catalogue_rows(db.pool(), &old).await > 0 {
        assert!(Instant::now() < deadline, "catalogue row of {old} stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(janitor);
    assert!(!role_exists(&role_of(&db, &old)).await);
    assert!(schema_exists(db.pool(), &schema_of(&live)).await);
    assert_eq!(catalogue_rows(db.pool(), &live).await, 1);
    insert(&pool, &sandbox(&live), "still works").await.unwrap();
    assert_eq!(orders_in(db.pool(), &schema_of(&live)).await.len(), 2);

    assert!(pool.drop_sandbox(&key(&live)).await.unwrap());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sandbox_is_refused_without_provisioning() {
    let audit = AuditLog::global();
    let (db, pool) = setup().await;
    let k = unique_key("gone");
    let sb = Sandbox::builder(&k)
        .unwrap()
        .expires_at(SystemTime::now() - Duration::from_secs(1))
        .build();
    let error = insert(&pool, &sb, "late").await.unwrap_err();
    assert!(
        matches!(prodbox_error(&error), SandboxDbError::Expired(key) if key.as_str() == k),
        "{error:?}"
    );
    let error = async { pool.begin().await }
        .in_sandbox(sb.clone())
        .await
        .unwrap_err();
    assert!(matches!(prodbox_error(&error), SandboxDbError::Expired(_)));
    assert!(!schema_exists(db.pool(), &schema_of(&k)).await);
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 0);
    assert!(
        audit
            .matching("sandbox", &k)
            .iter()
            .any(
                |r| r.get("reason").map(String::as_str) == Some("sandbox_expired")
                    && r.get("protocol").map(String::as_str) == Some("db")
            )
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_sandbox_dropped_elsewhere_fails_closed() {
    let (db, pool) = setup_with(Duration::from_secs(2)).await;
    let k = unique_key("else");
    let sb = sandbox(&k);
    insert(&pool, &sb, "first").await.unwrap();
    // Another process (here: another pool) drops the sandbox while this pool has it open.
    let other = SandboxPool::new(db.pool().clone());
    assert!(other.drop_sandbox(sb.key()).await.unwrap());

    // This pool's next call fails (its schema and role are gone) and never reaches
    // production; the pool then forgets the sandbox, so the call after provisions afresh.
    let error = insert(&pool, &sb, "stale").await.unwrap_err();
    eprintln!("stale pool: {error}");
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 0);
    insert(&pool, &sb, "fresh").await.unwrap();
    assert_eq!(
        orders_in(db.pool(), &schema_of(&k)).await,
        [(1, "fresh".to_owned())]
    );
    assert_eq!(count_rows(db.pool(), "public", "orders").await, 0);
    assert!(pool.drop_sandbox(sb.key()).await.unwrap());
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_sandbox_dropped_elsewhere_recovers() {
    let (db, pool) = setup_with(Duration::from_secs(2)).await;
    let k = unique_key("rec");
    let sb = sandbox(&k);
    insert(&pool, &sb, "first").await.unwrap();
    let other = SandboxPool::new(db.pool().clone());
    assert!(other.drop_sandbox(sb.key()).await.unwrap());
    let first = insert(&pool, &sb, "second").await;
    let second = insert(&pool, &sb, "third").await;
    let _ = pool.drop_sandbox(sb.key()).await;
    db.cleanup().await;
    assert!(
        second.is_ok(),
        "after the drop elsewhere: {first:?}, then {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_in_use_does_not_expire() {
    require_postgres().await;
    let db = TestDatabase::create_with(5).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .default_ttl(Duration::from_secs(1))
        .build();
    let k = unique_key("busy");
    let sb = sandbox(&k);
    // Used when opened, and again 2 s later: its last use is now, well within the 1 s TTL.
    insert(&pool, &sb, "opened").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    insert(&pool, &sb, "used").await.unwrap();
    let dropped = pool.drop_expired(SystemTime::now()).await.unwrap().dropped;
    let next = insert(&pool, &sb, "next").await;
    let _ = pool.drop_sandbox(sb.key()).await;
    db.cleanup().await;
    assert!(
        dropped.is_empty() && next.is_ok(),
        "dropped while in use: {dropped:?}; the next call: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_made_again_under_the_same_key_starts_with_an_empty_schema() {
    require_postgres().await;
    let db = TestDatabase::create_with(4).await;
    let pool = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    let key = unique_key("again");
    let created = SystemTime::now();
    let first = Sandbox::builder(&key).unwrap().created_at(created).build();
    sqlx::query("INSERT INTO orders (item) VALUES ('alice-card-4111')")
        .execute(&pool)
        .in_sandbox(first.clone())
        .await
        .unwrap();

    // Deleted from the directory and made again for someone else: a new incarnation, in this
    // process and in another.
    let second = Sandbox::builder(&key)
        .unwrap()
        .created_at(created + Duration::from_secs(60))
        .build();
    let other = SandboxPool::builder(db.pool().clone())
        .migrations(migrator("orders").await)
        .build();
    for pool in [&pool, &other] {
        let seen: Vec<String> = sqlx::query_scalar("SELECT item FROM orders")
            .fetch_all(pool)
            .in_sandbox(second.clone())
            .await
            .unwrap();
        assert!(
            seen.is_empty(),
            "the new incarnation sees the old one's rows: {seen:?}"
        );
    }
    pool.drop_sandbox(second.key()).await.unwrap();
    db.cleanup().await;
}
