//! The outbox: the table between the gateway's transaction and the relay.
//!
//! The gateway enqueues records inside its request transaction (so a 2xx answer means the
//! records will be published); the relay claims, publishes and deletes them. This module
//! owns the row format and the sharding rule both sides must agree on; it never talks to
//! Kafka.

use pulseline_schemas::records::{SampleChange, UserEventChange};
use sqlx::PgConnection;
use uuid::Uuid;

/// The NOTIFY channel that wakes relays when a transaction enqueued records.
pub const NOTIFY_CHANNEL: &str = "pulseline_outbox";

/// Default number of relay shards. Changing it while rows are pending could publish a
/// user's rows from two shards out of order: drain the outbox first.
pub const DEFAULT_SHARDS: u16 = 16;

/// Which input topic a row belongs to; also the per-user sequence it was numbered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Stream {
    Samples = 1,
    Events = 2,
}

impl Stream {
    pub fn id(self) -> i16 {
        self as i16
    }

    pub fn from_id(id: i16) -> Option<Self> {
        match id {
            1 => Some(Stream::Samples),
            2 => Some(Stream::Events),
            _ => None,
        }
    }
}

/// The shard of a user: stable, so one relay at a time publishes all of a user's rows.
pub fn shard_of(user_id: Uuid, shards: u16) -> i16 {
    let b = user_id.as_bytes();
    // UUIDs are random in their last bytes for v4 and v7 alike.
    let h = u16::from_be_bytes([b[14], b[15]]);
    i16::try_from(h % shards.max(1)).unwrap_or(0)
}

/// A record waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxRecord {
    Sample(SampleChange),
    Event(UserEventChange),
}

impl OutboxRecord {
    pub fn stream(&self) -> Stream {
        match self {
            OutboxRecord::Sample(_) => Stream::Samples,
            OutboxRecord::Event(_) => Stream::Events,
        }
    }

    /// The change id (per-user sequence, index in its request): what downstream dedups by.
    pub fn change_id(&self) -> (i64, i32) {
        match self {
            OutboxRecord::Sample(s) => (s.change_seq, s.change_index),
            OutboxRecord::Event(e) => (e.change_seq, e.change_index),
        }
    }

    fn payload(&self) -> Result<String, serde_json::Error> {
        match self {
            OutboxRecord::Sample(s) => serde_json::to_string(s),
            OutboxRecord::Event(e) => serde_json::to_string(e),
        }
    }

    /// Rebuilds a record from a claimed row.
    pub fn from_row(stream: i16, payload: &str) -> Result<Self, OutboxError> {
        match Stream::from_id(stream) {
            Some(Stream::Samples) => Ok(OutboxRecord::Sample(serde_json::from_str(payload)?)),
            Some(Stream::Events) => Ok(OutboxRecord::Event(serde_json::from_str(payload)?)),
            None => Err(OutboxError::UnknownStream(stream)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outbox payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("outbox row of unknown stream {0}")]
    UnknownStream(i16),
}

/// Enqueues `records` of one user in the caller's transaction, in the given order, and
/// schedules a NOTIFY (delivered by Postgres at commit, never before).
pub async fn enqueue(
    tx: &mut PgConnection,
    user_id: Uuid,
    shards: u16,
    records: &[OutboxRecord],
) -> Result<(), OutboxError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut streams = Vec::with_capacity(records.len());
    let mut seqs = Vec::with_capacity(records.len());
    let mut indexes = Vec::with_capacity(records.len());
    let mut payloads = Vec::with_capacity(records.len());
    for r in records {
        let (seq, index) = r.change_id();
        streams.push(r.stream().id());
        seqs.push(seq);
        indexes.push(index);
        payloads.push(r.payload()?);
    }
    // WITH ORDINALITY + ORDER BY keeps identity values in the records' order.
    sqlx::query(
        "INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload)
         SELECT $1, s, $2, q, i, p::json
         FROM UNNEST($3::int2[], $4::int8[], $5::int4[], $6::text[]) WITH ORDINALITY AS t(s, q, i, p, n)
         ORDER BY n",
    )
    .bind(shard_of(user_id, shards))
    .bind(user_id)
    .bind(&streams)
    .bind(&seqs)
    .bind(&indexes)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A row claimed by the relay, as stored; `payload` is decoded by [`OutboxRecord::from_row`]
/// only after claiming, so a poison row can still be moved aside by id.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    pub id: i64,
    pub stream: i16,
    pub user_id: Uuid,
    pub change_seq: i64,
    pub change_index: i32,
    pub payload: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The oldest `limit` rows of `shard`, in id order. The caller must hold the shard's relay
/// lock: that lock, not a row lock, is the claim (SKIP LOCKED would break per-user order).
pub async fn claim(
    tx: &mut PgConnection,
    shard: i16,
    limit: i64,
) -> Result<Vec<ClaimedRow>, OutboxError> {
    Ok(sqlx::query_as(
        "SELECT id, stream, user_id, change_seq, change_index, payload::text AS payload, created_at
         FROM outbox WHERE shard = $1 ORDER BY id LIMIT $2",
    )
    .bind(shard)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?)
}

/// Removes published rows (in the claiming transaction, so a rollback republishes them).
pub async fn delete(tx: &mut PgConnection, ids: &[i64]) -> Result<u64, OutboxError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

/// Moves a poison row to `outbox_dead` with the reason (migration 0002).
pub async fn dead_letter(tx: &mut PgConnection, id: i64, reason: &str) -> Result<(), OutboxError> {
    sqlx::query(
        "WITH moved AS (DELETE FROM outbox WHERE id = $1
             RETURNING id, shard, stream, user_id, change_seq, change_index, payload, created_at)
         INSERT INTO outbox_dead (id, shard, stream, user_id, change_seq, change_index, payload, created_at, reason)
         SELECT id, shard, stream, user_id, change_seq, change_index, payload, created_at, $2 FROM moved",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Rows waiting in the whole outbox (a plain count: cheap while the relay keeps up).
pub async fn depth(conn: &mut PgConnection) -> Result<i64, OutboxError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut *conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_in_range() {
        for _ in 0..1000 {
            let u = Uuid::new_v4();
            let s = shard_of(u, 16);
            assert!((0..16).contains(&s));
            assert_eq!(s, shard_of(u, 16));
        }
        assert_eq!(shard_of(Uuid::new_v4(), 1), 0);
    }
}
