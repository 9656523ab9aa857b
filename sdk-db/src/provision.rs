//! Creating, recording and dropping sandbox schemas and their roles.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prodbox_core::{Sandbox, SandboxKey};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor, Row};

use crate::error::SandboxDbError;
use crate::names::{quote, role_name, schema_name};

/// The advisory-lock class of prodbox (`"prod"`): the second key is the sandbox's hash, or 0
/// for DDL on the `prodbox` schema (the catalogue here, the directory table in `directory`).
pub(crate) const LOCK_CLASS: i32 = 0x7072_6f64;

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
async fn new_password(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
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

/// How a sandbox's pool logs in: as the sandbox's own role, so that nothing a session runs
/// (`RESET ROLE`, `SET ROLE`) can leave it.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) role: String,
    pub(crate) password: String,
}

#[derive(Clone)]
pub(crate) struct Provisioner {
    pub(crate) options: Arc<PgConnectOptions>,
    pub(crate) migrator: Option<Arc<Migrator>>,
    pub(crate) seed: Option<Arc<str>>,
    pub(crate) default_ttl: Duration,
}

impl Provisioner {
    /// A connection of its own: provisioning changes session state (role, search path), which
    /// must never reach a pooled connection.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    async fn ensure_catalogue(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock($1, 0)")
            .bind(LOCK_CLASS)
            .execute(&mut *conn)
            .await?;
        let created = conn
            .execute(
                "CREATE SCHEMA IF NOT EXISTS prodbox;
                 CREATE TABLE IF NOT EXISTS prodbox.sandbox_schemas (
                     key text PRIMARY KEY,
                     schema_name text NOT NULL UNIQUE,
                     role_name text NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now(),
                     last_used_at timestamptz NOT NULL DEFAULT now(),
                     expires_at timestamptz
                 );
                 ALTER TABLE prodbox.sandbox_schemas ADD COLUMN IF NOT EXISTS role_password text;
                 REVOKE ALL ON SCHEMA prodbox FROM PUBLIC;",
            )
            .await;
        sqlx::query("SELECT pg_advisory_unlock($1, 0)")
            .bind(LOCK_CLASS)
            .execute(&mut *conn)
            .await?;
        created.map(drop)
    }

    async fn lock(conn: &mut PgConnection, key: &SandboxKey) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(key.as_str())
            .execute(conn)
            .await
            .map(drop)
    }

    async fn unlock(conn: &mut PgConnection, key: &SandboxKey) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(key.as_str())
            .execute(conn)
            .await
            .map(drop)
    }

    fn expiry(&self, sandbox: &Sandbox) -> f64 {
        secs(
            sandbox
                .expires_at()
                .unwrap_or_else(|| SystemTime::now() + self.default_ttl),
        )
    }

    /// Makes sure `sandbox`'s schema exists and is recorded: idempotent, and safe when several
    /// processes race (an advisory lock per sandbox).
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
        let failed = |source| SandboxDbError::Provisioning {
            sandbox: key.clone(),
            source,
        };
        let mut conn = self.connect().await.map_err(failed)?;
        Self::ensure_catalogue(&mut conn).await.map_err(failed)?;
        Self::lock(&mut conn, key).await.map_err(failed)?;
        let result = self.ensure_locked(&mut conn, sandbox).await;
        // Closing the connection releases the lock too; unlock first to release it at once.
        let _ = Self::unlock(&mut conn, key).await;
        let _ = conn.close().await;
        result
    }

    async fn ensure_locked(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
    ) -> Result<Credentials, SandboxDbError> {
        let key = sandbox.key();
        let failed = |source| SandboxDbError::Provisioning {
            sandbox: key.clone(),
            source,
        };
        let recorded: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE prodbox.sandbox_schemas
             SET last_used_at = now(), expires_at = GREATEST(expires_at, to_timestamp($2))
             WHERE key = $1
             RETURNING role_password",
        )
        .bind(key.as_str())
        .bind(self.expiry(sandbox))
        .fetch_optional(&mut *conn)
        .await
        .map_err(failed)?;
        match recorded {
            Some(Some(password)) => {
                return Ok(Credentials {
                    role: role_name(key),
                    password,
                });
            }
            // Recorded without a login password: give the role one.
            Some(None) => {
                let password = new_password(conn).await.map_err(failed)?;
                let role = quote(&role_name(key));
                conn.execute(ddl(format!(
                    "ALTER ROLE {role} WITH LOGIN NOINHERIT PASSWORD '{password}'"
                )))
                .await
                .map_err(failed)?;
                sqlx::query("UPDATE prodbox.sandbox_schemas SET role_password = $2 WHERE key = $1")
                    .bind(key.as_str())
                    .bind(&password)
                    .execute(&mut *conn)
                    .await
                    .map_err(failed)?;
                return Ok(Credentials {
                    role: role_name(key),
                    password,
                });
            }
            None => {}
        }
        let mut made = Made::default();
        let started = std::time::Instant::now();
        match self.create(conn, sandbox, &mut made).await {
            Ok(credentials) => {
                prodbox_core::metrics::schema_provisioned(started.elapsed());
                Ok(credentials)
            }
            Err(error) => {
                // Leave nothing half-made behind, and touch nothing this attempt did not make.
                let _ = conn.execute("RESET ROLE; RESET search_path").await;
                let _ = Self::drop_made(conn, key, &made).await;
                Err(error)
            }
        }
    }

    /// Records that `sandbox` is in use and extends an expiry that was derived from use.
    pub(crate) async fn touch(&self, sandbox: &Sandbox) -> Result<(), sqlx::Error> {
        let mut conn = self.connect().await?;
        let result = sqlx::query(
            "UPDATE prodbox.sandbox_schemas
             SET last_used_at = now(), expires_at = GREATEST(expires_at, to_timestamp($2))
             WHERE key = $1",
        )
        .bind(sandbox.key().as_str())
        .bind(self.expiry(sandbox))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
        result.map(drop)
    }

    async fn create(
        &self,
        conn: &mut PgConnection,
        sandbox: &Sandbox,
        made: &mut Made,
    ) -> Result<Credentials, SandboxDbError> {
        let key = sandbox.key();
        let failed = |source| SandboxDbError::Provisioning {
            sandbox: key.clone(),
            source,
        };
        let (schema, role) = (quote(&schema_name(key)), quote(&role_name(key)));
        let password = new_password(conn).await.map_err(failed)?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role_name(key))
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
            .bind(role_name(key))
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
            if privileged {
                return Err(failed(sqlx::Error::Protocol(format!(
                    "role {} exists with attributes or memberships a sandbox role must not have; drop it",
                    role_name(key)
                ))));
            }
            // A schema of ours without a catalogue row (we hold the sandbox's lock) is what an
            // interrupted attempt left: start it over.
            let leftover: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                                WHERE n.nspname = $1 AND r.rolname = $2)",
            )
            .bind(schema_name(key))
            .bind(role_name(key))
            .fetch_one(&mut *conn)
            .await
            .map_err(failed)?;
            if leftover {
                conn.execute(ddl(format!("DROP SCHEMA {schema} CASCADE")))
                    .await
                    .map_err(failed)?;
            }
        }
        // The pool logs in as this role itself: a session cannot `RESET ROLE` out of it, and
        // NOINHERIT with no memberships leaves it nothing to `SET ROLE` to.
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        conn.execute(ddl(format!(
            "{verb} ROLE {role} WITH LOGIN NOINHERIT PASSWORD '{password}'"
        )))
        .await
        .map_err(failed)?;
        made.role = !role_exists;
        // Plain `CREATE SCHEMA`: a schema of that name this attempt did not make is an error,
        // never something to take over, or to drop on failure.
        conn.execute(ddl(format!(
            "GRANT {role} TO CURRENT_USER; CREATE SCHEMA {schema} AUTHORIZATION {role}"
        )))
        .await
        .map_err(failed)?;
        made.schema = true;
        // Every session of the role starts in its schema, even after `RESET ALL`.
        conn.execute(ddl(format!(
            "ALTER ROLE {role} SET search_path TO {schema}"
        )))
        .await
        .map_err(failed)?;

        // Fail closed: refuse a sandbox that could write production tables at all.
        let writable: Vec<String> = sqlx::query_scalar(
            "SELECT n.nspname || '.' || c.relname
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND n.nspname <> $2
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND (has_table_privilege($1, c.oid, 'INSERT')
                    OR has_table_privilege($1, c.oid, 'UPDATE')
                    OR has_table_privilege($1, c.oid, 'DELETE')
                    OR has_table_privilege($1, c.oid, 'TRUNCATE'))
             ORDER BY 1 LIMIT 5",
        )
        .bind(role_name(key))
        .bind(schema_name(key))
        .fetch_all(&mut *conn)
        .await
        .map_err(failed)?;
        if !writable.is_empty() {
            return Err(SandboxDbError::ProductionWritable {
                sandbox: key.clone(),
                tables: writable,
            });
        }

        // The service's own migrations and seed, run as the sandbox, inside its schema.
        conn.execute(ddl(format!("SET ROLE {role}; SET search_path TO {schema}")))
            .await
            .map_err(failed)?;
        if let Some(migrator) = &self.migrator {
            run_migrations(migrator, conn)
                .await
                .map_err(|e| failed(sqlx::Error::Migrate(Box::new(e))))?;
        }
        if let Some(seed) = &self.seed {
            conn.execute(ddl(seed.to_string())).await.map_err(failed)?;
        }
        conn.execute("RESET ROLE; RESET search_path")
            .await
            .map_err(failed)?;

        sqlx::query(
            "INSERT INTO prodbox.sandbox_schemas
                 (key, schema_name, role_name, expires_at, role_password)
             VALUES ($1, $2, $3, to_timestamp($4), $5)",
        )
        .bind(key.as_str())
        .bind(schema_name(key))
        .bind(role_name(key))
        .bind(self.expiry(sandbox))
        .bind(&password)
        .execute(&mut *conn)
        .await
        .map_err(failed)?;
        Ok(Credentials {
            role: role_name(key),
            password,
        })
    }

    async fn drop_made(
        conn: &mut PgConnection,
        key: &SandboxKey,
        made: &Made,
    ) -> Result<(), sqlx::Error> {
        let (schema, role) = (quote(&schema_name(key)), quote(&role_name(key)));
        if made.schema {
            conn.execute(ddl(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                .await?;
        }
        if made.role {
            conn.execute(ddl(format!(
                "DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"
            )))
            .await?;
        }
        Ok(())
    }

    async fn drop_objects(conn: &mut PgConnection, key: &SandboxKey) -> Result<(), sqlx::Error> {
        let (schema, role) = (quote(&schema_name(key)), quote(&role_name(key)));
        conn.execute(ddl(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
            .await?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role_name(key))
                .fetch_one(&mut *conn)
                .await?;
        if role_exists {
            // End the role's sessions (pools of other processes): they reconnect and find the
            // sandbox gone. Allowed to fail when the admin may not signal backends.
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE usename = $1 AND pid <> pg_backend_pid()",
            )
            .bind(role_name(key))
            .execute(&mut *conn)
            .await;
            conn.execute(ddl(format!("DROP OWNED BY {role}; DROP ROLE {role}")))
                .await?;
        }
        Ok(())
    }

    /// Drops `key`'s schema and role and forgets it; returns whether it was recorded.
    pub(crate) async fn drop_sandbox(
        &self,
        key: &SandboxKey,
        only_if_expired_by: Option<SystemTime>,
    ) -> Result<bool, sqlx::Error> {
        let mut conn = self.connect().await?;
        Self::ensure_catalogue(&mut conn).await?;
        Self::lock(&mut conn, key).await?;
        let result = async {
            // The janitor decides on a listing; under the lock, a sandbox used since is spared.
            if let Some(now) = only_if_expired_by {
                let expired: Option<bool> = sqlx::query_scalar(
                    "SELECT expires_at <= to_timestamp($2) FROM prodbox.sandbox_schemas
                     WHERE key = $1",
                )
                .bind(key.as_str())
                .bind(secs(now))
                .fetch_optional(&mut conn)
                .await?
                .flatten();
                if expired != Some(true) {
                    return Ok(false);
                }
            }
            Self::drop_objects(&mut conn, key).await?;
            let deleted = sqlx::query("DELETE FROM prodbox.sandbox_schemas WHERE key = $1")
                .bind(key.as_str())
                .execute(&mut conn)
                .await?;
            if deleted.rows_affected() > 0 {
                prodbox_core::metrics::schema_dropped();
            }
            Ok(deleted.rows_affected() > 0)
        }
        .await;
        let _ = Self::unlock(&mut conn, key).await;
        let _ = conn.close().await;
        result
    }

    /// Every recorded sandbox schema.
    pub(crate) async fn list(&self) -> Result<Vec<SchemaRecord>, sqlx::Error> {
        let mut conn = self.connect().await?;
        Self::ensure_catalogue(&mut conn).await?;
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
