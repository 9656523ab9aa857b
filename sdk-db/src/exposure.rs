//! What of production a sandbox's role could reach: every privilege it holds outside its own
//! schema, through `PUBLIC` (every role is a member) or a grant of its own. Provisioning runs
//! this check before a sandbox is made, again whenever a process opens a sandbox's pool, and
//! with every use it records (at least once a minute); a sandbox that fails it is refused
//! (`SandboxDbError::ProductionExposed`, audited), never run with the exposure.

use sqlx::postgres::PgConnection;

/// Each kind of exposure, with the privileges that make it one. The statement lists at most
/// [`LIMIT`] findings, each naming the object, what the role may do, and how to close it.
const CHECK: &str = "
WITH role AS (SELECT $1::text AS name, $2::text AS own)
SELECT finding FROM (
    -- Tables, views, materialized views, foreign and partitioned tables: any privilege, on the
    -- table or on one of its columns (reads copy production rows out; REFERENCES and TRIGGER
    -- let a sandbox hook into production's writes).
    SELECT format('table %I.%I: %s (REVOKE ALL ON %I.%I FROM PUBLIC)', n.nspname, c.relname,
                  array_to_string(ARRAY(
                      SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
                      WHERE has_table_privilege(role.name, c.oid, p)
                         OR (p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                             AND has_any_column_privilege(role.name, c.oid, p))), ', '),
                  n.nspname, c.relname) AS finding
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, role
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname <> role.own AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND (has_table_privilege(role.name, c.oid,
                               'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
           OR has_any_column_privilege(role.name, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
    UNION ALL
    -- Sequences: nextval and setval move production's ids.
    SELECT format('sequence %I.%I (REVOKE ALL ON SEQUENCE %I.%I FROM PUBLIC)',
                  n.nspname, c.relname, n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, role
    WHERE c.relkind = 'S' AND n.nspname <> role.own
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND has_sequence_privilege(role.name, c.oid, 'USAGE, SELECT, UPDATE')
    UNION ALL
    -- CREATE on another schema: objects planted there run with production's privileges.
    SELECT format('schema %I: CREATE (REVOKE CREATE ON SCHEMA %I FROM PUBLIC)',
                  n.nspname, n.nspname)
    FROM pg_namespace n, role
    WHERE n.nspname <> role.own AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND n.nspname NOT LIKE 'pg\\_toast%'
      AND has_schema_privilege(role.name, n.oid, 'CREATE')
    UNION ALL
    -- CREATE on the database: a schema named after production's login shadows `public` on
    -- production's search path.
    SELECT format('database %I: CREATE (REVOKE CREATE ON DATABASE %I FROM PUBLIC)',
                  current_database(), current_database())
    FROM role WHERE has_database_privilege(role.name, current_database(), 'CREATE')
    UNION ALL
    -- SECURITY DEFINER functions run as their owner, production's role.
    SELECT format('function %s: EXECUTE of a SECURITY DEFINER function (REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC)',
                  p.oid::regprocedure, p.oid::regprocedure)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, role
    WHERE p.prosecdef AND n.nspname <> role.own
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND has_function_privilege(role.name, p.oid, 'EXECUTE')
    UNION ALL
    -- Foreign servers: foreign tables made by the sandbox reach whatever the server does.
    SELECT format('foreign server %I: USAGE (REVOKE USAGE ON FOREIGN SERVER %I FROM PUBLIC)',
                  s.srvname, s.srvname)
    FROM pg_foreign_server s, role WHERE has_server_privilege(role.name, s.oid, 'USAGE')
    UNION ALL
    -- Large objects: with compatibility privileges on, every role reads and writes all of
    -- them; otherwise, those granted to PUBLIC.
    SELECT 'large objects: lo_compat_privileges is on (ALTER SYSTEM SET lo_compat_privileges = off)'
    WHERE current_setting('lo_compat_privileges') = 'on'
    UNION ALL
    SELECT format('large object %s: %s (REVOKE ALL ON LARGE OBJECT %s FROM PUBLIC)',
                  m.oid, a.privilege_type, m.oid)
    FROM pg_largeobject_metadata m, aclexplode(m.lomacl) a
    WHERE a.grantee = 0
) findings
ORDER BY finding
LIMIT 20";

/// At most this many findings are reported (enough to act on; `prodbox doctor` lists all).
const LIMIT: usize = 20;

/// What of production `role` (whose own schema is `schema`) could reach, as sentences that
/// name the object and the statement that closes it; empty when nothing.
pub(crate) async fn findings(
    conn: &mut PgConnection,
    role: &str,
    schema: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut findings: Vec<String> = sqlx::query_scalar(CHECK)
        .bind(role)
        .bind(schema)
        .fetch_all(conn)
        .await?;
    findings.truncate(LIMIT);
    Ok(findings)
}
