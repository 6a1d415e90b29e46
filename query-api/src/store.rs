//! Reads of the read models and of freshness. Read-only; every query is scoped to one user.
//!
//! Two read stores (`PULSELINE_READ_STORE`):
//! - Postgres (the default): the sink's tables (one per read model, and `sink_progress`)
//!   and the gateway's sequences (`user_stream`, `accepted_change`) in one database. Rows
//!   and freshness of one answer are read in one REPEATABLE READ snapshot, so the
//!   `appliedSeq` an answer reports is the one its rows reflect.
//! - Scylla: rows and applied sequences from the Scylla store, the gateway's sequences
//!   from Postgres. No snapshot spans the two, so the reads go in the order that keeps
//!   the answer honest: the applied sequences first, then the rows (the sink writes a
//!   batch's rows before its progress, so the rows are at least as new as the reported
//!   `appliedSeq`), then the latest accepted sequences (at least the applied ones). An
//!   answer may be newer than it says, never staler.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use pulseline_schemas::{AppliedSeqs, ReadModel, Stream};
use pulseline_sinks::{CqlReadModel, ScyllaSink, Sink, SinkError};
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::api::model::{Freshness, FreshnessStatus, StreamFreshness};
use crate::error::QueryError;

/// The gateway's tables, read for freshness whatever the read store.
const GATEWAY_TABLES: [&str; 2] = ["user_stream", "accepted_change"];

/// Tables the API reads from Postgres when it holds the read models; /readyz reports
/// the missing ones.
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
/// parameters, its rows, its answer) for each store; `ReadStore::read` adds freshness.
/// Both `fetch`es answer the same rows in the same order.
pub trait ReadQuery: Send + Sync {
    /// The read model answered.
    type Model: CqlReadModel;
    /// One row of the answer.
    type Point: Send;

    /// The caller's rows matching the query (read inside the answer's snapshot).
    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<Self::Point>, sqlx::Error>>;

    /// The same rows from the Scylla store (a user's partition, or a slice of it).
    fn fetch_cql<'a>(
        &'a self,
        store: &'a ScyllaSink,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<Self::Point>, SinkError>>;
}

/// The API's read-store handles: Postgres always (the gateway's sequences), Scylla when
/// it holds the read models.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: PgPool,
    scylla: Option<Arc<ScyllaSink>>,
    /// Whether a read model's Scylla table is created (by its migration) before its first
    /// read; without it a missing table answers 500 until the sink creates it.
    migrate_scylla: bool,
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
        Ok(Self {
            pool,
            scylla: None,
            migrate_scylla: false,
        })
    }

    /// Reads the read models from `scylla` from now on (freshness still asks Postgres for
    /// the gateway's sequences); `migrate`: make sure of each table before its first read.
    pub fn with_scylla(self, scylla: Arc<ScyllaSink>, migrate: bool) -> Self {
        Self {
            scylla: Some(scylla),
            migrate_scylla: migrate,
            ..self
        }
    }

    /// Scylla answers, when it holds the read models (`None` when it does not).
    pub async fn ping_scylla(&self) -> Option<Result<(), SinkError>> {
        match &self.scylla {
            Some(scylla) => Some(scylla.ping().await),
            None => None,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The rows a query selects and the read model's freshness for the user (see the
    /// module's doc for how each store keeps the two consistent).
    pub async fn read<Q: ReadQuery>(
        &self,
        user: Uuid,
        query: &Q,
    ) -> Result<(Vec<Q::Point>, Freshness), QueryError> {
        let (name, streams) = (Q::Model::NAME, Q::Model::STREAMS);
        if let Some(scylla) = &self.scylla {
            if self.migrate_scylla {
                // Once per process and read model; the sink runs the same migration.
                scylla.migrate_model::<Q::Model>().await?;
            }
            let applied = scylla.applied_seqs(name, user).await?;
            let rows = query.fetch_cql(scylla, user).await?;
            let mut conn = self.pool.acquire().await?;
            let freshness = freshness_given(&mut conn, user, name, streams, Some(applied)).await?;
            return Ok((rows, freshness));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch(&mut tx, user).await?;
        let freshness = freshness(&mut tx, user, name, streams).await?;
        tx.commit().await?;
        Ok((rows, freshness))
    }

    /// Postgres answers, and the tables this API reads there exist (the gateway and the
    /// sink have migrated; with Scylla, the gateway's). `Ok(missing tables)`.
    pub async fn check(&self) -> Result<Vec<String>, sqlx::Error> {
        let tables: &[&str] = if self.scylla.is_some() {
            &GATEWAY_TABLES
        } else {
            &TABLES
        };
        let present: Vec<bool> = sqlx::query_scalar(
            "SELECT to_regclass(t) IS NOT NULL FROM UNNEST($1::text[]) WITH ORDINALITY AS x(t, i) ORDER BY i",
        )
        .bind(tables)
        .fetch_all(&self.pool)
        .await?;
        Ok(tables
            .iter()
            .zip(present)
            .filter(|(_, ok)| !ok)
            .map(|(t, _)| (*t).to_owned())
            .collect())
    }
}

/// The freshness of `read_model` for `user`, all from Postgres: per input stream it reads,
/// the latest accepted sequence (the gateway's) against the applied one (the sink's), and
/// the age of the oldest accepted change not yet applied. Fresh only when every stream is.
pub async fn freshness(
    conn: &mut PgConnection,
    user: Uuid,
    read_model: &str,
    streams: &[Stream],
) -> Result<Freshness, sqlx::Error> {
    freshness_given(conn, user, read_model, streams, None).await
}

/// As `freshness`, with the applied sequences given when the caller read them from
/// another store (`None`: Postgres's `sink_progress`).
async fn freshness_given(
    conn: &mut PgConnection,
    user: Uuid,
    read_model: &str,
    streams: &[Stream],
    applied: Option<AppliedSeqs>,
) -> Result<Freshness, sqlx::Error> {
    let mut per_stream = Vec::with_capacity(streams.len());
    for &stream in streams {
        let (latest, applied, lag): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT s.latest, s.applied, l.lag FROM ( \
                 SELECT COALESCE((SELECT last_seq FROM user_stream \
                                  WHERE user_id = $1 AND stream = $2), 0) AS latest, \
                        COALESCE($4::int8, (SELECT applied_seq FROM sink_progress \
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
        .bind(applied.map(|a| a.get(stream)))
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
