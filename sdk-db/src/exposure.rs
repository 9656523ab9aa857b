//! What of production a sandbox's role could reach: every privilege it holds outside its own
//! schema, through `PUBLIC` (every role is a member), a grant of its own or a role granted to
//! it; and objects of its own that production's objects are depended on by, which would make
//! production's DDL fail. Provisioning runs this check before a sandbox is made, again
//! whenever a process opens a sandbox's pool, and with every use it records (at least once a
//! minute); a sandbox that fails it is refused (`SandboxDbError::ProductionExposed`, audited),
//! never run with the exposure. Other sandboxes' schemas are not production: what a sandbox
//! shares of its own does not refuse the others.
//!
//! Where provisioning runs as a superuser, an event trigger also refuses, as it runs, any DDL
//! of a sandbox that makes such a dependency ([`GUARD`]); elsewhere the check finds it.
//!
//! Every function here runs with `search_path = pg_catalog, pg_temp`: the trigger's runs as the
//! superuser inside a sandbox's session, and with `pg_temp` unnamed PostgreSQL would look up
//! relation and type names in the session's temporary schema *first*, where a sandbox can put
//! a view named `pg_depend` that calls its own function.

use std::sync::LazyLock;

use sqlx::postgres::PgConnection;

/// The roles and schemas the checks are about: `$1` the role, `$2` its own schema (none: `''`).
/// Sandboxes' schemas are not production (see `prodbox.is_sandbox_schema_v1`).
const ROLE: &str = "
WITH role AS (SELECT $1::text AS name, $2::text AS own),
sandboxes AS (SELECT n.oid FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
              WHERE n.nspname LIKE 'sbx\\_%' AND r.rolname LIKE 'sbxr\\_%')";

/// `revoke` (SQL of a text value: the statement that takes `PUBLIC`'s grant back), and the
/// same statement run as each role other than the owner that granted to `PUBLIC` (`grantors`:
/// SQL selecting their oids): a `REVOKE` takes back only its own role's grants.
fn revoke(revoke: &str, grantors: &str) -> String {
    format!(
        "concat_ws('; ', {revoke},
                   (SELECT string_agg(format('SET ROLE %I; %s; RESET ROLE', g.rolname, {revoke}),
                                      '; ' ORDER BY g.rolname)
                    FROM pg_roles g WHERE g.oid IN ({grantors})))"
    )
}

/// The roles other than `owner` that granted something to `PUBLIC` in `acl`.
fn grantors(acl: &str, owner: &str) -> String {
    format!(
        "SELECT x.grantor FROM aclexplode({acl}) x WHERE x.grantee = 0 AND x.grantor <> {owner}"
    )
}

/// What of production the role may reach through privileges: its own, `PUBLIC`'s (every role
/// is a member) and a role's granted to it. Each finding names the object and what the role
/// may do (`what`), and the statements that close it (`fix`). These need nothing of prodbox's
/// catalogue: `prodbox doctor` runs them on a database prodbox has never touched, for
/// `PUBLIC` or a throwaway role.
static REACH: LazyLock<String> = LazyLock::new(|| {
    let table_grantors = format!(
        "{} UNION SELECT x.grantor FROM pg_attribute t, aclexplode(t.attacl) x
                  WHERE t.attrelid = c.oid AND x.grantee = 0 AND x.grantor <> c.relowner",
        grantors("c.relacl", "c.relowner")
    );
    let table = revoke(
        "format('REVOKE ALL ON %I.%I FROM PUBLIC', n.nspname, c.relname)",
        &table_grantors,
    );
    let sequence = revoke(
        "format('REVOKE ALL ON SEQUENCE %I.%I FROM PUBLIC', n.nspname, c.relname)",
        &grantors("c.relacl", "c.relowner"),
    );
    let schema = revoke(
        "format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', n.nspname)",
        &grantors("n.nspacl", "n.nspowner"),
    );
    let database = revoke(
        "format('REVOKE CREATE ON DATABASE %I FROM PUBLIC', d.datname)",
        &grantors("d.datacl", "d.datdba"),
    );
    let function = revoke(
        "format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', p.oid::regprocedure)",
        &grantors("p.proacl", "p.proowner"),
    );
    let server = revoke(
        "format('REVOKE USAGE ON FOREIGN SERVER %I FROM PUBLIC', s.srvname)",
        &grantors("s.srvacl", "s.srvowner"),
    );
    let wrapper = revoke(
        "format('REVOKE USAGE ON FOREIGN DATA WRAPPER %I FROM PUBLIC', w.fdwname)",
        &grantors("w.fdwacl", "w.fdwowner"),
    );
    let large_object = revoke(
        "format('REVOKE ALL ON LARGE OBJECT %s FROM PUBLIC', m.oid)",
        &grantors("m.lomacl", "m.lomowner"),
    );
    let aggregate = revoke(
        "format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f.oid::regprocedure)",
        &grantors("f.proacl", "f.proowner"),
    );
    format!(
        "
    -- Tables, views, materialized views, foreign and partitioned tables: any privilege, on the
    -- table or on one of its columns (reads copy production rows out; REFERENCES and TRIGGER
    -- let a sandbox hook into production's writes).
    SELECT format('table %I.%I: %s', n.nspname, c.relname,
                  array_to_string(ARRAY(
                      SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p
                      WHERE has_table_privilege(role.name, c.oid, p)
                         OR (p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                             AND has_any_column_privilege(role.name, c.oid, p))), ', ')) AS what,
           {table} AS fix
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, role
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname <> role.own AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.oid NOT IN (SELECT oid FROM sandboxes)
      AND (has_table_privilege(role.name, c.oid,
                               'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
           OR has_any_column_privilege(role.name, c.oid, 'INSERT, UPDATE, REFERENCES')
           -- An extension's own relations that PUBLIC may only read (pg_stat_statements,
           -- PostGIS's spatial_ref_sys) are the extension's, not production's data.
           OR ((has_table_privilege(role.name, c.oid, 'SELECT')
                OR has_any_column_privilege(role.name, c.oid, 'SELECT'))
               AND NOT EXISTS (SELECT 1 FROM pg_depend e
                               WHERE e.classid = 'pg_class'::regclass AND e.objid = c.oid
                                 AND e.deptype = 'e')))
    UNION ALL
    -- Sequences: nextval and setval move production's ids.
    SELECT format('sequence %I.%I', n.nspname, c.relname), {sequence}
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, role
    WHERE c.relkind = 'S' AND n.nspname <> role.own
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.oid NOT IN (SELECT oid FROM sandboxes)
      AND has_sequence_privilege(role.name, c.oid, 'USAGE, SELECT, UPDATE')
    UNION ALL
    -- CREATE on another schema: objects planted there run with production's privileges.
    SELECT format('schema %I: CREATE', n.nspname), {schema}
    FROM pg_namespace n, role
    WHERE n.nspname <> role.own AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND n.nspname NOT LIKE 'pg\\_toast%'
      AND n.oid NOT IN (SELECT oid FROM sandboxes)
      AND has_schema_privilege(role.name, n.oid, 'CREATE')
    UNION ALL
    -- CREATE on the database: a schema named after production's login shadows `public` on
    -- production's search path.
    SELECT format('database %I: CREATE', d.datname), {database}
    FROM pg_database d, role
    WHERE d.datname = current_database()
      AND has_database_privilege(role.name, d.oid, 'CREATE')
    UNION ALL
    -- SECURITY DEFINER functions run as their owner, production's role.
    SELECT format('function %s: EXECUTE of a SECURITY DEFINER function', p.oid::regprocedure),
           {function}
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace, role
    WHERE p.prosecdef AND n.nspname <> role.own
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.oid NOT IN (SELECT oid FROM sandboxes)
      AND has_function_privilege(role.name, p.oid, 'EXECUTE')
    UNION ALL
    -- A role granted to it: SET ROLE leaves the sandbox (taken back whenever a pool opens).
    SELECT format('role %I is granted to it', g.rolname),
           format('REVOKE %I FROM %I', g.rolname, role.name)
    FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
         JOIN pg_roles r ON r.oid = m.member, role
    WHERE r.rolname = role.name
    UNION ALL
    -- Foreign servers: foreign tables made by the sandbox reach whatever the server does.
    SELECT format('foreign server %I: USAGE', s.srvname), {server}
    FROM pg_foreign_server s, role WHERE has_server_privilege(role.name, s.oid, 'USAGE')
    UNION ALL
    -- Foreign-data wrappers: USAGE lets it make servers of its own (a connection that no
    -- watchdog sees, to wherever it names).
    SELECT format('foreign-data wrapper %I: USAGE', w.fdwname), {wrapper}
    FROM pg_foreign_data_wrapper w, role
    WHERE has_foreign_data_wrapper_privilege(role.name, w.oid, 'USAGE')
    UNION ALL
    -- Large objects: with compatibility privileges on, every role reads and writes all of
    -- them; otherwise, those granted to PUBLIC.
    SELECT 'large objects: lo_compat_privileges is on',
           'ALTER SYSTEM SET lo_compat_privileges = off'
    WHERE current_setting('lo_compat_privileges') = 'on'
    UNION ALL
    SELECT format('large object %s: %s', m.oid, a.privilege_type), {large_object}
    FROM pg_largeobject_metadata m JOIN pg_roles o ON o.oid = m.lomowner,
         aclexplode(m.lomacl) a
    WHERE a.grantee = 0 AND o.rolname NOT LIKE 'sbxr\\_%'
    UNION ALL
    -- Aggregates whose support functions are SECURITY DEFINER: calling an aggregate checks
    -- only its own EXECUTE, and its support functions then run as their owner, whatever was
    -- revoked on them.
    SELECT format('aggregate %s: runs SECURITY DEFINER function %s',
                  f.oid::regprocedure, s.oid::regprocedure),
           {aggregate}
    FROM pg_aggregate a JOIN pg_proc f ON f.oid = a.aggfnoid
         JOIN pg_namespace n ON n.oid = f.pronamespace
         JOIN pg_proc s ON s.oid IN (a.aggtransfn::oid, a.aggfinalfn::oid, a.aggcombinefn::oid,
                                     a.aggserialfn::oid, a.aggdeserialfn::oid, a.aggmtransfn::oid,
                                     a.aggminvtransfn::oid, a.aggmfinalfn::oid), role
    WHERE s.prosecdef AND n.nspname <> role.own
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.oid NOT IN (SELECT oid FROM sandboxes)
      AND has_function_privilege(role.name, f.oid, 'EXECUTE')
    UNION ALL
    -- Casts through SECURITY DEFINER functions: a cast checks no privilege when it is used.
    SELECT format('cast (%s AS %s): runs SECURITY DEFINER function %s',
                  c.castsource::regtype, c.casttarget::regtype, s.oid::regprocedure),
           format('DROP CAST (%s AS %s) (or make %s SECURITY INVOKER)',
                  c.castsource::regtype, c.casttarget::regtype, s.oid::regprocedure)
    FROM pg_cast c JOIN pg_proc s ON s.oid = c.castfunc
         JOIN pg_namespace n ON n.oid = s.pronamespace
    WHERE s.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.oid NOT IN (SELECT oid FROM sandboxes)"
    )
});

/// Server settings the role may change beyond its own session (PostgreSQL 15 and later keep
/// these grants in `pg_parameter_acl`): `ALTER SYSTEM` on any setting (`archive_command` runs a
/// shell command as the server), or `SET` on a superuser-only one.
const PARAMETERS: &str = "
SELECT format('parameter %s: %s', p.parname, priv) AS what,
       format('REVOKE %s ON PARAMETER %s FROM PUBLIC', priv, p.parname) AS fix
FROM pg_parameter_acl p
     LEFT JOIN pg_settings s ON s.name = p.parname,
     unnest(ARRAY['SET', 'ALTER SYSTEM']) priv
WHERE has_parameter_privilege($1::text, p.parname, priv)
  AND (priv = 'ALTER SYSTEM' OR coalesce(s.context, 'superuser') = 'superuser')
ORDER BY 1";

/// What objects of the sandbox's own (in `$2`) do to production's: dependencies that make
/// production's DDL fail, code production's maintenance would run, grants naming production's
/// roles. Needs the catalogue's functions (see [`DEPENDENCIES`]).
const OWN: &str = "
    -- Its objects that depend on production's: production's DDL on those fails.
    SELECT d || ': production''s DDL on it fails while it exists', 'drop it'
    FROM role, prodbox.sandbox_dependencies_v1(
             (SELECT oid FROM pg_namespace WHERE nspname = role.own)) d
    UNION ALL
    -- Its objects that production's own work evaluates, calling its code: ANALYZE and
    -- autovacuum would run it in production's sessions, past every bound, and restoring a dump
    -- as the superuser.
    SELECT d || ': production''s ANALYZE, VACUUM or a restore of a dump would run it', 'drop it'
    FROM role, prodbox.sandbox_code_v1(
             (SELECT oid FROM pg_namespace WHERE nspname = role.own)) d
    UNION ALL
    -- Its grants and policies naming production's roles.
    SELECT d, 'REVOKE it, or drop the object'
    FROM role, prodbox.foreign_grants_v1(role.name) d";

/// Provisioning's check: both, at most [`LIMIT`] findings.
static CHECK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{ROLE}\nSELECT what, fix FROM ({}\n    UNION ALL{OWN}\n) findings\nORDER BY what\nLIMIT {LIMIT}",
        *REACH
    )
});

/// The doctor's: every privilege finding, none about a sandbox's own objects.
static REACH_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{ROLE}\nSELECT what, fix FROM ({}\n) findings\nORDER BY what",
        *REACH
    )
});

/// Which schemas are a sandbox's (named `sbx_..`, owned by a role named `sbxr_..`), and the
/// dependencies of some objects (with their relations' rules, defaults, constraints,
/// triggers and policies) on objects outside the schemas `spaces` that are neither the
/// system's, nor an extension's, nor a sandbox's. Part of the catalogue's DDL.
pub(crate) const DEPENDENCIES: &str = r#"
CREATE OR REPLACE FUNCTION prodbox.is_sandbox_schema_v1(space oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                   WHERE n.oid = space AND n.nspname LIKE 'sbx\_%' AND r.rolname LIKE 'sbxr\_%')
$f$;
CREATE OR REPLACE FUNCTION prodbox.foreign_dependencies_v1(classids oid[], objids oid[],
                                                           spaces oid[]) RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    -- plpgsql keeps the plan for the session (an SQL function is planned at every call,
    -- and the event trigger calls it for every DDL command).
    RETURN QUERY
    WITH roots (classid, objid) AS (SELECT * FROM unnest(classids, objids)),
    rels AS (SELECT objid AS oid FROM roots WHERE classid = 'pg_class'::regclass),
    mine (classid, objid) AS (
        SELECT classid, objid FROM roots
        UNION ALL SELECT 'pg_rewrite'::regclass, oid FROM pg_rewrite
                  WHERE ev_class IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_trigger'::regclass, oid FROM pg_trigger
                  WHERE tgrelid IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_attrdef'::regclass, oid FROM pg_attrdef
                  WHERE adrelid IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint
                  WHERE conrelid IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_policy'::regclass, oid FROM pg_policy
                  WHERE polrelid IN (SELECT oid FROM rels)
        -- A domain's CHECK constraints, and a composite type's columns (recorded on its
        -- relation).
        UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint
                  WHERE contypid IN (SELECT objid FROM roots WHERE classid = 'pg_type'::regclass)
        UNION ALL SELECT 'pg_class'::regclass, typrelid FROM pg_type
                  WHERE typrelid <> 0
                    AND oid IN (SELECT objid FROM roots WHERE classid = 'pg_type'::regclass)
    )
    SELECT DISTINCT format('%s depends on %s',
                           pg_describe_object(d.classid, d.objid, d.objsubid),
                           pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid))
    FROM mine
    JOIN pg_depend d ON d.classid = mine.classid AND d.objid = mine.objid
    CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, 0) r
    JOIN pg_namespace rn ON rn.nspname = r.schema
    WHERE d.deptype IN ('n', 'a')
      AND NOT rn.oid = ANY (spaces)
      AND rn.nspname NOT IN ('pg_catalog', 'information_schema')
      AND rn.nspname NOT LIKE 'pg\_toast%' AND rn.nspname NOT LIKE 'pg\_temp%'
      AND NOT prodbox.is_sandbox_schema_v1(rn.oid)
      -- An extension's objects (and the array types of its types) are not production's.
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend e
          WHERE e.deptype = 'e' AND e.classid = d.refclassid
            AND e.objid IN (d.refobjid, (SELECT NULLIF(t.typelem, 0) FROM pg_type t
                                         WHERE d.refclassid = 'pg_type'::regclass
                                           AND t.oid = d.refobjid)));
END
$f$;
CREATE OR REPLACE FUNCTION prodbox.sandbox_objects_v1(space oid)
RETURNS TABLE (classid oid, objid oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT 'pg_class'::regclass::oid, oid FROM pg_class WHERE relnamespace = space
    UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE pronamespace = space
    UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type WHERE typnamespace = space
    UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint
              WHERE connamespace = space
    UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oprnamespace = space
    UNION ALL SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext
              WHERE stxnamespace = space
    UNION ALL SELECT 'pg_opclass'::regclass, oid FROM pg_opclass WHERE opcnamespace = space
    UNION ALL SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily WHERE opfnamespace = space
    UNION ALL SELECT 'pg_collation'::regclass, oid FROM pg_collation
              WHERE collnamespace = space
    UNION ALL SELECT 'pg_conversion'::regclass, oid FROM pg_conversion
              WHERE connamespace = space
    UNION ALL SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config
              WHERE cfgnamespace = space
    UNION ALL SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict WHERE dictnamespace = space
    -- Casts and transforms belong to no schema: those of the schema's types are its.
    UNION ALL SELECT 'pg_cast'::regclass, c.oid FROM pg_cast c
              JOIN pg_type t ON t.oid IN (c.castsource, c.casttarget)
              WHERE t.typnamespace = space
    UNION ALL SELECT 'pg_transform'::regclass, x.oid FROM pg_transform x
              JOIN pg_type t ON t.oid = x.trftype WHERE t.typnamespace = space
$f$;
CREATE OR REPLACE FUNCTION prodbox.production_runs_v1(classids oid[], objids oid[])
RETURNS SETOF text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    RETURN QUERY
    WITH roots (classid, objid) AS (SELECT * FROM unnest(classids, objids)),
    rels AS (SELECT objid AS oid FROM roots WHERE classid = 'pg_class'::regclass),
    types AS (SELECT objid AS oid FROM roots WHERE classid = 'pg_type'::regclass),
    -- What production's own work evaluates: ANALYZE, VACUUM, REINDEX and CLUSTER evaluate
    -- index expressions and predicates, statistics expressions, partition keys and the
    -- functions of range types; restoring a dump evaluates constraints, domains and
    -- generated columns as whoever restores it.
    evaluated (classid, objid) AS (
        SELECT r.classid, r.objid FROM roots r
        WHERE r.classid IN ('pg_type'::regclass, 'pg_constraint'::regclass,
                            'pg_attrdef'::regclass, 'pg_statistic_ext'::regclass,
                            'pg_opclass'::regclass, 'pg_opfamily'::regclass)
           OR (r.classid = 'pg_class'::regclass
               AND (SELECT relkind FROM pg_class WHERE oid = r.objid) IN ('r', 'p', 'm', 'i', 'I'))
        UNION ALL SELECT 'pg_class'::regclass, indexrelid FROM pg_index
                  WHERE indrelid IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint
                  WHERE conrelid IN (SELECT oid FROM rels) OR contypid IN (SELECT oid FROM types)
        UNION ALL SELECT 'pg_attrdef'::regclass, oid FROM pg_attrdef
                  WHERE adrelid IN (SELECT oid FROM rels)
        UNION ALL SELECT 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext
                  WHERE stxrelid IN (SELECT oid FROM rels)
    ),
    deps (classid, objid, refclassid, refobjid) AS (
        SELECT d.classid, d.objid, d.refclassid, d.refobjid
        FROM evaluated e JOIN pg_depend d ON d.classid = e.classid AND d.objid = e.objid
        WHERE d.deptype IN ('n', 'a')
        -- An operator class or family runs its support functions and operators.
        UNION ALL SELECT e.classid, e.objid, 'pg_proc'::regclass, ap.amproc::oid
        FROM evaluated e JOIN pg_amproc ap
             ON (e.classid = 'pg_opfamily'::regclass AND ap.amprocfamily = e.objid)
             OR (e.classid = 'pg_opclass'::regclass
                 AND ap.amprocfamily = (SELECT opcfamily FROM pg_opclass WHERE oid = e.objid))
        UNION ALL SELECT e.classid, e.objid, 'pg_operator'::regclass, ao.amopopr
        FROM evaluated e JOIN pg_amop ao
             ON (e.classid = 'pg_opfamily'::regclass AND ao.amopfamily = e.objid)
             OR (e.classid = 'pg_opclass'::regclass
                 AND ao.amopfamily = (SELECT opcfamily FROM pg_opclass WHERE oid = e.objid))
    ),
    -- The function each dependency runs.
    called (classid, objid, proc) AS (
        SELECT classid, objid, refobjid FROM deps WHERE refclassid = 'pg_proc'::regclass
        UNION ALL SELECT d.classid, d.objid, o.oprcode::oid FROM deps d
                  JOIN pg_operator o ON o.oid = d.refobjid
                  WHERE d.refclassid = 'pg_operator'::regclass
        UNION ALL SELECT d.classid, d.objid, c.castfunc FROM deps d
                  JOIN pg_cast c ON c.oid = d.refobjid
                  WHERE d.refclassid = 'pg_cast'::regclass AND c.castfunc <> 0
        UNION ALL SELECT d.classid, d.objid, ap.amproc::oid FROM deps d
                  JOIN pg_opclass oc ON oc.oid = d.refobjid
                  JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily
                  WHERE d.refclassid = 'pg_opclass'::regclass
    )
    SELECT DISTINCT format('%s runs %s, which is neither the system''s nor an extension''s',
                           pg_describe_object(c.classid, c.objid, 0), p.oid::regprocedure)
    FROM called c JOIN pg_proc p ON p.oid = c.proc
    WHERE p.pronamespace <> 'pg_catalog'::regnamespace
      AND NOT EXISTS (SELECT 1 FROM pg_depend x
                      WHERE x.classid = 'pg_proc'::regclass AND x.objid = p.oid
                        AND x.deptype = 'e');
END
$f$;
CREATE OR REPLACE FUNCTION prodbox.foreign_grants_v1(owner text) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    SELECT DISTINCT format('%s grants to role %I, whose DROP ROLE then fails',
                           pg_describe_object(a.classid, a.objid, 0), r.rolname)
    FROM pg_shdepend o
    JOIN pg_shdepend a ON a.dbid = o.dbid AND a.classid = o.classid AND a.objid = o.objid
    JOIN pg_roles r ON r.oid = a.refobjid
    WHERE o.deptype = 'o' AND a.deptype IN ('a', 'r')
      AND o.refobjid = (SELECT oid FROM pg_roles WHERE rolname = owner)
      AND o.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.refclassid = 'pg_authid'::regclass AND r.rolname <> owner
      AND r.rolname NOT LIKE 'sbxr\_%'
    UNION
    -- Policies have no owner of their own: those on its tables are its.
    SELECT format('%s names role %I, whose DROP ROLE then fails',
                  pg_describe_object('pg_policy'::regclass, p.oid, 0), r.rolname)
    FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
    JOIN pg_roles o ON o.oid = c.relowner
    JOIN pg_roles r ON r.oid = ANY (p.polroles)
    WHERE o.rolname = owner AND r.rolname <> owner AND r.rolname NOT LIKE 'sbxr\_%'
$f$;
CREATE OR REPLACE FUNCTION prodbox.sandbox_dependencies_v1(space oid) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    WITH objects AS (SELECT * FROM prodbox.sandbox_objects_v1(space))
    SELECT prodbox.foreign_dependencies_v1(
        ARRAY(SELECT classid FROM objects ORDER BY classid, objid),
        ARRAY(SELECT objid FROM objects ORDER BY classid, objid),
        ARRAY[space])
$f$;
CREATE OR REPLACE FUNCTION prodbox.sandbox_code_v1(space oid) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $f$
    WITH objects AS (SELECT * FROM prodbox.sandbox_objects_v1(space))
    SELECT prodbox.production_runs_v1(ARRAY(SELECT classid FROM objects),
                                      ARRAY(SELECT objid FROM objects))
$f$;
REVOKE EXECUTE ON FUNCTION prodbox.is_sandbox_schema_v1(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.foreign_dependencies_v1(oid[], oid[], oid[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.sandbox_dependencies_v1(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.sandbox_objects_v1(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.production_runs_v1(oid[], oid[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.foreign_grants_v1(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION prodbox.sandbox_code_v1(oid) FROM PUBLIC;
COMMENT ON FUNCTION prodbox.sandbox_dependencies_v1(oid) IS 'prodbox dependencies 4';
"#;

/// Whether [`DEPENDENCIES`] is in place as this version writes it (the comment names the
/// version, so that a database set up by an older one gets the functions again).
pub(crate) const DEPENDENCIES_READY: &str = "
coalesce(obj_description(to_regprocedure('prodbox.sandbox_dependencies_v1(oid)'), 'pg_proc'), '')
    = 'prodbox dependencies 4'";

/// The event trigger that refuses a sandbox's DDL command when the objects it made or changed
/// depend on production's (anything outside the sandbox's schema and its temporary one).
/// Made only where the provisioning role may (a superuser); cheap for everyone else's DDL (a
/// comparison of `session_user`).
pub(crate) const GUARD: &str = r#"
CREATE OR REPLACE FUNCTION prodbox.sandbox_ddl_guard_v1() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    found text;
BEGIN
    IF session_user::text NOT LIKE 'sbxr\_%' THEN
        RETURN;
    END IF;
    SELECT d INTO found FROM prodbox.foreign_dependencies_v1(
        ARRAY(SELECT classid FROM pg_event_trigger_ddl_commands()),
        ARRAY(SELECT objid FROM pg_event_trigger_ddl_commands()),
        ARRAY(SELECT n.oid FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
              WHERE r.rolname = session_user::text
              UNION SELECT pg_my_temp_schema())) d
    LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'prodbox: % (a sandbox''s objects may not depend on production''s)', found
            USING ERRCODE = '42501';
    END IF;
    SELECT d INTO found FROM prodbox.production_runs_v1(
        ARRAY(SELECT classid FROM pg_event_trigger_ddl_commands()),
        ARRAY(SELECT objid FROM pg_event_trigger_ddl_commands())) d
    LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'prodbox: % (production''s ANALYZE, VACUUM or a restore of a dump would run a sandbox''s code)', found
            USING ERRCODE = '42501';
    END IF;
    -- Only these name other roles: every other command is spared reading all the role owns.
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
               WHERE command_tag IN ('GRANT', 'ALTER DEFAULT PRIVILEGES', 'CREATE POLICY',
                                     'ALTER POLICY')) THEN
        SELECT d INTO found FROM prodbox.foreign_grants_v1(session_user::text) d LIMIT 1;
    END IF;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'prodbox: % (a sandbox may grant only to PUBLIC and sandboxes)', found
            USING ERRCODE = '42501';
    END IF;
END $f$;
REVOKE EXECUTE ON FUNCTION prodbox.sandbox_ddl_guard_v1() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS prodbox_sandbox_ddl_v1;
CREATE EVENT TRIGGER prodbox_sandbox_ddl_v1 ON ddl_command_end
    EXECUTE FUNCTION prodbox.sandbox_ddl_guard_v1();
COMMENT ON FUNCTION prodbox.sandbox_ddl_guard_v1() IS 'prodbox guard 4';
"#;

/// Whether [`GUARD`] is in place as this version writes it, or cannot be (the provisioning
/// role is no superuser).
pub(crate) const GUARD_READY: &str = "
SELECT (EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'prodbox_sandbox_ddl_v1')
        AND coalesce(obj_description(to_regprocedure('prodbox.sandbox_ddl_guard_v1()'),
                                     'pg_proc'), '') = 'prodbox guard 4')
    OR NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)";

/// At most this many findings are reported (enough to act on; `prodbox doctor` lists all).
const LIMIT: usize = 20;

/// One thing of production a role could reach, and the statements that close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exposure {
    pub(crate) what: String,
    pub(crate) fix: String,
}

impl From<(String, String)> for Exposure {
    fn from((what, fix): (String, String)) -> Self {
        Self { what, fix }
    }
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what, self.fix)
    }
}

/// What of production `role` (whose own schema is `schema`) could reach, at most [`LIMIT`];
/// empty when nothing.
pub(crate) async fn findings(
    conn: &mut PgConnection,
    role: &str,
    schema: &str,
) -> Result<Vec<Exposure>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(CHECK.as_str()))
        .bind(role)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
    let mut findings: Vec<Exposure> = rows.into_iter().map(Into::into).collect();
    findings.extend(parameters(conn, role).await?);
    findings.truncate(LIMIT);
    Ok(findings)
}

/// Everything of production `role` (a throwaway role, or `public`) may reach through
/// privileges, without limit: what `prodbox doctor` reports.
pub(crate) async fn reach(
    conn: &mut PgConnection,
    role: &str,
) -> Result<Vec<Exposure>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(REACH_ALL.as_str()))
        .bind(role)
        .bind("")
        .fetch_all(&mut *conn)
        .await?;
    let mut findings: Vec<Exposure> = rows.into_iter().map(Into::into).collect();
    findings.extend(parameters(conn, role).await?);
    Ok(findings)
}

/// [`PARAMETERS`], on servers that have parameter privileges.
async fn parameters(conn: &mut PgConnection, role: &str) -> Result<Vec<Exposure>, sqlx::Error> {
    let has_acl: bool =
        sqlx::query_scalar("SELECT to_regclass('pg_catalog.pg_parameter_acl') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !has_acl {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(PARAMETERS)
        .bind(role)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}
