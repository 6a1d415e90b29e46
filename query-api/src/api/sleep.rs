//! `GET /v1/me/sleep`: the caller's sleep nights over a range of dates of waking, with
//! freshness. The user id comes from the token only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::future::BoxFuture;
use pulseline_schemas::records::SleepNightUpsert;
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;
use pulseline_sinks::{ScyllaSink, SinkError};
use sqlx::PgConnection;
use uuid::Uuid;

use super::AppState;
use super::model::{SleepAnswer, SleepNight};
use crate::error::QueryError;
use crate::params::SleepQuery;
use crate::store::ReadQuery;

/// Sleep nights, with freshness.
///
/// A night is named by its `date`: the local date of waking (the date the main sleep
/// ended on, in the offset recorded by the sample that ended it), so a night from 23:00
/// to 07:00 belongs to the second date. `bedAt` and `wakeAt` are UTC instants. `from` and
/// `to` are dates of waking, both included; nights come oldest first (newest last);
/// dates without sleep are absent. Where a watch and a phone recorded the same night,
/// each moment counts once, from the higher-priority source. `freshness` compares the
/// sample sequence the nights reflect with the newest one the gateway accepted for the
/// caller.
#[utoipa::path(
    get,
    path = "/v1/me/sleep",
    tag = "read models",
    params(
        ("from" = String, Query, format = Date, description = "First date of waking, YYYY-MM-DD (a local date)"),
        ("to" = String, Query, format = Date, description = "Last date of waking, YYYY-MM-DD (inclusive); at most 366 days after `from`"),
    ),
    responses(
        (status = 200, description = "The nights and their freshness", body = SleepAnswer),
        (status = 400, description = "INVALID_PARAMETER; details.parameter names the parameter", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE (database); retry after Retry-After", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn get_sleep(
    caller: AuthUser,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<SleepAnswer>, QueryError> {
    let q = SleepQuery::parse(&super::query_pairs(query)?)?;
    let (data, freshness) = super::serve(&state, caller.user_id, &q).await?;
    Ok(Json(SleepAnswer { data, freshness }))
}

type NightRow = (
    NaiveDate,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    i32,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    i32,
    f64,
    Vec<String>,
);

fn instant(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

impl ReadQuery for SleepQuery {
    type Model = SleepNightUpsert;
    type Point = SleepNight;

    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<SleepNight>, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<NightRow> = sqlx::query_as(
                "SELECT night, bed_at, wake_at, in_bed_minutes, asleep_minutes, awake_minutes, \
                        latency_minutes, efficiency, awakenings, rem_minutes, deep_minutes, \
                        core_minutes, unspecified_minutes, nap_count, nap_minutes, sources \
                 FROM sleep_night \
                 WHERE user_id = $1 AND night BETWEEN $2 AND $3 AND NOT deleted \
                 ORDER BY night",
            )
            .bind(user)
            .bind(self.from)
            .bind(self.to)
            .fetch_all(conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| SleepNight {
                    date: r.0.format("%Y-%m-%d").to_string(),
                    bed_at: instant(r.1),
                    wake_at: instant(r.2),
                    in_bed_minutes: r.3,
                    asleep_minutes: r.4,
                    awake_minutes: r.5,
                    latency_minutes: r.6,
                    efficiency: r.7,
                    awakenings: r.8,
                    rem_minutes: r.9,
                    deep_minutes: r.10,
                    core_minutes: r.11,
                    unspecified_minutes: r.12,
                    nap_count: r.13,
                    nap_minutes: r.14,
                    sources: r.15,
                })
                .collect())
        })
    }

    fn fetch_cql<'a>(
        &'a self,
        store: &'a ScyllaSink,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<SleepNight>, SinkError>> {
        Box::pin(async move {
            let cql = format!(
                "SELECT night, bed_at, wake_at, in_bed_minutes, asleep_minutes, awake_minutes, \
                        latency_minutes, efficiency, awakenings, rem_minutes, deep_minutes, \
                        core_minutes, unspecified_minutes, nap_count, nap_minutes, sources, \
                        deleted \
                 FROM {}.sleep_night WHERE user_id = ? AND night >= ? AND night <= ?",
                store.keyspace()
            );
            let rows: Vec<CqlNight> = store.select(&cql, (user, self.from, self.to)).await?;
            let mut rows: Vec<CqlNight> = rows
                .into_iter()
                .filter(|r| (self.from..=self.to).contains(&r.night) && r.deleted != Some(true))
                .collect();
            rows.sort_by_key(|r| r.night);
            Ok(rows
                .into_iter()
                .map(|r| SleepNight {
                    date: r.night.format("%Y-%m-%d").to_string(),
                    bed_at: instant(r.bed_at.and_then(DateTime::from_timestamp_micros)),
                    wake_at: instant(r.wake_at.and_then(DateTime::from_timestamp_micros)),
                    in_bed_minutes: r.in_bed_minutes.unwrap_or_default(),
                    asleep_minutes: r.asleep_minutes.unwrap_or_default(),
                    awake_minutes: r.awake_minutes.unwrap_or_default(),
                    latency_minutes: r.latency_minutes,
                    efficiency: r.efficiency,
                    awakenings: r.awakenings.unwrap_or_default(),
                    rem_minutes: r.rem_minutes,
                    deep_minutes: r.deep_minutes,
                    core_minutes: r.core_minutes,
                    unspecified_minutes: r.unspecified_minutes.unwrap_or_default(),
                    nap_count: r.nap_count.unwrap_or_default(),
                    nap_minutes: r.nap_minutes.unwrap_or_default(),
                    sources: r.sources.unwrap_or_default(),
                })
                .collect())
        })
    }
}

/// A `sleep_night` row as Scylla answers it: instants are microseconds since the epoch;
/// every value may be null (a deleted night keeps only its version, and CQL has no NOT
/// NULL), so a live night's defaults are Postgres's.
#[derive(scylla::DeserializeRow)]
struct CqlNight {
    night: NaiveDate,
    bed_at: Option<i64>,
    wake_at: Option<i64>,
    in_bed_minutes: Option<f64>,
    asleep_minutes: Option<f64>,
    awake_minutes: Option<f64>,
    latency_minutes: Option<f64>,
    efficiency: Option<f64>,
    awakenings: Option<i32>,
    rem_minutes: Option<f64>,
    deep_minutes: Option<f64>,
    core_minutes: Option<f64>,
    unspecified_minutes: Option<f64>,
    nap_count: Option<i32>,
    nap_minutes: Option<f64>,
    sources: Option<Vec<String>>,
    deleted: Option<bool>,
}
