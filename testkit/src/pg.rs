//! PostgreSQL helpers for integration tests that run against the machine's real server.
//!
//! Every test gets a database of its own ([`TestDatabase`]), named uniquely per process and
//! call, and dropped again by [`TestDatabase::cleanup`] (or, if the test panicked first, when the
//! value is dropped). Sandbox roles are cluster-wide, so tests use keys unique per run
//! ([`unique_key`]) and the cleanup drops the sandbox roles the database knew about.
//!
//! The server is found at [`admin_url`]: `postgres://postgres@127.0.0.1:5432/postgres` unless
//! `PRODBOX_TEST_PG_URL` says otherwise (a superuser URL of any database of the cluster).

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

/// The superuser URL tests connect with when `PRODBOX_TEST_PG_URL` is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to start the server when it is down, for panic messages.
pub const START_HINT: &str = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start \
     (or point PRODBOX_TEST_PG_URL at a superuser URL of a running server)";

/// The superuser URL of the test cluster.
pub fn admin_url() -> String {
    std::env::var("PRODBOX_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn admin_options() -> PgConnectOptions {
    let url = admin_url();
    url.parse()
        .unwrap_or_else(|e| panic!("PRODBOX_TEST_PG_URL {url:?} is not a Postgres URL: {e}"))
}

/// Connects to the cluster as the superuser, panicking with a clear message (and how to start
/// the server) when PostgreSQL is not reachable.
pub async fn admin_connection() -> PgConnection {
    let url = admin_url();
    let options = admin_options();
    let connect = PgConnection::connect_with(&options);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => panic!("PostgreSQL is not reachable at {url}: {error}; {START_HINT}"),
        Err(_) => panic!("PostgreSQL at {url} did not answer within 10 s; {START_HINT}"),
    }
}

/// Panics with a clear message (and how to start the server) unless PostgreSQL answers.
pub async fn require_postgres() {
    let mut conn = admin_connection().await;
    conn.execute("SELECT 1")
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} refused `SELECT 1`: {e}", admin_url()));
    let _ = conn.close().await;
}

/// A short string unique to this test process (pid plus randomness), in `[a-z0-9]`.
pub fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        base36(hasher.finish() % 36u64.pow(6), 6)
    })
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A sandbox key unique to this call: `<prefix>-<run id>-<counter>`. `prefix` must itself be
/// a valid key fragment (`a-z`, `0-9`, `-`); keep it short so that derived names stay readable.
pub fn unique_key(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", run_id())
}

fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    base36(hasher.finish() % 36u64.pow(6), 6)
}

/// A fresh database for one test, with a pool on it; see the [module docs](self).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    options: PgConnectOptions,
    pool: PgPool,
    cleaned: bool,
}

impl TestDatabase {
    /// Creates a database with a pool of at most 10 connections.
    pub async fn create() -> TestDatabase {
        Self::create_with(10).await
    }

    /// Creates a database with a pool of at most `max_connections` connections.
    pub async fn create_with(max_connections: u32) -> TestDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "prodbox_t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            random_suffix()
        );
        let mut admin = admin_connection().await;
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {}", quote(&name))))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = admin.close().await;

        let options = admin_options().database(&name);
        let url = database_url(&name);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {name}: {e}"));
        TestDatabase {
            name,
            url,
            options,
            pool,
            cleaned: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A superuser URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connect options for the database (as the superuser).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// The pool made with the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Another pool on the database, of at most `max_connections` connections.
    pub async fn new_pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(self.options.clone())
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.name))
    }

    /// A connection of its own to the database, as the superuser, outside every pool.
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect_with(&self.options)
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.name))
    }

    /// Drops the database (`WITH (FORCE)`, ending its sessions) and every sandbox role it
    /// knew about (recorded in `prodbox.sandbox_schemas` or owning one of its schemas).
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        self.pool.close().await;
        drop_database(&self.name, &self.options).await;
    }
}

impl Drop for TestDatabase {
    /// Cleans up after a test that panicked before calling [`cleanup`](Self::cleanup), unless
    /// `PRODBOX_TEST_KEEP_DB` is set (to look at what the failing test left).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if std::env::var_os("PRODBOX_TEST_KEEP_DB").is_some() {
            eprintln!("keeping test database {} (PRODBOX_TEST_KEEP_DB)", self.name);
            return;
        }
        let name = self.name.clone();
        let options = self.options.clone();
        // Async work from `drop`, which may run inside a runtime: on a thread of its own.
        let cleanup =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drop_database(&name, &options)),
                    Err(error) => eprintln!("could not drop test database {name}: {error}"),
                }
            });
        let _ = cleanup.join();
    }
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    // Replace the database path of the admin URL, keeping any query string.
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let authority_end = base
        .find("://")
        .map(|at| at + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..authority_end])
}

async fn drop_database(name: &str, options: &PgConnectOptions) {
    // Sandbox roles the database knows about, read before it goes.
    let mut roles: Vec<String> = Vec::new();
    if let Ok(mut conn) = PgConnection::connect_with(options).await {
        let catalogue: bool =
            sqlx::query_scalar("SELECT to_regclass('prodbox.sandbox_schemas') IS NOT NULL")
                .fetch_one(&mut conn)
                .await
                .unwrap_or(false);
        let owners = "SELECT r.rolname::text FROM pg_namespace n
                      JOIN pg_roles r ON r.oid = n.nspowner WHERE r.rolname LIKE 'sbxr\\_%'";
        let found: Result<Vec<String>, _> = if catalogue {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "{owners} UNION SELECT role_name FROM prodbox.sandbox_schemas"
            )))
            .fetch_all(&mut conn)
            .await
        } else {
            sqlx::query_scalar(owners).fetch_all(&mut conn).await
        };
        roles.extend(found.unwrap_or_default());
        let _ = conn.close().await;
    }
    let mut admin = admin_connection().await;
    if let Err(error) = admin
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(name)
        )))
        .await
    {
        eprintln!("could not drop test database {name}: {error}");
    }
    drop_roles(&mut admin, &roles).await;
    let _ = admin.close().await;
}

async fn drop_roles(admin: &mut PgConnection, roles: &[String]) {
    for role in roles {
        if let Err(error) = admin
            .execute(AssertSqlSafe(format!(
                "DROP ROLE IF EXISTS {}",
                quote(role)
            )))
            .await
        {
            eprintln!("could not drop test role {role}: {error}");
        }
    }
}

/// Drops every sandbox role of the cluster whose name contains this process's [`run_id`]
/// (roles derived from [`unique_key`] keys short enough to keep it). Only for roles whose
/// databases are gone already: a role that still owns objects cannot be dropped.
pub async fn drop_run_roles() {
    let mut admin = admin_connection().await;
    let pattern = format!("sbxr\\_%{}%", run_id());
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
            .bind(pattern)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
    drop_roles(&mut admin, &roles).await;
    let _ = admin.close().await;
}

/// A cluster-wide lock (a session advisory lock), for tests that must use fixed names (roles
/// are cluster-wide) and so must not run at the same time as another test process doing the
/// same. Held until dropped.
#[derive(Debug)]
pub struct ClusterLock {
    _conn: PgConnection,
}

/// Waits for the cluster-wide lock called `name`; see [`ClusterLock`].
pub async fn cluster_lock(name: &str) -> ClusterLock {
    let mut conn = admin_connection().await;
    sqlx::query("SELECT pg_advisory_lock(hashtext('prodbox-test'), hashtext($1))")
        .bind(name)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("taking cluster lock {name}: {e}"));
    // Closing the connection (dropping it) releases the lock.
    ClusterLock { _conn: conn }
}

/// Whether a role of this name exists in the cluster.
pub async fn role_exists(role: &str) -> bool {
    let mut admin = admin_connection().await;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(&mut admin)
        .await
        .expect("query pg_roles");
    let _ = admin.close().await;
    exists
}

/// Whether schema `schema` exists in the database of `pool`.
pub async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("query pg_namespace")
}

/// `SELECT count(*) FROM <schema>.<table>` on `pool` (names quoted).
pub async fn count_rows(pool: &PgPool, schema: &str, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.{}",
        quote(schema),
        quote(table)
    )))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("counting {schema}.{table}: {e}"))
}

/// `ident` as a quoted Postgres identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_urls() {
        let a = unique_key("t");
        let b = unique_key("t");
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
        assert_eq!(base36(35, 3), "00z");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        if std::env::var_os("PRODBOX_TEST_PG_URL").is_none() {
            assert_eq!(database_url("x"), "postgres://postgres@127.0.0.1:5432/x");
        }
    }
}
