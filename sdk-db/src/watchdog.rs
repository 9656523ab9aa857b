//! Bounds what a sandbox's sessions may hold, in a way the sandbox cannot `SET` away.
//!
//! A sandbox role's `statement_timeout` and `idle_in_transaction_session_timeout` are only
//! defaults its sessions can change, and an advisory lock taken with `pg_advisory_lock` stays
//! with the session after the statement, while the connection waits in its pool. So each
//! process watches the backends of its own sandbox connections (registered as each one opens)
//! and ends any that runs a statement, or keeps a transaction open, longer than the bound, or
//! sits idle holding an advisory lock, or holds one, however busy, for longer than the bound.
//! Ending a backend is audited (`db_statement_bound`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prodbox_core::Sandbox;
use prodbox_core::audit::{AuditEvent, Decision, Direction, Protocol};
use sqlx::postgres::PgPool;
use tokio::task::JoinHandle;

/// Backends of this process's sandbox connections, by process id, with the role each logged in
/// as (a process id is reused by a later backend, maybe not a sandbox's).
type Sessions = Arc<Mutex<HashMap<i32, (Sandbox, String)>>>;

pub(crate) struct Watchdog {
    sessions: Sessions,
    task: OnceLock<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(sessions: &Sessions) -> std::sync::MutexGuard<'_, HashMap<i32, (Sandbox, String)>> {
    sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Watchdog {
    pub(crate) fn new() -> Self {
        Self {
            sessions: Arc::default(),
            task: OnceLock::new(),
        }
    }

    /// A sandbox connection of `sandbox` opened on backend `pid`, logged in as `role`.
    pub(crate) fn register(&self, pid: i32, sandbox: Sandbox, role: String) {
        lock(&self.sessions).insert(pid, (sandbox, role));
    }

    /// What registers each new connection of `sandbox`'s pool (sqlx's `after_connect`).
    pub(crate) fn registrar(
        self: &Arc<Self>,
        sandbox: Sandbox,
    ) -> impl for<'c> Fn(
        &'c mut sqlx::PgConnection,
        sqlx::pool::PoolConnectionMetadata,
    ) -> futures_core::future::BoxFuture<'c, Result<(), sqlx::Error>>
    + Send
    + Sync
    + 'static {
        let watchdog = Arc::downgrade(self);
        move |conn, _| {
            let (watchdog, sandbox) = (watchdog.clone(), sandbox.clone());
            Box::pin(async move {
                let (pid, role): (i32, String) =
                    sqlx::query_as("SELECT pg_backend_pid(), session_user::text")
                        .fetch_one(conn)
                        .await?;
                if let Some(watchdog) = watchdog.upgrade() {
                    watchdog.register(pid, sandbox, role);
                }
                Ok(())
            })
        }
    }

    /// Starts watching (once), on `pool`, whose login is a member of every sandbox role.
    pub(crate) fn start(&self, pool: &PgPool, bound: Duration) {
        self.task.get_or_init(|| {
            AbortOnDrop(tokio::spawn(watch(
                Arc::clone(&self.sessions),
                pool.clone(),
                bound,
            )))
        });
    }
}

/// Which registered backends break the bound, and why; every one still alive is listed, with
/// the role it runs as.
const CHECK: &str = "
SELECT a.pid, a.usename::text,
       CASE
           WHEN a.state = 'active'
                AND clock_timestamp() - a.query_start > $2 * interval '1 millisecond'
               THEN 'a statement ran longer than the bound'
           WHEN a.xact_start IS NOT NULL
                AND clock_timestamp() - a.xact_start > $2 * interval '1 millisecond'
               THEN 'a transaction stayed open longer than the bound'
           WHEN a.state = 'idle'
                AND EXISTS (SELECT 1 FROM pg_locks l
                            WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)
               THEN 'an advisory lock was held after its statement'
       END AS why,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) AS holds
FROM pg_stat_activity a
WHERE a.pid = ANY($1)";

async fn watch(sessions: Sessions, pool: PgPool, bound: Duration) {
    let tick = (bound / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let bound_ms = i64::try_from(bound.as_millis()).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when each backend has been seen holding an advisory lock at every look: a session
    // that keeps running short statements is never idle when looked at.
    let mut holding: HashMap<i32, Instant> = HashMap::new();
    loop {
        ticker.tick().await;
        let pids: Vec<i32> = lock(&sessions).keys().copied().collect();
        if pids.is_empty() {
            continue;
        }
        let rows: Vec<(i32, Option<String>, Option<String>, bool)> = match sqlx::query_as(CHECK)
            .bind(&pids)
            .bind(bound_ms)
            .fetch_all(&pool)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(target: "prodbox::db", %error, "the sandbox session watchdog could not look");
                continue;
            }
        };
        let offenders: Vec<(i32, String, Sandbox)> = {
            let mut sessions = lock(&sessions);
            // Forget backends that are gone, or whose process id another backend has taken.
            let alive: HashMap<i32, Option<String>> = rows
                .iter()
                .map(|(pid, role, _, _)| (*pid, role.clone()))
                .collect();
            sessions
                .retain(|pid, (_, role)| alive.get(pid).is_some_and(|r| r.as_ref() == Some(role)));
            let now = Instant::now();
            holding.retain(|pid, _| sessions.contains_key(pid));
            rows.into_iter()
                .filter_map(|(pid, _, why, holds)| {
                    let why = match why {
                        Some(why) => why,
                        None if holds => {
                            let since = *holding.entry(pid).or_insert(now);
                            if now.duration_since(since) <= bound {
                                return None;
                            }
                            "an advisory lock was held longer than the bound".to_owned()
                        }
                        None => {
                            holding.remove(&pid);
                            return None;
                        }
                    };
                    holding.remove(&pid);
                    let (sandbox, _) = sessions.remove(&pid)?;
                    Some((pid, why, sandbox))
                })
                .collect()
        };
        for (pid, why, sandbox) in offenders {
            let ended: Result<bool, _> = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&pool)
                .await;
            let detail = format!(
                "backend {pid} ended: {why} ({} ms){}",
                bound.as_millis(),
                match &ended {
                    Ok(true) => String::new(),
                    Ok(false) => " (it was already gone)".to_owned(),
                    Err(error) => format!(" (could not end it: {error})"),
                }
            );
            AuditEvent {
                sandbox: Some(sandbox.key().as_str()),
                actor: sandbox.actor(),
                origin: sandbox.origin(),
                protocol: Protocol::Db,
                direction: Direction::Outbound,
                decision: Decision::Rejected,
                reason: "db_statement_bound",
                detail: Some(&detail),
            }
            .emit();
        }
    }
}
