//! Retention: removes expired idempotency rows and expired sample/event keys, in small
//! batches so no statement holds locks for long. Runs periodically inside the gateway.
//!
//! - An idempotency row older than the idempotency window is forgotten: a retry of that
//!   request after the window runs again as a new request (its items then classify as
//!   duplicates, so nothing is counted twice).
//! - A sample (or event) whose start time is older than the key window is removed from
//!   Postgres, deleted or not. A re-upload of it is refused as TOO_OLD, because the key
//!   window is never shorter than the acceptance window (`Config::validate` insists; both
//!   default to 400 days). Its records already reached Kafka and the read models; a
//!   republish from Postgres no longer includes it.
//!
//! It never touches the outbox (the relay owns it) nor `accepted_change`/`user_stream`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use crate::telemetry::{RetentionRan, Telemetry};

/// Rows removed per statement.
const BATCH: i64 = 5_000;

/// How long after start-up the first periodic pass runs (if the interval is longer).
const FIRST_PASS_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    pub idempotency: TimeDelta,
    pub sample_keys: TimeDelta,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub idempotency_keys: u64,
    pub samples: u64,
    pub events: u64,
}

/// Removes everything expired as of `now`.
pub async fn run_once(
    pool: &PgPool,
    policy: RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<RetentionReport, sqlx::Error> {
    let idempotency_keys = delete_in_batches(
        pool,
        "DELETE FROM idempotency_key WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM idempotency_key WHERE created_at < $1 LIMIT $2))",
        now - policy.idempotency,
    )
    .await?;
    let samples = delete_in_batches(
        pool,
        "DELETE FROM sample WHERE ctid = ANY(ARRAY(SELECT ctid FROM sample WHERE start_at < $1 LIMIT $2))",
        now - policy.sample_keys,
    )
    .await?;
    let events = delete_in_batches(
        pool,
        "DELETE FROM user_event WHERE ctid = ANY(ARRAY(SELECT ctid FROM user_event WHERE start_at < $1 LIMIT $2))",
        now - policy.sample_keys,
    )
    .await?;
    Ok(RetentionReport {
        idempotency_keys,
        samples,
        events,
    })
}

async fn delete_in_batches(
    pool: &PgPool,
    sql: &'static str,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Runs `run_once` every `interval` until the task is dropped; failures are logged and
/// retried at the next tick (Postgres may be briefly down).
pub async fn run_periodically(
    pool: PgPool,
    policy: RetentionPolicy,
    interval: Duration,
    telemetry: Telemetry,
) {
    // The first pass comes a little after start-up (at most a minute), not during it: a
    // starting gateway's first requests do not share the database with a retention pass,
    // and nothing set up right after start (a test ageing rows before its own
    // `run_once`) races the background one.
    let first = tokio::time::Instant::now() + interval.min(FIRST_PASS_DELAY);
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_once(&pool, policy, Utc::now()).await {
            Ok(r) => {
                if r != RetentionReport::default() {
                    telemetry.emit(RetentionRan {
                        idempotency_keys: r.idempotency_keys,
                        samples: r.samples,
                        events: r.events,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention run failed; retrying at the next interval")
            }
        }
    }
}
