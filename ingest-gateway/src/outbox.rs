//! The outbox: the table between the gateway's transaction and the relay.
//!
//! The gateway enqueues records inside its request transaction (so a 2xx answer means the
//! records will be published); the relay claims, publishes and deletes them. This module
//! owns the row format and the sharding rule both sides must agree on; it never talks to
//! Kafka.

use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use serde::Serialize;
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
    let mut batch = OutboxBatch::with_capacity(records.len());
    for r in records {
        batch.push_record(r)?;
    }
    sqlx::query(
        "WITH queued AS (INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload)
             SELECT $1, s, $2, q, i, p::json
             FROM UNNEST($3::int2[], $4::int8[], $5::int4[], $6::text[]) WITH ORDINALITY AS t(s, q, i, p, n)
             ORDER BY n)
         SELECT pg_notify($7, '')",
    )
    .bind(shard_of(user_id, shards))
    .bind(user_id)
    .bind(&batch.streams)
    .bind(&batch.seqs)
    .bind(&batch.indexes)
    .bind(batch.payloads()?)
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The outbox columns of one user's records, in order, as arrays to bind to a single
/// INSERT (`enqueue`, or the gateway's combined end-of-request statement). Payloads are
/// written into one buffer: no allocation per record.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    pub streams: Vec<i16>,
    pub seqs: Vec<i64>,
    pub indexes: Vec<i32>,
    text: Vec<u8>,
    ends: Vec<usize>,
}

impl OutboxBatch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            streams: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            indexes: Vec::with_capacity(n),
            text: Vec::with_capacity(n * 420),
            ends: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn push_record(&mut self, r: &OutboxRecord) -> Result<(), OutboxError> {
        let (seq, index) = r.change_id();
        match r {
            OutboxRecord::Sample(s) => self.push(Stream::Samples, seq, index, s),
            OutboxRecord::Event(e) => self.push(Stream::Events, seq, index, e),
        }
    }

    /// A sample change written straight from borrowed fields (same JSON as `SampleChange`).
    pub fn push_sample(&mut self, s: &SampleChangeRef<'_>) -> Result<(), OutboxError> {
        self.push(Stream::Samples, s.change_seq, s.change_index, s)
    }

    fn push<T: Serialize>(
        &mut self,
        stream: Stream,
        seq: i64,
        index: i32,
        payload: &T,
    ) -> Result<(), OutboxError> {
        let start = self.text.len();
        if let Err(e) = serde_json::to_writer(&mut self.text, payload) {
            self.text.truncate(start);
            return Err(e.into());
        }
        self.streams.push(stream.id());
        self.seqs.push(seq);
        self.indexes.push(index);
        self.ends.push(self.text.len());
        Ok(())
    }

    /// The payloads, in order (slices of one buffer).
    pub fn payloads(&self) -> Result<Vec<&str>, OutboxError> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                // serde_json writes UTF-8; checked rather than assumed.
                let p = std::str::from_utf8(&self.text[start..end]).map_err(|_| {
                    OutboxError::Payload(serde::ser::Error::custom("payload is not UTF-8"))
                });
                start = end;
                p
            })
            .collect()
    }
}

/// `SampleChange` with borrowed strings: the gateway writes outbox payloads from its
/// validated items without copying every field into owned strings first. Same fields, in
/// the same order, with the same names: the JSON is identical (tested).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SampleChangeRef<'a> {
    pub user_id: &'a str,
    pub change_seq: i64,
    pub change_index: i32,
    pub operation: Operation,
    pub source_id: &'a str,
    pub device_type: &'a str,
    pub source_record_id: &'a str,
    pub start_at: i64,
    pub metric: &'a str,
    pub end_at: Option<i64>,
    pub tz_offset_minutes: i32,
    pub value: Option<f64>,
    pub unit: Option<&'a str>,
    pub category: Option<&'a str>,
    pub metadata_json: Option<&'a str>,
    pub accepted_at: i64,
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

    fn owned(r: &SampleChangeRef<'_>) -> SampleChange {
        SampleChange {
            user_id: r.user_id.to_owned(),
            change_seq: r.change_seq,
            change_index: r.change_index,
            operation: r.operation,
            source_id: r.source_id.to_owned(),
            device_type: r.device_type.to_owned(),
            source_record_id: r.source_record_id.to_owned(),
            start_at: r.start_at,
            metric: r.metric.to_owned(),
            end_at: r.end_at,
            tz_offset_minutes: r.tz_offset_minutes,
            value: r.value,
            unit: r.unit.map(str::to_owned),
            category: r.category.map(str::to_owned),
            metadata_json: r.metadata_json.map(str::to_owned),
            accepted_at: r.accepted_at,
        }
    }

    #[test]
    fn borrowed_sample_payloads_equal_the_record_json_and_decode() {
        let user = Uuid::new_v4().to_string();
        let refs = [
            SampleChangeRef {
                user_id: &user,
                change_seq: 7,
                change_index: 0,
                operation: Operation::Upsert,
                source_id: "watch \"1\"",
                device_type: "apple_watch",
                source_record_id: "r\u{e9}\n1",
                start_at: -5,
                metric: "HEART_RATE",
                end_at: Some(60_000_000),
                tz_offset_minutes: -300,
                value: Some(72.5),
                unit: Some("count/min"),
                category: None,
                metadata_json: Some(r#"{"a":[1,"x"]}"#),
                accepted_at: 1_700_000_000_000_000,
            },
            SampleChangeRef {
                user_id: &user,
                change_seq: 7,
                change_index: 1,
                operation: Operation::Delete,
                source_id: "watch",
                device_type: "apple_watch",
                source_record_id: "r2",
                start_at: 1,
                metric: "SLEEP_STAGE",
                end_at: None,
                tz_offset_minutes: 0,
                value: None,
                unit: None,
                category: Some("deep"),
                metadata_json: None,
                accepted_at: 2,
            },
        ];
        let mut batch = OutboxBatch::default();
        let event = OutboxRecord::Event(UserEventChange {
            user_id: user.clone(),
            change_seq: 3,
            change_index: 4,
            operation: Operation::Upsert,
            event_id: "e".to_owned(),
            event_type: "meal".to_owned(),
            product_id: None,
            start_at: 0,
            end_at: None,
            tz_offset_minutes: 0,
            attributes_json: None,
            accepted_at: 0,
        });
        for r in &refs {
            batch.push_sample(r).expect("serialises");
        }
        batch.push_record(&event).expect("serialises");
        let payloads = batch.payloads().expect("UTF-8");
        assert_eq!(payloads.len(), 3);
        assert_eq!(batch.len(), 3);
        for (r, p) in refs.iter().zip(&payloads) {
            let record = owned(r);
            assert_eq!(*p, serde_json::to_string(&record).expect("json"));
            assert_eq!(
                OutboxRecord::from_row(Stream::Samples.id(), p).expect("decodes"),
                OutboxRecord::Sample(record)
            );
        }
        assert_eq!(
            OutboxRecord::from_row(Stream::Events.id(), payloads[2]).expect("decodes"),
            event
        );
        assert_eq!(batch.streams, [1, 1, 2]);
        assert_eq!(batch.seqs, [7, 7, 3]);
        assert_eq!(batch.indexes, [0, 1, 4]);
    }
}
