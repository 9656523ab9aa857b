//! The handle the application holds: a `redis::aio::ConnectionLike` that sends production's
//! commands untouched over the service's own connection and a sandbox's commands, rewritten,
//! over that sandbox's own connection, logged in as its ACL user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prodbox_core::{Sandbox, SandboxKey};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use crate::acl;
use crate::commands::CommandTable;
use crate::error::SandboxRedisError;
use crate::rewrite::{self, Namespace, Plan, SCAN_COUNT};

/// Sandboxes with a connection at once, by default.
pub const DEFAULT_MAX_ACTIVE_SANDBOXES: usize = 64;
/// How long opening a sandbox's connection (its ACL user included) may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest secret [`SandboxRedis::builder`] takes, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// A Redis connection that keeps each sandbox's keys and channels in its own namespace,
/// enforced by a Redis ACL user per sandbox; see the [crate docs](crate).
///
/// Production's commands go over `C`, the service's own connection: a `MultiplexedConnection`
/// from [`build`](SandboxRedisBuilder::build), or any other (a `ConnectionManager`, say) from
/// [`build_over`](SandboxRedisBuilder::build_over). Cloning is cheap and shares the
/// connections.
#[derive(Clone)]
pub struct SandboxRedis<C = MultiplexedConnection> {
    baseline: C,
    pub(crate) shared: Arc<Shared>,
}

impl<C> std::fmt::Debug for SandboxRedis<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxRedis")
            .field("active_sandboxes", &self.shared.lock().len())
            .field("max_active_sandboxes", &self.shared.max_active)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SandboxRedis`].
#[derive(Debug)]
pub struct SandboxRedisBuilder {
    client: redis::Client,
    manager: Option<redis::Client>,
    secret: Vec<u8>,
    max_active: usize,
    connect_timeout: Duration,
    require_scope: bool,
    scripts: bool,
}

/// The commands that run a script, which [`allow_scripts(false)`] refuses.
///
/// [`allow_scripts(false)`]: SandboxRedisBuilder::allow_scripts
const SCRIPTS: &[&str] = &[
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "script|load",
];

impl SandboxRedisBuilder {
    prodbox_core::plumbing::setters! {
        /// Manages sandbox users and deletes sandbox keys through `client` (default: the
        /// service's own). Its user needs `ACL SETUSER`, `ACL DELUSER`, `ACL USERS`, `COMMAND`,
        /// and `SCAN` and `UNLINK` on `sbx:*` (see the crate docs).
        manager(client: redis::Client) => manager = Some(client);

        /// Sandboxes with an open connection at once (default
        /// [`DEFAULT_MAX_ACTIVE_SANDBOXES`]); past it, the least recently used one's
        /// connection is closed (calls in flight on it finish first).
        max_active_sandboxes(sandboxes: usize) => max_active = sandboxes.max(1);

        /// How long opening a sandbox's connection may take (default
        /// [`DEFAULT_CONNECT_TIMEOUT`]).
        connect_timeout(timeout: Duration) => connect_timeout = timeout;

        /// Refuses commands that run in no scope prodbox attached
        /// ([`SandboxRedisError::NoScope`], audited), production's and sandboxes' alike. Off
        /// by default. With it on, work that lost its request's context (`tokio::spawn`, a
        /// thread, a future made in a request and awaited elsewhere) fails instead of running
        /// as production; prodbox's server layers and Kafka consumer give every request and
        /// message a scope, and the service runs its own background work with
        /// `prodbox_core::FutureExt::in_production`.
        require_scope(require: bool) => require_scope = require;

        /// Whether sandboxes may run scripts and functions (`EVAL`, `EVALSHA`, `FCALL` and
        /// their `_RO` forms, `SCRIPT LOAD`; default yes). A script runs as the sandbox's user,
        /// so it touches only the sandbox's keys, but it runs to its end with the whole server
        /// waiting: refuse them where sandboxes may not risk production's latency.
        allow_scripts(allow: bool) => scripts = allow;
    }

    /// Connects, reads the server's command table and returns the handle, production's
    /// commands going over a new `MultiplexedConnection`. Refuses a secret shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub async fn build(self) -> RedisResult<SandboxRedis> {
        let baseline = self.client.get_multiplexed_async_connection().await?;
        self.build_over(baseline).await
    }

    /// As [`build`](Self::build), production's commands going over `baseline`, the service's
    /// own connection to the same server (a `ConnectionManager`, with its reconnects).
    pub async fn build_over<C: ConnectionLike>(self, baseline: C) -> RedisResult<SandboxRedis<C>> {
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the secret that derives sandbox users' passwords is too short",
                format!(
                    "{} bytes; at least {MIN_SECRET_LEN} random bytes, the same on every replica",
                    self.secret.len()
                ),
            )));
        }
        let manager_client = self.manager.unwrap_or_else(|| self.client.clone());
        let (db, manager_db) = (
            self.client.get_connection_info().redis_settings().db(),
            manager_client.get_connection_info().redis_settings().db(),
        );
        if db != manager_db {
            // The manager lists, copies and deletes the sandboxes' keys: in another database
            // it would miss them all.
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the manager's connection must use the service's database",
                format!("the service uses database {db}, the manager {manager_db}"),
            )));
        }
        let mut manager = manager_client.get_multiplexed_async_connection().await?;
        let reply: Value = redis::cmd("COMMAND").query_async(&mut manager).await?;
        let mut table = CommandTable::from_reply(&reply).map_err(|why| {
            RedisError::from((
                redis::ErrorKind::Client,
                "cannot read the server's command table",
                why.to_owned(),
            ))
        })?;
        if !self.scripts {
            table.refuse(
                SCRIPTS,
                "runs a script, which this service does not allow sandboxes",
            );
        }
        let allowed = acl::allowed_commands(&table);
        warn_if_default_user_is_open(&mut manager).await;
        Ok(SandboxRedis {
            baseline,
            shared: Arc::new(Shared {
                db,
                client: self.client,
                manager,
                table,
                allowed,
                secret: self.secret,
                max_active: self.max_active,
                connect_timeout: self.connect_timeout,
                require_scope: self.require_scope,
                slots: Mutex::new(Slots::default()),
            }),
        })
    }
}

impl SandboxRedis {
    /// Starts configuring a handle over `client` (the service's own Redis, whose user makes
    /// the sandbox users unless [`manager`](SandboxRedisBuilder::manager) says otherwise).
    /// `secret` derives every sandbox user's password: give every replica of the service the
    /// same one (at least [`MIN_SECRET_LEN`] random bytes), so that any replica can log in as
    /// a user another one made. Every service that shares the Redis server needs the same
    /// secret too: a sandbox's user is one per server, and making it again with another
    /// secret's password locks the first service's new connections out.
    pub fn builder(client: redis::Client, secret: impl Into<Vec<u8>>) -> SandboxRedisBuilder {
        SandboxRedisBuilder {
            client,
            manager: None,
            secret: secret.into(),
            max_active: DEFAULT_MAX_ACTIVE_SANDBOXES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            require_scope: false,
            scripts: true,
        }
    }
}

impl<C> SandboxRedis<C> {
    /// How many sandboxes have an open connection.
    pub fn active_sandboxes(&self) -> usize {
        self.shared.lock().len()
    }
}

/// Production's command `sent`, sent at its first poll if that is production's too.
fn production<'a, T: Send + 'a>(
    sent: RedisFuture<'a, T>,
    require_scope: bool,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        admitted(None, require_scope)?;
        sent.await
    })
}

/// Whether work of `sandbox` may go on at its first poll: still in its context, and in a
/// scope when the handle requires one.
fn admitted(sandbox: Option<&Sandbox>, require_scope: bool) -> Result<(), RedisError> {
    same_at_poll(sandbox)?;
    in_scope_if(require_scope, sandbox)
}

/// Refuses work outside any prodbox scope, when the handle requires one.
fn in_scope_if(required: bool, sandbox: Option<&Sandbox>) -> Result<(), RedisError> {
    if !required || prodbox_core::in_scope() {
        return Ok(());
    }
    Err(SandboxRedisError::NoScope.refuse(sandbox))
}

/// Redis lets any connection run `AUTH`, `HELLO` and `RESET` whatever its ACL user, so a
/// connection that sent one (prodbox refuses them to sandboxes) would become the default user:
/// say so when that user logs in without a password.
async fn warn_if_default_user_is_open(manager: &mut MultiplexedConnection) {
    let described: RedisResult<Value> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg("default")
        .query_async(manager)
        .await;
    let open = described.is_ok_and(|user| {
        let text = format!("{user:?}");
        text.contains("nopass") && !text.contains("\"off\"")
    });
    if open {
        tracing::warn!(
            target: "prodbox::redis",
            "Redis's default user logs in without a password: prodbox refuses AUTH, HELLO and \
             RESET to sandboxes, but only a password on the default user (or turning it off) \
             makes Redis refuse them too; see docs/SECURITY.md"
        );
    }
}

/// Reads the sandbox again (at a future's first poll, or when a subscription is used): work
/// created in one context and run in another is refused rather than sent to either namespace.
pub(crate) fn same_at_poll(at_call: Option<&Sandbox>) -> Result<(), RedisError> {
    let at_call_key = at_call.map(Sandbox::key);
    if prodbox_core::with_current(|now| now.map(Sandbox::key) == at_call_key) {
        return Ok(());
    }
    let at_poll = prodbox_core::current();
    Err(SandboxRedisError::ContextChanged {
        at_call: at_call_key.cloned(),
        at_poll: at_poll.as_ref().map(|s| s.key().clone()),
    }
    .refuse(at_call.or(at_poll.as_ref())))
}

impl<C: ConnectionLike + Send> ConnectionLike for SandboxRedis<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let scope = self.shared.require_scope;
        match prodbox_core::current() {
            None => production(self.baseline.req_packed_command(cmd), scope),
            Some(sandbox) => Box::pin(async move {
                admitted(Some(&sandbox), scope)?;
                self.shared.command(&sandbox, cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let scope = self.shared.require_scope;
        match prodbox_core::current() {
            None => production(
                self.baseline.req_packed_commands(pipeline, offset, count),
                scope,
            ),
            Some(sandbox) => Box::pin(async move {
                admitted(Some(&sandbox), scope)?;
                let shared = &self.shared;
                shared.pipeline(&sandbox, pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        self.baseline.get_db()
    }
}

pub(crate) struct Shared {
    pub(crate) client: redis::Client,
    pub(crate) manager: MultiplexedConnection,
    pub(crate) table: CommandTable,
    allowed: Vec<String>,
    secret: Vec<u8>,
    pub(crate) db: i64,
    max_active: usize,
    connect_timeout: Duration,
    require_scope: bool,
    slots: Mutex<Slots>,
}

type Slot = Arc<OnceCell<MultiplexedConnection>>;

/// The sandboxes' connections, least recently used first out.
#[derive(Default)]
struct Slots {
    slots: HashMap<SandboxKey, (Slot, u64)>,
    tick: u64,
}

impl Slots {
    fn len(&self) -> usize {
        self.slots.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans, sends and answers one command of `sandbox`.
    async fn command(&self, sandbox: &Sandbox, cmd: &Cmd) -> RedisResult<Value> {
        let ns = Namespace::new(sandbox.key());
        let plan = rewrite::unpack(&cmd.get_packed_command())
            .ok_or_else(|| malformed(&ns))
            .and_then(|args| rewrite::plan(&self.table, &ns, args))
            .map_err(|refused| refused.refuse(Some(sandbox)))?;
        let result = match plan {
            Plan::Send {
                cmd: mut sent,
                reply,
                via_manager,
            } => {
                sent.set_no_response(cmd.is_no_response());
                let sent_over = if via_manager {
                    self.manager.clone().req_packed_command(&sent).await
                } else {
                    self.connection(sandbox)
                        .await?
                        .req_packed_command(&sent)
                        .await
                };
                sent_over.map(|mut value| {
                    rewrite::fix_reply(&ns, reply, &mut value);
                    value
                })
            }
            Plan::ScanAll {
                pattern,
                count_only,
            } => scan_all(&mut self.manager.clone(), &pattern, count_only, &ns).await,
        };
        self.checked(sandbox, command_name(cmd), result)
    }

    /// Plans every command of `pipeline` (refusing all of it if one is refused), sends them as
    /// one pipeline and answers.
    async fn pipeline(
        &self,
        sandbox: &Sandbox,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let ns = Namespace::new(sandbox.key());
        let mut sent = redis::pipe();
        if pipeline.is_transaction() {
            sent.atomic();
        }
        let mut replies = Vec::new();
        for cmd in pipeline.cmd_iter() {
            let planned = rewrite::unpack(&cmd.get_packed_command())
                .ok_or_else(|| malformed(&ns))
                .and_then(|args| rewrite::plan(&self.table, &ns, args));
            match planned {
                Ok(Plan::Send {
                    cmd,
                    reply,
                    via_manager: false,
                }) => {
                    sent.add_command(cmd);
                    replies.push(reply);
                }
                Ok(Plan::Send { .. } | Plan::ScanAll { .. }) => {
                    return Err(SandboxRedisError::Refused {
                        sandbox: ns.key.clone(),
                        command: command_name(cmd),
                        why: "is run by prodbox over its own connection, which a pipeline cannot hold: send it alone",
                    }
                    .refuse(Some(sandbox)));
                }
                Err(refused) => return Err(refused.refuse(Some(sandbox))),
            }
        }
        let mut connection = self.connection(sandbox).await?;
        let result = connection
            .req_packed_commands(&sent, offset, count)
            .await
            .map(|mut values| {
                if pipeline.is_transaction() {
                    if let Some(Value::Array(items)) = values.last_mut() {
                        for (item, reply) in items.iter_mut().zip(&replies) {
                            rewrite::fix_reply(&ns, *reply, item);
                        }
                    }
                } else {
                    for (item, reply) in values.iter_mut().zip(replies.iter().skip(offset)) {
                        rewrite::fix_reply(&ns, *reply, item);
                    }
                }
                values
            });
        self.checked(sandbox, "pipeline".to_owned(), result)
    }

    /// Turns Redis's `NOPERM` into a typed, audited refusal, and forgets a connection that
    /// failed (the next call opens a new one, remaking the user after a Redis restart).
    /// Replies (a pipeline's included) that hold one are refused as a whole.
    fn checked<T: Replies>(
        &self,
        sandbox: &Sandbox,
        command: String,
        result: RedisResult<T>,
    ) -> RedisResult<T> {
        let refusal = match &result {
            Ok(value) => value.refusal(),
            Err(error) if crate::error::is_acl_refusal(error) => Some(error.to_string()),
            Err(_) => None,
        };
        if let Some(detail) = refusal {
            return Err(SandboxRedisError::ServerRefused {
                sandbox: sandbox.key().clone(),
                command,
                detail,
            }
            .refuse(Some(sandbox)));
        }
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if error.is_unrecoverable_error() || error.is_connection_dropped() {
            self.forget(sandbox.key());
        }
        Err(error)
    }

    /// The sandbox's connection, opened (its user made) on first use.
    async fn connection(&self, sandbox: &Sandbox) -> RedisResult<MultiplexedConnection> {
        let key = sandbox.key();
        let slot = self.slot(key);
        let opened = slot
            .get_or_try_init(|| async {
                let opening = async {
                    let client = self.login(sandbox).await?;
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|source| connect_failed(key, source))
                };
                tokio::time::timeout(self.connect_timeout, opening)
                    .await
                    .unwrap_or_else(|_| {
                        Err(connect_failed(
                            key,
                            RedisError::from((
                                redis::ErrorKind::Io,
                                "timed out opening the sandbox's connection",
                            )),
                        ))
                    })
            })
            .await;
        match opened {
            Ok(connection) => Ok(connection.clone()),
            Err(refused) => {
                self.forget(key);
                Err(refused.refuse(Some(sandbox)))
            }
        }
    }

    fn slot(&self, key: &SandboxKey) -> Slot {
        let mut slots = self.lock();
        slots.tick += 1;
        let tick = slots.tick;
        if let Some((slot, used)) = slots.slots.get_mut(key) {
            *used = tick;
            return Arc::clone(slot);
        }
        if slots.slots.len() >= self.max_active
            && let Some(oldest) = slots
                .slots
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            slots.slots.remove(&oldest);
        }
        let slot = Slot::default();
        slots.slots.insert(key.clone(), (Arc::clone(&slot), tick));
        slot
    }

    pub(crate) fn forget(&self, key: &SandboxKey) {
        self.lock().slots.remove(key);
    }

    /// Whether this incarnation of `sandbox` was torn down (its tombstone is newer).
    async fn torn_down(
        &self,
        manager: &mut MultiplexedConnection,
        sandbox: &Sandbox,
    ) -> Result<bool, SandboxRedisError> {
        let torn: Option<i64> = redis::cmd("GET")
            .arg(crate::names::tombstone(sandbox.key()))
            .query_async(manager)
            .await
            .map_err(|source| connect_failed(sandbox.key(), source))?;
        let began = sandbox.created_at().map(crate::names::micros);
        Ok(torn.is_some_and(|torn| began.is_none_or(|began| began <= torn)))
    }

    /// Makes the sandbox's user (idempotent: every replica writes the same rules) and returns a
    /// client that logs in as it; refuses a sandbox torn down since its incarnation began (a
    /// replica still serving it would make it again).
    pub(crate) async fn login(
        &self,
        sandbox: &Sandbox,
    ) -> Result<redis::Client, SandboxRedisError> {
        let key = sandbox.key();
        let mut manager = self.manager.clone();
        if self.torn_down(&mut manager, sandbox).await? {
            return Err(SandboxRedisError::TornDown {
                sandbox: key.clone(),
            });
        }
        let password = acl::password(&self.secret, key);
        let mut setuser = redis::cmd("ACL");
        for arg in acl::setuser(key, &password, &self.allowed, self.db) {
            setuser.arg(arg);
        }
        let () = setuser
            .query_async(&mut manager)
            .await
            .map_err(|source| connect_failed(key, source))?;
        // A teardown may have set its tombstone and deleted the user between the read above
        // and the SETUSER: read it again, and take back what this login made.
        if self.torn_down(&mut manager, sandbox).await? {
            let _: RedisResult<i64> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(crate::names::user(key))
                .query_async(&mut manager)
                .await;
            return Err(SandboxRedisError::TornDown {
                sandbox: key.clone(),
            });
        }
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(crate::names::user(key))
            .set_password(password);
        redis::Client::open(info.set_redis_settings(settings))
            .map_err(|source| connect_failed(key, source))
    }
}

/// A reply, or a pipeline's replies, that may hold an ACL refusal.
trait Replies {
    fn refusal(&self) -> Option<String>;
}

impl Replies for Value {
    fn refusal(&self) -> Option<String> {
        crate::error::acl_refusal_in(self)
    }
}

impl Replies for Vec<Value> {
    fn refusal(&self) -> Option<String> {
        self.iter().find_map(crate::error::acl_refusal_in)
    }
}

fn connect_failed(key: &SandboxKey, source: RedisError) -> SandboxRedisError {
    SandboxRedisError::Connect {
        sandbox: key.clone(),
        source,
    }
}

fn malformed(ns: &Namespace) -> SandboxRedisError {
    SandboxRedisError::Refused {
        sandbox: ns.key.clone(),
        command: String::new(),
        why: "could not be read back from its packed form",
    }
}

fn command_name(cmd: &Cmd) -> String {
    cmd.args_iter()
        .next()
        .map(|arg| match arg {
            redis::Arg::Simple(name) => String::from_utf8_lossy(name).to_ascii_lowercase(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// `KEYS` and `DBSIZE` over the namespace: `SCAN ... MATCH pattern` to the end.
async fn scan_all(
    connection: &mut MultiplexedConnection,
    pattern: &[u8],
    count_only: bool,
    ns: &Namespace,
) -> RedisResult<Value> {
    let mut cursor = 0u64;
    let mut names = Vec::new();
    let mut count = 0i64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(connection)
            .await?;
        count += batch.len() as i64;
        if !count_only {
            names.extend(batch.into_iter().map(|name| {
                let mut value = Value::BulkString(name);
                ns.strip(&mut value);
                value
            }));
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(if count_only {
        Value::Int(count)
    } else {
        Value::Array(names)
    })
}
