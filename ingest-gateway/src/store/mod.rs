//! The gateway's Postgres side: one transaction per batch request, with bulk (UNNEST)
//! statements only, so a 500-item batch costs the same ~10 round trips as a 1-item one.
//!
//! The transaction, in order (about 7 round trips in all, whatever the batch size):
//! 1. the idempotency row (user, requestId) is inserted first, with `lock_timeout` = the
//!    in-progress wait (set with the BEGIN): a concurrent duplicate blocks on the
//!    uncommitted row, then reads the committed answer (same hash) or gets 422 (other
//!    hash); if the wait runs out it gets 409 REQUEST_IN_PROGRESS;
//! 2. the user's `user_stream` row is locked (upserted): one user's requests on a stream
//!    run one at a time, so sequence numbers and outbox ids grow together;
//! 3. the stored state of the batch's keys is read in one statement and every item is
//!    classified (`classify`);
//! 4. if anything changed: rows are upserted / soft-deleted; then one statement bumps the
//!    sequence by one, records when in `accepted_change`, puts the records in the outbox
//!    in item order (with the NOTIFY) and
//! 5. stores the answer in the idempotency row; COMMIT; only then is it sent.
//!
//! This module never talks HTTP; it returns answers and `GatewayError`s.

mod classify;
mod events;
mod inflight;
mod privacy;
mod samples;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::GatewayError;
use crate::hashing::Sha256Hash;
use crate::model::{BatchAnswer, ItemResult, ItemStatus};
use crate::outbox::{self, OutboxBatch, Stream};
use crate::validate::{RejectCode, Rejection};

pub use events::{EventBatch, EventItem};
pub use samples::{SampleBatch, SampleItem, SampleKey};

use classify::Outcome;
use inflight::{InFlight, InFlightGuard};

/// The gateway's database handle.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    shards: u16,
    in_progress_wait: Duration,
    inflight: Arc<InFlight>,
}

/// How a batch request ended.
#[derive(Debug)]
pub enum BatchOutcome {
    /// This request ran and committed; `rejections` lists the codes of rejected items.
    /// `body` is the answer's JSON text, byte for byte what a replay of it sends.
    Committed {
        answer: BatchAnswer,
        body: String,
        rejections: Vec<RejectCode>,
    },
    /// An earlier request with the same requestId and payload answered; this is its answer.
    Replayed { status: u16, body: Value },
}

impl BatchOutcome {
    /// 200 when nothing was rejected, 207 when anything was.
    pub fn status(&self) -> u16 {
        match self {
            BatchOutcome::Committed { answer, .. } => answer_status(answer),
            BatchOutcome::Replayed { status, .. } => *status,
        }
    }

    /// The answer body as JSON text.
    pub fn into_body_json(self) -> Result<String, GatewayError> {
        match self {
            BatchOutcome::Committed { body, .. } => Ok(body),
            BatchOutcome::Replayed { body, .. } => serde_json::to_string(&body)
                .map_err(|e| GatewayError::Internal(format!("encoding answer: {e}"))),
        }
    }
}

fn answer_status(answer: &BatchAnswer) -> u16 {
    if answer.rejected > 0 { 207 } else { 200 }
}

/// A fresh (not replayed) batch transaction after steps 1 and 2.
struct Begun {
    tx: Transaction<'static, Postgres>,
    last_seq: i64,
    blocked_metrics: Vec<String>,
}

enum Claim {
    Fresh(Begun),
    Replay { status: u16, body: Value },
}

impl Store {
    /// Connects (failing fast if Postgres is unreachable at start) with a short acquire
    /// timeout, so a Postgres outage answers 503 instead of hanging requests.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
        shards: u16,
        in_progress_wait: Duration,
    ) -> Result<Self, GatewayError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .map_err(|e| GatewayError::Startup(format!("connecting to Postgres: {e}")))?;
        Ok(Self {
            pool,
            shards,
            in_progress_wait,
            inflight: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs the crate's migrations (advisory-locked by sqlx, so replicas may race).
    pub async fn migrate(&self) -> Result<(), GatewayError> {
        crate::MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| GatewayError::Startup(format!("running migrations: {e}")))
    }

    /// `SELECT 1` within the pool's acquire timeout.
    pub async fn ping(&self) -> Result<(), GatewayError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Queues behind a running request with the same (user, requestId) in this process,
    /// without holding a connection; 409 when it runs longer than the in-progress wait.
    async fn enter_request(
        &self,
        user_id: Uuid,
        request_id: Uuid,
    ) -> Result<InFlightGuard<'_>, GatewayError> {
        self.inflight
            .enter(user_id, request_id, self.in_progress_wait)
            .await
            .ok_or(GatewayError::RequestInProgress {
                retry_after: self.in_progress_wait,
            })
    }

    /// Steps 1 and 2 of the batch transaction.
    async fn begin_batch(
        &self,
        user_id: Uuid,
        request_id: Uuid,
        stream: Stream,
        payload_hash: Sha256Hash,
    ) -> Result<Claim, GatewayError> {
        // The lock timeout is local to the transaction; sent with the BEGIN (one round trip).
        let wait_ms = self.in_progress_wait.as_millis().max(1);
        let mut tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SET LOCAL lock_timeout = '{wait_ms}ms'"
            )))
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_key (user_id, request_id, endpoint, payload_hash)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, request_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(request_id)
        .bind(stream.id())
        .bind(payload_hash.as_bytes())
        .execute(&mut *tx)
        .await
        .map_err(|e| self.in_progress_or(e))?;

        if inserted.rows_affected() == 0 {
            // The row was committed by an earlier request (we waited for it if needed).
            type Row = (i16, Vec<u8>, Option<i16>, Option<Value>);
            let row: Option<Row> = sqlx::query_as(
                "SELECT endpoint, payload_hash, response_status, response_body
                 FROM idempotency_key WHERE user_id = $1 AND request_id = $2",
            )
            .bind(user_id)
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.rollback().await?;
            return match row {
                Some((endpoint, hash, _, _))
                    if endpoint != stream.id() || hash != payload_hash.as_bytes() =>
                {
                    Err(GatewayError::PayloadHashMismatch(
                        "this requestId was already used with a different payload",
                    ))
                }
                Some((_, _, Some(status), Some(body))) => Ok(Claim::Replay {
                    status: status as u16,
                    body,
                }),
                // Not answered yet (cannot happen: the answer is stored before commit) or
                // removed by retention between our two statements: let the client retry.
                _ => Err(GatewayError::RequestInProgress {
                    retry_after: self.in_progress_wait,
                }),
            };
        }

        // Locks the user's stream row for the rest of the transaction.
        let (last_seq, blocked_metrics): (i64, Vec<String>) = sqlx::query_as(
            "WITH s AS (
                 INSERT INTO user_stream (user_id, stream) VALUES ($1, $2)
                 ON CONFLICT (user_id, stream) DO UPDATE SET last_seq = user_stream.last_seq
                 RETURNING last_seq)
             SELECT s.last_seq, COALESCE(p.blocked_metrics, '{}')
             FROM s LEFT JOIN user_privacy p ON p.user_id = $1",
        )
        .bind(user_id)
        .bind(stream.id())
        .fetch_one(&mut *tx)
        .await?;
        Ok(Claim::Fresh(Begun {
            tx,
            last_seq,
            blocked_metrics,
        }))
    }

    /// A lock timeout on the idempotency row means the original request still runs.
    fn in_progress_or(&self, e: sqlx::Error) -> GatewayError {
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("55P03")
        {
            return GatewayError::RequestInProgress {
                retry_after: self.in_progress_wait,
            };
        }
        e.into()
    }
}

/// What a request that changed something adds in its last statement: the new sequence
/// number, when it was accepted and the outbox records (in item order).
struct Changes<'a> {
    stream: Stream,
    seq: i64,
    accepted_at: DateTime<Utc>,
    shard: i16,
    outbox: &'a OutboxBatch,
}

/// Steps 4 (bookkeeping and outbox) and 5: one statement stores the answer with the
/// idempotency row (and, if anything changed, bumps the sequence, records when, enqueues
/// the records and schedules the NOTIFY), then COMMIT.
async fn finish_batch(
    mut tx: Transaction<'static, Postgres>,
    user_id: Uuid,
    answer: BatchAnswer,
    rejections: Vec<RejectCode>,
    changes: Option<Changes<'_>>,
) -> Result<BatchOutcome, GatewayError> {
    let body = answer_json(&answer)?;
    let status = answer_status(&answer) as i16;
    match changes {
        None => {
            sqlx::query(
                "UPDATE idempotency_key SET response_status = $3, response_body = $4::jsonb
                 WHERE user_id = $1 AND request_id = $2",
            )
            .bind(user_id)
            .bind(answer.request_id)
            .bind(status)
            .bind(body.as_str())
            .execute(&mut *tx)
            .await?;
        }
        Some(c) => {
            // Data-modifying CTEs all run to completion; none reads another's rows. The
            // outbox insert keeps identity values in the records' order (ORDINALITY).
            sqlx::query(
                "WITH bumped AS (
                     UPDATE user_stream SET last_seq = $3 WHERE user_id = $1 AND stream = $2),
                 accepted AS (
                     INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items)
                     VALUES ($1, $2, $3, $4, $5)),
                 queued AS (
                     INSERT INTO outbox (shard, stream, user_id, change_seq, change_index, payload)
                     SELECT $6, s, $1, q, i, p::json
                     FROM UNNEST($7::int2[], $8::int8[], $9::int4[], $10::text[])
                          WITH ORDINALITY AS t(s, q, i, p, n)
                     ORDER BY n),
                 answered AS (
                     UPDATE idempotency_key SET response_status = $12, response_body = $13::jsonb
                     WHERE user_id = $1 AND request_id = $11)
                 SELECT pg_notify($14, '') WHERE cardinality($7::int2[]) > 0",
            )
            .bind(user_id)
            .bind(c.stream.id())
            .bind(c.seq)
            .bind(c.accepted_at)
            .bind(i32::try_from(c.outbox.len()).unwrap_or(i32::MAX))
            .bind(c.shard)
            .bind(&c.outbox.streams)
            .bind(&c.outbox.seqs)
            .bind(&c.outbox.indexes)
            .bind(c.outbox.payloads()?)
            .bind(answer.request_id)
            .bind(status)
            .bind(body.as_str())
            .bind(outbox::NOTIFY_CHANNEL)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(BatchOutcome::Committed {
        answer,
        body,
        rejections,
    })
}

/// The answer as JSON text with its members in sorted order, which is the text
/// `serde_json` gives the stored `jsonb` answer when it is replayed: a fresh answer and
/// its replays are byte for byte the same. Written straight from the answer (no
/// intermediate `Value` of 500 maps).
fn answer_json(answer: &BatchAnswer) -> Result<String, GatewayError> {
    serde_json::to_string(&SortedAnswer(answer))
        .map_err(|e| GatewayError::Internal(format!("encoding answer: {e}")))
}

/// `BatchAnswer` with its members in sorted (byte) order; same names and values.
struct SortedAnswer<'a>(&'a BatchAnswer);

impl serde::Serialize for SortedAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let a = self.0;
        let mut m = s.serialize_struct("BatchAnswer", 8)?;
        m.serialize_field("accepted", &a.accepted)?;
        m.serialize_field("deleted", &a.deleted)?;
        m.serialize_field("duplicates", &a.duplicates)?;
        m.serialize_field("rejected", &a.rejected)?;
        m.serialize_field("requestId", &a.request_id)?;
        m.serialize_field("results", &SortedResults(&a.results))?;
        m.serialize_field("updated", &a.updated)?;
        m.serialize_field("userSeq", &a.user_seq)?;
        m.end()
    }
}

struct SortedResults<'a>(&'a [ItemResult]);

impl serde::Serialize for SortedResults<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SortedResult))
    }
}

struct SortedResult<'a>(&'a ItemResult);

impl serde::Serialize for SortedResult<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = self.0;
        let mut m = s.serialize_struct("ItemResult", 4)?;
        if let Some(code) = &r.code {
            m.serialize_field("code", code)?;
        }
        m.serialize_field("index", &r.index)?;
        if let Some(message) = &r.message {
            m.serialize_field("message", message)?;
        }
        m.serialize_field("status", &r.status)?;
        m.end()
    }
}

/// Builds the answer: one result per item, in index order.
fn build_answer(
    request_id: Uuid,
    user_seq: i64,
    outcomes: &[Outcome],
    rejected: &[Option<Rejection>],
) -> (BatchAnswer, Vec<RejectCode>) {
    let mut answer = BatchAnswer {
        request_id,
        accepted: 0,
        updated: 0,
        duplicates: 0,
        deleted: 0,
        rejected: 0,
        user_seq,
        results: Vec::with_capacity(outcomes.len()),
    };
    let mut codes = Vec::new();
    for (i, (outcome, rejection)) in outcomes.iter().zip(rejected).enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let (status, code, message) = match (outcome, rejection) {
            (_, Some(r)) => {
                answer.rejected += 1;
                codes.push(r.code);
                (
                    ItemStatus::Rejected,
                    Some(r.code.as_str().to_owned()),
                    Some(r.message.clone()),
                )
            }
            (Outcome::Accepted, None) => {
                answer.accepted += 1;
                (ItemStatus::Accepted, None, None)
            }
            (Outcome::Updated, None) => {
                answer.updated += 1;
                (ItemStatus::Updated, None, None)
            }
            (Outcome::Deleted(_), None) => {
                answer.deleted += 1;
                (ItemStatus::Deleted, None, None)
            }
            (Outcome::Duplicate | Outcome::Skipped, None) => {
                answer.duplicates += 1;
                (ItemStatus::Duplicate, None, None)
            }
        };
        answer.results.push(ItemResult {
            index,
            status,
            code,
            message,
        });
    }
    (answer, codes)
}

/// Now, at the microsecond resolution of Postgres and the records.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_counts_and_status() {
        let outcomes = [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Skipped,
            Outcome::Deleted(classify::Origin::Stored),
        ];
        let rejected = [None, None, Some(Rejection::blocked("HEART_RATE")), None];
        let (answer, codes) = build_answer(Uuid::nil(), 3, &outcomes, &rejected);
        assert_eq!(
            (
                answer.accepted,
                answer.duplicates,
                answer.rejected,
                answer.deleted
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(codes, vec![RejectCode::MetricBlocked]);
        assert_eq!(answer.results[2].code.as_deref(), Some("METRIC_BLOCKED"));
        assert_eq!(answer_status(&answer), 207);
    }

    #[test]
    fn answer_json_is_the_sorted_text_of_the_answer() {
        let outcomes = [
            Outcome::Accepted,
            Outcome::Updated,
            Outcome::Duplicate,
            Outcome::Skipped,
            Outcome::Deleted(classify::Origin::Stored),
        ];
        let rejected = [
            None,
            None,
            None,
            Some(Rejection::blocked("HEART_RATE")),
            None,
        ];
        let (answer, _) = build_answer(Uuid::new_v4(), 42, &outcomes, &rejected);
        let text = answer_json(&answer).expect("encodes");
        let value = serde_json::to_value(&answer).expect("value");
        // What a replay sends: the stored jsonb read back as a Value, serialised.
        assert_eq!(text, serde_json::to_string(&value).expect("text"));
        let back: BatchAnswer = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, answer);
    }
}
