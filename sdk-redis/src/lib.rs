//! prodbox for Redis (redis-rs): inside a sandbox, every key and channel the application names
//! lives in the sandbox's own namespace, enforced by Redis itself.
//!
//! ```no_run
//! use prodbox_redis::SandboxRedis;
//! use redis::AsyncCommands;
//!
//! # async fn run(secret: Vec<u8>) -> redis::RedisResult<()> {
//! let client = redis::Client::open("redis://127.0.0.1/")?;
//! // The one change: the handle is built here, where a `MultiplexedConnection` was.
//! let mut redis = SandboxRedis::builder(client, secret).build().await?;
//!
//! // Unchanged application code: in production it writes `user:42`; inside sandbox pr-42
//! // it writes `sbx:{pr-42}:user:42`, over a connection logged in as `prodbox-sbx-pr-42`.
//! let () = redis.set("user:42", "Ada").await?;
//! let name: String = redis.get("user:42").await?;
//! # Ok(()) }
//! ```
//!
//! # What happens to a sandbox's command
//!
//! - **Keys.** Where a command's keys are comes from the server's own command table
//!   (`COMMAND`, Redis 7 key specifications), read once when the handle is built; each key
//!   gets the prefix `sbx:{<sandbox>}:` ([`names::prefix`]). Replies that carry key names
//!   (`SCAN`, blocking pops, `LMPOP`/`ZMPOP`, `XREAD`) come back without it.
//! - **The keyspace.** `SCAN` always matches the sandbox's prefix (before the caller's own
//!   pattern); `KEYS` and `DBSIZE` are answered by such a `SCAN` (the sandbox's user may not
//!   run them); `RANDOMKEY` is refused.
//! - **Channels.** `PUBLISH`, `SPUBLISH` and `PUBSUB CHANNELS`/`NUMSUB` are namespaced;
//!   subscriptions go through [`SandboxRedis::pubsub`], which also namespaces keyspace
//!   notification channels (`__keyspace@0__:user:42`).
//! - **Refused** (typed [`SandboxRedisError::Refused`], audited): every command that reaches
//!   beyond the sandbox's keys whatever its arguments (`FLUSHALL`, `CONFIG`, `SELECT`, `MOVE`,
//!   `MIGRATE`, `CLIENT KILL`, `AUTH`, `RESET`, `INFO`, `SCRIPT FLUSH`, ...), `SORT` with
//!   `BY`/`GET` patterns, `COPY ... DB`, and any command this version of prodbox has not
//!   reviewed (a newer server's), so they fail closed.
//! - **Scripts.** `EVAL`/`FCALL` keys are namespaced; a script that builds key names itself
//!   is refused by Redis when it touches them (`NOPERM`, surfaced as
//!   [`SandboxRedisError::ServerRefused`]).
//!
//! Outside a sandbox nothing is rewritten: commands go, untouched, over the service's own
//! connection.
//!
//! # Enforced by Redis
//!
//! A sandbox's commands go over a connection of its own, logged in as the ACL user
//! `prodbox-sbx-<sandbox>` ([`names::user`]), which may touch only `sbx:{<sandbox>}:*` keys
//! and channels and run only the commands prodbox sends for sandboxes. A key the rewriting
//! missed is refused by Redis (`NOPERM`), never run on production's keys.
//!
//! - **Connections.** One multiplexed connection per active sandbox, opened on its first
//!   command, at most [`max_active_sandboxes`](SandboxRedisBuilder::max_active_sandboxes) at
//!   once (the least recently used is closed past it). A connection that fails is dropped and
//!   reopened on the next command.
//! - **Users and passwords.** The user is made on first use with `ACL SETUSER ... reset ...`:
//!   idempotent, so every replica writes the same rules. Its password is an HMAC of its name
//!   under the secret given to [`SandboxRedis::builder`], so replicas sharing the secret agree
//!   without storing or exchanging anything; only its hash crosses the wire. After a Redis
//!   restart (users are not persisted unless the server has an ACL file) the first failed
//!   command drops the connection and the next one makes the user again.
//! - **The service's own user** ([`manager`](SandboxRedisBuilder::manager), by default the
//!   service's connection) needs `ACL SETUSER`, `ACL DELUSER`, `ACL USERS` and `COMMAND`,
//!   plus `SCAN` and `UNLINK` on `~sbx:*` for teardown: for example
//!   `ACL SETUSER svc-manager on >... ~sbx:* +acl|setuser +acl|deluser +acl|users +command +scan +unlink`.
//!   `ACL SETUSER` can grant anything, so keep that user's password as you keep an admin's.
//!
//! # Lifecycle
//!
//! [`teardown`] deletes a sandbox's user (closing its connections) and then its keys, by `SCAN`
//! and `UNLINK` in batches; [`collect_garbage`] tears down every sandbox whose directory entry
//! is gone or expired (`prodbox redis gc` runs it). Both count what they delete in
//! `prodbox.redis.cleanup`.
//!
//! # Context
//!
//! The sandbox is read when a command is sent and again at its future's first poll; if they
//! differ (a future made in one context and awaited in another) the command is refused
//! ([`SandboxRedisError::ContextChanged`]). Work spawned without its context runs as
//! production: use `prodbox_core::spawn`.

mod acl;
mod commands;
mod error;
mod handle;
pub mod names;
mod pubsub;
mod rewrite;
mod teardown;

pub use error::SandboxRedisError;
pub use handle::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ACTIVE_SANDBOXES, MIN_SECRET_LEN, SandboxRedis,
    SandboxRedisBuilder,
};
pub use pubsub::SandboxPubSub;
pub use teardown::{Teardown, collect_garbage, collectable, sandboxes, teardown};

#[doc(hidden)]
pub mod plumbing {
    //! For prodbox's own tests: the command table's treatments and a sandbox user's password
    //! (to play a rewrite that missed a key, logged in as the user itself).
    pub use crate::acl::password;
    pub use crate::commands::classify;
}
