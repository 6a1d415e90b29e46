//! `republish`: rebuilds outbox rows from Postgres, the system of record, for when the
//! broker lost data or a new environment needs seeding.
//!
//! It re-enqueues the CURRENT content of `sample` and `user_event` (soft-deleted rows as
//! DELETE records carrying only the natural key and metric/type) with their stored change
//! ids, so downstream, which dedups by change id, treats them as the changes it may already
//! have applied. It never changes `sample`, `user_event` or any sequence.

use chrono::{DateTime, Utc};
use pulseline_schemas::Operation;
use pulseline_schemas::records::{SampleChange, UserEventChange};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::RelayError;
use crate::outbox::{self, OutboxRecord};

/// Rows re-enqueued per transaction (keeps transactions short for big users).
const PAGE: i64 = 1000;

/// Whose data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Users {
    One(Uuid),
    All,
}

/// Which input streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamChoice {
    Samples,
    Events,
    Both,
}

/// What to republish. `from`/`to` bound the item's start time (event time, what read
/// models are bucketed by): `from <= start_at < to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepublishScope {
    pub users: Users,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub streams: StreamChoice,
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
            summary.samples += republish_user(pool, shards, user, scope, sample_page).await?;
        }
        if matches!(scope.streams, StreamChoice::Events | StreamChoice::Both) {
            summary.events += republish_user(pool, shards, user, scope, event_page).await?;
        }
    }
    Ok(summary)
}

type PageFn = for<'c> fn(
    &'c mut PgConnection,
    Uuid,
    &'c RepublishScope,
    (i64, i32),
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>>;

/// Pages through one user's rows of one stream by change id, one transaction per page.
async fn republish_user(
    pool: &PgPool,
    shards: u16,
    user: Uuid,
    scope: &RepublishScope,
    page: PageFn,
) -> Result<u64, RelayError> {
    let mut after = (i64::MIN, i32::MIN);
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        // Holding the user's sequence rows serialises this page with the gateway's requests
        // for the user, so a page never interleaves with a half-enqueued request.
        sqlx::query("SELECT 1 FROM user_stream WHERE user_id = $1 FOR UPDATE")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let records = page(&mut tx, user, scope, after).await?;
        let Some(last) = records.last() else {
            tx.rollback().await?;
            return Ok(total);
        };
        after = last.change_id();
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
            end_at: (!deleted).then(|| self.end_at.timestamp_micros()),
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
    after: (i64, i32),
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>> {
    Box::pin(async move {
        let rows: Vec<SampleRow> = sqlx::query_as(
            "SELECT source_id, source_record_id, start_at, metric, device_type, end_at,
                    tz_offset_minutes, value, unit, category, metadata::text AS metadata,
                    deleted, change_seq, change_index, accepted_at
             FROM sample
             WHERE user_id = $1 AND (change_seq, change_index) > ($2, $3)
               AND ($4::timestamptz IS NULL OR start_at >= $4)
               AND ($5::timestamptz IS NULL OR start_at < $5)
             ORDER BY change_seq, change_index
             LIMIT $6",
        )
        .bind(user)
        .bind(after.0)
        .bind(after.1)
        .bind(scope.from)
        .bind(scope.to)
        .bind(PAGE)
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
            product_id: self.product_id.filter(|_| !deleted),
            start_at: self.start_at.timestamp_micros(),
            end_at: self
                .end_at
                .filter(|_| !deleted)
                .map(|t| t.timestamp_micros()),
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
    after: (i64, i32),
) -> futures::future::BoxFuture<'c, Result<Vec<OutboxRecord>, sqlx::Error>> {
    Box::pin(async move {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT event_id, event_type, product_id, start_at, end_at, tz_offset_minutes,
                    attributes::text AS attributes, deleted, change_seq, change_index, accepted_at
             FROM user_event
             WHERE user_id = $1 AND (change_seq, change_index) > ($2, $3)
               AND ($4::timestamptz IS NULL OR start_at >= $4)
               AND ($5::timestamptz IS NULL OR start_at < $5)
             ORDER BY change_seq, change_index
             LIMIT $6",
        )
        .bind(user)
        .bind(after.0)
        .bind(after.1)
        .bind(scope.from)
        .bind(scope.to)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.into_record(user)).collect())
    })
}
