//! The Postgres read store (the embedded default): one table per read model (declared in
//! `tables`), `sink_progress` and `sink_offset` (migrations/), written one batch per
//! transaction. The SQL is built from the declarations, so a new read model needs no code
//! here.
//!
//! It owns those tables and nothing else; it must never write the gateway's tables.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::SinkError;
use crate::sink::{Applied, Batch, OffsetScope, PartitionSpan, Sink, SinkFor, StoredRow};
use crate::tables::StoredReadModel;

/// The sink's migrations. Other crates' versions (the gateway's 0001-0999) share the
/// database and `_sqlx_migrations`, so they are "missing" here and must be ignored.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!()
};

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

    async fn apply_batch<M: StoredReadModel>(
        &self,
        scope: &OffsetScope,
        batch: &Batch<M>,
    ) -> Result<Applied, SinkError> {
        let mut tx = self.pool.begin().await?;
        // Offsets first: the compare-and-set takes the partitions' row locks, so a second
        // instance holding the same partitions waits here, then finds the offset moved.
        let mut spans = batch.spans.clone();
        spans.sort_by_key(|s| s.partition);
        for span in &spans {
            advance_offset(&mut tx, scope, span).await?;
        }
        let all = batch.rows().count();
        let rows = newest_per_key(batch.rows());
        let superseded = (all - rows.len()) as u64;
        let written = upsert_rows::<M>(&mut tx, &rows).await?;
        raise_progress::<M>(&mut tx, batch).await?;
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
fn newest_per_key<'a, M: StoredReadModel>(
    rows: impl Iterator<Item = &'a StoredRow<M>>,
) -> Vec<&'a StoredRow<M>> {
    let mut newest: BTreeMap<(Uuid, &M::Key), &StoredRow<M>> = BTreeMap::new();
    for row in rows {
        let entry = newest.entry((row.user_id, &row.key)).or_insert(row);
        if row.version >= entry.version {
            *entry = row;
        }
    }
    newest.into_values().collect()
}

/// The version-guarded bulk upsert of `M`'s table, built from its declaration: rows
/// arrive as one JSON array of objects named by column.
fn upsert_sql<M: StoredReadModel>() -> String {
    let columns = || M::KEY_COLUMNS.iter().chain(M::VALUE_COLUMNS);
    let names: Vec<&str> = columns().map(|c| c.name).collect();
    let typed: Vec<String> = columns()
        .map(|c| format!("{} {}", c.name, c.sql_type))
        .collect();
    let keys: Vec<&str> = M::KEY_COLUMNS.iter().map(|c| c.name).collect();
    let updates: Vec<String> = M::VALUE_COLUMNS
        .iter()
        .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
        .collect();
    let stored: Vec<String> = M::VERSION_COLUMNS
        .iter()
        .map(|c| format!("t.{c}"))
        .collect();
    let new: Vec<String> = M::VERSION_COLUMNS
        .iter()
        .map(|c| format!("EXCLUDED.{c}"))
        .collect();
    // A row comparison orders lexicographically, as `RowVersion` does.
    let guard = match M::VERSION_COLUMNS {
        [_] => format!("{} < {}", stored[0], new[0]),
        _ => format!("({}) < ({})", stored.join(", "), new.join(", ")),
    };
    format!(
        "INSERT INTO {table} AS t ({names}, updated_at) \
         SELECT {names}, now() FROM jsonb_to_recordset($1::jsonb) AS u({typed}) \
         ON CONFLICT ({keys}) DO UPDATE SET {updates}, updated_at = EXCLUDED.updated_at \
         WHERE {guard}",
        table = M::TABLE,
        names = names.join(", "),
        typed = typed.join(", "),
        keys = keys.join(", "),
        updates = updates.join(", "),
    )
}

/// Bulk upsert guarded by version; returns how many rows were inserted or replaced.
async fn upsert_rows<M: StoredReadModel>(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&StoredRow<M>],
) -> Result<u64, SinkError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let columns: Vec<&M::Columns> = rows.iter().map(|r| &r.columns).collect();
    let json = serde_json::to_string(&columns)
        .map_err(|e| SinkError::Config(format!("encoding {} rows: {e}", M::NAME)))?;
    // Built only from the compile-time table declarations, never from data.
    let result = sqlx::query(sqlx::AssertSqlSafe(upsert_sql::<M>()))
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(result.rows_affected())
}

/// Raises each user's applied sequence of every stream `M` reads to the highest one in
/// the batch (rows and progress records alike).
async fn raise_progress<M: StoredReadModel>(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch<M>,
) -> Result<(), SinkError> {
    let mut users = Vec::new();
    let mut streams = Vec::new();
    let mut seqs = Vec::new();
    for p in batch.progress() {
        for &stream in M::STREAMS {
            users.push(p.user_id);
            streams.push(stream.id());
            seqs.push(p.applied.get(stream));
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sink_progress AS p (read_model, user_id, stream, applied_seq) \
         SELECT $1, x.user_id, x.stream, x.seq \
         FROM UNNEST($2::uuid[], $3::int2[], $4::int8[]) AS x(user_id, stream, seq) \
         ON CONFLICT (read_model, user_id, stream) DO UPDATE \
             SET applied_seq = EXCLUDED.applied_seq, updated_at = now() \
         WHERE p.applied_seq < EXCLUDED.applied_seq",
    )
    .bind(M::NAME)
    .bind(&users)
    .bind(&streams)
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

    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}

impl<M: StoredReadModel> SinkFor<M> for PostgresSink {
    fn apply<'a>(
        &'a self,
        scope: &'a OffsetScope,
        batch: &'a Batch<M>,
    ) -> BoxFuture<'a, Result<Applied, SinkError>> {
        Box::pin(self.apply_batch(scope, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulseline_schemas::records::{Period, RollupUpsert};

    fn row(version: i64, bucket: &str) -> StoredRow<RollupUpsert> {
        StoredRow::parse(RollupUpsert {
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
        let rows = [
            row(5, "2026-01-01"),
            row(3, "2026-01-01"),
            row(1, "2026-01-02"),
            row(7, "2026-01-01"),
            row(2, "2026-01-02"),
        ];
        let kept: Vec<i64> = newest_per_key(rows.iter())
            .iter()
            .map(|r| r.version.samples)
            .collect();
        assert_eq!(kept, vec![7, 2]);
    }

    #[test]
    fn the_upsert_is_built_from_the_declaration() {
        let sql = upsert_sql::<RollupUpsert>();
        assert!(
            sql.starts_with(
                "INSERT INTO rollup AS t (user_id, metric, period, bucket_start, value,"
            )
        );
        assert!(sql.contains("ON CONFLICT (user_id, metric, period, bucket_start)"));
        assert!(sql.contains("sources text[]"));
        assert!(sql.ends_with("WHERE t.version < EXCLUDED.version"));
    }
}
