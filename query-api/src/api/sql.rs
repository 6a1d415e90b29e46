//! `POST /v1/analytics/sql`: analysts' read-only SQL over the pseudonymised Parquet
//! export. Only tokens with the `analyst` role get in. Each query is logged with who asked,
//! a hash of its text, its row count and duration; never its text or its results.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use crate::analytics::SqlAnswer;
use crate::error::QueryError;
use crate::telemetry::AnalyticsQueryRan;

/// The request body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SqlRequest {
    /// One SELECT, WITH or EXPLAIN statement (at most 64 KiB).
    #[schema(min_length = 1, max_length = 65536)]
    pub sql: String,
    /// Most rows to return (default 10,000; at most the configured maximum).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_rows: Option<usize>,
}

/// Runs one read-only SQL statement over the Parquet export.
///
/// Tables: `samples`, `rollups`, `sleep_nights`, `session_impacts`, `product_impacts` (the
/// datasets exported so far). `subject_id` is a keyed pseudonym of the user. Filtering on
/// the partition columns `metric` and `date` skips files. Limits: a statement timeout, a
/// memory limit, and `maxRows`; an answer cut at `maxRows` says `truncated: true`.
#[utoipa::path(
    post,
    path = "/v1/analytics/sql",
    tag = "analytics",
    request_body = SqlRequest,
    responses(
        (status = 200, description = "The rows, at most maxRows", body = SqlAnswer),
        (status = 400, description = "INVALID_BODY; SQL_EMPTY, SQL_TOO_LONG, SQL_SYNTAX, SQL_MULTIPLE_STATEMENTS, SQL_NOT_READ_ONLY, SQL_FUNCTION_NOT_ALLOWED, SQL_PLAN, SQL_EXECUTION; SQL_ROW_LIMIT, SQL_TIMEOUT, SQL_MEMORY_LIMIT (details.limit names the limit)", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 403, description = "FORBIDDEN: the token's role is not analyst", body = ErrorEnvelope),
        (status = 503, description = "EXPORT_UNAVAILABLE: the export could not be read; retry", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn post_sql(
    caller: AuthUser,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<SqlAnswer>, QueryError> {
    caller.require_analyst()?;
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        QueryError::InvalidBody(format!(
            "expected {{\"sql\": \"...\", \"maxRows\": n}}: {}",
            e
        ))
    })?;
    let sql_hash = hex::encode(Sha256::digest(request.sql.as_bytes()));
    let started = Instant::now();
    let outcome = state
        .sql
        .query(&request.sql, request.max_rows)
        .await
        .and_then(|result| SqlAnswer::from_result(&result).map(|a| (result, a)));
    // Refused and failed queries are timed too: a timeout shows as its limit, not as 0.
    let (rows, truncated, code) = match &outcome {
        Ok((result, _)) => (result.rows, result.truncated, "OK"),
        Err(e) => (0, false, e.code()),
    };
    state.telemetry.emit(AnalyticsQueryRan {
        analyst: caller.user_id,
        sql_hash: &sql_hash,
        outcome: code,
        rows,
        truncated,
        elapsed: started.elapsed(),
    });
    outcome
        .map(|(_, answer)| Json(answer))
        .map_err(QueryError::Sql)
}
