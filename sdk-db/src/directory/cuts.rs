//! The Kafka cuts a [`PgDirectory`](super::PgDirectory) reads and settles for baseline
//! consumers in `prodbox.kafka_cuts`, each call bounded so a held partition never waits long.

use std::future::Future;

use prodbox_core::SandboxKey;
use prodbox_core::directory::{CutPlace, DirectoryError, PartitionCuts, Range, Sighting, cuts};
use sqlx::Postgres;
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;

use super::IO_TIMEOUT;

/// Binds the key of one sandbox's row in one partition: `$1` to `$4`.
trait BindRow<'q>: Sized {
    fn bind_row(self, place: &'q CutPlace, sandbox: &'q SandboxKey) -> Self;
}

impl<'q> BindRow<'q> for Query<'q, Postgres, PgArguments> {
    fn bind_row(self, place: &'q CutPlace, sandbox: &'q SandboxKey) -> Self {
        self.bind(&place.group)
            .bind(&place.topic)
            .bind(place.partition)
            .bind(sandbox.as_str())
    }
}

/// Bounds a cut read or write by [`IO_TIMEOUT`]: the baseline waiting on it holds a partition.
pub(super) async fn cut_io<T>(
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, DirectoryError> {
    match tokio::time::timeout(IO_TIMEOUT, call).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(error)) => Err(DirectoryError::Cuts(error.to_string())),
        Err(_) => Err(DirectoryError::Cuts(format!(
            "no answer within {IO_TIMEOUT:?}"
        ))),
    }
}

/// One row's ranges.
fn ranges_of(row: &PgRow) -> Result<Vec<Range>, sqlx::Error> {
    let incarnations: Vec<i64> = row.try_get("incarnations")?;
    let starts: Vec<i64> = row.try_get("starts")?;
    let ends: Vec<Option<i64>> = row.try_get("ends")?;
    Ok(incarnations
        .into_iter()
        .zip(starts)
        .zip(ends)
        .map(|((incarnation, start), end)| Range {
            incarnation,
            start,
            end,
        })
        .collect())
}

/// Every sandbox's ranges recorded in the partition `place`.
pub(super) async fn read_cuts(
    pool: &PgPool,
    place: &CutPlace,
) -> Result<PartitionCuts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT sandbox, incarnations, starts, ends FROM prodbox.kafka_cuts
         WHERE grp = $1 AND topic = $2 AND part = $3",
    )
    .bind(&place.group)
    .bind(&place.topic)
    .bind(place.partition)
    .fetch_all(pool)
    .await?;
    let mut cuts = PartitionCuts::with_capacity(rows.len());
    for row in &rows {
        let sandbox: String = row.try_get("sandbox")?;
        // Keys are checked before they are written; a row that is not one names no sandbox.
        if let Ok(sandbox) = sandbox.parse::<SandboxKey>() {
            cuts.insert(sandbox, ranges_of(row)?);
        }
    }
    Ok(cuts)
}

/// Records what the baseline saw at `offset` ([`cuts::settled`]) under the row's lock, so that
/// of two baselines racing over a partition the first to commit wins and the second is handed
/// its ranges. Nothing is written when nothing changes.
pub(super) async fn settle_cut(
    pool: &PgPool,
    seen: Sighting<'_>,
) -> Result<Vec<Range>, sqlx::Error> {
    let Sighting {
        place,
        sandbox,
        forking,
        offset,
    } = seen;
    const WHERE: &str = "WHERE grp = $1 AND topic = $2 AND part = $3 AND sandbox = $4";
    let mut tx = pool.begin().await?;
    if forking.is_some() {
        // A row to lock, for the first range of this sandbox here.
        sqlx::query(
            "INSERT INTO prodbox.kafka_cuts (grp, topic, part, sandbox) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind_row(place, sandbox)
        .execute(&mut *tx)
        .await?;
    }
    let locked = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT incarnations, starts, ends FROM prodbox.kafka_cuts {WHERE} FOR UPDATE"
    )))
    .bind_row(place, sandbox)
    .fetch_optional(&mut *tx)
    .await?;
    let locked = locked
        .as_ref()
        .map(ranges_of)
        .transpose()?
        .unwrap_or_default();
    let ranges = cuts::settled(&locked, forking, offset);
    if ranges != locked {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE prodbox.kafka_cuts SET incarnations = $5, starts = $6, ends = $7,
                    updated_at = now() {WHERE}"
        )))
        .bind_row(place, sandbox)
        .bind(ranges.iter().map(|r| r.incarnation).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.start).collect::<Vec<_>>())
        .bind(ranges.iter().map(|r| r.end).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ranges)
}
