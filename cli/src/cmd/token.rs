//! `prodbox token mint` and `verify`: which sandbox a token may be minted for, minting it, and
//! checking one as an edge would, with a secret that never comes from the command line.

use std::time::{Duration, SystemTime};

use prodbox_core::token::{TokenError, TokenKeys};
use prodbox_core::{Sandbox, SandboxBuilder, SandboxKey};
use prodbox_db::directory::DirectoryStore;
use serde_json::json;

use crate::{Failure, Output, SecretSource};

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

impl SecretSource {
    /// The keys holding the secret under `key_id`.
    fn keys(self, key_id: &str) -> Result<TokenKeys, Failure> {
        let secret = match self.secret_file {
            Some(path) => {
                let mut bytes = std::fs::read(&path).map_err(|e| {
                    Failure::Usage(format!("cannot read secret file {}: {e}", path.display()))
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            None => std::env::var_os(&self.secret_env)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "no signing secret: set {} or pass --secret-file",
                        self.secret_env
                    ))
                })?,
        };
        TokenKeys::new()
            .with_key(key_id, &secret)
            .map_err(|e| Failure::Usage(e.to_string()))
    }
}

pub(crate) fn mint(
    sandbox: Sandbox,
    key_id: &str,
    actor: Option<String>,
    origin: Option<String>,
    ttl: Duration,
    secret: SecretSource,
    details: bool,
) -> Result<Output, Failure> {
    let keys = secret.keys(key_id)?;
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
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    // Only the token, unless asked: `TOKEN=$(prodbox token mint ...)` needs nothing else.
    let text = if details {
        format!(
            "{token}\n# sandbox {key}, key id {key_id}, expires {expires}\n# send as: baggage: prodbox.token={token}"
        )
    } else {
        token.clone()
    };
    Ok(Output {
        text,
        json: json!({
            "token": token,
            "key": key.as_str(),
            "key_id": key_id,
            "expires_at": expires,
            "header": format!("prodbox.token={token}"),
            "incarnation": sandbox.created_at().map(|t| humantime::format_rfc3339_micros(t).to_string()),
        }),
    })
}

/// Checks `token` as an edge with `Signed` trust and the secret under `key_id` would: its
/// signature, expiry and claims, then (unless `store` is `None`) that the directory has the
/// sandbox, in the incarnation the token names, neither disabled nor expired.
pub(crate) async fn verify(
    token: &str,
    key_id: &str,
    secret: SecretSource,
    store: Option<&DirectoryStore>,
) -> Result<Output, Failure> {
    let keys = secret.keys(key_id)?;
    let now = SystemTime::now();
    let refused =
        |reason: &str, why: &dyn std::fmt::Display| Failure::Refused(format!("{reason}: {why}"));
    let sandbox = keys
        .verify(token.trim(), now)
        .map_err(|e| refused(e.reason(), &e))?;
    let key = sandbox.key();
    // `None`: not checked; `Some(false)`: the directory does not have the sandbox.
    let mut known = None;
    if let Some(store) = store {
        // The edge's rules, in its order (`prodbox_core::trust`): the incarnation first, then
        // the kill switch and the expiry.
        let entry = store.get(key).await?;
        known = Some(entry.is_some());
        let current = match &entry {
            Some(entry) => entry.is_incarnation_of(&sandbox),
            None => sandbox.created_at().is_none(),
        };
        if !current {
            let error = TokenError::OtherIncarnation(key.to_string());
            return Err(refused(error.reason(), &error));
        }
        if let Some(entry) = entry {
            if entry.disabled {
                return Err(refused(
                    "sandbox_disabled",
                    &format!("sandbox {key} is disabled"),
                ));
            }
            if entry.is_expired_at(now) {
                return Err(refused(
                    "sandbox_expired",
                    &format!("sandbox {key} has expired"),
                ));
            }
        }
    }
    let expires = sandbox
        .expires_at()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let incarnation = sandbox
        .created_at()
        .map(|t| humantime::format_rfc3339_micros(t).to_string());
    // An edge that refuses unknown sandboxes (`UnknownSandbox::Refuse`) refuses this one.
    let directory = match known {
        None => "not checked",
        Some(true) => "checked",
        Some(false) => {
            "checked: the sandbox is not in it (edges that refuse unknown sandboxes refuse this token)"
        }
    };
    Ok(Output {
        text: format!(
            "valid: sandbox {key}\n  actor:       {}\n  origin:      {}\n  expires:     {}\n  incarnation: {}\n  directory:   {directory}",
            sandbox.actor().unwrap_or("-"),
            sandbox.origin().unwrap_or("-"),
            expires.as_deref().unwrap_or("-"),
            incarnation.as_deref().unwrap_or("none"),
        ),
        json: json!({
            "valid": true,
            "key": key.as_str(),
            "actor": sandbox.actor(),
            "origin": sandbox.origin(),
            "expires_at": expires,
            "incarnation": incarnation,
            "directory_checked": known.is_some(),
            "in_directory": known,
        }),
    })
}
