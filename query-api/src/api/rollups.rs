//! `GET /v1/me/rollups`: the caller's daily or hourly rollups of one metric over a range
//! of local days, with freshness. The user id comes from the token only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::future::BoxFuture;
use pulseline_schemas::records::RollupUpsert;
use pulseline_sinks::{ScyllaSink, SinkError};
use sqlx::PgConnection;
use uuid::Uuid;

use super::AppState;
use super::model::{RollupPoint, RollupsAnswer};
use crate::error::QueryError;
use crate::params::RollupsQuery;
use crate::store::ReadQuery;

/// Daily or hourly rollups of one metric, with freshness.
///
/// Buckets are local days or hours (the samples' own time-zone offsets), named by their
/// `localStart` wall-clock time without an offset; `from` and `to` are local days, both
/// included. Deleted buckets and buckets without samples are absent.
/// `freshness` compares the ingest sequence the rollups reflect with the newest one the
/// gateway accepted for the caller.
#[utoipa::path(
    get,
    path = "/v1/me/rollups",
    tag = "read models",
    params(
        ("metric" = String, Query, min_length = 1, description = "Metric code from the catalog, e.g. STEPS (case-insensitive)"),
        ("period" = String, Query, pattern = "^([dD][aA][yY]|[hH][oO][uU][rR])$", description = "`day` or `hour` (case-insensitive)"),
        ("from" = String, Query, format = Date, description = "First local day, YYYY-MM-DD"),
        ("to" = String, Query, format = Date, description = "Last local day, YYYY-MM-DD (inclusive); at most 400 days after `from` for day, 31 for hour (configurable)"),
    ),
    responses(
        (status = 200, description = "The rollups and their freshness", body = RollupsAnswer),
        (status = 400, description = "INVALID_PARAMETER; details.parameter names the parameter", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 404, description = "UNKNOWN_METRIC", body = ErrorEnvelope),
        (status = 503, description = "UNAVAILABLE (database); retry after Retry-After", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn get_rollups(
    caller: AuthUser,
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<RollupsAnswer>, QueryError> {
    let q = RollupsQuery::parse(&super::query_pairs(query)?, state.limits)?;
    let (data, freshness) = super::serve(&state, caller.user_id, &q).await?;
    Ok(Json(RollupsAnswer {
        metric: q.metric.code().to_owned(),
        unit: q.metric.canonical_unit().to_owned(),
        period: q.period.as_str().to_owned(),
        data,
        freshness,
    }))
}

type RollupRow = (
    NaiveDateTime,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    Vec<String>,
);

impl ReadQuery for RollupsQuery {
    type Model = RollupUpsert;
    type Point = RollupPoint;

    fn fetch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<RollupPoint>, sqlx::Error>> {
        Box::pin(async move {
            let (start, end) = self.bucket_range();
            let rows: Vec<RollupRow> = sqlx::query_as(
                "SELECT bucket_start, value, min, max, count, sources FROM rollup \
                 WHERE user_id = $1 AND metric = $2 AND period = $3 \
                   AND bucket_start >= $4 AND bucket_start < $5 AND NOT deleted \
                 ORDER BY bucket_start",
            )
            .bind(user)
            .bind(self.metric.code())
            .bind(self.period.stored())
            .bind(start)
            .bind(end)
            .fetch_all(conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(start, value, min, max, count, sources)| RollupPoint {
                    local_start: self.period.format_start(start),
                    value,
                    min,
                    max,
                    count,
                    sources,
                })
                .collect())
        })
    }

    fn fetch_cql<'a>(
        &'a self,
        store: &'a ScyllaSink,
        user: Uuid,
    ) -> BoxFuture<'a, Result<Vec<RollupPoint>, SinkError>> {
        Box::pin(async move {
            let (start, end) = self.bucket_range();
            let cql = format!(
                "SELECT metric, period, bucket_start, value, min, max, count, sources, deleted \
                 FROM {}.rollup WHERE user_id = ? AND metric = ? AND period = ? \
                   AND bucket_start >= ? AND bucket_start < ?",
                store.keyspace()
            );
            let (metric, period) = (self.metric.code(), self.period.stored());
            let rows: Vec<CqlRollup> = store
                .select(&cql, (user, metric, period, start.and_utc(), end.and_utc()))
                .await?;
            let mut rows: Vec<CqlRollup> = rows
                .into_iter()
                .filter(|r| {
                    let at = r.bucket_start.naive_utc();
                    r.metric == metric
                        && r.period == period
                        && (start..end).contains(&at)
                        && r.deleted != Some(true)
                })
                .collect();
            rows.sort_by_key(|r| r.bucket_start);
            Ok(rows
                .into_iter()
                .map(|r| RollupPoint {
                    local_start: self.period.format_start(r.bucket_start.naive_utc()),
                    value: r.value,
                    min: r.min,
                    max: r.max,
                    count: r.count.unwrap_or_default(),
                    sources: r.sources.unwrap_or_default(),
                })
                .collect())
        })
    }
}

/// A `rollup` row as Scylla answers it. The restriction is checked again on these
/// (cheap; and the CQL emulator the tests use reads clustering restrictions as lower
/// bounds). An empty list is null in CQL; a deleted bucket keeps only its version.
#[derive(scylla::DeserializeRow)]
struct CqlRollup {
    metric: String,
    period: String,
    bucket_start: DateTime<Utc>,
    value: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    count: Option<i64>,
    sources: Option<Vec<String>>,
    deleted: Option<bool>,
}
