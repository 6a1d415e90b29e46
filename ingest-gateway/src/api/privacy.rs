//! `GET`/`PUT /v1/me/privacy`: the caller's blocked metrics.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use pulseline_schemas::Catalog;
use pulseline_service::auth::AuthUser;
use pulseline_service::http::ErrorEnvelope;

use super::{AppState, body};

use crate::error::GatewayError;
use crate::model::PrivacySettings;

/// The caller's privacy settings.
#[utoipa::path(
    get,
    path = "/v1/me/privacy",
    tag = "privacy",
    responses(
        (status = 200, body = PrivacySettings),
        (status = 401, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn get_privacy(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<PrivacySettings>, GatewayError> {
    let blocked_metrics = state.store.blocked_metrics(user.user_id).await?;
    Ok(Json(PrivacySettings { blocked_metrics }))
}

/// Replace the caller's privacy settings. Samples of a blocked metric are rejected with
/// METRIC_BLOCKED from the next request on; stored samples stay until deleted.
#[utoipa::path(
    put,
    path = "/v1/me/privacy",
    tag = "privacy",
    request_body(content = PrivacySettings, content_type = "application/json"),
    responses(
        (status = 200, description = "The stored settings (codes sorted, duplicates removed)", body = PrivacySettings),
        (status = 400, description = "INVALID_BODY (e.g. an unknown metric code)", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 413, description = "BATCH_TOO_LARGE (the body is too large)", body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope),
        (status = 429, description = "RATE_LIMITED (Retry-After)", body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
pub async fn put_privacy(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PrivacySettings>, GatewayError> {
    user.require_uploader()?;
    state.limiter.check(user.user_id)?;
    let value = body::read_json_object(&headers, body, state.limits.max_body_bytes).await?;
    let mut settings: PrivacySettings = body::parse(value)?;
    let catalog = Catalog::builtin();
    for (i, code) in settings.blocked_metrics.iter().enumerate() {
        if catalog.metric(code).is_err() {
            return Err(GatewayError::invalid_field(
                format!("blockedMetrics[{i}]"),
                "unknown metric code",
            ));
        }
    }
    settings.blocked_metrics.sort();
    settings.blocked_metrics.dedup();
    state
        .store
        .set_blocked_metrics(user.user_id, &settings.blocked_metrics)
        .await?;
    Ok(Json(settings))
}
