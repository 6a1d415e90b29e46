//! `pulseline sink-offsets list | reset`: the offsets the Postgres sink stores with its rows
//! (`sink_offset`, one row per consumer, topic and partition). After the broker lost its log
//! and the data was republished, the stored offsets point into the old log: reset them so
//! the sink reads the new log from its start (its version guard keeps what it already has).
//! Stop the sinks first: a running sink holds its offsets in memory, and its next write
//! fails the compare-and-set on the deleted row, so it stops instead of writing.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One stored offset.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredOffset {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub updated_at: DateTime<Utc>,
}

/// Which stored offsets (all of them when both are `None`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OffsetSelection {
    /// Only this consumer (`<group base>.<read model>`, as listed).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
}

pub async fn list(pool: &PgPool, selection: &OffsetSelection) -> sqlx::Result<Vec<StoredOffset>> {
    sqlx::query_as(
        "SELECT consumer, topic, partition, next_offset, updated_at FROM sink_offset
         WHERE ($1::text IS NULL OR consumer = $1) AND ($2::text IS NULL OR topic = $2)
         ORDER BY consumer, topic, partition",
    )
    .bind(&selection.consumer)
    .bind(&selection.topic)
    .fetch_all(pool)
    .await
}

/// Deletes the selected offsets; returns how many.
pub async fn reset(pool: &PgPool, selection: &OffsetSelection) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM sink_offset
         WHERE ($1::text IS NULL OR consumer = $1) AND ($2::text IS NULL OR topic = $2)",
    )
    .bind(&selection.consumer)
    .bind(&selection.topic)
    .execute(pool)
    .await?
    .rows_affected())
}
