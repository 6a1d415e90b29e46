//! `republish`: rebuilds outbox rows from Postgres, the system of record, for when the
//! broker lost data or a new environment needs seeding.
//!
//! It re-enqueues the CURRENT content of `sample` and `user_event`, soft-deleted rows as
//! DELETE records shaped as the gateway wrote them (the key, the metric or the event's type,
//! product and times, no values), so a processor can find the rows a deletion ends even
//! where its state lost the item. By default with their
//! stored change ids, so downstream, which dedups by change id, treats them as the changes
//! it may already have applied; then it never changes `sample`, `user_event` or any
//! sequence. With `ChangeIds::Renew` it accepts the current content again instead: each
//! page is a new change of the user's stream (sequence bumped, `accepted_change` row, the
//! rows' stored change ids moved to the new ones), so processors apply it even where they
//! already passed the old ids: the repair for a dead letter whose cause is fixed, or a
//! read model found different from its oracle. Content is unchanged, so folding it again
//! changes nothing that was right.

use chrono::{DateTime, Utc};
use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::RelayError;
use crate::outbox::{self, OutboxRecord, Stream};

/// Rows re-enqueued per transaction (keeps transactions short for big users).
const PAGE: i64 = 1000;

/// Whose data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Users {
    One(Uuid),
    #[default]
    All,
}

/// Which input streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamChoice {
    Samples,
    Events,
    #[default]
    Both,
}

/// Which change ids the re-enqueued records carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChangeIds {
    /// The stored ones: recovery after the broker lost data (downstream skips what it had).
    #[default]
    Keep,
    /// New ones, accepted now: downstream applies the current content again.
    Renew,
}

/// Only these items of the user (natural keys), instead of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemKeys {
    /// (source id, source record id, start) of samples.
    pub samples: Vec<(String, String, DateTime<Utc>)>,
    /// Event ids.
    pub events: Vec<String>,
}

/// What to republish. `from`/`to` bound the item's start time (event time, what read
/// models are bucketed by): `from <= start_at < to`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepublishScope {
    pub users: Users,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub streams: StreamChoice,
    pub change_ids: ChangeIds,
    /// `None`: every item in the bounds.
    pub only: Option<ItemKeys>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepublishSummary {
    pub users: u64,
    pub samples: u64,
    pub events: u64,
}

/// Re-enqueues the scope's rows into the outbox (the running relay publishes them), each
/// user's in change-id order, using the same sharding as the gateway.
pub async fn republish(
    pool: &PgPool,
    shards: u16,
    scope: &RepublishScope,
) -> Result<RepublishSummary, RelayError> {
    let users: Vec<Uuid> = match scope.users {
        Users::One(u) => vec![u],
        Users::All => {
            sqlx::query_scalar(
                "SELECT user_id FROM sample UNION SELECT user_id FROM user_event ORDER BY 1",
            )
            .fetch_all(pool)
            .await?
        }
    };
    let mut summary = RepublishSummary::default();
    for user in users {
        summary.users += 1;
        if matches!(scope.streams, StreamChoice::Samples | StreamChoice::Both) {
            summary.samples +=
                republish_user(pool, shards, user, scope, Stream::Samples, sample_page).await?;
        }
        if matches!(scope.streams, StreamChoice::Events | StreamChoice::Both) {
            summary.events +=
                republish_user(pool, shards, user, scope, Stream::Events, event_page).await?;
        }
    }
    Ok(summary)
}

/// Where a page starts and ends, by stored change id: after `after`, at or below
/// `last_seq` (the sequence when the user's first page was read, so that rows renumbered
/// by this run are not read again).
#[derive(Debug, Clone, Copy)]
struct PageBounds {
    after: (i64, i32),
    last_seq: i64,
}

type PageFn = for<'c> fn(
    &'c mut PgConnection,
    Uuid,
    &'c RepublishScope,
    PageBounds,
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>>;

/// Pages through one user's rows of one stream by change id, one transaction per page.
async fn republish_user(
    pool: &PgPool,
    shards: u16,
    user: Uuid,
    scope: &RepublishScope,
    stream: Stream,
    page: PageFn,
) -> Result<u64, RelayError> {
    let mut bounds = PageBounds {
        after: (i64::MIN, i32::MIN),
        last_seq: i64::MAX,
    };
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        // Holding the user's sequence rows serialises this page with the gateway's requests
        // for the user, so a page never interleaves with a half-enqueued request.
        let seqs: Vec<(i16, i64)> = sqlx::query_as(
            "SELECT stream, last_seq FROM user_stream WHERE user_id = $1 FOR UPDATE",
        )
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        if scope.change_ids == ChangeIds::Renew && bounds.last_seq == i64::MAX {
            bounds.last_seq = seqs
                .iter()
                .find(|(s, _)| *s == stream.id())
                .map_or(0, |(_, seq)| *seq);
        }
        let mut records = page(&mut tx, user, scope, bounds).await?;
        let Some(last) = records.last() else {
            tx.rollback().await?;
            return Ok(total);
        };
        bounds.after = last.change_id();
        if scope.change_ids == ChangeIds::Renew {
            accept_again(&mut tx, user, stream, &mut records).await?;
        }
        outbox::enqueue(&mut tx, user, shards, &records).await?;
        tx.commit().await?;
        total += records.len() as u64;
        if (records.len() as i64) < PAGE {
            return Ok(total);
        }
    }
}

#[derive(sqlx::FromRow)]
struct SampleRow {
    source_id: String,
    source_record_id: String,
    start_at: DateTime<Utc>,
    metric: String,
    device_type: String,
    end_at: DateTime<Utc>,
    tz_offset_minutes: i32,
    value: Option<f64>,
    unit: Option<String>,
    category: Option<String>,
    metadata: Option<String>,
    deleted: bool,
    change_seq: i64,
    change_index: i32,
    accepted_at: DateTime<Utc>,
}

impl SampleRow {
    fn into_record(self, user: Uuid) -> OutboxRecord {
        let deleted = self.deleted;
        OutboxRecord::Sample(SampleChange {
            user_id: user.to_string(),
            change_seq: self.change_seq,
            change_index: self.change_index,
            operation: if deleted {
                Operation::Delete
            } else {
                Operation::Upsert
            },
            source_id: self.source_id,
            device_type: self.device_type,
            source_record_id: self.source_record_id,
            start_at: self.start_at.timestamp_micros(),
            metric: self.metric,
            end_at: Some(self.end_at.timestamp_micros()),
            tz_offset_minutes: self.tz_offset_minutes,
            value: self.value.filter(|_| !deleted),
            unit: self.unit.filter(|_| !deleted),
            category: self.category.filter(|_| !deleted),
            metadata_json: self.metadata.filter(|_| !deleted),
            accepted_at: self.accepted_at.timestamp_micros(),
        })
    }
}

fn sample_page<'c>(
    conn: &'c mut PgConnection,
    user: Uuid,
    scope: &'c RepublishScope,
    bounds: PageBounds,
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>> {
    Box::pin(async move {
        let keys = scope.only.as_ref().map(|only| {
            let mut columns = (Vec::new(), Vec::new(), Vec::new());
            for (source, record, start) in &only.samples {
                columns.0.push(source.as_str());
                columns.1.push(record.as_str());
                columns.2.push(*start);
            }
            columns
        });
        let keys = keys.as_ref();
        let rows: Vec<SampleRow> = sqlx::query_as(
            "SELECT source_id, source_record_id, start_at, metric, device_type, end_at,
                    tz_offset_minutes, value, unit, category, metadata::text AS metadata,
                    deleted, change_seq, change_index, accepted_at
             FROM sample
             WHERE user_id = $1 AND (change_seq, change_index) > ($2, $3) AND change_seq <= $7
               AND ($4::timestamptz IS NULL OR start_at >= $4)
               AND ($5::timestamptz IS NULL OR start_at < $5)
               AND ($8::text[] IS NULL OR (source_id, source_record_id, start_at) IN
                    (SELECT * FROM UNNEST($8::text[], $9::text[], $10::timestamptz[])))
             ORDER BY change_seq, change_index
             LIMIT $6",
        )
        .bind(user)
        .bind(bounds.after.0)
        .bind(bounds.after.1)
        .bind(scope.from)
        .bind(scope.to)
        .bind(PAGE)
        .bind(bounds.last_seq)
        .bind(keys.map(|k| &k.0))
        .bind(keys.map(|k| &k.1))
        .bind(keys.map(|k| &k.2))
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.into_record(user)).collect())
    })
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: String,
    event_type: String,
    product_id: Option<String>,
    start_at: DateTime<Utc>,
    end_at: Option<DateTime<Utc>>,
    tz_offset_minutes: i32,
    attributes: Option<String>,
    deleted: bool,
    change_seq: i64,
    change_index: i32,
    accepted_at: DateTime<Utc>,
}

impl EventRow {
    fn into_record(self, user: Uuid) -> OutboxRecord {
        let deleted = self.deleted;
        OutboxRecord::Event(UserEventChange {
            user_id: user.to_string(),
            change_seq: self.change_seq,
            change_index: self.change_index,
            operation: if deleted {
                Operation::Delete
            } else {
                Operation::Upsert
            },
            event_id: self.event_id,
            event_type: self.event_type,
            product_id: self.product_id,
            start_at: self.start_at.timestamp_micros(),
            end_at: self.end_at.map(|t| t.timestamp_micros()),
            tz_offset_minutes: self.tz_offset_minutes,
            attributes_json: self.attributes.filter(|_| !deleted),
            accepted_at: self.accepted_at.timestamp_micros(),
        })
    }
}

fn event_page<'c>(
    conn: &'c mut PgConnection,
    user: Uuid,
    scope: &'c RepublishScope,
    bounds: PageBounds,
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>> {
    Box::pin(async move {
        let ids = scope.only.as_ref().map(|only| &only.events);
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT event_id, event_type, product_id, start_at, end_at, tz_offset_minutes,
                    attributes::text AS attributes, deleted, change_seq, change_index, accepted_at
             FROM user_event
             WHERE user_id = $1 AND (change_seq, change_index) > ($2, $3) AND change_seq <= $7
               AND ($4::timestamptz IS NULL OR start_at >= $4)
               AND ($5::timestamptz IS NULL OR start_at < $5)
               AND ($8::text[] IS NULL OR event_id = ANY($8))
             ORDER BY change_seq, change_index
             LIMIT $6",
        )
        .bind(user)
        .bind(bounds.after.0)
        .bind(bounds.after.1)
        .bind(scope.from)
        .bind(scope.to)
        .bind(PAGE)
        .bind(bounds.last_seq)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.into_record(user)).collect())
    })
}

/// Makes one page a new change of the user's stream, as the gateway does for a request:
/// the next sequence number, an `accepted_change` row (freshness waits for it), new change
/// ids on the records and on the stored rows (so a later republish carries them).
async fn accept_again(
    tx: &mut PgConnection,
    user: Uuid,
    stream: Stream,
    records: &mut [OutboxRecord],
) -> Result<(), RelayError> {
    let accepted_at = Utc::now();
    let items = i32::try_from(records.len()).unwrap_or(i32::MAX);
    let seq: i64 = sqlx::query_scalar(
        "WITH bumped AS (
             UPDATE user_stream SET last_seq = last_seq + 1
             WHERE user_id = $1 AND stream = $2 RETURNING last_seq)
         INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items)
         SELECT $1, $2, last_seq, $3, $4 FROM bumped RETURNING seq",
    )
    .bind(user)
    .bind(stream.id())
    .bind(accepted_at)
    .bind(items)
    .fetch_one(&mut *tx)
    .await?;
    let micros = accepted_at.timestamp_micros();
    for (index, record) in (0..).zip(records.iter_mut()) {
        match record {
            OutboxRecord::Sample(s) => {
                (s.change_seq, s.change_index, s.accepted_at) = (seq, index, micros);
            }
            OutboxRecord::Event(e) => {
                (e.change_seq, e.change_index, e.accepted_at) = (seq, index, micros);
            }
        }
    }
    match stream {
        Stream::Samples => {
            let (mut sources, mut ids, mut starts) = (Vec::new(), Vec::new(), Vec::new());
            for r in records.iter() {
                if let OutboxRecord::Sample(s) = r {
                    sources.push(s.source_id.as_str());
                    ids.push(s.source_record_id.as_str());
                    starts.push(DateTime::from_timestamp_micros(s.start_at));
                }
            }
            sqlx::query(
                "UPDATE sample SET change_seq = $2, change_index = k.i - 1
                 FROM UNNEST($3::text[], $4::text[], $5::timestamptz[]) WITH ORDINALITY
                      AS k(source_id, source_record_id, start_at, i)
                 WHERE sample.user_id = $1 AND sample.source_id = k.source_id
                   AND sample.source_record_id = k.source_record_id
                   AND sample.start_at = k.start_at",
            )
            .bind(user)
            .bind(seq)
            .bind(&sources)
            .bind(&ids)
            .bind(&starts)
            .execute(&mut *tx)
            .await?;
        }
        Stream::Events => {
            let ids: Vec<&str> = records
                .iter()
                .filter_map(|r| match r {
                    OutboxRecord::Event(e) => Some(e.event_id.as_str()),
                    OutboxRecord::Sample(_) => None,
                })
                .collect();
            sqlx::query(
                "UPDATE user_event SET change_seq = $2, change_index = k.i - 1
                 FROM UNNEST($3::text[]) WITH ORDINALITY AS k(event_id, i)
                 WHERE user_event.user_id = $1 AND user_event.event_id = k.event_id",
            )
            .bind(user)
            .bind(seq)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
