//! `/healthz` (the process answers), `/readyz` (Postgres answers and the tables this API
//! reads exist), `/metrics` (Prometheus text) and `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::error::QueryError;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Postgres answers within the readiness timeout and every table the API reads exists
/// (the gateway's and the sink's migrations have run).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "UNAVAILABLE; details say what failed", body = pulseline_ingest_gateway::error::ErrorEnvelope),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, QueryError> {
    let check = tokio::time::timeout(state.readiness_timeout, state.store.check()).await;
    let details = match check {
        Ok(Ok(missing)) if missing.is_empty() => {
            return Ok(Json(
                json!({ "status": "ready", "checks": { "postgres": "ok" } }),
            ));
        }
        Ok(Ok(missing)) => json!({ "postgres": "ok", "missingTables": missing }),
        Ok(Err(e)) => json!({ "postgres": e.to_string() }),
        Err(_) => json!({ "postgres": "timed out" }),
    };
    Err(QueryError::Unavailable {
        reason: format!("not ready: {details}"),
        details: Some(details),
    })
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.telemetry.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    let mut response = state.openapi.as_ref().clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
