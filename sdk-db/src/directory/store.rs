//! [`DirectoryStore`]: the writes (and one-off reads) of the directory table that the
//! `prodbox` tool and test harnesses make; the table's trigger announces each one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prodbox_core::SandboxKey;
use prodbox_core::directory::SandboxEntry;
use sqlx::postgres::PgPool;

use super::StoreError;
use super::table::{COLUMNS, ensure_table, entries_of, entry_of, parse, validate};
use crate::provision::secs;

/// Reads and changes the directory table: what the `prodbox` tool and test harnesses use.
/// Every change is announced to every [`PgDirectory`](super::PgDirectory) by the table's trigger.
#[derive(Clone, Debug)]
pub struct DirectoryStore {
    pool: PgPool,
    table: Arc<tokio::sync::OnceCell<()>>,
}

impl DirectoryStore {
    /// A store on `pool`. The table is created on first use.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            table: Arc::default(),
        }
    }

    async fn ready(&self) -> Result<(), sqlx::Error> {
        self.table
            .get_or_try_init(|| ensure_table(&self.pool))
            .await
            .map(drop)
    }

    /// Registers a new sandbox. `created_at` is the database's clock, whatever the entry says.
    /// An expired entry of the same key (kept for its retention) is replaced; a live one is
    /// [`AlreadyExists`](StoreError::AlreadyExists).
    pub async fn create(&self, entry: &SandboxEntry) -> Result<SandboxEntry, StoreError> {
        validate(entry)?;
        self.ready().await?;
        let (forks, shadows, stubs) = (
            jsonb(serde_json::to_string(&entry.forks))?,
            jsonb(serde_json::to_string(&entry.shadows))?,
            jsonb(serde_json::to_string(&entry.stubs))?,
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO prodbox.sandboxes
                 (key, actor, origin, forks, expires_at, disabled, shadows, stubs)
             VALUES ($1, $2, $3, $4::jsonb, to_timestamp($5), $6, $7::jsonb, $8::jsonb)
             ON CONFLICT (key) DO UPDATE SET
                 actor = EXCLUDED.actor, origin = EXCLUDED.origin, forks = EXCLUDED.forks,
                 shadows = EXCLUDED.shadows, stubs = EXCLUDED.stubs, created_at = now(),
                 expires_at = EXCLUDED.expires_at,
                 disabled = EXCLUDED.disabled, updated_at = now()
             WHERE sandboxes.expires_at <= now()
             RETURNING {COLUMNS}"
        )))
        .bind(entry.key.as_str())
        .bind(entry.actor.as_deref())
        .bind(entry.origin.as_deref())
        .bind(forks)
        .bind(entry.expires_at.map(secs))
        .bind(entry.disabled)
        .bind(shadows)
        .bind(stubs)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => entry_of(&row).map_err(StoreError::Invalid),
            None => Err(StoreError::AlreadyExists(entry.key.clone())),
        }
    }

    /// The entry for `key`.
    pub async fn get(&self, key: &SandboxKey) -> Result<Option<SandboxEntry>, StoreError> {
        self.ready().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes WHERE key = $1"
        )))
        .bind(key.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| entry_of(&row).map_err(StoreError::Invalid))
            .transpose()
    }

    /// Every entry (expired ones included), by key.
    pub async fn list(&self) -> Result<Vec<SandboxEntry>, StoreError> {
        self.ready().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes ORDER BY key"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(entries_of(&rows))
    }

    /// Sets `key`'s expiry (`None`: never).
    pub async fn set_expiry(
        &self,
        key: &SandboxKey,
        expires_at: Option<SystemTime>,
    ) -> Result<SandboxEntry, StoreError> {
        self.update(key, "expires_at = to_timestamp($2)", |q| {
            q.bind(expires_at.map(secs))
        })
        .await
    }

    /// Changes `key`'s entry with `change` (its forks, shadows, stubs and expiry; nothing
    /// else is written), in one transaction holding the row: a concurrent change, or the
    /// sandbox deleted and made again meanwhile, is never overwritten with what was read
    /// before it. Refused when the row is not one prodbox would write (edited by hand: the
    /// directory treats it as disabled), or when `change` makes it invalid (checked as
    /// [`create`](Self::create) checks).
    pub async fn modify(
        &self,
        key: &SandboxKey,
        change: impl FnOnce(&mut SandboxEntry) -> Result<(), StoreError>,
    ) -> Result<SandboxEntry, StoreError> {
        self.ready().await?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prodbox.sandboxes WHERE key = $1 FOR UPDATE"
        )))
        .bind(key.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        let (mut entry, problems) = parse(&row).map_err(StoreError::Invalid)?;
        if !problems.is_empty() {
            return Err(StoreError::Invalid(format!(
                "the directory row of {key} is invalid ({}); it is treated as disabled: fix \
                 it by hand, or delete the sandbox and create it again",
                problems.join("; ")
            )));
        }
        change(&mut entry)?;
        validate(&entry)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE prodbox.sandboxes
             SET forks = $2::jsonb, shadows = $3::jsonb, stubs = $4::jsonb,
                 expires_at = to_timestamp($5), updated_at = now()
             WHERE key = $1 RETURNING {COLUMNS}"
        )))
        .bind(key.as_str())
        .bind(jsonb(serde_json::to_string(&entry.forks))?)
        .bind(jsonb(serde_json::to_string(&entry.shadows))?)
        .bind(jsonb(serde_json::to_string(&entry.stubs))?)
        .bind(entry.expires_at.map(secs))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        entry_of(&row).map_err(StoreError::Invalid)
    }

    /// Flips `key`'s kill switch.
    pub async fn set_disabled(
        &self,
        key: &SandboxKey,
        disabled: bool,
    ) -> Result<SandboxEntry, StoreError> {
        self.update(key, "disabled = $2", |q| q.bind(disabled))
            .await
    }

    async fn update<'q>(
        &self,
        key: &'q SandboxKey,
        set: &str,
        bind: impl FnOnce(
            sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<SandboxEntry, StoreError> {
        self.ready().await?;
        let sql = format!(
            "UPDATE prodbox.sandboxes SET {set}, updated_at = now() WHERE key = $1 RETURNING {COLUMNS}"
        );
        let query = bind(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key.as_str()));
        match query.fetch_optional(&self.pool).await? {
            Some(row) => entry_of(&row).map_err(StoreError::Invalid),
            None => Err(StoreError::NotFound(key.clone())),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &SandboxKey) -> Result<bool, StoreError> {
        self.ready().await?;
        let done = sqlx::query("DELETE FROM prodbox.sandboxes WHERE key = $1")
            .bind(key.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes rows that expired more than `retention` ago; returns how many.
    pub async fn purge_expired(&self, retention: Duration) -> Result<u64, StoreError> {
        self.ready().await?;
        let done = sqlx::query(
            "DELETE FROM prodbox.sandboxes
             WHERE expires_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        // A gone sandbox's cuts outlive it by the retention too (its going stamped them): a
        // fork still draining its records reads them.
        sqlx::query(
            "DELETE FROM prodbox.kafka_cuts c
             WHERE updated_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM prodbox.sandboxes s WHERE s.key = c.sandbox)",
        )
        .bind(retention.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A column's JSON text, from `serde_json::to_string`.
fn jsonb(text: Result<String, serde_json::Error>) -> Result<String, StoreError> {
    text.map_err(|e| StoreError::Invalid(e.to_string()))
}
