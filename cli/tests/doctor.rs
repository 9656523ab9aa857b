//! `prodbox doctor` against databases set up wrong on purpose: each mistake is reported with
//! the statement that fixes it, and running those statements makes the report healthy. Through
//! a real PgBouncer (Debian's package; `scripts/test.sh` installs it) in both pooling modes.

use std::process::Stdio;
use std::time::Duration;

use prodbox_testkit::pg::{TestDatabase, admin_connection, quote, require_postgres, unique_key};
use serde_json::Value;
use sqlx::{Connection, Executor};

/// What `prodbox --json doctor` said, and its exit code.
struct Verdict {
    code: Option<i32>,
    report: Value,
}

impl Verdict {
    /// The findings of `check`.
    fn of(&self, check: &str) -> Vec<&Value> {
        self.findings()
            .iter()
            .filter(|f| f["check"] == check)
            .collect()
    }

    fn findings(&self) -> &Vec<Value> {
        self.report["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("no findings array: {}", self.report))
    }

    /// The finding of `check` whose text mentions `needle`.
    #[track_caller]
    fn naming(&self, check: &str, needle: &str) -> &Value {
        self.of(check)
            .into_iter()
            .find(|f| f["what"].as_str().unwrap_or_default().contains(needle))
            .unwrap_or_else(|| panic!("no {check} finding naming {needle}: {:#}", self.report))
    }
}

async fn doctor(url: &str) -> Verdict {
    doctor_with(url, &[]).await
}

async fn doctor_with(url: &str, args: &[&str]) -> Verdict {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_prodbox"))
        .args(["--json", "--database-url", url])
        .args(args)
        .arg("doctor")
        .env_remove("DATABASE_URL")
        .env_remove("PRODBOX_DATABASE_URL")
        .env_remove("PRODBOX_REDIS_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("doctor finished within 60 s")
        .expect("doctor ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Verdict {
        code: output.status.code(),
        report,
    }
}

/// Runs the statements the findings of `check` name, as the superuser.
async fn apply_fixes(db: &TestDatabase, verdict: &Verdict, check: &str) {
    let mut admin = db.admin().await;
    for finding in verdict.of(check) {
        let fix = finding["fix"].as_str().expect("a fix");
        // Some fixes say what to grant back, or what else would do, in words after it.
        let statement = fix.split(" (and ").next().unwrap_or(fix);
        let statement = statement.split(" (or ").next().unwrap_or(statement);
        admin
            .execute(sqlx::AssertSqlSafe(statement.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("the fix {statement:?} failed: {e}"));
    }
    let _ = admin.close().await;
}

#[tokio::test]
async fn every_grant_to_public_is_found_and_its_fix_closes_it() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    // A role holding a grant option grants to PUBLIC: only it can take that grant back.
    let grantor = prodbox_testkit::pg::unique_key("grantor").replace('-', "_");
    let mut admin = db.admin().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {grantor};
             CREATE TABLE invoices (id int);
             GRANT SELECT ON invoices TO {grantor} WITH GRANT OPTION;
             SET ROLE {grantor};
             GRANT SELECT ON invoices TO PUBLIC;
             RESET ROLE;
             -- Names and statements that hold ' (' themselves.
             CREATE TABLE \"odd (name\" (id int);
             GRANT SELECT ON \"odd (name\" TO PUBLIC;
             CREATE TYPE cents AS (v int);
             CREATE FUNCTION to_cents(int) RETURNS cents LANGUAGE sql SECURITY DEFINER
                 AS 'SELECT ROW($1)::cents';
             REVOKE EXECUTE ON FUNCTION to_cents(int) FROM PUBLIC;
             CREATE CAST (int AS cents) WITH FUNCTION to_cents(int);"
        )))
        .await
        .expect("grants by another grantor");
    admin
        .execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, item text);
             CREATE TABLE customers (id int PRIMARY KEY, email text, secret text);
             CREATE SEQUENCE invoice_numbers;
             CREATE SCHEMA billing;
             CREATE FUNCTION billing.refund(int) RETURNS int LANGUAGE sql SECURITY DEFINER
                 AS 'SELECT $1';
             CREATE FUNCTION billing.harmless(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
             GRANT SELECT ON orders TO PUBLIC;
             GRANT UPDATE (email) ON customers TO PUBLIC;
             GRANT USAGE ON SEQUENCE invoice_numbers TO PUBLIC;
             GRANT CREATE ON SCHEMA billing TO PUBLIC;
             GRANT USAGE ON SCHEMA billing TO PUBLIC;
             -- Revoked on the function, yet run through the aggregate as its owner.
             CREATE FUNCTION billing.leak(acc text, id int) RETURNS text LANGUAGE sql
                 SECURITY DEFINER AS 'SELECT coalesce(acc, '''') || id';
             REVOKE EXECUTE ON FUNCTION billing.leak(text, int) FROM PUBLIC;
             CREATE AGGREGATE billing.totals(int) (sfunc = billing.leak, stype = text);
             -- The next migration's tables, handed to PUBLIC as they are made.
             ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO PUBLIC;",
        )
        .await
        .expect("the wrong set-up");
    let _ = admin.close().await;

    let wrong = doctor(db.url()).await;
    assert_eq!(wrong.code, Some(1), "{:#}", wrong.report);
    assert_eq!(wrong.report["healthy"], false);
    let role = wrong.report["checked_as"]
        .as_str()
        .expect("a throwaway role");
    assert!(role.starts_with("sbxr_doctor_"), "{role}");
    for (needle, fix) in [
        (
            "table public.orders: SELECT",
            "REVOKE ALL ON public.orders FROM PUBLIC",
        ),
        (
            "table public.customers: UPDATE",
            "REVOKE ALL ON public.customers FROM PUBLIC",
        ),
        ("sequence public.invoice_numbers", "REVOKE ALL ON SEQUENCE"),
        (
            "schema billing: CREATE",
            "REVOKE CREATE ON SCHEMA billing FROM PUBLIC",
        ),
        (
            "billing.refund(integer)",
            "REVOKE EXECUTE ON FUNCTION billing.refund(integer)",
        ),
        (
            "aggregate billing.totals(integer)",
            "REVOKE EXECUTE ON FUNCTION billing.totals(integer)",
        ),
        (
            "table public.invoices: SELECT",
            &format!(
                "REVOKE ALL ON public.invoices FROM PUBLIC; SET ROLE {grantor}; \
                 REVOKE ALL ON public.invoices FROM PUBLIC; RESET ROLE"
            ),
        ),
        (
            "table public.\"odd (name\": SELECT",
            "REVOKE ALL ON public.\"odd (name\" FROM PUBLIC",
        ),
        (
            "cast (integer AS cents): runs SECURITY DEFINER function to_cents(integer)",
            "DROP CAST (integer AS cents)",
        ),
    ] {
        let finding = wrong.naming("reach", needle);
        assert_eq!(finding["severity"], "unsafe");
        assert!(
            finding["fix"].as_str().unwrap().contains(fix),
            "{finding:#}"
        );
    }
    assert!(
        !wrong
            .findings()
            .iter()
            .any(|f| f["what"].as_str().unwrap_or_default().contains("harmless")),
        "a plain function is no exposure: {:#}",
        wrong.report
    );
    let defaults = wrong.naming(
        "default_privileges",
        "SELECT on every new table in schema billing",
    );
    assert_eq!(defaults["severity"], "warning");
    assert!(
        defaults["fix"]
            .as_str()
            .unwrap()
            .contains("IN SCHEMA billing REVOKE SELECT ON TABLES FROM PUBLIC"),
        "{defaults:#}"
    );
    // What only a revoke closes, on a default database.
    assert_eq!(
        wrong.naming("advisory_locks", "advisory lock")["severity"],
        "warning"
    );
    assert_eq!(
        wrong.naming("large_objects", "large objects")["severity"],
        "warning"
    );
    assert_eq!(wrong.of("notify").len(), 1);
    // The throwaway role is gone again, and could log in.
    assert!(!prodbox_testkit::pg::role_exists(role).await);
    assert!(wrong.of("sandbox_login").is_empty(), "{:#}", wrong.report);

    // The named statements close every finding.
    for check in [
        "reach",
        "advisory_locks",
        "large_objects",
        "default_privileges",
    ] {
        apply_fixes(&db, &wrong, check).await;
    }
    let fixed = doctor(db.url()).await;
    assert_eq!(fixed.code, Some(0), "{:#}", fixed.report);
    assert_eq!(fixed.report["healthy"], true);
    for check in [
        "reach",
        "advisory_locks",
        "large_objects",
        "default_privileges",
    ] {
        assert!(fixed.of(check).is_empty(), "{check}: {:#}", fixed.report);
    }
    db.cleanup().await;
    let mut admin = prodbox_testkit::pg::admin_connection().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP ROLE {grantor}")))
        .await
        .expect("the grantor dropped");
}

#[tokio::test]
async fn a_login_that_may_not_make_roles_or_schemas_is_reported() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let login = unique_key("doc-login").replace('-', "_");
    let mut admin = admin_connection().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {} LOGIN NOCREATEROLE",
            quote(&login)
        )))
        .await
        .expect("a login");
    let options = db.connect_options();
    let url = format!(
        "postgres://{login}@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        db.name()
    );

    let limited = doctor(&url).await;
    assert_eq!(limited.code, Some(1), "{:#}", limited.report);
    assert_eq!(
        limited.report["checked_as"], "public",
        "no role could be made"
    );
    let roles = limited.naming("login", "may not create roles");
    assert_eq!(roles["severity"], "unusable");
    assert_eq!(
        roles["fix"],
        format!("ALTER ROLE {} CREATEROLE", quote(&login))
    );
    let schemas = limited.naming("login", "may not create schemas");
    assert!(
        schemas["fix"]
            .as_str()
            .unwrap()
            .starts_with("GRANT CREATE ON DATABASE"),
        "{schemas:#}"
    );

    apply_fixes(&db, &limited, "login").await;
    let able = doctor(&url).await;
    assert!(able.of("login").is_empty(), "{:#}", able.report);
    assert!(
        able.report["checked_as"]
            .as_str()
            .is_some_and(|r| r.starts_with("sbxr_doctor_")),
        "{:#}",
        able.report
    );
    db.cleanup().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP ROLE {}", quote(&login))))
        .await
        .expect("the login dropped");
    let _ = admin.close().await;
}

/// A PgBouncer in `mode` in front of the machine's PostgreSQL, on a free port; stopped when
/// dropped.
struct Bouncer {
    dir: std::path::PathBuf,
    port: u16,
}

impl Bouncer {
    async fn start(mode: &str, extra: &str) -> Bouncer {
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("pgbouncer is installed (scripts/test.sh installs Debian's package)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("prodbox-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("users");
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nauth_type = trust\nauth_file = {users}\npool_mode = {mode}\n\
                 unix_socket_dir =\nlogfile = {log}\npidfile = {pid}\n\
                 ignore_startup_parameters = extra_float_digits\n{extra}",
                users = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .expect("the configuration");
        // PgBouncer refuses to run as root: as postgres, then.
        let status = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(&dir)
            .status()
            .expect("chmod");
        assert!(status.success());
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mut command = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", binary]);
            c
        } else {
            std::process::Command::new(binary)
        };
        let status = command.arg("-d").arg(&ini).status().expect("pgbouncer ran");
        assert!(status.success(), "pgbouncer did not start");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Bouncer { dir, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pgbouncer did not listen on {port}");
    }

    fn url(&self, db: &TestDatabase) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db.name())
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[tokio::test]
async fn a_transaction_mode_pgbouncer_is_unsafe_and_a_session_mode_one_is_not() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let direct = doctor(db.url()).await;
    assert!(direct.of("pgbouncer").is_empty(), "{:#}", direct.report);

    // Transaction and statement pooling, the first also with several idle server sessions
    // kept warm and handed out in turn (where comparing backend pids once missed it).
    for (mode, extra) in [
        ("transaction", ""),
        ("transaction", "server_round_robin = 1\nmin_pool_size = 3\n"),
        ("statement", ""),
    ] {
        let bouncer = Bouncer::start(mode, extra).await;
        // Several times: the detection must not depend on which server session comes free.
        for _ in 0..3 {
            let verdict = doctor(&bouncer.url(&db)).await;
            assert_eq!(
                verdict.code,
                Some(1),
                "{mode} {extra}: {:#}",
                verdict.report
            );
            assert_eq!(
                verdict.naming("pgbouncer", "transaction")["severity"],
                "unsafe"
            );
            assert_eq!(verdict.report["checked_as"], Value::Null);
        }
    }

    let session = Bouncer::start("session", "").await;
    for _ in 0..3 {
        let verdict = doctor(&session.url(&db)).await;
        assert!(verdict.of("pgbouncer").is_empty(), "{:#}", verdict.report);
        // This PgBouncer knows only postgres: a sandbox's role cannot log in through it.
        assert_eq!(
            verdict.naming("sandbox_login", "cannot log in")["severity"],
            "unusable"
        );
    }
    drop(session);
    // Dropped `WITH (FORCE)`: PgBouncer's server sessions end with it.
    db.cleanup().await;
}

#[tokio::test]
async fn redis_acls_the_default_user_and_the_managers_rights_are_checked() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let client = redis::Client::open("redis://127.0.0.1:6379/").expect("a Redis URL");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("the machine's Redis (scripts/test.sh starts it)");
    let default_needs_no_password = {
        let user: Vec<redis::Value> = redis::cmd("ACL")
            .arg("GETUSER")
            .arg("default")
            .query_async(&mut redis)
            .await
            .expect("ACL GETUSER");
        format!("{user:?}").contains("nopass")
    };
    // A manager that may do everything but make users.
    let manager = unique_key("doc-mgr");
    let password = "doctor-test-password-0123456789";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&manager)
        .arg(["on", "~*", "&*", "+@all"].as_slice())
        .arg(format!(">{password}"))
        .arg("-acl|setuser")
        .query_async(&mut redis)
        .await
        .expect("a manager user");

    let full = doctor_with(db.url(), &["--redis-url", "redis://127.0.0.1:6379/"]).await;
    assert!(full.of("redis_manager").is_empty(), "{:#}", full.report);
    assert!(full.of("redis_acl").is_empty(), "{:#}", full.report);
    assert_eq!(
        full.of("redis_default_user").len(),
        usize::from(default_needs_no_password),
        "{:#}",
        full.report
    );

    let url = format!("redis://{manager}:{password}@127.0.0.1:6379/");
    let limited = doctor_with(db.url(), &["--redis-url", &url]).await;
    assert_eq!(limited.code, Some(1), "{:#}", limited.report);
    let finding = limited.naming("redis_manager", "ACL SETUSER");
    assert_eq!(finding["severity"], "unusable");
    assert!(
        finding["fix"].as_str().unwrap().contains("+acl|setuser"),
        "{finding:#}"
    );

    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&manager)
        .query_async(&mut redis)
        .await
        .expect("the manager deleted");
    db.cleanup().await;
}

/// Server settings are cluster-wide: the grant is taken back before anything is asserted, so a
/// failing test cannot leave it behind for the other tests' sandboxes.
#[tokio::test]
async fn server_settings_granted_to_public_are_found() {
    require_postgres().await;
    let db = TestDatabase::create().await;
    let mut admin = admin_connection().await;
    admin
        .execute("GRANT ALTER SYSTEM ON PARAMETER archive_command TO PUBLIC")
        .await
        .expect("the grant");
    let granted = doctor(db.url()).await;
    admin
        .execute("REVOKE ALTER SYSTEM ON PARAMETER archive_command FROM PUBLIC")
        .await
        .expect("the grant taken back");
    let _ = admin.close().await;
    let revoked = doctor(db.url()).await;

    assert_eq!(granted.code, Some(1), "{:#}", granted.report);
    let finding = granted.naming("reach", "parameter archive_command: ALTER SYSTEM");
    assert_eq!(
        finding["fix"],
        "REVOKE ALTER SYSTEM ON PARAMETER archive_command FROM PUBLIC"
    );
    assert!(
        !revoked.findings().iter().any(|f| f["what"]
            .as_str()
            .unwrap_or_default()
            .contains("archive_command")),
        "{:#}",
        revoked.report
    );
    db.cleanup().await;
}
