//! `GET /v1/me/rollups`: the caller's daily or hourly rollups of one metric over a range
//! of local days, with freshness. The user id comes from the token only.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;

use super::AppState;
use super::model::RollupsAnswer;
use crate::error::QueryError;
use crate::params::RollupsQuery;
use crate::telemetry::ReadModelAnswered;

/// Daily or hourly rollups of one metric, with freshness.
///
/// Buckets are local days or hours (the samples' own time-zone offsets); `from` and `to`
/// are local days, both included. Deleted buckets and buckets without samples are absent.
/// `freshness` compares the ingest sequence the rollups reflect with the newest one the
/// gateway accepted for the caller.
#[utoipa::path(
    get,
    path = "/v1/me/rollups",
    tag = "read models",
    params(
        ("metric" = String, Query, description = "Metric code from the catalog, e.g. STEPS (case-insensitive)"),
        ("period" = String, Query, description = "`day` or `hour`"),
        ("from" = String, Query, description = "First local day, YYYY-MM-DD"),
        ("to" = String, Query, description = "Last local day, YYYY-MM-DD (inclusive); at most 400 days after `from` for day, 31 for hour (configurable)"),
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
    let Query(pairs) =
        query.map_err(|_| QueryError::invalid("query", "the query string is malformed"))?;
    let q = RollupsQuery::parse(&pairs, state.limits)?;
    let (data, freshness) = state.store.rollups(caller.user_id, &q).await?;
    state.telemetry.emit(ReadModelAnswered {
        read_model: "rollups",
        fresh: freshness.applied_seq == freshness.latest_seq,
        lag_seconds: freshness.lag_seconds,
        points: data.len(),
    });
    Ok(Json(RollupsAnswer {
        metric: q.metric.code().to_owned(),
        unit: q.metric.canonical_unit().to_owned(),
        period: q.period.as_str().to_owned(),
        data,
        freshness,
    }))
}
