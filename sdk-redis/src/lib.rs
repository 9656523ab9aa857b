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
//!   pattern); `KEYS` and `DBSIZE` are answered by such a `SCAN`; `RANDOMKEY` is refused.
//!   Redis does not confine these to a user's key patterns, so the handle runs them (and
//!   `COPY`, `PUBSUB CHANNELS`/`NUMSUB`) over the manager's connection, and the sandbox's user
//!   may not run them at all.
//! - **Channels.** `PUBLISH`, `SPUBLISH` and `PUBSUB CHANNELS`/`NUMSUB` are namespaced;
//!   subscriptions go through [`SandboxRedis::pubsub`], which also namespaces keyspace
//!   notification channels (`__keyspace@0__:user:42`).
//! - **Transactions** go through an atomic pipeline (`redis::pipe().atomic()`); `MULTI`,
//!   `EXEC`, `DISCARD` and `WATCH` sent alone are refused (the sandbox's connection is shared
//!   by all its requests).
//! - **Refused** (typed [`SandboxRedisError::Refused`], audited): every command that reaches
//!   beyond the sandbox's keys whatever its arguments (`FLUSHALL`, `CONFIG`, `SELECT`, `MOVE`,
//!   `MIGRATE`, `CLIENT KILL`, `AUTH`, `RESET`, `INFO`, `SCRIPT FLUSH`, `RESTORE`, ...),
//!   `SORT` with `BY`/`GET` patterns, `COPY ... DB`, `GEORADIUS ... STORE` (its key specs name
//!   the first `STORE`, it stores into the last: use `GEOSEARCHSTORE`), any command with a
//!   key-introducing keyword given twice, and any command this version of prodbox has not
//!   reviewed (a newer server's), so they fail closed.
//! - **Scripts.** `EVAL`/`FCALL` keys are namespaced; a script runs as the sandbox's user, so
//!   one that names other keys is refused by Redis (`NOPERM`, surfaced as
//!   [`SandboxRedisError::ServerRefused`]) and it may run only what the user may. A script
//!   sees the namespaced names (`KEYS[1]` is `sbx:{pr-42}:user:42`, and comes back so if
//!   returned), and it runs to its end with the whole server waiting:
//!   [`allow_scripts(false)`](SandboxRedisBuilder::allow_scripts) refuses scripts to
//!   sandboxes.
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
//!   service's connection) makes the users and runs what the handle runs for sandboxes: it
//!   needs `ACL SETUSER`, `ACL DELUSER`, `ACL USERS`, `COMMAND`, `SCAN`, `PUBSUB`, and `COPY`,
//!   `UNLINK`, `GET` and `SET` on `~sbx:*` and `~prodbox:redis:*` (teardown's tombstones): for
//!   example `ACL SETUSER svc-manager on >... ~sbx:* ~prodbox:redis:* &sbx:* +acl|setuser
//!   +acl|deluser +acl|users +command +scan +pubsub +copy +unlink +get +set`. `ACL SETUSER`
//!   can grant anything, so keep that user's password as you keep an admin's.
//! - **Names.** Production's own keys must not start with `sbx:{`: teardown and garbage
//!   collection take every such key for a sandbox's.
//!
//! # Lifecycle
//!
//! [`teardown`] leaves a tombstone (`prodbox:redis:torn:<sandbox>`, a day), then deletes the
//! sandbox's user (closing its connections) and its keys, by `SCAN` and `UNLINK` in batches;
//! while the tombstone lasts, no replica makes the user again for that incarnation
//! ([`SandboxRedisError::TornDown`]; a sandbox created after the teardown is a new one).
//! [`collect_garbage`] tears down every sandbox whose directory entry is gone or expired
//! (`prodbox redis gc` runs it; [`SandboxRedis::start_janitor`] runs it in the service on a
//! schedule). Both count what they delete in `prodbox.redis.cleanup`.
//!
//! # Context
//!
//! A command runs in the context of the task that first polls its future: redis-rs's own
//! futures (`AsyncCommands`, `query_async`) call the handle only then. A future made in a
//! sandboxed request and awaited by other work, or work spawned without its context
//! (`tokio::spawn`), runs as whatever that work is, production included, unless the handle
//! [requires a scope](SandboxRedisBuilder::require_scope): then work in no prodbox scope is
//! refused ([`SandboxRedisError::NoScope`]). Carry the context with `prodbox_core::spawn`.
//! A `req_packed_command` future called in one context and first polled in another is
//! refused ([`SandboxRedisError::ContextChanged`]).
#![cfg_attr(docsrs, feature(doc_cfg))]

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
pub use rewrite::MAX_PATTERN_LEN;
pub use teardown::{Janitor, Teardown, collect_garbage, collectable, sandboxes, teardown};

#[doc(hidden)]
pub mod plumbing {
    //! For prodbox's own tests: the command table's treatments and a sandbox user's password
    //! (to play a rewrite that missed a key, logged in as the user itself).
    pub use crate::acl::password;
    pub use crate::commands::classify;
}
