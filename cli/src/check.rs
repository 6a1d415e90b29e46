//! What the read store serves, compared with the brute-force oracles over a set of inputs:
//! `pulseline run` feeds it what the simulated clients believe they stored, `pulseline
//! reconcile` what Postgres accepted. The oracles share no code with the processors.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pulseline_query_api::api::model::FreshnessStatus;
use pulseline_query_api::store::freshness;
use pulseline_schemas::records::{
    ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};
use pulseline_schemas::{Catalog, ReadModel, Stream, ValueKind};
use pulseline_stream_processors::Input;
use pulseline_stream_processors::oracle;
use pulseline_stream_processors::testing::impact_oracle::{ProductRow, SessionRow};
use pulseline_stream_processors::testing::sleep_oracle::NightRow;
use pulseline_stream_processors::testing::{
    Oracle, ProductImpactsOracle, SessionImpactsOracle, SleepOracle,
};
use sqlx::PgPool;
use uuid::Uuid;

/// The live rows of every read model for some users, keyed as the oracles key them.
#[derive(Debug, Default)]
pub struct Served {
    pub rollups: BTreeMap<String, oracle::Row>,
    pub nights: BTreeMap<String, NightRow>,
    pub sessions: BTreeMap<String, SessionRow>,
    pub products: BTreeMap<String, ProductRow>,
}

/// One read model's comparison: how many rows the oracle expects, and every difference.
#[derive(Debug)]
pub struct ModelCheck {
    pub read_model: &'static str,
    pub compared: usize,
    pub problems: Vec<String>,
}

/// Every read model's name and the input streams its freshness compares.
pub const READ_MODELS: [(&str, &[Stream]); 4] = [
    (RollupUpsert::NAME, RollupUpsert::STREAMS),
    (SleepNightUpsert::NAME, SleepNightUpsert::STREAMS),
    (SessionImpactUpsert::NAME, SessionImpactUpsert::STREAMS),
    (ProductImpactUpsert::NAME, ProductImpactUpsert::STREAMS),
];

/// Polls until every one of `users` is fresh or `within` has passed; returns how many
/// are still stale (0: all fresh).
pub async fn wait_fresh(
    pool: &PgPool,
    users: &[Uuid],
    within: std::time::Duration,
) -> sqlx::Result<usize> {
    let began = std::time::Instant::now();
    loop {
        let stale = stale_users(pool, users).await?;
        if stale == 0 || began.elapsed() > within {
            return Ok(stale);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How many of `users` have a read model that is not fresh (the query API's rule).
pub async fn stale_users(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<usize> {
    let mut conn = pool.acquire().await?;
    let mut stale = 0;
    for user in users {
        for (name, streams) in READ_MODELS {
            if freshness(&mut conn, *user, name, streams).await?.status != FreshnessStatus::Fresh {
                stale += 1;
                break;
            }
        }
    }
    Ok(stale)
}

/// (backend pid, state, wait event, transaction age in seconds) of a relay lock holder.
type LockHolder = (i32, Option<String>, Option<String>, Option<f64>);

/// Where a stale user's changes stand, one line per stale read model and stream: what the
/// gateway accepted against what the sink applied, what still waits in the user's outbox
/// shard, and who holds that shard's relay lock. Printed when a run ends stale, so the
/// log says which hop stopped (relay, processor or sink) without a rerun.
pub async fn why_stale(pool: &PgPool, users: &[Uuid], shards: u16) -> sqlx::Result<Vec<String>> {
    let mut conn = pool.acquire().await?;
    let mut lines = Vec::new();
    for user in users {
        let shard = pulseline_ingest_gateway::outbox::shard_of(*user, shards);
        let before = lines.len();
        for (name, streams) in READ_MODELS {
            let f = freshness(&mut conn, *user, name, streams).await?;
            for s in f
                .streams
                .iter()
                .filter(|s| s.status != FreshnessStatus::Fresh)
            {
                lines.push(format!(
                    "user {user} {name}/{}: accepted seq {}, applied {}, oldest unapplied {:.1} s old",
                    s.stream, s.latest_seq, s.applied_seq, s.lag_seconds
                ));
            }
        }
        if lines.len() == before {
            continue;
        }
        let (rows, first, oldest): (i64, Option<i64>, Option<f64>) = sqlx::query_as(
            "SELECT count(*), min(id), EXTRACT(EPOCH FROM (clock_timestamp() - min(created_at)))::float8 \
             FROM outbox WHERE shard = $1",
        )
        .bind(shard)
        .fetch_one(&mut *conn)
        .await?;
        lines.push(format!(
            "  outbox shard {shard}: {rows} rows waiting (first id {first:?}, oldest {:.1} s)",
            oldest.unwrap_or(0.0)
        ));
        let holders: Vec<LockHolder> = sqlx::query_as(
            "SELECT a.pid, a.state, a.wait_event, \
                    EXTRACT(EPOCH FROM (clock_timestamp() - a.xact_start))::float8 \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1 AND l.objid::bigint = $2",
        )
        .bind(i64::from(pulseline_ingest_gateway::relay::RELAY_LOCK_CLASS))
        .bind(i64::from(shard))
        .fetch_all(&mut *conn)
        .await?;
        for (pid, state, wait, age) in holders {
            lines.push(format!(
                "  shard {shard} relay lock held by backend {pid} ({}, waiting on {}, transaction {:.1} s old)",
                state.unwrap_or_default(),
                wait.unwrap_or_else(|| "nothing".to_owned()),
                age.unwrap_or(0.0)
            ));
        }
    }
    Ok(lines)
}

/// (user, metric, period, local start, value, min, max, count, sources) of a rollup row.
type RollupRow = (
    Uuid,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    Vec<String>,
);

/// A sleep night: (`user|night`, bed_at, wake_at, in bed, asleep, awake, rem, deep, core,
/// unspecified, latency, efficiency, awakenings, naps, nap minutes, sources).
type NightTuple = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    Option<f64>,
    Option<f64>,
    i32,
    i32,
    f64,
    Vec<String>,
);

/// A session impact: (`user|event|metric`, type, product, start, end, baseline, after,
/// delta, counts, reliable).
type SessionTuple = (
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    i64,
    bool,
);

/// A product impact: (`user|type|product|metric|period`, n, avg, std dev, tier, as of).
type ProductTuple = (String, i64, Option<f64>, Option<f64>, String, DateTime<Utc>);

impl Served {
    /// Reads the users' live rows of every read model from the Postgres read store.
    pub async fn load(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<Self> {
        Ok(Self {
            rollups: rollups(pool, users).await?,
            nights: nights(pool, users).await?,
            sessions: sessions(pool, users).await?,
            products: products(pool, users).await?,
        })
    }
}

/// Every read model against its oracle over `inputs` (the users' samples and events).
pub fn compare(served: &Served, inputs: &[Input]) -> Vec<ModelCheck> {
    let samples: Vec<_> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Sample(s) => Some(s.clone()),
            Input::Event(_) => None,
        })
        .collect();
    let expected_rollups = oracle::rollups(&samples);
    let expected_nights = SleepOracle.expected(inputs);
    let expected_sessions = SessionImpactsOracle.expected(inputs);
    let expected_products = ProductImpactsOracle.expected(inputs);
    let mut impacts = SessionImpactsOracle.diff(&served.sessions, &expected_sessions);
    impacts.extend(ProductImpactsOracle.diff(&served.products, &expected_products));
    vec![
        ModelCheck {
            read_model: "rollups",
            compared: expected_rollups.len(),
            problems: oracle::diff(&served.rollups, &expected_rollups),
        },
        ModelCheck {
            read_model: "sleep_nights",
            compared: expected_nights.len(),
            problems: SleepOracle.diff(&served.nights, &expected_nights),
        },
        ModelCheck {
            read_model: "impacts",
            compared: expected_sessions.len() + expected_products.len(),
            problems: impacts,
        },
    ]
}

/// Rollups of the metrics the oracle computes (quantities; categories such as sleep stages
/// have no rollup value).
async fn rollups(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<BTreeMap<String, oracle::Row>> {
    let quantities: Vec<&str> = Catalog::builtin()
        .metrics()
        .filter(|m| m.kind() == ValueKind::Quantity)
        .map(|m| m.code())
        .collect();
    let rows: Vec<RollupRow> = sqlx::query_as(
        "SELECT user_id, metric, period,
                CASE period WHEN 'DAY' THEN to_char(bucket_start, 'YYYY-MM-DD')
                            ELSE to_char(bucket_start, 'YYYY-MM-DD\"T\"HH24:00:00') END,
                value, min, max, count, sources
         FROM rollup WHERE user_id = ANY($1) AND NOT deleted AND metric = ANY($2)",
    )
    .bind(users)
    .bind(&quantities)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(user, metric, period, bucket, value, min, max, count, mut sources)| {
                sources.sort();
                (
                    format!("{user}|{metric}|{period}|{bucket}"),
                    oracle::Row {
                        value,
                        min,
                        max,
                        count,
                        sources,
                    },
                )
            },
        )
        .collect())
}

async fn nights(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<BTreeMap<String, NightRow>> {
    let rows: Vec<NightTuple> = sqlx::query_as(
        "SELECT user_id::text || '|' || to_char(night, 'YYYY-MM-DD'), bed_at, wake_at, in_bed_minutes,
                asleep_minutes, awake_minutes, rem_minutes, deep_minutes, core_minutes,
                unspecified_minutes, latency_minutes, efficiency, awakenings, nap_count,
                nap_minutes, sources
         FROM sleep_night WHERE user_id = ANY($1) AND NOT deleted",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                NightRow {
                    bed_at: micros(r.1),
                    wake_at: micros(r.2),
                    in_bed: r.3,
                    asleep: r.4,
                    awake: r.5,
                    rem: r.6,
                    deep: r.7,
                    core: r.8,
                    unspecified: r.9,
                    latency: r.10,
                    efficiency: r.11,
                    awakenings: r.12,
                    nap_count: r.13,
                    nap_minutes: r.14,
                    sources: r.15,
                },
            )
        })
        .collect())
}

async fn sessions(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<BTreeMap<String, SessionRow>> {
    let rows: Vec<SessionTuple> = sqlx::query_as(
        "SELECT user_id::text || '|' || event_id || '|' || metric, event_type, product_id,
                start_at, end_at, baseline_avg, after_avg, delta_percent, baseline_count,
                after_count, reliable
         FROM session_impact WHERE user_id = ANY($1) AND NOT deleted",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                SessionRow {
                    event_type: r.1,
                    product_id: r.2,
                    start_at: r.3.timestamp_micros(),
                    end_at: r.4.map(|t| t.timestamp_micros()),
                    baseline_avg: r.5,
                    after_avg: r.6,
                    delta_percent: r.7,
                    counts: (r.8, r.9),
                    reliable: r.10,
                },
            )
        })
        .collect())
}

async fn products(pool: &PgPool, users: &[Uuid]) -> sqlx::Result<BTreeMap<String, ProductRow>> {
    let rows: Vec<ProductTuple> = sqlx::query_as(
        "SELECT user_id::text || '|' || event_type || '|' ||
                CASE WHEN product_id IS NULL THEN '-' ELSE '=' || product_id END || '|' ||
                metric || '|' || period_days, n, avg_delta_percent, std_dev, tier, as_of
         FROM product_impact WHERE user_id = ANY($1) AND NOT deleted",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                ProductRow {
                    n: r.1,
                    avg_delta_percent: r.2,
                    std_dev: r.3,
                    tier: r.4,
                    as_of: r.5.timestamp_micros(),
                },
            )
        })
        .collect())
}
