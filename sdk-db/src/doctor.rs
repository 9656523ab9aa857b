//! What makes sandboxes unsafe or unusable on a database, found before the first sandbox is
//! made: the checks behind `prodbox doctor`.
//!
//! ```no_run
//! # async fn run() -> Result<(), sqlx::Error> {
//! let options: sqlx::postgres::PgConnectOptions = "postgres://prodbox@db/shop".parse()?;
//! let report = prodbox_db::doctor::examine(&options).await?;
//! for finding in &report.findings {
//!     println!("{}: {} ({})", finding.severity, finding.what, finding.fix);
//! }
//! assert!(report.is_healthy(), "sandboxes would be refused or unsafe here");
//! # Ok(()) }
//! ```
//!
//! It examines the database as the login of `options`, the one the service's `SandboxPool` uses:
//!
//! * **the login**: `CREATEROLE` and `CREATE` on the database, which provisioning needs;
//! * **what a sandbox's role could reach**: the privilege checks provisioning itself runs
//!   before it makes a sandbox (tables, columns, sequences, schemas, the database,
//!   `SECURITY DEFINER` functions, foreign servers and wrappers, large objects), for a
//!   throwaway role made as provisioning makes a sandbox's (`sbxr_doctor_..`, dropped
//!   again), or for `PUBLIC` when the login may not make roles;
//! * **whether such a role can log in** (`pg_hba.conf`), by logging in as the throwaway role;
//! * **a transaction-mode PgBouncer** between the service and PostgreSQL: sessions that do not
//!   keep their server connection (checked first; nothing else is examined through one);
//! * **what only a revoke closes**: advisory locks and large objects every role may take or
//!   make, and `NOTIFY`, which no privilege governs (see the crate's design notes);
//! * **default privileges** that would give `PUBLIC` the tables, sequences or schemas of the
//!   next migration.
//!
//! It changes nothing but the throwaway role, and each finding names the statement that closes
//! it.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::exposure;
use crate::names::quote;
use crate::provision::new_password;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Severity {
    /// A sandbox could reach production: provisioning refuses sandboxes until it is closed.
    Unsafe,
    /// Sandboxes cannot be made or used.
    Unusable,
    /// Something every session may do, a sandbox's too, that a revoke would close.
    Warning,
    /// Worth knowing; nothing closes it.
    Note,
}

impl Severity {
    /// The name in reports: `unsafe`, `unusable`, `warning`, `note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsafe => "unsafe",
            Self::Unusable => "unusable",
            Self::Warning => "warning",
            Self::Note => "note",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check found it: `login`, `reach`, `sandbox_login`, `pgbouncer`,
    /// `advisory_locks`, `large_objects`, `notify`.
    pub check: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// What was found.
    pub what: String,
    /// The statement or setting that closes it.
    pub fix: String,
}

/// Everything [`examine`] found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Findings, the most severe first.
    pub findings: Vec<Finding>,
    /// The role a sandbox's reach was checked for: the throwaway role's name, or `public`;
    /// `None` when it was not (behind a transaction-mode pooler).
    pub checked_as: Option<String>,
}

impl Report {
    /// Whether sandboxes can be made here, and safely: no finding is
    /// [`Unsafe`](Severity::Unsafe) or [`Unusable`](Severity::Unusable).
    pub fn is_healthy(&self) -> bool {
        self.findings
            .iter()
            .all(|f| f.severity > Severity::Unusable)
    }
}

/// Examines the database `options` connect to, as their login.
pub async fn examine(options: &PgConnectOptions) -> Result<Report, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let mut findings = Vec::new();
    // First, and in the simple protocol: behind a transaction-mode pooler, prepared statements
    // fail at random, and nothing else can be examined reliably.
    if pooled_per_transaction(&mut conn, options).await? {
        findings.push(Finding {
            check: "pgbouncer",
            severity: Severity::Unsafe,
            what: "connections do not keep their server session (a transaction- or \
                   statement-mode pooler, such as PgBouncer's pool_mode = transaction): a \
                   sandbox's role and search path, set once per session, would reach other \
                   clients' transactions; nothing else was examined through it"
                .to_owned(),
            fix: "point sandbox pools at PostgreSQL, or at a PgBouncer with pool_mode = session \
                  (then run prodbox doctor again)"
                .to_owned(),
        });
        let _ = conn.close().await;
        return Ok(Report {
            findings,
            checked_as: None,
        });
    }
    let may_create_roles = login(&mut conn, &mut findings).await?;
    let checked_as = if may_create_roles {
        throwaway_role(&mut conn, options, &mut findings).await?
    } else {
        reach(&mut conn, "public", &mut findings).await?;
        "public".to_owned()
    };
    shared_state(&mut conn, &mut findings).await?;
    let _ = conn.close().await;
    findings.sort_by_key(|f| f.severity);
    Ok(Report {
        findings,
        checked_as: Some(checked_as),
    })
}

/// The login's own rights; whether it may make roles.
async fn login(conn: &mut PgConnection, findings: &mut Vec<Finding>) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT current_user::text AS login, current_database()::text AS db,
                r.rolsuper OR r.rolcreaterole AS roles,
                has_database_privilege(current_user, current_database(), 'CREATE') AS create
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    let (login, db): (String, String) = (row.try_get("login")?, row.try_get("db")?);
    let roles: bool = row.try_get("roles")?;
    if !roles {
        findings.push(Finding {
            check: "login",
            severity: Severity::Unusable,
            what: format!("login {login} may not create roles: each sandbox is a role of its own"),
            fix: format!("ALTER ROLE {} CREATEROLE", quote(&login)),
        });
    }
    if !row.try_get::<bool, _>("create")? {
        findings.push(Finding {
            check: "login",
            severity: Severity::Unusable,
            what: format!(
                "login {login} may not create schemas in database {db}: each sandbox is a schema of its own"
            ),
            fix: format!("GRANT CREATE ON DATABASE {} TO {}", quote(&db), quote(&login)),
        });
    }
    Ok(roles)
}

/// Makes a role as provisioning makes a sandbox's, checks what it could reach and that it can
/// log in, and drops it again, whatever happened in between. Returns its name.
async fn throwaway_role(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
    findings: &mut Vec<Finding>,
) -> Result<String, sqlx::Error> {
    let password = new_password(conn).await?;
    // Hex from the server's random source (checked by `new_password`): safe in DDL.
    let name = format!("sbxr_doctor_{}", &password[..16]);
    // A role left behind by a crash cannot log in for long, and the next run drops it. (The
    // server's own timestamp text.)
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT rolname::text FROM pg_roles
         WHERE rolname LIKE 'sbxr\\_doctor\\_%' AND rolvaliduntil < now()",
    )
    .fetch_all(&mut *conn)
    .await?;
    for role in leftovers {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {}",
            quote(&role)
        )))
        .execute(&mut *conn)
        .await;
    }
    let until: String = sqlx::query_scalar("SELECT (now() + interval '5 minutes')::text")
        .fetch_one(&mut *conn)
        .await?;
    if until.contains('\'') {
        return Err(sqlx::Error::Protocol(
            "unexpected timestamp format".to_owned(),
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {name} LOGIN PASSWORD '{password}' NOINHERIT CONNECTION LIMIT 2 \
         VALID UNTIL '{until}'"
    )))
    .execute(&mut *conn)
    .await?;
    let checked = async {
        reach(conn, &name, findings).await?;
        let login = options.clone().username(&name).password(&password);
        let attempt =
            tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&login)).await;
        let refused = match attempt {
            Ok(Ok(session)) => {
                let _ = session.close().await;
                None
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("no answer within 10 s".to_owned()),
        };
        if let Some(error) = refused {
            // PUBLIC's CONNECT taken away is a privilege, not pg_hba.conf.
            let fix = if error.contains("permission denied for database") {
                format!(
                    "GRANT CONNECT ON DATABASE {} TO PUBLIC (sandbox roles connect as PUBLIC's \
                     members; provisioning grants them nothing on the database)",
                    options
                        .get_database()
                        .map_or("<database>".to_owned(), quote)
                )
            } else {
                "pg_hba.conf (and a pooler's own user list, if one is in the way): let roles \
                 sbxr_* log in with a password (scram-sha-256) from the services' hosts, to this \
                 database"
                    .to_owned()
            };
            findings.push(Finding {
                check: "sandbox_login",
                severity: Severity::Unusable,
                what: format!("a sandbox's role cannot log in: {error}"),
                fix,
            });
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
        .execute(&mut *conn)
        .await;
    checked?;
    dropped?;
    Ok(name)
}

/// Provisioning's privilege checks for `role`.
async fn reach(
    conn: &mut PgConnection,
    role: &str,
    findings: &mut Vec<Finding>,
) -> Result<(), sqlx::Error> {
    for found in exposure::reach(conn, role).await? {
        findings.push(Finding {
            check: "reach",
            severity: Severity::Unsafe,
            what: format!("a sandbox's role may reach {}", found.what),
            fix: found.fix,
        });
    }
    Ok(())
}

/// Connections held open while looking for a pooler: more than the idle server sessions a
/// pooler keeps (PgBouncer's `min_pool_size` is 0 by default), fewer than its pool.
const HOLDERS: usize = 8;

/// Whether a pooler between the login and PostgreSQL hands out server sessions per
/// transaction (or per statement). A session setting is left on this connection's server
/// session; then other connections take server sessions and hold them in transactions. A
/// pooler hands idle server sessions out before it opens new ones, so one of them gets the
/// session this connection left (and sees the setting), or this connection comes back on
/// another (and misses it). Directly, or through a session-mode pooler, a connection keeps its
/// server session: no other connection ever sees the setting, and this one always does.
async fn pooled_per_transaction(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
) -> Result<bool, sqlx::Error> {
    async fn marker_on(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        sqlx::raw_sql("SELECT current_setting('prodbox.doctor_marker', true)")
            .fetch_one(conn)
            .await?
            .try_get(0)
    }
    use std::hash::BuildHasher;
    let marker = format!(
        "m{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET prodbox.doctor_marker = '{marker}'"
    )))
    .execute(&mut *conn)
    .await?;
    let mut holders = Vec::with_capacity(HOLDERS);
    let mut pooled = false;
    for _ in 0..HOLDERS {
        let mut holder = PgConnection::connect_with(options).await?;
        if let Err(error) = sqlx::raw_sql("BEGIN").execute(&mut holder).await {
            // A statement-mode pooler refuses transactions outright.
            if error.to_string().contains("transaction blocks not allowed") {
                pooled = true;
                break;
            }
            return Err(error);
        }
        let theirs = marker_on(&mut holder).await?;
        holders.push(holder);
        if theirs.as_deref() == Some(marker.as_str())
            || marker_on(conn).await?.as_deref() != Some(marker.as_str())
        {
            pooled = true;
            break;
        }
    }
    for mut holder in holders {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut holder).await;
        let _ = holder.close().await;
    }
    let _ = sqlx::raw_sql("RESET prodbox.doctor_marker")
        .execute(conn)
        .await;
    Ok(pooled)
}

/// What every session may do whatever its role's privileges, unless revoked from `PUBLIC`.
async fn shared_state(
    conn: &mut PgConnection,
    findings: &mut Vec<Finding>,
) -> Result<(), sqlx::Error> {
    let executable = |pattern: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE $1
               AND has_function_privilege('public', p.oid, 'EXECUTE')
             ORDER BY 1",
        )
        .bind(pattern)
    };
    let locks: Vec<String> = executable("pg%advisory%lock%")
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .filter(|f| !f.contains("unlock"))
        .collect();
    if !locks.is_empty() {
        findings.push(Finding {
            check: "advisory_locks",
            severity: Severity::Warning,
            what: format!(
                "every role, a sandbox's too, may take any advisory lock, production's included \
                 (a migration's, a job queue's): {} lock functions are PUBLIC's",
                locks.len()
            ),
            fix: format!(
                "REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC (and GRANT it back to production's login)",
                locks.join(", ")
            ),
        });
    }
    let made: Vec<String> = executable("lo\\_%creat%")
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .chain(
            executable("lo\\_from\\_bytea")
                .fetch_all(&mut *conn)
                .await?,
        )
        .collect();
    if !made.is_empty() {
        findings.push(Finding {
            check: "large_objects",
            severity: Severity::Warning,
            what: format!(
                "every role, a sandbox's too, may create large objects, which no schema holds: {}",
                made.join(", ")
            ),
            fix: format!("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC", made.join(", ")),
        });
    }
    // Future objects: a migration that makes a table would hand it to PUBLIC as it is made.
    let defaults: Vec<(String, String)> = sqlx::query_as(
        "SELECT format('role %I gives PUBLIC %s on every new %s%s', r.rolname, a.privilege_type,
                       kind.name, coalesce(' in schema ' || quote_ident(n.nspname), '')),
                format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s REVOKE %s ON %s FROM PUBLIC',
                       r.rolname, coalesce(' IN SCHEMA ' || quote_ident(n.nspname), ''),
                       a.privilege_type, kind.plural)
         FROM pg_default_acl d JOIN pg_roles r ON r.oid = d.defaclrole
              LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
              aclexplode(d.defaclacl) a,
              (VALUES ('r', 'table', 'TABLES'), ('S', 'sequence', 'SEQUENCES'),
                      ('n', 'schema', 'SCHEMAS')) kind(objtype, name, plural)
         WHERE a.grantee = 0 AND d.defaclobjtype::text = kind.objtype
           AND r.rolname NOT LIKE 'sbxr\\_%'
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (what, fix) in defaults {
        findings.push(Finding {
            check: "default_privileges",
            severity: Severity::Warning,
            what: format!(
                "{what}: the next migration exposes it, and provisioning then refuses sandboxes"
            ),
            fix,
        });
    }
    findings.push(Finding {
        check: "notify",
        severity: Severity::Note,
        what: "every session, a sandbox's too, may NOTIFY and LISTEN on any channel, production's \
               included; no privilege governs either"
            .to_owned(),
        fix: "treat notifications as hints and read the truth from a table, as prodbox's \
              directory does"
            .to_owned(),
    });
    Ok(())
}
