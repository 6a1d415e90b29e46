//! The Postgres read store (the embedded default): tables `rollup`, `sink_progress` and
//! `sink_offset` (migrations/1001_rollups.sql), written one batch per transaction.
//!
//! It owns those tables and nothing else; it must never write the gateway's tables.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use pulseline_schemas::records::Period;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::SinkError;
use crate::sink::{Applied, OffsetScope, PartitionSpan, RollupBatch, RollupRow, Sink};

/// The sink's migrations. Other crates' versions (the gateway's 0001-0999) share the
/// database and `_sqlx_migrations`, so they are "missing" here and must be ignored.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!()
};

/// `sink_progress.read_model` of the rollups: freshness is per read model.
pub const ROLLUPS_READ_MODEL: &str = "rollups";

/// `sink_progress.stream` / `user_stream.stream` of samples (the gateway's numbering).
pub const SAMPLES_STREAM: i16 = 1;

/// The Postgres implementation of `Sink`.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    pool: PgPool,
}

impl PostgresSink {
    /// Connects a pool; fails fast if Postgres does not answer.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, SinkError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or updates the sink's tables.
    pub async fn migrate(&self) -> Result<(), SinkError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn apply_batch(
        &self,
        scope: &OffsetScope,
        batch: &RollupBatch,
    ) -> Result<Applied, SinkError> {
        let mut tx = self.pool.begin().await?;
        // Offsets first: the compare-and-set takes the partitions' row locks, so a second
        // instance holding the same partitions waits here, then finds the offset moved.
        let mut spans = batch.spans.clone();
        spans.sort_by_key(|s| s.partition);
        for span in &spans {
            advance_offset(&mut tx, scope, span).await?;
        }
        let rows = newest_per_key(&batch.rows);
        let superseded = (batch.rows.len() - rows.len()) as u64;
        let written = upsert_rollups(&mut tx, &rows).await?;
        raise_progress(&mut tx, &batch.rows).await?;
        tx.commit().await?;
        Ok(Applied {
            rows_applied: written,
            stale_skipped: superseded + (rows.len() as u64 - written),
        })
    }
}

/// Moves one partition's stored offset from `expected` to `next_offset`, or refuses.
async fn advance_offset(
    tx: &mut Transaction<'_, Postgres>,
    scope: &OffsetScope,
    span: &PartitionSpan,
) -> Result<(), SinkError> {
    let moved = match span.expected {
        Some(expected) => sqlx::query(
            "UPDATE sink_offset SET next_offset = $4, updated_at = now() \
             WHERE consumer = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
        )
        .bind(&scope.consumer)
        .bind(&scope.topic)
        .bind(span.partition)
        .bind(span.next_offset)
        .bind(expected),
        // A concurrent insert of the same key blocks until the other transaction ends,
        // then does nothing: the conflict is seen either way.
        None => sqlx::query(
            "INSERT INTO sink_offset (consumer, topic, partition, next_offset) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&scope.consumer)
        .bind(&scope.topic)
        .bind(span.partition)
        .bind(span.next_offset),
    }
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved == 1 {
        Ok(())
    } else {
        Err(SinkError::OffsetConflict {
            topic: scope.topic.clone(),
            partition: span.partition,
            expected: span.expected,
        })
    }
}

/// One row per key, the highest version (the later one on a tie), sorted by key so that
/// concurrent writers lock rows in the same order. `ON CONFLICT DO UPDATE` cannot touch
/// a row twice in one statement, so duplicates must go before the insert.
fn newest_per_key(rows: &[RollupRow]) -> Vec<&RollupRow> {
    let mut newest: BTreeMap<(Uuid, &str, &'static str, chrono::NaiveDateTime), &RollupRow> =
        BTreeMap::new();
    for row in rows {
        let (user, metric, period, start) = row.key();
        let entry = newest
            .entry((user, metric, period_text(period), start))
            .or_insert(row);
        if row.version >= entry.version {
            *entry = row;
        }
    }
    newest.into_values().collect()
}

fn period_text(p: Period) -> &'static str {
    match p {
        Period::Day => "DAY",
        Period::Hour => "HOUR",
    }
}

/// Bulk upsert guarded by version; returns how many rows were inserted or replaced.
async fn upsert_rollups(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&RollupRow],
) -> Result<u64, SinkError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let mut user_ids = Vec::with_capacity(n);
    let mut metrics = Vec::with_capacity(n);
    let mut periods = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    let mut mins = Vec::with_capacity(n);
    let mut maxs = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    for r in rows {
        user_ids.push(r.user_id);
        metrics.push(r.metric.as_str());
        periods.push(period_text(r.period));
        starts.push(r.bucket_start);
        // A deleted bucket keeps only its version (the tombstone that blocks resurrection).
        values.push(if r.deleted { None } else { r.value });
        mins.push(if r.deleted { None } else { r.min });
        maxs.push(if r.deleted { None } else { r.max });
        counts.push(if r.deleted { 0 } else { r.count });
        // Arrays of arrays cannot be unnested row by row; each row's sources travel as a
        // JSON array and become text[] in SQL.
        let list: &[String] = if r.deleted { &[] } else { &r.sources };
        sources.push(serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned()));
        deleted.push(r.deleted);
        versions.push(r.version);
    }
    let result = sqlx::query(
        "INSERT INTO rollup AS r \
             (user_id, metric, period, bucket_start, value, min, max, count, sources, deleted, version, updated_at) \
         SELECT u.user_id, u.metric, u.period, u.bucket_start, u.value, u.min, u.max, u.count, \
                ARRAY(SELECT s.e FROM jsonb_array_elements_text(u.sources::jsonb) WITH ORDINALITY AS s(e, i) ORDER BY s.i), \
                u.deleted, u.version, now() \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamp[], $5::float8[], $6::float8[], \
                     $7::float8[], $8::int8[], $9::text[], $10::bool[], $11::int8[]) \
              AS u(user_id, metric, period, bucket_start, value, min, max, count, sources, deleted, version) \
         ON CONFLICT (user_id, metric, period, bucket_start) DO UPDATE SET \
             value = EXCLUDED.value, min = EXCLUDED.min, max = EXCLUDED.max, count = EXCLUDED.count, \
             sources = EXCLUDED.sources, deleted = EXCLUDED.deleted, version = EXCLUDED.version, \
             updated_at = EXCLUDED.updated_at \
         WHERE r.version < EXCLUDED.version",
    )
    .bind(&user_ids)
    .bind(&metrics)
    .bind(&periods)
    .bind(&starts)
    .bind(&values)
    .bind(&mins)
    .bind(&maxs)
    .bind(&counts)
    .bind(&sources)
    .bind(&deleted)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

/// Raises each user's applied samples sequence to the highest one in the batch.
async fn raise_progress(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[RollupRow],
) -> Result<(), SinkError> {
    let mut highest: BTreeMap<Uuid, i64> = BTreeMap::new();
    for r in rows {
        let seq = highest.entry(r.user_id).or_insert(r.applied_seq);
        *seq = (*seq).max(r.applied_seq);
    }
    if highest.is_empty() {
        return Ok(());
    }
    let (users, seqs): (Vec<Uuid>, Vec<i64>) = highest.into_iter().unzip();
    sqlx::query(
        "INSERT INTO sink_progress AS p (read_model, user_id, stream, applied_seq) \
         SELECT $1, x.user_id, $2, x.seq FROM UNNEST($3::uuid[], $4::int8[]) AS x(user_id, seq) \
         ON CONFLICT (read_model, user_id, stream) DO UPDATE \
             SET applied_seq = EXCLUDED.applied_seq, updated_at = now() \
         WHERE p.applied_seq < EXCLUDED.applied_seq",
    )
    .bind(ROLLUPS_READ_MODEL)
    .bind(SAMPLES_STREAM)
    .bind(&users)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Sink for PostgresSink {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn stored_offsets<'a>(
        &'a self,
        scope: &'a OffsetScope,
        partitions: &'a [i32],
    ) -> BoxFuture<'a, Result<HashMap<i32, i64>, SinkError>> {
        Box::pin(async move {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM sink_offset \
                 WHERE consumer = $1 AND topic = $2 AND partition = ANY($3)",
            )
            .bind(&scope.consumer)
            .bind(&scope.topic)
            .bind(partitions)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn apply<'a>(
        &'a self,
        scope: &'a OffsetScope,
        batch: &'a RollupBatch,
    ) -> BoxFuture<'a, Result<Applied, SinkError>> {
        Box::pin(self.apply_batch(scope, batch))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64, bucket: &str) -> RollupRow {
        RollupRow::parse(pulseline_schemas::records::RollupUpsert {
            user_id: Uuid::nil().to_string(),
            metric: "STEPS".into(),
            period: Period::Day,
            bucket_start: bucket.into(),
            version,
            deleted: false,
            value: Some(version as f64),
            min: None,
            max: None,
            count: 1,
            sources: vec![],
            applied_seq: version,
        })
        .unwrap()
    }

    #[test]
    fn newest_per_key_keeps_the_highest_version_whatever_the_order() {
        let rows = vec![
            row(5, "2026-01-01"),
            row(3, "2026-01-01"),
            row(1, "2026-01-02"),
            row(7, "2026-01-01"),
            row(2, "2026-01-02"),
        ];
        let kept: Vec<i64> = newest_per_key(&rows).iter().map(|r| r.version).collect();
        assert_eq!(kept, vec![7, 2]);
    }
}
