//! `prodbox sandbox`: the directory entries an operator creates, lists, updates, extends,
//! disables and deletes (dropping the sandbox's schema on the way out).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use prodbox_core::directory::{ForkAddress, SandboxEntry};
use prodbox_db::SandboxPool;
use prodbox_db::directory::{DirectoryStore, StoreError};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use super::when;
use crate::{Failure, Output, SandboxCommand};

fn entry_json(entry: &SandboxEntry, now: SystemTime) -> Value {
    let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("status".to_owned(), json!(status(entry, now)));
    }
    value
}

fn status(entry: &SandboxEntry, now: SystemTime) -> &'static str {
    if entry.is_expired_at(now) {
        "expired"
    } else if entry.disabled {
        "disabled"
    } else {
        "active"
    }
}

fn addresses(map: &BTreeMap<String, ForkAddress>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(s, a)| format!("{s}={a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pairs` by name, refused when a name comes twice.
fn one_each(
    flag: &str,
    pairs: Vec<(String, ForkAddress)>,
) -> Result<BTreeMap<String, ForkAddress>, Failure> {
    let count = pairs.len();
    let map: BTreeMap<_, _> = pairs.into_iter().collect();
    if map.len() != count {
        return Err(Failure::Usage(format!(
            "{flag} names one twice; give each one address"
        )));
    }
    Ok(map)
}

/// A store error, where invalid input is the caller's (exit 2).
fn invalid_is_usage(error: StoreError) -> Failure {
    match error {
        StoreError::Invalid(m) => Failure::Usage(m),
        other => other.into(),
    }
}

fn describe(entry: &SandboxEntry, now: SystemTime) -> String {
    let forks = addresses(&entry.forks);
    let stubs = addresses(&entry.stubs);
    let shadows = if entry.shadows.is_empty() {
        "none".to_owned()
    } else {
        entry.shadows.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    format!(
        "sandbox {key}: {status}\n  actor:   {actor}\n  origin:  {origin}\n  forks:   {forks}\n  shadows: {shadows}\n  stubs:   {stubs}\n  created: {created}\n  expires: {expires}\n",
        key = entry.key,
        status = status(entry, now),
        actor = entry.actor.as_deref().unwrap_or("-"),
        origin = entry.origin.as_deref().unwrap_or("-"),
        created = entry
            .created_at
            .map_or("-".to_owned(), |t| humantime::format_rfc3339_seconds(t)
                .to_string()),
        expires = when(entry.expires_at, now),
    )
}

pub(crate) async fn run(
    command: SandboxCommand,
    pool: PgPool,
    mut redis: Option<MultiplexedConnection>,
) -> Result<Output, Failure> {
    let store = DirectoryStore::new(pool.clone());
    let now = SystemTime::now();
    let shown = |verb: &str, entry: SandboxEntry| Output {
        text: format!("{verb}{}", describe(&entry, now)),
        json: entry_json(&entry, now),
    };
    match command {
        SandboxCommand::Create {
            key,
            actor,
            origin,
            forks,
            shadows,
            stubs,
            ttl,
            disabled,
        } => {
            let mut entry = SandboxEntry::new(key);
            entry.actor = actor;
            entry.origin = origin;
            entry.forks = one_each("--forks", forks)?;
            entry.shadows = shadows.into_iter().collect();
            entry.stubs = one_each("--stubs", stubs)?;
            entry.expires_at = Some(now + ttl);
            entry.disabled = disabled;
            let created = store.create(&entry).await.map_err(invalid_is_usage)?;
            Ok(shown("created ", created))
        }
        SandboxCommand::List { all } => {
            let entries: Vec<_> = store
                .list()
                .await?
                .into_iter()
                .filter(|e| all || !e.is_expired_at(now))
                .collect();
            let mut text = format!(
                "{:<24} {:<9} {:<12} {:<14} {:<22} FORKS\n",
                "KEY", "STATUS", "ACTOR", "ORIGIN", "EXPIRES"
            );
            for e in &entries {
                let expires = e.expires_at.map_or("never".to_owned(), |t| {
                    humantime::format_rfc3339_seconds(t).to_string()
                });
                let forks: Vec<_> = e.forks.iter().map(|(s, a)| format!("{s}={a}")).collect();
                text.push_str(&format!(
                    "{:<24} {:<9} {:<12} {:<14} {:<22} {}\n",
                    e.key.as_str(),
                    status(e, now),
                    e.actor.as_deref().unwrap_or("-"),
                    e.origin.as_deref().unwrap_or("-"),
                    expires,
                    if forks.is_empty() {
                        "-".to_owned()
                    } else {
                        forks.join(",")
                    }
                ));
            }
            if entries.is_empty() {
                text = if all {
                    "no sandboxes".to_owned()
                } else {
                    "no active sandboxes (--all shows expired ones)".to_owned()
                };
            }
            Ok(Output {
                text,
                json: Value::Array(entries.iter().map(|e| entry_json(e, now)).collect()),
            })
        }
        SandboxCommand::Show { key } => match store.get(&key).await? {
            Some(entry) => Ok(shown("", entry)),
            None => Err(StoreError::NotFound(key).into()),
        },
        SandboxCommand::Update {
            key,
            forks,
            no_forks,
            shadows,
            no_shadows,
            stubs,
            no_stubs,
            ttl,
        } => {
            let routes_change = forks.is_some()
                || no_forks
                || shadows.is_some()
                || no_shadows
                || stubs.is_some()
                || no_stubs;
            if !routes_change && ttl.is_none() {
                return Err(Failure::Usage(
                    "nothing to change: give --forks, --shadows, --stubs (or their --no- forms) or --ttl"
                        .to_owned(),
                ));
            }
            let forks = forks.map(|f| one_each("--forks", f)).transpose()?;
            let stubs = stubs.map(|s| one_each("--stubs", s)).transpose()?;
            // One transaction holding the row: what was read is what is changed.
            let entry = store
                .modify(&key, |entry| {
                    if let Some(forks) = forks {
                        entry.forks = forks;
                    }
                    if no_forks {
                        entry.forks.clear();
                        // Nothing forked is shadowed either, unless --shadows says otherwise
                        // (and is then refused).
                        entry.shadows.clear();
                    }
                    if let Some(shadows) = shadows {
                        entry.shadows = shadows.into_iter().collect();
                    }
                    if no_shadows {
                        entry.shadows.clear();
                    }
                    if let Some(stubs) = stubs {
                        entry.stubs = stubs;
                    }
                    if no_stubs {
                        entry.stubs.clear();
                    }
                    if let Some(ttl) = ttl {
                        entry.expires_at = Some(now + ttl);
                    }
                    Ok(())
                })
                .await
                .map_err(invalid_is_usage)?;
            Ok(shown("updated ", entry))
        }
        SandboxCommand::Extend { key, ttl } => Ok(shown(
            "extended ",
            store.set_expiry(&key, Some(now + ttl)).await?,
        )),
        SandboxCommand::Disable { key } => {
            Ok(shown("disabled ", store.set_disabled(&key, true).await?))
        }
        SandboxCommand::Enable { key } => {
            Ok(shown("enabled ", store.set_disabled(&key, false).await?))
        }
        SandboxCommand::Delete {
            key, keep_schema, ..
        } => {
            // Kill switch first, and a moment for every service to see it (the directory's
            // propagation bound is a second): while the schema goes, the sandbox is refused,
            // not unknown, so nothing provisions it again.
            let schema_dropped = if keep_schema {
                false
            } else {
                match store.set_disabled(&key, true).await {
                    Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(StoreError::NotFound(_)) => {}
                    Err(other) => return Err(other.into()),
                }
                SandboxPool::new(pool).drop_sandbox(&key).await?
            };
            // Redis after the kill switch too; its user goes first, closing its connections.
            let redis_deleted = match redis.as_mut() {
                Some(redis) => Some(super::redis::drop(redis, &key).await?),
                None => None,
            };
            let deleted = store.delete(&key).await?;
            if !deleted && !schema_dropped && redis_deleted.is_none_or(|t| t.keys == 0 && !t.user) {
                return Err(StoreError::NotFound(key).into());
            }
            let mut text = if deleted {
                format!("deleted sandbox {key} from the directory")
            } else {
                format!("sandbox {key} was not in the directory")
            };
            if schema_dropped {
                text.push_str(&format!(
                    "; dropped its schema {}",
                    prodbox_db::names::schema_name(&key)
                ));
            } else if !keep_schema {
                text.push_str("; it had no schema");
            }
            let mut json =
                json!({"key": key.as_str(), "deleted": deleted, "schema_dropped": schema_dropped});
            if let Some(torn) = redis_deleted {
                text.push_str(&format!(
                    "; deleted {} Redis keys{}",
                    torn.keys,
                    if torn.user { " and its Redis user" } else { "" }
                ));
                json["redis_keys_deleted"] = json!(torn.keys);
                json["redis_user_deleted"] = json!(torn.user);
            }
            Ok(Output { text, json })
        }
    }
}
