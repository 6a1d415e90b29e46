//! `POST /v1/analytics/sql`: read-only SQL over the pseudonymised Parquet export, for
//! analysts only. Logs who asked, a SHA-256 of the text, the row count and the duration;
//! never the text's results.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use pulseline_service::auth::{AuthUser, Role};
use pulseline_service::http::ErrorEnvelope;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::analytics::SqlAnswer;
use crate::error::QueryError;

/// The request: one statement and an optional row limit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SqlRequest {
    /// One SELECT, WITH or EXPLAIN statement.
    pub sql: String,
    /// Most rows to return (default 10,000; at most the configured maximum).
    pub max_rows: Option<usize>,
}

/// Runs one read-only SQL statement over the export.
///
/// Tables: `samples`, `rollups`, `sleep_nights` (and every other exported read model);
/// `metric` and `date` are partition columns, so filtering on them skips files. Users
/// appear only as `subject_id`, a keyed pseudonym. Dates and times come back as ISO 8601
/// strings.
#[utoipa::path(
    post,
    path = "/v1/analytics/sql",
    tag = "analytics",
    request_body = SqlRequest,
    responses(
        (status = 200, description = "The result; `truncated` when more rows existed than `maxRows`", body = SqlAnswer),
        (status = 400, description = "SQL_PARSE_ERROR, SQL_EMPTY, SQL_MULTIPLE_STATEMENTS, SQL_DDL_NOT_ALLOWED, SQL_DML_NOT_ALLOWED, SQL_COPY_NOT_ALLOWED, SQL_NOT_A_QUERY, SQL_FILE_ACCESS_NOT_ALLOWED, SQL_PLAN_ERROR, SQL_EXECUTION_ERROR, SQL_TIMEOUT, SQL_MEMORY_LIMIT or INVALID_PARAMETER (maxRows)", body = ErrorEnvelope),
        (status = 401, description = "UNAUTHENTICATED or TOKEN_EXPIRED", body = ErrorEnvelope),
        (status = 403, description = "FORBIDDEN: the token's role is not `analyst`", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn post_sql(
    caller: AuthUser,
    State(state): State<AppState>,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Json<SqlAnswer>, QueryError> {
    if caller.role != Role::Analyst {
        return Err(QueryError::Forbidden("SQL over the export is for analysts"));
    }
    let Json(req) = body.map_err(|e| QueryError::invalid("body", e.body_text()))?;
    let hash = hex::encode(Sha256::digest(req.sql.as_bytes()));
    let result = state.analytics.query(&req.sql, req.max_rows).await;
    match &result {
        Ok(b) => tracing::info!(
            analyst = %caller.user_id,
            sql_sha256 = %hash,
            rows = b.rows(),
            truncated = b.truncated,
            elapsed_ms = b.elapsed.as_millis() as u64,
            "analytics query"
        ),
        Err(e) => tracing::info!(
            analyst = %caller.user_id,
            sql_sha256 = %hash,
            code = e.code(),
            "analytics query refused or failed"
        ),
    }
    Ok(Json(result?.to_answer()))
}
