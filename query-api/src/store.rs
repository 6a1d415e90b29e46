//! Reads of the read models and of freshness, from one Postgres database: the sink's
//! tables (one per read model, and `sink_progress`) and the gateway's sequences
//! (`user_stream`, `accepted_change`). Read-only; every query is scoped to one user id.
//!
//! Rows and freshness of one answer are read in one REPEATABLE READ snapshot, so the
//! `appliedSeq` an answer reports is the one its rows reflect.

use std::time::Duration;

use futures::future::BoxFuture;
use pulseline_schemas::{ReadModel, Stream};
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::api::model::{Freshness, FreshnessStatus, StreamFreshness};
use crate::error::QueryError;

/// Tables the API reads whatever the read model; /readyz reports the missing ones.
const TABLES: [&str; 7] = [
    "rollup",
    "sleep_night",
    "session_impact",
    "product_impact",
    "sink_progress",
    "user_stream",
    "accepted_change",
];

/// How the API reads one read model: one implementation per read model (its query
/// parameters, its rows, its answer); `ReadStore::read` adds the snapshot and freshness.
pub trait ReadQuery: Send + Sync {
    /// The read model answered.
    type Model: ReadModel;
    /// One row of the answer.
    type Point: Send;

    /// The caller's rows matching the query (read inside the answer's snapshot).
    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<Self::Point>, sqlx::Error>>;
}

/// The API's database handle.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: PgPool,
}

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

    /// The rows a query selects and the read model's freshness for the user, from one
    /// snapshot.
    pub async fn read<Q: ReadQuery>(
        &self,
        user: Uuid,
        query: &Q,
    ) -> Result<(Vec<Q::Point>, Freshness), QueryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch(&mut tx, user).await?;
        let freshness = freshness(&mut tx, user, Q::Model::NAME, Q::Model::STREAMS).await?;
        tx.commit().await?;
        Ok((rows, freshness))
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

/// The freshness of `read_model` for `user`: per input stream it reads, the latest
/// accepted sequence (the gateway's) against the applied one (the sink's), and the age of
/// the oldest accepted change not yet applied. Fresh only when every stream is.
pub async fn freshness(
    conn: &mut PgConnection,
    user: Uuid,
    read_model: &str,
    streams: &[Stream],
) -> Result<Freshness, sqlx::Error> {
    let mut per_stream = Vec::with_capacity(streams.len());
    for &stream in streams {
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
        .bind(stream.id())
        .bind(read_model)
        .fetch_one(&mut *conn)
        .await?;
        per_stream.push(stream_freshness(stream, latest, applied, lag));
    }
    Ok(combine(per_stream))
}

/// `fresh` iff the applied sequence is the latest accepted one; the lag is the age of the
/// oldest accepted change not yet applied (0 when fresh), in seconds to the millisecond.
fn stream_freshness(
    stream: Stream,
    latest: i64,
    applied: i64,
    lag: Option<f64>,
) -> StreamFreshness {
    let fresh = latest == applied;
    let lag_seconds = if fresh {
        0.0
    } else {
        (lag.unwrap_or(0.0).max(0.0) * 1000.0).round() / 1000.0
    };
    StreamFreshness {
        stream: stream.name().to_owned(),
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

/// The answer's freshness: stale if any stream is, lagging by the worst stream; the
/// top-level sequences are the first stream's (samples, for every read model reading it).
fn combine(streams: Vec<StreamFreshness>) -> Freshness {
    let stale = streams.iter().any(|s| s.status == FreshnessStatus::Stale);
    let lag_seconds = streams.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
    let (latest_seq, applied_seq) = streams
        .first()
        .map_or((0, 0), |s| (s.latest_seq, s.applied_seq));
    Freshness {
        status: if stale {
            FreshnessStatus::Stale
        } else {
            FreshnessStatus::Fresh
        },
        latest_seq,
        applied_seq,
        lag_seconds,
        streams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_rules() {
        let f = stream_freshness(Stream::Samples, 5, 5, None);
        assert_eq!((f.status, f.lag_seconds), (FreshnessStatus::Fresh, 0.0));
        let f = stream_freshness(Stream::Samples, 7, 5, Some(12.34567));
        assert_eq!((f.status, f.lag_seconds), (FreshnessStatus::Stale, 12.346));
        // Clock skew between writers never makes a negative lag.
        assert_eq!(
            stream_freshness(Stream::Samples, 7, 5, Some(-0.5)).lag_seconds,
            0.0
        );
        assert_eq!(
            stream_freshness(Stream::Samples, 0, 0, None).status,
            FreshnessStatus::Fresh
        );
    }

    #[test]
    fn an_answer_is_fresh_only_when_every_stream_is() {
        let both = combine(vec![
            stream_freshness(Stream::Samples, 4, 4, None),
            stream_freshness(Stream::Events, 9, 8, Some(2.5)),
        ]);
        assert_eq!(both.status, FreshnessStatus::Stale);
        assert_eq!(both.lag_seconds, 2.5);
        assert_eq!((both.latest_seq, both.applied_seq), (4, 4));
        let fresh = combine(vec![
            stream_freshness(Stream::Samples, 4, 4, None),
            stream_freshness(Stream::Events, 9, 9, None),
        ]);
        assert_eq!(fresh.status, FreshnessStatus::Fresh);
    }
}
