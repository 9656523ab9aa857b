//! Creating, recording and dropping sandbox schemas and their roles.
//!
//! Every lock prodbox takes lives in the `prodbox` schema, which sandbox roles cannot use
//! (`REVOKE ALL ... FROM PUBLIC`): a row of `prodbox.provisioning` per sandbox, and the table
//! `prodbox.ddl_lock` for DDL on the schema. Advisory locks are not used: any session, a
//! sandbox's included, may take any advisory lock and hold it.

mod teardown;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prodbox_core::{Sandbox, SandboxKey};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor, Row};
use tokio::sync::OnceCell;

use crate::error::SandboxDbError;
use crate::names::{quote, role_name, schema_name};

/// One sandbox schema, as the catalogue records it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaRecord {
    /// The sandbox.
    pub key: SandboxKey,
    /// Its schema.
    pub schema: String,
    /// Its role.
    pub role: String,
    /// When it was provisioned.
    pub created_at: SystemTime,
    /// When a process last opened a pool on it.
    pub last_used_at: SystemTime,
    /// When the janitor may drop it.
    pub expires_at: Option<SystemTime>,
}

/// Runs DDL built only from quoted, derived names (never from input text).
fn ddl(sql: String) -> sqlx::RawSql {
    sqlx::raw_sql(AssertSqlSafe(sql))
}

/// What one provisioning attempt created, so that a failed attempt drops only that.
#[derive(Default)]
struct Made {
    role: bool,
    schema: bool,
}

/// A login password from the server's random source, checked to be hex before it is ever
/// written into DDL.
pub(crate) async fn new_password(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let password: String =
        sqlx::query_scalar("SELECT md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text)")
            .fetch_one(conn)
            .await?;
    if password.len() == 64 && password.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(password)
    } else {
        Err(sqlx::Error::Protocol(
            "unexpected password format".to_owned(),
        ))
    }
}

/// The incarnation `sandbox` names (its creation, in Unix microseconds), if any.
pub(crate) fn incarnation_of(sandbox: &Sandbox) -> Option<i64> {
    sandbox
        .created_at()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
}

/// `t` as Unix seconds, for `to_timestamp`.
pub(crate) fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Unix seconds (from `extract(epoch ..)`) as a time.
pub(crate) fn time(secs: f64) -> SystemTime {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or(UNIX_EPOCH)
}

/// `Migrator::run` through its connection-level entry point: `run` itself is generic over
/// `Acquire`, which makes any future holding it fail the `Send` check for all lifetimes (sqlx
/// exposes `run_direct` for exactly this).
async fn run_migrations(
    migrator: &Migrator,
    conn: &mut PgConnection,
) -> Result<(), sqlx::migrate::MigrateError> {
    migrator.run_direct(None, conn, false).await
}

/// Runs `ddl` (idempotent DDL on the `prodbox` schema) unless `ready` says all is in place:
/// under `prodbox.ddl_lock`, taken with `timeout`, so that processes racing to create the
/// schema take turns. Creating the schema and the lock table themselves can race too; a
/// duplicate there means another process made them first, and is tried again.
pub(crate) async fn ensure_ddl(
    conn: &mut PgConnection,
    ready: &str,
    ddl: &str,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    // The DDL takes locks that block writers for a moment: skip it when all is in place.
    if sqlx::query_scalar::<_, bool>(AssertSqlSafe(ready))
        .fetch_one(&mut *conn)
        .await?
    {
        return Ok(());
    }
    for attempt in 0.. {
        let made = conn
            .execute(
                "CREATE SCHEMA IF NOT EXISTS prodbox;
                 CREATE TABLE IF NOT EXISTS prodbox.ddl_lock ();",
            )
            .await;
        match made {
            Ok(_) => break,
            // unique_violation, duplicate_schema, duplicate_table: made by someone else.
            Err(sqlx::Error::Database(e))
                if attempt < 3
                    && matches!(e.code().as_deref(), Some("23505" | "42P06" | "42P07")) => {}
            Err(e) => return Err(e),
        }
    }
    let mut tx = conn.begin().await?;
    tx.execute(AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = {}; LOCK TABLE prodbox.ddl_lock IN ACCESS EXCLUSIVE MODE; \
         REVOKE ALL ON SCHEMA prodbox FROM PUBLIC;",
        timeout.as_millis().max(1)
    )))
    .await?;
    tx.execute(AssertSqlSafe(ddl)).await?;
    tx.commit().await
}

/// A sandbox's row of `prodbox.provisioning`, locked `FOR UPDATE` on a connection of its own
/// until [`release`](Self::release) (or until the connection drops, should the process die):
/// at most one process provisions or drops a sandbox at a time.
struct SandboxLock {
    conn: PgConnection,
}

impl SandboxLock {
    async fn take(
        options: &PgConnectOptions,
        key: &SandboxKey,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::query("INSERT INTO prodbox.provisioning (key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(key.as_str())
            .execute(&mut conn)
            .await?;
        conn.execute(AssertSqlSafe(format!(
            "BEGIN; SET LOCAL lock_timeout = {}",
            timeout.as_millis().max(1)
        )))
        .await?;
        sqlx::query("SELECT 1 FROM prodbox.provisioning WHERE key = $1 FOR UPDATE")
            .bind(key.as_str())
            .execute(&mut conn)
            .await?;
        Ok(Self { conn })
    }

    async fn release(mut self) {
        let _ = self.conn.execute("COMMIT").await;
        let _ = self.conn.close().await;
    }
}

/// How a sandbox's pool logs in: as the sandbox's own role, so that nothing a session runs
/// (`RESET ROLE`, `SET ROLE`) can leave it.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) role: String,
    pub(crate) password: String,
}

/// The catalogue of sandbox schemas and the provisioning locks.
const CATALOGUE: &str = "
CREATE TABLE IF NOT EXISTS prodbox.sandbox_schemas (
    key text PRIMARY KEY,
    schema_name text NOT NULL UNIQUE,
    role_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
ALTER TABLE prodbox.sandbox_schemas ADD COLUMN IF NOT EXISTS role_password text;
ALTER TABLE prodbox.sandbox_schemas ADD COLUMN IF NOT EXISTS incarnation bigint;
CREATE TABLE IF NOT EXISTS prodbox.provisioning (key text PRIMARY KEY);
";

const CATALOGUE_READY: &str = "
SELECT to_regclass('prodbox.provisioning') IS NOT NULL
   AND EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = 'prodbox' AND table_name = 'sandbox_schemas'
                 AND column_name = 'incarnation')";

#[derive(Clone)]
pub(crate) struct Provisioner {
    pub(crate) options: Arc<PgConnectOptions>,
    pub(crate) migrator: Option<Arc<Migrator>>,
    pub(crate) seed: Option<Arc<str>>,
    pub(crate) default_ttl: Duration,
    /// `CONNECTION LIMIT` of each sandbox role.
    pub(crate) connection_limit: u32,
    /// `statement_timeout` and `idle_in_transaction_session_timeout` of each sandbox role (a
    /// default the sandbox can change; the watchdog enforces it).
    pub(crate) statement_bound: Duration,
    /// How long provisioning waits for another process's lock on the same sandbox.
    pub(crate) lock_timeout: Duration,
    /// The database's name, read from the server once: sandbox roles are named after it.
    pub(crate) database: Arc<OnceCell<String>>,
}

impl Provisioner {
    /// A connection of its own: provisioning changes session state (role, search path), which
    /// must never reach a pooled connection.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    /// The name of the database the pools use.
    pub(crate) async fn database(&self, conn: &mut PgConnection) -> Result<&str, sqlx::Error> {
        self.database
            .get_or_try_init(|| async {
                sqlx::query_scalar::<_, String>("SELECT current_database()")
                    .fetch_one(&mut *conn)
                    .await
            })
            .await
            .map(String::as_str)
    }

    async fn ensure_catalogue(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let catalogue = format!("{CATALOGUE}{}", crate::exposure::DEPENDENCIES);
        let ready = format!(
            "{CATALOGUE_READY} AND {}",
            crate::exposure::DEPENDENCIES_READY
        );
        ensure_ddl(conn, &ready, &catalogue, self.lock_timeout).await?;
        ensure_ddl(
            conn,
            crate::exposure::GUARD_READY,
            crate::exposure::GUARD,
            self.lock_timeout,
        )
        .await
    }

    /// The role of `key` in this database.
    async fn role(&self, conn: &mut PgConnection, key: &SandboxKey) -> Result<String, sqlx::Error> {
        Ok(role_name(self.database(conn).await?, key))
    }

    fn expiry(&self, sandbox: &Sandbox) -> f64 {
        secs(
            sandbox
                .expires_at()
                .unwrap_or_else(|| SystemTime::now() + self.default_ttl),
        )
    }

    /// Makes sure `sandbox`'s schema exists, is recorded and exposes nothing of production,
    /// and returns how to log in as its role: idempotent, and safe when several processes race
    /// (one provisions at a time, under the sandbox's row of `prodbox.provisioning`). Run
    /// whenever a process opens the sandbox's pool.
    pub(crate) fn ensure(
        &self,
        sandbox: &Sandbox,
    ) -> futures_core::future::BoxFuture<'static, Result<Credentials, SandboxDbError>> {
        // Boxed with owned captures: callers hold it across awaits in `Send` streams.
        let this = self.clone();
        let sandbox = sandbox.clone();
        Box::pin(async move { this.ensure_owned(&sandbox).await })
    }

    async fn ensure_owned(&self, sandbox: &Sandbox) -> Result<Credentials, SandboxDbError> {
        let key = sandbox.key();
        self.on_connection(key, async |conn| {
            self.ensure_catalogue(conn).await.map_err(failed(key))?;
            let lock = SandboxLock::take(&self.options, key, self.lock_timeout)
                .await
                .map_err(failed(key))?;
            let result = self.ensure_locked(conn, sandbox).await;
            lock.release().await;
            result
        })
        .await
    }

    /// Runs `work` on a connection of its own, closed after: a failure to connect is a
    /// provisioning failure of `key`.
    async fn on_connection<T>(
        &self,
        key: &SandboxKey,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, SandboxDbError>,
    ) -> Result<T, SandboxDbError> {
        let mut conn = self.connect().await.map_err(failed(key))?;
        let result = work(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    async fn ensure_locked(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
    ) -> Result<Credentials, SandboxDbError> {
        let key = sandbox.key();
        let failed = failed(key);
        let recorded: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT role_password, incarnation FROM prodbox.sandbox_schemas WHERE key = $1",
        )
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(failed)?;
        let Some((password, incarnation)) = recorded else {
            return self.provision(conn, sandbox).await;
        };
        // The schema of an earlier incarnation of the sandbox (deleted and made again under
        // the same key) is not the new one's: it is dropped, and the new one starts empty.
        // A sandbox that names no incarnation (no directory) takes the schema there is.
        if let Some(created) = incarnation_of(sandbox)
            && incarnation != Some(created)
        {
            // A process whose directory has not heard of the newer incarnation yet: never
            // replace a newer schema with an older one.
            if incarnation.is_some_and(|recorded| recorded > created) {
                return Err(SandboxDbError::StaleIncarnation {
                    sandbox: key.clone(),
                });
            }
            self.drop_objects(conn, key).await.map_err(failed)?;
            sqlx::query("DELETE FROM prodbox.sandbox_schemas WHERE key = $1")
                .bind(key.as_str())
                .execute(&mut *conn)
                .await
                .map_err(failed)?;
            return self.provision(conn, sandbox).await;
        }
        self.record_use(conn, sandbox).await.map_err(failed)?;
        // Recorded (by this process or another): the role is made what a sandbox role must be
        // again, whatever the sandbox changed about it, and the check is run again, as grants
        // to PUBLIC may have been added since.
        let password = match password {
            Some(password) => password,
            None => {
                let password = new_password(conn).await.map_err(failed)?;
                sqlx::query("UPDATE prodbox.sandbox_schemas SET role_password = $2 WHERE key = $1")
                    .bind(key.as_str())
                    .bind(&password)
                    .execute(&mut *conn)
                    .await
                    .map_err(failed)?;
                password
            }
        };
        let role = self.role(conn, key).await.map_err(failed)?;
        self.restrict(conn, key, &role, &password)
            .await
            .map_err(failed)?;
        self.check_exposure(conn, key, &role).await?;
        Ok(Credentials { role, password })
    }

    /// Gives `role` exactly the attributes and settings of a sandbox role: it logs in (with
    /// `password`) and can do nothing a plain role cannot, starts every session in its schema
    /// with its statements bounded, and holds at most `connection_limit` connections.
    async fn restrict(
        &self,
        conn: &mut PgConnection,
        key: &SandboxKey,
        role: &str,
        password: &str,
    ) -> Result<(), sqlx::Error> {
        let (role, schema) = (quote(role), quote(&schema_name(key)));
        let bound = self.statement_bound.as_millis().max(1);
        let name = role.clone();
        conn.execute(ddl(format!(
            "ALTER ROLE {role} WITH LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {limit} PASSWORD '{password}';
             ALTER ROLE {role} RESET ALL;
             DO $$ DECLARE granted text; BEGIN
                 -- Settings per database outrank the role's own, and a role may make them
                 -- itself.
                 EXECUTE format('ALTER ROLE %s IN DATABASE %I RESET ALL', '{name}',
                                current_database());
                 -- A role granted to it would let it SET ROLE out of the sandbox.
                 FOR granted IN SELECT g.rolname FROM pg_auth_members m
                                JOIN pg_roles g ON g.oid = m.roleid
                                WHERE m.member = '{name}'::regrole
                 LOOP
                     EXECUTE format('REVOKE %I FROM %s', granted, '{name}');
                 END LOOP;
             END $$;
             ALTER ROLE {role} SET search_path TO {schema};
             ALTER ROLE {role} SET statement_timeout = {bound};
             ALTER ROLE {role} SET idle_in_transaction_session_timeout = {bound};",
            limit = self.connection_limit,
        )))
        .await
        .map(drop)
    }

    /// Refuses `key` when its role could reach anything of production.
    async fn check_exposure(
        &self,
        conn: &mut PgConnection,
        key: &SandboxKey,
        role: &str,
    ) -> Result<(), SandboxDbError> {
        let findings = crate::exposure::findings(conn, role, &schema_name(key))
            .await
            .map_err(failed(key))?;
        if findings.is_empty() {
            Ok(())
        } else {
            Err(SandboxDbError::ProductionExposed {
                sandbox: key.clone(),
                findings: findings.iter().map(ToString::to_string).collect(),
            })
        }
    }

    /// Provisions a sandbox that is not recorded; on failure, drops what this attempt made.
    async fn provision(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
    ) -> Result<Credentials, SandboxDbError> {
        let mut made = Made::default();
        let started = std::time::Instant::now();
        match self.create(conn, sandbox, &mut made).await {
            Ok(credentials) => {
                prodbox_core::plumbing::metrics::schema_provisioned(started.elapsed());
                Ok(credentials)
            }
            Err(error) => {
                // Leave nothing half-made behind, and touch nothing this attempt did not make.
                if let Ok(role) = self.role(conn, sandbox.key()).await {
                    let _ = Self::drop_made(conn, sandbox.key(), &role, &made).await;
                }
                Err(error)
            }
        }
    }

    /// Records that `sandbox` is in use now, extending an expiry that was derived from use.
    async fn record_use(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE prodbox.sandbox_schemas
             SET last_used_at = now(), expires_at = GREATEST(expires_at, to_timestamp($2))
             WHERE key = $1",
        )
        .bind(sandbox.key().as_str())
        .bind(self.expiry(sandbox))
        .execute(conn)
        .await
        .map(drop)
    }

    /// Records that `sandbox` is in use and extends an expiry that was derived from use, and
    /// runs the exposure check again: a grant to PUBLIC added since refuses the sandbox.
    pub(crate) async fn touch(&self, sandbox: &Sandbox) -> Result<(), SandboxDbError> {
        let key = sandbox.key();
        self.on_connection(key, async |conn| {
            self.record_use(conn, sandbox).await.map_err(failed(key))?;
            let role = self.role(conn, key).await.map_err(failed(key))?;
            self.check_exposure(conn, key, &role).await
        })
        .await
    }

    async fn create(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
        made: &mut Made,
    ) -> Result<Credentials, SandboxDbError> {
        let key = sandbox.key();
        let failed = failed(key);
        let role_name = self.role(conn, key).await.map_err(failed)?;
        let (schema, role) = (quote(&schema_name(key)), quote(&role_name));
        let password = new_password(conn).await.map_err(failed)?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&role_name)
                .fetch_one(&mut *conn)
                .await
                .map_err(failed)?;
        if role_exists {
            // Left by an attempt that did not finish, or not ours at all: taken over only when
            // it can do nothing a sandbox role cannot.
            let privileged: bool = sqlx::query_scalar(
                "SELECT r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolbypassrls
                        OR r.rolreplication
                        OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid)
                 FROM pg_roles r WHERE r.rolname = $1",
            )
            .bind(&role_name)
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
            if privileged {
                return Err(failed(sqlx::Error::Protocol(format!(
                    "role {role_name} exists with attributes or memberships a sandbox role must not have; drop it"
                ))));
            }
            // A schema of ours without a catalogue row (we hold the sandbox's lock) is what an
            // interrupted attempt left: start it over.
            let leftover: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                                WHERE n.nspname = $1 AND r.rolname = $2)",
            )
            .bind(schema_name(key))
            .bind(&role_name)
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
            if leftover {
                conn.execute(ddl(format!("DROP SCHEMA {schema} CASCADE")))
                    .await
                    .map_err(failed)?;
            }
        } else {
            // Made to log in as itself: a session cannot `RESET ROLE` out of it, and NOINHERIT
            // with no memberships leaves it nothing to `SET ROLE` to. `restrict` gives it the
            // rest.
            conn.execute(ddl(format!("CREATE ROLE {role} WITH NOLOGIN")))
                .await
                .map_err(failed)?;
            made.role = true;
        }
        self.restrict(conn, key, &role_name, &password)
            .await
            .map_err(failed)?;
        // Plain `CREATE SCHEMA`: a schema of that name this attempt did not make is an error,
        // never something to take over, or to drop on failure. The production login is made a
        // member so that it may create the schema for the role and end the role's sessions.
        conn.execute(ddl(format!(
            "GRANT {role} TO CURRENT_USER; CREATE SCHEMA {schema} AUTHORIZATION {role}"
        )))
        .await
        .map_err(failed)?;
        made.schema = true;

        // Fail closed: refuse a sandbox that could reach production at all.
        self.check_exposure(conn, key, &role_name).await?;

        // The service's own migrations and seed, run by the sandbox's role itself, on a
        // connection that logged in as it: nothing they run (`RESET ROLE`, `SET ROLE`) can
        // make them anyone else.
        let options = (*self.options)
            .clone()
            .username(&role_name)
            .password(&password);
        let mut own = PgConnection::connect_with(&options).await.map_err(failed)?;
        let migrated = async {
            // Migrations may take longer than the bound of the role's request sessions; this
            // connection is prodbox's own (no watchdog ends it), and closed right after.
            own.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
                .await
                .map_err(failed)?;
            if let Some(migrator) = &self.migrator {
                run_migrations(migrator, &mut own)
                    .await
                    .map_err(|e| failed(sqlx::Error::Migrate(Box::new(e))))?;
            }
            if let Some(seed) = &self.seed {
                own.execute(ddl(seed.to_string())).await.map_err(failed)?;
            }
            Ok(())
        }
        .await;
        let _ = own.close().await;
        migrated?;

        sqlx::query(
            "INSERT INTO prodbox.sandbox_schemas
                 (key, schema_name, role_name, expires_at, role_password, incarnation)
             VALUES ($1, $2, $3, to_timestamp($4), $5, $6)",
        )
        .bind(key.as_str())
        .bind(schema_name(key))
        .bind(&role_name)
        .bind(self.expiry(sandbox))
        .bind(&password)
        .bind(incarnation_of(sandbox))
        .execute(&mut *conn)
        .await
        .map_err(failed)?;
        Ok(Credentials {
            role: role_name,
            password,
        })
    }

    /// Every recorded sandbox schema.
    pub(crate) async fn list(&self) -> Result<Vec<SchemaRecord>, sqlx::Error> {
        let mut conn = self.connect().await?;
        self.ensure_catalogue(&mut conn).await?;
        let rows = sqlx::query(
            "SELECT key, schema_name, role_name,
                    extract(epoch FROM created_at)::float8 AS created,
                    extract(epoch FROM last_used_at)::float8 AS used,
                    extract(epoch FROM expires_at)::float8 AS expires
             FROM prodbox.sandbox_schemas ORDER BY key",
        )
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get("key")?;
            // A row whose key no longer validates was not written by prodbox: skip it.
            let Ok(key) = key.parse() else { continue };
            records.push(SchemaRecord {
                key,
                schema: row.try_get("schema_name")?,
                role: row.try_get("role_name")?,
                created_at: time(row.try_get("created")?),
                last_used_at: time(row.try_get("used")?),
                expires_at: row.try_get::<Option<f64>, _>("expires")?.map(time),
            });
        }
        Ok(records)
    }

    /// The keys whose schemas have expired at `now`.
    pub(crate) async fn expired(&self, now: SystemTime) -> Result<Vec<SandboxKey>, sqlx::Error> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| r.expires_at.is_some_and(|at| at <= now))
            .map(|r| r.key)
            .collect())
    }
}

/// How a database error while provisioning `key` is reported.
fn failed(key: &SandboxKey) -> impl Fn(sqlx::Error) -> SandboxDbError + Copy + '_ {
    move |source| SandboxDbError::Provisioning {
        sandbox: key.clone(),
        source,
    }
}
