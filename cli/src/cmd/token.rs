//! `prodbox token mint`: which sandbox a token may be minted for, and minting it with a secret
//! that never comes from the command line.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prodbox_core::token::TokenKeys;
use prodbox_core::{Sandbox, SandboxBuilder, SandboxKey};
use prodbox_db::directory::DirectoryStore;
use serde_json::json;

use crate::{Failure, Output};

/// The sandbox `key` as the directory has it, if a token may be minted for it.
pub(crate) async fn registered(
    store: &DirectoryStore,
    key: &SandboxKey,
) -> Result<Sandbox, Failure> {
    let entry = store.get(key).await?.ok_or_else(|| {
        Failure::Refused(format!(
            "sandbox {key} is not in the directory: create it first (or mint with --no-directory)"
        ))
    })?;
    if entry.disabled {
        return Err(Failure::Refused(format!(
            "sandbox {key} is disabled; enable it first"
        )));
    }
    if entry.is_expired_at(SystemTime::now()) {
        return Err(Failure::Refused(format!(
            "sandbox {key} has expired; extend it first"
        )));
    }
    Ok(entry.sandbox())
}

pub(crate) fn mint(
    sandbox: Sandbox,
    key_id: &str,
    actor: Option<String>,
    origin: Option<String>,
    ttl: Duration,
    secret_env: &str,
    secret_file: Option<PathBuf>,
) -> Result<Output, Failure> {
    let secret = match secret_file {
        Some(path) => {
            let mut bytes = std::fs::read(&path).map_err(|e| {
                Failure::Usage(format!("cannot read secret file {}: {e}", path.display()))
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        None => std::env::var_os(secret_env)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "no signing secret: set {secret_env} or pass --secret-file"
                ))
            })?,
    };
    let keys = TokenKeys::new()
        .with_key(key_id, &secret)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    // The command line's labels win over the directory's.
    let mut builder = SandboxBuilder::from_key(sandbox.key().clone());
    if let Some(actor) = actor.as_deref().or(sandbox.actor()) {
        builder = builder
            .actor(actor)
            .map_err(|e| Failure::Usage(format!("--actor: {e}")))?;
    }
    if let Some(origin) = origin.as_deref().or(sandbox.origin()) {
        builder = builder
            .origin(origin)
            .map_err(|e| Failure::Usage(format!("--origin: {e}")))?;
    }
    if let Some(at) = sandbox.expires_at() {
        builder = builder.expires_at(at);
    }
    if let Some(at) = sandbox.created_at() {
        builder = builder.created_at(at);
    }
    let sandbox = builder.build();
    let now = SystemTime::now();
    let token = keys
        .mint_at(&sandbox, now, ttl)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let key = sandbox.key();
    // The token stops at the sandbox's expiry if that comes first.
    let expires = sandbox
        .expires_at()
        .map_or(now + ttl, |at| at.min(now + ttl));
    Ok(Output {
        text: format!(
            "{token}\n# sandbox {key}, key id {key_id}, expires {}\n# send as: baggage: prodbox.token={token}",
            humantime::format_rfc3339_seconds(expires)
        ),
        json: json!({
            "token": token,
            "key": key.as_str(),
            "key_id": key_id,
            "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
            "header": format!("prodbox.token={token}"),
            "incarnation": sandbox.created_at().map(|t| humantime::format_rfc3339_micros(t).to_string()),
        }),
    })
}
