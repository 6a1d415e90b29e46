//! `/healthz` (the process answers), `/readyz` (Postgres and the broker answer within the
//! readiness timeout), `/metrics` (Prometheus text) and `/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::AppState;
use crate::error::GatewayError;

/// Checks the broker with a metadata request. The client is created on first use and
/// kept, so a probe does not start librdkafka threads each time.
pub struct BrokerProbe {
    bootstrap: String,
    client: OnceCell<Arc<BaseConsumer>>,
}

impl std::fmt::Debug for BrokerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerProbe")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl BrokerProbe {
    pub fn new(bootstrap: String) -> Self {
        Self {
            bootstrap,
            client: OnceCell::new(),
        }
    }

    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let client = self
            .client
            .get_or_try_init(|| async {
                ClientConfig::new()
                    .set("bootstrap.servers", &self.bootstrap)
                    .set("client.id", "pulseline-gateway-readiness")
                    .set(
                        "socket.connection.setup.timeout.ms",
                        timeout.as_millis().max(1000).to_string(),
                    )
                    .create::<BaseConsumer>()
                    .map(Arc::new)
                    .map_err(|e| format!("creating Kafka client: {e}"))
            })
            .await?
            .clone();
        let metadata = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| format!("metadata task: {e}"))?;
        match metadata {
            Ok(0) => Err("broker answered without brokers".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("broker unreachable: {e}")),
        }
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Postgres answers `SELECT 1` and the broker answers a metadata request.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "UNAVAILABLE; details say which dependency failed", body = crate::error::ErrorEnvelope),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, GatewayError> {
    let timeout = state.readiness_timeout;
    let (postgres, kafka) = tokio::join!(
        async {
            match tokio::time::timeout(timeout, state.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        },
        state.broker.check(timeout)
    );
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let details = json!({ "postgres": show(&postgres), "kafka": show(&kafka) });
    if postgres.is_ok() && kafka.is_ok() {
        Ok(Json(json!({ "status": "ready", "checks": details })))
    } else {
        Err(GatewayError::Unavailable {
            reason: format!("not ready: {details}"),
            details: Some(details),
        })
    }
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
