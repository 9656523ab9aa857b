//! The typed refusals of prodbox-redis, carried inside the `redis::RedisError` the application
//! already handles, and their audit events.

use std::error::Error as StdError;
use std::sync::Arc;

use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use prodbox_core::{Sandbox, SandboxKey};
use redis::{RedisError, Value};

use crate::commands::KeysError;

/// Why prodbox-redis refused a sandbox's command, or could not run it. Every one is audited
/// (`protocol = redis`, decision `rejected`) where it happens; none runs the command on
/// production's keys instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxRedisError {
    /// The command is one no sandbox may run (`FLUSHALL`, `CONFIG`, `SELECT`, ...).
    #[error("sandbox {sandbox}: `{command}` is refused: it {why}")]
    Refused {
        /// The sandbox.
        sandbox: SandboxKey,
        /// The command (lowercase, `container|sub` for subcommands).
        command: String,
        /// Why.
        why: &'static str,
    },
    /// The command's keys could not all be found, so it could not be namespaced.
    #[error("sandbox {sandbox}: `{command}` is refused: {why}")]
    Unmapped {
        /// The sandbox.
        sandbox: SandboxKey,
        /// The command.
        command: String,
        /// Why its keys could not be found.
        why: String,
    },
    /// Redis refused the command to the sandbox's ACL user (`NOPERM`): it named a key or
    /// channel outside the sandbox's namespace (a script building key names, say).
    #[error("sandbox {sandbox}: Redis refused `{command}` to the sandbox's user: {detail}")]
    ServerRefused {
        /// The sandbox.
        sandbox: SandboxKey,
        /// The command.
        command: String,
        /// Redis's message.
        detail: String,
    },
    /// The task's sandbox differed between the call that made the command's future and its
    /// first poll: the work moved between contexts, and which namespace it belongs to is
    /// unclear.
    #[error(
        "the sandbox context changed between the call ({at_call:?}) and its first poll ({at_poll:?})"
    )]
    ContextChanged {
        /// The sandbox at the call.
        at_call: Option<SandboxKey>,
        /// The sandbox at the first poll.
        at_poll: Option<SandboxKey>,
    },
    /// The sandbox was torn down since its incarnation began: its objects are not made again
    /// (until a newer incarnation, or a day has passed).
    #[error("sandbox {sandbox} was torn down: its Redis objects are not made again")]
    TornDown {
        /// The sandbox.
        sandbox: SandboxKey,
    },
    /// The command ran in no scope prodbox attached (work that lost its request's context),
    /// on a handle that requires one.
    #[error("a Redis command ran in no prodbox scope (work that lost its request's context)")]
    NoScope,
    /// The sandbox's ACL user could not be made, or its connection opened.
    #[error("sandbox {sandbox}: cannot open its Redis connection: {source}")]
    Connect {
        /// The sandbox.
        sandbox: SandboxKey,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
}

impl SandboxRedisError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        self.parts().0
    }

    fn key(&self) -> Option<&SandboxKey> {
        self.parts().1
    }

    /// The audit reason and the sandbox named, in one place per variant.
    fn parts(&self) -> (&'static str, Option<&SandboxKey>) {
        match self {
            Self::Refused { sandbox, .. } => ("redis_command_refused", Some(sandbox)),
            Self::Unmapped { sandbox, .. } => ("redis_keys_unknown", Some(sandbox)),
            Self::ServerRefused { sandbox, .. } => ("redis_noperm", Some(sandbox)),
            Self::Connect { sandbox, .. } => ("redis_connect_failed", Some(sandbox)),
            Self::TornDown { sandbox } => ("redis_sandbox_torn_down", Some(sandbox)),
            Self::NoScope => ("no_scope", None),
            Self::ContextChanged { at_call, at_poll } => {
                ("context_changed", at_call.as_ref().or(at_poll.as_ref()))
            }
        }
    }

    /// Writes the audit event of this refusal, about `sandbox` when known.
    pub(crate) fn audit(&self, sandbox: Option<&Sandbox>) {
        AuditEvent::about(
            sandbox,
            Protocol::Redis,
            Direction::Outbound,
            Decision::Rejected,
            self.reason(),
        )
        .or_key(self.key())
        .detail(self)
        .emit();
    }

    /// Audits this refusal and turns it into the `RedisError` the caller gets.
    pub(crate) fn refuse(self, sandbox: Option<&Sandbox>) -> RedisError {
        self.audit(sandbox);
        self.into()
    }

    /// The prodbox refusal inside an error returned by a
    /// [`SandboxRedis`](crate::SandboxRedis) call, if it is one.
    pub fn of(error: &RedisError) -> Option<&SandboxRedisError> {
        let mut next: Option<&(dyn StdError + 'static)> = error.source();
        while let Some(error) = next {
            if let Some(ours) = find(error) {
                return Some(ours);
            }
            next = error.source();
        }
        None
    }

    pub(crate) fn unmapped(sandbox: &SandboxKey, command: &str, why: KeysError) -> Self {
        Self::Unmapped {
            sandbox: sandbox.clone(),
            command: command.to_owned(),
            why: why.to_string(),
        }
    }
}

/// Whether Redis refused a command to the connection's user: `NOPERM`, or the error a script
/// gets when a command it calls names a key or runs a command the user may not (Redis 7 gives
/// those no `NOPERM` code, only the message).
pub(crate) fn is_acl_refusal(error: &RedisError) -> bool {
    error.code() == Some("NOPERM") || error.to_string().contains(SCRIPT_REFUSED)
}

const SCRIPT_REFUSED: &str = "The user executing the script can't";

/// Redis's message, if `value` (a reply, or one of a pipeline's or a transaction's) is an ACL
/// refusal.
pub(crate) fn acl_refusal_in(value: &Value) -> Option<String> {
    match value {
        Value::ServerError(error)
            if error.code() == "NOPERM"
                || error.details().is_some_and(|d| d.contains(SCRIPT_REFUSED)) =>
        {
            Some(error.to_string())
        }
        Value::Array(items) => items.iter().find_map(acl_refusal_in),
        _ => None,
    }
}

/// `error` itself, or the error redis-rs or `std::io` keep it in.
fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a SandboxRedisError> {
    if let Some(ours) = error.downcast_ref::<SandboxRedisError>() {
        return Some(ours);
    }
    if let Some(shared) = error.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
        return find(&**shared);
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .and_then(|inner| inner.downcast_ref::<SandboxRedisError>())
}

impl From<SandboxRedisError> for RedisError {
    fn from(error: SandboxRedisError) -> Self {
        // redis-rs has no variant for a client-side refusal; an `io::Error` of kind
        // `PermissionDenied` carries it, which redis-rs never retries, and
        // `SandboxRedisError::of` gets it back.
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, error).into()
    }
}
