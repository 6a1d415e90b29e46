//! Reads of the read models and of freshness, from one Postgres database: the sink's
//! tables (`rollup`, `sink_progress`) and the gateway's sequences (`user_stream`,
//! `accepted_change`). Read-only; every query is scoped to one user id.
//!
//! Rows and freshness of one answer are read in one REPEATABLE READ snapshot, so the
//! `appliedSeq` an answer reports is the one its rows reflect.

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::api::model::{Freshness, FreshnessStatus, RollupPoint};
use crate::error::QueryError;
use crate::params::RollupsQuery;

/// `user_stream.stream` / `sink_progress.stream` of samples (the gateway's numbering).
const SAMPLES_STREAM: i16 = 1;

/// Tables the API reads; /readyz reports the missing ones.
const TABLES: [&str; 4] = ["rollup", "sink_progress", "user_stream", "accepted_change"];

/// The API's database handle.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: PgPool,
}

type RollupRow = (
    NaiveDateTime,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    Vec<String>,
);

impl ReadStore {
    /// Connects a pool; fails fast if Postgres does not answer at start.
    pub async fn connect(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, QueryError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .map_err(|e| QueryError::Startup(format!("connecting to Postgres: {e}")))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The user's rollups in the query's range (deleted buckets left out), oldest first,
    /// and the read model's freshness for that user.
    pub async fn rollups(
        &self,
        user: Uuid,
        q: &RollupsQuery,
    ) -> Result<(Vec<RollupPoint>, Freshness), QueryError> {
        let (start, end) = q.bucket_range();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<RollupRow> = sqlx::query_as(
            "SELECT bucket_start, value, min, max, count, sources FROM rollup \
             WHERE user_id = $1 AND metric = $2 AND period = $3 \
               AND bucket_start >= $4 AND bucket_start < $5 AND NOT deleted \
             ORDER BY bucket_start",
        )
        .bind(user)
        .bind(q.metric.code())
        .bind(q.period.stored())
        .bind(start)
        .bind(end)
        .fetch_all(&mut *tx)
        .await?;
        let (latest, applied, lag): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT s.latest, s.applied, l.lag FROM ( \
                 SELECT COALESCE((SELECT last_seq FROM user_stream \
                                  WHERE user_id = $1 AND stream = $2), 0) AS latest, \
                        COALESCE((SELECT applied_seq FROM sink_progress \
                                  WHERE read_model = $3 AND user_id = $1 AND stream = $2), 0) AS applied \
             ) s \
             LEFT JOIN LATERAL ( \
                 SELECT EXTRACT(EPOCH FROM (clock_timestamp() - a.accepted_at))::float8 AS lag \
                 FROM accepted_change a \
                 WHERE a.user_id = $1 AND a.stream = $2 AND a.seq > s.applied \
                 ORDER BY a.seq LIMIT 1 \
             ) l ON s.latest <> s.applied",
        )
        .bind(user)
        .bind(SAMPLES_STREAM)
        .bind(pulseline_sinks::postgres::ROLLUPS_READ_MODEL)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;

        let data = rows
            .into_iter()
            .map(|(start, value, min, max, count, sources)| RollupPoint {
                start: q.period.format_start(start),
                value,
                min,
                max,
                count,
                sources,
            })
            .collect();
        Ok((data, freshness(latest, applied, lag)))
    }

    /// Postgres answers, and the tables this API reads exist (the gateway and the sink
    /// have migrated). `Ok(missing tables)`.
    pub async fn check(&self) -> Result<Vec<String>, sqlx::Error> {
        let present: Vec<bool> = sqlx::query_scalar(
            "SELECT to_regclass(t) IS NOT NULL FROM UNNEST($1::text[]) WITH ORDINALITY AS x(t, i) ORDER BY i",
        )
        .bind(TABLES)
        .fetch_all(&self.pool)
        .await?;
        Ok(TABLES
            .iter()
            .zip(present)
            .filter(|(_, ok)| !ok)
            .map(|(t, _)| (*t).to_owned())
            .collect())
    }
}

/// `fresh` iff the applied sequence is the latest accepted one; the lag is the age of the
/// oldest accepted change not yet applied (0 when fresh), in seconds to the millisecond.
fn freshness(latest: i64, applied: i64, lag: Option<f64>) -> Freshness {
    let fresh = latest == applied;
    let lag_seconds = if fresh {
        0.0
    } else {
        (lag.unwrap_or(0.0).max(0.0) * 1000.0).round() / 1000.0
    };
    Freshness {
        status: if fresh {
            FreshnessStatus::Fresh
        } else {
            FreshnessStatus::Stale
        },
        latest_seq: latest,
        applied_seq: applied,
        lag_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_rules() {
        let f = freshness(5, 5, None);
        assert_eq!((f.status, f.lag_seconds), (FreshnessStatus::Fresh, 0.0));
        let f = freshness(7, 5, Some(12.34567));
        assert_eq!((f.status, f.lag_seconds), (FreshnessStatus::Stale, 12.346));
        // Clock skew between writers never makes a negative lag.
        assert_eq!(freshness(7, 5, Some(-0.5)).lag_seconds, 0.0);
        assert_eq!(freshness(0, 0, None).status, FreshnessStatus::Fresh);
    }
}
