//! The gateway's Postgres side: one transaction per batch request, with bulk (UNNEST)
//! statements only, so a 500-item batch costs the same ~10 round trips as a 1-item one.
//!
//! The transaction, in order:
//! 1. the idempotency row (user, requestId) is inserted first, with `lock_timeout` = the
//!    in-progress wait: a concurrent duplicate blocks on the uncommitted row, then reads
//!    the committed answer (same hash) or gets 422 (other hash); if the wait runs out it
//!    gets 409 REQUEST_IN_PROGRESS;
//! 2. the user's `user_stream` row is locked (upserted): one user's requests on a stream
//!    run one at a time, so sequence numbers and outbox ids grow together;
//! 3. the stored state of the batch's keys is read in one statement and every item is
//!    classified (`classify`);
//! 4. if anything changed: the sequence is bumped by one, rows are upserted / soft-deleted,
//!    `accepted_change` records when, and the records go to the outbox in item order;
//! 5. the answer is stored in the idempotency row; COMMIT; only then is it sent.
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
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::GatewayError;
use crate::hashing::Sha256Hash;
use crate::model::{BatchAnswer, ItemResult, ItemStatus};
use crate::outbox::Stream;
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
    Committed {
        answer: BatchAnswer,
        body: Value,
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

    pub fn body(&self) -> &Value {
        match self {
            BatchOutcome::Committed { body, .. } | BatchOutcome::Replayed { body, .. } => body,
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
        let mut tx = self.pool.begin().await?;
        let wait_ms = self.in_progress_wait.as_millis().max(1);
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{wait_ms}ms"))
            .execute(&mut *tx)
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

/// Step 4's bookkeeping: the new sequence number and when it was accepted.
async fn bump_sequence(
    conn: &mut PgConnection,
    user_id: Uuid,
    stream: Stream,
    seq: i64,
    accepted_at: DateTime<Utc>,
    items: usize,
) -> Result<(), GatewayError> {
    sqlx::query(
        "WITH bumped AS (UPDATE user_stream SET last_seq = $3 WHERE user_id = $1 AND stream = $2)
         INSERT INTO accepted_change (user_id, stream, seq, accepted_at, items) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(stream.id())
    .bind(seq)
    .bind(accepted_at)
    .bind(i32::try_from(items).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Step 5: stores the answer with the idempotency row and commits.
async fn finish_batch(
    mut tx: Transaction<'static, Postgres>,
    user_id: Uuid,
    answer: BatchAnswer,
    rejections: Vec<RejectCode>,
) -> Result<BatchOutcome, GatewayError> {
    let body = serde_json::to_value(&answer)
        .map_err(|e| GatewayError::Internal(format!("encoding answer: {e}")))?;
    sqlx::query(
        "UPDATE idempotency_key SET response_status = $3, response_body = $4
         WHERE user_id = $1 AND request_id = $2",
    )
    .bind(user_id)
    .bind(answer.request_id)
    .bind(answer_status(&answer) as i16)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(BatchOutcome::Committed {
        answer,
        body,
        rejections,
    })
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
}
