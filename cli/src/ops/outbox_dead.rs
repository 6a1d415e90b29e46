//! `pulseline outbox-dead list | replay`: the relay's poison rows (`outbox_dead`: rows it
//! could not decode or encode), and putting them back once the cause is fixed.
//!
//! The relay published the user's later rows past a poison row, so processors are already
//! beyond its change id: re-inserting the row as it was would be skipped downstream. Replay
//! accepts the item again instead: its current content in Postgres, under a new change id
//! (a payload that does not even parse names only its user: then the user's whole stream).
//! The rows leave `outbox_dead` after their items are in the outbox; a crash in between
//! leaves them listed, and a second replay is harmless.

use chrono::{DateTime, Utc};
use pulseline_ingest_gateway::outbox::{OutboxRecord, Stream};
use sqlx::PgPool;
use uuid::Uuid;

use super::Reacceptance;

/// One poison row, without its payload (no PHI).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadRow {
    pub id: i64,
    pub user_id: Uuid,
    pub stream: i16,
    pub change_seq: i64,
    pub change_index: i32,
    pub dead_at: DateTime<Utc>,
    pub reason: String,
}

/// The poison rows, oldest first (only `ids` when given).
pub async fn list(pool: &PgPool, ids: &[i64]) -> sqlx::Result<Vec<DeadRow>> {
    sqlx::query_as(
        "SELECT id, user_id, stream, change_seq, change_index, dead_at, reason FROM outbox_dead
         WHERE cardinality($1::int8[]) = 0 OR id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub rows: usize,
    /// Rows whose payload did not parse: their user's whole stream was accepted again.
    pub whole_streams: usize,
    /// Records put in the outbox.
    pub records: u64,
}

/// Accepts the rows' items again (all rows when `ids` is empty), then removes the rows.
pub async fn replay(pool: &PgPool, shards: u16, ids: &[i64]) -> anyhow::Result<ReplayReport> {
    let rows: Vec<(i64, Uuid, i16, String)> = sqlx::query_as(
        "SELECT id, user_id, stream, payload::text FROM outbox_dead
         WHERE cardinality($1::int8[]) = 0 OR id = ANY($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut report = ReplayReport {
        rows: rows.len(),
        ..ReplayReport::default()
    };
    let mut again = Reacceptance::default();
    for (_, user, stream, payload) in &rows {
        match OutboxRecord::from_row(*stream, payload) {
            Ok(record) => again.add_record(*user, &record),
            Err(_) => {
                let stream = Stream::from_id(*stream).unwrap_or(Stream::Samples);
                again.add_whole_stream(*user, stream);
                report.whole_streams += 1;
            }
        }
    }
    report.records = again.run(pool, shards).await?;
    let done: Vec<i64> = rows.iter().map(|r| r.0).collect();
    sqlx::query("DELETE FROM outbox_dead WHERE id = ANY($1)")
        .bind(&done)
        .execute(pool)
        .await?;
    Ok(report)
}
