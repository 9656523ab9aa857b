//! Dropping a sandbox's schema and role: after a failed attempt, for a stale incarnation, and
//! for the janitor and `prodbox db drop`, in batches that keep the server's lock table small.

use std::time::SystemTime;

use prodbox_core::SandboxKey;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use super::{Made, Provisioner, SandboxLock, ddl, secs};
use crate::names::{quote, schema_name};

/// The next statements that drop some of the objects in schema `$1` (at most 100 relations,
/// 200 routines or 200 types, partitions before their parents): none once only what `DROP
/// SCHEMA` takes few locks for is left. An object another one requires (an identity column's
/// sequence, a range type's constructors: an internal dependency) cannot be dropped on its
/// own, even with `CASCADE`; it goes with its owner.
const DROP_BATCH: &str = "
WITH space AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
rels AS (
    SELECT c.oid, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                 WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                 WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END AS kind
    FROM pg_class c, space
    WHERE c.relnamespace = space.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                  AND d.objid = c.oid AND d.deptype = 'i')
    ORDER BY c.relispartition DESC, c.oid LIMIT 100),
routines AS (
    SELECT p.oid FROM pg_proc p, space WHERE p.pronamespace = space.oid
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                  AND d.objid = p.oid AND d.deptype = 'i') LIMIT 200),
types AS (
    SELECT t.oid, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END AS kind
    FROM pg_type t, space
    WHERE t.typnamespace = space.oid AND t.typtype IN ('d', 'e', 'r')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                                  AND d.objid = t.oid AND d.deptype = 'i') LIMIT 200)
SELECT format('DROP %s IF EXISTS %s CASCADE', kind, string_agg(oid::regclass::text, ', '))
FROM rels GROUP BY kind
UNION ALL
SELECT 'DROP ROUTINE IF EXISTS ' || string_agg(oid::regprocedure::text, ', ') || ' CASCADE'
FROM routines HAVING count(*) > 0
UNION ALL
SELECT format('DROP %s IF EXISTS %s CASCADE', kind, string_agg(oid::regtype::text, ', '))
FROM types GROUP BY kind";

impl Provisioner {
    pub(super) async fn drop_made(
        conn: &mut PgConnection,
        key: &SandboxKey,
        role: &str,
        made: &Made,
    ) -> Result<(), sqlx::Error> {
        let (schema, role) = (quote(&schema_name(key)), quote(role));
        if made.schema {
            conn.execute(ddl(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                .await?;
        }
        if made.role {
            Self::end_sessions(conn, &role).await;
            conn.execute(ddl(format!(
                "DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"
            )))
            .await?;
        }
        Ok(())
    }

    /// Ends the sessions of `role` (quoted) in any process, so that it can be dropped. Allowed
    /// to fail when the login may not signal backends.
    async fn end_sessions(conn: &mut PgConnection, role: &str) {
        let unquoted = role.trim_matches('"').replace("\"\"", "\"");
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = $1 AND pid <> pg_backend_pid()",
        )
        .bind(unquoted)
        .execute(conn)
        .await;
    }

    pub(super) async fn drop_objects(
        &self,
        conn: &mut PgConnection,
        key: &SandboxKey,
    ) -> Result<(), sqlx::Error> {
        let role_name = self.role(conn, key).await?;
        let (schema_plain, role) = (schema_name(key), quote(&role_name));
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&role_name)
                .fetch_one(&mut *conn)
                .await?;
        if role_exists {
            // No new sessions, and none left (pools of other processes): nothing it holds
            // makes the drops wait, and they reconnect to find the sandbox gone.
            conn.execute(ddl(format!("ALTER ROLE {role} NOLOGIN")))
                .await?;
            Self::end_sessions(conn, &role).await;
        }
        // A few objects at a time, each batch its own transaction: `DROP SCHEMA .. CASCADE`
        // locks every object at once, and a sandbox with thousands of them would fill the
        // server's lock table (`out of shared memory`) for every session.
        loop {
            let batch: Vec<String> = sqlx::query_scalar(DROP_BATCH)
                .bind(&schema_plain)
                .fetch_all(&mut *conn)
                .await?;
            if batch.is_empty() {
                break;
            }
            for statement in batch {
                conn.execute(ddl(statement)).await?;
            }
        }
        conn.execute(ddl(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote(&schema_plain)
        )))
        .await?;
        if role_exists {
            loop {
                let unlinked: i64 = sqlx::query_scalar(
                    "SELECT count(lo_unlink(oid)) FROM (
                         SELECT oid FROM pg_largeobject_metadata
                         WHERE lomowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
                         LIMIT 500) lo",
                )
                .bind(&role_name)
                .fetch_one(&mut *conn)
                .await?;
                if unlinked == 0 {
                    break;
                }
            }
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
        let result = async {
            self.ensure_catalogue(&mut conn).await?;
            let lock = SandboxLock::take(&self.options, key, self.lock_timeout).await?;
            let result = async {
                // The janitor decides on a listing; under the lock, a sandbox used since is
                // spared.
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
                self.drop_objects(&mut conn, key).await?;
                let deleted = sqlx::query("DELETE FROM prodbox.sandbox_schemas WHERE key = $1")
                    .bind(key.as_str())
                    .execute(&mut conn)
                    .await?;
                if deleted.rows_affected() > 0 {
                    prodbox_core::plumbing::metrics::schema_dropped();
                }
                Ok(deleted.rows_affected() > 0)
            }
            .await;
            lock.release().await;
            result
        }
        .await;
        let _ = conn.close().await;
        result
    }
}
