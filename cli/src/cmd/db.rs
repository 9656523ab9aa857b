//! `prodbox db`: the sandbox schemas in the catalogue, listed, dropped one by one, or collected
//! when expired or orphaned.

use std::time::SystemTime;

use prodbox_core::SandboxKey;
use prodbox_core::directory::SandboxEntry;
use prodbox_db::SandboxPool;
use prodbox_db::directory::DirectoryStore;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use super::when;
use crate::{DbCommand, Failure, Output};

pub(crate) async fn run(command: DbCommand, pool: PgPool) -> Result<Output, Failure> {
    let schemas = SandboxPool::new(pool.clone());
    let now = SystemTime::now();
    match command {
        DbCommand::List => {
            let records = schemas.schemas().await?;
            let mut text = format!(
                "{:<24} {:<28} {:<22} EXPIRES\n",
                "KEY", "SCHEMA", "LAST USED"
            );
            for r in &records {
                text.push_str(&format!(
                    "{:<24} {:<28} {:<22} {}\n",
                    r.key.as_str(),
                    r.schema,
                    humantime::format_rfc3339_seconds(r.last_used_at).to_string(),
                    when(r.expires_at, now),
                ));
            }
            if records.is_empty() {
                text = "no sandbox schemas".to_owned();
            }
            let json = records
                .iter()
                .map(|r| {
                    json!({
                        "key": r.key.as_str(),
                        "schema": r.schema,
                        "role": r.role,
                        "created_at": humantime::format_rfc3339_seconds(r.created_at).to_string(),
                        "last_used_at": humantime::format_rfc3339_seconds(r.last_used_at).to_string(),
                        "expires_at": r.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    })
                })
                .collect();
            Ok(Output {
                text,
                json: Value::Array(json),
            })
        }
        DbCommand::Drop(crate::Target { key }) => {
            if !schemas.drop_sandbox(&key).await? {
                return Err(Failure::Refused(format!("sandbox {key} has no schema")));
            }
            Ok(Output {
                text: format!(
                    "dropped the schema {} and role of sandbox {key}",
                    prodbox_db::names::schema_name(&key)
                ),
                json: json!({"key": key.as_str(), "dropped": true}),
            })
        }
        DbCommand::Gc { orphans, dry_run } => {
            let directory: std::collections::HashMap<SandboxKey, SandboxEntry> =
                DirectoryStore::new(pool)
                    .list()
                    .await?
                    .into_iter()
                    .map(|e| (e.key.clone(), e))
                    .collect();
            let mut doomed = Vec::new();
            for record in schemas.schemas().await? {
                let why = match directory.get(&record.key) {
                    _ if record.expires_at.is_some_and(|at| at <= now) => "schema expired",
                    Some(entry) if entry.is_expired_at(now) => "sandbox expired",
                    None if orphans => "not in the directory",
                    _ => continue,
                };
                doomed.push((record.key, why));
            }
            let mut dropped = Vec::new();
            if dry_run {
                dropped = doomed;
            } else {
                // Expired schemas go through the janitor's path, which spares one a process
                // started using again since the listing.
                let report = schemas.drop_expired(now).await?;
                for key in report.dropped {
                    dropped.push((key, "schema expired"));
                }
                for (key, why) in doomed
                    .into_iter()
                    .filter(|(_, why)| *why != "schema expired")
                {
                    if schemas.drop_sandbox(&key).await? {
                        dropped.push((key, why));
                    }
                }
                // The others went; these stay for the next run, and the exit code says so.
                if !report.failed.is_empty() {
                    let failed: Vec<String> = report
                        .failed
                        .iter()
                        .map(|(key, error)| format!("{key} ({error})"))
                        .collect();
                    return Err(Failure::Database(format!(
                        "dropped {}; could not drop {}",
                        dropped.len(),
                        failed.join("; ")
                    )));
                }
            }
            let verb = if dry_run { "would drop" } else { "dropped" };
            let mut text = String::new();
            for (key, why) in &dropped {
                text.push_str(&format!("{verb} {key} ({why})\n"));
            }
            if dropped.is_empty() {
                text = "nothing to drop".to_owned();
            }
            Ok(Output {
                text,
                json: json!({
                    "dry_run": dry_run,
                    "dropped": dropped.iter().map(|(k, why)| json!({"key": k.as_str(), "reason": why})).collect::<Vec<_>>(),
                }),
            })
        }
    }
}
