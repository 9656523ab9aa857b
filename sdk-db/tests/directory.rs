//! The Postgres-backed sandbox directory: propagation between clients, reconnects, staleness,
//! expiry and rows prodbox would not write.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prodbox_core::directory::{CutFuture, CutPlace, Directory, Range, SandboxEntry, Sighting};
use prodbox_core::trust::UnknownSandbox;
use prodbox_core::{Admission, Ingress, Refusal, SandboxKey, TrustPolicy};
use prodbox_db::directory::{DirectoryStore, PgDirectory, StoreError, validate_fork};
use prodbox_testkit::pg::{TestDatabase, admin_connection, require_postgres, unique_key};
use sqlx::postgres::PgPoolOptions;

fn key(prefix: &str) -> SandboxKey {
    unique_key(prefix).parse().expect("valid key")
}

/// Polls `check` every 10 ms until it holds or `deadline` passes; returns how long it took.
async fn within(deadline: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= deadline {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check().then(|| start.elapsed())
}

async fn eventually<F: Future<Output = bool>>(deadline: Duration, mut check: impl FnMut() -> F) {
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fast(db: &TestDatabase) -> PgDirectory {
    PgDirectory::builder(db.pool())
        .heartbeat(Duration::from_millis(200))
        .staleness_bound(Duration::from_secs(1))
        .start()
}

fn admit(directory: &PgDirectory, key: &SandboxKey) -> Admission {
    let ingress = Ingress::new(TrustPolicy::accept())
        .directory(directory.clone())
        .unknown_sandboxes(UnknownSandbox::Refuse);
    let headers = vec![(
        "baggage".to_owned(),
        format!("prodbox.sandbox={key}").into_bytes(),
    )];
    ingress.admit(&headers, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_client_within_a_second() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let (a, b) = (fast(&db), fast(&db));
    a.synced(Duration::from_secs(10)).await.expect("a syncs");
    b.synced(Duration::from_secs(10)).await.expect("b syncs");
    assert!(a.entries().is_empty() && !a.is_stale());

    let k = key("dir");
    let mut entry = SandboxEntry::new(k.clone()).fork(
        "billing",
        "http://127.0.0.1:9001".parse().expect("a fork address"),
    );
    entry.actor = Some("alice".to_owned());
    entry.expires_at = Some(SystemTime::now() + Duration::from_secs(3600));
    let created = store.create(&entry).await.expect("create");
    assert!(created.created_at.is_some());

    for client in [&a, &b] {
        let seen = within(Duration::from_secs(1), || client.get(&k).is_some()).await;
        assert!(
            seen.is_some(),
            "a new sandbox reaches every client within 1 s"
        );
        let got = client.get(&k).expect("present");
        assert_eq!(
            got.fork_of("billing").map(ToString::to_string).as_deref(),
            Some("http://127.0.0.1:9001")
        );
        assert_eq!(got.actor.as_deref(), Some("alice"));
    }
    assert!(matches!(admit(&a, &k), Admission::Sandboxed { .. }));

    // The kill switch, then a new expiry, then deletion.
    store.set_disabled(&k, true).await.expect("disable");
    for client in [&a, &b] {
        let seen = within(Duration::from_secs(1), || {
            client.get(&k).is_some_and(|e| e.disabled)
        })
        .await;
        assert!(
            seen.is_some(),
            "the kill switch reaches every client within 1 s"
        );
    }
    assert!(matches!(
        admit(&b, &k),
        Admission::Refused(Refusal::Disabled(_))
    ));
    let later = SystemTime::now() + Duration::from_secs(7200);
    store.set_expiry(&k, Some(later)).await.expect("extend");
    let seen = within(Duration::from_secs(1), || {
        a.get(&k)
            .and_then(|e| e.expires_at)
            .is_some_and(|at| at > SystemTime::now() + Duration::from_secs(5000))
    })
    .await;
    assert!(seen.is_some(), "a new expiry reaches clients within 1 s");
    assert!(store.delete(&k).await.expect("delete"));
    for client in [&a, &b] {
        let seen = within(Duration::from_secs(1), || client.get(&k).is_none()).await;
        assert!(seen.is_some(), "a deletion reaches every client within 1 s");
    }
    assert!(matches!(
        admit(&a, &k),
        Admission::Refused(Refusal::Unknown(_))
    ));

    drop((a, b));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refuses_duplicates_missing_keys_and_bad_entries() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let k = key("dir");
    store
        .create(&SandboxEntry::new(k.clone()))
        .await
        .expect("create");
    assert!(matches!(
        store.create(&SandboxEntry::new(k.clone())).await,
        Err(StoreError::AlreadyExists(_))
    ));
    // An expired entry kept for its retention gives way to a new sandbox of the same key.
    let reused = key("reuse");
    let past = SystemTime::now() - Duration::from_secs(60);
    let old = store
        .create(&SandboxEntry::new(reused.clone()).expires_at(past))
        .await
        .expect("create expired");
    let renewed = store
        .create(&SandboxEntry::new(reused.clone()).fork(
            "billing",
            "http://127.0.0.1:9001".parse().expect("a fork address"),
        ))
        .await
        .expect("an expired key can be created again");
    assert!(renewed.created_at > old.created_at && renewed.expires_at.is_none());
    assert_eq!(
        renewed
            .fork_of("billing")
            .map(ToString::to_string)
            .as_deref(),
        Some("http://127.0.0.1:9001")
    );
    assert!(store.delete(&reused).await.expect("delete"));
    let missing = key("missing");
    assert!(matches!(
        store.set_disabled(&missing, true).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!store.delete(&missing).await.expect("delete"));
    for (service, address) in [
        ("billing", "ftp://10.0.0.5"),
        ("billing", "not a url"),
        ("billing", "http://10.0.0.5/path"),
        ("Billing Service", "http://10.0.0.5"),
        ("billing", "10.0.0.5:8080"),
    ] {
        // Addresses are refused where they are parsed (a `ForkAddress` cannot hold them).
        assert!(
            matches!(validate_fork(service, address), Err(StoreError::Invalid(_))),
            "{service}={address} must be refused"
        );
    }
    let entry = SandboxEntry::new(key("bad")).fork(
        "Billing Service",
        "http://10.0.0.5".parse().expect("a fork address"),
    );
    assert!(matches!(
        store.create(&entry).await,
        Err(StoreError::Invalid(_))
    ));
    let mut entry = SandboxEntry::new(key("bad"));
    entry.actor = Some("alice\r\nx-evil: 1".to_owned());
    assert!(matches!(
        store.create(&entry).await,
        Err(StoreError::Invalid(_))
    ));
    let keys: Vec<_> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec![k], "refused entries left nothing behind");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resyncs_after_its_backend_is_terminated() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let directory = fast(&db);
    directory
        .synced(Duration::from_secs(10))
        .await
        .expect("sync");

    // Keep the database closed while the listener is gone, so the change below is made
    // while nobody listens: only a resync can bring it.
    let mut admin = admin_connection().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        db.name()
    )))
    .execute(&mut admin)
    .await
    .expect("close database");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'prodbox-directory'",
    )
    .bind(db.name())
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(terminated >= 1, "the listening backend was found");

    let k = key("dir");
    // The test pool's connections were opened before; the change goes through one of them.
    let store_result = store.create(&SandboxEntry::new(k.clone())).await;
    let made_while_down = store_result.is_ok();

    // Past the staleness bound, the directory says so; lookups still answer.
    let stale = within(Duration::from_secs(5), || directory.is_stale()).await;
    assert!(
        stale.is_some(),
        "stale after its bound without a connection"
    );
    assert!(
        directory.is_synced(),
        "staleness does not undo the first sync"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        db.name()
    )))
    .execute(&mut admin)
    .await
    .expect("open database");
    if !made_while_down {
        store
            .create(&SandboxEntry::new(k.clone()))
            .await
            .expect("create after reopening");
    }
    // Backoff is at most 5 s; a resync then brings the change.
    let back = within(Duration::from_secs(10), || {
        !directory.is_stale() && directory.get(&k).is_some()
    })
    .await;
    assert!(back.is_some(), "reconnected, fresh and resynced");

    // And it listens again.
    store.set_disabled(&k, true).await.expect("disable");
    let seen = within(Duration::from_secs(1), || {
        directory.get(&k).is_some_and(|e| e.disabled)
    })
    .await;
    assert!(seen.is_some(), "notifications flow after the reconnect");

    drop(directory);
    drop(admin);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_synced_when_the_database_is_unreachable() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/postgres")
        .expect("lazy pool");
    let directory = PgDirectory::builder(&pool).start();
    assert!(matches!(
        directory.synced(Duration::from_millis(800)).await,
        Err(StoreError::NotSynced(_))
    ));
    assert!(!directory.is_synced());
    assert!(directory.is_stale(), "never heard from the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sandboxes_are_refused_on_time_and_their_rows_go() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let directory = PgDirectory::builder(db.pool())
        .heartbeat(Duration::from_millis(200))
        .retention(Duration::from_secs(1))
        .start();
    directory
        .synced(Duration::from_secs(10))
        .await
        .expect("sync");

    let k = key("exp");
    let expires = SystemTime::now() + Duration::from_millis(1500);
    store
        .create(&SandboxEntry::new(k.clone()).expires_at(expires))
        .await
        .expect("create");
    let seen = within(Duration::from_secs(1), || directory.get(&k).is_some()).await;
    assert!(seen.is_some());
    assert!(matches!(admit(&directory, &k), Admission::Sandboxed { .. }));

    // Refused from the expiry on, by the snapshot alone.
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert!(matches!(
        admit(&directory, &k),
        Admission::Refused(Refusal::Expired(_))
    ));

    // A retention later the row is deleted by the directory itself, and every view drops it.
    eventually(Duration::from_secs(10), || async {
        store.get(&k).await.expect("get").is_none()
    })
    .await;
    let gone = within(Duration::from_secs(1), || directory.get(&k).is_none()).await;
    assert!(gone.is_some(), "the purge reaches the snapshot");

    drop(directory);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_prodbox_would_not_write_are_kept_disabled() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let good = key("good");
    store
        .create(&SandboxEntry::new(good.clone()))
        .await
        .expect("create");
    let directory = fast(&db);
    directory
        .synced(Duration::from_secs(10))
        .await
        .expect("sync");

    // Hand-written rows with a fork address no router could use, and one written before fork
    // addresses lost their user info (it would go out in `Host`).
    let (bad, userinfo) = (key("bad"), key("userinfo"));
    for (key, address) in [(&bad, "gopher://x"), (&userinfo, "http://u@fork:1")] {
        sqlx::query("INSERT INTO prodbox.sandboxes (key, forks) VALUES ($1, $2::jsonb)")
            .bind(key.as_str())
            .bind(format!("{{\"billing\": \"{address}\"}}"))
            .execute(db.pool())
            .await
            .expect("insert by hand");
    }
    // The table's own check refuses keys that are not sandbox keys.
    let refused = sqlx::query("INSERT INTO prodbox.sandboxes (key) VALUES ('Robert''); --')")
        .execute(db.pool())
        .await;
    assert!(refused.is_err(), "the key check constraint holds");

    store.set_disabled(&good, true).await.expect("disable");
    let seen = within(Duration::from_secs(1), || {
        directory.get(&good).is_some_and(|e| e.disabled)
    })
    .await;
    assert!(seen.is_some());
    // The invalid row is kept, fail-closed: disabled, without the unusable fork, so it is
    // refused rather than forgotten (an unknown sandbox may be admitted).
    let kept = directory.get(&bad).expect("the invalid row is kept");
    assert!(kept.disabled && kept.forks.is_empty(), "{kept:?}");
    assert!(matches!(
        admit(&directory, &bad),
        Admission::Refused(Refusal::Disabled(_))
    ));
    let kept = directory.get(&userinfo).expect("the invalid row is kept");
    assert!(kept.disabled && kept.forks.is_empty(), "{kept:?}");
    let stored = store.get(&bad).await.expect("get").expect("present");
    assert!(stored.disabled && stored.forks.is_empty());
    // The kill switch still works on it.
    assert!(
        store
            .set_disabled(&bad, true)
            .await
            .expect("disable")
            .disabled
    );

    // A TRUNCATE is announced too: every entry goes.
    sqlx::query("TRUNCATE prodbox.sandboxes")
        .execute(db.pool())
        .await
        .expect("truncate");
    let emptied = within(Duration::from_secs(1), || directory.entries().is_empty()).await;
    assert!(
        emptied.is_some(),
        "a truncate reaches the directory within 1 s"
    );

    drop(directory);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_are_stored_and_need_a_fork() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let directory = fast(&db);
    directory
        .synced(Duration::from_secs(10))
        .await
        .expect("sync");
    let k = key("shadow");
    store
        .create(
            &SandboxEntry::new(k.clone())
                .fork(
                    "billing",
                    "http://127.0.0.1:9001".parse().expect("a fork address"),
                )
                .shadow("billing"),
        )
        .await
        .expect("create");
    let seen = within(Duration::from_secs(1), || directory.get(&k).is_some()).await;
    assert!(seen.is_some());
    let entry = directory.get(&k).expect("present");
    assert_eq!(
        entry
            .shadow_of("billing")
            .map(ToString::to_string)
            .as_deref(),
        Some("http://127.0.0.1:9001")
    );
    assert_eq!(entry.shadow_of("orders"), None);
    assert!(matches!(
        store
            .create(&SandboxEntry::new(key("shadow")).shadow("billing"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    drop(directory);
    db.cleanup().await;
}

/// A TCP proxy to PostgreSQL that can black-hole traffic without a reset: the connections it
/// carried when frozen stay dead for good (as after a NAT or conntrack reset).
struct Proxy {
    port: u16,
    opened: Arc<AtomicU64>,
    frozen_below: Arc<AtomicU64>,
    all_frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Proxy {
            port,
            opened: Arc::default(),
            frozen_below: Arc::default(),
            all_frozen: Arc::default(),
        };
        let (opened, below, all) = (
            Arc::clone(&proxy.opened),
            Arc::clone(&proxy.frozen_below),
            Arc::clone(&proxy.all_frozen),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = opened.fetch_add(1, Ordering::SeqCst);
                let (below, all) = (Arc::clone(&below), Arc::clone(&all));
                tokio::spawn(async move {
                    let frozen =
                        move || all.load(Ordering::SeqCst) || id < below.load(Ordering::SeqCst);
                    while frozen() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, frozen.clone()));
                    tokio::spawn(pump(server_read, client_write, frozen));
                });
            }
        });
        proxy
    }

    /// Black-holes everything, and for good every connection open now.
    fn partition(&self) {
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
        self.all_frozen.store(true, Ordering::SeqCst);
    }

    /// Lets new connections through again.
    fn heal(&self) {
        self.all_frozen.store(false, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => {
                // Closed: pass it on, unless black-holed (then the socket just stays open).
                while frozen() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return;
            }
        };
        while frozen() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_half_open_partition() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let proxy = Proxy::start(db.connect_options().get_port()).await;
    let proxied = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(db.connect_options().host("127.0.0.1").port(proxy.port));
    let directory = PgDirectory::builder(&proxied)
        .heartbeat(Duration::from_millis(200))
        .staleness_bound(Duration::from_secs(1))
        .start();
    directory
        .synced(Duration::from_secs(10))
        .await
        .expect("sync");

    proxy.partition();
    let stale = within(Duration::from_secs(5), || directory.is_stale()).await;
    assert!(stale.is_some(), "stale during the partition");
    proxy.heal();
    let k = key("healed");
    store
        .create(&SandboxEntry::new(k.clone()))
        .await
        .expect("create");
    // Its old connections stay dead; a new session must not wait on them.
    let back = within(Duration::from_secs(30), || {
        !directory.is_stale() && directory.get(&k).is_some()
    })
    .await;
    assert!(
        back.is_some(),
        "fresh and resynced after the partition healed"
    );

    drop(directory);
    db.cleanup().await;
}

/// A database whose directory has one sandbox (`prefix`) forking `billing`.
async fn forked_sandbox(prefix: &str) -> (TestDatabase, DirectoryStore, SandboxKey) {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let store = DirectoryStore::new(db.pool().clone());
    let k = key(prefix);
    store
        .create(
            &SandboxEntry::new(k.clone())
                .fork("billing", "http://fork".parse().expect("a fork address")),
        )
        .await
        .expect("create");
    (db, store, k)
}

/// Partition `partition` of `orders` for the `orders-billing` group.
fn place(partition: i32) -> CutPlace {
    CutPlace {
        group: "orders-billing".to_owned(),
        topic: "orders".to_owned(),
        partition,
    }
}

/// `d.settle_cut` of what a baseline saw at `offset` of `place`.
fn settle<'a>(
    d: &'a PgDirectory,
    place: &'a CutPlace,
    sandbox: &'a SandboxKey,
    forking: Option<i64>,
    offset: i64,
) -> CutFuture<'a, Vec<Range>> {
    d.settle_cut(Sighting {
        place,
        sandbox,
        forking,
        offset,
    })
}

/// The Kafka cuts, kept in the database: two baseline processes racing to record the cut of
/// one partition agree (the first to commit wins, the other is handed its ranges); decisions
/// behind the frontier change nothing; a fork reads them with `SELECT` alone and cannot write;
/// a gone sandbox's cuts go a retention after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cuts_are_recorded_once_and_read_without_write_rights() {
    use prodbox_core::directory::DirectoryError;

    let (db, store, k) = forked_sandbox("cuts").await;
    let (a, b) = (fast(&db), fast(&db));
    a.synced(Duration::from_secs(10)).await.expect("sync");
    b.synced(Duration::from_secs(10)).await.expect("sync");
    let other = key("cuts-other");
    let of = |cuts: prodbox_core::directory::PartitionCuts, sandbox: &SandboxKey| {
        cuts.get(sandbox).cloned().unwrap_or_default()
    };

    // Nothing forks yet: nothing is written.
    assert_eq!(
        settle(&a, &place(0), &k, None, 3).await.expect("settle"),
        []
    );
    assert!(a.cut_ranges(&place(0)).await.expect("read").is_empty());

    // Each partition raced by both processes, each seeing the fork at a different offset.
    for partition in 0..20 {
        let p = place(partition);
        let (x, y) = tokio::join!(
            settle(&a, &p, &k, Some(7), 10),
            settle(&b, &p, &k, Some(7), 12)
        );
        let (x, y) = (x.expect("a"), y.expect("b"));
        assert_eq!(x, y, "partition {partition}: both see the winner's ranges");
        assert_eq!(x.len(), 1);
        assert!([10, 12].contains(&x[0].start), "{x:?}");
        assert_eq!(of(b.cut_ranges(&p).await.expect("read"), &k), x);
    }
    // Another sandbox's cuts in the same partition are its own; one read returns both.
    let theirs = settle(&a, &place(0), &other, Some(3), 11)
        .await
        .expect("other");
    let both = b.cut_ranges(&place(0)).await.expect("read");
    assert_eq!(both.len(), 2);
    assert_eq!(of(both, &other), theirs);

    // Closed where the fork stopped; a decision behind that changes nothing; made again.
    let p = place(0);
    let opened = settle(&a, &p, &k, Some(7), 10).await.expect("open");
    let closed = settle(&a, &p, &k, None, 20).await.expect("close");
    assert_eq!(
        closed,
        [Range {
            incarnation: 7,
            start: opened[0].start,
            end: Some(20)
        }]
    );
    assert_eq!(settle(&b, &p, &k, Some(7), 15).await.expect("late"), closed);
    let again = settle(&b, &p, &k, Some(9), 30).await.expect("again");
    assert_eq!(again.len(), 2);
    assert_eq!(
        again[1],
        Range {
            incarnation: 9,
            start: 30,
            end: None
        }
    );

    // A fork's directory: SELECT on the tables only. It reads the cuts; it cannot record one.
    let reader = format!("prodbox_cut_reader_{}", prodbox_testkit::pg::run_id());
    let mut admin = db.admin().await;
    for sql in [
        format!("DROP ROLE IF EXISTS {reader}"),
        format!("CREATE ROLE {reader} LOGIN"),
        format!("GRANT USAGE ON SCHEMA prodbox TO {reader}"),
        format!("GRANT SELECT ON prodbox.sandboxes, prodbox.kafka_cuts TO {reader}"),
    ] {
        sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(sql))
            .await
            .expect("reader role");
    }
    let fork_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.connect_options().username(&reader))
        .await
        .expect("reader pool");
    let fork = PgDirectory::builder(&fork_pool).start();
    fork.synced(Duration::from_secs(10)).await.expect("sync");
    assert_eq!(of(fork.cut_ranges(&p).await.expect("read"), &k), again);
    let refused = settle(&fork, &p, &k, None, 40).await;
    assert!(
        matches!(&refused, Err(DirectoryError::Cuts(m)) if m.contains("permission denied")),
        "{refused:?}"
    );
    assert_eq!(of(a.cut_ranges(&p).await.expect("read"), &k), again);
    drop(fork);
    fork_pool.close().await;

    // Deleted: its cuts stay for a retention, then go with the next purge.
    assert!(store.delete(&k).await.expect("delete"));
    store
        .purge_expired(Duration::from_secs(3600))
        .await
        .expect("purge");
    assert_eq!(of(a.cut_ranges(&p).await.expect("read"), &k), again);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store
        .purge_expired(Duration::from_secs(1))
        .await
        .expect("purge");
    assert_eq!(of(a.cut_ranges(&p).await.expect("read"), &k), []);

    drop((a, b));
    db.cleanup().await;
    sqlx::Executor::execute(
        &mut admin_connection().await,
        sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {reader}")),
    )
    .await
    .expect("drop reader");
}

/// A gone sandbox's cuts outlive its deletion by the retention, however long ago they last
/// changed: its fork may still be draining records the baseline skipped as the fork's.
/// (Found by a review: the purge went by the cuts' last change.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_sandboxs_cuts_stay_a_retention_after_its_deletion() {
    let (db, store, k) = forked_sandbox("cutsgone").await;
    let d = PgDirectory::builder(db.pool()).start();
    d.synced(Duration::from_secs(10)).await.expect("sync");
    let place = place(0);
    let opened = settle(&d, &place, &k, Some(7), 10).await.expect("open");
    assert_eq!(opened.len(), 1);
    // The sandbox lives on (longer than the retention, scaled down to 1 s here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    store
        .purge_expired(Duration::from_secs(1))
        .await
        .expect("purge");
    assert_eq!(
        d.cut_ranges(&place).await.expect("read").get(&k).cloned(),
        Some(opened.clone()),
        "kept while the sandbox exists"
    );
    // Deleted now; purged right after (a purge runs at most a minute later).
    assert!(store.delete(&k).await.expect("delete"));
    store
        .purge_expired(Duration::from_secs(1))
        .await
        .expect("purge");
    let left = d.cut_ranges(&place).await.expect("read").get(&k).cloned();
    // A retention after the deletion, it goes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    store
        .purge_expired(Duration::from_secs(1))
        .await
        .expect("purge");
    let later = d.cut_ranges(&place).await.expect("read").get(&k).cloned();
    drop(d);
    db.cleanup().await;
    assert_eq!(
        left,
        Some(opened),
        "the open range was purged at once, not a retention after the deletion"
    );
    assert_eq!(later, None, "kept past the retention after the deletion");
}
