//! The ACL user of a sandbox: its password, derived from the service's secret so that every
//! replica computes the same one and none has to be stored; and its rules, derived from the
//! command table so that Redis refuses exactly what prodbox's rewriting does not allow.

use hmac::{KeyInit, Mac};
use prodbox_core::SandboxKey;
use sha2::{Digest, Sha256};

use crate::commands::{CommandTable, Treatment};
use crate::names;

/// The password of sandbox `key`'s user: HMAC-SHA-256 of its name under `secret`, in hex.
pub fn password(secret: &[u8], key: &SandboxKey) -> String {
    let message = format!("prodbox-redis/v1/{}", names::user(key));
    match hmac::Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; unreachable, and still a secret-dependent password.
        Err(_) => hex(&Sha256::new()
            .chain_update(secret)
            .chain_update(message)
            .finalize()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The commands the sandbox users may run: the keyed and harmless commands and the ones only
/// prodbox sends (transactions, subscriptions); never anything refused, nor what the handle
/// runs over the manager's connection (`SCAN`, `KEYS`, `DBSIZE`, `COPY`, `PUBSUB
/// CHANNELS`/`NUMSUB`), whose confinement Redis does not enforce.
pub(crate) fn allowed_commands(table: &CommandTable) -> Vec<String> {
    let mut allowed: Vec<String> = table
        .iter()
        .filter(|(_, command)| match command.treatment {
            Treatment::Keys | Treatment::Harmless => true,
            // Confined by prodbox's rewrite alone: run over the manager's connection, never
            // allowed to the user (a script runs as it).
            Treatment::Special(special) => !special.via_manager(),
            Treatment::Refused(_) => false,
        })
        .map(|(name, _)| format!("+{name}"))
        .collect();
    allowed.sort_unstable();
    allowed
}

/// `ACL SETUSER` arguments that make (or remake, idempotently) sandbox `key`'s user: only its
/// key and channel patterns, only `allowed` commands, logging in with `password`, on database
/// `db` (which the connection's handshake selects when it is not 0).
pub(crate) fn setuser(
    key: &SandboxKey,
    password: &str,
    allowed: &[String],
    db: i64,
) -> Vec<String> {
    let prefix = names::prefix(key);
    let mut args = vec![
        "SETUSER".to_owned(),
        names::user(key),
        // `reset` first: the same rules whoever ran it last, whatever was there before.
        "reset".to_owned(),
        "on".to_owned(),
        // The hash, so the password itself never crosses the wire.
        format!("#{}", hex(&Sha256::digest(password.as_bytes()))),
        format!("~{prefix}*"),
        format!("&{prefix}*"),
        // Keyspace notifications of its own keys only (`__keyevent@` channels carry any key's
        // name, so they stay closed).
        format!("&__keyspace@{db}__:{prefix}*"),
        "-@all".to_owned(),
    ];
    args.extend(allowed.iter().cloned());
    if db != 0 {
        args.push(format!("+select|{db}"));
    }
    args
}
