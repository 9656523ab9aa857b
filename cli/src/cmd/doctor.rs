//! `prodbox doctor`: the database's findings (`prodbox_db::doctor`), and Redis's ACL support
//! for prodbox-redis, as one report.

use prodbox_db::doctor::{Finding, Severity, examine};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;

use crate::{Failure, Output};

pub(crate) async fn run(
    options: &PgConnectOptions,
    redis: Option<MultiplexedConnection>,
) -> Result<Output, Failure> {
    let mut report = examine(options)
        .await
        .map_err(|e| Failure::Database(format!("cannot examine the database: {e}")))?;
    if let Some(mut redis) = redis {
        report.findings.extend(redis_findings(&mut redis).await?);
        report.findings.sort_by_key(|f| f.severity);
    }
    let count = |severity| {
        report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    };
    let mut text = format!(
        "database {}, as login {}; a sandbox's reach {}\n",
        options.get_database().unwrap_or("(default)"),
        options.get_username(),
        report
            .checked_as
            .as_deref()
            .map_or("not checked".to_owned(), |role| format!(
                "checked as {role}"
            )),
    );
    for finding in &report.findings {
        text.push_str(&format!(
            "[{}] {}: {}\n    fix: {}\n",
            finding.severity, finding.check, finding.what, finding.fix
        ));
    }
    let healthy = report.is_healthy();
    text.push_str(&format!(
        "{} unsafe, {} unusable, {} warnings, {} notes: {}",
        count(Severity::Unsafe),
        count(Severity::Unusable),
        count(Severity::Warning),
        count(Severity::Note),
        if healthy {
            "sandboxes can be made here"
        } else {
            "sandboxes would be refused or unsafe here"
        }
    ));
    let output = Output {
        text,
        json: json!({
            "healthy": healthy,
            "checked_as": report.checked_as,
            "findings": report.findings.iter().map(|f| json!({
                "check": f.check,
                "severity": f.severity.as_str(),
                "what": f.what,
                "fix": f.fix,
            })).collect::<Vec<_>>(),
        }),
    };
    if healthy {
        Ok(output)
    } else {
        Err(Failure::Unhealthy(output))
    }
}

/// The rights prodbox-redis's manager user needs (`prodbox_redis`'s docs).
const MANAGER_RIGHTS: &str = "ACL SETUSER <manager> ~sbx:* ~prodbox:redis:* &sbx:* +acl|setuser \
     +acl|deluser +acl|users +command +scan +pubsub +copy +unlink +get +set";

/// What prodbox-redis needs of the server: ACLs (Redis 6 and later), a default user that asks
/// for a password (the handle refuses AUTH, but a script or another client could use it), and
/// a manager that may make and delete users and walk the keyspace.
async fn redis_findings(redis: &mut MultiplexedConnection) -> Result<Vec<Finding>, Failure> {
    let unavailable = |e: redis::RedisError| Failure::Database(format!("Redis: {e}"));
    let manager: String = match redis::cmd("ACL").arg("WHOAMI").query_async(redis).await {
        Ok(name) => name,
        Err(e) if e.to_string().to_lowercase().contains("unknown command") => {
            return Ok(vec![Finding {
                check: "redis_acl",
                severity: Severity::Unusable,
                what: format!("Redis has no ACLs ({e}): a sandbox's user cannot be confined"),
                fix: "Redis 7 or later".to_owned(),
            }]);
        }
        // Refused (NOPERM): the user's rights cannot be looked at from here.
        Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
            return Ok(vec![Finding {
                check: "redis_manager",
                severity: Severity::Warning,
                what: format!(
                    "could not tell which Redis user this is ({e}), so its rights were not checked"
                ),
                fix: format!(
                    "{} (and +acl|whoami +acl|dryrun, to let doctor check them)",
                    MANAGER_RIGHTS.replace("<manager>", "<this user>")
                ),
            }]);
        }
        Err(e) => return Err(unavailable(e)),
    };
    let mut findings = Vec::new();
    let default: Vec<redis::Value> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg("default")
        .query_async(redis)
        .await
        .unwrap_or_default();
    // `flags` is followed by the list of the user's flags.
    let flags = default
        .iter()
        .position(|v| matches!(v, redis::Value::BulkString(b) if b == b"flags"))
        .and_then(|at| default.get(at + 1));
    let flag = |name: &str| match flags {
        Some(redis::Value::Array(items)) => items.iter().any(|v| match v {
            redis::Value::BulkString(b) => b == name.as_bytes(),
            redis::Value::SimpleString(t) => t == name,
            _ => false,
        }),
        _ => false,
    };
    if flag("on") && flag("nopass") {
        findings.push(Finding {
            check: "redis_default_user",
            severity: Severity::Warning,
            what: "Redis's default user needs no password: a sandbox's script or any client may \
                   act as it, past the sandbox's ACL user"
                .to_owned(),
            fix: "ACL SETUSER default resetpass >PASSWORD (or requirepass), or ACL SETUSER default off"
                .to_owned(),
        });
    }
    // What prodbox-redis runs as the manager (the crate docs' list).
    for command in [
        &["ACL", "SETUSER", "prodbox-doctor-probe"][..],
        &["ACL", "DELUSER", "prodbox-doctor-probe"],
        &["ACL", "USERS"],
        &["COMMAND", "COUNT"],
        &["SCAN", "0"],
        &["PUBSUB", "CHANNELS"],
        &["COPY", "sbx:{prodbox-doctor}:a", "sbx:{prodbox-doctor}:b"],
        &["UNLINK", "sbx:{prodbox-doctor}:probe"],
        &["GET", "prodbox:redis:torn:prodbox-doctor"],
        &["SET", "prodbox:redis:torn:prodbox-doctor", "1"],
    ] {
        let allowed: redis::RedisResult<String> = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(&manager)
            .arg(command)
            .query_async(redis)
            .await;
        match allowed {
            Ok(answer) if answer == "OK" => {}
            Ok(answer) => findings.push(Finding {
                check: "redis_manager",
                severity: Severity::Unusable,
                what: format!(
                    "Redis user {manager} may not run {}: {answer}",
                    command.join(" ")
                ),
                fix: MANAGER_RIGHTS.replace("<manager>", &manager),
            }),
            // No DRYRUN before Redis 7, or the manager may not run it: its rights are
            // unknown, and would show on first use.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                findings.push(Finding {
                    check: "redis_manager",
                    severity: Severity::Warning,
                    what: format!("could not check what Redis user {manager} may run: {e}"),
                    fix: format!(
                        "{} (and +acl|dryrun, on Redis 7 or later, to let doctor check them)",
                        MANAGER_RIGHTS.replace("<manager>", &manager)
                    ),
                });
                break;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(findings)
}
